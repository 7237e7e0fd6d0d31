//! The policy engine stays light: it depends on the label model, not on the collectors, so it
//! compiles no HTTP, TLS or container-runtime client.

#[test]
fn no_http_tls_or_docker_crate_is_in_the_dependency_tree() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "--prefix",
            "none",
            "--edges",
            "normal",
        ])
        .args(["--package", "selectors"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(tree.contains("labels v"), "{tree}");
    let heavy = [
        "collectors",
        "reqwest",
        "hyper",
        "rustls",
        "ring",
        "bollard",
        "k8s-openapi",
        "tokio",
    ];
    let found: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| heavy.contains(name))
        .collect();
    assert!(found.is_empty(), "selectors depends on {found:?}:\n{tree}");
}
