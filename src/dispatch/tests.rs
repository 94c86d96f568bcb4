//! Unit tests of the scheduler over a fake process layer: real pipes, played by the test on the
//! worker's side, but no fork and no clock of its own (the tests pass `now`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::task::BACKSTOP_SLACK;
use super::worker::{PIPELINE_WORK, SHORT_TASK};
use super::*;
use crate::frame::{OutFrame, Status};
use crate::result::{Outcome, Sink, Slot};
use crate::spawn::{Pipes, Token};
use crate::sys::Pid;

/// A process layer that forks nothing: it hands out pipes, records kills, and reports what the
/// test tells it to.
#[derive(Debug, Default)]
struct Fake {
    next: Token,
    /// The worker's ends of each spawned worker's pipes: (task pipe read end, reply write end).
    spawned: Vec<(OwnedFd, OwnedFd)>,
    kills: Vec<Pid>,
    events: VecDeque<Event>,
    /// How many times the dispatcher said it would ask for no more workers.
    finished: usize,
    /// What `poll_fd` offers, if anything: a pipe the test makes readable to wake the loop.
    socket: Option<OwnedFd>,
}

impl Processes for Fake {
    fn spawn(&mut self) -> io::Result<(Token, Pipes)> {
        let (task_r, task_w) = sys::pipe()?;
        let (reply_r, reply_w) = sys::pipe()?;
        self.spawned.push((task_r, reply_w));
        self.next += 1;
        Ok((self.next - 1, Pipes::new(task_w, reply_r)?))
    }
    fn kill(&mut self, pid: Pid) {
        self.kills.push(pid);
    }
    fn poll_fd(&self) -> Option<(RawFd, bool)> {
        Some((self.socket.as_ref()?.as_raw_fd(), false))
    }
    fn service(&mut self, _: bool, _: bool) {}
    fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    fn recreate(&mut self) -> io::Result<()> {
        Err(crate::spawn::server_lost())
    }
    fn finish(&mut self) {
        self.finished += 1;
    }
}

const PID: Pid = 4242;

/// A dispatcher for `processes` fake workers, none asked for yet.
fn unstarted(processes: usize) -> (Submitter, Dispatcher<Fake>) {
    let config = Config {
        processes,
        worker: WorkerConfig {
            initializer: None,
            max_tasks: None,
            max_memory: None,
            print_panics: false,
            max_frame: 1 << 20,
        },
        max_frame: 1 << 20,
    };
    let (submitter, front) = front().unwrap();
    (submitter, Dispatcher::new(config, Fake::default(), front))
}

/// A dispatcher for `processes` fake workers, all forked (Booting) at `now`.
fn dispatcher(processes: usize, now: Instant) -> (Submitter, Dispatcher<Fake>) {
    let (submitter, mut d) = unstarted(processes);
    d.replace_workers(now);
    for token in 0..processes as Token {
        d.procs.events.push_back(Event::Spawned {
            token,
            pid: PID + token as Pid,
        });
    }
    d.apply_events(now);
    (submitter, d)
}

/// A task whose outcome lands in the returned channel.
fn task(limit: Option<Duration>) -> (Task, Receiver<Outcome>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let frame = crate::task::call(|x: u64| x, 7).unwrap();
    let sink = Sink::then(move |outcome| {
        let _ = tx.send(outcome);
    });
    (Task::new(frame, sink).with_limit(limit, 1), rx)
}

/// Writes the worker's Ready frame on its reply pipe, as the worker does after its initializer.
fn say_ready(d: &Dispatcher<Fake>, worker: usize) {
    let mut out = OutFrame::default();
    frame::begin_reply(&mut out.head, 0, Status::Ready);
    out.seal();
    let reply_w = d.procs.spawned[worker].1.as_raw_fd();
    assert_eq!(sys::write(reply_w, &out.head).unwrap(), out.head.len());
}

fn task_pipe_has_data(d: &Dispatcher<Fake>, worker: usize) -> bool {
    sys::wait_readable(d.procs.spawned[worker].0.as_raw_fd(), Duration::ZERO)
}

fn take_queued(d: &mut Dispatcher<Fake>) {
    let tasks: Vec<Task> = d.front.take().collect();
    d.queue.extend(tasks);
}

#[test]
fn a_worker_gets_no_task_before_its_ready_frame() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    assert!(matches!(d.workers[0].life, Life::Booting { .. }));
    let (t, _rx) = task(None);
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert_eq!(d.queue.len(), 1, "the task waits in the queue");
    assert!(d.workers[0].work.inflight.is_empty());
    assert!(!task_pipe_has_data(&d, 0));
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    assert!(matches!(d.workers[0].life, Life::Serving { .. }));
    d.assign(now);
    assert!(d.queue.is_empty());
    assert_eq!(d.workers[0].work.written, 1);
    assert!(task_pipe_has_data(&d, 0));
}

