//! OTLP export, received by a real OTLP/HTTP receiver (the opentelemetry-proto Python package
//! decoding the protobuf): records with conventional and namespaced attributes, batching, a
//! retry after a 503, and a bounded queue that counts what it drops.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::hook::{connect_event, feed};
use kernel_hook::HookEvent;
use metadata_agent::config::Config;
use metadata_agent::otlp::OtlpConfig;
use metadata_agent::run::Agent;

struct Receiver {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver(fail_first: u32) -> Option<Receiver> {
    let probe = common::run(
        Command::new("python3").args(["-c", "import opentelemetry.proto.collector.logs.v1"]),
    );
    if !common::require(
        probe.status.success(),
        "python3 with opentelemetry-proto (pip install opentelemetry-proto)",
    ) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let mut child = Command::new("python3")
        .arg(common::repo_root().join("metadata-agent/tests/clients/otlp_receiver.py"))
        .arg(&out)
        .env("FAIL_FIRST", fail_first.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap()
        .parse()
        .unwrap();
    Some(Receiver {
        child,
        port,
        out,
        _dir: dir,
    })
}

fn otlp(endpoint: String, batch_size: usize, queue_size: usize) -> OtlpConfig {
    OtlpConfig {
        endpoint,
        batch_size,
        batch_timeout: Duration::from_millis(200),
        queue_size,
        timeout: Duration::from_secs(2),
        headers: Default::default(),
    }
}

fn agent(otlp: OtlpConfig) -> Agent {
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.events.otlp = Some(otlp);
    let mut agent = Agent::build(config).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    agent.start_background(shutdown);
    agent
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_at_an_otlp_receiver_as_log_records() {
    let Some(receiver) = receiver(1) else {
        return;
    };
    let agent = agent(otlp(format!("http://127.0.0.1:{}", receiver.port), 2, 64));
    let me = std::process::id();
    feed(
        &agent,
        [9101, 9102, 9103].map(|port| connect_event(me, port)),
    )
    .await;
    feed(
        &agent,
        [HookEvent::Exit {
            tgid: 4_000_002,
            start: 0,
        }],
    )
    .await;
    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&receiver.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_for("4 records received", || records().len() >= 4).await;
    let records = records();
    assert_eq!(records.len(), 4, "{records:#?}");
    let connects: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event_name"] == "metadata_agent.connect")
        .collect();
    assert_eq!(connects.len(), 3);
    let mut ports: Vec<i64> = connects
        .iter()
        .map(|r| r["attributes"]["destination.port"].as_i64().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [9101, 9102, 9103]);
    let first = connects[0];
    assert_eq!(first["attributes"]["process.pid"], me);
    assert_eq!(first["attributes"]["network.transport"], "tcp");
    assert_eq!(first["attributes"]["destination.address"], "127.0.0.1");
    assert!(
        first["attributes"]["process.executable.path"]
            .as_str()
            .unwrap()
            .contains("otlp"),
        "{first:#}"
    );
    assert_eq!(
        first["attributes"]["process:pid"],
        me.to_string(),
        "namespaced labels too"
    );
    assert_eq!(first["resource"]["service.name"], "metadata-agent");
    assert_eq!(first["severity"], "INFO");
    assert!(
        first["body"]
            .as_str()
            .unwrap()
            .starts_with("connect to 127.0.0.1:")
    );
    assert!(first["time_unix_nano"].as_u64().unwrap() > 1_700_000_000_000_000_000);
    let exit = records
        .iter()
        .find(|r| r["event_name"] == "metadata_agent.exit")
        .unwrap();
    assert_eq!(exit["attributes"]["process.pid"], 4_000_002);
    // The first request was refused (503) and retried: nothing lost.
    // The receiver writes a batch before it answers; the exporter counts
    // the batch once the answer arrives.
    let metrics = std::sync::Arc::clone(&agent.state.metrics);
    wait_for("4 records counted as exported", || {
        metrics.otlp_exported.get() >= 4
    })
    .await;
    assert!(metrics.otlp_failures.get() >= 1);
    assert_eq!(metrics.otlp_exported.get(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_the_oldest_events_counted_not_memory() {
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let agent = agent(otlp(format!("http://127.0.0.1:{port}"), 1, 2));
    let me = std::process::id();
    feed(&agent, (9200..9210).map(|port| connect_event(me, port))).await;
    let metrics = std::sync::Arc::clone(&agent.state.metrics);
    wait_for("events dropped from the full queue", || {
        metrics
            .otlp_dropped
            .get_or_create(&metadata_agent::metrics::DropLabels {
                reason: "queue_full".to_owned(),
            })
            .get()
            >= 8
    })
    .await;
    assert!(metrics.otlp_failures.get() >= 1);
    assert_eq!(metrics.otlp_exported.get(), 0);
    let text = metrics.encode();
    assert!(
        text.contains(r#"metadata_agent_otlp_dropped_total{reason="queue_full"}"#),
        "{text}"
    );
}
