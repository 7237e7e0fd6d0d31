//! The one extension point for data: the [`Collector`] trait and what a collection returns.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::cgroup::{
    CgroupInfo, ContainerIdentity, ContainerMatch, ContainersConfig, check_placement,
    parse_cgroup_file,
};
use crate::error::BoxError;
use crate::host::HostRoots;
use crate::process::ProcessRef;
use labels::{LabelSet, Trust};

/// A label key a collector declares (`<KEY>` stands for a variable part), with the trust class
/// of its values: who could have chosen them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// The key, e.g. `process:pid` or `process:env:<KEY>`.
    pub key: &'static str,
    /// Who could have chosen its values.
    pub trust: Trust,
}

impl KeySpec {
    /// A declaration of `key` whose values are of class `trust`.
    pub const fn new(key: &'static str, trust: Trust) -> Self {
        Self { key, trust }
    }

    /// Whether `key` is an instance of this declaration: the same key, or one that fills its
    /// `<...>` part with anything non-empty.
    ///
    /// ```
    /// use collectors::KeySpec;
    /// use labels::Trust;
    /// let env = KeySpec::new("process:env:<KEY>", Trust::SelfReported);
    /// assert!(env.matches("process:env:HOME"));
    /// assert!(!env.matches("process:env:"));
    /// let account = KeySpec::new("gcp:serviceaccount:<ACCOUNT>:email", Trust::Node);
    /// assert!(account.matches("gcp:serviceaccount:default:email"));
    /// assert!(!account.matches("gcp:serviceaccount:default:scope"));
    /// ```
    pub fn matches(&self, key: &str) -> bool {
        let Some(open) = self.key.find('<') else {
            return self.key == key;
        };
        let close = self.key[open..]
            .find('>')
            .map_or(self.key.len(), |i| open + i + 1);
        let (prefix, suffix) = (&self.key[..open], &self.key[close..]);
        key.len() > prefix.len() + suffix.len() && key.starts_with(prefix) && key.ends_with(suffix)
    }
}

/// `&[KeySpec]` for keys that all have one trust class: `key_specs![Trust::Node; "a", "b"]`.
#[macro_export]
macro_rules! key_specs {
    ($trust:expr; $($key:literal),* $(,)?) => {{
        const SPECS: &[$crate::KeySpec] = &[$($crate::KeySpec::new($key, $trust)),*];
        SPECS
    }};
}

/// What a collector's labels describe, and so how long they may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One process: cached by (pid, start time).
    Process,
    /// One container: cached by container id.
    Container,
    /// The whole node: computed at start and refreshed in the background.
    Node,
}

/// What a collection is about: the process asked for and, when it runs in one, its container.
///
/// Node-scope collectors ignore it.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// The process, already resolved to its thread-group id and start time.
    pub process: Option<ProcessRef>,
    /// The container the process runs in, from its cgroups.
    pub container: Option<ContainerIdentity>,
    /// When `container` is `None`: why (a host process, a runtime's monitor, an unrecognized
    /// or conflicting cgroup path), for container collectors' statuses.
    pub container_note: Option<String>,
    /// `<proc>/<pid>/cgroup` as read and parsed to decide `container`, when it could be read:
    /// the procfs collector takes its labels from it rather than reading and parsing the file
    /// again. Read after the process's start time and before its collection, so a collection
    /// that finds the same start time vouches that it was this process's.
    pub cgroups: Option<Arc<CgroupInfo>>,
}

impl Subject {
    /// Why container collectors do not apply, when they do not.
    pub fn not_in_container(&self) -> String {
        self.container_note
            .clone()
            .unwrap_or_else(|| "the process is not in a container".to_owned())
    }
}

impl Subject {
    /// A subject for node-scope collection (no process).
    pub fn node() -> Self {
        Self::default()
    }

    /// `process` and the container its cgroups name (read from `<proc>/<pid>/cgroup`), when
    /// that cgroup is one a container runtime made ([`check_placement`]); else why there is none.
    pub fn of_process(
        roots: &HostRoots,
        process: ProcessRef,
        containers: &ContainersConfig,
    ) -> Self {
        Self::of_process_cgroups(
            roots,
            process,
            containers,
            crate::process::read_proc_file(&roots.proc_file(process.pid, "cgroup")),
        )
    }

    /// [`Subject::of_process`] with the process's `cgroup` file read already (as its image
    /// read it).
    pub fn of_process_cgroups(
        roots: &HostRoots,
        process: ProcessRef,
        containers: &ContainersConfig,
        cgroups: std::io::Result<Vec<u8>>,
    ) -> Self {
        let parsed = cgroups.map(|content| parse_cgroup_file(&String::from_utf8_lossy(&content)));
        let (container, container_note) = match parsed.as_ref().map(|info| &info.container) {
            Ok(ContainerMatch::Container(identity)) => {
                match check_placement(roots, identity, containers) {
                    Ok(()) => (Some(identity.clone()), None),
                    Err(why) => (None, Some(why)),
                }
            }
            Ok(other) => (None, other.why_not_a_container()),
            Err(error) => (None, Some(format!("cannot read its cgroups: {error}"))),
        };
        Self {
            process: Some(process),
            container,
            container_note,
            cgroups: parsed.ok().map(Arc::new),
        }
    }
}

