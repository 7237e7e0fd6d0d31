//! Lookups by something else than one PID: a cgroup id (what the hook reports), a container, a
//! pod, many PIDs at once, and the cached processes a selector matches.
//!
//! A cgroup, container or pod is answered with the labels of its container and node: those of
//! a process inside it, without the `process:*` ones (which belong to that one process).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use collectors::cgroup;
use labels::{LabelSet, TrustMap};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::resolver::Resolution;

type Answer = Result<Response, ApiError>;

/// The most containers one pod lookup answers.
const MAX_POD_CONTAINERS: usize = 64;

/// `labels` and `trust` of `resolution` without the process's own keys.
fn shared_labels(resolution: &Resolution) -> (LabelSet, TrustMap) {
    let mut labels = LabelSet::new();
    let mut trust = TrustMap::new();
    for (key, values) in resolution.labels.iter() {
        if key.starts_with("process:") {
            continue;
        }
        labels.insert_all(key, values.iter().cloned());
        trust.insert(key, resolution.trust.get(key));
    }
    (labels, trust)
}

/// The first of `pids` that resolves (processes come and go).
async fn first_resolved(state: &AppState, pids: &[u32]) -> Option<Arc<Resolution>> {
    for pid in pids {
        if let Ok(resolution) = state.resolver.resolve(*pid).await {
            return Some(resolution);
        }
    }
    None
}

fn not_found(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code, message)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// `?cgroup_id=N[&processes=true]` or `?exec_id=ID`; any other parameter (a misspelling, one
/// without a name) is refused, naming it, as the OpenAPI document says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataQuery {
    cgroup_id: Option<String>,
    exec_id: Option<String>,
    #[serde(default)]
    processes: bool,
}

/// `GET /metadata?cgroup_id=N` ([`by_cgroup`]) or `GET /metadata?exec_id=ID` ([`by_exec_id`]).
pub async fn by_query(
    State(state): State<Arc<AppState>>,
    query: Result<Query<MetadataQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(query) = query?;
    match (&query.cgroup_id, &query.exec_id) {
        (Some(cgroup_id), None) => by_cgroup(&state, cgroup_id, query.processes).await,
        (None, Some(exec_id)) => by_exec_id(&state, exec_id).await,
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_query",
            "GET /metadata takes ?cgroup_id=N or ?exec_id=ID, not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "missing_parameter",
            "GET /metadata needs ?cgroup_id=N or ?exec_id=ID (or use /metadata/{pid})",
        )),
    }
}

/// `GET /metadata?exec_id=ID`: the execution's labels while it runs (as `/metadata/{pid}`);
/// `410 Gone` with its last labels (`last_known`) when it ended recently; 404 otherwise.
async fn by_exec_id(state: &AppState, text: &str) -> Answer {
    use crate::resolver::ExecLookup;
    let id: collectors::procfs::ExecId = text.parse().map_err(|reason: String| {
        ApiError::bad_request("invalid_exec_id", format!("invalid exec id: {reason}"))
    })?;
    match state.resolver.resolve_exec(&id).await {
        ExecLookup::Live(resolution) => Ok(Json(&*resolution).into_response()),
        ExecLookup::Ended {
            resolution,
            ended_at,
        } => {
            let error = ApiError::new(
                StatusCode::GONE,
                "process_ended",
                format!("execution {id} ended (seen at {ended_at}); its last labels follow"),
            );
            let mut body = error.body();
            body["ended_at"] = json!(ended_at);
            body["last_known"] = json!(resolution);
            Ok((StatusCode::GONE, Json(body)).into_response())
        }
        ExecLookup::Unknown(why) => Err(not_found("no_such_execution", why)),
        ExecLookup::Failed(error) => Err(error.into()),
    }
}

