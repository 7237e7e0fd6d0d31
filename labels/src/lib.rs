//! The label model: a sorted, multi-valued set of `key: value` pairs and its two renderings.
//!
//! A key may hold several values (`process:gid:additional`, `gcp:tag`, ...). Keys are sorted;
//! values keep the order in which a collector produced them, without duplicates. An empty value
//! is never stored, so no collector can emit `key: ""`.
//!
//! - [`LabelSet`]: the set, its text rendering (`key: value` lines) and its JSON rendering.
//! - [`FrozenLabels`]: the same labels in two allocations, for caches that hold many.
//! - [`escape_bytes`] and friends: raw bytes as label text, losslessly.
//! - [`Trust`] and [`TrustMap`]: who could have chosen each label's value.
//!
//! This crate depends on nothing but serde, so that every consumer of labels (the policy
//! engine, clients) can use it without the collectors' HTTP, TLS and container clients.

mod escape;
mod frozen;
mod set;
mod trust;

pub use escape::{TRUNCATION_MARKER, escape_bytes, escape_bytes_limited, escape_key};
pub use frozen::FrozenLabels;
pub use set::{LabelParseError, LabelSet, serialize_map};
pub use trust::{Trust, TrustCatalog, TrustMap, UnknownKeys};
