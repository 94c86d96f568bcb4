//! [`Pool`] and [`PoolBuilder`]: the public face. No system calls here; the pool turns each call
//! into encoded tasks and hands them to its dispatcher.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::callback::{self, Callbacks};
use crate::dispatch::{self, Config, Submitter, Task};
use crate::error::{Error, Result};
use crate::frame;
use crate::imap::Imap;
use crate::result::{self, AsyncResult, Sink, Slot};
use crate::stats::Stats;
use crate::task;
use crate::worker::WorkerConfig;

/// How many results an [`Imap`] keeps submitted but not yet yielded, per worker.
const IMAP_WINDOW_PER_WORKER: usize = 4;

/// A pool of forked worker processes that run tasks: Python's `multiprocessing.Pool` for Rust.
///
/// A task is a plain function pointer `fn(A) -> R` (a named `fn`, or a closure that captures
/// nothing) and an argument. The argument travels to a worker as bincode bytes over a pipe, and
/// the result comes back the same way. A task that panics fails with
/// [`Error::TaskPanicked`]; a worker that dies mid-task (a segfault, an abort, `kill -9`) fails
/// exactly that task with [`Error::WorkerDied`] and is replaced.
///
/// `Pool` is `Send + Sync`: share it between threads with `&Pool` or `Arc<Pool>`, and submit
/// from all of them at once.
///
/// # Caveats
/// * Build the pool early in `main`, before starting other threads: a worker is a fork of the
///   program, and fork copies only the thread that calls it. A lock another thread held at that
///   moment (inside `println!`, say) stays locked in the worker.
/// * Workers close every inherited file descriptor except stdin, stdout and stderr. Open files,
///   sockets and connections in an [`initializer`](PoolBuilder::initializer) instead.
/// * Dropping the pool terminates it: unfinished tasks fail with [`Error::Terminated`]. Call
///   [`close`](Pool::close) and [`join`](Pool::join) to let them finish.
///
/// # Examples
///
/// ```
/// use forkpool::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(4)?;
/// let pending: Vec<_> = (0..10).map(|i| pool.apply_async(square, i)).collect::<Result<_, _>>()?;
/// pool.close();
/// pool.join()?;
/// let squares: Vec<u64> = pending.into_iter().map(|r| r.get()).collect::<Result<_, _>>()?;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// # Ok::<(), forkpool::Error>(())
/// ```
pub struct Pool {
    submitter: Submitter,
    processes: usize,
    task_timeout: Option<Duration>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    callbacks: Callbacks,
}

/// Configures a [`Pool`] before it is built.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use forkpool::Pool;
///
/// static SEED: AtomicU64 = AtomicU64::new(0);
///
/// fn init() {
///     // Runs once in each worker, before its first task.
///     SEED.store(42, Ordering::Relaxed);
/// }
///
/// fn seeded(x: u64) -> u64 {
///     x + SEED.load(Ordering::Relaxed)
/// }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(init)
///     .max_tasks_per_child(100)
///     .build()?;
/// assert_eq!(pool.apply(seeded, 1)?, 43);
/// # Ok::<(), forkpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<fn()>,
    max_tasks_per_child: Option<usize>,
    max_frame_bytes: u64,
    task_timeout: Option<Duration>,
    max_memory_per_child: Option<u64>,
    print_panics: bool,
    #[cfg(feature = "mpi")]
    mpi: Option<crate::mpi::Options>,
}

