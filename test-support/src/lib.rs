//! Helpers shared by the workspace's tests, examples and benchmarks (a dev-dependency only).
//!
//! - [`require`]: a test that needs root, BPF, dockerd or a tool skips outside CI, loudly, and
//!   fails in CI (`CI=true`), where a missing prerequisite must never pass silently.
//! - [`is_root`], [`in_ci`].
//! - [`cgroup::TestCgroup`]: a cgroup v2 of a test's own, to attach a hook to and start
//!   processes in.
//! - [`connector`]: a C program tests drive step by step (connects, fork, exec, threads).
//! - [`reset_on_close`], [`deep_backlog`]: sockets for tests and benchmarks that make tens of
//!   thousands of loopback connections.

pub mod cgroup;
pub mod connector;
pub mod docker;
pub mod process;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// Whether this run is CI, where a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns whether a test needing `what` can run. Outside CI a missing prerequisite skips the
/// test with a line on the terminal (written past the test harness's output capture); in CI it
/// fails the test.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if in_ci() {
        panic!("CI=true but a prerequisite is missing: {what}");
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED (outside CI): needs {what}"
    );
    false
}

/// Makes `stream` close with a reset instead of a FIN, so that no TIME_WAIT entry is left
/// behind and a flood of connects does not run out of ephemeral ports.
pub fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a pointer to a live `linger` of the size passed.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Gives `listener` a backlog of 4096: with std's default, a briefly starved accept thread
/// makes SYNs drop and connects wait a second for their retransmission.
pub fn deep_backlog(listener: &TcpListener) {
    // SAFETY: listen on a valid, bound socket.
    let result = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    assert_eq!(result, 0, "listen: {}", std::io::Error::last_os_error());
}

/// Spawns `command`, trying again while the kernel answers `ETXTBSY`: a binary a test just
/// wrote is "busy" while any process forked meanwhile by another test thread still holds the
/// descriptor it was written through (until that child execs).
pub fn spawn_retrying(command: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
