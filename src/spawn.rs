//! How a worker comes to exist: the parent's side of the fork server, behind the small
//! [`Processes`] seam the dispatcher schedules against.
//!
//! Forking a process that has other threads copies only the forking thread; a lock another thread
//! held at that moment stays locked forever in the child. So no worker is forked by the
//! (threaded) parent: a small single-threaded *fork server* ([`crate::server`]) forks every
//! worker, the first ones and every replacement. The server itself is forked by the zygote of
//! `forkpool::init()`, or else by the thread that builds the pool ([`crate::zygote`]).
//!
//! The parent makes each worker's two pipes itself and hands the worker's ends down the server's
//! Unix socket (SCM_RIGHTS). The server reaps its workers and reports each exit status, so
//! [`Error::WorkerDied`](crate::Error::WorkerDied) still says how a worker died, and it is the
//! only process that ever signals a worker, so a kill never hits a reused pid. The server ends
//! at end of file on its socket, and the workers die with the server.
//!
//! Nothing here blocks the dispatcher: a spawn request is queued and sent as the socket takes it,
//! and its answer arrives later as an [`Event`] keyed by the request's token. The messages are
//! in [`crate::proto`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::ExitCause;
use crate::ledger::Ledger;
use crate::proto::{
    self, EXITED, FINISH, HELLO, KILL, MESSAGE, SPAWN, SPAWNED, SPAWN_FAILED, START_FAILED,
};
use crate::spin;
use crate::sys::{self, Pid, SignalSet};
use crate::worker::WorkerConfig;
use crate::zygote::{self, Launched, Origin};

/// How long the server may take to exit once its socket is closed, before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Names one spawn request, so that its answer finds it whenever it comes.
pub(crate) type Token = u64;

/// Something the process layer reports to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The worker asked for with `token` was forked as `pid`.
    Spawned { token: Token, pid: Pid },
    /// The worker asked for with `token` could not be forked (`errno`).
    SpawnFailed { token: Token, errno: i32 },
    /// A worker ended and was reaped.
    Exited { pid: Pid, cause: ExitCause },
    /// The server itself is gone (killed from outside): its workers died with it.
    Lost,
    /// The server could not be forked (`errno`): no spawn request will be answered.
    StartFailed { errno: i32 },
}

/// The parent's ends of one worker's pipes, both non-blocking.
#[derive(Debug)]
pub(crate) struct Pipes {
    /// The task pipe's write end; `None` once closed to tell the worker to finish.
    pub(crate) tasks: Option<OwnedFd>,
    /// The reply pipe's read end.
    pub(crate) replies: OwnedFd,
    /// The worker's ledger, which it records its progress in; `None` for a worker that has
    /// none (the dispatcher's unit tests).
    pub(crate) ledger: Option<Ledger>,
}

impl Pipes {
    /// Wraps a task pipe's write end and a reply pipe's read end, making both non-blocking.
    pub(crate) fn new(tasks: OwnedFd, replies: OwnedFd) -> io::Result<Pipes> {
        sys::set_nonblocking(&tasks)?;
        sys::set_nonblocking(&replies)?;
        Ok(Pipes {
            tasks: Some(tasks),
            replies,
            ledger: None,
        })
    }

