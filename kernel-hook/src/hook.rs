//! Loading, attaching and reading the BPF programs of `kernel-hook-ebpf` with aya.
//!
//! Requirements: root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON), a kernel with BPF ring buffers
//! and BTF (`/sys/kernel/btf/vmlinux`, for the few task fields the programs read), cgroup v2
//! mounted (alone at `/sys/fs/cgroup`, or beside v1 at `/sys/fs/cgroup/unified`), and bpffs
//! (`/sys/fs/bpf`) to pin the programs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, RawTracePoint};
use aya::{Ebpf, EbpfLoader};
use tokio::sync::mpsc;

use kernel_hook_ebpf::abi;

use crate::event::HookEvent;
use crate::maps::{ImageKey, Prefix, ProcState, RuleKeyData, RuleList, RulesetEntry, VerdictEntry};
use crate::record::parse_event;

/// How often the ring buffer is drained while events come. The programs submit without waking
/// the reader (a wakeup per connect doubled a loopback connect's cost), so the reader polls.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Drains that found nothing before the reader sleeps until the ring wakes it (see
/// [`EventReader::run`]).
const QUIET_DRAINS: u32 = 10;

/// How often a sleeping reader looks whether its consumer is gone.
const SLEEP_CHECK: Duration = Duration::from_secs(1);

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CONNECT_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// Why the hook could not be attached or driven.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Not privileged enough to load BPF programs (the kernel answered `EPERM` or `EACCES`).
    #[error("{what}: loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    Permission {
        /// What was being done.
        what: String,
        /// The kernel's refusal.
        #[source]
        source: BoxError,
    },
    /// No cgroup v2 hierarchy to attach to.
    #[error("no cgroup v2 hierarchy at {path} (mount cgroup2 there, or set hook.cgroupRoot)")]
    NoCgroup2 {
        /// Where one was looked for.
        path: String,
        /// Why it could not be opened, when it could not.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The cgroup2 mount shows a sub-cgroup as its root (a cgroup namespace's view, or a bind
    /// mount of a subtree): the hook would see only the processes below it.
    #[error(
        "{path} shows only part of the cgroup hierarchy: the cgroup2 mount at {mount} is rooted \
         at a sub-cgroup (inode {inode}, where the hierarchy's root is 1), as inside a cgroup \
         namespace, so the hook would see only the processes below it. Give the agent the \
         host's hierarchy: mount the host's /sys (and set HOST_SYS) or its /sys/fs/cgroup and \
         set hook.cgroupRoot, or run the container with --cgroupns=host"
    )]
    SubtreeView {
        /// The cgroup root asked for.
        path: String,
        /// The mount point above it.
        mount: String,
        /// The inode of the mount's root directory.
        inode: u64,
    },
    /// The kernel refused a program, a map or an attachment for another reason.
    #[error("the kernel refused {what}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: BoxError,
    },
    /// The pin directory is not on a BPF filesystem.
    #[error("{path} is not on a BPF filesystem (mount bpffs at /sys/fs/bpf, or set hook.pinPath)")]
    NoBpffs {
        /// The pin directory.
        path: String,
    },
    /// The embedded BPF object lacks a program or map this crate needs.
    #[error("the BPF object has no {0}")]
    Missing(String),
}

/// Any error with its causes.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl HookError {
    /// The error of a BPF operation on `what`: [`HookError::Permission`] when the kernel
    /// answered `EPERM` or `EACCES` anywhere in `error`'s causes, else [`HookError::Kernel`].
    pub fn from_bpf(what: impl Into<String>, error: impl Into<BoxError>) -> Self {
        let (what, source) = (what.into(), error.into());
        if denied_by_the_kernel(&*source) {
            Self::Permission { what, source }
        } else {
            Self::Kernel { what, source }
        }
    }

    /// Whether the kernel refused for lack of privilege.
    pub fn is_permission(&self) -> bool {
        matches!(self, Self::Permission { .. })
    }
}

/// Whether `error` or one of its causes is an `EPERM` or `EACCES` from a system call.
fn denied_by_the_kernel(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// Program `name` of the object, as its type `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, HookError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| HookError::Missing(format!("program {name}")))?
        .try_into()
        .map_err(|e| HookError::from_bpf(format!("program {name}"), e))
}

