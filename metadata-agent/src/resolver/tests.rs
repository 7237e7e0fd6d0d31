//! The resolver against fake proc trees and real processes.

use super::caches::scoped_cache;
use super::*;
use collectors::cgroup::ContainersConfig;
use collectors::{HostRootsConfig, Subject};
use std::path::Path;
use std::time::Duration;

/// A proc tree holding one process.
struct FakeProc {
    dir: tempfile::TempDir,
}

impl FakeProc {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), "btime 1700000000\n").unwrap();
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes process `pid` started at `start` ticks, running `exe` with `cmdline`.
    fn process(&self, pid: u32, start: u64, exe: &str, cmdline: &str) {
        let dir = self.root().join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("status"),
            format!(
                "Name:\tx\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (x) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"),
        )
        .unwrap();
        std::fs::write(dir.join("cmdline"), format!("{cmdline}\0")).unwrap();
        let link = dir.join("exe");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, link).unwrap();
    }

    /// A resolver of this tree running only the collectors of `registry`.
    fn resolver_with(&self, registry: Registry) -> Resolver {
        Resolver::new(
            HostRoots::resolve(&HostRootsConfig {
                proc_root: self.root().to_owned(),
                sys_root: self.root().join("sys"),
                ..Default::default()
            }),
            registry,
            ResolverLimits::default(),
            Arc::new(Metrics::new()),
        )
        .with_container_placement(ContainersConfig {
            rootless_uids: vec![rustix::process::geteuid().as_raw()],
        })
    }

    /// Puts process `pid` into a container-shaped cgroup of this tree's cgroupfs (under
    /// `<sys>/fs/cgroup/unified`), in the subtree of the uid running the test, which
    /// `resolver_with` lists as a rootless runtime's: a placement that passes the check whether
    /// the test runs as root or not.
    fn in_container(&self, pid: u32, id: &str) {
        let uid = rustix::process::geteuid().as_raw();
        let cgroup = format!("/user.slice/user-{uid}.slice/user@{uid}.service/docker-{id}.scope");
        std::fs::create_dir_all(self.root().join("sys/fs/cgroup/unified").join(&cgroup[1..]))
            .unwrap();
        std::fs::write(
            self.root().join(format!("{pid}/cgroup")),
            format!("0::{cgroup}\n"),
        )
        .unwrap();
    }

    fn resolver(&self) -> Resolver {
        let roots = HostRoots::resolve(&HostRootsConfig {
            proc_root: self.root().to_owned(),
            sys_root: self.root().join("sys"),
            etc_root: self.root().join("etc"),
        });
        let config = crate::config::Config::default();
        let registry = collectors::build_registry(&config.collectors, &roots).unwrap();
        Resolver::new(
            roots,
            registry,
            ResolverLimits::default(),
            Arc::new(Metrics::new()),
        )
    }
}

#[tokio::test]
async fn a_reused_pid_gets_fresh_labels_and_an_unchanged_process_is_cached() {
    let proc = FakeProc::new();
    proc.process(4242, 100, "/usr/bin/first", "first --serve");
    let resolver = proc.resolver();
    let first = resolver.resolve(4242).await.unwrap();
    assert!(!first.cached);
    assert_eq!(first.labels.get("process:cmdline"), ["first --serve"]);

    // Same process (same start time): the cached labels are served.
    proc.process(4242, 100, "/usr/bin/first", "changed in place");
    let again = resolver.resolve(4242).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.labels.get("process:cmdline"), ["first --serve"]);

    // The PID now names another process (new start time): nothing is inherited.
    proc.process(4242, 200, "/usr/bin/first", "second --client");
    let reused = resolver.resolve(4242).await.unwrap();
    assert!(!reused.cached);
    assert_eq!(reused.start_time_ticks, Some(200));
    assert_eq!(reused.labels.get("process:cmdline"), ["second --client"]);
}

