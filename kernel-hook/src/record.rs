//! The ring buffer's records: [`RawEvent`], the Rust mirror of `struct hook_event` in
//! `kernel-hook-ebpf/bpf/hook.h`, and their decoding into [`HookEvent`]s.
//!
//! The mirror is held to the C layout at compile time: its size and every field's offset must
//! equal the `HOOK_EVENT_*` numbers the header exports (through `kernel_hook_ebpf::abi`), which
//! the header's own `_Static_assert`s hold to the C struct.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kernel_hook_ebpf::abi;

use crate::event::{ConnectEvent, Decision, HookEvent, Protocol};
use crate::maps::POLICY_NONE;

/// `struct hook_event`, field for field, in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// `EVENT_*`.
    pub kind: u32,
    /// Thread-group id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// `AF_INET` (2) or `AF_INET6` (10); 0 for exec and exit.
    pub family: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    /// 1 allowed, 0 denied.
    pub verdict: u8,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Kernel monotonic time, nanoseconds.
    pub timestamp_ns: u64,
    /// IPv4 in the first 4 bytes, network order; or IPv6.
    pub addr: [u8; 16],
    /// Destination port, host order.
    pub port: u16,
    /// `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// Connect: the deciding rule's policy, or `POLICY_NONE`.
    pub policy: u16,
    /// Connect: the rule set judged by; exec: the one found for the new image.
    pub ruleset: u32,
    /// Exec: the process's new generation.
    pub generation: u32,
    /// Connect: `DECISION_*`.
    pub decision: u8,
    /// Padding to the next field's alignment.
    pub pad: [u8; 3],
    /// Effective user id of the calling thread.
    pub euid: u32,
    /// Effective group id of the calling thread.
    pub egid: u32,
    /// Fork: the parent, the process that forked it.
    pub ppid: u32,
    /// Padding to the next field's alignment.
    pub pad2: u32,
    /// Fork, exec, exit: the process's start time in clock ticks since boot.
    pub start: u64,
    /// Fork: the parent's start time in clock ticks since boot.
    pub parent_start: u64,
}

const _: () = {
    assert!(size_of::<RawEvent>() == abi::HOOK_EVENT_SIZE);
    assert!(offset_of!(RawEvent, kind) == abi::HOOK_EVENT_OFF_KIND);
    assert!(offset_of!(RawEvent, tgid) == abi::HOOK_EVENT_OFF_TGID);
    assert!(offset_of!(RawEvent, tid) == abi::HOOK_EVENT_OFF_TID);
    assert!(offset_of!(RawEvent, uid) == abi::HOOK_EVENT_OFF_UID);
    assert!(offset_of!(RawEvent, gid) == abi::HOOK_EVENT_OFF_GID);
    assert!(offset_of!(RawEvent, family) == abi::HOOK_EVENT_OFF_FAMILY);
    assert!(offset_of!(RawEvent, protocol) == abi::HOOK_EVENT_OFF_PROTOCOL);
    assert!(offset_of!(RawEvent, verdict) == abi::HOOK_EVENT_OFF_VERDICT);
    assert!(offset_of!(RawEvent, cgroup_id) == abi::HOOK_EVENT_OFF_CGROUP_ID);
    assert!(offset_of!(RawEvent, timestamp_ns) == abi::HOOK_EVENT_OFF_TIMESTAMP_NS);
    assert!(offset_of!(RawEvent, addr) == abi::HOOK_EVENT_OFF_ADDR);
    assert!(offset_of!(RawEvent, port) == abi::HOOK_EVENT_OFF_PORT);
    assert!(offset_of!(RawEvent, comm) == abi::HOOK_EVENT_OFF_COMM);
    assert!(offset_of!(RawEvent, policy) == abi::HOOK_EVENT_OFF_POLICY);
    assert!(offset_of!(RawEvent, ruleset) == abi::HOOK_EVENT_OFF_RULESET);
    assert!(offset_of!(RawEvent, generation) == abi::HOOK_EVENT_OFF_GENERATION);
    assert!(offset_of!(RawEvent, decision) == abi::HOOK_EVENT_OFF_DECISION);
    assert!(offset_of!(RawEvent, pad) == abi::HOOK_EVENT_OFF_PAD);
    assert!(offset_of!(RawEvent, euid) == abi::HOOK_EVENT_OFF_EUID);
    assert!(offset_of!(RawEvent, egid) == abi::HOOK_EVENT_OFF_EGID);
    assert!(offset_of!(RawEvent, ppid) == abi::HOOK_EVENT_OFF_PPID);
    assert!(offset_of!(RawEvent, pad2) == abi::HOOK_EVENT_OFF_PAD2);
    assert!(offset_of!(RawEvent, start) == abi::HOOK_EVENT_OFF_START);
    assert!(offset_of!(RawEvent, parent_start) == abi::HOOK_EVENT_OFF_PARENT_START);
};

impl RawEvent {
    /// The record in `bytes`, or `None` when it is too short to be one.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: `bytes` holds at least `size_of::<Self>()` bytes; every field is an integer
        // or an array of integers, so any bit pattern is a valid value; `read_unaligned` does
        // not require the ring buffer's alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The record's bytes, as the BPF programs write them.
    pub fn to_bytes(&self) -> [u8; size_of::<RawEvent>()] {
        // SAFETY: `RawEvent` is `repr(C)` with no padding between or after its fields (the
        // assertions above place every field, and `pad` fills the gap before `euid`), so each
        // of its bytes is initialized.
        unsafe { std::mem::transmute_copy(self) }
    }
}

