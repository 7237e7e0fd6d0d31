//! The GCP part of the mock: the Compute Engine metadata server's `/computeMetadata/v1/…`.
//!
//! Requests need `Metadata-Flavor: Google` (else 403) and are refused with `X-Forwarded-For`.
//! Every answer — errors too — carries `Metadata-Flavor: Google`, a Content-Type and an ETag.
//! Paths use the server's kebab-case names (`machine-type`, `service-accounts`) over the fixture's
//! camelCase recursive JSON; a service account is found by its email or an alias (`default`).
//! A directory answers its listing, or its JSON with `recursive=true` (`alt=text` flattens it);
//! a leaf answers text, or JSON with `alt=json`. `service-accounts/<account>/token` issues an
//! access token.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::{Value, json};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Mock, MockRequest, reply};

/// The fixture must hold an `instance` object with an `id`.
pub(crate) fn check_fixture(fixture: &Value) -> Result<(), String> {
    if !fixture["instance"].is_object() {
        return Err("expected an object with an `instance` object".to_owned());
    }
    if fixture["instance"]["id"].is_null() {
        return Err("`instance` has no `id`".to_owned());
    }
    Ok(())
}

/// An answer with the headers every metadata server answer has.
fn flavored(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("{:016x}", hasher.finish());
    let mut response = reply(status, content_type, body);
    let headers = response.headers_mut();
    headers.insert("metadata-flavor", "Google".parse().expect("static"));
    headers.insert("server", "Metadata Server for VM".parse().expect("static"));
    if let Ok(value) = etag.parse() {
        headers.insert("etag", value);
    }
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    flavored(status, "application/text", body.into())
}

/// An error as the metadata server answers them: flavored text.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    text(status, message)
}

/// How long `wait_for_change` waits when the request gives no `timeout_sec` (and at most).
const MAX_WAIT: Duration = Duration::from_secs(3600);

fn etag_of(response: &Response<Body>) -> String {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Serves a request, holding `wait_for_change=true` ones until the answer's ETag differs from
/// `last_etag` (from the current one when no `last_etag` is given), or `timeout_sec` passes
/// (then the current answer), as the metadata server does.
pub(crate) async fn serve(mock: &Arc<Mock>, request: &MockRequest) -> Response<Body> {
    let wait = request
        .param("wait_for_change")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut changes = mock.changes.subscribe();
    let response = handle(mock, &mock.snapshot().fixtures.gcp, request);
    if !wait || response.status() != StatusCode::OK {
        return response;
    }
    let current = etag_of(&response);
    if request
        .param("last_etag")
        .is_some_and(|last| last != current)
    {
        return response;
    }
    let timeout = match request.param("timeout_sec") {
        None => MAX_WAIT,
        Some(text) => match text.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds).min(MAX_WAIT),
            Err(_) => {
                return text_error(
                    StatusCode::BAD_REQUEST,
                    "timeout_sec must be a number of seconds\n",
                );
            }
        },
    };
    let deadline = Instant::now() + timeout;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return response;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                return handle(mock, &mock.snapshot().fixtures.gcp, request);
            }
        }
        let now = handle(mock, &mock.snapshot().fixtures.gcp, request);
        if etag_of(&now) != current {
            return now;
        }
    }
}

fn text_error(status: StatusCode, message: &str) -> Response<Body> {
    text(status, message)
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "Not Found\n")
}

/// `machine-type` → `machineType`.
fn camel(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut upper = false;
    for c in segment.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `machineType` → `machine-type`.
fn kebab(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a node sits, for naming its children.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Children are named as the server names them (kebab-case).
    Plain,
    /// User-chosen names, as they are (attributes).
    Literal,
    /// The service account map: accounts by email or alias.
    Accounts,
    /// One service account.
    Account,
}

fn is_directory(node: &Value) -> bool {
    match node {
        Value::Object(_) => true,
        Value::Array(items) => items.iter().any(|i| i.is_object()),
        _ => false,
    }
}

pub(crate) fn handle(mock: &Mock, fixture: &Value, request: &MockRequest) -> Response<Body> {
    let flavor = request
        .header("metadata-flavor")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("google"));
    if !flavor {
        return text(
            StatusCode::FORBIDDEN,
            "Your client does not have permission to get URL from this server. \
             Missing Metadata-Flavor:Google header.\n",
        );
    }
    if request.header("x-forwarded-for").is_some() {
        return text(
            StatusCode::FORBIDDEN,
            "Requests with X-Forwarded-For are refused.\n",
        );
    }
    if request.method != axum::http::Method::GET && request.method != axum::http::Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        response
            .headers_mut()
            .insert(axum::http::header::ALLOW, "GET".parse().expect("static"));
        return response;
    }
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        [] => text(StatusCode::OK, "computeMetadata/\n"),
        ["computeMetadata"] => text(StatusCode::OK, "v1/\n"),
        // Every GCE server answers its universe domain, fixture or not.
        ["computeMetadata", "v1", "universe", "universe-domain"]
            if fixture["universe"].is_null() =>
        {
            text(StatusCode::OK, "googleapis.com")
        }
        ["computeMetadata", "v1", "universe"] if fixture["universe"].is_null() => {
            text(StatusCode::OK, "universe-domain\n")
        }
        ["computeMetadata", "v1", path @ ..] => serve_path(mock, fixture, path, request),
        _ => not_found(),
    }
}

