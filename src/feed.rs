//! How `map` sends its input: chunk by chunk, each chunk encoded only when the window has room,
//! so the parent never holds the whole input encoded (8 arguments of 200 MB once peaked at
//! 3.6 GB). At most `window` chunks are submitted and unfinished at a time; each finished chunk
//! lets the next one be encoded and sent.
//!
//! The first window is encoded before anything is submitted, so an argument that cannot be
//! encoded there fails the call with nothing sent. It also takes every further chunk while the
//! frames encoded so far total under [`SMALL_INPUT`]: a small input goes out whole at once, with
//! no feeding and no feeder thread. Later chunks are fed by the blocking `map`
//! from the caller's thread, or by `map_async` from a feeder thread of its own; an encode error
//! there fails the chunks not yet sent.
//!
//! Termination: a chunk that comes back [`Error::Terminated`] stops the feed and resolves every
//! chunk not yet sent as terminated too, from the dispatcher's own delivery, so that after
//! `terminate` and `join` the whole result is ready even while a feeder is still waiting.

use std::borrow::Borrow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::SeqIndex;
use crate::dispatch::{Lease, Submitter, Task};
use crate::error::{Error, Result};
use crate::frame::OutFrame;
use crate::result::{Sink, Slot};
use crate::task;

/// Encoded bytes below which the first window takes more than its chunks: the memory bound
/// matters for large inputs, and a small one is cheaper sent whole.
const SMALL_INPUT: usize = 4 << 20;
/// Chunks of the first window submitted at once.
const SUBMIT_BATCH: usize = 256;

/// Feeds the chunks of one `map` into the pool.
pub(crate) struct Feed<A, R, B> {
    submitter: Submitter,
    lease: Lease,
    f: fn(A) -> R,
    items: Vec<B>,
    chunksize: usize,
    /// The chunks' results, one part per chunk.
    slot: Arc<Slot>,
    /// Shared with the chunks' sinks.
    state: Arc<Mutex<State>>,
    done_tx: Sender<()>,
    /// Every chunk goes out in the first window: no feeder runs, and nobody waits on `done_rx`.
    whole: bool,
    done_rx: Receiver<()>,
    window: usize,
    in_flight: usize,
    limit: Option<Duration>,
    /// Each item's panic caught on its own ([`task::chunk_each`], for `map_each`).
    each: bool,
}

#[derive(Debug)]
struct State {
    /// Chunks before this one were submitted (or resolved).
    next: usize,
    /// The pool was terminated: submit nothing more.
    stopped: bool,
}

impl<A, R, B> Feed<A, R, B>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    B: Borrow<A>,
{
    /// Encodes and submits the first window of chunks.
    ///
    /// # Errors
    /// [`Error::Closed`] if the pool takes no tasks; [`Error::Encode`] if an item of the first
    /// window cannot be encoded. Nothing is submitted then.
    pub(crate) fn start(
        submitter: &Submitter,
        f: fn(A) -> R,
        items: Vec<B>,
        chunksize: usize,
        window: usize,
        limit: Option<Duration>,
        each: bool,
    ) -> Result<Feed<A, R, B>> {
        let lease = submitter.lease()?;
        let chunks = items.len().div_ceil(chunksize);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let mut feed = Feed {
            submitter: submitter.clone(),
            lease,
            f,
            items,
            chunksize,
            slot: Slot::new(chunks),
            state: Arc::new(Mutex::new(State {
                next: 0,
                stopped: false,
            })),
            done_tx,
            done_rx,
            whole: false,
            window: window.max(1),
            in_flight: 0,
            limit,
            each,
        };
        let mut frames = Vec::new();
        let mut bytes = 0;
        while frames.len() < chunks && (frames.len() < feed.window || bytes < SMALL_INPUT) {
            let i = frames.len();
            let frame = feed
                .encode(i)
                .map_err(|e| e.at_items(i * feed.chunksize, feed.range(i).len()))?;
            bytes += frame.0.len();
            frames.push(frame);
        }
        feed.whole = frames.len() == chunks;
        // In batches: one lock of the submission front and one wake-up check for many chunks
        // (map with chunksize 1 sends a task per item), while the dispatcher starts on the
        // first batch as the next ones are made.
        let mut batch = Vec::with_capacity(SUBMIT_BATCH.min(frames.len()));
        let mut frames = frames.into_iter().enumerate().peekable();
        while let Some((i, frame)) = frames.next() {
            batch.extend(feed.task(i, frame));
            if batch.len() == SUBMIT_BATCH || frames.peek().is_none() {
                // Refused tasks resolve as terminated through their sinks, which stops the feed.
                let _ = feed
                    .submitter
                    .submit_leased_all(&feed.lease, batch.drain(..));
            }
        }
        Ok(feed)
    }

