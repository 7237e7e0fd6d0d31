//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/fixtures/<relative>`.
pub fn fixture(relative: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(relative)
}

/// The agent binary under test, with no host-root overrides inherited from the caller.
pub fn agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_metadata-agent"));
    for var in ["HOST_PROC", "HOST_SYS", "HOST_ETC"] {
        command.env_remove(var);
    }
    command
}

/// Runs a command and returns its output, panicking with context when it cannot start.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Whether this run is CI, where a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
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

/// An HTTP client for talking to the agent under test.
pub fn http_client() -> reqwest::Client {
    collectors::install_crypto_provider();
    reqwest::Client::new()
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
pub mod daemon;
pub mod docker;
pub mod kubelet;
