//! The Kubernetes collector against a fixture kubelet (HTTPS, certificates generated here,
//! token or client-certificate authentication), and end to end with real cgroups shaped like a
//! kubelet's.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use collectors::cgroup::{ContainerIdentity, Runtime};
use collectors::config::Enabled;
use collectors::kubernetes::KubernetesCollector;
use collectors::kubernetes::KubernetesConfig;
use collectors::{CollectError, Collector, Subject};
use common::kubelet::{Behaviour, Kubelet, Pki};
use k8s_openapi::api::core::v1::Pod;
use labels::LabelSet;
use sha2::{Digest, Sha256};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YWdlbnQ6YWdlbnQifQ.c2lnbmF0dXJlLXdpdGgtXy1hbmQtLQ";
const METRICS_SERVER_UID: &str = "5d3b1f2e-8a41-4c55-9a0e-2f6b7c1d9e30";
const WEB_UID: &str = "a1c2e3f4-0b5d-4e6f-8a7b-9c0d1e2f3a4b";

fn pods_json() -> String {
    std::fs::read_to_string(common::fixture("kubernetes/pods.json")).unwrap()
}

/// The fixture's pod list with only the pods `keep` says.
fn pods_json_with(keep: impl Fn(&str) -> bool) -> String {
    let mut list: serde_json::Value = serde_json::from_str(&pods_json()).unwrap();
    list["items"]
        .as_array_mut()
        .unwrap()
        .retain(|pod| keep(pod["metadata"]["uid"].as_str().unwrap()));
    list.to_string()
}

fn fixture_pods() -> Vec<Pod> {
    let list: serde_json::Value = serde_json::from_str(&pods_json()).unwrap();
    serde_json::from_value(list["items"].clone()).unwrap()
}

