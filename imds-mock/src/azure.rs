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

use super::{MockRequest, reply};

/// The api-versions the service accepts, oldest first.
const API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
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
    "2025-04-07",
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

fn not_found() -> Response<Body> {
    json_reply(StatusCode::NOT_FOUND, &json!({"error": "Not found"}))
}

pub(crate) fn handle(fixture: &Value, request: &MockRequest) -> Response<Body> {
    let metadata_header = request
        .header("metadata")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !metadata_header {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Bad request. Required metadata header not specified"}),
        );
    }
    if request.header("x-forwarded-for").is_some() {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Bad request. Requests through a proxy (X-Forwarded-For) are not allowed"}),
        );
    }
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    if segments == ["metadata", "versions"] {
        return json_reply(StatusCode::OK, &json!({"apiVersions": API_VERSIONS}));
    }
    let version = match request.param("api-version") {
        None => {
            return bad_request(
                "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
            );
        }
        Some(version) if !API_VERSIONS.contains(&version) => {
            return bad_request(
                "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
            );
        }
        Some(version) => version,
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
        ["metadata", "identity", "oauth2", "token"] => token(request),
        _ => not_found(),
    }
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
    match request.param("format").unwrap_or("json") {
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
