//! The hook on the real kernel (root): connects (TCP v4 and v6), a UDP datagram, an exec and an
//! exit are reported with the right process and destination; detaching leaves no program
//! loaded. (Enforcement: `enforcement.rs`.)

use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use kernel_hook::{Decision, Hook, HookEvent, Protocol, detect_cgroup_root};
use test_support::{is_root, require};

/// Which of `ids` are still loaded in the kernel.
fn still_loaded(ids: &[u32]) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| info.id())
        .filter(|id| ids.contains(id))
        .collect()
}

/// Runs `script` in a child `sh` and returns its PID after it ended.
fn child(script: &str) -> (u32, std::process::Output) {
    let child = Command::new("sh")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

#[test]
fn the_hook_reports_connects_execs_exits_and_enforces_verdicts() {
    if !require(is_root(), "root, to load BPF programs") {
        return;
    }
    let root = detect_cgroup_root().expect("a cgroup v2 hierarchy");
    let (hook, mut reader) = Hook::attach(&root).expect("attach the hook");
    let ours = hook.program_ids();
    assert_eq!(ours.len(), 9, "{ours:?}");
    assert_eq!(still_loaded(&ours).len(), 9);

    let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp6 = TcpListener::bind("[::1]:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (p4, p6, pu) = (
        tcp4.local_addr().unwrap().port(),
        tcp6.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    // A shell that opens the three connections with bash-free tools: its own /dev/tcp is not
    // portable, so use python3, present on the CI machine.
    let script = format!(
        "exec python3 -c 'import socket\n\
         socket.create_connection((\"127.0.0.1\", {p4})).close()\n\
         socket.create_connection((\"::1\", {p6})).close()\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(b\"x\", (\"127.0.0.1\", {pu}))'"
    );
    let (pid, output) = child(&script);
    assert!(output.status.success(), "{output:?}");

    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        reader.drain(|event| events.push(event));
        let done = events
            .iter()
            .any(|e| matches!(e, HookEvent::Exit { tgid, .. } if *tgid == pid));
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let connects: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            HookEvent::Connect(c) if c.tgid == pid => Some(c),
            _ => None,
        })
        .collect();
    let find = |port: u16, protocol: Protocol| {
        connects
            .iter()
            .find(|c| c.port == port && c.protocol == protocol)
            .unwrap_or_else(|| panic!("no {protocol:?} event to port {port}: {connects:?}"))
    };
    let v4 = find(p4, Protocol::Tcp);
    assert_eq!(v4.destination.to_string(), "127.0.0.1");
    assert_eq!(v4.comm, "python3");
    assert!(v4.allowed);
    assert_eq!(v4.decision, Decision::Observe);
    assert_eq!(find(p6, Protocol::Tcp).destination.to_string(), "::1");
    assert_eq!(find(pu, Protocol::Udp).destination.to_string(), "127.0.0.1");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HookEvent::Exec { tgid, .. } if *tgid == pid)),
        "no exec event for {pid}"
    );
    // Its lineage: forked by this test (`sh`, then python3 by exec), one start time throughout.
    let forked = events
        .iter()
        .find_map(|e| match e {
            HookEvent::Fork {
                tgid,
                start,
                ppid,
                parent_start,
            } if *tgid == pid => Some((*start, *ppid, *parent_start)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no fork event for {pid}: {events:?}"));
    let me = std::process::id();
    assert_eq!(forked.1, me);
    assert_eq!(Some(forked.2), start_ticks(me));
    let execs: Vec<(u64, &str)> = events
        .iter()
        .filter_map(|e| match e {
            HookEvent::Exec {
                tgid, start, comm, ..
            } if *tgid == pid => Some((*start, comm.as_str())),
            _ => None,
        })
        .collect();
    // `sh`, then python3 (through whatever launchers python3 is on this machine: pyenv's shims
    // exec a few), all of the one process started at the fork.
    assert_eq!(execs.first(), Some(&(forked.0, "sh")), "{execs:?}");
    assert_eq!(execs.last(), Some(&(forked.0, "python3")), "{execs:?}");
    assert!(
        execs.iter().all(|(start, _)| *start == forked.0),
        "{execs:?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, HookEvent::Exit { tgid, start } if *tgid == pid && *start == forked.0)
    ));

    hook.detach();
    drop(reader);
    // Only this hook's programs, by id: another agent's on the same node may stay loaded. The
    // kernel frees a detached program after a grace period.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !still_loaded(&ours).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(still_loaded(&ours), Vec::<u32>::new());
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19)?.parse().ok()
}
