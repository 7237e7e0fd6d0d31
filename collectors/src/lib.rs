//! Process metadata collectors.
//!
//! - [`Collector`]: the one trait every source of labels implements, with its [`Scope`].
//! - [`Registry`]: runs collectors concurrently, each under its own deadline.
//! - [`builtin`]: the table of the built-in collectors, their configuration sections and
//!   [`build_registry`].
//! - The collectors: [`procfs`], [`docker`], [`kubernetes`], [`linuxos`], [`sysfsdmi`], and the
//!   [`cloud`] ones: EC2, Azure, GCP.
//! - [`cgroup`]: container identity from `/proc/<pid>/cgroup`, shared by container collectors.

pub mod builtin;
pub mod catalog;
pub mod cgroup;
pub mod cgroupns;
pub mod cloud;
pub mod collector;
pub mod config;
pub mod docker;
pub mod error;
pub mod host;
pub mod kubernetes;
pub mod linuxos;
pub mod process;
pub mod procfs;
pub mod redaction;
pub mod registry;
#[cfg(test)]
mod robustness;
pub mod sysfsdmi;

pub use builtin::{Builtin, CollectorsConfig, SECTIONS, build_registry};
pub use catalog::KeyCatalog;
pub use collector::{
    CollectError, Collected, Collector, Invalidation, KeySpec, Prospect, Scope, Subject, Workload,
};
pub use error::{BoxError, BuildError, error_chain};
pub use host::{HostRoots, HostRootsConfig};
pub use process::{ProcDir, ProcessError, ProcessImage, ProcessRef};
pub use registry::{CollectorReport, CollectorStatus, Registry, merge_labels};

/// Makes ring the process's TLS crypto provider (the one provider this project builds with);
/// HTTP clients built without an explicit TLS configuration need it. Idempotent.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all this asks.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
