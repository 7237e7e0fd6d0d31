//! The hook without privilege: a thread that dropped its capabilities gets a permission error
//! that says what is needed, with the kernel's answer as its cause.
//!
//! In its own test binary (its own process): aya probes the kernel's features once per process
//! and keeps the answer, so an unprivileged probe must not run before a privileged test's.

use kernel_hook::{Hook, detect_cgroup_root};
use test_support::{is_root, require};

/// Drops every capability of the calling thread (capabilities are per thread in Linux), as an
/// unprivileged agent would run.
fn drop_capabilities_of_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a header and two data structs of the v3 layout, both live here.
    let result = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    assert_eq!(result, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn without_privilege_attaching_is_a_permission_error() {
    if !require(
        is_root(),
        "root, to show that dropping its capabilities is what fails",
    ) {
        return;
    }
    let root = detect_cgroup_root().expect("a cgroup v2 hierarchy");
    let error = std::thread::spawn(move || {
        drop_capabilities_of_this_thread();
        Hook::attach(&root).err()
    })
    .join()
    .unwrap()
    .expect("attaching without capabilities failed");
    assert!(error.is_permission(), "{error:?}");
    assert!(error.to_string().contains("needs root"), "{error}");
    // The kernel's own answer is kept as the cause.
    let cause = std::error::Error::source(&error)
        .expect("a cause")
        .to_string();
    assert!(!cause.is_empty(), "{error:?}");
}
