//! Per-collector history for `GET /collectors`: runs, errors, and the last outcome of each.

use std::sync::Mutex;
use std::time::SystemTime;

use collectors::{CollectorReport, CollectorStatus, Registry, Scope};
use serde::Serialize;

/// Per-collector history, for `GET /collectors`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectorState {
    /// The collector's name.
    pub name: &'static str,
    /// Its scope.
    pub scope: Option<Scope>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Its deadline in milliseconds.
    pub timeout_ms: u64,
    /// Runs so far.
    pub runs: u64,
    /// Runs that failed or timed out.
    pub errors: u64,
    /// The state of the last run (`ok`, `failed`, ...), if it ran.
    pub last_state: Option<&'static str>,
    /// Its reason or error.
    pub last_detail: Option<String>,
    /// Its latency in milliseconds.
    pub last_latency_ms: Option<f64>,
    /// The last error and when (RFC 3339), kept after later successes.
    pub last_error: Option<String>,
    /// When the last error happened.
    pub last_error_at: Option<String>,
}

/// The history of every registered collector, in registration order.
pub(super) struct CollectorHistory {
    states: Mutex<Vec<CollectorState>>,
}

impl CollectorHistory {
    /// An empty history of the collectors of `registry`.
    pub fn new(registry: &Registry) -> Self {
        let states = registry
            .collectors()
            .iter()
            .map(|r| CollectorState {
                name: r.collector.name(),
                scope: Some(r.collector.scope()),
                enabled: r.enabled,
                timeout_ms: r.timeout.as_millis() as u64,
                ..Default::default()
            })
            .collect();
        Self {
            states: Mutex::new(states),
        }
    }

    /// Records one run of each collector in `reports` (disabled ones did not run).
    pub fn record(&self, reports: &[CollectorReport]) {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        for report in reports {
            if report.status == CollectorStatus::Disabled {
                continue;
            }
            let Some(state) = states.iter_mut().find(|s| s.name == report.name) else {
                continue;
            };
            state.runs += 1;
            state.last_state = Some(report.status.state());
            state.last_detail = report.status.detail();
            state.last_latency_ms = Some(report.latency.as_secs_f64() * 1000.0);
            if report.status.is_error() {
                state.errors += 1;
                state.last_error = report.status.detail();
                state.last_error_at = Some(now.clone());
            }
        }
    }

    /// Each collector's state, in registration order.
    pub fn snapshot(&self) -> Vec<CollectorState> {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