#[tokio::test]
async fn an_unrecognized_container_runtime_is_named_in_the_container_statuses() {
    let proc = FakeProc::new();
    proc.process(90, 1, "/sbin/init", "init");
    std::fs::write(
        proc.root().join("90/cgroup"),
        "0::/lxc.payload.web1/init.scope\n",
    )
    .unwrap();
    let resolution = proc.resolver().resolve(90).await.unwrap();
    let docker = resolution
        .collectors
        .iter()
        .find(|r| r.name == "docker")
        .unwrap();
    assert_eq!(docker.status.state(), "not_applicable");
    let reason = docker.status.detail().unwrap();
    assert!(
        reason.contains("unrecognized container runtime"),
        "{reason}"
    );
    assert!(reason.contains("/lxc.payload.web1/init.scope"), "{reason}");
    assert!(resolution.container.is_none());
}

#[tokio::test]
async fn an_exec_is_noticed_from_the_executable_link() {
    let proc = FakeProc::new();
    proc.process(77, 5, "/bin/sh", "sh -c run");
    let resolver = proc.resolver();
    resolver.resolve(77).await.unwrap();
    proc.process(77, 5, "/usr/bin/server", "server");
    let after = resolver.resolve(77).await.unwrap();
    assert!(!after.cached);
    assert_eq!(after.labels.get("process:binary:path"), ["/usr/bin/server"]);
}

#[tokio::test]
async fn forget_and_sweep_drop_entries_of_ended_processes() {
    let proc = FakeProc::new();
    proc.process(10, 1, "/bin/a", "a");
    proc.process(11, 1, "/bin/b", "b");
    let resolver = proc.resolver();
    resolver.resolve(10).await.unwrap();
    resolver.resolve(11).await.unwrap();
    assert_eq!(resolver.cached_processes(), 2);
    resolver.forget(10);
    assert_eq!(resolver.cached_processes(), 1);
    // An exec older than the collection keeps the entry; a newer one drops it.
    resolver.forget_collected_before(11, 1, 0);
    assert_eq!(resolver.cached_processes(), 1);
    resolver.forget_collected_before(11, 1, u64::MAX);
    assert_eq!(resolver.cached_processes(), 0);
    // An exit names its process: its entry goes, with its execution returned.
    resolver.resolve(11).await.unwrap();
    assert_eq!(resolver.cached_processes(), 1);
    // A late exit or exec event of an earlier process with this PID leaves this one's entry.
    resolver.forget_ended(11, 0);
    resolver.forget_collected_before(11, 0, u64::MAX);
    assert_eq!(resolver.cached_processes(), 1);
    resolver.forget_ended(11, 1);
    assert_eq!(resolver.cached_processes(), 0);
    resolver.resolve(11).await.unwrap();
    std::fs::remove_dir_all(proc.root().join("11")).unwrap();
    resolver.sweep();
    assert_eq!(resolver.cached_processes(), 0);
    assert!(matches!(
        resolver.resolve(11).await,
        Err(ResolveError::Process(ProcessError::NoSuchProcess(11)))
    ));
}

#[tokio::test]
async fn prestart_fills_the_caches_without_keeping_answers() {
    let proc = FakeProc::new();
    for pid in 20..25 {
        proc.process(pid, 1, "/bin/a", &format!("a {pid}"));
    }
    let resolver = Arc::new(proc.resolver());
    assert_eq!(resolver.prestart(2).await, 5);
    assert_eq!(resolver.cached_processes(), 5);
    // Answers are made by lookups, not by warming the caches.
    assert_eq!(resolver.answers.len(), 0);
    let looked_up = resolver.resolve(22).await.unwrap();
    assert!(
        looked_up.cached,
        "the first lookup finds what prestart collected"
    );
    assert_eq!(looked_up.labels.get("process:cmdline"), ["a 22"]);
}

