//! The resolver: a PID's labels from three scoped caches.
//!
//! - **Process** entries are keyed by (pid, start time), so a reused PID never inherits another
//!   process's labels. A hit is checked against the process's current image (the identity of
//!   its executable, its effective ids, its cgroups), so a process that called `execve` (even of
//!   a file replaced at the same path), `setuid` or moved to another cgroup is collected again,
//!   even before the kernel hook reports an exec.
//! - **Container** entries are keyed by container id.
//! - **Node** labels are collected at start and refreshed in the background; a failed refresh
//!   keeps the last good labels, marked stale.
//!
//! One concern per file: [`caches`] (entries, bounded caches, sizes), `collect` (single-flight
//! collection of what the caches miss), `kept` (finished answers given again), `node` (node
//! refresh with stale fallback), `invalidation` (dropping stale entries), [`history`]
//! (per-collector history for `/collectors`) and `prestart` (warming the caches at start).

pub mod caches;
mod collect;
mod ended;
pub mod history;
mod invalidation;
mod kept;
mod node;
mod prestart;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};

use collectors::cgroup::{ContainerIdentity, ContainersConfig};
use collectors::{
    CollectorReport, HostRoots, KeyCatalog, ProcessError, ProcessRef, Registry, Scope,
};
use labels::{LabelSet, TrustMap};
use quick_cache::sync::Cache;
use serde::Serialize;

use crate::metrics::Metrics;
use caches::{ContainerKey, KeptReport, ProcessEntry, ProcessKey, ScopedCache, scoped_cache};
pub use caches::{ResolverLimits, ScopeEntry};
pub use ended::ExecLookup;
use history::CollectorHistory;
pub use history::CollectorState;
pub use kept::Seen;
use kept::{KeptAnswer, kept_answer_capacity};

/// Why a PID could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The process does not exist, or could not be read.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The answer could not be serialized.
    #[error("cannot encode the answer")]
    Encode(#[from] serde_json::Error),
}

/// Everything known about one process: its own labels, its container's and the node's.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    /// The process (thread-group id).
    pub pid: u32,
    /// Its start time in clock ticks since boot, which with the PID identifies it.
    pub start_time_ticks: Option<u64>,
    /// The container it runs in, if any.
    pub container: Option<ContainerIdentity>,
    /// Labels of every scope, merged.
    #[serde(serialize_with = "labels::serialize_map")]
    pub labels: LabelSet,
    /// The trust class of each key of `labels`: who could have chosen its values.
    pub trust: TrustMap,
    /// Each collector's outcome: process scope, then container, then node.
    pub collectors: Vec<CollectorReport>,
    /// When the process labels were collected (RFC 3339).
    pub resolved_at: String,
    /// Whether the process labels came from the cache.
    pub cached: bool,
    /// When the process labels' collection started, on the kernel's monotonic clock: a verdict
    /// made from them holds only for an image the process ran since before then.
    #[serde(skip)]
    pub collected_ns: u64,
    /// `labels` and `trust` as JSON, made once for all the events that carry this resolution
    /// (every connect of a cached process shares it): see [`Resolution::labels_json`].
    #[serde(skip)]
    pub labels_json: std::sync::OnceLock<LabelsJson>,
}

/// A resolution's `labels` and `trust`, serialized.
#[derive(Debug, Clone)]
pub struct LabelsJson {
    /// `labels` as a JSON object.
    pub labels: Box<serde_json::value::RawValue>,
    /// `trust` as a JSON object.
    pub trust: Box<serde_json::value::RawValue>,
}

impl Resolution {
    /// `labels` and `trust` as JSON, serialized at the first call and kept.
    pub fn labels_json(&self) -> &LabelsJson {
        self.labels_json.get_or_init(|| {
            struct Labels<'a>(&'a LabelSet);
            impl Serialize for Labels<'_> {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    labels::serialize_map(self.0, s)
                }
            }
            let raw = |text: serde_json::Result<String>| {
                text.and_then(serde_json::value::RawValue::from_string)
                    .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
            };
            LabelsJson {
                labels: raw(serde_json::to_string(&Labels(&self.labels))),
                trust: raw(serde_json::to_string(&self.trust)),
            }
        })
    }

    /// Whether a later collection may complete what this one lacks (a hash still being
    /// computed, an exec in progress).
    pub fn provisional(&self) -> bool {
        self.collectors.iter().any(|report| report.provisional)
    }
}

/// What the kernel's table says of a PID (see [`Resolver::kernel_look`]).
enum KernelLook {
    /// The cached entry of the process holds.
    Hit(ProcessRef, Arc<ProcessEntry>),
    /// A process the table knows; nothing cached is shown to hold for it.
    Known(ProcessRef),
    /// No table, or not a process it knows.
    Unknown,
}

