//! The scope caches: what a process and a container entry hold, the bounded caches that keep
//! them (evictions counted in metrics), and their sizes.

use std::sync::Arc;
use std::time::SystemTime;

use collectors::cgroup::ContainerIdentity;
use collectors::{CollectorReport, CollectorStatus, ProcessImage, Scope, merge_labels};
use labels::{FrozenLabels, LabelSet};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder};

use super::Resolver;
use crate::config::ResolverConfig;
use crate::metrics::Metrics;

/// The labels of one scope, as collected at one moment.
#[derive(Debug, Clone)]
pub struct ScopeEntry {
    /// Each collector of the scope.
    pub reports: Vec<CollectorReport>,
    /// Their labels, merged.
    pub labels: LabelSet,
    /// When they were collected.
    pub resolved_at: SystemTime,
    /// Keys whose values are only `self` in this collection.
    pub untrusted: Vec<&'static str>,
}

impl ScopeEntry {
    pub(super) fn new(reports: Vec<CollectorReport>) -> Self {
        Self {
            labels: merge_labels(&reports),
            untrusted: untrusted_keys(&reports),
            reports,
            resolved_at: SystemTime::now(),
        }
    }

    /// An entry that keeps only the merged labels, not each report's own: what cached
    /// process and container entries need (node entries keep them, for stale labels).
    pub(super) fn merged(mut reports: Vec<CollectorReport>) -> Self {
        let untrusted = untrusted_keys(&reports);
        // The reports' labels move into the merged set (they are not kept in the reports).
        let mut labels = LabelSet::new();
        for report in &mut reports {
            labels.absorb(std::mem::take(&mut report.labels));
            report.untrusted = Vec::new();
        }
        Self {
            labels,
            reports,
            resolved_at: SystemTime::now(),
            untrusted,
        }
    }

    pub(super) fn empty() -> Self {
        Self::new(Vec::new())
    }

    /// Whether a collector failed or timed out (such entries are not cached).
    pub(super) fn has_errors(&self) -> bool {
        self.reports.iter().any(|r| r.status.is_error())
    }

    pub(super) fn is_partial(&self) -> bool {
        self.reports
            .iter()
            .any(|r| matches!(r.status, CollectorStatus::Partial { .. }))
    }
}

/// The keys some report says are only `self` in this collection.
fn untrusted_keys(reports: &[CollectorReport]) -> Vec<&'static str> {
    reports
        .iter()
        .flat_map(|report| report.untrusted.iter().copied())
        .collect()
}

/// A collector's outcome as a process entry keeps it: what an answer shows of it and the
/// executable it hashed (which the enforcer keys exec-time verdicts by); its labels are merged
/// into the entry's, and what only the collection used is dropped. Two thirds of a
/// [`CollectorReport`], once per cached process.
#[derive(Debug, Clone)]
pub(super) struct KeptReport {
    name: &'static str,
    scope: Scope,
    status: CollectorStatus,
    latency: std::time::Duration,
    executable: Option<collectors::procfs::FileIdentity>,
}

impl KeptReport {
    /// What is kept of `report`.
    pub fn of(report: CollectorReport) -> Self {
        Self {
            name: report.name,
            scope: report.scope,
            status: report.status,
            latency: report.latency,
            executable: report.executable,
        }
    }

    /// The report an answer shows.
    pub fn report(&self) -> CollectorReport {
        CollectorReport {
            name: self.name,
            scope: self.scope,
            status: self.status.clone(),
            latency: self.latency,
            labels: LabelSet::new(),
            untrusted: Vec::new(),
            provisional: false,
            executable: self.executable,
        }
    }
}

/// Why a process is in no container: usually that it is in none, a note every such entry
/// shares rather than keeps a copy of.
pub(super) fn container_note(note: Option<String>) -> Option<Arc<str>> {
    static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    let note = note?;
    let none = NONE.get_or_init(|| Arc::from(collectors::cgroup::NOT_IN_A_CONTAINER));
    Some(if note == **none {
        Arc::clone(none)
    } else {
        Arc::from(note)
    })
}

