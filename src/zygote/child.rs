//! The zygote's side: a single-threaded process, forked by [`init`](crate::init), that forks
//! a fork server for each pool built later, and nothing else.
//!
//! It loops on `poll` over its socket to the program and a self-pipe that SIGCHLD writes to. On
//! each [`START`] it forks a fork server on the attached socket ([`crate::server::serve`]),
//! which announces itself on that socket (or the zygote writes there why it could not fork it); it reaps every server that ends (so none stays a zombie) and SIGKILLs
//! one when asked, only while that server is still unreaped, so a kill never hits a reused
//! pid. When the socket reaches end of file (the program ended, or died) it exits; the servers
//! it forked die with it (PR_SET_PDEATHSIG), and their workers with them. It never returns or
//! unwinds into the code that forked it: [`serve`] ends the process with `_exit`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};

use super::proto::{self, KILL, MESSAGE, START};
use crate::server;
use crate::sys::{self, Pid, PollFd};

/// Exit status of a zygote whose loop panicked or whose socket failed.
const EXIT_BROKEN: i32 = 124;

/// Serves requests on `sock` until the program closes it, then ends the process.
pub(super) fn serve(sock: RawFd) -> ! {
    let code = panic::catch_unwind(AssertUnwindSafe(|| match serve_loop(sock) {
        Ok(()) => 0,
        Err(_) => EXIT_BROKEN,
    }));
    sys::exit_now(code.unwrap_or(EXIT_BROKEN))
}

fn serve_loop(sock: RawFd) -> io::Result<()> {
    sys::prefer_short_slice();
    let (sigchld_r, sigchld_w) = sys::pipe()?;
    sys::set_nonblocking(&sigchld_r)?;
    sys::set_nonblocking(&sigchld_w)?;
    sys::notify_sigchld(&sigchld_w)?;
    let me = sys::getpid();
    let mut live: Vec<Pid> = Vec::new();
    loop {
        while let Some((pid, _)) = sys::wait_any()? {
            live.retain(|&p| p != pid);
        }
        let mut fds = [
            PollFd::new(sock, true, false),
            PollFd::new(sigchld_r.as_raw_fd(), true, false),
        ];
        sys::poll(&mut fds, None)?;
        if fds[1].readable() {
            let mut drain = [0u8; 64];
            while matches!(sys::read(sigchld_r.as_raw_fd(), &mut drain), Ok(n) if n > 0) {}
        }
        if !fds[0].readable() {
            continue;
        }
        let mut buf = [0u8; MESSAGE];
        let (n, attached) = sys::recv_with_fds(sock, &mut buf)?;
        if n == 0 {
            return Ok(()); // the program closed its end: it is done, or dead
        }
        sys::read_exact(sock, &mut buf[n..])?;
        let words = proto::decode(&buf);
        match words[0] {
            START => {
                let Ok([server_sock]) = <[_; 1]>::try_from(attached) else {
                    // No socket to answer on (our parent always sends one): ignore it, after
                    // taking the argument bytes that follow it.
                    let mut arg = vec![0u8; proto::start_arg_len(&words) as usize];
                    sys::read_exact(sock, &mut arg)?;
                    continue;
                };
                // The initializer's argument follows the message; it lives as long as this
                // process (every server forked from here needs it).
                let mut arg = vec![0u8; proto::start_arg_len(&words) as usize];
                sys::read_exact(sock, &mut arg)?;
                let arg: &'static [u8] = Box::leak(arg.into_boxed_slice());
                // SAFETY: the message came from our parent, a process of the same program
                // image, which built it with start_request and sent the argument after it.
                let spec = unsafe { proto::parse_start(&words, arg) };
                // SAFETY: this process is single-threaded, so the child holds no lock another
                // thread could have held; in the child only child_setup and server::serve run,
                // and serve ends in _exit.
                match unsafe { sys::fork() } {
                    Ok(0) => {
                        let mask = sys::helper_mask();
                        // SAFETY: we are the freshly forked child.
                        let [s] = unsafe { sys::child_setup(me, &mask, [server_sock.as_raw_fd()]) };
                        server::serve(s, spec.worker_mask.to_sigset(), spec.config);
                    }
                    // The server says its pid itself, on its own socket (crate::proto::HELLO).
                    Ok(pid) => live.push(pid),
                    Err(e) => {
                        // Answered on the server's socket, where the pool waits for its HELLO;
                        // a pool already gone makes this fail, which is no concern of ours.
                        let errno = e.raw_os_error().unwrap_or(libc::EAGAIN) as u64;
                        let failed = crate::proto::message(crate::proto::START_FAILED, errno, 0);
                        let _ = sys::send_with_fds(server_sock.as_raw_fd(), &failed, &[]);
                    }
                }
                // `server_sock` drops here: only the server holds it now.
            }
            KILL => {
                let pid = proto::pid(words[1]);
                // Only a live, unreaped child: its pid cannot have been reused.
                if live.contains(&pid) {
                    sys::kill(pid);
                }
            }
            _ => {}
        }
    }
}
