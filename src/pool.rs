//! [`Pool`] and [`PoolBuilder`]: the public face. No system calls here; the pool turns each call
//! into encoded tasks and hands them to its dispatcher.

use std::borrow::Borrow;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::callback::Callbacks;
use crate::dispatch::{self, Config, Submitter, Task};
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::frame;
use crate::frame::Bytes;
use crate::imap::{self, Imap, Shape};
use crate::result::{self, AsyncResult, Decoded, Sink, Slot};
use crate::stats::{self, HostStats, Stats};
use crate::task::{self, Initializer};
use crate::worker::WorkerConfig;

/// How many tasks (items, or chunks) an [`Imap`] keeps submitted but not yet taken, per worker.
const IMAP_WINDOW_PER_WORKER: usize = 4;
/// How many chunks of a `map` are encoded and unfinished at a time, per worker: one running,
/// one queued behind it.
const MAP_WINDOW_PER_WORKER: usize = 2;

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
/// * A pool works only in the process that built it. In a child made by `fork()` (the
///   daemonize pattern) every call fails with [`Error::ForkedProcess`], `close` and
///   `terminate` do nothing, and dropping the pool leaves the parent's pool untouched. Results
///   and [`Imap`]s made before the fork and still pending give [`Error::ForkedProcess`] in the
///   child rather than wait forever. Build a new pool after the fork.
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
    /// The process that built the pool: the only one its dispatcher and workers serve.
    owner: u32,
    submitter: Submitter,
    processes: usize,
    task_timeout: Option<Duration>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    callbacks: Callbacks,
    /// An MPI pool's counters per host, kept by its scheduler.
    #[cfg(feature = "mpi")]
    hosts: Option<Arc<[stats::HostCounters]>>,
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
    initializer: Option<Initializer>,
    /// Why [`initializer_with`](PoolBuilder::initializer_with)'s argument did not encode.
    initializer_error: Option<&'static str>,
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
    /// No task is given to a worker before its initializer has returned. If it never returns,
    /// a task with a time limit fails with [`Error::TimedOut`] once its limit (plus half a
    /// second) has passed, and the stuck worker is killed; [`join`](Pool::join) kills workers
    /// still in their initializer a second after [`close`](Pool::close).
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
        self.initializer = Some(Initializer::plain(f));
        self.initializer_error = None;
        self
    }

    /// An initializer with an argument, Python's `initializer=f, initargs=(arg,)`: each worker,
    /// replacements included, runs `f(arg)` once before its first task. `arg` is encoded once,
    /// here, and each worker decodes its own copy. Replaces an earlier
    /// [`initializer`](PoolBuilder::initializer).
    ///
    /// As with `initializer`, a panic (or an argument that fails to decode in the worker)
    /// fails each task of that worker with [`Error::InitializerPanicked`].
    ///
    /// # Errors
    /// If `arg` cannot be encoded, [`build`](PoolBuilder::build) fails with [`Error::Encode`].
    ///
    /// # Caveats
    /// The encoded argument is kept until the process exits (the builder is `Copy`, so it
    /// cannot own a buffer): fine for the usual settings, paths and seeds; for large read-only
    /// data see [`SharedBytes`](crate::SharedBytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::OnceLock;
    ///
    /// static DB_URL: OnceLock<String> = OnceLock::new();
    ///
    /// fn connect(url: String) {
    ///     DB_URL.set(url).unwrap(); // once per worker: open the connection here
    /// }
    ///
    /// fn url(_: ()) -> String {
    ///     DB_URL.get().cloned().unwrap_or_default()
    /// }
    ///
    /// let pool = forkpool::Pool::builder()
    ///     .processes(2)
    ///     .initializer_with(connect, "postgres://db/prod".to_string())
    ///     .build()?;
    /// assert_eq!(pool.apply(url, ())?, "postgres://db/prod");
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn initializer_with<A>(mut self, f: fn(A), arg: A) -> Self
    where
        A: Serialize + DeserializeOwned + 'static,
    {
        match Initializer::with(f, &arg) {
            Ok(init) => {
                self.initializer = Some(init);
                self.initializer_error = None;
            }
            Err(message) => {
                self.initializer = None;
                // Kept as the builder is Copy; only on this error path.
                self.initializer_error = Some(Box::leak(message.into_boxed_str()));
            }
        }
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
    /// item that runs past it fails with [`Error::TimedOut`] (in `map_each`, that item alone;
    /// the others keep their results; likewise in [`imap_chunked`](Pool::imap_chunked)).
    /// [`imap`](Pool::imap) items are tasks of their own.
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

    /// Whether a worker writes a line to its stderr when a task panics (default: yes), and
    /// when a task broke the worker's pipes to the pool (closed or replaced descriptor 3 or 4).
    /// The panic's message and location reach the caller in [`Error::TaskPanicked`] either
    /// way; turn the lines off when stderr belongs to something else, such as a progress bar.
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

    /// The largest reply frame accepted from a worker, in bytes; default 4 GiB. Workers know
    /// the limit: a result that encodes larger fails its task with [`Error::Encode`] (saying
    /// so) and the worker serves on. A worker that announces a larger frame anyway has broken
    /// the protocol: it is killed and its task fails with [`Error::Protocol`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::builder().processes(1).max_frame_bytes(1 << 20).build()?;
    /// assert!(pool.apply(|n: usize| vec![0u8; n], 10).is_ok());
    /// assert!(matches!(
    ///     pool.apply(|n: usize| vec![0u8; n], 2 << 20),
    ///     Err(forkpool::Error::Encode { what: "result", .. })
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
    /// [`Error::InvalidArgument`] for `processes(0)` or `max_tasks_per_child(0)`, and, before
    /// anything is forked, for more processes than can exist: over 2^22 (Linux's largest
    /// `pid_max`), at or over the user's process limit (`RLIMIT_NPROC`), or more than the
    /// descriptor limit (`RLIMIT_NOFILE`) leaves room for beside the descriptors already open,
    /// at 2 per worker. [`Error::Io`] if a system call failed, naming it (`pipe`, `fork`,
    /// `socketpair`, ...); workers already forked are reaped first.
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
        // Before any result of this pool exists: results made here must know a fork of this
        // process when they see one (they then fail instead of waiting forever).
        crate::sys::watch_forks();
        let config = self.config()?;
        #[cfg(feature = "mpi")]
        if let Some(options) = self.mpi {
            let local = PoolBuilder { mpi: None, ..self };
            return crate::mpi::build(local, options);
        }
        let (submitter, handle) = dispatch::start(config)?;
        Ok(Pool {
            owner: std::process::id(),
            submitter,
            processes: config.processes,
            task_timeout: self.task_timeout,
            dispatcher: Mutex::new(Some(handle)),
            callbacks: Callbacks::default(),
            #[cfg(feature = "mpi")]
            hosts: None,
        })
    }

    /// The dispatcher's configuration, once every setting is checked.
    fn config(&self) -> Result<Config> {
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::InvalidArgument {
                    message: "a pool needs at least 1 process",
                })
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        check_process_count(processes, sys_limits())?;
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
        if let Some(message) = self.initializer_error {
            return Err(Error::Encode {
                what: "initializer argument",
                message: message.to_string(),
            });
        }
        Ok(Config {
            processes,
            worker: WorkerConfig {
                initializer: self.initializer,
                max_tasks: self.max_tasks_per_child,
                max_memory: self.max_memory_per_child,
                print_panics: self.print_panics,
                max_frame: self.max_frame_bytes,
            },
            max_frame: self.max_frame_bytes,
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

    /// A local pool whose dispatcher the calling thread runs itself (an MPI serving rank's
    /// relay): its callers' end and the dispatcher, once the first workers are forked.
    pub(crate) fn build_driven(self) -> Result<(Submitter, dispatch::Driven)> {
        crate::sys::watch_forks();
        dispatch::start_driven(self.config()?)
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
            initializer_error: None,
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
    /// module's); `scheduler` is its thread, joined by [`Pool::join`]; `hosts` are the
    /// counters it keeps per host.
    #[cfg(feature = "mpi")]
    pub(crate) fn with_scheduler(
        submitter: Submitter,
        processes: usize,
        task_timeout: Option<Duration>,
        scheduler: JoinHandle<()>,
        hosts: Arc<[stats::HostCounters]>,
    ) -> Pool {
        // As in `build`: `check_process` and the results read the atfork-kept pid.
        crate::sys::watch_forks();
        Pool {
            submitter,
            processes,
            task_timeout,
            dispatcher: Mutex::new(Some(scheduler)),
            callbacks: Callbacks::default(),
            owner: std::process::id(),
            hosts: Some(hosts),
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

    /// Tells the pool that tasks it holds were cancelled through their slots (the `mpi`
    /// module's relay and rank 0's scheduler, for the tasks they hand to a local pool).
    #[cfg(feature = "mpi")]
    pub(crate) fn canceller(&self) -> crate::dispatch::Canceller {
        self.submitter.canceller()
    }

    /// Forks `processes` workers; the same as `Pool::builder().processes(processes).build()`.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`]: [`Error::InvalidArgument`] for 0 processes or for more than
    /// the system's limits allow; [`Error::Io`] if a system call failed.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// assert_eq!(pool.apply(|x: i32| -x, 5)?, -5);
    /// assert!(forkpool::Pool::new(0).is_err());
    /// assert!(forkpool::Pool::new(usize::MAX).is_err()); // refused at once
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
    /// [`Error::Encode`] if `arg` cannot be encoded; [`Error::ForkedProcess`] in a child of
    /// `fork()` (see the [`Pool`] caveats). Nothing is submitted then.
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
        self.check_process()?;
        let frame = task::call(f, arg)?;
        let slot = Slot::new(1);
        let task = Task::new(frame, Sink::slot(&slot, 0))
            .with_limit(limit, 1)
            .cancellable(&slot);
        self.submitter.submit([task])?;
        Ok(AsyncResult::new(slot, result::finish_one::<R>)
            .with_canceller(self.submitter.canceller()))
    }

    /// [`apply_async`](Pool::apply_async) with a callback, Python's `callback` and
    /// `error_callback` in one: when the task ends, successfully or not, `callback` runs with
    /// its result on the pool's callback thread, before [`AsyncResult::get`] returns.
    ///
    /// Callbacks run one at a time, so keep them quick. A callback that panics is caught (the
    /// panic hook reports it on stderr) and changes nothing: `get` still returns the task's
    /// result, and the pool goes on. [`join`](Pool::join) waits for pending callbacks, so do not
    /// call it from one. A callback may wait for another task's result, even one whose own
    /// callback is queued behind it: while it waits, the callbacks behind it run.
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
        self.check_process()?;
        let frame = task::call(f, arg)?;
        let runner = self.callbacks.runner()?;
        let slot = Slot::new(1);
        let decoded = Decoded::new();
        let (filled, value_to) = (Arc::clone(&slot), Arc::clone(&decoded));
        let sink = Sink::then(move |outcome| {
            let job = {
                let runner = runner.clone();
                move || {
                    // Decoded once, here: the callback sees the value that get() returns.
                    let value = outcome.and_then(result::decode_result_owned::<R>);
                    runner.run_caught(callback, &value);
                    value_to.put(value);
                    filled.fill(0, Ok(Bytes::default()));
                }
            };
            // The callback thread outlives every task (join waits for the dispatcher first),
            // so this send fails only if that thread died, and then the job runs here.
            runner.send(Box::new(job));
        });
        let task = Task::new(frame, sink)
            .with_limit(self.task_timeout, 1)
            .cancellable(&slot);
        self.submitter.submit([task])?;
        Ok(AsyncResult::decoded(slot, decoded).with_canceller(self.submitter.canceller()))
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
    /// The input is collected (Python does `list(iterable)` too), then sent in chunks of
    /// Python's default size, `ceil(len / (4 * processes))`. Use
    /// [`map_chunked`](Pool::map_chunked) to choose it. Chunks are encoded as they are sent,
    /// at most two per worker ahead of the results, so the pool's own memory stays at a few
    /// chunks beyond the input, however large the input.
    ///
    /// The items may be the arguments themselves or anything that borrows as one: `&A` (so
    /// `pool.map(f, &paths)` works with `f: fn(PathBuf) -> _`), `Box<A>`, `Arc<A>`. A borrowed
    /// item is encoded from the reference, never cloned.
    ///
    /// # Errors
    /// If any item fails, the error of the first failing item in input order, once every
    /// chunk has finished, as an [`Error::Item`] naming the item's position (`"item 17: the
    /// task panicked: ..."`; [`Error::index`] gives it, and [`Error::cause`] the underlying
    /// [`Error::TaskPanicked`], [`Error::WorkerDied`], ...). A panic is pinned to its item, and
    /// so is a worker's death (or time limit) in the middle of a chunk: the worker records in
    /// shared memory how far it got, so the error names the item it was running, and the rest
    /// of that chunk is not run. To keep every other item's result, use
    /// [`map_each`](Pool::map_each). [`Error::Closed`] if the pool takes
    /// no tasks, [`Error::ForkedProcess`] in a child made by `fork()`. [`Error::Encode`] for an
    /// item that cannot be encoded: nothing is sent if it is in the first chunks (two per
    /// worker, or the whole input if it encodes to under 4 MiB); a later one fails its chunk and
    /// every chunk after it, and the chunks before it still run.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::path::PathBuf;
    ///
    /// fn name_len(path: PathBuf) -> usize {
    ///     path.as_os_str().len()
    /// }
    ///
    /// let pool = forkpool::Pool::new(2)?;
    /// assert_eq!(pool.map(|x: u32| x * 10, 1..=5)?, [10, 20, 30, 40, 50]);
    /// assert_eq!(pool.map(|x: u32| x, Vec::<u32>::new())?, Vec::<u32>::new());
    /// let paths = vec![PathBuf::from("a"), PathBuf::from("bcd")];
    /// assert_eq!(pool.map(name_len, &paths)?, [1, 3]); // borrowed, not cloned
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn map<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.map_blocking(f, args, None)
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
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.map_blocking(f, args, Some(chunksize))
    }

    /// [`map`](Pool::map) that gives every item its own result, in input order: one
    /// poisonous input fails only its own `Result` (an [`Error::Item`] naming it), and every
    /// other item keeps its value. The outer `Result` fails only as `map`'s call does
    /// ([`Error::Closed`], an argument of the first chunks that cannot be encoded, ...), or
    /// with [`Error::Terminated`] if the pool was terminated meanwhile.
    ///
    /// Each item's panic is caught on its own, so the rest of its chunk runs on. A worker that
    /// dies (abort, SIGSEGV, `exit`) or times out in the middle of a chunk fails only the item
    /// it was running, with that error (an [`Error::Item`] naming it, `items` 1): the items of
    /// the chunk that had finished keep their results, which the worker records in a small
    /// region of memory it shares with the pool (its *ledger*) as each item ends, and the items
    /// not yet started run in another worker. No item is run a second time.
    ///
    /// Over MPI (feature `mpi`) this holds on every rank: a death on another rank fails only
    /// its item, with an [`Error::WorkerDied`] naming that rank's host.
    ///
    /// # Errors
    /// As [`map`](Pool::map) for the call itself.
    ///
    /// # Examples
    ///
    /// ```
    /// fn inverse(x: i32) -> i32 {
    ///     assert!(x != 0, "no inverse of 0");
    ///     100 / x
    /// }
    ///
    /// let pool = forkpool::Pool::new(2)?;
    /// let each = pool.map_each(inverse, [1, 0, 4])?;
    /// assert_eq!(*each[0].as_ref().unwrap(), 100);
    /// assert_eq!(each[1].as_ref().unwrap_err().index(), Some(1));
    /// assert_eq!(*each[2].as_ref().unwrap(), 25);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn map_each<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<Vec<Result<R>>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.map_each_in(f, args, None)
    }

    /// [`map_each`](Pool::map_each) with `chunksize` items sent to a worker at a time. Whatever
    /// the chunk size, a worker's death fails exactly the item it was running.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a chunk size of 0; otherwise as
    /// [`map_each`](Pool::map_each).
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool::Error;
    ///
    /// fn fragile(x: i32) -> i32 {
    ///     if x == 2 {
    ///         std::process::abort();
    ///     }
    ///     x
    /// }
    ///
    /// let pool = forkpool::Pool::new(2)?;
    /// let each = pool.map_each_chunked(fragile, 0..4, 1)?;
    /// assert!(matches!(each[2].as_ref().unwrap_err().cause(), Error::WorkerDied { .. }));
    /// let others: Vec<i32> = [0, 1, 3].iter().map(|&i| *each[i].as_ref().unwrap()).collect();
    /// assert_eq!(others, [0, 1, 3]);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn map_each_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: usize,
    ) -> Result<Vec<Result<R>>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.map_each_in(f, args, Some(chunksize))
    }

    /// [`map`](Pool::map) without waiting: returns a handle on the whole `Vec` of results.
    /// Empty input is ready at once.
    ///
    /// The input is collected; the first chunks (two per worker, or all of them if they encode
    /// to under 4 MiB) are sent before this returns,
    /// and a feeder thread sends the rest as chunks finish, so the encoded input in memory stays
    /// bounded as for `map`. Since that thread outlives the call, the items must be owned
    /// (`'static`): `A` itself, `Box<A>` or `Arc<A>`, not a reference to a local.
    ///
    /// # Errors
    /// As [`map`](Pool::map): the call itself fails with [`Error::Closed`], or with
    /// [`Error::Encode`] for an item of the first chunks, and [`AsyncResult::get`] with a
    /// task's error (including the encode error of a later item). [`Error::Io`] if the feeder
    /// thread cannot start; the chunks already sent still run.
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
        I: IntoIterator,
        I::Item: Borrow<A> + Send + 'static,
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
        I: IntoIterator,
        I::Item: Borrow<A> + Send + 'static,
    {
        let feed = self.start_feed(f, args, chunksize, false)?;
        let slot = feed.slot();
        let (size, len) = feed.shape();
        if !feed.is_done() {
            let abandon = feed.abandon();
            let spawned = std::thread::Builder::new()
                .name("forkpool-map-feeder".into())
                .spawn(move || {
                    let _ending = crate::sys::EndingThread;
                    feed.run()
                });
            if let Err(e) = spawned {
                let error = Error::Io {
                    op: "spawning the map feeder thread",
                    source: e,
                };
                abandon.fail_rest(&error);
                return Err(error);
            }
        }
        Ok(AsyncResult::new(slot, move |parts| {
            result::finish_chunks::<R>(parts, size, len)
        })
        .with_canceller(self.submitter.canceller()))
    }

    /// `map` and `map_chunked`: feeds the chunks from the calling thread, then collects.
    fn map_blocking<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        let feed = self.start_feed(f, args, chunksize, false)?;
        let slot = feed.slot();
        let (size, len) = feed.shape();
        feed.run();
        AsyncResult::new(slot, move |parts| {
            result::finish_chunks::<R>(parts, size, len)
        })
        .get()
    }

    /// `map_each` and `map_each_chunked`: as `map_blocking`, with each item's result kept.
    fn map_each_in<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<Result<R>>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        let feed = self.start_feed(f, args, chunksize, true)?;
        let slot = feed.slot();
        let (size, len) = feed.shape();
        feed.run();
        AsyncResult::new(slot, move |parts| {
            result::finish_each::<R>(parts, size, len)
        })
        .get()
    }

    fn start_feed<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
        each: bool,
    ) -> Result<Feed<A, R, I::Item>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.check_process()?;
        if chunksize == Some(0) {
            return Err(Error::InvalidArgument {
                message: "chunksize must be at least 1",
            });
        }
        if !self.submitter.is_open() {
            return Err(Error::Closed);
        }
        let items: Vec<I::Item> = args.into_iter().collect();
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(items.len(), self.processes));
        let window = MAP_WINDOW_PER_WORKER * self.processes;
        Feed::start(
            &self.submitter,
            f,
            items,
            chunksize,
            window,
            self.task_timeout,
            each,
        )
    }

    /// Applies `f` to every item, lazily, yielding results in input order as they become
    /// available. Each item is its own task, so one failure fails only its own `Result`.
    ///
    /// The input is pulled only as results are taken, a bounded window ahead (a few items per
    /// worker), so an endless iterator works. Items may be `A` or anything that borrows as
    /// one and is `'static` (`Arc<A>`, `Box<A>`, `&'static A`), encoded without a clone.
    ///
    /// Each item costs a round trip; for many small items use
    /// [`imap_chunked`](Pool::imap_chunked).
    ///
    /// # Errors
    /// [`Error::Closed`] if the pool no longer takes tasks; [`Error::ForkedProcess`] in a child
    /// of `fork()`. Each item's `Result` carries its own
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
        I: IntoIterator,
        I::Item: Borrow<A> + 'static,
        I::IntoIter: Send + 'static,
    {
        self.imap_in(f, args, None, true)
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
        I: IntoIterator,
        I::Item: Borrow<A> + 'static,
        I::IntoIter: Send + 'static,
    {
        self.imap_in(f, args, None, false)
    }

    /// [`imap`](Pool::imap) with `chunksize` items per task, Python's `imap(f, xs, chunksize)`:
    /// the input is still pulled lazily, a window of a few chunks per worker ahead, and results
    /// are still yielded item by item in input order; each chunk is one round trip.
    ///
    /// A failure fails only the item it happened in, as for [`imap`](Pool::imap): a panic is
    /// caught item by item, and if a worker dies (or is killed past a time limit, which is per
    /// item) in the middle of a chunk, the items of that chunk that had finished keep their
    /// results, the item it was running fails, and the ones it had not started run on another
    /// worker. No item runs twice. The same holds over MPI, on every rank.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a chunk size of 0; otherwise as [`imap`](Pool::imap).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// let firsts: Vec<u64> = pool
    ///     .imap_chunked(|x: u64| x * 3, 0.., 100)? // endless input, 100 items per task
    ///     .take(5)
    ///     .collect::<forkpool::Result<_>>()?;
    /// assert_eq!(firsts, [0, 3, 6, 9, 12]);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn imap_chunked<A, R, I>(&self, f: fn(A) -> R, args: I, chunksize: usize) -> Result<Imap<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A> + 'static,
        I::IntoIter: Send + 'static,
    {
        self.imap_in(f, args, Some(chunksize), true)
    }

    /// [`imap_unordered`](Pool::imap_unordered) with `chunksize` items per task: chunks are
    /// yielded in the order they complete, the items of a chunk in input order.
    ///
    /// # Errors
    /// As [`imap_chunked`](Pool::imap_chunked).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// let mut got: Vec<u32> = pool
    ///     .imap_unordered_chunked(|x: u32| x + 1, 0..1000, 64)?
    ///     .collect::<forkpool::Result<_>>()?;
    /// got.sort();
    /// assert_eq!(got, (1..=1000).collect::<Vec<_>>());
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn imap_unordered_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: usize,
    ) -> Result<Imap<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A> + 'static,
        I::IntoIter: Send + 'static,
    {
        self.imap_in(f, args, Some(chunksize), false)
    }

    fn imap_in<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
        ordered: bool,
    ) -> Result<Imap<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: Borrow<A> + 'static,
        I::IntoIter: Send + 'static,
    {
        self.check_process()?;
        let mut args = args.into_iter();
        let (feed, shape): (imap::Feed, Shape) = match chunksize {
            None => (
                Box::new(move || {
                    args.next()
                        .map(|arg| (task::item(f, arg).map(|t| (t, None)), 1))
                }),
                Shape::Single,
            ),
            Some(0) => {
                return Err(Error::InvalidArgument {
                    message: "chunksize must be at least 1",
                })
            }
            Some(n) => (
                Box::new(move || {
                    let chunk: Vec<I::Item> = args.by_ref().take(n).collect();
                    (!chunk.is_empty()).then(|| {
                        let encoded = task::chunk_each(f, &chunk).map(|(t, i)| (t, Some(i)));
                        (encoded, chunk.len())
                    })
                }),
                Shape::Chunks,
            ),
        };
        let window = IMAP_WINDOW_PER_WORKER * self.processes;
        Imap::new(
            self.submitter.clone(),
            feed,
            shape,
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
        let mut stats = self.submitter.stats();
        stats.callbacks_run = self.callbacks.started();
        stats
    }

    /// The pool's work host by host: for a pool over MPI (`PoolBuilder::mpi`, feature `mpi`),
    /// one entry per rank that runs workers, in rank order; for a local pool, one entry for
    /// this host. See [`HostStats`] for how the entries add up to [`stats`](Pool::stats).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(2)?;
    /// pool.map(|x: u64| x * 2, 0..100)?;
    /// let hosts = pool.host_stats();
    /// let stats = pool.stats();
    /// assert_eq!(hosts.iter().map(|h| h.completed).sum::<u64>(), stats.completed);
    /// assert_eq!(hosts.iter().map(|h| h.workers).sum::<u64>(), pool.processes() as u64);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn host_stats(&self) -> Vec<HostStats> {
        #[cfg(feature = "mpi")]
        if let Some(hosts) = &self.hosts {
            let mut hosts: Vec<HostStats> =
                hosts.iter().map(stats::HostCounters::snapshot).collect();
            hosts.sort_by_key(|h| h.rank);
            return hosts;
        }
        let stats = self.stats();
        vec![HostStats {
            host: stats::this_host(),
            rank: 0,
            workers: self.processes as u64,
            sent: stats.submitted,
            completed: stats.completed,
            failed: stats.failed,
            died: stats.died,
            running: stats.submitted.saturating_sub(stats.completed),
        }]
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
        if self.check_process().is_ok() {
            self.submitter.close();
        }
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
        if self.check_process().is_ok() {
            self.submitter.terminate();
        }
    }

    /// Waits until every worker has exited and been reaped, after [`close`](Pool::close) (every
    /// submitted task done) or [`terminate`](Pool::terminate) (promptly). When it returns, no
    /// worker process is left, not even a zombie, and the pool's pipes are closed. Calling it
    /// again returns `Ok` at once.
    ///
    /// # Errors
    /// [`Error::StillRunning`] if the pool was neither closed nor terminated;
    /// [`Error::ForkedProcess`] in a child of `fork()`.
    ///
    /// # Caveats
    /// After `close`, a live [`Imap`] may still submit its remaining input, and `join` waits for
    /// it to be exhausted or dropped. A worker that does not exit within a second of having
    /// nothing left to do (stopped by SIGSTOP, or stuck in its initializer) is killed; one
    /// stopped in the middle of a task without a time limit is waited for. A fork server
    /// stopped from outside (it reaps and kills the workers) is waited for 5 seconds more, then
    /// ended, and its workers with it: `join` then returns about 8 seconds after the last task.
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
        self.check_process()?;
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
        if self.check_process().is_err() {
            // A forked copy: the dispatcher thread is not in this process (joining it fails)
            // and the workers are the parent's. Forget the handles; leave everything running.
            let handle = self
                .dispatcher
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            std::mem::forget(handle);
            self.callbacks.abandon();
            return;
        }
        self.terminate();
        let _ = self.join();
    }
}

