//! A private Docker daemon for tests: its own socket, data root and exec root under a temporary
//! directory, stopped (with its containers) when dropped. Images come from `docker import` of a
//! busybox-static rootfs, as no registry is reachable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Docker command-line client to drive the private daemon with.
fn docker_cli() -> &'static str {
    // Debian's client matches Debian's daemon; another one earlier in PATH may not.
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What is missing to run a private daemon, if anything.
pub fn missing_prerequisite() -> Option<&'static str> {
    if !crate::is_root() {
        return Some("root (to run dockerd)");
    }
    if !found("dockerd") || !found(docker_cli()) {
        return Some("dockerd and the docker client (Debian package docker.io)");
    }
    if !Path::new(BUSYBOX).exists() {
        return Some("/bin/busybox, statically linked (Debian package busybox-static)");
    }
    None
}

/// The static busybox put into test images.
pub const BUSYBOX: &str = "/bin/busybox";

/// A running private `dockerd`.
pub struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    /// Its socket.
    pub socket: PathBuf,
}

impl Dockerd {
    /// Starts a daemon and waits until it answers.
    pub fn start() -> Self {
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ma-dockerd")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .args(["--iptables=false", "--ip-masq=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start dockerd");
        let daemon = Self { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if daemon.socket.exists() && daemon.cli(&["version"]).status.success() {
                return daemon;
            }
            if Instant::now() > deadline {
                panic!("dockerd did not come up; its log:\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker client against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("cannot run the docker client")
    }

    /// Runs the docker client and returns its trimmed stdout, panicking on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}\ndockerd log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Imports a rootfs holding busybox (with `sh`, `sleep`, `nc` and `true` links) as image
    /// `name`.
    pub fn import_busybox_image(&self, name: &str) {
        let rootfs = self.dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "nc", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tarball = self.dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        self.ok(&["import", tarball.to_str().unwrap(), name]);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let running = self.cli(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&running.stdout).split_whitespace() {
            let _ = self.cli(&["rm", "-f", id]);
        }
        // A user-defined network leaves a bridge (and its address pool) on the host unless it
        // is removed: enough of them and no test can make a network.
        let _ = self.cli(&["network", "prune", "-f"]);
        // SAFETY: kill with our child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
