//! The parent's scheduler: one thread per pool that owns the workers, the task queue, and every
//! byte that crosses a pipe.
//!
//! Callers hand tasks in through a [`Submitter`] (a channel, plus a pipe that wakes the thread
//! from `poll`). The dispatcher sends each worker up to [`PIPELINE_DEPTH`] tasks at once, so a
//! worker finds its next task waiting when it finishes one, and reads replies as they come. All
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

use crate::error::{Error, Result};
use crate::frame::{self, FrameReader, Reply, Status};
use crate::result::{Outcome, Sink};
use crate::spawn::{self, Child, SpawnContext};
use crate::sys::{self, PollFd};
use crate::worker::WorkerConfig;

/// How many tasks a worker may hold at once: the one it runs and the ones waiting in its pipe.
const PIPELINE_DEPTH: usize = 2;
/// Stack of the dispatcher thread, which is also the stack every worker's tasks run on.
const DISPATCHER_STACK: usize = 8 << 20;
/// How long a worker that closed its reply pipe may linger before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
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
    frame: Vec<u8>,
    sink: Sink,
}

impl Task {
    pub(crate) fn new(frame: Vec<u8>, sink: Sink) -> Task {
        Task { frame, sink }
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
    });
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
    /// The task pipe refused a write: the worker is gone or going.
    write_failed: bool,
}

#[derive(Debug)]
struct Sent {
    id: u64,
    task: Task,
}

/// Why a worker is being removed.
enum Exit {
    /// It ended, or closed its reply pipe.
    Ended,
    /// It broke the protocol and is killed.
    Protocol(String),
}

struct Dispatcher {
    config: Config,
    ctx: SpawnContext,
    rx: Receiver<Task>,
    shared: Arc<Shared>,
    wake: OwnedFd,
    workers: Vec<Worker>,
    queue: VecDeque<Task>,
    next_id: u64,
    /// Consecutive workers that died before serving a task, and when to fork the next one.
    early_deaths: u32,
    respawn_at: Option<Instant>,
}

impl Dispatcher {
    fn new(
        config: Config,
        rx: Receiver<Task>,
        shared: Arc<Shared>,
        wake: OwnedFd,
    ) -> Result<Dispatcher> {
        let sigmask = sys::block_sigpipe().map_err(Error::io("pthread_sigmask"))?;
        let mut dispatcher = Dispatcher {
            config,
            ctx: SpawnContext {
                parent: sys::getpid(),
                sigmask,
                worker: config.worker,
            },
            rx,
            shared,
            wake,
            workers: Vec::with_capacity(config.processes),
            queue: VecDeque::new(),
            next_id: 0,
            early_deaths: 0,
            respawn_at: None,
        };
        for _ in 0..config.processes {
            // On error the workers already forked are killed and reaped as `dispatcher` drops.
            dispatcher.spawn_worker().map_err(Error::io("fork"))?;
        }
        Ok(dispatcher)
    }