/// `GET /metadata?cgroup_id=N`: the cgroup's path, its container and node labels, and (with
/// `processes=true`) the resolution of each of its processes.
async fn by_cgroup(state: &AppState, text: &str, processes: bool) -> Answer {
    let id: u64 = text.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_cgroup_id",
            format!("invalid cgroup id {text:?}: expected a positive decimal number"),
        )
    })?;
    let roots = state.resolver.roots().clone();
    let path = blocking(move || cgroup::path_of_id(&roots, id))
        .await?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cgroup_unreadable",
                format!("cannot look up cgroup {id}: {e}"),
            )
        })?
        .ok_or_else(|| not_found("no_such_cgroup", format!("no cgroup has id {id}")))?;
    let roots = state.resolver.roots().clone();
    let inside = path.clone();
    let pids = blocking(move || cgroup::processes_in(&roots, &inside, true)).await?;
    let resolved = first_resolved(state, &pids).await;
    let mut answer = json!({
        "cgroup_id": id,
        "cgroup": path,
        "pids": pids,
    });
    match &resolved {
        Some(resolution) => {
            let (labels, trust) = shared_labels(resolution);
            answer["container"] = json!(resolution.container);
            answer["labels"] = json!(labels.as_map());
            answer["trust"] = json!(trust);
        }
        None => {
            // An empty cgroup: the node's labels only.
            let node = state.resolver.node();
            answer["container"] = Value::Null;
            answer["labels"] = json!(node.labels.as_map());
        }
    }
    if processes {
        let mut processes = Vec::new();
        for pid in &pids {
            if let Ok(resolution) = state.resolver.resolve(*pid).await {
                processes.push(json!(resolution));
            }
        }
        answer["processes"] = Value::Array(processes);
    }
    Ok(Json(answer).into_response())
}

/// `GET /containers/{id}`: the container's labels and node labels, and its processes.
pub async fn container(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Answer {
    let valid = id.len() >= 12 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_container_id",
            format!("invalid container id {id:?}: expected 12 to 64 hexadecimal digits"),
        ));
    }
    let id = id.to_ascii_lowercase();
    let roots = state.resolver.roots().clone();
    let needle = id.clone();
    let cgroups = blocking(move || cgroup::find_cgroups(&roots, &needle, 8)).await?;
    let mut pids = Vec::new();
    for path in &cgroups {
        let roots = state.resolver.roots().clone();
        let path = path.clone();
        pids.extend(blocking(move || cgroup::processes_in(&roots, &path, true)).await?);
    }
    pids.sort_unstable();
    pids.dedup();
    // A process whose resolution names this container (a prefix must be unambiguous).
    let mut found = None;
    for pid in &pids {
        if let Ok(resolution) = state.resolver.resolve(*pid).await
            && resolution
                .container
                .as_ref()
                .is_some_and(|c| c.id.starts_with(&id))
        {
            found = Some(resolution);
            break;
        }
    }
    let resolution = found.ok_or_else(|| {
        not_found(
            "no_such_container",
            format!("no running process is in a container {id}"),
        )
    })?;
    let container = resolution.container.clone().expect("checked above");
    let (labels, trust) = shared_labels(&resolution);
    Ok(Json(json!({
        "id": container.id,
        "container": container,
        "pids": pids,
        "labels": json!(labels.as_map()),
        "trust": trust,
    }))
    .into_response())
}

/// `GET /pods/{uid}`: the pod's labels (its containers' shared ones and the node's) and each
/// container's.
pub async fn pod(State(state): State<Arc<AppState>>, Path(uid): Path<String>) -> Answer {
    let valid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_pod_uid",
            format!("invalid pod uid {uid:?}: expected a UUID"),
        ));
    }
    let uid = uid.to_ascii_lowercase();
    // The kubelet names a pod's cgroup `pod<uid>`, with `_` for `-` under systemd.
    let roots = state.resolver.roots().clone();
    let (dashed, underscored) = (format!("pod{uid}"), format!("pod{}", uid.replace('-', "_")));
    let cgroups = blocking(move || {
        let mut found = cgroup::find_cgroups(&roots, &dashed, 4);
        found.extend(cgroup::find_cgroups(&roots, &underscored, 4));
        found
    })
    .await?;
    let mut containers: Vec<Value> = Vec::new();
    let mut pod_labels: Option<(LabelSet, TrustMap)> = None;
    let mut seen = std::collections::BTreeSet::new();
    for path in &cgroups {
        let roots = state.resolver.roots().clone();
        let path = path.clone();
        let pids = blocking(move || cgroup::processes_in(&roots, &path, true)).await?;
        for pid in pids {
            let Ok(resolution) = state.resolver.resolve(pid).await else {
                continue;
            };
            let Some(container) = &resolution.container else {
                continue;
            };
            if container.pod_uid.as_deref() != Some(uid.as_str())
                || !seen.insert(container.id.clone())
            {
                continue;
            }
            let (labels, trust) = shared_labels(&resolution);
            if pod_labels.is_none() {
                // What every container of the pod shares: not its container's own keys.
                let mut shared = labels.clone();
                let mut shared_trust = TrustMap::new();
                for key in labels.iter().map(|(k, _)| k.to_owned()).collect::<Vec<_>>() {
                    if key.starts_with("k8s:container:") || key.starts_with("docker:") {
                        shared.remove(&key);
                    } else {
                        shared_trust.insert(key.clone(), trust.get(&key));
                    }
                }
                pod_labels = Some((shared, shared_trust));
            }
            containers.push(json!({
                "id": container.id,
                "labels": json!(labels.as_map()),
                "trust": trust,
            }));
            if containers.len() >= MAX_POD_CONTAINERS {
                break;
            }
        }
    }
    let (labels, trust) = pod_labels.ok_or_else(|| {
        not_found(
            "no_such_pod",
            format!("no running container of this node is in pod {uid}"),
        )
    })?;
    Ok(Json(json!({
        "uid": uid,
        "labels": json!(labels.as_map()),
        "trust": trust,
        "containers": containers,
    }))
    .into_response())
}

