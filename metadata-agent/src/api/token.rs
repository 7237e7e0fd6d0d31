//! The bearer token, read from its file, and read again when the file changes (a rotated
//! secret takes effect without a restart). A file that group or others may read is refused: a
//! token others can read guards nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It could not be read.
    #[error("{path}: cannot read the token file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may read it.
    #[error(
        "{path}: the token file is readable by group or others (mode {mode:o}): make it \
         private (chmod 600)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It holds no usable token.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The token and the version of its file it came from.
#[derive(Debug)]
struct Loaded {
    token: String,
    /// (device, inode, size, mtime in ns): a change is a new version.
    version: (u64, u64, u64, i128),
}

/// The token of a file, kept current.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl TokenFile {
    /// Reads the token file at `path`; fails when it cannot be used.
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let loaded = load(path)?;
        Ok(Self {
            path: path.to_owned(),
            loaded: RwLock::new(loaded),
        })
    }

    /// The current token: the file's, read again when it changed. A changed file that cannot
    /// be used keeps the previous token (and says why in the log).
    pub fn current(&self) -> String {
        let version = std::fs::metadata(&self.path)
            .ok()
            .map(|meta| version_of(&meta));
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if version.is_none_or(|version| version == loaded.version) {
                return loaded.token.clone();
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        match load(&self.path) {
            Ok(fresh) => {
                if fresh.token != loaded.token {
                    tracing::info!(file = %self.path.display(), "the bearer token changed");
                }
                *loaded = fresh;
            }
            Err(error) => {
                tracing::error!("{error}; the previous token stays in force");
                // Not read again until the file changes again.
                if let Some(version) = version {
                    loaded.version = version;
                }
            }
        }
        loaded.token.clone()
    }
}

fn version_of(meta: &std::fs::Metadata) -> (u64, u64, u64, i128) {
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    (meta.dev(), meta.ino(), meta.size(), mtime)
}

fn load(path: &Path) -> Result<Loaded, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    let invalid = |reason| TokenError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if token.is_empty() {
        return Err(invalid("the token file is empty"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("the token must be one line without spaces"));
    }
    Ok(Loaded {
        token: token.to_owned(),
        version: version_of(&meta),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_read_and_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("first\n", 0o600);
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.current(), "first");
        write("second-and-longer\n", 0o600);
        assert_eq!(file.current(), "second-and-longer");
        // Made readable by others: refused, the previous token stays.
        write("third-one-longer-still\n", 0o644);
        assert_eq!(file.current(), "second-and-longer");
        let error = TokenFile::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("readable by group or others (mode 644)"),
            "{error}"
        );
        write("  \n", 0o600);
        let error = TokenFile::open(&path).unwrap_err().to_string();
        assert!(error.contains("the token file is empty"), "{error}");
    }
}
