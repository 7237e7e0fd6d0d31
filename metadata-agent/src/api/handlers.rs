//! One handler per route; each parses its input, asks the resolver or the policies, and answers.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use labels::{LabelSet, TrustMap};
use selectors::Target;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

type Answer = Result<Response, ApiError>;

/// `?format=` of `/metadata/{pid}`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON (the default).
    Json,
    /// The reference's `key: value` lines.
    Text,
}

/// Query of `/metadata/{pid}`.
#[derive(Debug, Deserialize)]
pub struct MetadataQuery {
    format: Option<Format>,
}

/// Query of the selector routes.
#[derive(Debug, Deserialize)]
pub struct ExplainQuery {
    #[serde(default, deserialize_with = "strict_bool")]
    explain: bool,
    /// A destination, `ADDRESS:PORT[/tcp|/udp]`: the verdict of a connect there.
    #[serde(default, deserialize_with = "target")]
    to: Option<Target>,
}

/// `ADDRESS:PORT[/tcp|/udp]`; anything else is a 400 naming the value.
fn target<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Target>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Target::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `true` or `false`; anything else is a 400 naming the value.
fn strict_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "expected `true` or `false`, found {text:?}"
        ))),
    }
}

/// A PID in a path: decimal digits only, a positive 32-bit number.
fn parse_pid(path: Result<Path<String>, PathRejection>) -> Result<u32, ApiError> {
    let Path(text) =
        path.map_err(|rejection| ApiError::bad_request("invalid_pid", rejection.body_text()))?;
    let invalid = || {
        ApiError::bad_request(
            "invalid_pid",
            format!("invalid pid {text:?}: expected a positive decimal number"),
        )
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u32>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(pid) => Ok(pid),
    }
}

fn wants_text(format: Option<Format>, accept: AcceptsText) -> bool {
    match format {
        Some(format) => format == Format::Text,
        None => accept.0,
    }
}

/// Whether the request's `Accept` header asks for text rather than JSON: read from the request
/// in place (the `HeaderMap` extractor copies every header, on the most frequent lookup).
#[derive(Debug, Clone, Copy)]
pub struct AcceptsText(bool);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AcceptsText {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| {
                    accept.contains("text/plain") && !accept.contains("application/json")
                }),
        ))
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `GET /metadata/{pid}`: labels, per-collector status and resolution time.
pub async fn metadata(
    State(state): State<Arc<AppState>>,
    pid: Result<Path<String>, PathRejection>,
    query: Result<Query<MetadataQuery>, QueryRejection>,
    accept: AcceptsText,
) -> Answer {
    let pid = parse_pid(pid)?;
    let Query(query) = query?;
    if wants_text(query.format, accept) {
        let resolution = state.resolver.resolve(pid).await?;
        let mut body = resolution.labels.to_text();
        body.push_str(&resolution.trust.to_text_comments());
        return Ok(text(body));
    }
    let json = state.resolver.resolve_json(pid).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// `GET /selectors/{pid}`: matching policies in precedence order and the verdict.
pub async fn selectors_of_pid(
    State(state): State<Arc<AppState>>,
    pid: Result<Path<String>, PathRejection>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
) -> Answer {
    let pid = parse_pid(pid)?;
    let Query(query) = query?;
    let resolution = state.resolver.resolve(pid).await?;
    let work = Arc::clone(&state);
    let mut answer = off_the_workers(&state, move || {
        evaluation(&work, &resolution.labels, &resolution.trust, &query)
    })
    .await?;
    answer["pid"] = json!(pid);
    Ok(Json(answer).into_response())
}

/// Runs `work` (an evaluation) on the low-priority evaluation threads, at most
/// `maxConcurrentEvaluations` at once; beyond, 503 with `Retry-After` at once: policy
/// evaluations never hold up the async workers that answer lookups and probes.
async fn off_the_workers<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let Ok(permit) = Arc::clone(&state.limits.evaluations).try_acquire_owned() else {
        return Err(ApiError::overloaded(
            "too many policy evaluations at once (server.maxConcurrentEvaluations)",
        ));
    };
    state
        .limits
        .pool
        .run(move || {
            let answer = work();
            drop(permit);
            answer
        })
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the evaluation failed",
            )
        })
}

/// `POST /selectors/evaluate`: the same for a label set in the body (JSON or text).
pub async fn evaluate(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let Query(query) = query?;
    let body = body?;
    let work = Arc::clone(&state);
    // Parsing a large body is work too: both off the async workers.
    let answer = off_the_workers(&state, move || {
        let (labels, trust) = parse_label_body(&headers, &body, &work.limits)?;
        Ok::<_, ApiError>(evaluation(&work, &labels, &trust, &query))
    })
    .await??;
    Ok(Json(answer).into_response())
}

