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
        let mut map = serializer.serialize_map(None)?;
        match &self.0 {
            // Serialized once per resolution, not once per event.
            Some(resolution) => {
                if let Some(id) = resolution.labels.get("process:exec-id").first() {
                    map.serialize_entry("exec_id", id)?;
                }
                let json = resolution.labels_json();
                map.serialize_entry("labels", &json.labels)?;
                map.serialize_entry("trust", &json.trust)?;
            }
            None => {
                map.serialize_entry("labels", &Labels(&LabelSet::new()))?;
                map.serialize_entry("trust", &TrustMap::new())?;
            }
        }
        map.end()
    }
}

/// What kind of event: the `kind` field and the SSE event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A connect (or a UDP send's first destination) the hook saw.
    Connect,
    /// A process started a new program.
    Exec,
    /// A process ended.
    Exit,
    /// Events a resuming subscriber missed.
    Gap,
}

impl EventKind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Exec => "exec",
            Self::Exit => "exit",
            Self::Gap => "gap",
        }
    }

    /// `connect`, `exec` or `exit`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "connect" => Some(Self::Connect),
            "exec" => Some(Self::Exec),
            "exit" => Some(Self::Exit),
            _ => None,
        }
    }
}

/// An exec or exit: the process and, when it could be resolved, its labels.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// The process.
    pub tgid: u32,
    /// Kernel monotonic time of the event, in nanoseconds since boot (exec only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_ns: Option<u64>,
    /// Its labels and their trust classes, as resolved after the exec (empty for an exit, or
    /// when it could not be resolved).
    #[serde(flatten)]
    pub resolution: ResolvedLabels,
    /// Why it could not be resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_error: Option<String>,
    /// The execution that ended (exit only; an exec's is in its resolution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

/// What an event says, serialized when a subscriber takes it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A connect.
    Connect(Arc<ConnectReport>),
    /// An exec or an exit.
    Process(Arc<ProcessReport>),
    /// Anything else (tests, gaps).
    Value(serde_json::Value),
}

/// One event on the bus, with what filters look at.
#[derive(Debug, Clone)]
pub struct BusEvent {
    /// Its kind.
    pub kind: EventKind,
    /// What it says.
    pub payload: Payload,
}

impl BusEvent {
    fn source_labels(&self) -> Option<&LabelSet> {
        match &self.payload {
            Payload::Connect(report) => report.resolution.0.as_ref().map(|r| &r.labels),
            Payload::Process(report) => report.resolution.0.as_ref().map(|r| &r.labels),
            Payload::Value(_) => None,
        }
    }

    /// The JSON line of this event with its id: `{"id": N, "kind": ..., ...}`.
    fn json(&self, id: u64) -> Arc<str> {
        #[derive(Serialize)]
        struct Envelope<'a, T: Serialize> {
            id: u64,
            kind: EventKind,
            #[serde(flatten)]
            body: &'a T,
        }
        let kind = self.kind;
        // Sized for the labels, which are most of it, so the text is not grown step by step.
        let labels = |resolution: &ResolvedLabels| {
            resolution.0.as_ref().map_or(0, |resolution| {
                let json = resolution.labels_json();
                json.labels.get().len() + json.trust.get().len()
            })
        };
        let mut text = Vec::with_capacity(
            512 + match &self.payload {
                Payload::Connect(report) => labels(&report.resolution),
                Payload::Process(report) => labels(&report.resolution),
                Payload::Value(_) => 0,
            },
        );
        let written = match &self.payload {
            Payload::Connect(report) => serde_json::to_writer(
                &mut text,
                &Envelope {
                    id,
                    kind,
                    body: report.as_ref(),
                },
            ),
            Payload::Process(report) => serde_json::to_writer(
                &mut text,
                &Envelope {
                    id,
                    kind,
                    body: report.as_ref(),
                },
            ),
            Payload::Value(value) => match value {
                serde_json::Value::Object(_) => serde_json::to_writer(
                    &mut text,
                    &Envelope {
                        id,
                        kind,
                        body: value,
                    },
                ),
                other => serde_json::to_writer(&mut text, other),
            },
        };
        if written.is_err() {
            return "".into();
        }
        // serde_json writes UTF-8.
        String::from_utf8(text).unwrap_or_default().into()
    }
}

/// Which events a subscriber wants (`/events?kind=...&verdict=...&policy=...&selector=...
/// &destination_selector=...`); everything by default.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    /// Only these kinds.
    pub kinds: Option<Vec<EventKind>>,
    /// Only connects with one of these verdicts.
    pub verdicts: Option<Vec<Action>>,
    /// Only connects this policy matched or decided.
    pub policy: Option<String>,
    /// Only events whose process's labels match.
    pub source: Option<selectors::Selector>,
    /// Only connects whose destination's labels match.
    pub destination: Option<selectors::Selector>,
}

