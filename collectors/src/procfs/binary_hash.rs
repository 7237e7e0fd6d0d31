//! SHA-256 of executables, read through `/proc/<pid>/exe`, cached by what their owner cannot
//! restore, and computed on a small pool of its own.
//!
//! Reading through the `exe` link is what makes the hash right for a binary inside a container
//! (its path means nothing in the host's mount namespace) and for a deleted binary.
//!
//! **The cache key** is (device, inode, size, ctime in nanoseconds). An owner can overwrite a
//! binary in place and set its mtime back (`touch -r`), but every write and every attribute
//! change sets the ctime to the current time, which only the kernel writes: a changed file is
//! always hashed again. A reused inode number gets a new ctime too.
//!
//! **Bounded**: a file larger than the size cap is not hashed (its size says so before anything
//! is read); hashing runs on a pool of its own (a few threads, a bounded queue), never on the
//! runtime's blocking pool, so slow or hostile files (huge, sparse, on a FUSE mount that never
//! answers) delay only other hashes; each version of a file is hashed once however many
//! processes ask at the same time. The identity of a file is read with `AT_STATX_DONT_SYNC`,
//! from what the kernel already has, so looking a binary up never waits for a FUSE or network
//! server; only the pool opens and reads files.
//!
//! **Sound or not**: the bytes read from a FUSE or network filesystem are whatever its server
//! answers now, which may not be what was executed; such a hash is given with the reason, and
//! its class is `self`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::fs::{AtFlags, StatxFlags};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Binaries larger than this are not hashed unless configured (`maxHashBytes`).
pub const DEFAULT_MAX_HASH_BYTES: u64 = 512 << 20;
/// Threads of the hashing pool.
pub const HASH_THREADS: usize = 2;
/// Binaries waiting for a hashing thread at most; beyond, a lookup is told to try again later.
const QUEUE: usize = 256;

/// What identifies one version of one file, as its owner cannot restore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    dev: (u32, u32),
    ino: u64,
    size: u64,
    ctime_sec: i64,
    ctime_nsec: u32,
}

impl FileIdentity {
    fn of(stat: &rustix::fs::Statx) -> Self {
        Self {
            dev: (stat.stx_dev_major, stat.stx_dev_minor),
            ino: stat.stx_ino,
            size: stat.stx_size,
            ctime_sec: stat.stx_ctime.tv_sec,
            ctime_nsec: stat.stx_ctime.tv_nsec,
        }
    }

    /// The identity of the file `path` names (following links: `/proc/<pid>/exe` gives the
    /// executable's), from the attributes the kernel already has: a FUSE or network filesystem
    /// is not asked.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        Self::at(rustix::fs::CWD, path)
    }

    /// [`FileIdentity::of_path`] for `name` in the directory `dir`.
    pub fn at(dir: impl std::os::fd::AsFd, name: impl rustix::path::Arg) -> io::Result<Self> {
        let stat = rustix::fs::statx(dir, name, AtFlags::STATX_DONT_SYNC, StatxFlags::BASIC_STATS)?;
        Ok(Self::of(&stat))
    }

    fn of_file(file: &File) -> io::Result<Self> {
        let stat = rustix::fs::statx(
            file,
            "",
            AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
            StatxFlags::BASIC_STATS,
        )?;
        Ok(Self::of(&stat))
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Its filesystem's device (major, minor).
    pub fn dev(&self) -> (u32, u32) {
        self.dev
    }

    /// Its inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Its inode change time (seconds, nanoseconds).
    pub fn ctime(&self) -> (i64, u32) {
        (self.ctime_sec, self.ctime_nsec)
    }
}

/// A binary's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHash {
    /// `sha256:<lowercase hex>`.
    pub hash: String,
    /// Why the bytes hashed may differ from the ones executed (a FUSE or network filesystem):
    /// the hash is then only `self`-class.
    pub unsound: Option<String>,
    /// The version of the file hashed.
    pub identity: FileIdentity,
}

