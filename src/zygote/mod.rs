//! How a pool's fork server comes to exist: forked by the *zygote* that [`init`] started, or,
//! without it, by the thread that builds the pool.
//!
//! A fork server ([`crate::server`]) forks every worker of one pool. Without [`init`] it is a
//! fork of the program at the moment the pool is built, taken with the standard stream locks
//! held ([`fork::fork_holding_stdio`]), and the program is warned once if it already had other
//! threads. With [`init`], called first in `main`, the program forks a *zygote* at once: a
//! single-threaded copy of the program as it was then, small and holding no lock. Every pool
//! built later asks the zygote to fork its server ([`launch_server`]), so the server and its
//! workers are copies of that early program, whatever threads and memory the program has by
//! then. A fork server killed from outside is forked again by the zygote
//! ([`relaunch_server`]); without a zygote, a pool does not fork a new server from its now
//! threaded process at all, and its later tasks fail with a clear error.
//!
//! The parent side is this file; the zygote's side is [`child`], the messages between them are
//! [`proto`]. The zygote's socket is a Unix socketpair: the server's end of each new server's
//! own socket travels down it (SCM_RIGHTS), so the server talks to the pool directly and the
//! zygote never sees a task.

mod child;
mod fork;
pub(crate) mod proto;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys::{self, Pid, PollFd, SignalSet};
use crate::worker::WorkerConfig;
use fork::Side;
use proto::{ServerSpec, KILL, MESSAGE, READY};

/// How long `init` waits for the zygote to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a zygote's fork server may take to exit once asked, before the zygote kills it, and
/// then how long to wait for that.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Starts the process-wide *zygote*, from which every pool built later in this process forks
/// its workers. Call it first thing in `main`, before any thread (a runtime, a logger) starts
/// and before the program grows large.
///
/// The zygote is a single-threaded copy of the program as it is at this call. A pool built
/// later, from any thread and at any size of the program, has the zygote fork its fork server,
/// which forks the workers: so no worker inherits a lock another thread held (the hang of a
/// task's `println!` in a program that already had threads), and forking a worker costs what
/// forking the small early program costs, not the program's size now. This is what Python's
/// `forkserver` start method does.
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> forkpool::Result<()> {
///     forkpool::init()?; // first, while the program is single-threaded and small
///     // ... start a runtime, spawn threads, load data ...
///     let pool = forkpool::Pool::new(2)?;
///     assert_eq!(pool.map(square, 0..4)?, [0, 1, 4, 9]);
///     Ok(())
/// }
/// ```
///
/// Calling it again, from any thread, does nothing and returns `Ok`. Called from a thread other
/// than `main` it works too, but the zygote is then a copy of a program that may already have
/// threads, which is what it is there to avoid.
///
/// # Caveats
/// - Workers start from the program as it was at `init()`: globals set, files opened and data
///   loaded later are not in them. What they need from later state, they get through the pool's
///   [`initializer`](crate::PoolBuilder::initializer) (which runs in each worker and can read a
///   file, the environment, a socket) or through the tasks' arguments.
/// - The zygote lives until the program ends; it dies with it (end of file on its socket, and
///   PR_SET_PDEATHSIG when `init()` runs on the main thread). Its socket is close-on-exec, so a
///   program you spawn does not inherit it.
/// - If the zygote is killed from outside, pools built later fork their servers as without
///   `init()` (with its warning), and a fork server lost after that is not replaced.
///
/// # Errors
/// [`Error::Io`] if the socket or the fork failed; nothing is left behind, and pools then work
/// as without `init()`.
pub fn init() -> Result<()> {
    let me = sys::getpid();
    loop {
        if slot().is_some() {
            return Ok(());
        }
        // Claim the right to start it. A value left by another process (we are a fork of a
        // process that was starting one) is not ours to wait for.
        let starting = STARTING.load(Ordering::Acquire);
        if starting == me {
            std::thread::yield_now(); // another of our threads is starting it
            continue;
        }
        if STARTING
            .compare_exchange(starting, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            break;
        }
    }
    let started = start_zygote(me);
    STARTING.store(0, Ordering::Release);
    started
}

/// Forks the zygote and publishes its handle.
fn start_zygote(me: Pid) -> Result<()> {
    let (ours, theirs) = sys::socketpair().map_err(Error::io("socketpair"))?;
    let on_main = sys::is_main_thread();
    // SAFETY: in the child only child_setup (raw libc calls) and child::serve run, and serve
    // ends in _exit.
    let forked = unsafe { fork::fork_holding_stdio() }.map_err(Error::io("fork"))?;
    let pid = match forked {
        Side::Parent(pid) => pid,
        Side::Child => {
            let mask = sys::helper_mask();
            // SAFETY: we are the freshly forked child.
            let [sock] = unsafe { sys::child_setup(me, &mask, [theirs.as_raw_fd()]) };
            if !on_main {
                // The death signal follows the forking thread, which may end long before the
                // program does; end of file on the socket still tells the zygote.
                sys::clear_parent_death_signal();
            }
            // Until this is read, the forking thread waits: it must not end (and fire the
            // death signal) before the line above has run.
            if sys::send_with_fds(sock, &proto::short(READY, 0), &[]).is_err() {
                sys::exit_now(0);
            }
            child::serve(sock)
        }
    };
    drop(theirs);
    match read_answer(ours.as_raw_fd(), Instant::now() + START_TIMEOUT) {
        Ok(words) if words[0] == READY => {}
        other => {
            // It died in its setup, or answered nonsense: kill and reap it, and go on
            // without a zygote.
            if matches!(sys::try_wait(pid), Ok(None)) {
                sys::kill(pid);
            }
            let _ = sys::wait_blocking(pid);
            let source = match other {
                Err(e) => e,
                Ok(_) => io::Error::other("the zygote sent a wrong first message"),
            };
            return Err(Error::io("starting the zygote")(source));
        }
    }
    let handle = Box::new(Zygote {
        owner: me,
        pid,
        sock: Mutex::new(Some(ours)),
    });
    // Leaked on purpose: the handle lives as long as the process.
    SLOT.store(Box::into_raw(handle), Ordering::Release);
    Ok(())
}

/// The program's handle on its zygote.
#[derive(Debug)]
struct Zygote {
    /// The process this handle belongs to. A fork of it (a worker, a daemonized child) has a
    /// copy of the pointer, and must not use it: the socket is its parent's.
    owner: Pid,
    /// The zygote's pid: our child, reaped only once its socket is found dead.
    pid: Pid,
    /// The socket, held while talking; `None` once the zygote is gone.
    sock: Mutex<Option<OwnedFd>>,
}

/// The zygote handle of this process, published once by [`start_zygote`] and never freed.
static SLOT: AtomicPtr<Zygote> = AtomicPtr::new(std::ptr::null_mut());
/// The pid of a process one of whose threads is in [`start_zygote`], or 0.
static STARTING: AtomicI32 = AtomicI32::new(0);

/// This process's zygote handle, if [`init`] ran in this very process.
fn slot() -> Option<&'static Zygote> {
    // SAFETY: SLOT is null or a pointer from Box::into_raw that is never freed, in this process
    // or (after a fork) in its copy of the parent's memory.
    let zygote = unsafe { SLOT.load(Ordering::Acquire).as_ref() }?;
    (zygote.owner == sys::getpid()).then_some(zygote)
}