fn serve_path(
    mock: &Mock,
    fixture: &Value,
    path: &[&str],
    request: &MockRequest,
) -> Response<Body> {
    let mut node = fixture;
    let mut place = Place::Plain;
    for (index, segment) in path.iter().enumerate() {
        if place == Place::Account && *segment == "token" && index + 1 == path.len() {
            return access_token();
        }
        if place == Place::Account && *segment == "identity" && index + 1 == path.len() {
            let email = node["email"].as_str().unwrap_or("default").to_owned();
            return identity_token(mock, fixture, &email, request);
        }
        let (child, child_place) = match (node, place) {
            (Value::Object(map), Place::Accounts) => (
                map.get(*segment).or_else(|| {
                    map.values().find(|account| {
                        account["aliases"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|alias| alias == *segment))
                    })
                }),
                Place::Account,
            ),
            (Value::Object(map), Place::Literal) => (map.get(*segment), Place::Plain),
            (Value::Object(map), _) => {
                let key = if map.contains_key(*segment) {
                    segment.to_string()
                } else {
                    camel(segment)
                };
                let place = match key.as_str() {
                    "attributes" => Place::Literal,
                    "serviceAccounts" => Place::Accounts,
                    _ => Place::Plain,
                };
                (map.get(&key), place)
            }
            (Value::Array(items), _) => (
                segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                Place::Plain,
            ),
            _ => (None, Place::Plain),
        };
        match child {
            Some(child) => {
                node = child;
                place = child_place;
            }
            None => return not_found(),
        }
    }
    let recursive = request
        .param("recursive")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let alt = request.param("alt");
    // `instance/tags` is the JSON text of a list, whatever `alt` says.
    if path.last().is_some_and(|last| *last == "tags") && node.is_array() {
        return flavored(StatusCode::OK, "application/json", node.to_string());
    }
    if is_directory(node) {
        if recursive {
            return match alt {
                Some("text") => {
                    let mut lines = String::new();
                    flatten(node, place, "", &mut lines);
                    text(StatusCode::OK, lines)
                }
                _ => flavored(
                    StatusCode::OK,
                    "application/json",
                    with_aliases(node, place).to_string(),
                ),
            };
        }
        let names = listing(node, place);
        return match alt {
            Some("json") => flavored(StatusCode::OK, "application/json", json!(names).to_string()),
            _ => text(
                StatusCode::OK,
                names.iter().map(|n| format!("{n}\n")).collect::<String>(),
            ),
        };
    }
    match alt {
        Some("json") => flavored(StatusCode::OK, "application/json", node.to_string()),
        _ => text(StatusCode::OK, leaf_text(node)),
    }
}

