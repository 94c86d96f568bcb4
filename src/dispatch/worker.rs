//! The dispatcher's view of one worker: where it is in its life ([`Life`]), why it is leaving
//! if it is ([`End`]), and the tasks it holds ([`Work`]), with the reading and writing of its
//! pipes.
//!
//! A worker is given tasks only while it is [`Life::Serving`], that is, after its Ready frame:
//! a worker whose initializer has not returned holds nothing, so a task's time limit is never
//! spent waiting for an initializer in a pipe (issue 8, item 4).

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::error::{Error, ExitCause};
use crate::frame::{self, FrameReader, Reply, Status};
use crate::ledger;
use crate::spawn::{Pipes, Token};
use crate::stats::Counters;
use crate::sys::{self, Pid};

use super::task::Sent;

/// The most tasks a worker may hold at once: the one it runs and the ones waiting in its pipe.
pub(super) const PIPELINE_DEPTH: usize = 128;
/// How much work a worker with short tasks may hold, by their average run time: tasks of a
/// few microseconds fill [`PIPELINE_DEPTH`], tasks near [`SHORT_TASK`] a handful, so a task
/// never waits more than about this long in a worker's pipe while another worker could take it.
pub(super) const PIPELINE_WORK: Duration = Duration::from_millis(4);
/// Below this average service time a worker's tasks count as short (see [`PIPELINE_DEPTH`]);
/// above it, one task at a time costs a worker at most a few percent of idle time.
pub(super) const SHORT_TASK: Duration = Duration::from_millis(1);
/// The first look at the replies a worker holds back in its ledger while no reply came
/// (see [`Worker::take_held`]); later looks come at 1/8 of the quiet time so far.
pub(super) const HELD_LOOK: Duration = Duration::from_millis(1);
/// How many finished tasks' frames a worker's reader keeps for small replies, and the largest
/// kept (see [`FrameReader::take_into`]).
const SPARE_FRAMES: usize = 32;
const SPARE_FRAME_BYTES: usize = 4096;
/// The pipe size a worker's pipes have, and return to after a large frame.
const PIPE_DEFAULT: usize = 64 << 10;
/// The most a task pipe is grown to for a large frame: Linux's default ceiling for unprivileged
/// users (`/proc/sys/fs/pipe-max-size`).
const PIPE_LARGE: usize = 1 << 20;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    /// The fork server was asked to fork it; it has no pid yet.
    Starting { token: Token },
    /// Forked; its initializer runs. It holds no task.
    Booting { pid: Pid, since: Instant },
    /// It sent its Ready frame and takes tasks.
    Serving { pid: Pid },
    /// The fork server reaped it.
    Gone { pid: Pid, cause: ExitCause },
}

/// Why a worker is on its way out, strongest reason last (a stronger one replaces a weaker).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Why {
    /// Its task pipe was closed (the pool winds down) or its reply pipe ended.
    Closing,
    /// It flagged its last reply (memory cap): it takes no more tasks, and it exits by itself.
    Retiring,
    /// The task it runs was cancelled ([`Task::is_cancelled`](super::Task::is_cancelled)).
    Cancelled,
    /// It was still in its initializer when the task waiting for it ran out of time.
    SlowStart { limit: Duration },
    /// Its running task ran past its time limit.
    TimedOut,
    /// It broke the protocol.
    Protocol(String),
}

/// A worker on its way out.
#[derive(Debug)]
pub(super) struct End {
    pub(super) why: Why,
    /// When to have it killed if it has not been reported dead yet.
    kill_at: Option<Instant>,
    /// When the fork server was asked to kill it.
    kill_sent: Option<Instant>,
}

/// The tasks a serving worker holds, and how fast it serves them.
#[derive(Debug, Default)]
pub(super) struct Work {
    /// Tasks sent or being sent, in order; the front one is running once fully written.
    pub(super) inflight: VecDeque<Sent>,
    /// How many of `inflight` are fully written.
    pub(super) written: usize,
    /// Bytes of `inflight[written]` already written.
    offset: usize,
    /// Tasks ever assigned, counted against `max_tasks_per_child`.
    pub(super) assigned: usize,
    /// Replies received.
    pub(super) served: usize,
    /// Since when the front task has been running (it is written and all before it answered).
    pub(super) running_since: Option<Instant>,
    /// Average run time of its tasks, as it reports them (see `frame`'s `run_us`).
    pub(super) avg_service: Duration,
    /// The task pipe was grown for a large frame.
    grown: bool,
}