#[tokio::test]
async fn concurrent_lookups_share_one_collection() {
    let proc = FakeProc::new();
    proc.process(5, 1, "/bin/a", "a");
    let resolver = Arc::new(proc.resolver());
    let lookups: Vec<_> = (0..16)
        .map(|_| {
            let resolver = Arc::clone(&resolver);
            tokio::spawn(async move { resolver.resolve(5).await.unwrap() })
        })
        .collect();
    for lookup in lookups {
        lookup.await.unwrap();
    }
    let runs = resolver
        .collector_states()
        .into_iter()
        .find(|s| s.name == "procfs")
        .unwrap()
        .runs;
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn a_bounded_cache_evicts_and_counts() {
    let proc = FakeProc::new();
    for pid in 1..=40 {
        proc.process(pid, 1, "/bin/a", "a");
    }
    let mut resolver = proc.resolver();
    let metrics = Arc::new(Metrics::new());
    resolver.metrics = Arc::clone(&metrics);
    resolver.processes = scoped_cache(8, 1 << 30, Scope::Process, &metrics);
    for pid in 1..=40 {
        resolver.resolve(pid).await.unwrap();
    }
    assert!(
        resolver.cached_processes() <= 8,
        "{}",
        resolver.cached_processes()
    );
    let evictions = metrics
        .cache_evictions
        .get_or_create(&Metrics::cache(Scope::Process))
        .get();
    assert!(evictions >= 32, "{evictions}");
}

/// A node collector that succeeds until it is told to fail.
struct Flaky(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl collectors::Collector for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn scope(&self) -> Scope {
        Scope::Node
    }
    fn label_keys(&self) -> &'static [collectors::KeySpec] {
        collectors::key_specs![labels::Trust::Node; "flaky:id"]
    }
    async fn collect(
        &self,
        _: &Subject,
    ) -> Result<collectors::Collected, collectors::CollectError> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(collectors::CollectError::failed("endpoint down"));
        }
        let mut labels = LabelSet::new();
        labels.insert("flaky:id", "i-123");
        Ok(collectors::Collected::complete(labels))
    }
}

#[tokio::test]
async fn a_failed_node_refresh_keeps_the_last_good_labels_as_stale() {
    let proc = FakeProc::new();
    let flaky = Arc::new(Flaky(Default::default()));
    let mut registry = Registry::new();
    registry.register(flaky.clone(), true, Duration::from_millis(500));
    let resolver = proc.resolver_with(registry);
    assert!(!resolver.node_ready());
    resolver.refresh_node().await;
    assert!(resolver.node_ready());
    assert_eq!(resolver.node().labels.get("flaky:id"), ["i-123"]);
    flaky.0.store(true, std::sync::atomic::Ordering::SeqCst);
    resolver.refresh_node().await;
    let node = resolver.node();
    assert_eq!(node.labels.get("flaky:id"), ["i-123"]);
    let status = &node.reports[0].status;
    assert_eq!(status.state(), "stale");
    assert!(
        status.detail().unwrap().contains("endpoint down"),
        "{status:?}"
    );
    let state = &resolver.collector_states()[0];
    assert_eq!(state.errors, 1);
    assert_eq!(state.last_error.as_deref(), Some("endpoint down"));
}

/// A container collector whose first answer is partial (a pod status without the container
/// yet), complete afterwards.
struct LateStatus(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl collectors::Collector for LateStatus {
    fn name(&self) -> &'static str {
        "late"
    }
    fn scope(&self) -> Scope {
        Scope::Container
    }
    fn label_keys(&self) -> &'static [collectors::KeySpec] {
        collectors::key_specs![labels::Trust::Runtime; "late:name", "late:pod"]
    }
    async fn collect(
        &self,
        _: &Subject,
    ) -> Result<collectors::Collected, collectors::CollectError> {
        let calls = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut labels = LabelSet::new();
        labels.insert("late:pod", "web");
        if calls == 0 {
            return Ok(collectors::Collected {
                labels,
                partial: Some("no status for the container yet".into()),
                ..Default::default()
            });
        }
        labels.insert("late:name", "app");
        Ok(collectors::Collected::complete(labels))
    }
}

