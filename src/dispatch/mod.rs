//! The parent's scheduler: one thread per pool that owns the workers, the task queue, and every
//! byte that crosses a pipe.
//!
//! - [`submit`]: the submission front, how callers hand tasks in and wake the thread;
//! - [`task`]: a task on its way, and what a reply means for its caller;
//! - [`worker`]: one worker's life, the tasks it holds, its pipes;
//! - [`oneshot`]: how `Pool::new` and the dispatcher thread hand each other the start;
//! - this module: the event loop over all of them.
//!
//! The dispatcher sends a worker whose tasks are short as many tasks at once as make
//! [`PIPELINE_WORK`](worker::PIPELINE_WORK) by their average run time (at most
//! [`PIPELINE_DEPTH`](worker::PIPELINE_DEPTH)), so it finds its next task waiting when it
//! finishes one; a worker whose tasks take longer than
//! [`SHORT_TASK`](worker::SHORT_TASK) gets one at a time, so that no task waits behind a long one while another
//! worker idles. All pipes on this side are non-blocking and watched by one `poll`, together
//! with the wake pipe and the fork server's socket: spawning is events on the same loop
//! ([`Processes`]), so nothing here ever blocks on one process.
//!
//! Workers answer in the order they were sent tasks, so the first unanswered task of a worker is
//! the one it is running. When a worker dies, that task alone fails with
//! [`Error::WorkerDied`]; the tasks queued behind it go back to the front of the queue, and a new
//! worker is forked in its place. See docs/DESIGN.md.

mod oneshot;
mod submit;
mod task;
mod worker;

use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, ExitCause, Result};
use crate::frame;
use crate::spawn::{Event, ForkServer, Processes};
use crate::spin::Spin;
use crate::sys::{self, PollFd, SignalSet};
use crate::worker::{self as child, WorkerConfig};

#[cfg(feature = "mpi")]
pub(crate) use submit::Phase;
pub(crate) use submit::{front, Canceller, Front, Lease, Submitter};
pub(crate) use task::Task;

use submit::{Gate, Seen};
use task::Sent;
use worker::{Life, Why, Worker};

/// Stack of the dispatcher thread, which is also the stack every worker's tasks run on.
const DISPATCHER_STACK: usize = 8 << 20;
/// The longest the dispatcher spins before it sleeps when an answer is imminent (see
/// [`Spin`]).
const SPIN: Duration = Duration::from_micros(50);
/// How long a worker that has nothing left to do after its task pipe closed (or that closed its
/// reply pipe) may take to exit before it is killed: a worker stopped by SIGSTOP, or still in
/// its initializer, must not make `join` wait forever (issue 8, items 4 and 12).
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long `terminate` waits for the fork server to report its killed workers reaped.
const TERMINATE_WAIT: Duration = Duration::from_secs(5);
/// How long a closed pool waits for the fork server to report a worker it was asked to kill,
/// before it stops waiting for the server (stopped by SIGSTOP, or stuck) and ends it.
const KILL_REPORT_WAIT: Duration = TERMINATE_WAIT;
/// How long `Pool::new` waits for the fork server to fork the first workers.
const START_WAIT: Duration = Duration::from_secs(30);
/// Longest pause between attempts to replace workers that keep dying before their first task.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What the dispatcher needs to know, fixed when the pool is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) worker: WorkerConfig,
    pub(crate) max_frame: u64,
}

