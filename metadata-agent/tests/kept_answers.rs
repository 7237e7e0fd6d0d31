//! Kept answers: a repeated lookup of a cached process is answered again only while the process
//! runs what the answer says. A lookup made right after an exec, a move to another cgroup or a
//! change of effective ids returns (no pause, no event awaited) gives the new labels — with the
//! kernel hook's process table checking the answers, and without the hook (procfs). Root: the
//! process is moved between cgroups and drops its ids from root.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use metadata_agent::config::Config;
use metadata_agent::run::Agent;
use test_support::cgroup::TestCgroup;
use test_support::process::Killed;

/// A python process that obeys one command per line and answers `ok`: `move PATH` (writes its
/// PID into PATH), `setuid` (effective ids 4242), `exec` (runs `sh`, which says `execd`).
const OBEY: &str = r#"
import os, sys
print("ready", flush=True)
for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "move":
        with open(argument, "w") as procs:
            procs.write(str(os.getpid()))
    elif command == "setuid":
        os.setegid(4242)
        os.seteuid(4242)
    elif command == "exec":
        os.execv("/bin/sh", ["sh", "-c", "echo execd; read line"])
    print("ok", flush=True)
"#;

struct Obedient {
    process: Killed,
    lines: BufReader<std::process::ChildStdout>,
}