    /// The slot the chunks' results arrive in.
    pub(crate) fn slot(&self) -> Arc<Slot> {
        Arc::clone(&self.slot)
    }

    fn chunks(&self) -> usize {
        self.items.len().div_ceil(self.chunksize)
    }

    fn range(&self, i: usize) -> &[B] {
        let start = i * self.chunksize;
        &self.items[start..(start + self.chunksize).min(self.items.len())]
    }

    /// Chunk `i`'s frame, and for `map_each` where each of its items starts in it.
    fn encode(&self, i: usize) -> Result<(OutFrame, Option<SeqIndex>)> {
        if self.each {
            let (frame, index) = task::chunk_each(self.f, self.range(i))?;
            Ok((frame, Some(index)))
        } else {
            Ok((task::chunk(self.f, self.range(i))?, None))
        }
    }

    /// The chunk size and the number of items: how the slot's parts map to input positions.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.chunksize, self.items.len())
    }

    /// Submits chunk `i`, unless the feed was stopped. False once it is stopped.
    fn submit(&mut self, i: usize, frame: (OutFrame, Option<SeqIndex>)) -> bool {
        match self.task(i, frame) {
            // A refused task resolves as terminated through its sink, which stops the feed.
            Some(task) => self.submitter.submit_leased(&self.lease, task).is_ok(),
            None => false,
        }
    }

    /// Chunk `i` as a task to submit, unless the feed was stopped.
    fn task(&mut self, i: usize, (frame, index): (OutFrame, Option<SeqIndex>)) -> Option<Task> {
        let items = self.range(i).len();
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.stopped {
                return None;
            }
            state.next = i + 1;
        }
        // Only a feeder still to come waits for chunks to finish: with every chunk in the first
        // window, no sink needs to say so (a channel message per chunk saved).
        let done = (!self.whole).then(|| self.done_tx.clone());
        let (slot, state) = (Arc::clone(&self.slot), Arc::clone(&self.state));
        let chunks = self.chunks();
        let sink = Sink::then(move |outcome| {
            let terminated = matches!(outcome, Err(Error::Terminated));
            slot.fill(i, outcome);
            if terminated {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                if !state.stopped {
                    state.stopped = true;
                    for j in state.next..chunks {
                        slot.fill(j, Err(Error::Terminated));
                    }
                }
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
        let mut task = Task::new(frame, sink)
            .with_limit(self.limit, items)
            .cancellable(&self.slot);
        if let Some(index) = index {
            task = task.each_chunk(index);
        }
        self.in_flight += 1;
        Some(task)
    }

    /// A handle that can fail the chunks not yet sent, should the feed never run.
    pub(crate) fn abandon(&self) -> Abandon {
        Abandon {
            slot: Arc::clone(&self.slot),
            state: Arc::clone(&self.state),
            chunks: self.chunks(),
        }
    }

    /// True once every chunk was submitted (or resolved).
    pub(crate) fn is_done(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.stopped || state.next >= self.chunks()
    }

    /// Feeds the remaining chunks, one each time a chunk in flight finishes.
    pub(crate) fn run(mut self) {
        let chunks = self.chunks();
        loop {
            let next = {
                let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                // A cancelled map sends nothing more.
                if state.stopped || state.next >= chunks || self.slot.is_cancelled() {
                    return;
                }
                state.next
            };
            while self.in_flight >= self.window {
                // Every submitted chunk's sink sends once, even when the pool is dropped, and
                // this feed holds a sender: the wait ends.
                if self.done_rx.recv().is_err() {
                    return;
                }
                self.in_flight -= 1;
            }
            if self.slot.is_cancelled() {
                return;
            }
            match self.encode(next) {
                Ok(frame) => {
                    if !self.submit(next, frame) {
                        return;
                    }
                }
                Err(error) => {
                    let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                    state.stopped = true;
                    for j in next..chunks {
                        self.slot.fill(j, Err(error.duplicate()));
                    }
                    return;
                }
            }
        }
    }
}

/// Fails the chunks of a [`Feed`] that were not sent, if it cannot run.
#[derive(Debug)]
pub(crate) struct Abandon {
    slot: Arc<Slot>,
    state: Arc<Mutex<State>>,
    chunks: usize,
}

impl Abandon {
    /// Stops the feed and resolves every chunk not yet sent with `error`.
    pub(crate) fn fail_rest(&self, error: &Error) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.stopped = true;
        for j in state.next..self.chunks {
            self.slot.fill(j, Err(error.duplicate()));
        }
    }
}