/// A `comm` field: up to its first NUL, bytes that are not UTF-8 replaced.
fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Decodes one ring buffer record; `None` for a record too short or of an unknown kind.
pub fn parse_event(record: &[u8]) -> Option<HookEvent> {
    let raw = RawEvent::read(record)?;
    match raw.kind {
        abi::EVENT_EXEC => Some(HookEvent::Exec {
            tgid: raw.tgid,
            start: raw.start,
            timestamp_ns: raw.timestamp_ns,
            generation: raw.generation,
            ruleset: raw.ruleset,
            comm: comm(&raw.comm),
        }),
        abi::EVENT_EXIT => Some(HookEvent::Exit {
            tgid: raw.tgid,
            start: raw.start,
        }),
        abi::EVENT_FORK => Some(HookEvent::Fork {
            tgid: raw.tgid,
            start: raw.start,
            ppid: raw.ppid,
            parent_start: raw.parent_start,
        }),
        abi::EVENT_CGROUP => Some(HookEvent::CgroupMove { tgid: raw.tgid }),
        abi::EVENT_CONNECT => {
            let destination = match i32::from(raw.family) {
                libc::AF_INET => IpAddr::V4(Ipv4Addr::new(
                    raw.addr[0],
                    raw.addr[1],
                    raw.addr[2],
                    raw.addr[3],
                )),
                libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(raw.addr)),
                _ => return None,
            };
            Some(HookEvent::Connect(ConnectEvent {
                tgid: raw.tgid,
                tid: raw.tid,
                uid: raw.uid,
                gid: raw.gid,
                euid: raw.euid,
                egid: raw.egid,
                cgroup_id: raw.cgroup_id,
                comm: comm(&raw.comm),
                protocol: if u32::from(raw.protocol) == abi::PROTO_UDP {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                destination,
                port: raw.port,
                timestamp_ns: raw.timestamp_ns,
                allowed: raw.verdict != 0,
                decision: Decision::from_abi(raw.decision)?,
                ruleset: raw.ruleset,
                policy: Some(raw.policy).filter(|p| *p != POLICY_NONE),
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_connect_record() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let mut raw = RawEvent {
            kind: abi::EVENT_CONNECT,
            tgid: 4242,
            tid: 4243,
            uid: 1000,
            euid: 0,
            egid: 27,
            family: libc::AF_INET6 as u16,
            protocol: abi::PROTO_UDP as u8,
            verdict: 1,
            cgroup_id: 77,
            addr: Ipv6Addr::LOCALHOST.octets(),
            port: 8443,
            comm,
            policy: 4,
            ruleset: 9,
            decision: abi::DECISION_RULE as u8,
            ..RawEvent::default()
        };
        let record = raw.to_bytes();
        assert_eq!(RawEvent::read(&record), Some(raw));
        let Some(HookEvent::Connect(event)) = parse_event(&record) else {
            panic!("not a connect");
        };
        assert_eq!(event.tgid, 4242);
        assert_eq!(event.tid, 4243);
        assert_eq!(event.uid, 1000);
        assert_eq!((event.euid, event.egid), (0, 27));
        assert_eq!(event.cgroup_id, 77);
        assert_eq!(event.protocol, Protocol::Udp);
        assert_eq!(event.destination, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(event.port, 8443);
        assert_eq!(event.comm, "curl");
        assert!(event.allowed);
        assert_eq!(event.decision, Decision::Rule);
        assert_eq!((event.ruleset, event.policy), (9, Some(4)));
        assert!(parse_event(&record[..40]).is_none());
        let mut unknown = raw;
        unknown.decision = 99;
        assert!(parse_event(&unknown.to_bytes()).is_none());
        raw.kind = abi::EVENT_EXIT;
        raw.start = 991;
        assert_eq!(
            parse_event(&raw.to_bytes()),
            Some(HookEvent::Exit {
                tgid: 4242,
                start: 991
            })
        );
        raw.kind = abi::EVENT_FORK;
        (raw.ppid, raw.parent_start) = (17, 5);
        assert_eq!(
            parse_event(&raw.to_bytes()),
            Some(HookEvent::Fork {
                tgid: 4242,
                start: 991,
                ppid: 17,
                parent_start: 5
            })
        );
        raw.kind = abi::EVENT_EXEC;
        (raw.generation, raw.ruleset, raw.timestamp_ns) = (3, 0, 12);
        assert_eq!(
            parse_event(&raw.to_bytes()),
            Some(HookEvent::Exec {
                tgid: 4242,
                start: 991,
                comm: "curl".to_owned(),
                timestamp_ns: 12,
                generation: 3,
                ruleset: 0
            })
        );
        raw.kind = abi::EVENT_CGROUP;
        assert_eq!(
            parse_event(&raw.to_bytes()),
            Some(HookEvent::CgroupMove { tgid: 4242 })
        );
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any record the ring buffer could hold decodes to an event or to nothing.
        #[test]
        fn records_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_event(&bytes);
        }

        /// Records of every kind with any field values.
        #[test]
        fn records_with_any_fields(kind in 0u32..5, family in any::<u16>(), decision in any::<u8>(), comm in any::<[u8; 16]>(), port in any::<u16>()) {
            let raw = RawEvent { kind, family, decision, comm, port, ..RawEvent::default() };
            if let Some(HookEvent::Connect(event)) = parse_event(&raw.to_bytes()) {
                prop_assert_eq!(event.port, port);
                prop_assert!(event.comm.len() <= 16 * 3);
            }
        }
    }
}
