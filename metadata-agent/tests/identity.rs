//! Identity a process cannot forge (issue 18), against a real Docker daemon and real cgroups:
//! a process that names a running container from a cgroup it made, or from a cgroup Docker did
//! not put the container in, gets none of the container's labels, while the container's own
//! process does, with trust `runtime`.

mod common;

use std::path::Path;

use common::cgroups::{Cgroups, v2_root};
use common::docker::{Dockerd, missing_prerequisite};
use metadata_agent::config::Config;
use metadata_agent::resolver::Resolution;
use metadata_agent::run::Agent;

/// An agent with the hook off, reading the host and the private Docker daemon at `socket`,
/// with the policies of `policies` (a file), denying what none allows.
fn agent(socket: &Path, policies: &Path) -> Agent {
    let mut config = Config::default();
    config.hook.enabled = collectors::config::Enabled::Never;
    config.resolver.prestart = false;
    config.collectors.docker.socket_path = socket.to_str().unwrap().to_owned();
    config.policies.path = Some(policies.to_owned());
    config.policies.default_action = selectors::Action::Deny;
    Agent::build(config).unwrap()
}

/// The verdict the agent's policies give `resolution`, with its trust classes.
fn verdict(agent: &Agent, resolution: &Resolution) -> selectors::Action {
    agent
        .state
        .policies
        .current()
        .evaluate_with(&resolution.labels, &resolution.trust)
        .verdict
}

fn docker_status(resolution: &Resolution) -> (&'static str, String) {
    let report = resolution
        .collectors
        .iter()
        .find(|report| report.name == "docker")
        .unwrap();
    (
        report.status.state(),
        report.status.detail().unwrap_or_default(),
    )
}

fn docker_keys(resolution: &Resolution) -> Vec<&str> {
    resolution
        .labels
        .iter()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with("docker:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_look_alike_cgroup_never_gets_a_running_containers_identity() {
    let missing = missing_prerequisite();
    if !common::require(missing.is_none(), missing.unwrap_or_default()) {
        return;
    }
    let docker = Dockerd::start();
    docker.import_busybox_image("ma-identity:1");
    let id = docker.ok(&[
        "run",
        "-d",
        "--name",
        "ma-allowed",
        "--label",
        "role=payments",
        "ma-identity:1",
        "sleep",
        "300",
    ]);
    let real_pid: u32 = docker
        .ok(&["inspect", "-f", "{{.State.Pid}}", &id])
        .parse()
        .unwrap();
    // The container may connect, by its id, only where the id is more than a claim.
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.yaml");
    std::fs::write(
        &policies,
        format!(
            "policies:\n  - name: payments\n    action: allow\n    requireTrusted: true\n    \
             selectors:\n      - process:container:id: {id}\n"
        ),
    )
    .unwrap();
    let agent = agent(&docker.socket, &policies);
    let resolver = &agent.state.resolver;

    // The container's own process: its labels, vouched for by Docker.
    let real = resolver.resolve(real_pid).await.unwrap();
    assert_eq!(
        real.labels.get("docker:id"),
        [id.as_str()],
        "{:?}",
        real.labels
    );
    assert_eq!(real.labels.get("docker:label:role"), ["payments"]);
    assert_eq!(real.trust.get("docker:label:role").as_str(), "runtime");
    assert_eq!(real.trust.get("process:container:id").as_str(), "runtime");
    assert_eq!(
        real.container.as_ref().map(|c| c.id.as_str()),
        Some(id.as_str())
    );
    // In its own mount namespace, but a verified container's: the binary path is trusted.
    assert_eq!(real.trust.get("process:binary:path").as_str(), "kernel");
    assert_eq!(verdict(&agent, &real), selectors::Action::Allow);

    // An unprivileged user names the container from its own delegated subtree (what
    // `systemd-run --user --scope -u docker-<id>` makes), while Docker's entry is cached.
    let delegated = "user.slice/user-1000.slice/user@1000.service";
    let forged = Cgroups::spawn_delegated(
        &v2_root(),
        &format!("{delegated}/app.slice/docker-{id}.scope"),
        Some((delegated, 1000)),
    );
    let answer = resolver.resolve(forged.child.id()).await.unwrap();
    assert_eq!(
        docker_keys(&answer),
        Vec::<&str>::new(),
        "{:?}",
        answer.labels
    );
    assert_eq!(answer.labels.get("process:uid"), ["1000"]);
    assert_eq!(answer.labels.get("process:container:id"), [id.as_str()]);
    assert_eq!(answer.trust.get("process:container:id").as_str(), "self");
    assert!(answer.container.is_none());
    // The same container id, claimed: the trusted policy does not let it through.
    assert_eq!(verdict(&agent, &answer), selectors::Action::Deny);
    let (state, reason) = docker_status(&answer);
    assert_eq!(state, "not_applicable", "{reason}");
    assert!(
        reason.contains("user@1000.service") && reason.contains("uid 1000"),
        "{reason}"
    );
    drop(forged);

    // Root-owned, outside any user's subtree, but not where Docker runs the container: Docker
    // does not vouch for it.
    let elsewhere = Cgroups::spawn_into(&v2_root(), &format!("ma-test.slice/docker-{id}.scope"));
    let answer = resolver.resolve(elsewhere.child.id()).await.unwrap();
    assert_eq!(
        docker_keys(&answer),
        Vec::<&str>::new(),
        "{:?}",
        answer.labels
    );
    assert_eq!(answer.trust.get("process:container:id").as_str(), "self");
    let (state, reason) = docker_status(&answer);
    assert_eq!(state, "not_applicable", "{reason}");
    assert!(reason.contains("Docker places container"), "{reason}");
    drop(elsewhere);

    // The container's own process still gets its identity (the cache was not poisoned).
    resolver.forget(real_pid);
    let again = resolver.resolve(real_pid).await.unwrap();
    assert_eq!(again.labels.get("docker:label:role"), ["payments"]);
    assert_eq!(again.trust.get("process:container:id").as_str(), "runtime");
}
