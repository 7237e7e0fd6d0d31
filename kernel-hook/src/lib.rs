//! Userspace side of the eBPF connect hook.
//!
//! - [`hook`]: loads the programs of `kernel-hook-ebpf`, attaches them to the cgroup v2 root and
//!   the sched tracepoints (pinned in bpffs, or not), drains their ring buffer, and writes the
//!   maps the programs judge connects by.
//! - [`event`]: the typed events (connects, execs, exits) the agent consumes from a channel.
//! - [`maps`]: the values of the maps the agent writes (process states, verdicts, rule sets,
//!   rules, exec-time identities), mirrored from the C structs and checked against them.
//! - [`record`]: the ring buffer's records, mirrored from the C struct and checked against it.

pub use kernel_hook_ebpf::abi;

pub mod event;
pub mod hook;
pub mod maps;
pub mod record;

pub use event::{ConnectEvent, Decision, HookEvent, Protocol};
pub use hook::{
    Attachment, DRAIN_INTERVAL, EventReader, Hook, HookError, ProcessTable, Verdict,
    check_whole_hierarchy, detect_cgroup_root, detect_cgroup_root_under, monotonic_ns,
};
