//! How a worker comes to exist: two pipes and a fork, and the parent's handle on the result.
//!
//! The fork happens on the dispatcher thread, which lives exactly as long as the pool: Linux
//! delivers `PR_SET_PDEATHSIG` when the *thread* that forked exits, so forking from a caller's
//! short-lived thread would kill the workers with it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::ExitCause;
use crate::sys::{self, Pid, WaitStatus};
use crate::worker::{self, WorkerConfig};

/// What every fork needs, captured once on the dispatcher thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpawnContext {
    /// Our own pid: a child whose parent is no longer this exits at once.
    pub(crate) parent: Pid,
    /// The signal mask to restore in the child (the dispatcher blocks SIGPIPE for itself).
    pub(crate) sigmask: libc::sigset_t,
    pub(crate) worker: WorkerConfig,
}

/// The parent's handle on one worker process.
///
/// Dropping a handle whose process was not reaped kills and reaps it, so no path leaves a zombie
/// or a stray worker behind.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    /// The task pipe's write end; `None` once closed to tell the worker to finish.
    tasks: Option<OwnedFd>,
    /// The reply pipe's read end (non-blocking).
    replies: OwnedFd,
    /// Readable once the process has exited, where the kernel supports it.
    pidfd: Option<OwnedFd>,
    reaped: bool,
}

/// Forks a worker.
pub(crate) fn spawn(ctx: &SpawnContext) -> io::Result<Child> {
    let (task_r, task_w) = sys::pipe()?;
    let (reply_r, reply_w) = sys::pipe()?;
    // SAFETY: in the child, the branch below runs only child_setup (raw libc calls) and
    // worker::serve, which ends in _exit and never returns or unwinds into this function.
    let pid = unsafe { sys::fork()? };
    if pid == 0 {
        // SAFETY: we are the freshly forked child.
        let [input, output] = unsafe {
            sys::child_setup(
                ctx.parent,
                &ctx.sigmask,
                [task_r.as_raw_fd(), reply_w.as_raw_fd()],
            )
        };
        worker::serve(input, output, ctx.worker);
    }
    drop((task_r, reply_w));
    let child = Child {
        pid,
        tasks: Some(task_w),
        replies: reply_r,
        pidfd: sys::pidfd_open(pid),
        reaped: false,
    };
    sys::set_nonblocking(child.tasks.as_ref().expect("just set"))?;
    sys::set_nonblocking(&child.replies)?;
    Ok(child)
}

impl Child {
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    pub(crate) fn task_fd(&self) -> Option<RawFd> {
        self.tasks.as_ref().map(AsRawFd::as_raw_fd)
    }

    pub(crate) fn reply_fd(&self) -> RawFd {
        self.replies.as_raw_fd()
    }

    pub(crate) fn pidfd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes the task pipe: the worker finishes what it has and exits.
    pub(crate) fn close_tasks(&mut self) {
        self.tasks = None;
    }

    /// Sends SIGKILL (before the process is reaped, so the pid is still ours).
    pub(crate) fn kill(&self) {
        if !self.reaped {
            sys::kill(self.pid);
        }
    }

    /// Reaps a process known to have exited (its pidfd fired): never blocks for long.
    /// A process that has closed its pipes but lingers is given `grace`, then killed.
    pub(crate) fn reap(&mut self, grace: Duration) -> io::Result<ExitCause> {
        let deadline = Instant::now() + grace;
        let status = loop {
            if let Some(status) = sys::try_wait(self.pid)? {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                break sys::wait_blocking(self.pid)?;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.reaped = true;
        Ok(match status {
            WaitStatus::Exited(code) => ExitCause::Exited(code),
            WaitStatus::Signaled(sig) => ExitCause::Signal(sig),
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = sys::wait_blocking(self.pid);
        }
    }
}
