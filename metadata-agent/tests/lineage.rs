//! Lineage through a running agent: exec ids that hold for one execution and change at `exec`
//! and PID reuse, lookups by exec id (live, then `410 Gone` with the last labels), and, with the
//! kernel hook, an ancestor chain that keeps a launcher that exited (a double fork).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use serde_json::Value;
use test_support::cgroup::TestCgroup;
use test_support::process::{Killed, KilledPid, exec_now, shell_that_execs_on_a_line};

fn first<'a>(labels: &'a Value, key: &str) -> &'a str {
    labels["labels"][key][0]
        .as_str()
        .unwrap_or_else(|| panic!("no {key}: {labels:#}"))
}

fn values<'a>(labels: &'a Value, key: &str) -> Vec<&'a str> {
    labels["labels"][key]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// GETs `/metadata/{pid}` until its `process:name` is `name`.
async fn metadata_when_named(daemon: &Daemon, pid: u32, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = daemon.get_json(&format!("/metadata/{pid}")).await;
        // (Right after an exec, the answer may lack the exec id: asked again.)
        if status == 200
            && answer["labels"]["process:name"][0] == name
            && answer["labels"]["process:exec-id"][0].is_string()
        {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{pid} is not {name}: {status} {answer:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn daemon_without_hook(dir: &std::path::Path) -> Daemon {
    let config = common::daemon::write(
        dir,
        "agent.yaml",
        "hook:\n  enabled: false\nresolver:\n  prestart: false\n",
    );
    Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ids_hold_for_one_execution_and_lookups_find_it_live_and_ended() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_without_hook(dir.path());
    let mut shell = shell_that_execs_on_a_line();
    let pid = shell.0.id();
    let before = metadata_when_named(&daemon, pid, "sh").await;
    let first_id = first(&before, "process:exec-id").to_owned();
    let again = metadata_when_named(&daemon, pid, "sh").await;
    assert_eq!(
        first(&again, "process:exec-id"),
        first_id,
        "a second lookup"
    );
    let parts: Vec<&str> = first_id.split('-').collect();
    assert_eq!(parts[1], pid.to_string(), "{first_id}");

    // Live: the same answer as by PID.
    let (status, live) = daemon
        .get_json(&format!("/metadata?exec_id={first_id}"))
        .await;
    assert_eq!(status, 200, "{live:#}");
    assert_eq!(first(&live, "process:pid"), pid.to_string());
    assert_eq!(first(&live, "process:exec-id"), first_id);

    // The process execs: a new execution of the same process.
    exec_now(&mut shell);
    let after = metadata_when_named(&daemon, pid, "sleep").await;
    let second_id = first(&after, "process:exec-id").to_owned();
    assert_ne!(second_id, first_id);
    let second_parts: Vec<&str> = second_id.split('-').collect();
    assert_eq!(second_parts[..3], parts[..3], "{first_id} {second_id}");
    let (status, gone) = daemon
        .get_json(&format!("/metadata?exec_id={first_id}"))
        .await;
    assert_eq!(status, 410, "{gone:#}");
    assert_eq!(gone["error"]["code"], "process_ended", "{gone:#}");
    assert_eq!(first(&gone["last_known"], "process:name"), "sh");
    assert_eq!(first(&gone["last_known"], "process:exec-id"), first_id);
    let (status, live) = daemon
        .get_json(&format!("/metadata?exec_id={second_id}"))
        .await;
    assert_eq!(status, 200, "{live:#}");
    assert_eq!(first(&live, "process:name"), "sleep");

    // It exits: its last execution is gone too (the agent learns it at the lookup, without
    // the hook's exit event).
    drop(shell);
    let (status, gone) = daemon
        .get_json(&format!("/metadata?exec_id={second_id}"))
        .await;
    assert_eq!(status, 410, "{gone:#}");
    assert_eq!(first(&gone["last_known"], "process:name"), "sleep");

    // Malformed, of another boot, never seen.
    let (status, bad) = daemon.get_json("/metadata?exec_id=nonsense").await;
    assert_eq!(status, 400, "{bad:#}");
    assert_eq!(bad["error"]["code"], "invalid_exec_id");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("<boot>-<pid>-<start>-<image>")
    );
    // A huge one is refused without being echoed back.
    let huge = "f".repeat(6000);
    let (status, bad) = daemon.get_json(&format!("/metadata?exec_id={huge}")).await;
    assert_eq!(status, 400, "{bad:#}");
    assert!(bad.to_string().len() < 400, "{bad:#}");
    let other_boot = format!("{}{}", "ffffffffffffffff", &first_id[16..]);
    let other_boot = if other_boot == first_id {
        format!("{}{}", "0000000000000000", &first_id[16..])
    } else {
        other_boot
    };
    let (status, unknown) = daemon
        .get_json(&format!("/metadata?exec_id={other_boot}"))
        .await;
    assert_eq!(status, 404, "{unknown:#}");
    assert_eq!(unknown["error"]["code"], "no_such_execution");
    let never = format!("{}-4194000-1-0000000000000000", &first_id[..16]);
    let (status, unknown) = daemon.get_json(&format!("/metadata?exec_id={never}")).await;
    assert_eq!(status, 404, "{unknown:#}");
    let (status, both) = daemon
        .get_json(&format!("/metadata?exec_id={second_id}&cgroup_id=1"))
        .await;
    assert_eq!(status, 400, "{both:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_another_execution() {
    if !common::require(
        common::is_root(),
        "root, to choose the next PID with /proc/sys/kernel/ns_last_pid",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_without_hook(dir.path());
    // The first process, looked up, then gone; a new one gets its PID (other processes on the
    // machine may take it first: try again).
    let mut attempts = 0;
    let (old_id, new_pid, _new) = loop {
        attempts += 1;
        assert!(
            attempts <= 20,
            "the PID was taken by another process 20 times"
        );
        let old = Killed(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = old.0.id();
        let answer = metadata_when_named(&daemon, pid, "sleep").await;
        let old_id = first(&answer, "process:exec-id").to_owned();
        drop(old);
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let new = Killed(Command::new("sleep").arg("31").spawn().unwrap());
        if new.0.id() == pid {
            break (old_id, pid, new);
        }
    };
    let answer = metadata_when_named(&daemon, new_pid, "sleep").await;
    let new_id = first(&answer, "process:exec-id");
    assert_ne!(new_id, old_id);
    assert_eq!(
        new_id.split('-').nth(1),
        old_id.split('-').nth(1),
        "the same PID"
    );
    assert_ne!(
        new_id.split('-').nth(2),
        old_id.split('-').nth(2),
        "another start time"
    );
    // The old execution is not confused with the new one.
    let (status, gone) = daemon
        .get_json(&format!("/metadata?exec_id={old_id}"))
        .await;
    assert_ne!(status, 200, "{gone:#}");
    let (status, live) = daemon
        .get_json(&format!("/metadata?exec_id={new_id}"))
        .await;
    assert_eq!(status, 200, "{live:#}");
    assert_eq!(first(&live, "process:cmdline"), "sleep 31");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hook_a_launcher_that_exited_stays_in_the_chain() {
    if !common::require(common::is_root(), "root (to load BPF programs)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cgroup = TestCgroup::new("lineage");
    let config = common::daemon::write(
        dir.path(),
        "agent.yaml",
        &format!(
            "hook:\n  enabled: true\n  cgroupRoot: {}\nresolver:\n  prestart: false\n",
            cgroup.path().display()
        ),
    );
    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    daemon.wait_ready().await;
    assert!(
        daemon.wait_for_log("kernel hook attached", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    // The launcher: a shell at a path of its own. Its subshell forks the target and exits at
    // once (a double fork); the target runs `sh -c 'exec sleep'` (an exec that is not an
    // ancestor); the launcher exits too.
    let launcher = dir.path().join("launcher");
    std::fs::copy(std::fs::canonicalize("/bin/sh").unwrap(), &launcher).unwrap();
    let mut started = Command::new(&launcher)
        .args(["-c", "(sh -c 'exec sleep 30' & echo $!); read line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let launcher_pid = started.id();
    let mut line = String::new();
    BufReader::new(started.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let target: u32 = line.trim().parse().unwrap();
    let _target = KilledPid(target);
    // The launcher lives until the agent has seen it (its exec and its fork), then exits.
    let (status, answer) = daemon.get_json(&format!("/metadata/{launcher_pid}")).await;
    assert_eq!(status, 200, "{answer:#}");
    drop(started.stdin.take());
    started.wait().unwrap();

    let answer = metadata_when_named(&daemon, target, "sleep").await;
    assert_ne!(
        first(&answer, "process:ppid"),
        launcher_pid.to_string(),
        "{answer:#}"
    );
    let paths = values(&answer, "process:ancestor:binary:path");
    let me = std::env::current_exe().unwrap();
    assert_eq!(
        paths[..2],
        [launcher.to_str().unwrap(), me.to_str().unwrap()],
        "the subshell and the launcher (one path), then this test: {answer:#}"
    );
    assert_eq!(values(&answer, "process:ancestor:name")[0], "launcher");
    assert_eq!(answer["trust"]["process:ancestor:binary:path"], "kernel");
    assert_eq!(answer["trust"]["process:ancestor:name"], "self");

    // Without the hook's history, the launcher is lost: the chain starts at the new parent.
    let once = common::run(common::agent().args(["inspect", &target.to_string(), "--json"]));
    let inspected: Value = serde_json::from_slice(&once.stdout).unwrap();
    assert_ne!(
        values(&inspected, "process:ancestor:binary:path").first(),
        Some(&launcher.to_str().unwrap()),
        "{inspected:#}"
    );
}
