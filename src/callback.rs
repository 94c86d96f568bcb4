//! The pool's callback thread: where [`Pool::apply_async_with`](crate::Pool::apply_async_with)
//! callbacks run, one at a time, in the order their tasks finished.
//!
//! Callbacks run off the dispatcher thread, so a slow one delays other callbacks but never the
//! pipes. A callback that panics is caught (the panic hook reports it once on stderr); the
//! thread goes on, and the task's own result still reaches `get()`. Python's pool lost its
//! result thread to such a panic and hung (gh-83371).

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;

use crate::error::{Error, Result};

/// A unit of work for the callback thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The callback thread, started on first use.
#[derive(Debug, Default)]
pub(crate) struct Callbacks {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    finished: bool,
}

impl Callbacks {
    /// A sender to the callback thread, starting it if need be.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool was joined; [`Error::Io`] if the thread cannot start.
    pub(crate) fn sender(&self) -> Result<Sender<Job>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.finished {
            return Err(Error::Closed);
        }
        if let Some(tx) = &state.tx {
            return Ok(tx.clone());
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
        Ok(tx)
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

/// Runs a user callback, catching its panic so that the callback thread goes on.
pub(crate) fn run_caught<T>(callback: impl FnOnce(&T), value: &T) {
    let _ = panic::catch_unwind(AssertUnwindSafe(|| callback(value)));
}
