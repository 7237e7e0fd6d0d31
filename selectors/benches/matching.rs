//! Matching speed: the indexed matcher against the naive one, for 10, 1 000 and 10 000
//! policies and label sets of 50, 100 and 200 labels. Criterion measures each; a table of
//! medians and the naive/indexed ratio, measured in the same run, closes the output.
//!
//! Target (issue: selectors): at 10 000 policies, under 50 µs median per label set and at least
//! 20× faster than the naive matcher.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use labels::LabelSet;
use selectors::{Action, PolicySet, compile_texts};

/// A small deterministic generator (xorshift64*), so every run matches the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: u64 = 400;
const VALUES: u64 = 200;

fn key(i: u64) -> String {
    match i % 4 {
        0 => format!("k8s:label:key{i}"),
        1 => format!("docker:label:key{i}"),
        2 => format!("process:env:KEY{i}"),
        _ => format!("ec2:tag:key{i}"),
    }
}

/// Policies shaped like real ones: the first constraint pins a workload (an exact value or a
/// short list, as `k8s:label:app: web` does); further constraints refine it with exact values,
/// lists, globs, regexes, `notIn` and `exists`. 400 label keys, 200 values each.
fn policies_yaml(count: usize, rng: &mut Rng) -> String {
    let mut yaml = String::from("policies:\n");
    for p in 0..count {
        yaml.push_str(&format!(
            "  - name: p{p}\n    action: {}\n    priority: {}\n    selectors:\n",
            ["allow", "deny", "log"][rng.below(3) as usize],
            rng.below(3)
        ));
        for _ in 0..1 + rng.below(2) {
            let mut keys: Vec<u64> = (0..1 + rng.below(3)).map(|_| rng.below(KEYS)).collect();
            keys.sort();
            keys.dedup();
            for (i, k) in keys.iter().enumerate() {
                let prefix = if i == 0 { "      - " } else { "        " };
                let v = rng.below(VALUES);
                let kind = if i == 0 { rng.below(7) } else { rng.below(10) };
                let op = match kind {
                    0..=5 => format!("v{v}"),
                    6 => format!("[v{v}, v{}]", rng.below(VALUES)),
                    7 => format!("{{glob: \"v{}*\"}}", rng.below(3)),
                    8 => format!("{{notIn: [v{v}]}}"),
                    _ => "{regex: \"v1[0-9]\"}".to_owned(),
                };
                yaml.push_str(&format!("{prefix}\"{}\": {op}\n", key(*k)));
            }
        }
    }
    yaml
}

fn label_set(size: usize, rng: &mut Rng) -> LabelSet {
    let mut labels = LabelSet::new();
    while labels.key_count() < size {
        labels.insert(key(rng.below(KEYS)), format!("v{}", rng.below(VALUES)));
    }
    labels
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Median time of one evaluation, over the label sets in turn.
fn measure(label_sets: &[LabelSet], rounds: usize, f: impl Fn(&LabelSet) -> usize) -> Duration {
    let mut samples = Vec::with_capacity(rounds * label_sets.len());
    for _ in 0..rounds {
        for labels in label_sets {
            let started = Instant::now();
            black_box(f(labels));
            samples.push(started.elapsed());
        }
    }
    median(samples)
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let mut table = Vec::new();
    for policies in [10usize, 1_000, 10_000] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ policies as u64);
        let yaml = policies_yaml(policies, &mut rng);
        let compiled = compile_texts(&[(Path::new("bench.yaml"), yaml.as_str())]).unwrap();
        let set = PolicySet::new(compiled, Action::Allow);
        for size in [50usize, 100, 200] {
            let label_sets: Vec<LabelSet> = (0..20).map(|_| label_set(size, &mut rng)).collect();
            for labels in &label_sets {
                assert_eq!(set.evaluate(labels), set.evaluate_naive(labels));
            }
            let mut group = criterion.benchmark_group(format!("{policies}-policies/{size}-labels"));
            group.bench_function("indexed", |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % label_sets.len();
                    set.evaluate(&label_sets[i]).matches.len()
                })
            });
            group.bench_function("naive", |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % label_sets.len();
                    set.evaluate_naive(&label_sets[i]).matches.len()
                })
            });
            group.finish();
            let rounds = if policies >= 10_000 { 10 } else { 50 };
            let indexed = measure(&label_sets, rounds, |l| set.evaluate(l).matches.len());
            let naive = measure(&label_sets, rounds, |l| set.evaluate_naive(l).matches.len());
            let matches: usize = label_sets
                .iter()
                .map(|l| set.evaluate(l).matches.len())
                .sum();
            table.push((
                policies,
                size,
                indexed,
                naive,
                matches as f64 / label_sets.len() as f64,
            ));
        }
    }
    criterion.final_summary();
    println!("\nselector matching, medians of one evaluation (same run):");
    println!(
        "{:>9} {:>7} {:>12} {:>12} {:>8} {:>9}",
        "policies", "labels", "indexed", "naive", "ratio", "matches"
    );
    for (policies, size, indexed, naive, matches) in table {
        println!(
            "{policies:>9} {size:>7} {:>10.1}µs {:>10.1}µs {:>7.1}x {matches:>9.1}",
            indexed.as_secs_f64() * 1e6,
            naive.as_secs_f64() * 1e6,
            naive.as_secs_f64() / indexed.as_secs_f64()
        );
    }
}
