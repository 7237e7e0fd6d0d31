//! Enforcement on the real kernel (root), by the programs alone: rule sets written straight into
//! the maps, processes driven step by step (`test-support/programs/connector.c`). The hook is attached
//! to a cgroup of the test's own, so only the processes started there are judged.
//!
//! - rules decide per destination address, port and protocol; the first covering rule wins,
//!   else the rule set's default; the events name the decision and the policy;
//! - a verdict holds only for the image it was made for: a verdict for another generation is
//!   ignored, and an exec starts a new generation (the pending verdict then decides);
//! - a verdict outlives the leader thread (`pthread_exit` in `main`) and ends with the last
//!   thread;
//! - a forked child starts with its parent's rule set;
//! - an exec-time identity's rule set (cgroup, or binary) holds from the first instruction;
//! - pinned, enforcement outlives the hook's owner; the next one adopts the pins; removing them
//!   ends it.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kernel_hook::maps::{
    ImageKey, POLICY_NONE, Prefix, ProcState, Rule, RuleList, RulesetEntry, VerdictEntry,
    kernel_dev,
};
use kernel_hook::{Decision, EventReader, Hook, HookEvent, Verdict};
use kernel_hook_ebpf::abi;
use test_support::cgroup::TestCgroup;
use test_support::connector::{Driven, build};
use test_support::{is_root, require};

