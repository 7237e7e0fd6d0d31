//! Containers judged before their first process runs: the cgroup hierarchy under the hook's
//! attach point is watched (inotify), and a container cgroup that appears is looked up at its
//! runtime (which describes a container it is starting) so that its exec-time identity has a
//! rule set before the container's entrypoint is exec'd. A container the runtime cannot
//! describe yet, or whose policies depend on more than its labels, waits for its processes to
//! be judged (`hook.pendingVerdict` meanwhile).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use collectors::cgroup::{check_placement, parse_cgroup_file};
use selectors::PolicyStore;
use tokio::sync::mpsc;

use super::Enforcer;
use crate::resolver::Resolver;

/// A container being started: its cgroup, identity, and what a collector could tell of its
/// labels.
pub struct Starting<'a> {
    /// Its cgroup's directory.
    pub dir: &'a Path,
    /// Its identity, from the cgroup's path.
    pub identity: &'a collectors::cgroup::ContainerIdentity,
    /// What a collector could tell of its labels.
    pub prospect: collectors::Prospect,
}

/// How deep below the watched root new cgroups are followed.
const MAX_DEPTH: usize = 8;

/// Watches `root` (a cgroup v2 directory) until `stop` is set, judging each container cgroup
/// that appears below it.
pub fn watch_containers(
    root: PathBuf,
    enforcer: Arc<Enforcer>,
    resolver: Arc<Resolver>,
    policies: Arc<PolicyStore>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut watcher = Watcher::new(root.clone())?;
    let (found, mut candidates) = mpsc::channel::<PathBuf>(1024);
    std::thread::Builder::new()
        .name("cgroup-watch".to_owned())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for dir in watcher.next_dirs() {
                    if found.blocking_send(dir).is_err() {
                        return;
                    }
                }
            }
        })?;
    tokio::spawn(async move {
        while let Some(dir) = candidates.recv().await {
            judge_container(&dir, &enforcer, &resolver, &policies).await;
        }
    });
    Ok(())
}

/// Gives the container whose cgroup `dir` just appeared its exec-time rule set, if the runtime
/// describes it and the policies decide it from its labels alone.
async fn judge_container(
    dir: &Path,
    enforcer: &Enforcer,
    resolver: &Resolver,
    policies: &PolicyStore,
) {
    let Ok(relative) = dir.strip_prefix(collectors::cgroup::v2_root(resolver.roots())) else {
        return;
    };
    let info = parse_cgroup_file(&format!("0::/{}\n", relative.display()));
    let Some(identity) = info.identity() else {
        return;
    };
    // Only where a runtime would make it: root's, outside users' delegated subtrees.
    if !identity.hierarchy.is_empty()
        || check_placement(resolver.roots(), identity, resolver.placement()).is_err()
    {
        return;
    }
    for registered in resolver.registry().collectors() {
        if !registered.enabled {
            continue;
        }
        match registered.collector.prospective(identity).await {
            Ok(Some(prospect)) => {
                let (set, version) = (policies.current(), policies.status().reloads);
                let node = resolver.node();
                let starting = Starting {
                    dir,
                    identity,
                    prospect,
                };
                enforcer.judge_container(starting, &node.labels, &set, version);
                return;
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(
                container = identity.id,
                "cannot describe a starting container: {}",
                collectors::error_chain(&error)
            ),
        }
    }
}

/// An inotify instance watching a cgroup tree for new directories.
struct Watcher {
    fd: OwnedFd,
    root: PathBuf,
    /// Watch descriptor → directory.
    dirs: HashMap<i32, PathBuf>,
}

impl Watcher {
    fn new(root: PathBuf) -> std::io::Result<Self> {
        // SAFETY: inotify_init1 has no preconditions; a valid descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut watcher = Self {
            fd,
            root: root.clone(),
            dirs: HashMap::new(),
        };
        watcher.add_tree(&root, 0, &mut Vec::new());
        Ok(watcher)
    }

    /// Watches `dir` and every directory below it (to [`MAX_DEPTH`]); the ones found are added
    /// to `found` (a tree made before its watch was).
    fn add_tree(&mut self, dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                self.fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_ONLYDIR,
            )
        };
        if wd < 0 {
            return;
        }
        self.dirs.insert(wd, dir.to_owned());
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let child = entry.path();
                found.push(child.clone());
                self.add_tree(&child, depth + 1, found);
            }
        }
    }

    /// Waits (at most half a second) for new directories; returns them.
    fn next_dirs(&mut self) -> Vec<PathBuf> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, 500) } <= 0 {
            return Vec::new();
        }
        let mut buffer = vec![0u8; 64 * 1024];
        // SAFETY: reads into a buffer we own, of the length given.
        let read = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if read <= 0 {
            return Vec::new();
        }
        let mut created = Vec::new();
        let mut offset = 0;
        let header = std::mem::size_of::<libc::inotify_event>();
        while offset + header <= read as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with the buffer's
            // alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buffer.as_ptr().add(offset).cast()) };
            let name_start = offset + header;
            let name_end = (name_start + event.len as usize).min(read as usize);
            let name = &buffer[name_start..name_end];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            if event.mask & libc::IN_ISDIR != 0
                && event.mask & libc::IN_CREATE != 0
                && let Some(parent) = self.dirs.get(&event.wd)
            {
                use std::os::unix::ffi::OsStrExt;
                created.push(parent.join(std::ffi::OsStr::from_bytes(name)));
            }
            if event.mask & libc::IN_IGNORED != 0 {
                self.dirs.remove(&event.wd);
            }
            offset = name_end;
        }
        let mut found = Vec::new();
        for dir in created {
            let depth = dir
                .strip_prefix(&self.root)
                .map_or(MAX_DEPTH, |relative| relative.components().count());
            found.push(dir.clone());
            self.add_tree(&dir, depth, &mut found);
        }
        found
    }
}
