//! `/events` end to end: connect events go through the pipeline (resolution, policies) to SSE
//! subscribers over HTTP, and a subscriber that stops reading is dropped without stalling the
//! others.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kernel_hook::{ConnectEvent, Decision, HookEvent, Protocol};
use metadata_agent::config::Config;
use metadata_agent::run::Agent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn connect_event(tgid: u32, port: u16) -> HookEvent {
    HookEvent::Connect(ConnectEvent {
        tgid,
        tid: tgid,
        uid: 0,
        gid: 0,
        cgroup_id: 1,
        comm: "event_stream".to_owned(),
        protocol: Protocol::Tcp,
        destination: "127.0.0.1".parse().unwrap(),
        port,
        timestamp_ns: 1,
        allowed: true,
        decision: Decision::Observe,
        ruleset: 0,
        policy: None,
    })
}

/// Starts an in-process agent on a loopback port.
async fn serve(config: Config) -> (Agent, String, tokio::sync::watch::Sender<bool>) {
    let mut agent = Agent::build(config).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    agent.start_background(shutdown);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = agent.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (agent, format!("http://{address}"), stop)
}

fn config(subscriber_buffer: usize) -> Config {
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.events.subscriber_buffer = subscriber_buffer;
    config
}

/// Counts `event: connect` records in an SSE body as it arrives.
async fn count_events(
    mut response: reqwest::Response,
    seen: Arc<AtomicUsize>,
    first: Arc<std::sync::Mutex<String>>,
) {
    let mut pending = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let record: String = pending.drain(..end + 2).collect();
            if record.starts_with("event: connect") {
                if seen.load(Ordering::SeqCst) == 0 {
                    *first.lock().unwrap() = record.clone();
                }
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_events_reach_subscribers_with_labels_and_verdict() {
    let (agent, base, _stop) = serve(config(64)).await;
    let client = common::http_client();
    let response = client.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let seen = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(String::new()));
    tokio::spawn(count_events(
        response,
        Arc::clone(&seen),
        Arc::clone(&first),
    ));
    wait_for(|| agent.state.metrics.subscribers.get() == 1).await;

    let me = std::process::id();
    agent
        .hook_events
        .send(connect_event(me, 8443))
        .await
        .unwrap();
    wait_for(|| seen.load(Ordering::SeqCst) == 1).await;
    let record = first.lock().unwrap().clone();
    let json: serde_json::Value = serde_json::from_str(
        record
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["event"]["tgid"], me);
    assert_eq!(json["event"]["port"], 8443);
    assert_eq!(json["event"]["protocol"], "tcp");
    assert_eq!(json["labels"]["process:pid"][0], me.to_string());
    assert_eq!(json["verdict"], "allow");
    assert_eq!(json["default_applied"], true);
    assert_eq!(agent.state.metrics.events_received.get(), 1);

    // An exit event drops the process from the cache. (An answer is cached once this test
    // binary's hash is known: hashing a large debug binary may outlast the first lookup.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while agent.state.resolver.cached_processes() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never cached");
        let _ = agent.state.resolver.resolve(me).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent
        .hook_events
        .send(HookEvent::Exit { tgid: me })
        .await
        .unwrap();
    wait_for(|| agent.state.resolver.cached_processes() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_and_the_others_get_everything() {
    const EVENTS: usize = 4000;
    const WINDOW: usize = 32;
    let (agent, base, _stop) = serve(config(64)).await;
    let address = base.strip_prefix("http://").unwrap().to_owned();

    // The slow subscriber: a tiny receive buffer, reads the response head, then never again.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(address.parse().unwrap()).await.unwrap();
    slow.write_all(b"GET /events HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = slow.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));

    // The fast subscriber reads everything.
    let response = common::http_client()
        .get(format!("{base}/events"))
        .send()
        .await
        .unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(String::new()));
    let reader = tokio::spawn(count_events(response, Arc::clone(&seen), first));
    wait_for(|| agent.state.metrics.subscribers.get() == 2).await;

    let me = std::process::id();
    for n in 0..EVENTS {
        agent
            .hook_events
            .send(connect_event(me, (n % 60_000) as u16 + 1))
            .await
            .unwrap();
        if n % WINDOW == WINDOW - 1 {
            // Keep the fast subscriber within its buffer; the slow one falls behind freely.
            wait_for(|| seen.load(Ordering::SeqCst) + WINDOW > n).await;
        }
    }
    wait_for(|| seen.load(Ordering::SeqCst) == EVENTS).await;

    let metrics = &agent.state.metrics;
    assert_eq!(metrics.subscribers_dropped.get(), 1, "only the slow one");
    assert_eq!(metrics.subscribers.get(), 1);
    assert_eq!(metrics.events_received.get(), EVENTS as u64);
    assert!(
        !reader.is_finished(),
        "the fast subscriber is still connected"
    );
    drop(slow);
}

async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