/// `node` as the recursive JSON shows it: a service account also under each of its aliases
/// (`default`), as the metadata server keys them.
fn with_aliases(node: &Value, place: Place) -> Value {
    match node {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, child) in map {
                let child_place = match (place, key.as_str()) {
                    (Place::Accounts, _) => Place::Account,
                    (Place::Plain, "attributes") => Place::Literal,
                    (Place::Plain, "serviceAccounts") => Place::Accounts,
                    _ => Place::Plain,
                };
                out.insert(key.clone(), with_aliases(child, child_place));
            }
            if place == Place::Accounts {
                for account in map.values() {
                    for alias in account["aliases"].as_array().into_iter().flatten() {
                        if let Some(alias) = alias.as_str() {
                            out.entry(alias.to_owned())
                                .or_insert_with(|| account.clone());
                        }
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| with_aliases(i, Place::Plain))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A directory's entries as the server lists them: sub-directories end in `/`.
fn listing(node: &Value, place: Place) -> Vec<String> {
    let name = |key: &str, child: &Value| {
        let shown = match place {
            Place::Literal | Place::Accounts => key.to_owned(),
            Place::Plain | Place::Account => kebab(key),
        };
        if is_directory(child) {
            format!("{shown}/")
        } else {
            shown
        }
    };
    match node {
        Value::Object(map) => {
            let mut names: Vec<String> = Vec::new();
            if place == Place::Accounts {
                for account in map.values() {
                    for alias in account["aliases"].as_array().into_iter().flatten() {
                        if let Some(alias) = alias.as_str() {
                            names.push(format!("{alias}/"));
                        }
                    }
                }
            }
            names.extend(map.iter().map(|(key, child)| name(key, child)));
            names
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, child)| name(&i.to_string(), child))
            .collect(),
        _ => Vec::new(),
    }
}

/// `recursive=true&alt=text`: one `path value` line per leaf.
fn flatten(node: &Value, place: Place, prefix: &str, out: &mut String) {
    let children: Vec<(String, &Value, Place)> = match node {
        Value::Object(map) => map
            .iter()
            .map(|(key, child)| {
                let shown = match place {
                    Place::Literal | Place::Accounts => key.clone(),
                    Place::Plain | Place::Account => kebab(key),
                };
                let child_place = match (place, key.as_str()) {
                    (Place::Accounts, _) => Place::Account,
                    (Place::Plain, "attributes") => Place::Literal,
                    (Place::Plain, "serviceAccounts") => Place::Accounts,
                    _ => Place::Plain,
                };
                (shown, child, child_place)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, child)| (i.to_string(), child, Place::Plain))
            .collect(),
        _ => Vec::new(),
    };
    for (name, child, child_place) in children {
        let path = format!("{prefix}{name}");
        if is_directory(child) {
            flatten(child, child_place, &format!("{path}/"), out);
        } else {
            out.push_str(&format!("{path} {}\n", leaf_text(child).trim_end()));
        }
    }
}

/// A leaf as text: strings as they are, numbers as written, lists one item a line.
fn leaf_text(leaf: &Value) -> String {
    match leaf {
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| format!("{item}\n"))
            .collect(),
        other => other.to_string(),
    }
}

/// `…/service-accounts/<account>/identity?audience=…[&format=full][&licenses=TRUE]`.
fn identity_token(
    mock: &Mock,
    fixture: &Value,
    email: &str,
    request: &MockRequest,
) -> Response<Body> {
    let Some(audience) = request.param("audience").filter(|a| !a.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required\n",
        );
    };
    let full = match request.param("format").unwrap_or("standard") {
        "standard" => false,
        "full" => true,
        _ => return text(StatusCode::BAD_REQUEST, "format must be standard or full\n"),
    };
    let licenses = request
        .param("licenses")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let signer = match mock.signer() {
        Ok(signer) => signer,
        Err(why) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = crate::identity::claims(fixture, email, audience, now, full, licenses);
    text(StatusCode::OK, signer.token(&claims))
}

/// The identity tokens' public key, as Google publishes its own: `v1` (certificates by key id)
/// or `v3` (a JWK set).
pub(crate) fn certificates(mock: &Mock, version: &str) -> Response<Body> {
    let signer = match mock.signer() {
        Ok(signer) => signer,
        Err(why) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
    };
    let body = match version {
        "v1" => signer.certificates(),
        "v3" => signer.jwks(),
        _ => return not_found(),
    };
    reply(
        StatusCode::OK,
        "application/json; charset=UTF-8",
        body.to_string(),
    )
}

fn access_token() -> Response<Body> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let body = json!({
        "access_token": format!("ya29.mock-{now:x}"),
        "expires_in": 3599,
        "token_type": "Bearer",
    });
    flavored(StatusCode::OK, "application/json", body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_convert_both_ways() {
        assert_eq!(camel("machine-type"), "machineType");
        assert_eq!(camel("service-accounts"), "serviceAccounts");
        assert_eq!(kebab("numericProjectId"), "numeric-project-id");
        assert_eq!(kebab("id"), "id");
    }

    #[test]
    fn directories_list_kebab_names_and_attributes_keep_theirs() {
        let fixture = json!({"instance": {"machineType": "m", "attributes": {"myKey": "v"},
            "networkInterfaces": [{"ip": "10.0.0.2"}], "tags": ["a"]}});
        let instance = &fixture["instance"];
        assert_eq!(
            listing(instance, Place::Plain),
            ["attributes/", "machine-type", "network-interfaces/", "tags"]
        );
        assert_eq!(listing(&instance["attributes"], Place::Literal), ["myKey"]);
        let mut lines = String::new();
        flatten(instance, Place::Plain, "", &mut lines);
        assert_eq!(
            lines,
            "attributes/myKey v\nmachine-type m\nnetwork-interfaces/0/ip 10.0.0.2\ntags a\n"
        );
    }
}
