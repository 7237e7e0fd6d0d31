//! The attached kernel hook as the agent drives it: each resolved process's policies compiled
//! into a rule set ([`compile`]) and recorded as the verdict of its current image, the agent's
//! own process exempted, unused rule sets removed, and a clean detach at shutdown.
//!
//! A verdict names the process's start time and exec generation as the kernel counts them
//! (read before the verdict is written, from the kernel's own entry): the kernel ignores it once
//! the process has exec'd or its PID names another process. A verdict is written only from
//! labels collected after the process's last exec, never over a newer one (newer policies, then
//! newer labels), and never from a provisional answer; when a collector that a policy depends on
//! failed, the process gets a rule set that refuses everything until it can be judged.

pub mod compile;
mod images;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collectors::{CollectorStatus, HostRoots, KeyCatalog, Scope};
use kernel_hook::maps::{POLICY_NONE, Prefix, RuleList, VerdictEntry, ruleset};
use kernel_hook::{Hook, HookError, Verdict};
use selectors::{Action, PolicySet, PolicyStore};

use crate::destinations::Snapshot;
use crate::resolver::{Resolution, Resolver};
use compile::{CompiledRuleset, PolicyTable};

/// The hook's verdict for a policy action: only `deny` refuses; `log` lets the call through.
pub fn verdict_of(action: Action) -> Verdict {
    match action {
        Action::Deny => Verdict::Deny,
        Action::Allow | Action::Log => Verdict::Allow,
    }
}

/// What [`Enforcer::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The process's current image has rule set `ruleset` now.
    Judged {
        /// The rule set.
        ruleset: u32,
    },
    /// A collector a policy depends on failed: the process is refused everywhere until it can
    /// be judged.
    Unjudgeable {
        /// The collector.
        collector: &'static str,
    },
    /// The labels were collected before the process's last exec (at `exec_ns`): collect again.
    Stale {
        /// The exec's monotonic time.
        exec_ns: u64,
    },
    /// A newer verdict is recorded, or the PID names another process now.
    Superseded,
    /// The answer may still change (a hash being computed): ask again shortly.
    Provisional,
    /// Not enforcing, or the process is gone.
    Nothing,
}

/// The hook, shared by the event pipeline, the policy reloader and shutdown.
pub struct Enforcer {
    inner: Mutex<Inner>,
    enforce: bool,
    catalog: Arc<KeyCatalog>,
    roots: HostRoots,
    /// The cgroup the programs are attached to.
    cgroup_root: std::path::PathBuf,
}

struct Inner {
    hook: Option<Hook>,
    table: PolicyTable,
    /// Every rule set this agent defined in the kernel, with its id.
    rulesets: HashMap<CompiledRuleset, u32>,
    /// The prefixes of each rule set id (to remove it).
    prefixes: HashMap<u32, Vec<Prefix>>,
    next_id: u32,
    /// The label keys the current policies depend on, for one policy set (by address).
    keys: (usize, Vec<String>),
    /// Who is at the destinations the node knows, for destination selectors.
    destinations: Arc<Snapshot>,
    /// The exec-time identities given a rule set.
    images: images::Images,
}

impl Enforcer {
    /// Takes over an attached hook: in enforce mode it judges connects, with `pending` for
    /// processes not judged yet. The agent's own process is exempt from then on.
    pub fn new(
        mut hook: Hook,
        enforce: bool,
        pending: Action,
        catalog: Arc<KeyCatalog>,
        roots: HostRoots,
    ) -> Result<Self, HookError> {
        hook.set_mode(enforce, verdict_of(pending))?;
        exempt_self(&mut hook)?;
        let cgroup_root = hook.cgroup_root().to_owned();
        // A pinned hook keeps a previous agent's rule sets: number ours after them.
        let next_id = hook
            .ruleset_ids()
            .into_iter()
            .max()
            .map_or(ruleset::FIRST, |max| (max + 1).max(ruleset::FIRST));
        Ok(Self {
            inner: Mutex::new(Inner {
                hook: Some(hook),
                table: PolicyTable::default(),
                rulesets: HashMap::new(),
                prefixes: HashMap::new(),
                next_id,
                keys: (0, Vec::new()),
                destinations: Arc::new(Snapshot::default()),
                images: images::Images::default(),
            }),
            enforce,
            catalog,
            roots,
            cgroup_root,
        })
    }

