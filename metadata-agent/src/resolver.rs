//! The resolver: a PID's labels from three scoped caches.
//!
//! - **Process** entries are keyed by (pid, start time), so a reused PID never inherits another
//!   process's labels. A hit is checked against the process's current executable, so a process
//!   that called `execve` is collected again even before the kernel hook reports the exec.
//! - **Container** entries are keyed by container id.
//! - **Node** labels are collected at start and refreshed in the background; a failed refresh
//!   keeps the last good labels, marked stale.
//!
//! Concurrent lookups of one key share one collection (single-flight), and results with a failed
//! or timed-out collector are not cached, so the next lookup tries again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use collectors::cgroup::{ContainerIdentity, ContainerMatch, parse_cgroup_file};
use collectors::{
    CollectorReport, CollectorStatus, HostRoots, ProcDir, ProcessError, ProcessRef, Registry,
    Scope, Subject, merge_labels,
};
use labels::{FrozenLabels, LabelSet};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, UnitWeighter};
use serde::Serialize;

use crate::config::ResolverConfig;
use crate::metrics::Metrics;

/// Serialized answers kept at most (each about 3 KiB and an open proc directory), for the
/// processes looked up most.
const ANSWER_ENTRIES: usize = 1_024;

/// How many answers to keep: [`ANSWER_ENTRIES`], or a quarter of the open-file limit when that
/// is lower, since each holds a file descriptor.
fn answer_capacity() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let open_files = limit.current.unwrap_or(u64::MAX);
    (open_files / 4).clamp(1, ANSWER_ENTRIES as u64) as usize
}

/// Why a PID could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The process does not exist, or could not be read.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The answer could not be serialized.
    #[error("cannot encode the answer: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The labels of one scope, as collected at one moment.
#[derive(Debug, Clone)]
pub struct ScopeEntry {
    /// Each collector of the scope.
    pub reports: Vec<CollectorReport>,
    /// Their labels, merged.
    pub labels: LabelSet,
    /// When they were collected.
    pub resolved_at: SystemTime,
}

impl ScopeEntry {
    fn new(reports: Vec<CollectorReport>) -> Self {
        Self {
            labels: merge_labels(&reports),
            reports,
            resolved_at: SystemTime::now(),
        }
    }

    /// An entry that keeps only the merged labels, not each report's own: what cached
    /// process and container entries need (node entries keep them, for stale labels).
    fn merged(mut reports: Vec<CollectorReport>) -> Self {
        let labels = merge_labels(&reports);
        for report in &mut reports {
            report.labels = LabelSet::new();
        }
        Self {
            labels,
            reports,
            resolved_at: SystemTime::now(),
        }
    }

    fn empty() -> Self {
        Self::new(Vec::new())
    }

    /// Whether a collector failed or timed out (such entries are not cached).
    fn has_errors(&self) -> bool {
        self.reports.iter().any(|r| r.status.is_error())
    }

    fn is_partial(&self) -> bool {
        self.reports
            .iter()
            .any(|r| matches!(r.status, CollectorStatus::Partial { .. }))
    }
}

/// A cached process. Its labels are frozen: the cache may hold tens of thousands.
#[derive(Debug)]
struct ProcessEntry {
    /// The process-scope collectors' labels, merged.
    labels: FrozenLabels,
    /// Each process-scope collector's outcome (without its own labels).
    reports: Vec<CollectorReport>,
    /// When they were collected.
    resolved_at: SystemTime,
    container: Option<ContainerIdentity>,
    /// Why there is no container, when there is none.
    container_note: Option<String>,
    /// The `/proc/<pid>/exe` target when collected; a different one means the process exec'd.
    exe: Option<PathBuf>,
    /// When the collection started, on the kernel's monotonic clock (that of hook events).
    collected_ns: u64,
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

/// An answer, the entries it was made from and, on a real procfs, its process's open proc
/// directory.
struct Answer {
    found: Found,
    dir: Option<ProcDir>,
    resolution: Arc<Resolution>,
    /// `resolution` as JSON, made at the first lookup that asks for it.
    json: OnceLock<bytes::Bytes>,
}

impl Answer {
    /// Whether `found` holds the very entries this answer was made from.
    fn made_from(&self, found: &Found) -> bool {
        let same = |a: &Option<Arc<ScopeEntry>>, b: &Option<Arc<ScopeEntry>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        found.cached
            && Arc::ptr_eq(&self.found.entry, &found.entry)
            && same(&self.found.container, &found.container)
            && Arc::ptr_eq(&self.found.node, &found.node)
    }
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
    /// Each collector's outcome: process scope, then container, then node.
    pub collectors: Vec<CollectorReport>,
    /// When the process labels were collected (RFC 3339).
    pub resolved_at: String,
    /// Whether the process labels came from the cache.
    pub cached: bool,
}

/// Per-collector history, for `GET /collectors`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectorState {
    /// The collector's name.
    pub name: &'static str,
    /// Its scope.
    pub scope: Option<Scope>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Its deadline in milliseconds.
    pub timeout_ms: u64,
    /// Runs so far.
    pub runs: u64,
    /// Runs that failed or timed out.
    pub errors: u64,
    /// The state of the last run (`ok`, `failed`, ...), if it ran.
    pub last_state: Option<&'static str>,
    /// Its reason or error.
    pub last_detail: Option<String>,
    /// Its latency in milliseconds.
    pub last_latency_ms: Option<f64>,
    /// The last error and when (RFC 3339), kept after later successes.
    pub last_error: Option<String>,
    /// When the last error happened.
    pub last_error_at: Option<String>,
}