/// Starts a pool's dispatcher thread, which has the first workers forked before this returns.
///
/// The thread is started first, and given its dispatcher once the fork server is forked (or
/// asked of the zygote): by then it has run and gone to sleep, so it is woken like any
/// sleeping thread. Started after the fork, it was placed on a CPU as a new task, often the
/// fresh server's, and took that CPU from it; beside a busy program the server then waited a
/// scheduler tick to fork the workers (issue 9, W8d: with this order, fewer lives of a pool
/// beside 2 busy loops lose two ticks: 36% to 28% in `compare --w6-phases 40 2 2`, 5
/// alternated runs per build; 45-60% to 14-28% in probes beside shell loops).
///
/// # Errors
/// [`Error::Io`] if the thread, a pipe or a fork could not be made; workers already forked are
/// killed and reaped first.
pub(crate) fn start(config: Config) -> Result<(Submitter, JoinHandle<()>)> {
    // The server (forked here without init()) and the dispatcher thread inherit this thread's
    // slice: a short one gets them a CPU beside a busy program at once.
    let slice = sys::BorrowedShortSlice::take();
    let (give_dispatcher, take_dispatcher) = oneshot::pair::<Dispatcher<ForkServer>>();
    let (report, started) = oneshot::pair::<Result<()>>();
    let handle = thread::Builder::new()
        .name("forkpool-dispatch".into())
        .stack_size(DISPATCHER_STACK)
        .spawn(move || {
            let _ending = sys::EndingThread;
            // Short slices while the pool starts and ends, chains of wake-ups between
            // processes; the default one while it serves tasks (the spins of a round trip
            // fared worse with a short one: W3's median doubled).
            sys::prefer_short_slice();
            // None: the server could not be started, and `start` says why.
            let Some(dispatcher) = take_dispatcher.take() else {
                return;
            };
            let mut dispatcher = match dispatcher.start() {
                Ok(d) => d,
                Err((e, front)) => {
                    front.close_wake();
                    report.give(Err(e));
                    return;
                }
            };
            sys::default_slice();
            report.give(Ok(()));
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| dispatcher.run()));
            if outcome.is_err() {
                // A bug, not a user error: refuse new tasks; dropping the dispatcher kills and
                // reaps the workers and resolves every pending task as terminated.
                dispatcher.front.terminate();
            }
            let Dispatcher { front, .. } = dispatcher;
            front.close_wake();
        })
        .map_err(Error::io("spawning the dispatcher thread"))?;
    // The thread above is this pool's own: the fork may leave its locks held in the server,
    // and it holds none the server takes (see fork::fork_server), so it is not counted among
    // the program's threads that the warning of the path without init() is about.
    let (submitter, dispatcher) = match prepare(config, 1) {
        Ok(prepared) => prepared,
        Err(e) => {
            drop(give_dispatcher);
            let _ = handle.join();
            return Err(e);
        }
    };
    give_dispatcher.give(dispatcher);
    drop(slice);
    let outcome = started.take().unwrap_or_else(|| {
        Err(Error::Io {
            op: "starting the dispatcher",
            source: io::Error::other("the dispatcher thread ended before it started"),
        })
    });
    match outcome {
        Ok(()) => Ok((submitter, handle)),
        Err(e) => {
            let _ = handle.join();
            Err(e)
        }
    }
}

/// The submission front and a dispatcher over a fork server started on the calling thread:
/// a caller that holds stdout's lock can still fork it (see zygote::fork), and workers start
/// with the caller's signal mask.
///
/// The first workers are asked for before the server starts, so that it finds the requests
/// waiting and forks the workers at once, while the dispatcher thread starts: on a busy
/// machine each of these steps may wait a scheduler tick for a CPU, and done one after the
/// other they added up (issue 9, W8d); on a quiet one, a server forked from this thread
/// otherwise waited for it to finish asking (see [`ForkServer::unstarted`]).
fn prepare(config: Config, pool_threads: usize) -> Result<(Submitter, Dispatcher<ForkServer>)> {
    child::install_panic_hook();
    let (submitter, front) = front()?;
    let worker_mask = SignalSet::current().map_err(Error::io("pthread_sigmask"))?;
    let server =
        ForkServer::unstarted(worker_mask, config.worker).map_err(Error::io("socketpair"))?;
    let mut dispatcher = Dispatcher::new(config, server, front);
    dispatcher.replace_workers(Instant::now());
    if let Err(e) = dispatcher.procs.launch(pool_threads) {
        // Dropping the unstarted server's socket drops the requests and their pipes.
        let Dispatcher { front, .. } = dispatcher;
        front.close_wake();
        return Err(Error::io("fork")(e));
    }
    Ok((submitter, dispatcher))
}

/// Starts a pool's dispatcher for a thread of the caller's to run, one [`turn`](Driven::turn)
/// at a time, between work of its own: an MPI serving rank's relay, which polls MPI between
/// turns, so that a task and its outcome cross no thread there (each crossing was a wake-up
/// of a sleeping thread). Returns once the first workers are forked. The calling thread
/// blocks SIGPIPE, as the dispatcher thread does, and so do the threads it starts afterwards.
///
/// # Errors
/// As [`start`].
#[cfg(feature = "mpi")]
pub(crate) fn start_driven(config: Config) -> Result<(Submitter, Driven)> {
    let (submitter, mut dispatcher) = prepare(config, 0)?;
    dispatcher.driven = true;
    match dispatcher.start() {
        Ok(dispatcher) => Ok((
            submitter,
            Driven {
                dispatcher,
                over: false,
            },
        )),
        Err((e, front)) => {
            front.close_wake();
            Err(e)
        }
    }
}

/// A dispatcher that the thread owning it runs turn by turn (see [`start_driven`]). Dropping
/// it ends the fork server, which kills its workers, and resolves every task it holds as
/// terminated.
#[cfg(feature = "mpi")]
pub(crate) struct Driven {
    dispatcher: Dispatcher<ForkServer>,
    /// The loop is over (or panicked): no more turns.
    over: bool,
}

