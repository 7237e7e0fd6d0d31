//! The Azure part of the mock: the Instance Metadata Service's `/metadata/…` endpoints.
//!
//! Every request needs `Metadata: true` and an `api-version` the service knows (else 400 with a
//! JSON error), and is refused when it carries `X-Forwarded-For`. `/metadata/instance` can be
//! narrowed by path (`/metadata/instance/compute/vmId`, array items by index); `format=text`
//! answers a leaf as plain text and is refused for anything else. `/metadata/loadbalancer`
//! answers 404 when the fixture has no load balancer. `/metadata/versions` lists the versions.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::{Mock, MockRequest, State, reply};
use std::sync::Arc;

/// The api-versions the service accepts, oldest first: Microsoft's published list
/// (learn.microsoft.com, "Azure Instance Metadata Service", Supported API versions).
const API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2024-07-17",
    "2025-04-07",
];

/// The api-versions of `/metadata/scheduledevents`, which has its own (Scheduled Events docs).
const SCHEDULED_EVENTS_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-08-01",
    "2017-11-01",
    "2019-01-01",
    "2019-04-01",
    "2019-08-01",
    "2020-07-01",
];

/// The first api-version with `/metadata/loadbalancer`.
const LOADBALANCER_SINCE: &str = "2020-10-01";

/// The fixture must hold an `instance` document with `compute`.
pub(crate) fn check_fixture(fixture: &Value) -> Result<(), String> {
    if !fixture["instance"]["compute"].is_object() {
        return Err("expected an object with `instance.compute`".to_owned());
    }
    if !(fixture["loadbalancer"].is_null() || fixture["loadbalancer"].is_object()) {
        return Err("`loadbalancer` must be an object when present".to_owned());
    }
    Ok(())
}

fn json_reply(status: StatusCode, body: &Value) -> Response<Body> {
    reply(status, "application/json; charset=utf-8", body.to_string())
}

fn bad_request(message: &str) -> Response<Body> {
    json_reply(
        StatusCode::BAD_REQUEST,
        &json!({"error": message, "newest-versions": newest_versions()}),
    )
}

fn newest_versions() -> Vec<&'static str> {
    API_VERSIONS.iter().rev().take(3).copied().collect()
}

/// An error as IMDS answers them: a JSON object with `error`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_reply(status, &json!({ "error": message }))
}

/// The scheduled events document: what `GET /metadata/scheduledevents` answers.
#[derive(Debug, Clone, Default)]
pub struct ScheduledEvents {
    incarnation: u64,
    events: Vec<Value>,
}

impl ScheduledEvents {
    /// Adds an event (a new incarnation of the document).
    pub(crate) fn add(&mut self, event: Value) {
        self.incarnation += 1;
        self.events.push(event);
    }

    /// Starts (and so ends) the events with these ids; whether any was known.
    fn start(&mut self, ids: &[&str]) -> bool {
        let before = self.events.len();
        self.events
            .retain(|event| !ids.iter().any(|id| event["EventId"] == *id));
        let started = self.events.len() != before;
        if started {
            self.incarnation += 1;
        }
        started
    }

    fn document(&self) -> Value {
        json!({"DocumentIncarnation": self.incarnation, "Events": self.events})
    }
}

fn not_found() -> Response<Body> {
    json_reply(StatusCode::NOT_FOUND, &json!({"error": "Not found"}))
}

pub(crate) fn handle(mock: &Arc<Mock>, state: &State, request: &MockRequest) -> Response<Body> {
    let fixture = &state.fixtures.azure;
    let metadata_header = request
        .header("metadata")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !metadata_header {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad request. Required metadata header not specified",
        );
    }
    if request.header("x-forwarded-for").is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad request. Requests through a proxy (X-Forwarded-For) are not allowed",
        );
    }
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    let scheduled_events = segments == ["metadata", "scheduledevents"];
    let allowed: &[axum::http::Method] = if scheduled_events {
        &[axum::http::Method::GET, axum::http::Method::POST]
    } else {
        &[axum::http::Method::GET]
    };
    if !allowed.contains(&request.method) {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed. The HTTP verb is not supported on this endpoint",
        );
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(value) = allow.parse() {
            response
                .headers_mut()
                .insert(axum::http::header::ALLOW, value);
        }
        return response;
    }
    if segments == ["metadata", "versions"] {
        return json_reply(StatusCode::OK, &json!({"apiVersions": API_VERSIONS}));
    }
    if request
        .query
        .iter()
        .any(|(name, _)| request.param_count(name) > 1)
    {
        return bad_request("Bad request. Query parameters may not be given more than once");
    }
    let known = if scheduled_events {
        SCHEDULED_EVENTS_VERSIONS
    } else {
        API_VERSIONS
    };
    let version = match request.param("api-version") {
        Some(version) if known.contains(&version) => version,
        _ => {
            return bad_request(
                "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
            );
        }
    };
    match segments.as_slice() {
        ["metadata", "instance", path @ ..] => instance(&fixture["instance"], path, request),
        ["metadata", "loadbalancer"] => {
            if version < LOADBALANCER_SINCE {
                return bad_request(
                    "Bad request. The load balancer endpoint needs api-version 2020-10-01 or later",
                );
            }
            match &fixture["loadbalancer"] {
                Value::Null => not_found(),
                loadbalancer => json_reply(StatusCode::OK, &json!({"loadbalancer": loadbalancer})),
            }
        }
        ["metadata", "scheduledevents"] => scheduled(mock, state, request),
        ["metadata", "attested", "document"] => attested(fixture, request),
        ["metadata", "identity", "oauth2", "token"] => token(request),
        _ => not_found(),
    }
}

