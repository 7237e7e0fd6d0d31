//! The events the kernel hook reports, as the agent consumes them.

use std::net::IpAddr;

use serde::Serialize;

/// The transport of a connect or send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `connect()` on a stream socket.
    Tcp,
    /// `connect()` or `sendmsg()` on a datagram socket.
    Udp,
}

/// A process opening a connection (`cgroup/connect4|6`) or sending a datagram
/// (`cgroup/sendmsg4|6`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectEvent {
    /// Thread-group id (the PID proper).
    pub tgid: u32,
    /// The calling thread.
    pub tid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id (of the calling thread).
    pub euid: u32,
    /// Effective group id (of the calling thread).
    pub egid: u32,
    /// cgroup v2 id of the process.
    pub cgroup_id: u64,
    /// `comm` of the calling thread (at most 15 bytes).
    pub comm: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Destination address (its family is the socket's).
    pub destination: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Kernel monotonic time of the call, in nanoseconds since boot.
    pub timestamp_ns: u64,
    /// Whether the kernel let the call through (always, in observe mode).
    pub allowed: bool,
    /// How the kernel reached its verdict.
    pub decision: Decision,
    /// The rule set it judged by ([`crate::maps::ruleset`] ids, or one the agent gave).
    pub ruleset: u32,
    /// The deciding policy's number in the agent's policy table, when a policy decided.
    pub policy: Option<u16>,
}

/// How the kernel decided a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Observe mode: nothing was judged.
    Observe,
    /// The agent's own process: never refused.
    Exempt,
    /// The process had no rule set yet: the pending verdict decided.
    Pending,
    /// A rule covering the destination decided.
    Rule,
    /// No rule covered the destination: the rule set's default decided.
    Default,
}

impl Decision {
    /// The `DECISION_*` number of the event record, `None` for an unknown one.
    pub fn from_abi(value: u8) -> Option<Self> {
        use kernel_hook_ebpf::abi;
        Some(match u32::from(value) {
            abi::DECISION_OBSERVE => Self::Observe,
            abi::DECISION_EXEMPT => Self::Exempt,
            abi::DECISION_PENDING => Self::Pending,
            abi::DECISION_RULE => Self::Rule,
            abi::DECISION_DEFAULT => Self::Default,
            _ => return None,
        })
    }
}

/// Everything the hook reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HookEvent {
    /// A connect or datagram send.
    Connect(ConnectEvent),
    /// A process called `execve` successfully: its binary and arguments changed.
    Exec {
        /// The process.
        tgid: u32,
        /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
        start: u64,
        /// Its new `comm` (the new executable's file name, at most 15 bytes).
        comm: String,
        /// Kernel monotonic time of the exec, in nanoseconds since boot.
        timestamp_ns: u64,
        /// The process's exec generation from now on (verdicts name it).
        generation: u32,
        /// The rule set the kernel found for the new image (0: none, pending).
        ruleset: u32,
    },
    /// A process ended (its last thread exited).
    Exit {
        /// The process.
        tgid: u32,
        /// Its start time in clock ticks since boot.
        start: u64,
    },
    /// A process forked a new process (not a thread).
    Fork {
        /// The new process.
        tgid: u32,
        /// Its start time in clock ticks since boot.
        start: u64,
        /// The process that forked it.
        ppid: u32,
        /// The parent's start time in clock ticks since boot.
        parent_start: u64,
    },
    /// A process (one of its threads) was moved to another cgroup, on any hierarchy.
    CgroupMove {
        /// The process.
        tgid: u32,
    },
}
