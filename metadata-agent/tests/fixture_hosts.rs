//! `inspect` on fixture host trees (`tests/fixtures/hosts/<case>/`): for every
//! `expected/<pid>.txt`, the exact label output, and for every `expected/<pid>.status`, each
//! collector's state (and the start of its detail).
//!
//! A case is a directory holding `proc/`, `sys/`, `etc/`, an optional `config.yaml` and
//! `expected/`. Adding a case needs no code.

mod common;

use std::path::Path;

use common::{agent, fixture, run};

fn inspect(case: &Path, pid: &str, json: bool) -> std::process::Output {
    let mut command = agent();
    command
        .arg("inspect")
        .arg(pid)
        .env("HOST_PROC", case.join("proc"))
        .env("HOST_SYS", case.join("sys"))
        .env("HOST_ETC", case.join("etc"));
    if case.join("config.yaml").exists() {
        command.arg("--config").arg(case.join("config.yaml"));
    }
    if json {
        command.arg("--json");
    }
    run(&mut command)
}

/// The lines only one side has, marked `-` (expected) and `+` (got).
fn line_diff(want: &str, got: &str) -> String {
    let want_lines: Vec<&str> = want.lines().collect();
    let got_lines: Vec<&str> = got.lines().collect();
    let mut out = String::new();
    for line in &want_lines {
        if !got_lines.contains(line) {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for line in &got_lines {
        if !want_lines.contains(line) {
            out.push_str(&format!("+ {line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, other order)\n");
    }
    out
}

#[test]
fn every_fixture_host_gives_its_expected_labels_and_statuses() {
    let mut checked = 0;
    for case in std::fs::read_dir(fixture("hosts")).unwrap() {
        let case = case.unwrap().path();
        for expected in std::fs::read_dir(case.join("expected")).unwrap() {
            let expected = expected.unwrap().path();
            let pid = expected.file_stem().unwrap().to_str().unwrap().to_owned();
            match expected.extension().and_then(|e| e.to_str()) {
                Some("txt") => {
                    let output = inspect(&case, &pid, false);
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    assert!(
                        output.status.success(),
                        "{}: {pid}: {stderr}",
                        case.display()
                    );
                    let want = std::fs::read_to_string(&expected).unwrap();
                    let got = String::from_utf8(output.stdout).unwrap();
                    assert!(
                        got == want,
                        "{}: labels of {pid} differ (stderr: {stderr})\n{}",
                        case.display(),
                        line_diff(&want, &got)
                    );
                }
                Some("status") => {
                    let output = inspect(&case, &pid, true);
                    let document: serde_json::Value =
                        serde_json::from_slice(&output.stdout).unwrap();
                    for line in std::fs::read_to_string(&expected).unwrap().lines() {
                        let (name, rest) = line.split_once(": ").unwrap();
                        let (state, detail) = rest.split_once(": ").unwrap_or((rest, ""));
                        let report = document["collectors"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|c| c["name"] == name)
                            .unwrap_or_else(|| panic!("no report for {name}"));
                        assert_eq!(report["status"]["state"], state, "{pid} {name}: {report}");
                        let reason = report["status"]["reason"].as_str().unwrap_or("");
                        assert!(
                            reason.contains(detail.trim_end()),
                            "{pid} {name}: {reason:?} lacks {detail:?}"
                        );
                    }
                }
                _ => continue,
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} expectations found");
}

#[test]
fn json_rendering_matches_the_text_rendering() {
    let case = fixture("hosts/reference");
    let output = inspect(&case, "1789", true);
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["pid"], 1789);
    let labels = &document["labels"];
    assert_eq!(labels["process:gid:additional"], serde_json::json!(["999"]));
    assert_eq!(labels["sysfsdmi:chassis:type"], serde_json::json!(["1"]));
    let text = std::fs::read_to_string(case.join("expected/1789.txt")).unwrap();
    let pairs: usize = labels
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    assert_eq!(pairs, text.lines().count());
    assert!(document["resolved_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn missing_dmi_directory_is_unavailable_not_an_error() {
    let case = fixture("hosts/reference");
    let empty = tempfile::tempdir().unwrap();
    let output = run(agent()
        .args(["inspect", "1789", "--json"])
        .env("HOST_PROC", case.join("proc"))
        .env("HOST_SYS", empty.path())
        .env("HOST_ETC", case.join("etc")));
    assert!(output.status.success());
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let dmi = document["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sysfsdmi")
        .unwrap();
    assert_eq!(dmi["status"]["state"], "unavailable");
    assert!(
        !document["labels"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("sysfsdmi:"))
    );
}