/// Issue 8, item 4: an initializer that never returns must not leave a task with a time limit
/// waiting forever.
#[test]
fn a_worker_stuck_in_its_initializer_fails_the_waiting_task_after_its_limit() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    let limit = Duration::from_millis(100);
    let (t, rx) = task(Some(limit));
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.tick(now + limit);
    assert!(
        d.procs.kills.is_empty(),
        "not before the limit and its slack"
    );
    let wake = d.sleep_timeout(false, now).expect("a timer is set");
    assert_eq!(wake, limit + BACKSTOP_SLACK);
    d.tick(now + limit + BACKSTOP_SLACK);
    assert_eq!(d.procs.kills, [PID]);
    d.procs.events.push_back(Event::Exited {
        pid: PID,
        cause: ExitCause::Signal(libc::SIGKILL),
    });
    d.apply_events(now + limit + BACKSTOP_SLACK);
    match rx.try_recv() {
        Ok(Err(Error::TimedOut { pid, limit: l })) => assert_eq!((pid, l), (PID as u32, limit)),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(d.workers.is_empty());
}

#[test]
fn the_backstop_kills_a_worker_whose_task_overran_its_limit() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    let limit = Duration::from_secs(1);
    let (t, rx) = task(Some(limit));
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert_eq!(d.workers[0].work.running_since, Some(now));
    d.tick(now + limit);
    assert!(d.procs.kills.is_empty());
    d.tick(now + limit + BACKSTOP_SLACK);
    assert_eq!(d.procs.kills, [PID]);
    d.tick(now + limit * 10);
    assert_eq!(d.procs.kills, [PID], "asked once");
    d.procs.events.push_back(Event::Exited {
        pid: PID,
        cause: ExitCause::Signal(libc::SIGKILL),
    });
    d.apply_events(now + limit * 10);
    assert!(matches!(rx.try_recv(), Ok(Err(Error::TimedOut { .. }))));
}

#[test]
fn a_dead_worker_fails_its_running_task_and_requeues_the_rest_in_order() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    // A served task makes the worker's tasks short, so it holds several at once.
    d.workers[0].work.served = 1;
    let (tasks, outcomes): (Vec<_>, Vec<_>) = (0..3).map(|_| task(None)).unzip();
    submitter.submit(tasks).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert_eq!(d.workers[0].work.written, 3);
    let ids: Vec<u64> = d.workers[0].work.inflight.iter().map(|s| s.id).collect();
    d.procs.events.push_back(Event::Exited {
        pid: PID,
        cause: ExitCause::Signal(libc::SIGSEGV),
    });
    d.apply_events(now);
    assert!(matches!(
        outcomes[0].try_recv(),
        Ok(Err(Error::WorkerDied {
            cause: ExitCause::Signal(libc::SIGSEGV),
            ..
        }))
    ));
    assert!(outcomes[1].try_recv().is_err() && outcomes[2].try_recv().is_err());
    assert_eq!(d.queue.len(), 2);
    // The frames keep their ids until they are stamped again: the order is the old one.
    let requeued: Vec<u64> = d
        .queue
        .iter()
        .map(|t| u64::from_le_bytes(t.frame.head[8..16].try_into().unwrap()))
        .collect();
    assert_eq!(requeued, ids[1..]);
}

#[test]
fn a_retiring_worker_takes_no_more_tasks_and_loses_none() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    d.workers[0].end(Why::Retiring, None);
    let (t, rx) = task(None);
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert_eq!(d.queue.len(), 1);
    d.procs.events.push_back(Event::Exited {
        pid: PID,
        cause: ExitCause::Exited(0),
    });
    d.apply_events(now);
    assert!(rx.try_recv().is_err(), "nothing failed");
    assert_eq!(d.queue.len(), 1);
    d.replace_workers(now);
    assert_eq!(d.workers.len(), 1, "a replacement is asked for");
}

/// Issue 8, item 13: winding down with a respawn pending, every poll returned at once.
#[test]
fn winding_down_a_pending_respawn_does_not_make_the_loop_spin() {
    let now = Instant::now();
    let (_submitter, mut d) = dispatcher(2, now);
    d.workers.pop();
    d.respawn_at = Some(now - Duration::from_millis(1));
    assert_eq!(d.sleep_timeout(false, now), Some(Duration::ZERO));
    assert_eq!(d.sleep_timeout(true, now), None);
}

