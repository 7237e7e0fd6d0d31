//! Collecting what the caches miss: a process scope and a container scope, each once for all
//! concurrent lookups of its key (single-flight). Entries with a failed or timed-out collector
//! are not cached, and neither is a partial container entry, so the next lookup asks again.

use std::sync::Arc;
use std::time::Duration;

use collectors::cgroup::ContainerIdentity;
use collectors::{CollectorReport, CollectorStatus, ProcessError, ProcessRef, Scope, Subject};

use super::caches::{self, KeptReport, ProcessEntry, ProcessKey, ScopeEntry, container_key};
use super::{ResolveError, Resolver};

impl Resolver {
    /// Collects the process scope once for all concurrent lookups of `key`.
    pub(super) async fn collect_process(
        &self,
        process: ProcessRef,
        key: ProcessKey,
    ) -> Result<Arc<ProcessEntry>, ResolveError> {
        let guard = match self.processes.get_value_or_guard_async(&key).await {
            // Another lookup collected it while this one waited.
            Ok(entry) => {
                self.metrics.cache_hit(Scope::Process);
                return Ok(entry);
            }
            Err(guard) => guard,
        };
        self.metrics.cache_miss(Scope::Process);
        let collected_ns = kernel_hook::monotonic_ns();
        // Before anything is read: an exec or a move after this changes it.
        let kernel = self.kernel_stamp(process);
        // The container is decided from the cgroups the image digested: read once.
        let (image, cgroups) = match process.image_with_cgroups(&self.roots) {
            Some((image, cgroups)) => (Some(image), cgroups),
            None => (None, None),
        };
        let subject = match cgroups {
            Some(cgroups) => {
                Subject::of_process_cgroups(&self.roots, process, &self.placement, Ok(cgroups))
            }
            None => Subject::of_process(&self.roots, process, &self.placement),
        };
        let reports = self.run(Scope::Process, &subject).await;
        if reports
            .iter()
            .any(|r| r.status == CollectorStatus::NoSuchProcess)
        {
            // It exited, or its PID was reused, between the first look and the collection.
            return Err(ProcessError::NoSuchProcess(process.pid).into());
        }
        // An answer a later collection may complete (a hash still being computed) is given but
        // not kept; nor is one with a failed or timed-out collector.
        let keep = !reports.iter().any(|r| r.provisional || r.status.is_error());
        let scope = ScopeEntry::merged(reports);
        let entry = Arc::new(ProcessEntry {
            labels: scope.labels.freeze(),
            reports: scope.reports.into_iter().map(KeptReport::of).collect(),
            resolved_at: scope.resolved_at,
            container: subject.container.map(Box::new),
            container_note: caches::container_note(subject.container_note),
            untrusted: scope.untrusted.into_boxed_slice(),
            image,
            kernel,
            collected_ns,
        });
        if keep {
            let _ = guard.insert(Arc::clone(&entry));
        } else {
            drop(guard);
        }
        self.update_entry_gauges();
        Ok(entry)
    }

    /// The container entry of `identity`, collected once for all concurrent lookups; `None`
    /// when no container collector is registered.
    pub(super) async fn container_entry(
        &self,
        process: ProcessRef,
        identity: &ContainerIdentity,
    ) -> Option<Arc<ScopeEntry>> {
        if !self
            .registry
            .collectors()
            .iter()
            .any(|r| r.collector.scope() == Scope::Container)
        {
            return None;
        }
        let key = container_key(identity);
        let guard = match self.containers.get_value_or_guard_async(&key).await {
            Ok(entry) => {
                self.metrics.cache_hit(Scope::Container);
                return Some(entry);
            }
            Err(guard) => guard,
        };
        self.metrics.cache_miss(Scope::Container);
        let subject = Subject {
            process: Some(process),
            container: Some(identity.clone()),
            ..Subject::default()
        };
        let entry = Arc::new(ScopeEntry::merged(
            self.run(Scope::Container, &subject).await,
        ));
        // A partial container entry (a pod whose status does not list the container yet) is
        // not kept: the next lookup asks again.
        if entry.has_errors() || entry.is_partial() {
            drop(guard);
        } else {
            let _ = guard.insert(Arc::clone(&entry));
        }
        Some(entry)
    }

    /// Container-scope reports for a process outside any container (not cached: no key).
    pub(super) fn not_in_container(&self, why: Option<&str>) -> Vec<CollectorReport> {
        self.registry
            .collectors()
            .iter()
            .filter(|r| r.collector.scope() == Scope::Container)
            .map(|r| {
                let status = if r.enabled {
                    CollectorStatus::NotApplicable {
                        reason: why
                            .unwrap_or(collectors::cgroup::NOT_IN_A_CONTAINER)
                            .to_owned(),
                    }
                } else {
                    CollectorStatus::Disabled
                };
                CollectorReport::without_labels(&*r.collector, status, Duration::ZERO)
            })
            .collect()
    }

    /// Runs the collectors of `scope` and records their outcome.
    pub(super) async fn run(&self, scope: Scope, subject: &Subject) -> Vec<CollectorReport> {
        let reports = self.registry.collect(Some(scope), subject).await;
        self.metrics.record_reports(&reports);
        self.history.record(&reports);
        reports
    }
}