/// The cgroup v2 root: `/sys/fs/cgroup` when it is cgroup2, else `/sys/fs/cgroup/unified`.
pub fn detect_cgroup_root() -> Result<PathBuf, HookError> {
    detect_cgroup_root_under(Path::new("/sys"))
}

/// The cgroup v2 root under the sysfs root `sys` (`/sys`, or the host's as `HOST_SYS` names it
/// in a container): `<sys>/fs/cgroup` when it is cgroup2, else `<sys>/fs/cgroup/unified`.
pub fn detect_cgroup_root_under(sys: &Path) -> Result<PathBuf, HookError> {
    let alone = sys.join("fs/cgroup");
    let beside = alone.join("unified");
    for candidate in [&alone, &beside] {
        if is_cgroup2(candidate) {
            return Ok(candidate.clone());
        }
    }
    Err(HookError::NoCgroup2 {
        path: format!("{} or {}", alone.display(), beside.display()),
        source: None,
    })
}

/// The inode of the cgroup v2 hierarchy's root directory (its cgroup id).
const ROOT_CGROUP_INODE: u64 = 1;

/// Refuses a cgroup root whose cgroup2 mount shows a sub-cgroup as its root: the view inside a
/// cgroup namespace (`--cgroupns=private`, the default for containers on cgroup v2 hosts), or
/// a bind mount of a subtree. A directory below a mount of the whole hierarchy is accepted (an
/// operator may attach to a part of the tree on purpose).
pub fn check_whole_hierarchy(path: &Path) -> Result<(), HookError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(path) = path.canonicalize() else {
        return Ok(()); // attach names the missing directory
    };
    let Ok(device) = std::fs::metadata(&path).map(|m| m.dev()) else {
        return Ok(());
    };
    // The mount's top: the highest ancestor on the same cgroup2 filesystem.
    let mut top = path.as_path();
    for ancestor in path.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(m) if m.dev() == device && is_cgroup2(ancestor) => top = ancestor,
            _ => break,
        }
    }
    let inode = std::fs::metadata(top)
        .map(|m| m.ino())
        .unwrap_or(ROOT_CGROUP_INODE);
    if inode == ROOT_CGROUP_INODE {
        return Ok(());
    }
    Err(HookError::SubtreeView {
        path: path.display().to_string(),
        mount: top.display().to_string(),
        inode,
    })
}

/// The kernel's monotonic clock in nanoseconds, the clock of the events' `timestamp_ns`.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into a timespec we own.
    unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }
}

/// Whether `path` is the root of a cgroup2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// What the hook does with a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it with `EPERM` (enforce mode only).
    Deny,
}

impl Verdict {
    /// The `VERDICT_*` number.
    pub fn value(self) -> u32 {
        match self {
            Self::Allow => abi::VERDICT_ALLOW,
            Self::Deny => abi::VERDICT_DENY,
        }
    }
}

/// How [`Hook::attach_pinned`] found the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// The programs were loaded and attached now.
    Fresh,
    /// Pinned programs and maps of the same object were attached already (a previous agent's):
    /// they were taken over as they were, without a moment unattached.
    Adopted,
}

/// The maps the agent writes and reads besides the ring buffer.
struct Maps {
    settings: Array<MapData, u32>,
    verdicts: HashMap<MapData, u32, VerdictEntry>,
    rulesets: HashMap<MapData, u32, RulesetEntry>,
    rules: LpmTrie<MapData, RuleKeyData, RuleList>,
    images: HashMap<MapData, ImageKey, u32>,
}

/// The attached hook. Dropping it detaches every program, unless they are pinned (their links
/// then live in bpffs until [`Hook::remove_pins`]).
pub struct Hook {
    ebpf: Ebpf,
    cgroup_root: PathBuf,
    maps: Maps,
    table: Arc<ProcessTable>,
    /// Links held open (pinned ones: closing them leaves the pins attached).
    links: Vec<FdLink>,
    /// Where programs and maps are pinned, when they are.
    pin_dir: Option<PathBuf>,
}

/// The ring buffer's reading end, moved into the task that drains it.
pub struct EventReader {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    lost_seen: u64,
    /// `READER[0]`: 1 while the reader sleeps, so that the next event wakes it.
    reader: Array<MapData, u32>,
}

/// Every map of the object, in the order they are pinned.
const MAPS: [&str; 10] = [
    "EVENTS", "LOST", "READER", "SETTINGS", "PROCS", "CHANGES", "VERDICTS", "RULESETS", "RULES",
    "IMAGES",
];

