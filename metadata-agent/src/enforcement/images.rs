//! Exec-time identities the agent gave a rule set (the kernel's `IMAGES` map): what the kernel
//! knows of a process at `exec` — its cgroup, its executable's device, inode and change time —
//! mapped to the rule set such a process gets from its first instruction, before the agent
//! judges it. Each entry remembers how to tell it no longer applies (the cgroup is gone, the
//! file changed) and the policy version it was made under.

use std::collections::HashMap;
use std::path::PathBuf;

use collectors::procfs::FileIdentity;
use kernel_hook::Hook;
use kernel_hook::maps::{ImageKey, kernel_dev};

/// What keeps an entry meaningful.
#[derive(Debug, Clone)]
pub enum Alive {
    /// A cgroup, while its directory exists (cgroup ids are not reused).
    Cgroup(PathBuf),
    /// A version of a file. Kept until evicted: a file changed or replaced (even on a reused
    /// inode) has another change time, so an old entry never names it.
    File,
}

impl Alive {
    fn holds(&self) -> bool {
        match self {
            Self::Cgroup(dir) => dir.exists(),
            Self::File => true,
        }
    }
}

/// Entries for executables (by file, in any cgroup) kept at most; the oldest go first.
const MAX_FILE_ENTRIES: usize = 16_384;

struct Entry {
    ruleset: u32,
    alive: Alive,
    version: u64,
}

/// The entries this agent wrote.
#[derive(Default)]
pub struct Images {
    entries: HashMap<ImageKey, Entry>,
    /// Entries of executables in any cgroup, oldest first.
    files: std::collections::VecDeque<ImageKey>,
}

/// The key of an executable's identity, in cgroup `cgroup_id` (0: any).
pub fn key_of(cgroup_id: u64, executable: Option<&FileIdentity>) -> ImageKey {
    let mut key = ImageKey {
        cgroup_id,
        ..ImageKey::default()
    };
    if let Some(identity) = executable {
        let (major, minor) = identity.dev();
        let (sec, nsec) = identity.ctime();
        key.dev = kernel_dev(libc::makedev(major, minor));
        key.ino = identity.ino();
        key.ctime_sec = sec;
        key.ctime_nsec = nsec;
    }
    key
}

impl Images {
    /// Gives `key` rule set `ruleset` (policy version `version`).
    pub fn put(
        &mut self,
        hook: &mut Hook,
        key: ImageKey,
        ruleset: u32,
        alive: Alive,
        version: u64,
    ) -> Result<(), kernel_hook::HookError> {
        if let Some(entry) = self.entries.get_mut(&key)
            && entry.ruleset == ruleset
        {
            entry.version = entry.version.max(version);
            return Ok(());
        }
        hook.put_image(key, ruleset)?;
        if matches!(alive, Alive::File) && !self.entries.contains_key(&key) {
            self.files.push_back(key);
            while self.files.len() > MAX_FILE_ENTRIES {
                if let Some(oldest) = self.files.pop_front() {
                    self.remove(hook, &oldest);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                ruleset,
                alive,
                version,
            },
        );
        Ok(())
    }

    /// Forgets `key` (its processes wait for their own verdicts).
    pub fn remove(&mut self, hook: &mut Hook, key: &ImageKey) {
        if self.entries.remove(key).is_some() {
            hook.remove_image(key);
        }
        self.files.retain(|file| file != key);
    }

    /// Forgets the entries that no longer apply, and those made under a policy version older
    /// than `version` (after a reload, once every known process was judged again).
    pub fn prune(&mut self, hook: &mut Hook, version: Option<u64>) {
        self.entries.retain(|key, entry| {
            let keep = entry.alive.holds() && version.is_none_or(|v| entry.version >= v);
            if !keep {
                hook.remove_image(key);
            }
            keep
        });
        let entries = &self.entries;
        self.files.retain(|key| entries.contains_key(key));
    }
}
