//! A task on its way through the dispatcher, and what a worker's reply means for its caller.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{self, SeqIndex};
use crate::error::Error;
use crate::frame::{Bytes, OutFrame, Reply, Status};
use crate::ledger::{self, Committed};
use crate::result::{Outcome, Sink, Slot};
use crate::stats::Counters;
use crate::task;

/// How long past a task's time limit the dispatcher waits for the worker's own timer (SIGALRM)
/// before it has the worker killed itself.
pub(super) const BACKSTOP_SLACK: Duration = Duration::from_millis(500);

/// A task on its way: its frame (argument encoded, id stamped at dispatch) and where its outcome
/// goes.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) frame: OutFrame,
    sink: Sink,
    /// Time limit per item, and how many items the frame holds (1, or a chunk's length).
    pub(crate) limit: Option<Duration>,
    items: u32,
    /// The slot whose cancel cancels this task, if it can be cancelled.
    watch: Option<Arc<Slot>>,
    /// For a chunk of `map_each`: where each item's argument starts in the frame, so that the
    /// items after a lost one can be sent again.
    index: Option<SeqIndex>,
    /// The host a serving rank of an MPI pool names in the death of a worker that ran this
    /// task (`None` elsewhere: a local worker has no host in its errors).
    host: Option<Arc<str>>,
    /// Results that came before this task's final reply: in partial frames, and, for the rest
    /// of a chunk whose worker died, those of the items before it.
    pieces: Option<Box<Pieces>>,
    /// Items of this task that came in partial frames, and their bytes.
    partial_items: u64,
    partial_bytes: usize,
}

/// The encoded results of the first `items` items of a chunk, back to back.
#[derive(Debug, Default)]
struct Pieces {
    items: u64,
    bytes: Vec<u8>,
}

impl Task {
    pub(crate) fn new(frame: OutFrame, sink: Sink) -> Task {
        Task {
            frame,
            sink,
            limit: None,
            items: 1,
            watch: None,
            index: None,
            host: None,
            pieces: None,
            partial_items: 0,
            partial_bytes: 0,
        }
    }

    /// Marks the task as a chunk of `map_each` (built by `task::chunk_each`, which gave
    /// `index`): should its worker die in the middle, the items that finished keep their
    /// results, the one it ran fails, and the rest run again as a task of their own.
    pub(crate) fn each_chunk(mut self, index: SeqIndex) -> Task {
        self.index = Some(index);
        self
    }

    /// Takes the payload of a partial reply frame ([`Status::Partial`]) for this task.
    ///
    /// # Errors
    /// A message for the protocol error, if the payload does not follow on what came before.
    pub(super) fn take_partial(&mut self, payload: &[u8]) -> Result<(), String> {
        let (first, count, bytes) = ledger::parse_partial(payload)?;
        let expected = self.partial_items;
        let left = u64::from(self.items) - expected;
        if first != expected || count > left || count == 0 {
            return Err(format!(
                "a partial reply of items {first} to {first}+{count} of a task of {} items, \
                 after {expected} of them",
                self.items
            ));
        }
        let pieces = self.pieces.get_or_insert_with(Box::default);
        pieces.items += count;
        pieces.bytes.extend_from_slice(bytes);
        self.partial_items += count;
        self.partial_bytes += bytes.len();
        Ok(())
    }

