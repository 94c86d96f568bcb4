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
//! [`Pool::new`] starts a dispatcher thread, which lives as long as the pool, moves every byte,
//! and has a small fork server fork the worker processes (see *Fork safety*). A task is a function pointer `fn(A) -> R` and an argument `A`. The argument is
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
//! [`Pool::stats`] counts what the pool has done, for progress bars.
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
//! | `Pool(initializer=f, maxtasksperchild=n)` | [`Pool::builder()`](Pool::builder)`.initializer(f).max_tasks_per_child(n).build()` |
//! | `pool.apply(f, (x,))` | [`pool.apply(f, x)`](Pool::apply) |
//! | `pool.apply_async(f, (x,))` | [`pool.apply_async(f, x)`](Pool::apply_async) |
//! | `res.get()`, `res.wait(t)`, `res.ready()` | [`get`](AsyncResult::get), [`wait_timeout`](AsyncResult::wait_timeout), [`ready`](AsyncResult::ready) |
//! | `pool.map(f, xs)`, `pool.map(f, xs, chunksize)` | [`map`](Pool::map), [`map_chunked`](Pool::map_chunked) |
//! | `pool.map_async(f, xs)` | [`map_async`](Pool::map_async) |
//! | `pool.imap(f, xs)`, `pool.imap_unordered(f, xs)` | [`imap`](Pool::imap), [`imap_unordered`](Pool::imap_unordered) |
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
//! # Fork safety
//!
//! Fork copies only the thread that calls it; a lock held by another thread at that moment
//! (`stdout`'s, your own mutexes) stays locked forever in the child. So a pool forks exactly once
//! from your process: when it is built, its dispatcher thread forks a small single-threaded
//! *fork server*, and that server forks every worker, the first ones and every replacement
//! (after a crash, a timeout, `max_tasks_per_child` or a memory cap). Build the pool early in
//! `main`, before other threads start, and no worker can inherit a held lock. Workers see the
//! program as it was when the pool was built: globals changed later are not visible to them.
//!
//! Workers close every inherited file descriptor except stdin, stdout and stderr, and every
//! descriptor of the pool is close-on-exec, so a program a task starts holds no pool pipe.
//! Workers shrug off SIGINT (Ctrl-C is the parent's to handle), and die with the fork server,
//! which dies with the pool's dispatcher thread: a killed parent leaves no orphans.
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
mod frame;
mod imap;
#[cfg(feature = "mpi")]
mod mpi;
mod pool;
mod result;
mod server;
mod spawn;
mod stats;
mod sys;
mod task;
mod worker;

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
pub use stats::Stats;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
