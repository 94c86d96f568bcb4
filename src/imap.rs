//! [`Imap`]: results of [`Pool::imap`](crate::Pool::imap) and
//! [`Pool::imap_unordered`](crate::Pool::imap_unordered) as they come, over a bounded window.
//!
//! The iterator pulls its input lazily, in the caller's thread: it keeps at most `window` items
//! submitted but not yet yielded (running, queued, or finished and waiting to be taken), and
//! pulls the next input item only when one is yielded. An endless input therefore works, and
//! memory stays flat however long the input is.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;

use crate::codec::SeqIndex;
use crate::dispatch::{Lease, Submitter, Task};
use crate::error::{Error, Result};
use crate::frame::OutFrame;
use crate::result::{decode_result_owned, each_of_chunk, Outcome, Sink, Streamed};
use crate::sys;

/// Pulls the next task's worth of input (one item, or a chunk) and encodes it as a task frame
/// (for a chunk, with where each of its items starts in it), with the number of items it
/// holds; `None` once the input is done.
pub(crate) type Feed =
    Box<dyn FnMut() -> Option<(Result<(OutFrame, Option<SeqIndex>)>, usize)> + Send>;

/// How a task's results are laid out: one item's `R`, or a chunk's `Vec<Each<R>>` (built by
/// [`task::chunk_each`](crate::task::chunk_each), each item's own result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Each task is one item.
    Single,
    /// Each task is a chunk of items.
    Chunks,
}

/// An iterator over the results of [`Pool::imap`](crate::Pool::imap) (input order) or
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) (completion order).
///
/// A panic or a crash fails only the `Result` of the item it happened in, and iteration goes
/// on. That holds for [`imap_chunked`](crate::Pool::imap_chunked) too, where each chunk is one
/// task: the other items of a chunk keep their results, and should a worker die in the
/// middle of one, the items it had not started run elsewhere. Dropping the iterator early
/// stops pulling input; tasks already submitted finish in the background and their results
/// are discarded.
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
    shape: Shape,
    tx: Sender<Streamed>,
    rx: Receiver<Streamed>,
    /// Tasks submitted, and tasks whose outcome was taken: the window is their difference.
    submitted: usize,
    taken: usize,
    /// Tasks kept submitted but not yet taken.
    window: usize,
    /// `Some` for input order: outcomes that arrived ahead of their turn.
    waiting: Option<BTreeMap<usize, (usize, Outcome)>>,
    /// Items of taken tasks, not yet yielded.
    ready: VecDeque<Result<R>>,
    /// Each item's time limit.
    limit: Option<Duration>,
    /// Items per task (every chunk but the last is full): task `i` starts at input position
    /// `i * per_task`, which errors name.
    per_task: usize,
    /// The process whose pool runs the tasks (`sys::cached_pid`).
    owner: u32,
    _result: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned + 'static> Imap<R> {
    pub(crate) fn new(
        submitter: Submitter,
        feed: Feed,
        shape: Shape,
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
            shape,
            tx,
            rx,
            submitted: 0,
            taken: 0,
            window: window.max(1),
            waiting: ordered.then(BTreeMap::new),
            ready: VecDeque::new(),
            limit,
            per_task: 1,
            owner: sys::cached_pid(),
            _result: PhantomData,
        };
        imap.top_up();
        Ok(imap)
    }

    /// Submits tasks until the window is full or the input is done.
    fn top_up(&mut self) {
        while self.submitted - self.taken < self.window {
            let Some(lease) = &self.lease else { return };
            let index = self.submitted;
            let next = (self.feed)();
            if let (0, Some((_, items))) = (index, &next) {
                self.per_task = (*items).max(1);
            }
            match next {
                None => {
                    self.lease = None;
                    return;
                }
                Some((Ok((frame, chunk)), items)) => {
                    let mut task = Task::new(frame, Sink::stream(&self.tx, index, items))
                        .with_limit(self.limit, items);
                    if let Some(chunk) = chunk {
                        task = task.each_chunk(chunk);
                    }
                    if self.submitter.submit_leased(lease, task).is_err() {
                        // The pool was terminated; the refused task resolved as such. Pull no
                        // more input.
                        self.lease = None;
                    }
                }
                Some((Err(error), items)) => {
                    let _ = self.tx.send((index, items, Err(error)));
                }
            }
            self.submitted += 1;
        }
    }

    /// Turns the outcome of task `index` into its items' results, queued to be yielded; an
    /// error names the item's input position ([`Error::Item`]).
    fn unpack(&mut self, index: usize, items: usize, outcome: Outcome) {
        self.taken += 1;
        let base = index * self.per_task;
        match self.shape {
            Shape::Single => self.ready.push_back(
                outcome
                    .and_then(decode_result_owned)
                    .map_err(|e| e.at_items(base, 1)),
            ),
            Shape::Chunks => match each_of_chunk(outcome, base, items) {
                Ok(results) => self.ready.extend(results),
                Err(error) => {
                    let error = error.at_items(base, items);
                    self.ready
                        .extend((0..items.max(1)).map(|_| Err(error.duplicate())));
                }
            },
        }
    }
}

impl<R: DeserializeOwned + 'static> Iterator for Imap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            self.top_up();
            let turn = self.taken;
            if let Some((items, outcome)) = self.waiting.as_mut().and_then(|w| w.remove(&turn)) {
                self.unpack(turn, items, outcome);
                continue;
            }
            if self.submitted == self.taken {
                return None;
            }
            if self.owner != sys::cached_pid() && self.owner != 0 {
                // A fork of the process whose pool runs these tasks: nothing will ever arrive
                // here (issue 8, item 7). Say so once, then end.
                let error = Error::ForkedProcess {
                    owner: self.owner,
                    current: sys::cached_pid(),
                };
                self.submitted = self.taken;
                // The lease is the parent's to count: forget it rather than touch the pool.
                std::mem::forget(self.lease.take());
                return Some(Err(error));
            }
            // Every submitted task's sink delivers exactly once, even if the pool is dropped,
            // and we hold a sender, so this cannot disconnect.
            let (index, items, outcome) = self.rx.recv().expect("imap holds its own sender");
            match &mut self.waiting {
                Some(waiting) => {
                    waiting.insert(index, (items, outcome));
                }
                None => self.unpack(index, items, outcome),
            }
        }
    }
}

impl<R> fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("submitted", &self.submitted)
            .field("taken", &self.taken)
            .field("shape", &self.shape)
            .field("input_done", &self.lease.is_none())
            .field("ordered", &self.waiting.is_some())
            .finish()
    }
}