impl PoolBuilder {
    /// The number of worker processes. Defaults to
    /// [`std::thread::available_parallelism`], or 1 if that is unknown.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::builder().processes(3).build()?;
    /// assert_eq!(pool.processes(), 3);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A function each worker runs once, before its first task; Python's `initializer`. Use it
    /// to set up per-process state: open a connection, seed a generator, load a model.
    ///
    /// If it panics, the worker stays up and fails each task it is given with
    /// [`Error::InitializerPanicked`], rather than crash in a loop.
    ///
    /// # Examples
    ///
    /// ```
    /// fn quiet() {
    ///     std::env::set_var("FORKPOOL_EXAMPLE", "set");
    /// }
    /// fn read(_: ()) -> String {
    ///     std::env::var("FORKPOOL_EXAMPLE").unwrap_or_default()
    /// }
    /// let pool = forkpool::Pool::builder().processes(1).initializer(quiet).build()?;
    /// assert_eq!(pool.apply(read, ())?, "set");
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializer = Some(f);
        self
    }

    /// A worker exits after serving `n` tasks and a fresh one takes its place; Python's
    /// `maxtasksperchild`. Bounds what a leaky task can accumulate. No task is lost.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::builder().processes(1).max_tasks_per_child(1).build()?;
    /// let a = pool.apply(|_: ()| std::process::id(), ())?;
    /// let b = pool.apply(|_: ()| std::process::id(), ())?;
    /// assert_ne!(a, b);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// A time limit for every task; Python's Pool has none (billiard's `time_limit`, pebble's
    /// `timeout`). The clock starts when the task starts running in a worker, not when it is
    /// queued. A task still running at the limit fails with [`Error::TimedOut`]; its worker is
    /// killed and replaced, and no other task is affected.
    ///
    /// For [`map`](Pool::map) and [`map_chunked`](Pool::map_chunked) the limit applies to each
    /// item, not to the chunk: the worker restarts its clock before each item of a chunk, and an
    /// item that runs past it fails the chunk with [`Error::TimedOut`]. [`imap`](Pool::imap)
    /// items are tasks of their own.
    ///
    /// The worker enforces the limit itself with a SIGALRM timer, so a task that installs its
    /// own SIGALRM handler or blocks SIGALRM is killed by the pool instead, half a second later.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn spin(_: ()) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// let pool = forkpool::Pool::builder()
    ///     .processes(1)
    ///     .task_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// assert!(matches!(pool.apply(spin, ()), Err(forkpool::Error::TimedOut { .. })));
    /// assert_eq!(pool.apply(|x: u8| x, 7)?, 7);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// A cap on each worker's resident memory, in bytes (billiard's `max_memory_per_child`).
    /// After each task, a worker above the cap returns its result, then exits and is replaced,
    /// so a task that leaks does not grow a worker without bound. No task is lost.
    ///
    /// On Linux the worker checks its current resident set (`/proc/self/statm`); elsewhere its
    /// peak, which only grows.
    ///
    /// # Examples
    ///
    /// ```
    /// fn leak(mib: usize) -> u32 {
    ///     std::mem::forget(vec![1u8; mib << 20]);
    ///     std::process::id()
    /// }
    ///
    /// let pool = forkpool::Pool::builder()
    ///     .processes(1)
    ///     .max_memory_per_child(100 << 20)
    ///     .build()?;
    /// let first = pool.apply(leak, 150)?; // over the cap: this worker exits after answering
    /// let second = pool.apply(leak, 1)?;
    /// assert_ne!(first, second);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Whether a worker writes a line to its stderr when a task panics (default: yes). The
    /// panic's message reaches the caller in [`Error::TaskPanicked`] either way; turn the line
    /// off when stderr belongs to something else, such as a progress bar.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::builder().processes(1).print_panics(false).build()?;
    /// let quiet = pool.apply(|_: ()| -> u8 { panic!("nobody sees this line") }, ());
    /// assert!(matches!(quiet, Err(forkpool::Error::TaskPanicked { .. })));
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn print_panics(mut self, yes: bool) -> Self {
        self.print_panics = yes;
        self
    }

    /// The largest reply frame accepted from a worker, in bytes; default 4 GiB. A worker that
    /// announces a larger one is killed and its task fails with [`Error::Protocol`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::builder().processes(1).max_frame_bytes(1 << 20).build()?;
    /// assert!(pool.apply(|n: usize| vec![0u8; n], 10).is_ok());
    /// assert!(matches!(
    ///     pool.apply(|n: usize| vec![0u8; n], 2 << 20),
    ///     Err(forkpool::Error::Protocol { .. })
    /// ));
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn max_frame_bytes(mut self, bytes: u64) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Forks the workers and returns the running pool.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `processes(0)` or `max_tasks_per_child(0)`;
    /// [`Error::Io`] if a pipe or a fork failed (workers already forked are reaped first).
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool::{Error, Pool};
    ///
    /// assert!(matches!(Pool::builder().processes(0).build(), Err(Error::InvalidArgument { .. })));
    /// let pool = Pool::builder().build()?;
    /// assert!(pool.processes() >= 1);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn build(self) -> Result<Pool> {
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::InvalidArgument {
                    message: "a pool needs at least 1 process",
                })
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        if self.task_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidArgument {
                message: "task_timeout must be above zero",
            });
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::InvalidArgument {
                message: "max_tasks_per_child must be at least 1",
            });
        }
        #[cfg(feature = "mpi")]
        if let Some(options) = self.mpi {
            let local = PoolBuilder { mpi: None, ..self };
            return crate::mpi::build(local, options);
        }
        let (submitter, handle) = dispatch::start(Config {
            processes,
            worker: WorkerConfig {
                initializer: self.initializer,
                max_tasks: self.max_tasks_per_child,
                max_memory: self.max_memory_per_child,
                print_panics: self.print_panics,
            },
            max_frame: self.max_frame_bytes,
        })?;
        Ok(Pool {
            submitter,
            processes,
            task_timeout: self.task_timeout,
            dispatcher: Mutex::new(Some(handle)),
            callbacks: Callbacks::default(),
        })
    }
}

