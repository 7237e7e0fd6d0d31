//! The agent with the real kernel hook (root): a child's connect reaches `/events` subscribers
//! with its labels, its exit drops it from the cache, and in enforce mode the policies decide
//! who may connect, also by the labels of a Docker container.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use metadata_agent::config::{Config, HookMode};
use metadata_agent::run::Agent;

const POLICIES: &str = r#"
policies:
  - name: blocked-user
    action: deny
    selectors:
      - process:uid: 4242
  - name: trusted-user
    action: allow
    selectors:
      - process:uid: 4243
"#;

/// Runs a python3 connect to 127.0.0.1:`port` as `uid`. The process lives a moment before and
/// after the connect, as the agent resolves processes from their exec event, asynchronously.
fn connect_as(uid: u32, port: u16) -> Output {
    let script = format!(
        "sleep 1; exec python3 -c 'import socket, time; time.sleep(0.5); \
         socket.create_connection((\"127.0.0.1\", {port})).close(); time.sleep(0.5)'"
    );
    Command::new("sh")
        .args(["-c", &script])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap()
}

/// The tests attach programs to the same cgroup: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn agent(config: Config) -> Agent {
    let mut agent = Agent::build(config).unwrap();
    agent.attach_hook().unwrap();
    let attached = agent.state.hook.lock().unwrap().attached;
    assert!(attached, "{:?}", agent.state.hook.lock().unwrap());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(_stop);
    agent.start_background(shutdown);
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_are_resolved_published_and_enforced() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // Observe mode: the event stream carries the child's connect with its labels.
    let mut config = Config::default();
    config.resolver.prestart = false;
    let observer = agent(config).await;
    let mut subscription = observer.state.bus.subscribe().unwrap();
    let child = std::thread::spawn(move || connect_as(0, port));
    let mut execs = std::collections::HashMap::new();
    let pid_event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let json = subscription.next().await.unwrap();
            let event: serde_json::Value = serde_json::from_str(&json.json).unwrap();
            if event["kind"] == "exec" {
                execs.insert(event["tgid"].as_u64().unwrap(), event["exec_id"].clone());
            }
            if event["event"]["port"] == port {
                return event;
            }
        }
    })
    .await
    .expect("no connect event within 10 s");
    let output = child.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    let pid = pid_event["event"]["tgid"].as_u64().unwrap() as u32;
    assert_eq!(pid_event["labels"]["process:pid"][0], pid.to_string());
    assert_eq!(pid_event["event"]["protocol"], "tcp");
    assert_eq!(pid_event["event"]["destination"], "127.0.0.1");
    assert_eq!(pid_event["event"]["allowed"], true);
    assert!(
        pid_event["labels"]["process:binary:path"][0]
            .as_str()
            .unwrap()
            .contains("python3"),
        "{pid_event}"
    );
    // Every event names the execution: the connect's is the one its last exec reported, and
    // the exit's the same.
    let exec_id = pid_event["exec_id"].as_str().expect("exec_id").to_owned();
    assert_eq!(pid_event["labels"]["process:exec-id"][0], exec_id.as_str());
    assert_eq!(execs[&u64::from(pid)], exec_id.as_str(), "{execs:?}");
    let exit = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let json = subscription.next().await.unwrap();
            let event: serde_json::Value = serde_json::from_str(&json.json).unwrap();
            if event["kind"] == "exit" && event["tgid"] == pid {
                return event;
            }
        }
    })
    .await
    .expect("no exit event within 10 s");
    assert_eq!(exit["exec_id"], exec_id.as_str(), "{exit}");
    // Its exit drops it from the cache.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while observer.state.resolver.cached_pids().contains(&pid) {
        assert!(tokio::time::Instant::now() < deadline, "{pid} still cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    observer.detach_hook();

    // Enforce mode: deny by policy, allow by policy, allow by default.
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.yaml");
    std::fs::write(&policies, POLICIES).unwrap();
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.policies.path = Some(policies);
    config.hook.mode = HookMode::Enforce;
    let enforcer = agent(config).await;
    let denied = tokio::task::spawn_blocking(move || connect_as(4242, port))
        .await
        .unwrap();
    assert!(!denied.status.success(), "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionError"),
        "{denied:?}"
    );
    for uid in [4243, 4244] {
        let allowed = tokio::task::spawn_blocking(move || connect_as(uid, port))
            .await
            .unwrap();
        assert!(allowed.status.success(), "uid {uid}: {allowed:?}");
    }
    enforcer.detach_hook();
}

