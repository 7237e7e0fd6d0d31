//! Process metadata collectors.
//!
//! - [`LabelSet`]: the multi-valued, sorted label model and its text and JSON renderings.
//! - [`Collector`]: the one trait every source of labels implements, with its [`Scope`].
//! - [`Registry`]: runs collectors concurrently, each under its own deadline.
//! - The collectors: [`procfs`], [`docker`], [`linuxos`], [`sysfsdmi`].
//! - [`cgroup`]: container identity from `/proc/<pid>/cgroup`, shared by container collectors.

pub mod cgroup;
pub mod collector;
pub mod config;
pub mod docker;
pub mod host;
pub mod labels;
pub mod linuxos;
pub mod process;
pub mod procfs;
pub mod registry;
pub mod sysfsdmi;

pub use collector::{CollectError, Collected, Collector, Invalidation, Scope, Subject};
pub use host::{HostRoots, HostRootsConfig};
pub use labels::LabelSet;
pub use process::{ProcessError, ProcessRef};
pub use registry::{CollectorReport, CollectorStatus, Registry, merge_labels};