/// The programs attached to the cgroup, then the raw tracepoints (program, tracepoint).
const RAW_TRACEPOINTS: [(&str, &str); 5] = [
    ("process_fork", "sched_process_fork"),
    ("process_exec", "sched_process_exec"),
    ("process_exit", "sched_process_exit"),
    ("cgroup_attach", "cgroup_attach_task"),
    ("cgroup_transfer", "cgroup_transfer_tasks"),
];

impl Hook {
    /// Loads the programs and attaches them to `cgroup_root` (cgroup v2) and the sched
    /// tracepoints. Returns the hook and the reader of its events. Nothing is pinned: the
    /// programs detach when the hook is dropped (or the process ends).
    pub fn attach(cgroup_root: &Path) -> Result<(Self, EventReader), HookError> {
        let (hook, reader, _) = Self::attach_inner(cgroup_root, None)?;
        Ok((hook, reader))
    }

    /// [`Hook::attach`] with the programs and maps pinned under `pin_dir` (on bpffs), so that
    /// enforcement outlives this process: a later call (after a crash or a restart) adopts
    /// what is pinned — same maps, links never detached — instead of attaching again. Pins of
    /// another build of the programs are replaced, after the new ones are attached.
    pub fn attach_pinned(
        cgroup_root: &Path,
        pin_dir: &Path,
    ) -> Result<(Self, EventReader, Attachment), HookError> {
        Self::attach_inner(cgroup_root, Some(pin_dir))
    }

