//! The procfs collector: every `process:*` label, read from `<proc>/<pid>/`.
//!
//! Values are derived as `docs/labels.md` states. Raw bytes (arguments, paths, environment) are
//! kept losslessly with [`escape_bytes`]; `process:cmdline` and `process:env:*` values are cut at
//! [`ProcfsConfig::max_value_bytes`] with a visible marker.

mod accounts;
mod binary_hash;
mod capabilities;
pub(crate) mod environment;
mod lineage;
pub mod sockets;

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use binary_hash::{
    BinaryHash, BinaryHasher, DEFAULT_MAX_HASH_BYTES, FileIdentity, HashFailure, Lookup, sha256_of,
};
pub use capabilities::capability_names;
pub use lineage::{
    Ancestor, Ancestry, DEFAULT_ANCESTOR_DEPTH, DEFAULT_LINEAGE_ENTRIES, ExecId, Image, Lineage,
    MAX_ANCESTOR_DEPTH, ProcessLineage,
};

use crate::builtin::Builtin;
use crate::cgroup::{CgroupInfo, parse_cgroup_file};
use crate::collector::{CollectError, Collected, Collector, KeySpec, Scope, Subject};
use crate::config::{DEFAULT_TIMEOUT, Enabled, duration, section};
use crate::error::BoxError;
use crate::host::HostRoots;
use crate::process::{
    ProcDir, ProcessRef, is_gone, parse_start_ticks, read_proc_file, stat_field, status_field,
};
use crate::redaction::{Redactor, default_redact_patterns};
use accounts::IdNames;
use labels::Trust::{Kernel, SelfReported};
use labels::{LabelSet, escape_bytes, escape_bytes_limited};

/// Default cut-off for `process:cmdline` and each `process:env:*` value, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4096;
/// Default number of binary hashes kept.
pub const DEFAULT_HASH_CACHE_ENTRIES: usize = 4096;
/// Default wait for an uncached binary hash.
pub const DEFAULT_HASH_WAIT: Duration = Duration::from_millis(350);
/// At most this much of `cmdline` or `environ` is read (the kernel's argument limit is 2 MiB).
const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;

/// The `collectors.procfs` configuration section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcfsConfig {
    /// Run the collector (default true).
    pub enabled: Enabled,
    /// Deadline for one process (default 500ms).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Export `process:env:*` labels (default false).
    pub extract_envs: bool,
    /// Key patterns whose values are redacted (`*` wildcard, case-insensitive; default
    /// [`DEFAULT_REDACT_PATTERNS`](crate::redaction::DEFAULT_REDACT_PATTERNS)).
    pub redact_env_patterns: Vec<String>,
    /// Keys never redacted even when they match a pattern.
    pub allow_envs: Vec<String>,
    /// Most `process:env:*` labels of one process (default 256); the rest are left out.
    pub max_env_labels: usize,
    /// Most bytes of `process:env:*` values of one process (default 64 KiB); the rest are left
    /// out.
    pub max_env_bytes: usize,
    /// Flags whose value `process:cmdline` hides (`--password=…`, `--token …`; a one-letter
    /// flag such as `-p` also hides an attached value, `-psecret`). Default
    /// [`DEFAULT_SECRET_FLAGS`](crate::redaction::DEFAULT_SECRET_FLAGS).
    pub secret_flags: Vec<String>,
    /// Cut-off for cmdline and env values in bytes (default 4096).
    pub max_value_bytes: usize,
    /// Number of binary hashes cached (default 4096).
    pub hash_cache_entries: usize,
    /// Executables larger than this many bytes are not hashed (default 512 MiB).
    pub max_hash_bytes: u64,
    /// How long a lookup waits for the hash of a binary not yet in the cache (default 350ms,
    /// below the collector's deadline). Past it the other labels are returned (status partial)
    /// and the hash goes on in the background into the cache.
    #[serde(with = "crate::config::duration_or_zero")]
    pub hash_wait: Duration,
    /// How many ancestors `process:ancestor:*` give, nearest first (default 8, at most 32; 0:
    /// none).
    pub ancestor_depth: usize,
    /// How many processes' lineage is kept (default 65536): with the kernel hook, each keeps
    /// the ancestors it was born with, even once they exited.
    pub lineage_entries: usize,
    /// Key globs (`*` wildcard) whose labels are kept; empty (the default): all.
    pub include_keys: Vec<String>,
    /// Key globs whose labels are left out (default none).
    pub exclude_keys: Vec<String>,
}

