//! How a worker comes to exist: the parent's side of the fork server.
//!
//! Forking a process that has other threads copies only the forking thread; a lock another thread
//! held at that moment stays locked forever in the child. So the pool forks exactly once from
//! its own process: when the pool is built, its dispatcher thread, before doing anything else,
//! forks a small single-threaded *fork server* ([`crate::server`]). Every worker, the first ones
//! and every replacement, is forked by that server, never by the (threaded) parent.
//!
//! The parent makes each worker's two pipes itself and hands the worker's ends down the server's
//! Unix socket (SCM_RIGHTS). The server reaps its workers and reports each exit status, so
//! [`Error::WorkerDied`](crate::Error::WorkerDied) still says how a worker died, and it is the
//! only process that ever signals a worker, so a kill never hits a reused pid. The server dies
//! with the dispatcher thread (PR_SET_PDEATHSIG) and the workers die with the server.
//!
//! Messages on the socket are three little-endian `u64`s: a kind and two arguments.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::ExitCause;
use crate::server;
use crate::sys::{self, Pid, PollFd, WaitStatus};
use crate::worker::WorkerConfig;

/// Bytes in one message.
pub(crate) const MESSAGE: usize = 24;

/// Parent to server: fork a worker on the two attached descriptors. `[SPAWN, token, 0]`.
pub(crate) const SPAWN: u64 = 1;
/// Parent to server: SIGKILL this worker if it has not been reaped. `[KILL, pid, 0]`.
pub(crate) const KILL: u64 = 2;
/// Server to parent: the worker for `token` is `pid`. `[SPAWNED, token, pid]`.
pub(crate) const SPAWNED: u64 = 11;
/// Server to parent: fork failed with `errno`. `[SPAWN_FAILED, token, errno]`.
pub(crate) const SPAWN_FAILED: u64 = 12;
/// Server to parent: the worker `pid` ended and was reaped. `[EXITED, pid, status]`, where
/// status is `code` for an exit and `1 << 32 | signal` for a signal.
pub(crate) const EXITED: u64 = 13;

