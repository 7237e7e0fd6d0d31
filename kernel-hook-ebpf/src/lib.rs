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

/// The clang that compiled [`object`] in this build, or `None` when the committed object was
/// used.
pub fn compiled_by() -> Option<&'static str> {
    Some(env!("KERNEL_HOOK_EBPF_COMPILED_BY")).filter(|c| !c.is_empty())
}

/// The size of one event record (`struct hook_event` in `bpf/hook.h`).
pub const EVENT_SIZE: usize = 80;

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
            "tracepoint/sched/sched_process_exec",
            "tracepoint/sched/sched_process_exit",
            ".BTF",
        ] {
            assert!(text.contains(section), "missing {section}");
        }
    }

    #[test]
    fn the_committed_object_matches_its_sources() {
        let bpf = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf");
        let committed = std::fs::read(format!("{bpf}/hook.bpf.o")).unwrap();
        match compiled_by() {
            // Built from source in this build: the committed object must be the same bytes.
            Some(clang) => assert!(
                committed == object(),
                "bpf/hook.bpf.o differs from what {clang} builds from the sources: run \
                 kernel-hook-ebpf/update-object.sh and commit the result"
            ),
            // Without clang, build.rs already refused a stale object; it is the one embedded.
            None => assert_eq!(committed, object()),
        }
    }
}