/// Why there is no hash.
#[derive(Debug, Clone)]
pub enum HashFailure {
    /// The file is larger than the cap.
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The pool's queue is full, or the file changed while it was read: try again later.
    Later(String),
    /// The file could not be read (the process is gone, permission, ...).
    Io(Arc<io::Error>),
}

impl HashFailure {
    /// Whether a later attempt may succeed (the answer without a hash should not be kept).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Later(_))
    }
}

impl std::fmt::Display for HashFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { size, limit } => write!(
                f,
                "the executable is {size} bytes, over collectors.procfs.maxHashBytes ({limit}): \
                 not hashed"
            ),
            Self::Later(why) => f.write_str(why),
            Self::Io(error) => write!(f, "{error}"),
        }
    }
}

type Outcome = Result<BinaryHash, HashFailure>;

/// The answer to a lookup: at once, or once the pool has hashed the file.
pub enum Lookup {
    /// Known now (cached, too large, unreadable).
    Done(Outcome),
    /// Being hashed.
    Pending(Pending),
}

/// A hash being computed.
pub struct Pending(watch::Receiver<Option<Outcome>>);

impl Pending {
    /// Waits for the hash.
    pub async fn wait(mut self) -> Outcome {
        let stopped = || HashFailure::Later("the hashing pool stopped".to_owned());
        match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(stopped())),
            Err(_) => Err(stopped()),
        }
    }
}

struct Job {
    path: PathBuf,
    identity: FileIdentity,
    done: watch::Sender<Option<Outcome>>,
}

/// A bounded cache of binary hashes and the pool that computes them.
pub struct BinaryHasher {
    shared: Arc<Shared>,
    /// The pool's queue, started at the first miss.
    jobs: OnceLock<SyncSender<Job>>,
}

struct Shared {
    cache: quick_cache::sync::Cache<FileIdentity, BinaryHash>,
    /// Files being hashed, so that each version is hashed once.
    in_flight: Mutex<HashMap<FileIdentity, watch::Receiver<Option<Outcome>>>>,
    max_bytes: u64,
    files_hashed: AtomicU64,
}

