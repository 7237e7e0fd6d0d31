//! The HTTP API: every route is declared in [`router`], handlers live in [`handlers`], and the
//! one error type in [`error`]. `docs/api.md` and `/openapi.json` describe it for clients.

pub mod error;
pub mod handlers;
pub mod lookups;
pub mod middleware;
pub mod pool;
pub mod token;

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
    /// The bearer token requests must carry (from its file, kept current), if authentication
    /// is on.
    pub token: Option<token::TokenFile>,
    /// The kernel hook's state.
    pub hook: Mutex<HookHealth>,
    /// When the agent started.
    pub started: Instant,
    /// Bounds on what one request may ask.
    pub limits: ApiLimits,
}

/// Bounds on what one request may ask (`server.*` in the configuration).
#[derive(Debug)]
pub struct ApiLimits {
    /// Most pairs in a label set.
    pub max_label_pairs: usize,
    /// Longest label value.
    pub max_label_value_bytes: usize,
    /// Permits for policy evaluations at once.
    pub evaluations: Arc<tokio::sync::Semaphore>,
    /// Requests served at once, health probes aside.
    pub max_concurrent_requests: usize,
    /// The threads evaluations run on.
    pub pool: pool::EvaluationPool,
    /// Most PIDs one `POST /metadata:batch` may ask.
    pub max_batch_pids: usize,
}

impl ApiLimits {
    /// The limits of `config`.
    pub fn of(config: &crate::config::ServerConfig) -> Self {
        Self {
            max_label_pairs: config.max_label_pairs,
            max_label_value_bytes: config.max_label_value_bytes,
            evaluations: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_evaluations.max(1),
            )),
            max_concurrent_requests: config.max_concurrent_requests.max(1),
            pool: pool::EvaluationPool::new(config.max_concurrent_evaluations),
            max_batch_pids: config.max_batch_pids.max(1),
        }
    }
}

/// The operations listener's routes (`server.opsListen`): `/healthz`, `/readyz` and
/// `/metrics`, guarded by `token` (`server.opsTokenFile`) when there is one. Every other path
/// is 404 there: the API is not reachable through it.
pub fn ops_router(state: Arc<AppState>, token: Option<token::TokenFile>) -> Router {
    use handlers::*;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            middleware::authenticate_ops,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::record,
        ))
        .layer(DefaultBodyLimit::max(4096))
        .with_state(state)
}

/// The API's routes. `max_body_bytes` bounds request bodies (larger ones get 413).
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    use axum::error_handling::HandleErrorLayer;
    use axum::response::IntoResponse;
    use handlers::*;
    // Beyond the limit a request is answered 503 at once (load shedding), never queued; the
    // health probes stay outside it, so they answer under any load.
    let shed = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            error::ApiError::overloaded("too many requests at once (server.maxConcurrentRequests)")
                .into_response()
        }))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            state.limits.max_concurrent_requests,
        ));
    let limited = Router::new()
        .route("/metadata", get(lookups::by_query))
        .route("/metadata:batch", post(lookups::batch))
        .route("/metadata/{pid}", get(metadata))
        .route("/containers/{id}", get(lookups::container))
        .route("/pods/{uid}", get(lookups::pod))
        .route("/processes", get(lookups::processes))
        .route("/selectors/evaluate", post(evaluate))
        .route("/selectors/{pid}", get(selectors_of_pid))
        .route("/node", get(node))
        .route("/collectors", get(collectors))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .layer(shed);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(limited)
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
