//! User and group names from the host's `passwd` and `group` files (never from NSS: the agent may
//! run in a container whose own `/etc` is not the host's).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often the file's modification time is looked at: a resolution burst (thousands of
/// processes at start) stats it once, and a new user is named within this delay.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// A `name:x:id:...` file, re-read when its modification time changes.
pub struct IdNames {
    path: PathBuf,
    recheck_every: Duration,
    cached: Mutex<Option<Snapshot>>,
}

/// The file's names as of one modification time.
struct Snapshot {
    mtime: Option<SystemTime>,
    checked: Instant,
    names: HashMap<u32, String>,
}

impl IdNames {
    /// Names from `path` (`<etc>/passwd` or `<etc>/group`).
    pub fn new(path: PathBuf) -> Self {
        Self::rechecking_every(path, RECHECK_EVERY)
    }

    fn rechecking_every(path: PathBuf, recheck_every: Duration) -> Self {
        Self {
            path,
            recheck_every,
            cached: Mutex::new(None),
        }
    }

    /// The name of `id`, if the file lists it.
    pub fn name_of(&self, id: u32) -> Option<String> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let due = cached
            .as_ref()
            .is_none_or(|s| s.checked.elapsed() >= self.recheck_every);
        if due {
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            match cached.as_mut() {
                Some(s) if s.mtime == mtime && mtime.is_some() => s.checked = Instant::now(),
                _ => {
                    *cached = Some(Snapshot {
                        mtime,
                        checked: Instant::now(),
                        names: parse_id_file(&self.path),
                    })
                }
            }
        }
        cached.as_ref().and_then(|s| s.names.get(&id).cloned())
    }
}

fn parse_id_file(path: &Path) -> HashMap<u32, String> {
    let Ok(content) = std::fs::read(path) else {
        return HashMap::new();
    };
    let mut names = HashMap::new();
    for line in content.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(id) = std::str::from_utf8(id).ok().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if name.is_empty() || name.starts_with(b"#") {
            continue;
        }
        // The first entry for an id wins, as getpwuid does.
        names
            .entry(id)
            .or_insert_with(|| labels::escape_bytes(name));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_file_and_follow_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/bash\nbad line\nweb:x:1000:1000::/:/bin/sh\ndup:x:1000:1:::\n").unwrap();
        let names = IdNames::rechecking_every(path.clone(), Duration::ZERO);
        assert_eq!(names.name_of(0).as_deref(), Some("root"));
        assert_eq!(names.name_of(1000).as_deref(), Some("web"));
        assert_eq!(names.name_of(7), None);
        std::fs::write(&path, "other:x:7:7:::\n").unwrap();
        // Force a different mtime even on coarse-grained filesystems.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(names.name_of(7).as_deref(), Some("other"));
        assert!(IdNames::new(dir.path().join("absent")).name_of(0).is_none());
    }

    #[test]
    fn a_burst_of_lookups_looks_at_the_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "root:x:0:0:::\n").unwrap();
        let names = IdNames::new(path.clone());
        assert_eq!(names.name_of(0).as_deref(), Some("root"));
        std::fs::remove_file(&path).unwrap();
        // Within the recheck delay the file is not looked at again.
        assert_eq!(names.name_of(0).as_deref(), Some("root"));
        let rechecking = IdNames::rechecking_every(path.clone(), Duration::ZERO);
        assert_eq!(rechecking.name_of(0), None);
    }
}