    fn spawn_worker(&mut self) -> io::Result<()> {
        let child = spawn::spawn(&self.ctx)?;
        self.workers.push(Worker {
            child,
            reader: FrameReader::new(self.config.max_frame),
            inflight: VecDeque::new(),
            written: 0,
            offset: 0,
            assigned: 0,
            served: 0,
            write_failed: false,
        });
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
            let winding_down = gate == Gate::Closed && leases == 0 && self.queue.is_empty();
            if !winding_down {
                self.replace_workers();
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
                        task.sink.deliver(Err(error.duplicate()));
                    }
                }
                return;
            }
        }
    }

    /// Moves queued tasks to the workers with the fewest in flight, then writes what it can.
    fn assign(&mut self) {
        let max_tasks = self.config.worker.max_tasks;
        while !self.queue.is_empty() {
            let best = self
                .workers
                .iter_mut()
                .filter(|w| {
                    w.child.task_fd().is_some()
                        && !w.write_failed
                        && w.inflight.len() < PIPELINE_DEPTH
                        && max_tasks.is_none_or(|max| w.assigned < max)
                })
                .min_by_key(|w| w.inflight.len());
            let Some(worker) = best else { break };
            let mut task = self.queue.pop_front().expect("queue is not empty");
            let id = self.next_id;
            self.next_id += 1;
            frame::stamp_task_id(&mut task.frame, id);
            worker.inflight.push_back(Sent { id, task });
            worker.assigned += 1;
        }
        for w in &mut self.workers {
            w.write_some();
        }
    }

    fn poll_once(&mut self, gate: Gate, leases: usize) {
        let mut fds = Vec::with_capacity(1 + 3 * self.workers.len());
        fds.push(PollFd::new(self.wake.as_raw_fd(), true, false));
        for w in &self.workers {
            let unwritten = w.written < w.inflight.len() && !w.write_failed;
            match w.child.task_fd() {
                Some(fd) if unwritten => fds.push(PollFd::new(fd, false, true)),
                _ => fds.push(PollFd::new(-1, false, false)),
            }
            fds.push(PollFd::new(w.child.reply_fd(), true, false));
            fds.push(PollFd::new(w.child.pidfd().unwrap_or(-1), true, false));
        }
        self.shared.sleeping.store(true, SeqCst);
        let idle = self.rx.is_empty()
            && self.shared.gate() == gate
            && self.shared.leases.load(SeqCst) == leases;
        let timeout = if !idle {
            Some(Duration::ZERO)
        } else {
            self.respawn_at
                .map(|at| at.saturating_duration_since(Instant::now()))
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
        let mut exits = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let [task, reply, pidfd] = [fds[1 + 3 * i], fds[2 + 3 * i], fds[3 + 3 * i]];
            if task.writable() {
                w.write_some();
            }
            let mut ended = pidfd.readable();
            if reply.readable() {
                match w.read_some() {
                    Ok(eof) => ended |= eof,
                    Err(message) => {
                        exits.push((i, Exit::Protocol(message)));
                        continue;
                    }
                }
            }
            if ended {
                exits.push((i, Exit::Ended));
            }
        }
        // Highest index first, so swap_remove leaves the lower indices valid.
        for (i, exit) in exits.into_iter().rev() {
            let worker = self.workers.swap_remove(i);
            self.retire(worker, exit);
        }
    }

    /// Removes a worker that ended or broke the protocol: delivers the replies it still sent,
    /// reaps it, fails the task it was running, and puts the tasks behind that one back at the
    /// front of the queue.
    fn retire(&mut self, mut w: Worker, exit: Exit) {
        let protocol = match exit {
            Exit::Ended => w.read_to_end().err(),
            Exit::Protocol(message) => Some(message),
        };
        if protocol.is_some() {
            w.child.kill();
        }
        let pid = w.child.pid() as u32;
        let error = match (protocol, w.child.reap(EXIT_GRACE)) {
            (Some(message), _) => Error::Protocol { pid, message },
            (None, Ok(cause)) => Error::WorkerDied { pid, cause },
            (None, Err(source)) => Error::Io {
                op: "waitpid",
                source,
            },
        };
        // A worker that dies before serving anything, unasked, may be failing in its
        // initializer: replace it after a pause that grows while that goes on.
        if w.served == 0 && w.child.task_fd().is_some() {
            self.early_deaths += 1;
            let backoff = Duration::from_millis(1 << self.early_deaths.min(10)).min(MAX_BACKOFF);
            self.respawn_at = Some(Instant::now() + backoff);
        } else {
            self.early_deaths = 0;
        }
        let mut inflight = w.inflight.into_iter();
        if w.written > 0 {
            let running = inflight.next().expect("a written task is in flight");
            running.task.sink.deliver(Err(error));
        }
        for sent in inflight.rev() {
            self.queue.push_front(sent.task);
        }
    }

    /// Kills every worker at once, delivers the replies already in the pipes, and resolves every
    /// other task as terminated.
    fn terminate(&mut self) {
        for w in &self.workers {
            w.child.kill();
        }
        for mut w in self.workers.drain(..) {
            let _ = w.child.reap(EXIT_GRACE);
            let _ = w.read_to_end();
            // Dropping the unanswered tasks' sinks resolves them as terminated.
        }
        self.queue.clear();
        self.rx.try_iter().for_each(drop);
    }
}

impl Worker {
    /// Writes as much of the pending task frames as the pipe takes without blocking.
    fn write_some(&mut self) {
        let Some(fd) = self.child.task_fd() else {
            return;
        };
        while self.written < self.inflight.len() && !self.write_failed {
            let mut slices: Vec<&[u8]> = Vec::with_capacity(self.inflight.len() - self.written);
            slices.push(&self.inflight[self.written].task.frame[self.offset..]);
            slices.extend(
                self.inflight
                    .iter()
                    .skip(self.written + 1)
                    .map(|s| &s.task.frame[..]),
            );
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
    fn read_some(&mut self) -> std::result::Result<bool, String> {
        loop {
            let eof = match self.reader.fill(self.child.reply_fd()) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => true,
            };
            while let Some(body) = self.reader.take().map_err(|e| e.to_string())? {
                self.on_reply(frame::parse_reply(body)?)?;
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
    fn read_to_end(&mut self) -> std::result::Result<(), String> {
        self.read_some().map(drop)
    }

    fn on_reply(&mut self, reply: Reply) -> std::result::Result<(), String> {
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
        sent.task.sink.deliver(outcome(reply));
        Ok(())
    }
}

/// What a reply means for its caller.
fn outcome(reply: Reply) -> Outcome {
    if reply.status == Status::Ok {
        return Ok(reply.payload);
    }
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
    })
}