impl Default for ProcfsConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Always,
            timeout: DEFAULT_TIMEOUT,
            extract_envs: false,
            redact_env_patterns: default_redact_patterns(),
            allow_envs: Vec::new(),
            max_env_labels: 256,
            max_env_bytes: 64 * 1024,
            secret_flags: crate::redaction::default_secret_flags(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            hash_cache_entries: DEFAULT_HASH_CACHE_ENTRIES,
            max_hash_bytes: DEFAULT_MAX_HASH_BYTES,
            hash_wait: DEFAULT_HASH_WAIT,
            ancestor_depth: DEFAULT_ANCESTOR_DEPTH,
            lineage_entries: DEFAULT_LINEAGE_ENTRIES,
            include_keys: Vec::new(),
            exclude_keys: Vec::new(),
        }
    }
}

section!(ProcfsConfig);

/// Every key this collector emits, with the trust class of its values.
pub const LABEL_KEYS: &[KeySpec] = &[
    KeySpec::new("process:pid", Kernel),
    KeySpec::new("process:name", SelfReported),
    KeySpec::new("process:cmdline", SelfReported),
    KeySpec::new("process:uid", Kernel),
    KeySpec::new("process:uid:real", Kernel),
    KeySpec::new("process:uid:effective", Kernel),
    KeySpec::new("process:gid", Kernel),
    KeySpec::new("process:gid:real", Kernel),
    KeySpec::new("process:gid:effective", Kernel),
    KeySpec::new("process:gid:additional", Kernel),
    // `self` for a process in a mount namespace of its own, where it chooses what a path names.
    KeySpec::new("process:binary:path", Kernel),
    // `self` when the bytes hashed may differ from the ones executed (FUSE, network filesystems).
    KeySpec::new("process:binary:hash", Kernel),
    KeySpec::new("process:env:<KEY>", SelfReported),
    KeySpec::new("process:ppid", Kernel),
    KeySpec::new("process:start-time", Kernel),
    KeySpec::new("process:cwd", SelfReported),
    KeySpec::new("process:user:name", Kernel),
    KeySpec::new("process:group:name", Kernel),
    // `runtime` once a container runtime confirmed the process is in that container.
    KeySpec::new("process:container:id", SelfReported),
    KeySpec::new("process:cgroup", Kernel),
    KeySpec::new("process:capabilities:effective", Kernel),
    KeySpec::new("process:parent:name", SelfReported),
    KeySpec::new("process:parent:binary:path", Kernel),
    KeySpec::new("process:exec-id", Kernel),
    KeySpec::new("process:parent:exec-id", Kernel),
    // Nearest first. An ancestor's name is its own choice; its path is as trustworthy as a
    // process's own (`self` when one ran in a mount namespace of its own).
    KeySpec::new("process:ancestor:name", SelfReported),
    KeySpec::new("process:ancestor:binary:path", Kernel),
    // What a process listens on is its own choice.
    KeySpec::new("process:network:binding", SelfReported),
];

/// Reads `process:*` labels from procfs.
pub struct ProcfsCollector {
    inner: Arc<Inner>,
}

struct Inner {
    roots: HostRoots,
    extract_envs: bool,
    redactor: Redactor,
    max_value_bytes: usize,
    max_env_labels: usize,
    max_env_bytes: usize,
    secret_flags: Vec<String>,
    hashes: BinaryHasher,
    users: IdNames,
    groups: IdNames,
    boot_time: OnceLock<Option<u64>>,
    /// The host's mount namespace (`None` on a recorded tree).
    host_mount_namespace: OnceLock<Option<std::path::PathBuf>>,
    hash_wait: Duration,
    lineage: Arc<Lineage>,
}

