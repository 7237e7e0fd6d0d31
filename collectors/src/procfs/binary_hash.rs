//! SHA-256 of executables, read through `/proc/<pid>/exe` and cached by file identity.
//!
//! Reading through the `exe` link is what makes the hash right for a binary inside a container
//! (its path means nothing in the host's mount namespace) and for a deleted binary. The cache key
//! is (device, inode, size, mtime), so a rebuilt binary at the same path is hashed again while a
//! binary shared by a thousand processes is read once.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// What identifies one version of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_sec: i64,
    mtime_nsec: i64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// A bounded cache of binary hashes.
pub struct BinaryHashCache {
    cache: quick_cache::sync::Cache<FileIdentity, String>,
    files_hashed: AtomicU64,
}

impl BinaryHashCache {
    /// A cache holding at most `capacity` hashes.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
            files_hashed: AtomicU64::new(0),
        }
    }

    /// The cached hash of the file at `path`, if there is one: a stat, no read.
    pub fn cached(&self, path: &Path) -> io::Result<Option<String>> {
        Ok(self.cache.get(&FileIdentity::of(&std::fs::metadata(path)?)))
    }

    /// `sha256:<hex>` of the file at `path` (normally `<proc>/<pid>/exe`).
    pub fn hash(&self, path: &Path) -> io::Result<String> {
        // A hit costs one stat. A miss opens the file and keys the hash by what was opened, so
        // a binary replaced between the stat and the open is never hashed under the old key.
        if let Some(hash) = self.cached(path)? {
            return Ok(hash);
        }
        let mut file = File::open(path)?;
        let identity = FileIdentity::of(&file.metadata()?);
        if let Some(hash) = self.cache.get(&identity) {
            return Ok(hash);
        }
        let hash = sha256_of(&mut file)?;
        self.files_hashed.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(identity, hash.clone());
        Ok(hash)
    }

    /// How many files were actually read and hashed (cache misses), for tests and metrics.
    pub fn files_hashed(&self) -> u64 {
        self.files_hashed.load(Ordering::Relaxed)
    }
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
    use super::*;

    #[test]
    fn known_digest_and_cache_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"abc").unwrap();
        let cache = BinaryHashCache::new(16);
        let expected = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(cache.cached(&path).unwrap(), None);
        assert_eq!(cache.hash(&path).unwrap(), expected);
        assert_eq!(cache.cached(&path).unwrap().as_deref(), Some(expected));
        assert_eq!(cache.hash(&path).unwrap(), expected);
        assert_eq!(
            cache.files_hashed(),
            1,
            "second lookup must not re-read the file"
        );
        // A new version of the file (other size) is hashed again.
        std::fs::write(&path, b"abcd").unwrap();
        assert_ne!(cache.hash(&path).unwrap(), expected);
        assert_eq!(cache.files_hashed(), 2);
    }
}
