//! Process lineage: which execution a process is ([`ExecId`]) and where it came from (its
//! ancestors, nearest first).
//!
//! Ancestors are read from procfs, following each process's parent, and kept as [`Record`]s by
//! PID and start time. When the kernel hook runs, its fork and exec events are fed here
//! ([`Lineage::forked`], [`Lineage::execed`], [`Lineage::exited`]): a process then carries the
//! chain it was born with, so an ancestor that exited (a launcher, the middle of a double fork)
//! still counts, and a reparented process keeps the parent that forked it rather than the init
//! or subreaper it was handed to.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::host::HostRoots;
use crate::process::{ProcDir, parse_start_ticks, stat_field, status_field};

/// Default number of ancestors given (`process:ancestor:*`).
pub const DEFAULT_ANCESTOR_DEPTH: usize = 8;
/// Default number of processes whose lineage is kept.
pub const DEFAULT_LINEAGE_ENTRIES: usize = 65_536;
/// The most ancestors that may be asked for.
pub const MAX_ANCESTOR_DEPTH: usize = 32;
/// How far up procfs is followed at most, for any one process: a chain cut there is not kept,
/// and twice the largest depth is far enough that no chain given is cut.
const MAX_WALK: usize = 2 * MAX_ANCESTOR_DEPTH;

/// One execution of one process on one node: `<boot>-<pid>-<start>-<image>`.
///
/// - `boot`: the first 64 bits of the kernel's random boot id (`/proc/sys/kernel/random/boot_id`),
///   new at every boot of every node;
/// - `pid` and `start` (clock ticks since boot): the process, unique within one boot;
/// - `image`: 64 bits of the SHA-256 of the process's auxiliary vector (`/proc/<pid>/auxv`),
///   which the kernel writes at every `exec` (with address-space randomization, the addresses
///   it holds differ at every exec) and which the process cannot rewrite without
///   `CAP_SYS_RESOURCE`: an `exec` gives a new id.
///
/// Consumers should compare ids for equality only; the agent parses them to find the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExecId {
    /// The node's boot.
    pub boot: u64,
    /// The process.
    pub pid: u32,
    /// Its start time, in clock ticks since boot.
    pub start: u64,
    /// Its current image.
    pub image: u64,
}

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x}-{}-{}-{:016x}",
            self.boot, self.pid, self.start, self.image
        )
    }
}

impl FromStr for ExecId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = "an exec id is <boot>-<pid>-<start>-<image>: 16 hex digits, a PID, clock \
                        ticks, 16 hex digits";
        // The longest: 16 + 10 + 20 + 16 digits and 3 dashes. Longer text is not echoed back.
        const MAX_LEN: usize = 65;
        if text.len() > MAX_LEN {
            return Err(format!(
                "{} bytes, more than any exec id ({MAX_LEN}); {expected}",
                text.len()
            ));
        }
        let parts: Vec<&str> = text.split('-').collect();
        let [boot, pid, start, image] = parts.as_slice() else {
            return Err(format!("{text:?} has {} parts; {expected}", parts.len()));
        };
        let hex = |part: &str, name: &str| {
            (part.len() == 16 && part.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(part, 16).ok())
                .flatten()
                .ok_or_else(|| format!("{text:?}: its {name} {part:?} is not 16 hex digits"))
        };
        let number = |part: &str, name: &str| {
            (part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| format!("{text:?}: its {name} {part:?} is not a number"))
        };
        let pid = u32::try_from(number(pid, "pid")?)
            .ok()
            .filter(|&pid| pid > 0)
            .ok_or_else(|| format!("{text:?}: its pid {pid:?} is not a PID"))?;
        Ok(Self {
            boot: hex(boot, "boot")?,
            pid,
            start: number(start, "start time")?,
            image: hex(image, "image")?,
        })
    }
}