fn connector() -> PathBuf {
    build(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// A hook attached to a fresh cgroup of this test, in enforce mode with `pending` for processes
/// not judged.
fn judged(name: &str, pending: Verdict) -> Option<(Hook, EventReader, TestCgroup)> {
    if !require(is_root(), "root, to load BPF programs") {
        return None;
    }
    let cgroup = TestCgroup::new(name);
    let (mut hook, reader) = Hook::attach(cgroup.path()).expect("attach the hook");
    hook.set_mode(true, pending).unwrap();
    Some((hook, reader, cgroup))
}

fn rule(ports: (u16, u16), protocol: u32, verdict: Verdict, policy: u16) -> Rule {
    Rule {
        port_first: ports.0,
        port_last: ports.1,
        protocol: protocol as u8,
        verdict: verdict.value() as u8,
        policy,
    }
}

fn default(verdict: Verdict, policy: u16) -> RulesetEntry {
    RulesetEntry {
        default_verdict: verdict.value(),
        default_policy: u32::from(policy),
    }
}

/// What the kernel knows of `pid` (it must know it).
fn state(hook: &Hook, pid: u32) -> ProcState {
    hook.process(pid)
        .unwrap()
        .unwrap_or_else(|| panic!("PROCS has no entry for {pid}"))
}

/// Gives `pid`'s current image rule set `ruleset`.
fn judge(hook: &mut Hook, pid: u32, ruleset: u32) {
    let state = state(hook, pid);
    hook.set_verdict(
        pid,
        VerdictEntry {
            start: state.start,
            stamp: 1,
            generation: state.generation,
            ruleset,
        },
    )
    .unwrap();
}

/// The start time of `pid` in clock ticks, from `/proc/<pid>/stat`.
fn proc_start(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}

/// Drains until `want` holds for the events seen so far (at most 5 s).
fn events_until(reader: &mut EventReader, want: impl Fn(&[HookEvent]) -> bool) -> Vec<HookEvent> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        reader.drain(|event| events.push(event));
        if want(&events) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    events
}

#[test]
fn rules_decide_per_destination_port_and_protocol() {
    let Some((mut hook, mut reader, cgroup)) = judged("rules", Verdict::Allow) else {
        return;
    };
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let (a, b, u, s) = (
        allowed.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );
    // Rule set 10: in 127.0.0.0/8, TCP to `a` allowed (policy 1) and UDP denied (policy 2); to
    // ::1 every port allowed (policy 3); elsewhere denied by policy 4. The /8's rules are
    // copied into the narrower 127.0.0.1/32 prefix, as the agent does.
    let loopback4 = Prefix {
        address: "::ffff:127.0.0.0".parse().unwrap(),
        length: 104,
    };
    let host = Prefix::host("127.0.0.1".parse().unwrap());
    let eight = [
        rule((a, a), abi::PROTO_TCP, Verdict::Allow, 1),
        rule((0, u16::MAX), abi::PROTO_UDP, Verdict::Deny, 2),
    ];
    let mut narrow = eight.to_vec();
    narrow.push(rule((b, b), 0, Verdict::Deny, 5));
    hook.put_ruleset(
        10,
        default(Verdict::Deny, 4),
        &[
            (loopback4, RuleList::new(&eight).unwrap()),
            (host, RuleList::new(&narrow).unwrap()),
            (
                Prefix::host("::1".parse().unwrap()),
                RuleList::new(&[rule((0, u16::MAX), 0, Verdict::Allow, 3)]).unwrap(),
            ),
        ],
    )
    .unwrap();

    let (mut process, _) = Driven::start(Some(&cgroup), &connector(), &[]);
    judge(&mut hook, process.pid, 10);
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {a}")), "ok");
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {b}")), "EPERM");
    assert_eq!(process.ask(&format!("udp 127.0.0.1 {u}")), "EPERM");
    assert_eq!(
        process.ask(&format!("tcp 127.0.0.2 {a}")),
        "ERR 111",
        "/8 rule covers .2"
    );
    assert_eq!(process.ask(&format!("tcp ::1 {s}")), "ok");
    assert_eq!(process.ask(&format!("tcp ::2 {s}")), "EPERM", "the default");

    let pid = process.pid;
    let events = events_until(&mut reader, |events| {
        events
            .iter()
            .filter(|e| matches!(e, HookEvent::Connect(c) if c.tgid == pid))
            .count()
            >= 6
    });
    let connects: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            HookEvent::Connect(c) if c.tgid == pid => Some(c),
            _ => None,
        })
        .collect();
    let decided: Vec<_> = connects
        .iter()
        .map(|c| (c.allowed, c.decision, c.policy, c.ruleset))
        .collect();
    assert_eq!(
        decided,
        [
            (true, Decision::Rule, Some(1), 10),
            (false, Decision::Rule, Some(5), 10),
            (false, Decision::Rule, Some(2), 10),
            (true, Decision::Rule, Some(1), 10),
            (true, Decision::Rule, Some(3), 10),
            (false, Decision::Default, Some(4), 10),
        ]
    );

    // A verdict for another image of the process does not hold: the pending verdict decides.
    let now = state(&hook, pid);
    hook.set_verdict(
        pid,
        VerdictEntry {
            start: now.start,
            stamp: 2,
            generation: now.generation + 1,
            ruleset: 10,
        },
    )
    .unwrap();
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {b}")), "ok");
    hook.set_mode(true, Verdict::Deny).unwrap();
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {a}")), "EPERM");
    // Nor does a verdict for another process that had this PID (another start time).
    hook.set_verdict(
        pid,
        VerdictEntry {
            start: now.start + 1,
            stamp: 3,
            generation: now.generation,
            ruleset: 10,
        },
    )
    .unwrap();
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {a}")), "EPERM");
    let events = events_until(&mut reader, |events| {
        events
            .iter()
            .filter(|e| matches!(e, HookEvent::Connect(c) if c.tgid == pid))
            .count()
            >= 3
    });
    assert!(
        events.iter().all(|e| match e {
            HookEvent::Connect(c) if c.tgid == pid => c.decision == Decision::Pending,
            _ => true,
        }),
        "{events:?}"
    );

    // Observe mode judges nothing.
    hook.set_mode(false, Verdict::Deny).unwrap();
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {a}")), "ok");
    drop((allowed, other, udp, v6));
}

