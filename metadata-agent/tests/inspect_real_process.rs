//! `inspect` against real processes of this machine: every `process:*` key of a child whose
//! argv, environment, cwd and (as root) credentials the test chose, checked against sources
//! independent of the agent (`sha256sum`, `getent`, our own `/proc/self`).

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{agent, is_root, require, run};

/// A child process killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A copy of `sleep` under a name longer than the kernel's 15-byte comm, in a directory
/// every user may enter.
fn sleepy_binary(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("sleepy-test-binary");
    std::fs::copy(std::fs::canonicalize("/bin/sleep").unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Waits until `pid` runs `bin` (after fork and exec).
fn wait_for_exec(pid: u32, bin: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(bin)
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never ran {}",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Spawns `command`, retrying while the binary is "text file busy": a binary just written can
/// stay open for writing in a child that another test thread forked and has not exec'd yet.
fn spawn(command: &mut Command) -> Reaped {
    for _ in 0..100 {
        match command.spawn() {
            Ok(child) => return Reaped(child),
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot spawn {command:?}: {e}"),
        }
    }
    panic!("{command:?}: text file busy for 2 s");
}

fn inspect(pid: &str, config: Option<&Path>) -> (String, String) {
    let mut command = agent();
    command.arg("inspect").arg(pid);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let output = run(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "inspect {pid} failed: {stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

fn getent(database: &str, id: u32) -> String {
    let output = run(Command::new("getent").arg(database).arg(id.to_string()));
    String::from_utf8(output.stdout)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned()
}

fn own_cgroup_v2_path() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .unwrap()
}

#[test]
fn every_process_key_of_a_child_with_chosen_credentials() {
    if !require(
        is_root(),
        "root, to give the child another uid, gid and groups",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = sleepy_binary(dir.path());
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "collectors:\n  procfs:\n    extractEnvs: true\n").unwrap();
    let (uid, gid, groups) = (65534u32, 65534u32, [4444u32, 4545]);
    let mut command = Command::new(&bin);
    command
        .args(["600", "0"])
        .env_clear()
        .env("METADATA_TEST", "value with spaces")
        .env("API_TOKEN", "hunter2")
        .current_dir(dir.path())
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let list: Vec<libc::gid_t> = groups.to_vec();
            if libc::setgroups(list.len(), list.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = spawn(&mut command);
    let pid = child.0.id();
    wait_for_exec(pid, &bin);

    let (text, stderr) = inspect(&pid.to_string(), Some(&config));
    assert!(stderr.contains("# procfs (process): ok"), "{stderr}");
    let mut process_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("process:")).collect();
    let start_line = process_lines
        .iter()
        .position(|l| l.starts_with("process:start-time: "))
        .map(|i| process_lines.remove(i))
        .expect("process:start-time");
    let start = humantime::parse_rfc3339(start_line.trim_start_matches("process:start-time: "))
        .expect("RFC 3339 start time");
    let age = SystemTime::now().duration_since(start).unwrap_or_default();
    assert!(
        age < Duration::from_secs(300),
        "start time {start_line} is not recent"
    );

    let test_exe = std::env::current_exe().unwrap();
    let test_exe_name = test_exe.file_name().unwrap().to_str().unwrap();
    // Its lineage: its execution and its parent's (this test's), then its ancestors from this
    // test up (how far up depends on how the tests were started).
    let mut take = |prefix: &str| -> Vec<String> {
        let taken = process_lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .collect();
        process_lines.retain(|l| !l.starts_with(prefix));
        taken
    };
    let exec_id = take("process:exec-id: ");
    let parent_exec_id = take("process:parent:exec-id: ");
    let ancestor_paths = take("process:ancestor:binary:path: ");
    let ancestor_names = take("process:ancestor:name: ");
    assert_eq!(exec_id.len(), 1, "{exec_id:?}");
    assert_eq!(exec_id[0].split('-').nth(1), Some(pid.to_string().as_str()));
    let me = std::process::id().to_string();
    assert_eq!(parent_exec_id[0].split('-').nth(1), Some(me.as_str()));
    assert_eq!(
        ancestor_paths.first(),
        Some(&test_exe.display().to_string())
    );
    assert_eq!(
        ancestor_names.first().map(String::as_str),
        Some(test_exe_name)
    );
    let expected = [
        format!("process:binary:hash: {}", common::sha256sum(&bin)),
        format!("process:binary:path: {}", bin.display()),
        format!("process:cgroup: {}", own_cgroup_v2_path()),
        format!("process:cmdline: {} 600 0", bin.display()),
        format!("process:cwd: {}", dir.path().display()),
        "process:env:API_TOKEN: <redacted>".to_owned(),
        "process:env:METADATA_TEST: value with spaces".to_owned(),
        format!("process:gid: {gid}"),
        "process:gid:additional: 4444".to_owned(),
        "process:gid:additional: 4545".to_owned(),
        format!("process:gid:effective: {gid}"),
        format!("process:gid:real: {gid}"),
        format!("process:group:name: {}", getent("group", gid)),
        // comm is "sleepy-test-bin" (15 bytes); argv[0]'s basename extends it.
        "process:name: sleepy-test-binary".to_owned(),
        format!("process:parent:binary:path: {}", test_exe.display()),
        format!("process:parent:name: {test_exe_name}"),
        format!("process:pid: {pid}"),
        format!("process:ppid: {}", std::process::id()),
        format!("process:uid: {uid}"),
        format!("process:uid:effective: {uid}"),
        format!("process:uid:real: {uid}"),
        format!("process:user:name: {}", getent("passwd", uid)),
    ];
    // No capabilities after setuid to a non-root user; not in a container.
    assert_eq!(
        process_lines,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[test]
fn a_thread_id_resolves_to_its_process() {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
        let _ = stop_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    assert_ne!(tid, std::process::id());
    let (text, _) = inspect(&tid.to_string(), None);
    stop_tx.send(()).unwrap();
    thread.join().unwrap();
    assert!(
        text.lines()
            .any(|l| l == format!("process:pid: {}", std::process::id())),
        "{text}"
    );
}

#[test]
fn non_utf8_argv_is_kept_escaped_and_the_name_rule_holds() {
    let dir = tempfile::tempdir().unwrap();
    let bin = sleepy_binary(dir.path());
    // bash's `exec -a` sets argv[0] to arbitrary bytes.
    let child = spawn(
        Command::new("bash")
            .arg("-c")
            .arg("exec -a \"$0\" \"$1\" 600")
            .arg(OsStr::from_bytes(b"bad\xffname"))
            .arg(&bin)
            .stdin(Stdio::null()),
    );
    let pid = child.0.id();
    wait_for_exec(pid, &bin);
    let (text, _) = inspect(&pid.to_string(), None);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"process:cmdline: bad\\xffname 600"),
        "{text}"
    );
    // argv[0] does not extend the 15-byte comm, so the comm stays.
    assert!(lines.contains(&"process:name: sleepy-test-bin"), "{text}");
    // Environment labels are off by default.
    assert!(!text.contains("process:env:"), "{text}");
}
