//! The agent's background work: node refresh, cache sweep, policy reload, pre-resolution, and
//! the event pipeline fed by the kernel hook. Each task stops at shutdown.

use std::sync::Arc;
use std::time::Duration;

use selectors::PolicyStore;
use tokio::sync::watch;

use super::Agent;
use crate::events;
use crate::metrics::Metrics;

impl Agent {
    /// Starts the background work; it stops when `shutdown` turns true.
    pub fn start_background(&mut self, shutdown: watch::Receiver<bool>) {
        let state = &self.state;
        let resolver = Arc::clone(&state.resolver);
        let node_interval = self.config.resolver.node_refresh_interval;
        every(node_interval, shutdown.clone(), true, move || {
            let resolver = Arc::clone(&resolver);
            async move { resolver.refresh_node().await }
        });

        state.resolver.follow_invalidations();

        if let Some(otlp) = self.config.events.otlp.clone() {
            tokio::spawn(crate::otlp::run(
                otlp,
                Arc::clone(&state.bus),
                Arc::clone(&state.metrics),
                shutdown.clone(),
            ));
        }

        if let Some(file) = self.config.events.file.clone() {
            tokio::spawn(crate::export::run(
                file,
                Arc::clone(&state.bus),
                shutdown.clone(),
            ));
        }

        let resolver = Arc::clone(&state.resolver);
        let enforcer = self.enforcer.clone();
        let sweep_interval = self.config.resolver.sweep_interval;
        every(sweep_interval, shutdown.clone(), false, move || {
            let (resolver, enforcer) = (Arc::clone(&resolver), enforcer.clone());
            async move {
                resolver.sweep();
                if let Some(enforcer) = enforcer {
                    enforcer.collect_garbage();
                }
            }
        });

        let (destinations, policies) =
            (Arc::clone(&state.destinations), Arc::clone(&state.policies));
        let (resolver, enforcer) = (Arc::clone(&state.resolver), self.enforcer.clone());
        let refresh = self.config.destinations.refresh_interval;
        every(refresh, shutdown.clone(), true, move || {
            let (destinations, policies) = (Arc::clone(&destinations), Arc::clone(&policies));
            let (resolver, enforcer) = (Arc::clone(&resolver), enforcer.clone());
            async move {
                let Some(snapshot) = destinations.refresh().await else {
                    return;
                };
                if let Some(enforcer) = enforcer
                    && enforcer.set_destinations(snapshot, &policies.current())
                {
                    enforcer.apply_all(&resolver, &policies).await;
                }
            }
        });

        if self.config.policies.path.is_some() {
            let (policies, metrics) = (Arc::clone(&state.policies), Arc::clone(&state.metrics));
            let (resolver, enforcer) = (Arc::clone(&state.resolver), self.enforcer.clone());
            let reload_interval = self.config.policies.reload_interval;
            every(reload_interval, shutdown.clone(), false, move || {
                let (policies, metrics) = (Arc::clone(&policies), Arc::clone(&metrics));
                let (resolver, enforcer) = (Arc::clone(&resolver), enforcer.clone());
                async move {
                    if reload_policies(&policies, &metrics)
                        && let Some(enforcer) = enforcer
                    {
                        enforcer.apply_all(&resolver, &policies).await;
                    }
                }
            });
        }

        if self.config.resolver.prestart {
            let resolver = Arc::clone(&state.resolver);
            let (policies, enforcer) = (Arc::clone(&state.policies), self.enforcer.clone());
            let concurrency = self.config.resolver.prestart_concurrency;
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let work = async {
                    resolver.prestart(concurrency).await;
                    if let Some(enforcer) = enforcer {
                        enforcer.apply_all(&resolver, &policies).await;
                    }
                };
                tokio::select! {
                    _ = work => {}
                    _ = shutdown.changed() => {}
                }
            });
        }

        if let Some(reader) = self.hook_reader.take() {
            let (lost, dropped) = (Arc::clone(&state.metrics), Arc::clone(&state.metrics));
            // A missed exec or cgroup move must not let events vouch for an answer.
            let (missed, missed_too) = (Arc::clone(&state.resolver), Arc::clone(&state.resolver));
            tokio::spawn(reader.run(
                self.hook_events.clone(),
                move |n| {
                    missed.hook_events_missed();
                    lost.events_lost.inc_by(n);
                },
                move |n| {
                    missed_too.hook_events_missed();
                    dropped
                        .events_dropped
                        .get_or_create(&crate::metrics::DropLabels {
                            reason: "pipeline_full".to_owned(),
                        })
                        .inc_by(n);
                },
            ));
        }

        if let Some(enforcer) = self.enforcer.clone().filter(|e| e.enforcing()) {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let root = enforcer.cgroup_root().to_owned();
            let started = crate::enforcement::watch::watch_containers(
                root.clone(),
                enforcer,
                Arc::clone(&state.resolver),
                Arc::clone(&state.policies),
                Arc::clone(&stop),
            );
            match started {
                Ok(()) => {
                    let mut shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let _ = shutdown.changed().await;
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                Err(error) => tracing::warn!(
                    "cannot watch {} for new containers (they are judged once their processes \
                     run): {error}",
                    root.display()
                ),
            }
        }

        if let Some(receiver) = self.hook_receiver.take() {
            tokio::spawn(events::run_pipeline(
                receiver,
                Arc::clone(&state.resolver),
                Arc::clone(&state.policies),
                Arc::clone(&state.destinations),
                Arc::clone(&state.bus),
                Arc::clone(&state.metrics),
                self.enforcer.clone(),
            ));
        }
    }
}

/// Runs `task` every `period` (first right away when `now`) until `shutdown` turns true.
fn every<F, Fut>(period: Duration, mut shutdown: watch::Receiver<bool>, now: bool, task: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let period = period.max(Duration::from_millis(10));
        let start = if now {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + period
        };
        let mut ticker = tokio::time::interval_at(start, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => task().await,
                _ = shutdown.changed() => break,
            }
        }
    });
}

/// Reloads changed policy files; logs and counts the outcome. True when new policies are in
/// force.
fn reload_policies(policies: &PolicyStore, metrics: &Metrics) -> bool {
    match policies.reload_if_changed() {
        None => false,
        Some(Ok(count)) => {
            metrics.policy_reloads.inc();
            metrics.policies.set(count as i64);
            metrics.policy_reload_failing.set(0);
            tracing::info!(policies = count, "policies reloaded");
            for warning in policies.warnings() {
                tracing::warn!("{warning}");
            }
            true
        }
        Some(Err(errors)) => {
            metrics.policy_reload_failures.inc();
            metrics.policy_reload_failing.set(1);
            tracing::error!("policy reload failed; the previous policies stay in force:\n{errors}");
            false
        }
    }
}
