//! Userspace side of the eBPF connect hook.
//!
//! [`event`] holds the typed events the hook reports (connects, execs, exits); the agent consumes
//! them from a channel, so its event pipeline does not depend on how they were produced. Loading
//! and attaching the BPF programs with `aya` lands with the kernel-hook issue.

pub mod event;

pub use event::{ConnectEvent, HookEvent, Protocol};
