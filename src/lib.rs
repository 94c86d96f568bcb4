//! A process pool with the API of Python's `multiprocessing.Pool`: forked workers, tasks sent as
//! bincode bytes over pipes, and a worker that crashes fails only its own task.
//!
//! ```
//! use forkpool::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(4)?;
//! assert_eq!(pool.map(square, 0..5)?, [0, 1, 4, 9, 16]);
//! # Ok::<(), forkpool::Error>(())
//! ```
//!
//! # How it works
//!
//! [`Pool::new`] starts a dispatcher thread, which lives as long as the pool and moves every
//! byte, and a small fork server that forks the worker processes (see *Fork safety*). A task is
//! a function pointer `fn(A) -> R` and an argument `A`. The argument is
//! encoded with serde and bincode and written to a worker's task pipe in a length-prefixed frame,
//! together with the function's address and that of a small generic "trampoline" that knows `A`
//! and `R`. Since a worker is a fork of the same program, both addresses are valid in it: the
//! worker decodes the argument, calls the function, and writes the encoded result back on its
//! reply pipe. [`AsyncResult::get`] decodes it in the caller's thread.
//!
//! Only function pointers cross the fork: a named `fn`, or a closure that captures nothing
//! (`|x: u64| x * x` coerces to `fn(u64) -> u64`). A capturing closure would carry pointers into
//! the parent's heap that mean nothing to a process that lives on after the call, so the type
//! refuses it at compile time. Pass what the task needs in its argument instead.
//!
//! Results can be awaited too: [`AsyncResult`] is a [`Future`](std::future::Future), with no
//! runtime dependency. [`Pool::apply_async_with`] runs a callback when a task ends, and
//! [`Pool::stats`] counts what the pool has done, for progress bars; [`Pool::host_stats`] breaks
//! it down per host (per rank of a pool over MPI).
//!
//! # What processes buy
//!
//! A task that segfaults, aborts, overflows its stack, calls `std::process::exit` or is killed
//! by the OOM killer fails with [`Error::WorkerDied`]; the pool forks a replacement and every
//! other task completes. (Python's `Pool` hangs forever in this case.) A panic fails with
//! [`Error::TaskPanicked`] and the worker goes on. Leaks and global state stay in the worker, and
//! [`PoolBuilder::max_tasks_per_child`] recycles workers that accumulate them.
//!
//! # Python's `Pool` and forkpool
//!
//! | Python | forkpool |
//! |---|---|
//! | `Pool(4)` | [`Pool::new(4)`](Pool::new) |
//! | `set_start_method("forkserver")` | [`forkpool::init()`](init) first in `main` |
//! | `Pool(initializer=f, maxtasksperchild=n)` | [`Pool::builder()`](Pool::builder)`.initializer(f).max_tasks_per_child(n).build()` |
//! | `Pool(initializer=f, initargs=(arg,))` | [`PoolBuilder::initializer_with`]`(f, arg)` |
//! | `pool.apply(f, (x,))` | [`pool.apply(f, x)`](Pool::apply) |
//! | `pool.apply_async(f, (x,))` | [`pool.apply_async(f, x)`](Pool::apply_async) |
//! | `res.get()`, `res.wait(t)`, `res.ready()` | [`get`](AsyncResult::get), [`wait_timeout`](AsyncResult::wait_timeout), [`ready`](AsyncResult::ready) |
//! | `res.get(timeout)` | [`get_timeout`](AsyncResult::get_timeout) ([`Error::WaitTimedOut`], the result stays obtainable) |
//! | `fut.cancel()` (concurrent.futures, pebble) | [`cancel`](AsyncResult::cancel): a queued task never runs, a running one's worker is killed and replaced; [`Error::Cancelled`] |
//! | `pool.map(f, xs)`, `pool.map(f, xs, chunksize)` | [`map`](Pool::map), [`map_chunked`](Pool::map_chunked); an error names the input item, [`Error::Item`] (`"item 17: ..."`; [`Error::index`], [`Error::cause`]) |
//! | each item's own outcome (pebble's `map` futures) | [`map_each`](Pool::map_each), [`map_each_chunked`](Pool::map_each_chunked): `Vec<Result<R>>` in input order; a worker's death in the middle of a chunk fails only the item it ran |
//! | `pool.map_async(f, xs)` | [`map_async`](Pool::map_async) |
//! | `pool.imap(f, xs)`, `pool.imap_unordered(f, xs)` | [`imap`](Pool::imap), [`imap_unordered`](Pool::imap_unordered) |
//! | `pool.imap(f, xs, n)`, `pool.imap_unordered(f, xs, n)` | [`imap_chunked`](Pool::imap_chunked), [`imap_unordered_chunked`](Pool::imap_unordered_chunked); each item still has its own result: a panic or a worker's death fails that item alone |
//! | `pool.map(f, paths)` over objects | `pool.map(f, &paths)`: items that borrow as `A` are encoded without a clone |
//! | a progress count in `callback` | [`Stats::callbacks_run`]: inside the k-th callback it reads k |
//! | a global set before `Pool()` | a `static` set before the pool is built: shared copy-on-write |
//! | large data made later (`shared_memory`) | [`SharedBytes`]: one sealed memfd every worker maps |
//! | `bytes` inside objects | a `#[serde(with = "serde_bytes")]` field, which the codec takes in one piece |
//! | `pool.starmap(f, [(a, b)])` | `pool.map(f, [(a, b)])` with `f: fn((A, B)) -> R` |
//! | `pool.close()`, `pool.join()`, `pool.terminate()` | [`close`](Pool::close), [`join`](Pool::join), [`terminate`](Pool::terminate) |
//! | `with Pool() as p:` (terminates on exit) | dropping the [`Pool`] (terminates) |
//!
//! # Choosing the number of processes and the chunk size
//!
//! For CPU-bound work, one process per core ([`PoolBuilder::build`] without
//! [`processes`](PoolBuilder::processes)). For tasks that mostly wait (on a subprocess, a
//! network), more. Every task costs a round trip over a pipe (microseconds), so for many tiny
//! tasks use [`Pool::map`] (which sends chunks) or a larger chunk in [`Pool::map_chunked`].
//!
//! # Sharing large read-only data
//!
//! An argument is copied to its worker for each task. For large read-only data, two ways avoid
//! the copies. Data that exists before the pool is built is best as a `static` (a `OnceLock`,
//! say): workers are forks, so they share it copy-on-write, with no copy at all (8 tasks over
//! 200 MB: 54 ms, against 19 s passing the data to each). Data made after the pool exists goes
//! in a [`SharedBytes`]: copied once into a sealed memfd, it travels as a small reference and
//! every worker maps the same memory.
//!
//! ```
//! use std::sync::OnceLock;
//!
//! static WORDS: OnceLock<Vec<String>> = OnceLock::new();
//!
//! fn word(i: usize) -> String {
//!     WORDS.get().expect("set before the pool")[i].clone()
//! }
//!
//! WORDS.set(vec!["fork".into(), "pool".into()]).unwrap(); // before the pool is built
//! let pool = forkpool::Pool::new(2)?;
//! assert_eq!(pool.map(word, [1, 0])?, ["pool", "fork"]);
//! # Ok::<(), forkpool::Error>(())
//! ```
//!
//! # Fork safety
//!
//! Fork copies only the thread that calls it; a lock held by another thread at that moment
//! (`stdout`'s, your own mutexes) stays locked forever in the child. So no worker is forked
//! from your program: a single-threaded *fork server* forks every worker of a pool, the first
//! ones and every replacement (after a crash, a timeout, `max_tasks_per_child` or a memory cap).
//!
//! Call [`init`] first in `main`, while the program is single-threaded and small: it forks a
//! process-wide *zygote*, and every pool built later, from any thread and however large the
//! program has grown, has the zygote fork its server (Python's `forkserver` start method).
//! Workers then start from the program as it was at `init()`: globals set later are not
//! visible to them; pass later state through the
//! [`initializer`](PoolBuilder::initializer) or the tasks' arguments.
//!
//! Without `init()`, the pool forks its server from your program when it is built, with
//! `stdout` flushed and `stdout` and `stderr` held across the fork, so those two are never
//! inherited locked; other locks can be. If the program already runs other threads, the pool
//! says so once on stderr (set `FORKPOOL_NO_THREAD_WARNING` to silence it). Build the pool
//! early in `main`, then, or call `init()`. A fork server killed from outside is forked again
//! by the zygote; without one, the pool does not fork it again from its threaded process, and
//! later tasks fail with [`Error::Io`].
//!
//! With tokio, call `init()` (or build the pool) before the runtime starts its threads: build
//! the runtime with `tokio::runtime::Builder` in `main` rather than with `#[tokio::main]`, which
//! starts it before your code runs.
//!
//! The zygote and the fork servers block only SIGPIPE, whatever your program blocks (they rely
//! on SIGCHLD). Workers start with the signal mask of the thread that built the pool, less
//! SIGALRM, which a task's time limit needs.
//!
//! Workers close every inherited file descriptor except stdin, stdout and stderr, and every
//! descriptor of the pool is close-on-exec, so a program a task starts holds no pool pipe.
//! Workers shrug off SIGINT (Ctrl-C is the parent's to handle), and die with the fork server,
//! which dies with the pool (end of file on its socket): a killed parent leaves no orphans. Each
//! worker leads a process group of its own, killed as a whole when the worker is killed (a time
//! limit, [`Pool::terminate`], a drop, a crash), so programs a task started die with it; a worker
//! that exits normally leaves programs its tasks deliberately left running alone. Workers are
//! named `forkpool-worker` in `ps`, the fork server `forkpool-server`.
//!
//! A pool belongs to the process that built it: used in a child made by `fork()`, every call
//! fails with [`Error::ForkedProcess`]. Build a new pool after the fork.
//!
//! # Limits
//!
//! [`PoolBuilder::task_timeout`] and [`Pool::apply_async_timeout`] bound how long a task may
//! run ([`Error::TimedOut`]); [`PoolBuilder::max_memory_per_child`] recycles a worker whose
//! resident memory passed a cap; [`PoolBuilder::max_frame_bytes`] bounds what a worker may send
//! back. A worker that breaks the wire protocol is killed ([`Error::Protocol`]).
//!
//! # Wire format and worker lifecycle
//!
//! Frames are length-prefixed and checked against the limit before anything is allocated for
//! them; the layout is described in the `frame` module's source. A worker sends a Ready frame
//! once its initializer has run, then one reply per task, in the order it was sent them: so the
//! first unanswered task of a worker that dies is the one that killed it, and the tasks queued
//! behind it are sent elsewhere. See `docs/DESIGN.md` in the repository.
//!
//! # Across a cluster (feature `mpi`)
//!
//! With the `mpi` cargo feature, `Pool::builder().mpi().build()` under `mpirun -n N ./app` (or
//! `srun`) spreads the pool over every rank of the MPI job, with the same API and the same crash
//! containment: rank 0 gets the pool, every other rank runs a local pool and relays tasks into it
//! (Python's `mpi4py.util.pool.Pool`). See `PoolBuilder::mpi` and the README.
//!
//! # When to use threads instead
//!
//! If the work is thread-safe, shares large data, and cannot crash, a thread pool such as rayon
//! is cheaper: no copy of the arguments and no pipe. Reach for processes for isolation: from
//! crashes, leaks, global state, and code that is not thread-safe.
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg(unix)]

mod callback;
mod codec;
mod dispatch;
mod error;
mod feed;
mod frame;
mod imap;
mod ledger;
#[cfg(feature = "mpi")]
mod mpi;
mod pool;
mod proto;
mod result;
mod server;
mod shared;
mod spawn;
mod spin;
mod stats;
mod sys;
mod task;
#[cfg(test)]
mod testing;
mod worker;
mod zygote;

pub use error::{Error, ExitCause, Result};

/// Entry points for the fuzz targets under `fuzz/`; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `input` as a stream of reply frames; see `frame::parse_reply_stream`.
    pub fn parse_reply_stream(input: &[u8], max_frame: u64) -> Result<usize, String> {
        crate::frame::parse_reply_stream(input, max_frame)
    }
}
pub use imap::Imap;
pub use pool::{Pool, PoolBuilder};
pub use result::AsyncResult;
pub use shared::SharedBytes;
pub use stats::{HostStats, Stats};
pub use zygote::init;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
