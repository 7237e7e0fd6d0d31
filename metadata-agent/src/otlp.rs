//! OTLP export of the events (`events.otlp`): connect, exec and exit events as OpenTelemetry log
//! records, sent as OTLP/HTTP protobuf (`POST <endpoint>/v1/logs`) to a collector.
//!
//! Attributes follow the OpenTelemetry semantic conventions where one exists
//! (`process.pid`, `process.executable.path`, `container.id`, `k8s.pod.name`, `cloud.region`,
//! `destination.address`, ...), and every namespaced label is there too under its own key
//! (`process:uid`, `k8s:label:app`, ...). Events are batched (`batchSize`, `batchTimeout`) in a
//! bounded queue (`queueSize`): a collector that is down or slow costs the oldest queued events,
//! counted in `metadata_agent_otlp_dropped_total`, never memory or the agent's time. A failed
//! send is retried with backoff (connection errors, 429, 5xx); other refusals drop the batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::events::{EventBus, EventFilter};
use crate::metrics::Metrics;

/// `events.otlp`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); logs go to `/v1/logs`.
    pub endpoint: String,
    /// Records per request at most (default 512).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// How long a partial batch waits (default 1s).
    #[serde(
        default = "default_batch_timeout",
        with = "collectors::config::duration"
    )]
    pub batch_timeout: Duration,
    /// Events queued at most while the collector is slow or down (default 8192); beyond, the
    /// oldest are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    /// Deadline of one request (default 5s).
    #[serde(default = "default_timeout", with = "collectors::config::duration")]
    pub timeout: Duration,
    /// Headers sent with every request (e.g. an API key).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn default_batch() -> usize {
    512
}
fn default_batch_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_queue() -> usize {
    8192
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl OtlpConfig {
    /// Checks the settings at start, naming the one that is wrong.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| format!("events.otlp.endpoint {:?}: {e}", self.endpoint))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "events.otlp.endpoint {:?}: http or https (OTLP/HTTP; gRPC is not supported)",
                self.endpoint
            ));
        }
        if self.batch_size == 0 || self.queue_size < self.batch_size {
            return Err(
                "events.otlp: batchSize must be at least 1 and queueSize at least batchSize"
                    .to_owned(),
            );
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(format!(
                    "events.otlp.headers: {name:?} is not a valid header"
                ));
            }
        }
        Ok(())
    }
}

fn string(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn attribute(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value,
        ..Default::default()
    }
}

fn int(value: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::IntValue(value)),
    })
}

/// Label key → the semantic-convention attribute it also is.
const CONVENTIONS: &[(&str, &str)] = &[
    ("process:binary:path", "process.executable.path"),
    ("process:name", "process.executable.name"),
    ("process:cmdline", "process.command_line"),
    ("process:user:name", "process.owner"),
    ("process:ppid", "process.parent_pid"),
    ("process:container:id", "container.id"),
    ("docker:container:name", "container.name"),
    ("docker:image:name", "container.image.name"),
    ("k8s:pod:name", "k8s.pod.name"),
    ("k8s:pod:uid", "k8s.pod.uid"),
    ("k8s:pod:namespace", "k8s.namespace.name"),
    ("k8s:container:name", "k8s.container.name"),
    ("k8s:node:name", "k8s.node.name"),
    ("ec2:instance:id", "host.id"),
    ("ec2:placement:region", "cloud.region"),
    ("ec2:placement:availability-zone", "cloud.availability_zone"),
    ("azure:vm:id", "host.id"),
    ("azure:location", "cloud.region"),
    ("gcp:id", "host.id"),
    ("gcp:placement:region", "cloud.region"),
    ("gcp:placement:zone", "cloud.availability_zone"),
];