/// A JSON label set, with the trust classes the caller vouches for (none: every value is
/// `self`).
#[derive(serde::Deserialize)]
struct LabelBody {
    #[serde(flatten)]
    labels: LabelSet,
    #[serde(default)]
    trust: TrustMap,
}

fn parse_label_body(
    headers: &HeaderMap,
    body: &[u8],
    limits: &super::ApiLimits,
) -> Result<(LabelSet, TrustMap), ApiError> {
    // A text body's lines are its pairs: a body over the caps is refused before it is parsed.
    if !body.trim_ascii_start().starts_with(b"{") {
        let lines = body.split(|b| *b == b'\n');
        let (mut count, mut longest) = (0usize, 0usize);
        for line in lines {
            count += usize::from(!line.trim_ascii().is_empty());
            longest = longest.max(line.len());
        }
        if count > limits.max_label_pairs {
            return Err(too_many_labels(count, limits.max_label_pairs));
        }
        if longest > limits.max_label_value_bytes + 1024 {
            return Err(ApiError::bad_request(
                "label_value_too_long",
                format!(
                    "a line of the body is {longest} bytes long, more than a label value may be \
                     (server.maxLabelValueBytes, {})",
                    limits.max_label_value_bytes
                ),
            ));
        }
    }
    let (labels, trust) = parse_labels(headers, body)?;
    let pairs = labels.pair_count();
    if pairs > limits.max_label_pairs {
        return Err(too_many_labels(pairs, limits.max_label_pairs));
    }
    if let Some((key, value)) = labels
        .pairs()
        .find(|(_, value)| value.len() > limits.max_label_value_bytes)
    {
        return Err(ApiError::bad_request(
            "label_value_too_long",
            format!(
                "the value of {key:?} is {} bytes long, more than server.maxLabelValueBytes ({})",
                value.len(),
                limits.max_label_value_bytes
            ),
        ));
    }
    Ok((labels, trust))
}

fn too_many_labels(pairs: usize, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_labels",
        format!("the label set holds {pairs} pairs, more than server.maxLabelPairs ({max})"),
    )
}

fn parse_labels(headers: &HeaderMap, body: &[u8]) -> Result<(LabelSet, TrustMap), ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_labels",
            "the body is empty: send a label set as JSON or `key: value` lines",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let is_json = match content_type.as_deref() {
        Some("application/json") => true,
        Some("text/plain") => false,
        // No type, or curl's default for `-d`: decide from the body.
        None | Some("application/x-www-form-urlencoded") => {
            body.trim_ascii_start().starts_with(b"{")
        }
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("unsupported content type {other:?}: send application/json or text/plain"),
            ));
        }
    };
    if is_json {
        serde_json::from_slice::<LabelBody>(body)
            .map(|body| (body.labels, body.trust))
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_labels",
                    format!(
                        "body is not a JSON label set ({e}): expected {{\"labels\": {{\"key\": [\"value\", ...]}}}}"
                    ),
                )
            })
    } else {
        let text = std::str::from_utf8(body).map_err(|e| {
            ApiError::bad_request("invalid_labels", format!("body is not UTF-8: {e}"))
        })?;
        LabelSet::from_text(text)
            .map(|labels| (labels, TrustMap::new()))
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_labels",
                    format!("body is not a `key: value` label set: {e}"),
                )
            })
    }
}

fn evaluation(
    state: &AppState,
    labels: &LabelSet,
    trust: &TrustMap,
    query: &ExplainQuery,
) -> Value {
    let set = state.policies.current();
    // Who is at the destination, when the node knows.
    let to = query.to.clone().map(|mut target| {
        let snapshot = state.destinations.current();
        if let Some(known) = snapshot.lookup(target.address, target.port, target.protocol) {
            target.identity = Some((known.labels.clone(), known.trust.clone()));
        }
        target
    });
    let value = match (&to, query.explain) {
        (Some(target), true) => serde_json::to_value(set.explain_to(labels, Some(trust), target)),
        (Some(target), false) => serde_json::to_value(set.evaluate_to(labels, Some(trust), target)),
        (None, true) => serde_json::to_value(set.explain_with(labels, trust)),
        (None, false) => serde_json::to_value(set.evaluate_with(labels, trust)),
    };
    value.unwrap_or_else(|_| json!({}))
}

/// `GET /node`: node-scope labels.
pub async fn node(State(state): State<Arc<AppState>>) -> Answer {
    let node = state.resolver.node();
    Ok(Json(json!({
        "ready": state.resolver.node_ready(),
        "labels": node.labels.as_map(),
        "collectors": node.reports,
        "resolved_at": humantime::format_rfc3339_millis(node.resolved_at).to_string(),
    }))
    .into_response())
}

