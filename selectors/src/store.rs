//! Hot reload: the policies in force, swapped atomically when the files change. A reload that
//! fails keeps the previous policies in force and records the error for logs, metrics and
//! health checks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use labels::TrustCatalog;

use crate::error::PolicyErrors;
use crate::load::{load_policies, policy_files};
use crate::matcher::PolicySet;
use crate::policy::Action;
use crate::trust::check_trust;

/// The outcome of the reloads so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// Policies in force.
    pub policies: usize,
    /// Successful loads (the first included).
    pub reloads: u64,
    /// Failed reloads.
    pub failures: u64,
    /// The errors of the last reload, when it failed (cleared by a good one).
    pub last_error: Option<String>,
}

/// Identity of the policy files' current content.
/// Each policy file's path, and what its path resolves to now: (device, inode), modification
/// time and size. The inode tells a swapped symlink (a Kubernetes ConfigMap's `..data`) from
/// the file it replaced even when both have the same size and time.
type Fingerprint = Vec<(PathBuf, (u64, u64), Option<SystemTime>, u64)>;

/// The policies in force for a set of paths.
pub struct PolicyStore {
    paths: Vec<PathBuf>,
    default_action: Action,
    /// What the collectors declare about keys, when policies are checked against it.
    catalog: Option<Arc<dyn TrustCatalog>>,
    /// The warnings of the last good load.
    warnings: Mutex<Vec<String>>,
    current: RwLock<Arc<PolicySet>>,
    status: Mutex<ReloadStatus>,
    fingerprint: Mutex<Option<Fingerprint>>,
}

impl PolicyStore {
    /// Loads `paths`; the first load must succeed.
    pub fn load(paths: Vec<PathBuf>, default_action: Action) -> Result<Self, PolicyErrors> {
        Self::load_with(paths, default_action, None)
    }

    /// Loads `paths` and checks them against `catalog` (see [`check_trust`]) at this load and
    /// every reload: a `requireTrusted` constraint on a key that is always `self` is an error,
    /// and other policies resting only on `self` labels give warnings.
    pub fn load_checked(
        paths: Vec<PathBuf>,
        default_action: Action,
        catalog: Arc<dyn TrustCatalog>,
    ) -> Result<Self, PolicyErrors> {
        Self::load_with(paths, default_action, Some(catalog))
    }

    fn load_with(
        paths: Vec<PathBuf>,
        default_action: Action,
        catalog: Option<Arc<dyn TrustCatalog>>,
    ) -> Result<Self, PolicyErrors> {
        let fingerprint = fingerprint(&paths);
        let (policies, warnings) = load_and_check(&paths, catalog.as_deref())?;
        let set = PolicySet::new(policies, default_action);
        Ok(Self {
            catalog,
            warnings: Mutex::new(warnings),
            status: Mutex::new(ReloadStatus {
                policies: set.policies().len(),
                reloads: 1,
                ..Default::default()
            }),
            current: RwLock::new(Arc::new(set)),
            paths,
            default_action,
            fingerprint: Mutex::new(fingerprint),
        })
    }

    /// A store with no policies (every verdict is the default).
    pub fn empty(default_action: Action) -> Self {
        Self {
            catalog: None,
            warnings: Mutex::new(Vec::new()),
            paths: Vec::new(),
            default_action,
            current: RwLock::new(Arc::new(PolicySet::new(Vec::new(), default_action))),
            status: Mutex::new(ReloadStatus::default()),
            fingerprint: Mutex::new(None),
        }
    }

    /// The policies in force (a snapshot: a reload does not change it under the caller).
    pub fn current(&self) -> Arc<PolicySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reloads now. On failure the previous policies stay in force.
    pub fn reload(&self) -> Result<usize, PolicyErrors> {
        let new_fingerprint = fingerprint(&self.paths);
        let result = load_and_check(&self.paths, self.catalog.as_deref());
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        *self.fingerprint.lock().unwrap_or_else(|e| e.into_inner()) = new_fingerprint;
        match result {
            Ok((policies, warnings)) => {
                *self.warnings.lock().unwrap_or_else(|e| e.into_inner()) = warnings;
                let set = Arc::new(PolicySet::new(policies, self.default_action));
                let count = set.policies().len();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = set;
                status.policies = count;
                status.reloads += 1;
                status.last_error = None;
                Ok(count)
            }
            Err(errors) => {
                status.failures += 1;
                status.last_error = Some(errors.to_string());
                Err(errors)
            }
        }
    }

    /// Reloads when a policy file was added, removed or modified since the last load.
    pub fn reload_if_changed(&self) -> Option<Result<usize, PolicyErrors>> {
        let now = fingerprint(&self.paths);
        let changed = *self.fingerprint.lock().unwrap_or_else(|e| e.into_inner()) != now;
        changed.then(|| self.reload())
    }

    /// The warnings of the last good load (`file:line:column: warning: ...`): policies that
    /// rest only on labels a process chooses for itself.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the reloads did so far.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The policies under `paths`, checked against `catalog` when there is one, and the warnings.
fn load_and_check(
    paths: &[PathBuf],
    catalog: Option<&dyn TrustCatalog>,
) -> Result<(Vec<crate::Policy>, Vec<String>), PolicyErrors> {
    let policies = load_policies(paths)?;
    let Some(catalog) = catalog else {
        return Ok((policies, Vec::new()));
    };
    let findings = check_trust(&policies, catalog);
    if !findings.errors.is_empty() {
        return Err(PolicyErrors(findings.errors));
    }
    let warnings = findings.warnings.iter().map(ToString::to_string).collect();
    Ok((policies, warnings))
}

fn fingerprint(paths: &[PathBuf]) -> Option<Fingerprint> {
    let files = policy_files(paths).ok()?;
    Some(
        files
            .into_iter()
            .map(|file| {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::metadata(&file).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let inode = meta.as_ref().map_or((0, 0), |m| (m.dev(), m.ino()));
                let size = meta.map_or(0, |m| m.len());
                (file, inode, modified, size)
            })
            .collect(),
    )
}