impl ProcfsCollector {
    /// A collector reading through `roots` with `config`.
    pub fn new(roots: HostRoots, config: &ProcfsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                users: IdNames::new(roots.etc.join("passwd")),
                groups: IdNames::new(roots.etc.join("group")),
                lineage: Arc::new(Lineage::new(
                    roots.clone(),
                    config.ancestor_depth,
                    config.lineage_entries,
                )),
                roots,
                extract_envs: config.extract_envs,
                redactor: Redactor::new(&config.redact_env_patterns, &config.allow_envs),
                max_value_bytes: config.max_value_bytes,
                max_env_labels: config.max_env_labels,
                max_env_bytes: config.max_env_bytes,
                secret_flags: config.secret_flags.clone(),
                hashes: BinaryHasher::new(config.hash_cache_entries, config.max_hash_bytes),
                boot_time: OnceLock::new(),
                host_mount_namespace: OnceLock::new(),
                hash_wait: config.hash_wait,
            }),
        }
    }

    /// The binary hashes (shared by all lookups of this collector).
    pub fn hasher(&self) -> &BinaryHasher {
        &self.inner.hashes
    }

    /// The lineage of the node's processes, which the kernel hook's events complete.
    pub fn lineage(&self) -> &Arc<Lineage> {
        &self.inner.lineage
    }

    /// Collects the labels of `process` without an async runtime (blocking file I/O; hashes
    /// the binary in this thread, however long it takes).
    pub fn collect_blocking(&self, process: &ProcessRef) -> Result<Collected, CollectError> {
        let (mut collected, kernel_thread) = self.inner.collect(process, None)?;
        if !kernel_thread {
            let hash = self.inner.hashes.hash_now(&self.inner.exe(process));
            self.inner.add_hash(process, hash, &mut collected);
        }
        Ok(collected)
    }
}

impl Builtin for ProcfsCollector {
    type Config = ProcfsConfig;

    fn build(config: &ProcfsConfig, roots: &HostRoots) -> Result<Self, BoxError> {
        if config.ancestor_depth > MAX_ANCESTOR_DEPTH {
            return Err(format!(
                "ancestorDepth: {} is more than the most, {MAX_ANCESTOR_DEPTH}",
                config.ancestor_depth
            )
            .into());
        }
        Ok(Self::new(roots.clone(), config))
    }
}

#[async_trait]
impl Collector for ProcfsCollector {
    fn name(&self) -> &'static str {
        "procfs"
    }

    fn scope(&self) -> Scope {
        Scope::Process
    }

    fn label_keys(&self) -> &'static [KeySpec] {
        LABEL_KEYS
    }

    fn lineage(&self) -> Option<Arc<Lineage>> {
        Some(Arc::clone(&self.inner.lineage))
    }

    async fn collect(&self, subject: &Subject) -> Result<Collected, CollectError> {
        let Some(process) = subject.process else {
            return Err(CollectError::NotApplicable("no process given".to_owned()));
        };
        let inner = Arc::clone(&self.inner);
        let cgroups = subject.cgroups.clone();
        // procfs reads are blocking syscalls: one blocking task per process, not one per file.
        // It also looks the binary up among the hashes (a statx, which never waits for a FUSE
        // or network server); a miss is hashed on the hashing pool.
        let (mut collected, lookup) = tokio::task::spawn_blocking(move || {
            let (collected, kernel_thread) = inner.collect(&process, cgroups.as_deref())?;
            // A kernel thread runs no executable: nothing to hash.
            let lookup = (!kernel_thread).then(|| inner.hashes.lookup(&inner.exe(&process)));
            Ok::<_, CollectError>((collected, lookup))
        })
        .await
        .map_err(|e| CollectError::failed("procfs task").because(e))??;
        let hash = match lookup {
            None => return Ok(collected),
            Some(Lookup::Done(outcome)) => outcome,
            // Past `hash_wait` the labels are given without the hash, and not kept: the next
            // lookup finds it in the cache once the pool is done.
            Some(Lookup::Pending(pending)) => {
                match tokio::time::timeout(self.inner.hash_wait, pending.wait()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(HashFailure::Later(format!(
                        "not finished within {} ms; it is asked again later",
                        self.inner.hash_wait.as_millis()
                    ))),
                }
            }
        };
        self.inner.add_hash(&process, hash, &mut collected);
        Ok(collected)
    }
}

/// What went missing during one collection.
#[derive(Default)]
struct Gaps {
    /// Items whose file vanished (the process may have exited), with the error.
    vanished: Vec<(&'static str, String)>,
    /// Items that could not be read for another reason.
    unreadable: Vec<String>,
}

impl Gaps {
    fn note(&mut self, item: &'static str, error: &io::Error) {
        if is_gone(error) {
            self.vanished.push((item, describe(error)));
        } else {
            self.unreadable.push(format!("{item}: {}", describe(error)));
        }
    }
}

fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => error.to_string(),
    }
}