/// `GET /collectors`: each collector's state, last error and latency.
pub async fn collectors(State(state): State<Arc<AppState>>) -> Answer {
    Ok(Json(json!({ "collectors": state.resolver.collector_states() })).into_response())
}

/// `/events`' query: filters, and where to resume.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Comma-separated kinds: `connect`, `exec`, `exit`.
    kind: Option<String>,
    /// Comma-separated verdicts: `allow`, `deny`, `log` (connects only).
    verdict: Option<String>,
    /// A policy's name (connects it matched or decided).
    policy: Option<String>,
    /// A one-line selector over the process's labels.
    selector: Option<String>,
    /// A one-line selector over the destination's labels.
    destination_selector: Option<String>,
    /// Resume after this event id (as the `Last-Event-ID` header does).
    last_event_id: Option<u64>,
}

fn event_filter(query: &EventsQuery) -> Result<crate::events::EventFilter, ApiError> {
    use crate::events::{EventFilter, EventKind};
    let list = |text: &Option<String>| -> Option<Vec<String>> {
        text.as_ref().map(|t| {
            t.split(',')
                .map(|item| item.trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect()
        })
    };
    let kinds = match list(&query.kind) {
        Some(names) => Some(
            names
                .iter()
                .map(|name| {
                    EventKind::parse(name).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_filter",
                            format!("kind {name:?}: expected connect, exec or exit"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let verdicts = match list(&query.verdict) {
        Some(names) => Some(
            names
                .iter()
                .map(|name| {
                    selectors::Action::parse(name).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_filter",
                            format!("verdict {name:?}: expected allow, deny or log"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let selector = |text: &Option<String>, name: &str| match text {
        Some(text) => selectors::Selector::parse_query(text)
            .map(Some)
            .map_err(|message| {
                ApiError::bad_request("invalid_filter", format!("{name}: {message}"))
            }),
        None => Ok(None),
    };
    Ok(EventFilter {
        kinds,
        verdicts,
        policy: query.policy.clone().filter(|p| !p.is_empty()),
        source: selector(&query.selector, "selector")?,
        destination: selector(&query.destination_selector, "destination_selector")?,
    })
}

/// `GET /events`: connect, exec and exit events as server-sent events, each with its id; a
/// reconnect with `Last-Event-ID` (or `?last_event_id=`) first gets the kept events it missed,
/// or a `gap` event saying how many are no longer kept.
pub async fn events(
    State(state): State<Arc<AppState>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let Query(query) = query?;
    let filter = event_filter(&query)?;
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|text| {
            text.trim().parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_last_event_id",
                    format!("Last-Event-ID {text:?}: expected an event id"),
                )
            })
        })
        .transpose()?;
    let after = query.last_event_id.or(header);
    let subscription =
        state
            .bus
            .subscribe_filtered(filter, after)
            .map_err(|refused| match refused {
                crate::events::SubscribeError::Closed => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the agent is shutting down",
                ),
                crate::events::SubscribeError::Full(max) => ApiError::overloaded(format!(
                    "{max} subscribers are streaming events already (events.maxSubscribers)"
                )),
            })?;
    // Every event queued when the stream is polled goes out in one write: at high rates that
    // is one frame (and one wakeup) for many events.
    let events = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let mut frame = bytes::BytesMut::new();
        match tokio::time::timeout(SSE_KEEP_ALIVE, subscription.next()).await {
            Ok(Some(delivered)) => delivered.write_sse(&mut frame),
            Ok(None) => return None,
            // Quiet: a comment keeps proxies and the client from timing the stream out.
            Err(_) => frame.extend_from_slice(b":\n\n"),
        }
        while frame.len() < SSE_FRAME_BYTES
            && let Some(delivered) = subscription.try_next()
        {
            delivered.write_sse(&mut frame);
        }
        Some((Ok::<_, Infallible>(frame.freeze()), subscription))
    });
    // A first comment makes the response head go out now, not with the first event.
    let hello = futures_util::stream::once(std::future::ready(Ok(bytes::Bytes::from_static(
        b": subscribed to events\n\n",
    ))));
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(hello.chain(events)),
    ))
}

/// How long an `/events` stream may stay silent before a comment is sent.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Events are gathered into one write up to about this many bytes.
const SSE_FRAME_BYTES: usize = 64 * 1024;

/// `GET /healthz`: alive, with what is degraded.
pub async fn healthz(
    State(state): State<Arc<AppState>>,
    authenticated: Option<axum::Extension<super::middleware::Authenticated>>,
) -> Answer {
    // Error texts (collector failures, policy errors) only to a caller holding the token.
    let details = authenticated.is_some_and(|axum::Extension(auth)| auth.0);
    let hook = state.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let policies = state.policies.status();
    let failing: Vec<Value> = state
        .resolver
        .node()
        .reports
        .iter()
        .filter(|r| r.status.is_error() || r.status.state() == "stale")
        .map(|r| json!({ "name": r.name, "state": r.status.state(), "detail": r.status.detail() }))
        .collect();
    let mut problems = Vec::new();
    if !hook.attached {
        problems.push("kernel hook not attached");
    }
    if policies.last_error.is_some() {
        problems.push("the last policy reload failed; the previous policies are in force");
    }
    if !failing.is_empty() {
        problems.push("a node collector is failing");
    }
    let status = if problems.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    if !details {
        let mut hook_summary = json!({ "attached": hook.attached });
        if let Some(mode) = &hook.mode {
            hook_summary["mode"] = json!(mode);
        }
        let failing: Vec<Value> = failing
            .iter()
            .map(|f| json!({ "name": f["name"], "state": f["state"] }))
            .collect();
        return Ok(Json(json!({
            "status": status,
            "problems": problems,
            "uptime_seconds": state.started.elapsed().as_secs(),
            "hook": hook_summary,
            "policies": {
                "policies": policies.policies,
                "reloads": policies.reloads,
                "failures": policies.failures,
            },
            "node_collectors_failing": failing,
            "cached_processes": state.resolver.cached_processes(),
        }))
        .into_response());
    }
    Ok(Json(json!({
        "status": status,
        "problems": problems,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "hook": hook,
        "policies": policies,
        "node_collectors_failing": failing,
        "cached_processes": state.resolver.cached_processes(),
    }))
    .into_response())
}

/// `GET /readyz`: 200 once node labels were collected, 503 before.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Answer {
    if state.resolver.node_ready() {
        Ok(Json(json!({ "ready": true })).into_response())
    } else {
        Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "waiting_for": "node labels" })),
        )
            .into_response())
    }
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Answer {
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response())
}

