//! Benchmark helper for `bench/run`: resolves the `process:*` labels of every process on the
//! machine with the procfs collector, as the agent does.
//!
//! `bench_procfs cold` — one pass in a fresh process (binary hashes not cached yet): the
//! figure compared with the psutil script, which computes the same fields.
//! `bench_procfs warm` — a first pass to fill the hash cache, then a timed pass per process:
//! the "cold resolution" figure (nothing cached but the hashes).
//!
//! Prints one `RESULT key=value ...` line.

use std::time::{Duration, Instant};

use collectors::procfs::{ProcfsCollector, ProcfsConfig};
use collectors::{HostRoots, HostRootsConfig, ProcessRef};

fn pids(roots: &HostRoots) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(&roots.proc)
        .expect("read the proc root")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Resolves every PID once; returns the time of each resolution that succeeded.
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

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let roots = HostRoots::resolve(&HostRootsConfig::default());
    let collector = ProcfsCollector::new(roots.clone(), &ProcfsConfig::default());
    let pids = pids(&roots);
    match mode.as_str() {
        "cold" => {
            let started = Instant::now();
            let times = pass(&collector, &roots, &pids);
            let total = started.elapsed();
            println!(
                "RESULT processes={} total_us={}",
                times.len(),
                total.as_micros()
            );
        }
        "warm" => {
            pass(&collector, &roots, &pids);
            let mut times = pass(&collector, &roots, &pids);
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
        _ => {
            eprintln!("usage: bench_procfs cold|warm");
            std::process::exit(2);
        }
    }
}
