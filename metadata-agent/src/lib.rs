//! `metadata-agent`: process metadata for network policy.
//!
//! The binary is thin glue over these modules:
//! - [`run`]: the daemon (`metadata-agent run`): wiring, background tasks, shutdown.
//! - [`resolver`]: PID → labels through caches scoped by process, container and node.
//! - [`api`]: the HTTP API. [`events`]: the event pipeline and `/events` fan-out.
//! - [`metrics`]: Prometheus metrics. [`config`]: the configuration file.
//! - [`destinations`]: who is at a destination (local listeners, containers), for policies' `to`.
//! - [`enforcement`]: policies compiled into the kernel's rule sets, and verdicts per process.
//! - [`inspect`], [`policy`], [`hook_command`]: the one-shot CLI commands.

pub mod api;
pub mod client;
pub mod config;
pub mod destinations;
pub mod enforcement;
pub mod events;
pub mod export;
pub mod hook_command;
pub mod inspect;
pub mod metrics;
pub mod otlp;
pub mod policy;
pub mod resolver;
pub mod run;