/// Issue 8, item 12: a worker that does not exit once it has nothing left to do (stopped by
/// SIGSTOP, or in its initializer) is killed after a grace period instead of making `join`
/// wait forever.
#[test]
fn winding_down_kills_a_worker_that_does_not_exit() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    submitter.close();
    // The loop closes the task pipe and sets the grace period; run its steps by hand.
    d.workers[0].pipes.close_tasks();
    d.workers[0].end(Why::Closing, Some(now + EXIT_GRACE));
    d.tick(now);
    assert!(d.procs.kills.is_empty());
    d.tick(now + EXIT_GRACE);
    assert_eq!(d.procs.kills, [PID]);
}

/// A fork server that does not report a worker it was asked to kill (stopped by SIGSTOP) is
/// given up on KILL_REPORT_WAIT later, so that `join` returns; but not while a worker still
/// holds a task, whose answer needs no server.
#[test]
fn a_closed_pool_gives_up_on_a_server_that_does_not_report_a_killed_worker() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(2, now);
    for worker in 0..2 {
        say_ready(&d, worker);
    }
    d.poll_once(None, Duration::from_secs(10));
    let (t, rx) = task(None);
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    let busy = d.workers.iter().position(|w| !w.work.inflight.is_empty());
    let busy = busy.expect("one worker holds the task");
    let idle = 1 - busy;
    submitter.close();
    d.workers[idle].pipes.close_tasks();
    d.workers[idle].end(Why::Closing, Some(now));
    d.tick(now);
    assert_eq!(d.procs.kills, [PID + idle as Pid]);
    let late = now + KILL_REPORT_WAIT;
    assert!(!d.server_unresponsive(late), "a worker still holds a task");
    // The task is answered; then nothing is left but the unreported kill.
    d.workers[busy].work.inflight.clear();
    assert!(!d.server_unresponsive(late - Duration::from_millis(1)));
    assert!(d.server_unresponsive(late));
    d.resolve_all_as_terminated();
    assert!(d.workers.is_empty());
    drop(rx);
}

/// Issue 8, item 2: a lost fork server is not re-forked from the threaded parent; the tasks
/// fail with an error that says so.
#[test]
fn a_lost_server_fails_the_queue_with_a_clear_error() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    let (t, rx) = task(None);
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.procs.events.push_back(Event::Lost);
    d.apply_events(now);
    assert!(d.workers.is_empty());
    d.replace_workers(now);
    assert!(d.workers.is_empty(), "no new worker is asked for");
    d.fail_if_lost();
    match rx.try_recv() {
        Ok(Err(Error::Io { op, source })) => {
            assert_eq!(op, "fork server");
            assert!(
                source.to_string().contains("fork server is gone"),
                "{source}"
            );
        }
        other => panic!("expected the lost server's error, got {other:?}"),
    }
}

/// Issue 8, item 13: a panic while delivering an outcome (a user's Waker) must not reach the
/// dispatcher.
#[test]
fn a_panicking_delivery_is_contained() {
    let counters = crate::stats::Counters::default();
    let frame = crate::task::call(|x: u64| x, 7).unwrap();
    let t = Task::new(frame, Sink::then(|_| panic!("a waker that panics")));
    t.finish(Ok(crate::frame::Bytes::default()), &counters);
}

/// A slow initializer in one worker is left alone while another worker serves: the waiting task
/// will run there.
#[test]
fn a_slow_start_is_no_timeout_while_another_worker_serves() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(2, now);
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    let limit = Duration::from_millis(100);
    // The serving worker is busy with a long task; the next one waits in the queue.
    let (long, _long_rx) = task(None);
    let (waiting, rx) = task(Some(limit));
    submitter.submit([long, waiting]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert_eq!(d.queue.len(), 1);
    d.tick(now + limit * 100);
    assert!(d.procs.kills.is_empty(), "{:?}", d.procs.kills);
    assert!(rx.try_recv().is_err());
}

/// A task that can be cancelled through its slot, as `apply_async` makes it.
fn cancellable_task() -> (Task, Arc<Slot>) {
    let slot = Slot::new(1);
    let frame = crate::task::call(|x: u64| x, 7).unwrap();
    let task = Task::new(frame, Sink::slot(&slot, 0)).cancellable(&slot);
    (task, slot)
}