impl BinaryHasher {
    /// A cache holding at most `capacity` hashes, of files up to `max_bytes`.
    pub fn new(capacity: usize, max_bytes: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache: quick_cache::sync::Cache::new(capacity.max(1)),
                in_flight: Mutex::new(HashMap::new()),
                max_bytes,
                files_hashed: AtomicU64::new(0),
            }),
            jobs: OnceLock::new(),
        }
    }

    /// The hash of the executable `exe` (normally `<proc>/<pid>/exe`): from the cache, or
    /// queued for the pool (once per version of the file), or why not.
    pub fn lookup(&self, exe: &Path) -> Lookup {
        let identity = match FileIdentity::of_path(exe) {
            Ok(identity) => identity,
            Err(error) => return Lookup::Done(Err(HashFailure::Io(Arc::new(error)))),
        };
        if let Some(hash) = self.shared.cache.get(&identity) {
            return Lookup::Done(Ok(hash));
        }
        if identity.size > self.shared.max_bytes {
            return Lookup::Done(Err(self.shared.too_large(identity)));
        }
        let mut in_flight = self.shared.lock_in_flight();
        if let Some(pending) = in_flight.get(&identity) {
            return Lookup::Pending(Pending(pending.clone()));
        }
        let (done, pending) = watch::channel(None);
        let job = Job {
            path: exe.to_owned(),
            identity,
            done,
        };
        match self.pool().try_send(job) {
            Ok(()) => {
                in_flight.insert(identity, pending.clone());
                Lookup::Pending(Pending(pending))
            }
            Err(TrySendError::Full(_)) => Lookup::Done(Err(HashFailure::Later(format!(
                "{QUEUE} binaries are waiting to be hashed; it is tried again later"
            )))),
            Err(TrySendError::Disconnected(_)) => Lookup::Done(Err(HashFailure::Later(
                "the hashing pool stopped".to_owned(),
            ))),
        }
    }

    /// Hashes the executable `exe` in this thread, with the same checks (for one-shot use:
    /// `inspect`, tests, benchmarks).
    pub fn hash_now(&self, exe: &Path) -> Outcome {
        let identity = FileIdentity::of_path(exe).map_err(|e| HashFailure::Io(Arc::new(e)))?;
        if let Some(hash) = self.shared.cache.get(&identity) {
            return Ok(hash);
        }
        if identity.size > self.shared.max_bytes {
            return Err(self.shared.too_large(identity));
        }
        self.shared.hash(exe, identity)
    }

    /// How many files were actually read and hashed (cache misses), for tests and metrics.
    pub fn files_hashed(&self) -> u64 {
        self.shared.files_hashed.load(Ordering::Relaxed)
    }

    /// The pool's queue, starting its threads the first time.
    fn pool(&self) -> &SyncSender<Job> {
        self.jobs.get_or_init(|| {
            let (sender, receiver) = sync_channel::<Job>(QUEUE);
            let receiver = Arc::new(Mutex::new(receiver));
            for index in 0..HASH_THREADS {
                let (shared, receiver) = (Arc::clone(&self.shared), Arc::clone(&receiver));
                let spawned = std::thread::Builder::new()
                    .name(format!("binary-hash-{index}"))
                    .spawn(move || shared.work(&receiver));
                if let Err(error) = spawned {
                    tracing::warn!("cannot start a binary hashing thread: {error}");
                }
            }
            sender
        })
    }
}

impl Shared {
    fn lock_in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<FileIdentity, watch::Receiver<Option<Outcome>>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn too_large(&self, identity: FileIdentity) -> HashFailure {
        HashFailure::TooLarge {
            size: identity.size,
            limit: self.max_bytes,
        }
    }

    /// A pool thread: hashes queued files until the hasher is dropped.
    fn work(&self, jobs: &Mutex<Receiver<Job>>) {
        loop {
            let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            let outcome = self.hash(&job.path, job.identity);
            self.lock_in_flight().remove(&job.identity);
            let _ = job.done.send(Some(outcome));
        }
    }

    /// Opens, checks and hashes `path`, expected to be the version `expected`; caches the hash.
    fn hash(&self, path: &Path, expected: FileIdentity) -> Outcome {
        let io = |error: io::Error| HashFailure::Io(Arc::new(error));
        let mut file = File::open(path).map_err(io)?;
        let opened = FileIdentity::of_file(&file).map_err(io)?;
        if opened != expected {
            return Err(changed(path));
        }
        let unsound = unsound_filesystem(&file);
        let hash = sha256_of(&mut (&mut file).take(self.max_bytes + 1)).map_err(io)?;
        // Written while it was read: the bytes belong to no one version.
        if FileIdentity::of_file(&file).map_err(io)? != opened {
            return Err(changed(path));
        }
        self.files_hashed.fetch_add(1, Ordering::Relaxed);
        let hashed = BinaryHash {
            hash,
            unsound,
            identity: opened,
        };
        self.cache.insert(opened, hashed.clone());
        Ok(hashed)
    }
}

fn changed(path: &Path) -> HashFailure {
    HashFailure::Later(format!(
        "{} changed while it was hashed; it is tried again later",
        path.display()
    ))
}