#[cfg(feature = "mpi")]
impl Driven {
    /// One turn of the loop, sleeping at most `max_wait` for a worker or a timer (tasks
    /// submitted from this thread are taken at the next turn, with no wake-up). False once the
    /// loop is over: the pool terminated, or closed with every task done and every worker
    /// reaped.
    pub(crate) fn turn(&mut self, max_wait: Duration) -> bool {
        if self.over {
            return false;
        }
        match panic::catch_unwind(AssertUnwindSafe(|| self.dispatcher.turn(max_wait))) {
            Ok(true) => return true,
            Ok(false) => {}
            // A bug, as on the dispatcher thread: refuse new tasks; dropping this kills and
            // reaps the workers and resolves every pending task as terminated.
            Err(_) => self.dispatcher.front.terminate(),
        }
        self.over = true;
        false
    }

    /// The number of workers the pool keeps.
    pub(crate) fn processes(&self) -> usize {
        self.dispatcher.config.processes
    }
}

/// The scheduler, over any process layer `P` (the fork server; a fake in unit tests).
pub(crate) struct Dispatcher<P: Processes> {
    config: Config,
    procs: P,
    front: Front,
    workers: Vec<Worker>,
    queue: VecDeque<Task>,
    next_id: u64,
    /// Consecutive workers that died before serving a task, and when to fork the next one.
    early_deaths: u32,
    respawn_at: Option<Instant>,
    /// When a worker last answered a task.
    last_answer: Option<Instant>,
    /// The spin before a sleep when an answer is imminent, kept only while it pays.
    spin: Spin,
    /// Why no worker can be forked any more (the fork server is lost): every task fails so.
    lost: Option<String>,
    /// A spawn request the fork server refused (`errno`), for `Pool::new` to report.
    spawn_failed: Option<i32>,
    /// The front's cancel count when the held tasks were last searched for cancelled ones.
    cancels: usize,
    /// The process layer was told that no worker will be asked for again
    /// ([`Processes::finish`]): its end is then no loss to repair.
    finishing: bool,
    /// The pool was closed or terminated, and this thread took a short time slice for the
    /// rest of its life.
    ending: bool,
    /// A driven dispatcher (`Driven`, feature `mpi`), whose thread does work of its own
    /// between turns (an MPI relay): it naps in `poll` for less than a millisecond, and those
    /// sleeps are timed to the microsecond (see [`sys::poll_precise`]), or each would be a look
    /// that returns at once, a busy loop beside the workers; and it spins only for a worker's
    /// reply, and not in a turn asked not to wait, since a spin there kept the thread from its
    /// own work (W3 over MPI: 3 turns of the relay between two tasks, 39 µs from rank 0's send
    /// to the relay's receive).
    driven: bool,
}

impl Dispatcher<ForkServer> {
    /// On the dispatcher thread: waits, on the event loop and bounded, until the fork server
    /// (started on the building thread, which also asked for the first workers) has forked the
    /// first workers.
    #[allow(clippy::result_large_err)]
    fn start(mut self) -> std::result::Result<Self, (Error, Front)> {
        // This thread writes to workers' pipes: a dead reader must give EPIPE, not kill the
        // program.
        if let Err(e) = sys::block_sigpipe() {
            let Dispatcher { front, .. } = self;
            return Err((Error::io("pthread_sigmask")(e), front));
        }
        match self.start_workers(Instant::now() + START_WAIT) {
            Ok(()) => Ok(self),
            Err(e) => {
                // Dropping the server closes its socket; it kills and reaps the workers
                // already forked.
                let Dispatcher { front, .. } = self;
                Err((e, front))
            }
        }
    }
}

impl<P: Processes> Dispatcher<P> {
    fn new(config: Config, procs: P, front: Front) -> Self {
        front.counters().set_initial(config.processes);
        Dispatcher {
            config,
            procs,
            front,
            workers: Vec::with_capacity(config.processes),
            queue: VecDeque::new(),
            next_id: 0,
            early_deaths: 0,
            respawn_at: None,
            last_answer: None,
            spin: Spin::new(SPIN),
            lost: None,
            spawn_failed: None,
            cancels: 0,
            finishing: false,
            ending: false,
            driven: false,
        }
    }