/// Writes the worker's reply to the task with `id`, with an empty payload.
fn say_done(d: &Dispatcher<Fake>, worker: usize, id: u64) {
    let mut out = OutFrame::default();
    frame::begin_reply(&mut out.head, id, Status::Ok);
    out.seal();
    let reply_w = d.procs.spawned[worker].1.as_raw_fd();
    assert_eq!(sys::write(reply_w, &out.head).unwrap(), out.head.len());
}

/// Writes a worker's reply to task `id`, reporting that it ran for `run` in the worker.
fn answer(d: &Dispatcher<Fake>, worker: usize, id: u64, run: Duration) {
    let reply = answer_frame(id, run);
    let reply_w = d.procs.spawned[worker].1.as_raw_fd();
    assert_eq!(sys::write(reply_w, &reply).unwrap(), reply.len());
}

/// The reply frame of a task that returned 7.
fn answer_frame(id: u64, run: Duration) -> Vec<u8> {
    let mut out = OutFrame::default();
    frame::begin_reply(&mut out.head, id, Status::Ok);
    out.head.extend_from_slice(&7u64.to_le_bytes());
    frame::set_reply_run_time(&mut out.head, run);
    out.seal();
    out.head
}

/// Replies a worker holds back in its ledger (issue 9) are taken from there once due, but
/// only in order: a held reply whose predecessors are still on their way through the pipe
/// waits for them (the worker flushed those, then held this one). The same frames coming
/// through the pipe later are dropped, and nothing is a protocol breach.
#[test]
fn held_replies_are_taken_from_the_ledger_in_order_and_their_pipe_copies_dropped() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (ledger, _fd) = crate::ledger::Ledger::create().unwrap();
    d.workers[0].pipes.ledger = Some(ledger);
    let (tasks, outcomes): (Vec<_>, Vec<_>) = (0..4).map(|_| task(None)).unzip();
    submitter.submit(tasks).unwrap();
    take_queued(&mut d);
    d.assign(now);
    let ids: Vec<u64> = d.workers[0].work.inflight.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 4);
    let run = Duration::from_micros(3);
    let forge = |d: &Dispatcher<Fake>, generation: u64, held: &[u64]| {
        let frames: Vec<u8> = held.iter().flat_map(|&id| answer_frame(id, run)).collect();
        let ledger = d.workers[0].pipes.ledger.as_ref().unwrap();
        ledger.forge_held(generation << 32 | frames.len() as u64, &frames);
    };
    let later = now + Duration::from_secs(10);
    // Task 0's reply is in flight in the pipe (not read yet); 1 and 2 are held.
    forge(&d, 1, &[ids[1], ids[2]]);
    d.workers[0].take_held(later, d.front.counters());
    assert!(
        outcomes.iter().all(|o| o.try_recv().is_err()),
        "nothing out of order"
    );
    assert!(d.workers[0].end.is_none(), "{:?}", d.workers[0].end);
    answer(&d, 0, ids[0], run);
    d.poll_once(None, Duration::from_secs(10));
    assert!(matches!(outcomes[0].try_recv(), Ok(Ok(_))));
    // Looked at again once due: 1 and 2 come from the ledger.
    d.workers[0].take_held(later + Duration::from_secs(10), d.front.counters());
    assert!(matches!(outcomes[1].try_recv(), Ok(Ok(_))));
    assert!(matches!(outcomes[2].try_recv(), Ok(Ok(_))));
    // The worker flushes them to the pipe after all, then answers 3: the copies are dropped.
    for &id in &ids[1..] {
        answer(&d, 0, id, run);
    }
    forge(&d, 2, &[]);
    d.poll_once(None, Duration::from_secs(10));
    assert!(matches!(outcomes[3].try_recv(), Ok(Ok(_))));
    assert!(d.workers[0].end.is_none(), "{:?}", d.workers[0].end);
    assert!(d.workers[0].work.inflight.is_empty());
}

/// A dispatcher with one serving worker whose tasks count as short (it takes several at once).
fn serving(now: Instant) -> (Submitter, Dispatcher<Fake>) {
    let (submitter, mut d) = dispatcher(1, now);
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    d.workers[0].work.served = 1;
    (submitter, d)
}

fn is_cancelled(slot: &Slot) -> bool {
    matches!(slot_outcome(slot), Err(Error::Cancelled))
}

fn slot_outcome(slot: &Slot) -> Outcome {
    slot.take_by(Some(Instant::now()))
        .expect("the slot is complete")
        .remove(0)
}

