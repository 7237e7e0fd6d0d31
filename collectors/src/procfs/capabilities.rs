//! Capability bit numbers to `CAP_*` names (linux/capability.h).

/// `CAP_*` names indexed by bit number.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The names of the capabilities set in a `CapEff:` hex mask, lowest bit first. Bits newer than
/// this table are named `CAP_<bit>` so that none is lost. `None` for a malformed mask.
pub fn capability_names(hex_mask: &str) -> Option<Vec<String>> {
    let mask = u64::from_str_radix(hex_mask.trim(), 16).ok()?;
    Some(
        (0..64)
            .filter(|bit| mask & (1u64 << bit) != 0)
            .map(|bit| match NAMES.get(bit as usize) {
                Some(name) => (*name).to_owned(),
                None => format!("CAP_{bit}"),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_become_names() {
        assert_eq!(
            capability_names("0000000000000000").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            capability_names("0000000000003000").unwrap(),
            ["CAP_NET_ADMIN", "CAP_NET_RAW"]
        );
        let all = capability_names("000001ffffffffff").unwrap();
        assert_eq!(all.len(), 41);
        assert_eq!(all.last().unwrap(), "CAP_CHECKPOINT_RESTORE");
        assert_eq!(capability_names("0000020000000000").unwrap(), ["CAP_41"]);
        assert!(capability_names("zz").is_none());
    }
}