impl EventFilter {
    /// Whether `event` passes. Gaps always do.
    pub fn matches(&self, event: &BusEvent) -> bool {
        if event.kind == EventKind::Gap {
            return true;
        }
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&event.kind)
        {
            return false;
        }
        let connect = match &event.payload {
            Payload::Connect(report) => Some(report),
            _ => None,
        };
        if let Some(verdicts) = &self.verdicts
            && !connect.is_some_and(|c| verdicts.contains(&c.verdict))
        {
            return false;
        }
        if let Some(policy) = &self.policy {
            let named = connect.is_some_and(|c| {
                c.policies.iter().any(|m| &*m.name == policy.as_str())
                    || c.decided_by.as_deref() == Some(policy.as_str())
            });
            if !named {
                return false;
            }
        }
        if let Some(selector) = &self.source
            && !event
                .source_labels()
                .is_some_and(|labels| selector.matches(labels))
        {
            return false;
        }
        if let Some(selector) = &self.destination
            && !connect
                .and_then(|c| c.destination.as_ref())
                .is_some_and(|d| selector.matches(&d.labels))
        {
            return false;
        }
        true
    }
}

/// An event as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Its id (for a gap, the last id missed).
    pub id: u64,
    /// Its kind.
    pub kind: EventKind,
    /// Its JSON.
    pub json: Arc<str>,
}

/// Fans events out to subscribers without ever waiting for one, and keeps the newest
/// `history` of them so a subscriber that reconnects can resume where it left off.
pub struct EventBus {
    inner: Mutex<Inner>,
    buffer: usize,
    /// Bytes of events one subscriber may have waiting.
    buffer_bytes: usize,
    /// Subscribers at most.
    max_subscribers: usize,
    /// Events kept for resuming subscribers.
    history_size: usize,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

struct Inner {
    subscribers: Vec<Subscriber>,
    history: std::collections::VecDeque<(u64, BusEvent)>,
    /// The id of the last event published (ids start at 1).
    last_id: u64,
}

/// The bus's end of one subscription.
struct Subscriber {
    sender: mpsc::Sender<Delivered>,
    /// Bytes of the events queued for it and not yet taken.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    filter: EventFilter,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The agent is shutting down.
    Closed,
    /// `events.maxSubscribers` are subscribed already.
    Full(usize),
}

/// One subscriber's end: yields the events it resumed from first, then live ones, until the
/// subscriber is dropped for falling behind or the agent shuts down.
pub struct Subscription {
    backlog: std::collections::VecDeque<Delivered>,
    receiver: mpsc::Receiver<Delivered>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    bus: Weak<EventBus>,
}

impl Subscription {
    /// The next event, or `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<Delivered> {
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        let event = self.receiver.recv().await?;
        self.queued.fetch_sub(event.json.len(), Ordering::AcqRel);
        Some(event)
    }

    /// The next event if one is queued now, without waiting.
    pub fn try_next(&mut self) -> Option<Delivered> {
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        let event = self.receiver.try_recv().ok()?;
        self.queued.fetch_sub(event.json.len(), Ordering::AcqRel);
        Some(event)
    }
}

