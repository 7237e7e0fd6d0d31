//! Least privilege, on the real kernel: the agent runs as an unprivileged user (`nobody`) with
//! only the capabilities `docs/configuration.md` documents for each feature (given with
//! `setpriv`), and each feature works; without them, it does not. A daemon started as root
//! keeps only `CAP_DAC_READ_SEARCH` and `CAP_SYS_PTRACE` once started.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::write;
use test_support::cgroup::TestCgroup;
use test_support::connector::{Driven, build};

const RESOLVE: &str = "+dac_read_search,+sys_ptrace";
const HOOK: &str = "+dac_read_search,+sys_ptrace,+bpf,+perfmon,+net_admin";

/// `metadata-agent` as `nobody` with exactly `caps` (`setpriv` syntax; empty: none).
fn agent_as_nobody(caps: &str) -> Command {
    let set = format!(
        "-all{}",
        if caps.is_empty() {
            String::new()
        } else {
            format!(",{caps}")
        }
    );
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_metadata-agent"))
        .env("METADATA_AGENT_LOG", "info");
    for var in ["HOST_PROC", "HOST_SYS", "HOST_ETC"] {
        command.env_remove(var);
    }
    command
}

fn prerequisites() -> bool {
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    common::require(
        common::is_root() && setpriv,
        "root and setpriv (util-linux)",
    )
}

#[test]
fn resolution_needs_only_dac_read_search_and_sys_ptrace() {
    if !prerequisites() {
        return;
    }
    // A root process, with a private executable (mode 0700) and an open socket.
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("private-sleep");
    std::fs::copy("/bin/sleep", &binary).unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut target =
        test_support::spawn_retrying(Command::new(&binary).arg("60").stdout(Stdio::null()))
            .unwrap();
    let pid = target.id().to_string();
    let inspect = |caps: &str| {
        let output = common::run(agent_as_nobody(caps).args(["inspect", &pid, "--json"]));
        assert!(output.status.success(), "{output:?}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["labels"].clone()
    };
    let labels = inspect(RESOLVE);
    let hash = common::sha256sum(&binary);
    assert_eq!(labels["process:binary:hash"][0], hash.as_str(), "{labels}");
    assert_eq!(labels["process:binary:path"][0], binary.to_str().unwrap());
    assert!(labels["process:cwd"][0].is_string(), "{labels}");
    // Without them, another user's process is mostly closed to it.
    let labels = inspect("");
    assert!(labels.get("process:binary:hash").is_none(), "{labels}");
    assert!(labels.get("process:binary:path").is_none(), "{labels}");
    let _ = target.kill();
    let _ = target.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_observes_and_enforces_with_its_documented_capabilities() {
    if !prerequisites() {
        return;
    }
    let cgroup = TestCgroup::new("caps");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let denied = dir.path().join("denied");
    std::fs::copy(build(Path::new(env!("CARGO_TARGET_TMPDIR"))), &denied).unwrap();
    let policies = write(
        dir.path(),
        "policies.yaml",
        &format!(
            "policies:\n  - name: denied\n    action: deny\n    selectors: [{{process:binary:path: {}}}]\n",
            denied.display()
        ),
    );
    let config = write(
        dir.path(),
        "agent.yaml",
        &format!(
            "policies:\n  path: {policies}\nhook:\n  mode: enforce\n  cgroupRoot: {}\n",
            cgroup.path().display()
        ),
    );
    for path in [&policies, &config] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    // Without the hook's capabilities, enforce mode does not start.
    let output = common::run(agent_as_nobody(RESOLVE).args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--config",
        &config,
    ]));
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("needs root"),
        "{output:?}"
    );

    // With them, it attaches, judges, and keeps only what resolution needs.
    let mut command = agent_as_nobody(HOOK);
    command
        .args(["run", "--listen", "127.0.0.1:0", "--config", &config])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut agent = command.spawn().unwrap();
    let stderr = agent.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !log
        .lock()
        .unwrap()
        .contains("dropped every other capability")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut process, _) = Driven::start(Some(&cgroup), &denied, &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = format!("tcp 127.0.0.1 {}", listener.local_addr().unwrap().port());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while process.ask(&connect) != "EPERM" {
        assert!(
            std::time::Instant::now() < deadline,
            "never refused; agent log:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_owned();
    // Bits 2 (DAC_READ_SEARCH) and 19 (SYS_PTRACE) only.
    assert_eq!(effective, "0000000000080004", "{status}");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_daemon_started_as_root_keeps_only_what_resolution_needs() {
    if !common::require(common::is_root(), "root") {
        return;
    }
    let daemon = common::daemon::Daemon::start(&["--listen", "127.0.0.1:0"]);
    assert!(
        daemon.wait_for_log("dropped every other capability", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    for (field, expected) in [
        ("CapEff:", "0000000000080004"),
        ("CapPrm:", "0000000000080004"),
        ("CapInh:", "0000000000000000"),
        ("CapAmb:", "0000000000000000"),
    ] {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .unwrap()
            .trim();
        assert_eq!(value, expected, "{field}");
    }
}