/// Whether a worker whose held replies are read is alive (it may still be flushing some to the
/// pipe) or dead (its pipe was read to the end first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Alive,
    Dead,
}
use Held::{Alive, Dead};

/// Since when a worker has sent no reply, and when its ledger was last looked at.
#[derive(Debug, Clone, Copy)]
struct Quiet {
    since: Instant,
    looked: Instant,
}

/// The dispatcher's view of one worker.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) pipes: Pipes,
    reader: FrameReader,
    /// The reply pipe ended (or carried garbage): it is no longer watched.
    reply_done: bool,
    /// The reply pipe was grown for a large frame.
    reply_grown: bool,
    /// Replies up to this task id were taken from the ledger (see [`take_held`]): the same
    /// frames arriving later through the pipe are dropped.
    ///
    /// [`take_held`]: Worker::take_held
    taken_upto: Option<u64>,
    /// When a reply last came (or the ledger was last looked at): see [`Worker::held_due`].
    quiet: Option<Quiet>,
    /// Frames of tasks it finished, to hold the next small replies (see
    /// [`FrameReader::take_into`]).
    spares: Vec<Vec<u8>>,
    pub(super) life: Life,
    pub(super) end: Option<End>,
    pub(super) work: Work,
}

impl Worker {
    pub(super) fn new(token: Token, pipes: Pipes, max_frame: u64) -> Worker {
        Worker {
            pipes,
            reader: FrameReader::new(max_frame).split_after(frame::REPLY_HEADER),
            reply_done: false,
            reply_grown: false,
            taken_upto: None,
            quiet: None,
            spares: Vec::new(),
            life: Life::Starting { token },
            end: None,
            work: Work::default(),
        }
    }

    pub(super) fn pid(&self) -> Option<Pid> {
        match self.life {
            Life::Starting { .. } => None,
            Life::Booting { pid, .. } | Life::Serving { pid } | Life::Gone { pid, .. } => Some(pid),
        }
    }

    /// True if it may be given another task (depth and fairness aside).
    pub(super) fn takes_tasks(&self, max_tasks: Option<usize>) -> bool {
        matches!(self.life, Life::Serving { .. })
            && self.end.is_none()
            && self.pipes.task_fd().is_some()
            && max_tasks.is_none_or(|max| self.work.assigned < max)
    }

