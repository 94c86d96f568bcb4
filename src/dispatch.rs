//! The parent's scheduler: one thread per pool that owns the workers, the task queue, and every
//! byte that crosses a pipe.
//!
//! Callers hand tasks in through a [`Submitter`] (a channel, plus a pipe that wakes the thread
//! from `poll`). The dispatcher sends a worker whose tasks are short up to [`PIPELINE_DEPTH`]
//! tasks at once, so it finds its next task waiting when it finishes one; a worker whose tasks
//! take longer than [`SHORT_TASK`] gets one at a time, so that no task waits behind a long one
//! while another worker idles, and reads replies as they come. All
//! pipes on this side are non-blocking and watched by one `poll`, so a 64 MiB argument going out
//! and a 64 MiB result coming back never wait on each other.
//!
//! Workers answer in the order they were sent tasks, so the first unanswered task of a worker is
//! the one it is running. When a worker dies, that task alone fails with
//! [`Error::WorkerDied`]; the tasks queued behind it go back to the front of the queue, and a new
//! worker is forked in its place.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::ExitCause;
use crate::error::{Error, Result};
use crate::frame::{self, FrameReader, OutFrame, Reply, Status};
use crate::result::{Outcome, Sink};
use crate::spawn::{Child, Event, ForkServer};
use crate::stats::{Counters, Stats};
use crate::sys::{self, PollFd};
use crate::worker::{self, WorkerConfig};

/// How many tasks a worker may hold at once: the one it runs and the ones waiting in its pipe.
const PIPELINE_DEPTH: usize = 8;
/// Below this average service time a worker's tasks count as short (see [`PIPELINE_DEPTH`]);
/// above it, one task at a time costs a worker at most a few percent of idle time.
const SHORT_TASK: Duration = Duration::from_millis(1);
/// Stack of the dispatcher thread, which is also the stack every worker's tasks run on.
const DISPATCHER_STACK: usize = 8 << 20;
/// How long the dispatcher spins before it sleeps when an answer is imminent.
const SPIN: Duration = Duration::from_micros(50);
/// How long a worker that closed its reply pipe may linger before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long past a task's time limit the dispatcher waits for the worker's own timer (SIGALRM)
/// before it has the worker killed itself.
const BACKSTOP_SLACK: Duration = Duration::from_millis(500);
/// How long `terminate` waits for the fork server to report its killed workers reaped.
const TERMINATE_WAIT: Duration = Duration::from_secs(5);
/// Longest pause between attempts to replace workers that keep dying before their first task.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What the dispatcher needs to know, fixed when the pool is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) worker: WorkerConfig,
    pub(crate) max_frame: u64,
}

/// A task on its way: its frame (argument encoded, id stamped at dispatch) and where its outcome
/// goes.
#[derive(Debug)]
pub(crate) struct Task {
    frame: OutFrame,
    sink: Sink,
    /// Time limit per item, and how many items the frame holds (1, or a chunk's length).
    limit: Option<Duration>,
    items: u32,
}

impl Task {
    pub(crate) fn new(frame: OutFrame, sink: Sink) -> Task {
        Task {
            frame,
            sink,
            limit: None,
            items: 1,
        }
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

    /// Counts the task's outcome, then delivers it.
    fn finish(self, outcome: Outcome, counters: &Counters) {
        counters.completed(&outcome);
        self.sink.deliver(outcome);
    }

    /// When the worker should have killed itself over this task's limit, plus slack; past
    /// this, the dispatcher has it killed.
    fn backstop(&self, started: Instant) -> Option<Instant> {
        let limit = self.limit?;
        started.checked_add(limit.checked_mul(self.items)? + BACKSTOP_SLACK)
    }
}

/// Whether the pool takes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Gate {
    Open = 0,
    Closed = 1,
    Terminated = 2,
}