#[test]
fn exec_starts_a_new_generation_and_the_start_time_is_that_of_procfs() {
    let Some((mut hook, mut reader, cgroup)) = judged("exec", Verdict::Deny) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    hook.put_ruleset(11, default(Verdict::Allow, POLICY_NONE), &[])
        .unwrap();
    let (mut process, _) = Driven::start(Some(&cgroup), &connector(), &[]);
    let pid = process.pid;
    let before = state(&hook, pid);
    assert_eq!(
        before.start,
        proc_start(pid),
        "PROCS start vs /proc/{pid}/stat"
    );
    assert!(before.generation >= 1, "the exec of the connector was seen");
    assert!(before.exec_ns > 0);
    judge(&mut hook, pid, 11);
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {port}")), "ok");

    // The same process runs a new image: the allow was for the old one.
    assert_eq!(process.ask("exec"), format!("ready {pid}"));
    let after = state(&hook, pid);
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(after.start, before.start);
    assert!(after.exec_ns > before.exec_ns);
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {port}")), "EPERM");
    let events = events_until(&mut reader, |events| {
        events.iter().any(
            |e| matches!(e, HookEvent::Exec { tgid, generation, .. } if *tgid == pid && *generation == after.generation),
        )
    });
    assert!(
        events.iter().any(|e| matches!(
            e,
            HookEvent::Exec { tgid, generation, ruleset: 0, timestamp_ns, .. }
                if *tgid == pid && *generation == after.generation && *timestamp_ns == after.exec_ns
        )),
        "{events:?}"
    );
    judge(&mut hook, pid, 11);
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {port}")), "ok");
}

#[test]
fn a_verdict_outlives_the_leader_thread_and_ends_with_the_last_thread() {
    let Some((mut hook, mut reader, cgroup)) = judged("leader", Verdict::Allow) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    hook.put_ruleset(12, default(Verdict::Deny, 7), &[])
        .unwrap();
    let (mut process, _) = Driven::start(Some(&cgroup), &connector(), &[]);
    let pid = process.pid;
    judge(&mut hook, pid, 12);
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {port}")), "EPERM");

    // main() calls pthread_exit; a worker thread goes on.
    assert_eq!(process.ask("leaderexit"), "threaded");
    let leader_gone = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        assert!(Instant::now() < leader_gone, "the leader did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..20 {
        assert_eq!(process.ask(&format!("tcp 127.0.0.1 {port}")), "EPERM");
    }
    assert!(hook.process(pid).unwrap().is_some());
    assert!(hook.verdict(pid).unwrap().is_some());
    let events = events_until(&mut reader, |_| false);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, HookEvent::Exit { tgid, .. } if *tgid == pid)),
        "the leader's exit is not the process's: {events:?}"
    );

    // The last thread exits: the process ends, and so do its entries.
    process.tell("quit");
    let _ = process.child.wait();
    let events = events_until(&mut reader, |events| {
        events
            .iter()
            .any(|e| matches!(e, HookEvent::Exit { tgid, .. } if *tgid == pid))
    });
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HookEvent::Exit { tgid, .. } if *tgid == pid)),
        "{events:?}"
    );
    assert_eq!(hook.process(pid).unwrap(), None);
    assert_eq!(hook.verdict(pid).unwrap(), None);
}

#[test]
fn a_forked_child_starts_with_its_parents_rule_set() {
    let Some((mut hook, _reader, cgroup)) = judged("fork", Verdict::Allow) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    hook.put_ruleset(13, default(Verdict::Deny, POLICY_NONE), &[])
        .unwrap();
    let (mut process, _) = Driven::start(Some(&cgroup), &connector(), &[]);
    judge(&mut hook, process.pid, 13);
    // The child's first connect, right after fork, before anyone could judge it.
    assert_eq!(process.ask(&format!("fork tcp 127.0.0.1 {port}")), "EPERM");
    assert_eq!(process.ask(&format!("tcp 127.0.0.1 {port}")), "EPERM");
}