#[test]
fn a_cancelled_queued_task_never_reaches_a_worker() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    let (t, slot) = cancellable_task();
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    assert!(slot.cancel());
    d.drop_cancelled(now);
    assert!(d.queue.is_empty(), "removed from the queue");
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    d.assign(now);
    assert!(d.workers[0].work.inflight.is_empty());
    assert!(!task_pipe_has_data(&d, 0), "nothing was written");
    assert!(d.procs.kills.is_empty(), "no worker suffers for it");
    assert_eq!(submitter.stats().cancelled, 1);
    assert!(is_cancelled(&slot));
}

/// A task cancelled in the queue but only noticed when it is popped (no search ran) is dropped
/// there too.
#[test]
fn a_cancelled_task_is_skipped_when_its_turn_comes() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (t, slot) = cancellable_task();
    let (other, rx) = task(None);
    submitter.submit([t, other]).unwrap();
    take_queued(&mut d);
    assert!(slot.cancel());
    d.assign(now);
    assert_eq!(
        d.workers[0].work.inflight.len(),
        1,
        "only the other task went out"
    );
    assert!(d.workers[0].work.inflight[0].task.is_cancelled().eq(&false));
    assert_eq!(submitter.stats().cancelled, 1);
    say_done(&d, 0, d.workers[0].work.inflight[0].id);
    d.poll_once(None, Duration::from_secs(10));
    assert!(matches!(rx.try_recv(), Ok(Ok(_))));
}

#[test]
fn cancelling_a_running_task_kills_its_worker_and_spares_the_tasks_behind_it() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (running, slot) = cancellable_task();
    let (behind, behind_slot) = cancellable_task();
    let (unwritten_cancelled, third) = cancellable_task();
    submitter
        .submit([running, behind, unwritten_cancelled])
        .unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert_eq!(d.workers[0].work.written, 3);
    // The third one is not written yet as far as the dispatcher knows: pretend so, to see it
    // taken out without a byte reaching the pipe.
    d.workers[0].work.written = 2;
    assert!(slot.cancel());
    assert!(third.cancel());
    d.drop_cancelled(now);
    assert_eq!(
        d.workers[0].work.inflight.len(),
        2,
        "the unwritten one is out"
    );
    d.tick(now);
    assert_eq!(d.procs.kills, [PID]);
    d.procs.events.push_back(Event::Exited {
        pid: PID,
        cause: ExitCause::Signal(libc::SIGKILL),
    });
    d.apply_events(now);
    assert!(is_cancelled(&slot));
    assert!(is_cancelled(&third));
    assert!(!behind_slot.is_ready(), "the task behind it did not fail");
    assert_eq!(d.queue.len(), 1, "it went back to the queue");
    assert_eq!(submitter.stats().cancelled, 2);
    assert_eq!(submitter.stats().died, 0);
    d.replace_workers(now);
    assert_eq!(d.workers.len(), 1, "a replacement is asked for");
}

/// A cancelled task written behind the running one is killed when it starts.
#[test]
fn a_cancelled_task_in_the_pipe_is_killed_when_it_starts() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (first, rx) = task(None);
    let (second, slot) = cancellable_task();
    submitter.submit([first, second]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert!(slot.cancel());
    d.drop_cancelled(now);
    d.tick(now);
    assert!(
        d.procs.kills.is_empty(),
        "the running task is not the cancelled one"
    );
    say_done(&d, 0, d.workers[0].work.inflight[0].id);
    d.poll_once(None, Duration::from_secs(10));
    assert!(matches!(rx.try_recv(), Ok(Ok(_))));
    assert_eq!(d.procs.kills, [PID], "killed once the cancelled task runs");
}

#[test]
fn a_finished_task_cannot_be_cancelled_and_keeps_its_result() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (t, slot) = cancellable_task();
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    say_done(&d, 0, d.workers[0].work.inflight[0].id);
    d.poll_once(None, Duration::from_secs(10));
    assert!(!slot.cancel(), "the result was in");
    d.drop_cancelled(now);
    d.tick(now);
    assert!(d.procs.kills.is_empty());
    assert!(slot_outcome(&slot).is_ok());
    assert_eq!(submitter.stats().cancelled, 0);
}

/// The race of a cancel with the reply: the reply arrives after the cancel; the cancel wins,
/// the reply is dropped, and the worker, which already went on, is not killed for nothing.
#[test]
fn a_reply_that_comes_after_the_cancel_is_dropped_and_kills_nobody() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (t, slot) = cancellable_task();
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert!(slot.cancel());
    say_done(&d, 0, d.workers[0].work.inflight[0].id);
    // The reply is read before the dispatcher looks for cancelled tasks.
    d.poll_once(None, Duration::from_secs(10));
    d.drop_cancelled(now);
    d.tick(now);
    assert!(d.procs.kills.is_empty());
    assert!(
        is_cancelled(&slot),
        "the cancel won: the late result is not shown"
    );
}

