//! The threads policy evaluations run on: a few of their own, at a lower CPU priority than the
//! async workers, so that a storm of heavy evaluations (large label bodies, `?explain` over
//! many policies) leaves the cores to lookups and probes first.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Niceness of the evaluation threads (0 is the agent's own).
const NICENESS: libc::c_int = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of low-priority threads.
#[derive(Debug)]
pub struct EvaluationPool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl EvaluationPool {
    /// `threads` threads (at least one), started now.
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("evaluation-{n}"))
                .spawn(move || {
                    // SAFETY: setpriority on this thread (tid) with a plain integer.
                    unsafe {
                        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                        libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS);
                    }
                    loop {
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!("cannot start an evaluation thread: {error}");
            }
        }
        Self {
            jobs: Mutex::new(jobs),
        }
    }

    /// Runs `work` on the pool; its answer, or `None` when the pool is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(work());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .ok()?;
        answered.await.ok()
    }
}