impl Inner {
    /// The labels of `process`, and whether it is a kernel thread (which runs no executable).
    /// `cgroups`: its `cgroup` file, parsed, when the caller read it already (after
    /// `process`'s start time: the check of that start time here vouches for it too).
    fn collect(
        &self,
        process: &ProcessRef,
        cgroups: Option<&CgroupInfo>,
    ) -> Result<(Collected, bool), CollectError> {
        let pid = process.pid;
        let file = |name: &str| self.roots.proc_file(pid, name);
        let unreadable = |name: &str, e: io::Error| {
            if is_gone(&e) {
                CollectError::NoSuchProcess(pid)
            } else {
                CollectError::failed(format!("cannot read {}", file(name).display())).because(e)
            }
        };
        // Everything is read through the directory, so the start time checked here vouches for
        // every file read after it.
        let dir = ProcDir::open(&self.roots, pid).map_err(|e| unreadable("", e))?;
        let stat = dir.read("stat");
        if let (Ok(stat), Some(expected)) = (&stat, process.start_ticks)
            && parse_start_ticks(stat) != Some(expected)
        {
            // The PID now names another process: nothing read here would be about ours.
            return Err(CollectError::NoSuchProcess(pid));
        }
        let status = dir.read("status").map_err(|e| unreadable("status", e))?;
        let mut gaps = Gaps::default();
        let mut labels = LabelSet::new();
        labels.insert("process:pid", pid.to_string());

        // A kernel thread has no arguments and no executable: nothing to read.
        let kernel_thread = stat.as_deref().is_ok_and(is_kernel_thread);
        let cmdline = if kernel_thread {
            Some((Vec::new(), false))
        } else {
            match read_capped(dir.open_file("cmdline")) {
                Ok(cmdline) => Some(cmdline),
                Err(e) => {
                    gaps.note("cmdline", &e);
                    None
                }
            }
        };
        let args = split_args(cmdline.as_ref().map_or(&[][..], |(bytes, _)| bytes));
        // Read, and no arguments at all: an exec in progress (the kernel has switched the
        // executable but not yet set up the new arguments) or a process exec'd with none.
        // Given, not kept.
        let no_arguments = cmdline.is_some()
            && args.is_empty()
            && !kernel_thread
            && stat.as_deref().is_ok_and(|stat| !is_zombie(stat));
        if let Some(comm) = status_comm(&status) {
            labels.insert("process:name", process_name(&comm, &args));
        }
        if !args.is_empty() {
            let shown = crate::redaction::redact_arg_bytes(&args, &self.secret_flags);
            labels.insert(
                "process:cmdline",
                escape_bytes_limited(&shown.join(&b' '), self.max_value_bytes),
            );
        }

        let ids = |field: &str| -> Vec<String> {
            status_field(&status, field)
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .split_ascii_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let uids = ids("Uid");
        let gids = ids("Gid");
        if let [real, effective, ..] = uids.as_slice() {
            labels.insert("process:uid", effective.clone());
            labels.insert("process:uid:real", real.clone());
            labels.insert("process:uid:effective", effective.clone());
            if let Some(name) = effective.parse().ok().and_then(|id| self.users.name_of(id)) {
                labels.insert("process:user:name", name);
            }
        }
        if let [real, effective, ..] = gids.as_slice() {
            labels.insert("process:gid", effective.clone());
            labels.insert("process:gid:real", real.clone());
            labels.insert("process:gid:effective", effective.clone());
            if let Some(name) = effective
                .parse()
                .ok()
                .and_then(|id| self.groups.name_of(id))
            {
                labels.insert("process:group:name", name);
            }
        }
        labels.insert_all("process:gid:additional", ids("Groups"));

        let ppid = status_field(&status, "PPid")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u32>().ok());
        let ppid = ppid.filter(|&p| p > 0);
        // The parent's directory, opened once for its labels, its lineage record and its mount
        // namespace; its `stat` gives its name and start time.
        let parent = ppid.and_then(|ppid| {
            let dir = ProcDir::open(&self.roots, ppid).ok()?;
            let stat = dir.read("stat").ok();
            Some((dir, stat))
        });
        if let Some(ppid) = ppid {
            labels.insert("process:ppid", ppid.to_string());
            if let Some((dir, stat)) = &parent {
                self.parent_labels(dir, stat.as_deref(), &mut labels);
            }
        }
        let start_ticks = stat.as_deref().ok().and_then(parse_start_ticks);
        let mut ancestors_untrusted = false;
        if !kernel_thread {
            // With arguments, the auxiliary vector is complete (the kernel sets them up after
            // it at exec); without, the exec may be in progress: no id yet.
            if let Some(start) = start_ticks.filter(|_| !no_arguments) {
                match self.lineage.exec_id(&dir, pid, start) {
                    Ok(Some(id)) => labels.insert("process:exec-id", id.to_string()),
                    Ok(None) => {}
                    Err(e) => gaps.note("exec id", &e),
                }
            }
            if let Some(ppid) = ppid {
                let opened = parent
                    .as_ref()
                    .and_then(|(dir, stat)| Some((dir, stat.as_deref()?)));
                let lineage = self
                    .lineage
                    .of_opened(pid, start_ticks, ppid, opened, &status);
                if let Some(id) = lineage.parent_exec_id {
                    labels.insert("process:parent:exec-id", id.to_string());
                }
                if lineage.unseen {
                    gaps.unreadable.push(
                        "ancestors: as procfs shows them now, which may lack one that exited \
                         (the hook's fork event for this process was not seen: lost, or not \
                         read yet)"
                            .to_owned(),
                    );
                }
                let (mut names, mut paths) = (Vec::new(), Vec::new());
                for ancestor in lineage.ancestors {
                    names.push(ancestor.image.name.clone());
                    paths.extend(ancestor.image.path.clone());
                    ancestors_untrusted |= ancestor.image.path_untrusted;
                }
                labels.insert_all("process:ancestor:name", names);
                labels.insert_all("process:ancestor:binary:path", paths);
            }
        }
        if let Some(caps) = status_field(&status, "CapEff")
            .and_then(|v| capability_names(&String::from_utf8_lossy(v)))
        {
            labels.insert_all("process:capabilities:effective", caps);
        }

        // A kernel thread runs no executable.
        if !kernel_thread {
            match dir.read_link("exe") {
                Ok(path) => labels.insert("process:binary:path", escape_path(&path)),
                Err(e) => gaps.note("binary path", &e),
            }
        }
        match dir.read_link("cwd") {
            Ok(path) => labels.insert("process:cwd", escape_path(&path)),
            Err(e) => gaps.note("cwd", &e),
        }
        match &stat {
            Ok(stat) => {
                if let Some(start) = parse_start_ticks(stat).and_then(|t| self.start_time(t)) {
                    labels.insert("process:start-time", start);
                }
            }
            Err(e) => gaps.note("start time", e),
        }
        let cgroups = match cgroups {
            Some(info) => Ok(std::borrow::Cow::Borrowed(info)),
            None => dir.read("cgroup").map(|content| {
                std::borrow::Cow::Owned(parse_cgroup_file(&String::from_utf8_lossy(&content)))
            }),
        };
        match cgroups {
            Ok(info) => {
                if let Some(path) = info.v2_path.as_deref() {
                    labels.insert("process:cgroup", path);
                }
                if let Some(container) = info.identity() {
                    labels.insert("process:container:id", container.id.clone());
                }
            }
            Err(e) => gaps.note("cgroup", &e),
        }
        if !kernel_thread {
            match sockets::socket_inodes(&dir) {
                Ok((inodes, cut)) => {
                    if !inodes.is_empty() {
                        let mut bindings: Vec<String> = sockets::listening_of(&dir)
                            .into_iter()
                            .filter(|socket| inodes.contains(&socket.inode))
                            .map(|socket| socket.binding())
                            .collect();
                        bindings.sort();
                        bindings.dedup();
                        labels.insert_all("process:network:binding", bindings);
                    }
                    if cut {
                        gaps.unreadable.push(format!(
                            "listening sockets: more than {} descriptors, the rest not looked at",
                            sockets::MAX_FDS
                        ));
                    }
                }
                Err(e) => gaps.note("listening sockets", &e),
            }
        }
        if self.extract_envs {
            match read_capped(dir.open_file("environ")) {
                Ok((environ, cut)) => {
                    let left_out = self.env_labels(&environ, &mut labels);
                    if left_out > 0 {
                        gaps.unreadable.push(format!(
                            "environment: {left_out} variables left out, past \
                             collectors.procfs.maxEnvLabels ({}) or maxEnvBytes ({})",
                            self.max_env_labels, self.max_env_bytes
                        ));
                    }
                    if cut {
                        gaps.unreadable.push(format!(
                            "environment: larger than {MAX_READ_BYTES} bytes, the rest not read"
                        ));
                    }
                }
                Err(e) => gaps.note("environment", &e),
            }
        }
        if no_arguments {
            gaps.unreadable.push(
                "arguments: none (an exec in progress, or exec'd without any); asked again later"
                    .to_owned(),
            );
        }
        let partial = self.explain_gaps(process, gaps);
        let mut untrusted = Vec::new();
        if self.own_mount_namespace(&dir) {
            untrusted.push("process:binary:path");
        }
        if ancestors_untrusted {
            untrusted.push("process:ancestor:binary:path");
        }
        if parent
            .as_ref()
            .is_some_and(|(dir, _)| self.own_mount_namespace(dir))
        {
            untrusted.push("process:parent:binary:path");
        }
        let collected = Collected {
            labels,
            partial,
            untrusted,
            provisional: no_arguments,
            executable: None,
        };
        Ok((collected, kernel_thread))
    }

