//! Helpers shared by the mock's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `imds-mock` binary under test.
pub fn mock_cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imds-mock"))
}

/// Runs a command and returns its output, panicking with context when it cannot start.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Installs the process-wide TLS provider once (the clients' HTTP stacks need one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for talking to the mock.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[allow(unused_imports)]
pub use test_support::{in_ci, require};
