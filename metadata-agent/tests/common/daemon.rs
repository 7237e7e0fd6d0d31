//! A `metadata-agent run` child process for HTTP end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::agent;

/// A running agent; killed when dropped.
pub struct Daemon {
    child: Child,
    /// `http://ADDR` for a TCP listener, or the socket path for a Unix one.
    pub address: String,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// GET `path` of this agent: (status, JSON body, or null when it is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = super::http_client()
            .get(self.url(path))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Starts `metadata-agent run` with `args` and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = agent();
        command
            .arg("run")
            .args(args)
            .env("METADATA_AGENT_LOG", "info")
            .env_remove("METADATA_AGENT_LISTEN")
            .env_remove("METADATA_AGENT_POLICIES")
            .env_remove("METADATA_AGENT_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("cannot start metadata-agent run");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (found, address) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    if let Some(found) = found.take() {
                        let _ = found.send(address.to_owned());
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = match address.recv_timeout(Duration::from_secs(20)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent did not start listening; its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Self {
            child,
            address,
            log,
        }
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `/readyz` answers 200 (node labels collected), at most 20 s.
    pub async fn wait_ready(&self) {
        let client = super::http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = client
                .get(self.url("/readyz"))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "not ready; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status and the elapsed time.
    pub fn terminate(self) -> (std::process::ExitStatus, Duration, String) {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` and waits for the exit; returns the exit status and the elapsed time.
    pub fn stop_with(mut self, signal: i32) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        // SAFETY: kill with a valid PID of our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return (status, started.elapsed(), self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "the agent did not exit after signal {signal}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Writes `token` to `dir/token` and a configuration requiring it to `dir/agent.yaml`; returns
/// the configuration's path.
pub fn token_config(dir: &Path, token: &str) -> String {
    write(dir, "token", &format!("{token}\n"));
    // Private: the agent refuses a token others may read.
    std::fs::set_permissions(
        dir.join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    write(
        dir,
        "agent.yaml",
        &format!("server:\n  tokenFile: {}\n", dir.join("token").display()),
    )
}
