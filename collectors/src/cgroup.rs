//! Container identity from `/proc/<pid>/cgroup`: the one parser every container-aware collector
//! uses.
//!
//! Handles cgroup v1, v2 and hybrid files, the cgroupfs and systemd drivers, and the layouts of
//! Docker (also rootless), containerd, CRI-O, cri-dockerd, Podman (also rootless) and the kubelet's
//! QoS classes. Container ids are 64 lowercase hex characters. Two different ids (or pod UIDs) in
//! one file are reported as a conflict, never guessed between.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::HostRoots;

/// The runtime a container id was found under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// Docker Engine (`/docker/<id>`, `docker-<id>.scope`), also under cri-dockerd.
    Docker,
    /// containerd (`cri-containerd-<id>.scope`, `:cri-containerd:<id>`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`).
    CriO,
    /// Podman (`libpod-<id>.scope`).
    Podman,
    /// A kubelet cgroupfs layout (`kubepods/<qos>/pod<uid>/<id>`): the runtime is not in the path.
    Unknown,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        })
    }
}

/// A container a process runs in, as its cgroup paths name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerIdentity {
    /// The 64-hex container id.
    pub id: String,
    /// The runtime named by the cgroup path.
    pub runtime: Runtime,
    /// The Kubernetes pod UID (with dashes), when the path is under `kubepods`.
    pub pod_uid: Option<String>,
    /// The container's cgroup: the path up to and including the segment naming the id (a
    /// process in a sub-cgroup of the container has the same), in the v2 hierarchy when it names
    /// the container there, else in the first v1 hierarchy that does.
    pub cgroup: String,
    /// That path's hierarchy: empty for cgroup v2, else its v1 controllers (`memory`,
    /// `name=systemd`, `cpu,cpuacct`).
    pub hierarchy: String,
}

impl ContainerIdentity {
    /// Whether `other` names the same container in the same cgroup.
    pub fn same_cgroup(&self, other: &ContainerIdentity) -> bool {
        self.id == other.id && self.cgroup == other.cgroup && self.hierarchy == other.hierarchy
    }
}

/// What a process's cgroup file says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerMatch {
    /// The process runs in this container.
    Container(ContainerIdentity),
    /// The process is a runtime's monitor (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`),
    /// which runs beside the container, not in it.
    Monitor {
        /// The runtime.
        runtime: Runtime,
        /// The id of the container it monitors.
        id: String,
    },
    /// The path looks like a container's but matches no layout we know.
    Unrecognized {
        /// The path.
        path: String,
    },
    /// Two different container ids or pod UIDs in one file.
    Conflict {
        /// What disagreed.
        detail: String,
    },
    /// No sign of a container: a host process.
    None,
}

/// A parsed `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The cgroup v2 path (the `0::` line), when there is one.
    pub v2_path: Option<String>,
    /// What the paths say about a container.
    pub container: ContainerMatch,
}

impl ContainerMatch {
    /// Why there is no container identity, for statuses (`None` when there is one).
    pub fn why_not_a_container(&self) -> Option<String> {
        match self {
            Self::Container(_) => None,
            Self::Monitor { runtime, id } => Some(format!(
                "the process is {runtime}'s monitor of container {id}, not the container"
            )),
            Self::Unrecognized { path } => Some(format!(
                "unrecognized container runtime: cgroup path {path:?} matches no known layout"
            )),
            Self::Conflict { detail } => Some(format!("conflicting container ids: {detail}")),
            Self::None => Some(NOT_IN_A_CONTAINER.to_owned()),
        }
    }
}

/// Why a process in no container's cgroup has no container labels.
pub const NOT_IN_A_CONTAINER: &str = "the process is not in a container";

impl CgroupInfo {
    /// The container identity, when the process runs in a recognized container.
    pub fn identity(&self) -> Option<&ContainerIdentity> {
        match &self.container {
            ContainerMatch::Container(identity) => Some(identity),
            _ => None,
        }
    }
}

