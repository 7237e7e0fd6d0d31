//! The values of the hook's maps, mirrored from `kernel-hook-ebpf/bpf/hook.h` and held to the
//! C layout at compile time (sizes and field offsets against the numbers the header exports).
//!
//! - [`ProcState`] (`PROCS[tgid]`): what the kernel knows of a process — its start time, exec
//!   generation and the rule set of its exec-time identity.
//! - [`VerdictEntry`] (`VERDICTS[tgid]`): the agent's rule set for one image of a process.
//! - [`RulesetEntry`] (`RULESETS[id]`), [`RuleList`] of [`Rule`]s (`RULES`, an LPM trie keyed by
//!   rule set and address prefix): what a rule set decides per destination.
//! - [`ImageKey`] (`IMAGES`): an identity known at exec, mapped to a rule set.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use kernel_hook_ebpf::abi;

/// Rule set ids with a fixed meaning.
pub mod ruleset {
    use super::abi;
    /// Not judged yet: the pending verdict decides.
    pub const PENDING: u32 = abi::RULESET_PENDING;
    /// Never refused (the agent's own process).
    pub const EXEMPT: u32 = abi::RULESET_EXEMPT;
    /// The first id the agent may give a rule set.
    pub const FIRST: u32 = abi::RULESET_FIRST;
}

/// `POLICY_NONE`: no policy decided (the default did).
pub const POLICY_NONE: u16 = abi::POLICY_NONE as u16;

/// Rules one address prefix of one rule set holds at most.
pub const RULES_PER_PREFIX: usize = abi::RULES_PER_PREFIX as usize;

/// `struct proc_state`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcState {
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
    /// Monotonic time of the last exec, 0 when none was seen.
    pub exec_ns: u64,
    /// Execs seen.
    pub generation: u32,
    /// The kernel's own rule set for the process.
    pub ruleset: u32,
    /// Moves of its threads to another cgroup since the entry was made.
    pub moves: u32,
    /// Zero.
    pub pad: u32,
}

/// `struct verdict`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictEntry {
    /// The process's start time, as in its [`ProcState`].
    pub start: u64,
    /// The agent's ordering of its writes (newer is larger); the programs ignore it.
    pub stamp: u64,
    /// The exec generation the verdict is for.
    pub generation: u32,
    /// The rule set.
    pub ruleset: u32,
}

/// `struct ruleset`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RulesetEntry {
    /// `VERDICT_*` where no rule covers a destination.
    pub default_verdict: u32,
    /// The policy that decided it, or [`POLICY_NONE`].
    pub default_policy: u32,
}

/// The data of `struct rule_key` after its prefix length (aya's LPM [`Key`] adds that).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleKeyData {
    /// The rule set.
    pub ruleset: u32,
    /// IPv6 address; IPv4 mapped into `::ffff:0:0/96`.
    pub addr: [u8; 16],
}

/// `struct rule`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// First port covered.
    pub port_first: u16,
    /// Last port covered.
    pub port_last: u16,
    /// `PROTO_TCP`, `PROTO_UDP`, or 0 for both.
    pub protocol: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// The policy the rule comes from.
    pub policy: u16,
}

/// `struct rule_list`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleList {
    /// Rules in use.
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// The rules, in precedence order.
    pub rules: [Rule; RULES_PER_PREFIX],
}

/// `struct image_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ImageKey {
    /// cgroup v2 id, 0 for any.
    pub cgroup_id: u64,
    /// The executable's inode, 0 (with `dev` 0) for any.
    pub ino: u64,
    /// Its inode change time, seconds.
    pub ctime_sec: i64,
    /// Its inode change time, nanoseconds.
    pub ctime_nsec: u32,
    /// Its filesystem's device, kernel encoding (`major << 20 | minor`).
    pub dev: u32,
}