#[cfg(feature = "mpi")]
impl PoolBuilder {
    /// Spreads the pool over every rank of an MPI job (Open MPI, MPICH); Python's
    /// `mpi4py.util.pool.Pool`. Needs the `mpi` cargo feature.
    ///
    /// Under `mpirun -n N ./app` (or `srun ./app`), [`build`](PoolBuilder::build) is collective:
    /// every rank must call it, first thing in `main`. On rank 0 it returns a [`Pool`] whose
    /// tasks run on the other ranks; on every other rank it never returns: the rank runs a local
    /// pool of [`processes`](PoolBuilder::processes) workers (default: that node's CPUs), relays
    /// rank 0's tasks into it and the outcomes back, and exits the process with status 0 when
    /// rank 0 closes, terminates or drops the pool. [`Pool::processes`] on rank 0 is the total.
    /// Every other setting (initializer, time limit, recycling) applies on every rank. Run
    /// without `mpirun`, or with one rank, it is a local pool.
    ///
    /// # Caveats
    /// * Every rank must run the same build of the program: functions travel as offsets into
    ///   the executable. `build` checks the binary's identity (GNU build-id, else a hash of the
    ///   executable) on every rank and fails with [`Error::Mpi`] on rank 0 on a mismatch.
    /// * A task that crashes fails alone ([`Error::WorkerDied`] names its host), but the loss
    ///   of a whole rank (node failure, a killed relay) ends the MPI job, rank 0 included, as
    ///   MPI does; `mpirun` reports which rank died.
    /// * MPI can be initialized once per process: one MPI pool per program.
    ///
    /// # Examples
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// // Without mpirun this is a local pool; under `mpirun -n 4` the tasks run on ranks 1 to 3.
    /// let pool = forkpool::Pool::builder().processes(2).mpi().build()?;
    /// assert_eq!(pool.map(square, 0..4)?, [0, 1, 4, 9]);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn mpi(mut self) -> Self {
        self.mpi.get_or_insert_with(crate::mpi::Options::default);
        self
    }

    /// With [`mpi`](PoolBuilder::mpi): whether rank 0 runs a local pool of
    /// [`processes`](PoolBuilder::processes) workers too (default: no, rank 0 only schedules).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::builder().processes(2).mpi().mpi_rank0_workers(true).build()?;
    /// assert_eq!(pool.apply(|x: u8| x + 1, 1)?, 2);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn mpi_rank0_workers(mut self, yes: bool) -> Self {
        self.mpi
            .get_or_insert_with(crate::mpi::Options::default)
            .rank0_workers = yes;
        self
    }

    /// The settings the `mpi` module needs from the builder.
    pub(crate) fn mpi_settings(&self) -> (Option<usize>, Option<Duration>) {
        (self.processes, self.task_timeout)
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks_per_child: None,
            max_frame_bytes: frame::DEFAULT_MAX_FRAME,
            task_timeout: None,
            max_memory_per_child: None,
            print_panics: true,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }
}

impl Pool {
    /// A pool whose tasks a scheduler other than the local dispatcher runs (the `mpi`
    /// module's); `scheduler` is its thread, joined by [`Pool::join`].
    #[cfg(feature = "mpi")]
    pub(crate) fn with_scheduler(
        submitter: Submitter,
        processes: usize,
        task_timeout: Option<Duration>,
        scheduler: JoinHandle<()>,
    ) -> Pool {
        Pool {
            submitter,
            processes,
            task_timeout,
            dispatcher: Mutex::new(Some(scheduler)),
            callbacks: Callbacks::default(),
        }
    }

    /// Submits a task built elsewhere (the `mpi` module's relay).
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool is closed or terminated.
    #[cfg(feature = "mpi")]
    pub(crate) fn submit_task(&self, task: Task) -> Result<()> {
        self.submitter.submit([task])
    }

