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

/// Labels of the kept-answer check counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CheckLabels {
    /// What told that the answer still holds: `kernel` (the hook's process table) or `procfs`.
    pub by: String,
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

type HistogramFamily<L> = Family<L, Histogram, Buckets>;

/// Makes the histograms of a family, with the agent's latency buckets.
#[derive(Debug, Clone)]
pub struct Buckets(std::sync::Arc<[f64]>);

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The smallest latency bucket: a cache hit takes a few microseconds more.
const SMALLEST_BUCKET: f64 = 0.000_05;

/// Latency buckets from 50 µs, doubling, up to the first past `longest` (at least ~1.6 s), so
/// that a run cut off by its timeout lands in a bucket of its own and not only in `+Inf`.
pub fn latency_buckets(longest: Duration) -> Vec<f64> {
    let longest = longest.as_secs_f64().max(1.0);
    let mut count = 16;
    while SMALLEST_BUCKET * 2f64.powi(count - 1) <= longest {
        count += 1;
    }
    exponential_buckets(SMALLEST_BUCKET, 2.0, count as u16).collect()
}

fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: &[f64]) -> HistogramFamily<L> {
    Family::new_with_constructor(Buckets(buckets.into()))
}

/// `metadata_agent_build_info`'s labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version.
    pub version: String,
    /// The commit it was built from (`METADATA_AGENT_COMMIT` at build time), or `unknown`.
    pub commit: String,
}

/// The standard `process_*` metrics of the agent itself, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessMetrics;

impl ProcessMetrics {
    /// (cpu seconds, start time since boot in seconds, virtual bytes, resident bytes), from
    /// `/proc/self/stat`.
    fn stat() -> Option<(f64, f64, u64, u64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command, which may hold spaces: state is field 3.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let cpu = (field(14)? + field(15)?) as f64 / ticks;
        let start = field(22)? as f64 / ticks;
        Some((cpu, start, field(23)?, field(24)? * page))
    }

    /// The machine's boot time (seconds since the epoch), from `/proc/stat`.
    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse().ok())
    }
}

impl prometheus_client::collector::Collector for ProcessMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
            encoder: &mut prometheus_client::encoding::DescriptorEncoder,
            name: &str,
            help: &str,
            value: N,
        ) -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        }
        if let Some((cpu, start, virtual_bytes, resident)) = Self::stat() {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                counter.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                resident as i64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                virtual_bytes as i64,
            )?;
            if let Some(boot) = Self::boot_time() {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since the epoch, in seconds",
                    boot + start,
                )?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor is counted by the listing: leave it out.
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                fds.count().saturating_sub(1) as i64,
            )?;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Limit of open file descriptors",
                limit.rlim_cur as i64,
            )?;
        }
        Ok(())
    }
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
    /// Checks of kept answers, by what answered them.
    pub answer_checks: Family<CheckLabels, Counter>,
    /// `cache_hits` of the process, container and node scopes.
    cache_hits_by_scope: [Counter; 3],
    /// `answer_checks{by="kernel"}`.
    pub answer_checks_kernel: Counter,
    /// `answer_checks{by="procfs"}`.
    pub answer_checks_procfs: Counter,
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
    /// Events exported over OTLP.
    pub otlp_exported: Counter,
    /// OTLP requests that failed (retried or refused).
    pub otlp_failures: Counter,
    /// Events not exported over OTLP, by reason (`queue_full`, `refused`).
    pub otlp_dropped: Family<DropLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The longest wait the default configuration allows (the header read timeout): the latency
/// buckets of [`Metrics::new`] reach past it.
const DEFAULT_LONGEST: Duration = Duration::from_secs(10);

impl Metrics {
    /// Creates and registers every metric, with latency buckets past 10 s.
    pub fn new() -> Self {
        Self::with_longest_wait(DEFAULT_LONGEST)
    }

