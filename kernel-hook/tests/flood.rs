//! A flood of connects on the real kernel (root): 100 000 loopback TCP connects made as fast as
//! this process can, while the ring buffer is drained as the agent drains it. Every connect is
//! accounted for: events received plus events the kernel reported lost equal the connects made.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kernel_hook::{DRAIN_INTERVAL, Hook, HookEvent, detect_cgroup_root};
use test_support::{deep_backlog, is_root, require, reset_on_close};

const CONNECTS: u64 = 100_000;

#[test]
fn every_connect_of_a_flood_is_received_or_counted_lost() {
    if !require(is_root(), "root, to load BPF programs") {
        return;
    }
    let root = detect_cgroup_root().expect("a cgroup v2 hierarchy");
    let (hook, mut reader) = Hook::attach(&root).expect("attach the hook");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    deep_backlog(&listener);
    let address = listener.local_addr().unwrap();
    let me = std::process::id();
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
            let (mut received, mut lost) = (0u64, 0u64);
            let mut count = |event: HookEvent| {
                if let HookEvent::Connect(connect) = event
                    && connect.tgid == me
                    && connect.port == address.port()
                {
                    received += 1;
                }
            };
            loop {
                let finished = done.load(Ordering::SeqCst);
                lost += reader.drain(&mut count);
                if finished {
                    return (received, lost);
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
    let (received, lost) = drainer.join().unwrap();
    let _ = TcpStream::connect(address);
    acceptor.join().unwrap();
    hook.detach();

    let _ = writeln!(
        std::io::stderr(),
        "flood: {made} connects ({failed} failed) in {elapsed:?} ({:.0}/s): {received} received, \
         {lost} lost",
        made as f64 / elapsed.as_secs_f64()
    );
    // `lost` counts every process's lost events, so it can only exceed our share.
    assert!(received <= made, "{received} received for {made} made");
    assert_eq!(
        received + lost,
        made,
        "{received} received + {lost} lost != {made} made"
    );
}
