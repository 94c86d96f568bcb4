//! The submission front: how callers hand tasks to a pool's scheduler, and how the scheduler
//! learns that there is something to do. [`front`] makes the two ends: the callers'
//! [`Submitter`] and the consumer's [`Front`]. The dispatcher consumes it; so can another
//! scheduler (the MPI one) with a loop of its own.
//!
//! The wake-up protocol (a channel, a `sleeping` flag and a wake pipe) is written down in
//! docs/DESIGN.md, "Waking the dispatcher"; the comments here point to its steps.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::stats::{Counters, Stats};
use crate::sys;
#[cfg(feature = "mpi")]
use crate::sys::PollFd;
#[cfg(feature = "mpi")]
use std::time::Duration;

use super::task::Task;

/// Whether the pool takes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Gate {
    Open = 0,
    Closed = 1,
    Terminated = 2,
}

/// State shared between the callers' threads and the consumer.
#[derive(Debug)]
struct Shared {
    /// Held while checking the gate and sending, so a task accepted before `close` is always in
    /// the channel before the consumer can see the gate closed.
    submit: Mutex<()>,
    gate: AtomicU8,
    tx: Sender<Task>,
    /// Live [`Lease`]s: producers (imap iterators) that may still submit after `close`.
    leases: AtomicUsize,
    /// Cancels requested so far ([`Canceller`]): a change tells the consumer to look for
    /// cancelled tasks among those it holds.
    cancels: AtomicUsize,
    /// True while the consumer is (about to be) asleep in `poll`.
    sleeping: AtomicBool,
    /// The wakeup pipe's write end; closed when the consumer ends, so that after `join` the
    /// pool holds no descriptor.
    wake: Mutex<Option<OwnedFd>>,
    counters: Counters,
}

impl Shared {
    fn gate(&self) -> Gate {
        match self.gate.load(SeqCst) {
            0 => Gate::Open,
            1 => Gate::Closed,
            _ => Gate::Terminated,
        }
    }

    /// The caller's half of the wake-up protocol (DESIGN.md, step C2): after publishing (a task,
    /// a gate, a lease count), wake the consumer if it sleeps or is about to.
    fn wake(&self) {
        // Orders what was just published before the look at `sleeping`; pairs with the fence in
        // `Front::prepare_sleep`.
        fence(SeqCst);
        if self.sleeping.swap(false, SeqCst) {
            let wake = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(fd) = &*wake {
                // A full pipe already holds a wakeup; any other failure leaves nothing to do.
                let _ = sys::write(fd.as_raw_fd(), &[1]);
            }
        }
    }

    fn send_all(
        &self,
        tasks: impl IntoIterator<Item = Task>,
        allowed: impl Fn(Gate) -> Result<()>,
    ) -> Result<()> {
        {
            let _order = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
            allowed(self.gate())?;
            for task in tasks {
                // The receiver lives until the gate is closed and no lease is left.
                if self.tx.send(task).is_err() {
                    return Err(Error::Terminated);
                }
                self.counters.submitted(1);
            }
        }
        self.wake();
        Ok(())
    }

    fn set_gate(&self, gate: Gate) {
        {
            let _order = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
            if self.gate() < gate {
                self.gate.store(gate as u8, SeqCst);
            }
        }
        self.wake();
    }
}

/// Makes a submission front: the callers' end and the consumer's end.
///
/// # Errors
/// [`Error::Io`] if the wake pipe cannot be made.
pub(crate) fn front() -> Result<(Submitter, Front)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (wake_r, wake_w) = sys::pipe().map_err(Error::io("pipe"))?;
    sys::set_nonblocking(&wake_r).map_err(Error::io("fcntl"))?;
    sys::set_nonblocking(&wake_w).map_err(Error::io("fcntl"))?;
    let shared = Arc::new(Shared {
        submit: Mutex::new(()),
        gate: AtomicU8::new(Gate::Open as u8),
        tx,
        leases: AtomicUsize::new(0),
        cancels: AtomicUsize::new(0),
        sleeping: AtomicBool::new(false),
        wake: Mutex::new(Some(wake_w)),
        counters: Counters::default(),
    });
    let submitter = Submitter {
        shared: Arc::clone(&shared),
    };
    Ok((
        submitter,
        Front {
            shared,
            rx,
            wake: wake_r,
        },
    ))
}

/// The callers' end of a pool: submits tasks and changes the pool's state. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Submitter {
    shared: Arc<Shared>,
}

