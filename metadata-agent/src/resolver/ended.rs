//! Executions that ended (the process exited, exec'd another image or its PID was reused):
//! their last labels, by exec id, for `GET /metadata?exec_id=` to answer with `410 Gone`. A
//! bounded history, oldest first out; an entry holds the cached entries it was answered from,
//! not a copy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use collectors::procfs::ExecId;
use collectors::{ProcessError, ProcessRef};

use super::caches::{ProcessEntry, ScopeEntry, container_key};
use super::{Found, Resolution, ResolveError, Resolver};

/// One ended execution.
#[derive(Clone)]
pub(super) struct Ended {
    process: ProcessRef,
    entry: Arc<ProcessEntry>,
    container: Option<Arc<ScopeEntry>>,
    at: SystemTime,
}

/// The history.
pub(super) struct EndedHistory {
    capacity: usize,
    inner: Mutex<(HashMap<ExecId, Ended>, VecDeque<ExecId>)>,
}

impl EndedHistory {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
        }
    }

    fn push(&self, id: ExecId, ended: Ended) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, order) = &mut *inner;
        if entries.insert(id, ended).is_none() {
            order.push_back(id);
        }
        while order.len() > self.capacity {
            if let Some(oldest) = order.pop_front() {
                entries.remove(&oldest);
            }
        }
    }

    fn get(&self, id: &ExecId) -> Option<Ended> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.get(id).cloned()
    }
}

/// What `GET /metadata?exec_id=` finds.
pub enum ExecLookup {
    /// The execution runs: its labels now.
    Live(Arc<Resolution>),
    /// It ended: its last labels, and when it was seen to end.
    Ended {
        /// The labels it had.
        resolution: Box<Resolution>,
        /// When the agent saw it end (RFC 3339).
        ended_at: String,
    },
    /// Neither: why.
    Unknown(String),
    /// Its process runs but could not be read now.
    Failed(ResolveError),
}

impl Resolver {
    /// Keeps the entry of `process`, dropped from the cache because its execution ended.
    pub(super) fn remember_ended(&self, process: ProcessRef, entry: &Arc<ProcessEntry>) {
        let Some(id) = entry.exec_id() else {
            return;
        };
        let container = entry
            .container
            .as_deref()
            .and_then(|identity| self.containers.peek(&container_key(identity)));
        self.ended.push(
            id,
            Ended {
                process,
                entry: Arc::clone(entry),
                container,
                at: SystemTime::now(),
            },
        );
    }

    /// The execution `id`: running, ended (recently), or unknown.
    pub async fn resolve_exec(&self, id: &ExecId) -> ExecLookup {
        let boot = self.lineage.as_ref().and_then(|lineage| lineage.boot());
        if boot.is_some_and(|boot| boot != id.boot) {
            return ExecLookup::Unknown(format!(
                "exec id {id} is of another node or an earlier boot of this one"
            ));
        }
        let same_process = ProcessRef::resolve(&self.roots, id.pid)
            .is_ok_and(|process| process.pid == id.pid && process.start_ticks == Some(id.start));
        if same_process {
            match self.resolve(id.pid).await {
                Ok(resolution)
                    if resolution.labels.get("process:exec-id").first()
                        == Some(&id.to_string()) =>
                {
                    return ExecLookup::Live(resolution);
                }
                // It runs another image now, or it just exited.
                Ok(_) | Err(ResolveError::Process(ProcessError::NoSuchProcess(_))) => {}
                // Alive but unreadable now: not said to have ended.
                Err(error) => return ExecLookup::Failed(error),
            }
        }
        // Without exit and exec events, an execution that ended may still be cached.
        let key = (id.pid, Some(id.start));
        if let Some(entry) = self.processes.peek(&key)
            && entry.exec_id() == Some(*id)
        {
            self.processes.remove(&key);
            self.remember_ended(
                ProcessRef {
                    pid: id.pid,
                    start_ticks: Some(id.start),
                },
                &entry,
            );
        }
        match self.ended.get(id) {
            Some(ended) => {
                let found = Found {
                    process: ended.process,
                    entry: ended.entry,
                    container: ended.container,
                    node: self.node(),
                    cached: true,
                };
                ExecLookup::Ended {
                    resolution: Box::new(self.assemble(&found)),
                    ended_at: humantime::format_rfc3339_millis(ended.at).to_string(),
                }
            }
            None => ExecLookup::Unknown(format!(
                "no running process is execution {id}, and none that ended recently was"
            )),
        }
    }
}