/// The cache entries one answer is made of.
struct Found {
    process: ProcessRef,
    entry: Arc<ProcessEntry>,
    container: Option<Arc<ScopeEntry>>,
    node: Arc<ScopeEntry>,
    /// Whether the process entry came from the cache.
    cached: bool,
}

/// Resolves PIDs to labels through the scoped caches.
pub struct Resolver {
    roots: HostRoots,
    registry: Registry,
    metrics: Arc<Metrics>,
    processes: ScopedCache<ProcessKey, Arc<ProcessEntry>>,
    containers: ScopedCache<ContainerKey, Arc<ScopeEntry>>,
    /// Which cgroups may hold containers.
    placement: ContainersConfig,
    /// Serialized answers of recently looked-up cached processes.
    answers: Cache<u32, Arc<KeptAnswer>>,
    node: RwLock<Arc<ScopeEntry>>,
    node_ready: std::sync::atomic::AtomicBool,
    /// Bumped when hook events were lost or dropped: an exec or a cgroup move may have gone
    /// unseen, so no kept answer is vouched for by events any more (see [`Seen`]).
    hook_epoch: std::sync::atomic::AtomicU64,
    history: CollectorHistory,
    catalog: Arc<KeyCatalog>,
    /// The process lineage procfs keeps, which hook events complete.
    lineage: Option<Arc<collectors::procfs::Lineage>>,
    /// Executions that ended, for lookups by exec id.
    ended: ended::EndedHistory,
    /// The hook's process table while the hook is attached: it tells whether a cached process
    /// exec'd or moved since it was collected without reading procfs.
    kernel: RwLock<Option<Arc<kernel_hook::ProcessTable>>>,
}

