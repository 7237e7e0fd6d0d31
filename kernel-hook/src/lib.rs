//! Userspace side of the eBPF connect hook.
//!
//! - [`hook`]: loads the programs of `kernel-hook-ebpf`, attaches them to the cgroup v2 root and
//!   the sched tracepoints, drains their ring buffer, and writes the verdict map.
//! - [`event`]: the typed events (connects, execs, exits) the agent consumes from a channel.
//! - [`record`]: the ring buffer's records, mirrored from the C struct and checked against it.

pub mod event;
pub mod hook;
pub mod record;

pub use event::{ConnectEvent, HookEvent, Protocol};
pub use hook::{
    DRAIN_INTERVAL, EventReader, Hook, HookError, Verdict, detect_cgroup_root, monotonic_ns,
};
