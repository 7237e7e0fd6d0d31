//! The OpenAPI document checked against the running agent by a property-based API tester
//! (schemathesis, from PyPI): generated valid and invalid requests, every response checked
//! against the document (status codes, content types, schemas, no 5xx), with and without
//! bearer-token authentication.

mod common;

use std::process::Command;

use common::daemon::{Daemon, token_config};

fn schemathesis_available() -> bool {
    Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_schemathesis(daemon: &Daemon, extra: &[&str]) {
    let output = Command::new("schemathesis")
        .arg("run")
        .arg(daemon.url("/openapi.json"))
        .args(["--checks", "all", "--max-examples", "60"])
        // An endless stream: its response never ends, so it is tested in event_stream.rs.
        .args(["--exclude-path", "/events"])
        // Every warning but missing test data: container and pod ids exist only with running
        // containers, which tests/lookups.rs and tests/kubelet.rs give those lookups.
        .args([
            "--warnings",
            "missing_auth,base_url_mismatch,validation_mismatch,missing_deserializer,\
             unused_openapi_auth,unsupported_regex,method_not_allowed,constants_extraction,\
             unmatched_filter,unresolvable_reference,rate_limited,dictionary_mismatch,\
             timeout_units",
        ])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("cannot run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("No issues found"), "{stdout}");
}

#[test]
fn the_api_conforms_to_its_openapi_document() {
    if !common::require(
        schemathesis_available(),
        "schemathesis (pip install schemathesis)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policies = common::repo_root().join("config/policies/example.yaml");
    let policies = policies.to_str().unwrap();

    let open = Daemon::start(&["--listen", "127.0.0.1:0", "--policies", policies]);
    run_schemathesis(&open, &[]);
    let (status, _, log) = open.terminate();
    assert!(status.success());
    assert!(!log.contains("ERROR"), "{log}");

    let config = token_config(dir.path(), "schemathesis-token");
    let guarded = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--policies",
        policies,
        "--config",
        &config,
    ]);
    run_schemathesis(
        &guarded,
        &["-H", "Authorization: Bearer schemathesis-token"],
    );
}