    pub(crate) fn task_fd(&self) -> Option<RawFd> {
        self.tasks.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The task pipe's write end; only while it is open.
    pub(crate) fn tasks(&self) -> &OwnedFd {
        self.tasks.as_ref().expect("the task pipe is open")
    }

    pub(crate) fn reply_fd(&self) -> RawFd {
        self.replies.as_raw_fd()
    }

    /// Closes the task pipe: the worker finishes what it has and exits.
    pub(crate) fn close_tasks(&mut self) {
        self.tasks = None;
    }
}

/// The seam in front of worker processes: what the dispatcher asks of them and hears back.
/// [`ForkServer`] is the real one; the dispatcher's unit tests use a fake that forks nothing.
pub(crate) trait Processes {
    /// Asks for a new worker and returns at once with the parent's ends of its pipes; the answer
    /// comes later as [`Event::Spawned`] or [`Event::SpawnFailed`] with the same token.
    fn spawn(&mut self) -> io::Result<(Token, Pipes)>;
    /// Has a worker SIGKILLed, unless it has already been reaped.
    fn kill(&mut self, pid: Pid);
    /// The descriptor to poll, and whether to poll it for writing too (requests are waiting);
    /// `None` once the layer is lost.
    fn poll_fd(&self) -> Option<(RawFd, bool)>;
    /// Does what `poll` found possible: sends queued requests, reads reports.
    fn service(&mut self, readable: bool, writable: bool);
    /// The next report, if any.
    fn next_event(&mut self) -> Option<Event>;
    /// Re-creates a lost layer. See [`ForkServer::recreate`].
    fn recreate(&mut self) -> io::Result<()>;
    /// Says that no worker will be asked for any more: the layer ends itself once its workers
    /// have ended (their exits are still reported), instead of waiting to be told to.
    fn finish(&mut self);
}

/// A message waiting to be sent, with the descriptors that go with its first byte.
#[derive(Debug)]
struct Outgoing {
    bytes: [u8; MESSAGE],
    sent: usize,
    fds: Vec<OwnedFd>,
}

/// The parent's handle on its fork server.
#[derive(Debug)]
pub(crate) struct ForkServer {
    /// Known once the server has said it (a server the zygote forked is not our child).
    pid: Option<Pid>,
    /// Who forked it: we reap our own child; the zygote reaps its own.
    origin: Origin,
    /// What a server re-created by the zygote is started with (see [`ForkServer::recreate`]).
    worker_mask: SignalSet,
    config: WorkerConfig,
    sock: Option<OwnedFd>,
    /// The server's end of the socket while the server is not started ([`ForkServer::launch`]).
    unstarted: Option<OwnedFd>,
    inbuf: Vec<u8>,
    /// Requests the socket did not take yet, in order; sent when it is writable again.
    outbox: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    next_token: Token,
    /// FINISH was sent (once is enough).
    finishing: bool,
    /// The zygote could not fork the server: end of file is no news.
    start_failed: bool,
    reaped: bool,
}

impl ForkServer {
    /// The handle of a pool's fork server that is not started yet: its socket exists, and
    /// spawn requests may be queued on it before [`launch`](Self::launch) starts the server,
    /// which then finds them waiting. Without `forkpool::init()` the server is a fork of this
    /// process, and this process's fork costs 100 µs or more: asking for the first workers
    /// before it, rather than after, lets the server fork them at once instead of waiting
    /// for the building thread to finish asking (`perf sched` of 41 W6 lives on a quiet
    /// machine, 2026-12-07: 33 servers waited 130-190 µs for their first run, on the building
    /// thread's CPU, before; 70-120 µs after, while it started the dispatcher thread, which
    /// `Pool::new` has since started before the fork).
    ///
    /// `worker_mask` is the signal mask workers start with (less SIGALRM); `config` what they
    /// run.
    pub(crate) fn unstarted(
        worker_mask: SignalSet,
        config: WorkerConfig,
    ) -> io::Result<ForkServer> {
        let (ours, theirs) = sys::socketpair()?;
        sys::set_nonblocking(&ours)?;
        let mut server = ForkServer::on_socket(
            Launched {
                pid: None,
                sock: ours,
                origin: Origin::Forked,
            },
            worker_mask,
            config,
        );
        server.unstarted = Some(theirs);
        Ok(server)
    }

    /// Starts the server of a pool being built: from the zygote if `forkpool::init()` ran,
    /// else forked from this process (see [`crate::zygote`]). Call it from the thread that
    /// builds the pool; `pool_threads` of the pool's own threads may run already (they are not
    /// the program's, which the path without `init()` warns of). Does nothing the second time.
    pub(crate) fn launch(&mut self, pool_threads: usize) -> io::Result<()> {
        let Some(theirs) = self.unstarted.take() else {
            return Ok(());
        };
        let started = zygote::launch_server(self.worker_mask, self.config, theirs, pool_threads)?;
        self.pid = started.pid;
        self.origin = started.origin;
        Ok(())
    }

    /// [`unstarted`](Self::unstarted), then [`launch`](Self::launch).
    #[cfg(test)]
    pub(crate) fn start(worker_mask: SignalSet, config: WorkerConfig) -> io::Result<ForkServer> {
        let mut server = ForkServer::unstarted(worker_mask, config)?;
        server.launch(0)?;
        Ok(server)
    }

    fn on_socket(launched: Launched, worker_mask: SignalSet, config: WorkerConfig) -> ForkServer {
        ForkServer {
            pid: launched.pid,
            origin: launched.origin,
            worker_mask,
            config,
            sock: Some(launched.sock),
            unstarted: None,
            inbuf: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_token: 0,
            finishing: false,
            start_failed: false,
            reaped: false,
        }
    }