/// Parses the content of `/proc/<pid>/cgroup`.
///
/// ```
/// use collectors::cgroup::{parse_cgroup_file, Runtime};
/// let id = "3ac7ed50c6087bb468fd70d37a6e3ee8d5b554bcbde20bd83f9a9dfa14f0431e";
/// let info = parse_cgroup_file(&format!("0::/system.slice/docker-{id}.scope\n"));
/// let container = info.identity().unwrap();
/// assert_eq!((container.id.as_str(), container.runtime), (id, Runtime::Docker));
/// ```
pub fn parse_cgroup_file(content: &str) -> CgroupInfo {
    let mut v2_path = None;
    let mut found: Option<ContainerIdentity> = None;
    let mut monitor = None;
    let mut unrecognized = None;
    for line in content.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // Inside a cgroup namespace of the agent's own, paths are read relative to it: back to
        // the host's names.
        let host_path;
        let path = match crate::cgroupns::current() {
            Some(view) => {
                host_path = view.to_host(hierarchy, path);
                host_path.as_str()
            }
            None => path,
        };
        let v2 = hierarchy == "0" && controllers.is_empty();
        if v2 {
            v2_path = Some(path.to_owned());
        }
        match parse_path(path, controllers) {
            PathMatch::Container(identity) => match &mut found {
                None => found = Some(identity),
                Some(existing) => {
                    if v2 {
                        // The unified hierarchy is where the container is checked.
                        existing.cgroup = identity.cgroup.clone();
                        existing.hierarchy = identity.hierarchy.clone();
                    }
                    if existing.id != identity.id {
                        return conflict(
                            v2_path,
                            format!("container ids {} and {}", existing.id, identity.id),
                        );
                    }
                    match (&existing.pod_uid, &identity.pod_uid) {
                        (Some(a), Some(b)) if a != b => {
                            return conflict(v2_path, format!("pod UIDs {a} and {b}"));
                        }
                        (None, Some(uid)) => existing.pod_uid = Some(uid.clone()),
                        _ => {}
                    }
                    if existing.runtime == Runtime::Unknown {
                        existing.runtime = identity.runtime;
                    }
                }
            },
            PathMatch::Monitor(runtime, id) => monitor = Some((runtime, id)),
            PathMatch::Unrecognized => unrecognized = Some(path.to_owned()),
            PathMatch::None => {}
        }
    }
    let container = match (found, monitor, unrecognized) {
        (Some(identity), _, _) => ContainerMatch::Container(identity),
        (None, Some((runtime, id)), _) => ContainerMatch::Monitor { runtime, id },
        (None, None, Some(path)) => ContainerMatch::Unrecognized { path },
        (None, None, None) => ContainerMatch::None,
    };
    CgroupInfo { v2_path, container }
}

fn conflict(v2_path: Option<String>, detail: String) -> CgroupInfo {
    CgroupInfo {
        v2_path,
        container: ContainerMatch::Conflict { detail },
    }
}

enum PathMatch {
    Container(ContainerIdentity),
    Monitor(Runtime, String),
    Unrecognized,
    None,
}

/// Segment prefixes of systemd scopes naming a container, with their runtime.
const SCOPE_PREFIXES: &[(&str, Runtime)] = &[
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("libpod-", Runtime::Podman),
];

/// Scope prefixes of runtime monitors: beside the container, not in it.
const MONITOR_PREFIXES: &[(&str, Runtime)] = &[
    ("crio-conmon-", Runtime::CriO),
    ("libpod-conmon-", Runtime::Podman),
];

/// Path fragments of container runtimes we do not support: reported as unrecognized.
const FOREIGN_MARKERS: &[&str] = &[
    "lxc.payload",
    "/lxc/",
    "machine.slice",
    "/ecs/",
    "garden",
    "actions_job",
    "kubepods",
];