/// `GET` the scheduled events; `POST` `{"StartRequests": [{"EventId": ...}]}` starts (and, in
/// the mock, completes) them.
fn scheduled(mock: &Arc<Mock>, state: &State, request: &MockRequest) -> Response<Body> {
    if request.method == axum::http::Method::GET {
        return json_reply(StatusCode::OK, &state.azure_events.document());
    }
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(_) => return bad_request("Bad request. The body is not valid JSON"),
    };
    let Some(requests) = body["StartRequests"].as_array() else {
        return bad_request("Bad request. Expected {\"StartRequests\": [{\"EventId\": ...}]}");
    };
    let ids: Vec<&str> = requests
        .iter()
        .filter_map(|r| r["EventId"].as_str())
        .collect();
    if ids.is_empty() {
        return bad_request("Bad request. StartRequests names no EventId");
    }
    let started = mock.change(true, |state| state.azure_events.start(&ids));
    if !started {
        return bad_request("Bad request. No scheduled event has that EventId");
    }
    reply(StatusCode::OK, "application/json; charset=utf-8", "")
}

/// `/metadata/attested/document`: the signed document's content, with the caller's nonce.
/// The signature is the content in base64, not a PKCS#7 signature: the mock holds no Azure
/// certificate, and clients that verify it must be pointed elsewhere.
fn attested(fixture: &Value, request: &MockRequest) -> Response<Body> {
    use std::fmt::Write;
    let compute = &fixture["instance"]["compute"];
    let now = SystemTime::now();
    let stamp = |t: SystemTime| {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        format!("{secs}")
    };
    let nonce = request.param("nonce").unwrap_or("").to_owned();
    let content = json!({
        "nonce": nonce,
        "plan": compute["plan"],
        "timeStamp": {"createdOn": stamp(now), "expiresOn": stamp(now + Duration::from_secs(6 * 3600))},
        "vmId": compute["vmId"],
        "subscriptionId": compute["subscriptionId"],
        "sku": compute["sku"],
    });
    let bytes = content.to_string().into_bytes();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = encoded.write_char(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                encoded.push('=');
            }
        }
    }
    json_reply(
        StatusCode::OK,
        &json!({"encoding": "pkcs7", "signature": encoded}),
    )
}

fn instance(document: &Value, path: &[&str], request: &MockRequest) -> Response<Body> {
    let mut node = document;
    for segment in path {
        let child = match node {
            Value::Object(map) => map.get(*segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match child {
            Some(child) => node = child,
            None => return not_found(),
        }
    }
    let leaf = !(node.is_object() || node.is_array());
    match request.param("format").unwrap_or("json") {
        "json" if leaf => bad_request(
            "Bad request. A leaf node must be queried with format=text (the default is json)",
        ),
        "json" => json_reply(StatusCode::OK, node),
        "text" => match node {
            Value::String(text) => reply(StatusCode::OK, "text/plain; charset=utf-8", text.clone()),
            Value::Number(_) | Value::Bool(_) => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                node.to_string(),
            ),
            _ => bad_request("Bad request. format=text is only valid for leaf nodes"),
        },
        _ => bad_request("Bad request. format must be json or text"),
    }
}

/// A managed identity token: opaque, for clients that go on to ask for one.
fn token(request: &MockRequest) -> Response<Body> {
    let Some(resource) = request.param("resource") else {
        return bad_request("Bad request. resource was not specified in the request");
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    json_reply(
        StatusCode::OK,
        &json!({
            "access_token": format!("mock-azure-token-{now}"),
            "client_id": "00000000-0000-0000-0000-000000000000",
            "expires_in": "86399",
            "expires_on": (now + 86_399).to_string(),
            "ext_expires_in": "86399",
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}
