//! The Docker collector against a real Docker daemon: a container with labels, environment, a
//! hostname, a port binding and a command, inspected from the host PID namespace by PID; then the
//! daemon's cache follows the engine's events (a rename is seen).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, write};
use common::docker::{BUSYBOX, Dockerd, missing_prerequisite};

/// Parses `key: value` lines into key → values.
fn parse_labels(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let (key, value) = line
            .split_once(": ")
            .unwrap_or((line.trim_end_matches(':'), ""));
        labels
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    labels
}

fn only<'a>(
    labels: &'a BTreeMap<String, Vec<String>>,
    prefix: &str,
) -> BTreeMap<&'a str, Vec<&'a str>> {
    labels
        .iter()
        .filter(|(key, _)| key.starts_with(prefix))
        .map(|(key, values)| (key.as_str(), values.iter().map(String::as_str).collect()))
        .collect()
}

fn status_field(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_process_gets_exact_docker_and_process_labels() {
    let missing = missing_prerequisite();
    if !common::require(missing.is_none(), missing.unwrap_or_default()) {
        return;
    }
    let docker = Dockerd::start();
    docker.import_busybox_image("ma-test:1");
    let id = docker.ok(&[
        "run",
        "-d",
        "--name",
        "ma-web",
        "--label",
        "tier=frontend",
        "--label",
        "team=net ops",
        "-e",
        "FOO=bar",
        "-e",
        "api_token=hunter2",
        "--hostname",
        "web-1",
        "-p",
        "127.0.0.1::8080",
        "ma-test:1",
        "/bin/sleep",
        "1000",
    ]);
    assert_eq!(id.len(), 64, "{id}");
    let pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let image_id = docker.ok(&["image", "inspect", "-f", "{{.Id}}", "ma-test:1"]);

    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "agent.yaml",
        &format!(
            "collectors:\n  docker:\n    socketPath: unix://{}\n    extractEnvs: true\n",
            docker.socket.display()
        ),
    );
    let output = common::run(common::agent().args(["inspect", &pid, "--config", &config]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("# docker (container): ok"), "{stderr}");
    let labels = parse_labels(&String::from_utf8_lossy(&output.stdout));

    let expected_docker: BTreeMap<&str, Vec<&str>> = [
        ("docker:cmdline", vec!["/bin/sleep 1000"]),
        ("docker:env:API_TOKEN", vec!["<redacted>"]),
        ("docker:env:FOO", vec!["bar"]),
        ("docker:id", vec![id.as_str()]),
        ("docker:image:hash", vec![image_id.as_str()]),
        ("docker:image:name", vec!["ma-test:1"]),
        ("docker:label:team", vec!["net ops"]),
        ("docker:label:tier", vec!["frontend"]),
        ("docker:name", vec!["ma-web"]),
        ("docker:network:hostname", vec!["web-1"]),
        ("docker:network:mode", vec!["default"]),
        ("docker:port-binding", vec!["8080/tcp"]),
    ]
    .into_iter()
    .collect();
    assert_eq!(only(&labels, "docker:"), expected_docker);

    // The process as seen from the host PID namespace; the binary is the one inside the image.
    let ppid = status_field(&pid, "PPid");
    // labels.md: a 15-character comm is completed from argv[0] when that starts with it.
    let mut parent_name = status_field(&ppid, "Name");
    let parent_argv0 = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap();
    let parent_argv0 = String::from_utf8_lossy(parent_argv0.split(|b| *b == 0).next().unwrap());
    let parent_argv0 = parent_argv0.rsplit('/').next().unwrap().to_owned();
    if parent_name.len() == 15 && parent_argv0.starts_with(&parent_name) {
        parent_name = parent_argv0;
    }
    let parent_exe = std::fs::read_link(format!("/proc/{ppid}/exe")).unwrap();
    let uid = status_field(&pid, "Uid");
    let uid = uid.split_whitespace().next().unwrap();
    let groups = status_field(&pid, "Groups");
    let start_time = labels["process:start-time"][0].clone();
    let mut expected_process: BTreeMap<&str, Vec<&str>> = [
        ("process:pid", vec![pid.as_str()]),
        ("process:ppid", vec![ppid.as_str()]),
        ("process:name", vec!["sleep"]),
        ("process:cmdline", vec!["/bin/sleep 1000"]),
        ("process:binary:path", vec![BUSYBOX]),
        ("process:cwd", vec!["/"]),
        ("process:uid", vec![uid]),
        ("process:uid:real", vec![uid]),
        ("process:uid:effective", vec![uid]),
        ("process:gid", vec!["0"]),
        ("process:gid:real", vec!["0"]),
        ("process:gid:effective", vec!["0"]),
        ("process:user:name", vec!["root"]),
        ("process:group:name", vec!["root"]),
        ("process:container:id", vec![id.as_str()]),
        ("process:parent:name", vec![parent_name.as_str()]),
        (
            "process:parent:binary:path",
            vec![parent_exe.to_str().unwrap()],
        ),
        ("process:start-time", vec![start_time.as_str()]),
    ]
    .into_iter()
    .collect();
    let hash = common::sha256sum(BUSYBOX);
    expected_process.insert("process:binary:hash", vec![hash.as_str()]);
    let cgroup = format!("/docker/{id}");
    expected_process.insert("process:cgroup", vec![cgroup.as_str()]);
    if !groups.is_empty() {
        expected_process.insert(
            "process:gid:additional",
            groups.split_whitespace().collect(),
        );
    }
    let mut process = only(&labels, "process:");
    let capabilities = process
        .remove("process:capabilities:effective")
        .unwrap_or_default();
    // Its execution, and its parent's (the shim's): `<boot>-<pid>-<start>-<image>`.
    for (key, pid) in [
        ("process:exec-id", pid.to_string()),
        ("process:parent:exec-id", ppid.to_string()),
    ] {
        let id = process.remove(key).unwrap_or_default();
        assert_eq!(id.len(), 1, "{key}: {id:?}");
        assert_eq!(id[0].split('-').nth(1), Some(pid.as_str()), "{key}: {id:?}");
    }
    // The container's init: no ancestors (its chain would leave the container).
    assert!(
        !process.contains_key("process:ancestor:name"),
        "{process:?}"
    );
    assert_eq!(process, expected_process);
    // Docker's default capability set: binding low ports yes, administering the system no.
    assert!(
        capabilities.contains(&"CAP_NET_BIND_SERVICE"),
        "{capabilities:?}"
    );
    assert!(!capabilities.contains(&"CAP_SYS_ADMIN"), "{capabilities:?}");

    // The daemon caches the container's labels and follows the engine's events.
    let agent = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let client = common::http_client();
    let url = agent.url(&format!("/metadata/{pid}?format=text"));
    let name_of = async || -> String {
        let body = client.get(&url).send().await.unwrap().text().await.unwrap();
        parse_labels(&body)
            .get("docker:name")
            .and_then(|v| v.first().cloned())
            .unwrap_or_default()
    };
    assert_eq!(name_of().await, "ma-web");
    assert_eq!(name_of().await, "ma-web");
    docker.ok(&["rename", "ma-web", "ma-api"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while name_of().await != "ma-api" {
        assert!(
            Instant::now() < deadline,
            "the rename was not noticed; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = client
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"metadata_agent_cache_hits_total{scope="container"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"metadata_agent_cache_removals_total{scope="container"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_containers_secrets_appear_in_no_answer() {
    let missing = missing_prerequisite();
    if !common::require(missing.is_none(), missing.unwrap_or_default()) {
        return;
    }
    let docker = Dockerd::start();
    docker.import_busybox_image("ma-test:1");
    let id = docker.ok(&[
        "run",
        "-d",
        "-e",
        "DATABASE_URL=postgres://u:secret-in-url@db/x",
        "-e",
        "DB_PASS=secret-in-env",
        "ma-test:1",
        "sh",
        "-c",
        "sleep 1000",
        "--password=secret-in-args",
    ]);
    let pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let dir = tempfile::tempdir().unwrap();
    let answers = |extract_envs: bool| {
        let config = write(
            dir.path(),
            "agent.yaml",
            &format!(
                "collectors:\n  docker:\n    socketPath: unix://{}\n    extractEnvs: {extract_envs}\n  \
                 procfs:\n    extractEnvs: {extract_envs}\n",
                docker.socket.display()
            ),
        );
        let output =
            common::run(common::agent().args(["inspect", &pid, "--json", "--config", &config]));
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // By default: no environment at all, and the command line without the secret.
    let answer = answers(false);
    assert!(!answer.contains("secret-in"), "{answer}");
    assert!(!answer.contains("docker:env:"), "{answer}");
    assert!(answer.contains("--password=<redacted>"), "{answer}");
    // Environments asked for: still no secret, the URL's password hidden in place.
    let answer = answers(true);
    assert!(!answer.contains("secret-in"), "{answer}");
    assert!(answer.contains("postgres://u:<redacted>@db/x"), "{answer}");
    assert!(answer.contains("process:env:DB_PASS"), "{answer}");
}
