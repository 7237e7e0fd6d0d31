//! The Helm chart and the plain manifests: `helm lint` and `helm template` over every values
//! file in the chart's `ci/`, every rendered object validated against the Kubernetes schemas
//! (`kubernetes-validate`) and scanned by a security linter (`checkov`) whose findings are all
//! explained in `deploy/kubernetes/checkov-skips.yaml`; the plain manifests in sync with the
//! chart; every render configures an agent that accepts its configuration and policies.
//!
//! Needs `helm`, `kubernetes-validate` and `checkov` (found on PATH, or through the `HELM`,
//! `KUBERNETES_VALIDATE` and `CHECKOV` variables); `.ci/run` installs them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The Kubernetes version the objects are validated against.
const KUBERNETES_VERSION: &str = "1.34.0";

fn tool(variable: &str, name: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| name.to_owned())
}

fn helm() -> String {
    tool("HELM", "helm")
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the tools are here (in CI a missing one fails the test).
fn tools() -> bool {
    test_support::require(
        found(&helm())
            && found(&tool("KUBERNETES_VALIDATE", "kubernetes-validate"))
            && found(&tool("CHECKOV", "checkov")),
        "helm, kubernetes-validate and checkov (installed by .ci/run)",
    )
}

fn chart() -> PathBuf {
    common::repo_root().join("deploy/helm/metadata-agent")
}

/// The values files of the chart's `ci/` directory, by name.
fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

fn run(command: &mut Command) -> Output {
    common::run(command)
}

fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `helm template` of the chart with `values` and `--set` pairs.
fn template(values: Option<&Path>, set: &[&str]) -> Output {
    let mut command = Command::new(helm());
    command
        .args(["template", "metadata-agent"])
        .arg(chart())
        .args(["--namespace", "metadata-agent"]);
    if let Some(values) = values {
        command.arg("--values").arg(values);
    }
    for pair in set {
        command.args(["--set", pair]);
    }
    run(&mut command)
}

/// The objects of a render.
fn objects(rendered: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(rendered)
        .unwrap()
        .into_iter()
        .filter(|object| !object.is_null())
        .collect()
}

fn render(values: &Path) -> (String, Vec<Value>) {
    let output = template(Some(values), &[]);
    assert!(
        output.status.success(),
        "helm template with {}: {}",
        values.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let objects = objects(&text);
    (text, objects)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn daemonset(objects: &[Value]) -> &Value {
    let found = find(objects, "DaemonSet");
    assert_eq!(found.len(), 1);
    found[0]
}

#[test]
fn the_chart_lints_and_renders_valid_kubernetes_objects_for_every_values_file() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for values in values_files() {
        ok(Command::new(helm())
            .args(["lint", "--strict"])
            .arg(chart())
            .arg("--values")
            .arg(&values));
        let (text, objects) = render(&values);
        let kinds: BTreeSet<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "DaemonSet",
            "ConfigMap",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
        ] {
            assert!(kinds.contains(kind), "{}: {kinds:?}", values.display());
        }
        let file = dir.path().join(values.file_name().unwrap());
        std::fs::write(&file, &text).unwrap();
        let output = ok(
            Command::new(tool("KUBERNETES_VALIDATE", "kubernetes-validate"))
                .args(["--strict", "-k", KUBERNETES_VERSION])
                .arg(&file),
        );
        // Every object but the prometheus-operator's ServiceMonitor (a CRD it has no schema
        // for) passed.
        let passed = output
            .lines()
            .filter(|l| l.contains(" passed for "))
            .count();
        let monitors = find(&objects, "ServiceMonitor").len();
        assert_eq!(
            passed + monitors,
            objects.len(),
            "{}:\n{output}",
            values.display()
        );
    }
}

#[test]
fn every_checkov_finding_is_explained_and_every_explanation_still_applies() {
    if !tools() {
        return;
    }
    let skips: BTreeMap<String, String> = serde_saphyr::from_str(
        &std::fs::read_to_string(common::repo_root().join("deploy/kubernetes/checkov-skips.yaml"))
            .unwrap(),
    )
    .unwrap();
    for (check, why) in &skips {
        assert!(why.len() > 40, "{check} is not explained: {why:?}");
    }
    // Not a hidden directory (`.tmpXXXX`): checkov skips those.
    let dir = tempfile::Builder::new()
        .prefix("renders-")
        .tempdir()
        .unwrap();
    for values in values_files() {
        let (text, _) = render(&values);
        std::fs::write(dir.path().join(values.file_name().unwrap()), text).unwrap();
    }
    let output = run(Command::new(tool("CHECKOV", "checkov"))
        .arg("--directory")
        .arg(dir.path())
        .args([
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",
            "--quiet",
        ]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov's report is not JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let reports = match report {
        Value::Array(reports) => reports,
        report => vec![report],
    };
    let mut fired = BTreeSet::new();
    let mut unexplained = Vec::new();
    let mut passed = 0;
    for report in &reports {
        passed += report["summary"]["passed"].as_u64().unwrap_or(0);
        for failed in report["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let id = failed["check_id"].as_str().unwrap().to_owned();
            if !skips.contains_key(&id) {
                unexplained.push(format!(
                    "{id} ({}) in {} {}",
                    failed["check_name"], failed["file_path"], failed["resource"]
                ));
            }
            fired.insert(id);
        }
    }
    assert!(
        passed > 100,
        "checkov passed only {passed} checks: {stdout}"
    );
    assert!(
        unexplained.is_empty(),
        "findings not in deploy/kubernetes/checkov-skips.yaml:\n{}",
        unexplained.join("\n")
    );
    let stale: Vec<&String> = skips.keys().filter(|id| !fired.contains(*id)).collect();
    assert!(
        stale.is_empty(),
        "explained but no longer found, remove them: {stale:?}"
    );
}

#[test]
fn the_plain_manifests_are_the_chart_rendered_with_its_defaults() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("metadata-agent.yaml");
    ok(
        Command::new(common::repo_root().join("deploy/kubernetes/render"))
            .arg(helm())
            .arg(&fresh),
    );
    let committed =
        std::fs::read_to_string(common::repo_root().join("deploy/kubernetes/metadata-agent.yaml"))
            .unwrap();
    assert!(
        std::fs::read_to_string(&fresh).unwrap() == committed,
        "deploy/kubernetes/metadata-agent.yaml is not the chart's render: run deploy/kubernetes/render"
    );
    let objects = objects(&committed);
    assert_eq!(find(&objects, "Namespace").len(), 1);
    daemonset(&objects);
}

#[test]
fn every_render_configures_an_agent_that_accepts_its_configuration_and_policies() {
    if !tools() {
        return;
    }
    for values in values_files() {
        let (_, objects) = render(&values);
        let dir = tempfile::tempdir().unwrap();
        let maps = find(&objects, "ConfigMap");
        let config = maps
            .iter()
            .find_map(|m| m["data"]["agent.yaml"].as_str())
            .expect("the agent's ConfigMap");
        let config_path = dir.path().join("agent.yaml");
        std::fs::write(&config_path, config).unwrap();
        let loaded = metadata_agent::config::Config::load(&config_path)
            .unwrap_or_else(|e| panic!("{}: {e:#}\n{config}", values.display()));
        // The probes and the ops listener agree on the port.
        let pod = &daemonset(&objects)["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let port = container["ports"][0]["containerPort"].as_u64().unwrap();
        assert_eq!(container["ports"][0]["name"], "ops");
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], "ops");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], "ops");
        assert_eq!(
            loaded.server.ops_listen.as_deref(),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        // The policies the chart ships pass `policy check`.
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        for map in &maps {
            if map["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-policies"))
            {
                for (name, text) in map["data"].as_object().unwrap() {
                    std::fs::write(policies.join(name), text.as_str().unwrap()).unwrap();
                }
            }
        }
        let output = run(common::agent().args(["policy", "check"]).arg(&policies));
        assert!(
            output.status.success(),
            "{}: {}",
            values.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The added capabilities of a render.
fn capabilities(objects: &[Value]) -> Vec<String> {
    let context =
        &daemonset(objects)["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(context["privileged"], false);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["readOnlyRootFilesystem"], true);
    assert_eq!(context["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(context["seccompProfile"]["type"], "RuntimeDefault");
    context["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn capabilities_and_mounts_follow_the_features_turned_on() {
    if !tools() {
        return;
    }
    let ci = chart().join("ci");
    let (_, default) = render(&ci.join("default-values.yaml"));
    assert_eq!(
        capabilities(&default),
        [
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "BPF",
            "PERFMON",
            "NET_ADMIN"
        ]
    );
    let (_, docker) = render(&ci.join("docker-values.yaml"));
    assert_eq!(
        capabilities(&docker),
        ["SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE"]
    );
    let mounts = |objects: &[Value]| -> BTreeMap<String, (String, bool)> {
        let pod = &daemonset(objects)["spec"]["template"]["spec"];
        let volumes: BTreeMap<&str, &Value> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| {
                let volume = volumes[m["name"].as_str().unwrap()];
                let host = volume["hostPath"]["path"].as_str()?;
                Some((
                    m["mountPath"].as_str().unwrap().to_owned(),
                    (host.to_owned(), m["readOnly"] == true),
                ))
            })
            .collect()
    };
    let default_mounts = mounts(&default);
    for (inside, host) in [
        ("/host/proc", "/proc"),
        ("/host/sys", "/sys"),
        ("/host/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/host/etc", "/etc"),
        ("/host/usr/lib", "/usr/lib"),
    ] {
        assert_eq!(
            default_mounts.get(inside),
            Some(&(host.to_owned(), true)),
            "{default_mounts:?}"
        );
    }
    assert!(!default_mounts.contains_key("/var/run/docker.sock"));
    assert!(!default_mounts.contains_key("/sys/fs/bpf"));
    assert!(mounts(&docker).contains_key("/var/run/docker.sock"));
    let (_, enforce) = render(&ci.join("enforce-values.yaml"));
    assert_eq!(
        mounts(&enforce).get("/sys/fs/bpf"),
        Some(&("/sys/fs/bpf".to_owned(), false))
    );
    let pod = &daemonset(&default)["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    let env: BTreeMap<&str, &Value> = pod["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(env["HOST_SYS"]["value"], "/host/sys");
    // RBAC: get on the kubelet's pods, nothing else.
    let role = find(&default, "ClusterRole")[0];
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["nodes/proxy", "nodes/pods"], "verbs": ["get"]}])
    );
}

#[test]
fn values_the_agent_could_not_run_with_are_refused_at_render() {
    if !tools() {
        return;
    }
    for (set, expected) in [
        (vec!["hook.mode=bogus"], "mode"),
        (vec!["ops.port=0"], "port"),
        (
            vec!["extraCapabilities={SYS_EVERYTHING}"],
            "extraCapabilities",
        ),
        (
            vec!["hook.enabled=false", "hook.mode=enforce"],
            "hook.mode: enforce needs the hook",
        ),
        (
            vec!["api.listen=0.0.0.0:9820"],
            "api.listen on a pod-network address needs api.tokenSecret",
        ),
    ] {
        let output = template(None, &set);
        assert!(!output.status.success(), "{set:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{set:?}: {stderr}");
    }
}

#[test]
fn the_systemd_unit_verifies_and_grants_what_the_chart_grants() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !test_support::require(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze (Debian package systemd)",
    ) || !tools()
    {
        return;
    }
    let unit =
        std::fs::read_to_string(common::repo_root().join("deploy/systemd/metadata-agent.service"))
            .unwrap();
    // Verified as installed: ExecStart pointing at a real binary (the one under test).
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("metadata-agent.service");
    std::fs::write(
        &installed,
        unit.replace(
            "/usr/local/bin/metadata-agent",
            env!("CARGO_BIN_EXE_metadata-agent"),
        ),
    )
    .unwrap();
    let output = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&installed));
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
    // The capability bounding set is the chart's default set.
    let bounding: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let (_, default) = render(&chart().join("ci/default-values.yaml"));
    assert_eq!(bounding, capabilities(&default));
    // The command line is one the agent accepts.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = exec.split_whitespace().skip(1).collect::<Vec<_>>();
    words.push("--help");
    let output = run(common::agent().args(&words));
    assert!(output.status.success(), "{exec}: {output:?}");
}
