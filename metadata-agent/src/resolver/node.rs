//! Node labels: collected at start and refreshed in the background, never per lookup. A
//! collector whose refresh fails keeps its last good labels, marked `stale`.

use std::sync::Arc;

use collectors::{CollectorReport, CollectorStatus, Scope, Subject};

use super::Resolver;
use super::caches::ScopeEntry;

impl Resolver {
    /// The node labels in force.
    pub fn node(&self) -> Arc<ScopeEntry> {
        Arc::clone(&self.node.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether node labels were collected at least once.
    pub fn node_ready(&self) -> bool {
        self.node_ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Collects node labels again. A collector that fails now but succeeded before keeps its
    /// last good labels, with status `stale`.
    pub async fn refresh_node(&self) {
        let fresh = self.run(Scope::Node, &Subject::node()).await;
        let previous = self.node();
        let merged: Vec<CollectorReport> = fresh
            .into_iter()
            .map(|report| {
                let failed = report.status.is_error();
                let last_good = previous
                    .reports
                    .iter()
                    .find(|old| old.name == report.name && !old.labels.is_empty());
                match last_good {
                    Some(old) if failed => CollectorReport {
                        status: CollectorStatus::Stale {
                            reason: format!(
                                "refresh failed ({}); labels from {}",
                                report.status.detail().unwrap_or_default(),
                                humantime::format_rfc3339_seconds(previous.resolved_at)
                            ),
                        },
                        labels: old.labels.clone(),
                        ..report
                    },
                    _ => report,
                }
            })
            .collect();
        let entry = ScopeEntry::new(merged);
        *self.node.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entry);
        self.node_ready
            .store(true, std::sync::atomic::Ordering::Release);
    }
}