impl Submitter {
    /// Submits tasks, all or none.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool is closed or terminated.
    pub(crate) fn submit(&self, tasks: impl IntoIterator<Item = Task>) -> Result<()> {
        self.shared.send_all(tasks, |gate| match gate {
            Gate::Open => Ok(()),
            _ => Err(Error::Closed),
        })
    }

    /// Submits a task on behalf of a lease holder, which may go on after `close`.
    ///
    /// # Errors
    /// [`Error::Terminated`] once the pool is terminated.
    pub(crate) fn submit_leased(&self, _lease: &Lease, task: Task) -> Result<()> {
        self.shared.send_all([task], |gate| match gate {
            Gate::Terminated => Err(Error::Terminated),
            _ => Ok(()),
        })
    }

    /// [`submit_leased`](Self::submit_leased) for many tasks at once: one lock and one wake-up.
    ///
    /// # Errors
    /// [`Error::Terminated`] once the pool is terminated; the tasks not sent are dropped (their
    /// sinks resolve them as terminated).
    pub(crate) fn submit_leased_all(
        &self,
        _lease: &Lease,
        tasks: impl IntoIterator<Item = Task>,
    ) -> Result<()> {
        self.shared.send_all(tasks, |gate| match gate {
            Gate::Terminated => Err(Error::Terminated),
            _ => Ok(()),
        })
    }

    /// Registers a producer that may submit tasks after `close`: the pool does not wind down
    /// until the lease is dropped.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool is closed or terminated.
    pub(crate) fn lease(&self) -> Result<Lease> {
        let _order = self
            .shared
            .submit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.gate() != Gate::Open {
            return Err(Error::Closed);
        }
        self.shared.leases.fetch_add(1, SeqCst);
        Ok(Lease {
            shared: Arc::clone(&self.shared),
        })
    }

    pub(crate) fn close(&self) {
        self.shared.set_gate(Gate::Closed);
    }

    pub(crate) fn terminate(&self) {
        self.shared.set_gate(Gate::Terminated);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.shared.gate() == Gate::Open
    }

    pub(crate) fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// A handle through which a result's holder tells the consumer that tasks were cancelled.
    pub(crate) fn canceller(&self) -> Canceller {
        Canceller {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Tells a pool's consumer that a task was cancelled (its slot says so), so that it drops the
/// task from its queue or has the worker running it killed. Held by an
/// [`AsyncResult`](crate::AsyncResult); harmless once the pool is gone (the wake pipe is
/// closed then, and nobody reads the count).
#[derive(Debug, Clone)]
pub(crate) struct Canceller {
    shared: Arc<Shared>,
}

impl Canceller {
    /// Publishes a cancel and wakes the consumer (DESIGN.md, step C2).
    pub(crate) fn notify(&self) {
        self.shared.cancels.fetch_add(1, SeqCst);
        self.shared.wake();
    }
}

/// A producer's claim that it may still submit tasks; see [`Submitter::lease`].
#[derive(Debug)]
pub(crate) struct Lease {
    shared: Arc<Shared>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.leases.fetch_sub(1, SeqCst);
        self.shared.wake();
    }
}

/// What the callers have published, as the consumer saw it before deciding to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) gate: Gate,
    pub(crate) leases: usize,
    /// Cancels requested so far: when it changes, the consumer looks for cancelled tasks.
    pub(crate) cancels: usize,
}

/// The consumer's end of a submission front.
#[derive(Debug)]
pub(crate) struct Front {
    shared: Arc<Shared>,
    rx: Receiver<Task>,
    /// The wake pipe's read end: poll it for reading while asleep.
    wake: OwnedFd,
}

impl Front {
    /// The gate, the number of leases and of cancels, to pass to [`prepare_sleep`](Self::prepare_sleep).
    /// Read these before taking tasks from the channel (DESIGN.md, step D1).
    pub(crate) fn seen(&self) -> Seen {
        Seen {
            gate: self.shared.gate(),
            leases: self.shared.leases.load(SeqCst),
            cancels: self.shared.cancels.load(SeqCst),
        }
    }

    /// Tasks submitted since the last call, without blocking.
    pub(crate) fn take(&self) -> impl Iterator<Item = Task> + '_ {
        self.rx.try_iter()
    }

    /// Whether a task waits in the channel.
    pub(crate) fn has_tasks(&self) -> bool {
        !self.rx.is_empty()
    }