const _: () = {
    assert!(size_of::<ProcState>() == abi::PROC_STATE_SIZE);
    assert!(offset_of!(ProcState, start) == abi::PROC_STATE_OFF_START);
    assert!(offset_of!(ProcState, exec_ns) == abi::PROC_STATE_OFF_EXEC_NS);
    assert!(offset_of!(ProcState, generation) == abi::PROC_STATE_OFF_GENERATION);
    assert!(offset_of!(ProcState, ruleset) == abi::PROC_STATE_OFF_RULESET);
    assert!(offset_of!(ProcState, moves) == abi::PROC_STATE_OFF_MOVES);
    assert!(offset_of!(ProcState, pad) == abi::PROC_STATE_OFF_PAD);

    assert!(size_of::<VerdictEntry>() == abi::VERDICT_SIZE);
    assert!(offset_of!(VerdictEntry, start) == abi::VERDICT_OFF_START);
    assert!(offset_of!(VerdictEntry, stamp) == abi::VERDICT_OFF_STAMP);
    assert!(offset_of!(VerdictEntry, generation) == abi::VERDICT_OFF_GENERATION);
    assert!(offset_of!(VerdictEntry, ruleset) == abi::VERDICT_OFF_RULESET);

    assert!(size_of::<RulesetEntry>() == abi::RULESET_SIZE);
    assert!(offset_of!(RulesetEntry, default_verdict) == abi::RULESET_OFF_DEFAULT_VERDICT);
    assert!(offset_of!(RulesetEntry, default_policy) == abi::RULESET_OFF_DEFAULT_POLICY);

    // aya's key is the prefix length (4 bytes) followed by the data, packed.
    assert!(size_of::<Key<RuleKeyData>>() == abi::RULE_KEY_SIZE);
    assert!(abi::RULE_KEY_OFF_PREFIXLEN == 0);
    assert!(4 + offset_of!(RuleKeyData, ruleset) == abi::RULE_KEY_OFF_RULESET);
    assert!(4 + offset_of!(RuleKeyData, addr) == abi::RULE_KEY_OFF_ADDR);

    assert!(size_of::<Rule>() == abi::RULE_SIZE);
    assert!(offset_of!(Rule, port_first) == abi::RULE_OFF_PORT_FIRST);
    assert!(offset_of!(Rule, port_last) == abi::RULE_OFF_PORT_LAST);
    assert!(offset_of!(Rule, protocol) == abi::RULE_OFF_PROTOCOL);
    assert!(offset_of!(Rule, verdict) == abi::RULE_OFF_VERDICT);
    assert!(offset_of!(Rule, policy) == abi::RULE_OFF_POLICY);

    assert!(size_of::<RuleList>() == abi::RULE_LIST_SIZE);
    assert!(offset_of!(RuleList, count) == abi::RULE_LIST_OFF_COUNT);
    assert!(offset_of!(RuleList, pad) == abi::RULE_LIST_OFF_PAD);
    assert!(offset_of!(RuleList, rules) == abi::RULE_LIST_OFF_RULES);

    assert!(size_of::<ImageKey>() == abi::IMAGE_KEY_SIZE);
    assert!(offset_of!(ImageKey, cgroup_id) == abi::IMAGE_KEY_OFF_CGROUP_ID);
    assert!(offset_of!(ImageKey, ino) == abi::IMAGE_KEY_OFF_INO);
    assert!(offset_of!(ImageKey, ctime_sec) == abi::IMAGE_KEY_OFF_CTIME_SEC);
    assert!(offset_of!(ImageKey, ctime_nsec) == abi::IMAGE_KEY_OFF_CTIME_NSEC);
    assert!(offset_of!(ImageKey, dev) == abi::IMAGE_KEY_OFF_DEV);
};

// SAFETY: each is `repr(C)` (or packed) of integers and integer arrays with no padding bytes the
// kernel could leave uninitialized (the layout assertions above place every byte), so any bit
// pattern is a valid value and every byte is initialized.
unsafe impl aya::Pod for ProcState {}
unsafe impl aya::Pod for VerdictEntry {}
unsafe impl aya::Pod for RulesetEntry {}
unsafe impl aya::Pod for RuleKeyData {}
unsafe impl aya::Pod for Rule {}
unsafe impl aya::Pod for RuleList {}
unsafe impl aya::Pod for ImageKey {}

impl RuleList {
    /// The list of `rules`, or `None` when there are more than [`RULES_PER_PREFIX`].
    pub fn new(rules: &[Rule]) -> Option<Self> {
        if rules.len() > RULES_PER_PREFIX {
            return None;
        }
        let mut list = Self {
            count: rules.len() as u32,
            pad: 0,
            rules: [Rule::default(); RULES_PER_PREFIX],
        };
        list.rules[..rules.len()].copy_from_slice(rules);
        Some(list)
    }

    /// The rules in use.
    pub fn rules(&self) -> &[Rule] {
        &self.rules[..(self.count as usize).min(RULES_PER_PREFIX)]
    }
}

/// An address prefix as the `RULES` trie keys it: IPv6, with IPv4 mapped into `::ffff:0:0/96`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The first address.
    pub address: Ipv6Addr,
    /// Leading bits that count, 0 to 128.
    pub length: u8,
}

impl Prefix {
    /// Every address.
    pub const ANY: Prefix = Prefix {
        address: Ipv6Addr::UNSPECIFIED,
        length: 0,
    };

    /// One address.
    pub fn host(address: IpAddr) -> Self {
        Self {
            address: mapped(address),
            length: 128,
        }
    }

    /// The trie key of this prefix in rule set `ruleset`.
    pub fn key(&self, ruleset: u32) -> Key<RuleKeyData> {
        Key::new(
            32 + u32::from(self.length.min(128)),
            RuleKeyData {
                ruleset,
                addr: self.address.octets(),
            },
        )
    }
}

/// `address` as IPv6 (IPv4 mapped into `::ffff:0:0/96`), as the programs see destinations.
pub fn mapped(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A device number as `stat` gives it (`st_dev`) in the kernel's internal encoding
/// (`major << 20 | minor`), the one `struct super_block` holds.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xfffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_lists_hold_at_most_the_kernels_number_of_rules() {
        let rule = Rule {
            port_first: 443,
            port_last: 443,
            protocol: abi::PROTO_TCP as u8,
            verdict: abi::VERDICT_ALLOW as u8,
            policy: 3,
        };
        let list = RuleList::new(&[rule; 3]).unwrap();
        assert_eq!(list.rules(), &[rule; 3]);
        assert!(RuleList::new(&vec![rule; RULES_PER_PREFIX]).is_some());
        assert!(RuleList::new(&vec![rule; RULES_PER_PREFIX + 1]).is_none());
    }

    #[test]
    fn prefixes_map_ipv4_into_ipv6_and_devices_use_the_kernel_encoding() {
        let host = Prefix::host("10.1.2.3".parse().unwrap());
        assert_eq!(host.address.to_string(), "::ffff:10.1.2.3");
        let key = host.key(7);
        assert_eq!(key.prefix_len(), 160);
        assert_eq!({ key.data().ruleset }, 7);
        assert_eq!(Prefix::ANY.key(7).prefix_len(), 32);
        // 8:1 (sda1): st_dev 0x801; kernel 8 << 20 | 1.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 300)), (259 << 20) | 300);
    }
}