fn parse_path(path: &str, hierarchy: &str) -> PathMatch {
    let mut pod_uid = None;
    let mut identity: Option<(String, Runtime)> = None;
    let mut previous = "";
    // `:cri-containerd:<id>` and `:crio:<id>` trail a slice name in systemd-driver v1 paths.
    let segments = path.split('/').flat_map(|s| s.split(':'));
    for segment in segments {
        if let Some(uid) = pod_uid_of(segment) {
            pod_uid = Some(uid);
        }
        if let Some((runtime, id)) = MONITOR_PREFIXES
            .iter()
            .find_map(|(prefix, runtime)| scope_id(segment, prefix).map(|id| (*runtime, id)))
        {
            return PathMatch::Monitor(runtime, id);
        }
        let found = SCOPE_PREFIXES
            .iter()
            .find_map(|(prefix, runtime)| scope_id(segment, prefix).map(|id| (id, *runtime)))
            .or_else(|| {
                is_container_id(segment).then(|| {
                    let runtime = match previous {
                        "docker" => Runtime::Docker,
                        "cri-containerd" => Runtime::Containerd,
                        "crio" => Runtime::CriO,
                        "libpod" => Runtime::Podman,
                        _ => Runtime::Unknown,
                    };
                    (segment.to_owned(), runtime)
                })
            });
        if let Some(found) = found {
            identity = Some(found);
        }
        previous = segment;
    }
    match identity {
        Some((id, runtime)) if runtime != Runtime::Unknown || pod_uid.is_some() => {
            // The container's cgroup ends with the segment that names its id.
            let at = path.rfind(id.as_str()).unwrap_or(0) + id.len();
            let end = path[at..].find('/').map_or(path.len(), |i| at + i);
            PathMatch::Container(ContainerIdentity {
                id,
                runtime,
                pod_uid,
                cgroup: path[..end].to_owned(),
                hierarchy: hierarchy.to_owned(),
            })
        }
        // A bare id outside kubepods, under no known parent (e.g. `/ecs/<task>/<id>`).
        Some(_) => PathMatch::Unrecognized,
        None if FOREIGN_MARKERS.iter().any(|m| path.contains(m)) => PathMatch::Unrecognized,
        None => PathMatch::None,
    }
}

/// The id of `<prefix><64 hex>.scope` (or without `.scope`, as some drivers write it).
fn scope_id(segment: &str, prefix: &str) -> Option<String> {
    let rest = segment.strip_prefix(prefix)?;
    let id = rest.strip_suffix(".scope").unwrap_or(rest);
    is_container_id(id).then(|| id.to_owned())
}

