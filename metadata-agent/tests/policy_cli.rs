//! `metadata-agent policy check|test`.

mod common;

use common::{agent, repo_root, run};

#[test]
fn check_accepts_the_example_and_lists_every_error_of_broken_files() {
    let example = repo_root().join("config/policies");
    let output = run(agent().arg("policy").arg("check").arg(&example));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok: 3 policies\n");
    // Warned about (not refused): policies a process can match or escape by its own choice.
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(
        warnings.contains("warning: policy `no-root-shells` (deny) depends on labels a process chooses for itself (process:name)"),
        "{warnings}"
    );
    assert!(!warnings.contains("audit-everything-else"), "{warnings}");

    // A policy that requires trusted labels, on a key the process chooses: refused.
    let trusted = tempfile::tempdir().unwrap();
    std::fs::write(
        trusted.path().join("t.yaml"),
        "policies:\n  - name: t\n    action: allow\n    requireTrusted: true\n    selectors:\n      \
         - k8s:label:app: web\n        process:name: nginx\n",
    )
    .unwrap();
    let output = run(agent().arg("policy").arg("check").arg(trusted.path()));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:7:9: policy `t` requires trusted labels, but `process:name` can never be trusted",
            trusted.path().join("t.yaml").display()
        )),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "policies:\n  - name: x\n    action: nope\n    selectors:\n      -\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "policies:\n  - name: x\n    selectors:\n      - k: {regex: \"(\"}\n",
    )
    .unwrap();
    let output = run(agent().arg("policy").arg("check").arg(dir.path()));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    let expected = [
        format!(
            "{}:3:13: invalid action `nope`, expected one of allow, deny, log",
            a.display()
        ),
        format!("{}:5:8: empty selector", a.display()),
        format!("{}:2:5: duplicate policy name `x`", b.display()),
        format!("{}:4:20: invalid regex \"(\" for `k`", b.display()),
        "4 error(s)".to_owned(),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} should start with {want:?}"
        );
    }
}

#[test]
fn test_with_a_text_label_set_prints_matches_in_precedence_order() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "process:name: bash\nprocess:uid: 0\n").unwrap();
    let output = run(agent()
        .args(["policy", "test", "--policies"])
        .arg(repo_root().join("config/policies/example.yaml"))
        .arg("--labels")
        .arg(&labels));
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "verdict: deny (policy no-root-shells)");
    assert!(lines[1].starts_with("  1. no-root-shells action=deny priority=0 specificity=2"));
    assert!(
        lines[2].starts_with("  2. audit-everything-else action=log priority=-100 specificity=0")
    );
    assert_eq!(lines.len(), 3);
}

#[test]
fn test_with_json_labels_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.json");
    std::fs::write(
        &labels,
        r#"{"labels": {"k8s:label:app": ["web"], "process:uid": ["0", "1001"]},
            "trust": {"k8s:label:app": "runtime", "process:uid": "kernel"}}"#,
    )
    .unwrap();
    let output = run(agent()
        .args(["policy", "test", "--json", "--explain", "--policies"])
        .arg(repo_root().join("config/policies"))
        .arg("--labels")
        .arg(&labels));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["verdict"], "allow");
    assert_eq!(document["matches"][0]["name"], "web-frontends");
    assert_eq!(document["matched"][0]["policy"], "web-frontends");
    assert!(
        document["near_misses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["policy"] == "no-root-shells")
    );
}

#[test]
fn test_with_a_live_pid_and_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    let pid = std::process::id().to_string();
    std::fs::write(
        &policy,
        format!("policies:\n  - name: me\n    action: deny\n    selectors:\n      - process:pid: {pid}\n"),
    )
    .unwrap();
    let output = run(agent()
        .args(["policy", "test", "--pid", &pid, "--policies"])
        .arg(&policy));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("verdict: deny (policy me)"));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"labels\": [1]}").unwrap();
    let output = run(agent()
        .args(["policy", "test", "--policies"])
        .arg(&policy)
        .arg("--labels")
        .arg(&bad));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a JSON label set"));
    let output = run(agent()
        .args(["policy", "test", "--pid", "nope", "--policies"])
        .arg(&policy));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid pid"));
}

#[test]
fn test_with_a_destination_decides_per_destination_and_explains_the_to_entries() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("p.yaml");
    std::fs::write(
        &policies,
        "policies:\n  - name: web-to-db\n    action: allow\n    selectors: [{k8s:label:app: web}]\n    \
         to:\n      - cidr: 10.0.0.0/8\n        ports: [5432]\n        protocol: tcp\n  \
         - name: web-nowhere-else\n    action: deny\n    selectors: [{k8s:label:app: web}]\n",
    )
    .unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "k8s:label:app: web\n").unwrap();
    let test = |to: &str| {
        let output = run(agent()
            .args(["policy", "test", "--explain", "--to", to, "--policies"])
            .arg(&policies)
            .arg("--labels")
            .arg(&labels));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let allowed = test("10.1.2.3:5432/tcp");
    assert!(
        allowed.starts_with("verdict: allow (policy web-to-db)"),
        "{allowed}"
    );
    assert!(allowed.contains("web-to-db to 0 at"), "{allowed}");
    assert!(allowed.contains("covers the destination"), "{allowed}");
    let denied = test("10.1.2.3:5433/tcp");
    assert!(
        denied.starts_with("verdict: deny (policy web-nowhere-else)"),
        "{denied}"
    );
    assert!(
        denied.contains("does not: port 5433 is not in 5432"),
        "{denied}"
    );
    let denied = test("10.1.2.3:5432/udp");
    assert!(denied.starts_with("verdict: deny"), "{denied}");

    let output = run(agent()
        .args(["policy", "test", "--to", "10.1.2.3", "--policies"])
        .arg(&policies)
        .arg("--labels")
        .arg(&labels));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("expected ADDRESS:PORT"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
