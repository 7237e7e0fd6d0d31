//! The daemon end to end: `metadata-agent run` as a child process, queried over HTTP about real
//! processes.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::daemon::{Daemon, token_config, write};
use serde_json::Value;

/// A `sleep` child, killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("300")
                .stdout(Stdio::null())
                .spawn()
                .expect("cannot start sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PID that names no process (a child that was started and reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let (status, content_type, body) = get(client, url).await;
    assert!(
        content_type.starts_with("application/json"),
        "{url}: {content_type}: {body}"
    );
    (status, serde_json::from_str(&body).unwrap())
}

async fn post(client: &reqwest::Client, url: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

const POLICIES: &str = r#"
policies:
  - name: sleepers
    action: deny
    priority: 5
    selectors:
      - process:binary:path: {glob: "*/sleep"}
  - name: everyone
    action: log
    selectors:
      - {}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn serves_labels_verdicts_and_clear_errors_for_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let policies = write(dir.path(), "policies.yaml", POLICIES);
    let config = write(dir.path(), "agent.yaml", "server:\n  maxBodyBytes: 4096\n");
    let daemon = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--config",
        &config,
        "--policies",
        &policies,
    ]);
    let client = common::http_client();
    let sleeper = Sleeper::start();
    let pid = sleeper.pid();
    daemon.wait_ready().await;

    // Labels of a real process, as JSON.
    let (status, body) = get_json(&client, &daemon.url(&format!("/metadata/{pid}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pid"], pid);
    let binary = std::fs::canonicalize(format!("/proc/{pid}/exe")).unwrap();
    let labels = &body["labels"];
    assert_eq!(labels["process:pid"][0], pid.to_string());
    assert_eq!(labels["process:binary:path"][0], binary.to_str().unwrap());
    assert_eq!(
        labels["process:binary:hash"][0],
        common::sha256sum(&binary).as_str()
    );
    assert!(labels["linuxos:kernel:release"][0].is_string(), "{labels}");
    let collectors = body["collectors"].as_array().unwrap();
    assert_eq!(body["trust"]["process:pid"], "kernel", "{body}");
    assert_eq!(body["trust"]["process:cmdline"], "self", "{body}");
    let procfs = collectors.iter().find(|c| c["name"] == "procfs").unwrap();
    assert_eq!(procfs["status"]["state"], "ok", "{procfs}");
    assert!(body["resolved_at"].as_str().unwrap().ends_with('Z'));

    // The second lookup is served from the cache.
    let (_, again) = get_json(&client, &daemon.url(&format!("/metadata/{pid}"))).await;
    assert_eq!(again["cached"], true);

    // The text rendering, by query and by Accept.
    let (status, content_type, text) = get(
        &client,
        &daemon.url(&format!("/metadata/{pid}?format=text")),
    )
    .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(text.contains(&format!("process:pid: {pid}\n")), "{text}");
    // The trust classes as comments, which parsers of the rendering skip.
    let kernel = text
        .lines()
        .find(|line| line.starts_with("# trust kernel: "))
        .unwrap_or_else(|| panic!("no kernel trust line: {text}"));
    assert!(
        kernel.split(' ').any(|key| key == "process:pid"),
        "{kernel}"
    );
    assert!(text.contains("# trust self: "), "{text}");
    let parsed = labels::LabelSet::from_text(&text).unwrap();
    assert_eq!(parsed.first("process:pid"), Some(pid.to_string().as_str()));
    let by_accept = client
        .get(daemon.url(&format!("/metadata/{pid}")))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(by_accept, text);

    // Bad input: 400 for what is not a PID, 404 for a PID with no process; JSON bodies.
    for bad in ["abc", "0", "-3", "1.5", "99999999999"] {
        let (status, body) = get_json(&client, &daemon.url(&format!("/metadata/{bad}"))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_pid");
    }
    let gone = dead_pid();
    let (status, body) = get_json(&client, &daemon.url(&format!("/metadata/{gone}"))).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "no_such_process");
    let (status, body) = get_json(&client, &daemon.url(&format!("/selectors/{gone}"))).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        get_json(&client, &daemon.url(&format!("/metadata/{pid}?format=xml"))).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get_json(&client, &daemon.url("/no/such/route")).await;
    assert_eq!(status, 404);

    // Policies matching the process, in precedence order.
    let (status, body) = get_json(&client, &daemon.url(&format!("/selectors/{pid}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verdict"], "deny");
    assert_eq!(body["pid"], pid);
    let names: Vec<&str> = body["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sleepers", "everyone"]);
    let (_, explained) = get_json(
        &client,
        &daemon.url(&format!("/selectors/{pid}?explain=true")),
    )
    .await;
    assert_eq!(explained["matched"][0]["policy"], "sleepers");

    // Dry runs on a label set, in both renderings.
    let url = daemon.url("/selectors/evaluate");
    let (status, body) = post(
        &client,
        &url,
        "application/json",
        r#"{"labels": {"process:binary:path": ["/usr/bin/sleep"]}}"#,
    )
    .await;
    assert_eq!(
        (status, body["verdict"].as_str()),
        (200, Some("deny")),
        "{body}"
    );
    let (status, body) = post(&client, &url, "text/plain", "process:uid: 0\n").await;
    assert_eq!(
        (status, body["verdict"].as_str()),
        (200, Some("log")),
        "{body}"
    );
    let (status, body) = post(&client, &url, "application/json", "{\"labels\": 3}").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_labels");
    let (status, body) = post(&client, &url, "application/json", &"x".repeat(10_000)).await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = post(&client, &url, "application/xml", "<labels/>").await;
    assert_eq!(status, 415);

    // Node labels, collectors, health, readiness.
    let (status, node) = get_json(&client, &daemon.url("/node")).await;
    assert_eq!(status, 200);
    assert!(node["labels"]["linuxos:name"][0].is_string(), "{node}");
    let (_, collectors) = get_json(&client, &daemon.url("/collectors")).await;
    let procfs = collectors["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "procfs")
        .unwrap()
        .clone();
    assert!(procfs["runs"].as_u64().unwrap() >= 1, "{procfs}");
    assert_eq!(procfs["scope"], "process");
    let (status, health) = get_json(&client, &daemon.url("/healthz")).await;
    assert_eq!(status, 200);
    // As root the hook attaches (observe mode); otherwise health says why not.
    if common::is_root() {
        assert_eq!(health["hook"]["attached"], true, "{health}");
        assert_eq!(health["hook"]["mode"], "observe", "{health}");
    } else {
        assert_eq!(health["hook"]["attached"], false, "{health}");
        assert!(health["hook"]["reason"].is_string(), "{health}");
    }
    assert_eq!(health["policies"]["policies"], 2);
    let (status, _) = get_json(&client, &daemon.url("/readyz")).await;
    assert_eq!(status, 200);

    // Metrics count what happened.
    let (status, content_type, metrics) = get(&client, &daemon.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    for series in [
        r#"metadata_agent_http_requests_total{route="/metadata/{pid}",method="GET",status="200"}"#,
        r#"metadata_agent_http_requests_total{route="/metadata/{pid}",method="GET",status="400"} 6"#,
        r#"metadata_agent_cache_hits_total{scope="process"}"#,
        r#"metadata_agent_collector_duration_seconds_count{collector="procfs"}"#,
        "metadata_agent_policies 2",
    ] {
        assert!(metrics.contains(series), "missing {series}:\n{metrics}");
    }

    // The OpenAPI document lists every route.
    let (status, openapi) = get_json(&client, &daemon.url("/openapi.json")).await;
    assert_eq!(status, 200);
    let mut paths: Vec<&str> = openapi["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/collectors",
            "/containers/{id}",
            "/events",
            "/healthz",
            "/metadata",
            "/metadata/{pid}",
            "/metadata:batch",
            "/metrics",
            "/node",
            "/openapi.json",
            "/pods/{uid}",
            "/processes",
            "/readyz",
            "/selectors/evaluate",
            "/selectors/{pid}",
        ]
    );

    // SIGTERM: a clean, quick exit, and nothing logged as an error on the way.
    let (status, elapsed, log) = daemon.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path(), "s3cr3t-token.value");
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let client = common::http_client();
    let me = std::process::id();
    let url = daemon.url(&format!("/metadata/{me}"));

    let (status, body) = get_json(&client, &url).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    for wrong in [
        "Bearer nope",
        "Bearer s3cr3t-token.valu",
        "Basic s3cr3t-token.value",
    ] {
        let response = client
            .get(&url)
            .header("authorization", wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{wrong}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let response = client
        .get(&url)
        .header("authorization", "Bearer s3cr3t-token.value")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    for guarded in ["/metrics", "/node", "/collectors", "/openapi.json"] {
        let (status, _, _) = get(&client, &daemon.url(guarded)).await;
        assert_eq!(status, 401, "{guarded}");
    }
    for open in ["/healthz", "/readyz"] {
        let (status, _, _) = get(&client, &daemon.url(open)).await;
        assert!(status == 200 || status == 503, "{open}: {status}");
        assert_ne!(status, 401, "{open}");
    }
}

#[test]
fn a_missing_token_file_or_bad_listen_address_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "agent.yaml",
        "server:\n  tokenFile: /nonexistent/token\n",
    );
    let output =
        common::run(common::agent().args(["run", "--config", &config, "--listen", "127.0.0.1:0"]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/token"), "{stderr}");

    let output = common::run(common::agent().args(["run", "--listen", "localhost"]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid listen address \"localhost\""),
        "{stderr}"
    );

    let broken = write(
        dir.path(),
        "bad.yaml",
        "policies:\n  - name: x\n    action: maybe\n",
    );
    let output = common::run(common::agent().args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--policies",
        &broken,
    ]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml:3:"), "{stderr}");
}

#[test]
fn a_unix_socket_listener_is_private_to_the_agent_user() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let daemon = Daemon::start(&["--listen", &format!("unix:{}", socket.display())]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\""), "{answer}");
    let (status, _, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_policy_file_keeps_the_previous_policies_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let good = "policies:\n  - name: web\n    action: allow\n    selectors:\n      - app: web\n";
    write(&policies, "a.yaml", good);
    let config = write(
        dir.path(),
        "agent.yaml",
        &format!(
            "policies:\n  path: {}\n  reloadInterval: 50ms\n  defaultAction: deny\n",
            policies.display()
        ),
    );
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let client = common::http_client();
    let url = daemon.url("/selectors/evaluate");
    let verdict = |body: Value| body["verdict"].as_str().unwrap().to_owned();
    let (_, body) = post(&client, &url, "text/plain", "app: web\n").await;
    assert_eq!(verdict(body), "allow");

    // A broken file: the previous policies stay in force; log, metric and health say so.
    write(
        &policies,
        "b.yaml",
        "policies:\n  - name: bad\n    selectors:\n      - app: {regex: \"(\"}\n",
    );
    assert!(
        daemon.wait_for_log("policy reload failed", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    // The message's second line (where) may reach the log a moment after its first.
    daemon.wait_for_log("b.yaml:4:", Duration::from_secs(2));
    assert!(daemon.log().contains("b.yaml:4:"), "{}", daemon.log());
    let (_, body) = post(&client, &url, "text/plain", "app: web\n").await;
    assert_eq!(verdict(body), "allow");
    let (_, health) = get_json(&client, &daemon.url("/healthz")).await;
    assert_eq!(health["status"], "degraded");
    assert!(
        health["problems"]
            .to_string()
            .contains("policy reload failed"),
        "{health}"
    );
    // The errors themselves only to a caller with the token (none is configured here).
    assert!(health["policies"].get("last_error").is_none(), "{health}");
    let (_, _, metrics) = get(&client, &daemon.url("/metrics")).await;
    assert!(
        metrics.contains("metadata_agent_policy_reload_failures_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metadata_agent_policy_reload_failing 1"),
        "{metrics}"
    );

    // Fixed: the new policies take over.
    write(
        &policies,
        "b.yaml",
        "policies:\n  - name: api\n    action: log\n    priority: 9\n    selectors:\n      - app: web\n",
    );
    assert!(
        daemon.wait_for_log("policies reloaded", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let (_, body) = post(&client, &url, "text/plain", "app: web\n").await;
    assert_eq!(verdict(body), "log");
    let (_, health) = get_json(&client, &daemon.url("/healthz")).await;
    assert!(health["policies"]["last_error"].is_null(), "{health}");
    let (_, body) = post(&client, &url, "text/plain", "app: db\n").await;
    assert_eq!(verdict(body), "deny", "the configured default");
}
