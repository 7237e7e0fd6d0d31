//! The image, run as the DaemonSet's pod would run it (root, dockerd, helm): built here by
//! `deploy/image/build`, started by the real Docker daemon with the security context, mounts
//! and environment of the chart's render (`ci/e2e-docker-values.yaml`), never written twice.
//! It must resolve host processes and another container's `docker:*` labels, attach the hook
//! to the host's cgroup root through `HOST_SYS`, deny a host process by policy, answer the
//! probes on the operations port, and reload its policies after a ConfigMap-style `..data`
//! swap.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::docker::Dockerd;
use serde_json::Value;

fn helm() -> String {
    std::env::var("HELM").unwrap_or_else(|_| "helm".to_owned())
}

/// The render of the chart with the e2e values.
fn render() -> Vec<Value> {
    let chart = common::repo_root().join("deploy/helm/metadata-agent");
    let output = common::run(
        Command::new(helm())
            .args(["template", "metadata-agent"])
            .arg(&chart)
            .args(["--namespace", "metadata-agent", "--values"])
            .arg(chart.join("ci/e2e-docker-values.yaml")),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8(output.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

/// Writes a ConfigMap's data as the kubelet does: files in a timestamped directory, `..data`
/// pointing at it, the visible names symlinks through `..data`; the previous version removed.
fn publish_configmap(dir: &Path, version: u32, data: &serde_json::Map<String, Value>) {
    let versioned = format!("..2026_12_01_00_00_0{version}.{version}");
    std::fs::create_dir_all(dir.join(&versioned)).unwrap();
    for (name, text) in data {
        std::fs::write(dir.join(&versioned).join(name), text.as_str().unwrap()).unwrap();
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &visible).unwrap();
        }
    }
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&versioned, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).unwrap();
    }
}

/// `docker run` arguments for the DaemonSet's pod: its security context, host namespaces,
/// environment, and volumes (host paths as they are, but those `host_paths` redirects;
/// ConfigMaps published into `configmaps/<name>`).
struct PodRun {
    args: Vec<String>,
    /// ConfigMap name → the directory it is published in.
    configmaps: BTreeMap<String, PathBuf>,
}