    /// The task's worker was killed for another task's sake (a cancel it had already
    /// answered) while it ran this one, which is not to suffer for it: the task runs again
    /// elsewhere. For a chunk of `map_each` whose worker's ledger (`committed`) makes sense,
    /// the items it finished keep their results and only the rest runs again, from the item
    /// it was running; otherwise the whole task does, and what its partial frames brought is
    /// forgotten. `None` if nothing is left to run (its result is delivered).
    pub(super) fn interrupted(
        mut self,
        committed: Option<Result<Option<Committed>, String>>,
        counters: &Counters,
    ) -> Option<Task> {
        let items = u64::from(self.items);
        if let (Some(index), Some(Ok(Some(c)))) = (&self.index, committed) {
            let done = self.partial_items.saturating_add(c.count as u64);
            if c.first == self.partial_items && done <= items {
                let mut pieces = self.pieces.take().unwrap_or_default();
                pieces.items += c.count as u64;
                pieces.bytes.extend_from_slice(&c.bytes);
                let index = index.clone();
                return self.rest_from(done, index, pieces, counters);
            }
        }
        if let Some(pieces) = &mut self.pieces {
            pieces.items -= self.partial_items;
            let keep = pieces.bytes.len() - self.partial_bytes;
            pieces.bytes.truncate(keep);
            if pieces.items == 0 {
                self.pieces = None;
            }
        }
        self.partial_items = 0;
        self.partial_bytes = 0;
        Some(self)
    }

    /// What a final reply means for this task's caller: [`outcome`], with the results that came
    /// before it put in front.
    pub(super) fn outcome_of(&mut self, reply: Reply) -> Outcome {
        match self.pieces.take() {
            Some(pieces) if reply.status == Status::Ok => {
                let (n, items) =
                    codec::split_seq(&reply.payload).map_err(|message| Error::Decode {
                        what: "result",
                        message,
                    })?;
                Ok(assemble(&pieces, n, items))
            }
            _ => outcome(reply),
        }
    }

