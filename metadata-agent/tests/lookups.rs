//! Lookups of a running agent beyond one PID: many PIDs at once (live, dead and invalid mixed),
//! the cached processes a selector matches, and a real Docker container by its id.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::daemon::Daemon;
use serde_json::{Value, json};

async fn post(daemon: &Daemon, path: &str, body: &str) -> (u16, Value) {
    let response = common::http_client()
        .post(daemon.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_pid_live_dead_or_invalid_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::daemon::write(dir.path(), "agent.yaml", "server:\n  maxBatchPids: 6\n");
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let live = std::process::id();
    let body = json!({"pids": [live, dead_pid, "abc", 0, daemon.pid(), -3]}).to_string();
    let (status, answer) = post(&daemon, "/metadata:batch", &body).await;
    assert_eq!(status, 200, "{answer:#}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    assert_eq!(results[0]["pid"], live);
    assert_eq!(
        results[0]["resolution"]["labels"]["process:pid"][0],
        live.to_string()
    );
    assert_eq!(results[1]["pid"], dead_pid);
    assert_eq!(results[1]["error"]["code"], "no_such_process");
    assert_eq!(results[1]["error"]["status"], 404);
    for invalid in [2, 3, 5] {
        assert_eq!(
            results[invalid]["error"]["code"], "invalid_pid",
            "{:#}",
            results[invalid]
        );
    }
    assert_eq!(
        results[4]["resolution"]["labels"]["process:pid"][0],
        daemon.pid().to_string()
    );

    // Over the cap, and not a batch at all.
    let body = json!({"pids": [1, 1, 1, 1, 1, 1, 1]}).to_string();
    let (status, answer) = post(&daemon, "/metadata:batch", &body).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (413, Some("too_many_pids"))
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxBatchPids")
    );
    for body in [
        r#"{"pid": 1}"#,
        "[[1, 2]]",
        r#"{"pids": [1], "more": 1}"#,
        r#"{"pids": 1}"#,
    ] {
        let (status, answer) = post(&daemon, "/metadata:batch", body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_body")),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_are_found_by_a_selector_over_the_cache() {
    if !common::require(common::is_root(), "root (to run a child as another user)") {
        return;
    }
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0"]);
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30").uid(4251).gid(4251);
    let mut sleeper = sleeper.spawn().unwrap();
    // Resolved once, so cached.
    let (status, _) = daemon
        .get_json(&format!("/metadata/{}", sleeper.id()))
        .await;
    assert_eq!(status, 200);

    let (status, answer) = daemon
        .get_json("/processes?selector=process:uid=4251")
        .await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["count"], 1, "{answer:#}");
    assert_eq!(answer["processes"][0]["pid"], sleeper.id());
    let (_, answer) = daemon
        .get_json("/processes?selector=process:uid=4251,process:name=sleep")
        .await;
    assert_eq!(answer["count"], 1);
    let (_, answer) = daemon
        .get_json("/processes?selector=process:uid=4251,process:name=bash")
        .await;
    assert_eq!(answer["count"], 0);
    let (_, answer) = daemon
        .get_json("/processes?selector=process:uid!=4251")
        .await;
    assert!(
        answer["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != sleeper.id()),
        "{answer:#}"
    );
    let (status, answer) = daemon.get_json("/processes?selector=process:uid=").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_selector"))
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_container_is_found_by_its_id() {
    if let Some(missing) = common::docker::missing_prerequisite() {
        common::require(false, missing);
        return;
    }
    let docker = common::docker::Dockerd::start();
    docker.import_busybox_image("busybox");
    let id = docker.ok(&[
        "run",
        "-d",
        "--label",
        "tier=cache",
        "busybox",
        "sleep",
        "600",
    ]);
    let pid: u32 = docker
        .ok(&["inspect", "-f", "{{.State.Pid}}", &id])
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::daemon::write(
        dir.path(),
        "agent.yaml",
        &format!(
            "collectors:\n  docker:\n    enabled: true\n    socketPath: {}\n",
            docker.socket.display()
        ),
    );
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    for asked in [id.as_str(), &id[..12]] {
        let (status, answer) = daemon.get_json(&format!("/containers/{asked}")).await;
        assert_eq!(status, 200, "{asked}: {answer:#}");
        assert_eq!(answer["id"], id.as_str());
        assert_eq!(answer["pids"], json!([pid]));
        assert_eq!(
            answer["labels"]["docker:label:tier"][0], "cache",
            "{answer:#}"
        );
        assert!(answer["labels"]["process:pid"].is_null());
        assert_eq!(answer["container"]["runtime"], "docker");
    }
}