/// A cancel of a task that has finished with its reply held back in the ledger (the worker
/// runs the next one): the dispatcher looks at the ledger before it judges the worker, and
/// kills nobody; the next task is left to run.
#[test]
fn a_cancel_of_a_task_whose_reply_is_held_kills_nobody() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (ledger, _fd) = crate::ledger::Ledger::create().unwrap();
    d.workers[0].pipes.ledger = Some(ledger);
    let (t, slot) = cancellable_task();
    let (next, rx) = task(None);
    submitter.submit([t, next]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    let ids: Vec<u64> = d.workers[0].work.inflight.iter().map(|s| s.id).collect();
    let held = answer_frame(ids[0], Duration::from_micros(3));
    let ledger = d.workers[0].pipes.ledger.as_ref().unwrap();
    ledger.forge_held(held.len() as u64, &held);
    assert!(slot.cancel());
    d.drop_cancelled(now);
    d.tick(now);
    assert!(d.procs.kills.is_empty(), "{:?}", d.procs.kills);
    assert!(d.workers[0].end.is_none(), "{:?}", d.workers[0].end);
    assert!(
        is_cancelled(&slot),
        "the cancel won: the held result is not shown"
    );
    assert_eq!(d.workers[0].work.inflight.len(), 1, "the next task runs on");
    answer(&d, 0, ids[1], Duration::from_micros(3));
    d.poll_once(None, Duration::from_secs(10));
    assert!(matches!(rx.try_recv(), Ok(Ok(_))));
}