impl Pool {
    /// [`Error::ForkedProcess`] unless this is the process that built the pool.
    fn check_process(&self) -> Result<()> {
        // The atfork-kept pid (an atomic load): this check runs on every submission.
        if crate::sys::cached_pid() == self.owner {
            Ok(())
        } else {
            Err(Error::ForkedProcess {
                owner: self.owner,
                current: std::process::id(),
            })
        }
    }
}

/// The limits a pool's size is checked against; see [`check_process_count`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `RLIMIT_NOFILE`, if limited.
    open_files: Option<u64>,
    /// Descriptors open now, if known.
    open_now: Option<u64>,
    /// `RLIMIT_NPROC`, if limited.
    processes: Option<u64>,
}

fn sys_limits() -> Limits {
    Limits {
        open_files: crate::sys::open_file_limit(),
        open_now: crate::sys::open_fd_count(),
        processes: crate::sys::process_limit(),
    }
}

/// No system has more processes than Linux's `PID_MAX_LIMIT` (2^22, the most `pid_max` can
/// be set to), so a larger pool cannot exist; refusing it keeps the dispatcher from trying to
/// allocate bookkeeping for it.
const MAX_PROCESSES: usize = 1 << 22;
/// Descriptors the parent holds per pool besides the workers' pipes: the wakeup pipe (2), the
/// fork server's socket (1), and a spawn's two extra pipe ends while it is in flight (2), with
/// one to spare.
const FIXED_FDS: u64 = 6;