/// `POST /metadata:batch` `{"pids": [...]}`.
struct Batch {
    pids: Vec<Value>,
}

/// `POST /metadata:batch`: each PID's resolution or error, in the order asked.
pub async fn batch(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let expected = "expected {\"pids\": [1, 2, ...]}";
    let Json(body) = body.map_err(|rejection| {
        ApiError::bad_request(
            "invalid_body",
            format!("{expected}: {}", rejection.body_text()),
        )
    })?;
    // An object with `pids` only (serde would also take a bare list for a struct).
    let pids = match body.as_object() {
        Some(map) if map.len() == 1 => map.get("pids").and_then(Value::as_array),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad_request("invalid_body", expected))?;
    let batch = Batch { pids: pids.clone() };
    let max = state.limits.max_batch_pids;
    if batch.pids.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_pids",
            format!(
                "{} PIDs asked; at most {max} at once (server.maxBatchPids)",
                batch.pids.len()
            ),
        ));
    }
    let mut results = Vec::with_capacity(batch.pids.len());
    for item in &batch.pids {
        let pid = item
            .as_u64()
            .filter(|p| *p > 0 && *p <= u64::from(u32::MAX));
        let Some(pid) = pid else {
            results.push(json!({
                "pid": item,
                "error": {"status": 400, "code": "invalid_pid",
                          "message": format!("invalid pid {item}: expected a positive number")},
            }));
            continue;
        };
        match state.resolver.resolve(pid as u32).await {
            Ok(resolution) => results.push(json!({"pid": pid, "resolution": resolution})),
            Err(error) => {
                let error = ApiError::from(error);
                results.push(json!({
                    "pid": pid,
                    "error": {"status": error.status.as_u16(), "code": error.code, "message": error.message},
                }));
            }
        }
    }
    Ok(Json(json!({ "results": results })).into_response())
}

/// `?selector=...`.
#[derive(Debug, Deserialize)]
pub struct ProcessesQuery {
    selector: Option<String>,
}

/// `GET /processes?selector=...`: the cached processes whose labels match.
pub async fn processes(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ProcessesQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(query) = query?;
    let selector = match &query.selector {
        Some(text) => Some(selectors::Selector::parse_query(text).map_err(|message| {
            ApiError::bad_request("invalid_selector", format!("selector: {message}"))
        })?),
        None => None,
    };
    let mut matched = Vec::new();
    let mut pids = state.resolver.cached_pids();
    pids.sort_unstable();
    for pid in pids {
        let Ok(resolution) = state.resolver.resolve(pid).await else {
            continue;
        };
        if selector
            .as_ref()
            .is_none_or(|selector| selector.matches(&resolution.labels))
        {
            matched.push(json!({
                "pid": pid,
                "container": resolution.container.as_ref().map(|c| &c.id),
                "labels": json!(resolution.labels.as_map()),
            }));
        }
    }
    Ok(Json(json!({ "count": matched.len(), "processes": matched })).into_response())
}