    /// The task's worker died running it (as `error` says). With what the worker's ledger
    /// holds (`committed`: `Ok(None)` if it had not started the task), the items it finished
    /// keep their results and the one it ran fails; for a chunk of `map_each`, the items after
    /// that one come back as a new task to run elsewhere (none of them started), and the rest
    /// of this one's results wait in it. Otherwise the task fails with `error`, naming the item
    /// if it is known.
    pub(super) fn lost(
        mut self,
        committed: Result<Option<Committed>, String>,
        error: Error,
        pid: u32,
        counters: &Counters,
    ) -> Option<Task> {
        let error = match (error, &self.host) {
            (
                Error::WorkerDied {
                    pid,
                    cause,
                    host: None,
                },
                Some(host),
            ) => Error::WorkerDied {
                pid,
                cause,
                host: Some(host.to_string()),
            },
            (error, _) => error,
        };
        let committed = match committed {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.finish(Err(error), counters);
                return None;
            }
            Err(message) => {
                let message = format!("its ledger makes no sense: {message}");
                self.finish(Err(Error::Protocol { pid, message }), counters);
                return None;
            }
        };
        let items = u64::from(self.items);
        let done = self.partial_items.saturating_add(committed.count as u64);
        if committed.first != self.partial_items || done > items {
            let message = format!(
                "its ledger says items {} to {}+{} of a task of {items} items are done, after \
                 {} came in partial replies",
                committed.first, committed.first, committed.count, self.partial_items
            );
            self.finish(Err(Error::Protocol { pid, message }), counters);
            return None;
        }
        // The item ran out of its own time limit, not the chunk's.
        let error = match (error, self.limit) {
            (Error::TimedOut { pid, .. }, Some(limit)) if done < items => {
                Error::TimedOut { pid, limit }
            }
            (error, _) => error,
        };
        let lost = task::lost_item(&error);
        let (Some(index), Some(lost)) = (self.index.take(), lost.as_ref()) else {
            // A chunk of `map` (its results are all or nothing) or any other task: the item
            // it ran is named, if it was one of several.
            let error = if items > 1 && done < items && lost.is_some() {
                Error::Item {
                    index: done as usize,
                    items: 1,
                    source: Box::new(error),
                }
            } else {
                error
            };
            self.finish(Err(error), counters);
            return None;
        };
        let mut pieces = self.pieces.take().unwrap_or_default();
        pieces.items += committed.count as u64;
        pieces.bytes.extend_from_slice(&committed.bytes);
        if done < items {
            pieces.items += 1;
            pieces.bytes.extend_from_slice(lost);
        }
        self.rest_from(done + 1, index, pieces, counters)
    }

    /// A `map_each` chunk whose items before `from` have their results in `pieces`: delivers
    /// the whole result if no item is left, or else gives back the task of the items from
    /// `from` on, which carries `pieces`, this task's sink and its cancel watch.
    fn rest_from(
        mut self,
        from: u64,
        index: SeqIndex,
        pieces: Box<Pieces>,
        counters: &Counters,
    ) -> Option<Task> {
        let items = u64::from(self.items);
        if from >= items {
            self.finish(Ok(assemble(&pieces, 0, &[])), counters);
            return None;
        }
        let (frame, index) = task::tail(&self.frame, &index, from as usize);
        Some(Task {
            frame,
            sink: std::mem::replace(&mut self.sink, Sink::then(drop)),
            limit: self.limit,
            items: (items - from) as u32,
            watch: self.watch.take(),
            index: Some(index),
            host: self.host.take(),
            pieces: Some(pieces),
            partial_items: 0,
            partial_bytes: 0,
        })
    }

    /// Makes the task cancellable through `slot`: once [`Slot::cancel`] succeeded, the
    /// dispatcher drops the task if it has not started, or kills the worker running it.
    pub(crate) fn cancellable(mut self, slot: &Arc<Slot>) -> Task {
        self.watch = Some(Arc::clone(slot));
        self
    }

    /// True once the task's result handle was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.watch.as_ref().is_some_and(|slot| slot.is_cancelled())
    }

    /// The slot whose cancel cancels this task, if any: for a scheduler that hands the task's
    /// frame to another pool (the `mpi` module's, to rank 0's local pool), whose task is then
    /// made [`cancellable`](Task::cancellable) through the same slot.
    #[cfg(feature = "mpi")]
    pub(crate) fn cancel_watch(&self) -> Option<&Arc<Slot>> {
        self.watch.as_ref()
    }

    /// Gives each of the task's `items` the time limit `limit`.
    pub(crate) fn with_limit(mut self, limit: Option<Duration>, items: usize) -> Task {
        self.limit = limit;
        self.items = items.clamp(1, u32::MAX as usize) as u32;
        self
    }

    /// The task's frame, for a scheduler that sends it elsewhere (the `mpi` module).
    #[cfg(feature = "mpi")]
    pub(crate) fn frame_mut(&mut self) -> &mut OutFrame {
        &mut self.frame
    }

    /// Takes the task's index as a chunk of `map_each` (see [`each_chunk`](Task::each_chunk)),
    /// for a scheduler that sends its frame elsewhere (the `mpi` module) and marks the task
    /// that runs it there.
    #[cfg(feature = "mpi")]
    pub(crate) fn take_each_index(&mut self) -> Option<SeqIndex> {
        self.index.take()
    }

    /// Names `host` in the death of the worker that runs this task: for a serving rank of an
    /// MPI pool, whose deaths rank 0's caller reads among the results of a `map_each` chunk.
    #[cfg(feature = "mpi")]
    pub(crate) fn on_host(mut self, host: Arc<str>) -> Task {
        self.host = Some(host);
        self
    }

    /// The time limit of each item, and how many items the frame holds.
    #[cfg(feature = "mpi")]
    pub(crate) fn limit(&self) -> (Option<Duration>, u32) {
        (self.limit, self.items)
    }

    /// Counts the task's outcome, then delivers it. A panic on the way (a user's `Waker` that
    /// panics in `wake`) is caught: it must not end the dispatcher (issue 8, item 13).
    pub(crate) fn finish(self, outcome: Outcome, counters: &Counters) {
        counters.completed(&outcome);
        let sink = self.sink;
        let _ = panic::catch_unwind(AssertUnwindSafe(move || sink.deliver(outcome)));
    }

    /// How long the whole task may run: the limit per item times the items. `None` without a
    /// limit, and for a limit so large that it is no practical limit (it does not fit in a
    /// `Duration`).
    pub(crate) fn total_limit(&self) -> Option<Duration> {
        self.limit?.checked_mul(self.items)
    }

    /// When the worker should have killed itself over this task's limit, plus slack; past
    /// this, the dispatcher has it killed. `None` if there is no limit or it lies beyond what an
    /// `Instant` can say (issue 8, item 3: `Duration::MAX` panicked here).
    pub(super) fn backstop(&self, started: Instant) -> Option<Instant> {
        deadline(started, self.total_limit()?)
    }
}

