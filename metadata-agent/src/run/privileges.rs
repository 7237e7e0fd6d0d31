//! Least privilege: once the agent has started (the hook loaded and attached, maps pinned, its
//! listener bound), it keeps only the capabilities it needs to go on resolving processes —
//! `CAP_SYS_PTRACE` (other users' `/proc/<pid>/exe`, `fd`, `environ`) and
//! `CAP_DAC_READ_SEARCH` (their files and executables) — and drops every other from its
//! effective, permitted, inheritable and ambient sets. The hook's maps are written through the
//! descriptors it already holds, which needs no capability.

/// `CAP_DAC_READ_SEARCH`.
const CAP_DAC_READ_SEARCH: u32 = 2;
/// `CAP_SYS_PTRACE`.
const CAP_SYS_PTRACE: u32 = 19;
/// The capabilities kept after start-up.
pub const KEPT: [(u32, &str); 2] = [
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability but [`KEPT`] (of those the process has). Returns the names kept.
pub fn drop_unneeded() -> std::io::Result<Vec<&'static str>> {
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two `Data` for version 3, which `data` holds.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut keep = [0u32; 2];
    let mut kept = Vec::new();
    for (cap, name) in KEPT {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        if data[word].permitted & bit != 0 {
            keep[word] |= bit;
            kept.push(name);
        }
    }
    let lowered = [
        Data {
            effective: keep[0],
            permitted: keep[0],
            inheritable: 0,
        },
        Data {
            effective: keep[1],
            permitted: keep[1],
            inheritable: 0,
        },
    ];
    // SAFETY: clears the ambient set; no pointers.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    // SAFETY: capset reads two `Data` for version 3; lowering needs no privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, lowered.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(kept)
}
