//! The identity-based firewall end to end, on the real kernel with a real dockerd (root): the
//! agent in enforce mode, its hook attached to a cgroup of the test's own (containers are put
//! under it with `--cgroup-parent`), so only the test's processes are judged.
//!
//! - containers on a Docker bridge network: `web` reaches `db` on 5432 by the destination's
//!   labels, and is refused on another port and to another container;
//! - a host process reaches a loopback server by the server's labels, and is refused another;
//! - a program whose `main` calls `pthread_exit` stays refused while a thread connects on;
//! - the `exec` of a denied binary from an allowed one is refused at its first connect;
//! - a lineage policy refuses a shell started by a chosen parent binary (also through a double
//!   fork whose launcher exited) and allows the same shell started elsewhere;
//! - a process started in a denied container is refused at a connect made right at its start,
//!   also the first process of a new container;
//! - the agent killed with SIGKILL under `hook.pin: true`: enforcement goes on, a restarted
//!   agent adopts the pins, `hook detach` removes them.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use collectors::config::Enabled;
use metadata_agent::config::{Config, HookMode};
use metadata_agent::run::Agent;
use selectors::{Action, Protocol};
use test_support::cgroup::TestCgroup;
use test_support::connector::{Driven, build};

/// The tests attach programs and start daemons: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn connector() -> PathBuf {
    build(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// A copy of the connector at its own path (policies name binaries by path).
fn connector_copy(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::copy(connector(), &path).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An agent in enforce mode, attached to a cgroup of its own.
struct Firewall {
    agent: Agent,
    cgroup: TestCgroup,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Firewall {
    async fn start(
        name: &str,
        policies: &str,
        pending: Action,
        docker: Option<&common::docker::Dockerd>,
    ) -> Self {
        let cgroup = TestCgroup::new(name);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.yaml");
        std::fs::write(&path, policies).unwrap();
        let mut config = Config::default();
        config.resolver.prestart = false;
        config.policies.path = Some(path);
        config.hook.mode = HookMode::Enforce;
        config.hook.cgroup_root = Some(cgroup.path().to_owned());
        config.hook.pending_verdict = pending;
        config.destinations.refresh_interval = Duration::from_millis(200);
        match docker {
            Some(docker) => {
                config.collectors.docker.socket_path = docker.socket.to_str().unwrap().to_owned();
            }
            None => config.collectors.docker.enabled = Enabled::Never,
        }
        let mut agent = Agent::build(config).unwrap();
        agent.attach_hook().unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        agent.start_background(shutdown);
        Self {
            agent,
            cgroup,
            _dir: dir,
            _stop: stop,
        }
    }

    /// Waits until the agent's verdict for `pid`'s current image is in the kernel.
    async fn judged(&self, pid: u32) -> u32 {
        let enforcer = self.agent.enforcer.as_ref().expect("attached");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(ruleset) = enforcer.ruleset_of(pid) {
                return ruleset;
            }
            assert!(
                Instant::now() < deadline,
                "{pid} was not judged within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the agent knows who is at `address`:`port`.
    async fn knows(&self, address: &str, port: u16) {
        let address = address.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .agent
            .state
            .destinations
            .current()
            .lookup(address, port, Protocol::Tcp)
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "the agent does not know who is at {address}:{port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.agent.detach_hook();
    }
}

/// Asks `process` to connect until it answers `want` (rules follow what the agent learns).
fn until(process: &mut Driven, command: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = process.ask(command);
        if answer == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{command}` still answers {answer}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CONTAINER_POLICIES: &str = r#"
policies:
  - name: web-to-db
    action: allow
    selectors: [{docker:label:app: web}]
    to:
      - selectors: [{docker:label:app: db}]
        ports: [5432]
        protocol: tcp
  - name: web-nowhere-else
    action: deny
    selectors: [{docker:label:app: web}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_each_other_by_the_destinations_labels() {
    let missing = common::docker::missing_prerequisite();
    if !common::require(missing.is_none(), missing.unwrap_or_default()) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let docker = Arc::new(common::docker::Dockerd::start());
    docker.import_busybox_image("fw-test");
    let firewall =
        Firewall::start("bridge", CONTAINER_POLICIES, Action::Allow, Some(&docker)).await;
    let parent = format!("{}/docker", firewall.cgroup.relative());
    docker.ok(&["network", "create", "fwnet"]);
    let run = |name: &str, app: &str, command: &str| {
        docker.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "fwnet",
            "--cgroup-parent",
            &parent,
            "--label",
            &format!("app={app}"),
            "fw-test",
            "sh",
            "-c",
            command,
        ]);
        docker.ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ])
    };
    let servers = "nc -ll -p 5432 -e true & nc -ll -p 5433 -e true & wait";
    let db = run("db", "db", servers);
    let cache = run("cache", "cache", servers);
    let _web = run("web", "web", "exec sleep 3600");
    firewall.knows(&db, 5432).await;
    firewall.knows(&cache, 5432).await;

    let mut events = firewall.agent.state.bus.subscribe().unwrap();
    let reach = |address: &str, port: u16| {
        let docker = Arc::clone(&docker);
        let target = address.to_string();
        tokio::task::spawn_blocking(move || {
            docker.cli(&[
                "exec",
                "web",
                "nc",
                "-w",
                "2",
                &target,
                &port.to_string(),
                "-e",
                "true",
            ])
        })
    };
    // The rules follow the agent's view of the destinations: wait for the first success.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let output = reach(&db, 5432).await.unwrap();
        if output.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web never reached db:5432: {output:?}\n{}",
            docker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (address, port, what) in [(&db, 5433, "db on another port"), (&cache, 5432, "cache")] {
        let output = reach(address, port).await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("not permitted"),
            "web reached {what}: {output:?}"
        );
    }

    // The allowed connect's event names who was reached and the deciding policy.
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let delivered = events.next().await.unwrap();
            let event: serde_json::Value = serde_json::from_str(&delivered.json).unwrap();
            if event["event"]["port"] == 5432
                && event["event"]["destination"] == db.as_str()
                && event["event"]["allowed"] == true
            {
                return event;
            }
        }
    })
    .await
    .expect("no event for web's connect to db");
    assert_eq!(
        found["destination"]["labels"]["docker:label:app"][0], "db",
        "{found}"
    );
    assert_eq!(found["decided_by"], "web-to-db", "{found}");
    assert_eq!(found["event"]["decision"], "rule", "{found}");
    assert_eq!(found["verdict"], "allow", "{found}");
    for name in ["web", "db", "cache"] {
        let _ = docker.cli(&["rm", "-f", name]);
    }
    let _ = docker.cli(&["network", "rm", "fwnet"]);
}

/// A python3 listener on 127.0.0.1 as `uid`; returns it and its port.
fn server_as(uid: u32) -> (std::process::Child, u16) {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import socket, sys, time\n\
             s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(64)\n\
             print(s.getsockname()[1], flush=True)\n\
             while True:\n    c, _ = s.accept(); c.close()",
        ])
        .uid(uid)
        .gid(uid)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_process_reaches_a_loopback_server_by_the_servers_labels() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let client = connector_copy(dir.path(), "client");
    let policies = format!(
        r#"
policies:
  - name: to-good-servers
    action: allow
    selectors: [{{process:binary:path: {client}}}]
    to:
      - selectors: [{{process:uid: 4251}}]
  - name: client-nowhere-else
    action: deny
    selectors: [{{process:binary:path: {client}}}]
"#
    );
    let firewall = Firewall::start("loopback", &policies, Action::Allow, None).await;
    let (mut good, good_port) = server_as(4251);
    let (mut bad, bad_port) = server_as(4252);
    firewall.knows("127.0.0.1", good_port).await;
    firewall.knows("127.0.0.1", bad_port).await;

    let (mut process, _) = Driven::start(Some(&firewall.cgroup), Path::new(&client), &[]);
    firewall.judged(process.pid).await;
    until(&mut process, &format!("tcp 127.0.0.1 {good_port}"), "ok");
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {bad_port}")), "EPERM");
    // Nobody listens there: refused by the policy, before the kernel could say "refused".
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_eq!(
        process.ask(&format!("tcp 127.0.0.1 {closed_port}")),
        "EPERM"
    );
    let _ = good.kill();
    let _ = bad.kill();
    let _ = (good.wait(), bad.wait());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_outlives_the_main_thread() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let denied = connector_copy(dir.path(), "denied");
    let policies = format!(
        "policies:\n  - name: denied-binary\n    action: deny\n    selectors: [{{process:binary:path: {denied}}}]\n"
    );
    // Pending processes are allowed: every refusal below is the verdict's.
    let firewall = Firewall::start("leader", &policies, Action::Allow, None).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = format!("tcp 127.0.0.1 {}", listener.local_addr().unwrap().port());
    let (mut process, _) = Driven::start(Some(&firewall.cgroup), Path::new(&denied), &[]);
    let pid = process.pid;
    firewall.judged(pid).await;
    assert_eq!(process.ask(&connect), "EPERM");
    assert_eq!(process.ask("leaderexit"), "threaded");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the main thread did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Whatever the agent makes of the zombie leader meanwhile, the thread stays refused.
    for _ in 0..50 {
        assert_eq!(process.ask(&connect), "EPERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        firewall
            .agent
            .enforcer
            .as_ref()
            .unwrap()
            .ruleset_of(pid)
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_of_a_denied_binary_is_refused_at_its_first_connect() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let shell = connector_copy(dir.path(), "shell");
    let denied = connector_copy(dir.path(), "denied");
    let policies = format!(
        "policies:\n  - name: denied-binary\n    action: deny\n    selectors: [{{process:binary:path: {denied}}}]\n  \
         - name: shells\n    action: allow\n    selectors: [{{process:binary:path: {shell}}}]\n"
    );
    // Fail closed: a process not judged yet is refused.
    let firewall = Firewall::start("exec", &policies, Action::Deny, None).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = format!("tcp 127.0.0.1 {}", listener.local_addr().unwrap().port());
    let (mut process, _) = Driven::start(Some(&firewall.cgroup), Path::new(&shell), &[]);
    firewall.judged(process.pid).await;
    assert_eq!(process.ask(&connect), "ok", "the allowed shell");
    // The same process runs the denied binary, which connects first thing.
    process.tell(&format!("run {denied} {connect}"));
    assert_eq!(process.line(), "EPERM", "its first connect");
    assert_eq!(process.line(), format!("ready {}", process.pid));
    firewall.judged(process.pid).await;
    assert_eq!(process.ask(&connect), "EPERM", "once judged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lineage_policy_refuses_a_shell_started_by_a_chosen_parent_only() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let shell = connector_copy(dir.path(), "shell");
    let launcher = dir.path().join("launcher");
    std::fs::copy(std::fs::canonicalize("/bin/sh").unwrap(), &launcher).unwrap();
    let launcher = launcher.to_str().unwrap().to_owned();
    let policies = format!(
        "policies:\n  - name: no-shell-from-launcher\n    action: deny\n    selectors:\n               - {{process:name: shell, process:ancestor:binary:path: {launcher}}}\n"
    );
    let firewall = Firewall::start("lineage", &policies, Action::Allow, None).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = format!("tcp 127.0.0.1 {}", listener.local_addr().unwrap().port());
    let launched = |script: String| {
        let mut command = Command::new(&launcher);
        command.args(["-c", &script]);
        firewall.cgroup.contain(&mut command);
        Driven::spawn(command).0
    };

    // Forked by the launcher (`; true`: the launcher does not exec it).
    let mut child = launched(format!("{shell}; true"));
    firewall.judged(child.pid).await;
    assert_eq!(child.ask(&connect), "EPERM", "the launcher's child");

    // The same shell started elsewhere.
    let (mut elsewhere, _) = Driven::start(Some(&firewall.cgroup), Path::new(&shell), &[]);
    firewall.judged(elsewhere.pid).await;
    assert_eq!(
        elsewhere.ask(&connect),
        "ok",
        "the shell started by the test"
    );

    // Through a double fork whose launcher and middle process exited: still its descendant.
    // (A background job's stdin would be /dev/null: the shell's own goes through fd 3.)
    let mut orphan = launched(format!("exec 3<&0; ({shell} <&3 &); sleep 1"));
    orphan.child.wait().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", orphan.pid)).unwrap();
    let ppid = stat.rsplit(')').next().unwrap().split_whitespace().nth(1);
    assert_ne!(ppid, Some(orphan.child.id().to_string().as_str()), "{stat}");
    firewall.judged(orphan.pid).await;
    assert_eq!(orphan.ask(&connect), "EPERM", "the orphaned grandchild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_in_a_denied_container_is_refused_from_its_start() {
    let missing = common::docker::missing_prerequisite();
    if !common::require(missing.is_none(), missing.unwrap_or_default()) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let docker = Arc::new(common::docker::Dockerd::start());
    docker.import_busybox_image("fw-test");
    let policies = "policies:\n  - name: quarantined\n    action: deny\n    selectors: [{docker:label:policy: quarantined}]\n";
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();

    // Pending processes are allowed: the refusal comes from the container's identity, which
    // the agent gave its cgroup once it judged the container's first process.
    let firewall = Firewall::start("container", policies, Action::Allow, Some(&docker)).await;
    let parent = format!("{}/docker", firewall.cgroup.relative());
    let run = |name: &str, label: &str| {
        docker.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--cgroup-parent",
            &parent,
            "--label",
            &format!("policy={label}"),
            "fw-test",
            "sleep",
            "3600",
        ]);
        docker
            .ok(&["inspect", "-f", "{{.State.Pid}}", name])
            .parse::<u32>()
            .unwrap()
    };
    let quarantined = run("quarantined", "quarantined");
    let trusted = run("trusted", "trusted");
    firewall.judged(quarantined).await;
    firewall.judged(trusted).await;
    let exec = |name: &str| {
        let (docker, name, port) = (Arc::clone(&docker), name.to_owned(), port.clone());
        tokio::task::spawn_blocking(move || {
            // nc connects as soon as it starts.
            docker.cli(&[
                "exec",
                &name,
                "nc",
                "-w",
                "2",
                "127.0.0.1",
                &port,
                "-e",
                "true",
            ])
        })
    };
    for _ in 0..5 {
        let refused = exec("quarantined").await.unwrap();
        assert!(
            !refused.status.success()
                && String::from_utf8_lossy(&refused.stderr).contains("not permitted"),
            "{refused:?}"
        );
        let allowed = exec("trusted").await.unwrap();
        assert!(allowed.status.success(), "{allowed:?}");
    }

    // A new container: its cgroup is seen as the runtime makes it, and judged from the labels
    // the runtime describes before its first process runs, which is refused at once.
    for round in 0..5 {
        let name = format!("new-{round}");
        let first = docker.cli(&[
            "run",
            "--name",
            &name,
            "--network",
            "host",
            "--cgroup-parent",
            &parent,
            "--label",
            "policy=quarantined",
            "fw-test",
            "nc",
            "-w",
            "2",
            "127.0.0.1",
            &port,
            "-e",
            "true",
        ]);
        let _ = docker.cli(&["rm", "-f", &name]);
        assert!(
            !first.status.success()
                && String::from_utf8_lossy(&first.stderr).contains("not permitted"),
            "round {round}: {first:?}"
        );
    }
    drop(firewall);

    // Fail closed: a new container's first process, which nobody could judge before it ran.
    let firewall = Firewall::start("new-container", policies, Action::Deny, Some(&docker)).await;
    let parent = format!("{}/docker", firewall.cgroup.relative());
    let first = docker.cli(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--cgroup-parent",
        &parent,
        "--label",
        "policy=quarantined",
        "fw-test",
        "nc",
        "-w",
        "2",
        "127.0.0.1",
        &port,
        "-e",
        "true",
    ]);
    assert!(
        !first.status.success() && String::from_utf8_lossy(&first.stderr).contains("not permitted"),
        "{first:?}"
    );
    drop(firewall);
    for name in ["quarantined", "trusted"] {
        let _ = docker.cli(&["rm", "-f", name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_enforcement_survives_sigkill_is_adopted_and_detached() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let cgroup = TestCgroup::new("pinned");
    let dir = tempfile::tempdir().unwrap();
    let denied = connector_copy(dir.path(), "denied");
    let pins = format!("/sys/fs/bpf/ma-test-{}-firewall", std::process::id());
    let policies = common::daemon::write(
        dir.path(),
        "policies.yaml",
        &format!(
            "policies:\n  - name: denied-binary\n    action: deny\n    selectors: [{{process:binary:path: {denied}}}]\n"
        ),
    );
    let config = common::daemon::write(
        dir.path(),
        "agent.yaml",
        &format!(
            "policies:\n  path: {policies}\nhook:\n  mode: enforce\n  cgroupRoot: {}\n  pin: true\n  pinPath: {pins}\n",
            cgroup.path().display()
        ),
    );
    let args = ["--listen", "127.0.0.1:0", "--config", config.as_str()];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = format!("tcp 127.0.0.1 {}", listener.local_addr().unwrap().port());

    let daemon = common::daemon::Daemon::start(&args);
    assert!(
        daemon.wait_for_log("kernel hook attached", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let (mut process, _) = Driven::start(Some(&cgroup), Path::new(&denied), &[]);
    until(&mut process, &connect, "EPERM");

    // Killed without a chance to clean up: the pinned programs go on judging.
    let (_, _, log) = daemon.stop_with(libc::SIGKILL);
    assert!(log.contains("pinned=true"), "{log}");
    for _ in 0..10 {
        assert_eq!(process.ask(&connect), "EPERM", "after SIGKILL");
    }
    assert_eq!(
        process.ask(&format!("fork {connect}")),
        "EPERM",
        "its child too"
    );

    // A new agent adopts what is pinned.
    let daemon = common::daemon::Daemon::start(&args);
    assert!(
        daemon.wait_for_log("adopted=true", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    assert_eq!(process.ask(&connect), "EPERM", "after the restart");
    let (status, _, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("left pinned"), "{log}");
    assert_eq!(
        process.ask(&connect),
        "EPERM",
        "after a clean stop, still pinned"
    );

    // `hook detach` ends it.
    let output = common::run(common::agent().args(["hook", "detach", "--pin-path", &pins]));
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("removed"),
        "{output:?}"
    );
    until(&mut process, &connect, "ok");
    assert!(!Path::new(&pins).exists());
    let output = common::run(common::agent().args(["hook", "detach", "--pin-path", &pins]));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("nothing pinned"),
        "{output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_collector_that_a_policy_needs_refuses_instead_of_allowing() {
    let missing = common::docker::missing_prerequisite();
    if !common::require(missing.is_none(), missing.unwrap_or_default()) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let docker = Arc::new(common::docker::Dockerd::start());
    docker.import_busybox_image("fw-test");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // Only quarantined containers are denied; everything else is allowed, also while pending.
    let policies = "policies:\n  - name: quarantined\n    action: deny\n    selectors: [{docker:label:policy: quarantined}]\n";
    let cgroup = TestCgroup::new("failed-collector");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yaml");
    std::fs::write(&path, policies).unwrap();
    let mut config = Config::default();
    config.resolver.prestart = false;
    config.policies.path = Some(path);
    config.hook.mode = HookMode::Enforce;
    config.hook.cgroup_root = Some(cgroup.path().to_owned());
    // The agent's Docker collector cannot reach the engine: it must, and fails.
    config.collectors.docker.enabled = Enabled::Always;
    config.collectors.docker.socket_path = dir.path().join("no-docker.sock").display().to_string();
    let mut agent = Agent::build(config).unwrap();
    agent.attach_hook().unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    agent.start_background(shutdown);
    let enforcer = Arc::clone(agent.enforcer.as_ref().unwrap());

    let parent = format!("{}/docker", cgroup.relative());
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "unknown",
        "--network",
        "host",
        "--cgroup-parent",
        &parent,
        "--label",
        "policy=quarantined",
        "fw-test",
        "sleep",
        "3600",
    ]);
    let pid: u32 = docker
        .ok(&["inspect", "-f", "{{.State.Pid}}", "unknown"])
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while enforcer.ruleset_of(pid).is_none() {
        assert!(Instant::now() < deadline, "the container was not judged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its labels could not be collected: not "no deny matched, so allowed", but refused, from
    // the start of every process in the container.
    let refused = {
        let docker = Arc::clone(&docker);
        tokio::task::spawn_blocking(move || {
            docker.cli(&[
                "exec",
                "unknown",
                "nc",
                "-w",
                "2",
                "127.0.0.1",
                &port,
                "-e",
                "true",
            ])
        })
        .await
        .unwrap()
    };
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("not permitted"),
        "{refused:?}"
    );
    agent.detach_hook();
    let _ = docker.cli(&["rm", "-f", "unknown"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_exempt_even_when_everything_else_fails_closed() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let firewall = Firewall::start(
        "exempt",
        "policies:\n  - name: nobody\n    action: deny\n    selectors: [{}]\n",
        Action::Deny,
        None,
    )
    .await;
    let enforcer = firewall.agent.enforcer.as_ref().unwrap();
    assert_eq!(
        enforcer.ruleset_of(std::process::id()),
        Some(kernel_hook::maps::ruleset::EXEMPT)
    );
    // Moved into the judged cgroup, the agent's own connects still go through.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let me = std::process::id().to_string();
    std::fs::write(firewall.cgroup.path().join("cgroup.procs"), &me).unwrap();
    let connected = std::net::TcpStream::connect(address);
    std::fs::write(test_support::cgroup::v2_root().join("cgroup.procs"), &me).unwrap();
    connected.expect("the agent's own connect");
    // While another process there is refused.
    let (mut process, _) = Driven::start(Some(&firewall.cgroup), &connector(), &[]);
    assert_eq!(
        process.ask(&format!("tcp {} {}", address.ip(), address.port())),
        "EPERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_the_agent_has_judged_is_refused_from_the_first_instruction_of_its_next_run() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let denied = connector_copy(dir.path(), "denied");
    let hash = common::sha256sum(&denied);
    let policies = format!(
        "policies:\n  - name: denied-binary\n    action: deny\n    selectors: [{{process:binary:hash: \"{hash}\"}}]\n"
    );
    // Pending processes are allowed: a refusal at the first instruction is the binary's.
    let firewall = Firewall::start("binary", &policies, Action::Allow, None).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let first = ["tcp", "127.0.0.1", port.as_str()];

    // The agent meets the binary once...
    let (process, _) = Driven::start(Some(&firewall.cgroup), Path::new(&denied), &[]);
    firewall.judged(process.pid).await;
    drop(process);
    // ...and every later run of that file is refused from its first connect, before the agent
    // could look at it.
    for _ in 0..5 {
        let (_, said) = Driven::start(Some(&firewall.cgroup), Path::new(&denied), &first);
        assert_eq!(said, ["EPERM"]);
    }
    // A rewrite in place is another file version: not the one judged.
    let bytes = std::fs::read(&denied).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&denied, bytes).unwrap();
    let (_, said) = Driven::start(Some(&firewall.cgroup), Path::new(&denied), &first);
    assert_eq!(said, ["ok"], "the rewritten file, not judged yet");
}