    fn attach_inner(
        cgroup_root: &Path,
        pin_dir: Option<&Path>,
    ) -> Result<(Self, EventReader, Attachment), HookError> {
        let no_cgroup2 = |source| HookError::NoCgroup2 {
            path: cgroup_root.display().to_string(),
            source,
        };
        if !is_cgroup2(cgroup_root) {
            return Err(no_cgroup2(None));
        }
        check_whole_hierarchy(cgroup_root)?;
        let pins = pin_dir.map(Pins::new).transpose()?;
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            pins.create_dirs()?;
            for name in MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader
            .load(kernel_hook_ebpf::object())
            .map_err(|e| HookError::from_bpf("loading the BPF object", e))?;
        let mut links = Vec::new();
        let mut adopted = 0;
        let cgroup = File::open(cgroup_root).map_err(|e| no_cgroup2(Some(e)))?;
        for name in CONNECT_PROGRAMS {
            if let Some(link) = pins.as_ref().and_then(|pins| pins.adopt(name)) {
                links.push(link);
                adopted += 1;
                continue;
            }
            let failed = |e| HookError::from_bpf(format!("program {name}"), e);
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program.load().map_err(failed)?;
            // Single: the other modes fail with EINVAL on kernels ≥ 5.7, where cgroup links
            // coexist anyway.
            let id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(failed)?;
            if let Some(pins) = &pins {
                let link = program.take_link(id).map_err(failed)?;
                let link = FdLink::try_from(link)
                    .map_err(|e| HookError::from_bpf(format!("program {name}"), e))?;
                links.push(pins.pin(name, link)?);
            }
        }
        for (name, tracepoint) in RAW_TRACEPOINTS {
            if let Some(link) = pins.as_ref().and_then(|pins| pins.adopt(name)) {
                links.push(link);
                adopted += 1;
                continue;
            }
            let failed = |e| HookError::from_bpf(format!("program {name}"), e);
            let program: &mut RawTracePoint = program(&mut ebpf, name)?;
            program.load().map_err(failed)?;
            let id = program.attach(tracepoint).map_err(failed)?;
            if let Some(pins) = &pins {
                let link = FdLink::from(program.take_link(id).map_err(failed)?);
                links.push(pins.pin(name, link)?);
            }
        }
        if let Some(pins) = &pins {
            pins.remove_other_builds();
        }
        let attachment = if adopted == CONNECT_PROGRAMS.len() + RAW_TRACEPOINTS.len() {
            Attachment::Adopted
        } else {
            Attachment::Fresh
        };
        let mut map = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| HookError::Missing(format!("map {name}")))
        };
        let map_error = |name: &'static str| move |e| HookError::from_bpf(format!("map {name}"), e);
        let ring = RingBuf::try_from(map("EVENTS")?).map_err(map_error("EVENTS"))?;
        let lost = PerCpuArray::try_from(map("LOST")?).map_err(map_error("LOST"))?;
        let reader = Array::try_from(map("READER")?).map_err(map_error("READER"))?;
        let table = ProcessTable::new(map("PROCS")?, &map("CHANGES")?)?;
        let maps = Maps {
            settings: Array::try_from(map("SETTINGS")?).map_err(map_error("SETTINGS"))?,
            verdicts: HashMap::try_from(map("VERDICTS")?).map_err(map_error("VERDICTS"))?,
            rulesets: HashMap::try_from(map("RULESETS")?).map_err(map_error("RULESETS"))?,
            rules: LpmTrie::try_from(map("RULES")?).map_err(map_error("RULES"))?,
            images: HashMap::try_from(map("IMAGES")?).map_err(map_error("IMAGES"))?,
        };
        // Losses counted while nobody read (an adopted ring) are reported by the first drain.
        Ok((
            Self {
                ebpf,
                cgroup_root: cgroup_root.to_owned(),
                table,
                maps,
                links,
                pin_dir: pins.map(|pins| pins.build),
            },
            EventReader {
                ring,
                lost,
                lost_seen: 0,
                reader,
            },
            attachment,
        ))
    }

    /// Removes what [`Hook::attach_pinned`] pinned under `pin_dir` (every build's): once no
    /// process holds them, the programs detach and the maps are freed. Returns whether there
    /// was anything to remove.
    pub fn remove_pins(pin_dir: &Path) -> Result<bool, HookError> {
        Pins::remove_all(pin_dir)
    }

    /// The kernel's ids of the attached programs (as `bpftool prog` lists them), which tell
    /// them from the programs of another agent on the same node.
    pub fn program_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok())
            .map(|info| info.id())
            .chain(
                self.links
                    .iter()
                    .filter_map(|link| link.info().ok())
                    .map(|info| info.program_id()),
            )
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Where programs and maps are pinned (this build's directory), when they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Enforce mode (judge connects) or observe mode (let everything through), and the verdict
    /// for processes without a rule set yet.
    pub fn set_mode(&mut self, enforce: bool, pending: Verdict) -> Result<(), HookError> {
        let settings = &mut self.maps.settings;
        settings
            .set(abi::SETTING_ENFORCE, u32::from(enforce), 0)
            .and_then(|()| settings.set(abi::SETTING_PENDING_VERDICT, pending.value(), 0))
            .map_err(|e| HookError::from_bpf("map SETTINGS", e))
    }

    /// The kernel's table of processes, for readers of their own (see [`ProcessTable`]).
    pub fn process_table(&self) -> Arc<ProcessTable> {
        Arc::clone(&self.table)
    }

    /// What the kernel knows of process `tgid`, if anything (see [`ProcessTable::get`]).
    pub fn process(&self, tgid: u32) -> Result<Option<ProcState>, HookError> {
        self.table.get(tgid)
    }

    /// Introduces a process the hook has not met (see [`ProcessTable::introduce`]).
    pub fn introduce(&mut self, tgid: u32, start: u64) -> Result<ProcState, HookError> {
        self.table.introduce(tgid, start)
    }

    /// The agent's verdict for process `tgid`, if one is recorded.
    pub fn verdict(&self, tgid: u32) -> Result<Option<VerdictEntry>, HookError> {
        absent_is_none(self.maps.verdicts.get(&tgid, 0), "map VERDICTS")
    }

    /// Records the verdict (rule set) of one image of process `tgid`; it holds while the
    /// kernel's entry for the process has the verdict's start and generation.
    pub fn set_verdict(&mut self, tgid: u32, verdict: VerdictEntry) -> Result<(), HookError> {
        self.maps
            .verdicts
            .insert(tgid, verdict, 0)
            .map_err(|e| HookError::from_bpf("map VERDICTS", e))
    }

    /// Defines rule set `id`: its default and its rules per address prefix (each list in
    /// precedence order, holding every rule whose range contains the prefix). Replaces the
    /// prefixes given; [`Hook::remove_ruleset`] first to drop old ones.
    pub fn put_ruleset(
        &mut self,
        id: u32,
        default: RulesetEntry,
        prefixes: &[(Prefix, RuleList)],
    ) -> Result<(), HookError> {
        for (prefix, list) in prefixes {
            self.maps
                .rules
                .insert(&prefix.key(id), *list, 0)
                .map_err(|e| HookError::from_bpf("map RULES", e))?;
        }
        // Last: a rule set is used only once its default is there.
        self.maps
            .rulesets
            .insert(id, default, 0)
            .map_err(|e| HookError::from_bpf("map RULESETS", e))
    }

    /// Removes rule set `id` and its rules at `prefixes`.
    pub fn remove_ruleset(&mut self, id: u32, prefixes: &[Prefix]) -> Result<(), HookError> {
        let _ = self.maps.rulesets.remove(&id);
        for prefix in prefixes {
            let _ = self.maps.rules.remove(&prefix.key(id));
        }
        Ok(())
    }

    /// The rule sets defined in the kernel (a pinned hook keeps those of a previous agent).
    pub fn ruleset_ids(&self) -> Vec<u32> {
        self.maps.rulesets.keys().filter_map(Result::ok).collect()
    }

    /// Every rule set of every process entry and verdict, and the exec-time identities'.
    pub fn rulesets_in_use(&self) -> std::collections::HashSet<u32> {
        let procs = self
            .table
            .reader
            .iter()
            .filter_map(Result::ok)
            .map(|(_, p)| p.ruleset);
        let verdicts = self
            .maps
            .verdicts
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.ruleset);
        let images = self
            .maps
            .images
            .iter()
            .filter_map(Result::ok)
            .map(|(_, r)| r);
        procs.chain(verdicts).chain(images).collect()
    }

    /// Removes every rule of rule set `id`, whatever its prefixes (a previous agent's).
    pub fn purge_ruleset(&mut self, id: u32) {
        let keys: Vec<_> = self
            .maps
            .rules
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.data().ruleset == id)
            .collect();
        for key in keys {
            let _ = self.maps.rules.remove(&key);
        }
        let _ = self.maps.rulesets.remove(&id);
    }

    /// Gives every process started from exec-time identity `key` rule set `ruleset` from its
    /// first instruction.
    pub fn put_image(&mut self, key: ImageKey, ruleset: u32) -> Result<(), HookError> {
        self.maps
            .images
            .insert(key, ruleset, 0)
            .map_err(|e| HookError::from_bpf("map IMAGES", e))
    }

    /// Forgets exec-time identity `key`.
    pub fn remove_image(&mut self, key: &ImageKey) {
        let _ = self.maps.images.remove(key);
    }

    /// Every exec-time identity and its rule set.
    pub fn images(&self) -> Vec<(ImageKey, u32)> {
        self.maps.images.iter().filter_map(Result::ok).collect()
    }

    /// Detaches every program now (unpinned hooks; pinned programs stay attached until
    /// [`Hook::remove_pins`]).
    pub fn detach(self) {
        drop(self);
    }
}

