//! A cgroup v2 made for one test: processes started in it from their first instruction (before
//! `exec`), so a hook attached to it judges them and nothing else on the machine. Removed (its
//! processes killed) when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// A cgroup of its own under the v2 root (`ma-test-<pid>-<n>-<name>`).
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates it; `name` tells tests apart in `ls`.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = v2_root().join(format!("ma-test-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// Its path under the v2 root, with a leading `/` (`docker run --cgroup-parent` takes it).
    pub fn relative(&self) -> String {
        format!("/{}", self.path.strip_prefix(v2_root()).unwrap().display())
    }

    /// Its directory (attach a hook here).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its cgroup v2 id (the directory's inode number), as `bpf_get_current_cgroup_id` gives it.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).unwrap().ino()
    }

    /// Makes `command` start inside this cgroup: the child moves itself in before `exec`.
    pub fn contain<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: between fork and exec only async-signal-safe calls: open, write, close.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kills every process in it and below (containers put under it too).
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if remove_tree(&self.path) || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes the cgroup `dir` and every cgroup below it, deepest first; whether it is gone.
fn remove_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok()
}
