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
        /// Kernel monotonic time of the exec, in nanoseconds since boot.
        timestamp_ns: u64,
    },
    /// A process ended (its last thread exited).
    Exit {
        /// The process.
        tgid: u32,
    },
}
