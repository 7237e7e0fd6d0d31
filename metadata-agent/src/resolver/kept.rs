//! Kept answers: the finished answer of a cached process, kept with its process's open
//! `/proc/<pid>` directory and given again while the process, its container and the node are
//! unchanged. A repeated lookup then checks the process's image through that directory (its
//! executable's identity, its effective ids, its cgroups), which fails once the process is gone,
//! even when its PID has been reused.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use collectors::{ProcDir, Scope};

use super::caches::container_key;
use super::{Found, Resolution, ResolveError, Resolver, ScopeEntry};

/// Serialized answers kept at most (each about 3 KiB and an open proc directory), for the
/// processes looked up most.
const KEPT_ANSWERS: usize = 1_024;

/// How many answers to keep: [`KEPT_ANSWERS`], or a quarter of the open-file limit when that is
/// lower, since each holds a file descriptor.
pub(super) fn kept_answer_capacity() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let open_files = limit.current.unwrap_or(u64::MAX);
    (open_files / 4).clamp(1, KEPT_ANSWERS as u64) as usize
}

/// What a hook event says of the process that made it: its effective ids and cgroup. The
/// hook also reports every exec and every move to another cgroup (on any hierarchy), so once an
/// answer has been checked whole against procfs, later events of the process with the same
/// `Seen` vouch that it still holds (its executable, ids and cgroups are those checked), and
/// a connect reuses it without reading procfs. An exec, a move or an exit drops the answer's
/// entries; lost or dropped hook events void every voucher ([`Resolver::hook_events_missed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// cgroup v2 id.
    pub cgroup_id: u64,
}

/// An answer, the entries it was made from and, on a real procfs, its process's open proc
/// directory.
pub(super) struct KeptAnswer {
    pub found: Found,
    pub dir: Option<ProcDir>,
    pub resolution: Arc<Resolution>,
    /// `resolution` as JSON, made at the first lookup that asks for it.
    pub json: OnceLock<bytes::Bytes>,
    /// The events that vouch for it, and the hook epoch they belong to (see [`Seen`]).
    pub vouched: std::sync::Mutex<Option<(Seen, u64)>>,
    /// The hook table's change count of the process's bucket when its entry was last found
    /// unchanged ([`kernel_hook::ProcessTable::changes`]; 0: never).
    pub kernel_checked: AtomicU64,
}