    /// The wake pipe's read end, to poll for reading while asleep.
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Announces that the consumer is about to sleep, and returns whether it may: false if a
    /// task, a gate change, a lease change or a cancel came since `seen` (DESIGN.md, step D2). Call
    /// [`woke`](Self::woke) after the sleep (or instead of it).
    pub(crate) fn prepare_sleep(&self, seen: Seen) -> bool {
        self.shared.sleeping.store(true, SeqCst);
        // Orders the store above before the loads below; pairs with the fence in `wake`.
        fence(SeqCst);
        self.rx.is_empty() && self.seen() == seen
    }

    /// The consumer is awake again: callers need not write to the pipe. Drains it if `poll` saw
    /// it readable.
    pub(crate) fn woke(&self, readable: bool) {
        self.shared.sleeping.store(false, SeqCst);
        if readable {
            let mut sink = [0u8; 64];
            while matches!(sys::read(self.wake.as_raw_fd(), &mut sink), Ok(n) if n > 0) {}
        }
    }

    /// Refuses every further task (the consumer is ending after a failure of its own).
    pub(crate) fn terminate(&self) {
        self.shared.set_gate(Gate::Terminated);
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Closes the wake pipe's write end: called when the consumer ends, so that the pool
    /// holds no descriptor after `join`.
    pub(crate) fn close_wake(&self) {
        self.shared
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Front {
    /// As when the dispatcher ends: after `join`, the pool holds no descriptor.
    fn drop(&mut self) {
        self.close_wake();
    }
}

/// Where a pool is in its life, as a scheduler other than the dispatcher (the `mpi` module's)
/// sees it.
#[cfg(feature = "mpi")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Tasks may still come: the pool is open, or closed with a lease left.
    Taking,
    /// Closed with no lease left: once the channel is drained, no task can come.
    Draining,
    /// Terminated: fail everything.
    Terminated,
}

/// The same front as the dispatcher's, in the words of the `mpi` module's scheduler, which
/// sleeps on the wake pipe alone. The wake-up protocol is the dispatcher's (DESIGN.md).
#[cfg(feature = "mpi")]
impl Front {
    /// Where the pool is. Read it *before* draining [`Front::tasks`], so that a task accepted
    /// before `close` is seen.
    pub(crate) fn phase(&self) -> Phase {
        let seen = self.seen();
        match seen.gate {
            Gate::Terminated => Phase::Terminated,
            Gate::Closed if seen.leases == 0 => Phase::Draining,
            _ => Phase::Taking,
        }
    }

    /// Cancels requested so far: when the count changes, some task the scheduler holds may
    /// have been cancelled.
    pub(crate) fn cancels(&self) -> usize {
        self.shared.cancels.load(SeqCst)
    }

    /// The tasks submitted since the last call.
    pub(crate) fn tasks(&self) -> impl Iterator<Item = Task> + '_ {
        self.take()
    }

    /// Sleeps until a caller submits, closes, terminates or drops a lease, or `timeout` passes.
    /// `seen` is the phase the scheduler last acted on: if it changed since, or `pending` says
    /// the scheduler has other work (fed by a [`Front::waker`]), this returns at once.
    pub(crate) fn wait(&self, seen: Phase, timeout: Duration, pending: impl Fn() -> bool) {
        let now = self.seen();
        let idle = self.prepare_sleep(now) && self.phase() == seen && !pending();
        let mut fds = [PollFd::new(self.wake_fd(), true, false)];
        let _ = sys::poll(&mut fds, Some(if idle { timeout } else { Duration::ZERO }));
        self.woke(fds[0].readable());
    }

    /// Wakes the scheduler from [`Front::wait`], from another thread.
    pub(crate) fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.wake()
    }

    /// Counts a task's outcome, then delivers it.
    pub(crate) fn finish(&self, task: Task, outcome: crate::result::Outcome) {
        task.finish(outcome, &self.shared.counters);
    }

    /// Counts a task as running (`true`) or no longer (`false`) in the stats.
    pub(crate) fn running(&self, up: bool) {
        self.shared.counters.running(up);
    }

    /// Sets the worker counts the stats report.
    pub(crate) fn set_workers(&self, alive: usize) {
        self.shared.counters.set_initial(alive);
        self.shared.counters.workers(alive);
    }

    /// Refuses new tasks, as if the pool were terminated (after a fatal error).
    pub(crate) fn shut(&self) {
        self.terminate();
    }
}
