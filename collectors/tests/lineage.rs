//! Lineage read from procfs alone, on real processes: the ancestor chain follows the parents
//! nearest first and stops at the init of a PID namespace; exec ids hold for one execution and
//! change with an exec; the hook's events (fed by hand here, as the agent feeds them) keep a
//! parent that exited.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collectors::procfs::{ExecId, ProcfsCollector, ProcfsConfig};
use collectors::{HostRoots, ProcessRef};
use labels::LabelSet;
use test_support::process::{Killed, KilledPid, exec_now, shell_that_execs_on_a_line};
use test_support::{is_root, require};

fn collector() -> ProcfsCollector {
    ProcfsCollector::new(HostRoots::default(), &ProcfsConfig::default())
}

fn labels_of(collector: &ProcfsCollector, pid: u32) -> LabelSet {
    let process = ProcessRef::resolve(&HostRoots::default(), pid).unwrap();
    collector.collect_blocking(&process).unwrap().labels
}

/// The only child of `parent` (waits for it to appear).
fn child_of(parent: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "{parent} started no child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pid` runs `name`, its exec done (its arguments set up).
fn wait_for_name(pid: u32, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        comm.trim() == name && !args.is_empty()
    };
    while !done() {
        assert!(Instant::now() < deadline, "{pid} does not run {name}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn real_path(program: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    let path = String::from_utf8(found.stdout).unwrap();
    std::fs::canonicalize(path.trim())
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn ancestors_are_the_parents_nearest_first() {
    // `; true`: the shell forks `sleep` instead of exec'ing it.
    let shell = Killed(
        Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .spawn()
            .unwrap(),
    );
    let sleep = child_of(shell.0.id());
    wait_for_name(sleep, "sleep");
    let collector = collector();
    let labels = labels_of(&collector, sleep);
    let me = std::env::current_exe().unwrap();
    let paths = labels.get("process:ancestor:binary:path");
    assert_eq!(paths[0], real_path("sh"), "{labels:#?}");
    assert_eq!(paths[1], me.to_str().unwrap(), "{labels:#?}");
    let names = labels.get("process:ancestor:name");
    assert_eq!(names[0], "sh", "{labels:#?}");
    assert!(paths.len() <= 8 && names.len() <= 8);
    // The parent's execution is the one a lookup of the parent gives.
    let parent = labels_of(&collector, shell.0.id());
    assert_eq!(
        labels.get("process:parent:exec-id"),
        parent.get("process:exec-id")
    );

    // A depth of 1: the parent only; 0: none.
    for (depth, expected) in [(1, 1), (0, 0)] {
        let config = ProcfsConfig {
            ancestor_depth: depth,
            ..ProcfsConfig::default()
        };
        let shallow = ProcfsCollector::new(HostRoots::default(), &config);
        let labels = labels_of(&shallow, sleep);
        assert_eq!(
            labels.get("process:ancestor:binary:path").len(),
            expected,
            "depth {depth}: {labels:#?}"
        );
    }
}

#[test]
fn the_chain_stops_at_the_init_of_a_pid_namespace() {
    if !require(is_root(), "root, to make a PID namespace with unshare") {
        return;
    }
    let unshare = Killed(
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                "sleep 30; true",
            ])
            .spawn()
            .unwrap(),
    );
    let init = child_of(unshare.0.id());
    let sleep = child_of(init);
    wait_for_name(sleep, "sleep");
    let labels = labels_of(&collector(), sleep);
    assert_eq!(
        labels.get("process:ancestor:binary:path"),
        [real_path("sh")],
        "{labels:#?}"
    );
    // The namespace's init has no ancestors of its own.
    let labels = labels_of(&collector(), init);
    assert!(
        labels.get("process:ancestor:name").is_empty(),
        "{labels:#?}"
    );
}

#[test]
fn an_exec_id_holds_for_one_execution_and_changes_at_exec() {
    let mut shell = shell_that_execs_on_a_line();
    let pid = shell.0.id();
    wait_for_name(pid, "sh");
    let collector = collector();
    let exec_id = |labels: &LabelSet| -> ExecId {
        labels.get("process:exec-id")[0]
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {labels:#?}"))
    };
    let first = exec_id(&labels_of(&collector, pid));
    assert_eq!(first.pid, pid);
    assert_eq!(
        exec_id(&labels_of(&collector, pid)),
        first,
        "a second lookup"
    );
    assert_eq!(
        exec_id(&labels_of(&self::collector(), pid)),
        first,
        "another agent"
    );
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(
        boot.replace('-', "")
            .starts_with(&format!("{:016x}", first.boot)),
        "{first} {boot}"
    );

    exec_now(&mut shell);
    wait_for_name(pid, "sleep");
    let second = exec_id(&labels_of(&collector, pid));
    assert_ne!(second, first);
    assert_eq!(
        (second.boot, second.pid, second.start),
        (first.boot, first.pid, first.start)
    );
}

#[test]
fn hook_events_keep_a_parent_that_exited() {
    use std::io::BufRead;
    // Two agents following the hook from before these processes start: one is fed their
    // events; the other is not (as when events are lost), and says its chains may be short.
    let (aware, collector) = (collector(), collector());
    aware.lineage().follow_hook_events();
    collector.lineage().follow_hook_events();
    // (Start times count clock ticks: the processes must start in a later one.)
    std::thread::sleep(Duration::from_millis(20));
    // A launcher that forks a child and exits: procfs then shows the child under init (or a
    // subreaper), while the events say who forked it.
    let mut launcher = Command::new("sh")
        .args(["-c", "sleep 30 & echo $!; read line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let launcher_pid = launcher.id();
    let mut first = String::new();
    std::io::BufReader::new(launcher.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let sleep: u32 = first.trim().parse().unwrap();
    let _sleep = KilledPid(sleep);
    let start_of = |pid: u32| {
        ProcessRef::resolve(&HostRoots::default(), pid)
            .unwrap()
            .start_ticks
            .unwrap()
    };
    let unseen = collector
        .collect_blocking(&ProcessRef::resolve(&HostRoots::default(), sleep).unwrap())
        .unwrap();
    let partial = unseen.partial.unwrap_or_default();
    assert!(
        partial.contains("fork event for this process was not seen"),
        "{partial}"
    );
    let collector = aware;
    let lineage = collector.lineage();
    // The agent sees the launcher's exec and its fork, as the hook reports them, then its exit.
    let launcher_start = start_of(launcher_pid);
    lineage.execed(launcher_pid, launcher_start, "sh");
    lineage.forked(sleep, start_of(sleep), launcher_pid, launcher_start);
    drop(launcher.stdin.take());
    launcher.wait().unwrap();
    lineage.exited(launcher_pid, launcher_start);

    let process = ProcessRef::resolve(&HostRoots::default(), sleep).unwrap();
    let seen = collector.collect_blocking(&process).unwrap();
    assert!(!seen.partial.unwrap_or_default().contains("fork event"));
    let labels = seen.labels;
    assert_ne!(
        labels.get("process:ppid"),
        [launcher_pid.to_string()],
        "the launcher exited: {labels:#?}"
    );
    let paths = labels.get("process:ancestor:binary:path");
    assert_eq!(paths[0], real_path("sh"), "{labels:#?}");
    assert_eq!(
        paths[1],
        std::env::current_exe().unwrap().to_str().unwrap(),
        "{labels:#?}"
    );
    // Without the events, procfs knows only the new parent.
    let unaware = labels_of(&self::collector(), sleep);
    assert_ne!(
        unaware.get("process:ancestor:binary:path"),
        paths,
        "{unaware:#?}"
    );
}

#[test]
fn an_ancestor_depth_past_the_most_is_refused_naming_it() {
    let mut config = collectors::CollectorsConfig::default();
    config.procfs.ancestor_depth = collectors::procfs::MAX_ANCESTOR_DEPTH + 1;
    let error = collectors::build_registry(&config, &HostRoots::default())
        .err()
        .expect("refused");
    let text = collectors::error_chain(&error);
    assert!(
        text.contains("procfs") && text.contains("ancestorDepth: 33 is more than the most, 32"),
        "{text}"
    );
}