/// State shared between the callers' threads and the dispatcher.
#[derive(Debug)]
struct Shared {
    /// Held while checking the gate and sending, so a task accepted before `close` is always in
    /// the channel before the dispatcher can see the gate closed.
    submit: Mutex<()>,
    gate: AtomicU8,
    tx: Sender<Task>,
    /// Live [`Lease`]s: producers (imap iterators) that may still submit after `close`.
    leases: AtomicUsize,
    /// True while the dispatcher is (about to be) asleep in `poll`.
    sleeping: AtomicBool,
    /// The wakeup pipe's write end; closed when the dispatcher ends, so that after `join` the
    /// pool holds no descriptor.
    wake: Mutex<Option<OwnedFd>>,
    counters: Counters,
}

impl Shared {
    fn gate(&self) -> Gate {
        match self.gate.load(SeqCst) {
            0 => Gate::Open,
            1 => Gate::Closed,
            _ => Gate::Terminated,
        }
    }

    fn wake(&self) {
        if self.sleeping.swap(false, SeqCst) {
            let wake = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(fd) = &*wake {
                // A full pipe already holds a wakeup; any other failure leaves nothing to do.
                let _ = sys::write(fd.as_raw_fd(), &[1]);
            }
        }
    }

    fn send_all(
        &self,
        tasks: impl IntoIterator<Item = Task>,
        allowed: impl Fn(Gate) -> Result<()>,
    ) -> Result<()> {
        {
            let _order = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
            allowed(self.gate())?;
            for task in tasks {
                // The receiver lives until the gate is closed and no lease is left.
                if self.tx.send(task).is_err() {
                    return Err(Error::Terminated);
                }
                self.counters.submitted(1);
            }
        }
        self.wake();
        Ok(())
    }

    fn set_gate(&self, gate: Gate) {
        {
            let _order = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
            if self.gate() < gate {
                self.gate.store(gate as u8, SeqCst);
            }
        }
        self.wake();
    }
}

/// The callers' end of a pool: submits tasks and changes the pool's state. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Submitter {
    shared: Arc<Shared>,
}

impl Submitter {
    /// Submits tasks, all or none.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool is closed or terminated.
    pub(crate) fn submit(&self, tasks: impl IntoIterator<Item = Task>) -> Result<()> {
        self.shared.send_all(tasks, |gate| match gate {
            Gate::Open => Ok(()),
            _ => Err(Error::Closed),
        })
    }

    /// Submits a task on behalf of a lease holder, which may go on after `close`.
    ///
    /// # Errors
    /// [`Error::Terminated`] once the pool is terminated.
    pub(crate) fn submit_leased(&self, _lease: &Lease, task: Task) -> Result<()> {
        self.shared.send_all([task], |gate| match gate {
            Gate::Terminated => Err(Error::Terminated),
            _ => Ok(()),
        })
    }

    /// Registers a producer that may submit tasks after `close`: the pool does not wind down
    /// until the lease is dropped.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool is closed or terminated.
    pub(crate) fn lease(&self) -> Result<Lease> {
        let _order = self
            .shared
            .submit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.gate() != Gate::Open {
            return Err(Error::Closed);
        }
        self.shared.leases.fetch_add(1, SeqCst);
        Ok(Lease {
            shared: Arc::clone(&self.shared),
        })
    }

    pub(crate) fn close(&self) {
        self.shared.set_gate(Gate::Closed);
    }

    pub(crate) fn terminate(&self) {
        self.shared.set_gate(Gate::Terminated);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.shared.gate() == Gate::Open
    }

    pub(crate) fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }
}

/// A producer's claim that it may still submit tasks; see [`Submitter::lease`].
#[derive(Debug)]
pub(crate) struct Lease {
    shared: Arc<Shared>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.leases.fetch_sub(1, SeqCst);
        self.shared.wake();
    }
}

/// Starts a pool's dispatcher thread, which forks the first workers before this returns.
///
/// # Errors
/// [`Error::Io`] if the thread, a pipe or a fork could not be made; workers already forked are
/// killed and reaped first.
pub(crate) fn start(config: Config) -> Result<(Submitter, JoinHandle<()>)> {
    worker::install_panic_hook();
    let (shared, rx, wake_r) = submission_front()?;
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let thread_shared = Arc::clone(&shared);
    let handle = thread::Builder::new()
        .name("forkpool-dispatch".into())
        .stack_size(DISPATCHER_STACK)
        .spawn(move || {
            let started = Dispatcher::new(config, rx, thread_shared, wake_r);
            let mut dispatcher = match started {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| dispatcher.run()));
            if outcome.is_err() {
                // A bug, not a user error: refuse new tasks; dropping the dispatcher kills and
                // reaps the workers and resolves every pending task as terminated.
                dispatcher.shared.set_gate(Gate::Terminated);
            }
            let shared = Arc::clone(&dispatcher.shared);
            drop(dispatcher);
            shared
                .wake
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        })
        .map_err(Error::io("spawning the dispatcher thread"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((Submitter { shared }, handle)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(Error::Io {
                op: "starting the dispatcher",
                source: io::Error::other("the dispatcher thread ended before it started"),
            })
        }
    }
}