    /// Whether connects are judged.
    pub fn enforcing(&self) -> bool {
        self.enforce
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup_root(&self) -> &std::path::Path {
        &self.cgroup_root
    }

    /// Gives a container whose cgroup `dir` was just made, before its first process runs, the
    /// rule set its `labels` (as the runtime describes it; `node` labels added) decide, when
    /// the policies decide it from them alone.
    pub fn judge_container(
        &self,
        starting: watch::Starting<'_>,
        node: &labels::LabelSet,
        set: &Arc<PolicySet>,
        version: u64,
    ) {
        if !self.enforce {
            return;
        }
        let watch::Starting {
            dir,
            identity,
            prospect,
        } = starting;
        let mut labels = prospect.labels.clone();
        labels.merge(node);
        labels.insert("process:container:id", identity.id.clone());
        let trust = self.catalog.classify(&labels, &[], true);
        let catalog = &self.catalog;
        // Known: what the describing collector settles, the node's labels, and the
        // container's own keys; Kubernetes' keys too, as absent, outside pods. Other keys are
        // not known yet.
        let known = |key: &str| {
            key.starts_with("process:container:")
                || catalog.scope(key) == Some(Scope::Node)
                || prospect.settles(key)
                || (identity.pod_uid.is_none() && catalog.owner(key) == Some("kubernetes"))
        };
        let Some(evaluation) = set.evaluate_determined(&labels, Some(&trust), &known) else {
            return;
        };
        let Some(cgroup_id) = dir_id(dir) else {
            return;
        };
        let mut inner = self.lock();
        let destinations = Arc::clone(&inner.destinations);
        let compiled = compile::compile(&evaluation, set, &mut inner.table, &destinations.known);
        let alive = images::Alive::Cgroup(dir.to_owned());
        inner.set_image(cgroup_id, None, Some(compiled), alive, version);
        tracing::debug!(container = identity.id, "judged before its first process");
    }

    /// The rule set the kernel judges process `pid` by now, when the agent's verdict for its
    /// current image is recorded.
    pub fn ruleset_of(&self, pid: u32) -> Option<u32> {
        let inner = self.lock();
        let hook = inner.hook.as_ref()?;
        let state = hook.process(pid).ok()??;
        let verdict = hook.verdict(pid).ok()??;
        (verdict.start == state.start && verdict.generation == state.generation)
            .then_some(verdict.ruleset)
    }

    /// The name of the policy the kernel reports as number `id` of rule set `ruleset`.
    /// `None` for a rule set this agent did not define (a previous agent's, adopted with the
    /// pins, whose numbers were that agent's), rather than a wrong name.
    pub fn policy_name(&self, ruleset: u32, id: u16) -> Option<Arc<str>> {
        let inner = self.lock();
        if !inner.prefixes.contains_key(&ruleset) {
            return None;
        }
        inner.table.name(id).cloned()
    }

    /// Records the verdict of `resolution`'s process for its current image, from `set`
    /// (policy version `version`).
    pub fn apply(&self, resolution: &Resolution, set: &Arc<PolicySet>, version: u64) -> Applied {
        if !self.enforce {
            return Applied::Nothing;
        }
        let Some(start) = resolution.start_time_ticks else {
            return Applied::Nothing;
        };
        let pid = resolution.pid;
        let mut inner = self.lock();
        let Some(hook) = inner.hook.as_mut() else {
            return Applied::Nothing;
        };
        let state = match hook.process(pid) {
            Ok(Some(state)) => state,
            Ok(None) => match hook.introduce(pid, start) {
                Ok(state) => state,
                Err(error) => return warn(pid, &error),
            },
            Err(error) => return warn(pid, &error),
        };
        if state.start != start {
            return Applied::Superseded;
        }
        if resolution.collected_ns < state.exec_ns {
            return Applied::Stale {
                exec_ns: state.exec_ns,
            };
        }
        if resolution.provisional() {
            return Applied::Provisional;
        }
        let failed = inner.failed_dependency(resolution, set, &self.catalog);
        let compiled = match failed {
            Some(_) => CompiledRuleset::everywhere(Verdict::Deny, POLICY_NONE),
            None => {
                let evaluation = set.evaluate_with(&resolution.labels, &resolution.trust);
                let destinations = Arc::clone(&inner.destinations);
                compile::compile(&evaluation, set, &mut inner.table, &destinations.known)
            }
        };
        if compiled.truncated {
            tracing::warn!(
                pid,
                "the policies give this process more rules for one address range than the \
                 kernel holds ({}); the excess is refused",
                kernel_hook::maps::RULES_PER_PREFIX
            );
        }
        let id = match inner.intern(compiled) {
            Ok(id) => id,
            Err(error) => return warn(pid, &error),
        };
        let stamp = (version << 40) | ((resolution.collected_ns >> 10) & ((1 << 40) - 1));
        let Some(hook) = inner.hook.as_mut() else {
            return Applied::Nothing;
        };
        if let Ok(Some(recorded)) = hook.verdict(pid)
            && recorded.start == state.start
            && recorded.generation == state.generation
            && recorded.stamp > stamp
        {
            return Applied::Superseded;
        }
        let verdict = VerdictEntry {
            start: state.start,
            stamp,
            generation: state.generation,
            ruleset: id,
        };
        if let Err(error) = hook.set_verdict(pid, verdict) {
            return warn(pid, &error);
        }
        self.exec_images(&mut inner, resolution, set, failed.is_some(), version);
        match failed {
            Some(collector) => Applied::Unjudgeable { collector },
            None => Applied::Judged { ruleset: id },
        }
    }

    /// Compiles destination selectors against `snapshot` from now on. Returns whether the
    /// policies of `set` have destination selectors (their processes are then to be judged
    /// again).
    pub fn set_destinations(&self, snapshot: Arc<Snapshot>, set: &PolicySet) -> bool {
        self.lock().destinations = snapshot;
        set.policies()
            .iter()
            .any(|policy| policy.to.iter().any(|to| !to.selectors.is_empty()))
    }

    /// Judges every cached process again (after a policy reload or the pre-resolution), then
    /// removes the rule sets no process uses any more.
    pub async fn apply_all(&self, resolver: &Resolver, policies: &PolicyStore) {
        if !self.enforce {
            return;
        }
        let version = policies.status().reloads;
        for pid in resolver.cached_pids() {
            enforce(self, resolver, policies, pid).await;
        }
        {
            let mut inner = self.lock();
            let Inner { hook, images, .. } = &mut *inner;
            if let Some(hook) = hook.as_mut() {
                images.prune(hook, Some(version));
            }
        }
        self.collect_garbage();
    }

    /// Removes the rule sets that no process, verdict or exec-time identity refers to.
    pub fn collect_garbage(&self) {
        let mut inner = self.lock();
        let Inner {
            hook,
            rulesets,
            prefixes,
            images,
            ..
        } = &mut *inner;
        let Some(hook) = hook.as_mut() else {
            return;
        };
        // Containers and files that are gone.
        images.prune(hook, None);
        let in_use = hook.rulesets_in_use();
        rulesets.retain(|_, id| {
            if in_use.contains(id) {
                return true;
            }
            let _ = hook.remove_ruleset(*id, prefixes.get(id).map_or(&[][..], Vec::as_slice));
            prefixes.remove(id);
            false
        });
        // A previous agent's (a pinned hook), which this one does not know.
        for id in hook.ruleset_ids() {
            if !in_use.contains(&id) && !prefixes.contains_key(&id) {
                hook.purge_ruleset(id);
            }
        }
    }

    /// Detaches the programs now (unless they are pinned).
    pub fn detach(&self) {
        if let Some(hook) = self.lock().hook.take() {
            let pinned = hook.pin_dir().is_some();
            hook.detach();
            if pinned {
                tracing::info!("kernel hook left pinned: enforcement continues without the agent");
            } else {
                tracing::info!("kernel hook detached");
            }
        }
    }

    /// Gives the exec-time identities of `resolution`'s process the rule set every process
    /// with them gets from its first instruction, where the policies decide it from what the
    /// kernel knows at `exec` (and node labels) alone:
    ///
    /// - its container's cgroup (a runtime confirmed the container, in a cgroup v2 of its
    ///   own): container labels;
    /// - its executable (hashed soundly: its device, inode and change time name those bytes):
    ///   the binary's hash, in any cgroup;
    /// - both: its cgroup (a container's, or its own) and its executable.
    ///
    /// When a collector the policies depend on `failed`, the container's processes are refused
    /// everywhere from their start, until one of them can be judged.
    fn exec_images(
        &self,
        inner: &mut Inner,
        resolution: &Resolution,
        set: &Arc<PolicySet>,
        failed: bool,
        version: u64,
    ) {
        let catalog = &self.catalog;
        let node = |key: &str| catalog.scope(key) == Some(Scope::Node);
        let container_keys = |key: &str| {
            key.starts_with("process:container:") || catalog.scope(key) == Some(Scope::Container)
        };
        let binary = |key: &str| key == "process:binary:hash";
        let confirmed = resolution.trust.get("process:container:id") == labels::Trust::Runtime;
        let container_dir = resolution
            .container
            .as_ref()
            .filter(|container| container.hierarchy.is_empty() && (confirmed || failed))
            .map(|container| collectors::cgroup::cgroup_dir(&self.roots, container));
        if let Some(dir) = &container_dir {
            let known = |key: &str| container_keys(key) || node(key);
            let compiled = if failed {
                Some(CompiledRuleset::everywhere(Verdict::Deny, POLICY_NONE))
            } else {
                self.determined(inner, resolution, set, &known)
            };
            if let Some(cgroup_id) = dir_id(dir) {
                let alive = images::Alive::Cgroup(dir.clone());
                inner.set_image(cgroup_id, None, compiled, alive, version);
            }
        }
        let executable = resolution.collectors.iter().find_map(|r| r.executable);
        let sound = resolution.trust.get("process:binary:hash") != labels::Trust::SelfReported;
        let (Some(executable), false, true) = (executable, failed, sound) else {
            return;
        };
        let alive = images::Alive::File;
        let known = |key: &str| binary(key) || node(key);
        let compiled = self.determined(inner, resolution, set, &known);
        inner.set_image(0, Some(&executable), compiled, alive, version);
        // With its cgroup: a container's, or for a process outside containers its own.
        let own = || {
            let path = resolution.labels.get("process:cgroup").first()?.clone();
            let root = collectors::cgroup::v2_root(&self.roots);
            Some(root.join(path.trim_start_matches('/')))
        };
        let dir = match (&resolution.container, container_dir) {
            (Some(_), Some(dir)) => dir,
            (Some(_), None) => return,
            (None, _) => match own() {
                Some(dir) => dir,
                None => return,
            },
        };
        let known = |key: &str| binary(key) || container_keys(key) || node(key);
        let compiled = self.determined(inner, resolution, set, &known);
        let alive = images::Alive::Cgroup(dir.clone());
        if let Some(cgroup_id) = dir_id(&dir) {
            inner.set_image(cgroup_id, Some(&executable), compiled, alive, version);
        }
    }

    /// The rule set every process whose labels on the `known` keys are `resolution`'s gets,
    /// when the policies decide it from those keys alone.
    fn determined(
        &self,
        inner: &mut Inner,
        resolution: &Resolution,
        set: &Arc<PolicySet>,
        known: &dyn Fn(&str) -> bool,
    ) -> Option<CompiledRuleset> {
        let evaluation =
            set.evaluate_determined(&resolution.labels, Some(&resolution.trust), known)?;
        let destinations = Arc::clone(&inner.destinations);
        Some(compile::compile(
            &evaluation,
            set,
            &mut inner.table,
            &destinations.known,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Gives the exec-time identity (`cgroup_id`, `executable`) rule set `compiled`, or takes
    /// it away (`None`: the policies do not decide such processes from it alone).
    fn set_image(
        &mut self,
        cgroup_id: u64,
        executable: Option<&collectors::procfs::FileIdentity>,
        compiled: Option<CompiledRuleset>,
        alive: images::Alive,
        version: u64,
    ) {
        let key = images::key_of(cgroup_id, executable);
        let id = match compiled.map(|compiled| self.intern(compiled)) {
            Some(Ok(id)) => Some(id),
            Some(Err(error)) => {
                tracing::warn!(
                    "cannot define a rule set: {}",
                    collectors::error_chain(&error)
                );
                None
            }
            None => None,
        };
        let Some(hook) = self.hook.as_mut() else {
            return;
        };
        match id {
            Some(id) => {
                if let Err(error) = self.images.put(hook, key, id, alive, version) {
                    tracing::warn!(
                        "cannot record an exec-time identity: {}",
                        collectors::error_chain(&error)
                    );
                }
            }
            None => self.images.remove(hook, &key),
        }
    }

    /// The id of `compiled`, defined in the kernel if it is new.
    fn intern(&mut self, compiled: CompiledRuleset) -> Result<u32, HookError> {
        if let Some(id) = self.rulesets.get(&compiled) {
            return Ok(*id);
        }
        let id = self.next_id;
        let lists: Vec<(Prefix, RuleList)> = compiled
            .prefixes
            .iter()
            .filter_map(|(prefix, rules)| Some((*prefix, RuleList::new(rules)?)))
            .collect();
        if let Some(hook) = self.hook.as_mut() {
            hook.put_ruleset(id, compiled.default, &lists)?;
        }
        self.next_id = self.next_id.wrapping_add(1).max(ruleset::FIRST);
        self.prefixes
            .insert(id, compiled.prefixes.iter().map(|(p, _)| *p).collect());
        self.rulesets.insert(compiled, id);
        Ok(id)
    }

    /// The collector a policy of `set` depends on that failed in `resolution`, if any.
    fn failed_dependency(
        &mut self,
        resolution: &Resolution,
        set: &Arc<PolicySet>,
        catalog: &KeyCatalog,
    ) -> Option<&'static str> {
        let address = Arc::as_ptr(set) as usize;
        if self.keys.0 != address {
            self.keys = (address, policy_keys(set));
        }
        resolution.collectors.iter().find_map(|report| {
            let CollectorStatus::Failed { .. } = report.status else {
                return None;
            };
            self.keys
                .1
                .iter()
                .any(|key| catalog.owner(key) == Some(report.name))
                .then_some(report.name)
        })
    }
}

/// The cgroup id of the cgroup directory `dir` (its inode number), when it exists.
fn dir_id(dir: &std::path::Path) -> Option<u64> {
    std::fs::metadata(dir)
        .ok()
        .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta))
}

/// Every label key a policy of `set` tests, for the source or a destination.
fn policy_keys(set: &PolicySet) -> Vec<String> {
    let mut keys: Vec<String> = set
        .policies()
        .iter()
        .flat_map(|policy| {
            let destinations = policy.to.iter().flat_map(|to| to.selectors.iter());
            policy.selectors.iter().chain(destinations)
        })
        .flat_map(|selector| selector.constraints.iter().map(|c| c.key.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn warn(pid: u32, error: &HookError) -> Applied {
    let error = collectors::error_chain(error);
    tracing::warn!(pid, "cannot record the verdict: {error}");
    Applied::Nothing
}

/// Exempts the agent's own process: its connects (to the kubelet, cloud metadata services) are
/// never refused, whatever the pending verdict.
fn exempt_self(hook: &mut Hook) -> Result<(), HookError> {
    let pid = std::process::id();
    let start = own_start_ticks().unwrap_or(0);
    let state = hook.introduce(pid, start)?;
    hook.set_verdict(
        pid,
        VerdictEntry {
            start: state.start,
            stamp: u64::MAX,
            generation: state.generation,
            ruleset: ruleset::EXEMPT,
        },
    )
}

/// This process's start time in clock ticks (`/proc/self/stat` field 22).
fn own_start_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Resolves `pid` and records its verdict, asking again while the answer is provisional or
/// older than the process's last exec (a few times, backing off). Returns the answer judged
/// (or, when not enforcing, the one given), for callers that publish it; `None` when there is
/// none to give (the process is gone, another took its PID, or no answer could be judged).
pub async fn enforce(
    enforcer: &Enforcer,
    resolver: &Resolver,
    policies: &PolicyStore,
    pid: u32,
) -> Option<Arc<Resolution>> {
    const RETRIES: [Duration; 5] = [
        Duration::from_millis(10),
        Duration::from_millis(50),
        Duration::from_millis(250),
        Duration::from_secs(1),
        Duration::from_secs(5),
    ];
    for delay in std::iter::once(Duration::ZERO).chain(RETRIES) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Ok(resolution) = resolver.resolve(pid).await else {
            return None;
        };
        let (set, version) = (policies.current(), policies.status().reloads);
        match enforcer.apply(&resolution, &set, version) {
            Applied::Stale { exec_ns } => match resolution.start_time_ticks {
                Some(start) => resolver.forget_collected_before(pid, start, exec_ns),
                None => resolver.forget(pid),
            },
            Applied::Provisional => {}
            Applied::Unjudgeable { collector } => {
                tracing::warn!(
                    pid,
                    collector,
                    "a collector the policies depend on failed: the process is refused until \
                     it can be judged"
                );
                resolver.forget(pid);
            }
            Applied::Judged { .. } | Applied::Nothing => return Some(resolution),
            Applied::Superseded => return None,
        }
    }
    None
}

/// A shared enforcer, when the hook is attached.
pub type SharedEnforcer = Option<Arc<Enforcer>>;