impl Obedient {
    fn start(cgroup: &TestCgroup) -> Self {
        let mut command = Command::new("python3");
        command
            .args(["-c", OBEY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        cgroup.contain(&mut command);
        let mut process = Killed(command.spawn().expect("python3"));
        let lines = BufReader::new(process.0.stdout.take().unwrap());
        let mut obedient = Self { process, lines };
        assert_eq!(obedient.line(), "ready");
        obedient
    }

    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    fn ask(&mut self, command: &str) -> String {
        let stdin = self.process.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.line()
    }
}

async fn lookups_follow_an_exec_a_move_and_new_ids_at_once(hook: bool) {
    if !common::require(common::is_root(), "root (cgroup moves, setuid, the hook)") {
        return;
    }
    let mut config = Config::default();
    config.resolver.prestart = false;
    let mut agent = Agent::build(config).unwrap();
    if hook {
        agent.attach_hook().unwrap();
        let health = agent.state.hook.lock().unwrap().clone();
        assert!(health.attached, "{health:?}");
    }
    let resolver = &agent.state.resolver;
    let metrics = &agent.state.metrics;
    let (here, there) = (TestCgroup::new("kept"), TestCgroup::new("kept-moved"));
    let mut process = Obedient::start(&here);
    let pid = process.pid();
    let label = |resolution: &metadata_agent::resolver::Resolution, key: &str| {
        resolution
            .labels
            .get(key)
            .first()
            .cloned()
            .unwrap_or_default()
    };

    // Collected, then kept (the first answer from the cache), then given again after a check:
    // by the kernel's table with the hook.
    resolver.resolve(pid).await.unwrap();
    let first = resolver.resolve(pid).await.unwrap();
    let (kernel, procfs) = (
        metrics.answer_checks_kernel.get(),
        metrics.answer_checks_procfs.get(),
    );
    for _ in 0..3 {
        let again = resolver.resolve(pid).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "the kept answer");
    }
    let checked_by = if hook {
        metrics.answer_checks_kernel.get() - kernel
    } else {
        metrics.answer_checks_procfs.get() - procfs
    };
    assert_eq!(
        checked_by, 3,
        "each repeated lookup checked by the expected means"
    );
    assert_eq!(label(&first, "process:uid:effective"), "0");

    // A move: the next lookup names the new cgroup.
    assert_eq!(
        process.ask(&format!(
            "move {}",
            there.path().join("cgroup.procs").display()
        )),
        "ok"
    );
    let moved = resolver.resolve(pid).await.unwrap();
    assert_eq!(
        format!(
            "/{}",
            label(&moved, "process:cgroup").trim_start_matches('/')
        ),
        there.relative(),
        "the move shows at once"
    );
    // Asked again before an answer is kept: with the hook, the kernel's table vouches for the
    // cached entry (no procfs read); without, procfs does.
    let kernel = metrics.answer_checks_kernel.get();
    let moved_again = resolver.resolve(pid).await.unwrap();
    assert!(moved_again.cached, "the entry collected after the move");
    assert_eq!(moved_again.labels, moved.labels);
    assert_eq!(
        metrics.answer_checks_kernel.get() - kernel,
        u64::from(hook),
        "checked by the kernel's table with the hook"
    );

    // New effective ids (the process is then undumpable: its procfs files stay root's).
    assert_eq!(process.ask("setuid"), "ok");
    let setuid = resolver.resolve(pid).await.unwrap();
    assert_eq!(
        (
            label(&setuid, "process:uid:effective"),
            label(&setuid, "process:gid:effective")
        ),
        ("4242".to_owned(), "4242".to_owned()),
        "the new ids show at once"
    );

    // An exec: the next lookup names the new executable.
    assert_eq!(process.ask("exec"), "execd");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let execd = resolver.resolve(pid).await.unwrap();
    assert_eq!(
        label(&execd, "process:binary:path"),
        exe.display().to_string(),
        "the exec shows at once"
    );
    assert_ne!(
        label(&execd, "process:binary:path"),
        label(&first, "process:binary:path")
    );
    // Cached and asked again, then ended: a lookup after the parent reaped it gets no answer
    // (neither the kept one nor the cached entry), whichever check runs.
    assert!(resolver.resolve(pid).await.unwrap().cached);
    drop(process);
    let ended = resolver.resolve(pid).await;
    assert!(
        ended.is_err(),
        "an ended process is not answered: {ended:?}"
    );
    agent.detach_hook();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hook_lookups_follow_an_exec_a_move_and_new_ids_at_once() {
    lookups_follow_an_exec_a_move_and_new_ids_at_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_hook_lookups_follow_an_exec_a_move_and_new_ids_at_once() {
    lookups_follow_an_exec_a_move_and_new_ids_at_once(false).await;
}

/// A PID the kernel's table holds with a start time no process of that PID has: an entry that
/// outlived its process (a process older than the hook, introduced as it exited; its PID since
/// taken by a thread, which makes no entry). The lookup still answers for the process the PID
/// names now, as procfs shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_entry_left_by_an_ended_process_does_not_hide_the_one_there_now() {
    if !common::require(common::is_root(), "root (the hook)") {
        return;
    }
    let mut config = Config::default();
    config.resolver.prestart = false;
    let mut agent = Agent::build(config).unwrap();
    agent.attach_hook().unwrap();
    let resolver = &agent.state.resolver;
    let table = resolver.kernel_table().expect("the hook's table");
    // A process with a second thread, which prints that thread's id.
    let mut command = Command::new("python3");
    command
        .args([
            "-c",
            "import threading, time\n\
             t = threading.Thread(target=time.sleep, args=(600,), daemon=True)\n\
             t.start()\n\
             print(t.native_id, flush=True)\n\
             time.sleep(600)",
        ])
        .stdout(Stdio::piped());
    let mut process = Killed(command.spawn().expect("python3"));
    let mut line = String::new();
    BufReader::new(process.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let tid: u32 = line.trim().parse().expect("a thread id");
    let pid = process.0.id();
    assert_ne!(tid, pid);
    // The entry a process started at tick 1 with this PID would have left.
    assert_eq!(table.introduce(tid, 1).unwrap().start, 1, "introduced");

    let resolution = resolver.resolve(tid).await.expect("the thread's process");
    assert_eq!(resolution.pid, pid, "answered for the thread's process");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start: u64 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resolution.start_time_ticks, Some(start));
    drop(process);
    agent.detach_hook();
}