/// The shared state, the task channel's receiving end and the wake pipe's read end of a new
/// pool.
fn submission_front() -> Result<(Arc<Shared>, Receiver<Task>, OwnedFd)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (wake_r, wake_w) = sys::pipe().map_err(Error::io("pipe"))?;
    sys::set_nonblocking(&wake_r).map_err(Error::io("fcntl"))?;
    sys::set_nonblocking(&wake_w).map_err(Error::io("fcntl"))?;
    let shared = Arc::new(Shared {
        submit: Mutex::new(()),
        gate: AtomicU8::new(Gate::Open as u8),
        tx,
        leases: AtomicUsize::new(0),
        sleeping: AtomicBool::new(false),
        wake: Mutex::new(Some(wake_w)),
        counters: Counters::default(),
    });
    Ok((shared, rx, wake_r))
}

/// A pool's submission front for a scheduler other than this module's dispatcher (the `mpi`
/// module's): the callers get the [`Submitter`], the scheduler the [`Front`].
#[cfg(feature = "mpi")]
pub(crate) fn front() -> Result<(Submitter, Front)> {
    let (shared, rx, wake) = submission_front()?;
    let submitter = Submitter {
        shared: Arc::clone(&shared),
    };
    Ok((submitter, Front { shared, rx, wake }))
}

/// The consuming end of a pool's submissions: what the dispatcher itself reads, for another
/// scheduler. It keeps the dispatcher's wake-up protocol: callers send, then wake the
/// scheduler only if it said it sleeps.
#[cfg(feature = "mpi")]
#[derive(Debug)]
pub(crate) struct Front {
    shared: Arc<Shared>,
    rx: Receiver<Task>,
    wake: OwnedFd,
}

/// Where a pool is in its life, as its scheduler sees it.
#[cfg(feature = "mpi")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Tasks may still come: the pool is open, or closed with a lease left.
    Taking,
    /// Closed with no lease left: once the channel is drained, no task can come.
    Draining,
    /// Terminated: fail everything.
    Terminated,
}

#[cfg(feature = "mpi")]
impl Front {
    /// Where the pool is. Read it *before* draining [`Front::tasks`], so that a task accepted
    /// before `close` is seen.
    pub(crate) fn phase(&self) -> Phase {
        match self.shared.gate() {
            Gate::Terminated => Phase::Terminated,
            Gate::Closed if self.shared.leases.load(SeqCst) == 0 => Phase::Draining,
            _ => Phase::Taking,
        }
    }