/// One event (its JSON, as `/events` sends it) as a log record.
pub fn log_record(event: &Value, now: SystemTime) -> LogRecord {
    let kind = event["kind"].as_str().unwrap_or("event");
    let mut attributes = vec![
        attribute("event.name", string(format!("metadata_agent.{kind}"))),
        attribute(
            "metadata_agent.event.id",
            int(event["id"].as_i64().unwrap_or(0)),
        ),
    ];
    let pid = event["event"]["tgid"]
        .as_i64()
        .or_else(|| event["tgid"].as_i64());
    if let Some(pid) = pid {
        attributes.push(attribute("process.pid", int(pid)));
    }
    let labels = event["labels"].as_object();
    for (label, convention) in CONVENTIONS {
        if let Some(value) = labels
            .and_then(|l| l.get(*label))
            .and_then(|v| v[0].as_str())
        {
            let value = if *label == "process:ppid" {
                int(value.parse().unwrap_or(0))
            } else {
                string(value)
            };
            attributes.push(attribute(convention, value));
        }
    }
    if let Some(provider) = labels.and_then(|labels| {
        ["ec2", "azure", "gcp"]
            .into_iter()
            .find(|cloud| labels.keys().any(|k| k.starts_with(&format!("{cloud}:"))))
    }) {
        let name = match provider {
            "ec2" => "aws",
            other => other,
        };
        attributes.push(attribute("cloud.provider", string(name)));
    }
    let mut severity = (9, "INFO"); // INFO
    let body = match kind {
        "connect" => {
            let connect = &event["event"];
            let destination = connect["destination"].as_str().unwrap_or("");
            let port = connect["port"].as_i64().unwrap_or(0);
            let transport = connect["protocol"].as_str().unwrap_or("");
            let verdict = event["verdict"].as_str().unwrap_or("");
            attributes.push(attribute("destination.address", string(destination)));
            attributes.push(attribute("destination.port", int(port)));
            attributes.push(attribute("network.transport", string(transport)));
            attributes.push(attribute("metadata_agent.verdict", string(verdict)));
            attributes.push(attribute(
                "metadata_agent.allowed",
                Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(
                        connect["allowed"].as_bool().unwrap_or(true),
                    )),
                }),
            ));
            if let Some(policy) = event["decided_by"].as_str() {
                attributes.push(attribute("metadata_agent.policy", string(policy)));
            }
            if verdict == "deny" || connect["allowed"] == false {
                severity = (13, "WARN");
            }
            format!("connect to {destination}:{port}/{transport}: {verdict}")
        }
        "gap" => {
            severity = (13, "WARN");
            format!("{} events were lost before export", event["missed"])
        }
        other => format!("{other} of process {}", pid.unwrap_or(0)),
    };
    // Every label under its own namespaced key (values joined when there are several).
    for (key, values) in labels.into_iter().flatten() {
        let values: Vec<&str> = values
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !values.is_empty() {
            attributes.push(attribute(key, string(values.join("\n"))));
        }
    }
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number: severity.0,
        severity_text: severity.1.to_owned(),
        body: string(body),
        attributes,
        event_name: format!("metadata_agent.{kind}"),
        ..Default::default()
    }
}

/// The request carrying `records`, from this node's agent.
pub fn request(records: Vec<LogRecord>, host: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", string("metadata-agent")),
                    attribute("service.version", string(env!("CARGO_PKG_VERSION"))),
                    attribute("host.name", string(host)),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "metadata-agent".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Whether a failed send is worth trying again.
enum Outcome {
    Sent,
    Retry(String),
    Refused(String),
}

async fn send(client: &reqwest::Client, config: &OtlpConfig, body: Vec<u8>) -> Outcome {
    let url = format!("{}/v1/logs", config.endpoint.trim_end_matches('/'));
    let mut request = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .timeout(config.timeout)
        .body(body);
    for (name, value) in &config.headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => Outcome::Sent,
        Ok(response) => {
            let status = response.status();
            let why = format!("{url} answered {status}");
            if status.as_u16() == 429 || status.is_server_error() {
                Outcome::Retry(why)
            } else {
                Outcome::Refused(why)
            }
        }
        Err(error) => Outcome::Retry(format!("{url}: {error}")),
    }
}