/// The other order: the kill was asked for, but the worker finished the cancelled task and
/// started the next before the signal came. That next task is not failed: it runs again.
#[test]
fn a_task_started_after_a_cancelled_one_is_requeued_not_failed() {
    let now = Instant::now();
    let (submitter, mut d) = serving(now);
    let (t, slot) = cancellable_task();
    let (next, rx) = task(None);
    submitter.submit([t, next]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    assert!(slot.cancel());
    d.drop_cancelled(now);
    d.tick(now);
    assert_eq!(d.procs.kills, [PID]);
    say_done(&d, 0, d.workers[0].work.inflight[0].id);
    d.procs.events.push_back(Event::Exited {
        pid: PID,
        cause: ExitCause::Signal(libc::SIGKILL),
    });
    d.apply_events(now);
    assert!(rx.try_recv().is_err(), "the next task did not fail");
    assert_eq!(d.queue.len(), 1);
    assert!(is_cancelled(&slot));
}

/// Issue 9: on a busy machine a reply comes long after its task was sent (the processes wait
/// for a CPU), but the task itself ran for microseconds. Judged by the time between sending and
/// reading, every worker dropped to one task in flight; judged by the run time the worker
/// reports, it keeps its pipeline full.
#[test]
fn tasks_short_in_the_worker_keep_the_pipeline_deep_however_late_their_replies() {
    // Everything happened "a while ago" for the dispatcher's clock: the wall time from sending
    // the first task to reading its reply is at least that long.
    let then = Instant::now()
        .checked_sub(Duration::from_millis(200))
        .expect("the machine has been up for 200 ms");
    let (submitter, mut d) = dispatcher(1, then);
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    let n = worker::PIPELINE_DEPTH + 20;
    let (tasks, outcomes): (Vec<_>, Vec<_>) = (0..n).map(|_| task(None)).unzip();
    submitter.submit(tasks).unwrap();
    take_queued(&mut d);
    d.assign(then);
    assert_eq!(
        d.workers[0].work.written, 1,
        "a fresh pool sends one task at first"
    );
    let first = d.workers[0].work.inflight[0].id;
    answer(&d, 0, first, Duration::from_micros(5));
    d.poll_once(None, Duration::from_secs(10));
    assert!(matches!(outcomes[0].try_recv(), Ok(Ok(_))));
    d.assign(Instant::now());
    assert_eq!(
        d.workers[0].work.inflight.len(),
        worker::PIPELINE_DEPTH,
        "a 5 µs task is short, whatever the wall time"
    );
}

/// A worker holds as many short tasks as make [`PIPELINE_WORK`] by their run time: tasks of
/// microseconds fill the pipeline, tasks near a millisecond get a handful, so no task waits
/// long in one worker's pipe while another could run it.
#[test]
fn short_tasks_fill_the_pipeline_as_far_as_their_run_time_allows() {
    for (run, expected) in [
        (Duration::from_micros(2), worker::PIPELINE_DEPTH),
        (Duration::from_micros(250), 16),
        (Duration::from_micros(900), 4),
        (SHORT_TASK * 2, 1),
    ] {
        let now = Instant::now();
        let (submitter, mut d) = dispatcher(1, now);
        say_ready(&d, 0);
        d.poll_once(None, Duration::from_secs(10));
        let (tasks, _outcomes): (Vec<_>, Vec<_>) =
            (0..worker::PIPELINE_DEPTH * 4).map(|_| task(None)).unzip();
        submitter.submit(tasks).unwrap();
        take_queued(&mut d);
        d.assign(now);
        // Eight answers make the average (which weighs each new sample 1/8) close to `run`.
        for _ in 0..40 {
            let id = d.workers[0].work.inflight[0].id;
            answer(&d, 0, id, run);
            d.poll_once(None, Duration::from_secs(10));
            d.assign(now);
        }
        // What it holds now was sent while the average was still lower: answer it all first.
        while let Some(sent) = d.workers[0].work.inflight.front() {
            answer(&d, 0, sent.id, run);
            d.poll_once(None, Duration::from_secs(10));
        }
        d.assign(now);
        let held = d.workers[0].work.inflight.len();
        let average = d.workers[0].work.avg_service;
        assert_eq!(
            held, expected,
            "tasks of {run:?} (average {average:?}, budget {PIPELINE_WORK:?})"
        );
    }
}

/// The other side of the same judgement: a task that ran long in the worker gets its worker
/// one task at a time, so that nothing waits behind it while another worker idles.
#[test]
fn tasks_long_in_the_worker_are_sent_one_at_a_time() {
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(2, now);
    say_ready(&d, 0);
    say_ready(&d, 1);
    d.poll_once(None, Duration::from_secs(10));
    let (tasks, _outcomes): (Vec<_>, Vec<_>) = (0..20).map(|_| task(None)).unzip();
    submitter.submit(tasks).unwrap();
    take_queued(&mut d);
    d.assign(now);
    for w in 0..2 {
        let id = d.workers[w].work.inflight[0].id;
        answer(&d, w, id, SHORT_TASK * 20);
    }
    d.poll_once(None, Duration::from_secs(10));
    d.assign(now);
    for w in 0..2 {
        assert_eq!(d.workers[w].work.inflight.len(), 1);
    }
}

/// Issue 10, item 4c, at the seam: a chunk of `map_each` of five items whose worker sent item 0
/// in a partial frame, recorded item 1 in its ledger, and died in item 2. Items 0 and 1 keep
/// their results, item 2 fails with the death, and items 3 and 4 come back as a task of their
/// own at the front of the queue, whose reply completes the chunk's one outcome.
#[test]
fn a_death_mid_chunk_keeps_what_the_partial_frames_and_the_ledger_hold() {
    use crate::task::Each;
    let now = Instant::now();
    let (submitter, mut d) = dispatcher(1, now);
    say_ready(&d, 0);
    d.poll_once(None, Duration::from_secs(10));
    let (ledger, _fd) = crate::ledger::Ledger::create().unwrap();
    d.workers[0].pipes.ledger = Some(ledger);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (frame, index) = crate::task::chunk_each(|x: u64| x, &[10u64, 11, 12, 13, 14]).unwrap();
    let sink = Sink::then(move |outcome| {
        let _ = tx.send(outcome);
    });
    let t = Task::new(frame, sink).with_limit(None, 5).each_chunk(index);
    submitter.submit([t]).unwrap();
    take_queued(&mut d);
    d.assign(now);
    let id = d.workers[0].work.inflight[0].id;
    let item = |x: u64| crate::codec::encode_element(&Each::<u64>::Ok(x)).unwrap();
    // Item 0 in a partial frame.
    let mut partial = Vec::new();
    frame::begin_reply(&mut partial, id, Status::Partial);
    partial.extend_from_slice(&0u64.to_le_bytes());
    partial.extend_from_slice(&1u64.to_le_bytes());
    partial.extend_from_slice(&item(10));
    frame::seal(&mut partial);
    let reply_w = d.procs.spawned[0].1.as_raw_fd();
    assert_eq!(sys::write(reply_w, &partial).unwrap(), partial.len());
    d.poll_once(None, Duration::from_secs(10));
    // Item 1 in the ledger, then the worker dies in item 2.
    let one = item(11);
    let commit = 1 << 32 | one.len() as u64;
    d.workers[0]
        .pipes
        .ledger
        .as_ref()
        .unwrap()
        .forge(id + 1, 1, commit, &one);
    d.procs.events.push_back(Event::Exited {
        pid: PID,
        cause: ExitCause::Signal(libc::SIGABRT),
    });
    d.apply_events(now);
    assert!(rx.try_recv().is_err(), "the chunk is not done yet");
    assert_eq!(d.queue.len(), 1, "the rest of the chunk is queued");
    let rest = d.queue.pop_front().unwrap();
    let arg = &rest.frame.head[frame::TASK_ARG_START..];
    assert_eq!(crate::codec::decode::<Vec<u64>>(arg).unwrap(), [13, 14]);
    // The rest's reply, as a worker sends it: a sequence of its two items.
    let mut reply = Vec::new();
    frame::begin_reply(&mut reply, 99, Status::Ok);
    crate::codec::seq_header(2, &mut reply);
    reply.extend_from_slice(&item(13));
    reply.extend_from_slice(&item(14));
    frame::seal(&mut reply);
    let reply = frame::parse_reply(crate::frame::Bytes::from_vec(reply, 8)).unwrap();
    let mut rest = rest;
    let outcome = rest.outcome_of(reply);
    rest.finish(outcome, d.front.counters());
    let outcome = rx.try_recv().unwrap();
    let each = crate::result::finish_each::<u64>(vec![outcome], 5, 5).unwrap();
    let values: Vec<Option<u64>> = each.iter().map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(values, [Some(10), Some(11), None, Some(13), Some(14)]);
    let e = each[2].as_ref().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Item {
                index: 2,
                items: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        e.cause(),
        Error::WorkerDied {
            pid,
            cause: ExitCause::Signal(libc::SIGABRT),
            ..
        } if *pid == PID as u32
    ));
}