/// A map lookup's answer, with "no such key" as `None`.
fn absent_is_none<V>(
    result: Result<V, aya::maps::MapError>,
    what: &str,
) -> Result<Option<V>, HookError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(error) => Err(HookError::from_bpf(what, error)),
    }
}

/// `PROCS` through a descriptor of its own, shared by threads: what the kernel knows of each
/// process. The programs update an entry before the exec or the cgroup move that changes it
/// returns to its caller, and remove it when the process ends: an entry that still has the
/// start, generation and move count read before a look at the process's procfs files says that
/// its executable and cgroups are still those read, whatever the ring buffer has delivered so
/// far. Only while the programs are attached.
pub struct ProcessTable {
    /// Lookups: without a lock (a `bpf` call each).
    reader: HashMap<MapData, u32, ProcState>,
    /// Introductions, one at a time.
    writer: std::sync::Mutex<HashMap<MapData, u32, ProcState>>,
    /// `CHANGES`, mapped: each bucket's change count, read without a system call.
    changes: ChangeCounters,
    /// Tells this table's counts from another's (the hook attached again, counting afresh).
    id: u32,
}

impl std::fmt::Debug for ProcessTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessTable").finish_non_exhaustive()
    }
}

/// The `CHANGES` array mapped read-only into this process: the programs count, in a process's
/// bucket (`tgid & (CHANGE_BUCKETS - 1)`), each fork, exec, cgroup move and exit of a process in
/// it, after `PROCS` shows it.
struct ChangeCounters {
    counts: std::ptr::NonNull<AtomicU64>,
}

// SAFETY: the mapping is only read, through atomics, and lives as long as the value.
unsafe impl Send for ChangeCounters {}
// SAFETY: as above.
unsafe impl Sync for ChangeCounters {}

