//! Naming a process: a PID (or thread id) resolved to its thread-group id and start time, the
//! pair that identifies one process across PID reuse.

use std::io;

use crate::host::HostRoots;
use crate::procfs::FileIdentity;

/// How much of a link's target [`ProcDir::each_link_target_in`] reads: enough for the names
/// procfs gives sockets, pipes and anonymous inodes (`socket:[4026532012]`).
pub const LINK_TARGET_BYTES: usize = 64;

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
        Self::from_stat(pid, &Self::read_stat(roots, pid)?)
    }

    /// `<proc>/<pid>/stat`, when it can be read: what [`ProcessRef::from_stat`] and
    /// [`ProcessRef::resolve_from`] take, so that a probe and a resolution read it once.
    pub fn read_stat(roots: &HostRoots, pid: u32) -> Option<Vec<u8>> {
        read_proc_file(&roots.proc_file(pid, "stat")).ok()
    }

    /// [`ProcessRef::probe`] from `pid`'s `stat`, read already.
    pub fn from_stat(pid: u32, stat: &[u8]) -> Option<Self> {
        Some(Self {
            pid,
            start_ticks: Some(parse_start_ticks(stat)?),
        })
    }

    /// Resolves `pid` (which may be a thread id) to its process.
    pub fn resolve(roots: &HostRoots, pid: u32) -> Result<Self, ProcessError> {
        Self::resolve_from(roots, pid, Self::read_stat(roots, pid))
    }

    /// [`ProcessRef::resolve`] with `pid`'s `stat` read already (`None`: it could not be).
    pub fn resolve_from(
        roots: &HostRoots,
        pid: u32,
        stat: Option<Vec<u8>>,
    ) -> Result<Self, ProcessError> {
        if stat.as_deref().and_then(|stat| stat_field(stat, 20)) == Some("1") {
            // A thread group of one thread is its leader alone (a leader that exits before its
            // other threads stays counted until they are gone): `pid` is the process.
            return Ok(Self {
                pid,
                start_ticks: stat.as_deref().and_then(parse_start_ticks),
            });
        }
        let status_path = roots.proc_file(pid, "status");
        let status = match read_proc_file(&status_path) {
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
        if tgid == pid
            && let Some(stat) = &stat
        {
            return Ok(Self {
                pid,
                start_ticks: parse_start_ticks(stat),
            });
        }
        let start_ticks = match read_proc_file(&roots.proc_file(tgid, "stat")) {
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

impl ProcessRef {
    /// What the process runs as now (see [`ProcessImage`]); `None` for kernel threads and
    /// processes gone.
    pub fn image(&self, roots: &HostRoots) -> Option<ProcessImage> {
        ProcDir::open(roots, self.pid).ok()?.image()
    }

    /// [`ProcessRef::image`], with the `cgroup` file it digested (`None` when it could not be
    /// read): what the process's container is decided from.
    pub fn image_with_cgroups(&self, roots: &HostRoots) -> Option<(ProcessImage, Option<Vec<u8>>)> {
        ProcDir::open(roots, self.pid).ok()?.image_with_cgroups()
    }
}

/// What a process runs as, in the sense that any change means its labels must be collected
/// again: the executable it maps, by identity rather than path (a file replaced at the same path
/// and exec'd again is another), its effective user and group (`setuid`), and its cgroups (a
/// move to another cgroup, another container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessImage {
    /// The executable's identity (`None` where it cannot be read: a recorded tree), and a digest
    /// of its path.
    exe: (Option<FileIdentity>, u64),
    /// The owner of `/proc/<pid>`: the kernel gives it the process's effective uid and gid at
    /// every `stat`, also once the process is no longer dumpable (as after a `setuid`; its
    /// files are then root's, the directory is not).
    owner: (u32, u32),
    /// A digest of `/proc/<pid>/cgroup`.
    cgroups: u64,
}

impl ProcessImage {
    /// Whether the process of `dir` still has this image's effective user and group (the
    /// owner of its directory): one `fstat`.
    pub fn same_owner(&self, dir: &ProcDir) -> bool {
        rustix::fs::fstat(&dir.fd).is_ok_and(|owner| (owner.st_uid, owner.st_gid) == self.owner)
    }

    /// [`ProcessImage::same_owner`] for process `pid`, by path (one `stat`): whatever process
    /// the PID names at that moment, which the caller makes sure is the one it means.
    pub fn same_owner_at(&self, roots: &HostRoots, pid: u32) -> bool {
        rustix::fs::stat(roots.proc.join(pid.to_string()))
            .is_ok_and(|owner| (owner.st_uid, owner.st_gid) == self.owner)
    }
}

/// The PIDs under the proc root: every process running now.
pub fn list_pids(roots: &HostRoots) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(&roots.proc) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// An open `<proc>/<pid>` directory. Files read through it belong to the process it was opened
/// for: once that process is gone they fail (`ESRCH`), even when its PID has been reused. So one
/// identity check through it (the start time in `stat`) covers every later read, and each read
/// skips the lookup of the `<proc>/<pid>` path. It holds a file descriptor.
#[derive(Debug)]
pub struct ProcDir {
    fd: std::os::fd::OwnedFd,
}

impl ProcDir {
    /// Opens `<proc>/<pid>`.
    pub fn open(roots: &HostRoots, pid: u32) -> io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            roots.proc.join(pid.to_string()),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }

    /// Whether this is a directory of a real procfs, which ties it to its process (a recorded
    /// tree of files does not).
    pub fn pins_process(&self) -> bool {
        rustix::fs::fstatfs(&self.fd).is_ok_and(|fs| fs.f_type == rustix::fs::PROC_SUPER_MAGIC)
    }

    /// The process's start time in clock ticks since boot (`stat` field 22), read through
    /// this directory: what ties it to a [`ProcessRef`].
    pub fn start_ticks(&self) -> Option<u64> {
        parse_start_ticks(&self.read("stat").ok()?)
    }

    /// Opens the file `name` in this directory.
    pub fn open_file(&self, name: &str) -> io::Result<std::fs::File> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(fd.into())
    }

    /// Reads the one-record file `name` whole (`stat`, `status`, `cgroup`; see
    /// [`read_proc_file`]).
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        read_whole(self.open_file(name)?)
    }

    /// Reads the table `name` whole (`net/tcp`: many records, a page or so per read).
    pub fn read_table(&self, name: &str) -> io::Result<Vec<u8>> {
        read_table(self.open_file(name)?)
    }

    /// What the process of this directory runs as now; `None` for a kernel thread (no
    /// executable) and a process gone.
    pub fn image(&self) -> Option<ProcessImage> {
        self.image_with_cgroups().map(|(image, _)| image)
    }

    /// [`ProcDir::image`], with the `cgroup` file it digested (`None` when unreadable).
    pub fn image_with_cgroups(&self) -> Option<(ProcessImage, Option<Vec<u8>>)> {
        use std::hash::{DefaultHasher, Hash, Hasher};
        // Fixed keys: digests taken at different times must compare.
        let digest = |value: &dyn Fn(&mut DefaultHasher)| {
            let mut hasher = DefaultHasher::new();
            value(&mut hasher);
            hasher.finish()
        };
        let path = self.read_link("exe").ok()?;
        let exe = FileIdentity::at(&self.fd, "exe").ok();
        let owner = rustix::fs::fstat(&self.fd).ok()?;
        let cgroups = self.read("cgroup").ok();
        let image = ProcessImage {
            exe: (exe, digest(&|h| path.hash(h))),
            owner: (owner.st_uid, owner.st_gid),
            cgroups: digest(&|h| cgroups.hash(h)),
        };
        Some((image, cgroups))
    }

    /// Calls `each` with the target of each link in the subdirectory `name` (`fd`), cut to its
    /// first [`LINK_TARGET_BYTES`] bytes (what names a socket, a pipe or an anonymous inode:
    /// `socket:[4026532012]`); a link that cannot be read (its descriptor closed since) is left
    /// out. At most `limit` links are read; returns whether there were more.
    pub fn each_link_target_in(
        &self,
        name: &str,
        limit: usize,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<bool> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // The directory stream owns the descriptor (one open, no duplicate), and links are
        // read relative to it as their names come: no path walk through `<pid>/<name>` for
        // each, and nothing allocated per link.
        let mut dir = rustix::fs::Dir::new(fd)?;
        let mut target = [0u8; LINK_TARGET_BYTES];
        let mut read = 0;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let link = entry.file_name();
            if link == c"." || link == c".." {
                continue;
            }
            // One past the limit tells that there are more; a process with a million
            // descriptors costs no more than one with `limit + 1`.
            if read == limit {
                return Ok(true);
            }
            read += 1;
            if let Ok(length) = rustix::fs::readlinkat_raw(dir.fd()?, link, &mut target[..]) {
                each(&target[..length.min(LINK_TARGET_BYTES)]);
            }
        }
        Ok(false)
    }

    /// The target of the link `name` (`exe`, `cwd`).
    pub fn read_link(&self, name: &str) -> io::Result<std::path::PathBuf> {
        use std::os::unix::ffi::OsStringExt;
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())?;
        Ok(std::ffi::OsString::from_vec(target.into_bytes()).into())
    }
}

