//! Resolving one PID to its labels: the process, its container and the node.

use std::time::SystemTime;

use collectors::cgroup::parse_cgroup_file;
use collectors::{
    CollectorReport, CollectorStatus, HostRoots, ProcessError, ProcessRef, Registry, Subject,
    merge_labels,
};
use serde::Serialize;

/// Everything known about one process at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    /// The process (thread-group id).
    pub pid: u32,
    /// Labels of every collector, merged.
    pub labels: collectors::LabelSet,
    /// Each collector's outcome.
    pub collectors: Vec<CollectorReport>,
    /// When the labels were collected (RFC 3339).
    pub resolved_at: String,
}

/// Why a PID could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The PID argument or process is not usable.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// Resolves `pid` once, running every enabled collector.
pub async fn resolve_once(
    registry: &Registry,
    roots: &HostRoots,
    pid: u32,
) -> Result<Resolution, ResolveError> {
    let process = ProcessRef::resolve(roots, pid)?;
    let container = std::fs::read(roots.proc_file(process.pid, "cgroup"))
        .ok()
        .and_then(|content| {
            parse_cgroup_file(&String::from_utf8_lossy(&content))
                .identity()
                .cloned()
        });
    let subject = Subject {
        process: Some(process),
        container,
    };
    let reports = registry.collect(None, &subject).await;
    if reports
        .iter()
        .any(|r| r.status == CollectorStatus::NoSuchProcess)
    {
        // It exited between the first look and the collection.
        return Err(ProcessError::NoSuchProcess(process.pid).into());
    }
    Ok(Resolution {
        pid: process.pid,
        labels: merge_labels(&reports),
        collectors: reports,
        resolved_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    })
}
