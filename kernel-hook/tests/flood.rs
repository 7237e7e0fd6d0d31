//! A flood of connects on the real kernel (root): 100 000 loopback TCP connects made as fast as
//! this process can, judged in enforce mode by per-destination rules (this process moves into
//! a cgroup of its own, where the hook is attached), while the ring buffer is drained as the
//! agent drains it. Every connect is accounted for: events received plus events the kernel
//! reported lost equal the connects made, and every one was allowed by its rule.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kernel_hook::maps::{Prefix, ProcState, Rule, RuleList, RulesetEntry, VerdictEntry};
use kernel_hook::{DRAIN_INTERVAL, Decision, Hook, HookEvent, Verdict, abi};
use test_support::cgroup::{TestCgroup, v2_root};
use test_support::{deep_backlog, is_root, require, reset_on_close};

const CONNECTS: u64 = 100_000;

#[test]
fn every_connect_of_a_flood_is_received_or_counted_lost() {
    if !require(is_root(), "root, to load BPF programs") {
        return;
    }
    let cgroup = TestCgroup::new("flood");
    let me = std::process::id();
    std::fs::write(cgroup.path().join("cgroup.procs"), me.to_string()).unwrap();
    let (mut hook, mut reader) = Hook::attach(cgroup.path()).expect("attach the hook");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    deep_backlog(&listener);
    let address = listener.local_addr().unwrap();
    // Rules: in 127.0.0.0/8, TCP to the listener's port allowed, UDP refused; ::1 refused;
    // elsewhere refused.
    let rule = |port: u16, protocol: u32, verdict: Verdict, policy| Rule {
        port_first: port,
        port_last: port,
        protocol: protocol as u8,
        verdict: verdict.value() as u8,
        policy,
    };
    let loopback = RuleList::new(&[
        rule(address.port(), abi::PROTO_TCP, Verdict::Allow, 1),
        rule(address.port(), abi::PROTO_UDP, Verdict::Deny, 2),
    ])
    .unwrap();
    let deny = RuleList::new(&[rule(address.port(), 0, Verdict::Deny, 3)]).unwrap();
    hook.put_ruleset(
        7,
        RulesetEntry {
            default_verdict: Verdict::Deny.value(),
            default_policy: 4,
        },
        &[
            (
                Prefix {
                    address: "::ffff:127.0.0.0".parse().unwrap(),
                    length: 104,
                },
                loopback,
            ),
            (Prefix::host("::1".parse().unwrap()), deny),
        ],
    )
    .unwrap();
    let state: ProcState = hook.introduce(me, own_start()).unwrap();
    hook.set_verdict(
        me,
        VerdictEntry {
            start: state.start,
            stamp: 1,
            generation: state.generation,
            ruleset: 7,
        },
    )
    .unwrap();
    hook.set_mode(true, Verdict::Deny).unwrap();
    let done = Arc::new(AtomicBool::new(false));

    // Accepts and drops, so the backlog never fills.
    let acceptor = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                drop(stream);
            }
        })
    };
    // Drains like the agent: every DRAIN_INTERVAL, counting our connects and the losses.
    let drainer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut received, mut lost, mut by_rule) = (0u64, 0u64, 0u64);
            let mut count = |event: HookEvent| {
                if let HookEvent::Connect(connect) = event
                    && connect.tgid == me
                    && connect.port == address.port()
                {
                    received += 1;
                    if connect.allowed
                        && connect.decision == Decision::Rule
                        && connect.policy == Some(1)
                    {
                        by_rule += 1;
                    }
                }
            };
            loop {
                let finished = done.load(Ordering::SeqCst);
                lost += reader.drain(&mut count);
                if finished {
                    return (received, lost, by_rule);
                }
                std::thread::sleep(DRAIN_INTERVAL);
            }
        })
    };

    let started = Instant::now();
    let mut made = 0u64;
    let mut failed = 0u64;
    while made < CONNECTS {
        made += 1;
        match TcpStream::connect(address) {
            Ok(stream) => reset_on_close(&stream),
            Err(_) => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    // Everything the kernel wrote is in the ring by now; one last drain collects it.
    std::thread::sleep(DRAIN_INTERVAL * 3);
    done.store(true, Ordering::SeqCst);
    let (received, lost, by_rule) = drainer.join().unwrap();
    let _ = TcpStream::connect(address);
    acceptor.join().unwrap();
    hook.set_mode(false, Verdict::Allow).unwrap();
    hook.detach();
    std::fs::write(v2_root().join("cgroup.procs"), me.to_string()).unwrap();

    let _ = writeln!(
        std::io::stderr(),
        "flood: {made} connects ({failed} failed) in {elapsed:?} ({:.0}/s): {received} received, \
         {lost} lost",
        made as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(failed, 0, "every connect is allowed by its rule");
    assert_eq!(
        received + lost,
        made,
        "{received} received + {lost} lost != {made} made"
    );
    assert_eq!(
        by_rule, received,
        "every event names the rule that allowed it"
    );
}

/// This process's start time in clock ticks (`/proc/self/stat` field 22).
fn own_start() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}