/// The encoded sequence of the items in `pieces`, then the `n` items encoded in `rest`.
fn assemble(pieces: &Pieces, n: u64, rest: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(10 + pieces.bytes.len() + rest.len());
    codec::seq_header(pieces.items.saturating_add(n) as usize, &mut out);
    out.extend_from_slice(&pieces.bytes);
    out.extend_from_slice(rest);
    Bytes::from_vec(out, 0)
}

/// `start + limit + BACKSTOP_SLACK`, or `None` if that overflows (no practical limit).
pub(super) fn deadline(start: Instant, limit: Duration) -> Option<Instant> {
    start.checked_add(limit.checked_add(BACKSTOP_SLACK)?)
}

/// A task written (or being written) to a worker, under the id stamped into its frame.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) id: u64,
    pub(super) task: Task,
    /// The skip slot of the worker's ledger that asks the worker not to run it (it was
    /// cancelled while it waited in the pipe; see [`Ledger::skip`](crate::ledger::Ledger::skip)).
    pub(super) skip: Option<usize>,
}

/// What a reply means for its caller.
pub(super) fn outcome(reply: Reply) -> Outcome {
    if reply.status == Status::Ok {
        return Ok(reply.payload);
    }
    let message = String::from_utf8_lossy(&reply.payload).into_owned();
    Err(match reply.status {
        Status::Ok => unreachable!("handled above"),
        Status::Panicked => {
            let (item, rest) = crate::worker::split_chunk_item(&message);
            let (message, location) = crate::worker::split_panic_payload(rest);
            let panicked = Error::TaskPanicked { message, location };
            match item {
                // Counted from the chunk's start; its caller moves it to its input position.
                Some(index) => Error::Item {
                    index,
                    items: 1,
                    source: Box::new(panicked),
                },
                None => panicked,
            }
        }
        Status::EncodeFailed => Error::Encode {
            what: "result",
            message,
        },
        Status::DecodeFailed => Error::Decode {
            what: "argument",
            message,
        },
        Status::InitializerPanicked => Error::InitializerPanicked { message },
        Status::Skipped => Error::Cancelled,
        Status::Ready | Status::Partial => {
            unreachable!("Ready and Partial frames are handled by the worker's reader")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 8, item 3): `task_timeout(Duration::MAX)` overflowed here and the
    /// panic ended the dispatcher.
    #[test]
    fn a_huge_limit_has_no_backstop_and_does_not_panic() {
        let now = Instant::now();
        for (limit, items) in [(Duration::MAX, 1), (Duration::MAX - BACKSTOP_SLACK, 1)] {
            let task =
                Task::new(OutFrame::default(), Sink::then(drop)).with_limit(Some(limit), items);
            assert_eq!(task.backstop(now), None);
        }
        let long = Duration::from_secs(u64::MAX / 4);
        let task = Task::new(OutFrame::default(), Sink::then(drop)).with_limit(Some(long), 8);
        assert_eq!(task.backstop(now), None);
        let short = Task::new(OutFrame::default(), Sink::then(drop))
            .with_limit(Some(Duration::from_secs(1)), 3);
        assert_eq!(
            short.backstop(now),
            Some(now + Duration::from_secs(3) + BACKSTOP_SLACK)
        );
    }
}