#[tokio::test]
async fn a_partial_container_entry_is_collected_again_and_a_complete_one_is_kept() {
    let proc = FakeProc::new();
    proc.process(77, 100, "/usr/bin/app", "app");
    proc.in_container(77, &"c".repeat(64));
    let late = Arc::new(LateStatus(Default::default()));
    let mut registry = Registry::new();
    registry.register(late.clone(), true, Duration::from_millis(500));
    let resolver = proc.resolver_with(registry);
    let first = resolver.resolve(77).await.unwrap();
    assert!(!first.labels.contains_key("late:name"));
    resolver.forget(77);
    let second = resolver.resolve(77).await.unwrap();
    assert_eq!(second.labels.get("late:name"), ["app"]);
    resolver.forget(77);
    let third = resolver.resolve(77).await.unwrap();
    assert_eq!(third.labels.get("late:name"), ["app"]);
    assert_eq!(late.0.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_repeated_lookup_reuses_its_answer_until_an_entry_changes() {
    let proc = FakeProc::new();
    proc.process(60, 100, "/usr/bin/server", "server --a");
    let resolver = proc.resolver();
    let json =
        |bytes: &bytes::Bytes| -> serde_json::Value { serde_json::from_slice(bytes).unwrap() };
    let first = resolver.resolve_json(60).await.unwrap();
    assert_eq!(json(&first)["cached"], false);
    let second = resolver.resolve_json(60).await.unwrap();
    let third = resolver.resolve_json(60).await.unwrap();
    // The very same bytes: nothing was merged or serialized again.
    assert_eq!(second.as_ptr(), third.as_ptr());
    assert_eq!(json(&third)["cached"], true);
    // Both through JSON text: a float does not always survive the parse bit for bit.
    let resolved = serde_json::to_vec(&*resolver.resolve(60).await.unwrap()).unwrap();
    assert_eq!(json(&third), json(&resolved.into()));

    // New node labels (none were collected yet): a new answer, with them.
    assert!(json(&third)["labels"]["linuxos:kernel:release"].is_null());
    resolver.refresh_node().await;
    let after_refresh = resolver.resolve_json(60).await.unwrap();
    assert_ne!(after_refresh.as_ptr(), third.as_ptr());
    assert!(json(&after_refresh)["labels"]["linuxos:kernel:release"].is_array());
    assert_eq!(
        json(&after_refresh)["labels"]["process:cmdline"],
        serde_json::json!(["server --a"])
    );

    // The process exec'd: collected again, and the new answer kept.
    proc.process(60, 100, "/usr/bin/other", "other --b");
    let after_exec = json(&resolver.resolve_json(60).await.unwrap());
    assert_eq!(after_exec["cached"], false);
    assert_eq!(
        after_exec["labels"]["process:cmdline"],
        serde_json::json!(["other --b"])
    );
    let again = json(&resolver.resolve_json(60).await.unwrap());
    assert_eq!(again["cached"], true);
    assert_eq!(again["labels"], after_exec["labels"]);

    // A reused PID is another process, never the kept answer.
    proc.process(60, 200, "/usr/bin/server", "third");
    let reused = json(&resolver.resolve_json(60).await.unwrap());
    assert_eq!(reused["start_time_ticks"], 200);
    assert_eq!(
        reused["labels"]["process:cmdline"],
        serde_json::json!(["third"])
    );
}

#[tokio::test]
async fn a_kept_answer_follows_a_real_process_through_exec_and_exit() {
    use std::io::Write as _;
    let roots = HostRoots::default();
    let config = crate::config::Config::default();
    let registry = collectors::build_registry(&config.collectors, &roots).unwrap();
    let resolver = Resolver::new(
        roots,
        registry,
        ResolverLimits::default(),
        Arc::new(Metrics::new()),
    );
    // A shell that replaces itself with `sleep` when told to.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "read line; exec sleep 30"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let json =
        |bytes: &bytes::Bytes| -> serde_json::Value { serde_json::from_slice(bytes).unwrap() };
    let path = |answer: &serde_json::Value| answer["labels"]["process:binary:path"].clone();
    // A lookup in the middle of the spawn's exec, or before the hash is done (a loaded
    // machine), is given but not kept: asked until one is complete.
    let mut first = resolver.resolve_json(pid).await.unwrap();
    for _ in 0..100 {
        if !resolver.resolve(pid).await.unwrap().provisional() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        first = resolver.resolve_json(pid).await.unwrap();
    }
    let second = resolver.resolve_json(pid).await.unwrap();
    let third = resolver.resolve_json(pid).await.unwrap();
    assert_eq!(second.as_ptr(), third.as_ptr(), "the kept answer is given");
    assert_eq!(json(&third)["cached"], true);
    assert_eq!(path(&json(&third)), path(&json(&first)));
    assert!(resolver.answers.get(&pid).unwrap().dir.is_some());

    // exec: the kept answer is not given; the process is collected again.
    let shell = path(&json(&third));
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let mut after_exec = None;
    for _ in 0..200 {
        let answer = json(&resolver.resolve_json(pid).await.unwrap());
        if path(&answer) != shell {
            after_exec = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after_exec = after_exec.expect("the exec is seen");
    assert!(
        path(&after_exec)[0].as_str().unwrap().ends_with("/sleep"),
        "{after_exec}"
    );
    resolver.resolve_json(pid).await.unwrap();
    let kept = resolver.resolve_json(pid).await.unwrap();
    assert_eq!(path(&json(&kept)), path(&after_exec));

    // exit: never the kept answer.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(
        resolver.resolve_json(pid).await,
        Err(ResolveError::Process(ProcessError::NoSuchProcess(_)))
    ));
    // The sweep drops its entries and its kept answer (closing its directory).
    assert!(resolver.answers.get(&pid).is_some());
    resolver.sweep();
    assert!(resolver.answers.get(&pid).is_none());
}

#[tokio::test]
async fn a_thread_id_resolves_to_its_cached_process() {
    let proc = FakeProc::new();
    proc.process(50, 100, "/usr/bin/server", "server");
    // Thread 51 of process 50: its own stat, its status naming the thread group, and both
    // counting the group's two threads.
    proc.process(51, 101, "/usr/bin/server", "server");
    let status = proc.root().join("51/status");
    let text = std::fs::read_to_string(&status).unwrap();
    std::fs::write(&status, text.replace("Tgid:\t51", "Tgid:\t50")).unwrap();
    for pid in [50, 51] {
        let stat = proc.root().join(format!("{pid}/stat"));
        let text = std::fs::read_to_string(&stat).unwrap();
        std::fs::write(&stat, text.replace(" 20 0 1 0 ", " 20 0 2 0 ")).unwrap();
    }
    let resolver = proc.resolver();
    assert_eq!(resolver.resolve(50).await.unwrap().pid, 50);
    let thread = resolver.resolve(51).await.unwrap();
    assert_eq!((thread.pid, thread.cached), (50, true));
    assert_eq!(resolver.cached_pids(), vec![50]);
}

#[tokio::test]
async fn every_key_of_an_answer_has_its_trust_class() {
    let proc = FakeProc::new();
    proc.process(70, 100, "/usr/bin/server", "server --port 1");
    let resolver = proc.resolver();
    resolver.refresh_node().await;
    let resolution = resolver.resolve(70).await.unwrap();
    let keys: Vec<&str> = resolution.labels.iter().map(|(key, _)| key).collect();
    let classified: Vec<&str> = resolution.trust.iter().map(|(key, _)| key).collect();
    assert_eq!(keys, classified);
    let trust = |key: &str| resolution.trust.get(key).as_str();
    assert_eq!(trust("process:pid"), "kernel");
    assert_eq!(trust("process:uid"), "kernel");
    assert_eq!(trust("process:binary:path"), "kernel");
    assert_eq!(trust("process:cmdline"), "self");
    assert_eq!(trust("process:name"), "self");
    assert_eq!(trust("linuxos:kernel:release"), "node");
    let json = serde_json::to_value(&*resolution).unwrap();
    assert_eq!(json["trust"]["process:cmdline"], "self");
    assert_eq!(json["trust"]["process:pid"], "kernel");
}

#[tokio::test]
async fn an_answer_taken_in_the_middle_of_an_exec_is_not_kept() {
    // The kernel has switched the executable but not yet set up the new arguments: the answer
    // lacks them, and is collected again next time rather than kept for the process's life.
    let proc = FakeProc::new();
    proc.process(80, 100, "/usr/bin/new", "");
    let resolver = proc.resolver();
    let during = resolver.resolve(80).await.unwrap();
    assert!(!during.labels.contains_key("process:cmdline"));
    let procfs = &during.collectors[0];
    assert_eq!(procfs.status.state(), "partial");
    assert!(
        procfs.status.detail().unwrap().contains("exec in progress"),
        "{:?}",
        procfs.status
    );
    assert_eq!(resolver.cached_processes(), 0);
    proc.process(80, 100, "/usr/bin/new", "new --flag");
    let after = resolver.resolve(80).await.unwrap();
    assert!(!after.cached);
    assert_eq!(after.labels.get("process:cmdline"), ["new --flag"]);
    assert!(resolver.resolve(80).await.unwrap().cached);
}