const CHANGE_BUCKETS: usize = abi::CHANGE_BUCKETS as usize;
const CHANGES_BYTES: usize = CHANGE_BUCKETS * std::mem::size_of::<u64>();

impl ChangeCounters {
    fn map(map: &aya::maps::Map) -> Result<Self, HookError> {
        use std::os::fd::{AsFd, AsRawFd};
        let aya::maps::Map::Array(data) = map else {
            return Err(HookError::Missing("map CHANGES as an array".to_owned()));
        };
        // SAFETY: maps CHANGES_BYTES of an mmapable array map of exactly that size (a whole
        // number of pages), shared and read-only; the mapping keeps the map alive.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHANGES_BYTES,
                libc::PROT_READ,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(HookError::from_bpf(
                "mapping map CHANGES",
                std::io::Error::last_os_error(),
            ));
        }
        let counts = std::ptr::NonNull::new(address.cast::<AtomicU64>())
            .ok_or_else(|| HookError::Missing("a mapping of map CHANGES".to_owned()))?;
        Ok(Self { counts })
    }

    fn count(&self, tgid: u32) -> u64 {
        let bucket = tgid as usize & (CHANGE_BUCKETS - 1);
        // SAFETY: bucket < CHANGE_BUCKETS, inside the mapping, which lives as long as self;
        // the programs change the counts with atomic adds.
        unsafe { self.counts.add(bucket).as_ref() }.load(Ordering::Acquire)
    }
}

impl Drop for ChangeCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps what `map` mapped, once.
        unsafe {
            libc::munmap(self.counts.as_ptr().cast(), CHANGES_BYTES);
        }
    }
}

impl ProcessTable {
    /// A table reading `procs` (`PROCS`), introducing through a duplicate of its descriptor,
    /// and reading `changes` (`CHANGES`) through a mapping.
    fn new(procs: aya::maps::Map, changes: &aya::maps::Map) -> Result<Arc<Self>, HookError> {
        use std::os::fd::AsFd;
        static TABLES: AtomicU32 = AtomicU32::new(0);
        fn failed(error: impl Into<BoxError>) -> HookError {
            HookError::from_bpf("map PROCS", error)
        }
        let aya::maps::Map::HashMap(data) = &procs else {
            return Err(HookError::Missing("map PROCS as a hash map".to_owned()));
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(failed)?;
        let writer = MapData::from_fd(fd).map_err(failed)?;
        Ok(Arc::new(Self {
            writer: std::sync::Mutex::new(
                HashMap::try_from(aya::maps::Map::HashMap(writer)).map_err(failed)?,
            ),
            reader: HashMap::try_from(procs).map_err(failed)?,
            changes: ChangeCounters::map(changes)?,
            id: TABLES.fetch_add(1, Ordering::Relaxed) % u16::MAX as u32 + 1,
        }))
    }

    /// How many changes (forks, execs, cgroup moves, exits) the kernel has counted so far among
    /// the processes that share `tgid`'s bucket, with this table's id in the top 16 bits (never
    /// 0). Read before [`ProcessTable::get`], an unchanged count later says that no process of
    /// the bucket changed since, so `tgid`'s entry is still the one `get` found: one memory
    /// read instead of a lookup.
    pub fn changes(&self, tgid: u32) -> u64 {
        u64::from(self.id) << 48 | (self.changes.count(tgid) & ((1 << 48) - 1))
    }

    /// What the kernel knows of process `tgid`, if anything.
    pub fn get(&self, tgid: u32) -> Result<Option<ProcState>, HookError> {
        absent_is_none(self.reader.get(&tgid, 0), "map PROCS")
    }

    /// Introduces a process the hook has not met (older than the hook) with its start time in
    /// clock ticks, unless the kernel met it meanwhile. Returns what the kernel now knows (an
    /// error when the table is full).
    pub fn introduce(&self, tgid: u32, start: u64) -> Result<ProcState, HookError> {
        let mut procs = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = ProcState {
            start,
            ..ProcState::default()
        };
        match procs.insert(tgid, fresh, BPF_NOEXIST) {
            Ok(()) => Ok(fresh),
            // Met meanwhile (an exec), or no room left.
            Err(error) => match absent_is_none(procs.get(&tgid, 0), "map PROCS")? {
                Some(known) => Ok(known),
                None => Err(HookError::from_bpf("map PROCS", error)),
            },
        }
    }

    /// What the kernel knows of process `tgid` started at `start` (clock ticks since boot, as
    /// just read from procfs), introducing it when the kernel has not met it (a process older
    /// than the hook); `None` when the entry is another process's (a PID reused), or the table
    /// is full. Should the process have ended since `start` was read, the entry made for it is
    /// overwritten by the fork that next takes its PID.
    pub fn get_or_introduce(&self, tgid: u32, start: u64) -> Result<Option<ProcState>, HookError> {
        // Usually known (met at fork or exec): no lock for that.
        let known = match self.get(tgid)? {
            Some(known) => known,
            None => match self.introduce(tgid, start) {
                Ok(known) => known,
                // No room: nothing the agent could trust to be unchanged.
                Err(_) => return Ok(None),
            },
        };
        Ok((known.start == start).then_some(known))
    }
}

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

/// The pins of one build of the programs: `<pin_dir>/<build>/maps/<MAP>` and
/// `<pin_dir>/<build>/links/<program>`, where `<build>` names the object by its hash, so an
/// agent never adopts maps laid out by another build.
struct Pins {
    root: PathBuf,
    build: PathBuf,
}

impl Pins {
    fn new(root: &Path) -> Result<Self, HookError> {
        ensure_bpffs(root)?;
        Ok(Self {
            root: root.to_owned(),
            build: root.join(kernel_hook_ebpf::object_id()),
        })
    }

