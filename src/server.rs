//! The fork server's side: a single-threaded process that forks every worker of one pool.
//!
//! It loops on `poll` over its socket to the parent and a self-pipe that SIGCHLD writes to. It
//! forks a worker on each spawn request (on the two pipe ends that came with it), reaps workers
//! as they end and reports their exit statuses, and SIGKILLs a worker when asked, if that worker
//! is still unreaped. Asked to [`FINISH`], it exits once its last worker is
//! reaped. When the parent closes the socket (the pool is done, or the parent died)
//! it kills and reaps whatever workers remain and exits. It never returns or unwinds into the
//! code that forked it: [`serve`] ends the process with `_exit`. See [`crate::proto`] for the
//! protocol.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};

use crate::proto::{self, EXITED, FINISH, HELLO, KILL, MESSAGE, SPAWN, SPAWNED, SPAWN_FAILED};
use crate::spin;
use crate::sys::{self, Pid, PollFd};
use crate::worker::{self, WorkerConfig};

/// Exit status of a server whose loop panicked or whose socket failed.
const EXIT_BROKEN: i32 = 124;

/// Serves spawn and kill requests on `sock` until the parent closes it, then ends the process.
pub(crate) fn serve(sock: RawFd, worker_mask: libc::sigset_t, config: WorkerConfig) -> ! {
    sys::set_process_name(c"forkpool-server");
    sys::prefer_short_slice();
    let code = panic::catch_unwind(AssertUnwindSafe(|| {
        match serve_loop(sock, &worker_mask, config) {
            Ok(()) => 0,
            Err(_) => EXIT_BROKEN,
        }
    }));
    sys::exit_now(code.unwrap_or(EXIT_BROKEN))
}

fn serve_loop(sock: RawFd, worker_mask: &libc::sigset_t, config: WorkerConfig) -> io::Result<()> {
    let (sigchld_r, sigchld_w) = sys::pipe()?;
    sys::set_nonblocking(&sigchld_r)?;
    sys::set_nonblocking(&sigchld_w)?;
    sys::notify_sigchld(&sigchld_w)?;
    // The parent's death wakes the loop below, which then kills the workers' groups.
    sys::catch_parent_death()?;
    let me = sys::getpid();
    send(sock, HELLO, me as u64, 0)?;
    let mut live: Vec<Pid> = Vec::new();
    // After FINISH: exit as soon as the last worker is reaped.
    let mut finishing = false;
    loop {
        reap(sock, &mut live)?;
        if finishing && live.is_empty() {
            return Ok(()); // exiting closes the socket: the parent sees end of file
        }
        let mut fds = [
            PollFd::new(sock, true, false),
            PollFd::new(sigchld_r.as_raw_fd(), true, false),
        ];
        sys::poll(&mut fds, None)?;
        if sys::term_received() {
            break; // the parent died, or we were asked to stop
        }
        if fds[1].readable() {
            let mut drain = [0u8; 64];
            while matches!(sys::read(sigchld_r.as_raw_fd(), &mut drain), Ok(n) if n > 0) {}
        }
        if !fds[0].readable() {
            continue;
        }
        let mut buf = [0u8; MESSAGE];
        let (n, fds) = sys::recv_with_fds(sock, &mut buf)?;
        if n == 0 {
            break; // the parent closed the socket
        }
        sys::read_exact(sock, &mut buf[n..])?;
        let [kind, a, b] = proto::parse(&buf);
        match kind {
            SPAWN => {
                let [task, reply, ledger] = match <[_; 3]>::try_from(fds) {
                    Ok(fds) => fds,
                    Err(_) => {
                        send(sock, SPAWN_FAILED, a, libc::EBADF as u64)?;
                        continue;
                    }
                };
                // Mapped here, before the fork, so the worker inherits the mapping and holds no
                // descriptor for it (see crate::ledger).
                let region = match sys::SharedRegion::map(&ledger, crate::ledger::LEDGER_BYTES) {
                    Ok(region) => region,
                    Err(e) => {
                        let errno = e.raw_os_error().unwrap_or(libc::ENOMEM);
                        send(sock, SPAWN_FAILED, a, errno as u64)?;
                        continue;
                    }
                };
                // SAFETY: this process is single-threaded, so the child holds no lock another
                // thread could have held; in the child only child_setup and worker::serve run,
                // and serve ends in _exit.
                match unsafe { sys::fork() } {
                    Ok(0) => {
                        // SAFETY: we are the freshly forked child.
                        let [input, output] = unsafe {
                            sys::child_setup(me, worker_mask, [task.as_raw_fd(), reply.as_raw_fd()])
                        };
                        // The server's short slice is for its own bursts, not the tasks'.
                        sys::default_slice();
                        if b & proto::SPAWN_CONTENDED != 0 {
                            spin::note_contended();
                        }
                        worker::serve(input, output, Some(region), config);
                    }
                    Ok(pid) => {
                        live.push(pid);
                        send(sock, SPAWNED, a, pid as u64)?;
                    }
                    Err(e) => send(
                        sock,
                        SPAWN_FAILED,
                        a,
                        e.raw_os_error().unwrap_or(libc::EAGAIN) as u64,
                    )?,
                }
                // The server's mapping of the ledger goes with `region`.
                drop(region);
                // `task`, `reply` and `ledger` drop here: only the worker holds them now.
            }
            FINISH => finishing = true,
            KILL => {
                let pid = a as Pid;
                // Only a live, unreaped child: its pid cannot have been reused.
                if live.contains(&pid) {
                    sys::kill_worker(pid);
                }
            }
            _ => {}
        }
    }
    for &pid in &live {
        sys::kill_worker(pid);
    }
    for pid in live {
        let _ = sys::wait_blocking(pid);
    }
    Ok(())
}

/// Reaps every worker that has ended and reports it.
fn reap(sock: RawFd, live: &mut Vec<Pid>) -> io::Result<()> {
    while let Some((pid, status)) = sys::reap_any_worker()? {
        live.retain(|&p| p != pid);
        send(sock, EXITED, pid as u64, proto::encode_status(status))?;
    }
    Ok(())
}

fn send(sock: RawFd, kind: u64, a: u64, b: u64) -> io::Result<()> {
    sys::send_with_fds(sock, &proto::message(kind, a, b), &[])
}