/// What an ancestor ran.
#[derive(Debug, PartialEq, Eq)]
pub struct Image {
    /// Its name, as `process:name` gives it.
    pub name: String,
    /// Its executable, as `process:binary:path` gives it; `None` when it could not be read
    /// (the process was gone before its exec was looked at).
    pub path: Option<String>,
    /// Whether the path is the process's own choice (a mount namespace of its own).
    pub path_untrusted: bool,
}

/// One ancestor: what it ran, and which execution it was.
#[derive(Debug, Clone)]
pub struct Ancestor {
    /// What it ran (shared by the processes it forked before they exec'd).
    pub image: Arc<Image>,
    /// Its execution, when it was read.
    pub exec_id: Option<ExecId>,
    /// How deep its PID namespace is (the number of PIDs of `NSpid:`, 1 on the host); 0:
    /// unknown.
    pub pid_namespace_depth: u8,
}

/// A chain of ancestors, nearest first, shared between siblings (a fork adds one link).
#[derive(Debug, Clone, Default)]
pub struct Ancestry(Option<Arc<Link>>);

#[derive(Debug)]
struct Link {
    ancestor: Ancestor,
    rest: Ancestry,
    len: usize,
}

impl Ancestry {
    /// `ancestor` followed by `rest`, of which at most `depth` are ever given. A chain twice
    /// that long is cut: a chain of forks whose every parent exits must not keep them all.
    fn with_parent(ancestor: Ancestor, rest: &Ancestry, depth: usize) -> Self {
        let rest = if rest.len() >= 2 * depth.max(1) {
            rest.truncated(depth)
        } else {
            rest.clone()
        };
        Self(Some(Arc::new(Link {
            ancestor,
            len: rest.len() + 1,
            rest,
        })))
    }

    fn truncated(&self, keep: usize) -> Self {
        let kept: Vec<Ancestor> = self.iter().take(keep).cloned().collect();
        kept.into_iter()
            .rev()
            .fold(Self::default(), |rest, ancestor| {
                Self(Some(Arc::new(Link {
                    ancestor,
                    len: rest.len() + 1,
                    rest,
                })))
            })
    }

    /// How many ancestors the chain holds.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |link| link.len)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The ancestors, nearest first.
    pub fn iter(&self) -> impl Iterator<Item = &Ancestor> {
        std::iter::successors(self.0.as_deref(), |link| link.rest.0.as_deref())
            .map(|link| &link.ancestor)
    }
}

/// What [`Lineage::of`] gives for one process.
#[derive(Debug, Default)]
pub struct ProcessLineage {
    /// The execution of its parent (`process:ppid`), when it could be read.
    pub parent_exec_id: Option<ExecId>,
    /// Its ancestors, nearest first.
    pub ancestors: Vec<Ancestor>,
    /// Whether the chain may lack an ancestor that exited: the process started while the
    /// hook's events were followed, yet its fork was not seen.
    pub unseen: bool,
}

/// What is known of one process.
#[derive(Debug)]
struct Record {
    start: u64,
    me: Ancestor,
    /// PID 1 of its PID namespace (the host's init or a container's): its children's chains
    /// stop at it.
    namespace_init: bool,
    /// Its ancestors (empty for a namespace init).
    ancestors: Ancestry,
    /// Whether `ancestors` holds every ancestor there is up to the depth: not when a walk up
    /// procfs was cut short (such a record is used once, not kept).
    complete: bool,
}

/// The lineage of the node's processes.
pub struct Lineage {
    roots: HostRoots,
    depth: usize,
    /// From when (clock ticks since boot) the hook's events are fed here; 0: they are not.
    following_since: std::sync::atomic::AtomicU64,
    records: Cache<u32, Arc<Record>>,
    boot: OnceLock<Option<u64>>,
    host_mount_namespace: OnceLock<Option<PathBuf>>,
}

impl Lineage {
    /// Lineage read through `roots`, chains of at most `depth` ancestors, of at most `entries`
    /// processes.
    pub fn new(roots: HostRoots, depth: usize, entries: usize) -> Self {
        Self {
            roots,
            depth,
            records: Cache::new(entries.max(1)),
            following_since: std::sync::atomic::AtomicU64::new(0),
            boot: OnceLock::new(),
            host_mount_namespace: OnceLock::new(),
        }
    }

