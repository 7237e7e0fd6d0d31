//! A process's own identity, attacked as a local user would (issue 18), on real processes: a
//! binary overwritten in place with its mtime set back, a file replaced at the same path and
//! exec'd again, `setuid` and a move to another cgroup after the first lookup, huge sparse
//! executables, and a process in a mount namespace of its own.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metadata_agent::config::Config;
use metadata_agent::resolver::{Resolution, Resolver};
use metadata_agent::run::Agent;

/// The agent's resolver for this host, without the kernel hook.
fn resolver() -> Arc<Resolver> {
    let mut config = Config::default();
    config.hook.enabled = collectors::config::Enabled::Never;
    config.resolver.prestart = false;
    Arc::clone(&Agent::build(config).unwrap().state.resolver)
}

/// A copy of busybox at `<dir>/busybox` (busybox picks its applet from its second argument when
/// it is called `busybox`); `variant` flips a byte of its section headers, which the kernel's
/// loader does not read: another binary of the same size that runs the same.
fn busybox_copy(dir: &Path, variant: bool) -> PathBuf {
    let path = dir.join("busybox");
    let mut bytes = std::fs::read(common::docker::BUSYBOX).unwrap();
    if variant {
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// A child kept until dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `pid` has its arguments (its exec has finished), then resolves it.
async fn resolve(resolver: &Resolver, pid: u32) -> Arc<Resolution> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
        assert!(Instant::now() < deadline, "{pid} has no arguments");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    resolver.resolve(pid).await.unwrap()
}

fn prerequisites() -> bool {
    let missing = common::docker::missing_prerequisite();
    common::require(
        common::is_root() && Path::new(common::docker::BUSYBOX).exists(),
        missing.unwrap_or("root and a static busybox (Debian package busybox-static)"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_overwritten_in_place_with_its_mtime_set_back_gets_its_own_hash() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = busybox_copy(dir.path(), false);
    let allowed = common::sha256sum(&binary);
    let resolver = resolver();
    let first =
        Running(test_support::spawn_retrying(Command::new(&binary).args(["sleep", "30"])).unwrap());
    let answer = resolve(&resolver, first.0.id()).await;
    assert_eq!(answer.labels.get("process:binary:hash"), [allowed.as_str()]);
    assert_eq!(answer.trust.get("process:binary:hash").as_str(), "kernel");
    drop(first);

    // Same inode, same size, other bytes; the mtime set back as `touch -r` does.
    let mtime = std::fs::metadata(&binary).unwrap().modified().unwrap();
    let staged = dir.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    let tampered = std::fs::read(busybox_copy(&staged, true)).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&binary)
        .unwrap();
    file.write_all(&tampered).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(
        std::fs::metadata(&binary).unwrap().modified().unwrap(),
        mtime
    );
    let forged = common::sha256sum(&binary);
    assert_ne!(forged, allowed);

    let second =
        Running(test_support::spawn_retrying(Command::new(&binary).args(["sleep", "30"])).unwrap());
    let answer = resolve(&resolver, second.0.id()).await;
    assert_eq!(answer.labels.get("process:binary:hash"), [forged.as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_of_a_file_replaced_at_the_same_path_is_collected_again() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = busybox_copy(dir.path(), false);
    let before = common::sha256sum(&binary);
    let resolver = resolver();
    // A shell that, when told, execs the same path again.
    let script = format!("read line; exec {} sleep 30", binary.display());
    let mut child = test_support::spawn_retrying(
        Command::new(&binary)
            .args(["sh", "-c", &script])
            .stdin(Stdio::piped()),
    )
    .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let child = Running(child);
    let first = resolve(&resolver, pid).await;
    assert_eq!(first.labels.get("process:binary:hash"), [before.as_str()]);
    let path = first.labels.get("process:binary:path").to_vec();
    // Cached, and given again while nothing changes.
    assert!(resolve(&resolver, pid).await.cached);

    // Another binary renamed over the path (the running one is busy), then exec'd: same path.
    let staged = dir.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    let replacement = busybox_copy(&staged, true);
    let after = common::sha256sum(&replacement);
    std::fs::rename(&replacement, &binary).unwrap();
    writeln!(stdin, "go").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let answer = resolve(&resolver, pid).await;
        let cmdline = answer.labels.first("process:cmdline");
        if cmdline.is_some() && cmdline != first.labels.first("process:cmdline") {
            break answer;
        }
        assert!(Instant::now() < deadline, "the exec was never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(answer.labels.get("process:binary:path"), path.as_slice());
    assert_eq!(answer.labels.get("process:binary:hash"), [after.as_str()]);
    assert!(
        answer
            .labels
            .first("process:cmdline")
            .unwrap()
            .ends_with("sleep 30"),
        "{:?}",
        answer.labels
    );
    drop(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn setuid_and_a_cgroup_move_after_the_first_lookup_are_noticed() {
    if !prerequisites() {
        return;
    }
    let resolver = resolver();
    // A root process that drops to uid 4242 when told.
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import os, sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\n\
             os.setgid(4242)\nos.setuid(4242)\nprint('done', flush=True)\ntime.sleep(30)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let child = Running(child);
    // `python3` may be a wrapper that execs the interpreter: wait until it runs.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let before = resolve(&resolver, pid).await;
    assert_eq!(before.labels.get("process:uid"), ["0"]);
    assert!(resolve(&resolver, pid).await.cached);
    writeln!(stdin, "go").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "done");
    let after = resolve(&resolver, pid).await;
    assert!(!after.cached);
    assert_eq!(after.labels.get("process:uid"), ["4242"]);
    assert_eq!(after.labels.get("process:gid"), ["4242"]);

    // Moved (by root) into another cgroup: collected again, with the new path.
    let root = common::cgroups::v2_root();
    let cgroup = root.join("ma-moved.slice");
    std::fs::create_dir(&cgroup).unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    let moved = resolve(&resolver, pid).await;
    assert!(!moved.cached);
    assert_eq!(moved.labels.get("process:cgroup"), ["/ma-moved.slice"]);
    drop(child);
    for _ in 0..50 {
        if std::fs::remove_dir(&cgroup).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Threads of process `pid`, and the CPU time it used so far.
fn threads_and_cpu(pid: u32) -> (usize, Duration) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime, fields 14 and 15, in clock ticks (100 per second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (threads, Duration::from_millis(ticks * 10))
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_sparse_executables_get_no_hash_and_stall_nothing() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::daemon::write(
        dir.path(),
        "agent.yaml",
        "hook:\n  enabled: false\nresolver:\n  prestart: false\n",
    );
    let daemon = common::daemon::Daemon::start(&["--listen", "127.0.0.1:0", "--config", &config]);
    let client = common::http_client();
    // Ten executables of 64 GiB each (sparse: a busybox followed by a hole), started at once.
    let big: Vec<Running> = (0..10)
        .map(|index| {
            let own = dir.path().join(index.to_string());
            std::fs::create_dir(&own).unwrap();
            let binary = busybox_copy(&own, false);
            std::fs::File::options()
                .write(true)
                .open(&binary)
                .unwrap()
                .set_len(64 << 30)
                .unwrap();
            Running(
                test_support::spawn_retrying(Command::new(&binary).args(["sleep", "30"])).unwrap(),
            )
        })
        .collect();
    let normal = Running(Command::new("sleep").arg("30").spawn().unwrap());
    let pids: Vec<u32> = big.iter().chain([&normal]).map(|r| r.0.id()).collect();
    for &pid in &pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (threads_before, _) = threads_and_cpu(daemon.pid());
    let started = Instant::now();
    let lookups: Vec<_> = pids
        .iter()
        .map(|pid| {
            let (client, url) = (client.clone(), daemon.url(&format!("/metadata/{pid}")));
            tokio::spawn(async move {
                let response = client.get(url).send().await.unwrap();
                let answered = Instant::now();
                (
                    response.json::<serde_json::Value>().await.unwrap(),
                    answered,
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for lookup in lookups {
        answers.push(lookup.await.unwrap());
    }
    let ((normal_answer, normal_at), big_answers) = answers.split_last().unwrap();
    let procfs = |answer: &serde_json::Value| {
        answer["collectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|report| report["name"] == "procfs")
            .unwrap()["status"]
            .clone()
    };
    // The ordinary process: complete, hash included, within its deadline (500 ms).
    assert!(
        normal_answer["labels"]["process:binary:hash"].is_array(),
        "{normal_answer}"
    );
    assert_eq!(procfs(normal_answer)["state"], "ok", "{normal_answer}");
    let waited = normal_at.duration_since(started);
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    for (answer, _) in big_answers {
        assert!(
            answer["labels"]["process:binary:hash"].is_null(),
            "{answer}"
        );
        let status = procfs(answer);
        assert_eq!(status["state"], "partial", "{answer}");
        let reason = status["reason"].as_str().unwrap();
        assert!(reason.contains("maxHashBytes"), "{reason}");
    }
    // Nothing piled up or goes on in the background: a few threads more at most (the runtime's
    // blocking threads of these lookups, the hashing pool), and no CPU spent reading the holes.
    let (threads_after, cpu_before) = threads_and_cpu(daemon.pid());
    assert!(
        threads_after <= threads_before + 16,
        "{threads_before} threads before, {threads_after} after"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, cpu_after) = threads_and_cpu(daemon.pid());
    // Reading the holes would keep a core busy (~1 s a second); the agent's own periodic work
    // (destination refresh over every process, on a busy CI machine) stays well under half.
    assert!(
        cpu_after - cpu_before < Duration::from_millis(500),
        "the agent kept working: {:?} of CPU in a second",
        cpu_after - cpu_before
    );
    drop(big);
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_paths_are_self_in_a_mount_namespace_of_the_process_own() {
    if !prerequisites() {
        return;
    }
    let unshare = Command::new("unshare").arg("--help").output().is_ok();
    if !common::require(unshare, "unshare (Debian package util-linux)") {
        return;
    }
    let resolver = resolver();
    let host = Running(Command::new("sleep").arg("30").spawn().unwrap());
    let answer = resolve(&resolver, host.0.id()).await;
    assert_eq!(answer.trust.get("process:binary:path").as_str(), "kernel");
    assert_eq!(answer.trust.get("process:uid").as_str(), "kernel");
    assert_eq!(answer.trust.get("process:cmdline").as_str(), "self");

    // In a user and mount namespace of its own (as any user can make), the process chooses
    // what a path names: its binary path is only `self`; what the kernel reports is not.
    let mut command = Command::new("unshare");
    command.args(["-Urm", "sleep", "30"]);
    // As an unprivileged user would.
    command.uid(4243).gid(4243);
    let own = Running(command.spawn().unwrap());
    // `unshare` execs `sleep` once the namespaces are made.
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let answer = resolve(&resolver, own.0.id()).await;
        if answer.labels.first("process:name") == Some("sleep") {
            break answer;
        }
        assert!(Instant::now() < deadline, "{:?}", answer.labels);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(answer.labels.get("process:uid"), ["4243"]);
    assert_eq!(answer.trust.get("process:binary:path").as_str(), "self");
    assert_eq!(answer.trust.get("process:uid").as_str(), "kernel");
    assert_eq!(answer.trust.get("process:pid").as_str(), "kernel");
}

/// The test FUSE filesystem (`clients/fuse_fs.py`) serving `source` at `mount`, unmounted and
/// stopped when dropped.
struct FuseMount {
    server: Child,
    mount: PathBuf,
}

impl FuseMount {
    fn start(source: &Path, mount: &Path) -> Self {
        let script = common::repo_root().join("metadata-agent/tests/clients/fuse_fs.py");
        let server = Command::new("python3")
            .arg(script)
            .arg(source)
            .arg(mount)
            .spawn()
            .unwrap();
        let fuse = Self {
            server,
            mount: mount.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mount.join("busybox").exists() {
            assert!(
                Instant::now() < deadline,
                "the FUSE filesystem did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fuse
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        // Killing the server aborts its pending requests: a read waiting on it fails.
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_on_fuse_has_a_self_hash_and_a_server_that_never_answers_stalls_nothing() {
    if !prerequisites() {
        return;
    }
    let fuse = Path::new("/dev/fuse").exists()
        && Command::new("python3")
            .args(["-c", "import fuse"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !common::require(
        fuse,
        "/dev/fuse and fusepy (Debian package libfuse2, PyPI fusepy)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (source, mount) = (dir.path().join("source"), dir.path().join("mount"));
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&mount).unwrap();
    let binary = busybox_copy(&source, false);
    let other = source.join("other");
    std::fs::create_dir(&other).unwrap();
    busybox_copy(&other, true);
    let fuse = FuseMount::start(&source, &mount);
    let resolver = resolver();

    // Served by FUSE: hashed, but its server could serve other bytes than were executed.
    let on_fuse = Running(
        Command::new(mount.join("busybox"))
            .args(["sleep", "30"])
            .spawn()
            .unwrap(),
    );
    let answer = resolve(&resolver, on_fuse.0.id()).await;
    assert_eq!(
        answer.labels.get("process:binary:hash"),
        [common::sha256sum(&binary).as_str()]
    );
    assert_eq!(answer.trust.get("process:binary:hash").as_str(), "self");
    let procfs = &answer.collectors[0];
    assert_eq!(procfs.status.state(), "partial");
    assert!(
        procfs.status.detail().unwrap().contains("FUSE"),
        "{:?}",
        procfs.status
    );

    // A server that stops answering once a binary runs: its hash never comes, the lookup still
    // answers within its deadline (without the hash, not kept), and nothing else waits.
    let stalled = Running(
        Command::new(mount.join("other/busybox"))
            .args(["sleep", "30"])
            .spawn()
            .unwrap(),
    );
    let stalled_pid = stalled.0.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(format!("/proc/{stalled_pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(source.join("hang"), "").unwrap();
    let started = Instant::now();
    let answer = resolver.resolve(stalled_pid).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!answer.labels.contains_key("process:binary:hash"));
    assert_eq!(answer.labels.first("process:name"), Some("busybox"));
    let status = &answer.collectors[0].status;
    assert!(
        status.detail().unwrap().contains("not finished"),
        "{status:?}"
    );
    // Asked again (not kept), and again without waiting on the server twice.
    let again = resolver.resolve(stalled_pid).await.unwrap();
    assert!(!again.cached);
    for _ in 0..3 {
        let normal = Running(Command::new("sleep").arg("30").spawn().unwrap());
        let started = Instant::now();
        let answer = resolve(&resolver, normal.0.id()).await;
        assert!(answer.labels.contains_key("process:binary:hash"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    drop((stalled, on_fuse));
    drop(fuse);
}
