//! Benchmark helper for `bench/run` (root): the kernel hook's cost and throughput.
//!
//! `bench_hook overhead [N] [enforce]` — N loopback TCP connects (default 100 000) with the hook
//! detached and attached, in alternating rounds so drift hits both alike; prints the time per
//! connect of each and their ratio. The attached rounds drain the ring buffer as the agent
//! does. With `enforce`, the attached rounds judge each connect: this process has a rule set of
//! 10 016 per-destination rules (313 prefixes of 32 rules; the covering one's last rule allows),
//! as policies with `to` compile to.
//! `bench_hook flood-udp [RATE] [SECONDS] [THREADS]` — UDP connects at RATE per second
//! (default 100 000) for SECONDS (default 3) from THREADS threads (default 2); prints how many
//! were made. `bench/run` runs it against a running agent and reads the agent's event counters.
//!
//! `bench_hook subscribe ADDRESS` — subscribes to `/events` of the agent at ADDRESS
//! (`127.0.0.1:PORT`) and counts the events it streams, printing `COUNT n` every 50 ms until
//! the stream ends: the one subscriber of the event throughput figure (curl writing 500 MB/s
//! to a file cost more CPU than the agent).
//!
//! Prints one `RESULT key=value ...` line (`subscribe`: `COUNT` lines).

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kernel_hook::{DRAIN_INTERVAL, Hook, detect_cgroup_root};
use test_support::{deep_backlog, reset_on_close};

/// Closes with a reset, so no TIME_WAIT entry is left and ports are not exhausted.
fn connect_once(address: SocketAddr) {
    if let Ok(stream) = TcpStream::connect(address) {
        reset_on_close(&stream);
    }
}

/// A listener on 127.0.0.1 that accepts and drops, until the process ends.
fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    deep_backlog(&listener);
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    address
}

fn timed(address: SocketAddr, count: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..count {
        connect_once(address);
    }
    started.elapsed()
}

/// Enforce mode, with this process judged by a rule set of per-destination rules in which the
/// listener's port is allowed by the last rule of its prefix.
fn enforce(hook: &mut Hook, port: u16) {
    use kernel_hook::maps::{Prefix, Rule, RuleList, RulesetEntry, VerdictEntry};
    use kernel_hook::{Verdict, abi};
    let rule = |first: u16, last: u16, verdict: Verdict, policy| Rule {
        port_first: first,
        port_last: last,
        protocol: abi::PROTO_TCP as u8,
        verdict: verdict.value() as u8,
        policy,
    };
    // 312 prefixes of 32 rules each, and the covering one's 32: 10 016 rules, and the connect
    // is allowed by the last rule of its prefix (the longest scan a prefix can take).
    let full = abi::RULES_PER_PREFIX as u16;
    let mut prefixes = Vec::new();
    for n in 0..312u16 {
        let rules: Vec<Rule> = (0..full)
            .map(|r| rule(2000 + r, 2000 + r, Verdict::Allow, n % 100))
            .collect();
        let address = std::net::Ipv4Addr::new(10, (n / 256) as u8, (n % 256) as u8, 0);
        prefixes.push((
            Prefix {
                address: address.to_ipv6_mapped(),
                length: 96 + 24,
            },
            RuleList::new(&rules).unwrap(),
        ));
    }
    let mut covering: Vec<Rule> = (0..full - 1)
        .map(|n| rule(1000 + n, 1000 + n, Verdict::Deny, 100))
        .collect();
    covering.push(rule(port, port, Verdict::Allow, 101));
    let loopback = Prefix {
        address: std::net::Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped(),
        length: 96 + 8,
    };
    prefixes.push((loopback, RuleList::new(&covering).unwrap()));
    let default = RulesetEntry {
        default_verdict: Verdict::Deny.value(),
        default_policy: 102,
    };
    hook.put_ruleset(9, default, &prefixes).unwrap();
    let me = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let state = hook.introduce(me, start).unwrap();
    let verdict = VerdictEntry {
        start: state.start,
        stamp: 1,
        generation: state.generation,
        ruleset: 9,
    };
    hook.set_verdict(me, verdict).unwrap();
    hook.set_mode(true, Verdict::Allow).unwrap();
}

