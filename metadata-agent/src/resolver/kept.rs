//! Kept answers: the finished answer of a cached process, kept with its process's open
//! `/proc/<pid>` directory and given again while the process, its container and the node are
//! unchanged. A repeated lookup then checks the process's image through that directory (its
//! executable's identity, its effective ids, its cgroups), which fails once the process is gone,
//! even when its PID has been reused.

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

/// An answer, the entries it was made from and, on a real procfs, its process's open proc
/// directory.
pub(super) struct KeptAnswer {
    pub found: Found,
    pub dir: Option<ProcDir>,
    pub resolution: Arc<Resolution>,
    /// `resolution` as JSON, made at the first lookup that asks for it.
    pub json: OnceLock<bytes::Bytes>,
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
        });
        self.answers.insert(pid, Arc::clone(&answer));
        Ok(answer)
    }

    /// Whether a kept answer is still the one [`Resolver::find`] would lead to.
    fn still_current(&self, answer: &KeptAnswer) -> bool {
        let Some(dir) = &answer.dir else {
            return false;
        };
        let found = &answer.found;
        let key = (found.process.pid, found.process.start_ticks);
        let same_image = match (&found.entry.image, dir.image()) {
            (Some(then), Some(now)) => *then == now,
            _ => false,
        };
        let same_container = match (&found.entry.container, &found.container) {
            (Some(identity), Some(kept)) => self
                .containers
                .get(&container_key(identity))
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
}
