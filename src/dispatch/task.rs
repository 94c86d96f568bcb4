//! A task on its way through the dispatcher, and what a worker's reply means for its caller.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::frame::{OutFrame, Reply, Status};
use crate::result::{Outcome, Sink, Slot};
use crate::stats::Counters;

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
}

impl Task {
    pub(crate) fn new(frame: OutFrame, sink: Sink) -> Task {
        Task {
            frame,
            sink,
            limit: None,
            items: 1,
            watch: None,
        }
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

/// `start + limit + BACKSTOP_SLACK`, or `None` if that overflows (no practical limit).
pub(super) fn deadline(start: Instant, limit: Duration) -> Option<Instant> {
    start.checked_add(limit.checked_add(BACKSTOP_SLACK)?)
}

/// A task written (or being written) to a worker, under the id stamped into its frame.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) id: u64,
    pub(super) task: Task,
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
        Status::Ready => unreachable!("Ready frames are handled by the worker's reader"),
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