    fn create_dirs(&self) -> Result<(), HookError> {
        for dir in [self.build.join("maps"), self.build.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                HookError::from_bpf(format!("creating the pin directory {}", dir.display()), e)
            })?;
        }
        Ok(())
    }

    fn map(&self, name: &str) -> PathBuf {
        self.build.join("maps").join(name)
    }

    fn link(&self, program: &str) -> PathBuf {
        self.build.join("links").join(program)
    }

    /// The pinned link of `program`, when a previous agent left one.
    fn adopt(&self, program: &str) -> Option<FdLink> {
        PinnedLink::from_pin(self.link(program))
            .ok()
            .map(FdLink::from)
    }

    fn pin(&self, program: &str, link: FdLink) -> Result<FdLink, HookError> {
        let path = self.link(program);
        link.pin(&path)
            .map(FdLink::from)
            .map_err(|e| HookError::from_bpf(format!("pinning {}", path.display()), e))
    }

    /// Removes the pins of other builds (after this build's programs are attached).
    fn remove_other_builds(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.path() != self.build
                && let Err(error) = remove_tree(&entry.path())
            {
                tracing::warn!(
                    "cannot remove the pins of another build at {}: {error}",
                    entry.path().display()
                );
            }
        }
    }

    fn remove_all(root: &Path) -> Result<bool, HookError> {
        if !root.exists() {
            return Ok(false);
        }
        remove_tree(root)
            .map(|()| true)
            .map_err(|e| HookError::from_bpf(format!("removing the pins at {}", root.display()), e))
    }
}

/// Removes a directory of pins (bpffs has no recursive removal).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            remove_tree(&entry?.path())?;
        }
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is mounted by convention.
const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure `pin_dir` is on bpffs: mounts bpffs at `/sys/fs/bpf` when the directory is under
/// it and nothing is mounted there (minimal systems often lack the mount).
fn ensure_bpffs(pin_dir: &Path) -> Result<(), HookError> {
    let existing = pin_dir
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(pin_dir);
    if is_bpffs(existing) {
        return Ok(());
    }
    if pin_dir.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)) {
        std::fs::create_dir_all(BPFFS)
            .map_err(|e| HookError::from_bpf(format!("creating {BPFFS}"), e))?;
        // SAFETY: all pointers are NUL-terminated literals; mount does not keep them.
        let mounted = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(HookError::from_bpf(
                format!("mounting bpffs at {BPFFS} (none is mounted)"),
                std::io::Error::last_os_error(),
            ));
        }
        return Ok(());
    }
    Err(HookError::NoBpffs {
        path: pin_dir.display().to_string(),
    })
}

/// Whether `path` is on a bpffs mount.
fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

impl EventReader {
    /// Moves every queued event into `sink`; returns how many the kernel reported lost since
    /// the last call.
    pub fn drain(&mut self, sink: impl FnMut(HookEvent)) -> u64 {
        self.drain_events(sink);
        self.new_lost()
    }

