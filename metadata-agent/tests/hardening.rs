//! Requests from strangers and requests meant to stall the agent:
//!
//! - a 1 MiB body of distinct `k: N` lines is refused (or, under a raised cap, answered) at
//!   once: label parsing is linear, and evaluations run off the async workers;
//! - a `Host` the agent does not answer for (DNS rebinding) gets 421, a foreign `Origin` 403;
//! - a non-loopback listen address without a token stops the start;
//! - `/healthz` gives counts, not error texts, to a caller without the token;
//! - beyond `server.maxConcurrentEvaluations` requests get 503 with `Retry-After`, while probes
//!   and lookups keep answering.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, token_config, write};
use metadata_agent::config::Config;
use metadata_agent::run::Agent;
use serde_json::Value;

/// An in-process agent on a loopback port (its router as `run` builds it, without the host
/// guard of a TCP listener).
async fn serve(config: Config) -> (Agent, String) {
    let agent = Agent::build(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = agent.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (agent, format!("http://{address}"))
}

/// One label key with `count` distinct values, as text.
fn distinct_lines(count: usize) -> String {
    (0..count).map(|n| format!("k: {n}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_distinct_labels_is_refused_or_answered_at_once() {
    let body = distinct_lines(120_000);
    assert!(body.len() >= 1024 * 1024 - 300_000, "{}", body.len());
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.server.max_body_bytes = 2 * 1024 * 1024;
    let (_agent, base) = serve(config).await;
    let client = common::http_client();
    let started = Instant::now();
    let response = client
        .post(format!("{base}/selectors/evaluate"))
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    // The issue this reproduces took 13.7 s: far more than any machine needs for a megabyte.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status().as_u16(), 413);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "too_many_labels", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.maxLabelPairs (10000)"),
        "{json}"
    );

    // With the cap raised, the same body is parsed and evaluated, still at once.
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.server.max_body_bytes = 2 * 1024 * 1024;
    config.server.max_label_pairs = 1_000_000;
    let (_agent, base) = serve(config).await;
    let started = Instant::now();
    let response = client
        .post(format!("{base}/selectors/evaluate"))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status().as_u16(), 200);

    // A value longer than the cap is refused, naming it.
    let long = format!("k: {}\n", "x".repeat(70_000));
    let response = client
        .post(format!("{base}/selectors/evaluate"))
        .header("content-type", "text/plain")
        .body(long)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "label_value_too_long", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_beyond_the_limit_are_shed_while_probes_and_lookups_answer() {
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.server.max_body_bytes = 4 * 1024 * 1024;
    config.server.max_label_pairs = 1_000_000;
    config.server.max_concurrent_evaluations = 1;
    let (_agent, base) = serve(config).await;
    let client = common::http_client();
    let body = distinct_lines(200_000);
    let evaluations: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, body) = (
                client.clone(),
                format!("{base}/selectors/evaluate"),
                body.clone(),
            );
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("content-type", "text/plain")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let retry = response.headers().get("retry-after").cloned();
                (response.status().as_u16(), retry)
            })
        })
        .collect();
    // Meanwhile the probes and a lookup answer.
    let me = format!("/metadata/{}", std::process::id());
    for path in ["/healthz", "/readyz", me.as_str()] {
        let status = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(matches!(status, 200 | 503), "{path}: {status}");
        if path != "/readyz" {
            assert_eq!(status, 200, "{path}");
        }
    }
    let mut statuses = Vec::new();
    for evaluation in evaluations {
        let (status, retry) = evaluation.await.unwrap();
        if status == 503 {
            assert_eq!(retry.unwrap(), "1");
        }
        statuses.push(status);
    }
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 503)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "none was shed: {statuses:?}");
    assert!(statuses.contains(&200), "none was answered: {statuses:?}");
}