const DOCKER_POLICIES: &str = r#"
policies:
  - name: quarantined-containers
    action: deny
    selectors:
      - docker:label:policy-test: quarantined
"#;

/// `nc` in a container labelled `policy-test=<label>`, connecting to 127.0.0.1:`port` (host
/// network) a second after the container started, as `hook_daemon`'s agent resolves processes
/// from their exec events.
fn container_connect(docker: &common::docker::Dockerd, label: &str, port: u16) -> Output {
    docker.cli(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--label",
        &format!("policy-test={label}"),
        "hook-test",
        "sh",
        "-c",
        &format!("sleep 1; exec nc -w 2 127.0.0.1 {port} -e /bin/true"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_denied_by_its_docker_label() {
    let missing = common::docker::missing_prerequisite();
    if !common::require(missing.is_none(), missing.unwrap_or_default()) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let docker = common::docker::Dockerd::start();
    docker.import_busybox_image("hook-test");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.yaml");
    std::fs::write(&policies, DOCKER_POLICIES).unwrap();
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.policies.path = Some(policies);
    config.hook.mode = HookMode::Enforce;
    config.collectors.docker.socket_path = docker.socket.to_str().unwrap().to_owned();
    let enforcer = agent(config).await;

    let docker = std::sync::Arc::new(docker);
    let run = |label: &'static str| {
        let docker = std::sync::Arc::clone(&docker);
        tokio::task::spawn_blocking(move || container_connect(&docker, label, port))
    };
    let denied = run("quarantined").await.unwrap();
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && stderr.contains("Operation not permitted"),
        "{denied:?}\ndockerd log:\n{}",
        docker.log()
    );
    let allowed = run("trusted").await.unwrap();
    assert!(allowed.status.success(), "{allowed:?}");
    enforcer.detach_hook();
}

/// The programs attached to cgroup `root`, as `bpftool cgroup show` lists them: (id, name).
fn attached_programs(root: &std::path::Path) -> Vec<(u64, String)> {
    let output = common::run(
        Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(root),
    );
    assert!(output.status.success(), "{output:?}");
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    listed
        .iter()
        .filter_map(|program| {
            let id = program["id"].as_u64()?;
            Some((id, program["name"].as_str()?.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_detaches_its_programs_on_sigterm_and_sigint() {
    let bpftool = Command::new("bpftool").arg("version").output().is_ok();
    if !common::require(
        common::is_root() && bpftool,
        "root and bpftool (Debian package bpftool)",
    ) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let root = kernel_hook::detect_cgroup_root().unwrap();
    let ours = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // Programs attached before the daemon starts are another agent's (a Cilium, a second
        // metadata-agent): only the ones that appear with this daemon are counted, by id.
        let before: Vec<u64> = attached_programs(&root).iter().map(|(id, _)| *id).collect();
        let daemons = || -> Vec<u64> {
            attached_programs(&root)
                .into_iter()
                .filter(|(id, name)| !before.contains(id) && ours.contains(&name.as_str()))
                .map(|(id, _)| id)
                .collect()
        };
        let daemon = common::daemon::Daemon::start(&["--listen", "127.0.0.1:0"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut attached = daemons();
        while attached.len() < ours.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "not attached: {:?}\n{}",
                attached_programs(&root),
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
            attached = daemons();
        }
        assert_eq!(attached.len(), ours.len(), "{attached:?}");
        let (status, _, log) = daemon.stop_with(signal);
        assert!(status.success(), "signal {signal}: {status:?}\n{log}");
        let left: Vec<u64> = attached_programs(&root)
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| attached.contains(id))
            .collect();
        assert!(
            left.is_empty(),
            "signal {signal} left programs {left:?} attached\n{log}"
        );
    }
}

/// Connects of a cached process are answered from its kept answer without reading procfs, as
/// long as the hook's events vouch that nothing changed. A move to another cgroup must void
/// that, also one that only the kernel's event tells (a cgroup v1 hierarchy: the process's
/// cgroup v2 id stays the same), and new effective ids must show in the next connect's labels,
/// also for a process that made itself undumpable first (some kernels then show its procfs
/// files owned by root, before and after: the agent compares the event's ids with the labels').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_move_or_new_ids_show_in_the_next_connect() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    // A cgroup v1 hierarchy where there is one (a hybrid host, as here), else the v2 one.
    let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
    let v1 = rustix::fs::statfs(v1)
        .is_ok_and(|fs| fs.f_type == 0x0027_e0eb /* CGROUP_SUPER_MAGIC */);
    let moved_to = if v1 {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/pids/ma-test-{}-vouch",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    } else {
        let cgroup = test_support::cgroup::TestCgroup::new("vouch");
        let dir = cgroup.path().to_owned();
        std::mem::forget(cgroup);
        dir
    };
    let mut config = Config::default();
    config.resolver.prestart = false;
    let observer = agent(config).await;
    let mut subscription = observer.state.bus.subscribe().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    drop(socket);
    // Three connects to `port`; a move, a pause and one to `port + 1`; undumpable, new
    // effective ids and one to `port + 2`.
    let script = format!(
        r#"
import ctypes, os, socket, time
def connect(port, pause=0.4):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.close()
    time.sleep(pause)
time.sleep(0.5)
for _ in range(3):
    connect({port})
open("{procs}", "w").write(str(os.getpid()))
time.sleep(1.0)
connect({port} + 1)
ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE, 0
os.setegid(4242)
os.seteuid(4242)
connect({port} + 2)
"#,
        procs = moved_to.join("cgroup.procs").display(),
    );
    let child = std::thread::spawn(move || {
        Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap()
    });
    let mut events = Vec::new();
    let (mut vouched_before, mut vouched_after) = (false, true);
    tokio::time::timeout(Duration::from_secs(20), async {
        while events.len() < 5 {
            let delivered = subscription.next().await.unwrap();
            let event: serde_json::Value = serde_json::from_str(&delivered.json).unwrap();
            let at = event["event"]["port"].as_u64().unwrap_or(0);
            if event["kind"] != "connect" || !(port..=port + 2).contains(&(at as u16)) {
                continue;
            }
            if events.len() == 2 {
                // The first connects vouched for the kept answer, which the agent now gives
                // without reading procfs; once the process has moved (0.4 s after this
                // connect) it no longer does.
                let seen = metadata_agent::resolver::Seen {
                    euid: 0,
                    egid: 0,
                    cgroup_id: event["event"]["cgroup_id"].as_u64().unwrap(),
                };
                let pid = event["event"]["tgid"].as_u64().unwrap() as u32;
                vouched_before = observer.state.resolver.vouched(pid, seen).is_some();
                tokio::time::sleep(Duration::from_millis(900)).await;
                vouched_after = observer.state.resolver.vouched(pid, seen).is_some();
            }
            events.push(event);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("5 connects expected, got {events:#?}"));
    let output = child.join().unwrap();
    let _ = std::fs::remove_dir(&moved_to);
    assert!(output.status.success(), "{output:?}");
    assert!(vouched_before, "the connects vouched for the kept answer");
    assert!(!vouched_after, "the move voided the voucher");
    let label = |event: &serde_json::Value, key: &str| event["labels"][key][0].clone();
    let pid = events[0]["event"]["tgid"].as_u64().unwrap() as u32;
    for event in &events[..3] {
        assert_eq!(event["event"]["port"], port);
        assert_eq!(label(event, "process:uid:effective"), "0");
    }
    let moved = &events[3];
    assert_eq!(moved["event"]["port"], port + 1);
    if !v1 {
        assert_eq!(
            format!(
                "/{}",
                label(moved, "process:cgroup")
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
            ),
            format!(
                "/{}",
                moved_to
                    .strip_prefix(test_support::cgroup::v2_root())
                    .unwrap()
                    .display()
            ),
            "the move shows: {moved:#}"
        );
    }
    let setuid = &events[4];
    assert_eq!(setuid["event"]["port"], port + 2);
    assert_eq!(setuid["event"]["euid"], 4242);
    assert_eq!(setuid["event"]["egid"], 4242);
    assert_eq!(
        label(setuid, "process:uid:effective"),
        "4242",
        "the new ids show: {setuid:#}"
    );
    assert_eq!(label(setuid, "process:gid:effective"), "4242");
    assert_eq!(label(setuid, "process:uid:real"), "0");
    assert_eq!(label(setuid, "process:pid"), pid.to_string());
    observer.detach_hook();
}