/// `GET /openapi.json`.
pub async fn openapi() -> Answer {
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response())
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /openapi.json",
    )
}

/// A known path with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route; see /openapi.json",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(text: &str) -> Result<u32, ApiError> {
        parse_pid(Ok(Path(text.to_owned())))
    }

    #[test]
    fn pids_are_positive_decimal_numbers() {
        assert_eq!(pid("42").unwrap(), 42);
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "abc",
            "1.5",
            " 1",
            "4294967296",
            "self",
        ] {
            let error = pid(bad).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert_eq!(error.code, "invalid_pid");
        }
    }

    #[test]
    fn label_bodies_by_content_type() {
        let mut headers = HeaderMap::new();
        let (labels, trust) = parse_labels(&headers, br#"{"labels": {"a": ["1", "2"]}}"#).unwrap();
        assert_eq!(labels.get("a"), ["1", "2"]);
        assert!(trust.is_empty());
        let (labels, _) = parse_labels(&headers, b"a: 1\nb: 2\n").unwrap();
        assert_eq!(labels.get("b"), ["2"]);
        // The classes a caller vouches for, for policies that require trusted labels.
        let (_, trust) = parse_labels(
            &headers,
            br#"{"labels": {"a": ["1"]}, "trust": {"a": "kernel"}}"#,
        )
        .unwrap();
        assert_eq!(trust.get("a"), labels::Trust::Kernel);
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let error = parse_labels(&headers, b"a: 1").unwrap_err();
        assert_eq!(error.code, "invalid_labels");
        headers.insert(header::CONTENT_TYPE, "application/xml".parse().unwrap());
        let error = parse_labels(&headers, b"<a/>").unwrap_err();
        assert_eq!(error.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A request body of any bytes and any declared type is a label set or a 4xx.
        #[test]
        fn label_bodies_of_any_bytes(
            body in prop::collection::vec(any::<u8>(), 0..400),
            kind in prop::sample::select(vec!["application/json", "text/plain", "", "x/y"]),
        ) {
            let mut headers = HeaderMap::new();
            if !kind.is_empty() {
                headers.insert(header::CONTENT_TYPE, kind.parse().unwrap());
            }
            if let Err(error) = parse_labels(&headers, &body) {
                prop_assert!(error.status.is_client_error());
            }
        }

        /// JSON-shaped bodies: labels, trust, nesting.
        #[test]
        fn label_bodies_of_json_shape(text in r#"\{("labels"|"trust"|"x")?:? ?(\{("[a-z]{0,3}": ?(\[("[a-z]{0,3}",? ?){0,3}\]|"kernel"|1|null),? ?){0,3}\})?\}"#) {
            let headers = HeaderMap::new();
            if let Err(error) = parse_labels(&headers, text.as_bytes()) {
                prop_assert!(error.status.is_client_error());
            }
        }
    }
}
