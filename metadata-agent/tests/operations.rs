//! The operations listener (`server.opsListen`): probes and metrics on an address of their
//! own, with a token of their own, while the API stays where it is; and the log as JSON lines
//! with its level from `RUST_LOG`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, token_config, write};

/// The operations listener's `http://ADDR`, from the agent's log.
fn ops_address(daemon: &Daemon) -> String {
    assert!(
        daemon.wait_for_log("operations listening on ", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    let rest = log.split("operations listening on ").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = common::http_client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_answer_on_the_operations_listener_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "agent.yaml",
        "server:\n  opsListen: 127.0.0.1:0\n",
    );
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let ops = ops_address(&daemon);
    assert_ne!(ops, daemon.address);

    // Probes as the kubelet sends them: to the pod's address, named in Host.
    let probe_host = [("host", "10.244.1.7:9821")];
    let (status, body) = get(&format!("{ops}/healthz"), &probe_host).await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        health["status"] == "ok" || health["status"] == "degraded",
        "{health}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = get(&format!("{ops}/readyz"), &probe_host).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, metrics) = get(&format!("{ops}/metrics"), &[]).await;
    assert_eq!(status, 200);
    for series in [
        "metadata_agent_build_info{version=",
        "process_open_fds ",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "metadata_agent_http_requests_total{route=\"/healthz\"",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }

    // The API is not served there.
    let (status, body) = get(&format!("{ops}/metadata/{}", daemon.pid()), &[]).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get(&format!("{ops}/node"), &[]).await;
    assert_eq!(status, 404);
    // And it is still served where it was.
    let (status, _) = get(&daemon.url(&format!("/metadata/{}", daemon.pid())), &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_token_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path(), "api-token");
    let ops_token = write(dir.path(), "ops-token", "ops-token\n");
    std::fs::set_permissions(
        &ops_token,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "server:\n",
        &format!("server:\n  opsListen: 127.0.0.1:0\n  opsTokenFile: {ops_token}\n"),
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let ops = ops_address(&daemon);

    let (status, _) = get(&format!("{ops}/metrics"), &[]).await;
    assert_eq!(status, 401);
    let (status, _) = get(
        &format!("{ops}/metrics"),
        &[("authorization", "Bearer api-token")],
    )
    .await;
    assert_eq!(status, 401, "the API's token opens the operations listener");
    let (status, _) = get(
        &format!("{ops}/metrics"),
        &[("authorization", "Bearer ops-token")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(
        &daemon.url("/node"),
        &[("authorization", "Bearer ops-token")],
    )
    .await;
    assert_eq!(status, 401, "the operations token opens the API");
    // Probes need no token, on either listener.
    let (status, _) = get(&format!("{ops}/healthz"), &[]).await;
    assert_eq!(status, 200);
    let (status, _) = get(&daemon.url("/healthz"), &[]).await;
    assert_eq!(status, 200);
}

#[test]
fn an_operations_listener_that_cannot_be_used_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (server, expected) in [
        ("  opsListen: nowhere\n", "server.opsListen"),
        (
            "  listen: 127.0.0.1:39821\n  opsListen: 127.0.0.1:39821\n",
            "server.opsListen is the API's own listen address",
        ),
        (
            "  opsListen: 127.0.0.1:0\n  opsTokenFile: /nonexistent/ops-token\n",
            "/nonexistent/ops-token",
        ),
    ] {
        let config = write(dir.path(), "agent.yaml", &format!("server:\n{server}"));
        let output = common::run(common::agent().args(["run", "--config", &config]));
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{server}: {stderr}");
    }
}

#[test]
fn the_log_is_json_lines_on_request_with_its_level_from_rust_log() {
    let mut child = common::agent()
        .args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("METADATA_AGENT_LOG")
        .env_remove("METADATA_AGENT_CONFIG")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    let mut listening = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let parsed: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        listening |= parsed["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on http://"));
        lines.push(parsed);
        if listening && lines.iter().any(|l| l["level"] == "DEBUG") {
            break;
        }
        if lines.len() > 2000 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "{lines:?}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string()
                && line["level"].is_string()
                && line["target"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "RUST_LOG=debug was not honoured: {lines:?}"
    );
}
