//! Cgroup paths as the host names them, when the agent runs in a cgroup namespace of its own.
//!
//! The kernel writes `/proc/<pid>/cgroup` relative to the cgroup namespace of the process that
//! *reads* it. An agent in a pod on a cgroup v2 node (containerd gives every container a private
//! cgroup namespace) reads another container's cgroup as `/../<id>` or
//! `/../../kubepods.slice/...`: the runtime's part of the path is gone, no layout matches, and
//! processes in containers would get no container labels at all, so no policy naming a
//! container or pod would apply to them. [`learn`] finds, once at start, where the agent's
//! namespace root is on the host (the agent's own cgroup, found by its PID in the host's
//! hierarchy, which the chart mounts under `HOST_SYS`); [`parse_cgroup_file`] then turns every
//! path back into the host's.
//!
//! [`parse_cgroup_file`]: crate::cgroup::parse_cgroup_file

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::host::HostRoots;

/// Where the namespace root of each hierarchy (the first field of a `/proc/<pid>/cgroup` line:
/// `0` for v2, a number per v1 hierarchy) is on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceView {
    roots: HashMap<String, String>,
}

static VIEW: OnceLock<NamespaceView> = OnceLock::new();

impl NamespaceView {
    /// A view with `roots` (hierarchy id → host path of the namespace root).
    pub fn new(roots: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            roots: roots.into_iter().collect(),
        }
    }

    /// `path`, read in hierarchy `hierarchy` from inside the namespace, as the host names it.
    /// Paths of hierarchies the view does not know are returned as they are.
    pub fn to_host(&self, hierarchy: &str, path: &str) -> String {
        match self.roots.get(hierarchy) {
            Some(root) => normalize(&format!("{root}/{path}")),
            None => path.to_owned(),
        }
    }

    /// Whether the view maps nothing (the agent shares the host's cgroup namespace).
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// The view in force for this process ([`adopt`]), if any.
pub fn current() -> Option<&'static NamespaceView> {
    VIEW.get().filter(|view| !view.is_empty())
}

/// Makes `view` the one every cgroup file is read through, for the life of the process (the
/// namespace of a process does not change under it). A second call is ignored.
pub fn adopt(view: NamespaceView) {
    let _ = VIEW.set(view);
}

/// Learns and adopts this process's view ([`learn`], [`adopt`]). Fails when the agent runs
/// in a cgroup namespace of its own and cannot find its cgroup on the host: it would then
/// recognize no container.
pub fn adopt_host_view(roots: &HostRoots) -> Result<(), String> {
    match learn(roots)? {
        Some(view) => {
            tracing::info!(
                roots = ?view.roots,
                "the agent runs in a cgroup namespace of its own: cgroup paths are mapped to the host's"
            );
            adopt(view);
        }
        None => adopt(NamespaceView::default()),
    }
    Ok(())
}

/// `/`-separated `path` with `.` and `..` resolved (never above `/`) and no empty segments.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The directory of hierarchy `controllers` (empty for v2) under `<sys>/fs/cgroup`.
fn hierarchy_dir(roots: &HostRoots, controllers: &str) -> PathBuf {
    if controllers.is_empty() {
        crate::cgroup::v2_root(roots)
    } else {
        let name = controllers.strip_prefix("name=").unwrap_or(controllers);
        roots.sys.join("fs/cgroup").join(name)
    }
}

