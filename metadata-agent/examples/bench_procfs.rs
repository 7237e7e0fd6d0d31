//! Benchmark helper for `bench/run`: resolves the `process:*` labels of every process on the
//! machine with the procfs collector, as the agent does.
//!
//! `bench_procfs scan` — every process resolved on one thread per core, timed twice in one
//! process: the first pass with no binary hash cached, the second with the hashes the first
//! computed; then the second pass again on one thread. These are the figures compared with the
//! psutil script, which makes the same two passes.
//! `bench_procfs warm` — a first pass to fill the hash cache, then a timed pass per process, one
//! at a time: the "cold resolution" figure (nothing cached but the hashes). `warm N` makes N
//! timed passes (for a profiler; the figure is the median over all of them).
//! `bench_procfs files PID` — what each procfs read a collection makes costs on this machine:
//! opening, reading and closing `stat`, `status`, `cmdline`, `cgroup`, `auxv`; reading the
//! links `exe`, `cwd`, `ns/mnt`, `fd/0`; `statx` of `exe`; `fstat` of the directory (the
//! median of 20 000 of each, in µs). The floor under the cold resolution figure.
//!
//! Prints one `RESULT key=value ...` line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use collectors::procfs::{ProcfsCollector, ProcfsConfig};
use collectors::{HostRoots, HostRootsConfig, ProcessRef};

/// Every PID but this one: each side of the psutil comparison leaves itself out, so both hash
/// the same binaries (this program's is many times larger than the Python interpreter).
fn pids(roots: &HostRoots) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(&roots.proc)
        .expect("read the proc root")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != std::process::id())
        .collect();
    pids.sort_unstable();
    pids
}

/// Resolves every PID once, one at a time; returns the time of each resolution that succeeded.
fn pass(collector: &ProcfsCollector, roots: &HostRoots, pids: &[u32]) -> Vec<Duration> {
    let mut times = Vec::with_capacity(pids.len());
    for &pid in pids {
        let started = Instant::now();
        let resolved = ProcessRef::resolve(roots, pid)
            .ok()
            .and_then(|process| collector.collect_blocking(&process).ok());
        if let Some(collected) = resolved {
            std::hint::black_box(collected);
            times.push(started.elapsed());
        }
    }
    times
}

/// What one scan did.
struct Scan {
    processes: usize,
    hashes: usize,
    elapsed: Duration,
}

/// Resolves every PID once on `threads` threads taking the next PID in turn.
fn scan(collector: &ProcfsCollector, roots: &HostRoots, pids: &[u32], threads: usize) -> Scan {
    let next = AtomicUsize::new(0);
    let (processes, hashes) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(&pid) = pids.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let Some(collected) = ProcessRef::resolve(roots, pid)
                        .ok()
                        .and_then(|process| collector.collect_blocking(&process).ok())
                    else {
                        continue;
                    };
                    processes.fetch_add(1, Ordering::Relaxed);
                    if !collected.labels.get("process:binary:hash").is_empty() {
                        hashes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    Scan {
        processes: processes.into_inner(),
        hashes: hashes.into_inner(),
        elapsed: started.elapsed(),
    }
}

/// `name=µs ...`: the median cost of each procfs operation on process `pid`.
fn file_costs(roots: &HostRoots, pid: u32) -> String {
    use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
    const TIMES: usize = 20_000;
    let dir = rustix::fs::open(
        roots.proc.join(pid.to_string()),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("cannot open the proc directory of {pid}: {e}"));
    let median = |op: &mut dyn FnMut()| {
        let mut times: Vec<Duration> = (0..TIMES)
            .map(|_| {
                let started = Instant::now();
                op();
                started.elapsed()
            })
            .collect();
        times.sort_unstable();
        times[TIMES / 2].as_secs_f64() * 1e6
    };
    let mut buffer = vec![0u8; 65536];
    let mut costs = Vec::new();
    for file in ["stat", "status", "cmdline", "cgroup", "auxv"] {
        let cost = median(&mut || {
            let fd =
                rustix::fs::openat(&dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                    .expect("open");
            std::hint::black_box(rustix::io::read(&fd, &mut buffer[..]).expect("read"));
        });
        costs.push(format!("read_{file}={cost:.2}"));
    }
    for link in ["exe", "cwd", "ns/mnt", "fd/0"] {
        let cost = median(&mut || {
            std::hint::black_box(rustix::fs::readlinkat(&dir, link, Vec::new()).ok());
        });
        costs.push(format!("readlink_{}={cost:.2}", link.replace('/', "_")));
    }
    let cost = median(&mut || {
        std::hint::black_box(
            rustix::fs::statx(&dir, "exe", AtFlags::empty(), StatxFlags::BASIC_STATS).ok(),
        );
    });
    costs.push(format!("statx_exe={cost:.2}"));
    let cost = median(&mut || {
        std::hint::black_box(rustix::fs::fstat(&dir).ok());
    });
    costs.push(format!("fstat_dir={cost:.2}"));
    costs.join(" ")
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let roots = HostRoots::resolve(&HostRootsConfig::default());
    let pids = pids(&roots);
    match mode.as_str() {
        "scan" => {
            let collector = ProcfsCollector::new(roots.clone(), &ProcfsConfig::default());
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let first = scan(&collector, &roots, &pids, threads);
            let second = scan(&collector, &roots, &pids, threads);
            let one_thread = scan(&collector, &roots, &pids, 1);
            println!(
                "RESULT processes={} hashes={} threads={threads} first_us={} second_us={} \
                 one_thread_us={}",
                second.processes,
                second.hashes,
                first.elapsed.as_micros(),
                second.elapsed.as_micros(),
                one_thread.elapsed.as_micros()
            );
        }
        "warm" => {
            let collector = ProcfsCollector::new(roots.clone(), &ProcfsConfig::default());
            let passes: usize = match std::env::args().nth(2).map(|n| n.parse()) {
                None => 1,
                Some(Ok(n)) if n > 0 => n,
                Some(_) => {
                    eprintln!("bench_procfs warm: the number of passes must be a positive integer");
                    std::process::exit(2);
                }
            };
            pass(&collector, &roots, &pids);
            let mut times = Vec::new();
            for _ in 0..passes {
                times.extend(pass(&collector, &roots, &pids));
            }
            times.sort_unstable();
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_micros();
            println!(
                "RESULT processes={} median_us={} p90_us={} max_us={}",
                times.len(),
                at(0.5),
                at(0.9),
                at(1.0)
            );
        }
        "files" => {
            let Some(pid) = std::env::args().nth(2).and_then(|p| p.parse::<u32>().ok()) else {
                eprintln!("bench_procfs files: a PID is needed");
                std::process::exit(2);
            };
            println!("RESULT {}", file_costs(&roots, pid));
        }
        _ => {
            eprintln!("usage: bench_procfs scan | warm [passes] | files PID");
            std::process::exit(2);
        }
    }
}