    /// Creates and registers every metric, with latency buckets reaching past `longest` (the
    /// longest timeout of the configuration).
    pub fn with_longest_wait(longest: Duration) -> Self {
        let buckets = latency_buckets(longest);
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessMetrics));
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                commit: option_env!("METADATA_AGENT_COMMIT")
                    .unwrap_or("unknown")
                    .to_owned(),
            })
            .set(1);
        let registry = root.sub_registry_with_prefix("metadata_agent");
        registry.register(
            "build_info",
            "The agent's version and commit, as labels; always 1",
            build_info,
        );
        let answer_checks = Family::<CheckLabels, Counter>::default();
        let check_by = |by: &str| {
            answer_checks
                .get_or_create(&CheckLabels { by: by.to_owned() })
                .clone()
        };
        let (answer_checks_kernel, answer_checks_procfs) = (check_by("kernel"), check_by("procfs"));
        let cache_hits = Family::<CacheLabels, Counter>::default();
        let cache_hits_by_scope = [Scope::Process, Scope::Container, Scope::Node]
            .map(|scope| cache_hits.get_or_create(&Self::cache(scope)).clone());
        let metrics = Self {
            cache_hits_by_scope,
            answer_checks_kernel,
            answer_checks_procfs,
            answer_checks,
            collector_duration: histograms(&buckets),
            collector_runs: Family::default(),
            collector_errors: Family::default(),
            cache_hits,
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
            http_duration: histograms(&buckets),
            policy_reloads: Counter::default(),
            policy_reload_failures: Counter::default(),
            policies: Gauge::default(),
            policy_reload_failing: Gauge::default(),
            hook_attached: Gauge::default(),
            otlp_exported: Counter::default(),
            otlp_failures: Counter::default(),
            otlp_dropped: Family::default(),
            registry: Registry::default(),
        };
        let r = registry;
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
            "answer_checks",
            "Checks that a kept answer still holds, by what told: the hook's process table \
             (kernel) or the process's procfs files (procfs)",
            metrics.answer_checks.clone(),
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
        r.register(
            "otlp_exported",
            "Events exported over OTLP",
            metrics.otlp_exported.clone(),
        );
        r.register(
            "otlp_failures",
            "OTLP requests that failed (retried or refused)",
            metrics.otlp_failures.clone(),
        );
        r.register(
            "otlp_dropped",
            "Events not exported over OTLP, by reason",
            metrics.otlp_dropped.clone(),
        );
        Self {
            registry: root,
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

    /// A lookup answered by the `scope` cache (every warm lookup counts one: its counter is
    /// looked up once, not per lookup).
    pub fn cache_hit(&self, scope: Scope) {
        let index = match scope {
            Scope::Process => 0,
            Scope::Container => 1,
            Scope::Node => 2,
        };
        self.cache_hits_by_scope[index].inc();
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

    #[test]
    fn build_info_and_the_process_metrics_are_exposed() {
        let text = Metrics::new().encode();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|line| line.starts_with(name) && !line.starts_with('#'))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert!(
            text.contains(&format!(
                "metadata_agent_build_info{{version=\"{}\",commit=",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
        let reported = value("process_open_fds");
        assert!(
            reported >= 3.0 && (reported - open).abs() <= 3.0,
            "{reported} vs {open}"
        );
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_max_fds") >= reported);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }

    #[test]
    fn latency_buckets_reach_past_the_longest_wait() {
        for longest in [1, 2, 10, 30, 120, 86_400] {
            let buckets = latency_buckets(Duration::from_secs(longest));
            let last = *buckets.last().unwrap();
            assert!(last > longest as f64, "{longest}: {buckets:?}");
            assert!(last <= longest as f64 * 2.0 + 1.7, "{longest}: {buckets:?}");
            assert_eq!(buckets[0], 0.000_05);
        }
        let metrics = Metrics::with_longest_wait(Duration::from_secs(30));
        metrics.record_request("/healthz", "GET", 200, Duration::from_secs(25));
        let text = metrics.encode();
        assert!(text.contains("le=\"52.4288\""), "{text}");
    }
}
