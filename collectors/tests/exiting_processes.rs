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
                    if collected.partial.is_some() {
                        partial += 1
                    } else {
                        complete += 1
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
    // After reaping, the PID is gone for good.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(matches!(
        ProcessRef::resolve(&roots, pid),
        Err(ProcessError::NoSuchProcess(_))
    ));
    eprintln!("complete {complete}, partial {partial}, gone {gone}");
    assert_eq!(complete + partial + gone, 200);
}

#[test]
fn a_zombie_is_reported_without_error() {
    // A child that exited but is not reaped yet: its status is still there, its exe is not.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
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