/// Why the bytes `file` gives may not be the ones executed: it is on a filesystem whose server
/// answers reads (FUSE, NFS, SMB, 9p, Ceph, AFS, ...).
fn unsound_filesystem(file: &File) -> Option<String> {
    const REMOTE: &[(i64, &str)] = &[
        (0x6573_5546, "a FUSE filesystem"),
        (0x6969, "NFS"),
        (0x517b, "SMB"),
        (0xff53_4d42, "CIFS"),
        (0xfe53_4d42, "SMB2"),
        (0x0102_1997, "9p"),
        (0x00c3_6400, "Ceph"),
        (0x5346_414f, "AFS"),
        (0x6b41_4653, "AFS"),
        (0x7375_7245, "Coda"),
        (0x6165_6f4c, "Lustre"),
        (0x0116_1970, "GFS2"),
    ];
    let kind = rustix::fs::fstatfs(file).ok()?.f_type as i64;
    REMOTE
        .iter()
        .find(|(magic, _)| *magic == kind)
        .map(|(_, name)| {
            format!(
                "binary hash: the executable is on {name}, whose server may serve other bytes than \
             were executed: its class is self"
            )
        })
}

/// `sha256:<lowercase hex>` of everything `reader` yields.
pub fn sha256_of(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..read]);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.iter() {
        use std::fmt::Write as _;
        let _ = write!(out, "{byte:02x}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_digest_and_cache_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"abc").unwrap();
        let hasher = BinaryHasher::new(16, DEFAULT_MAX_HASH_BYTES);
        assert_eq!(hasher.hash_now(&path).unwrap().hash, ABC);
        assert_eq!(hasher.hash_now(&path).unwrap().hash, ABC);
        assert_eq!(
            hasher.files_hashed(),
            1,
            "second lookup must not re-read the file"
        );
        // A new version of the file (other size) is hashed again.
        std::fs::write(&path, b"abcd").unwrap();
        assert_ne!(hasher.hash_now(&path).unwrap().hash, ABC);
        assert_eq!(hasher.files_hashed(), 2);
    }

    #[test]
    fn an_overwrite_of_the_same_size_with_the_mtime_set_back_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"abc").unwrap();
        let hasher = BinaryHasher::new(16, DEFAULT_MAX_HASH_BYTES);
        assert_eq!(hasher.hash_now(&path).unwrap().hash, ABC);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Same inode, same size, mtime restored as `touch -r` would.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"xyz", 0)
            .unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        let forged = hasher.hash_now(&path).unwrap().hash;
        assert_ne!(forged, ABC);
        assert_eq!(forged, sha256_of(&mut File::open(&path).unwrap()).unwrap());
    }

    #[tokio::test]
    async fn the_pool_hashes_once_per_version_and_refuses_what_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"abc").unwrap();
        let hasher = BinaryHasher::new(16, 8);
        let mut pending: Vec<Pending> = match hasher.lookup(&path) {
            Lookup::Pending(pending) => vec![pending],
            Lookup::Done(outcome) => panic!("nothing is cached yet, so it is queued: {outcome:?}"),
        };
        // The next lookups wait for the same job, or find its result if the pool was quicker
        // (a 3-byte file): either way the file is read once.
        for _ in 1..8 {
            match hasher.lookup(&path) {
                Lookup::Pending(next) => pending.push(next),
                Lookup::Done(outcome) => assert_eq!(outcome.unwrap().hash, ABC),
            }
        }
        for pending in pending {
            assert_eq!(pending.wait().await.unwrap().hash, ABC);
        }
        assert_eq!(hasher.files_hashed(), 1);
        assert!(matches!(hasher.lookup(&path), Lookup::Done(Ok(_))));

        // A sparse file far over the cap: refused from its size, nothing read.
        let big = dir.path().join("big");
        File::create(&big).unwrap().set_len(64 << 30).unwrap();
        let Lookup::Done(Err(failure)) = hasher.lookup(&big) else {
            panic!("a 64 GiB file was queued");
        };
        assert!(matches!(failure, HashFailure::TooLarge { .. }), "{failure}");
        assert!(failure.to_string().contains("maxHashBytes"), "{failure}");
        assert!(!failure.is_transient());
        assert_eq!(hasher.files_hashed(), 1);
    }
}