/// Who forked a fork server, which decides how it is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// This process: it is our child, to reap with `waitpid`.
    Forked,
    /// The zygote: it reaps it; we wait for end of file on the server's socket.
    Zygote,
}

/// A fork server just started: its pid, the pool's end of its socket, and who forked it.
#[derive(Debug)]
pub(crate) struct Launched {
    /// Known at once for a server we forked; for the zygote's, from its first message.
    pub(crate) pid: Option<Pid>,
    pub(crate) sock: OwnedFd,
    pub(crate) origin: Origin,
}

/// Who started a fork server, and its pid if known yet (see [`Launched`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    pub(crate) pid: Option<Pid>,
    pub(crate) origin: Origin,
}

/// Starts a fork server for a pool being built, on `theirs`, the server's end of a socketpair
/// whose other end the pool keeps (requests may wait there already: the server reads them
/// first thing): from the zygote if [`init`] ran, else forked from this process. Call it on
/// the thread that builds the pool; of the pool's threads, only `pool_threads` dispatcher
/// threads waiting to be given their dispatcher may run already (see
/// [`fork::fork_server`]). `worker_mask` is that thread's signal mask: workers start with it,
/// minus SIGALRM, which a task's time limit needs delivered.
pub(crate) fn launch_server(
    worker_mask: SignalSet,
    config: WorkerConfig,
    theirs: OwnedFd,
    pool_threads: usize,
) -> io::Result<Started> {
    let spec = ServerSpec {
        worker_mask: worker_mask.without(libc::SIGALRM),
        config,
    };
    match from_zygote(spec, theirs) {
        Ok(started) => started,
        Err(theirs) => fork::fork_server(spec.worker_mask, spec.config, theirs, pool_threads),
    }
}

