//! Bad input to the CLI: a one-line reason and a non-zero exit, never a panic.

mod common;

use common::{agent, run};

fn fails_with(args: &[&str], needles: &[&str]) {
    let output = run(agent().args(args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?} printed labels");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn non_numeric_pid() {
    fails_with(&["inspect", "abc"], &["invalid pid \"abc\""]);
    fails_with(&["inspect", "-1"], &["invalid pid"]);
    fails_with(&["inspect", "0"], &["invalid pid"]);
    fails_with(&["inspect", "99999999999"], &["invalid pid"]);
}

#[test]
fn pid_that_does_not_exist() {
    let pid = (4_000_000..4_194_304)
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .unwrap();
    fails_with(
        &["inspect", &pid.to_string()],
        &["no such process", &pid.to_string()],
    );
}

#[test]
fn invalid_configuration_names_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let file = path.to_str().unwrap();
    std::fs::write(&path, "collectors:\n  procfs:\n    extractEnv: true\n").unwrap();
    fails_with(
        &["inspect", "self", "--config", file],
        &[file, "unknown field `extractEnv`", "extractEnvs"],
    );
    std::fs::write(&path, "collectors:\n  procfs:\n    extractEnvs: maybe\n").unwrap();
    fails_with(
        &["inspect", "self", "--config", file],
        &[file, "collectors.procfs.extractEnvs", "boolean"],
    );
    std::fs::write(&path, "collectors:\n  dockr: {}\n").unwrap();
    fails_with(
        &["inspect", "self", "--config", file],
        &[file, "dockr", "procfs"],
    );
    let missing = dir.path().join("absent.yaml");
    fails_with(
        &["inspect", "self", "--config", missing.to_str().unwrap()],
        &["absent.yaml", "cannot read"],
    );
}

#[test]
fn unreadable_environ_is_a_partial_status_not_a_failure() {
    // As root nothing is unreadable by permission; the fixture puts a directory where environ is.
    let case = common::fixture("hosts/edge");
    let config = case.join("config.yaml");
    let output = run(agent()
        .args(["inspect", "500", "--config", config.to_str().unwrap()])
        .env("HOST_PROC", case.join("proc"))
        .env("HOST_SYS", case.join("sys"))
        .env("HOST_ETC", case.join("etc")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("# procfs (process): partial: environment:"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("process:cmdline: locked"));
}

#[test]
fn enforce_mode_needs_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "hook:\n  enabled: false\n  mode: enforce\n").unwrap();
    let output = common::run(
        common::agent()
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hook.enabled: is false, but hook.mode is enforce"),
        "{stderr}"
    );

    // `auto` cannot let an enforcing agent run without its hook: a cgroup root that is not
    // cgroup v2 stops the start, naming why.
    std::fs::write(
        &config,
        format!(
            "hook:\n  enabled: auto\n  mode: enforce\n  cgroupRoot: {}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let output = common::run(
        common::agent()
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot attach the kernel hook, which hook.mode: enforce needs")
            && stderr.contains("no cgroup v2 hierarchy at"),
        "{stderr}"
    );
}

#[test]
fn the_former_imds_mock_subcommand_names_the_binary_it_moved_to() {
    let output = run(agent().args(["imds-mock", "--cloud", "ec2"]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run `imds-mock`"), "{stderr}");
}
