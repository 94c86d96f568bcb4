//! Forking a helper process from a program that may have other threads.
//!
//! A fork copies only the calling thread. A lock that another thread holds at that moment stays
//! locked in the child, whose copy of that thread does not exist to release it. The standard
//! streams are the locks every program takes, so [`fork_holding_stdio`] takes them itself
//! around the fork, as glibc does for malloc's: the child then starts with `stdout` and `stderr`
//! held by its own (only) thread, which std's reentrant lock recognises by its thread id (the
//! child's thread is a copy of the forking one, id included), and it releases them. Other
//! locks are not known to us; [`init`](crate::init) is the way around them, and
//! [`warn_if_threaded`] says so.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::server;
use crate::sys::{self, Pid, SignalSet};
use crate::worker::WorkerConfig;

/// The environment variable that silences [`warn_if_threaded`] when set to anything.
pub(crate) const QUIET_VAR: &str = "FORKPOOL_NO_THREAD_WARNING";

/// Which side of a fork this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The parent; the child's pid.
    Parent(Pid),
    /// The child.
    Child,
}

/// Forks with `stdout` (flushed first) and `stderr` locked by the calling thread, so that no
/// other thread holds them at the moment of the fork. Flushing also keeps text buffered before
/// the fork (a `print!` without a newline) from being printed again by the child. Both sides
/// have released the locks when this returns.
///
/// # Safety
/// As for [`sys::fork`]: on [`Side::Child`], the caller may touch no lock another thread
/// could have held (the standard streams excepted) and must end the process with `_exit`.
pub(crate) unsafe fn fork_holding_stdio() -> io::Result<Side> {
    // stdout before stderr, always in that order. The lock is reentrant: a caller that holds
    // stdout's lock itself (`let out = stdout().lock()` for the whole of main) passes through.
    let mut out = io::stdout().lock();
    let _ = out.flush();
    let err = io::stderr().lock();
    // SAFETY: the caller's contract.
    let forked = unsafe { sys::fork() };
    // In the child, our only thread owns both locks (it has the forking thread's id): releasing
    // them is an ordinary unlock of this process's own copy.
    drop(err);
    drop(out);
    Ok(match forked? {
        0 => Side::Child,
        pid => Side::Parent(pid),
    })
}

/// Forks a pool's fork server from this process, on `theirs`, the server's end of its socket:
/// the path without [`init`](crate::init). Call it from the thread that builds the pool.
///
/// Of the pool's own threads, only its dispatcher thread may exist yet (`pool_threads`, 0 or
/// 1), started just before and waiting to be handed its dispatcher: at the fork it is either
/// in the standard library's thread start or asleep on that hand-off's lock. What it may hold
/// there, the server never takes: the hand-off's lock is the pool's own; malloc's locks are
/// held by libc across the fork (as for any thread); and the dynamic loader's lock (a thread
/// that registers a thread-local destructor takes it) is reset in the child by glibc's fork.
/// The program's other threads are another matter: [`warn_if_threaded`] says so.
pub(crate) fn fork_server(
    worker_mask: SignalSet,
    config: WorkerConfig,
    theirs: OwnedFd,
    pool_threads: usize,
) -> io::Result<super::Started> {
    warn_if_threaded(pool_threads);
    let parent = sys::getpid();
    let on_main = sys::is_main_thread();
    let worker_mask = worker_mask.to_sigset();
    // SAFETY: in the child only child_setup (raw libc calls) and server::serve run, and serve
    // ends in _exit.
    let pid = match unsafe { fork_holding_stdio()? } {
        Side::Parent(pid) => pid,
        Side::Child => {
            let mask = sys::helper_mask();
            // SAFETY: we are the freshly forked child. child_setup closes every other
            // descriptor, the pool's ends of the first workers' pipes among them.
            let [sock] = unsafe { sys::child_setup(parent, &mask, [theirs.as_raw_fd()]) };
            if !on_main {
                // The death signal follows the forking thread, which may end before the pool
                // does; the server also ends at end of file on its socket.
                sys::clear_parent_death_signal();
            }
            server::serve(sock, worker_mask, config)
        }
    };
    drop(theirs);
    Ok(super::Started {
        pid: Some(pid),
        origin: super::Origin::Forked,
    })
}

/// Says once per process, on stderr, that a pool is being built in a process that already has
/// other threads than this one and the pool's own `pool_threads`, unless [`QUIET_VAR`] is set.
pub(crate) fn warn_if_threaded(pool_threads: usize) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    // Once said, or silenced, there is nothing to count (each count reads /proc).
    if WARNED.load(Ordering::Relaxed) || std::env::var_os(QUIET_VAR).is_some() {
        return;
    }
    let Some(threads) = sys::thread_count().map(|n| n.saturating_sub(pool_threads)) else {
        return;
    };
    if threads <= 1 || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    eprintln!(
        "forkpool: a pool is being built in a process that already runs {threads} threads; a \
         lock one of them holds at the fork stays held in every worker. Call forkpool::init() \
         first in main (set {QUIET_VAR}=1 to silence this)"
    );
}
