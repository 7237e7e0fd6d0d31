//! Request middleware: bearer-token authentication and per-route metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// Paths served without a token, so that probes need no secret.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// On an open path, whether the request carried the agent's token (a token is configured and
/// it was presented): details are given to it only.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated(pub bool);

/// Requires `Authorization: Bearer <token>` when the API's token is configured.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    require_token(state.token.as_ref(), request, next).await
}

/// Requires `Authorization: Bearer <token>` on the operations listener when its own token is
/// configured.
pub async fn authenticate_ops(
    State(token): State<Arc<Option<super::token::TokenFile>>>,
    request: Request,
    next: Next,
) -> Response {
    require_token(token.as_ref().as_ref(), request, next).await
}

/// Lets `request` through when `token` is none or presented; on the open paths, always, noting
/// whether it was presented.
async fn require_token(
    token: Option<&super::token::TokenFile>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let expected = token.current();
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim());
    let valid =
        presented.is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes()));
    if OPEN_PATHS.contains(&request.uri().path()) {
        // Probes need no secret; what they reveal depends on whether one was given.
        let mut request = request;
        request.extensions_mut().insert(Authenticated(valid));
        return next.run(request).await;
    }
    let message = match presented {
        Some(_) if valid => return next.run(request).await,
        Some(_) => "the bearer token is not the agent's token",
        None => "this agent requires `Authorization: Bearer <token>`",
    };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Which hosts a request to a TCP listener may name (`Host`, `Origin`): the listen address,
/// loopback, the configured names, and every local address when listening on all of them.
#[derive(Debug, Clone)]
pub struct HostGuard {
    names: Vec<String>,
    listen: std::net::IpAddr,
}

impl HostGuard {
    /// The guard of a listener bound to `listen`, also accepting `allowed` names.
    pub fn new(listen: std::net::IpAddr, allowed: &[String]) -> Self {
        let mut names: Vec<String> = allowed
            .iter()
            .map(|name| host_part(name).to_ascii_lowercase())
            .collect();
        names.push(listen.to_string());
        Self { names, listen }
    }

    /// Whether `host` (without a port) may be named.
    fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == "localhost" || host.ends_with(".localhost") || self.names.contains(&host) {
            return true;
        }
        let Ok(address) = host.parse::<std::net::IpAddr>() else {
            return false;
        };
        if address.is_loopback() {
            return true;
        }
        if address.to_canonical().is_loopback() {
            return true;
        }
        self.listen.is_unspecified() && crate::destinations::local_addresses().contains(&address)
    }
}

/// `host` without its port or IPv6 brackets: `[::1]:9820` → `::1`, `node:9820` → `node`.
fn host_part(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // One colon: a port. More: a bare IPv6 address.
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Refuses requests naming a host this agent is not (421) or coming from a web page of another
/// site (403): what a DNS-rebinding page in a browser on the node would send.
pub async fn guard_host(
    State(guard): State<Arc<HostGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or_default();
        if !guard.allows(host_part(host)) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                format!(
                    "this agent does not answer for host {host:?}: name its listen address or                      loopback, or add the name to server.allowedHosts"
                ),
            )
            .into_response();
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default());
        if !host.is_some_and(|host| guard.allows(host_part(host))) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                format!("requests from web pages of {origin:?} are refused"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts requests and their latency by route template (bounded label values).
pub async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let method = match request.method().as_str() {
        known @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => known,
        _ => "other",
    }
    .to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if response.status().is_server_error() {
        tracing::warn!(%route, %method, status, "request failed");
    }
    state
        .metrics
        .record_request(&route, &method, status, started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::{HostGuard, constant_time_eq, host_part};

    #[test]
    fn hosts_are_told_apart_with_or_without_ports() {
        assert_eq!(host_part("[::1]:9820"), "::1");
        assert_eq!(host_part("node-a:9820"), "node-a");
        assert_eq!(host_part("::1"), "::1");
        assert_eq!(host_part("127.0.0.1"), "127.0.0.1");
        let guard = HostGuard::new("10.0.0.5".parse().unwrap(), &["agent.internal".to_owned()]);
        for good in [
            "10.0.0.5",
            "localhost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "AGENT.internal",
        ] {
            assert!(guard.allows(good), "{good}");
        }
        for bad in ["evil.example", "10.0.0.6", "localhost.evil.example", ""] {
            assert!(!guard.allows(bad), "{bad}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