/// Starts a new fork server for a pool whose server was lost (killed from outside). Only the
/// zygote may fork it: forking it from the pool's process, which has threads by now (the
/// pool's own at least), could leave any lock held in every later worker.
///
/// # Errors
/// Without a zygote, an error saying so, for the tasks that can no longer run.
pub(crate) fn relaunch_server(
    worker_mask: SignalSet,
    config: WorkerConfig,
) -> io::Result<Launched> {
    let spec = ServerSpec {
        worker_mask: worker_mask.without(libc::SIGALRM),
        config,
    };
    let (ours, theirs) = sys::socketpair()?;
    match from_zygote(spec, theirs) {
        Ok(started) => started.map(|Started { pid, origin }| Launched {
            pid,
            sock: ours,
            origin,
        }),
        Err(_) => Err(io::Error::other(
            "the pool's fork server is gone (killed from outside?), and a pool does not fork a \
             new one from a multi-threaded process (its workers could start with a lock held): \
             call forkpool::init() first in main to have it re-created",
        )),
    }
}

/// Asks the zygote to fork a server on `theirs`, the server's end of its socket, and returns at
/// once: the server says its pid on the socket first thing, or the zygote writes why it could
/// not fork it (see [`proto`]). `theirs` back if there is no zygote (any more).
fn from_zygote(
    spec: ServerSpec,
    theirs: OwnedFd,
) -> std::result::Result<io::Result<Started>, OwnedFd> {
    let Some(zygote) = slot() else {
        return Err(theirs);
    };
    let mut sock = zygote.sock.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(fd) = sock.as_ref().map(AsRawFd::as_raw_fd) else {
        return Err(theirs);
    };
    let sent =
        sys::send_with_fds(fd, &proto::start_request(spec), &[theirs.as_raw_fd()]).and_then(|()| {
            match spec.config.initializer {
                Some(init) => sys::send_with_fds(fd, init.parts().2, &[]),
                None => Ok(()),
            }
        });
    if sent.is_ok() {
        // The zygote has its own copy; the server will own it.
        return Ok(Ok(Started {
            pid: None,
            origin: Origin::Zygote,
        }));
    }
    // A dead socket: the zygote is unusable. It is our child: make sure it is dead, reap it,
    // and go on without it.
    *sock = None;
    // Only while it is our unreaped child (a program's own `waitpid(-1)` may have reaped it
    // already) can its pid not have been reused.
    if matches!(sys::try_wait(zygote.pid), Ok(None)) {
        sys::kill(zygote.pid);
        let _ = sys::wait_blocking(zygote.pid);
    }
    Err(theirs)
}

/// Reads one whole message from the blocking socket `fd`, by `deadline`.
fn read_answer(fd: std::os::fd::RawFd, deadline: Instant) -> io::Result<[u64; proto::WORDS]> {
    let mut buf = [0u8; MESSAGE];
    let mut n = 0;
    while n < MESSAGE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // poll reports EINTR as nothing ready: the loop then looks at the clock again.
        if sys::poll(&mut [PollFd::new(fd, true, false)], Some(left))? == 0 {
            continue;
        }
        match sys::read(fd, &mut buf[n..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            k => n += k,
        }
    }
    Ok(proto::decode(&buf))
}

/// Ends a fork server that the zygote forked: tells it to finish (end of file on its socket),
/// waits until it has exited (its end of the socket closes when it does, after it has killed
/// and reaped its workers), and has the zygote kill it if it takes longer than a grace period.
pub(crate) fn retire_server(pid: Option<Pid>, sock: OwnedFd) {
    let fd = sock.as_raw_fd();
    if sys::shutdown_write(fd).is_err() {
        return; // not connected any more: it is gone
    }
    if wait_for_eof(fd, Instant::now() + EXIT_GRACE) {
        return;
    }
    // A server that never said its pid: the zygote never forked it, or it hangs before its
    // first message; nothing to ask the zygote to kill.
    let Some(pid) = pid else { return };
    if let Some(zygote) = slot() {
        let sock = zygote.sock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(z) = sock.as_ref() {
            let _ = sys::send_with_fds(z.as_raw_fd(), &proto::short(KILL, pid as u64), &[]);
        }
    }
    wait_for_eof(fd, Instant::now() + EXIT_GRACE);
}

/// Reads and discards what arrives on the socket `fd` until end of file or `deadline`; true at
/// end of file (or a reset: the peer is gone). A fork server's socket reaches end of file as
/// the server exits.
pub(crate) fn wait_for_eof(fd: std::os::fd::RawFd, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if matches!(
            sys::poll(&mut [PollFd::new(fd, true, false)], Some(left)),
            Ok(0)
        ) {
            continue;
        }
        match sys::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true, // reset: the peer is gone
        }
    }
}
