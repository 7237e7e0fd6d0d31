//! Dropping entries that went stale: a process that exited or exec'd (hook events), a container
//! its runtime reports changed (collectors' invalidation notices), and, periodically, every
//! process whose PID no longer names it.

use std::sync::Arc;

use collectors::{Invalidation, ProcessRef, Scope};

use super::Resolver;
use super::caches::{ProcessEntry, ProcessKey};

impl Resolver {
    /// Drops every cached entry of `pid`, whatever its start time (a move to another cgroup, a
    /// process that must be collected again): a look at every cached process.
    pub fn forget(&self, pid: u32) {
        let before = self.processes.len();
        self.drop_ended(|&(cached, _), _| cached == pid);
        // Its kept answer would no longer be given; dropping it closes its proc directory.
        self.answers.remove(&pid);
        self.count_removals(before);
    }

    /// Drops the cached entry of the process `pid` started at `start`, which ended (an exit
    /// event); returns its execution, when it was cached.
    pub fn forget_ended(&self, pid: u32, start: u64) -> Option<collectors::procfs::ExecId> {
        let exec_id = self
            .processes
            .peek(&(pid, Some(start)))
            .and_then(|entry| entry.exec_id());
        self.drop_process(pid, start, |_| true);
        // Its kept answer would no longer be given; dropping it closes its proc directory.
        self.answers.remove(&pid);
        exec_id
    }

    /// Drops the entry of the process `pid` started at `start` if it was collected before
    /// `monotonic_ns` (an exec at that time made it stale).
    pub fn forget_collected_before(&self, pid: u32, start: u64, monotonic_ns: u64) {
        self.drop_process(pid, start, |entry| entry.collected_ns < monotonic_ns);
    }

    /// Drops the entry of the process `pid` started at `start` when `stale` says so. One
    /// lookup, whatever the number of processes cached: the hook's exec and exit events name
    /// the process, and an entry left by an earlier process with the same PID is the sweep's.
    fn drop_process(&self, pid: u32, start: u64, stale: impl FnOnce(&Arc<ProcessEntry>) -> bool) {
        let key = (pid, Some(start));
        if let Some((_, entry)) = self.processes.remove_if(&key, stale) {
            self.remember_ended(
                ProcessRef {
                    pid,
                    start_ticks: Some(start),
                },
                &entry,
            );
            self.metrics.cache_removed(Scope::Process, 1);
            self.update_entry_gauges();
        }
    }

    /// Drops the process entries `ended` picks, whose executions ended: each is kept in the
    /// history of ended executions.
    fn drop_ended(&self, ended: impl Fn(&ProcessKey, &Arc<ProcessEntry>) -> bool) {
        let dropped = std::cell::RefCell::new(Vec::new());
        self.processes.retain(|key, entry| {
            if !ended(key, entry) {
                return true;
            }
            dropped.borrow_mut().push((*key, Arc::clone(entry)));
            false
        });
        for ((pid, start_ticks), entry) in dropped.into_inner() {
            self.remember_ended(ProcessRef { pid, start_ticks }, &entry);
        }
    }

    /// Drops the cached labels of container `id` (it died, was removed or renamed), in every
    /// cgroup it was looked up from.
    pub fn forget_container(&self, id: &str) {
        let before = self.containers.len();
        self.containers.retain(|(cached, _), _| cached != id);
        let removed = before.saturating_sub(self.containers.len());
        self.metrics.cache_removed(Scope::Container, removed as u64);
        self.update_entry_gauges();
    }

    /// Drops every container entry (changes may have been missed).
    pub fn forget_all_containers(&self) {
        self.containers.clear();
        self.update_entry_gauges();
    }

    /// Follows the invalidation notices of every collector that gives them, until shutdown.
    pub fn follow_invalidations(self: &Arc<Self>) {
        for registered in self.registry.collectors() {
            if !registered.enabled {
                continue;
            }
            let Some(mut notices) = registered.collector.invalidations() else {
                continue;
            };
            let resolver = Arc::downgrade(self);
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let notice = notices.recv().await;
                    let Some(resolver) = resolver.upgrade() else {
                        break;
                    };
                    match notice {
                        Ok(Invalidation::Container(id)) => resolver.forget_container(&id),
                        Ok(Invalidation::AllContainers) | Err(RecvError::Lagged(_)) => {
                            resolver.forget_all_containers()
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            });
        }
    }

    /// Drops entries of processes that ended or whose PID now names another process.
    pub fn sweep(&self) {
        let before = self.processes.len();
        self.drop_ended(|&(pid, start), _| {
            !ProcessRef::resolve(&self.roots, pid)
                .is_ok_and(|now| now.pid == pid && now.start_ticks == start)
        });
        self.answers.retain(|_, answer| {
            let process = &answer.found.process;
            self.processes
                .peek(&(process.pid, process.start_ticks))
                .is_some()
        });
        self.count_removals(before);
    }
}