/// Reads a small procfs file (`status`, `stat`, `cgroup`, ...) whole.
pub(crate) fn read_proc_file(path: &std::path::Path) -> io::Result<Vec<u8>> {
    read_whole(std::fs::File::open(path)?)
}

/// Reads a one-record file (see [`read_whole`]) to its end. procfs reports a size of 0, so
/// unlike `std::fs::read` (a stat, a seek, then a read per doubling of its buffer) this asks
/// for no metadata and starts with a buffer that holds a typical file. A read that fills less
/// than it was given has reached the end: procfs makes a one-record file (`stat`, `status`,
/// `cgroup`, `comm`: `single_open` in the kernel) whole at the first read and copies all of
/// it that fits, and a regular file (a recorded tree) reads short only at its end. So a
/// typical file takes one read, not two.
fn read_whole(file: std::fs::File) -> io::Result<Vec<u8>> {
    read_until(file, true)
}

/// Reads `file` to the read that returns nothing: for tables of many records (`net/tcp`), of
/// which procfs gives a page or so per read, whatever the buffer.
pub(crate) fn read_table(file: std::fs::File) -> io::Result<Vec<u8>> {
    read_until(file, false)
}

fn read_until(mut file: std::fs::File, short_read_ends: bool) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut content = vec![0; 4096];
    let mut len = 0;
    loop {
        if len == content.len() {
            content.resize(len * 2, 0);
        }
        let asked = content.len() - len;
        match file.read(&mut content[len..]) {
            Ok(0) => break,
            Ok(read) => {
                len += read;
                if short_read_ends && read < asked {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    content.truncate(len);
    Ok(content)
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
    fn processes_and_threads_resolve_to_their_process() {
        let roots = HostRoots::default();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // One thread: resolved from its stat alone.
        let single = ProcessRef::resolve(&roots, child.id()).unwrap();
        assert_eq!(single.pid, child.id());
        assert!(single.start_ticks.is_some());

        // A thread of this (multi-threaded) test process resolves to the process.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert_ne!(tid, std::process::id());
        let ours = ProcessRef::resolve(&roots, std::process::id()).unwrap();
        assert_eq!(ProcessRef::resolve(&roots, tid).unwrap(), ours);
        assert_eq!(ours.pid, std::process::id());
        drop(done_tx);
        thread.join().unwrap();

        // A directory opened for the child reads nothing once the child is gone.
        let dir = ProcDir::open(&roots, child.id()).unwrap();
        assert_eq!(
            dir.read("stat").ok().as_deref().and_then(parse_start_ticks),
            single.start_ticks
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(dir.pins_process());
        assert!(dir.read("stat").is_err());
        assert!(dir.read_link("exe").is_err());
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("7")).unwrap();
        let roots = HostRoots::resolve(&crate::HostRootsConfig {
            proc_root: tree.path().to_owned(),
            ..Default::default()
        });
        assert!(!ProcDir::open(&roots, 7).unwrap().pins_process());
    }

    #[test]
    fn links_past_the_limit_are_not_read_and_say_so() {
        let tree = tempfile::tempdir().unwrap();
        let fds = tree.path().join("7/fd");
        std::fs::create_dir_all(&fds).unwrap();
        for fd in 0..10 {
            std::os::unix::fs::symlink(format!("socket:[{}]", 100 + fd), fds.join(fd.to_string()))
                .unwrap();
        }
        let roots = HostRoots {
            proc: tree.path().to_owned(),
            ..HostRoots::resolve(&crate::HostRootsConfig::default())
        };
        let dir = ProcDir::open(&roots, 7).unwrap();
        let targets = |limit| {
            let mut targets = Vec::new();
            let cut = dir
                .each_link_target_in("fd", limit, |target| {
                    targets.push(String::from_utf8(target.to_vec()).unwrap())
                })
                .unwrap();
            targets.sort();
            (targets, cut)
        };
        let (some, cut) = targets(4);
        assert_eq!((some.len(), cut), (4, true));
        assert!(some.iter().all(|t| t.starts_with("socket:[")));
        let (all, cut) = targets(10);
        assert_eq!((all.len(), cut), (10, false));
        assert_eq!(all.first().map(String::as_str), Some("socket:[100]"));
        // A longer target is cut to its first bytes.
        let long = format!("/{}", "x".repeat(200));
        std::os::unix::fs::symlink(&long, fds.join("10")).unwrap();
        let (all, _) = targets(11);
        assert!(
            all.contains(&long[..LINK_TARGET_BYTES].to_owned()),
            "{all:?}"
        );
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