    fn fd(&self) -> Option<RawFd> {
        self.sock.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn send(&mut self, kind: u64, a: u64, fds: Vec<OwnedFd>) {
        self.send_with(kind, a, 0, fds);
    }

    fn send_with(&mut self, kind: u64, a: u64, b: u64, fds: Vec<OwnedFd>) {
        self.outbox.push_back(Outgoing {
            bytes: proto::message(kind, a, b),
            sent: 0,
            fds,
        });
        self.flush();
    }

    /// Sends queued messages until the socket is full (the rest wait for `POLLOUT`).
    fn flush(&mut self) {
        let Some(sock) = self.fd() else { return };
        while let Some(out) = self.outbox.front_mut() {
            let fds: Vec<RawFd> = if out.sent == 0 {
                out.fds.iter().map(AsRawFd::as_raw_fd).collect()
            } else {
                Vec::new()
            };
            match sys::send_some(sock, &out.bytes[out.sent..], &fds) {
                Ok(n) => {
                    out.sent += n;
                    if out.sent == MESSAGE {
                        // The server holds its own copies of the descriptors now; ours would
                        // keep the pipes open after the worker dies.
                        self.outbox.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.mark_lost(),
            }
        }
    }

    /// Reads what the socket holds without blocking, and queues the events in it.
    fn read_events(&mut self) {
        let Some(sock) = self.fd() else { return };
        let mut buf = [0u8; 4096];
        loop {
            match sys::read(sock, &mut buf) {
                Ok(n) if n > 0 => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // End of file, or a reset: the server is gone (after FINISH, as asked; the
                // dispatcher, which asked, then replaces nothing).
                _ => {
                    self.parse_events();
                    return self.mark_lost();
                }
            }
        }
        self.parse_events();
    }

    fn parse_events(&mut self) {
        let whole = self.inbuf.len() / MESSAGE * MESSAGE;
        for m in self.inbuf[..whole].chunks_exact(MESSAGE) {
            let [kind, a, b] = proto::parse(m.try_into().expect("MESSAGE bytes"));
            let event = match kind {
                SPAWNED => Event::Spawned {
                    token: a,
                    pid: b as Pid,
                },
                SPAWN_FAILED => Event::SpawnFailed {
                    token: a,
                    errno: b as i32,
                },
                EXITED => Event::Exited {
                    pid: a as Pid,
                    cause: proto::decode_status(b),
                },
                HELLO => {
                    self.pid = Some(a as Pid);
                    continue;
                }
                START_FAILED => {
                    // The zygote's answer: there is no server, and its socket closes next.
                    self.start_failed = true;
                    Event::StartFailed { errno: a as i32 }
                }
                // The server speaks no other kind; ignore rather than guess.
                _ => continue,
            };
            self.events.push_back(event);
        }
        self.inbuf.drain(..whole);
    }

    /// The server is gone: close our end, reap it, and tell the dispatcher (unless the zygote
    /// said it never forked it: StartFailed told already).
    fn mark_lost(&mut self) {
        if self.sock.is_some() {
            self.outbox.clear();
            self.reap();
            if !self.start_failed {
                self.events.push_back(Event::Lost);
            }
        }
    }

    /// Closes the socket, which tells the server to end, and reaps it. The server kills any
    /// worker still alive and reaps it before it exits.
    fn reap(&mut self) {
        let sock = self.sock.take();
        if self.reaped || self.unstarted.take().is_some() {
            // Never started: there is no process, and the requests die with the socket.
            self.reaped = true;
            return;
        }
        let Some(pid) = self.pid.filter(|_| self.origin == Origin::Forked) else {
            if let Some(sock) = sock {
                zygote::retire_server(self.pid, sock);
            }
            self.reaped = true;
            return;
        };
        // Our own child: it has exited, or is exiting, once its socket reaches end of file;
        // then a blocking wait takes microseconds. One that does not get there in time is
        // killed.
        let exited = sock.is_none_or(|sock| {
            sys::shutdown_write(sock.as_raw_fd()).is_err()
                || zygote::wait_for_eof(sock.as_raw_fd(), Instant::now() + SHUTDOWN_GRACE)
        });
        if !exited {
            sys::kill(pid);
        }
        let _ = sys::wait_blocking(pid);
        self.reaped = true;
    }

    /// **The re-creation path** for a server lost while the pool runs (killed from outside).
    ///
    /// Forking a new server now would fork the pool's parent, which has other threads by now (a
    /// lock one of them holds would stay locked in every worker), so only the zygote of
    /// `forkpool::init()` may fork it ([`zygote::relaunch_server`]); without one this refuses,
    /// and the dispatcher fails the pool's tasks with the error.
    pub(crate) fn recreate(&mut self) -> io::Result<()> {
        let launched = zygote::relaunch_server(self.worker_mask, self.config)?;
        let fresh = ForkServer::on_socket(launched, self.worker_mask, self.config);
        sys::set_nonblocking(fresh.sock.as_ref().expect("just set"))?;
        // The old server is reaped already (mark_lost); dropping it here does nothing more.
        *self = fresh;
        Ok(())
    }
}

impl Processes for ForkServer {
    fn spawn(&mut self) -> io::Result<(Token, Pipes)> {
        if self.sock.is_none() {
            return Err(server_lost());
        }
        let (task_r, task_w) = sys::pipe().map_err(sys::failed("pipe"))?;
        let (reply_r, reply_w) = sys::pipe().map_err(sys::failed("pipe"))?;
        let mut pipes = Pipes::new(task_w, reply_r)?;
        let (ledger, ledger_fd) = Ledger::create().map_err(sys::failed("memfd_create"))?;
        pipes.ledger = Some(ledger);
        let token = self.next_token;
        self.next_token += 1;
        let flags = if spin::yields_hurt() {
            proto::SPAWN_CONTENDED
        } else {
            0
        };
        self.send_with(SPAWN, token, flags, vec![task_r, reply_w, ledger_fd]);
        Ok((token, pipes))
    }

    fn kill(&mut self, pid: Pid) {
        self.send(KILL, pid as u64, Vec::new());
    }

    fn poll_fd(&self) -> Option<(RawFd, bool)> {
        Some((self.fd()?, !self.outbox.is_empty()))
    }

    fn service(&mut self, readable: bool, writable: bool) {
        if writable {
            self.flush();
        }
        if readable {
            self.read_events();
        }
    }

    fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn recreate(&mut self) -> io::Result<()> {
        ForkServer::recreate(self)
    }

    fn finish(&mut self) {
        if !self.finishing && self.sock.is_some() {
            self.finishing = true;
            self.send(FINISH, 0, Vec::new());
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        self.reap();
    }
}

/// The error for a pool whose fork server is gone.
pub(crate) fn server_lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the pool's fork server is gone (killed from outside?); the pool cannot fork workers \
         safely from a multi-threaded process, so it fails its tasks: build a new pool",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the workers of these tests run: no initializer, no limits.
    fn plain_config() -> WorkerConfig {
        WorkerConfig {
            initializer: None,
            max_tasks: None,
            max_memory: None,
            print_panics: false,
            max_frame: u64::MAX,
        }
    }

    /// A fork server played by this test: the socket's other end.
    fn fake_server() -> (ForkServer, OwnedFd) {
        let (ours, theirs) = sys::socketpair().unwrap();
        sys::set_nonblocking(&ours).unwrap();
        let mut server = ForkServer::on_socket(
            Launched {
                pid: Some(sys::getpid()),
                sock: ours,
                origin: Origin::Forked,
            },
            SignalSet::current().unwrap(),
            plain_config(),
        );
        server.reaped = true;
        (server, theirs)
    }

    /// Waits (bounded) for what the fake server side sent, and lets the handle read it.
    fn read_all_sent(server: &mut ForkServer) {
        assert!(sys::wait_readable(
            server.fd().unwrap(),
            Duration::from_secs(10)
        ));
        server.service(true, false);
    }

    /// A parent whose spins found the CPUs contended says so in each spawn request, so that
    /// the new worker's spins do not start by yielding (`server.rs` reads the flag).
    #[test]
    fn a_spawn_request_carries_the_parents_finding_of_contention() {
        spin::note_contended();
        let (mut server, theirs) = fake_server();
        let (token, _pipes) = server.spawn().unwrap();
        let mut request = [0u8; MESSAGE];
        let (n, _fds) = sys::recv_with_fds(theirs.as_raw_fd(), &mut request).unwrap();
        assert_eq!(n, MESSAGE);
        assert_eq!(
            proto::parse(&request),
            [SPAWN, token, proto::SPAWN_CONTENDED]
        );
    }

    /// Regression: a report that arrived in the same read as a spawn's answer was left in the
    /// buffer, unparsed, until the socket next woke the dispatcher, which could be never; the
    /// pool then waited forever on a dead worker.
    #[test]
    fn reports_read_along_with_a_spawn_answer_become_events() {
        let (mut server, theirs) = fake_server();
        let (token, _pipes) = server.spawn().unwrap();
        let mut request = [0u8; MESSAGE];
        let (n, fds) = sys::recv_with_fds(theirs.as_raw_fd(), &mut request).unwrap();
        assert_eq!((n, fds.len()), (MESSAGE, 3));
        let [kind, got, flags] = proto::parse(&request);
        assert_eq!([kind, got], [SPAWN, token]);
        // Another test of this process may have noted contention (see the next test).
        assert!(flags == 0 || flags == proto::SPAWN_CONTENDED, "{flags}");
        let mut answer = proto::message(SPAWNED, token, 4242).to_vec();
        answer.extend_from_slice(&proto::message(EXITED, 99, 1 << 32 | 9));
        sys::send_with_fds(theirs.as_raw_fd(), &answer, &[]).unwrap();
        read_all_sent(&mut server);
        assert_eq!(
            server.next_event(),
            Some(Event::Spawned { token, pid: 4242 })
        );
        assert_eq!(
            server.next_event(),
            Some(Event::Exited {
                pid: 99,
                cause: ExitCause::Signal(9)
            })
        );
    }

    /// Regression (issue 8, item 13): a full socket (EAGAIN) was taken as "server lost", so
    /// `terminate` with a few hundred workers lost the pool's server. Requests now queue, and go
    /// out in order once the socket drains.
    #[test]
    fn a_full_socket_queues_requests_instead_of_losing_the_server() {
        let (mut server, theirs) = fake_server();
        // Far more than a socket buffer holds (a few hundred KiB at most).
        let kills = 100_000;
        for pid in 0..kills {
            server.kill(pid);
        }
        assert!(server.poll_fd().is_some_and(|(_, write)| write));
        assert!(!server.outbox.is_empty(), "the socket cannot hold them all");
        assert_eq!(
            server.next_event(),
            None,
            "a full socket is not a lost server"
        );
        let mut got = 0u64;
        let mut buf = vec![0u8; MESSAGE * 1024];
        let mut pending = Vec::new();
        while got < kills as u64 {
            server.service(false, true);
            let n = sys::read(theirs.as_raw_fd(), &mut buf).unwrap();
            assert!(n > 0);
            pending.extend_from_slice(&buf[..n]);
            let whole = pending.len() / MESSAGE * MESSAGE;
            for m in pending[..whole].chunks_exact(MESSAGE) {
                assert_eq!(proto::parse(m.try_into().unwrap()), [KILL, got, 0]);
                got += 1;
            }
            pending.drain(..whole);
        }
        assert!(server.outbox.is_empty());
        assert_eq!(server.next_event(), None);
    }

    /// The server's first message names it: a server the zygote forked is not our child, and
    /// this is how the pool learns the pid it may have to have killed.
    #[test]
    fn the_servers_first_message_gives_its_pid() {
        let (mut server, theirs) = fake_server();
        server.pid = None;
        sys::send_with_fds(theirs.as_raw_fd(), &proto::message(HELLO, 4242, 0), &[]).unwrap();
        read_all_sent(&mut server);
        assert_eq!(server.pid, Some(4242));
        assert_eq!(server.next_event(), None, "a HELLO is no event");
    }

    /// The zygote's answer when it could not fork the server comes on the server's socket,
    /// which then closes: that is one StartFailed (for `Pool::new` to report as a failed
    /// fork), not a lost server to re-create.
    #[test]
    fn a_server_the_zygote_could_not_fork_is_a_start_failure_not_a_loss() {
        let (mut server, theirs) = fake_server();
        let failed = proto::message(START_FAILED, libc::EAGAIN as u64, 0);
        sys::send_with_fds(theirs.as_raw_fd(), &failed, &[]).unwrap();
        drop(theirs);
        read_all_sent(&mut server);
        assert_eq!(
            server.next_event(),
            Some(Event::StartFailed {
                errno: libc::EAGAIN
            })
        );
        assert_eq!(server.next_event(), None);
        assert!(server.poll_fd().is_none());
    }

    /// Issue 9, W8d: asked to finish, a real fork server exits by itself once its last worker
    /// has ended, right behind that worker's exit report, without the pool closing the socket
    /// (which cost `join` a round trip to the server, two wake-ups on a busy machine). Fails
    /// if the server ignores FINISH: it then waits for the socket to close, and the bounded
    /// wait here runs out.
    #[test]
    fn a_finishing_server_exits_after_its_last_worker_by_itself() {
        let mut server = ForkServer::start(SignalSet::current().unwrap(), plain_config()).unwrap();
        let (token, pipes) = server.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut events = Vec::new();
        let mut pipes = Some(pipes);
        let mut closed = false;
        while let Some((fd, write)) = server.poll_fd() {
            assert!(
                Instant::now() < deadline,
                "the server did not exit: {events:?}"
            );
            let mut fds = [sys::PollFd::new(fd, true, write)];
            let _ = sys::poll(&mut fds, Some(Duration::from_millis(100)));
            server.service(fds[0].readable(), fds[0].writable());
            while let Some(event) = server.next_event() {
                if matches!(event, Event::Spawned { token: t, .. } if t == token) {
                    // Our end of its task pipe closes: the worker reads end of file and exits
                    // (its reply pipe stays open, so its Ready frame cannot fail with EPIPE).
                    if let Some(pipes) = pipes.as_mut() {
                        pipes.close_tasks();
                    }
                    closed = true;
                    server.finish();
                }
                events.push(event);
            }
        }
        assert!(closed);
        drop(pipes);
        // End of file says the server is gone, as it would if it died: the dispatcher, which
        // asked it to finish, replaces nothing then.
        assert!(
            matches!(
                events[..],
                [
                    Event::Spawned { .. },
                    Event::Exited {
                        cause: ExitCause::Exited(0),
                        ..
                    },
                    Event::Lost
                ]
            ),
            "{events:?}"
        );
        assert!(server.reaped, "reaped as it exited");
    }

    /// The first workers of a pool are asked for before its server starts, and the server,
    /// a real fork of this process, forks them from the requests it finds waiting.
    #[test]
    fn requests_queued_before_the_server_starts_are_served() {
        let mut server =
            ForkServer::unstarted(SignalSet::current().unwrap(), plain_config()).unwrap();
        let mut asked: Vec<(Token, Pipes)> = (0..2).map(|_| server.spawn().unwrap()).collect();
        assert!(server.pid.is_none(), "no process before launch");
        server.launch(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut spawned = Vec::new();
        while spawned.len() < asked.len() {
            assert!(Instant::now() < deadline, "not spawned: {spawned:?}");
            let (fd, write) = server.poll_fd().expect("the server is alive");
            let mut fds = [sys::PollFd::new(fd, true, write)];
            let _ = sys::poll(&mut fds, Some(Duration::from_millis(100)));
            server.service(fds[0].readable(), fds[0].writable());
            while let Some(event) = server.next_event() {
                match event {
                    Event::Spawned { token, .. } => spawned.push(token),
                    other => panic!("{other:?}"),
                }
            }
        }
        spawned.sort_unstable();
        assert_eq!(spawned, asked.iter().map(|(t, _)| *t).collect::<Vec<_>>());
        // The workers read end of file and exit; dropping the server reaps it (it kills and
        // reaps whatever is left, bounded).
        for (_, pipes) in &mut asked {
            pipes.close_tasks();
        }
        drop(server);
    }

    /// A pool whose server could not be started drops its handle: no process to wait for,
    /// and the requests, with the workers' ends of their pipes, go with the socket.
    #[test]
    fn an_unstarted_server_drops_its_requests_with_its_socket() {
        let mut server =
            ForkServer::unstarted(SignalSet::current().unwrap(), plain_config()).unwrap();
        let (_, pipes) = server.spawn().unwrap();
        assert_eq!(sys::write(pipes.tasks().as_raw_fd(), b"x").unwrap(), 1);
        drop(server);
        // The worker's end of the task pipe was only in the request: now nobody reads.
        let err = sys::write(pipes.tasks().as_raw_fd(), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn end_of_file_on_the_socket_is_a_lost_server() {
        let (mut server, theirs) = fake_server();
        drop(theirs);
        server.service(true, false);
        assert_eq!(server.next_event(), Some(Event::Lost));
        assert!(server.poll_fd().is_none());
        assert!(server.spawn().is_err());
    }
}
