//! The HTTP API: every route is declared in [`router`], handlers live in [`handlers`], and the
//! one error type in [`error`]. `docs/api.md` and `/openapi.json` describe it for clients.

pub mod error;
pub mod handlers;
pub mod middleware;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use selectors::PolicyStore;
use serde::Serialize;

use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::resolver::Resolver;

/// Whether the kernel hook is attached, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct HookHealth {
    /// Attached to the cgroup root.
    pub attached: bool,
    /// `observe` or `enforce`, when attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Why it is not attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What every handler can reach.
pub struct AppState {
    /// PID → labels.
    pub resolver: Arc<Resolver>,
    /// The policies in force.
    pub policies: Arc<PolicyStore>,
    /// Who is at a destination.
    pub destinations: Arc<crate::destinations::Destinations>,
    /// `/events` subscribers.
    pub bus: Arc<EventBus>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The bearer token requests must carry, if authentication is on.
    pub token: Option<String>,
    /// The kernel hook's state.
    pub hook: Mutex<HookHealth>,
    /// When the agent started.
    pub started: Instant,
}

/// The API's routes. `max_body_bytes` bounds request bodies (larger ones get 413).
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    use handlers::*;
    Router::new()
        .route("/metadata/{pid}", get(metadata))
        .route("/selectors/evaluate", post(evaluate))
        .route("/selectors/{pid}", get(selectors_of_pid))
        .route("/node", get(node))
        .route("/collectors", get(collectors))
        .route("/events", get(events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::record,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