/// The pipe buffer each worker pipe asks for: 1 MiB, Linux's default ceiling for unprivileged
/// users (`/proc/sys/fs/pipe-max-size`).
const PIPE_BYTES: usize = 1 << 20;
/// How long the parent waits for the server to answer a spawn request before giving up on it.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to exit once its socket is closed, before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Encodes a message.
pub(crate) fn message(kind: u64, a: u64, b: u64) -> [u8; MESSAGE] {
    let mut m = [0; MESSAGE];
    for (i, word) in [kind, a, b].into_iter().enumerate() {
        m[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
    }
    m
}

/// Decodes a message.
pub(crate) fn parse(m: &[u8]) -> [u64; 3] {
    let word = |i: usize| u64::from_le_bytes(m[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    [word(0), word(1), word(2)]
}

/// Encodes an exit status for an [`EXITED`] message.
pub(crate) fn encode_status(status: WaitStatus) -> u64 {
    match status {
        WaitStatus::Exited(code) => code as u32 as u64,
        WaitStatus::Signaled(sig) => 1 << 32 | sig as u32 as u64,
    }
}

fn decode_status(word: u64) -> ExitCause {
    if word >> 32 == 1 {
        ExitCause::Signal(word as u32 as i32)
    } else {
        ExitCause::Exited(word as u32 as i32)
    }
}

/// Something the server told the parent, outside of a spawn's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A worker ended and was reaped.
    Exited { pid: Pid, cause: ExitCause },
    /// The server itself is gone (killed from outside): its workers died with it.
    Lost,
}

/// The parent's handle on its fork server.
#[derive(Debug)]
pub(crate) struct ForkServer {
    pid: Pid,
    sock: Option<OwnedFd>,
    inbuf: Vec<u8>,
    events: VecDeque<Event>,
    next_token: u64,
    reaped: bool,
}

/// The parent's handle on one worker process: its pid and its two pipes.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    /// The task pipe's write end; `None` once closed to tell the worker to finish.
    tasks: Option<OwnedFd>,
    /// The reply pipe's read end (non-blocking).
    replies: OwnedFd,
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

    /// Closes the task pipe: the worker finishes what it has and exits.
    pub(crate) fn close_tasks(&mut self) {
        self.tasks = None;
    }
}

impl ForkServer {
    /// Forks the server. Call it from the thread that lives as long as the pool: the server
    /// dies when that thread ends.
    ///
    /// `worker_mask` is the signal mask workers start with; `config` what they run.
    pub(crate) fn start(
        worker_mask: libc::sigset_t,
        config: WorkerConfig,
    ) -> io::Result<ForkServer> {
        let (ours, theirs) = sys::socketpair().map_err(sys::failed("socketpair"))?;
        let parent = sys::getpid();
        // The server keeps this thread's mask (SIGPIPE blocked): it writes to our socket.
        // SAFETY: pthread_sigmask with a null new set only reads the current mask into `mask`.
        let server_mask = unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
            mask
        };
        // SAFETY: in the child, only child_setup (raw libc calls) and server::serve run, and
        // serve ends in _exit, never returning or unwinding into this function.
        let pid = unsafe { sys::fork().map_err(sys::failed("fork"))? };
        if pid == 0 {
            // SAFETY: we are the freshly forked child.
            let [sock] = unsafe { sys::child_setup(parent, &server_mask, [theirs.as_raw_fd()]) };
            server::serve(sock, worker_mask, config);
        }
        drop(theirs);
        let server = ForkServer {
            pid,
            sock: Some(ours),
            inbuf: Vec::new(),
            events: VecDeque::new(),
            next_token: 0,
            reaped: false,
        };
        sys::set_nonblocking(server.sock.as_ref().expect("just set"))?;
        Ok(server)
    }

    /// The socket to poll for [`read_events`](Self::read_events); `None` once the server is
    /// lost.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.sock.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// True once the server is gone.
    pub(crate) fn is_lost(&self) -> bool {
        self.sock.is_none()
    }

    /// Has the server fork a worker, and returns the parent's handle on it.
    pub(crate) fn spawn(&mut self) -> io::Result<Child> {
        let (task_r, task_w) = sys::pipe().map_err(sys::failed("pipe"))?;
        let (reply_r, reply_w) = sys::pipe().map_err(sys::failed("pipe"))?;
        sys::grow_pipe(&task_w, PIPE_BYTES);
        sys::grow_pipe(&reply_w, PIPE_BYTES);
        let Some(sock) = self.fd() else {
            return Err(lost());
        };
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = sys::send_with_fds(
            sock,
            &message(SPAWN, token, 0),
            &[task_r.as_raw_fd(), reply_w.as_raw_fd()],
        ) {
            self.mark_lost();
            return Err(sys::failed("sendmsg to the fork server")(e));
        }
        // The server holds its own copies now; ours would keep the pipes open after the worker
        // dies.
        drop((task_r, reply_w));
        let deadline = Instant::now() + SPAWN_TIMEOUT;
        loop {
            while self.inbuf.len() >= MESSAGE {
                let [kind, a, b] = parse(&self.inbuf[..MESSAGE]);
                self.inbuf.drain(..MESSAGE);
                match kind {
                    SPAWNED if a == token => {
                        // Reports that came in the same read are events to apply now, not
                        // bytes to leave until the socket next wakes the dispatcher.
                        self.parse_events();
                        let child = Child {
                            pid: b as Pid,
                            tasks: Some(task_w),
                            replies: reply_r,
                        };
                        sys::set_nonblocking(child.tasks.as_ref().expect("just set"))?;
                        sys::set_nonblocking(&child.replies)?;
                        return Ok(child);
                    }
                    SPAWN_FAILED if a == token => {
                        self.parse_events();
                        let e = io::Error::from_raw_os_error(b as i32);
                        return Err(sys::failed("fork (in the fork server)")(e));
                    }
                    _ => self.queue_event([kind, a, b]),
                }
            }
            self.read_some(true, deadline)?;
        }
    }

    /// Asks the server to SIGKILL a worker; it does so only if the worker is not yet reaped.
    pub(crate) fn kill(&mut self, pid: Pid) {
        let Some(sock) = self.fd() else { return };
        if sys::send_with_fds(sock, &message(KILL, pid as u64, 0), &[]).is_err() {
            self.mark_lost();
        }
    }

    /// Reads what the socket holds without blocking, and queues the events in it.
    pub(crate) fn read_events(&mut self) {
        if self.read_some(false, Instant::now()).is_ok() {
            self.parse_events();
        }
    }

    /// Blocks until an event arrives or `deadline` passes.
    pub(crate) fn wait_event(&mut self, deadline: Instant) -> Option<Event> {
        while self.events.is_empty() {
            if self.read_some(true, deadline).is_err() {
                break;
            }
            self.parse_events();
        }
        self.events.pop_front()
    }

    /// The next queued event.
    pub(crate) fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn parse_events(&mut self) {
        while self.inbuf.len() >= MESSAGE {
            let words = parse(&self.inbuf[..MESSAGE]);
            self.inbuf.drain(..MESSAGE);
            self.queue_event(words);
        }
    }

    fn queue_event(&mut self, [kind, a, b]: [u64; 3]) {
        if kind == EXITED {
            self.events.push_back(Event::Exited {
                pid: a as Pid,
                cause: decode_status(b),
            });
        }
        // Anything else is an answer to a spawn we stopped waiting for; its worker, if any,
        // has no pipes left and exits at once.
    }

    /// Reads once (waiting up to `deadline` if `block`), appending to the buffer. An error means
    /// nothing could be read: the deadline passed, or the server is lost.
    fn read_some(&mut self, block: bool, deadline: Instant) -> io::Result<()> {
        let Some(sock) = self.fd() else {
            return Err(lost());
        };
        if block {
            let mut fds = [PollFd::new(sock, true, false)];
            let left = deadline.saturating_duration_since(Instant::now());
            if sys::poll(&mut fds, Some(left))? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the fork server did not answer in time",
                ));
            }
        }
        let mut buf = [0u8; 4096];
        match sys::read(sock, &mut buf) {
            Ok(0) => {
                self.mark_lost();
                Err(lost())
            }
            Ok(n) => {
                self.inbuf.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => {
                self.mark_lost();
                Err(e)
            }
        }
    }

    /// The server is gone: close our end, reap it, and tell the dispatcher.
    fn mark_lost(&mut self) {
        if self.sock.take().is_some() {
            self.reap();
            self.events.push_back(Event::Lost);
        }
    }

    /// Closes the socket, which tells the server to end, and reaps it. The server kills any
    /// worker still alive and reaps it before it exits.
    fn reap(&mut self) {
        self.sock = None;
        if self.reaped {
            return;
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        // It exits within microseconds of seeing the socket close: look again soon, then less
        // and less often.
        let mut pause = Duration::from_micros(20);
        loop {
            match sys::try_wait(self.pid) {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Ok(None) => {
                    sys::kill(self.pid);
                    let _ = sys::wait_blocking(self.pid);
                    break;
                }
                _ => break,
            }
        }
        self.reaped = true;
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        self.reap();
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the pool's fork server is gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a report that arrived in the same read as a spawn's answer was left in the
    /// buffer, unparsed, until the socket next woke the dispatcher, which could be never; the
    /// pool then waited forever on a dead worker. Here the test plays the server's part.
    #[test]
    fn reports_read_along_with_a_spawn_answer_become_events() {
        let (ours, theirs) = sys::socketpair().unwrap();
        sys::set_nonblocking(&ours).unwrap();
        let mut server = ForkServer {
            pid: sys::getpid(),
            sock: Some(ours),
            inbuf: Vec::new(),
            events: VecDeque::new(),
            next_token: 0,
            reaped: true,
        };
        let peer = std::thread::spawn(move || {
            let mut request = [0u8; MESSAGE];
            let (n, fds) = sys::recv_with_fds(theirs.as_raw_fd(), &mut request).unwrap();
            assert_eq!((n, fds.len()), (MESSAGE, 2));
            assert_eq!(parse(&request), [SPAWN, 0, 0]);
            let mut answer = message(SPAWNED, 0, 4242).to_vec();
            answer.extend_from_slice(&message(EXITED, 99, 1 << 32 | 9));
            sys::send_with_fds(theirs.as_raw_fd(), &answer, &[]).unwrap();
            theirs
        });
        let child = server.spawn().unwrap();
        assert_eq!(child.pid(), 4242);
        let _theirs = peer.join().unwrap();
        assert_eq!(
            server.next_event(),
            Some(Event::Exited {
                pid: 99,
                cause: ExitCause::Signal(9)
            })
        );
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            WaitStatus::Exited(0),
            WaitStatus::Exited(255),
            WaitStatus::Signaled(9),
        ] {
            let cause = decode_status(encode_status(status));
            match status {
                WaitStatus::Exited(c) => assert_eq!(cause, ExitCause::Exited(c)),
                WaitStatus::Signaled(s) => assert_eq!(cause, ExitCause::Signal(s)),
            }
        }
    }
}
