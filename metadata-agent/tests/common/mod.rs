//! Helpers shared by the integration tests.
#![allow(dead_code)]

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

/// `sha256:<hex>` of the file at `path`, as `sha256sum` computes it: the reference the agent's
/// `process:binary:hash` is checked against.
pub fn sha256sum(path: impl AsRef<std::path::Path>) -> String {
    let output = run(Command::new("sha256sum").arg(path.as_ref()));
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// An HTTP client for talking to the agent under test.
pub fn http_client() -> reqwest::Client {
    collectors::install_crypto_provider();
    reqwest::Client::new()
}

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use test_support::{in_ci, is_root, require};

pub mod cgroups;
pub mod daemon;
pub mod hook;
#[allow(unused_imports)]
pub use test_support::docker;
pub mod kubelet;
