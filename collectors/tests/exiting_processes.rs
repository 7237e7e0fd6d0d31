//! Processes that exit while they are being collected: what was read plus a clear status, or a
//! clean "no such process", never a panic. Run many times against real short-lived processes.

use std::process::{Command, Stdio};

use collectors::procfs::{ProcfsCollector, ProcfsConfig};
use collectors::{CollectError, HostRoots, ProcessError, ProcessRef};

#[test]
fn short_lived_processes_never_panic_the_collector() {
    let roots = HostRoots::default();
    let config = ProcfsConfig {
        extract_envs: true,
        ..Default::default()
    };
    let collector = ProcfsCollector::new(roots.clone(), &config);
    let (mut complete, mut partial, mut gone) = (0, 0, 0);
    for _ in 0..200 {
        let mut child = Command::new("true").stdin(Stdio::null()).spawn().unwrap();
        let pid = child.id();
        // Race the collection against the exit; reap only afterwards.
        match ProcessRef::resolve(&roots, pid) {
            Ok(process) => match collector.collect_blocking(&process) {
                Ok(collected) => {
                    assert_eq!(
                        collected.labels.first("process:pid"),
                        Some(pid.to_string().as_str())
                    );
                    match &collected.partial {
                        // Whatever was missed is named, and is what a process that ends loses.
                        Some(reason) => {
                            assert!(
                                [
                                    "exited during collection",
                                    "binary",
                                    "cwd",
                                    "environment",
                                    "exec in progress"
                                ]
                                .iter()
                                .any(|item| reason.contains(item)),
                                "{pid}: {reason}"
                            );
                            partial += 1;
                        }
                        // Complete: everything of a running process was read, the hash too.
                        None => {
                            for key in ["process:binary:path", "process:binary:hash"] {
                                assert!(collected.labels.contains_key(key), "{pid}: no {key}");
                            }
                            complete += 1;
                        }
                    }
                }
                Err(CollectError::NoSuchProcess(p)) => {
                    assert_eq!(p, pid);
                    gone += 1;
                }
                Err(other) => panic!("unexpected error for {pid}: {other}"),
            },
            Err(ProcessError::NoSuchProcess(_)) => gone += 1,
            Err(other) => panic!("unexpected error for {pid}: {other}"),
        }
        child.wait().unwrap();
    }
    eprintln!("complete {complete}, partial {partial}, gone {gone}");
}

#[test]
fn each_outcome_matches_the_state_of_the_process() {
    let roots = HostRoots::default();
    let collector = ProcfsCollector::new(roots.clone(), &ProcfsConfig::default());
    // Alive: complete, with the executable and its hash.
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // `spawn` returns as soon as the child's exec has replaced its memory, before the kernel
    // has set up its arguments: wait until they are readable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "no arguments yet");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let process = ProcessRef::resolve(&roots, pid).unwrap();
    let alive = collector.collect_blocking(&process).unwrap();
    assert_eq!(alive.partial, None);
    assert_eq!(
        alive.labels.first("process:cmdline"),
        Some("sleep 30"),
        "{}",
        alive.labels
    );
    assert!(alive.labels.contains_key("process:binary:hash"));

    // Ended, not reaped (a zombie): its status is still there, its executable is not.
    child.kill().unwrap();
    wait_for_zombie(pid);
    let zombie = collector.collect_blocking(&process).unwrap();
    assert_eq!(zombie.labels.first("process:name"), Some("sleep"));
    assert!(!zombie.labels.contains_key("process:binary:hash"));
    let reason = zombie.partial.expect("a zombie's collection is partial");
    assert!(reason.contains("binary"), "{reason}");

    // Reaped: no such process.
    child.wait().unwrap();
    assert!(matches!(
        collector.collect_blocking(&process),
        Err(CollectError::NoSuchProcess(p)) if p == pid
    ));
    assert!(matches!(
        ProcessRef::resolve(&roots, pid),
        Err(ProcessError::NoSuchProcess(_))
    ));
}

fn wait_for_zombie(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "child never became a zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_zombie_is_reported_without_error() {
    // A child that exited but is not reaped yet: its status is still there, its exe is not.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    wait_for_zombie(pid);
    let roots = HostRoots::default();
    let collector = ProcfsCollector::new(roots.clone(), &ProcfsConfig::default());
    let process = ProcessRef::resolve(&roots, pid).unwrap();
    let collected = collector.collect_blocking(&process).unwrap();
    assert_eq!(collected.labels.first("process:name"), Some("true"));
    assert!(!collected.labels.contains_key("process:binary:hash"));
    assert!(
        collected
            .partial
            .as_deref()
            .unwrap_or("")
            .contains("binary"),
        "{:?}",
        collected.partial
    );
    child.wait().unwrap();
}
