//! The control API (`--control-listen`, off by default): change the mock while a pipeline runs.
//!
//! | route | does |
//! |---|---|
//! | `GET /requests?since=N` | the request log from `seq` N: `{"requests": [...], "next": M}` |
//! | `DELETE /requests` | forgets the kept requests |
//! | `GET /scenarios` | the scenarios and whether they fired |
//! | `POST /scenarios` | starts one: the body is its spec, `NAME[:ARG][@WHEN]` (timed from now) |
//! | `GET`, `PUT`, `DELETE /values/{cloud}/{path}` | a value of a cloud's fixture (JSON; `PUT` creates the objects on the way) |
//! | `POST /faults` | `{"path": "/latest/meta-data/iam", "status": 500}`: injects a failure |
//! | `DELETE /faults` | heals them all |
//! | `PUT /latency` | `{"latency": "250ms"}` |
//! | `PUT /ec2/tokens` | `{"mode": "required"}` (`optional`, `required`, `disabled`, `v1-only`) |
//! | `GET /state` | the faults, latency, EC2 token mode and scenarios now |
//!
//! Errors are `{"error": "..."}` with 400 or 404.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Mock, Scenario, TokenMode};

fn bad(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The control API's routes over `mock`.
pub(crate) fn router(mock: Arc<Mock>) -> Router {
    Router::new()
        .route("/requests", get(requests).delete(clear_requests))
        .route("/scenarios", get(scenarios).post(start_scenario))
        .route(
            "/values/{cloud}/{*path}",
            get(get_value).put(put_value).delete(delete_value),
        )
        .route("/faults", post(add_fault).delete(heal))
        .route("/latency", put(set_latency))
        .route("/ec2/tokens", put(set_tokens))
        .route("/state", get(state))
        .fallback(|| async { bad(StatusCode::NOT_FOUND, "no such control route") })
        .with_state(mock)
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn requests(State(mock): State<Arc<Mock>>, Query(since): Query<Since>) -> Response {
    let (requests, next) = mock.log.since(since.since);
    Json(json!({"requests": requests, "next": next})).into_response()
}

async fn clear_requests(State(mock): State<Arc<Mock>>) -> StatusCode {
    mock.log.clear();
    StatusCode::NO_CONTENT
}

async fn scenarios(State(mock): State<Arc<Mock>>) -> Response {
    Json(json!({"scenarios": mock.snapshot().scenarios})).into_response()
}

async fn start_scenario(State(mock): State<Arc<Mock>>, body: String) -> Response {
    // The spec as text, or {"scenario": "..."}.
    let spec = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(map)) => match map.get("scenario").and_then(Value::as_str) {
            Some(spec) => spec.to_owned(),
            None => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "expected {\"scenario\": \"NAME[:ARG][@WHEN]\"}",
                );
            }
        },
        _ => body.trim().to_owned(),
    };
    match spec.parse::<Scenario>() {
        Ok(scenario) => {
            mock.schedule(scenario);
            (
                StatusCode::ACCEPTED,
                Json(json!({"scenarios": mock.snapshot().scenarios})),
            )
                .into_response()
        }
        Err(message) => bad(StatusCode::BAD_REQUEST, message),
    }
}

