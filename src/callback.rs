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

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;

use crate::error::{Error, Result};

/// A unit of work for the callback thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

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
