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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::SeqIndex;
use crate::dispatch::{Lease, Submitter, Task};
use crate::error::{Error, Result};
use crate::frame::OutFrame;
use crate::result::{Outcome, Parts, Sink, Slot};
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
    /// Shared with the chunks' sinks.
    chunks: Arc<Chunks>,
    done_rx: Receiver<()>,
    window: usize,
    in_flight: usize,
    limit: Option<Duration>,
    /// Each item's panic caught on its own ([`task::chunk_each`], for `map_each`).
    each: bool,
}

/// What a feed shares with its chunks' sinks, which take each chunk's outcome ([`Parts`]): one
/// `Arc` for every chunk, so a sink costs no allocation.
struct Chunks {
    /// The chunks' results, one part per chunk.
    slot: Arc<Slot>,
    state: Mutex<State>,
    count: usize,
    /// A message per finished chunk, for the feeder that waits for room in its window.
    done: Sender<()>,
    /// Every chunk went out in the first window: no feeder runs, and nobody waits on `done`
    /// (a channel message per chunk saved). Set before the first sink exists, and the sinks
    /// reach the dispatcher through a channel after that, so a relaxed load sees it.
    whole: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Chunks before this one were submitted (or resolved).
    next: usize,
    /// The pool was terminated: submit nothing more.
    stopped: bool,
}

impl Chunks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the feed and resolves every chunk not yet sent with `error`.
    fn fail_rest(&self, error: &Error) {
        self.stop(&mut self.lock(), error);
    }

    fn stop(&self, state: &mut State, error: &Error) {
        state.stopped = true;
        for j in state.next..self.count {
            self.slot.fill(j, Err(error.duplicate()));
        }
    }
}

impl Parts for Chunks {
    fn fill(&self, index: usize, outcome: Outcome) {
        let terminated = matches!(outcome, Err(Error::Terminated));
        self.slot.fill(index, outcome);
        if terminated {
            let mut state = self.lock();
            if !state.stopped {
                self.stop(&mut state, &Error::Terminated);
            }
        }
        if !self.whole.load(Ordering::Relaxed) {
            let _ = self.done.send(());
        }
    }
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
        let count = items.len().div_ceil(chunksize);
        let (done, done_rx) = crossbeam_channel::unbounded();
        let mut feed = Feed {
            submitter: submitter.clone(),
            lease,
            f,
            items,
            chunksize,
            chunks: Arc::new(Chunks {
                slot: Slot::new(count),
                state: Mutex::new(State {
                    next: 0,
                    stopped: false,
                }),
                count,
                done,
                whole: AtomicBool::new(false),
            }),
            done_rx,
            window: window.max(1),
            in_flight: 0,
            limit,
            each,
        };
        let mut frames = Vec::new();
        let mut bytes = 0;
        while frames.len() < count && (frames.len() < feed.window || bytes < SMALL_INPUT) {
            let i = frames.len();
            let frame = feed
                .encode(i)
                .map_err(|e| e.at_items(i * feed.chunksize, feed.range(i).len()))?;
            bytes += frame.0.len();
            frames.push(frame);
        }
        let whole = frames.len() == count;
        feed.chunks.whole.store(whole, Ordering::Relaxed);
        // In batches: one lock of the submission front, one wake-up check and one lock of the
        // feed's state for many chunks (map with chunksize 1 sends a task per item), while the
        // dispatcher starts on the first batch as the next ones are made.
        let mut frames = frames.into_iter().enumerate().peekable();
        let mut batch = Vec::with_capacity(SUBMIT_BATCH.min(count));
        let chunks = Arc::clone(&feed.chunks);
        while frames.peek().is_some() {
            {
                let mut state = chunks.lock();
                if state.stopped {
                    break;
                }
                batch.extend(frames.by_ref().take(SUBMIT_BATCH).map(|(i, frame)| {
                    state.next = i + 1;
                    feed.task(i, frame)
                }));
            }
            // Refused tasks resolve as terminated through their sinks, which stops the feed.
            let _ = feed
                .submitter
                .submit_leased_all(&feed.lease, batch.drain(..));
        }
        Ok(feed)
    }

    /// The slot the chunks' results arrive in.
    pub(crate) fn slot(&self) -> Arc<Slot> {
        Arc::clone(&self.chunks.slot)
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
        {
            let mut state = self.chunks.lock();
            if state.stopped {
                return false;
            }
            state.next = i + 1;
        }
        let task = self.task(i, frame);
        // A refused task resolves as terminated through its sink, which stops the feed.
        self.submitter.submit_leased(&self.lease, task).is_ok()
    }

    /// Chunk `i` as a task to submit; the caller has counted it as sent in the feed's state.
    fn task(&mut self, i: usize, (frame, index): (OutFrame, Option<SeqIndex>)) -> Task {
        let items = self.range(i).len();
        let sink = Sink::part(Arc::clone(&self.chunks) as Arc<dyn Parts>, i);
        let mut task = Task::new(frame, sink)
            .with_limit(self.limit, items)
            .cancellable(&self.chunks.slot);
        if let Some(index) = index {
            task = task.each_chunk(index);
        }
        self.in_flight += 1;
        task
    }

    /// A handle that can fail the chunks not yet sent, should the feed never run.
    pub(crate) fn abandon(&self) -> Abandon {
        Abandon {
            chunks: Arc::clone(&self.chunks),
        }
    }

    /// True once every chunk was submitted (or resolved).
    pub(crate) fn is_done(&self) -> bool {
        let state = self.chunks.lock();
        state.stopped || state.next >= self.chunks.count
    }

    /// Feeds the remaining chunks, one each time a chunk in flight finishes.
    pub(crate) fn run(mut self) {
        loop {
            let next = {
                let state = self.chunks.lock();
                // A cancelled map sends nothing more.
                if state.stopped
                    || state.next >= self.chunks.count
                    || self.chunks.slot.is_cancelled()
                {
                    return;
                }
                state.next
            };
            while self.in_flight >= self.window {
                // Every submitted chunk's sink sends once, even when the pool is dropped: the
                // wait ends.
                if self.done_rx.recv().is_err() {
                    return;
                }
                self.in_flight -= 1;
            }
            if self.chunks.slot.is_cancelled() {
                return;
            }
            match self.encode(next) {
                Ok(frame) => {
                    if !self.submit(next, frame) {
                        return;
                    }
                }
                Err(error) => {
                    self.chunks.fail_rest(&error);
                    return;
                }
            }
        }
    }
}

/// Fails the chunks of a [`Feed`] that were not sent, if it cannot run.
pub(crate) struct Abandon {
    chunks: Arc<Chunks>,
}

impl Abandon {
    /// Stops the feed and resolves every chunk not yet sent with `error`.
    pub(crate) fn fail_rest(&self, error: &Error) {
        self.chunks.fail_rest(error);
    }
}
