//! The registry: runs enabled collectors concurrently, each under its own deadline, and keeps
//! partial results when one of them fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::collector::{CollectError, Collected, Collector, Scope, Subject};
use crate::error::error_chain;
use labels::LabelSet;

/// How one collector's run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CollectorStatus {
    /// Everything was read.
    Ok,
    /// Labels were produced but part of the data could not be read.
    Partial {
        /// What was missing and why.
        reason: String,
    },
    /// Turned off in the configuration.
    Disabled,
    /// The data source is not on this machine.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The source does not concern this subject (a process outside any container).
    NotApplicable {
        /// Why.
        reason: String,
    },
    /// The process does not exist.
    NoSuchProcess,
    /// The source failed.
    Failed {
        /// The error.
        error: String,
    },
    /// The deadline passed before the collector finished.
    TimedOut {
        /// The deadline, in milliseconds.
        after_ms: u64,
    },
    /// A background refresh failed; the labels are those of the last good collection.
    Stale {
        /// Why the refresh failed, and when the kept labels were collected.
        reason: String,
    },
}

impl CollectorStatus {
    /// Short state name (`ok`, `partial`, `disabled`, ...).
    pub fn state(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial { .. } => "partial",
            Self::Disabled => "disabled",
            Self::Unavailable { .. } => "unavailable",
            Self::NotApplicable { .. } => "not_applicable",
            Self::NoSuchProcess => "no_such_process",
            Self::Failed { .. } => "failed",
            Self::TimedOut { .. } => "timed_out",
            Self::Stale { .. } => "stale",
        }
    }

    /// The reason or error, when the state has one.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::Partial { reason }
            | Self::Unavailable { reason }
            | Self::NotApplicable { reason }
            | Self::Stale { reason } => Some(reason.clone()),
            Self::Failed { error } => Some(error.clone()),
            Self::TimedOut { after_ms } => Some(format!("no answer within {after_ms} ms")),
            Self::Ok | Self::Disabled | Self::NoSuchProcess => None,
        }
    }

    /// Whether the state counts as an error for metrics and logs.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Failed { .. } | Self::TimedOut { .. })
    }
}

/// One collector's result within a collection.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorReport {
    /// The collector's name.
    pub name: &'static str,
    /// Its scope.
    pub scope: Scope,
    /// How its run ended.
    pub status: CollectorStatus,
    /// How long it took.
    #[serde(serialize_with = "serialize_millis", rename = "latency_ms")]
    pub latency: Duration,
    /// Its labels (empty unless the status is ok or partial).
    #[serde(skip)]
    pub labels: LabelSet,
    /// Keys of `labels` whose values are only `self` in this collection (see
    /// [`Collected::untrusted`](crate::Collected::untrusted)).
    #[serde(skip)]
    pub untrusted: Vec<&'static str>,
    /// Whether a later collection may complete what this one lacks (see
    /// [`Collected::provisional`](crate::Collected::provisional)).
    #[serde(skip)]
    pub provisional: bool,
    /// See [`Collected::executable`](crate::Collected::executable).
    #[serde(skip)]
    pub executable: Option<crate::procfs::FileIdentity>,
}

/// Labels one collection may give at most: a hostile source (an IMDS that answers ten thousand
/// tags, a pod with huge annotations) cannot fan out without limit.
pub const MAX_LABELS_PER_COLLECTION: usize = 2048;

