//! Naming a process: a PID (or thread id) resolved to its thread-group id and start time, the
//! pair that identifies one process across PID reuse.

use std::io;

use crate::host::HostRoots;

/// One process, identified by its thread-group id and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    /// The thread-group id (the PID proper).
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); `None` when the
    /// stat file is missing (fixture trees may omit it).
    pub start_ticks: Option<u64>,
}

/// Why a PID could not be resolved to a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Not a positive number, nor `self`.
    #[error("invalid pid {0:?}: expected a positive number or `self`")]
    InvalidPid(String),
    /// Nothing under `<proc>/<pid>`.
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    /// `<proc>/<pid>` exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// Parses a PID argument: a positive decimal number, or `self` (this process, as seen through
/// the proc root, so that it is right in the host's PID namespace too).
pub fn parse_pid(text: &str, roots: &HostRoots) -> Result<u32, ProcessError> {
    let text = text.trim();
    if text == "self" {
        let target = std::fs::read_link(roots.proc.join("self"))
            .map_err(|_| ProcessError::InvalidPid(text.to_owned()))?;
        return target
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ProcessError::InvalidPid(text.to_owned()));
    }
    match text.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(ProcessError::InvalidPid(text.to_owned())),
    }
}

impl ProcessRef {
    /// `pid` with its start time, read from `/proc/<pid>/stat` alone, without checking that
    /// it is a process rather than a thread: for cache lookups, where a hit proves it (caches
    /// hold processes only, and no thread shares a PID and start time with a process).
    pub fn probe(roots: &HostRoots, pid: u32) -> Option<Self> {
        let stat = std::fs::read(roots.proc_file(pid, "stat")).ok()?;
        Some(Self {
            pid,
            start_ticks: Some(parse_start_ticks(&stat)?),
        })
    }

    /// Resolves `pid` (which may be a thread id) to its process.
    pub fn resolve(roots: &HostRoots, pid: u32) -> Result<Self, ProcessError> {
        let status_path = roots.proc_file(pid, "status");
        let status = match std::fs::read(&status_path) {
            Ok(status) => status,
            Err(e) if is_gone(&e) => return Err(ProcessError::NoSuchProcess(pid)),
            Err(source) => {
                return Err(ProcessError::Unreadable {
                    path: status_path.display().to_string(),
                    source,
                });
            }
        };
        let tgid = status_field(&status, "Tgid")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u32>().ok())
            .filter(|&tgid| tgid > 0)
            .unwrap_or(pid);
        let start_ticks = match std::fs::read(roots.proc_file(tgid, "stat")) {
            Ok(stat) => parse_start_ticks(&stat),
            Err(e) if is_gone(&e) && tgid != pid => return Err(ProcessError::NoSuchProcess(pid)),
            Err(_) => None,
        };
        Ok(Self {
            pid: tgid,
            start_ticks,
        })
    }
}

/// Whether an I/O error means the process is gone (or never was).
pub(crate) fn is_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ESRCH)
}

/// The value of `field:` in a `/proc/<pid>/status` document, without the separating whitespace.
pub(crate) fn status_field<'a>(status: &'a [u8], field: &str) -> Option<&'a [u8]> {
    status.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(field.as_bytes())?.strip_prefix(b":")?;
        let start = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        Some(&rest[start..])
    })
}

/// Field `number` (1-based, as in proc(5)) of `/proc/<pid>/stat`, for fields after the command
/// name. The command name (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`.
pub(crate) fn stat_field(stat: &[u8], number: usize) -> Option<&str> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_ascii_whitespace().nth(number.checked_sub(3)?)
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`: clock ticks since boot.
pub(crate) fn parse_start_ticks(stat: &[u8]) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_parentheses_and_spaces_in_comm() {
        let stat = b"4242 (a) b (c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks(b"garbage"), None);
    }

    #[test]
    fn status_fields_are_found_by_exact_name() {
        let status = b"Name:\tbash\nTgid:\t12\nTracerPid:\t0\nPid:\t13\n";
        assert_eq!(status_field(status, "Tgid"), Some(&b"12"[..]));
        assert_eq!(status_field(status, "Pid"), Some(&b"13"[..]));
        assert_eq!(status_field(status, "Uid"), None);
    }

    #[test]
    fn pid_arguments_are_checked() {
        let roots = HostRoots::default();
        assert!(matches!(
            parse_pid("abc", &roots),
            Err(ProcessError::InvalidPid(_))
        ));
        assert!(matches!(
            parse_pid("0", &roots),
            Err(ProcessError::InvalidPid(_))
        ));
        assert!(matches!(
            parse_pid("-5", &roots),
            Err(ProcessError::InvalidPid(_))
        ));
        assert_eq!(parse_pid("42", &roots).unwrap(), 42);
        assert_eq!(parse_pid("self", &roots).unwrap(), std::process::id());
    }
}
