//! The pool's callback thread: where [`Pool::apply_async_with`](crate::Pool::apply_async_with)
//! callbacks run, one at a time, in the order their tasks finished.
//!
//! Progress that adds up: the dispatcher counts a task completed when its reply arrives, which
//! is before its callback runs here, so [`Stats::completed`](crate::Stats::completed) read in
//! a callback may be ahead of the callbacks run. This thread counts the callbacks it starts,
//! just before each one ([`Stats::callbacks_run`](crate::Stats::callbacks_run)): inside the
//! k-th callback it reads k.
//!
//! Callbacks run off the dispatcher thread, so a slow one delays other callbacks but never the
//! pipes. A callback that panics is caught (the panic hook reports it once on stderr); the
//! thread goes on, and the task's own result still reaches `get()`. Python's pool lost its
//! result thread to such a panic and hung (gh-83371).
//!
//! A callback may wait for another task's result ([`AsyncResult::get`](crate::AsyncResult::get)),
//! even one whose own callback is queued behind it on this thread (such a result is complete
//! only once its callback has run): while it waits, the thread runs the callbacks queued
//! behind it ([`run_pending`]). Before, that wait deadlocked the thread, and with it every
//! later callback, `terminate`, `join` and drop (issue 8, item 5). A cycle (two callbacks each
//! waiting for the other's result) still waits forever; `wait_timeout` bounds it.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};

/// A unit of work for the callback thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// On a callback thread, its queue of jobs, so that a callback that waits can run the ones
    /// behind it.
    static JOBS: RefCell<Option<Receiver<Job>>> = const { RefCell::new(None) };
}

/// On a callback thread, runs the next queued callback, waiting up to `limit` for one, and
/// returns true; on any other thread returns false at once.
pub(crate) fn run_pending(limit: Duration) -> bool {
    let Some(rx) = JOBS.with(|jobs| jobs.borrow().clone()) else {
        return false;
    };
    if let Ok(job) = rx.recv_timeout(limit) {
        let _ = panic::catch_unwind(AssertUnwindSafe(job));
    }
    true
}

/// The callback thread, started on first use.
#[derive(Debug, Default)]
pub(crate) struct Callbacks {
    state: Mutex<State>,
    /// Callbacks started so far.
    started: Arc<AtomicU64>,
}

/// What a task's callback job needs: where to send it, and the counter it bumps.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    tx: Sender<Job>,
    started: Arc<AtomicU64>,
}

impl Runner {
    /// Queues `job` for the callback thread; runs it here if that thread is gone.
    pub(crate) fn send(&self, job: Job) {
        if let Err(crossbeam_channel::SendError(job)) = self.tx.send(job) {
            job();
        }
    }

    /// Runs a user callback, counted first, catching its panic so that the callback thread
    /// goes on.
    pub(crate) fn run_caught<T>(&self, callback: impl FnOnce(&T), value: &T) {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _ = panic::catch_unwind(AssertUnwindSafe(|| callback(value)));
    }
}

#[derive(Debug, Default)]
struct State {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    finished: bool,
}

impl Callbacks {
    /// A handle on the callback thread, starting it if need be.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool was joined; [`Error::Io`] if the thread cannot start.
    pub(crate) fn runner(&self) -> Result<Runner> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.finished {
            return Err(Error::Closed);
        }
        let started = Arc::clone(&self.started);
        if let Some(tx) = &state.tx {
            return Ok(Runner {
                tx: tx.clone(),
                started,
            });
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let thread = thread::Builder::new()
            .name("forkpool-callbacks".into())
            .spawn(move || {
                let _ending = crate::sys::EndingThread;
                JOBS.with(|jobs| *jobs.borrow_mut() = Some(rx.clone()));
                for job in rx {
                    // The job itself catches the callback's panic; this is a second net.
                    let _ = panic::catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map_err(Error::io("spawning the callback thread"))?;
        state.tx = Some(tx.clone());
        state.thread = Some(thread);
        Ok(Runner { tx, started })
    }

    /// How many callbacks have started.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// In a process forked from the pool's owner: forgets the callback thread, which exists
    /// only in the owner (its handle here names nothing to join or detach).
    /// Never blocks: another thread may have held the lock at the fork, and then nothing is
    /// forgotten.
    pub(crate) fn abandon(&self) {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        state.finished = true;
        state.tx = None;
        std::mem::forget(state.thread.take());
    }

    /// Waits for every pending callback to run, then for the thread to end. Only after the
    /// dispatcher has ended, so that no task still holds a sender.
    pub(crate) fn finish(&self) {
        let thread = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.finished = true;
            state.tx = None;
            state.thread.take()
        };
        if let Some(thread) = thread {
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