/// Whether `text` is a container id: 64 lowercase hex characters.
pub fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The pod UID of a kubelet pod cgroup: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    let raw = if let Some(slice) = segment.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        &slice[slice.rfind("-pod")? + 4..]
    } else {
        segment.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `containers:`: which cgroups may hold containers.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainersConfig {
    /// Uids of rootless container runtimes (rootless Docker or Podman). Containers in the
    /// subtree systemd delegates to such a user (`user@<uid>.service`), owned by that user, are
    /// recognized; in any other user's subtree a container-shaped cgroup is not a container.
    /// Default: none.
    pub rootless_uids: Vec<u32>,
}

/// The cgroup v2 hierarchy: alone at `<sys>/fs/cgroup`, or beside v1 as `unified`.
pub fn v2_root(roots: &HostRoots) -> PathBuf {
    let base = roots.sys.join("fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        base
    } else {
        base.join("unified")
    }
}

/// The directory of `identity`'s cgroup on the host: under `<sys>/fs/cgroup`, in its hierarchy.
pub fn cgroup_dir(roots: &HostRoots, identity: &ContainerIdentity) -> PathBuf {
    let base = roots.sys.join("fs/cgroup");
    let hierarchy = if identity.hierarchy.is_empty() {
        v2_root(roots)
    } else {
        let name = identity
            .hierarchy
            .strip_prefix("name=")
            .unwrap_or(&identity.hierarchy);
        let joined = base.join(name);
        match name.split_once(',') {
            // `cpu,cpuacct` is often mounted as `cpu,cpuacct` with links, sometimes apart.
            Some((first, _)) if !joined.exists() => base.join(first),
            _ => joined,
        }
    };
    hierarchy.join(identity.cgroup.trim_start_matches('/'))
}

/// Checks that `identity`'s cgroup is one only a container runtime could have made: owned by
/// root and outside any user's delegated subtree (`user@<uid>.service`), or, for a rootless
/// runtime's uid named in `config`, owned by that user inside that user's subtree.
///
/// A user can create cgroups of any name in the subtree systemd delegates to it
/// (`systemd-run --user --scope -u docker-<id>`), so a container-shaped path alone proves
/// nothing. The error says why the cgroup does not qualify.
pub fn check_placement(
    roots: &HostRoots,
    identity: &ContainerIdentity,
    config: &ContainersConfig,
) -> Result<(), String> {
    let dir = cgroup_dir(roots, identity);
    let owner = std::fs::metadata(&dir)
        .map_err(|e| {
            format!(
                "cannot check who owns cgroup {} ({}): {e}",
                identity.cgroup,
                dir.display()
            )
        })?
        .uid();
    let delegated_to = identity.cgroup.split('/').find_map(|segment| {
        segment
            .strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse()
            .ok()
    });
    match delegated_to {
        None if owner == 0 => Ok(()),
        None => Err(format!(
            "cgroup {} is owned by uid {owner}, not by root: a container runtime did not make it",
            identity.cgroup
        )),
        Some(uid) if config.rootless_uids.contains(&uid) && (owner == uid || owner == 0) => Ok(()),
        Some(uid) => Err(format!(
            "cgroup {} (owned by uid {owner}) is in the subtree delegated to uid {uid} \
             (user@{uid}.service), where that user names cgroups as it likes; list {uid} in \
             containers.rootlessUids if a rootless runtime runs there",
            identity.cgroup
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3ac7ed50c6087bb468fd70d37a6e3ee8d5b554bcbde20bd83f9a9dfa14f0431e";
    const ID2: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const UID: &str = "6d4e1f2a-8b3c-4d5e-9f60-718293a4b5c6";
    const UID_: &str = "6d4e1f2a_8b3c_4d5e_9f60_718293a4b5c6";

    /// What the file says about a container, without where its cgroup is (tested apart).
    fn container(content: &str) -> ContainerMatch {
        match parse_cgroup_file(content).container {
            ContainerMatch::Container(identity) => ContainerMatch::Container(ContainerIdentity {
                cgroup: String::new(),
                hierarchy: String::new(),
                ..identity
            }),
            other => other,
        }
    }

    fn expect(runtime: Runtime, pod: bool) -> ContainerMatch {
        ContainerMatch::Container(ContainerIdentity {
            id: ID.to_owned(),
            runtime,
            pod_uid: pod.then(|| UID.to_owned()),
            cgroup: String::new(),
            hierarchy: String::new(),
        })
    }

    #[test]
    fn the_container_cgroup_is_the_path_up_to_its_id_preferably_in_v2() {
        let identity = |content: String| parse_cgroup_file(&content).identity().cloned().unwrap();
        let v1_and_v2 = identity(format!(
            "9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n0::/docker/{ID}/init.scope\n"
        ));
        assert_eq!(v1_and_v2.cgroup, format!("/docker/{ID}"));
        assert_eq!(v1_and_v2.hierarchy, "");
        let v1_only = identity(format!("9:name=systemd:/docker/{ID}\n0::/\n"));
        assert_eq!(
            (v1_only.cgroup.as_str(), v1_only.hierarchy.as_str()),
            (format!("/docker/{ID}").as_str(), "name=systemd")
        );
        let scope = identity(format!(
            "0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/sub\n"
        ));
        assert_eq!(
            scope.cgroup,
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope")
        );
        assert!(scope.same_cgroup(&scope.clone()));
        assert!(!scope.same_cgroup(&v1_and_v2));
    }

    #[test]
    fn real_world_layouts() {
        let cases: Vec<(&str, String, ContainerMatch)> = vec![
            (
                "docker v1 cgroupfs",
                format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n0::/"),
                expect(Runtime::Docker, false),
            ),
            (
                "docker v2 cgroupfs",
                format!("0::/docker/{ID}"),
                expect(Runtime::Docker, false),
            ),
            (
                "docker v2 systemd",
                format!("0::/system.slice/docker-{ID}.scope"),
                expect(Runtime::Docker, false),
            ),
            (
                "docker hybrid",
                format!("1:name=systemd:/docker/{ID}\n0::/docker/{ID}"),
                expect(Runtime::Docker, false),
            ),
            (
                "docker rootless systemd",
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/docker.service/docker-{ID}.scope"
                ),
                expect(Runtime::Docker, false),
            ),
            (
                "docker rootless cgroupfs",
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/docker.service/docker/{ID}"
                ),
                expect(Runtime::Docker, false),
            ),
            (
                "containerd systemd v2",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                expect(Runtime::Containerd, true),
            ),
            (
                "containerd systemd v1 colon form",
                format!("4:memory:/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}"),
                expect(Runtime::Containerd, true),
            ),
            (
                "containerd guaranteed systemd",
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                expect(Runtime::Containerd, true),
            ),
            (
                "kubelet cgroupfs v1 besteffort",
                format!("3:cpu:/kubepods/besteffort/pod{UID}/{ID}"),
                expect(Runtime::Unknown, true),
            ),
            (
                "kubelet cgroupfs burstable v2",
                format!("0::/kubepods/burstable/pod{UID}/{ID}"),
                expect(Runtime::Unknown, true),
            ),
            (
                "kubelet cgroupfs guaranteed",
                format!("0::/kubepods/pod{UID}/{ID}"),
                expect(Runtime::Unknown, true),
            ),
            (
                "cri-o systemd",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
                ),
                expect(Runtime::CriO, true),
            ),
            (
                "cri-dockerd systemd",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
                ),
                expect(Runtime::Docker, true),
            ),
            (
                "podman root",
                format!("0::/machine.slice/libpod-{ID}.scope/container"),
                expect(Runtime::Podman, false),
            ),
            (
                "podman rootless",
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                expect(Runtime::Podman, false),
            ),
            (
                "host process",
                "12:memory:/user.slice\n0::/user.slice/user-0.slice/session-1.scope".to_owned(),
                ContainerMatch::None,
            ),
            ("root", "0::/".to_owned(), ContainerMatch::None),
            (
                "cri-o monitor",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"
                ),
                ContainerMatch::Monitor {
                    runtime: Runtime::CriO,
                    id: ID.to_owned(),
                },
            ),
            (
                "podman monitor",
                format!("0::/machine.slice/libpod-conmon-{ID}.scope"),
                ContainerMatch::Monitor {
                    runtime: Runtime::Podman,
                    id: ID.to_owned(),
                },
            ),
            (
                "lxc",
                "0::/lxc.payload.web1/init.scope".to_owned(),
                ContainerMatch::Unrecognized {
                    path: "/lxc.payload.web1/init.scope".to_owned(),
                },
            ),
            (
                "ecs",
                format!("0::/ecs/0123abcd/{ID}"),
                ContainerMatch::Unrecognized {
                    path: format!("/ecs/0123abcd/{ID}"),
                },
            ),
            (
                "nspawn",
                "0::/machine.slice/systemd-nspawn@web.service/payload".to_owned(),
                ContainerMatch::Unrecognized {
                    path: "/machine.slice/systemd-nspawn@web.service/payload".to_owned(),
                },
            ),
        ];
        for (name, content, expected) in cases {
            assert_eq!(container(&content), expected, "{name}: {content}");
        }
    }

    #[test]
    fn two_different_ids_are_a_conflict() {
        let content = format!("12:memory:/docker/{ID}\n0::/docker/{ID2}");
        assert!(matches!(
            container(&content),
            ContainerMatch::Conflict { .. }
        ));
        let other_uid = "00000000-0000-0000-0000-000000000000";
        let content =
            format!("1:cpu:/kubepods/pod{UID}/{ID}\n2:memory:/kubepods/pod{other_uid}/{ID}");
        assert!(matches!(
            container(&content),
            ContainerMatch::Conflict { .. }
        ));
    }

    #[test]
    fn runtime_from_one_line_completes_another() {
        let content = format!(
            "3:cpu:/kubepods/besteffort/pod{UID}/{ID}\n0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(container(&content), expect(Runtime::Containerd, true));
    }

    #[test]
    fn v2_path_and_malformed_lines() {
        let info = parse_cgroup_file("garbage\n5:cpu:/a\n0::/system.slice/ssh.service\n");
        assert_eq!(info.v2_path.as_deref(), Some("/system.slice/ssh.service"));
        assert_eq!(info.container, ContainerMatch::None);
        // Ids must be exactly 64 lowercase hex characters.
        let short = &ID[..63];
        assert_eq!(
            container(&format!("0::/docker/{short}")),
            ContainerMatch::None
        );
        let upper = ID.to_uppercase();
        assert_eq!(
            container(&format!("0::/docker/{upper}")),
            ContainerMatch::None
        );
    }
}