    /// The tasks submitted since the last call.
    pub(crate) fn tasks(&self) -> crossbeam_channel::TryIter<'_, Task> {
        self.rx.try_iter()
    }

    /// Sleeps until a caller submits, closes, terminates or drops a lease, or `timeout` passes.
    /// `seen` is the phase the scheduler last acted on: if it changed since, or `pending` says
    /// the scheduler has other work (fed by a [`Front::waker`]), this returns at once, since a
    /// change before `sleeping` was set sent no wakeup.
    pub(crate) fn wait(&self, seen: Phase, timeout: Duration, pending: impl Fn() -> bool) {
        self.shared.sleeping.store(true, SeqCst);
        let idle = self.rx.is_empty() && self.phase() == seen && !pending();
        let mut fds = [PollFd::new(self.wake.as_raw_fd(), true, false)];
        let _ = sys::poll(&mut fds, Some(if idle { timeout } else { Duration::ZERO }));
        self.shared.sleeping.store(false, SeqCst);
        if fds[0].readable() {
            let mut sink = [0u8; 64];
            while matches!(sys::read(self.wake.as_raw_fd(), &mut sink), Ok(n) if n > 0) {}
        }
    }

    /// Wakes the scheduler from [`Front::wait`], from another thread.
    pub(crate) fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.wake()
    }

    /// Counts a task's outcome, then delivers it.
    pub(crate) fn finish(&self, task: Task, outcome: Outcome) {
        task.finish(outcome, &self.shared.counters);
    }

    /// Counts a task as running (`true`) or no longer (`false`) in [`Stats`].
    pub(crate) fn running(&self, up: bool) {
        self.shared.counters.running(up);
    }

    /// Sets the worker counts [`Stats`] reports.
    pub(crate) fn set_workers(&self, alive: usize) {
        self.shared.counters.set_initial(alive);
        self.shared.counters.workers(alive);
    }

    /// Refuses new tasks, as if the pool were terminated (after a fatal error).
    pub(crate) fn shut(&self) {
        self.shared.set_gate(Gate::Terminated);
    }
}

