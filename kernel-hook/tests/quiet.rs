//! The reader on a quiet node (root): after a spell without events it sleeps until the ring
//! wakes it (`READER[0]` set, no polling), and the next event wakes it and is delivered; again
//! and again. Before, the reader drained every 10 ms whatever came: 1 % of a core for nothing.

use std::time::{Duration, Instant};

use kernel_hook::{Hook, HookEvent};
use test_support::cgroup::{TestCgroup, v2_root};
use test_support::{is_root, require};

/// `READER[0]` of the hook's object, found through the map ids of its programs and read with
/// the bpf syscall from this process (a bpftool run would be a fork and an exec: events that
/// wake the reader before it is looked at).
fn reader_asleep(program_ids: &[u32]) -> bool {
    use aya::maps::{Array, Map, MapData};
    for program in aya::programs::loaded_programs() {
        let Ok(program) = program else { continue };
        if !program_ids.contains(&program.id()) {
            continue;
        }
        for id in program.map_ids().unwrap().unwrap_or_default() {
            let map = MapData::from_id(id).unwrap();
            if map.info().unwrap().name_as_str() != Some("READER") {
                continue;
            }
            let array: Array<MapData, u32> = Array::try_from(Map::Array(map)).unwrap();
            return array.get(&0, 0).unwrap() == 1;
        }
    }
    panic!("no READER map among the maps of programs {program_ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_reader_sleeps_until_the_next_event_wakes_it() {
    if !require(is_root(), "root, to load BPF programs") {
        return;
    }
    // Connects are reported for processes of the cgroup the hook is attached to: this one's.
    let cgroup = TestCgroup::new("quiet");
    let me = std::process::id();
    std::fs::write(cgroup.path().join("cgroup.procs"), me.to_string()).unwrap();
    let _leave = Leave(me);
    let (hook, reader) = Hook::attach(cgroup.path()).expect("attach the hook");
    let programs = hook.program_ids();
    let (sender, mut events) = tokio::sync::mpsc::channel(1024);
    let running = tokio::spawn(reader.run(sender, |_| {}, |_| {}));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for round in 0..3u16 {
        // Quiet: nothing of ours comes (forks and execs elsewhere on the node may, and keep it
        // awake a little longer).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reader_asleep(&programs) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the reader never went to sleep"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        while events.try_recv().is_ok() {}
        let port = 40_000 + round;
        socket.connect(("127.0.0.1", port)).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: the connect was never delivered"))
                .unwrap();
            if let HookEvent::Connect(connect) = event
                && connect.tgid == me
                && connect.port == port
            {
                break;
            }
        }
        assert!(
            !reader_asleep(&programs),
            "round {round}: the event woke the reader and cleared the flag"
        );
    }
    drop(events);
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the reader ends once its consumer is gone")
        .unwrap();
    drop(hook);
}

/// Moves the process back to the root cgroup when dropped (before its test cgroup is removed,
/// which kills what is left in it), also when the test fails.
struct Leave(u32);

impl Drop for Leave {
    fn drop(&mut self) {
        let _ = std::fs::write(v2_root().join("cgroup.procs"), self.0.to_string());
    }
}