/// Longest label value a collection may give, in bytes; longer ones are cut with a visible
/// marker.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// Holds `collected` to [`MAX_LABELS_PER_COLLECTION`] and [`MAX_VALUE_BYTES`]; returns its
/// partial reason, with what was cut added.
fn bound(collected: &mut Collected, filter: &KeyFilter) -> Option<String> {
    filter.apply(&mut collected.labels);
    let mut cut = Vec::new();
    let pairs = collected.labels.pair_count();
    let long = collected
        .labels
        .pairs()
        .any(|(_, value)| value.len() > MAX_VALUE_BYTES);
    if pairs > MAX_LABELS_PER_COLLECTION || long {
        let mut bounded = LabelSet::new();
        let mut shortened = 0;
        for (key, value) in collected.labels.pairs().take(MAX_LABELS_PER_COLLECTION) {
            if value.len() > MAX_VALUE_BYTES {
                let mut end = MAX_VALUE_BYTES;
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                bounded.insert(
                    key,
                    format!(
                        "{}{}{} bytes total]",
                        &value[..end],
                        labels::TRUNCATION_MARKER,
                        value.len()
                    ),
                );
                shortened += 1;
            } else {
                bounded.insert(key, value);
            }
        }
        if pairs > MAX_LABELS_PER_COLLECTION {
            cut.push(format!(
                "{} of {pairs} labels left out (at most {MAX_LABELS_PER_COLLECTION} per collection)",
                pairs - MAX_LABELS_PER_COLLECTION
            ));
        }
        if shortened > 0 {
            cut.push(format!("{shortened} values cut at {MAX_VALUE_BYTES} bytes"));
        }
        collected.labels = bounded;
    }
    match (collected.partial.take(), cut.is_empty()) {
        (partial, true) => partial,
        (None, false) => Some(cut.join("; ")),
        (Some(partial), false) => Some(format!("{partial}; {}", cut.join("; "))),
    }
}

impl CollectorReport {
    /// The report of `collector` that ended in `status` with no labels.
    pub fn without_labels(
        collector: &dyn Collector,
        status: CollectorStatus,
        latency: Duration,
    ) -> Self {
        Self {
            name: collector.name(),
            scope: collector.scope(),
            status,
            latency,
            labels: LabelSet::new(),
            untrusted: Vec::new(),
            provisional: false,
            executable: None,
        }
    }
}

fn serialize_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// A collector with its registry settings.
#[derive(Clone)]
pub struct Registered {
    /// The collector.
    pub collector: Arc<dyn Collector>,
    /// Whether it runs at all.
    pub enabled: bool,
    /// Its deadline.
    pub timeout: Duration,
    /// Which of its labels are kept.
    pub filter: KeyFilter,
}

/// Which keys of a collector's labels are kept: those matching an `include` glob (all when
/// there is none) and no `exclude` glob (`*` matches any run of characters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Globs of the keys kept; none: all.
    pub include: Vec<String>,
    /// Globs of the keys left out.
    pub exclude: Vec<String>,
}

impl KeyFilter {
    /// Whether `key` is kept.
    pub fn keeps(&self, key: &str) -> bool {
        let matches = |glob: &String| crate::redaction::wildcard_match(glob, key);
        (self.include.is_empty() || self.include.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }

    /// `labels` without the keys left out.
    fn apply(&self, labels: &mut LabelSet) {
        if self.include.is_empty() && self.exclude.is_empty() {
            return;
        }
        let dropped: Vec<String> = labels
            .iter()
            .map(|(key, _)| key)
            .filter(|key| !self.keeps(key))
            .map(str::to_owned)
            .collect();
        for key in dropped {
            labels.remove(&key);
        }
    }
}

/// The set of collectors the agent runs.
#[derive(Clone, Default)]
pub struct Registry {
    collectors: Vec<Registered>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a collector, run under `timeout` unless `enabled` is false.
    pub fn register(
        &mut self,
        collector: Arc<dyn Collector>,
        enabled: bool,
        timeout: Duration,
    ) -> &mut Self {
        self.register_filtered(collector, enabled, timeout, KeyFilter::default())
    }

    /// [`Registry::register`], keeping only the labels `filter` keeps.
    pub fn register_filtered(
        &mut self,
        collector: Arc<dyn Collector>,
        enabled: bool,
        timeout: Duration,
        filter: KeyFilter,
    ) -> &mut Self {
        self.collectors.push(Registered {
            collector,
            enabled,
            timeout,
            filter,
        });
        self
    }

    /// The registered collectors, in registration order.
    pub fn collectors(&self) -> &[Registered] {
        &self.collectors
    }