fn pod_run(
    objects: &[Value],
    host_paths: &BTreeMap<&str, PathBuf>,
    scratch: &Path,
    network: &str,
) -> PodRun {
    let daemonset = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let context = &container["securityContext"];
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), "agent".into()];
    let mut push = |a: &str, b: String| {
        args.push(a.to_owned());
        args.push(b);
    };

    // Namespaces: the host's PIDs; the pod network or the node's; a private cgroup namespace,
    // as a pod on a cgroup v2 node gets.
    if pod["hostPID"] == true {
        push("--pid", "host".into());
    }
    if pod["hostNetwork"] == true {
        push("--network", "host".into());
    } else {
        push("--network", network.into());
    }
    push("--cgroupns", "private".into());

    // The security context, field by field; anything this does not know fails the test.
    assert_eq!(context["privileged"], false);
    let user = format!(
        "{}:{}",
        context["runAsUser"].as_u64().unwrap(),
        context["runAsGroup"].as_u64().unwrap()
    );
    push("--user", user);
    if context["allowPrivilegeEscalation"] == false {
        push("--security-opt", "no-new-privileges".into());
    }
    // RuntimeDefault is Docker's own default seccomp profile.
    assert_eq!(context["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    if context["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    for dropped in context["capabilities"]["drop"].as_array().unwrap() {
        args.push("--cap-drop".into());
        args.push(dropped.as_str().unwrap().into());
    }
    for added in context["capabilities"]["add"].as_array().unwrap() {
        args.push("--cap-add".into());
        args.push(added.as_str().unwrap().into());
    }
    if let Some(memory) = container["resources"]["limits"]["memory"].as_str() {
        args.push("--memory".into());
        args.push(memory.replace("Mi", "m").replace("Gi", "g"));
    }

    // The environment; the downward API's node name is this machine's.
    for variable in container["env"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        let value = if let Some(value) = variable["value"].as_str() {
            value.to_owned()
        } else {
            assert_eq!(
                variable["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
                "{variable}"
            );
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
                .to_owned()
        };
        args.push("--env".into());
        args.push(format!("{name}={value}"));
    }

    // The volumes.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mut configmaps = BTreeMap::new();
    for mount in container["volumeMounts"].as_array().unwrap() {
        let target = mount["mountPath"].as_str().unwrap();
        let read_only = mount["readOnly"] == true;
        let volume = volumes[mount["name"].as_str().unwrap()];
        let source = if let Some(path) = volume["hostPath"]["path"].as_str() {
            host_paths
                .get(path)
                .cloned()
                .unwrap_or_else(|| PathBuf::from(path))
        } else if let Some(name) = volume["configMap"]["name"].as_str() {
            let map = objects
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no ConfigMap {name}"));
            let dir = scratch.join("configmaps").join(name);
            publish_configmap(&dir, 1, map["data"].as_object().unwrap());
            configmaps.insert(name.to_owned(), dir.clone());
            dir
        } else if volume.get("emptyDir").is_some() {
            args.push("--tmpfs".into());
            args.push(target.to_owned());
            continue;
        } else {
            panic!("a volume this test cannot give: {volume}");
        };
        args.push("--volume".into());
        args.push(format!(
            "{}:{target}{}",
            source.display(),
            if read_only { ":ro" } else { "" }
        ));
    }
    let image = container["image"].as_str().unwrap().to_owned();
    args.push(image);
    for arg in container["args"].as_array().unwrap() {
        args.push(arg.as_str().unwrap().to_owned());
    }
    PodRun { args, configmaps }
}

/// One HTTP/1.1 GET over the agent's Unix socket: (status, body).
fn get_unix(socket: &Path, path: &str) -> (u16, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies: the JSON starts at the first `{`.
    let body = body
        .find(['{', '#'])
        .map_or(body, |start| &body[start..])
        .to_owned();
    (status, body)
}

fn json_of(body: &str) -> Value {
    let end = body.rfind('}').map_or(body.len(), |i| i + 1);
    serde_json::from_str(&body[..end]).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A python3 connect to 127.0.0.1:`port` as `uid`, a moment after it starts (the agent
/// resolves processes from their exec events).
fn connect_as(uid: u32, port: u16) -> Output {
    let script = format!(
        "sleep 1; exec python3 -c 'import socket, time; time.sleep(0.5); \
         socket.create_connection((\"127.0.0.1\", {port})).close()'"
    );
    Command::new("sh")
        .args(["-c", &script])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap()
}

#[test]
fn the_image_runs_as_the_daemonset_pod_and_does_its_work() {
    if let Some(missing) = common::docker::missing_prerequisite() {
        test_support::require(false, missing);
        return;
    }
    let helm_found = Command::new(helm())
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !test_support::require(helm_found, "helm (installed by .ci/run)") {
        return;
    }
    let docker = Dockerd::start();
    let docker_cli = format!("/usr/bin/docker -H unix://{}", docker.socket.display());

    // The image, built by the script users run, from the binary under test.
    let objects = render();
    let image = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].clone())
        .unwrap();
    let output = common::run(
        Command::new(common::repo_root().join("deploy/image/build"))
            .args(["--binary", env!("CARGO_BIN_EXE_metadata-agent")])
            .args(["--tag", image.as_str().unwrap()])
            .args(["--docker", &docker_cli]),
    );
    assert!(
        output.status.success(),
        "deploy/image/build: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Another container, whose docker:* labels the agent must give.
    docker.import_busybox_image("busybox");
    docker.ok(&["network", "create", "e2e"]);
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "e2e",
        "--label",
        "tier=db",
        "busybox",
        "sleep",
        "600",
    ]);
    let db_pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", "db"]);

    // The pod.
    let scratch = tempfile::Builder::new()
        .prefix("ma-e2e")
        .tempdir_in("/tmp")
        .unwrap();
    let api_dir = scratch.path().join("api");
    std::fs::create_dir(&api_dir).unwrap();
    let host_paths = BTreeMap::from([
        ("/var/run/docker.sock", docker.socket.clone()),
        ("/run/metadata-agent", api_dir.clone()),
    ]);
    let pod = pod_run(&objects, &host_paths, scratch.path(), "e2e");
    let args: Vec<&str> = pod.args.iter().map(String::as_str).collect();
    docker.ok(&args);
    let log = || {
        let output = docker.cli(&["logs", "agent"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let socket = api_dir.join("api.sock");
    wait_for("the API socket", Duration::from_secs(30), || {
        let running = docker.ok(&["inspect", "-f", "{{.State.Running}}", "agent"]);
        assert_eq!(running, "true", "the agent stopped:\n{}", log());
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });

    // The hook: attached to the host's cgroup root, through HOST_SYS, enforcing.
    let (status, body) = get_unix(&socket, "/healthz");
    assert_eq!(status, 200, "{body}");
    let health = json_of(&body);
    assert_eq!(health["hook"]["attached"], true, "{health}\n{}", log());
    assert_eq!(health["hook"]["mode"], "enforce", "{health}");
    assert!(
        log().contains(r#""cgroup":"/host/sys/fs/cgroup"#),
        "{}",
        log()
    );

    // Probes on the operations port, at the pod's address.
    let address = docker.ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        "agent",
    ]);
    let ops_port = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"].clone()
        })
        .unwrap();
    let ops = format!("http://{address}:{ops_port}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = common::http_client();
    let fetch = |path: &str| -> Option<(u16, String)> {
        runtime.block_on(async {
            let response = client.get(format!("{ops}{path}")).send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.ok()?))
        })
    };
    let (status, _) = fetch("/healthz").expect("the operations port answers");
    assert_eq!(status, 200);
    wait_for("/readyz 200", Duration::from_secs(30), || {
        fetch("/readyz").filter(|(status, _)| *status == 200)
    });

    // A host process, resolved through HOST_PROC.
    let mut sleeper = Command::new("sleep").arg("300").spawn().unwrap();
    let (status, body) = get_unix(&socket, &format!("/metadata/{}", sleeper.id()));
    assert_eq!(status, 200, "{body}");
    let labels = json_of(&body);
    let text = labels.to_string();
    assert!(text.contains("\"process:binary:path\""), "{text}");
    assert!(text.contains("sleep"), "{text}");
    // The node's labels, from the host's /etc (and the os-release it links to) and /sys.
    let release = std::fs::read_to_string("/etc/os-release").unwrap();
    let id = release
        .lines()
        .find_map(|l| l.strip_prefix("ID="))
        .unwrap()
        .trim_matches('"')
        .to_lowercase();
    assert_eq!(labels["labels"]["linuxos:name"][0], id.as_str(), "{text}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // The other container's docker:* labels, through the mounted Docker socket.
    let (status, body) = get_unix(&socket, &format!("/metadata/{db_pid}"));
    assert_eq!(status, 200, "{body}");
    let text = json_of(&body).to_string();
    assert!(
        text.contains("\"docker:label:tier\""),
        "{text}\nagent log:\n{}",
        log()
    );
    assert!(text.contains("\"db\""), "{text}");

    // A deny by policy, of a process on the host.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let denied = connect_as(4242, port);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionError"),
        "uid 4242 was not denied: {denied:?}\n{}",
        log()
    );
    let allowed = connect_as(4243, port);
    assert!(allowed.status.success(), "uid 4243: {allowed:?}");

    // The policies ConfigMap changes as the kubelet changes it: a `..data` swap.
    let policies = pod
        .configmaps
        .iter()
        .find(|(name, _)| name.ends_with("-policies"))
        .map(|(_, dir)| dir.clone())
        .unwrap();
    let mut data = serde_json::Map::new();
    data.insert(
        "10-blocked.yaml".into(),
        Value::String(
            "policies:\n  - name: blocked-users\n    action: deny\n    selectors:\n      - process:uid: [4242, 4243]\n"
                .into(),
        ),
    );
    publish_configmap(&policies, 2, &data);
    wait_for("the reload", Duration::from_secs(20), || {
        let (_, metrics) = fetch("/metrics")?;
        metrics
            .lines()
            .any(|l| l.starts_with("metadata_agent_policy_reloads_total 2"))
            .then_some(())
    });
    let denied = connect_as(4243, port);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionError"),
        "uid 4243 was not denied after the reload: {denied:?}\n{}",
        log()
    );

    // A graceful stop detaches the hook.
    docker.ok(&["stop", "-t", "10", "agent"]);
    let allowed = connect_as(4242, port);
    assert!(allowed.status.success(), "after the stop: {allowed:?}");
    assert!(log().contains("stopped"), "{}", log());
}