#[cfg(test)]
mod placement_tests {
    use std::os::unix::fs::chown;

    use super::*;

    const ID: &str = "3ac7ed50c6087bb468fd70d37a6e3ee8d5b554bcbde20bd83f9a9dfa14f0431e";

    /// A cgroup `path` (v2, as `unified` beside v1) under a temporary sys root, owned by `uid`.
    fn placed(sys: &std::path::Path, path: &str, uid: u32) -> ContainerIdentity {
        let dir = sys.join("fs/cgroup/unified").join(&path[1..]);
        std::fs::create_dir_all(&dir).unwrap();
        chown(&dir, Some(uid), Some(uid)).unwrap();
        parse_cgroup_file(&format!("0::{path}\n"))
            .identity()
            .cloned()
            .unwrap()
    }

    #[test]
    fn only_root_owned_cgroups_outside_user_subtrees_hold_containers() {
        if !test_support::require(test_support::is_root(), "root, to give cgroups owners") {
            return;
        }
        let sys = tempfile::tempdir().unwrap();
        let roots = HostRoots {
            sys: sys.path().to_owned(),
            ..HostRoots::default()
        };
        let none = ContainersConfig::default();
        let rootless = ContainersConfig {
            rootless_uids: vec![1000],
        };
        let check =
            |identity: &ContainerIdentity, config| check_placement(&roots, identity, config);

        let docker = placed(sys.path(), &format!("/docker/{ID}"), 0);
        assert_eq!(check(&docker, &none), Ok(()));
        assert!(cgroup_dir(&roots, &docker).ends_with(format!("unified/docker/{ID}")));

        // What `systemd-run --user --scope -u docker-<id>` makes: the user's own cgroup.
        let user_scope =
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope");
        let forged = placed(sys.path(), &user_scope, 1000);
        let why = check(&forged, &none).unwrap_err();
        assert!(
            why.contains("user@1000.service") && why.contains("uid 1000"),
            "{why}"
        );
        // A rootless runtime's uid, named in the configuration: its containers are recognized.
        assert_eq!(check(&forged, &rootless), Ok(()));
        // Another user's subtree is not that runtime's.
        let other = placed(
            sys.path(),
            &format!("/user.slice/user-1001.slice/user@1001.service/docker-{ID}.scope"),
            1001,
        );
        assert!(check(&other, &rootless).is_err());

        // Owned by a user outside any delegated subtree: not made by a runtime.
        let chowned = placed(
            sys.path(),
            &format!("/system.slice/docker-{ID}.scope"),
            1000,
        );
        let why = check(&chowned, &none).unwrap_err();
        assert!(why.contains("owned by uid 1000, not by root"), "{why}");

        // A cgroup that is not there (the process left it, or a recorded tree).
        let missing = parse_cgroup_file(&format!(
            "0::/kubepods/pod{}/{ID}\n",
            "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
        ))
        .identity()
        .cloned()
        .unwrap();
        assert!(
            check(&missing, &none)
                .unwrap_err()
                .contains("cannot check who owns")
        );
    }
}

