//! The connector (`programs/connector.c`): a process tests drive one command at a time over
//! its stdin (connect, send, fork, exec, let the main thread exit...), to put enforcement
//! through what real programs do. Compiled with `cc` on first use.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::cgroup::TestCgroup;

/// The connector compiled into `dir` (once per test binary; later calls return the same path).
pub fn build(dir: &Path) -> PathBuf {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(None));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = &*built {
        return path.clone();
    }
    let out = dir.join("connector");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/programs/connector.c");
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&out)
        .arg(source)
        .status()
        .expect("cc (a C compiler) is needed to build the connector");
    assert!(status.success(), "cannot compile {source}");
    *built = Some(out.clone());
    out
}

/// A connector process, driven line by line; killed when dropped.
pub struct Driven {
    /// The process.
    pub child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// The connector's PID (the one it announces: another than the child's when the child
    /// started it, as a shell does).
    pub pid: u32,
}

impl Driven {
    /// Starts `program` (the connector, or a copy) with `args` (a command run first), in
    /// `cgroup` when given; returns it and the answers it gave before `ready`.
    pub fn start(
        cgroup: Option<&TestCgroup>,
        program: &Path,
        args: &[&str],
    ) -> (Self, Vec<String>) {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(cgroup) = cgroup {
            cgroup.contain(&mut command);
        }
        Self::spawn(command)
    }

    /// Starts `command` (a connector), and waits for its `ready`.
    pub fn spawn(mut command: Command) -> (Self, Vec<String>) {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = crate::spawn_retrying(&mut command).unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut driven = Self {
            pid: child.id(),
            child,
            stdin,
            lines,
        };
        let mut before = Vec::new();
        loop {
            let line = driven.line();
            if let Some(pid) = line.strip_prefix("ready ") {
                driven.pid = pid.trim().parse().unwrap_or(driven.pid);
                break;
            }
            before.push(line);
        }
        (driven, before)
    }

    /// The next line it says (at most 10 s).
    pub fn line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the connector did not answer within 10 s")
    }

    /// Sends `command` and returns its answer.
    pub fn ask(&mut self, command: &str) -> String {
        self.tell(command);
        self.line()
    }

    /// Sends `command` without waiting for an answer.
    pub fn tell(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