/// Counts evictions of a cache into a metric.
#[derive(Clone)]
struct EvictionCounter {
    metrics: Arc<Metrics>,
    scope: Scope,
}

impl<K, V> Lifecycle<K, V> for EvictionCounter {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: K, _value: V) {
        self.metrics
            .cache_evictions
            .get_or_create(&Metrics::cache(self.scope))
            .inc();
    }
}

type ScopedCache<K, V> = Cache<K, V, UnitWeighter, DefaultHashBuilder, EvictionCounter>;

fn scoped_cache<K, V>(entries: usize, scope: Scope, metrics: &Arc<Metrics>) -> ScopedCache<K, V>
where
    K: Eq + std::hash::Hash + Clone,
    V: Clone,
{
    let entries = entries.max(1);
    let options = OptionsBuilder::new()
        .estimated_items_capacity(entries)
        .weight_capacity(entries as u64)
        .build()
        .expect("capacity is set"); // both required fields are set just above
    Cache::with_options(
        options,
        UnitWeighter,
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
}

impl From<&ResolverConfig> for ResolverLimits {
    fn from(config: &ResolverConfig) -> Self {
        Self {
            process_entries: config.process_cache_entries,
            container_entries: config.container_cache_entries,
        }
    }
}

impl Default for ResolverLimits {
    fn default() -> Self {
        Self::from(&ResolverConfig::default())
    }
}

type ProcessKey = (u32, Option<u64>);

/// Resolves PIDs to labels through the scoped caches.
pub struct Resolver {
    roots: HostRoots,
    registry: Registry,
    metrics: Arc<Metrics>,
    processes: ScopedCache<ProcessKey, Arc<ProcessEntry>>,
    containers: ScopedCache<String, Arc<ScopeEntry>>,
    /// Serialized answers of recently looked-up cached processes.
    answers: Cache<u32, Arc<Answer>>,
    node: RwLock<Arc<ScopeEntry>>,
    node_ready: std::sync::atomic::AtomicBool,
    states: Mutex<Vec<CollectorState>>,
}

impl Resolver {
    /// A resolver with empty caches; node labels are empty until [`Resolver::refresh_node`].
    pub fn new(
        roots: HostRoots,
        registry: Registry,
        limits: ResolverLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let states = registry
            .collectors()
            .iter()
            .map(|r| CollectorState {
                name: r.collector.name(),
                scope: Some(r.collector.scope()),
                enabled: r.enabled,
                timeout_ms: r.timeout.as_millis() as u64,
                ..Default::default()
            })
            .collect();
        Self {
            processes: scoped_cache(limits.process_entries, Scope::Process, &metrics),
            containers: scoped_cache(limits.container_entries, Scope::Container, &metrics),
            answers: Cache::new(answer_capacity()),
            node: RwLock::new(Arc::new(ScopeEntry::empty())),
            node_ready: std::sync::atomic::AtomicBool::new(false),
            states: Mutex::new(states),
            roots,
            registry,
            metrics,
        }
    }

    /// The host roots the resolver reads.
    pub fn roots(&self) -> &HostRoots {
        &self.roots
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

    /// The kept answer for `pid` if it is still current, else a new one (kept when its
    /// process entry came from the cache).
    async fn answer(&self, pid: u32) -> Result<Arc<Answer>, ResolveError> {
        let kept = self.answers.get(&pid);
        if let Some(answer) = &kept
            && self.still_current(answer)
        {
            self.count_hit(Scope::Process);
            if answer.found.container.is_some() {
                self.count_hit(Scope::Container);
            }
            return Ok(Arc::clone(answer));
        }
        let found = self.find(pid).await?;
        if let Some(answer) = kept
            && answer.made_from(&found)
        {
            return Ok(answer);
        }
        let resolution = Arc::new(self.assemble(&found));
        if !(found.cached && found.process.pid == pid) {
            return Ok(Arc::new(Answer {
                resolution,
                json: OnceLock::new(),
                dir: None,
                found,
            }));
        }
        // Opened after the lookup, so checked to be the same process before it is kept.
        let dir = ProcDir::open(&self.roots, pid).ok().filter(|dir| {
            found.entry.exe.is_some()
                && dir.pins_process()
                && dir.start_ticks() == found.process.start_ticks
        });
        let answer = Arc::new(Answer {
            resolution,
            json: OnceLock::new(),
            dir,
            found,
        });
        self.answers.insert(pid, Arc::clone(&answer));
        Ok(answer)
    }

    /// Whether a kept answer is still the one [`Resolver::find`] would lead to.
    fn still_current(&self, answer: &Answer) -> bool {
        let Some(dir) = &answer.dir else {
            return false;
        };
        let found = &answer.found;
        let key = (found.process.pid, found.process.start_ticks);
        let same_image = match (&found.entry.exe, dir.read_link("exe")) {
            (Some(exe), Ok(now)) => *exe == now,
            _ => false,
        };
        let same_container = match (&found.entry.container, &found.container) {
            (Some(identity), Some(kept)) => self
                .containers
                .get(&identity.id)
                .is_some_and(|now| Arc::ptr_eq(&now, kept)),
            // No container collector runs (the registry does not change), or no container.
            (Some(_), None) | (None, _) => true,
        };
        same_image
            && same_container
            && self
                .processes
                .get(&key)
                .is_some_and(|now| Arc::ptr_eq(&now, &found.entry))
            && Arc::ptr_eq(&self.node(), &found.node)
    }

    fn count_hit(&self, scope: Scope) {
        self.metrics
            .cache_hits
            .get_or_create(&Metrics::cache(scope))
            .inc();
    }

    /// The process, container and node labels and statuses of `found`, merged.
    fn assemble(&self, found: &Found) -> Resolution {
        let (entry, node) = (&found.entry, &found.node);
        let mut labels = entry.labels.thaw();
        let mut reports = entry.reports.clone();
        if let Some(container) = &found.container {
            labels.merge(&container.labels);
            reports.extend(container.reports.iter().cloned());
        } else {
            reports.extend(self.not_in_container(entry.container_note.as_deref()));
        }
        labels.merge(&node.labels);
        reports.extend(node.reports.iter().cloned());
        Resolution {
            pid: found.process.pid,
            start_time_ticks: found.process.start_ticks,
            container: entry.container.clone(),
            labels,
            collectors: reports,
            resolved_at: humantime::format_rfc3339_millis(entry.resolved_at).to_string(),
            cached: found.cached,
        }
    }

    /// The entries that make up the answer for `pid`, collecting what is not cached.
    async fn find(&self, pid: u32) -> Result<Found, ResolveError> {
        // Warm path: one small read finds a cached process; only a miss reads its status to
        // turn a thread id into its process.
        let process = match ProcessRef::probe(&self.roots, pid) {
            Some(probe)
                if self
                    .processes
                    .peek(&(probe.pid, probe.start_ticks))
                    .is_some() =>
            {
                probe
            }
            _ => ProcessRef::resolve(&self.roots, pid)?,
        };
        let key = (process.pid, process.start_ticks);
        let cached_entry = match self.processes.get(&key) {
            Some(entry) if self.still_same_image(&process, &entry) => Some(entry),
            Some(_) => {
                // Same process, new executable: it called execve since it was collected.
                self.processes.remove(&key);
                None
            }
            None => None,
        };
        let (entry, cached) = match cached_entry {
            Some(entry) => {
                self.count_hit(Scope::Process);
                (entry, true)
            }
            None => (self.collect_process(process, key).await?, false),
        };
        let container = match &entry.container {
            Some(identity) => self.container_entry(process, identity).await,
            None => None,
        };
        Ok(Found {
            process,
            entry,
            container,
            node: self.node(),
            cached,
        })
    }

    fn still_same_image(&self, process: &ProcessRef, entry: &ProcessEntry) -> bool {
        entry.exe.is_none() || self.exe_of(process.pid) == entry.exe
    }

    fn exe_of(&self, pid: u32) -> Option<PathBuf> {
        std::fs::read_link(self.roots.proc_file(pid, "exe")).ok()
    }

    /// Collects the process scope once for all concurrent lookups of `key`.
    async fn collect_process(
        &self,
        process: ProcessRef,
        key: ProcessKey,
    ) -> Result<Arc<ProcessEntry>, ResolveError> {
        let guard = match self.processes.get_value_or_guard_async(&key).await {
            // Another lookup collected it while this one waited.
            Ok(entry) => {
                self.count_hit(Scope::Process);
                return Ok(entry);
            }
            Err(guard) => guard,
        };
        self.metrics
            .cache_misses
            .get_or_create(&Metrics::cache(Scope::Process))
            .inc();
        let collected_ns = kernel_hook::monotonic_ns();
        let exe = self.exe_of(process.pid);
        let cgroup = std::fs::read(self.roots.proc_file(process.pid, "cgroup"))
            .map(|content| parse_cgroup_file(&String::from_utf8_lossy(&content)).container);
        let (container, container_note) = match cgroup {
            Ok(ContainerMatch::Container(identity)) => (Some(identity), None),
            Ok(other) => (None, other.why_not_a_container()),
            Err(error) => (None, Some(format!("cannot read its cgroups: {error}"))),
        };
        let subject = Subject {
            process: Some(process),
            container: container.clone(),
            container_note: container_note.clone(),
        };
        let reports = self.run(Scope::Process, &subject).await;
        if reports
            .iter()
            .any(|r| r.status == CollectorStatus::NoSuchProcess)
        {
            // It exited, or its PID was reused, between the first look and the collection.
            return Err(ProcessError::NoSuchProcess(process.pid).into());
        }
        let scope = ScopeEntry::merged(reports);
        let entry = Arc::new(ProcessEntry {
            labels: scope.labels.freeze(),
            reports: scope.reports,
            resolved_at: scope.resolved_at,
            container,
            container_note,
            exe,
            collected_ns,
        });
        if entry.reports.iter().any(|r| r.status.is_error()) {
            drop(guard);
        } else {
            let _ = guard.insert(Arc::clone(&entry));
        }
        self.update_entry_gauges();
        Ok(entry)
    }

    async fn container_entry(
        &self,
        process: ProcessRef,
        identity: &ContainerIdentity,
    ) -> Option<Arc<ScopeEntry>> {
        if !self
            .registry
            .collectors()
            .iter()
            .any(|r| r.collector.scope() == Scope::Container)
        {
            return None;
        }
        let guard = match self.containers.get_value_or_guard_async(&identity.id).await {
            Ok(entry) => {
                self.count_hit(Scope::Container);
                return Some(entry);
            }
            Err(guard) => guard,
        };
        self.metrics
            .cache_misses
            .get_or_create(&Metrics::cache(Scope::Container))
            .inc();
        let subject = Subject {
            process: Some(process),
            container: Some(identity.clone()),
            container_note: None,
        };
        let entry = Arc::new(ScopeEntry::merged(
            self.run(Scope::Container, &subject).await,
        ));
        // A partial container entry (a pod whose status does not list the container yet) is
        // not kept: the next lookup asks again.
        if entry.has_errors() || entry.is_partial() {
            drop(guard);
        } else {
            let _ = guard.insert(Arc::clone(&entry));
        }
        Some(entry)
    }

    /// Container-scope reports for a process outside any container (not cached: no key).
    fn not_in_container(&self, why: Option<&str>) -> Vec<CollectorReport> {
        self.registry
            .collectors()
            .iter()
            .filter(|r| r.collector.scope() == Scope::Container)
            .map(|r| CollectorReport {
                name: r.collector.name(),
                scope: Scope::Container,
                status: if r.enabled {
                    CollectorStatus::NotApplicable {
                        reason: why
                            .unwrap_or("the process is not in a container")
                            .to_owned(),
                    }
                } else {
                    CollectorStatus::Disabled
                },
                latency: Duration::ZERO,
                labels: LabelSet::new(),
            })
            .collect()
    }

    /// Runs the collectors of `scope` and records their outcome.
    async fn run(&self, scope: Scope, subject: &Subject) -> Vec<CollectorReport> {
        let reports = self.registry.collect(Some(scope), subject).await;
        self.metrics.record_reports(&reports);
        self.record_states(&reports);
        reports
    }

    fn record_states(&self, reports: &[CollectorReport]) {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        for report in reports {
            if report.status == CollectorStatus::Disabled {
                continue;
            }
            let Some(state) = states.iter_mut().find(|s| s.name == report.name) else {
                continue;
            };
            state.runs += 1;
            state.last_state = Some(report.status.state());
            state.last_detail = report.status.detail();
            state.last_latency_ms = Some(report.latency.as_secs_f64() * 1000.0);
            if report.status.is_error() {
                state.errors += 1;
                state.last_error = report.status.detail();
                state.last_error_at = Some(now.clone());
            }
        }
    }

    /// Each collector's state, in registration order.
    pub fn collector_states(&self) -> Vec<CollectorState> {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node labels in force.
    pub fn node(&self) -> Arc<ScopeEntry> {
        Arc::clone(&self.node.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether node labels were collected at least once.
    pub fn node_ready(&self) -> bool {
        self.node_ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Collects node labels again. A collector that fails now but succeeded before keeps its
    /// last good labels, with status `stale`.
    pub async fn refresh_node(&self) {
        let fresh = self.run(Scope::Node, &Subject::node()).await;
        let previous = self.node();
        let merged: Vec<CollectorReport> = fresh
            .into_iter()
            .map(|report| {
                let failed = report.status.is_error();
                let last_good = previous
                    .reports
                    .iter()
                    .find(|old| old.name == report.name && !old.labels.is_empty());
                match last_good {
                    Some(old) if failed => CollectorReport {
                        status: CollectorStatus::Stale {
                            reason: format!(
                                "refresh failed ({}); labels from {}",
                                report.status.detail().unwrap_or_default(),
                                humantime::format_rfc3339_seconds(previous.resolved_at)
                            ),
                        },
                        labels: old.labels.clone(),
                        ..report
                    },
                    _ => report,
                }
            })
            .collect();
        let entry = ScopeEntry::new(merged);
        *self.node.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entry);
        self.node_ready
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Drops every cached entry of `pid` (on an exit or exec event).
    pub fn forget(&self, pid: u32) {
        let before = self.processes.len();
        self.processes.retain(|(cached, _), _| *cached != pid);
        // Its kept answer would no longer be given; dropping it closes its proc directory.
        self.answers.remove(&pid);
        self.count_removals(before);
    }

    /// Drops the entries of `pid` collected before `monotonic_ns` (an exec at that time made
    /// them stale).
    pub fn forget_collected_before(&self, pid: u32, monotonic_ns: u64) {
        let before = self.processes.len();
        self.processes
            .retain(|(cached, _), entry| *cached != pid || entry.collected_ns >= monotonic_ns);
        self.count_removals(before);
    }

    /// Drops the cached labels of container `id` (it died, was removed or renamed).
    pub fn forget_container(&self, id: &str) {
        if self.containers.remove(id).is_some() {
            self.metrics
                .cache_removals
                .get_or_create(&Metrics::cache(Scope::Container))
                .inc();
        }
        self.update_entry_gauges();
    }

    /// Drops every container entry (changes may have been missed).
    pub fn forget_all_containers(&self) {
        self.containers.clear();
        self.update_entry_gauges();
    }

    /// Follows the invalidation notices of every collector that gives them, until shutdown.
    pub fn follow_invalidations(self: &Arc<Self>) {
        for registered in self.registry.collectors() {
            if !registered.enabled {
                continue;
            }
            let Some(mut notices) = registered.collector.invalidations() else {
                continue;
            };
            let resolver = Arc::downgrade(self);
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let notice = notices.recv().await;
                    let Some(resolver) = resolver.upgrade() else {
                        break;
                    };
                    match notice {
                        Ok(collectors::Invalidation::Container(id)) => {
                            resolver.forget_container(&id)
                        }
                        Ok(collectors::Invalidation::AllContainers) | Err(RecvError::Lagged(_)) => {
                            resolver.forget_all_containers()
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            });
        }
    }

    /// Drops entries of processes that ended or whose PID now names another process.
    pub fn sweep(&self) {
        let before = self.processes.len();
        self.processes.retain(|&(pid, start), _| {
            ProcessRef::resolve(&self.roots, pid)
                .is_ok_and(|now| now.pid == pid && now.start_ticks == start)
        });
        self.answers.retain(|_, answer| {
            let process = &answer.found.process;
            self.processes
                .peek(&(process.pid, process.start_ticks))
                .is_some()
        });
        self.count_removals(before);
    }

    fn count_removals(&self, before: usize) {
        let removed = before.saturating_sub(self.processes.len());
        if removed > 0 {
            self.metrics
                .cache_removals
                .get_or_create(&Metrics::cache(Scope::Process))
                .inc_by(removed as u64);
        }
        self.update_entry_gauges();
    }

    fn update_entry_gauges(&self) {
        self.metrics
            .cache_entries
            .get_or_create(&Metrics::cache(Scope::Process))
            .set(self.processes.len() as i64);
        self.metrics
            .cache_entries
            .get_or_create(&Metrics::cache(Scope::Container))
            .set(self.containers.len() as i64);
    }

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

    /// Resolves every process running now, `concurrency` at a time, to warm the caches.
    /// Returns how many were resolved.
    pub async fn prestart(self: &Arc<Self>, concurrency: usize) -> usize {
        let started = Instant::now();
        let pids = list_pids(&self.roots.proc);
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut count = 0;
        for pid in pids {
            let Ok(permit) = Arc::clone(&semaphore).acquire_owned().await else {
                break;
            };
            let resolver = Arc::clone(self);
            tasks.spawn(async move {
                let resolved = resolver.resolve(pid).await.is_ok();
                drop(permit);
                resolved
            });
            // Reap finished tasks as we go so the set stays small.
            while let Some(done) = tasks.try_join_next() {
                count += usize::from(done.unwrap_or(false));
            }
        }
        while let Some(done) = tasks.join_next().await {
            count += usize::from(done.unwrap_or(false));
        }
        tracing::info!(
            processes = count,
            cached = self.cached_processes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pre-resolved the running processes"
        );
        count
    }
}

/// The numeric entries of a proc root.
fn list_pids(proc_root: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Resolves `pid` once, without a daemon: node labels first, then the process (`inspect`,
/// `policy test --pid`).
pub async fn resolve_once(
    registry: Registry,
    roots: HostRoots,
    pid: u32,
) -> Result<Resolution, ResolveError> {
    let limits = ResolverLimits {
        process_entries: 1,
        container_entries: 1,
    };
    let resolver = Resolver::new(roots, registry, limits, Arc::new(Metrics::new()));
    resolver.refresh_node().await;
    resolver.resolve(pid).await.map(Arc::unwrap_or_clone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use collectors::HostRootsConfig;
    use std::path::Path;

    /// A proc tree holding one process.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("stat"), "btime 1700000000\n").unwrap();
            Self { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// Writes process `pid` started at `start` ticks, running `exe` with `cmdline`.
        fn process(&self, pid: u32, start: u64, exe: &str, cmdline: &str) {
            let dir = self.root().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("status"),
                format!(
                    "Name:\tx\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"
                ),
            )
            .unwrap();
            std::fs::write(
                dir.join("stat"),
                format!(
                    "{pid} (x) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"
                ),
            )
            .unwrap();
            std::fs::write(dir.join("cmdline"), format!("{cmdline}\0")).unwrap();
            let link = dir.join("exe");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(exe, link).unwrap();
        }

        /// A resolver of this tree running only the collectors of `registry`.
        fn resolver_with(&self, registry: Registry) -> Resolver {
            Resolver::new(
                HostRoots::resolve(&HostRootsConfig {
                    proc_root: self.root().to_owned(),
                    ..Default::default()
                }),
                registry,
                ResolverLimits::default(),
                Arc::new(Metrics::new()),
            )
        }

        fn resolver(&self) -> Resolver {
            let roots = HostRoots::resolve(&HostRootsConfig {
                proc_root: self.root().to_owned(),
                sys_root: self.root().join("sys"),
                etc_root: self.root().join("etc"),
            });
            let config = crate::config::Config::default();
            let registry = collectors::build_registry(&config.collectors, &roots).unwrap();
            Resolver::new(
                roots,
                registry,
                ResolverLimits::default(),
                Arc::new(Metrics::new()),
            )
        }
    }

    #[tokio::test]
    async fn a_reused_pid_gets_fresh_labels_and_an_unchanged_process_is_cached() {
        let proc = FakeProc::new();
        proc.process(4242, 100, "/usr/bin/first", "first --serve");
        let resolver = proc.resolver();
        let first = resolver.resolve(4242).await.unwrap();
        assert!(!first.cached);
        assert_eq!(first.labels.get("process:cmdline"), ["first --serve"]);

        // Same process (same start time): the cached labels are served.
        proc.process(4242, 100, "/usr/bin/first", "changed in place");
        let again = resolver.resolve(4242).await.unwrap();
        assert!(again.cached);
        assert_eq!(again.labels.get("process:cmdline"), ["first --serve"]);

        // The PID now names another process (new start time): nothing is inherited.
        proc.process(4242, 200, "/usr/bin/first", "second --client");
        let reused = resolver.resolve(4242).await.unwrap();
        assert!(!reused.cached);
        assert_eq!(reused.start_time_ticks, Some(200));
        assert_eq!(reused.labels.get("process:cmdline"), ["second --client"]);
    }

    #[tokio::test]
    async fn an_unrecognized_container_runtime_is_named_in_the_container_statuses() {
        let proc = FakeProc::new();
        proc.process(90, 1, "/sbin/init", "init");
        std::fs::write(
            proc.root().join("90/cgroup"),
            "0::/lxc.payload.web1/init.scope\n",
        )
        .unwrap();
        let resolution = proc.resolver().resolve(90).await.unwrap();
        let docker = resolution
            .collectors
            .iter()
            .find(|r| r.name == "docker")
            .unwrap();
        assert_eq!(docker.status.state(), "not_applicable");
        let reason = docker.status.detail().unwrap();
        assert!(
            reason.contains("unrecognized container runtime"),
            "{reason}"
        );
        assert!(reason.contains("/lxc.payload.web1/init.scope"), "{reason}");
        assert!(resolution.container.is_none());
    }

    #[tokio::test]
    async fn an_exec_is_noticed_from_the_executable_link() {
        let proc = FakeProc::new();
        proc.process(77, 5, "/bin/sh", "sh -c run");
        let resolver = proc.resolver();
        resolver.resolve(77).await.unwrap();
        proc.process(77, 5, "/usr/bin/server", "server");
        let after = resolver.resolve(77).await.unwrap();
        assert!(!after.cached);
        assert_eq!(after.labels.get("process:binary:path"), ["/usr/bin/server"]);
    }

    #[tokio::test]
    async fn forget_and_sweep_drop_entries_of_ended_processes() {
        let proc = FakeProc::new();
        proc.process(10, 1, "/bin/a", "a");
        proc.process(11, 1, "/bin/b", "b");
        let resolver = proc.resolver();
        resolver.resolve(10).await.unwrap();
        resolver.resolve(11).await.unwrap();
        assert_eq!(resolver.cached_processes(), 2);
        resolver.forget(10);
        assert_eq!(resolver.cached_processes(), 1);
        // An exec older than the collection keeps the entry; a newer one drops it.
        resolver.forget_collected_before(11, 0);
        assert_eq!(resolver.cached_processes(), 1);
        resolver.forget_collected_before(11, u64::MAX);
        assert_eq!(resolver.cached_processes(), 0);
        resolver.resolve(11).await.unwrap();
        std::fs::remove_dir_all(proc.root().join("11")).unwrap();
        resolver.sweep();
        assert_eq!(resolver.cached_processes(), 0);
        assert!(matches!(
            resolver.resolve(11).await,
            Err(ResolveError::Process(ProcessError::NoSuchProcess(11)))
        ));
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_collection() {
        let proc = FakeProc::new();
        proc.process(5, 1, "/bin/a", "a");
        let resolver = Arc::new(proc.resolver());
        let lookups: Vec<_> = (0..16)
            .map(|_| {
                let resolver = Arc::clone(&resolver);
                tokio::spawn(async move { resolver.resolve(5).await.unwrap() })
            })
            .collect();
        for lookup in lookups {
            lookup.await.unwrap();
        }
        let runs = resolver
            .collector_states()
            .into_iter()
            .find(|s| s.name == "procfs")
            .unwrap()
            .runs;
        assert_eq!(runs, 1);
    }

    #[tokio::test]
    async fn a_bounded_cache_evicts_and_counts() {
        let proc = FakeProc::new();
        for pid in 1..=40 {
            proc.process(pid, 1, "/bin/a", "a");
        }
        let mut resolver = proc.resolver();
        let metrics = Arc::new(Metrics::new());
        resolver.metrics = Arc::clone(&metrics);
        resolver.processes = scoped_cache(8, Scope::Process, &metrics);
        for pid in 1..=40 {
            resolver.resolve(pid).await.unwrap();
        }
        assert!(
            resolver.cached_processes() <= 8,
            "{}",
            resolver.cached_processes()
        );
        let evictions = metrics
            .cache_evictions
            .get_or_create(&Metrics::cache(Scope::Process))
            .get();
        assert!(evictions >= 32, "{evictions}");
    }

    /// A node collector that succeeds until it is told to fail.
    struct Flaky(std::sync::atomic::AtomicBool);

    #[async_trait::async_trait]
    impl collectors::Collector for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn scope(&self) -> Scope {
            Scope::Node
        }
        fn label_keys(&self) -> &'static [&'static str] {
            &["flaky:id"]
        }
        async fn collect(
            &self,
            _: &Subject,
        ) -> Result<collectors::Collected, collectors::CollectError> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(collectors::CollectError::failed("endpoint down"));
            }
            let mut labels = LabelSet::new();
            labels.insert("flaky:id", "i-123");
            Ok(collectors::Collected::complete(labels))
        }
    }

    #[tokio::test]
    async fn a_failed_node_refresh_keeps_the_last_good_labels_as_stale() {
        let proc = FakeProc::new();
        let flaky = Arc::new(Flaky(Default::default()));
        let mut registry = Registry::new();
        registry.register(flaky.clone(), true, Duration::from_millis(500));
        let resolver = proc.resolver_with(registry);
        assert!(!resolver.node_ready());
        resolver.refresh_node().await;
        assert!(resolver.node_ready());
        assert_eq!(resolver.node().labels.get("flaky:id"), ["i-123"]);
        flaky.0.store(true, std::sync::atomic::Ordering::SeqCst);
        resolver.refresh_node().await;
        let node = resolver.node();
        assert_eq!(node.labels.get("flaky:id"), ["i-123"]);
        let status = &node.reports[0].status;
        assert_eq!(status.state(), "stale");
        assert!(
            status.detail().unwrap().contains("endpoint down"),
            "{status:?}"
        );
        let state = &resolver.collector_states()[0];
        assert_eq!(state.errors, 1);
        assert_eq!(state.last_error.as_deref(), Some("endpoint down"));
    }

    /// A container collector whose first answer is partial (a pod status without the container
    /// yet), complete afterwards.
    struct LateStatus(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl collectors::Collector for LateStatus {
        fn name(&self) -> &'static str {
            "late"
        }
        fn scope(&self) -> Scope {
            Scope::Container
        }
        fn label_keys(&self) -> &'static [&'static str] {
            &["late:name"]
        }
        async fn collect(
            &self,
            _: &Subject,
        ) -> Result<collectors::Collected, collectors::CollectError> {
            let calls = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut labels = LabelSet::new();
            labels.insert("late:pod", "web");
            if calls == 0 {
                return Ok(collectors::Collected {
                    labels,
                    partial: Some("no status for the container yet".into()),
                });
            }
            labels.insert("late:name", "app");
            Ok(collectors::Collected::complete(labels))
        }
    }

    #[tokio::test]
    async fn a_partial_container_entry_is_collected_again_and_a_complete_one_is_kept() {
        let proc = FakeProc::new();
        proc.process(77, 100, "/usr/bin/app", "app");
        let id = "c".repeat(64);
        std::fs::write(
            proc.root().join("77/cgroup"),
            format!("0::/system.slice/docker-{id}.scope\n"),
        )
        .unwrap();
        let late = Arc::new(LateStatus(Default::default()));
        let mut registry = Registry::new();
        registry.register(late.clone(), true, Duration::from_millis(500));
        let resolver = proc.resolver_with(registry);
        let first = resolver.resolve(77).await.unwrap();
        assert!(!first.labels.contains_key("late:name"));
        resolver.forget(77);
        let second = resolver.resolve(77).await.unwrap();
        assert_eq!(second.labels.get("late:name"), ["app"]);
        resolver.forget(77);
        let third = resolver.resolve(77).await.unwrap();
        assert_eq!(third.labels.get("late:name"), ["app"]);
        assert_eq!(late.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_repeated_lookup_reuses_its_answer_until_an_entry_changes() {
        let proc = FakeProc::new();
        proc.process(60, 100, "/usr/bin/server", "server --a");
        let resolver = proc.resolver();
        let json =
            |bytes: &bytes::Bytes| -> serde_json::Value { serde_json::from_slice(bytes).unwrap() };
        let first = resolver.resolve_json(60).await.unwrap();
        assert_eq!(json(&first)["cached"], false);
        let second = resolver.resolve_json(60).await.unwrap();
        let third = resolver.resolve_json(60).await.unwrap();
        // The very same bytes: nothing was merged or serialized again.
        assert_eq!(second.as_ptr(), third.as_ptr());
        assert_eq!(json(&third)["cached"], true);
        // Both through JSON text: a float does not always survive the parse bit for bit.
        let resolved = serde_json::to_vec(&*resolver.resolve(60).await.unwrap()).unwrap();
        assert_eq!(json(&third), json(&resolved.into()));

        // New node labels (none were collected yet): a new answer, with them.
        assert!(json(&third)["labels"]["linuxos:kernel:release"].is_null());
        resolver.refresh_node().await;
        let after_refresh = resolver.resolve_json(60).await.unwrap();
        assert_ne!(after_refresh.as_ptr(), third.as_ptr());
        assert!(json(&after_refresh)["labels"]["linuxos:kernel:release"].is_array());
        assert_eq!(
            json(&after_refresh)["labels"]["process:cmdline"],
            serde_json::json!(["server --a"])
        );

        // The process exec'd: collected again, and the new answer kept.
        proc.process(60, 100, "/usr/bin/other", "other --b");
        let after_exec = json(&resolver.resolve_json(60).await.unwrap());
        assert_eq!(after_exec["cached"], false);
        assert_eq!(
            after_exec["labels"]["process:cmdline"],
            serde_json::json!(["other --b"])
        );
        let again = json(&resolver.resolve_json(60).await.unwrap());
        assert_eq!(again["cached"], true);
        assert_eq!(again["labels"], after_exec["labels"]);

        // A reused PID is another process, never the kept answer.
        proc.process(60, 200, "/usr/bin/server", "third");
        let reused = json(&resolver.resolve_json(60).await.unwrap());
        assert_eq!(reused["start_time_ticks"], 200);
        assert_eq!(
            reused["labels"]["process:cmdline"],
            serde_json::json!(["third"])
        );
    }

    #[tokio::test]
    async fn a_kept_answer_follows_a_real_process_through_exec_and_exit() {
        use std::io::Write as _;
        let roots = HostRoots::default();
        let config = crate::config::Config::default();
        let registry = collectors::build_registry(&config.collectors, &roots).unwrap();
        let resolver = Resolver::new(
            roots,
            registry,
            ResolverLimits::default(),
            Arc::new(Metrics::new()),
        );
        // A shell that replaces itself with `sleep` when told to.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let json =
            |bytes: &bytes::Bytes| -> serde_json::Value { serde_json::from_slice(bytes).unwrap() };
        let path = |answer: &serde_json::Value| answer["labels"]["process:binary:path"].clone();
        let first = resolver.resolve_json(pid).await.unwrap();
        let second = resolver.resolve_json(pid).await.unwrap();
        let third = resolver.resolve_json(pid).await.unwrap();
        assert_eq!(second.as_ptr(), third.as_ptr(), "the kept answer is given");
        assert_eq!(json(&third)["cached"], true);
        assert_eq!(path(&json(&third)), path(&json(&first)));
        assert!(resolver.answers.get(&pid).unwrap().dir.is_some());

        // exec: the kept answer is not given; the process is collected again.
        let shell = path(&json(&third));
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        let mut after_exec = None;
        for _ in 0..200 {
            let answer = json(&resolver.resolve_json(pid).await.unwrap());
            if path(&answer) != shell {
                after_exec = Some(answer);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after_exec = after_exec.expect("the exec is seen");
        assert!(
            path(&after_exec)[0].as_str().unwrap().ends_with("/sleep"),
            "{after_exec}"
        );
        resolver.resolve_json(pid).await.unwrap();
        let kept = resolver.resolve_json(pid).await.unwrap();
        assert_eq!(path(&json(&kept)), path(&after_exec));

        // exit: never the kept answer.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(
            resolver.resolve_json(pid).await,
            Err(ResolveError::Process(ProcessError::NoSuchProcess(_)))
        ));
        // The sweep drops its entries and its kept answer (closing its directory).
        assert!(resolver.answers.get(&pid).is_some());
        resolver.sweep();
        assert!(resolver.answers.get(&pid).is_none());
    }

    #[tokio::test]
    async fn a_thread_id_resolves_to_its_cached_process() {
        let proc = FakeProc::new();
        proc.process(50, 100, "/usr/bin/server", "server");
        // Thread 51 of process 50: its own stat, its status naming the thread group, and both
        // counting the group's two threads.
        proc.process(51, 101, "/usr/bin/server", "server");
        let status = proc.root().join("51/status");
        let text = std::fs::read_to_string(&status).unwrap();
        std::fs::write(&status, text.replace("Tgid:\t51", "Tgid:\t50")).unwrap();
        for pid in [50, 51] {
            let stat = proc.root().join(format!("{pid}/stat"));
            let text = std::fs::read_to_string(&stat).unwrap();
            std::fs::write(&stat, text.replace(" 20 0 1 0 ", " 20 0 2 0 ")).unwrap();
        }
        let resolver = proc.resolver();
        assert_eq!(resolver.resolve(50).await.unwrap().pid, 50);
        let thread = resolver.resolve(51).await.unwrap();
        assert_eq!((thread.pid, thread.cached), (50, true));
        assert_eq!(resolver.cached_pids(), vec![50]);
    }
}