    /// How many ancestors are given.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The hook's fork, exec and exit events are fed here from now on: a process started
    /// later whose fork was not seen (an event lost, or not read yet) has a chain that may lack
    /// an ancestor that exited, and [`Lineage::of`] says so.
    pub fn follow_hook_events(&self) {
        let now = boot_clock_ticks();
        let _ = self.following_since.compare_exchange(
            0,
            now.max(1),
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    /// The node's boot (the first 64 bits of its boot id); `None` where it cannot be read (a
    /// recorded tree).
    pub fn boot(&self) -> Option<u64> {
        *self.boot.get_or_init(|| {
            let text =
                std::fs::read_to_string(self.roots.proc.join("sys/kernel/random/boot_id")).ok()?;
            let hex: String = text.trim().chars().filter(|c| *c != '-').take(16).collect();
            (hex.len() == 16)
                .then(|| u64::from_str_radix(&hex, 16).ok())
                .flatten()
        })
    }

    /// The execution of the process of `dir` (`pid`, started at `start`); `None` without a
    /// boot id (a recorded tree) or an auxiliary vector (a kernel thread, a zombie).
    pub fn exec_id(&self, dir: &ProcDir, pid: u32, start: u64) -> io::Result<Option<ExecId>> {
        let Some(boot) = self.boot() else {
            return Ok(None);
        };
        let auxv = match dir.read("auxv") {
            Ok(auxv) => auxv,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Empty for a kernel thread or a zombie; all zero (its first entry `AT_NULL`) while
        // an exec is in progress: the kernel writes the vector after the old image is gone.
        let word = std::mem::size_of::<usize>();
        if auxv.len() < word || auxv[..word].iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let digest = Sha256::digest(&auxv);
        let image = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        Ok(Some(ExecId {
            boot,
            pid,
            start,
            image,
        }))
    }

    /// [`Lineage::of_opened`], opening the parent's directory itself.
    #[cfg(test)]
    pub fn of(&self, pid: u32, start: Option<u64>, ppid: u32, status: &[u8]) -> ProcessLineage {
        let parent = ProcDir::open(&self.roots, ppid)
            .ok()
            .and_then(|dir| dir.read("stat").ok().map(|stat| (dir, stat)));
        let parent = parent.as_ref().map(|(dir, stat)| (dir, stat.as_slice()));
        self.of_opened(pid, start, ppid, parent, status)
    }

    /// The lineage of process `pid` started at `start` (`None`: unknown), whose parent is
    /// `ppid` now and whose `status` is given. The parent's directory comes open, with its
    /// `stat` read (`None`: it could not be), as the collector has them for the parent's own
    /// labels: it is read (or found kept) once for all of it.
    ///
    /// The ancestors come nearest first, at most the depth: the chain the process was born
    /// with when its fork was seen, else its parents' as procfs shows them. The chain stays in
    /// the process's PID namespace: none for the init of one, and it stops before an ancestor
    /// outside (a container's process started by `docker exec` has none).
    pub fn of_opened(
        &self,
        pid: u32,
        start: Option<u64>,
        ppid: u32,
        parent: Option<(&ProcDir, &[u8])>,
        status: &[u8],
    ) -> ProcessLineage {
        let parent = parent.and_then(|(dir, stat)| self.record_at(dir, stat, ppid, MAX_WALK));
        let mut lineage = ProcessLineage {
            parent_exec_id: parent.as_ref().and_then(|parent| parent.me.exec_id),
            ancestors: Vec::new(),
            unseen: false,
        };
        if self.depth == 0 || is_namespace_init(pid, status) {
            return lineage;
        }
        let record = start.and_then(|start| self.records.get(&pid).filter(|r| r.start == start));
        let following = self
            .following_since
            .load(std::sync::atomic::Ordering::Acquire);
        lineage.unseen =
            record.is_none() && following > 0 && start.is_some_and(|start| start > following);
        let chain = match (record, parent) {
            (Some(record), _) => record.ancestors.clone(),
            (None, Some(parent)) => self.child_chain(&parent),
            (None, None) => Ancestry::default(),
        };
        let own = pid_namespace_depth(status);
        lineage.ancestors = chain
            .iter()
            .take(self.depth)
            .take_while(|a| own == 0 || a.pid_namespace_depth == 0 || a.pid_namespace_depth >= own)
            .cloned()
            .collect();
        lineage
    }

    /// The chain of a child of `parent`, and whether it is complete.
    fn child_chain(&self, parent: &Record) -> Ancestry {
        let rest = if parent.namespace_init {
            Ancestry::default()
        } else {
            parent.ancestors.clone()
        };
        Ancestry::with_parent(parent.me.clone(), &rest, self.depth)
    }

    /// Whether a chain made from `parent`'s is complete.
    fn completes(&self, parent: &Record, chain: &Ancestry) -> bool {
        parent.complete || parent.namespace_init || chain.len() >= self.depth
    }

    /// The record of the process `pid` now: kept, when it is still that process, else read.
    fn record(&self, pid: u32) -> Option<Arc<Record>> {
        self.record_within(pid, MAX_WALK)
    }

    /// [`Lineage::record`], reading at most `levels` more parents from procfs.
    fn record_within(&self, pid: u32, levels: usize) -> Option<Arc<Record>> {
        if pid == 0 {
            return None;
        }
        let dir = ProcDir::open(&self.roots, pid).ok()?;
        let stat = dir.read("stat").ok()?;
        self.record_at(&dir, &stat, pid, levels)
    }

    /// [`Lineage::record_within`] of the process of `dir`, whose `stat` is given.
    fn record_at(
        &self,
        dir: &ProcDir,
        stat: &[u8],
        pid: u32,
        levels: usize,
    ) -> Option<Arc<Record>> {
        let start = parse_start_ticks(stat)?;
        if let Some(record) = self.records.get(&pid)
            && record.start == start
        {
            return Some(record);
        }
        let (me, namespace_init) = self.read_image(dir, pid, start, None)?;
        let ppid = stat_field(stat, 4).and_then(|p| p.parse::<u32>().ok());
        let (ancestors, complete) = match ppid {
            _ if namespace_init || self.depth == 0 => (Ancestry::default(), true),
            Some(_) if levels == 0 => (Ancestry::default(), false),
            Some(ppid) => match self.record_within(ppid, levels - 1) {
                Some(parent) => {
                    let chain = self.child_chain(&parent);
                    let complete = self.completes(&parent, &chain);
                    (chain, complete)
                }
                // Its parent is gone: there is nothing more to learn.
                None => (Ancestry::default(), true),
            },
            None => (Ancestry::default(), true),
        };
        let record = Arc::new(Record {
            start,
            me,
            namespace_init,
            ancestors,
            complete,
        });
        if complete {
            self.records.insert(pid, Arc::clone(&record));
        }
        Some(record)
    }

    /// What the process of `dir` runs now and whether it is a namespace init; `None` when it
    /// is gone, or (with `comm`, the name an exec event gave) when it already runs something
    /// else.
    fn read_image(
        &self,
        dir: &ProcDir,
        pid: u32,
        start: u64,
        comm: Option<&str>,
    ) -> Option<(Ancestor, bool)> {
        let status = dir.read("status").ok()?;
        let name = super::status_comm(&status)?;
        if comm.is_some_and(|comm| comm.as_bytes() != name.as_slice()) {
            return None;
        }
        let cmdline = if name.len() == super::COMM_MAX {
            dir.read("cmdline").unwrap_or_default()
        } else {
            Vec::new()
        };
        let path = dir.read_link("exe").ok().map(|p| super::escape_path(&p));
        let path_untrusted = path.is_some() && self.own_mount_namespace(dir);
        let exec_id = self.exec_id(dir, pid, start).ok().flatten();
        let namespace_init = is_namespace_init(pid, &status);
        let pid_namespace_depth = pid_namespace_depth(&status);
        let image = Image {
            name: super::process_name(&name, &super::split_args(&cmdline)),
            path,
            path_untrusted,
        };
        Some((
            Ancestor {
                image: Arc::new(image),
                exec_id,
                pid_namespace_depth,
            },
            namespace_init,
        ))
    }

    /// Whether the process of `dir` sees another mount namespace than the host's (see
    /// `ProcfsCollector`'s rule): there its executable's path is its own choice.
    fn own_mount_namespace(&self, dir: &ProcDir) -> bool {
        let host = self
            .host_mount_namespace
            .get_or_init(|| super::host_mount_namespace(&self.roots));
        super::differs_from_host(dir, host.as_deref())
    }

    /// The hook saw `ppid` (started at `parent_start`) fork the process `pid` (started at
    /// `start`): the child runs its parent's image, below its parent.
    pub fn forked(&self, pid: u32, start: u64, ppid: u32, parent_start: u64) {
        let parent = match self.records.get(&ppid) {
            Some(parent) if parent.start == parent_start => Some(parent),
            _ => self
                .record(ppid)
                .filter(|parent| parent.start == parent_start),
        };
        // A parent gone before this was looked at: the child is read from procfs when asked.
        let Some(parent) = parent else {
            return;
        };
        // In its parent's PID namespace, unless it is the init of a new one (which its exec,
        // read then, tells).
        let me = Ancestor {
            image: Arc::clone(&parent.me.image),
            exec_id: parent.me.exec_id.map(|id| ExecId { pid, start, ..id }),
            pid_namespace_depth: parent.me.pid_namespace_depth,
        };
        let ancestors = self.child_chain(&parent);
        let complete = self.completes(&parent, &ancestors);
        self.records.insert(
            pid,
            Arc::new(Record {
                start,
                me,
                namespace_init: false,
                ancestors,
                complete,
            }),
        );
    }

    /// The hook saw the process `pid` (started at `start`) exec a file now named `comm`: it
    /// keeps its ancestors and runs a new image, read now (only its name when the process is
    /// gone already, or already runs something else).
    pub fn execed(&self, pid: u32, start: u64, comm: &str) {
        let known = self
            .records
            .get(&pid)
            .filter(|record| record.start == start);
        // Its `stat` once: the start time that ties the directory to it, and its parent.
        let dir = ProcDir::open(&self.roots, pid).ok();
        let stat = dir.as_ref().and_then(|dir| dir.read("stat").ok());
        let same = stat.as_deref().and_then(parse_start_ticks) == Some(start);
        let read = dir
            .as_ref()
            .filter(|_| same)
            .and_then(|dir| self.read_image(dir, pid, start, Some(comm)));
        let (me, namespace_init) = read.unwrap_or_else(|| {
            let image = Image {
                name: comm.to_owned(),
                path: None,
                path_untrusted: false,
            };
            (
                Ancestor {
                    image: Arc::new(image),
                    exec_id: None,
                    pid_namespace_depth: known
                        .as_ref()
                        .map_or(0, |known| known.me.pid_namespace_depth),
                },
                false,
            )
        });
        let (ancestors, complete) = if namespace_init {
            (Ancestry::default(), true)
        } else if let Some(known) = &known {
            (known.ancestors.clone(), known.complete)
        } else {
            let ppid = stat
                .filter(|_| same)
                .and_then(|stat| stat_field(&stat, 4)?.parse::<u32>().ok());
            match ppid.and_then(|ppid| self.record(ppid)) {
                Some(parent) => {
                    let chain = self.child_chain(&parent);
                    let complete = self.completes(&parent, &chain);
                    (chain, complete)
                }
                None => (Ancestry::default(), true),
            }
        };
        self.records.insert(
            pid,
            Arc::new(Record {
                start,
                me,
                namespace_init,
                ancestors,
                complete,
            }),
        );
    }

    /// The hook saw the process `pid` (started at `start`) end. Its record goes; the processes
    /// it forked keep it in their chains.
    pub fn exited(&self, pid: u32, start: u64) {
        if self
            .records
            .get(&pid)
            .is_some_and(|record| record.start == start)
        {
            self.records.remove(&pid);
        }
    }
}

/// The boot-time clock in clock ticks (what `/proc/<pid>/stat` start times count).
fn boot_clock_ticks() -> u64 {
    // SAFETY: clock_gettime writes into a timespec we own.
    let now = unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now);
        now
    };
    let hz = super::clock_ticks_per_second();
    (now.tv_sec as u64).saturating_mul(hz) + now.tv_nsec as u64 * hz / 1_000_000_000
}

/// How deep the PID namespace of the process of `status` is: the number of PIDs `NSpid:`
/// lists (1 on the host); 0 when it is not there (a recorded tree).
fn pid_namespace_depth(status: &[u8]) -> u8 {
    status_field(status, "NSpid").map_or(0, |ids| {
        let count = ids
            .split(|b| b.is_ascii_whitespace())
            .filter(|id| !id.is_empty())
            .count();
        u8::try_from(count).unwrap_or(u8::MAX)
    })
}

/// Whether the process `pid` of `status` is PID 1 of its PID namespace: the host's init, or a
/// container's (`NSpid: 4242 1`, PID 1 of the innermost of several namespaces).
fn is_namespace_init(pid: u32, status: &[u8]) -> bool {
    pid == 1
        || status_field(status, "NSpid").is_some_and(|ids| {
            let ids: Vec<&[u8]> = ids
                .split(|b| b.is_ascii_whitespace())
                .filter(|id| !id.is_empty())
                .collect();
            ids.len() > 1 && ids.last() == Some(&&b"1"[..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_print_and_parse_back() {
        let id = ExecId {
            boot: 0x0123_4567_89ab_cdef,
            pid: 4242,
            start: 987_654,
            image: 0xfedc_ba98_7654_3210,
        };
        let text = id.to_string();
        assert_eq!(text, "0123456789abcdef-4242-987654-fedcba9876543210");
        assert_eq!(text.parse::<ExecId>(), Ok(id));
        for (bad, says) in [
            ("", "has 1 parts"),
            ("0123456789abcdef-4242-987654", "has 3 parts"),
            ("0123456789abcdeg-4242-987654-fedcba9876543210", "boot"),
            ("0123456789abcdef-0-987654-fedcba9876543210", "not a PID"),
            (
                "0123456789abcdef-99999999999-987654-fedcba9876543210",
                "not a PID",
            ),
            ("0123456789abcdef-+42-987654-fedcba9876543210", "pid"),
            ("0123456789abcdef-42-x-fedcba9876543210", "start time"),
            ("0123456789abcdef-42-1-fedcba987654321", "image"),
        ] {
            let error = bad.parse::<ExecId>().unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        // A huge one is refused without being echoed back.
        let huge = "-".repeat(1 << 20);
        let error = huge.parse::<ExecId>().unwrap_err();
        assert!(
            error.starts_with("1048576 bytes, more than any exec id"),
            "{}",
            &error[..80]
        );
        assert!(error.len() < 200);
    }

    #[test]
    fn no_exec_id_while_an_exec_is_in_progress_or_without_a_boot_id() {
        let dir = tempfile::tempdir().unwrap();
        let roots = HostRoots {
            proc: dir.path().to_owned(),
            ..HostRoots::default()
        };
        std::fs::create_dir_all(dir.path().join("7")).unwrap();
        let lineage = Lineage::new(roots.clone(), 8, 16);
        let at = || {
            let proc_dir = ProcDir::open(&roots, 7).unwrap();
            lineage.exec_id(&proc_dir, 7, 99).unwrap()
        };
        std::fs::write(
            dir.path().join("7/auxv"),
            [6u8, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(at(), None, "no boot id: a recorded tree");

        let lineage = Lineage::new(roots.clone(), 8, 16);
        std::fs::create_dir_all(dir.path().join("sys/kernel/random")).unwrap();
        std::fs::write(
            dir.path().join("sys/kernel/random/boot_id"),
            "0123abcd-4567-89ef-0123-456789abcdef\n",
        )
        .unwrap();
        let at = || {
            let proc_dir = ProcDir::open(&roots, 7).unwrap();
            lineage.exec_id(&proc_dir, 7, 99).unwrap()
        };
        let id = at().expect("an id");
        assert_eq!((id.boot, id.pid, id.start), (0x0123_abcd_4567_89ef, 7, 99));
        std::fs::write(dir.path().join("7/auxv"), [0u8; 32]).unwrap();
        assert_eq!(at(), None, "all zero: the exec is not done");
        std::fs::write(dir.path().join("7/auxv"), []).unwrap();
        assert_eq!(at(), None, "empty: a kernel thread or a zombie");
    }

    /// A recorded proc tree of `levels` processes, each the parent of the next (PID 1 the
    /// root).
    fn chain_tree(levels: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for pid in 1..=levels {
            let at = dir.path().join(pid.to_string());
            std::fs::create_dir(&at).unwrap();
            let stat = format!(
                "{pid} (p{pid}) S {} 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0",
                pid - 1,
                1000 + pid
            );
            std::fs::write(at.join("stat"), stat).unwrap();
            std::fs::write(at.join("status"), format!("Name:\tp{pid}\nNSpid:\t{pid}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn a_process_tree_thousands_deep_gives_the_nearest_ancestors_in_bounded_work() {
        let levels = 5000;
        let tree = chain_tree(levels);
        let roots = HostRoots {
            proc: tree.path().to_owned(),
            ..HostRoots::default()
        };
        for depth in [8, MAX_ANCESTOR_DEPTH] {
            let lineage = Lineage::new(roots.clone(), depth, 1024);
            let status = std::fs::read(tree.path().join(format!("{levels}/status"))).unwrap();
            let found = lineage.of(levels, Some(1000 + u64::from(levels)), levels - 1, &status);
            let names: Vec<String> = found
                .ancestors
                .iter()
                .map(|a| a.image.name.clone())
                .collect();
            let expected: Vec<String> = (1..=depth as u32)
                .map(|n| format!("p{}", levels - n))
                .collect();
            assert_eq!(names, expected);
            // Only the walk's reach is read and kept: a cut walk is not.
            assert!(
                lineage.records.len() <= MAX_WALK + 1,
                "{}",
                lineage.records.len()
            );
        }
        // Near the root the chain ends at PID 1.
        let lineage = Lineage::new(roots, 8, 1024);
        let status = std::fs::read(tree.path().join("4/status")).unwrap();
        let names: Vec<String> = lineage
            .of(4, Some(1004), 3, &status)
            .ancestors
            .iter()
            .map(|a| a.image.name.clone())
            .collect();
        assert_eq!(names, ["p3", "p2", "p1"]);
    }

    fn ancestor(name: &str) -> Ancestor {
        Ancestor {
            image: Arc::new(Image {
                name: name.to_owned(),
                path: None,
                path_untrusted: false,
            }),
            exec_id: None,
            pid_namespace_depth: 1,
        }
    }

    fn names(chain: &Ancestry) -> Vec<&str> {
        chain.iter().map(|a| a.image.name.as_str()).collect()
    }

    #[test]
    fn a_chain_of_forks_is_cut_so_it_never_keeps_more_than_twice_its_depth() {
        let mut chain = Ancestry::default();
        for n in 0..1000 {
            chain = Ancestry::with_parent(ancestor(&n.to_string()), &chain, 3);
            assert!(chain.len() <= 6, "{}", chain.len());
            assert_eq!(chain.iter().count(), chain.len());
        }
        assert_eq!(names(&chain)[..3], ["999", "998", "997"]);
    }
}