/// The fixture of `cloud`, for reading or changing.
fn fixture_of<'f>(fixtures: &'f mut crate::Fixtures, cloud: &str) -> Option<&'f mut Value> {
    match cloud {
        "ec2" => Some(&mut fixtures.ec2),
        "azure" => Some(&mut fixtures.azure),
        "gcp" => Some(&mut fixtures.gcp),
        _ => None,
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn lookup<'v>(mut node: &'v Value, path: &[&str]) -> Option<&'v Value> {
    for segment in path {
        node = match node {
            Value::Object(map) => map.get(*segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

const CLOUDS: &str = "ec2, azure or gcp";

async fn get_value(
    State(mock): State<Arc<Mock>>,
    Path((cloud, path)): Path<(String, String)>,
) -> Response {
    let mut fixtures = (*mock.snapshot().fixtures).clone();
    let Some(fixture) = fixture_of(&mut fixtures, &cloud) else {
        return bad(
            StatusCode::NOT_FOUND,
            format!("no cloud {cloud:?}: {CLOUDS}"),
        );
    };
    match lookup(fixture, &segments(&path)) {
        Some(value) => Json(value.clone()).into_response(),
        None => bad(StatusCode::NOT_FOUND, format!("{cloud} has no {path}")),
    }
}

async fn put_value(
    State(mock): State<Arc<Mock>>,
    Path((cloud, path)): Path<(String, String)>,
    body: String,
) -> Response {
    let value: Value = match serde_json::from_str(&body) {
        Ok(value) => value,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("the body must be a JSON value (a string is \"quoted\"): {e}"),
            );
        }
    };
    let parts = segments(&path);
    if parts.is_empty() {
        return bad(
            StatusCode::BAD_REQUEST,
            "a path under the cloud's fixture is needed",
        );
    }
    let result = mock.change(true, |state| {
        let fixtures = Arc::make_mut(&mut state.fixtures);
        let fixture = fixture_of(fixtures, &cloud).ok_or(())?;
        crate::scenario::set(fixture, &parts, value);
        Ok::<(), ()>(())
    });
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(()) => bad(
            StatusCode::NOT_FOUND,
            format!("no cloud {cloud:?}: {CLOUDS}"),
        ),
    }
}

async fn delete_value(
    State(mock): State<Arc<Mock>>,
    Path((cloud, path)): Path<(String, String)>,
) -> Response {
    let parts = segments(&path);
    let removed = mock.change(true, |state| {
        let fixtures = Arc::make_mut(&mut state.fixtures);
        let fixture = fixture_of(fixtures, &cloud)?;
        let (last, parents) = parts.split_last()?;
        let mut node = fixture;
        for segment in parents {
            node = node.get_mut(*segment)?;
        }
        node.as_object_mut()?.remove(*last)
    });
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => bad(StatusCode::NOT_FOUND, format!("{cloud} has no {path}")),
    }
}

#[derive(Deserialize)]
struct Fault {
    path: String,
    status: u16,
}

async fn add_fault(State(mock): State<Arc<Mock>>, body: String) -> Response {
    let fault: Fault = match serde_json::from_str(&body) {
        Ok(fault) => fault,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"path\": \"/...\", \"status\": 500}}: {e}"),
            );
        }
    };
    if let Err(message) = crate::config::parse_failure(&format!("{}={}", fault.path, fault.status))
    {
        return bad(StatusCode::BAD_REQUEST, message);
    }
    mock.change(false, |state| {
        state.failures.push((fault.path, fault.status))
    });
    StatusCode::NO_CONTENT.into_response()
}

async fn heal(State(mock): State<Arc<Mock>>) -> StatusCode {
    mock.change(false, |state| state.failures.clear());
    StatusCode::NO_CONTENT
}

async fn set_latency(State(mock): State<Arc<Mock>>, body: String) -> Response {
    let latency = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["latency"].as_str().map(str::to_owned))
        .ok_or_else(|| "expected {\"latency\": \"250ms\"}".to_owned())
        .and_then(|text| humantime::parse_duration(&text).map_err(|e| format!("{text:?}: {e}")));
    match latency {
        Ok(latency) => {
            mock.change(false, |state| state.latency = latency);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad(StatusCode::BAD_REQUEST, message),
    }
}

async fn set_tokens(State(mock): State<Arc<Mock>>, body: String) -> Response {
    let mode = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["mode"].as_str().map(str::to_owned))
        .and_then(|text| <TokenMode as clap::ValueEnum>::from_str(&text, true).ok());
    match mode {
        Some(mode) => {
            mock.change(false, |state| state.ec2_tokens = mode);
            StatusCode::NO_CONTENT.into_response()
        }
        None => bad(
            StatusCode::BAD_REQUEST,
            "expected {\"mode\": \"optional\" | \"required\" | \"disabled\" | \"v1-only\"}",
        ),
    }
}

async fn state(State(mock): State<Arc<Mock>>) -> Response {
    let state = mock.snapshot();
    Json(json!({
        "faults": state.failures.iter().map(|(path, status)| json!({"path": path, "status": status})).collect::<Vec<_>>(),
        "latency": humantime::format_duration(state.latency).to_string(),
        "ec2Tokens": state.ec2_tokens,
        "dropTokenEndpoint": state.drop_token_endpoint,
        "scenarios": state.scenarios,
    }))
    .into_response()
}