/// Finds where this process's cgroup namespace root is on the host, for every hierarchy it
/// can: `Ok(None)` when it is the host's root (the agent shares the host's namespace, or its
/// namespace starts at the root); an error naming what could not be found otherwise.
///
/// The host's PID 1 tells: its cgroups, read from inside a namespace rooted below the host's
/// root, start with `/..`, one `..` per level the root is above ours (reading them needs no
/// privilege, unlike its `ns/cgroup` link). The agent's own cgroup is then found by its PID in
/// the host's hierarchies under `<sys>/fs/cgroup`, at that depth.
pub fn learn(roots: &HostRoots) -> Result<Option<NamespaceView>, String> {
    let init_file = roots.proc.join("1/cgroup");
    let init = match std::fs::read_to_string(&init_file) {
        Ok(init) => init,
        // A recorded tree without PID 1, or a /proc that hides it: nothing tells a namespace.
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot read {} ({e}): assuming the agent shares the host's cgroup namespace",
                    init_file.display()
                );
            }
            return Ok(None);
        }
    };
    // How many levels above our namespace root the host's root is, per hierarchy.
    let depths: HashMap<&str, usize> = init
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?;
            let path = parts.nth(1)?;
            let ups = path
                .split('/')
                .take_while(|s| *s == ".." || s.is_empty())
                .filter(|s| *s == "..")
                .count();
            Some((hierarchy, ups))
        })
        .collect();
    if depths.values().all(|depth| *depth == 0) {
        return Ok(None);
    }
    let pid = std::process::id();
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    let mut view = HashMap::new();
    let mut missing = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(relative)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let depth = depths.get(hierarchy).copied().unwrap_or(0);
        let below: Vec<&str> = relative.split('/').filter(|s| !s.is_empty()).collect();
        let dir = hierarchy_dir(roots, controllers);
        match find_pid(&dir, depth + below.len(), pid) {
            Some(found) => {
                // Our cgroup is `found`; the namespace root is `below.len()` levels up.
                let segments: Vec<&str> = found.split('/').filter(|s| !s.is_empty()).collect();
                let root = &segments[..segments.len().saturating_sub(below.len())];
                view.insert(hierarchy.to_owned(), format!("/{}", root.join("/")));
            }
            None if controllers.is_empty() => missing.push(format!(
                "the cgroup v2 hierarchy under {} (mount the host's /sys/fs/cgroup there)",
                dir.display()
            )),
            // A v1 hierarchy the host does not mount where we look: its paths stay relative.
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "the agent runs in a cgroup namespace of its own (the host's PID 1 is outside it) \
             and cannot find its own cgroup (PID {pid}) in {}: cgroup paths of other \
             processes would be relative to the agent's, and containers unrecognizable",
            missing.join(", ")
        ));
    }
    Ok(Some(NamespaceView { roots: view }))
}

/// The path (relative to `dir`, with a leading `/`) of the cgroup `depth` levels below `dir`
/// whose `cgroup.procs` lists `pid`.
fn find_pid(dir: &Path, depth: usize, pid: u32) -> Option<String> {
    let wanted = pid.to_string();
    let mut level = vec![PathBuf::new()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for relative in &level {
            let Ok(entries) = std::fs::read_dir(dir.join(relative)) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(relative.join(entry.file_name()));
                }
            }
        }
        level = next;
    }
    level.into_iter().find_map(|relative| {
        let procs = std::fs::read_to_string(dir.join(&relative).join("cgroup.procs")).ok()?;
        procs
            .lines()
            .any(|line| line.trim() == wanted)
            .then(|| format!("/{}", relative.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_inside_a_namespace_become_the_hosts() {
        let view = NamespaceView::new([
            ("0".to_owned(), "/system.slice/docker-aaaa.scope".to_owned()),
            ("1".to_owned(), "/docker/aaaa".to_owned()),
        ]);
        assert_eq!(
            view.to_host("0", "/../docker-bbbb.scope"),
            "/system.slice/docker-bbbb.scope"
        );
        assert_eq!(view.to_host("0", "/"), "/system.slice/docker-aaaa.scope");
        assert_eq!(
            view.to_host("0", "/sub"),
            "/system.slice/docker-aaaa.scope/sub"
        );
        assert_eq!(
            view.to_host("0", "/../../kubepods.slice/x"),
            "/kubepods.slice/x"
        );
        assert_eq!(
            view.to_host("0", "/../../../../.."),
            "/",
            "never above the root"
        );
        assert_eq!(view.to_host("1", "/../bbbb"), "/docker/bbbb");
        assert_eq!(
            view.to_host("7", "/../cccc"),
            "/../cccc",
            "unknown hierarchy"
        );
    }

    #[test]
    fn in_the_hosts_namespace_there_is_nothing_to_map() {
        // The tests run in the host's namespace, where PID 1 is.
        assert_eq!(learn(&HostRoots::default()), Ok(None));
    }

    #[test]
    fn the_own_cgroup_is_found_by_pid_at_its_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/c")).unwrap();
        std::fs::write(dir.path().join("a/b/cgroup.procs"), "12\n4242\n").unwrap();
        std::fs::write(dir.path().join("a/c/cgroup.procs"), "424\n").unwrap();
        std::fs::write(dir.path().join("a/cgroup.procs"), "4242\n").unwrap();
        assert_eq!(find_pid(dir.path(), 2, 4242).as_deref(), Some("/a/b"));
        assert_eq!(find_pid(dir.path(), 1, 4242).as_deref(), Some("/a"));
        assert_eq!(find_pid(dir.path(), 2, 1), None);
    }
}