/// Exports the bus's events until `shutdown`.
pub async fn run(
    config: OtlpConfig,
    bus: Arc<EventBus>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The process's TLS provider (main installs it; an embedding test may not have).
    collectors::install_crypto_provider();
    let client = match reqwest::Client::builder().build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!("events.otlp: cannot make an HTTP client: {error}");
            return;
        }
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let dropped = |reason: &str, count: u64| {
        metrics
            .otlp_dropped
            .get_or_create(&crate::metrics::DropLabels {
                reason: reason.to_owned(),
            })
            .inc_by(count);
    };
    let mut queue: VecDeque<Value> = VecDeque::new();
    // From the first event: whatever was published before this task ran is in the history.
    let mut last: Option<u64> = Some(0);
    let mut backoff = Duration::from_millis(200);
    let mut retry_at: Option<tokio::time::Instant> = None;
    'subscribe: loop {
        let Ok(mut subscription) = bus.subscribe_filtered(EventFilter::default(), last) else {
            return;
        };
        let mut deadline = tokio::time::Instant::now() + config.batch_timeout;
        loop {
            let ready = queue.len() >= config.batch_size
                || (!queue.is_empty() && tokio::time::Instant::now() >= deadline);
            let can_send = retry_at.is_none_or(|at| tokio::time::Instant::now() >= at);
            if ready && can_send {
                let count = queue.len().min(config.batch_size);
                let now = SystemTime::now();
                let records: Vec<LogRecord> = queue
                    .iter()
                    .take(count)
                    .map(|e| log_record(e, now))
                    .collect();
                let body = request(records, &host).encode_to_vec();
                match send(&client, &config, body).await {
                    Outcome::Sent => {
                        queue.drain(..count);
                        metrics.otlp_exported.inc_by(count as u64);
                        backoff = Duration::from_millis(200);
                        retry_at = None;
                    }
                    Outcome::Retry(why) => {
                        metrics.otlp_failures.inc();
                        tracing::warn!("events.otlp: {why}; retrying in {backoff:?}");
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    Outcome::Refused(why) => {
                        metrics.otlp_failures.inc();
                        tracing::warn!("events.otlp: {why}; {count} events dropped");
                        queue.drain(..count);
                        dropped("refused", count as u64);
                    }
                }
                deadline = tokio::time::Instant::now() + config.batch_timeout;
                continue;
            }
            let wake = match retry_at {
                Some(at) => at.max(deadline),
                None => deadline,
            };
            tokio::select! {
                next = subscription.next() => {
                    let Some(event) = next else {
                        // Dropped for falling behind (or shut down): subscribe again from the
                        // last event taken; a gap becomes a record of its own.
                        if *shutdown.borrow() { return; }
                        continue 'subscribe;
                    };
                    last = Some(event.id);
                    let Ok(json) = serde_json::from_str::<Value>(&event.json) else {
                        continue;
                    };
                    if queue.len() == config.queue_size {
                        queue.pop_front();
                        dropped("queue_full", 1);
                    }
                    if queue.is_empty() {
                        deadline = tokio::time::Instant::now() + config.batch_timeout;
                    }
                    queue.push_back(json);
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_becomes_a_record_with_conventional_and_namespaced_attributes() {
        let event = serde_json::json!({
            "id": 7, "kind": "connect",
            "event": {"tgid": 4242, "destination": "10.0.0.3", "port": 5432, "protocol": "tcp", "allowed": false},
            "verdict": "deny", "decided_by": "no-db",
            "labels": {"process:binary:path": ["/usr/bin/psql"], "k8s:pod:name": ["web-1"],
                       "ec2:placement:region": ["eu-west-1"], "process:uid": ["1000"]},
        });
        let record = log_record(&event, SystemTime::now());
        let get = |key: &str| {
            record
                .attributes
                .iter()
                .find(|a| a.key == key)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(get("process.pid"), Some(any_value::Value::IntValue(4242)));
        assert_eq!(
            get("process.executable.path"),
            Some(any_value::Value::StringValue("/usr/bin/psql".into()))
        );
        assert_eq!(
            get("k8s.pod.name"),
            Some(any_value::Value::StringValue("web-1".into()))
        );
        assert_eq!(
            get("cloud.region"),
            Some(any_value::Value::StringValue("eu-west-1".into()))
        );
        assert_eq!(
            get("cloud.provider"),
            Some(any_value::Value::StringValue("aws".into()))
        );
        assert_eq!(
            get("destination.port"),
            Some(any_value::Value::IntValue(5432))
        );
        assert_eq!(
            get("process:uid"),
            Some(any_value::Value::StringValue("1000".into()))
        );
        assert_eq!(record.severity_text, "WARN");
        assert_eq!(record.event_name, "metadata_agent.connect");
    }

    #[test]
    fn bad_settings_are_named() {
        let config = |endpoint: &str| OtlpConfig {
            endpoint: endpoint.to_owned(),
            batch_size: 1,
            batch_timeout: Duration::from_secs(1),
            queue_size: 1,
            timeout: Duration::from_secs(1),
            headers: Default::default(),
        };
        assert!(
            config("grpc://c:4317")
                .check()
                .unwrap_err()
                .contains("gRPC")
        );
        assert!(
            config("not a url")
                .check()
                .unwrap_err()
                .contains("endpoint")
        );
        assert!(config("http://c:4318").check().is_ok());
    }
}
