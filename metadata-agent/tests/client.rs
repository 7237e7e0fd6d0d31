//! The client in the agent's binary (`get`, `events`, `completions`) against a running agent:
//! over its Unix socket with a token, and over HTTP to an agent fed events.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::daemon::{Daemon, token_config};
use common::hook::{connect_event, feed};
use kernel_hook::HookEvent;
use metadata_agent::config::Config;
use metadata_agent::run::Agent;

fn client(args: &[&str]) -> std::process::Output {
    common::run(
        common::agent()
            .args(args)
            .env_remove("METADATA_AGENT_API")
            .env_remove("METADATA_AGENT_TOKEN")
            .env_remove("METADATA_AGENT_TOKEN_FILE"),
    )
}

#[test]
fn get_asks_a_running_agent_over_its_socket_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path(), "client-token");
    let socket = dir.path().join("agent.sock");
    let _daemon = Daemon::start(&[
        "--listen",
        &format!("unix:{}", socket.display()),
        "--config",
        &config,
    ]);
    let api = format!("unix:{}", socket.display());
    let token = dir.path().join("token");
    let me = std::process::id().to_string();
    let base = [
        "--api",
        api.as_str(),
        "--token-file",
        token.to_str().unwrap(),
    ];

    // A table of labels with their trust classes.
    let output = client(&[&["get", me.as_str()][..], &base].concat());
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.starts_with(&format!("# pid {me}\n")), "{table}");
    let pid_row = table
        .lines()
        .find(|l| l.starts_with("process:pid "))
        .unwrap();
    assert!(
        pid_row.contains(&me) && pid_row.ends_with("kernel"),
        "{pid_row}"
    );

    // JSON and YAML carry the same labels; --selectors adds the verdict.
    let output = client(
        &[
            &["get", me.as_str(), "-o", "json", "--selectors"][..],
            &base,
        ]
        .concat(),
    );
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["labels"]["process:pid"][0], me.as_str());
    assert_eq!(json["selectors"]["verdict"], "allow");
    // By its execution: the same process; once the execution ended, its last labels.
    let exec_id = json["labels"]["process:exec-id"][0].as_str().unwrap();
    let output = client(&[&["get", exec_id, "-o", "json"][..], &base].concat());
    assert!(output.status.success(), "{output:?}");
    let by_exec: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(by_exec["labels"]["process:pid"][0], me.as_str());
    let mut sleep = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let sleep_pid = sleep.id().to_string();
    let sleep_json = loop {
        let output = client(&[&["get", sleep_pid.as_str(), "-o", "json"][..], &base].concat());
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if json["labels"]["process:exec-id"][0].is_string() {
            break json;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    sleep.kill().unwrap();
    sleep.wait().unwrap();
    let sleep_exec_id = sleep_json["labels"]["process:exec-id"][0].as_str().unwrap();
    let output = client(&[&["get", sleep_exec_id][..], &base].concat());
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.starts_with(&format!("# pid {sleep_pid}\n# ended at ")),
        "{table}"
    );
    assert!(table.contains("process:name"), "{table}");

    let output = client(&[&["get", me.as_str(), "-o", "yaml"][..], &base].concat());
    assert!(output.status.success(), "{output:?}");
    let yaml: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(yaml["labels"], json["labels"]);

    // The token from the environment works too; none at all is refused, saying so.
    let output = common::run(
        common::agent()
            .args(["get", &me, "--api", &api])
            .env("METADATA_AGENT_TOKEN", "client-token"),
    );
    assert!(output.status.success(), "{output:?}");
    let output = client(&["get", &me, "--api", &api]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("unauthorized"),
        "{stderr}"
    );

    // What is not there, and what is not a target.
    let output = client(&[&["get", "4000000000"][..], &base].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("404 (no_such_process)"), "{stderr}");
    let output = client(&[&["get", "nonsense"][..], &base].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected a PID"), "{stderr}");
    let output = client(&["get", &me, "--api", "unix:/nonexistent.sock"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the agent at unix:/nonexistent.sock"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_the_kept_events_filters_them_and_follows() {
    let mut config = Config::default();
    config.resolver.prestart = false;
    let mut agent = Agent::build(config).unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    agent.start_background(shutdown);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let router = agent.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let me = std::process::id();
    feed(&agent, [7001, 7002].map(|port| connect_event(me, port))).await;
    feed(
        &agent,
        [HookEvent::Exit {
            tgid: 4_000_001,
            start: 0,
        }],
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while agent.state.bus.last_id() < 3 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The kept events, then it stops.
    let api2 = api.clone();
    let output = tokio::task::spawn_blocking(move || client(&["events", "--api", &api2]))
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("7001/tcp") && table.contains("7002/tcp"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("exit") && l.contains("4000001")),
        "{table}"
    );

    // Filtered, as JSON lines.
    let api2 = api.clone();
    let output = tokio::task::spawn_blocking(move || {
        client(&["events", "--kind", "exit", "-o", "json", "--api", &api2])
    })
    .await
    .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["tgid"], 4_000_001);

    // Following: a new event shows up while it runs.
    let mut follower = common::agent()
        .args([
            "events", "--follow", "--since", "3", "-o", "json", "--api", &api,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    feed(&agent, [connect_event(me, 7003)]).await;
    let stdout = follower.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("nothing followed")
        .unwrap();
    let _ = follower.kill();
    let _ = follower.wait();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"]["port"], 7003);
    assert_eq!(event["id"], 4);
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _metadata__agent"),
        ("zsh", "#compdef metadata-agent"),
        ("fish", "complete -c metadata-agent"),
    ] {
        let output = client(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(300)]
        );
        assert!(
            script.contains("events") && script.contains("get"),
            "{shell}"
        );
    }
}