/// The labels a collection produced, and what it could not read.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// The labels.
    pub labels: LabelSet,
    /// Set when part of the data could not be read; the labels are still valid.
    pub partial: Option<String>,
    /// Keys whose values are only [`Trust::SelfReported`] in this collection although the
    /// collector declares a higher class (a binary path in a mount namespace of the process's
    /// own, a hash of bytes a FUSE server could change).
    pub untrusted: Vec<&'static str>,
    /// A later collection may complete what this one lacks (a binary hash still being
    /// computed): the answer is given, but not kept.
    pub provisional: bool,
    /// The identity (device, inode, change time) of the executable whose bytes
    /// `process:binary:hash` is the hash of, when one was hashed soundly: what the kernel can
    /// recognize at a later `exec` of the same file.
    pub executable: Option<crate::procfs::FileIdentity>,
}

impl Collected {
    /// A complete collection.
    pub fn complete(labels: LabelSet) -> Self {
        Self {
            labels,
            ..Self::default()
        }
    }
}

/// Why a collector produced no labels.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The data source is not there on this machine (no DMI, no Docker socket, not on EC2).
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why, in a few words.
        reason: String,
        /// The error that showed it, if one did.
        #[source]
        cause: Option<BoxError>,
    },
    /// The source is there but does not concern this subject (a process outside any container).
    #[error("not applicable: {0}")]
    NotApplicable(String),
    /// The process asked for does not exist (or exited before anything was read).
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    /// The source is there and failed.
    #[error("{context}")]
    Failed {
        /// What was being done, and where.
        context: String,
        /// What went wrong, with its own causes.
        #[source]
        cause: Option<BoxError>,
    },
}

impl CollectError {
    /// The source is not on this machine, for `reason`.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            cause: None,
        }
    }

    /// The source failed while doing `context` (with a [`CollectError::because`] when an error
    /// says why).
    pub fn failed(context: impl Into<String>) -> Self {
        Self::Failed {
            context: context.into(),
            cause: None,
        }
    }

    /// The same error, caused by `cause` (kept as its [`std::error::Error::source`]).
    /// Only [`CollectError::Unavailable`] and [`CollectError::Failed`] carry a cause.
    pub fn because(mut self, cause: impl Into<BoxError>) -> Self {
        if let Self::Unavailable { cause: slot, .. } | Self::Failed { cause: slot, .. } = &mut self
        {
            *slot = Some(cause.into());
        }
        self
    }
}

/// A source of labels.
///
/// Adding a collector means one new module implementing this trait (and
/// [`Builtin`](crate::builtin::Builtin)) plus one line in the [`builtin`](crate::builtin) table.
/// Collectors never call each other; the [`Registry`](crate::Registry) runs them concurrently,
/// each under the deadline of its section.
#[async_trait]
pub trait Collector: Send + Sync {
    /// Short, stable name (`procfs`, `docker`, ...), also the configuration section name.
    fn name(&self) -> &'static str;

    /// What the labels describe.
    fn scope(&self) -> Scope;

    /// Every label key this collector can emit, as documented (`<KEY>` stands for a variable
    /// part), with the trust class of its values.
    fn label_keys(&self) -> &'static [KeySpec];

    /// Collects the labels for `subject`.
    async fn collect(&self, subject: &Subject) -> Result<Collected, CollectError>;

    /// The process lineage this collector reads and keeps (procfs's), for the kernel hook's
    /// fork, exec and exit events to complete. The default: none.
    fn lineage(&self) -> Option<std::sync::Arc<crate::procfs::Lineage>> {
        None
    }

    /// The workloads of this node its source knows by network address (a runtime's
    /// containers), for the destination identity of connects: each with its addresses and its
    /// labels. The default: none.
    async fn workloads(&self) -> Result<Vec<Workload>, CollectError> {
        Ok(Vec::new())
    }

    /// What this collector can tell of the labels it will give the processes of `container`,
    /// asked when its cgroup was just made, before any of them runs (for container-scope
    /// collectors whose source already describes a container it is starting). The default:
    /// nothing.
    async fn prospective(
        &self,
        container: &crate::cgroup::ContainerIdentity,
    ) -> Result<Option<Prospect>, CollectError> {
        let _ = container;
        Ok(None)
    }

    /// Notices of cached labels gone stale, for collectors whose source reports changes (the
    /// Docker event stream). Called once by the daemon, inside the async runtime; `None` (the
    /// default) means the collector's labels only change with the process.
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }
}

/// Labels of a container known before its processes run, and which keys they settle: a key
/// [`Prospect::settles`] and absent from `labels` will be absent; any other key may still take
/// any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prospect {
    /// The labels.
    pub labels: LabelSet,
    /// The keys settled, as [`KeySpec`] patterns (`docker:label:<k>`).
    pub keys: Vec<&'static str>,
    /// Keys the patterns cover that are not settled after all.
    pub except: Vec<String>,
}

impl Prospect {
    /// Whether `key`'s values are settled by this prospect.
    pub fn settles(&self, key: &str) -> bool {
        self.keys
            .iter()
            .any(|pattern| KeySpec::new(pattern, Trust::Runtime).matches(key))
            && !self.except.iter().any(|except| except == key)
    }
}

/// A workload reachable at some addresses of this node (see [`Collector::workloads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its addresses.
    pub addresses: Vec<std::net::IpAddr>,
    /// Its labels, as the collector gives them for a process of the workload.
    pub labels: LabelSet,
}

/// Which cached container labels are stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One container died, was removed or renamed.
    Container(String),
    /// Changes may have been missed (the event stream broke): drop every container entry.
    AllContainers,
}