/// Refuses a pool that cannot be built, before anything is forked: one of more processes than
/// any system has, than the user may run (`RLIMIT_NPROC`), or than the parent has descriptors
/// left for (`RLIMIT_NOFILE`): each worker costs the parent two, its task pipe's write end and
/// its reply pipe's read end.
fn check_process_count(processes: usize, limits: Limits) -> Result<()> {
    if processes > MAX_PROCESSES {
        return Err(Error::InvalidArgument {
            message: "more processes than any system can run (over 2^22, Linux's PID_MAX_LIMIT)",
        });
    }
    if limits.processes.is_some_and(|max| processes as u64 >= max) {
        return Err(Error::InvalidArgument {
            message: "more processes than this user may run (RLIMIT_NPROC, `ulimit -u`): use \
                      fewer, or raise the limit",
        });
    }
    if let Some(max) = limits.open_files {
        let needed = 2 * processes as u64 + FIXED_FDS + limits.open_now.unwrap_or(0);
        if needed > max {
            return Err(Error::InvalidArgument {
                message: "too many processes for this process's descriptor limit \
                          (RLIMIT_NOFILE, `ulimit -n`): each worker needs 2 of the parent's \
                          descriptors; use fewer processes, or raise the limit",
            });
        }
    }
    Ok(())
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
    use super::{check_process_count, default_chunksize, Limits, MAX_PROCESSES};
    use crate::error::Error;

    #[test]
    fn absurd_process_counts_are_refused_with_the_limit_named() {
        let unlimited = Limits {
            open_files: None,
            open_now: None,
            processes: None,
        };
        let refused = |n, limits| {
            matches!(
                check_process_count(n, limits),
                Err(Error::InvalidArgument { .. })
            )
        };
        assert!(check_process_count(1, unlimited).is_ok());
        assert!(check_process_count(MAX_PROCESSES, unlimited).is_ok());
        assert!(refused(MAX_PROCESSES + 1, unlimited));
        assert!(refused(usize::MAX, unlimited));
        assert!(refused(1 << 40, unlimited));
        let nofile = Limits {
            open_files: Some(1024),
            open_now: Some(10),
            processes: None,
        };
        // 1024 - 10 open - 6 fixed leaves room for 504 workers.
        assert!(check_process_count(504, nofile).is_ok());
        assert!(refused(505, nofile));
        assert!(refused(10_000, nofile));
        let Err(e) = check_process_count(10_000, nofile) else {
            unreachable!()
        };
        assert!(e.to_string().contains("RLIMIT_NOFILE"), "{e}");
        let nproc = Limits {
            open_files: None,
            open_now: None,
            processes: Some(100),
        };
        assert!(check_process_count(99, nproc).is_ok());
        assert!(refused(100, nproc));
        let Err(e) = check_process_count(100, nproc) else {
            unreachable!()
        };
        assert!(e.to_string().contains("RLIMIT_NPROC"), "{e}");
    }

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