/// The kernel's file handle type of kernfs nodes (cgroup directories): the handle is the
/// 8-byte cgroup id.
const FILEID_KERNFS: libc::c_int = 0xfe;

/// The path (from the v2 root, with a leading `/`) of the cgroup whose id is `id` (the id the
/// hook reports, the directory's inode number). Opens it by its file handle, as bpftool does
/// (needs `CAP_DAC_READ_SEARCH`); without that, walks the hierarchy. `Ok(None)`: no such
/// cgroup (gone, or never was).
pub fn path_of_id(roots: &HostRoots, id: u64) -> std::io::Result<Option<String>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let root = v2_root(roots);
    let mount = std::fs::File::open(&root)?;
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        id: [u8; 8],
    }
    let mut handle = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id: id.to_ne_bytes(),
    };
    // SAFETY: the handle is a file_handle header followed by its 8 bytes, as declared in
    // `bytes`; the mount descriptor is open for the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut handle as *mut Handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just returned, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let root = root.canonicalize().unwrap_or(root);
        return Ok(path
            .strip_prefix(&root)
            .ok()
            .map(|relative| format!("/{}", relative.display()).replace("//", "/")));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ESTALE) | Some(libc::ENOENT) => Ok(None),
        // Not allowed (no CAP_DAC_READ_SEARCH), or a kernel without kernfs handles: walk.
        _ => Ok(walk_for_inode(&root, id)),
    }
}

