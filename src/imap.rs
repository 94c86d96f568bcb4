//! [`Imap`]: results of [`Pool::imap`](crate::Pool::imap) and
//! [`Pool::imap_unordered`](crate::Pool::imap_unordered) as they come, over a bounded window.
//!
//! The iterator pulls its input lazily, in the caller's thread: it keeps at most `window` items
//! submitted but not yet yielded (running, queued, or finished and waiting to be taken), and
//! pulls the next input item only when one is yielded. An endless input therefore works, and
//! memory stays flat however long the input is.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;

use crate::dispatch::{Lease, Submitter, Task};
use crate::error::Result;
use crate::frame::OutFrame;
use crate::result::{decode_result_owned, Outcome, Sink};

/// Pulls the next input item and encodes it as a task frame; `None` once the input is done.
pub(crate) type Feed = Box<dyn FnMut() -> Option<Result<OutFrame>> + Send>;

/// An iterator over the results of [`Pool::imap`](crate::Pool::imap) (input order) or
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) (completion order).
///
/// Each item is its own task, so a panic or a crash fails only that item's `Result`, and
/// iteration goes on. Dropping the iterator early stops pulling input; tasks already submitted
/// finish in the background and their results are discarded.
///
/// # Caveats
/// A live `Imap` keeps its pool busy: after [`Pool::close`](crate::Pool::close), it may still
/// submit the rest of its input, and [`Pool::join`](crate::Pool::join) waits until it is
/// exhausted or dropped. Drain or drop it before joining on the same thread.
///
/// # Examples
///
/// ```
/// let pool = forkpool::Pool::new(2)?;
/// let squares: Vec<u64> = pool
///     .imap(|x: u64| x * x, 1..=4)?
///     .collect::<forkpool::Result<_>>()?;
/// assert_eq!(squares, [1, 4, 9, 16]);
/// # Ok::<(), forkpool::Error>(())
/// ```
pub struct Imap<R> {
    submitter: Submitter,
    /// Held while input remains; released once the input is exhausted.
    lease: Option<Lease>,
    feed: Feed,
    tx: Sender<(usize, Outcome)>,
    rx: Receiver<(usize, Outcome)>,
    submitted: usize,
    yielded: usize,
    window: usize,
    /// `Some` for input order: results that arrived ahead of their turn.
    waiting: Option<BTreeMap<usize, Outcome>>,
    /// Each item's time limit.
    limit: Option<Duration>,
    _result: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned + 'static> Imap<R> {
    pub(crate) fn new(
        submitter: Submitter,
        feed: Feed,
        window: usize,
        ordered: bool,
        limit: Option<Duration>,
    ) -> Result<Imap<R>> {
        let lease = submitter.lease()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut imap = Imap {
            submitter,
            lease: Some(lease),
            feed,
            tx,
            rx,
            submitted: 0,
            yielded: 0,
            window: window.max(1),
            waiting: ordered.then(BTreeMap::new),
            limit,
            _result: PhantomData,
        };
        imap.top_up();
        Ok(imap)
    }

    /// Submits input items until the window is full or the input is done.
    fn top_up(&mut self) {
        while self.submitted - self.yielded < self.window {
            let Some(lease) = &self.lease else { return };
            let index = self.submitted;
            match (self.feed)() {
                None => {
                    self.lease = None;
                    return;
                }
                Some(Ok(frame)) => {
                    let task =
                        Task::new(frame, Sink::stream(&self.tx, index)).with_limit(self.limit, 1);
                    if self.submitter.submit_leased(lease, task).is_err() {
                        // The pool was terminated; the refused task resolved as such. Pull no
                        // more input.
                        self.lease = None;
                    }
                }
                Some(Err(error)) => {
                    let _ = self.tx.send((index, Err(error)));
                }
            }
            self.submitted += 1;
        }
    }

    fn finish(&mut self, outcome: Outcome) -> Result<R> {
        self.yielded += 1;
        decode_result_owned(outcome?)
    }
}

impl<R: DeserializeOwned + 'static> Iterator for Imap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            self.top_up();
            if let Some(outcome) = self.waiting.as_mut().and_then(|w| w.remove(&self.yielded)) {
                return Some(self.finish(outcome));
            }
            if self.submitted == self.yielded {
                return None;
            }
            // Every submitted task's sink delivers exactly once, even if the pool is dropped,
            // and we hold a sender, so this cannot disconnect.
            let (index, outcome) = self.rx.recv().expect("imap holds its own sender");
            match &mut self.waiting {
                Some(waiting) => {
                    waiting.insert(index, outcome);
                }
                None => return Some(self.finish(outcome)),
            }
        }
    }
}

impl<R> fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .field("input_done", &self.lease.is_none())
            .field("ordered", &self.waiting.is_some())
            .finish()
    }
}