    /// Runs every collector of `scope` (all scopes when `None`) concurrently against `subject`.
    ///
    /// Reports come back in registration order, one per collector, disabled ones included.
    /// A collector that panics, fails or overruns its deadline only loses its own labels.
    pub async fn collect(&self, scope: Option<Scope>, subject: &Subject) -> Vec<CollectorReport> {
        let selected: Vec<&Registered> = self
            .collectors
            .iter()
            .filter(|r| scope.is_none_or(|s| r.collector.scope() == s))
            .collect();
        let mut reports: Vec<Option<CollectorReport>> = vec![None; selected.len()];
        let mut tasks = JoinSet::new();
        for (index, registered) in selected.iter().enumerate() {
            if !registered.enabled {
                reports[index] = Some(CollectorReport::without_labels(
                    &*registered.collector,
                    CollectorStatus::Disabled,
                    Duration::ZERO,
                ));
                continue;
            }
            let collector = Arc::clone(&registered.collector);
            let timeout = registered.timeout;
            let subject = subject.clone();
            tasks.spawn(async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(timeout, collector.collect(&subject)).await;
                (index, outcome, started.elapsed())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((index, outcome, latency)) = joined else {
                continue; // a panic: its slot is filled as failed below
            };
            let registered = selected[index];
            let collector = &*registered.collector;
            reports[index] = Some(match outcome {
                Err(_) => CollectorReport::without_labels(
                    collector,
                    CollectorStatus::TimedOut {
                        after_ms: registered.timeout.as_millis() as u64,
                    },
                    latency,
                ),
                Ok(Ok(mut collected)) => CollectorReport {
                    status: match bound(&mut collected, &registered.filter) {
                        None => CollectorStatus::Ok,
                        Some(reason) => CollectorStatus::Partial { reason },
                    },
                    labels: collected.labels,
                    untrusted: collected.untrusted,
                    provisional: collected.provisional,
                    executable: collected.executable,
                    ..CollectorReport::without_labels(collector, CollectorStatus::Ok, latency)
                },
                Ok(Err(error)) => {
                    CollectorReport::without_labels(collector, status_of(error), latency)
                }
            });
        }
        reports
            .into_iter()
            .enumerate()
            .map(|(index, report)| {
                report.unwrap_or_else(|| {
                    CollectorReport::without_labels(
                        &*selected[index].collector,
                        CollectorStatus::Failed {
                            error: "collector panicked".to_owned(),
                        },
                        Duration::ZERO,
                    )
                })
            })
            .collect()
    }
}

/// The status of a collection that ended in `error`; reasons and errors keep their causes.
fn status_of(error: CollectError) -> CollectorStatus {
    match error {
        CollectError::Unavailable { reason, cause } => CollectorStatus::Unavailable {
            reason: match cause {
                Some(cause) => format!("{reason}: {}", error_chain(&*cause)),
                None => reason,
            },
        },
        CollectError::NotApplicable(reason) => CollectorStatus::NotApplicable { reason },
        CollectError::NoSuchProcess(_) => CollectorStatus::NoSuchProcess,
        error @ CollectError::Failed { .. } => CollectorStatus::Failed {
            error: error_chain(&error),
        },
    }
}

/// Merges the labels of every report into one set.
pub fn merge_labels(reports: &[CollectorReport]) -> LabelSet {
    let mut labels = LabelSet::new();
    for report in reports {
        labels.merge(&report.labels);
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Collected;
    use crate::config::DEFAULT_TIMEOUT;
    use async_trait::async_trait;

    struct Fake {
        name: &'static str,
        behaviour: Behaviour,
    }

    enum Behaviour {
        Labels(&'static str, &'static str),
        Partial,
        Sleep(Duration),
        Barrier(Arc<tokio::sync::Barrier>),
        Fail,
        Unavailable,
        Panic,
    }

    #[async_trait]
    impl Collector for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn scope(&self) -> Scope {
            Scope::Node
        }
        fn label_keys(&self) -> &'static [crate::KeySpec] {
            &[]
        }
        async fn collect(&self, _: &Subject) -> Result<Collected, CollectError> {
            let mut labels = LabelSet::new();
            match &self.behaviour {
                Behaviour::Labels(k, v) => labels.insert(*k, *v),
                Behaviour::Partial => {
                    labels.insert("p:k", "v");
                    return Ok(Collected {
                        labels,
                        partial: Some("gone".into()),
                        ..Default::default()
                    });
                }
                Behaviour::Sleep(d) => {
                    tokio::time::sleep(*d).await;
                    labels.insert("slow:k", "v");
                }
                Behaviour::Barrier(barrier) => {
                    barrier.wait().await;
                }
                Behaviour::Fail => return Err(CollectError::failed("boom")),
                Behaviour::Unavailable => return Err(CollectError::unavailable("absent")),
                Behaviour::Panic => panic!("collector bug"),
            }
            Ok(Collected::complete(labels))
        }
    }