fn overhead(total: u64, enforced: bool) {
    let address = sink();
    let root = detect_cgroup_root().expect("a cgroup v2 hierarchy");
    const ROUNDS: u64 = 10;
    let per_round = total / ROUNDS;
    timed(address, per_round / 4); // warm-up
    let (mut off, mut on) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let attached = round % 2 == 1;
        let mut run_on = |off_first: bool| {
            if off_first {
                off += timed(address, per_round);
            } else {
                let (mut hook, mut reader) = Hook::attach(&root).expect("attach the hook");
                if enforced {
                    enforce(&mut hook, address.port());
                }
                let done = Arc::new(AtomicBool::new(false));
                let drainer = {
                    let done = Arc::clone(&done);
                    std::thread::spawn(move || {
                        while !done.load(Ordering::SeqCst) {
                            reader.drain(|_| {});
                            std::thread::sleep(DRAIN_INTERVAL);
                        }
                    })
                };
                on += timed(address, per_round);
                done.store(true, Ordering::SeqCst);
                drainer.join().unwrap();
                hook.detach();
            }
        };
        // Alternate which comes first in each pair of rounds.
        run_on(!attached);
        run_on(attached);
    }
    let n = (per_round * ROUNDS) as f64;
    let (off_ns, on_ns) = (off.as_nanos() as f64 / n, on.as_nanos() as f64 / n);
    println!(
        "RESULT mode={} connects={} detached_ns={off_ns:.0} attached_ns={on_ns:.0} ratio={:.3}",
        if enforced { "enforce" } else { "observe" },
        per_round * ROUNDS,
        on_ns / off_ns
    );
}

/// UDP connects at RATE per second for SECONDS, from THREADS threads each connecting one
/// socket again and again: every call is a connect the hook reports, without a TCP handshake
/// and teardown (which on this machine cost more than the hook and the agent together).
fn flood_udp(rate: u64, seconds: u64, threads: u64) {
    const TICK: Duration = Duration::from_millis(1);
    let per_tick = (rate / threads / 1000).max(1);
    let ticks = seconds * 1000;
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                for tick in 0..ticks {
                    for _ in 0..per_tick {
                        socket.connect("127.0.0.1:9").unwrap();
                    }
                    // On schedule: a late tick is caught up by the next ones.
                    let next = started + TICK * (tick + 1) as u32;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let elapsed = started.elapsed();
    let made = per_tick * ticks * threads;
    println!(
        "RESULT connects={made} elapsed_us={} per_second={:.0}",
        elapsed.as_micros(),
        made as f64 / elapsed.as_secs_f64()
    );
}

/// Counts the events of an `/events` stream (each has one `data:` line: the agent writes its
/// JSON on one line), printing the count every 50 ms.
fn subscribe(address: &str) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).expect("connect to the agent");
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    const NEEDLE: &[u8] = b"\ndata: ";
    let finder = memchr::memmem::Finder::new(NEEDLE);
    let mut buffer = vec![0u8; 1 << 20];
    // The end of the previous read, so a needle split across two reads is still found.
    let mut carry = 0;
    let mut count: u64 = 0;
    let mut printed = Instant::now();
    let stdout = std::io::stdout();
    loop {
        let read = match stream.read(&mut buffer[carry..]) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let filled = carry + read;
        // A vectorized search: the stream runs at hundreds of MB/s, and a byte-by-byte scan
        // cost this program more CPU than the agent spent making the events.
        count += finder.find_iter(&buffer[..filled]).count() as u64;
        carry = (NEEDLE.len() - 1).min(filled);
        buffer.copy_within(filled - carry..filled, 0);
        if printed.elapsed() >= Duration::from_millis(50) {
            let _ = writeln!(stdout.lock(), "COUNT {count}");
            printed = Instant::now();
        }
    }
    let _ = writeln!(stdout.lock(), "COUNT {count}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().unwrap());
    match args.first().map(String::as_str) {
        Some("overhead") => overhead(
            number(1, 100_000),
            args.get(2).is_some_and(|a| a == "enforce"),
        ),
        Some("flood-udp") => flood_udp(number(1, 100_000), number(2, 3), number(3, 2)),
        Some("subscribe") if args.len() == 2 => subscribe(&args[1]),
        _ => {
            eprintln!(
                "usage: bench_hook overhead [N] [enforce] | flood-udp [RATE] [SECONDS] [THREADS] \
                 | subscribe ADDRESS"
            );
            std::process::exit(2);
        }
    }
}
