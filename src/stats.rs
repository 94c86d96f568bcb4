//! [`Stats`]: what a pool has done and is doing, for progress bars and monitoring.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::{Error, Result};

/// A snapshot of a pool's counters, from [`Pool::stats`](crate::Pool::stats).
///
/// A task is one submission: an `apply_async`, an `imap` item, or one chunk of a `map`. The
/// counters are read one by one while the pool runs, so a snapshot taken mid-flight may be off
/// by a task or two between fields; each field on its own is exact.
///
/// # Examples
///
/// ```
/// let pool = forkpool::Pool::new(2)?;
/// pool.map_chunked(|x: u32| x, 0..10, 1)?;
/// let _ = pool.apply(|_: ()| -> u32 { panic!("no") }, ());
/// let stats = pool.stats();
/// assert_eq!(stats.submitted, 11);
/// assert_eq!(stats.completed, 11);
/// assert_eq!(stats.failed, 1);
/// assert_eq!(stats.panicked, 1);
/// assert_eq!(stats.workers_alive, 2);
/// # Ok::<(), forkpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks accepted by the pool.
    pub submitted: u64,
    /// Tasks whose result is known, `Ok` or `Err`.
    pub completed: u64,
    /// Of the completed tasks, those that failed, for any reason.
    pub failed: u64,
    /// Of the failed tasks, those that panicked.
    pub panicked: u64,
    /// Of the failed tasks, those whose worker died under them.
    pub died: u64,
    /// Of the failed tasks, those that ran past their time limit.
    pub timed_out: u64,
    /// Of the failed tasks, those ended by [`AsyncResult::cancel`](crate::AsyncResult::cancel):
    /// taken out of the queue, or killed with their worker. (A task that a worker had in its
    /// pipe and finished before the cancel reached it counts as completed normally; its handle
    /// still says [`Error::Cancelled`].)
    pub cancelled: u64,
    /// Tasks a worker is running now (at most one per worker).
    pub running: u64,
    /// Tasks accepted and not yet running: waiting in the pool's queue, or in a worker's pipe
    /// behind the task it runs.
    pub queued: u64,
    /// Worker processes alive now.
    pub workers_alive: u64,
    /// Workers forked to replace one that ended (crash, timeout, `max_tasks_per_child`, memory
    /// cap).
    pub workers_replaced: u64,
    /// Callbacks of [`Pool::apply_async_with`](crate::Pool::apply_async_with) started so far,
    /// each counted just before it runs. The counter for a progress line printed from callbacks:
    /// callbacks run one at a time, so inside the k-th one it reads exactly k (`completed` may
    /// already count tasks whose callbacks have not run yet).
    pub callbacks_run: u64,
}

/// The live counters behind [`Stats`], shared by the pool's callers and its dispatcher.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    died: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    running: AtomicU64,
    workers_alive: AtomicU64,
    workers_spawned: AtomicU64,
    initial_workers: AtomicU64,
}

impl Counters {
    pub(crate) fn submitted(&self, n: u64) {
        self.submitted.fetch_add(n, Relaxed);
    }

    /// A task started running in a worker (`+1`) or stopped, answered or not (`-1`).
    pub(crate) fn running(&self, up: bool) {
        if up {
            self.running.fetch_add(1, Relaxed);
        } else {
            self.running.fetch_sub(1, Relaxed);
        }
    }

    /// A task's outcome is known.
    pub(crate) fn completed<T>(&self, outcome: &Result<T>) {
        let Err(error) = outcome else {
            self.completed.fetch_add(1, Relaxed);
            return;
        };
        let kind = match error.cause() {
            Error::TaskPanicked { .. } => Some(&self.panicked),
            Error::WorkerDied { .. } => Some(&self.died),
            Error::TimedOut { .. } => Some(&self.timed_out),
            Error::Cancelled => Some(&self.cancelled),
            _ => None,
        };
        if let Some(kind) = kind {
            kind.fetch_add(1, Relaxed);
        }
        self.failed.fetch_add(1, Relaxed);
        self.completed.fetch_add(1, Relaxed);
    }

    pub(crate) fn workers(&self, alive: usize) {
        self.workers_alive.store(alive as u64, Relaxed);
    }

    /// A worker was forked; the first `processes` are not replacements.
    pub(crate) fn spawned(&self) {
        self.workers_spawned.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_initial(&self, processes: usize) {
        self.initial_workers.store(processes as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        // Read the later stages first, so a task moving along is not counted twice.
        let completed = self.completed.load(Relaxed);
        let running = self.running.load(Relaxed);
        let submitted = self.submitted.load(Relaxed);
        Stats {
            submitted,
            completed,
            failed: self.failed.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            died: self.died.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            running,
            queued: submitted.saturating_sub(completed + running),
            workers_alive: self.workers_alive.load(Relaxed),
            workers_replaced: self
                .workers_spawned
                .load(Relaxed)
                .saturating_sub(self.initial_workers.load(Relaxed)),
            // Counted by the callback thread; the pool fills it in.
            callbacks_run: 0,
        }
    }
}