impl KeptAnswer {
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

impl Resolver {
    /// The kept answer for `pid` if it is still current, else a new one (kept when its
    /// process entry came from the cache).
    pub(super) async fn answer(&self, pid: u32) -> Result<Arc<KeptAnswer>, ResolveError> {
        let kept = self.answers.get(&pid);
        if let Some(answer) = &kept
            && self.still_current(answer)
        {
            self.metrics.cache_hit(Scope::Process);
            if answer.found.container.is_some() {
                self.metrics.cache_hit(Scope::Container);
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
            return Ok(Arc::new(KeptAnswer {
                resolution,
                json: OnceLock::new(),
                dir: None,
                found,
                vouched: std::sync::Mutex::new(None),
                kernel_checked: AtomicU64::new(0),
            }));
        }
        // Opened after the lookup, so checked to be the same process before it is kept.
        let dir = ProcDir::open(&self.roots, pid).ok().filter(|dir| {
            found.entry.image.is_some()
                && dir.pins_process()
                && dir.start_ticks() == found.process.start_ticks
        });
        let answer = Arc::new(KeptAnswer {
            resolution,
            json: OnceLock::new(),
            dir,
            found,
            vouched: std::sync::Mutex::new(None),
            kernel_checked: AtomicU64::new(0),
        });
        self.answers.insert(pid, Arc::clone(&answer));
        Ok(answer)
    }

    /// The resolution of process `pid` for a hook event that says `seen` of it: the kept
    /// answer without reading procfs when earlier events with the same `seen` vouch for it
    /// (see [`Seen`]), else as [`Resolver::resolve`], and the answer is then vouched for.
    pub async fn resolve_seen(
        &self,
        pid: u32,
        seen: Seen,
    ) -> Result<Arc<Resolution>, ResolveError> {
        let epoch = self.hook_epoch.load(std::sync::atomic::Ordering::Acquire);
        if let Some(resolution) = self.vouched_at(pid, seen, epoch) {
            return Ok(resolution);
        }
        // Checked whole (or made) now, after the event: what the next events vouch for.
        let mut answer = self.answer(pid).await?;
        if !same_ids(&answer.resolution, seen) {
            // The process changed its effective ids since it was collected, and the image
            // check did not tell (where an undumpable process's procfs files belong to root
            // whatever its ids): collected again. A thread running with other ids than its process's
            // leader keeps differing; its answer is then the fresh one.
            self.forget(pid);
            answer = self.answer(pid).await?;
        }
        if answer.dir.is_some() {
            *answer.vouched.lock().unwrap_or_else(|e| e.into_inner()) = Some((seen, epoch));
        }
        Ok(Arc::clone(&answer.resolution))
    }

    /// The kept answer of process `pid` when earlier events with the same `seen` vouch for
    /// it (see [`Seen`]); never reads procfs.
    pub fn vouched(&self, pid: u32, seen: Seen) -> Option<Arc<Resolution>> {
        let epoch = self.hook_epoch.load(std::sync::atomic::Ordering::Acquire);
        self.vouched_at(pid, seen, epoch)
    }

    fn vouched_at(&self, pid: u32, seen: Seen, epoch: u64) -> Option<Arc<Resolution>> {
        let answer = self.answers.get(&pid)?;
        let vouched = *answer.vouched.lock().unwrap_or_else(|e| e.into_inner());
        if vouched != Some((seen, epoch)) || !self.entries_current(&answer) {
            return None;
        }
        self.metrics.cache_hit(Scope::Process);
        if answer.found.container.is_some() {
            self.metrics.cache_hit(Scope::Container);
        }
        Some(Arc::clone(&answer.resolution))
    }

    /// Hook events were lost or dropped: an exec or a cgroup move may have gone unseen, so
    /// events vouch for no kept answer until each is checked whole again.
    pub fn hook_events_missed(&self) {
        self.hook_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether a kept answer is still the one [`Resolver::find`] would lead to.
    fn still_current(&self, answer: &KeptAnswer) -> bool {
        let Some(dir) = &answer.dir else {
            return false;
        };
        let found = &answer.found;
        let Some(then) = &found.entry.image else {
            return false;
        };
        // The hook's table changes before an exec or a move returns: unchanged, only the
        // effective ids remain to be checked (one `fstat`). Else the image is read again.
        let same_image = if self.kernel_unchanged(
            found.process.pid,
            found.process.start_ticks,
            found.entry.kernel,
            &answer.kernel_checked,
        ) {
            self.metrics.answer_checks_kernel.inc();
            then.same_owner(dir)
        } else {
            self.metrics.answer_checks_procfs.inc();
            dir.image().is_some_and(|now| *then == now)
        };
        same_image && self.entries_current(answer)
    }

    /// Whether the process, container and node entries a kept answer was made from are still
    /// those in the caches.
    fn entries_current(&self, answer: &KeptAnswer) -> bool {
        let found = &answer.found;
        let key = (found.process.pid, found.process.start_ticks);
        let same_container = match (&found.entry.container, &found.container) {
            (Some(identity), Some(kept)) => self
                .containers
                .get(&container_key(identity))
                .is_some_and(|now| Arc::ptr_eq(&now, kept)),
            // No container collector runs (the registry does not change), or no container.
            (Some(_), None) | (None, _) => true,
        };
        same_container
            && self
                .processes
                .get(&key)
                .is_some_and(|now| Arc::ptr_eq(&now, &found.entry))
            && Arc::ptr_eq(&self.node(), &found.node)
    }
}

/// Whether a resolution's effective ids (`process:uid:effective`, `process:gid:effective`) are
/// those an event saw; a resolution without them (not readable) does not disagree.
fn same_ids(resolution: &Resolution, seen: Seen) -> bool {
    let agrees = |key: &str, id: u32| {
        resolution
            .labels
            .get(key)
            .first()
            .is_none_or(|value| *value == id.to_string())
    };
    agrees("process:uid:effective", seen.euid) && agrees("process:gid:effective", seen.egid)
}