impl Resolver {
    /// A resolver with empty caches; node labels are empty until [`Resolver::refresh_node`].
    pub fn new(
        roots: HostRoots,
        registry: Registry,
        limits: ResolverLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            processes: scoped_cache(
                limits.process_entries,
                limits.process_bytes(),
                Scope::Process,
                &metrics,
            ),
            containers: scoped_cache(
                limits.container_entries,
                limits.container_bytes(),
                Scope::Container,
                &metrics,
            ),
            answers: Cache::new(kept_answer_capacity()),
            node: RwLock::new(Arc::new(ScopeEntry::empty())),
            node_ready: std::sync::atomic::AtomicBool::new(false),
            hook_epoch: std::sync::atomic::AtomicU64::new(1),
            history: CollectorHistory::new(&registry),
            catalog: Arc::new(KeyCatalog::new(&registry)),
            lineage: registry
                .collectors()
                .iter()
                .find_map(|registered| registered.collector.lineage()),
            ended: ended::EndedHistory::new(limits.ended_entries),
            kernel: RwLock::new(None),
            placement: ContainersConfig::default(),
            roots,
            registry,
            metrics,
        }
    }

    /// The resolver with `placement` deciding which cgroups may hold containers (by default,
    /// only root's, outside users' delegated subtrees).
    pub fn with_container_placement(mut self, placement: ContainersConfig) -> Self {
        self.placement = placement;
        self
    }

    /// The host roots the resolver reads.
    pub fn roots(&self) -> &HostRoots {
        &self.roots
    }

    /// Uses the attached hook's process table to check kept answers (see
    /// [`kernel_hook::ProcessTable`]); `None` when the hook detaches, since the table then
    /// stops following the processes. Entries collected without it are checked against procfs.
    pub fn use_kernel_table(&self, table: Option<Arc<kernel_hook::ProcessTable>>) {
        *self.kernel.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The kernel's table the resolver checks answers with, while the hook is attached.
    pub fn kernel_table(&self) -> Option<Arc<kernel_hook::ProcessTable>> {
        self.kernel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The kernel's stamp of `process` now, when the hook is attached and knows it (or could
    /// be told of it).
    fn kernel_stamp(&self, process: ProcessRef) -> Option<caches::KernelStamp> {
        let table = self.kernel_table()?;
        let state = table
            .get_or_introduce(process.pid, process.start_ticks?)
            .ok()??;
        Some(caches::KernelStamp::of(&state))
    }

    /// Whether the hook's table says process `pid` started at `start` neither exec'd nor moved
    /// since it had `stamp`. `checked` keeps the count of the process's bucket of changes when
    /// its entry was last found so: while that count stays the same, no process of the bucket
    /// changed since, and the entry is not looked up again.
    fn kernel_unchanged(
        &self,
        pid: u32,
        start: Option<u64>,
        stamp: Option<caches::KernelStamp>,
        checked: &std::sync::atomic::AtomicU64,
    ) -> bool {
        use std::sync::atomic::Ordering;
        let (Some(stamp), Some(start)) = (stamp, start) else {
            return false;
        };
        let table = self.kernel.read().unwrap_or_else(|e| e.into_inner());
        let Some(table) = table.as_ref() else {
            return false;
        };
        // Read before the entry: a change after this read changes the count.
        let changes = table.changes(pid);
        if checked.load(Ordering::Acquire) == changes {
            return true;
        }
        let unchanged = table
            .get(pid)
            .ok()
            .flatten()
            .is_some_and(|now| now.start == start && caches::KernelStamp::of(&now) == stamp);
        if unchanged {
            checked.store(changes, Ordering::Release);
        }
        unchanged
    }

    /// The process lineage (procfs's), which the hook's fork, exec and exit events complete;
    /// `None` without the procfs collector.
    pub fn lineage(&self) -> Option<&Arc<collectors::procfs::Lineage>> {
        self.lineage.as_ref()
    }

    /// Resolves `pid` (a thread id resolves to its process).
    ///
    /// The answer for a cached process is kept and given again, without merging anything,
    /// while its process, container and node entries are the ones it was made from. Kept with
    /// its process's open proc directory, it is given before any other read: while the process
    /// is alive and runs the same executable (one `readlink` through that directory, which no
    /// reused PID can pass).
    pub async fn resolve(&self, pid: u32) -> Result<Arc<Resolution>, ResolveError> {
        Ok(Arc::clone(&self.answer(pid).await?.resolution))
    }

    /// [`Resolver::resolve`] serialized as JSON (the answer of `GET /metadata/<pid>`), once per
    /// kept answer.
    pub async fn resolve_json(&self, pid: u32) -> Result<bytes::Bytes, ResolveError> {
        let answer = self.answer(pid).await?;
        if let Some(json) = answer.json.get() {
            return Ok(json.clone());
        }
        let json = bytes::Bytes::from(serde_json::to_vec(&*answer.resolution)?);
        Ok(answer.json.get_or_init(|| json).clone())
    }

    /// Which cgroups may hold containers.
    pub fn placement(&self) -> &ContainersConfig {
        &self.placement
    }

    /// The collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What the collectors declare about label keys (their trust classes), for policies.
    pub fn key_catalog(&self) -> Arc<KeyCatalog> {
        Arc::clone(&self.catalog)
    }

    /// Each collector's history, in registration order.
    pub fn collector_states(&self) -> Vec<CollectorState> {
        self.history.snapshot()
    }

    /// The process, container and node labels and statuses of `found`, merged.
    fn assemble(&self, found: &Found) -> Resolution {
        let (entry, node) = (&found.entry, &found.node);
        let mut labels = entry.labels.thaw();
        let mut reports: Vec<CollectorReport> =
            entry.reports.iter().map(KeptReport::report).collect();
        let mut untrusted = entry.untrusted.to_vec();
        if let Some(container) = &found.container {
            labels.merge(&container.labels);
            reports.extend(container.reports.iter().cloned());
            untrusted.extend(&container.untrusted);
        } else {
            reports.extend(self.not_in_container(entry.container_note.as_deref()));
        }
        labels.merge(&node.labels);
        reports.extend(node.reports.iter().cloned());
        // A runtime vouched for the container when one of its collectors gave labels for it.
        let confirmed = found
            .container
            .as_ref()
            .is_some_and(|container| !container.labels.is_empty());
        let trust = self.catalog.classify(&labels, &untrusted, confirmed);
        Resolution {
            pid: found.process.pid,
            start_time_ticks: found.process.start_ticks,
            container: entry.container.as_deref().cloned(),
            labels,
            trust,
            collectors: reports,
            resolved_at: humantime::format_rfc3339_millis(entry.resolved_at).to_string(),
            cached: found.cached,
            collected_ns: entry.collected_ns,
            labels_json: std::sync::OnceLock::new(),
        }
    }

    /// With the hook attached, what the kernel's table says of `pid`. [`KernelLook::Hit`]: its
    /// cached entry holds, the process neither exec'd, moved nor ended since it was collected
    /// (its entry's stamp) and has the same effective ids (one `stat` of `/proc/<pid>`); nothing
    /// of procfs is read. [`KernelLook::Known`]: the table knows `pid` as a process (its start
    /// time), but no cached entry is shown to hold. [`KernelLook::Unknown`]: no table, or a PID
    /// it does not hold (a thread id, a process not introduced yet); the caller reads procfs.
    fn kernel_look(&self, pid: u32) -> KernelLook {
        let Some(table) = self.kernel_table() else {
            return KernelLook::Unknown;
        };
        // Read first: an exit counted after this read changes it, and no other process can
        // take the PID before its previous process's exit is counted.
        let before = table.changes(pid);
        let Ok(Some(state)) = table.get(pid) else {
            return KernelLook::Unknown;
        };
        // The table holds processes only, keyed by their thread-group id.
        let process = ProcessRef {
            pid,
            start_ticks: Some(state.start),
        };
        let Some(entry) = self.processes.get(&(pid, process.start_ticks)) else {
            return KernelLook::Known(process);
        };
        if entry.kernel != Some(caches::KernelStamp::of(&state)) {
            return KernelLook::Known(process);
        }
        let owner_holds = entry
            .image
            .as_ref()
            .is_some_and(|image| image.same_owner_at(&self.roots, pid));
        // The owner read was of that process: no exit (nor fork) was counted meanwhile.
        if !owner_holds || table.changes(pid) != before {
            return KernelLook::Known(process);
        }
        self.metrics.answer_checks_kernel.inc();
        KernelLook::Hit(process, entry)
    }

    /// The entries that make up the answer for `pid`, collecting what is not cached.
    async fn find(&self, pid: u32) -> Result<Found, ResolveError> {
        match self.kernel_look(pid) {
            KernelLook::Hit(process, entry) => {
                self.metrics.cache_hit(Scope::Process);
                return Ok(self.found(process, entry, true).await);
            }
            // The table gave its start time: no `stat` to read for it (a collection reads one
            // through the process's directory, which must show the same start time).
            KernelLook::Known(process) => match self.find_process(process).await {
                // An entry can outlive its process in one race: a process older than the hook
                // introduced as it exited, its PID since taken by a thread, not a process.
                // procfs decides.
                Err(ResolveError::Process(ProcessError::NoSuchProcess(_))) => {}
                found => return found,
            },
            KernelLook::Unknown => {}
        }
        // Warm path: one small read finds a cached process; only a miss reads its status to
        // turn a thread id into its process.
        let stat = ProcessRef::read_stat(&self.roots, pid);
        let probe = stat
            .as_deref()
            .and_then(|stat| ProcessRef::from_stat(pid, stat));
        let process = match probe {
            Some(probe)
                if self
                    .processes
                    .peek(&(probe.pid, probe.start_ticks))
                    .is_some() =>
            {
                probe
            }
            _ => ProcessRef::resolve_from(&self.roots, pid, stat)?,
        };
        self.find_process(process).await
    }

    /// [`Resolver::find`] for `process`: its cached entry if its image is unchanged, else a
    /// new collection.
    async fn find_process(&self, process: ProcessRef) -> Result<Found, ResolveError> {
        let key = (process.pid, process.start_ticks);
        let cached_entry = match self.processes.get(&key) {
            Some(entry) if entry.image.is_none() || process.image(&self.roots) == entry.image => {
                Some(entry)
            }
            Some(stale) => {
                // Same process, another image: it exec'd, changed its ids or moved.
                self.processes.remove(&key);
                self.remember_ended(process, &stale);
                None
            }
            None => None,
        };
        let (entry, cached) = match cached_entry {
            Some(entry) => {
                self.metrics.cache_hit(Scope::Process);
                (entry, true)
            }
            None => (self.collect_process(process, key).await?, false),
        };
        Ok(self.found(process, entry, cached).await)
    }

    /// The answer's entries for `process`, whose entry is `entry`: its container's and the
    /// node's added.
    async fn found(&self, process: ProcessRef, entry: Arc<ProcessEntry>, cached: bool) -> Found {
        let container = match &entry.container {
            Some(identity) => self.container_entry(process, identity).await,
            None => None,
        };
        Found {
            process,
            entry,
            container,
            node: self.node(),
            cached,
        }
    }
}

/// Resolves `pid` once, without a daemon: node labels first, then the process (`inspect`,
/// `policy test --pid`).
pub async fn resolve_once(
    registry: Registry,
    roots: HostRoots,
    placement: ContainersConfig,
    pid: u32,
) -> Result<Resolution, ResolveError> {
    let limits = ResolverLimits {
        process_entries: 1,
        container_entries: 1,
        cache_bytes: 64 * 1024 * 1024,
        ended_entries: 0,
    };
    let resolver = Resolver::new(roots, registry, limits, Arc::new(Metrics::new()))
        .with_container_placement(placement);
    resolver.refresh_node().await;
    resolver.resolve(pid).await.map(Arc::unwrap_or_clone)
}
