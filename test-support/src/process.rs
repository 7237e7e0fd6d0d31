//! Child processes for tests: killed when dropped, and a shell that execs when told.

use std::io::Write;
use std::process::{Child, Command, Stdio};

/// A child, killed and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that is not our child (an orphan a launcher left), killed when dropped.
pub struct KilledPid(pub u32);

impl Drop for KilledPid {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

/// `sh`, which execs `sleep 30` (the same process, a new image) once [`exec_now`] is called.
pub fn shell_that_execs_on_a_line() -> Killed {
    Killed(
        Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("cannot start sh"),
    )
}

/// Tells a [`shell_that_execs_on_a_line`] to exec.
pub fn exec_now(shell: &mut Killed) {
    let stdin = shell.0.stdin.as_mut().expect("its stdin is piped");
    writeln!(stdin, "go").expect("the shell reads its stdin");
}