    fn fake(name: &'static str, behaviour: Behaviour) -> Arc<dyn Collector> {
        Arc::new(Fake { name, behaviour })
    }

    #[tokio::test]
    async fn every_outcome_is_reported_and_partial_results_are_kept() {
        let mut registry = Registry::new();
        registry
            .register(
                fake("ok", Behaviour::Labels("a:b", "c")),
                true,
                DEFAULT_TIMEOUT,
            )
            .register(fake("partial", Behaviour::Partial), true, DEFAULT_TIMEOUT)
            .register(
                fake("off", Behaviour::Labels("x:y", "z")),
                false,
                DEFAULT_TIMEOUT,
            )
            .register(
                fake("slow", Behaviour::Sleep(Duration::from_secs(30))),
                true,
                Duration::from_millis(50),
            )
            .register(fake("fail", Behaviour::Fail), true, DEFAULT_TIMEOUT)
            .register(
                fake("absent", Behaviour::Unavailable),
                true,
                DEFAULT_TIMEOUT,
            )
            .register(fake("panics", Behaviour::Panic), true, DEFAULT_TIMEOUT);
        let started = Instant::now();
        let reports = registry.collect(None, &Subject::node()).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let states: Vec<(&str, &str)> =
            reports.iter().map(|r| (r.name, r.status.state())).collect();
        assert_eq!(
            states,
            [
                ("ok", "ok"),
                ("partial", "partial"),
                ("off", "disabled"),
                ("slow", "timed_out"),
                ("fail", "failed"),
                ("absent", "unavailable"),
                ("panics", "failed"),
            ]
        );
        let labels = merge_labels(&reports);
        assert_eq!(labels.to_text(), "a:b: c\np:k: v\n");
    }

    #[tokio::test]
    async fn collectors_run_concurrently() {
        // Each collector waits until all four are inside collect(): run one after the other,
        // the first would wait forever and time out.
        let barrier = Arc::new(tokio::sync::Barrier::new(4));
        let mut registry = Registry::new();
        for name in ["s1", "s2", "s3", "s4"] {
            registry.register(
                fake(name, Behaviour::Barrier(Arc::clone(&barrier))),
                true,
                Duration::from_secs(10),
            );
        }
        let reports = registry.collect(Some(Scope::Node), &Subject::node()).await;
        assert!(
            reports.iter().all(|r| r.status == CollectorStatus::Ok),
            "{reports:?}"
        );
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn a_collection_is_held_to_its_bounds() {
        let mut collected = Collected::default();
        for n in 0..5000 {
            collected.labels.insert(format!("ec2:tag:t{n:05}"), "v");
        }
        collected.labels.insert("huge", "x".repeat(100_000));
        let none = KeyFilter::default();
        let reason = bound(&mut collected, &none).unwrap();
        assert_eq!(collected.labels.pair_count(), MAX_LABELS_PER_COLLECTION);
        assert!(reason.contains("labels left out"), "{reason}");
        let mut collected = Collected::default();
        collected.labels.insert("huge", "é".repeat(20_000));
        let reason = bound(&mut collected, &none).unwrap();
        assert!(reason.contains("1 values cut"), "{reason}");
        let value = &collected.labels.get("huge")[0];
        assert!(value.len() < MAX_VALUE_BYTES + 64 && value.contains("truncated"));
        let mut fine = Collected::default();
        fine.labels.insert("k", "v");
        assert_eq!(bound(&mut fine, &none), None);
        // Operators' globs.
        let filter = KeyFilter {
            include: vec!["k8s:*".to_owned()],
            exclude: vec!["k8s:annotation:*".to_owned()],
        };
        let mut collected = Collected::default();
        for key in ["k8s:pod:name", "k8s:annotation:secret", "other"] {
            collected.labels.insert(key, "v");
        }
        assert_eq!(bound(&mut collected, &filter), None);
        assert_eq!(collected.labels.to_text(), "k8s:pod:name: v\n");
    }
}