    /// Asks for the first workers and runs the loop until every request is answered. (One that
    /// dies at once, in its initializer, is replaced later, as in a running pool.)
    fn start_workers(&mut self, deadline: Instant) -> Result<()> {
        self.replace_workers(Instant::now());
        loop {
            if let Some(errno) = self.spawn_failed {
                return Err(Error::Io {
                    op: "fork",
                    source: io::Error::from_raw_os_error(errno),
                });
            }
            if let Some(message) = &self.lost {
                return Err(Error::Io {
                    op: "fork server",
                    source: io::Error::other(message.clone()),
                });
            }
            let starting = self
                .workers
                .iter()
                .any(|w| matches!(w.life, Life::Starting { .. }));
            if !starting {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Io {
                    op: "fork",
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the fork server did not fork the workers in time",
                    ),
                });
            }
            // The loop's own wait: a signal (EINTR) only makes it look again.
            self.poll_once(None, deadline - now);
        }
    }

    fn run(&mut self) {
        while self.turn(Duration::MAX) {}
    }

    /// One turn of the loop: take what callers published, assign, and sleep in `poll` for at
    /// most `max_wait` (less if a timer of the loop is due sooner). False once the loop is over:
    /// the pool terminated, or closed with every worker gone.
    fn turn(&mut self, max_wait: Duration) -> bool {
        // Step D1 of the wake-up protocol (DESIGN.md): read what callers published, then
        // take the tasks.
        let seen = self.front.seen();
        if seen.gate != Gate::Open && !self.ending {
            // From here on the pool's life is hand-offs again (workers exit, the server
            // reaps and reports, join returns): see DESIGN.md, *A pool's start and end on
            // a busy machine*.
            self.ending = true;
            sys::prefer_short_slice();
        }
        if seen.gate == Gate::Terminated {
            self.terminate();
            return false;
        }
        for task in self.front.take() {
            if task.is_cancelled() {
                task.finish(Err(Error::Cancelled), self.front.counters());
            } else {
                self.queue.push_back(task);
            }
        }
        if seen.cancels != self.cancels {
            self.cancels = seen.cancels;
            self.drop_cancelled(Instant::now());
        }
        self.fail_if_lost();
        let winding_down = seen.gate == Gate::Closed && seen.leases == 0 && self.queue.is_empty();
        let now = Instant::now();
        if !winding_down {
            self.replace_workers(now);
        }
        self.assign(now);
        if winding_down {
            let mut idle = 0;
            for w in &mut self.workers {
                if w.work.written == w.work.inflight.len() {
                    w.pipes.close_tasks();
                }
                if w.pipes.task_fd().is_none() && w.work.inflight.is_empty() {
                    // Nothing left for it to do: it exits at once, unless it is stopped or
                    // stuck in its initializer; then it is killed after a grace period.
                    w.end(Why::Closing, Some(now + EXIT_GRACE));
                    idle += 1;
                }
            }
            if self.workers.is_empty() {
                return false;
            }
            if self.server_unresponsive(now) {
                // No task is left with any worker, and the server has not reported a worker it
                // was asked to kill for KILL_REPORT_WAIT: it is stopped (SIGSTOP) or stuck, and
                // waiting for it would keep `join` waiting as long. Dropping the server's
                // handle ends it (SIGKILL if it does not end by itself), and its workers die
                // with it (their death signal).
                self.resolve_all_as_terminated();
                return false;
            }
            if idle == self.workers.len() && !self.finishing {
                // No task is left anywhere, so none can come back to the queue and need a
                // new worker: the fork server may exit as soon as its last worker is
                // reaped, and its end of file arrives with the last exit (no round trip
                // after it, which on a busy machine costs a wake-up or two).
                self.procs.finish();
                self.finishing = true;
            }
        }
        let timeout = self.sleep_timeout(winding_down, Instant::now());
        self.poll_once(Some(seen), timeout.map_or(max_wait, |t| t.min(max_wait)));
        true
    }

    /// After a cancel: resolves the cancelled tasks that have not reached a worker as
    /// cancelled, and has every worker running a cancelled task killed (the task then fails
    /// with [`Error::Cancelled`] in [`retire`](Self::retire), and the tasks behind it go back
    /// to the queue). A cancelled task already written to a pipe behind the running one is
    /// marked in the worker's ledger to be skipped, not run; if the ledger has no room, or the
    /// worker may have begun it, it is dealt with when it starts ([`tick`](Self::tick)), if
    /// it has not finished by then.
    fn drop_cancelled(&mut self, now: Instant) {
        let counters = self.front.counters();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for task in self.queue.drain(..) {
            if task.is_cancelled() {
                task.finish(Err(Error::Cancelled), counters);
            } else {
                kept.push_back(task);
            }
        }
        self.queue = kept;
        for w in &mut self.workers {
            for sent in w.take_cancelled_unwritten() {
                sent.task.finish(Err(Error::Cancelled), counters);
            }
            w.skip_cancelled_written();
            if w.runs_cancelled() {
                // It may have finished that task, its reply held back in the ledger.
                w.take_held_now(now, counters);
            }
            if w.runs_cancelled() {
                w.end(Why::Cancelled, Some(now));
            }
        }
    }

    /// Fails every queued task if the fork server is lost.
    fn fail_if_lost(&mut self) {
        let Some(message) = &self.lost else { return };
        if self.workers.is_empty() {
            for task in self.queue.drain(..) {
                task.finish(
                    Err(Error::Io {
                        op: "fork server",
                        source: io::Error::other(message.clone()),
                    }),
                    self.front.counters(),
                );
            }
        }
    }

    /// Asks for workers until the pool is full again, unless workers keep dying at birth or the
    /// fork server is lost.
    fn replace_workers(&mut self, now: Instant) {
        if self.lost.is_some() || self.respawn_at.is_some_and(|at| now < at) {
            return;
        }
        self.respawn_at = None;
        while self.workers.len() < self.config.processes {
            match self.procs.spawn() {
                Ok((token, pipes)) => {
                    self.workers
                        .push(Worker::new(token, pipes, self.config.max_frame));
                }
                Err(e) => return self.spawn_failed(e, now),
            }
        }
    }

    /// A worker could not be had: try again later; with no worker at all, fail the queue
    /// rather than leave callers waiting.
    fn spawn_failed(&mut self, e: io::Error, now: Instant) {
        self.respawn_at = Some(now + MAX_BACKOFF);
        self.spawn_failed = Some(e.raw_os_error().unwrap_or(libc::EAGAIN));
        if self.workers.is_empty() {
            let error = Error::io("fork")(e);
            for task in self.queue.drain(..) {
                task.finish(Err(error.duplicate()), self.front.counters());
            }
        }
    }

    /// Moves queued tasks to the serving workers with the fewest in flight, then writes what it
    /// can.
    fn assign(&mut self, now: Instant) {
        let max_tasks = self.config.worker.max_tasks;
        // No worker holds more than its fair share of the work in hand, so a batch of tasks
        // longer than the ones before it spreads evenly instead of piling into one pipe.
        let in_hand = self.queue.len()
            + self
                .workers
                .iter()
                .map(|w| w.work.inflight.len())
                .sum::<usize>();
        let fair = in_hand.div_ceil(self.workers.len().max(1)).max(1);
        // A fresh worker's tasks are likely as short as its siblings' have been.
        let siblings = self
            .workers
            .iter()
            .filter(|w| w.work.served > 0)
            .map(|w| w.work.avg_service)
            .min();
        while !self.queue.is_empty() {
            let best = self
                .workers
                .iter_mut()
                .filter(|w| {
                    w.takes_tasks(max_tasks) && w.work.inflight.len() < w.depth(siblings).min(fair)
                })
                .min_by_key(|w| w.work.inflight.len());
            let Some(worker) = best else { break };
            let mut task = self.queue.pop_front().expect("queue is not empty");
            if task.is_cancelled() {
                // Cancelled while it waited (or put back from a dead worker): it never runs.
                task.finish(Err(Error::Cancelled), self.front.counters());
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let limit_us = task
                .limit
                .map_or(0, |l| l.as_micros().clamp(1, u64::MAX as u128) as u64);
            frame::stamp_task(&mut task.frame.head, id, limit_us);
            worker.work.inflight.push_back(Sent {
                id,
                task,
                skip: None,
            });
            worker.work.assigned += 1;
        }
        for w in &mut self.workers {
            w.write_some();
            w.note_start(now, self.front.counters());
        }
    }

    /// How long the loop may sleep: until the next kill, backstop, slow start or respawn is due,
    /// or without a bound.
    fn sleep_timeout(&self, winding_down: bool, now: Instant) -> Option<Duration> {
        // A pending respawn matters only while the pool still wants workers: winding down, it
        // would make every poll return at once (issue 8, item 13: a busy loop).
        let respawn = self
            .respawn_at
            .filter(|_| !winding_down && self.workers.len() < self.config.processes);
        let front_limit = self.slow_start_limit();
        let report_wait = |w: &Worker| {
            w.kill_unreported_since()
                .filter(|_| winding_down)
                .map(|since| since + KILL_REPORT_WAIT)
        };
        let timers = self.workers.iter().flat_map(|w| {
            let slow_start = match (w.life, front_limit) {
                (Life::Booting { since, .. }, Some(limit)) if w.end.is_none() => {
                    task::deadline(since, limit)
                }
                _ => None,
            };
            [
                w.kill_at(),
                w.backstop().filter(|_| w.end.is_none()),
                w.held_due(),
                slow_start,
                w.spare_due(),
                report_wait(w),
            ]
        });
        [respawn]
            .into_iter()
            .chain(timers)
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    /// One turn of the loop: sleep in `poll` until something happens or `timeout` passes (only
    /// if no caller published anything since `seen`; `None` during start-up), then do what
    /// `poll` found possible.
    fn poll_once(&mut self, seen: Option<Seen>, timeout: Duration) {
        let mut fds = Vec::with_capacity(2 + 2 * self.workers.len());
        fds.push(PollFd::new(self.front.wake_fd(), true, false));
        match self.procs.poll_fd() {
            Some((fd, write)) => fds.push(PollFd::new(fd, true, write)),
            None => fds.push(PollFd::new(-1, false, false)),
        }
        for w in &self.workers {
            fds.push(PollFd::new(w.write_fd().unwrap_or(-1), false, true));
            fds.push(PollFd::new(w.read_fd().unwrap_or(-1), true, false));
        }
        // A driven loop's thread looks at its own work between turns: a turn it asks not to
        // wait does not spin either.
        if seen.is_some() && !(self.driven && timeout.is_zero()) && self.answer_imminent() {
            // Waking a thread that sleeps on the other CPU costs tens of microseconds; a short
            // spin costs a few while the CPUs are not contended (the spin keeps itself only
            // while it pays: `spin.rs`).
            let front = &self.front;
            self.spin.run(|| {
                front.has_tasks() || !matches!(sys::poll(&mut fds, Some(Duration::ZERO)), Ok(0))
            });
        }
        // Step D2 (DESIGN.md): announce the sleep, then look once more.
        let may_sleep = seen.is_none_or(|seen| self.front.prepare_sleep(seen));
        let timeout = if may_sleep { timeout } else { Duration::ZERO };
        let polled = if self.driven && timeout < Duration::from_millis(1) {
            sys::poll_precise(&mut fds, timeout)
        } else {
            sys::poll(&mut fds, (timeout != Duration::MAX).then_some(timeout))
        };
        self.front.woke(fds[0].readable());
        if let Err(e) = polled {
            // poll fails only for reasons (EFAULT, EINVAL, ENOMEM) that retrying cannot fix
            // quickly; back off instead of spinning.
            debug_assert!(false, "poll failed: {e}");
            thread::sleep(Duration::from_millis(10));
            return;
        }
        let now = Instant::now();
        let served_before: usize = self.workers.iter().map(|w| w.work.served).sum();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let [task, reply] = [fds[2 + 2 * i], fds[3 + 2 * i]];
            if task.writable() {
                w.write_some();
            }
            if reply.readable() {
                let was_serving = matches!(w.life, Life::Serving { .. });
                w.read_some(now, self.front.counters());
                if !was_serving && matches!(w.life, Life::Serving { .. }) {
                    self.early_deaths = 0;
                }
            }
        }
        for w in &mut self.workers {
            w.take_held(now, self.front.counters());
        }
        if self.workers.iter().map(|w| w.work.served).sum::<usize>() != served_before {
            self.last_answer = Some(now);
        }
        self.procs.service(fds[1].readable(), fds[1].writable());
        self.tick(now);
        self.apply_events(now);
    }

    /// Starts clocks, and ends workers whose time is up: a task past its limit, a worker still
    /// in its initializer when the task waiting for it ran out of time, a kill that is due.
    fn tick(&mut self, now: Instant) {
        let front_limit = self.slow_start_limit();
        for w in &mut self.workers {
            w.note_start(now, self.front.counters());
            w.drop_idle_spare(now);
            let overran = || w.end.is_none() && w.backstop().is_some_and(|at| at <= now);
            if w.runs_cancelled() || overran() {
                // Its front task may have finished, its reply held back in the ledger.
                w.take_held_now(now, self.front.counters());
                w.note_start(now, self.front.counters());
            }
            if w.runs_cancelled() {
                // A task cancelled while it waited in the pipe has started.
                w.end(Why::Cancelled, Some(now));
            }
            if w.end.is_none() && w.backstop().is_some_and(|at| at <= now) {
                w.end(Why::TimedOut, Some(now));
            }
            if let (Life::Booting { since, .. }, Some(limit)) = (w.life, front_limit) {
                if w.end.is_none() && task::deadline(since, limit).is_some_and(|at| at <= now) {
                    w.end(Why::SlowStart { limit }, Some(now));
                }
            }
            if let Some(pid) = w.due_for_kill(now) {
                self.procs.kill(pid);
            }
        }
    }

    /// The time limit of the task at the front of the queue, if no worker can run it: a booting
    /// worker that takes longer than that to become ready is killed, and the task fails with
    /// `TimedOut` (issue 8, item 4). While some worker serves, the task will run there, and a
    /// slow initializer elsewhere is left alone.
    fn slow_start_limit(&self) -> Option<Duration> {
        let serving = self
            .workers
            .iter()
            .any(|w| matches!(w.life, Life::Serving { .. }) && w.end.is_none());
        if serving {
            return None;
        }
        self.queue.front().and_then(Task::total_limit)
    }

    /// Applies the process layer's reports, and retires every worker known to be dead.
    fn apply_events(&mut self, now: Instant) {
        while let Some(event) = self.procs.next_event() {
            self.on_event(event, now);
        }
        // Highest index first, so swap_remove leaves the lower indices valid.
        for i in (0..self.workers.len()).rev() {
            if matches!(self.workers[i].life, Life::Gone { .. }) {
                let worker = self.workers.swap_remove(i);
                self.retire(worker, now);
            }
        }
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Spawned { token, pid } => {
                let starting = self
                    .workers
                    .iter_mut()
                    .find(|w| w.life == Life::Starting { token });
                // Otherwise the request was given up on: the worker finds its pipes closed and
                // exits at once, and the server reaps it.
                if let Some(w) = starting {
                    w.life = Life::Booting { pid, since: now };
                    self.front.counters().spawned();
                    self.front.counters().workers(self.workers.len());
                }
            }
            Event::SpawnFailed { token, errno } => {
                self.workers.retain(|w| w.life != Life::Starting { token });
                self.spawn_failed(io::Error::from_raw_os_error(errno), now);
            }
            Event::Exited { pid, cause } => {
                if let Some(w) = self.workers.iter_mut().find(|w| w.pid() == Some(pid)) {
                    w.reaped(cause, self.front.counters());
                }
            }
            Event::Lost => {
                // Every worker died with the server (PR_SET_PDEATHSIG sends SIGKILL).
                self.workers
                    .retain(|w| !matches!(w.life, Life::Starting { .. }));
                for w in &mut self.workers {
                    w.reaped(ExitCause::Signal(libc::SIGKILL), self.front.counters());
                }
                if self.finishing {
                    // The server exited after its last worker, as asked (or died then): no
                    // worker is wanted any more.
                    self.lost = Some("the pool's fork server has ended".into());
                } else if let Err(e) = self.procs.recreate() {
                    self.lost = Some(e.to_string());
                }
            }
            Event::StartFailed { errno } => {
                // No server, so no worker will come: `Pool::new` reports the errno, and a
                // running pool (whose server was being re-created) fails its tasks.
                self.workers
                    .retain(|w| !matches!(w.life, Life::Starting { .. }));
                let error = io::Error::from_raw_os_error(errno);
                self.lost = Some(format!(
                    "the pool's fork server could not be forked: {error}"
                ));
                self.spawn_failed = Some(errno);
            }
        }
    }

    /// Removes a worker that the fork server reported dead: delivers the replies it sent before
    /// it died, fails the task it was running, and puts the tasks behind that one back at the
    /// front of the queue.
    fn retire(&mut self, mut w: Worker, now: Instant) {
        let counters = self.front.counters();
        counters.workers(self.workers.len());
        if w.work.running_since.is_some() {
            counters.running(false);
        }
        let Life::Gone { pid, cause } = w.life else {
            unreachable!("only gone workers are retired")
        };
        let pid = pid as u32;
        let why = w.end.take().map(|e| e.why);
        if why == Some(Why::Retiring) && cause == ExitCause::Exited(0) {
            // It passed its memory cap and left after its last answer, as it said it would:
            // whatever else was sent to it never started.
            for sent in w.work.inflight.into_iter().rev() {
                self.queue.push_front(sent.task);
            }
            return;
        }
        let front_cancelled = w
            .work
            .inflight
            .front()
            .is_some_and(|s| s.task.is_cancelled());
        if why == Some(Why::Cancelled) && !front_cancelled {
            // It was killed for a cancelled task, but finished that one before the signal
            // came and had started the next: that task is not to suffer for it, and runs
            // again elsewhere (of a chunk of `map_each`, only the items it had not finished).
            let mut inflight = w.work.inflight.into_iter();
            let mut again = None;
            if w.work.written > 0 {
                let running = inflight.next().expect("a written task is in flight");
                let committed = w.pipes.ledger.as_ref().map(|l| l.committed(running.id));
                again = running.task.interrupted(committed, self.front.counters());
            }
            for sent in inflight.rev() {
                self.queue.push_front(sent.task);
            }
            if let Some(task) = again {
                self.queue.push_front(task);
            }
            return;
        }
        let limit = w.work.inflight.front().and_then(|s| s.task.total_limit());
        let mut inflight = w.work.inflight.into_iter();
        let error = match (why, limit) {
            (Some(Why::Protocol(message)), _) => Error::Protocol { pid, message },
            (Some(Why::Cancelled), _) => Error::Cancelled,
            (Some(Why::SlowStart { limit }), _) => Error::TimedOut { pid, limit },
            // Its own timer (SIGALRM), or our backstop, ended it.
            (Some(Why::TimedOut), Some(limit)) => Error::TimedOut { pid, limit },
            (_, Some(limit)) if cause == ExitCause::Signal(libc::SIGALRM) => {
                Error::TimedOut { pid, limit }
            }
            _ => Error::WorkerDied {
                pid,
                cause,
                host: None,
            },
        };
        if w.work.served == 0 && w.work.written == 0 && self.lost.is_none() {
            // It died before it served a task, most likely in its initializer. The task waiting
            // at the front of the queue fails (else a task could wait forever on workers that
            // keep dying), and it is replaced after a pause that grows while that goes on.
            self.early_deaths += 1;
            let backoff = Duration::from_millis(1 << self.early_deaths.min(10)).min(MAX_BACKOFF);
            self.respawn_at = Some(now + backoff);
            if let Some(task) = self.queue.pop_front() {
                task.finish(Err(error), self.front.counters());
            }
            for sent in inflight.rev() {
                self.queue.push_front(sent.task);
            }
            return;
        }
        let mut rest = None;
        if w.work.written > 0 {
            let running = inflight.next().expect("a written task is in flight");
            let counters = self.front.counters();
            match (&w.pipes.ledger, &error) {
                // A cancel ends the whole task, and a broken protocol leaves nothing to trust.
                (_, Error::Cancelled | Error::Protocol { .. }) | (None, _) => {
                    running.task.finish(Err(error), counters)
                }
                // What the worker recorded says which item it died in (see crate::ledger).
                (Some(ledger), _) => {
                    let committed = ledger.committed(running.id);
                    rest = running.task.lost(committed, error, pid, counters);
                }
            }
        }
        for sent in inflight.rev() {
            self.queue.push_front(sent.task);
        }
        // The items after the one that was lost: no worker has started them.
        if let Some(task) = rest {
            self.queue.push_front(task);
        }
    }

    /// Kills every worker at once, delivers the replies already in the pipes, and resolves every
    /// other task as terminated.
    fn terminate(&mut self) {
        for w in &self.workers {
            if let Some(pid) = w.pid() {
                self.procs.kill(pid);
            }
        }
        // The killed workers are the last: the server exits once it has reaped them.
        self.procs.finish();
        self.finishing = true;
        let deadline = Instant::now() + TERMINATE_WAIT;
        loop {
            let waiting = self
                .workers
                .iter()
                .any(|w| matches!(w.life, Life::Booting { .. } | Life::Serving { .. }));
            let now = Instant::now();
            if !waiting || now >= deadline || self.procs.poll_fd().is_none() {
                break;
            }
            // Only the server's socket matters now; a signal (EINTR) only makes it look again.
            let (fd, write) = self.procs.poll_fd().expect("checked above");
            let mut fds = [PollFd::new(fd, true, write)];
            let _ = sys::poll(&mut fds, Some(deadline - now));
            self.procs.service(fds[0].readable(), fds[0].writable());
            while let Some(event) = self.procs.next_event() {
                if let Event::Exited { pid, cause } = event {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.pid() == Some(pid)) {
                        w.reaped(cause, self.front.counters());
                    }
                }
            }
        }
        self.resolve_all_as_terminated();
    }

    /// True when every worker left is idle and the fork server has not reported one it was
    /// asked to kill [`KILL_REPORT_WAIT`] ago.
    fn server_unresponsive(&self, now: Instant) -> bool {
        let idle = self.workers.iter().all(|w| w.work.inflight.is_empty());
        let overdue = self
            .workers
            .iter()
            .filter_map(Worker::kill_unreported_since)
            .any(|since| now >= since + KILL_REPORT_WAIT);
        idle && overdue
    }

    /// Drops every worker, delivering the replies already in its pipe, and resolves every task
    /// still held as terminated.
    fn resolve_all_as_terminated(&mut self) {
        let counters = self.front.counters();
        for mut w in self.workers.drain(..) {
            w.read_rest(counters);
            if w.work.running_since.is_some() {
                counters.running(false);
            }
            for sent in w.work.inflight {
                sent.task.finish(Err(Error::Terminated), counters);
            }
        }
        counters.workers(0);
        for task in self.queue.drain(..).chain(self.front.take()) {
            task.finish(Err(Error::Terminated), counters);
        }
    }

    /// True when something is likely to happen within a spin: a worker runs a task whose
    /// kind takes less than a spin, or a caller just had an answer and may submit the next task
    /// (not in a driven loop, whose submissions come from its own thread, between turns).
    fn answer_imminent(&self) -> bool {
        let recent = !self.driven && self.last_answer.is_some_and(|at| at.elapsed() < SPIN);
        recent
            || self.workers.iter().any(|w| {
                w.work.running_since.is_some() && w.work.served > 0 && w.work.avg_service < SPIN
            })
    }
}

impl<P: Processes> std::fmt::Debug for Dispatcher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("workers", &self.workers.len())
            .field("queue", &self.queue.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
