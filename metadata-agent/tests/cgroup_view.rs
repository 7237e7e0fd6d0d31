//! Where the hook attaches when the agent runs in a container (root): the cgroup root under
//! `HOST_SYS`, and a refusal, naming why, of a cgroup2 mount that shows only a sub-cgroup (the
//! view inside a cgroup namespace), where the hook would judge nothing but the agent's own
//! subtree.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::cgroup::{TestCgroup, v2_root};

/// Runs `script` under `unshare` (`namespaces` as its flags, a private mount namespace
/// always) with `$AGENT` the agent binary and `$D` a fresh directory, until its stderr shows
/// `needle` or it exits; returns whether it was still running, and its stderr so far.
fn run_unshared(
    cgroup: Option<&TestCgroup>,
    namespaces: &[&str],
    script: &str,
    needle: &str,
) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "hook:\n  enabled: true\n  mode: observe\n").unwrap();
    let mut command = Command::new("unshare");
    command
        .args(namespaces)
        .args(["--mount", "--propagation", "private", "sh", "-ec", script])
        .env("AGENT", env!("CARGO_BIN_EXE_metadata-agent"))
        .env("D", dir.path())
        .env("CONFIG", &config)
        .env("METADATA_AGENT_LOG", "info")
        .env_remove("HOST_SYS")
        .env_remove("HOST_PROC")
        .env_remove("HOST_ETC")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(cgroup) = cgroup {
        cgroup.contain(&mut command);
    }
    let mut child = command.spawn().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let mut found = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match received.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(needle) {
                    found = true;
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    // Its stderr closed without the needle: it is exiting.
    let running = found && child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    (running, log)
}

#[test]
fn a_cgroup_namespace_view_is_refused_naming_why() {
    if !test_support::require(
        test_support::is_root(),
        "root (to make cgroups and namespaces)",
    ) {
        return;
    }
    // The agent moved into a cgroup of its own, then given a cgroup namespace rooted there
    // and a fresh cgroup2 mount, as a container with --cgroupns=private sees it; HOST_SYS
    // points the detection at that mount.
    let cgroup = TestCgroup::new("nsview");
    let (running, log) = run_unshared(
        Some(&cgroup),
        &["--cgroup"],
        r#"mkdir -p "$D/sys/fs/cgroup"
mount -t cgroup2 none "$D/sys/fs/cgroup"
HOST_SYS="$D/sys" exec "$AGENT" run --listen 127.0.0.1:0 --config "$CONFIG""#,
        "kernel hook attached",
    );
    assert!(
        !running,
        "the agent started in a namespaced cgroup view:\n{log}"
    );
    assert!(
        log.contains("runs in a cgroup namespace of its own")
            && log.contains("cannot find its own cgroup")
            && log.contains("/sys/fs/cgroup"),
        "{log}"
    );

    // The same view without a namespace: a bind mount of a subtree where the hierarchy's root
    // should be. The hook would judge only that subtree.
    let script = format!(
        r#"mkdir -p "$D/sys/fs/cgroup"
mount --bind {} "$D/sys/fs/cgroup"
HOST_SYS="$D/sys" exec "$AGENT" run --listen 127.0.0.1:0 --config "$CONFIG""#,
        cgroup.path().display()
    );
    let (running, log) = run_unshared(None, &[], &script, "kernel hook attached");
    assert!(!running, "the agent attached to a subtree view:\n{log}");
    assert!(
        log.contains("shows only part of the cgroup hierarchy")
            && log.contains("cgroup namespace")
            && log.contains("/sys/fs/cgroup"),
        "{log}"
    );
}

#[test]
fn the_hook_attaches_to_the_cgroup_root_under_host_sys() {
    if !test_support::require(
        test_support::is_root(),
        "root (to load BPF programs and mount)",
    ) {
        return;
    }
    // The host's hierarchy bind-mounted where a DaemonSet mounts the host's /sys.
    let script = format!(
        r#"mkdir -p "$D/host/sys/fs/cgroup"
mount --bind {} "$D/host/sys/fs/cgroup"
HOST_SYS="$D/host/sys" exec "$AGENT" run --listen 127.0.0.1:0 --config "$CONFIG""#,
        v2_root().display()
    );
    let (running, log) = run_unshared(None, &[], &script, "kernel hook attached");
    assert!(running, "the agent stopped:\n{log}");
    let attached = log
        .lines()
        .find(|line| line.contains("kernel hook attached"))
        .unwrap_or_else(|| panic!("no attachment in the log:\n{log}"));
    assert!(attached.contains("/host/sys/fs/cgroup"), "{attached}");
}

#[test]
fn inside_a_cgroup_namespace_other_processes_cgroups_are_named_as_the_host_names_them() {
    if !test_support::require(
        test_support::is_root(),
        "root (to make cgroups and namespaces)",
    ) {
        return;
    }
    // A process in a cgroup of its own, as a container's would be.
    let other = TestCgroup::new("nsview-other");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60");
    other.contain(&mut sleeper);
    let mut sleeper = sleeper.spawn().unwrap();
    // The agent in another cgroup, with a cgroup namespace rooted there (as in a pod on a
    // cgroup v2 node), printing that process's labels.
    let agent = TestCgroup::new("nsview-agent");
    let mut command = Command::new("unshare");
    command
        .args(["--cgroup", "--"])
        .arg(env!("CARGO_BIN_EXE_metadata-agent"))
        .args(["inspect", "--json"])
        .arg(sleeper.id().to_string())
        .env_remove("HOST_SYS")
        .env_remove("HOST_PROC")
        .env_remove("HOST_ETC");
    agent.contain(&mut command);
    let output = command.output().unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(output.status.success(), "{output:?}");
    let resolution: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // Read from inside the namespace the kernel says `/../ma-test-...`; the agent says what the
    // host says.
    let expected = other.relative();
    assert_eq!(
        resolution["labels"]["process:cgroup"][0], expected,
        "{resolution}"
    );
}
