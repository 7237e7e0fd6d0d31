//! The event pipeline: hook events resolved to labels, matched against the policies, and fanned
//! out to `/events` subscribers.
//!
//! Each subscriber has a bounded queue. Publishing never waits: a subscriber whose queue is full
//! has fallen behind, so it is disconnected and counted (`events_dropped_total{reason=
//! "slow_subscriber"}`, `event_subscribers_dropped_total`) instead of slowing the agent or the
//! other subscribers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use kernel_hook::{ConnectEvent, HookEvent};
use labels::{LabelSet, TrustMap};
use selectors::{Action, PolicyMatch, PolicyStore, Target};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::destinations::{Destinations, Snapshot};
use crate::enforcement::{SharedEnforcer, enforce};
use crate::metrics::{DropLabels, Metrics};
use crate::resolver::{Resolution, Resolver};

/// Hook events queued for resolution before the hook side starts dropping them.
pub const PIPELINE_QUEUE: usize = 65_536;

/// Connect events resolved at once.
const RESOLUTION_CONCURRENCY: usize = 64;

/// What `/events` sends for each connect: the event, who made it, and what the policies say.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// The kernel's event.
    pub event: ConnectEvent,
    /// The process's `labels` and their `trust` classes (empty when it could not be resolved):
    /// those of its resolution, shared with the resolver's kept answer.
    #[serde(flatten)]
    pub resolution: ResolvedLabels,
    /// Why the process could not be resolved (it may have exited already).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_error: Option<String>,
    /// Policies matching the process and this destination, in precedence order.
    pub policies: Vec<PolicyMatch>,
    /// The policies' verdict for this connect.
    pub verdict: Action,
    /// Whether no policy matched and the default decided.
    pub default_applied: bool,
    /// Who is at the destination, when the node knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<DestinationReport>,
    /// The policy whose rule decided in the kernel (enforce mode), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<Arc<str>>,
}

/// Who is at a connect's destination.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationReport {
    /// What it is (`process 42 listening on tcp/0.0.0.0:5432`, `docker workload at ...`).
    pub what: String,
    /// Its labels.
    #[serde(serialize_with = "labels::serialize_map")]
    pub labels: LabelSet,
    /// Their trust classes.
    pub trust: TrustMap,
}

/// A resolution's labels and trust map, written as the `labels` and `trust` fields of an event.
#[derive(Debug, Clone)]
pub struct ResolvedLabels(pub Option<Arc<Resolution>>);

impl Serialize for ResolvedLabels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Labels<'a>(&'a LabelSet);
        impl Serialize for Labels<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                labels::serialize_map(self.0, s)
            }
        }
        let (no_labels, no_trust) = (LabelSet::new(), TrustMap::new());
        let (labels, trust) = match &self.0 {
            Some(resolution) => (&resolution.labels, &resolution.trust),
            None => (&no_labels, &no_trust),
        };
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("labels", &Labels(labels))?;
        map.serialize_entry("trust", trust)?;
        map.end()
    }
}

/// Fans serialized events out to subscribers without ever waiting for one.
pub struct EventBus {
    subscribers: Mutex<Vec<Subscriber>>,
    buffer: usize,
    /// Bytes of events one subscriber may have waiting.
    buffer_bytes: usize,
    /// Subscribers at most.
    max_subscribers: usize,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The bus's end of one subscription.
struct Subscriber {
    sender: mpsc::Sender<Arc<str>>,
    /// Bytes of the events queued for it and not yet taken.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The agent is shutting down.
    Closed,
    /// `events.maxSubscribers` are subscribed already.
    Full(usize),
}

/// One subscriber's end: yields events until the subscriber is dropped for falling behind or
/// the agent shuts down.
pub struct Subscription {
    receiver: mpsc::Receiver<Arc<str>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    bus: Weak<EventBus>,
}

impl Subscription {
    /// The next event (JSON), or `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<Arc<str>> {
        let event = self.receiver.recv().await?;
        self.queued.fetch_sub(event.len(), Ordering::AcqRel);
        Some(event)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Closing first lets the bus see this subscriber as gone right away.
        self.receiver.close();
        if let Some(bus) = self.bus.upgrade() {
            bus.prune();
        }
    }
}

impl EventBus {
    /// A bus whose subscribers may fall `buffer` events behind.
    pub fn new(buffer: usize, metrics: Arc<Metrics>) -> Self {
        Self::with_limits(buffer, usize::MAX, usize::MAX, metrics)
    }