#[test]
fn an_exec_time_identity_holds_from_the_first_instruction() {
    let Some((mut hook, _reader, cgroup)) = judged("image", Verdict::Allow) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let first = format!("tcp 127.0.0.1 {port}");
    hook.put_ruleset(14, default(Verdict::Deny, 9), &[])
        .unwrap();

    // By binary: a copy of the connector, identified by device, inode and change time.
    let copy = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("connector-image-{}", std::process::id()));
    std::fs::copy(connector(), &copy).unwrap();
    let image = |path: &std::path::Path, cgroup_id: u64| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).unwrap();
        ImageKey {
            cgroup_id,
            ino: meta.ino(),
            ctime_sec: meta.ctime(),
            ctime_nsec: meta.ctime_nsec() as u32,
            dev: kernel_dev(meta.dev()),
        }
    };
    hook.put_image(image(&copy, 0), 14).unwrap();
    let (_, said) = Driven::start(
        Some(&cgroup),
        &copy,
        first.split(' ').collect::<Vec<_>>().as_slice(),
    );
    assert_eq!(said, ["EPERM"], "the copy's first connect");
    let (_, said) = Driven::start(
        Some(&cgroup),
        &connector(),
        &first.split(' ').collect::<Vec<_>>(),
    );
    assert_eq!(said, ["ok"], "another binary");

    // The same file rewritten in place (same inode, new change time) is another binary.
    let bytes = std::fs::read(&copy).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&copy, bytes).unwrap();
    let (_, said) = Driven::start(Some(&cgroup), &copy, &first.split(' ').collect::<Vec<_>>());
    assert_eq!(said, ["ok"], "the rewritten copy");

    // By cgroup: every binary started in it.
    hook.put_image(
        ImageKey {
            cgroup_id: cgroup.id(),
            ..ImageKey::default()
        },
        14,
    )
    .unwrap();
    let (_, said) = Driven::start(
        Some(&cgroup),
        &connector(),
        &first.split(' ').collect::<Vec<_>>(),
    );
    assert_eq!(said, ["EPERM"], "a process of the cgroup");
    let _ = std::fs::remove_file(copy);
}

#[test]
fn pinned_enforcement_outlives_the_hook_and_is_adopted_then_removed() {
    let Some((hook, _reader, cgroup)) = judged("pins", Verdict::Allow) else {
        return;
    };
    drop(hook);
    let pins = PathBuf::from(format!("/sys/fs/bpf/ma-test-{}-pins", std::process::id()));
    let _ = Hook::remove_pins(&pins);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!("tcp 127.0.0.1 {port}");

    let (mut hook, _reader, attachment) =
        Hook::attach_pinned(cgroup.path(), &pins).expect("attach pinned");
    assert_eq!(attachment, kernel_hook::Attachment::Fresh);
    let ids = hook.program_ids();
    assert_eq!(ids.len(), 9, "{ids:?}");
    hook.set_mode(true, Verdict::Allow).unwrap();
    hook.put_ruleset(15, default(Verdict::Deny, 1), &[])
        .unwrap();
    let (mut process, _) = Driven::start(Some(&cgroup), &connector(), &[]);
    judge(&mut hook, process.pid, 15);
    assert_eq!(process.ask(&connect), "EPERM");

    // The agent goes away without a word (its maps and links closed, as a SIGKILL does).
    drop(hook);
    drop(_reader);
    assert_eq!(
        process.ask(&connect),
        "EPERM",
        "enforcement outlives the agent"
    );
    assert_eq!(
        process.ask(&format!("fork {connect}")),
        "EPERM",
        "and processes are still followed"
    );

    // The next agent adopts what is pinned: same programs, same maps.
    let (mut hook, _reader, attachment) =
        Hook::attach_pinned(cgroup.path(), &pins).expect("adopt the pins");
    assert_eq!(attachment, kernel_hook::Attachment::Adopted);
    assert_eq!(hook.program_ids(), ids);
    assert_eq!(
        hook.verdict(process.pid).unwrap().map(|v| v.ruleset),
        Some(15)
    );
    assert!(hook.ruleset_ids().contains(&15));
    assert_eq!(process.ask(&connect), "EPERM");
    hook.set_mode(true, Verdict::Allow).unwrap();

    // Removing the pins detaches the programs once no process holds them.
    drop(hook);
    drop(_reader);
    assert!(Hook::remove_pins(&pins).unwrap());
    assert!(!pins.exists());
    // The kernel frees a link whose last reference is gone on a work queue: soon, not at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut answer = process.ask(&connect);
    while answer != "ok" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        answer = process.ask(&connect);
    }
    assert_eq!(
        answer, "ok",
        "the programs detach once the pins are removed"
    );
    assert!(!Hook::remove_pins(&pins).unwrap(), "nothing left to remove");
}
