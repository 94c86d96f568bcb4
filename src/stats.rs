//! [`Stats`] and [`HostStats`]: what a pool has done and is doing, for progress bars and
//! monitoring.

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

/// One host's share of a pool's work, from [`Pool::host_stats`](crate::Pool::host_stats): for
/// an MPI pool, one entry per rank that runs workers (the serving ranks, and rank 0 if it has
/// a local pool); for a local pool, one entry for this host.
///
/// The counters are those rank 0 keeps as it hands tasks out and takes outcomes in, so they
/// add up to [`Stats`]: `sent` over every entry is `submitted` less the tasks still waiting
/// in rank 0's queue (and those refused before any rank saw them, such as an argument above
/// MPI's message limit), `completed`, `failed` and `died` are those of [`Stats`], and
/// `running` over every entry is [`Stats::running`].
///
/// # Examples
///
/// ```
/// let pool = forkpool::Pool::new(2)?;
/// pool.map_chunked(|x: u32| x, 0..10, 1)?;
/// let _ = pool.apply(|_: ()| -> u32 { panic!("no") }, ());
/// let hosts = pool.host_stats();
/// assert_eq!(hosts.len(), 1); // a local pool: this host alone
/// let here = &hosts[0];
/// assert_eq!((here.rank, here.workers), (0, 2));
/// assert_eq!((here.sent, here.completed, here.failed, here.running), (11, 11, 1, 0));
/// assert!(!here.host.is_empty());
/// # Ok::<(), forkpool::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStats {
    /// The host's name (as MPI names it, for a rank; the kernel's host name for a local pool).
    pub host: String,
    /// The MPI rank (0 for rank 0's own workers, and for a local pool).
    pub rank: u32,
    /// Worker processes of the host's local pool, as it started.
    pub workers: u64,
    /// Tasks handed to the host.
    pub sent: u64,
    /// Of those, the tasks whose result is known, `Ok` or `Err`.
    pub completed: u64,
    /// Of the completed tasks, those that failed, for any reason.
    pub failed: u64,
    /// Of the failed tasks, those whose worker died under them.
    pub died: u64,
    /// Tasks in the host's hands now: running in a worker or waiting there for one.
    pub running: u64,
}

/// The live counters behind one [`HostStats`], kept by the MPI scheduler.
#[cfg(feature = "mpi")]
#[derive(Debug)]
pub(crate) struct HostCounters {
    host: String,
    rank: u32,
    workers: u64,
    sent: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    died: AtomicU64,
}

#[cfg(feature = "mpi")]
impl HostCounters {
    pub(crate) fn new(host: String, rank: u32, workers: usize) -> HostCounters {
        HostCounters {
            host,
            rank,
            workers: workers as u64,
            sent: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            died: AtomicU64::new(0),
        }
    }

    /// A task was handed to the host.
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Relaxed);
    }

    /// The outcome of a task the host held is known.
    pub(crate) fn completed<T>(&self, outcome: &Result<T>) {
        if let Err(error) = outcome {
            if matches!(error, Error::WorkerDied { .. }) {
                self.died.fetch_add(1, Relaxed);
            }
            self.failed.fetch_add(1, Relaxed);
        }
        self.completed.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HostStats {
        // The later stage first, so a task moving along is not counted twice.
        let completed = self.completed.load(Relaxed);
        let sent = self.sent.load(Relaxed);
        HostStats {
            host: self.host.clone(),
            rank: self.rank,
            workers: self.workers,
            sent,
            completed,
            failed: self.failed.load(Relaxed),
            died: self.died.load(Relaxed),
            running: sent.saturating_sub(completed),
        }
    }
}

/// This host's name, as the kernel has it.
pub(crate) fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
