//! Events written to a JSON-lines file (`events.file`), one event a line as `/events` sends
//! it, with size rotation and retention (`events.jsonl` → `events.jsonl.1` → … →
//! `events.jsonl.<maxFiles>`, the oldest removed).
//!
//! The writer is a subscriber of the event bus like any other: if it falls behind it is dropped,
//! and it subscribes again from the last id it wrote, so the file gets what it missed from the
//! history, or a `gap` line saying how many events it lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::events::{EventBus, EventFilter};

/// `events.file`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventFileConfig {
    /// The file written (its directory must exist).
    pub path: PathBuf,
    /// Size at which it is rotated (default 100 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (default 5).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_max_files() -> u32 {
    5
}

impl EventFileConfig {
    /// Checks what can be checked at start: a positive size, and a file that can be opened.
    pub fn check(&self) -> Result<(), String> {
        if self.max_bytes < 4096 {
            return Err(format!(
                "events.file.maxBytes: {} is too small (at least 4096)",
                self.max_bytes
            ));
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map(|_| ())
            .map_err(|e| format!("events.file.path {}: {e}", self.path.display()))
    }
}

/// `path` with `.n` appended.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Shifts `path.1 … path.(keep-1)` up by one, drops the oldest, and moves `path` to `path.1`.
async fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return tokio::fs::remove_file(path).await;
    }
    let _ = tokio::fs::remove_file(numbered(path, keep)).await;
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if tokio::fs::try_exists(&from).await.unwrap_or(false) {
            tokio::fs::rename(&from, numbered(path, n + 1)).await?;
        }
    }
    tokio::fs::rename(path, numbered(path, 1)).await
}

async fn open(path: &Path) -> std::io::Result<(tokio::io::BufWriter<tokio::fs::File>, u64)> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let size = file.metadata().await?.len();
    Ok((tokio::io::BufWriter::new(file), size))
}

/// Writes the bus's events to the file until `shutdown`; errors are logged, and writing goes
/// on with the next event.
pub async fn run(config: EventFileConfig, bus: Arc<EventBus>, mut shutdown: watch::Receiver<bool>) {
    let (mut writer, mut size) = match open(&config.path).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!("events.file {}: {error}", config.path.display());
            return;
        }
    };
    // From the first event: whatever was published before this task ran is in the history.
    let mut last: Option<u64> = Some(0);
    loop {
        let mut subscription = match bus.subscribe_filtered(EventFilter::default(), last) {
            Ok(subscription) => subscription,
            Err(_) => return, // closed at shutdown
        };
        loop {
            let next = tokio::select! {
                next = subscription.next() => next,
                _ = shutdown.changed() => None,
            };
            let Some(event) = next else {
                break;
            };
            let line = event.json.len() as u64 + 1;
            if size > 0 && size + line > config.max_bytes {
                let _ = writer.flush().await;
                match rotate(&config.path, config.max_files).await {
                    Ok(()) => {}
                    Err(error) => tracing::warn!("rotating {}: {error}", config.path.display()),
                }
                match open(&config.path).await {
                    Ok(opened) => (writer, size) = opened,
                    Err(error) => {
                        tracing::error!("events.file {}: {error}", config.path.display());
                        return;
                    }
                }
            }
            let written = async {
                writer.write_all(event.json.as_bytes()).await?;
                writer.write_all(b"\n").await
            }
            .await;
            if let Err(error) = written {
                tracing::warn!("writing {}: {error}", config.path.display());
            } else {
                size += line;
                last = Some(event.id);
            }
            // Each burst lands on disk once the queue is empty.
            if let Err(error) = writer.flush().await {
                tracing::warn!("writing {}: {error}", config.path.display());
            }
        }
        let _ = writer.flush().await;
        if *shutdown.borrow() {
            return;
        }
        // Dropped for falling behind: subscribe again from the last event written.
        tracing::warn!(
            "the events file writer fell behind; resuming from event {}",
            last.unwrap_or(0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotation_shifts_the_files_and_keeps_only_so_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        for generation in 0..4 {
            tokio::fs::write(&path, format!("{generation}\n"))
                .await
                .unwrap();
            rotate(&path, 2).await.unwrap();
        }
        assert!(!path.exists());
        assert_eq!(std::fs::read_to_string(numbered(&path, 1)).unwrap(), "3\n");
        assert_eq!(std::fs::read_to_string(numbered(&path, 2)).unwrap(), "2\n");
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn a_file_that_cannot_be_written_or_a_tiny_size_is_refused() {
        let bad = EventFileConfig {
            path: PathBuf::from("/nonexistent/dir/events.jsonl"),
            max_bytes: default_max_bytes(),
            max_files: 1,
        };
        assert!(
            bad.check()
                .unwrap_err()
                .contains("/nonexistent/dir/events.jsonl")
        );
        let tiny = EventFileConfig {
            path: PathBuf::from("/tmp/x"),
            max_bytes: 10,
            max_files: 1,
        };
        assert!(tiny.check().unwrap_err().contains("maxBytes"));
    }
}