    /// Forks `processes` workers; the same as `Pool::builder().processes(processes).build()`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for 0 processes; [`Error::Io`] if a fork failed.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// assert_eq!(pool.apply(|x: i32| -x, 5)?, -5);
    /// assert!(forkpool::Pool::new(0).is_err());
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A [`PoolBuilder`] with the default settings.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::builder().processes(1).build()?;
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes the pool keeps running.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool::Pool::new(3)?.processes(), 3);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Submits `f(arg)` to run in a worker and returns at once with a handle on its result.
    ///
    /// # Errors
    /// [`Error::Closed`] after [`close`](Pool::close) or [`terminate`](Pool::terminate);
    /// [`Error::Encode`] if `arg` cannot be encoded. Nothing is submitted then.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// let a = pool.apply_async(|s: String| s.to_uppercase(), "hi".to_string())?;
    /// let b = pool.apply_async(|(x, y): (u32, u32)| x + y, (2, 3))?;
    /// assert_eq!(a.get()?, "HI");
    /// assert_eq!(b.get()?, 5);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_limited(f, arg, self.task_timeout)
    }

    /// [`apply_async`](Pool::apply_async) with a time limit for this task, in place of the
    /// pool's [`task_timeout`](PoolBuilder::task_timeout). The clock starts when the task starts
    /// running in a worker, not when it is queued. A task still running at the limit fails with
    /// [`Error::TimedOut`]; its worker is killed and replaced, and no other task is affected.
    ///
    /// # Errors
    /// As [`apply_async`](Pool::apply_async); [`Error::InvalidArgument`] for a zero timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = forkpool::Pool::new(1)?;
    /// let slow = pool.apply_async_timeout(nap, 10_000, Duration::from_millis(100))?;
    /// let fast = pool.apply_async_timeout(nap, 10, Duration::from_secs(10))?;
    /// assert!(matches!(slow.get(), Err(forkpool::Error::TimedOut { .. })));
    /// assert_eq!(fast.get()?, 10);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn apply_async_timeout<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        timeout: Duration,
    ) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        if timeout.is_zero() {
            return Err(Error::InvalidArgument {
                message: "a task's timeout must be above zero",
            });
        }
        self.apply_async_limited(f, arg, Some(timeout))
    }

    fn apply_async_limited<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        limit: Option<Duration>,
    ) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let frame = task::call(f, arg)?;
        let slot = Slot::new(1);
        let task = Task::new(frame, Sink::slot(&slot, 0)).with_limit(limit, 1);
        self.submitter.submit([task])?;
        Ok(AsyncResult::new(slot, result::finish_one::<R>))
    }

    /// [`apply_async`](Pool::apply_async) with a callback, Python's `callback` and
    /// `error_callback` in one: when the task ends, successfully or not, `callback` runs with
    /// its result on the pool's callback thread, before [`AsyncResult::get`] returns.
    ///
    /// Callbacks run one at a time, so keep them quick. A callback that panics is caught (the
    /// panic hook reports it on stderr) and changes nothing: `get` still returns the task's
    /// result, and the pool goes on. [`join`](Pool::join) waits for pending callbacks, so do not
    /// call it from one.
    ///
    /// # Errors
    /// As [`apply_async`](Pool::apply_async).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let pool = forkpool::Pool::new(2)?;
    /// let total = Arc::new(AtomicU64::new(0));
    /// let seen = Arc::clone(&total);
    /// let r = pool.apply_async_with(|x: u64| x * x, 9, move |result: &forkpool::Result<u64>| {
    ///     if let Ok(v) = result {
    ///         seen.fetch_add(*v, Ordering::SeqCst);
    ///     }
    /// })?;
    /// assert_eq!(r.get()?, 81);
    /// assert_eq!(total.load(Ordering::SeqCst), 81); // the callback ran before get returned
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn apply_async_with<A, R, C>(
        &self,
        f: fn(A) -> R,
        arg: A,
        callback: C,
    ) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        C: FnOnce(&Result<R>) + Send + 'static,
    {
        let frame = task::call(f, arg)?;
        let jobs = self.callbacks.sender()?;
        let slot = Slot::new(1);
        let filled = Arc::clone(&slot);
        let sink = Sink::then(move |outcome| {
            let job = move || {
                let value = match &outcome {
                    Ok(bytes) => result::decode_result::<R>(bytes),
                    Err(e) => Err(e.duplicate()),
                };
                callback::run_caught(callback, &value);
                drop(value);
                filled.fill(0, outcome);
            };
            // The callback thread outlives every task (join waits for the dispatcher first),
            // so this send fails only if that thread died, and then the job runs here.
            if let Err(crossbeam_channel::SendError(job)) = jobs.send(Box::new(job)) {
                job();
            }
        });
        let task = Task::new(frame, sink).with_limit(self.task_timeout, 1);
        self.submitter.submit([task])?;
        Ok(AsyncResult::new(slot, result::finish_one::<R>))
    }

    /// Runs `f(arg)` in a worker and waits for the result: `apply_async(f, arg)?.get()`.
    ///
    /// # Errors
    /// Those of [`apply_async`](Pool::apply_async) and of [`AsyncResult::get`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(1)?;
    /// assert_eq!(pool.apply(|x: f64| x.sqrt(), 16.0)?, 4.0);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, arg)?.get()
    }

    /// Applies `f` to every item and returns the results in input order.
    ///
    /// The input is collected, then sent in chunks of Python's default size,
    /// `ceil(len / (4 * processes))`. Use [`map_chunked`](Pool::map_chunked) to choose it.
    ///
    /// # Errors
    /// If any item fails, the error of the first failing item in input order, with its own
    /// variant ([`Error::TaskPanicked`], [`Error::WorkerDied`], ...), once every chunk has
    /// finished. A panic or a crash fails its whole chunk. Also [`Error::Closed`] and
    /// [`Error::Encode`] as for [`apply_async`](Pool::apply_async).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// assert_eq!(pool.map(|x: u32| x * 10, 1..=5)?, [10, 20, 30, 40, 50]);
    /// assert_eq!(pool.map(|x: u32| x, Vec::new())?, Vec::<u32>::new());
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn map<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, args)?.get()
    }

    /// [`map`](Pool::map) with `chunksize` items sent to a worker at a time. Larger chunks cost
    /// less per item; smaller ones balance uneven work better.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a chunk size of 0; otherwise as [`map`](Pool::map).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// assert_eq!(pool.map_chunked(|x: u8| x + 1, [1, 2, 3], 2)?, [2, 3, 4]);
    /// assert!(pool.map_chunked(|x: u8| x, [1], 0).is_err());
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn map_chunked<A, R, I>(&self, f: fn(A) -> R, args: I, chunksize: usize) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_chunked(f, args, Some(chunksize))?.get()
    }

    /// [`map`](Pool::map) without waiting: returns a handle on the whole `Vec` of results.
    /// Empty input is ready at once.
    ///
    /// # Errors
    /// As [`map`](Pool::map): the call itself fails with [`Error::Closed`] or
    /// [`Error::Encode`], and [`AsyncResult::get`] with a task's error.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// let lengths = pool.map_async(|s: String| s.len(), ["a", "bb", "ccc"].map(String::from))?;
    /// assert_eq!(lengths.get()?, [1, 2, 3]);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn map_async<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<AsyncResult<Vec<R>>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_chunked(f, args, None)
    }

    fn map_async_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        if chunksize == Some(0) {
            return Err(Error::InvalidArgument {
                message: "chunksize must be at least 1",
            });
        }
        if !self.submitter.is_open() {
            return Err(Error::Closed);
        }
        let args: Vec<A> = args.into_iter().collect();
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(args.len(), self.processes));
        let frames = args
            .chunks(chunksize)
            .map(|chunk| Ok((task::chunk(f, chunk)?, chunk.len())))
            .collect::<Result<Vec<_>>>()?;
        let slot = Slot::new(frames.len());
        let tasks = frames.into_iter().enumerate().map(|(i, (frame, items))| {
            Task::new(frame, Sink::slot(&slot, i)).with_limit(self.task_timeout, items)
        });
        self.submitter.submit(tasks)?;
        Ok(AsyncResult::new(slot, result::finish_chunks::<R>))
    }

    /// Applies `f` to every item, lazily, yielding results in input order as they become
    /// available. Each item is its own task, so one failure fails only its own `Result`.
    ///
    /// The input is pulled only as results are taken, a bounded window ahead (a few items per
    /// worker), so an endless iterator works.
    ///
    /// # Errors
    /// [`Error::Closed`] if the pool no longer takes tasks. Each item's `Result` carries its own
    /// error, including [`Error::Encode`] for an argument that cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// let mut evens = pool.imap(|x: u64| x * 2, 0..)?; // endless input
    /// assert_eq!(evens.next().unwrap()?, 0);
    /// assert_eq!(evens.next().unwrap()?, 2);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<Imap<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.imap_in(f, args, true)
    }

    /// Like [`imap`](Pool::imap), but yields results in the order they complete.
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// let mut got: Vec<u8> = pool
    ///     .imap_unordered(|x: u8| x + 1, [1, 2, 3])?
    ///     .collect::<forkpool::Result<_>>()?;
    /// got.sort();
    /// assert_eq!(got, [2, 3, 4]);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn imap_unordered<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<Imap<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.imap_in(f, args, false)
    }

    fn imap_in<A, R, I>(&self, f: fn(A) -> R, args: I, ordered: bool) -> Result<Imap<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        let mut args = args.into_iter();
        let feed = Box::new(move || args.next().map(|arg| task::call(f, arg)));
        let window = IMAP_WINDOW_PER_WORKER * self.processes;
        Imap::new(
            self.submitter.clone(),
            feed,
            window,
            ordered,
            self.task_timeout,
        )
    }

    /// A snapshot of the pool's counters: tasks submitted, completed, failed (and why), running
    /// and queued, and workers alive and replaced. Cheap: a few atomic loads.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// let results: Vec<_> = pool.imap_unordered(|x: u64| x + 1, 0..100)?.collect();
    /// assert_eq!(results.len(), 100);
    /// let stats = pool.stats();
    /// assert_eq!((stats.submitted, stats.completed, stats.failed), (100, 100, 0));
    /// assert_eq!((stats.running, stats.queued), (0, 0));
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.submitter.stats()
    }

    /// Stops taking tasks. Tasks already submitted still run; the workers exit once they are
    /// done. Follow with [`join`](Pool::join) to wait for that.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u8| x, 1)?;
    /// pool.close();
    /// assert!(matches!(pool.apply_async(|x: u8| x, 2), Err(forkpool::Error::Closed)));
    /// pool.join()?;
    /// assert_eq!(r.get()?, 1);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn close(&self) {
        self.submitter.close();
    }

    /// Kills the workers at once. Every unfinished task fails with [`Error::Terminated`]; results
    /// already received stay available. Does nothing after [`join`](Pool::join).
    ///
    /// # Examples
    ///
    /// ```
    /// fn sleepy(s: u64) -> u64 {
    ///     std::thread::sleep(std::time::Duration::from_secs(s));
    ///     s
    /// }
    /// let pool = forkpool::Pool::new(1)?;
    /// let r = pool.apply_async(sleepy, 60)?;
    /// pool.terminate();
    /// pool.join()?;
    /// assert!(matches!(r.get(), Err(forkpool::Error::Terminated)));
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn terminate(&self) {
        self.submitter.terminate();
    }

    /// Waits until every worker has exited and been reaped, after [`close`](Pool::close) (every
    /// submitted task done) or [`terminate`](Pool::terminate) (promptly). When it returns, no
    /// worker process is left, not even a zombie, and the pool's pipes are closed. Calling it
    /// again returns `Ok` at once.
    ///
    /// # Errors
    /// [`Error::StillRunning`] if the pool was neither closed nor terminated.
    ///
    /// # Caveats
    /// After `close`, a live [`Imap`] may still submit its remaining input, and `join` waits for
    /// it to be exhausted or dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// assert!(matches!(pool.join(), Err(forkpool::Error::StillRunning)));
    /// pool.close();
    /// pool.join()?;
    /// pool.join()?;
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn join(&self) -> Result<()> {
        if self.submitter.is_open() {
            return Err(Error::StillRunning);
        }
        let mut dispatcher = self
            .dispatcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = dispatcher.take() {
            // The dispatcher catches its own panics, so this join does not fail.
            let _ = handle.join();
        }
        // Every task is resolved now; let the last callbacks run.
        self.callbacks.finish();
        Ok(())
    }
}

impl Drop for Pool {
    /// Terminates the pool and reaps its workers, like Python's `with Pool() as p:`.
    fn drop(&mut self) {
        self.terminate();
        let _ = self.join();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("open", &self.submitter.is_open())
            .finish()
    }
}

/// Python's default chunk size for `map`: `ceil(len / (4 * processes))`, at least 1.
fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes).max(1)
}

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn default_chunksize_follows_python() {
        // Python: chunksize, extra = divmod(len, 4 * workers); if extra: chunksize += 1
        assert_eq!(default_chunksize(0, 2), 1);
        assert_eq!(default_chunksize(1, 2), 1);
        assert_eq!(default_chunksize(8, 2), 1);
        assert_eq!(default_chunksize(9, 2), 2);
        assert_eq!(default_chunksize(200_000, 2), 25_000);
        assert_eq!(default_chunksize(27, 4), 2);
    }
}