/// The pool's fork server is asked for without waiting for the zygote's answer (issue 9,
/// W8d); a server the zygote could not fork still fails `Pool::new` as a failed fork, with its
/// errno, rather than as a lost server or a timeout.
#[test]
fn a_server_that_could_not_be_forked_fails_the_start_with_its_errno() {
    let (_submitter, mut d) = unstarted(2);
    d.procs.events.push_back(Event::StartFailed {
        errno: libc::EAGAIN,
    });
    // The answer wakes the loop as the server's socket would.
    let (r, w) = sys::pipe().unwrap();
    assert_eq!(sys::write(w.as_raw_fd(), b"x").unwrap(), 1);
    d.procs.socket = Some(r);
    let started = Instant::now();
    match d.start_workers(started + Duration::from_secs(10)) {
        Err(Error::Io { op: "fork", source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EAGAIN))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not by the deadline"
    );
    assert!(d.workers.is_empty());
    assert!(d.lost.is_some(), "no worker can come any more");
}

/// A driven loop (an MPI relay's) does work of its own between turns: it does not spin in a
/// turn asked not to wait, nor for a submission after an answer (its own thread submits, between
/// turns), only for a worker's reply in a turn that may wait. A spin in every turn kept the
/// relay from MPI for up to 50 µs after each outcome (W3 over MPI: 39 µs from rank 0's send to
/// the relay's receive). A threaded dispatcher spins after an answer, for a caller's next task.
/// The spin's budget tells whether it ran: nothing comes, so a spin that runs is spent and
/// halves it.
#[test]
fn a_driven_loop_spins_only_for_a_reply_and_only_in_a_turn_that_may_wait() {
    for driven in [false, true] {
        let now = Instant::now();
        let (submitter, mut d) = dispatcher(1, now);
        d.driven = driven;
        let full = d.spin.budget();
        d.last_answer = Some(Instant::now());
        assert!(d.turn(Duration::ZERO));
        assert_eq!(d.spin.budget() == full, driven, "driven: {driven}");
        if !driven {
            continue;
        }
        d.last_answer = Some(Instant::now());
        assert!(d.turn(Duration::from_micros(100)));
        assert_eq!(d.spin.budget(), full, "a driven loop spun for a submission");
        // A worker runs a task of a kind that takes microseconds: its reply is imminent.
        say_ready(&d, 0);
        d.poll_once(None, Duration::from_secs(10));
        let (t, _rx) = task(None);
        submitter.submit([t]).unwrap();
        assert!(d.turn(Duration::ZERO));
        assert!(d.workers[0].work.running_since.is_some());
        d.workers[0].work.served = 1;
        d.workers[0].work.avg_service = Duration::from_micros(1);
        assert!(d.turn(Duration::ZERO));
        assert_eq!(
            d.spin.budget(),
            full,
            "a driven loop spun in a turn asked not to wait"
        );
        assert!(d.turn(Duration::from_micros(100)));
        assert!(d.spin.budget() < full, "no spin for an imminent reply");
    }
}
