//! Real cgroups made for one test and removed afterwards (deepest first), with the process moved
//! into them killed: to place a process where a container runtime, or an attacker, would.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The cgroup v2 hierarchy of this host: `/sys/fs/cgroup` alone, or `/sys/fs/cgroup/unified`
/// beside v1.
pub fn v2_root() -> PathBuf {
    let alone = Path::new("/sys/fs/cgroup");
    if alone.join("cgroup.controllers").exists() {
        alone.to_owned()
    } else {
        alone.join("unified")
    }
}

/// Cgroups made by a test, and the process in the deepest.
pub struct Cgroups {
    /// The directories this test made, outermost first.
    pub made: Vec<PathBuf>,
    /// The process moved into the leaf (`sleep 60`).
    pub child: Child,
}

impl Cgroups {
    /// Spawns a root process and moves it into `leaf` under `root`, creating every level.
    pub fn spawn_into(root: &Path, leaf: &str) -> Self {
        Self::spawn_delegated(root, leaf, None)
    }

    /// Like [`Cgroups::spawn_into`], but as systemd delegates a subtree to a user: `delegated`
    /// = `(prefix, uid)` makes the level `prefix` of `leaf` and everything below it owned by
    /// `uid`, and the process runs as `uid` (as `systemd-run --user --scope` does).
    pub fn spawn_delegated(root: &Path, leaf: &str, delegated: Option<(&str, u32)>) -> Self {
        let mut made = Vec::new();
        let mut dir = root.to_path_buf();
        let mut relative = String::new();
        for part in leaf.split('/') {
            dir.push(part);
            if !relative.is_empty() {
                relative.push('/');
            }
            relative.push_str(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
                made.push(dir.clone());
                // Only what this test made: a host's own subtrees keep their owners.
                if let Some((prefix, uid)) = delegated
                    && relative.starts_with(prefix)
                {
                    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
                }
            }
        }
        let mut command = Command::new("sleep");
        command.arg("60");
        if let Some((_, uid)) = delegated {
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().unwrap();
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, child.id().to_string())
            .unwrap_or_else(|e| panic!("moving {} into {}: {e}", child.id(), procs.display()));
        Self { made, child }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.made.iter().rev() {
            // A cgroup is removable once its last process is gone, which can take a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