impl Delivered {
    /// Appends the event as a server-sent event: `id`, `event` (its kind) and `data` (its
    /// JSON, one line: JSON text has its line breaks escaped) fields.
    pub fn write_sse(&self, out: &mut bytes::BytesMut) {
        use std::fmt::Write;
        let _ = write!(out, "id: {}\nevent: {}\n", self.id, self.kind.as_str());
        let json = &*self.json;
        out.reserve(json.len() + 8);
        // (`contains` of one char is a memchr; a split on a set of chars goes char by char.)
        if json.contains('\n') || json.contains('\r') {
            for line in json.split(['\n', '\r']) {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\n");
            }
        } else {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(json.as_bytes());
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(b"\n");
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

/// Events kept for resuming subscribers unless configured.
pub const DEFAULT_HISTORY: usize = 4096;

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
            inner: Mutex::new(Inner {
                subscribers: Vec::new(),
                history: std::collections::VecDeque::new(),
                last_id: 0,
            }),
            buffer: buffer.max(1),
            buffer_bytes: buffer_bytes.max(1),
            max_subscribers: max_subscribers.max(1),
            history_size: DEFAULT_HISTORY,
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// Keeps the newest `size` events for resuming subscribers (0: none).
    pub fn with_history(mut self, size: usize) -> Self {
        self.history_size = size;
        self
    }

    /// A new subscription to every event.
    pub fn subscribe(self: &Arc<Self>) -> Result<Subscription, SubscribeError> {
        self.subscribe_filtered(EventFilter::default(), None)
    }

    /// A new subscription to the events `filter` passes; with `after`, first the kept events
    /// after that id (and a gap event counting those no longer kept). Refused once the bus is
    /// closed or full.
    pub fn subscribe_filtered(
        self: &Arc<Self>,
        filter: EventFilter,
        after: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::Closed);
        }
        let mut inner = self.lock();
        inner
            .subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        if inner.subscribers.len() >= self.max_subscribers {
            return Err(SubscribeError::Full(self.max_subscribers));
        }
        let mut backlog = std::collections::VecDeque::new();
        if let Some(after) = after {
            // Under the lock that publishing takes: nothing is missed or sent twice between the
            // history and the live stream.
            let oldest_kept = inner
                .history
                .front()
                .map_or(inner.last_id + 1, |(id, _)| *id);
            if after + 1 < oldest_kept && after < inner.last_id {
                let missed = oldest_kept - after - 1;
                let gap = BusEvent {
                    kind: EventKind::Gap,
                    payload: Payload::Value(serde_json::json!({
                        "missed": missed,
                        "from": after + 1,
                        "to": oldest_kept - 1,
                    })),
                };
                backlog.push_back(Delivered {
                    id: oldest_kept - 1,
                    kind: EventKind::Gap,
                    json: gap.json(oldest_kept - 1),
                });
            }
            for (id, event) in inner.history.iter().filter(|(id, _)| *id > after) {
                if filter.matches(event) {
                    backlog.push_back(Delivered {
                        id: *id,
                        kind: event.kind,
                        json: event.json(*id),
                    });
                }
            }
        }
        let (sender, receiver) = mpsc::channel(self.buffer);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        inner.subscribers.push(Subscriber {
            sender,
            queued: Arc::clone(&queued),
            filter,
        });
        self.metrics.subscribers.set(inner.subscribers.len() as i64);
        Ok(Subscription {
            backlog,
            receiver,
            queued,
            bus: Arc::downgrade(self),
        })
    }

    /// Forgets subscribers that went away.
    fn prune(&self) {
        let mut inner = self.lock();
        inner
            .subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        self.metrics.subscribers.set(inner.subscribers.len() as i64);
    }

