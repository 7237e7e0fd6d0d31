//! Pre-resolution at start: every process already running is resolved in the background, a few
//! at a time, so that the first connect of a long-running process finds its labels cached.

use std::sync::Arc;
use std::time::Instant;

use super::Resolver;

impl Resolver {
    /// Resolves every process running now, `concurrency` at a time, to warm the caches.
    /// Returns how many were resolved.
    pub async fn prestart(self: &Arc<Self>, concurrency: usize) -> usize {
        let started = Instant::now();
        let pids = collectors::process::list_pids(&self.roots);
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut count = 0;
        for pid in pids {
            let Ok(permit) = Arc::clone(&semaphore).acquire_owned().await else {
                break;
            };
            let resolver = Arc::clone(self);
            tasks.spawn(async move {
                // The caches only: no answer is assembled for a lookup nobody made.
                let resolved = resolver.find(pid).await.is_ok();
                drop(permit);
                resolved
            });
            // Reap finished tasks as we go so the set stays small.
            while let Some(done) = tasks.try_join_next() {
                count += usize::from(done.unwrap_or(false));
            }
        }
        while let Some(done) = tasks.join_next().await {
            count += usize::from(done.unwrap_or(false));
        }
        tracing::info!(
            processes = count,
            cached = self.cached_processes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pre-resolved the running processes"
        );
        count
    }
}