    /// Marks it as leaving for `why`, to be killed at `kill_at` (`None`: let it exit by itself).
    /// A stronger reason replaces a weaker one, and the earlier kill time wins.
    pub(super) fn end(&mut self, why: Why, kill_at: Option<Instant>) {
        match &mut self.end {
            None => {
                self.end = Some(End {
                    why,
                    kill_at,
                    kill_sent: None,
                })
            }
            Some(end) => {
                if why > end.why {
                    end.why = why;
                }
                end.kill_at = match (end.kill_at, kill_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }

    /// When it is to be killed, unless that was already asked.
    pub(super) fn kill_at(&self) -> Option<Instant> {
        self.end
            .as_ref()
            .filter(|e| e.kill_sent.is_none() && self.pid().is_some())
            .and_then(|e| e.kill_at)
    }

    /// When the fork server was asked to kill it, while it is still unreported: a server that
    /// does not report such a worker for long is stopped or stuck (see
    /// `Dispatcher::turn`'s winding down).
    pub(super) fn kill_unreported_since(&self) -> Option<Instant> {
        match self.life {
            Life::Booting { .. } | Life::Serving { .. } => self.end.as_ref()?.kill_sent,
            _ => None,
        }
    }

    /// If its kill time has come, returns its pid (once) to have it killed.
    pub(super) fn due_for_kill(&mut self, now: Instant) -> Option<Pid> {
        let pid = match self.life {
            Life::Booting { pid, .. } | Life::Serving { pid } => pid,
            _ => return None,
        };
        let end = self.end.as_mut()?;
        if end.kill_sent.is_some() || end.kill_at.is_none_or(|at| at > now) {
            return None;
        }
        end.kill_sent = Some(now);
        Some(pid)
    }

    /// The descriptor to poll for writing: the task pipe while tasks wait to be written.
    pub(super) fn write_fd(&self) -> Option<i32> {
        let fd = self.pipes.task_fd()?;
        (self.work.written < self.work.inflight.len()).then_some(fd)
    }

    /// The descriptor to poll for reading, while the reply pipe is open and the worker forked.
    pub(super) fn read_fd(&self) -> Option<i32> {
        match self.life {
            Life::Starting { .. } => None,
            _ if self.reply_done => None,
            _ => Some(self.pipes.reply_fd()),
        }
    }

    /// When its reader's spare buffer is due to be dropped, if it keeps one.
    pub(super) fn spare_due(&self) -> Option<Instant> {
        self.reader.spare_due()
    }

    /// Drops its reader's spare buffer once it has waited long enough.
    pub(super) fn drop_idle_spare(&mut self, now: Instant) {
        self.reader.drop_spare_if_idle(now);
    }

    /// Writes as much of the pending task frames as the pipe takes without blocking.
    pub(super) fn write_some(&mut self) {
        let Some(fd) = self.pipes.task_fd() else {
            return;
        };
        let work = &mut self.work;
        while work.written < work.inflight.len() {
            let next = work.inflight[work.written].task.frame.len() - work.offset;
            // Grow the pipe only for a large frame, and give the pages back after it (see
            // `shrink_task_pipe`): every pipe of a user counts against one quota
            // (pipe-user-pages-soft; issue 8, item 13).
            if next > PIPE_DEFAULT && !work.grown {
                work.grown = sys::grow_pipe(self.pipes.tasks(), next.min(PIPE_LARGE));
            }
            // A large tail goes in as page references (the task keeps its frame unchanged
            // until its reply, by when the worker has read it); the rest is copied, as many
            // frames at once as lead up to the next large tail.
            let front = &work.inflight[work.written].task.frame;
            let written = match front.spliced_from(work.offset) {
                Some(rest) => sys::vmsplice(fd, rest, true),
                None => {
                    let mut slices: Vec<&[u8]> = Vec::new();
                    for (i, s) in work.inflight.iter().skip(work.written).enumerate() {
                        let frame = &s.task.frame;
                        let offset = if i == 0 { work.offset } else { 0 };
                        slices.extend(frame.copied_parts_from(offset));
                        if frame.splices_tail() || slices.len() >= sys::IOV_MAX {
                            break;
                        }
                    }
                    slices.retain(|part| !part.is_empty());
                    slices.truncate(sys::IOV_MAX);
                    sys::writev(fd, &slices)
                }
            };
            match written {
                Ok(mut n) => {
                    while n > 0 {
                        let left = work.inflight[work.written].task.frame.len() - work.offset;
                        if n >= left {
                            n -= left;
                            work.written += 1;
                            work.offset = 0;
                        } else {
                            work.offset += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The worker is gone or going: what is unwritten goes back to the queue when
                // its death is reported.
                Err(_) => return self.pipes.close_tasks(),
            }
        }
    }

    /// Shrinks a grown task pipe back once no large frame is left to write. The kernel refuses
    /// while the pipe holds more than the new size, so this is tried after every reply (the
    /// worker has read its task by then) until it works.
    fn shrink_task_pipe(&mut self) {
        let work = &mut self.work;
        let Some(tasks) = self.pipes.tasks.as_ref() else {
            return;
        };
        let large_left = work
            .inflight
            .iter()
            .skip(work.written)
            .any(|s| s.task.frame.len() > PIPE_DEFAULT);
        if work.grown && !large_left && sys::grow_pipe(tasks, PIPE_DEFAULT) {
            work.grown = false;
        }
    }

    /// Reads what the reply pipe holds and delivers every whole reply; at end of file, or on a
    /// protocol breach, stops watching the pipe and marks the worker as ending.
    pub(super) fn read_some(&mut self, now: Instant, counters: &Counters) {
        if self.reply_done {
            return;
        }
        self.quiet = Some(Quiet {
            since: now,
            looked: now,
        });
        match self.read_replies(counters) {
            Ok(false) => {}
            Ok(true) => {
                // End of file: it is exiting; if it lingers, have it killed.
                self.reply_done = true;
                self.end(Why::Closing, Some(now + super::EXIT_GRACE));
            }
            Err(message) => {
                self.reply_done = true;
                self.end(Why::Protocol(message), Some(now));
            }
        }
    }

    /// The fork server reaped it: reads the replies it sent before it died (in the state it
    /// was in when it sent them), then marks it gone.
    pub(super) fn reaped(&mut self, cause: ExitCause, counters: &Counters) {
        let Some(pid) = self.pid() else { return };
        self.read_rest(counters);
        // What it held back in its ledger were answers too (it is dead: the copy is whole).
        if let Err(message) = self.deliver_held(Dead, counters) {
            self.end(Why::Protocol(message), None);
        }
        self.life = Life::Gone { pid, cause };
    }

    /// When to look at the replies it may hold back in its ledger: while tasks wait behind the
    /// running one (the worker holds replies only then) and no reply came, after
    /// [`HELD_LOOK`], then at 1/8 of the quiet time so far, so that a reply held behind a long
    /// task waits at most about an eighth of that task's time, and a long task costs the loop
    /// a few dozen wake-ups, not one a millisecond.
    pub(super) fn held_due(&self) -> Option<Instant> {
        let quiet = self.quiet?;
        (self.work.written >= 2 && self.pipes.ledger.is_some() && !self.reply_done)
            .then(|| quiet.looked + HELD_LOOK.max((quiet.looked - quiet.since) / 8))
    }

    /// Takes the replies it holds back in its ledger if they are due a look ([`held_due`]):
    /// the worker runs a long task and they would wait for it. The frames it flushes to the
    /// pipe later are dropped there.
    ///
    /// [`held_due`]: Worker::held_due
    pub(super) fn take_held(&mut self, now: Instant, counters: &Counters) {
        if self.held_due().is_none_or(|due| now < due) {
            return;
        }
        if let Some(quiet) = &mut self.quiet {
            quiet.looked = now;
        }
        self.take_held_now(now, counters);
    }

    /// Takes the replies it holds back in its ledger now: before it is judged by its front
    /// task (cancelled, or past its time limit), which may have finished with its reply held.
    pub(super) fn take_held_now(&mut self, now: Instant, counters: &Counters) {
        if let Err(message) = self.deliver_held(Alive, counters) {
            self.reply_done = true;
            self.end(Why::Protocol(message), Some(now));
        }
    }

    /// Delivers the replies its ledger holds back that were not delivered yet.
    fn deliver_held(&mut self, dead_or_alive: Held, counters: &Counters) -> Result<(), String> {
        let Some(ledger) = &self.pipes.ledger else {
            return Ok(());
        };
        if !matches!(self.life, Life::Serving { .. }) || ledger.held_word() & u32::MAX as u64 == 0 {
            return Ok(());
        }
        // None: the worker is flushing them to the pipe right now; they arrive there.
        let Some(frames) = ledger.held()? else {
            return Ok(());
        };
        for body in frame::split_frames(&frames)? {
            let reply = frame::parse_reply(frame::Bytes::from_vec(body.to_vec(), 0))?;
            if matches!(reply.status, Status::Ready | Status::Partial) {
                return Err(format!("a held {:?} frame", reply.status));
            }
            let front = self.work.inflight.front().map(|f| f.id);
            // Answered already: through the pipe, or taken here before.
            if front.is_none_or(|front| reply.id < front) {
                continue;
            }
            // Replies before it are still in the pipe (the worker flushed them, then held
            // this one): they come first, and this one after them.
            if dead_or_alive == Alive && front.is_some_and(|front| reply.id > front) {
                return Ok(());
            }
            let id = reply.id;
            self.on_reply(reply, counters)?;
            self.taken_upto = Some(id);
        }
        Ok(())
    }

    /// Reads until the pipe is empty (a grandchild may hold it open) or ends; for a worker that
    /// is gone. A protocol breach found here becomes its end's reason.
    pub(super) fn read_rest(&mut self, counters: &Counters) {
        if self.reply_done || matches!(self.life, Life::Starting { .. }) {
            return;
        }
        if let Err(message) = self.read_replies(counters) {
            self.end(Why::Protocol(message), None);
        }
        self.reply_done = true;
    }

    /// `Ok(true)` at end of file; `Err` if the worker broke the protocol.
    fn read_replies(&mut self, counters: &Counters) -> Result<bool, String> {
        let fd = self.pipes.reply_fd();
        loop {
            // A read that got less than it asked for emptied the pipe: no second read to hear
            // EAGAIN (a system call per round trip); poll says when more comes.
            let mut drained = false;
            let read = self.reader.fill_from(|buf, want| {
                let n = sys::read_into_spare(fd, buf, want)?;
                drained = n < want;
                Ok(n)
            });
            let eof = match read {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => true,
            };
            while let Some(body) = self
                .reader
                .take_into(&mut self.spares)
                .map_err(|e| e.to_string())?
            {
                let reply = frame::parse_reply(body)?;
                if self.taken_upto.is_some_and(|upto| reply.id <= upto) {
                    // Delivered from the ledger already (see `take_held`).
                    continue;
                }
                self.on_reply(reply, counters)?;
            }
            // As for the task pipe: a large reply on its way gets a larger pipe, until it is in.
            match self.reader.partial_len() {
                Some(len) if len > PIPE_DEFAULT && !self.reply_grown => {
                    self.reply_grown = sys::grow_pipe(&self.pipes.replies, len.min(PIPE_LARGE));
                }
                None if self.reply_grown => {
                    self.reply_grown = !sys::grow_pipe(&self.pipes.replies, PIPE_DEFAULT);
                }
                _ => {}
            }
            if eof {
                if !self.reader.is_empty() {
                    return Err("the reply pipe closed in the middle of a frame".into());
                }
                return Ok(true);
            }
            if drained {
                return Ok(false);
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, counters: &Counters) -> Result<(), String> {
        if reply.status == Status::Ready {
            return match self.life {
                Life::Booting { pid, .. } => {
                    self.life = Life::Serving { pid };
                    Ok(())
                }
                _ => Err("a second Ready frame".into()),
            };
        }
        if !matches!(self.life, Life::Serving { .. }) {
            return Err("a reply before the Ready frame".into());
        }
        let work = &mut self.work;
        let expected = match work.inflight.front() {
            Some(front) if work.written > 0 => front.id,
            _ => {
                return Err(format!(
                    "a reply for task {} that was not running",
                    reply.id
                ))
            }
        };
        if reply.id != expected {
            return Err(format!(
                "a reply for task {} while task {expected} was running",
                reply.id
            ));
        }
        if reply.status == Status::Partial {
            let front = work.inflight.front_mut().expect("checked above");
            return front.task.take_partial(&reply.payload);
        }
        let skipped = reply.status == Status::Skipped;
        let front_skip = work.inflight.front().and_then(|s| s.skip);
        if skipped && front_skip.is_none() {
            return Err(format!(
                "task {} skipped, though it was not asked to be",
                reply.id
            ));
        }
        let mut sent = work.inflight.pop_front().expect("checked above");
        work.written -= 1;
        work.served += 1;
        if work.running_since.take().is_some() {
            counters.running(false);
        }
        if let (Some(slot), Some(ledger)) = (sent.skip, self.pipes.ledger.as_ref()) {
            ledger.clear_skip(slot);
        }
        if skipped {
            // Cancelled while it waited in the pipe, and not run: its run time says nothing
            // about the worker's tasks.
            sent.task.finish(Err(Error::Cancelled), counters);
            return Ok(());
        }
        // An average over the last few tasks (weight 1/8 for the newest), of their run times as
        // the worker measured them: the time from writing a task to reading its reply also
        // counts every wait for a CPU, which on a busy machine made every task look long and
        // every worker hold one task at a time (issue 9).
        work.avg_service = (work.avg_service * 7 + reply.run) / 8;
        if reply.retiring {
            self.end(Why::Retiring, None);
        }
        self.shrink_task_pipe();
        // The worker has read the whole task (its pipe holds no reference to a spliced tail
        // any more): a large argument's pages take the next large reply.
        if sent.task.frame.tail.len() >= frame::LARGE_PAYLOAD {
            let tail = std::mem::take(&mut sent.task.frame.tail);
            self.reader.keep_spare(tail, Instant::now());
        }
        let outcome = sent.task.outcome_of(reply);
        let frame = std::mem::take(&mut sent.task.frame.head);
        if self.spares.len() < SPARE_FRAMES && frame.capacity() <= SPARE_FRAME_BYTES {
            self.spares.push(frame);
        }
        sent.task.finish(outcome, counters);
        Ok(())
    }

    /// Starts the clock of the front task once it is written, the worker is serving, and
    /// every task before it has been answered.
    pub(super) fn note_start(&mut self, now: Instant, counters: &Counters) {
        let work = &mut self.work;
        if work.running_since.is_none()
            && matches!(self.life, Life::Serving { .. })
            && work.written > 0
        {
            work.running_since = Some(now);
            counters.running(true);
        }
    }

    /// How many tasks it may hold: while its tasks are short, as many as make
    /// [`PIPELINE_WORK`] (at most [`PIPELINE_DEPTH`]), else one. Until it has served a task, it
    /// goes by `siblings`, the average run time of its siblings' tasks (one in a fresh pool).
    pub(super) fn depth(&self, siblings: Option<Duration>) -> usize {
        let average = if self.work.served > 0 {
            Some(self.work.avg_service)
        } else {
            siblings
        };
        match average {
            Some(run) if run < SHORT_TASK => {
                let fits = PIPELINE_WORK.as_nanos() / run.as_nanos().max(1);
                fits.clamp(1, PIPELINE_DEPTH as u128) as usize
            }
            _ => 1,
        }
    }

    /// Takes out the cancelled tasks that no byte of has been written yet; they never reach
    /// the worker.
    pub(super) fn take_cancelled_unwritten(&mut self) -> Vec<Sent> {
        let work = &mut self.work;
        // A partly written frame must be finished, or the pipe would carry garbage.
        let first = work.written + usize::from(work.offset > 0);
        let mut taken = Vec::new();
        let mut i = first;
        while i < work.inflight.len() {
            if work.inflight[i].task.is_cancelled() {
                taken.extend(work.inflight.remove(i));
            } else {
                i += 1;
            }
        }
        taken
    }

    /// Marks, in its ledger's skip slots, the cancelled tasks that wait in its pipe behind the
    /// running one (written, or being written), so that it answers them unrun
    /// ([`Status::Skipped`]) rather than being killed when it reaches them. A task it may
    /// already have begun, or one for which no slot is free, is left to [`runs_cancelled`].
    ///
    /// [`runs_cancelled`]: Self::runs_cancelled
    pub(super) fn skip_cancelled_written(&mut self) {
        let Some(ledger) = self.pipes.ledger.as_ref() else {
            return;
        };
        let work = &mut self.work;
        let in_pipe = (work.written + usize::from(work.offset > 0)).min(work.inflight.len());
        for i in 1..in_pipe {
            let sent = &work.inflight[i];
            if sent.skip.is_some() || !sent.task.is_cancelled() {
                continue;
            }
            let used: Vec<usize> = work.inflight.iter().filter_map(|s| s.skip).collect();
            let Some(slot) = (0..ledger::SKIP_SLOTS).find(|slot| !used.contains(slot)) else {
                return;
            };
            if ledger.skip(slot, sent.id) {
                work.inflight[i].skip = Some(slot);
            } else {
                ledger.clear_skip(slot);
            }
        }
    }

    /// True if the task it runs now was cancelled and it is not already leaving for that (or
    /// a stronger reason), nor going to skip it.
    pub(super) fn runs_cancelled(&self) -> bool {
        matches!(self.life, Life::Serving { .. })
            && self.work.written > 0
            && self.end.as_ref().is_none_or(|e| e.why < Why::Cancelled)
            && self
                .work
                .inflight
                .front()
                .is_some_and(|s| s.task.is_cancelled() && s.skip.is_none())
    }

    /// When the running task's time limit, with slack, runs out.
    pub(super) fn backstop(&self) -> Option<Instant> {
        let work = &self.work;
        work.inflight.front()?.task.backstop(work.running_since?)
    }
}