    /// Moves every queued event into `sink`; returns how many records there were.
    fn drain_events(&mut self, sink: impl FnMut(HookEvent)) -> usize {
        self.drain_some(usize::MAX, sink)
    }

    /// Moves up to `limit` queued events into `sink`; returns how many records there were.
    fn drain_some(&mut self, limit: usize, mut sink: impl FnMut(HookEvent)) -> usize {
        let mut records = 0;
        while records < limit
            && let Some(record) = self.ring.next()
        {
            records += 1;
            if let Some(event) = parse_event(&record) {
                sink(event);
            }
        }
        records
    }

    /// Drains the ring into `events` a chunk at a time; returns how many records there were.
    /// Kernel losses are told (`lost`) before the events drained with them are passed on: an
    /// event that follows a lost one (an exec the consumer never saw) must not be handled as if
    /// nothing had been missed. Each event the channel refuses is told (`dropped`) at once,
    /// before the next is passed on.
    fn forward(
        &mut self,
        batch: &mut Vec<HookEvent>,
        events: &mpsc::Sender<HookEvent>,
        lost: &impl Fn(u64),
        dropped: &impl Fn(u64),
    ) -> usize {
        const CHUNK: usize = 1024;
        let mut records = 0;
        loop {
            let chunk = self.drain_some(CHUNK, |event| batch.push(event));
            records += chunk;
            if chunk > 0 {
                let new_lost = self.new_lost();
                if new_lost > 0 {
                    lost(new_lost);
                }
            }
            for event in batch.drain(..) {
                if events.try_send(event).is_err() {
                    dropped(1);
                }
            }
            if chunk < CHUNK {
                return records;
            }
        }
    }

    /// How many events the kernel reported lost since the last call.
    fn new_lost(&mut self) -> u64 {
        let lost: u64 = self
            .lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(self.lost_seen);
        let new = lost.saturating_sub(self.lost_seen);
        self.lost_seen = lost;
        new
    }

    /// Says whether the reader sleeps (the next event then wakes it).
    fn set_asleep(&mut self, asleep: bool) -> bool {
        self.reader.set(0, u32::from(asleep), 0).is_ok()
    }

    /// Drains into `events` until it closes: every [`DRAIN_INTERVAL`] while events come; after
    /// [`QUIET_DRAINS`] drains that found nothing, it sleeps until the ring wakes it (the
    /// programs wake a sleeping reader with the next event), so a quiet node costs nothing and
    /// the first event after a quiet spell is read at once. An event the channel has no room
    /// for is counted by `dropped`; kernel losses by `lost`.
    pub async fn run(
        mut self,
        events: mpsc::Sender<HookEvent>,
        lost: impl Fn(u64) + Send,
        dropped: impl Fn(u64) + Send,
    ) {
        use std::os::fd::AsFd;
        // Readable when the ring wakes its reader (another descriptor of the same map).
        let mut wakeup = self.ring.as_fd().try_clone_to_owned().ok().and_then(|fd| {
            // SAFETY: the AsyncFd owns `fd`, which nothing else closes or replaces.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .ok()
        });
        let mut ticker = tokio::time::interval(DRAIN_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quiet = 0;
        let mut batch = Vec::with_capacity(1024);
        loop {
            ticker.tick().await;
            if events.is_closed() {
                break;
            }
            let records = self.forward(&mut batch, &events, &lost, &dropped);
            if records == 0 {
                quiet += 1;
            } else {
                quiet = 0;
            }
            if quiet >= QUIET_DRAINS
                && let Some(ring) = &wakeup
                && self.set_asleep(true)
            {
                // An event submitted before the flag was set did not wake anyone.
                if self.forward(&mut batch, &events, &lost, &dropped) == 0 {
                    loop {
                        match tokio::time::timeout(SLEEP_CHECK, ring.readable()).await {
                            Ok(Ok(mut ready)) => {
                                ready.clear_ready();
                                break;
                            }
                            Ok(Err(error)) => {
                                tracing::warn!("cannot wait for the ring buffer: {error}");
                                wakeup = None;
                                break;
                            }
                            Err(_) if events.is_closed() => return,
                            Err(_) => {}
                        }
                    }
                    ticker.reset_immediately();
                }
                self.set_asleep(false);
                quiet = 0;
            }
        }
    }
}
