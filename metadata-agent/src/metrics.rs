//! The agent's Prometheus metrics, served as text at `GET /metrics`.
//!
//! Every metric is named `metadata_agent_*`. `docs/api.md` lists them with their labels.

use std::time::Duration;

use collectors::{CollectorReport, Scope};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-collector series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CollectorLabels {
    /// The collector's name.
    pub collector: String,
}

/// Labels of the per-collector outcome counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CollectorStatusLabels {
    /// The collector's name.
    pub collector: String,
    /// `ok`, `partial`, `failed`, ...
    pub status: String,
}

/// Labels of the cache series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CacheLabels {
    /// `process` or `container`.
    pub scope: String,
}

/// Labels of the HTTP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/metadata/{pid}`), never the raw path, so the label stays bounded.
    pub route: String,
    /// The request method.
    pub method: String,
    /// The response status code.
    pub status: String,
}

/// Labels of the per-route latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: String,
}

/// Labels of the dropped-events counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Why: `slow_subscriber` or `pipeline_full`.
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric of the agent, cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    /// Collector run time.
    pub collector_duration: HistogramFamily<CollectorLabels>,
    /// Collector runs by outcome.
    pub collector_runs: Family<CollectorStatusLabels, Counter>,
    /// Collector runs that failed or timed out.
    pub collector_errors: Family<CollectorLabels, Counter>,
    /// Lookups answered from a cache.
    pub cache_hits: Family<CacheLabels, Counter>,
    /// Lookups that ran the collectors.
    pub cache_misses: Family<CacheLabels, Counter>,
    /// Entries evicted because a cache was full.
    pub cache_evictions: Family<CacheLabels, Counter>,
    /// Entries dropped because their process or container ended.
    pub cache_removals: Family<CacheLabels, Counter>,
    /// Entries in each cache.
    pub cache_entries: Family<CacheLabels, Gauge>,
    /// Hook events received.
    pub events_received: Counter,
    /// Hook events the kernel could not deliver (ring buffer full).
    pub events_lost: Counter,
    /// Events not delivered to a subscriber, by reason.
    pub events_dropped: Family<DropLabels, Counter>,
    /// Subscribers of `/events` now.
    pub subscribers: Gauge,
    /// Subscribers disconnected because they fell behind.
    pub subscribers_dropped: Counter,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request latency by route.
    pub http_duration: HistogramFamily<RouteLabels>,
    /// Successful policy loads.
    pub policy_reloads: Counter,
    /// Failed policy reloads (the previous policies stayed in force).
    pub policy_reload_failures: Counter,
    /// Policies in force.
    pub policies: Gauge,
    /// 1 when the last policy reload failed.
    pub policy_reload_failing: Gauge,
    /// 1 when the kernel hook is attached.
    pub hook_attached: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("metadata_agent");
        let metrics = Self {
            collector_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            collector_runs: Family::default(),
            collector_errors: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_evictions: Family::default(),
            cache_removals: Family::default(),
            cache_entries: Family::default(),
            events_received: Counter::default(),
            events_lost: Counter::default(),
            events_dropped: Family::default(),
            subscribers: Gauge::default(),
            subscribers_dropped: Counter::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            policy_reloads: Counter::default(),
            policy_reload_failures: Counter::default(),
            policies: Gauge::default(),
            policy_reload_failing: Gauge::default(),
            hook_attached: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "collector_duration_seconds",
            "Time a collector took, per run",
            metrics.collector_duration.clone(),
        );
        r.register(
            "collector_runs",
            "Collector runs by outcome",
            metrics.collector_runs.clone(),
        );
        r.register(
            "collector_errors",
            "Collector runs that failed or timed out",
            metrics.collector_errors.clone(),
        );
        r.register(
            "cache_hits",
            "Lookups answered from a cache",
            metrics.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Lookups that ran the collectors",
            metrics.cache_misses.clone(),
        );
        r.register(
            "cache_evictions",
            "Entries evicted because the cache was full",
            metrics.cache_evictions.clone(),
        );
        r.register(
            "cache_removals",
            "Entries dropped because their process or container ended",
            metrics.cache_removals.clone(),
        );
        r.register(
            "cache_entries",
            "Entries in the cache",
            metrics.cache_entries.clone(),
        );
        r.register(
            "events_received",
            "Events received from the kernel hook",
            metrics.events_received.clone(),
        );
        r.register(
            "events_lost",
            "Events the kernel hook could not deliver",
            metrics.events_lost.clone(),
        );
        r.register(
            "events_dropped",
            "Events not delivered to a subscriber",
            metrics.events_dropped.clone(),
        );
        r.register(
            "event_subscribers",
            "Subscribers of /events",
            metrics.subscribers.clone(),
        );
        r.register(
            "event_subscribers_dropped",
            "Subscribers disconnected because they fell behind",
            metrics.subscribers_dropped.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            metrics.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            metrics.http_duration.clone(),
        );
        r.register(
            "policy_reloads",
            "Successful policy loads",
            metrics.policy_reloads.clone(),
        );
        r.register(
            "policy_reload_failures",
            "Failed policy reloads; the previous policies stayed in force",
            metrics.policy_reload_failures.clone(),
        );
        r.register("policies", "Policies in force", metrics.policies.clone());
        r.register(
            "policy_reload_failing",
            "1 when the last policy reload failed",
            metrics.policy_reload_failing.clone(),
        );
        r.register(
            "hook_attached",
            "1 when the kernel hook is attached",
            metrics.hook_attached.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Records the outcome of each collector run.
    pub fn record_reports(&self, reports: &[CollectorReport]) {
        for report in reports {
            if report.status == collectors::CollectorStatus::Disabled {
                continue;
            }
            let collector = report.name.to_owned();
            self.collector_duration
                .get_or_create(&CollectorLabels {
                    collector: collector.clone(),
                })
                .observe(report.latency.as_secs_f64());
            self.collector_runs
                .get_or_create(&CollectorStatusLabels {
                    collector: collector.clone(),
                    status: report.status.state().to_owned(),
                })
                .inc();
            if report.status.is_error() {
                self.collector_errors
                    .get_or_create(&CollectorLabels { collector })
                    .inc();
            }
        }
    }

    /// Records one HTTP request.
    pub fn record_request(&self, route: &str, method: &str, status: u16, latency: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A lookup answered by the `scope` cache.
    pub fn cache_hit(&self, scope: Scope) {
        self.cache_hits.get_or_create(&Self::cache(scope)).inc();
    }

    /// A lookup the `scope` cache could not answer.
    pub fn cache_miss(&self, scope: Scope) {
        self.cache_misses.get_or_create(&Self::cache(scope)).inc();
    }

    /// An entry of the `scope` cache evicted because the cache was full.
    pub fn cache_evicted(&self, scope: Scope) {
        self.cache_evictions
            .get_or_create(&Self::cache(scope))
            .inc();
    }

    /// `count` entries of the `scope` cache dropped because they went stale.
    pub fn cache_removed(&self, scope: Scope, count: u64) {
        if count > 0 {
            self.cache_removals
                .get_or_create(&Self::cache(scope))
                .inc_by(count);
        }
    }

    /// The `scope` cache holds `entries` entries.
    pub fn cache_size(&self, scope: Scope, entries: usize) {
        self.cache_entries
            .get_or_create(&Self::cache(scope))
            .set(entries as i64);
    }

    /// Counter family label for a cache scope.
    pub fn cache(scope: Scope) -> CacheLabels {
        CacheLabels {
            scope: match scope {
                Scope::Process => "process",
                Scope::Container => "container",
                Scope::Node => "node",
            }
            .to_owned(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_the_prefix_and_their_labels() {
        let metrics = Metrics::new();
        metrics.record_request("/metadata/{pid}", "GET", 404, Duration::from_millis(1));
        metrics.cache_hit(Scope::Process);
        metrics.events_received.inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"metadata_agent_http_requests_total{route="/metadata/{pid}",method="GET",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"metadata_agent_cache_hits_total{scope="process"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("metadata_agent_events_received_total 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
