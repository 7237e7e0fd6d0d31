//! `bench_hash FILE...`: SHA-256 of the files with the agent's own hashing (what
//! `process:binary:hash` uses), repeated; prints the median time of one pass over all of them.
//! `bench/run` compares it with `sha256sum` over the same files in the same run.

use std::time::Instant;

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    assert!(!files.is_empty(), "usage: bench_hash FILE...");
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut passes = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        for file in &files {
            let mut reader = std::fs::File::open(file).expect("readable file");
            let hash = collectors::procfs::sha256_of(&mut reader).expect("hashed");
            std::hint::black_box(hash);
        }
        passes.push(started.elapsed().as_micros() as u64);
    }
    passes.sort_unstable();
    println!(
        "RESULT micros={} bytes={bytes} files={}",
        passes[passes.len() / 2],
        files.len()
    );
}
