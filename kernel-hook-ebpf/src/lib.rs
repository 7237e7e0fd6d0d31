//! The kernel hook's BPF programs, compiled from `bpf/hook.bpf.c` (see that file for what each
//! program does), embedded for the `kernel-hook` crate to load.
//!
//! The object is compiled by clang at build time when clang is installed; otherwise the
//! committed `bpf/hook.bpf.o` is used, which `bpf/hook.bpf.o.sources` ties to its sources.

/// 8-byte aligned bytes, as the ELF parser expects.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT_ALIGNED: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/hook.bpf.o")));

/// The BPF object (ELF with BTF).
pub fn object() -> &'static [u8] {
    &OBJECT_ALIGNED.0
}

/// The object's identity: the first 16 hex digits of its SHA-256. Pins are kept per object, so
/// an agent never adopts maps another build laid out.
pub fn object_id() -> &'static str {
    env!("KERNEL_HOOK_EBPF_OBJECT_ID")
}

/// The clang that compiled [`object`] in this build, or `None` when the committed object was
/// used.
pub fn compiled_by() -> Option<&'static str> {
    Some(env!("KERNEL_HOOK_EBPF_COMPILED_BY")).filter(|c| !c.is_empty())
}

/// The numbers `bpf/hook.h` defines, generated from it at build time: event kinds
/// (`EVENT_*`), protocols (`PROTO_*`), verdicts (`VERDICT_*`), decisions (`DECISION_*`), fixed
/// rule set ids (`RULESET_*`), settings indexes (`SETTING_*`), map sizes (`MAX_*`) and the layout
/// of every shared struct (`<STRUCT>_SIZE`, `<STRUCT>_OFF_<FIELD>`), which `_Static_assert`s in
/// the header hold to the structs.
pub mod abi {
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

/// The size of one event record (`struct hook_event` in `bpf/hook.h`).
pub const EVENT_SIZE: usize = abi::HOOK_EVENT_SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_is_a_bpf_elf_with_every_program() {
        let object = object();
        assert_eq!(&object[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247, "EM_BPF");
        let text = String::from_utf8_lossy(object);
        for section in [
            "cgroup/connect4",
            "cgroup/connect6",
            "cgroup/sendmsg4",
            "cgroup/sendmsg6",
            "raw_tracepoint/sched_process_fork",
            "raw_tracepoint/sched_process_exec",
            "raw_tracepoint/sched_process_exit",
            "raw_tracepoint/cgroup_attach_task",
            ".BTF",
        ] {
            assert!(text.contains(section), "missing {section}");
        }
    }

    /// `bpf/hook.bpf.o.sources`: the SHA-256 of the sources and of the object.
    fn record() -> (String, String) {
        let record = std::fs::read_to_string(format!("{BPF}/hook.bpf.o.sources")).unwrap();
        let field = |name: &str| {
            record
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("hook.bpf.o.sources has no `{name}` line"))
                .trim()
                .to_owned()
        };
        (field("sources"), field("object"))
    }

    const BPF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf");

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn the_committed_object_is_the_one_recorded_for_the_current_sources() {
        let (sources, recorded_object) = record();
        let current: Vec<u8> = ["hook.bpf.c", "hook.h", "kernel.h"]
            .iter()
            .flat_map(|file| std::fs::read(format!("{BPF}/{file}")).unwrap())
            .collect();
        let stale = "run kernel-hook-ebpf/update-object.sh and commit bpf/hook.bpf.o with \
                     bpf/hook.bpf.o.sources";
        assert_eq!(
            sha256_hex(&current),
            sources,
            "the BPF sources changed since the object was built: {stale}"
        );
        let committed = std::fs::read(format!("{BPF}/hook.bpf.o")).unwrap();
        assert_eq!(
            sha256_hex(&committed),
            recorded_object,
            "bpf/hook.bpf.o is not the object recorded for its sources: {stale}"
        );
        // Built from source in this build: the committed object must be the same bytes.
        if let Some(clang) = compiled_by() {
            assert!(
                committed == object(),
                "bpf/hook.bpf.o differs from what {clang} builds from the sources: {stale}"
            );
        }
    }

    #[test]
    fn the_header_numbers_are_exported() {
        assert_eq!(abi::EVENT_CONNECT, 1);
        assert_eq!(abi::VERDICT_DENY, 2);
        assert_eq!(abi::SETTING_PENDING_VERDICT, 1);
        assert_eq!(EVENT_SIZE, abi::HOOK_EVENT_OFF_PARENT_START + 8);
        assert_eq!(
            abi::RULE_LIST_SIZE,
            8 + abi::RULES_PER_PREFIX as usize * abi::RULE_SIZE
        );
    }
}
