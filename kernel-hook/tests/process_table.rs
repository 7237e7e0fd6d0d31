//! The hook's process table on the real kernel (root), read through a descriptor of its own as
//! the agent's resolver reads it: an exec and a cgroup move change a process's entry before they
//! return to whoever made them, an ended process has none, and a process older than the hook is
//! introduced, after which the entry answers for no other start time (a reused PID), and a full
//! table (a fork flood) introduces nothing. That is what lets the agent tell, without reading
//! procfs, that a kept answer's executable and cgroups still hold (its effective ids it checks
//! itself: no hook program sees credentials change on every kernel).

use std::path::PathBuf;
use std::process::Command;

use kernel_hook::Hook;
use test_support::cgroup::TestCgroup;
use test_support::connector::{Driven, build};
use test_support::process::Killed;
use test_support::{is_root, require};

/// The start time of `pid` in clock ticks, from `/proc/<pid>/stat`.
fn proc_start(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn execs_and_moves_change_the_table_before_they_return_and_ended_processes_leave_it() {
    if !require(is_root(), "root, to load BPF programs") {
        return;
    }
    let here = TestCgroup::new("table");
    let there = TestCgroup::new("table-moved");
    // Older than the hook: the kernel has not met it.
    let mut older_command = Command::new("sleep");
    older_command.arg("30");
    here.contain(&mut older_command);
    let older = Killed(older_command.spawn().unwrap());
    let older_pid = older.0.id();
    let older_start = proc_start(older_pid);

    let (hook, _reader) = Hook::attach(here.path()).expect("attach the hook");
    let table = hook.process_table();
    assert_eq!(table.get(older_pid).unwrap(), None, "not met yet");
    let introduced = table
        .get_or_introduce(older_pid, older_start)
        .unwrap()
        .expect("introduced");
    assert_eq!(
        (introduced.start, introduced.generation, introduced.moves),
        (older_start, 0, 0)
    );
    assert_eq!(
        table.get_or_introduce(older_pid, older_start + 1).unwrap(),
        None,
        "the entry is the older process's"
    );

    // A move is counted by the time the write that made it returns, and again for each move;
    // the process's bucket of change counts has counted it too (a mapped read, no lookup).
    let counted = table.changes(older_pid);
    assert_ne!(counted >> 48, 0, "the table's id is in the top bits");
    std::fs::write(there.path().join("cgroup.procs"), older_pid.to_string()).unwrap();
    let moved = table.get(older_pid).unwrap().expect("still known");
    assert_eq!((moved.generation, moved.moves), (0, 1), "{moved:?}");
    assert!(
        table.changes(older_pid) > counted,
        "the move is counted in its bucket"
    );
    std::fs::write(here.path().join("cgroup.procs"), older_pid.to_string()).unwrap();
    assert_eq!(table.get(older_pid).unwrap().unwrap().moves, 2);

    // An exec gives a new generation by the time the new image runs, and keeps the moves.
    let connector = build(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let (mut process, _) = Driven::start(Some(&here), &connector, &[]);
    let pid = process.pid;
    let before = table.get(pid).unwrap().expect("met at fork and exec");
    assert_eq!(before.start, proc_start(pid));
    std::fs::write(there.path().join("cgroup.procs"), pid.to_string()).unwrap();
    let counted = table.changes(pid);
    assert_eq!(process.ask("exec"), format!("ready {pid}"));
    assert!(
        table.changes(pid) > counted,
        "the exec is counted in its bucket"
    );
    let after = table.get(pid).unwrap().unwrap();
    assert_eq!(
        after.generation,
        before.generation + 1,
        "{before:?} {after:?}"
    );
    assert_eq!(after.moves, before.moves + 1, "{before:?} {after:?}");
    assert_eq!(after.start, before.start);

    // An ended process has no entry by the time its parent reaps it, and its end is counted.
    let counted = table.changes(older_pid);
    drop(older);
    assert_eq!(table.get(older_pid).unwrap(), None);
    assert!(
        table.changes(older_pid) > counted,
        "the exit is counted in its bucket"
    );
    process.tell("quit");
    process.child.wait().unwrap();
    assert_eq!(table.get(pid).unwrap(), None);

    // A fork flood that fills the table (its size is the kernel's limit) leaves no room: a
    // process older than the hook is not introduced, and the agent then reads procfs for it.
    let mut filled = 0u32;
    while table
        .get_or_introduce(10_000_000 + filled, 1)
        .unwrap()
        .is_some()
    {
        filled += 1;
        assert!(filled <= 1 << 20, "the table never filled");
    }
    // The rest of the table holds the node's processes met since the hook attached.
    let size = kernel_hook::abi::MAX_PROCS;
    assert!(
        filled <= size && filled > size - 4096,
        "{filled} entries until full, of {size}"
    );
    let mut late = Command::new("sleep");
    late.arg("30");
    let late = Killed(late.spawn().unwrap());
    let late_pid = late.0.id();
    assert_eq!(
        table
            .get_or_introduce(late_pid, proc_start(late_pid))
            .unwrap(),
        None,
        "no room: nothing the agent could trust"
    );

    // The table follows the processes only while the programs are attached: the agent stops
    // using it when it detaches.
    hook.detach();
}