/// A cached process. Its labels are frozen: the cache may hold tens of thousands.
#[derive(Debug)]
pub(super) struct ProcessEntry {
    /// The process-scope collectors' labels, merged.
    pub labels: FrozenLabels,
    /// Each process-scope collector's outcome (without its own labels).
    pub reports: Box<[KeptReport]>,
    /// When they were collected.
    pub resolved_at: SystemTime,
    /// Boxed: most processes are in no container, and the cache holds tens of thousands.
    pub container: Option<Box<ContainerIdentity>>,
    /// Why there is no container, when there is none.
    pub container_note: Option<Arc<str>>,
    /// Keys whose values are only `self` for this process (usually none).
    pub untrusted: Box<[&'static str]>,
    /// What the process ran as when collected (executable, effective ids, cgroups); another
    /// image means it exec'd, changed ids or moved: it is collected again. `None` for a kernel
    /// thread.
    pub image: Option<ProcessImage>,
    /// The kernel's entry for the process when the collection started (with the hook
    /// attached): while it stays the same, the process neither exec'd nor moved since.
    pub kernel: Option<KernelStamp>,
    /// When the collection started, on the kernel's monotonic clock (that of hook events).
    pub collected_ns: u64,
}

impl ProcessEntry {
    /// Its execution (`process:exec-id`), when known: read from its labels (not kept apart:
    /// 40 bytes per cached process, for the lookups of processes that ended).
    pub fn exec_id(&self) -> Option<collectors::procfs::ExecId> {
        self.labels.first("process:exec-id")?.parse().ok()
    }
}

/// What the hook's process table said of a process (see [`kernel_hook::ProcessTable`]): its
/// execs and cgroup moves so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KernelStamp {
    pub generation: u32,
    pub moves: u32,
}

impl KernelStamp {
    pub fn of(state: &kernel_hook::maps::ProcState) -> Self {
        Self {
            generation: state.generation,
            moves: state.moves,
        }
    }
}

/// A process cache key: (pid, start time in ticks).
pub(super) type ProcessKey = (u32, Option<u64>);

/// A container cache key: the container id and its cgroup. A process that names a container
/// from another cgroup (one it made itself) gets its own entry, never the container's.
pub(super) type ContainerKey = (String, String);

/// The container cache key of `identity`.
pub(super) fn container_key(identity: &ContainerIdentity) -> ContainerKey {
    (identity.id.clone(), identity.cgroup.clone())
}

/// Counts evictions of a cache into a metric.
#[derive(Clone)]
pub(super) struct EvictionCounter {
    metrics: Arc<Metrics>,
    scope: Scope,
}

impl<K, V> Lifecycle<K, V> for EvictionCounter {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: K, _value: V) {
        self.metrics.cache_evicted(self.scope);
    }
}

/// What a cache entry weighs: its bytes.
pub(super) trait Bytes {
    /// About how many bytes the entry holds.
    fn bytes(&self) -> u64;
}

impl Bytes for Arc<ProcessEntry> {
    fn bytes(&self) -> u64 {
        let reports = self.reports.len() * std::mem::size_of::<KeptReport>();
        (std::mem::size_of::<ProcessEntry>() + self.labels.byte_size() + reports) as u64
    }
}

impl Bytes for Arc<ScopeEntry> {
    fn bytes(&self) -> u64 {
        let reports = self.reports.len() * std::mem::size_of::<CollectorReport>();
        (std::mem::size_of::<ScopeEntry>() + self.labels.byte_size() + reports) as u64
    }
}

/// Weighs entries by their bytes, and each at least `floor`, so that the cache holds at most
/// its byte budget and at most `budget / floor` entries.
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteWeighter {
    floor: u64,
}

impl<K, V: Bytes> quick_cache::Weighter<K, V> for ByteWeighter {
    fn weight(&self, _key: &K, value: &V) -> u64 {
        value.bytes().max(self.floor)
    }
}

pub(super) type ScopedCache<K, V> = Cache<K, V, ByteWeighter, DefaultHashBuilder, EvictionCounter>;