/// Container ids of the fixture are the SHA-256 of a short name.
fn container_id(name: &str) -> String {
    Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn behaviour() -> Behaviour {
    Behaviour {
        pods: pods_json(),
        tokens: vec![TOKEN.to_owned()],
        delay: Duration::ZERO,
        forbid: false,
    }
}

fn subject(pod_uid: &str, container: &str) -> Subject {
    Subject {
        process: None,
        container: Some(ContainerIdentity {
            id: container_id(container),
            runtime: Runtime::Containerd,
            pod_uid: Some(pod_uid.to_owned()),
            cgroup: String::new(),
            hierarchy: String::new(),
        }),
        ..Subject::default()
    }
}

/// A configuration for `kubelet`, trusting its CA, with `credentials`.
fn config_for(kubelet: &Kubelet, credentials: &str) -> KubernetesConfig {
    KubernetesConfig {
        enabled: Enabled::Always,
        kubelet_host: "127.0.0.1".to_owned(),
        kubelet_port: kubelet.address.port(),
        kubelet_ca: kubelet.pki.ca.clone(),
        credentials: credentials.to_owned(),
        ..Default::default()
    }
}

fn collector(config: &KubernetesConfig) -> KubernetesCollector {
    KubernetesCollector::new(config).unwrap()
}

async fn labels_of(collector: &KubernetesCollector, subject: &Subject) -> LabelSet {
    match collector.collect(subject).await {
        Ok(collected) => {
            assert_eq!(collected.partial, None);
            collected.labels
        }
        Err(error) => panic!("collection failed: {error}"),
    }
}

fn failure(result: Result<collectors::Collected, CollectError>) -> String {
    match result {
        Err(error @ CollectError::Failed { .. }) => collectors::error_chain(&error),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn expected_metrics_server() -> String {
    std::fs::read_to_string(common::fixture("kubernetes/metrics-server-expected.txt")).unwrap()
}

#[tokio::test]
async fn a_good_token_gives_the_reference_labels() {
    let kubelet = Kubelet::start(behaviour()).await;
    let collector = collector(&config_for(&kubelet, TOKEN));
    let labels = labels_of(&collector, &subject(METRICS_SERVER_UID, "metrics-server")).await;
    assert_eq!(labels.to_text(), expected_metrics_server());
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_a_401_that_names_them() {
    let kubelet = Kubelet::start(behaviour()).await;
    let subject = subject(METRICS_SERVER_UID, "metrics-server");
    let none = failure(collector(&config_for(&kubelet, "")).collect(&subject).await);
    assert!(
        none.contains("401 Unauthorized") && none.contains("no credentials"),
        "{none}"
    );

    let wrong = failure(
        collector(&config_for(&kubelet, "not-the-token"))
            .collect(&subject)
            .await,
    );
    assert!(
        wrong.contains("401 Unauthorized to the token given inline"),
        "{wrong}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "stale-token\n").unwrap();
    let from_file = failure(
        collector(&config_for(&kubelet, file.to_str().unwrap()))
            .collect(&subject)
            .await,
    );
    assert!(
        from_file.contains(&format!(
            "401 Unauthorized to the token from file {}",
            file.display()
        )),
        "{from_file}"
    );
}

#[tokio::test]
async fn a_forbidden_account_is_told_which_permission_it_needs() {
    let kubelet = Kubelet::start(Behaviour {
        forbid: true,
        ..behaviour()
    })
    .await;
    let error = failure(
        collector(&config_for(&kubelet, TOKEN))
            .collect(&subject(METRICS_SERVER_UID, "metrics-server"))
            .await,
    );
    assert!(
        error.contains("403 Forbidden")
            && error.contains("nodes/pods")
            && error.contains("nodes/proxy"),
        "{error}"
    );
}

#[tokio::test]
async fn a_kubelet_certificate_from_another_ca_is_a_clear_tls_error() {
    let kubelet = Kubelet::start(behaviour()).await;
    let other = Pki::new("other");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, &other.ca).unwrap();
    let config = KubernetesConfig {
        kubelet_ca: ca.to_str().unwrap().to_owned(),
        ..config_for(&kubelet, TOKEN)
    };
    let error = failure(
        collector(&config)
            .collect(&subject(METRICS_SERVER_UID, "metrics-server"))
            .await,
    );
    let base = format!("https://127.0.0.1:{}", kubelet.address.port());
    assert!(
        error.contains(&format!("TLS verification failed for kubelet at {base}"))
            && error.contains("UnknownIssuer")
            && error.contains(&format!("kubeletCA file {}", ca.display())),
        "{error}"
    );

    // With no kubeletCA the system's roots are used, which do not know the fixture's CA either.
    let system = KubernetesConfig {
        kubelet_ca: String::new(),
        ..config_for(&kubelet, TOKEN)
    };
    let error = failure(
        collector(&system)
            .collect(&subject(METRICS_SERVER_UID, "metrics-server"))
            .await,
    );
    assert!(
        error.contains("TLS verification failed") && error.contains("system's trust store"),
        "{error}"
    );
}

/// The kubelet at `port` with `kubelet_ca` pinned, asked by `host`: its labels, or the error.
async fn collect_pinned(
    port: u16,
    host: &str,
    kubelet_ca: &str,
) -> Result<collectors::Collected, CollectError> {
    let config = KubernetesConfig {
        enabled: Enabled::Always,
        kubelet_host: host.to_owned(),
        kubelet_port: port,
        kubelet_ca: kubelet_ca.to_owned(),
        credentials: TOKEN.to_owned(),
        ..Default::default()
    };
    collector(&config)
        .collect(&subject(METRICS_SERVER_UID, "metrics-server"))
        .await
}

#[tokio::test]
async fn a_self_signed_ca_kubelet_certificate_pinned_as_kubelet_ca_verifies() {
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let names = ["localhost", "127.0.0.1"];
    let current = common::kubelet::self_signed_ca_certificate(&names, now - day, now + day);
    let kubelet = Kubelet::start_serving(behaviour(), Pki::new("fixture"), current.clone()).await;
    let port = kubelet.address.port();

    // Pinned exactly: verifies, by address or by name, though the certificate says CA:TRUE.
    let labels = collect_pinned(port, "127.0.0.1", &current.0).await.unwrap();
    assert_eq!(labels.labels.to_text(), expected_metrics_server());
    collect_pinned(port, "localhost", &current.0).await.unwrap();

    // The name is still checked: a certificate for another node, pinned exactly.
    let elsewhere =
        common::kubelet::self_signed_ca_certificate(&["node-2.example"], now - day, now + day);
    let kubelet_2 =
        Kubelet::start_serving(behaviour(), Pki::new("fixture"), elsewhere.clone()).await;
    let error = failure(collect_pinned(kubelet_2.address.port(), "127.0.0.1", &elsewhere.0).await);
    assert!(error.contains("NotValidForName"), "{error}");

    // Another self-signed certificate pinned: not this one.
    let other = common::kubelet::self_signed_ca_certificate(&names, now - day, now + day);
    let error = failure(collect_pinned(port, "127.0.0.1", &other.0).await);
    assert!(
        error.contains("TLS verification failed") && error.contains("SelfSignedNotPinned"),
        "{error}"
    );

    // Validity is still checked: an expired and a not-yet-valid certificate, pinned exactly.
    for (not_before, not_after, why) in [
        (now - day * 3, now - day, "Expired"),
        (now + day, now + day * 3, "NotValidYet"),
    ] {
        let certificate =
            common::kubelet::self_signed_ca_certificate(&names, not_before, not_after);
        let kubelet =
            Kubelet::start_serving(behaviour(), Pki::new("fixture"), certificate.clone()).await;
        let error =
            failure(collect_pinned(kubelet.address.port(), "127.0.0.1", &certificate.0).await);
        assert!(error.contains(why), "{why}: {error}");
    }
}

#[tokio::test]
async fn in_a_pod_the_node_name_service_account_token_and_cluster_ca_are_the_defaults() {
    let kubelet = Kubelet::start(behaviour()).await;
    let account = tempfile::tempdir().unwrap();
    std::fs::write(account.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(account.path().join("ca.crt"), &kubelet.pki.ca).unwrap();
    let in_pod = |name: &str| match name {
        "NODE_NAME" => Some("localhost".to_owned()),
        "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_owned()),
        _ => None,
    };
    let file = KubernetesConfig {
        enabled: Enabled::Always,
        kubelet_port: kubelet.address.port(),
        ..Default::default()
    };
    let config = file.in_cluster(in_pod, account.path());
    assert_eq!(config.kubelet_host, "localhost");
    assert_eq!(
        config.credentials,
        account.path().join("token").display().to_string()
    );
    assert_eq!(
        config.kubelet_ca,
        account.path().join("ca.crt").display().to_string()
    );
    let labels = labels_of(
        &collector(&config),
        &subject(METRICS_SERVER_UID, "metrics-server"),
    )
    .await;
    assert_eq!(labels.to_text(), expected_metrics_server());

    // The token is the projected one, read again on every request: a rotated token is used.
    let rotated = format!("{TOKEN}-rotated");
    kubelet.set(|b| b.tokens = vec![rotated.clone()]);
    std::fs::write(account.path().join("token"), &rotated).unwrap();
    let error = collector(&config)
        .collect(&subject(METRICS_SERVER_UID, "metrics-server"))
        .await;
    assert!(error.is_ok(), "{error:?}");

    // What the file says wins.
    let explicit = KubernetesConfig {
        kubelet_host: "127.0.0.1".to_owned(),
        credentials: "inline-token".to_owned(),
        kubelet_ca: "/etc/kubelet-ca.pem".to_owned(),
        ..file.clone()
    };
    assert_eq!(explicit.in_cluster(in_pod, account.path()), explicit);

    // Outside a pod only NODE_NAME is followed; without a mounted token, nothing else either.
    let outside = |name: &str| (name == "NODE_NAME").then(|| "node-7".to_owned());
    let config = file.in_cluster(outside, account.path());
    assert_eq!(config.kubelet_host, "node-7");
    assert!(config.credentials.is_empty() && config.kubelet_ca.is_empty());
    let config = file.in_cluster(in_pod, &account.path().join("absent"));
    assert!(config.credentials.is_empty() && config.kubelet_ca.is_empty());
}

#[tokio::test]
async fn skipping_verification_accepts_any_kubelet_certificate() {
    let kubelet = Kubelet::start(behaviour()).await;
    let config = KubernetesConfig {
        kubelet_ca: String::new(),
        skip_kubelet_verification: true,
        ..config_for(&kubelet, TOKEN)
    };
    let labels = labels_of(
        &collector(&config),
        &subject(METRICS_SERVER_UID, "metrics-server"),
    )
    .await;
    assert_eq!(labels.to_text(), expected_metrics_server());
}

#[tokio::test]
async fn a_client_certificate_authenticates_from_files_or_inline() {
    let kubelet = Kubelet::start(Behaviour {
        tokens: Vec::new(),
        ..behaviour()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("agent.crt"), dir.path().join("agent.key"));
    std::fs::write(&cert, &kubelet.pki.client.0).unwrap();
    std::fs::write(&key, &kubelet.pki.client.1).unwrap();
    let subject = subject(METRICS_SERVER_UID, "metrics-server");

    let paths = format!("{}, {}", cert.display(), key.display());
    let labels = labels_of(&collector(&config_for(&kubelet, &paths)), &subject).await;
    assert_eq!(labels.to_text(), expected_metrics_server());

    let inline = format!("{}{}", kubelet.pki.client.0, kubelet.pki.client.1);
    let labels = labels_of(&collector(&config_for(&kubelet, &inline)), &subject).await;
    assert_eq!(
        labels.get("k8s:pod:name"),
        ["metrics-server-648b5df564-drsb2"]
    );

    // A certificate from another authority is no proof: 401, naming the files.
    let other = Pki::new("other");
    std::fs::write(&cert, &other.client.0).unwrap();
    std::fs::write(&key, &other.client.1).unwrap();
    let error = failure(
        collector(&config_for(&kubelet, &paths))
            .collect(&subject)
            .await,
    );
    assert!(!error.is_empty());
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again() {
    let kubelet = Kubelet::start(Behaviour {
        pods: pods_json_with(|uid| uid == METRICS_SERVER_UID),
        tokens: vec!["first-token".to_owned()],
        ..behaviour()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "first-token\n").unwrap();
    let collector = collector(&config_for(&kubelet, file.to_str().unwrap()));
    labels_of(&collector, &subject(METRICS_SERVER_UID, "metrics-server")).await;

    // The service-account token rotates; a new pod appears.
    kubelet.set(|b| {
        b.tokens = vec!["second-token".to_owned()];
        b.pods = pods_json();
    });
    std::fs::write(&file, "second-token\n").unwrap();
    tokio::time::sleep(collectors::kubernetes::MIN_REFRESH_GAP).await;
    let web = labels_of(&collector, &subject(WEB_UID, "app")).await;
    assert_eq!(web.get("k8s:pod:name"), ["web-7d4b9c6f5-x2kq9"]);
    assert_eq!(kubelet.pod_lists_served(), 2);
}

#[tokio::test]
async fn a_slow_kubelet_costs_one_deadline() {
    let kubelet = Kubelet::start(Behaviour {
        delay: Duration::from_secs(5),
        ..behaviour()
    })
    .await;
    let collector = KubernetesCollector::new(&KubernetesConfig {
        timeout: Duration::from_millis(300),
        ..config_for(&kubelet, TOKEN)
    })
    .unwrap();
    let started = Instant::now();
    let error = failure(
        collector
            .collect(&subject(METRICS_SERVER_UID, "metrics-server"))
            .await,
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("did not answer within 300ms"), "{error}");
}

#[tokio::test]
async fn a_kubelet_that_is_down_is_unavailable_or_failed_as_configured() {
    let kubelet = Kubelet::start(behaviour()).await;
    kubelet.stop();
    // Let the aborted listener close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let subject = subject(METRICS_SERVER_UID, "metrics-server");
    let auto = KubernetesConfig {
        enabled: Enabled::Auto,
        ..config_for(&kubelet, TOKEN)
    };
    let started = Instant::now();
    match collector(&auto).collect(&subject).await {
        Err(CollectError::Unavailable {
            reason: message, ..
        }) => {
            assert!(
                message.starts_with("no kubelet at https://127.0.0.1:"),
                "{message}"
            )
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let always = failure(
        collector(&config_for(&kubelet, TOKEN))
            .collect(&subject)
            .await,
    );
    assert!(always.starts_with("no kubelet at"), "{always}");
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    let kubelet = Kubelet::start(Behaviour {
        delay: Duration::from_millis(200),
        ..behaviour()
    })
    .await;
    let collector = collector(&config_for(&kubelet, TOKEN));
    let subjects: Vec<Subject> = (0..20)
        .map(|i| match i % 3 {
            0 => subject(METRICS_SERVER_UID, "metrics-server"),
            1 => subject(WEB_UID, "proxy"),
            _ => subject(WEB_UID, "migrate"),
        })
        .collect();
    let results =
        futures_util::future::join_all(subjects.iter().map(|s| collector.collect(s))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(kubelet.pod_lists_served(), 1);
}

#[tokio::test]
async fn a_deleted_pod_stays_resolvable_for_the_grace_period() {
    let kubelet = Kubelet::start(behaviour()).await;
    let with_grace = collector(&config_for(&kubelet, TOKEN));
    let without = collector(&KubernetesConfig {
        deleted_pod_grace: Duration::ZERO,
        ..config_for(&kubelet, TOKEN)
    });
    let pod = subject(METRICS_SERVER_UID, "metrics-server");
    labels_of(&with_grace, &pod).await;
    labels_of(&without, &pod).await;

    // The pod is deleted; an unknown pod makes both collectors fetch the list again.
    kubelet.set(|b| b.pods = pods_json_with(|uid| uid != METRICS_SERVER_UID));
    tokio::time::sleep(collectors::kubernetes::MIN_REFRESH_GAP).await;
    let unknown = subject("00000000-0000-0000-0000-000000000000", "nothing");
    assert!(failure(with_grace.collect(&unknown).await).contains("lists no pod with UID"));
    assert!(failure(without.collect(&unknown).await).contains("lists no pod with UID"));

    assert_eq!(
        labels_of(&with_grace, &pod).await.to_text(),
        expected_metrics_server()
    );
    let gone = failure(without.collect(&pod).await);
    assert!(gone.contains(METRICS_SERVER_UID), "{gone}");
}

#[tokio::test]
async fn a_container_the_pod_does_not_list_gets_no_pod_labels() {
    let kubelet = Kubelet::start(behaviour()).await;
    let collector = collector(&config_for(&kubelet, TOKEN));
    // The container the status's lastState names: an earlier one, not matched. A pod UID in a
    // cgroup path is not enough: the pod must list the container (issue 18). Partial, so the
    // next lookup asks again (the kubelet's status may lag a container that just started).
    let earlier = subject(METRICS_SERVER_UID, "metrics-server-previous");
    let collected = collector.collect(&earlier).await.unwrap();
    assert!(
        collected
            .partial
            .as_deref()
            .is_some_and(|p| p.contains("does not list container")),
        "{:?}",
        collected.partial
    );
    assert!(collected.labels.is_empty(), "{}", collected.labels);
}

#[tokio::test]
async fn processes_outside_pods_never_reach_the_kubelet() {
    let kubelet = Kubelet::start(behaviour()).await;
    let collector = collector(&config_for(&kubelet, TOKEN));
    let host = collector.collect(&Subject::default()).await;
    assert!(
        matches!(host, Err(CollectError::NotApplicable(_))),
        "{host:?}"
    );
    let mut docker = subject(METRICS_SERVER_UID, "metrics-server");
    docker.container.as_mut().unwrap().pod_uid = None;
    let plain = collector.collect(&docker).await;
    assert!(
        matches!(&plain, Err(CollectError::NotApplicable(m)) if m.contains("not in a Kubernetes pod")),
        "{plain:?}"
    );
    assert_eq!(kubelet.pod_lists_served(), 0);
}

/// `metadata-agent inspect <pid> --json` with `config`.
async fn inspect(config: &Path, pid: u32) -> serde_json::Value {
    let config = config.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        common::run(
            common::agent()
                .args(["inspect", &pid.to_string(), "--json", "--config"])
                .arg(&config),
        )
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn k8s_labels(resolution: &serde_json::Value) -> String {
    let labels: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_value(resolution["labels"].clone()).unwrap();
    let mut set = LabelSet::new();
    for (key, values) in labels.into_iter().filter(|(k, _)| k.starts_with("k8s:")) {
        set.insert_all(&key, values);
    }
    set.to_text()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_cgroups_shaped_like_a_kubelets_resolve_to_their_pods() {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    let v2 = Path::new("/sys/fs/cgroup/unified");
    let ready = common::is_root()
        && v1.join("cgroup.procs").exists()
        && v2.join("cgroup.controllers").exists();
    if !common::require(
        ready,
        "root, a cgroup v1 pids hierarchy at /sys/fs/cgroup/pids and cgroup v2 at /sys/fs/cgroup/unified",
    ) {
        return;
    }
    let kubelet = Kubelet::start(behaviour()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let token = dir.path().join("token");
    std::fs::write(&ca, &kubelet.pki.ca).unwrap();
    std::fs::write(&token, TOKEN).unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "collectors:\n  docker:\n    enabled: false\n  kubernetes:\n    enabled: true\n    \
             kubeletHost: 127.0.0.1\n    kubeletPort: {}\n    kubeletCA: {}\n    credentials: {}\n",
            kubelet.address.port(),
            ca.display(),
            token.display()
        ),
    )
    .unwrap();
    let pods = fixture_pods();

    // cgroupfs driver, cgroup v1: kubepods/<qos>/pod<uid>/<id>; the web pod's proxy container.
    let proxy = container_id("proxy");
    let cgroupfs = common::cgroups::Cgroups::spawn_into(
        v1,
        &format!("kubepods/besteffort/pod{WEB_UID}/{proxy}"),
    );
    let resolution = inspect(&config, cgroupfs.child.id()).await;
    let expected = collectors::kubernetes::labels::labels_of(
        &pods[1],
        &proxy,
        collectors::kubernetes::labels::find_status(&pods[1], &proxy),
        &KubernetesConfig::default().drop_annotations,
    );
    assert_eq!(
        k8s_labels(&resolution),
        expected.to_text(),
        "{resolution:#}"
    );
    assert_eq!(expected.get("k8s:container:name"), ["proxy"]);
    drop(cgroupfs);

    // systemd driver, cgroup v2: the reference's metrics-server pod, run by containerd.
    let id = container_id("metrics-server");
    let slice = METRICS_SERVER_UID.replace('-', "_");
    let systemd = common::cgroups::Cgroups::spawn_into(
        v2,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice}.slice/\
             cri-containerd-{id}.scope"
        ),
    );
    let resolution = inspect(&config, systemd.child.id()).await;
    assert_eq!(
        k8s_labels(&resolution),
        expected_metrics_server(),
        "{resolution:#}"
    );
    let statuses = resolution["collectors"].as_array().unwrap();
    let kubernetes = statuses.iter().find(|c| c["name"] == "kubernetes").unwrap();
    assert_eq!(kubernetes["status"]["state"], "ok", "{kubernetes:#}");
    assert_eq!(resolution["trust"]["k8s:pod:name"], "runtime");
    assert_eq!(resolution["trust"]["process:container:id"], "runtime");

    // The same pod and container named by an unprivileged user's cgroups, in the subtree systemd
    // delegates to it (what `systemd-run --user --scope` gives): no pod identity.
    let delegated = "user.slice/user-1000.slice/user@1000.service";
    let forged = common::cgroups::Cgroups::spawn_delegated(
        v2,
        &format!(
            "{delegated}/app.slice/kubepods-besteffort-pod{slice}.slice/cri-containerd-{id}.scope"
        ),
        Some((delegated, 1000)),
    );
    let resolution = inspect(&config, forged.child.id()).await;
    assert_eq!(k8s_labels(&resolution), "", "{resolution:#}");
    assert!(resolution["container"].is_null(), "{resolution:#}");
    assert_eq!(resolution["labels"]["process:container:id"][0], id.as_str());
    assert_eq!(resolution["trust"]["process:container:id"], "self");
    assert_eq!(resolution["labels"]["process:uid"][0], "1000");
    let statuses = resolution["collectors"].as_array().unwrap();
    let kubernetes = statuses.iter().find(|c| c["name"] == "kubernetes").unwrap();
    assert_eq!(
        kubernetes["status"]["state"], "not_applicable",
        "{kubernetes:#}"
    );
    let reason = kubernetes["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("user@1000.service"), "{reason}");
    drop(forged);
    let made = systemd.made.clone();
    drop(systemd);
    assert!(
        made.iter().all(|dir| !dir.exists()),
        "cgroups left: {made:?}"
    );
}

#[tokio::test]
async fn a_changed_pod_invalidates_its_containers_cached_labels() {
    let kubelet = Kubelet::start(behaviour()).await;
    let collector = collector(&KubernetesConfig {
        refresh_interval: Duration::from_millis(100),
        ..config_for(&kubelet, TOKEN)
    });
    let mut invalidations = collector.invalidations().unwrap();
    labels_of(&collector, &subject(METRICS_SERVER_UID, "metrics-server")).await;

    // The pod gets a new label, hence a new resourceVersion.
    let changed = pods_json()
        .replace(
            "\"resourceVersion\": \"4711\"",
            "\"resourceVersion\": \"4712\"",
        )
        .replace(
            "\"k8s-app\": \"metrics-server\"",
            "\"k8s-app\": \"metrics\"",
        );
    assert_ne!(changed, pods_json());
    kubelet.set(|b| b.pods = changed);
    let notice = tokio::time::timeout(Duration::from_secs(5), invalidations.recv())
        .await
        .expect("no invalidation within 5s")
        .unwrap();
    assert_eq!(
        notice,
        collectors::Invalidation::Container(container_id("metrics-server"))
    );
    let labels = labels_of(&collector, &subject(METRICS_SERVER_UID, "metrics-server")).await;
    assert_eq!(labels.get("k8s:label:k8s-app"), ["metrics"]);
}

/// The fixture's pod list with `annotations` added to the web pod, placed first or last.
fn pods_json_with_web_annotations(annotations: serde_json::Value, web_first: bool) -> String {
    let mut list: serde_json::Value = serde_json::from_str(&pods_json()).unwrap();
    let items = list["items"].as_array_mut().unwrap();
    let at = items
        .iter()
        .position(|pod| pod["metadata"]["uid"] == WEB_UID)
        .unwrap();
    let mut web = items.remove(at);
    let existing = web["metadata"]["annotations"].take();
    let mut merged = existing.as_object().cloned().unwrap_or_default();
    merged.extend(annotations.as_object().unwrap().clone());
    web["metadata"]["annotations"] = serde_json::Value::Object(merged);
    if web_first {
        items.insert(0, web);
    } else {
        items.push(web);
    }
    list.to_string()
}

#[tokio::test]
async fn a_config_hash_annotation_never_takes_another_pods_identity() {
    let subject = subject(METRICS_SERVER_UID, "metrics-server");
    // Any pod can set `kubernetes.io/config.hash`; the web pod names the metrics-server's UID,
    // listed before and after it, as an API pod and claiming to be a static pod's mirror.
    for (annotations, web_first) in [
        (
            serde_json::json!({"kubernetes.io/config.hash": METRICS_SERVER_UID}),
            true,
        ),
        (
            serde_json::json!({"kubernetes.io/config.hash": METRICS_SERVER_UID}),
            false,
        ),
        (
            serde_json::json!({"kubernetes.io/config.hash": METRICS_SERVER_UID,
                               "kubernetes.io/config.mirror": METRICS_SERVER_UID,
                               "kubernetes.io/config.source": "file"}),
            true,
        ),
        (
            serde_json::json!({"kubernetes.io/config.hash": METRICS_SERVER_UID,
                               "kubernetes.io/config.mirror": METRICS_SERVER_UID}),
            false,
        ),
    ] {
        let kubelet = Kubelet::start(Behaviour {
            pods: pods_json_with_web_annotations(annotations.clone(), web_first),
            ..behaviour()
        })
        .await;
        let labels = labels_of(&collector(&config_for(&kubelet, TOKEN)), &subject).await;
        assert_eq!(
            labels.to_text(),
            expected_metrics_server(),
            "{annotations} (web first: {web_first})"
        );
    }
}

#[tokio::test]
async fn a_static_pod_is_found_by_its_config_hash() {
    // The kubelet names a static pod's cgroup after its config hash; the mirror pod the API
    // server holds has another UID.
    let hash = "0f0f0f0f-1111-2222-3333-444455556666";
    let kubelet = Kubelet::start(Behaviour {
        pods: pods_json_with_web_annotations(
            serde_json::json!({"kubernetes.io/config.hash": hash,
                               "kubernetes.io/config.mirror": hash,
                               "kubernetes.io/config.source": "file"}),
            false,
        ),
        ..behaviour()
    })
    .await;
    let collector = collector(&config_for(&kubelet, TOKEN));
    let labels = labels_of(&collector, &subject(hash, "proxy")).await;
    assert_eq!(labels.get("k8s:pod:uid"), [WEB_UID]);
    assert_eq!(labels.get("k8s:container:name"), ["proxy"]);
    // Without the static pod's annotations, the hash names nobody.
    let api = Kubelet::start(Behaviour {
        pods: pods_json_with_web_annotations(
            serde_json::json!({"kubernetes.io/config.hash": hash}),
            false,
        ),
        ..behaviour()
    })
    .await;
    let result = collector_for_api(&api)
        .collect(&subject(hash, "proxy"))
        .await;
    assert!(
        matches!(&result, Err(CollectError::Failed { .. })),
        "{result:?}"
    );
}

fn collector_for_api(kubelet: &Kubelet) -> KubernetesCollector {
    collector(&config_for(kubelet, TOKEN))
}

#[tokio::test]
async fn pods_with_addresses_of_their_own_are_the_nodes_workloads() {
    let mut list: serde_json::Value = serde_json::from_str(&pods_json()).unwrap();
    for pod in list["items"].as_array_mut().unwrap() {
        match pod["metadata"]["uid"].as_str().unwrap() {
            WEB_UID => {
                pod["status"]["podIPs"] =
                    serde_json::json!([{"ip": "10.42.0.9"}, {"ip": "fd00::9"}]);
            }
            METRICS_SERVER_UID => {}
            // A host-network pod has the node's address: not a workload of its own.
            _ => {
                pod["spec"]["hostNetwork"] = true.into();
                pod["status"]["podIP"] = "192.168.1.10".into();
            }
        }
    }
    let kubelet = Kubelet::start(Behaviour {
        pods: list.to_string(),
        ..behaviour()
    })
    .await;
    let config = config_for(&kubelet, TOKEN);
    let workloads = collector(&config).workloads().await.unwrap();
    let mut found: Vec<(String, Vec<String>)> = workloads
        .iter()
        .map(|workload| {
            let name = workload.labels.get("k8s:pod:name")[0].clone();
            let addresses = workload.addresses.iter().map(|a| a.to_string()).collect();
            (name, addresses)
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (
                "metrics-server-648b5df564-drsb2".to_owned(),
                vec!["10.42.0.5".to_owned()]
            ),
            (
                "web-7d4b9c6f5-x2kq9".to_owned(),
                vec!["10.42.0.9".to_owned(), "fd00::9".to_owned()]
            ),
        ]
    );
    let web = workloads.iter().find(|w| w.addresses.len() == 2).unwrap();
    assert!(!web.labels.get("k8s:pod:namespace").is_empty());
    assert!(web.labels.get("k8s:container:id").is_empty());

    // With `auto`, no kubelet is asked until a lookup found one.
    let auto = KubernetesConfig {
        enabled: Enabled::Auto,
        ..config
    };
    let served = kubelet.pod_lists_served();
    assert!(collector(&auto).workloads().await.unwrap().is_empty());
    assert_eq!(kubelet.pod_lists_served(), served);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_agent_answers_by_pod_container_and_cgroup_id() {
    let v2 = Path::new("/sys/fs/cgroup/unified");
    if !common::require(
        common::is_root() && v2.join("cgroup.controllers").exists(),
        "root and cgroup v2 at /sys/fs/cgroup/unified",
    ) {
        return;
    }
    let kubelet = Kubelet::start(behaviour()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let token = dir.path().join("token");
    std::fs::write(&ca, &kubelet.pki.ca).unwrap();
    std::fs::write(&token, TOKEN).unwrap();
    let config = common::daemon::write(
        dir.path(),
        "agent.yaml",
        &format!(
            "collectors:\n  docker:\n    enabled: false\n  kubernetes:\n    enabled: true\n    \
             kubeletHost: 127.0.0.1\n    kubeletPort: {}\n    kubeletCA: {}\n    credentials: {}\n",
            kubelet.address.port(),
            ca.display(),
            token.display()
        ),
    );
    // The metrics-server pod's container, in a cgroup where containerd and the kubelet's
    // systemd driver put it.
    let id = container_id("metrics-server");
    let slice = METRICS_SERVER_UID.replace('-', "_");
    let leaf = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice}.slice/\
         cri-containerd-{id}.scope"
    );
    let pod = common::cgroups::Cgroups::spawn_into(v2, &leaf);
    let pid = pod.child.id();
    let daemon = common::daemon::Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);

    // By pod UID: the pod's labels, and its container's.
    let (status, answer) = daemon
        .get_json(&format!("/pods/{METRICS_SERVER_UID}"))
        .await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["uid"], METRICS_SERVER_UID, "{answer:#}");
    assert_eq!(
        answer["labels"]["k8s:pod:name"][0], "metrics-server-648b5df564-drsb2",
        "{answer:#}"
    );
    assert!(
        answer["labels"]["k8s:container:name"].is_null(),
        "{answer:#}"
    );
    assert!(
        answer["labels"]["linuxos:kernel:release"].is_array(),
        "node labels too"
    );
    assert!(
        answer["labels"]["process:pid"].is_null(),
        "no process's own labels"
    );
    assert_eq!(answer["containers"][0]["id"], id.as_str());
    assert_eq!(
        answer["containers"][0]["labels"]["k8s:container:name"][0],
        "metrics-server"
    );
    assert_eq!(answer["trust"]["k8s:pod:name"], "runtime");

    // By container id, whole or a 12-digit prefix.
    for asked in [id.as_str(), &id[..12]] {
        let (status, answer) = daemon.get_json(&format!("/containers/{asked}")).await;
        assert_eq!(status, 200, "{asked}: {answer:#}");
        assert_eq!(answer["id"], id.as_str());
        assert_eq!(answer["pids"], serde_json::json!([pid]));
        assert_eq!(answer["labels"]["k8s:container:name"][0], "metrics-server");
    }

    // By the cgroup id the hook reports (the directory's inode), with its processes.
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(v2.join(&leaf)).unwrap().ino()
    };
    let (status, answer) = daemon
        .get_json(&format!("/metadata?cgroup_id={inode}&processes=true"))
        .await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["cgroup"], format!("/{leaf}"));
    assert_eq!(answer["container"]["id"], id.as_str());
    assert_eq!(
        answer["labels"]["k8s:pod:name"][0],
        "metrics-server-648b5df564-drsb2"
    );
    assert_eq!(answer["processes"][0]["pid"], pid);
    assert_eq!(
        answer["processes"][0]["labels"]["process:pid"][0],
        pid.to_string()
    );

    // A user's own cgroups shaped like the web pod's proxy container (what `systemd-run
    // --user --scope` lets anyone make): neither the container nor the pod is found through them.
    let delegated = "user.slice/user-1000.slice/user@1000.service";
    let web_slice = WEB_UID.replace('-', "_");
    let proxy = container_id("proxy");
    let forged = common::cgroups::Cgroups::spawn_delegated(
        v2,
        &format!(
            "{delegated}/app.slice/kubepods-besteffort-pod{web_slice}.slice/cri-containerd-{proxy}.scope"
        ),
        Some((delegated, 1000)),
    );
    let (status, answer) = daemon.get_json(&format!("/containers/{proxy}")).await;
    assert_eq!(
        status, 404,
        "a forged container cgroup answered: {answer:#}"
    );
    let (status, answer) = daemon.get_json(&format!("/pods/{WEB_UID}")).await;
    assert_eq!(status, 404, "a forged pod cgroup answered: {answer:#}");
    drop(forged);

    // What is not there, and what is not an id.
    for (path, status, code) in [
        (format!("/pods/{WEB_UID}"), 404, "no_such_pod"),
        ("/pods/not-a-uid".to_owned(), 400, "invalid_pod_uid"),
        (
            format!("/containers/{}", container_id("nowhere")),
            404,
            "no_such_container",
        ),
        ("/containers/xyz".to_owned(), 400, "invalid_container_id"),
        (
            "/metadata?cgroup_id=1234567890123".to_owned(),
            404,
            "no_such_cgroup",
        ),
        (
            "/metadata?cgroup_id=abc".to_owned(),
            400,
            "invalid_cgroup_id",
        ),
        ("/metadata".to_owned(), 400, "missing_parameter"),
        // Parameters the lookup does not take: refused, not ignored.
        (
            "/metadata?cgroup_id=1&=null".to_owned(),
            400,
            "invalid_query",
        ),
        (
            "/metadata?cgroup_id=1&colour=red".to_owned(),
            400,
            "invalid_query",
        ),
    ] {
        let (got, answer) = daemon.get_json(&path).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }
    let (_, answer) = daemon.get_json("/metadata?cgroup_id=1&colour=red").await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("colour"), "names the parameter: {answer}");
    drop(daemon);
    drop(pod);
}