    /// A bus whose subscribers may fall `buffer` events or `buffer_bytes` bytes behind, and
    /// which takes at most `max_subscribers`.
    pub fn with_limits(
        buffer: usize,
        buffer_bytes: usize,
        max_subscribers: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            subscribers: Mutex::new(Vec::new()),
            buffer: buffer.max(1),
            buffer_bytes: buffer_bytes.max(1),
            max_subscribers: max_subscribers.max(1),
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// A new subscription; refused once the bus is closed or full.
    pub fn subscribe(self: &Arc<Self>) -> Result<Subscription, SubscribeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::Closed);
        }
        let mut subscribers = self.lock();
        subscribers.retain(|subscriber| !subscriber.sender.is_closed());
        if subscribers.len() >= self.max_subscribers {
            return Err(SubscribeError::Full(self.max_subscribers));
        }
        let (sender, receiver) = mpsc::channel(self.buffer);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        subscribers.push(Subscriber {
            sender,
            queued: Arc::clone(&queued),
        });
        self.metrics.subscribers.set(subscribers.len() as i64);
        Ok(Subscription {
            receiver,
            queued,
            bus: Arc::downgrade(self),
        })
    }

    /// Forgets subscribers that went away.
    fn prune(&self) {
        let mut subscribers = self.lock();
        subscribers.retain(|subscriber| !subscriber.sender.is_closed());
        self.metrics.subscribers.set(subscribers.len() as i64);
    }

    /// Sends `event` to every subscriber; one that is full is disconnected.
    pub fn publish(&self, event: &impl Serialize) {
        let mut subscribers = self.lock();
        if subscribers.is_empty() {
            return;
        }
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        let json: Arc<str> = json.into();
        let budget = self.buffer_bytes;
        subscribers.retain(|subscriber| {
            let queued = subscriber.queued.load(Ordering::Acquire);
            let over_budget = queued.saturating_add(json.len()) > budget;
            let sent = if over_budget {
                Err(mpsc::error::TrySendError::Full(Arc::clone(&json)))
            } else {
                subscriber.sender.try_send(Arc::clone(&json))
            };
            if sent.is_ok() {
                subscriber.queued.fetch_add(json.len(), Ordering::AcqRel);
            }
            match sent {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropping the sender ends the subscriber's stream once it catches up with the
                    // events already queued.
                    self.metrics.subscribers_dropped.inc();
                    self.metrics
                        .events_dropped
                        .get_or_create(&DropLabels {
                            reason: "slow_subscriber".to_owned(),
                        })
                        .inc();
                    tracing::warn!(
                        buffer = self.buffer,
                        "an /events subscriber fell behind and was disconnected"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.metrics.subscribers.set(subscribers.len() as i64);
    }

    /// Ends every subscription (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lock().clear();
        self.metrics.subscribers.set(0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Consumes hook events until `events` closes: connects are resolved, matched and published;
/// execs and exits update the caches.
pub async fn run_pipeline(
    mut events: mpsc::Receiver<HookEvent>,
    resolver: Arc<Resolver>,
    policies: Arc<PolicyStore>,
    destinations: Arc<Destinations>,
    bus: Arc<EventBus>,
    metrics: Arc<Metrics>,
    enforcer: SharedEnforcer,
) {
    let permits = Arc::new(Semaphore::new(RESOLUTION_CONCURRENCY));
    while let Some(event) = events.recv().await {
        match event {
            HookEvent::Connect(connect) => {
                metrics.events_received.inc();
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let resolver = Arc::clone(&resolver);
                let policies = Arc::clone(&policies);
                let bus = Arc::clone(&bus);
                let enforcer = enforcer.clone();
                let destinations = destinations.current();
                tokio::spawn(async move {
                    let mut report =
                        report_connect(connect, &resolver, &policies, &destinations).await;
                    if let Some(enforcer) = &enforcer {
                        report.decided_by = report
                            .event
                            .policy
                            .and_then(|id| enforcer.policy_name(report.event.ruleset, id));
                    }
                    bus.publish(&report);
                    // A process met first at a connect (older than the hook, or not judged yet).
                    if let Some(enforcer) = &enforcer
                        && report.resolution_error.is_none()
                        && report.event.decision == kernel_hook::Decision::Pending
                    {
                        enforce(enforcer, &resolver, &policies, report.event.tgid).await;
                    }
                    drop(permit);
                });
            }
            HookEvent::Exec {
                tgid, timestamp_ns, ..
            } => {
                metrics.events_received.inc();
                // A lookup may have collected the new image already: keep what is newer.
                resolver.forget_collected_before(tgid, timestamp_ns);
                let resolver = Arc::clone(&resolver);
                let policies = Arc::clone(&policies);
                let enforcer = enforcer.clone();
                // Resolve ahead of the first connect (and judge the new image); a process gone
                // already is not an error.
                tokio::spawn(async move {
                    match &enforcer {
                        Some(enforcer) => enforce(enforcer, &resolver, &policies, tgid).await,
                        None => {
                            let _ = resolver.resolve(tgid).await;
                        }
                    }
                });
            }
            HookEvent::Exit { tgid } => {
                metrics.events_received.inc();
                resolver.forget(tgid);
            }
        }
    }
}

/// Resolves and evaluates one connect.
pub async fn report_connect(
    event: ConnectEvent,
    resolver: &Resolver,
    policies: &PolicyStore,
    destinations: &Snapshot,
) -> ConnectReport {
    let (resolution, resolution_error) = match resolver.resolve(event.tgid).await {
        Ok(resolution) => (Some(resolution), None),
        Err(error) => (None, Some(error.to_string())),
    };
    let protocol = match event.protocol {
        kernel_hook::Protocol::Tcp => selectors::Protocol::Tcp,
        kernel_hook::Protocol::Udp => selectors::Protocol::Udp,
    };
    let known = destinations.lookup(event.destination, event.port, protocol);
    let target = Target {
        address: event.destination,
        port: event.port,
        protocol,
        identity: known.map(|known| (known.labels.clone(), known.trust.clone())),
    };
    let set = policies.current();
    let evaluation = match &resolution {
        Some(resolution) => set.evaluate_to(&resolution.labels, Some(&resolution.trust), &target),
        None => set.evaluate_to(&LabelSet::new(), None, &target),
    };
    ConnectReport {
        event,
        resolution: ResolvedLabels(resolution),
        resolution_error,
        policies: evaluation.matches,
        verdict: evaluation.verdict,
        default_applied: evaluation.default_applied,
        destination: known.map(|known| DestinationReport {
            what: known.what.clone(),
            labels: known.labels.clone(),
            trust: known.trust.clone(),
        }),
        decided_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_subscriber_is_dropped_and_the_others_keep_everything() {
        let metrics = Arc::new(Metrics::new());
        let bus = Arc::new(EventBus::new(4, Arc::clone(&metrics)));
        let mut slow = bus.subscribe().unwrap();
        let mut fast = bus.subscribe().unwrap();
        let mut received = Vec::new();
        for n in 0..10 {
            bus.publish(&n);
            received.push(fast.next().await.unwrap().to_string());
        }
        assert_eq!(received, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
        // The slow one got the first four, then was disconnected.
        let mut slow_got = Vec::new();
        while let Some(event) = slow.next().await {
            slow_got.push(event.to_string());
        }
        assert_eq!(slow_got, ["0", "1", "2", "3"]);
        assert_eq!(metrics.subscribers_dropped.get(), 1);
        assert_eq!(metrics.subscribers.get(), 1);
        drop(slow);
        assert_eq!(metrics.subscribers.get(), 1);
        let extra = bus.subscribe().unwrap();
        assert_eq!(metrics.subscribers.get(), 2);
        drop(extra);
        assert_eq!(metrics.subscribers.get(), 1);
        bus.close();
        assert!(fast.next().await.is_none());
        assert!(matches!(bus.subscribe(), Err(SubscribeError::Closed)));
    }

    #[tokio::test]
    async fn subscribers_are_capped_in_number_and_in_bytes_behind() {
        let metrics = Arc::new(Metrics::new());
        let bus = Arc::new(EventBus::with_limits(1000, 10, 2, Arc::clone(&metrics)));
        let mut small = bus.subscribe().unwrap();
        let _other = bus.subscribe().unwrap();
        assert!(matches!(bus.subscribe(), Err(SubscribeError::Full(2))));
        // Two 4-byte events fit in 10 bytes; a third would not: dropped, though the queue has
        // room for 1000 events.
        for n in 1000..1003 {
            bus.publish(&n);
        }
        assert_eq!(small.next().await.unwrap().as_ref(), "1000");
        assert_eq!(small.next().await.unwrap().as_ref(), "1001");
        assert!(small.next().await.is_none());
        assert_eq!(metrics.subscribers_dropped.get(), 2);
        // Room again for a new one.
        drop(small);
        assert!(bus.subscribe().is_ok());
    }
}
