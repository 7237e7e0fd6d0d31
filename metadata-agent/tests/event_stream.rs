//! `/events` end to end: connect events go through the pipeline (resolution, policies) to SSE
//! subscribers over HTTP, and a subscriber that stops reading is dropped without stalling the
//! others.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::hook::{connect_event, feed};
use kernel_hook::HookEvent;
use metadata_agent::config::Config;
use metadata_agent::run::Agent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            if record.lines().any(|line| line == "event: connect") {
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
    feed(&agent, [connect_event(me, 8443)]).await;
    wait_for(|| seen.load(Ordering::SeqCst) == 1).await;
    let record = first.lock().unwrap().clone();
    let json: serde_json::Value = serde_json::from_str(
        record
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    // Every event carries its id, in the record and in the JSON.
    let id = record
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .unwrap();
    assert_eq!(json["id"].to_string(), id);
    assert_eq!(json["kind"], "connect");
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
    while !agent.state.resolver.cached_pids().contains(&me) {
        assert!(tokio::time::Instant::now() < deadline, "never cached");
        let _ = agent.state.resolver.resolve(me).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The hook names the process that ended by its PID and start time.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap();
    let start = start.parse().unwrap();
    feed(&agent, [HookEvent::Exit { tgid: me, start }]).await;
    // (Only this process: the agent also resolves the node's listening processes.)
    wait_for(|| !agent.state.resolver.cached_pids().contains(&me)).await;
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
        feed(&agent, [connect_event(me, (n % 60_000) as u16 + 1)]).await;
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

/// Reads SSE records from `response` until `count` events (not comments) arrived or 20 s
/// passed: (id, event name, JSON) of each.
async fn read_events(
    response: &mut reqwest::Response,
    count: usize,
) -> Vec<(u64, String, serde_json::Value)> {
    let mut pending = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events: {events:?}", events.len()))
            .unwrap()
            .unwrap();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let record: String = pending.drain(..end + 2).collect();
            let field = |name: &str| {
                record
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{name}: ")).map(str::to_owned))
            };
            if let (Some(id), Some(kind), Some(data)) = (field("id"), field("event"), field("data"))
            {
                events.push((
                    id.parse().unwrap(),
                    kind,
                    serde_json::from_str(&data).unwrap(),
                ));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_with_what_it_missed_or_is_told_of_a_gap() {
    let mut config = config(64);
    config.events.history = 4;
    let (agent, base, _stop) = serve(config).await;
    let client = common::http_client();
    let me = std::process::id();
    let publish = |port: u16| {
        let sender = agent.hook_events.clone();
        async move { sender.send(connect_event(me, port)).await.unwrap() }
    };
    let mut first = client.get(format!("{base}/events")).send().await.unwrap();
    wait_for(|| agent.state.metrics.subscribers.get() == 1).await;
    publish(1001).await;
    let seen = read_events(&mut first, 1).await;
    let last = seen[0].0;
    assert_eq!(seen[0].2["event"]["port"], 1001);
    drop(first);
    wait_for(|| agent.state.metrics.subscribers.get() == 0).await;

    // Two events while away: a reconnect with Last-Event-ID gets exactly them, then live ones.
    publish(1002).await;
    publish(1003).await;
    wait_for(|| agent.state.bus.last_id() == last + 2).await;
    let mut back = client
        .get(format!("{base}/events"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    // (Connects are resolved concurrently: ids follow publication, not the hook's order.)
    let missed = read_events(&mut back, 2).await;
    let mut ports: Vec<u64> = missed
        .iter()
        .map(|e| e.2["event"]["port"].as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [1002, 1003]);
    let ids: Vec<u64> = missed.iter().map(|e| e.0).collect();
    assert_eq!(ids, [last + 1, last + 2]);
    publish(1004).await;
    let live = read_events(&mut back, 1).await;
    assert_eq!(live[0].2["event"]["port"], 1004);
    let last = live[0].0;
    drop(back);
    wait_for(|| agent.state.metrics.subscribers.get() == 0).await;

    // Away for longer than the history (4): a gap saying how many fell out, then the rest.
    for port in 1005..1011 {
        publish(port).await;
    }
    wait_for(|| agent.state.bus.last_id() == last + 6).await;
    let mut late = client
        .get(format!("{base}/events?last_event_id={last}"))
        .send()
        .await
        .unwrap();
    let events = read_events(&mut late, 5).await;
    assert_eq!(events[0].1, "gap", "{events:?}");
    assert_eq!(events[0].2["missed"], 2);
    let ids: Vec<u64> = events[1..].iter().map(|e| e.0).collect();
    assert_eq!(ids, [last + 3, last + 4, last + 5, last + 6], "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_events_by_kind_verdict_policy_and_labels() {
    let (agent, base, _stop) = serve(config(64)).await;
    let client = common::http_client();
    let me = std::process::id();
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap();
    let subscribe = |query: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}/events?{query}"))
                .send()
                .await
                .unwrap()
        }
    };
    let mut exits = subscribe("kind=exit".into()).await;
    let mut mine = subscribe(format!(
        "kind=connect&selector=process:uid={uid},process:pid={me}"
    ))
    .await;
    let mut denied = subscribe("verdict=deny".into()).await;
    let mut others = subscribe("selector=process:pid=1".into()).await;
    wait_for(|| agent.state.metrics.subscribers.get() == 4).await;
    for bad in [
        "kind=teleport",
        "verdict=maybe",
        "selector=a%20b=c",
        "last_event_id=x",
    ] {
        let response = subscribe(bad.into()).await;
        assert_eq!(response.status().as_u16(), 400, "{bad}");
    }

    feed(&agent, [connect_event(me, 2001)]).await;
    feed(
        &agent,
        [HookEvent::Exit {
            tgid: 4_000_000,
            start: 0,
        }],
    )
    .await;
    let exit = read_events(&mut exits, 1).await;
    assert_eq!(
        (exit[0].1.as_str(), &exit[0].2["tgid"]),
        ("exit", &serde_json::json!(4_000_000))
    );
    let connect = read_events(&mut mine, 1).await;
    assert_eq!(connect[0].2["event"]["port"], 2001);
    // Nothing for the deny-only and PID-1-only subscribers: a later event shows they are live
    // and were skipped, not late.
    let nothing = tokio::time::timeout(Duration::from_millis(500), denied.chunk()).await;
    let got = match nothing {
        Ok(Ok(Some(chunk))) => String::from_utf8_lossy(&chunk).into_owned(),
        _ => String::new(),
    };
    assert!(!got.contains("event: connect"), "{got}");
    let nothing = tokio::time::timeout(Duration::from_millis(200), others.chunk()).await;
    let got = match nothing {
        Ok(Ok(Some(chunk))) => String::from_utf8_lossy(&chunk).into_owned(),
        _ => String::new(),
    };
    assert!(!got.contains("event: "), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_written_to_a_rotated_json_lines_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut config = config(64);
    config.events.file = Some(metadata_agent::export::EventFileConfig {
        path: path.clone(),
        max_bytes: 16 * 1024,
        max_files: 2,
    });
    let (agent, _base, _stop) = serve(config).await;
    let me = std::process::id();
    // Each connect line holds this process's labels: a few KiB, so a few lines a file.
    let total = 40u64;
    for port in 0..total {
        feed(&agent, [connect_event(me, 3000 + port as u16)]).await;
    }
    wait_for(|| agent.state.bus.last_id() == total).await;
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", path.display()));
    // Read what is on disk, oldest first, until the last event is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ids = loop {
        let mut ids = Vec::new();
        for file in [rotated(2), rotated(1), path.clone()] {
            for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
                let event: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display()));
                assert_eq!(event["kind"], "connect");
                ids.push(event["id"].as_u64().unwrap());
            }
        }
        if ids.last() == Some(&total) || tokio::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ids.last(), Some(&total), "{ids:?}");
    // Consecutive ids across the files: nothing lost but what retention dropped (the oldest).
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert!(ids[0] > 1, "the oldest were rotated away: {ids:?}");
    assert!(!rotated(3).exists(), "only maxFiles rotated files are kept");
    for file in [rotated(2), rotated(1), path.clone()] {
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size <= 16 * 1024, "{}: {size} bytes", file.display());
    }
}