    /// Whether the process of `dir` sees another mount namespace than the host's: there a path
    /// names what the namespace's maker chose, and a process in a user namespace of its own can
    /// make one (`unshare -Urm`). The host's is PID 1's, or, where PID 1 cannot be inspected
    /// (a sandbox whose init the agent may not trace), the agent's own. Unknown (unreadable)
    /// counts as another, except on a recorded tree, which has no namespaces at all.
    fn own_mount_namespace(&self, dir: &ProcDir) -> bool {
        let host = self
            .host_mount_namespace
            .get_or_init(|| host_mount_namespace(&self.roots));
        differs_from_host(dir, host.as_deref())
    }

    /// Turns what went missing into a status: "exited during collection" when the process is
    /// gone now, and every item that could not be read for another reason.
    fn explain_gaps(&self, process: &ProcessRef, gaps: Gaps) -> Option<String> {
        let mut reasons = gaps.unreadable;
        if !gaps.vanished.is_empty() {
            let stat = read_proc_file(&self.roots.proc_file(process.pid, "stat")).ok();
            let still_there = stat.as_deref().is_some_and(|stat| {
                process.start_ticks.is_none() || parse_start_ticks(stat) == process.start_ticks
            });
            if !still_there {
                let items: Vec<&str> = gaps.vanished.iter().map(|(item, _)| *item).collect();
                reasons.insert(
                    0,
                    format!(
                        "process exited during collection; not read: {}",
                        items.join(", ")
                    ),
                );
            } else if !stat.as_deref().is_some_and(is_kernel_thread) {
                // Alive, and not a kernel thread (which has no `exe`): the gap is real.
                reasons.extend(
                    gaps.vanished
                        .iter()
                        .map(|(item, error)| format!("{item}: {error}")),
                );
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// `<proc>/<pid>/exe`: the executable the process maps, whatever its path.
    fn exe(&self, process: &ProcessRef) -> std::path::PathBuf {
        self.roots.proc_file(process.pid, "exe")
    }

    /// Adds the hash (or why there is none) to a collection.
    fn add_hash(
        &self,
        process: &ProcessRef,
        hash: Result<BinaryHash, HashFailure>,
        collected: &mut Collected,
    ) {
        match hash {
            Ok(hash) => {
                collected.labels.insert("process:binary:hash", hash.hash);
                match hash.unsound {
                    Some(why) => {
                        collected.untrusted.push("process:binary:hash");
                        add_partial(collected, why);
                    }
                    None => collected.executable = Some(hash.identity),
                }
            }
            Err(HashFailure::Io(error)) => {
                let mut gaps = Gaps::default();
                gaps.note("binary hash", &error);
                if let Some(reason) = self.explain_gaps(process, gaps) {
                    add_partial(collected, reason);
                }
            }
            Err(failure) => {
                collected.provisional |= failure.is_transient();
                add_partial(collected, format!("binary hash: {failure}"));
            }
        }
    }

    /// `process:parent:name` and `process:parent:binary:path` of the parent whose directory
    /// is `dir` and whose `stat` is given.
    fn parent_labels(&self, dir: &ProcDir, stat: Option<&[u8]>, labels: &mut LabelSet) {
        // The name is in `stat` (as in `comm`); trees without it (recorded fixtures) have it in
        // `comm` or `status`.
        let comm = match stat.and_then(stat_comm) {
            Some(comm) => Some(comm.to_vec()),
            None => match dir.read("comm") {
                Ok(mut comm) => {
                    if comm.last() == Some(&b'\n') {
                        comm.pop();
                    }
                    Some(comm)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => dir
                    .read("status")
                    .ok()
                    .and_then(|status| status_comm(&status)),
                Err(_) => None,
            },
        };
        let Some(comm) = comm else {
            return;
        };
        // The parent's arguments matter only when its comm may have been cut.
        let cmdline = if comm.len() == COMM_MAX {
            read_capped(dir.open_file("cmdline"))
                .map(|(c, _)| c)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        labels.insert(
            "process:parent:name",
            process_name(&comm, &split_args(&cmdline)),
        );
        if let Ok(path) = dir.read_link("exe") {
            labels.insert("process:parent:binary:path", escape_path(&path));
        }
    }

    /// The `process:env:*` labels of `environ`, at most `maxEnvLabels` of them and
    /// `maxEnvBytes` of values; returns how many variables were left out.
    fn env_labels(&self, environ: &[u8], labels: &mut LabelSet) -> usize {
        let (mut count, mut bytes, mut left_out) = (0usize, 0usize, 0usize);
        for (key, value) in environment::parse_environ(environ) {
            let key = escape_bytes(key).to_uppercase();
            let escaped = escape_bytes_limited(value, self.max_value_bytes);
            let value = self.redactor.env_value(&key, &escaped).into_owned();
            if count >= self.max_env_labels || bytes + value.len() > self.max_env_bytes {
                left_out += 1;
                continue;
            }
            count += 1;
            bytes += value.len();
            labels.insert(format!("process:env:{key}"), value);
        }
        left_out
    }

    /// RFC 3339 start time from clock ticks since boot.
    fn start_time(&self, ticks: u64) -> Option<String> {
        let boot = (*self
            .boot_time
            .get_or_init(|| read_boot_time(&self.roots.proc)))?;
        let hz = clock_ticks_per_second();
        let started = SystemTime::UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(ticks.saturating_mul(1000) / hz);
        Some(humantime::format_rfc3339_seconds(started).to_string())
    }
}

/// The host's mount namespace: PID 1's, or where PID 1 cannot be inspected, the agent's own;
/// `None` on a recorded tree.
fn host_mount_namespace(roots: &HostRoots) -> Option<std::path::PathBuf> {
    let namespace = |pid: &str| std::fs::read_link(roots.proc.join(pid).join("ns/mnt"));
    namespace("1").or_else(|_| namespace("self")).ok()
}

/// Whether the process of `dir` sees another mount namespace than `host` (unknown counts as
/// another; nothing differs on a recorded tree, which has no namespaces).
fn differs_from_host(dir: &ProcDir, host: Option<&Path>) -> bool {
    match host {
        Some(host) => dir.read_link("ns/mnt").ok().as_deref() != Some(host),
        None => false,
    }
}

/// Whether `stat`'s state (field 3) is `Z`: the process exited and waits to be reaped.
fn is_zombie(stat: &[u8]) -> bool {
    stat_field(stat, 3) == Some("Z")
}

/// Whether `stat` flags (field 9) carry `PF_KTHREAD`.
fn is_kernel_thread(stat: &[u8]) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    stat_field(stat, 9)
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// The name (comm) in `stat`: field 2, between the first `(` and the last `)` (the name may
/// hold either), as `/proc/<pid>/comm` has it without its line break.
fn stat_comm(stat: &[u8]) -> Option<&[u8]> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    (open < close).then(|| &stat[open + 1..close])
}

fn add_partial(collected: &mut Collected, reason: String) {
    collected.partial = Some(match collected.partial.take() {
        Some(existing) => format!("{existing}; {reason}"),
        None => reason,
    });
}

/// The kernel keeps at most this many bytes of a process's name (comm).
const COMM_MAX: usize = 15;

/// `process:name` from the kernel's comm (at most [`COMM_MAX`] bytes): when it is exactly that
/// long and the basename of argv[0] starts with it, the comm was cut, so that basename is used.
fn process_name(comm: &[u8], args: &[&[u8]]) -> String {
    if comm.len() == COMM_MAX
        && let Some(argv0) = args.first()
    {
        let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or(argv0);
        if base.starts_with(comm) {
            return escape_bytes(base);
        }
    }
    escape_bytes(comm)
}

/// The comm of a status document: its `Name:`, unescaped.
fn status_comm(status: &[u8]) -> Option<Vec<u8>> {
    status_field(status, "Name").map(unescape_status_name)
}

/// The kernel writes `\n` and `\` in a status Name as `\n` and `\\`.
fn unescape_status_name(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            match bytes.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b'\\') => out.push(b'\\'),
                Some(&other) => out.extend_from_slice(&[b'\\', other]),
                None => out.push(b'\\'),
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// Arguments of a `cmdline` file: NUL-separated, empty ones dropped.
fn split_args(cmdline: &[u8]) -> Vec<&[u8]> {
    cmdline
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .collect()
}

fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escape_bytes(path.as_os_str().as_bytes())
}

/// Reads at most [`MAX_READ_BYTES`] of `file`; the flag says whether there was more.
fn read_capped(file: io::Result<std::fs::File>) -> io::Result<(Vec<u8>, bool)> {
    use std::io::Read;
    let mut file = file?;
    let mut content = vec![0; 4096];
    let first = loop {
        match file.read(&mut content) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => break other?,
        }
    };
    // `cmdline` and `environ` read short only at their end: most take this one read.
    if first < content.len() {
        content.truncate(first);
        return Ok((content, false));
    }
    content.truncate(first);
    file.take(MAX_READ_BYTES + 1 - first as u64)
        .read_to_end(&mut content)?;
    let cut = content.len() as u64 > MAX_READ_BYTES;
    content.truncate(MAX_READ_BYTES as usize);
    Ok((content, cut))
}

/// `btime` of `<proc>/stat`: boot time in seconds since the epoch.
fn read_boot_time(proc_root: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str) -> Vec<u8> {
        format!("Name:\t{name}\nUmask:\t0022\n").into_bytes()
    }

    #[test]
    fn name_uses_argv0_basename_only_when_comm_was_cut() {
        let name = |status: &[u8], args: &[&[u8]]| {
            status_comm(status).map(|comm| process_name(&comm, args))
        };
        let long = "/usr/lib/systemd/systemd-journald";
        assert_eq!(
            name(&status("systemd-journal"), &[long.as_bytes()]).unwrap(),
            "systemd-journald"
        );
        // 15 chars but argv[0] does not start with it (renamed thread): keep comm.
        assert_eq!(
            name(&status("systemd-journal"), &[b"/bin/other"]).unwrap(),
            "systemd-journal"
        );
        // Shorter than 15: comm as is, even if argv[0] differs.
        assert_eq!(name(&status("bash"), &[b"-bash"]).unwrap(), "bash");
        assert_eq!(name(&status("kworker/0:1"), &[]).unwrap(), "kworker/0:1");
        assert_eq!(name(&status(r"a\\b\nc"), &[]).unwrap(), r"a\\b\x0ac");
        assert!(name(b"Umask:\t0022\n", &[]).is_none());
    }

    #[test]
    fn kernel_threads_are_recognized_by_their_flags() {
        let kthreadd = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0";
        let bash = b"7 (bash) S 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        assert!(is_kernel_thread(kthreadd));
        assert!(!is_kernel_thread(bash));
    }

    #[test]
    fn the_name_in_stat_is_between_the_first_and_last_parenthesis() {
        assert_eq!(stat_comm(b"7 (bash) S 1 7").unwrap(), b"bash");
        assert_eq!(stat_comm(b"8 (a) b (c) S 1 7").unwrap(), b"a) b (c");
        assert_eq!(stat_comm(b"9 () S 1").unwrap(), b"");
        assert_eq!(stat_comm(b"9 (x y\n) S 1").unwrap(), b"x y\n");
        assert!(stat_comm(b"9 ) (S 1").is_none());
        assert!(stat_comm(b"").is_none());
    }

    /// The resolver reads a process's `cgroup` file once, to decide its container; the
    /// collection takes `process:cgroup` from that read rather than reading the file again.
    #[tokio::test]
    async fn the_cgroup_file_read_for_the_subject_is_not_read_again() {
        let roots = HostRoots::default();
        let collector = ProcfsCollector::new(roots.clone(), &ProcfsConfig::default());
        let process = ProcessRef::resolve(&roots, std::process::id()).unwrap();
        let placement = crate::cgroup::ContainersConfig::default();
        let cgroup = async |subject: &Subject| {
            let collected = collector.collect(subject).await.unwrap();
            collected.labels.get("process:cgroup").to_vec()
        };

        let read_here = Subject::of_process(&roots, process, &placement);
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let expected = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .map(str::to_owned);
        assert_eq!(cgroup(&read_here).await, Vec::from_iter(expected));

        let given = Subject::of_process_cgroups(
            &roots,
            process,
            &placement,
            Ok(b"0::/given.slice/by-the-caller\n".to_vec()),
        );
        assert_eq!(cgroup(&given).await, ["/given.slice/by-the-caller"]);
    }

    #[test]
    fn args_drop_empty_entries() {
        assert_eq!(split_args(b"a\0\0b c\0\0"), [&b"a"[..], b"b c"]);
        assert!(split_args(b"").is_empty());
    }
}