/// A cache of `scope` entries holding at most `entries` of them and `bytes` bytes, counting
/// its evictions.
pub(super) fn scoped_cache<K, V>(
    entries: usize,
    bytes: u64,
    scope: Scope,
    metrics: &Arc<Metrics>,
) -> ScopedCache<K, V>
where
    K: Eq + std::hash::Hash + Clone,
    V: Clone + Bytes,
{
    let entries = entries.max(1);
    let bytes = bytes.max(entries as u64);
    let options = OptionsBuilder::new()
        .estimated_items_capacity(entries)
        .weight_capacity(bytes)
        .build()
        .expect("capacity is set"); // both required fields are set just above
    Cache::with_options(
        options,
        ByteWeighter {
            floor: bytes / entries as u64,
        },
        DefaultHashBuilder::default(),
        EvictionCounter {
            metrics: Arc::clone(metrics),
            scope,
        },
    )
}

/// Cache sizes.
#[derive(Debug, Clone, Copy)]
pub struct ResolverLimits {
    /// Process entries kept.
    pub process_entries: usize,
    /// Container entries kept.
    pub container_entries: usize,
    /// Bytes the process and container entries hold at most (7/8 and 1/8 of it).
    pub cache_bytes: u64,
    /// Ended executions kept for lookups by exec id.
    pub ended_entries: usize,
}

impl ResolverLimits {
    pub(super) fn process_bytes(&self) -> u64 {
        self.cache_bytes / 8 * 7
    }

    pub(super) fn container_bytes(&self) -> u64 {
        self.cache_bytes / 8
    }
}

impl From<&ResolverConfig> for ResolverLimits {
    fn from(config: &ResolverConfig) -> Self {
        Self {
            process_entries: config.process_cache_entries,
            container_entries: config.container_cache_entries,
            cache_bytes: config.cache_bytes,
            ended_entries: config.ended_processes,
        }
    }
}

impl Default for ResolverLimits {
    fn default() -> Self {
        Self::from(&ResolverConfig::default())
    }
}

impl Resolver {
    /// The PIDs of the cached processes.
    pub fn cached_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.processes.iter().map(|((pid, _), _)| pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Number of cached process entries.
    pub fn cached_processes(&self) -> usize {
        self.processes.len()
    }

    /// Counts the process entries dropped since the cache held `before`, and the sizes.
    pub(super) fn count_removals(&self, before: usize) {
        let removed = before.saturating_sub(self.processes.len());
        self.metrics.cache_removed(Scope::Process, removed as u64);
        self.update_entry_gauges();
    }

    pub(super) fn update_entry_gauges(&self) {
        self.metrics
            .cache_size(Scope::Process, self.processes.len());
        self.metrics
            .cache_size(Scope::Container, self.containers.len());
    }
}

#[cfg(test)]
mod byte_tests {
    use super::*;

    fn entry(bytes: usize) -> Arc<ScopeEntry> {
        let mut labels = LabelSet::new();
        labels.insert("docker:label:big", "x".repeat(bytes));
        Arc::new(ScopeEntry {
            reports: Vec::new(),
            labels,
            resolved_at: SystemTime::now(),
            untrusted: Vec::new(),
        })
    }

    #[test]
    fn caches_hold_their_bytes_and_their_entries_at_most() {
        let metrics = Arc::new(Metrics::new());
        // 100 entries or 64 KiB: ten 16 KiB entries cannot all stay.
        let cache: ScopedCache<u32, Arc<ScopeEntry>> =
            scoped_cache(100, 64 * 1024, Scope::Container, &metrics);
        for n in 0..10 {
            cache.insert(n, entry(16 * 1024));
        }
        assert!(cache.len() <= 4, "{}", cache.len());
        assert!(cache.weight() <= 64 * 1024);
        // Small entries: the entry count bounds.
        let cache: ScopedCache<u32, Arc<ScopeEntry>> =
            scoped_cache(5, 1 << 30, Scope::Container, &metrics);
        for n in 0..50 {
            cache.insert(n, entry(10));
        }
        assert!(cache.len() <= 5, "{}", cache.len());
    }
}