#[cfg(feature = "mpi")]
impl Drop for Front {
    fn drop(&mut self) {
        // As when the dispatcher ends: after `join`, the pool holds no descriptor.
        self.shared
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// The dispatcher's view of one worker.
#[derive(Debug)]
struct Worker {
    child: Child,
    reader: FrameReader,
    /// Tasks sent or being sent, in order; the front one is running once fully written.
    inflight: VecDeque<Sent>,
    /// How many of `inflight` are fully written.
    written: usize,
    /// Bytes of `inflight[written]` already written.
    offset: usize,
    /// Tasks ever assigned, counted against `max_tasks_per_child`.
    assigned: usize,
    /// Replies received.
    served: usize,
    /// It sent its Ready frame: its initializer ran.
    ready: bool,
    /// The task pipe refused a write: the worker is gone or going.
    write_failed: bool,
    /// The reply pipe reached end of file (or broke the protocol): stop watching it.
    reply_done: bool,
    /// It broke the protocol; it is being killed.
    protocol: Option<String>,
    /// When to have it killed if it has not been reported dead, and whether that was asked.
    kill_at: Option<Instant>,
    kill_sent: bool,
    /// How it ended, once the fork server has reaped it.
    exit: Option<ExitCause>,
    /// Since when the front task has been running (it is written and all before it answered).
    running_since: Option<Instant>,
    /// It flagged its last reply (memory cap): it takes no more tasks, and its exit is expected.
    retiring: bool,
    /// It is being killed because its task ran past its time limit.
    timed_out: bool,
    /// Average time from a task's start to its reply.
    avg_service: Duration,
}

#[derive(Debug)]
struct Sent {
    id: u64,
    task: Task,
}

struct Dispatcher {
    config: Config,
    /// The signal mask workers start with (the dispatcher itself blocks SIGPIPE).
    worker_mask: libc::sigset_t,
    server: ForkServer,
    rx: Receiver<Task>,
    shared: Arc<Shared>,
    wake: OwnedFd,
    workers: Vec<Worker>,
    queue: VecDeque<Task>,
    next_id: u64,
    /// Consecutive workers that died before serving a task, and when to fork the next one.
    early_deaths: u32,
    respawn_at: Option<Instant>,
    /// When a worker last answered a task.
    last_answer: Option<Instant>,
}

impl Dispatcher {
    fn new(
        config: Config,
        rx: Receiver<Task>,
        shared: Arc<Shared>,
        wake: OwnedFd,
    ) -> Result<Dispatcher> {
        let worker_mask = sys::block_sigpipe().map_err(Error::io("pthread_sigmask"))?;
        // First thing on this thread, before the pool has any other: fork the fork server.
        let server = ForkServer::start(worker_mask, config.worker).map_err(Error::io("fork"))?;
        let mut dispatcher = Dispatcher {
            config,
            worker_mask,
            server,
            rx,
            shared,
            wake,
            workers: Vec::with_capacity(config.processes),
            queue: VecDeque::new(),
            next_id: 0,
            early_deaths: 0,
            respawn_at: None,
            last_answer: None,
        };
        dispatcher.shared.counters.set_initial(config.processes);
        for _ in 0..config.processes {
            // On error, dropping the dispatcher closes the server's socket, and the server kills
            // and reaps the workers already forked.
            dispatcher.spawn_worker().map_err(Error::io("fork"))?;
        }
        Ok(dispatcher)
    }

    fn spawn_worker(&mut self) -> io::Result<()> {
        if self.server.is_lost() {
            self.server = ForkServer::start(self.worker_mask, self.config.worker)?;
        }
        let child = self.server.spawn()?;
        self.shared.counters.spawned();
        self.workers.push(Worker {
            child,
            reader: FrameReader::new(self.config.max_frame),
            inflight: VecDeque::new(),
            written: 0,
            offset: 0,
            assigned: 0,
            served: 0,
            ready: false,
            write_failed: false,
            reply_done: false,
            protocol: None,
            kill_at: None,
            kill_sent: false,
            exit: None,
            running_since: None,
            retiring: false,
            timed_out: false,
            avg_service: Duration::ZERO,
        });
        self.shared.counters.workers(self.workers.len());
        Ok(())
    }

    fn run(&mut self) {
        loop {
            let gate = self.shared.gate();
            if gate == Gate::Terminated {
                return self.terminate();
            }
            let leases = self.shared.leases.load(SeqCst);
            self.queue.extend(self.rx.try_iter());
            // Spawning reads the server's socket, so reports can arrive there too; apply them
            // before deciding anything, rather than sleep on them.
            self.retire_exited();
            let winding_down = gate == Gate::Closed && leases == 0 && self.queue.is_empty();
            if !winding_down {
                self.replace_workers();
                self.retire_exited();
            }
            self.assign();
            if winding_down {
                for w in &mut self.workers {
                    if w.written == w.inflight.len() {
                        w.child.close_tasks();
                    }
                }
                if self.workers.is_empty() {
                    return;
                }
            }
            self.poll_once(gate, leases);
        }
    }

    /// Forks workers until the pool is full again, unless workers keep dying at birth.
    fn replace_workers(&mut self) {
        if self.respawn_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.respawn_at = None;
        while self.workers.len() < self.config.processes {
            if let Err(e) = self.spawn_worker() {
                self.respawn_at = Some(Instant::now() + MAX_BACKOFF);
                if self.workers.is_empty() {
                    // Nothing can run the queue: fail it rather than leave callers waiting.
                    let error = Error::Io {
                        op: "fork",
                        source: e,
                    };
                    for task in self.queue.drain(..) {
                        task.finish(Err(error.duplicate()), &self.shared.counters);
                    }
                }
                return;
            }
        }
    }

    /// Moves queued tasks to the workers with the fewest in flight, then writes what it can.
    fn assign(&mut self) {
        let max_tasks = self.config.worker.max_tasks;
        // No worker holds more than its fair share of the work in hand, so a batch of tasks
        // longer than the ones before it spreads evenly instead of piling into one pipe.
        let in_hand =
            self.queue.len() + self.workers.iter().map(|w| w.inflight.len()).sum::<usize>();
        let fair = in_hand.div_ceil(self.workers.len().max(1)).max(1);
        // A fresh worker's tasks are likely as short as its siblings' have been.
        let short = self
            .workers
            .iter()
            .any(|w| w.served > 0 && w.avg_service < SHORT_TASK);
        while !self.queue.is_empty() {
            let best = self
                .workers
                .iter_mut()
                .filter(|w| {
                    w.child.task_fd().is_some()
                        && !w.write_failed
                        && !w.retiring
                        && w.inflight.len() < w.depth(short).min(fair)
                        && max_tasks.is_none_or(|max| w.assigned < max)
                })
                .min_by_key(|w| w.inflight.len());
            let Some(worker) = best else { break };
            let mut task = self.queue.pop_front().expect("queue is not empty");
            let id = self.next_id;
            self.next_id += 1;
            let limit_us = task
                .limit
                .map_or(0, |l| l.as_micros().clamp(1, u64::MAX as u128) as u64);
            frame::stamp_task(&mut task.frame.head, id, limit_us);
            worker.inflight.push_back(Sent { id, task });
            worker.assigned += 1;
        }
        let now = Instant::now();
        for w in &mut self.workers {
            w.write_some();
            w.note_start(now, &self.shared.counters);
        }
    }

    fn poll_once(&mut self, gate: Gate, leases: usize) {
        let mut fds = Vec::with_capacity(2 + 2 * self.workers.len());
        fds.push(PollFd::new(self.wake.as_raw_fd(), true, false));
        fds.push(PollFd::new(self.server.fd().unwrap_or(-1), true, false));
        for w in &self.workers {
            let unwritten = w.written < w.inflight.len() && !w.write_failed;
            match w.child.task_fd() {
                Some(fd) if unwritten => fds.push(PollFd::new(fd, false, true)),
                _ => fds.push(PollFd::new(-1, false, false)),
            }
            let reply = if w.reply_done { -1 } else { w.child.reply_fd() };
            fds.push(PollFd::new(reply, true, false));
        }
        if self.answer_imminent() {
            // Waking a thread that sleeps on the other CPU costs tens of microseconds on a
            // busy machine; a short spin, yielding the CPU, costs a few.
            let start = Instant::now();
            while start.elapsed() < SPIN
                && self.rx.is_empty()
                && matches!(sys::poll(&mut fds, Some(Duration::ZERO)), Ok(0))
            {
                thread::yield_now();
            }
        }
        self.shared.sleeping.store(true, SeqCst);
        let idle = self.rx.is_empty()
            && self.shared.gate() == gate
            && self.shared.leases.load(SeqCst) == leases;
        let timeout = if idle {
            let next_kill = self
                .workers
                .iter()
                .filter(|w| !w.kill_sent)
                .filter_map(|w| w.kill_at.into_iter().chain(w.backstop()).min())
                .min();
            [self.respawn_at, next_kill]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        let polled = sys::poll(&mut fds, timeout);
        self.shared.sleeping.store(false, SeqCst);
        if let Err(e) = polled {
            // poll fails only for reasons (EFAULT, EINVAL, ENOMEM) that retrying cannot fix
            // quickly; back off instead of spinning.
            debug_assert!(false, "poll failed: {e}");
            thread::sleep(Duration::from_millis(10));
            return;
        }
        if fds[0].readable() {
            let mut sink = [0u8; 64];
            while matches!(sys::read(self.wake.as_raw_fd(), &mut sink), Ok(n) if n > 0) {}
        }
        let now = Instant::now();
        let mut became_ready = false;
        let served_before: usize = self.workers.iter().map(|w| w.served).sum();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let [task, reply] = [fds[2 + 2 * i], fds[3 + 2 * i]];
            if task.writable() {
                w.write_some();
            }
            if reply.readable() {
                let was_ready = w.ready;
                match w.read_some(&self.shared.counters) {
                    Ok(false) => {}
                    Ok(true) => {
                        // End of file: it is exiting; if it lingers, have it killed.
                        w.reply_done = true;
                        w.kill_at.get_or_insert(now + EXIT_GRACE);
                    }
                    Err(message) => {
                        w.reply_done = true;
                        w.protocol = Some(message);
                        w.kill_at = Some(now);
                    }
                }
                became_ready |= w.ready && !was_ready;
            }
            w.note_start(now, &self.shared.counters);
            if w.backstop().is_some_and(|at| at <= now) && !w.kill_sent {
                w.timed_out = true;
                w.kill_at = Some(now);
            }
            if w.kill_at.is_some_and(|at| at <= now) && !w.kill_sent {
                w.kill_sent = true;
                self.server.kill(w.child.pid());
            }
        }
        if became_ready {
            self.early_deaths = 0;
        }
        if self.workers.iter().map(|w| w.served).sum::<usize>() != served_before {
            self.last_answer = Some(now);
        }
        if fds[1].readable() {
            self.server.read_events();
        }
        self.retire_exited();
    }

    /// True when something is likely to happen within a spin: a worker runs a task whose
    /// kind takes less than a spin, or a caller just had an answer and may submit the next task.
    fn answer_imminent(&self) -> bool {
        let recent = self.last_answer.is_some_and(|at| at.elapsed() < SPIN);
        recent
            || self
                .workers
                .iter()
                .any(|w| w.running_since.is_some() && w.served > 0 && w.avg_service < SPIN)
    }

    /// Applies the fork server's queued reports, and retires every worker known to be dead.
    fn retire_exited(&mut self) {
        while let Some(event) = self.server.next_event() {
            self.on_event(event);
        }
        // Highest index first, so swap_remove leaves the lower indices valid.
        for i in (0..self.workers.len()).rev() {
            if self.workers[i].exit.is_some() {
                let worker = self.workers.swap_remove(i);
                self.retire(worker);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Exited { pid, cause } => {
                if let Some(w) = self.workers.iter_mut().find(|w| w.child.pid() == pid) {
                    w.exit = Some(cause);
                }
            }
            Event::Lost => {
                // Every worker died with the server (PR_SET_PDEATHSIG sends SIGKILL). The next
                // spawn starts a new server.
                for w in &mut self.workers {
                    w.exit.get_or_insert(ExitCause::Signal(libc::SIGKILL));
                }
            }
        }
    }

    /// Removes a worker that the fork server reported dead: delivers the replies it sent before
    /// it died, fails the task it was running, and puts the tasks behind that one back at the
    /// front of the queue.
    fn retire(&mut self, mut w: Worker) {
        let counters = &self.shared.counters;
        if w.protocol.is_none() {
            w.protocol = w.read_to_end(counters).err();
        }
        counters.workers(self.workers.len());
        if w.running_since.is_some() {
            counters.running(false);
        }
        let pid = w.child.pid() as u32;
        let cause = w.exit.expect("retired workers have exited");
        if w.retiring && w.protocol.is_none() && !w.timed_out && cause == ExitCause::Exited(0) {
            // It passed its memory cap and left after its last answer, as it said it would:
            // whatever else was sent to it never started.
            for sent in w.inflight.into_iter().rev() {
                self.queue.push_front(sent.task);
            }
            return;
        }
        let limit = w.inflight.front().and_then(|s| s.task.limit);
        let error = match (w.protocol, limit) {
            (Some(message), _) => Error::Protocol { pid, message },
            // Its own timer (SIGALRM), or our backstop, ended it.
            (None, Some(limit)) if w.timed_out || cause == ExitCause::Signal(libc::SIGALRM) => {
                Error::TimedOut { pid, limit }
            }
            (None, _) => Error::WorkerDied {
                pid,
                cause,
                host: None,
            },
        };
        // A worker that dies before it is ready failed to start, most likely in its
        // initializer. Its first task fails even if it never read it (else that task would be
        // handed from dying worker to dying worker forever), and it is replaced after a pause
        // that grows while that goes on.
        let died_at_birth = !w.ready && w.child.task_fd().is_some();
        if died_at_birth {
            self.early_deaths += 1;
            let backoff = Duration::from_millis(1 << self.early_deaths.min(10)).min(MAX_BACKOFF);
            self.respawn_at = Some(Instant::now() + backoff);
        }
        let mut inflight = w.inflight.into_iter();
        if w.written > 0 || died_at_birth && inflight.len() > 0 {
            let running = inflight.next().expect("a written task is in flight");
            running.task.finish(Err(error), &self.shared.counters);
        }
        for sent in inflight.rev() {
            self.queue.push_front(sent.task);
        }
    }

    /// Kills every worker at once, delivers the replies already in the pipes, and resolves every
    /// other task as terminated.
    fn terminate(&mut self) {
        for w in &self.workers {
            self.server.kill(w.child.pid());
        }
        let deadline = Instant::now() + TERMINATE_WAIT;
        while self.workers.iter().any(|w| w.exit.is_none()) {
            match self.server.wait_event(deadline) {
                Some(event) => self.on_event(event),
                None => break,
            }
        }
        let counters = &self.shared.counters;
        for mut w in self.workers.drain(..) {
            let _ = w.read_to_end(counters);
            if w.running_since.is_some() {
                counters.running(false);
            }
            for sent in w.inflight {
                sent.task.finish(Err(Error::Terminated), counters);
            }
        }
        counters.workers(0);
        for task in self.queue.drain(..).chain(self.rx.try_iter()) {
            task.finish(Err(Error::Terminated), counters);
        }
    }
}

impl Worker {
    /// Writes as much of the pending task frames as the pipe takes without blocking.
    fn write_some(&mut self) {
        let Some(fd) = self.child.task_fd() else {
            return;
        };
        while self.written < self.inflight.len() && !self.write_failed {
            let pending = self.inflight.iter().skip(self.written);
            let slices: Vec<&[u8]> = pending
                .enumerate()
                .flat_map(|(i, s)| {
                    s.task
                        .frame
                        .parts_from(if i == 0 { self.offset } else { 0 })
                })
                .filter(|part| !part.is_empty())
                .take(sys::IOV_MAX)
                .collect();
            match sys::writev(fd, &slices) {
                Ok(mut n) => {
                    while n > 0 {
                        let left = self.inflight[self.written].task.frame.len() - self.offset;
                        if n >= left {
                            n -= left;
                            self.written += 1;
                            self.offset = 0;
                        } else {
                            self.offset += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.write_failed = true,
            }
        }
    }

    /// Reads what the reply pipe holds and delivers every whole reply.
    /// `Ok(true)` at end of file; `Err` if the worker broke the protocol.
    fn read_some(&mut self, counters: &Counters) -> std::result::Result<bool, String> {
        loop {
            let eof = match self.reader.fill(self.child.reply_fd()) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => true,
            };
            while let Some(body) = self.reader.take().map_err(|e| e.to_string())? {
                self.on_reply(frame::parse_reply(body)?, counters)?;
            }
            if eof {
                if !self.reader.is_empty() {
                    return Err("the reply pipe closed in the middle of a frame".into());
                }
                return Ok(true);
            }
        }
    }

    /// Reads until end of file or until the pipe is empty (a grandchild may hold it open).
    fn read_to_end(&mut self, counters: &Counters) -> std::result::Result<(), String> {
        self.read_some(counters).map(drop)
    }

    /// Starts the clock of the front task once it is written, the worker is ready, and every
    /// task before it has been answered.
    fn note_start(&mut self, now: Instant, counters: &Counters) {
        if self.running_since.is_none() && self.ready && self.written > 0 {
            self.running_since = Some(now);
            counters.running(true);
        }
    }

    /// How many tasks it may hold: many while its tasks are short, else one. Until it has served
    /// a task, it goes by its siblings' (one in a fresh pool).
    fn depth(&self, siblings_short: bool) -> usize {
        let short = if self.served > 0 {
            self.avg_service < SHORT_TASK
        } else {
            siblings_short
        };
        if short {
            PIPELINE_DEPTH
        } else {
            1
        }
    }

    /// When the running task's time limit, with slack, runs out.
    fn backstop(&self) -> Option<Instant> {
        self.inflight.front()?.task.backstop(self.running_since?)
    }

    fn on_reply(&mut self, reply: Reply, counters: &Counters) -> std::result::Result<(), String> {
        if reply.status == Status::Ready {
            if self.ready {
                return Err("a second Ready frame".into());
            }
            self.ready = true;
            return Ok(());
        }
        if !self.ready {
            return Err("a reply before the Ready frame".into());
        }
        let expected = match self.inflight.front() {
            Some(front) if self.written > 0 => front.id,
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
        let sent = self.inflight.pop_front().expect("checked above");
        self.written -= 1;
        self.served += 1;
        if let Some(since) = self.running_since.take() {
            counters.running(false);
            // An average over the last few tasks (weight 1/8 for the newest).
            self.avg_service = (self.avg_service * 7 + since.elapsed()) / 8;
        }
        self.retiring |= reply.retiring;
        sent.task.finish(outcome(reply), counters);
        Ok(())
    }
}

/// What a reply means for its caller.
fn outcome(reply: Reply) -> Outcome {
    if reply.status == Status::Ok {
        return Ok(reply.payload);
    }
    debug_assert!(reply.status != Status::Ready);
    let message = String::from_utf8_lossy(&reply.payload).into_owned();
    Err(match reply.status {
        Status::Ok => unreachable!("handled above"),
        Status::Panicked => Error::TaskPanicked { message },
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
