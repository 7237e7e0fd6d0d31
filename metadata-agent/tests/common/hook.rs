//! Hook events made by a test, as the kernel hook would report them, fed to an in-process agent.

use kernel_hook::{ConnectEvent, Decision, HookEvent, Protocol};
use metadata_agent::run::Agent;

/// An observed TCP connect of `tgid` to 127.0.0.1:`port`.
pub fn connect_event(tgid: u32, port: u16) -> HookEvent {
    HookEvent::Connect(ConnectEvent {
        tgid,
        tid: tgid,
        uid: 0,
        gid: 0,
        // What the kernel would report: the test process's own.
        // SAFETY: geteuid and getegid cannot fail.
        euid: unsafe { libc::geteuid() },
        egid: unsafe { libc::getegid() },
        cgroup_id: 1,
        comm: "test".to_owned(),
        protocol: Protocol::Tcp,
        destination: "127.0.0.1".parse().unwrap(),
        port,
        timestamp_ns: 1,
        allowed: true,
        decision: Decision::Observe,
        ruleset: 0,
        policy: None,
    })
}

/// Feeds `events` to the in-process agent's pipeline, as the hook's reader would.
pub async fn feed(agent: &Agent, events: impl IntoIterator<Item = HookEvent>) {
    for event in events {
        agent.hook_events.send(event).await.unwrap();
    }
}