/// The path under `root` of the directory whose inode is `inode`, by a walk of the tree.
fn walk_for_inode(root: &std::path::Path, inode: u64) -> Option<String> {
    if std::fs::metadata(root).is_ok_and(|m| m.ino() == inode) {
        return Some("/".to_owned());
    }
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            let path = entry.path();
            if entry.metadata().is_ok_and(|m| m.ino() == inode) {
                return path
                    .strip_prefix(root)
                    .ok()
                    .map(|relative| format!("/{}", relative.display()));
            }
            pending.push(path);
        }
    }
    None
}

/// The cgroup directories (from the v2 root, with a leading `/`) whose last component holds
/// `needle` (a container id, `pod<uid>`), by a walk of the hierarchy; at most `limit`.
pub fn find_cgroups(roots: &HostRoots, needle: &str, limit: usize) -> Vec<String> {
    let root = v2_root(roots);
    let mut found = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if entry.file_name().to_string_lossy().contains(needle)
                && let Ok(relative) = path.strip_prefix(&root)
            {
                found.push(format!("/{}", relative.display()));
                if found.len() >= limit {
                    return found;
                }
            }
            pending.push(path);
        }
    }
    found.sort();
    found
}

/// The processes in the cgroup at `path` (from the v2 root) and, when `descendants`, in every
/// cgroup below it.
pub fn processes_in(roots: &HostRoots, path: &str, descendants: bool) -> Vec<u32> {
    let root = v2_root(roots);
    let start = root.join(path.trim_start_matches('/'));
    let mut pids = Vec::new();
    let mut pending = vec![start];
    while let Some(dir) = pending.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if !descendants {
            break;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}