async fn status_with_headers(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let client = common::http_client();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_or_origin_is_refused() {
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0"]);
    let url = daemon.url(&format!("/metadata/{}", daemon.pid()));
    let port = daemon.address.rsplit(':').next().unwrap().to_owned();
    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    let (status, json) = status_with_headers(
        &url,
        &[
            ("host", &format!("evil.example:{port}")),
            ("origin", "http://evil.example"),
        ],
    )
    .await;
    assert_eq!(status, 421, "{json}");
    assert_eq!(json["error"]["code"], "unknown_host", "{json}");
    assert_eq!(json["error"]["status"], 421, "{json}");
    // The right host, but called from another site's page.
    let (status, json) = status_with_headers(
        &url,
        &[
            ("host", &format!("127.0.0.1:{port}")),
            ("origin", "http://evil.example:8080"),
        ],
    )
    .await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"]["code"], "cross_site_request", "{json}");
    // Loopback names are fine, with or without a same-host origin.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, json) = status_with_headers(&url, &[("host", &host)]).await;
        assert_eq!(status, 200, "{host}: {json}");
    }
    let (status, _) = status_with_headers(
        &url,
        &[
            ("host", &format!("localhost:{port}")),
            ("origin", &format!("http://localhost:{port}")),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // And the configured ones.
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "agent.yaml",
        "server:\n  allowedHosts: [agent.node.internal]\n",
    );
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let port = daemon.address.rsplit(':').next().unwrap().to_owned();
    let (status, _) = status_with_headers(
        &daemon.url("/healthz"),
        &[("host", &format!("agent.node.internal:{port}"))],
    )
    .await;
    assert_eq!(status, 200);
}

#[test]
fn a_non_loopback_address_without_a_token_stops_the_start() {
    let output = common::run(common::agent().args(["run", "--listen", "0.0.0.0:0"]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve 0.0.0.0:0 without a token"),
        "{stderr}"
    );
    // Explicitly allowed: it starts.
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "agent.yaml",
        "server:\n  allowUnauthenticated: true\n",
    );
    let daemon = Daemon::start(&["--listen", "0.0.0.0:0", "--config", &config]);
    drop(daemon);
    // A token readable by others stops the start too.
    let config = token_config(dir.path(), "s3cret-token");
    std::fs::set_permissions(
        dir.path().join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let output =
        common::run(common::agent().args(["run", "--listen", "0.0.0.0:0", "--config", &config]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gives_counts_not_error_texts_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path(), "s3cret-token");
    // A hook that cannot attach leaves an error text to hide.
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "hook:\n  enabled: auto\n  cgroupRoot: {}\n",
            dir.path().display()
        );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let url = daemon.url("/healthz");
    let (status, anonymous) = status_with_headers(&url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(anonymous["status"], "degraded", "{anonymous}");
    assert!(anonymous["hook"].get("reason").is_none(), "{anonymous}");
    assert!(!anonymous.to_string().contains("cgroup"), "{anonymous}");
    let (_, authenticated) =
        status_with_headers(&url, &[("authorization", "Bearer s3cret-token")]).await;
    assert!(
        authenticated["hook"]["reason"]
            .as_str()
            .unwrap()
            .contains("no cgroup v2 hierarchy"),
        "{authenticated}"
    );
    // The token file is read again when it changes.
    std::fs::write(dir.path().join("token"), "rotated-token\n").unwrap();
    let (status, _) = status_with_headers(
        &daemon.url("/node"),
        &[("authorization", "Bearer rotated-token")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = status_with_headers(
        &daemon.url("/node"),
        &[("authorization", "Bearer s3cret-token")],
    )
    .await;
    assert_eq!(status, 401);
}

#[test]
fn a_client_trickling_its_headers_is_cut_off_and_others_are_served() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "agent.yaml",
        "server:\n  headerReadTimeout: 1s\n  maxConnections: 8\n",
    );
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let address = daemon.address.trim_start_matches("http://").to_owned();
    // Slowloris: a request head that never ends.
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    // Closed by the agent (with a 408 or without a word), well before our own timeout.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // More connections than allowed: the excess is closed, the rest answer.
    let held: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = std::net::TcpStream::connect(&address).unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .ok();
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    drop(held);
    // Once they are gone, connections are served again.
    std::thread::sleep(Duration::from_millis(1500));
    let mut again = std::net::TcpStream::connect(&address).unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