    /// Numbers `event`, keeps it for resuming subscribers, and sends it to every subscriber
    /// whose filter passes it; one that is full is disconnected. Returns its id.
    pub fn publish(&self, event: BusEvent) -> u64 {
        let mut inner = self.lock();
        inner.last_id += 1;
        let id = inner.last_id;
        let mut json: Option<Arc<str>> = None;
        let budget = self.buffer_bytes;
        let metrics = &self.metrics;
        let buffer = self.buffer;
        inner.subscribers.retain(|subscriber| {
            if !subscriber.filter.matches(&event) {
                return !subscriber.sender.is_closed();
            }
            let json = json.get_or_insert_with(|| event.json(id));
            let queued = subscriber.queued.load(Ordering::Acquire);
            let delivered = Delivered {
                id,
                kind: event.kind,
                json: Arc::clone(json),
            };
            let over_budget = queued.saturating_add(json.len()) > budget;
            let sent = if over_budget {
                Err(mpsc::error::TrySendError::Full(delivered))
            } else {
                subscriber.sender.try_send(delivered)
            };
            if sent.is_ok() {
                subscriber.queued.fetch_add(json.len(), Ordering::AcqRel);
            }
            match sent {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropping the sender ends the subscriber's stream once it catches up with the
                    // events already queued.
                    metrics.subscribers_dropped.inc();
                    metrics
                        .events_dropped
                        .get_or_create(&DropLabels {
                            reason: "slow_subscriber".to_owned(),
                        })
                        .inc();
                    tracing::warn!(
                        buffer,
                        "an /events subscriber fell behind and was disconnected"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.metrics.subscribers.set(inner.subscribers.len() as i64);
        if self.history_size > 0 {
            if inner.history.len() >= self.history_size {
                inner.history.pop_front();
            }
            inner.history.push_back((id, event));
        }
        id
    }

    /// The id of the last event published (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// Ends every subscription (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lock().subscribers.clear();
        self.metrics.subscribers.set(0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
                // A process whose kept answer earlier events vouch for: reported here, with no
                // task and no procfs read (most connects).
                if let Some(resolution) = resolver.vouched(connect.tgid, seen(&connect)) {
                    let mut report = judge_connect(
                        connect,
                        Some(resolution),
                        None,
                        &policies,
                        &destinations.current(),
                    );
                    if let Some(enforcer) = &enforcer {
                        report.decided_by = report
                            .event
                            .policy
                            .and_then(|id| enforcer.policy_name(report.event.ruleset, id));
                    }
                    let pending = report.event.decision == kernel_hook::Decision::Pending;
                    let tgid = report.event.tgid;
                    bus.publish(BusEvent {
                        kind: EventKind::Connect,
                        payload: Payload::Connect(Arc::new(report)),
                    });
                    if let Some(enforcer) = enforcer.clone().filter(|_| pending) {
                        let (resolver, policies) = (Arc::clone(&resolver), Arc::clone(&policies));
                        tokio::spawn(async move {
                            enforce(&enforcer, &resolver, &policies, tgid).await;
                        });
                    }
                    continue;
                }
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
                    let report = Arc::new(report);
                    bus.publish(BusEvent {
                        kind: EventKind::Connect,
                        payload: Payload::Connect(Arc::clone(&report)),
                    });
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
            HookEvent::Fork {
                tgid,
                start,
                ppid,
                parent_start,
            } => {
                metrics.events_received.inc();
                if let Some(lineage) = resolver.lineage() {
                    lineage.forked(tgid, start, ppid, parent_start);
                }
            }
            HookEvent::Exec {
                tgid,
                start,
                timestamp_ns,
                comm,
                ..
            } => {
                metrics.events_received.inc();
                if let Some(lineage) = resolver.lineage() {
                    lineage.execed(tgid, start, &comm);
                }
                // A lookup may have collected the new image already: keep what is newer.
                resolver.forget_collected_before(tgid, start, timestamp_ns);
                let resolver = Arc::clone(&resolver);
                let policies = Arc::clone(&policies);
                let enforcer = enforcer.clone();
                let bus = Arc::clone(&bus);
                // Resolve ahead of the first connect (and judge the new image); a process gone
                // already is not an error. The event carries the answer judged: resolved once.
                tokio::spawn(async move {
                    let judged = match &enforcer {
                        Some(enforcer) => enforce(enforcer, &resolver, &policies, tgid).await,
                        None => None,
                    };
                    let resolved = match judged {
                        Some(resolution) => Ok(resolution),
                        None => resolver.resolve(tgid).await,
                    };
                    let (resolution, resolution_error) = match resolved {
                        Ok(resolution) => (Some(resolution), None),
                        Err(error) => (None, Some(error.to_string())),
                    };
                    bus.publish(BusEvent {
                        kind: EventKind::Exec,
                        payload: Payload::Process(Arc::new(ProcessReport {
                            tgid,
                            timestamp_ns: Some(timestamp_ns),
                            resolution: ResolvedLabels(resolution),
                            resolution_error,
                            exec_id: None,
                        })),
                    });
                });
            }
            HookEvent::CgroupMove { tgid } => {
                metrics.events_received.inc();
                // Its container and cgroup labels may be others now: collected again at its
                // next connect or lookup.
                resolver.forget(tgid);
            }
            HookEvent::Exit { tgid, start } => {
                metrics.events_received.inc();
                if let Some(lineage) = resolver.lineage() {
                    lineage.exited(tgid, start);
                }
                let exec_id = resolver.forget_ended(tgid, start);
                bus.publish(BusEvent {
                    kind: EventKind::Exit,
                    payload: Payload::Process(Arc::new(ProcessReport {
                        tgid,
                        timestamp_ns: None,
                        resolution: ResolvedLabels(None),
                        resolution_error: None,
                        exec_id: exec_id.map(|id| id.to_string()),
                    })),
                });
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
    let (resolution, resolution_error) = match resolver.resolve_seen(event.tgid, seen(&event)).await
    {
        Ok(resolution) => (Some(resolution), None),
        Err(error) => (None, Some(error.to_string())),
    };
    judge_connect(event, resolution, resolution_error, policies, destinations)
}

/// What a connect event says of its process (see [`crate::resolver::Seen`]).
fn seen(event: &ConnectEvent) -> crate::resolver::Seen {
    crate::resolver::Seen {
        euid: event.euid,
        egid: event.egid,
        cgroup_id: event.cgroup_id,
    }
}

/// The report of a connect whose process was resolved (or not): its policies and destination.
fn judge_connect(
    event: ConnectEvent,
    resolution: Option<Arc<Resolution>>,
    resolution_error: Option<String>,
    policies: &PolicyStore,
    destinations: &Snapshot,
) -> ConnectReport {
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

    fn value(n: i64) -> BusEvent {
        BusEvent {
            kind: EventKind::Connect,
            payload: Payload::Value(serde_json::json!(n)),
        }
    }

    fn tagged(kind: EventKind, n: i64) -> BusEvent {
        BusEvent {
            kind,
            payload: Payload::Value(serde_json::json!({ "n": n })),
        }
    }

    #[tokio::test]
    async fn a_resuming_subscriber_gets_exactly_what_it_missed_or_a_gap() {
        let metrics = Arc::new(Metrics::new());
        let bus = Arc::new(EventBus::new(100, Arc::clone(&metrics)).with_history(5));
        let mut first = bus.subscribe().unwrap();
        for n in 1..=3 {
            bus.publish(tagged(EventKind::Connect, n));
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(first.next().await.unwrap().id);
        }
        assert_eq!(seen, [1, 2, 3]);
        drop(first);
        // Missed while away: 4 and 5.
        bus.publish(tagged(EventKind::Connect, 4));
        bus.publish(tagged(EventKind::Exec, 5));
        let mut back = bus
            .subscribe_filtered(EventFilter::default(), Some(3))
            .unwrap();
        let a = back.next().await.unwrap();
        let b = back.next().await.unwrap();
        assert_eq!(
            (a.id, a.kind, b.id, b.kind),
            (4, EventKind::Connect, 5, EventKind::Exec)
        );
        assert!(a.json.contains("\"id\":4"), "{}", a.json);
        // Then live ones, none twice.
        bus.publish(tagged(EventKind::Connect, 6));
        assert_eq!(back.next().await.unwrap().id, 6);

        // Away too long: 7..=13 published, only the newest 5 (9..=13) kept.
        drop(back);
        for n in 7..=13 {
            bus.publish(tagged(EventKind::Connect, n));
        }
        let mut late = bus
            .subscribe_filtered(EventFilter::default(), Some(6))
            .unwrap();
        let gap = late.next().await.unwrap();
        assert_eq!(gap.kind, EventKind::Gap);
        let body: serde_json::Value = serde_json::from_str(&gap.json).unwrap();
        assert_eq!(
            (
                body["missed"].as_u64(),
                body["from"].as_u64(),
                body["to"].as_u64()
            ),
            (Some(2), Some(7), Some(8))
        );
        let ids: Vec<u64> = [(); 5].iter().map(|_| 0).collect();
        assert_eq!(ids.len(), 5);
        let mut rest = Vec::new();
        for _ in 0..5 {
            rest.push(late.next().await.unwrap().id);
        }
        assert_eq!(rest, [9, 10, 11, 12, 13]);

        // A filter applies to the backlog and the live stream alike.
        let only_exec = EventFilter {
            kinds: Some(vec![EventKind::Exec]),
            ..EventFilter::default()
        };
        let mut execs = bus.subscribe_filtered(only_exec, Some(8)).unwrap();
        bus.publish(tagged(EventKind::Exec, 14));
        bus.publish(tagged(EventKind::Connect, 15));
        bus.publish(tagged(EventKind::Exec, 16));
        assert_eq!(execs.next().await.unwrap().id, 14);
        assert_eq!(execs.next().await.unwrap().id, 16);
    }

    #[tokio::test]
    async fn a_full_subscriber_is_dropped_and_the_others_keep_everything() {
        let metrics = Arc::new(Metrics::new());
        let bus = Arc::new(EventBus::new(4, Arc::clone(&metrics)));
        let mut slow = bus.subscribe().unwrap();
        let mut fast = bus.subscribe().unwrap();
        let mut received = Vec::new();
        for n in 0..10 {
            bus.publish(value(n));
            received.push(fast.next().await.unwrap().json.to_string());
        }
        assert_eq!(received, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
        // The slow one got the first four, then was disconnected.
        let mut slow_got = Vec::new();
        while let Some(event) = slow.next().await {
            slow_got.push(event.json.to_string());
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
            bus.publish(value(n));
        }
        assert_eq!(small.next().await.unwrap().json.as_ref(), "1000");
        assert_eq!(small.next().await.unwrap().json.as_ref(), "1001");
        assert!(small.next().await.is_none());
        assert_eq!(metrics.subscribers_dropped.get(), 2);
        // Room again for a new one.
        drop(small);
        assert!(bus.subscribe().is_ok());
    }
}
