//! Thin wrappers over the libc calls the pool needs: the only module that calls `libc` directly.
//!
//! Each wrapper turns `-1` into [`io::Error::last_os_error`] and retries on `EINTR` where a retry
//! is the right answer. Descriptors are [`OwnedFd`] and are made close-on-exec, so a task that
//! spawns a program never hands it a pool pipe.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Turns a libc return value of `-1` into the current `errno` as an [`io::Error`].
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every call site passes arguments that satisfy the libc function's contract;
        // each one says why in its own SAFETY comment.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// A process id of a worker. Plain data: signalling it is only sound while it is unreaped.
pub(crate) type Pid = libc::pid_t;

/// Makes a pipe whose two ends are close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        // SAFETY: `fds` is a valid array of two ints for pipe to fill.
        syscall!(pipe(fds.as_mut_ptr()))?;
        for fd in fds {
            // SAFETY: `fd` was just returned by pipe and is open.
            syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
        }
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// Moves a descriptor that landed on 0, 1 or 2 (the parent runs with stdio closed) to the lowest
/// free number from 3 up, close-on-exec: else a worker, which keeps 0-2 as its stdio, would
/// write its panic lines into a pool pipe or socket (issue 8, item 13).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; `fd` is open while borrowed.
    let moved = syscall!(fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3))?;
    // SAFETY: fcntl succeeded, so `moved` is open and owned by nobody else; `fd` closes on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Asks for a pipe buffer of `bytes` (Linux `F_SETPIPE_SZ`), and returns whether it was set.
/// Fewer, larger transfers mean fewer wakeups for large payloads. Best effort: an unprivileged
/// user past its pipe quota keeps the default 64 KiB, which only costs speed; a pipe holding
/// more than `bytes` refuses to shrink (`EBUSY`) until it is read.
pub(crate) fn grow_pipe(fd: &OwnedFd, bytes: usize) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ takes an int and changes only the pipe's capacity.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) != -1
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, bytes);
        false
    }
}

/// Asks the kernel to back the 2 MiB-aligned part of `buf`'s spare capacity with transparent
/// huge pages (Linux `MADV_HUGEPAGE`), so that a large frame read into it takes one page fault
/// per 2 MiB instead of one per 4 KiB (a fresh 64 MiB buffer read in 4 KiB pages cost more
/// than the copy itself). Only a hint: where THP is off (or not Linux) nothing changes, and
/// the memory stays the allocator's.
pub(crate) fn advise_huge(buf: &mut Vec<u8>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let spare = buf.spare_capacity_mut();
        let start = spare.as_mut_ptr() as usize;
        let end = start + spare.len();
        let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if last > first {
            // SAFETY: [first, last) lies inside the Vec's own allocation, which stays mapped
            // while `buf` is borrowed; MADV_HUGEPAGE changes no contents and no permissions.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Puts a descriptor in non-blocking mode.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: `fd` is open for as long as the borrowed OwnedFd lives.
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    // SAFETY: as above; O_NONBLOCK is a valid status flag.
    syscall!(fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    Ok(())
}

/// `read(2)`, retried on `EINTR`. `Ok(0)` is end of file.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        match syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len())) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|n| n as usize),
        }
    }
}

/// Reads exactly `buf.len()` bytes from a blocking descriptor; end of file before that is
/// `UnexpectedEof`.
pub(crate) fn read_exact(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    let mut n = 0;
    while n < buf.len() {
        match read(fd, &mut buf[n..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            k => n += k,
        }
    }
    Ok(())
}

/// `read(2)` of at most `max` bytes into the spare capacity of `buf`, extending its length by
/// what was read. `Ok(0)` is end of file.
pub(crate) fn read_into_spare(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let max = max.min(spare.len());
    loop {
        // SAFETY: the spare capacity is valid for writes of `max` bytes; read never reads it.
        match syscall!(read(fd, spare.as_mut_ptr().cast(), max)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(n) => {
                let n = n as usize;
                // SAFETY: the kernel initialized the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
        }
    }
}

/// `write(2)`, retried on `EINTR`.
pub(crate) fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        match syscall!(write(fd, buf.as_ptr().cast(), buf.len())) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|n| n as usize),
        }
    }
}

/// `writev(2)` of up to [`IOV_MAX`] slices, retried on `EINTR`.
pub(crate) fn writev(fd: RawFd, bufs: &[&[u8]]) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .take(IOV_MAX)
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    loop {
        // SAFETY: each iovec points into a slice borrowed for the duration of the call.
        match syscall!(writev(fd, iov.as_ptr(), iov.len() as libc::c_int)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|n| n as usize),
        }
    }
}

/// Hands the pages under `buf` to the pipe `fd` without copying them (Linux `vmsplice(2)`),
/// and returns how many bytes went in; `nonblocking` makes a full pipe an `EWOULDBLOCK` error
/// rather than a wait. Elsewhere, and where the kernel refuses (not a pipe), it falls back to
/// `write(2)`.
///
/// The pipe holds references to the pages, not a copy of the bytes: a reader gets what the
/// pages hold when it reads. So the caller must leave the bytes unchanged, and keep the
/// allocation from being reused, until the reader has read them (a reader that never will, a
/// dead worker, does not matter: the pages stay valid for the pipe whatever the caller does).
pub(crate) fn vmsplice(fd: RawFd, buf: &[u8], nonblocking: bool) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        let iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let flags = if nonblocking {
            libc::SPLICE_F_NONBLOCK
        } else {
            0
        };
        loop {
            // SAFETY: the iovec points into `buf`, borrowed for the call; vmsplice only reads
            // the memory (it takes page references, which keep the pages alive on their own).
            match syscall!(vmsplice(fd, &iov, 1, flags)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EBADF)) => {
                    return write(fd, buf)
                }
                other => return other.map(|n| n as usize),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nonblocking;
        write(fd, buf)
    }
}

/// How many bytes the pipe `fd` (either end) holds unread (`FIONREAD`), if the kernel says.
pub(crate) fn pipe_unread(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid for that.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (r == 0).then_some(n.max(0) as usize)
}

/// The most slices [`writev`] passes to the kernel in one call (POSIX guarantees 16; Linux 1024).
pub(crate) const IOV_MAX: usize = 64;

/// What [`poll`] watches one descriptor for, and what it found.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub(crate) struct PollFd(libc::pollfd);

impl PollFd {
    pub(crate) fn new(fd: RawFd, read: bool, write: bool) -> PollFd {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        PollFd(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }
    /// Readable, or at end of file, or in error: a read will not block.
    pub(crate) fn readable(&self) -> bool {
        self.0.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
    /// Writable, or the reader is gone: a write will not block.
    pub(crate) fn writable(&self) -> bool {
        self.0.revents & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// `poll(2)`; `None` waits without a bound. `EINTR` counts as a wakeup with nothing ready.
pub(crate) fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: PollFd is #[repr(transparent)] over libc::pollfd, and `fds` is a valid
    // slice of them for poll to read and write.
    match syscall!(poll(fds.as_mut_ptr().cast(), fds.len() as libc::nfds_t, ms)) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        other => other.map(|n| n as usize),
    }
}

/// [`poll`] with a timeout to the microsecond (`ppoll`), where `poll` counts whole
/// milliseconds and so turns a shorter wait into a look that returns at once. For a loop that
/// naps for less than a millisecond between other work (an MPI relay between its looks at
/// MPI), which would otherwise spin.
pub(crate) fn poll_precise(fds: &mut [PollFd], timeout: Duration) -> io::Result<usize> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: as in `poll`; `ts` is a valid timespec that ppoll only reads, and a null signal
    // mask leaves the thread's mask as it is.
    match syscall!(ppoll(
        fds.as_mut_ptr().cast(),
        fds.len() as libc::nfds_t,
        &ts,
        std::ptr::null()
    )) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        other => other.map(|n| n as usize),
    }
}

/// Spins up to `limit` until `fd` is readable, yielding the CPU between looks; returns whether
/// it is. For the moment before a blocking read, when data is likely to arrive soon.
pub(crate) fn wait_readable(fd: RawFd, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    let mut fds = [PollFd::new(fd, true, false)];
    loop {
        if matches!(poll(&mut fds, Some(Duration::ZERO)), Ok(n) if n > 0) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Sleeps until `fd` is readable or `limit` passes; true if it is readable (or the wait was
/// interrupted or failed: the read that follows finds out).
pub(crate) fn readable_within(fd: RawFd, limit: Duration) -> bool {
    let mut fds = [PollFd::new(fd, true, false)];
    !matches!(poll(&mut fds, Some(limit)), Ok(0))
}

/// How a process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// `waitpid(pid, WNOHANG)`: `Ok(None)` while the process still runs.
///
/// Only ever called with the pid of one of our own unreaped workers, so the user's other children
/// keep their exit statuses for their own `wait`.
pub(crate) fn try_wait(pid: Pid) -> io::Result<Option<WaitStatus>> {
    wait(pid, libc::WNOHANG)
}

/// `waitpid(pid, 0)`: blocks until the process has ended and reaps it.
pub(crate) fn wait_blocking(pid: Pid) -> io::Result<WaitStatus> {
    wait(pid, 0).map(|s| s.expect("waitpid without WNOHANG returned no status"))
}

fn wait(pid: Pid, flags: libc::c_int) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for waitpid to fill.
        match syscall!(waitpid(pid, &mut status, flags)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(0) => return Ok(None),
            Ok(_) => break,
        }
    }
    Ok(Some(decode_status(status)))
}

fn decode_status(status: libc::c_int) -> WaitStatus {
    if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    }
}

/// Sends SIGKILL. The caller guarantees that `pid` is one of its children that it has not reaped,
/// so the pid cannot have been reused by an unrelated process.
pub(crate) fn kill(pid: Pid) {
    // SAFETY: kill has no memory-safety preconditions; see the contract above for the pid.
    // It can only fail with ESRCH for a child already dead, which is fine.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The calling thread's signal mask, with SIGPIPE added.
///
/// The dispatcher thread blocks SIGPIPE so that writing to a dead worker's pipe returns `EPIPE`
/// instead of killing a program that did not ignore SIGPIPE. Returns the previous mask, which a
/// forked worker restores.
pub(crate) fn block_sigpipe() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset and sigaddset initialize it before use, and
    // pthread_sigmask only reads `set` and writes `old`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(old)
    }
}

/// A connected pair of Unix stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let kind = libc::SOCK_STREAM;
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    syscall!(socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()))?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    for fd in fds {
        // SAFETY: `fd` was just returned by socketpair and is open.
        syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
    }
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(a)?, above_stdio(b)?))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// The most descriptors one message carries.
const MAX_FDS: usize = 3;

/// Room for a control message carrying [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C)]
union ControlBuf {
    _align: libc::cmsghdr,
    bytes: [u8; 64],
}

/// Sends all of `bytes` on a stream socket, with `fds` attached (SCM_RIGHTS) to the first byte.
/// The sender's copies of the descriptors stay open; the receiver gets its own.
pub(crate) fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let fds = if sent == 0 { fds } else { &[] };
        sent += send_some(sock, &bytes[sent..], fds)?;
    }
    Ok(())
}

/// One `sendmsg` of as much of `bytes` as the socket takes, with `fds` attached (SCM_RIGHTS) to
/// the first byte; retried on `EINTR`. Returns how many bytes went (at least one on success);
/// on a non-blocking socket that is full, `WouldBlock` and nothing sent.
pub(crate) fn send_some(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= MAX_FDS);
    loop {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let mut control = ControlBuf { bytes: [0; 64] };
        // SAFETY: msghdr is plain data; every pointer in it refers to locals that outlive the
        // sendmsg call, and the control buffer is large enough and aligned for the header and
        // MAX_FDS descriptors (CMSG_SPACE of 12 bytes is at most 32 bytes).
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                let data_len = std::mem::size_of_val(fds) as libc::c_uint;
                msg.msg_control = control.bytes.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                    fds.len(),
                );
            }
            libc::sendmsg(sock, &msg, SEND_FLAGS)
        };
        if n == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n as usize);
    }
}

/// Receives up to `buf.len()` bytes from a stream socket, and the descriptors sent with them
/// (made close-on-exec). `Ok((0, _))` is end of file.
pub(crate) fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = libc::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = 0;
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = ControlBuf { bytes: [0; 64] };
        // SAFETY: msghdr is plain data whose pointers refer to locals that outlive the call; the
        // kernel writes at most msg_controllen bytes of control data and buf.len() bytes of data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: writing a Copy field of a union is safe to do; reading it back is below.
        msg.msg_control = unsafe { control.bytes.as_mut_ptr().cast() };
        msg.msg_controllen = 64;
        // SAFETY: see above.
        let n = unsafe { libc::recvmsg(sock, &mut msg, flags) };
        if n == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut fds = Vec::new();
        // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR/NXTHDR walk it within
        // msg_controllen, and each SCM_RIGHTS payload is an array of descriptors now owned by
        // this process.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        #[cfg(not(any(target_os = "linux", target_os = "android")))]
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let fds = fds
            .into_iter()
            .map(above_stdio)
            .collect::<io::Result<_>>()?;
        return Ok((n as usize, fds));
    }
}

/// `waitpid(-1, WNOHANG)`: reaps any one child that has ended. Only helpers call it, whose only
/// children are their own: the zygote (its fork servers) and, through [`reap_any_worker`] off
/// Linux, the fork server (its workers).
pub(crate) fn wait_any() -> io::Result<Option<(Pid, WaitStatus)>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for waitpid to fill.
        match syscall!(waitpid(-1, &mut status, libc::WNOHANG)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
            Err(e) => return Err(e),
            Ok(0) => return Ok(None),
            Ok(pid) => return Ok(Some((pid, decode_status(status)))),
        }
    }
}

/// Where the SIGCHLD handler of the fork server writes its wakeup byte.
static SIGCHLD_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGCHLD_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: write is async-signal-safe; errno is saved and restored around it, as a handler
    // must. A full pipe already holds a wakeup.
    unsafe {
        let saved = *errno_location();
        libc::write(fd, [1u8].as_ptr().cast(), 1);
        *errno_location() = saved;
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { libc::__errno_location() }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: __error returns the calling thread's errno slot.
    unsafe { libc::__error() }
}

/// Makes SIGCHLD write a byte to `pipe` (the self-pipe trick), so a `poll` on its read end
/// wakes when a child ends. For the single-threaded fork server only.
pub(crate) fn notify_sigchld(pipe: &OwnedFd) -> io::Result<()> {
    SIGCHLD_PIPE.store(pipe.as_raw_fd(), std::sync::atomic::Ordering::Relaxed);
    // SAFETY: sigaction is plain data, initialized before use; the handler only calls
    // async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Arms (or with `None`, disarms) this process's real-time interval timer: when it fires,
/// SIGALRM ends the process (workers keep SIGALRM's default action). A task's time limit.
pub(crate) fn set_alarm(limit: Option<Duration>) {
    let value = limit.map_or(
        libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        |d| libc::timeval {
            tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
            // A zero timeval disarms the timer; a limit must arm it.
            tv_usec: (d.subsec_micros() as libc::suseconds_t).max(if d.as_secs() == 0 {
                1
            } else {
                0
            }),
        },
    );
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: value,
    };
    // SAFETY: setitimer reads `timer` and writes nothing (the old value pointer is null).
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}

/// This process's resident set size in bytes: the current one on Linux (`/proc/self/statm`),
/// elsewhere the peak (`getrusage`), which is what a memory cap can check there.
pub(crate) fn resident_bytes() -> u64 {
    #[cfg(target_os = "linux")]
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
            return pages * page;
        }
    }
    // SAFETY: rusage is plain data for getrusage to fill.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    // Linux reports ru_maxrss in KiB, macOS in bytes.
    let scale = if cfg!(target_os = "macos") { 1 } else { 1024 };
    usage.ru_maxrss as u64 * scale
}

/// `fork(2)`. Returns the child's pid in the parent, 0 in the child.
///
/// # Safety
/// In the child only async-signal-safe work may follow until the child ends in [`exit_now`]
/// (glibc's malloc is safe to use after fork: it resets its locks in the child). The child must
/// not touch any lock another thread of the parent could have held, and must never return into
/// the caller's code.
pub(crate) unsafe fn fork() -> io::Result<Pid> {
    syscall!(fork())
}

/// Child-side setup of a freshly forked pool process (the fork server or a worker): die with
/// the parent, shrug off Ctrl-C, restore default SIGCHLD handling and the given signal mask, and
/// close every descriptor except stdio and the `keep` ones, which end up numbered 3, 4, ... in
/// order (close-on-exec).
///
/// # Safety
/// Only to be called in a freshly forked child: it closes descriptors that the parent's other
/// threads own (in the parent they stay open, since the child has its own descriptor table).
pub(crate) unsafe fn child_setup<const N: usize>(
    parent: Pid,
    mask: &libc::sigset_t,
    keep: [RawFd; N],
) -> [RawFd; N] {
    // SAFETY: prctl, getppid, sigaction and pthread_sigmask are async-signal-safe and touch only
    // this process's own attributes; `mask` and `action` are valid, initialized structures.
    unsafe {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        // The parent may have died before PR_SET_PDEATHSIG took hold.
        if libc::getppid() != parent {
            exit_now(0);
        }
        // Ctrl-C is for the pool's owner to handle. A handler that does nothing, rather than
        // SIG_IGN: exec resets handlers but keeps SIG_IGN, and programs a task starts should
        // still stop on Ctrl-C.
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        // The fork server catches SIGTERM (see catch_parent_death); a worker must not inherit
        // that handler.
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        // A task's time limit is a SIGALRM timer whose default action ends the worker.
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
    // Move the kept descriptors to 3, 4, ..., through numbers above all targets so that no dup2
    // clobbers another, then close everything above them.
    let first_free = 3 + N as RawFd;
    let mut high = [-1; N];
    for (h, &fd) in high.iter_mut().zip(&keep) {
        *h = dup_at_least(fd, first_free);
        if *h == -1 {
            exit_now(EXIT_SETUP_FAILED);
        }
    }
    let mut moved = [-1; N];
    for (i, &h) in high.iter().enumerate() {
        moved[i] = 3 + i as RawFd;
        if dup_cloexec(h, moved[i]) == -1 {
            exit_now(EXIT_SETUP_FAILED);
        }
    }
    // SAFETY: the contract of this function: we are a fresh child and may close what we like.
    unsafe { close_from(first_free) };
    moved
}

/// The worker's SIGINT handler: does nothing, so the signal neither kills the worker nor is
/// ignored by the programs it execs.
extern "C" fn ignore_signal(_: libc::c_int) {}

/// `fcntl(F_DUPFD_CLOEXEC)`: a copy of `fd` numbered `min` or above, or -1.
fn dup_at_least(fd: RawFd, min: RawFd) -> RawFd {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; `fd` is open in this process.
    unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) }
}

/// `dup2(fd, target)` with the copy made close-on-exec, or -1.
fn dup_cloexec(fd: RawFd, target: RawFd) -> RawFd {
    // SAFETY: dup2 and fcntl(F_SETFD) have no memory-safety preconditions; the caller owns
    // `target` (a fresh child replacing whatever was there).
    unsafe {
        if libc::dup2(fd, target) == -1 {
            return -1;
        }
        libc::fcntl(target, libc::F_SETFD, libc::FD_CLOEXEC)
    }
}

/// Exit code of a worker whose setup after fork failed.
pub(crate) const EXIT_SETUP_FAILED: i32 = 120;

/// Closes every descriptor numbered `first` or above.
///
/// # Safety
/// Closes descriptors that other code may own; only for a freshly forked child.
unsafe fn close_from(first: RawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: close_range only closes descriptors; the caller allows closing all from `first`.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    } == 0
    {
        return;
    }
    // SAFETY: rlimit is plain data for getrlimit to fill; closing is allowed by the contract.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            (limit.rlim_cur as u64).min(1 << 20) as RawFd
        } else {
            1 << 16
        };
        for fd in first..max {
            libc::close(fd);
        }
    }
}

/// Ends the calling process at once, running no destructors and no atexit handlers: the only
/// way a forked worker ever ends.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// `getpid(2)`.
pub(crate) fn getpid() -> Pid {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The conventional name of a signal, for error messages.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}

// ---------------------------------------------------------------------------------------------
// Wrappers for the zygote and for forking helpers from a threaded process (src/zygote/).
// ---------------------------------------------------------------------------------------------

/// How many threads this process runs, from `/proc/self/task`, less the crate's own threads
/// that are ending ([`EndingThread`]); `None` where that cannot be read (not Linux, no /proc).
pub(crate) fn thread_count() -> Option<usize> {
    let tasks = listed_threads()?;
    let mut ending = ENDING.lock().unwrap_or_else(PoisonError::into_inner);
    Some(count_besides_ending(&tasks, &mut ending))
}

/// The ids of this process's threads, from `/proc/self/task`.
fn listed_threads() -> Option<Vec<Pid>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
    )
}

/// Thread ids of the crate's threads that noted they are ending, until they leave
/// `/proc/self/task`. Only the parent's threads touch it; a forked helper never does.
static ENDING: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

/// How many ending threads [`ENDING`] keeps before it forgets those gone: a program that never
/// counts its threads (one that called `init()`) builds pools without end, and each pool's
/// thread is noted as it ends.
const ENDING_KEPT: usize = 32;

/// `tasks` less those in `ending`, which keeps only the ids still in `tasks`: a thread gone
/// from the list is not looked for again (and its id, if the kernel ever reuses it, is
/// counted).
fn count_besides_ending(tasks: &[Pid], ending: &mut Vec<Pid>) -> usize {
    forget_gone(ending, tasks);
    tasks.len() - ending.len()
}

/// Keeps in `ending` only the ids still listed in `tasks`.
fn forget_gone(ending: &mut Vec<Pid>, tasks: &[Pid]) {
    ending.retain(|listed| tasks.contains(listed));
}

/// Held by each thread the crate starts (a dispatcher, the callback thread, a map's feeder, an
/// MPI thread): dropped as the thread ends, it has [`thread_count`] no longer count it. `join`
/// returns once the kernel has cleared the thread's id, a moment before the thread leaves the
/// thread group: a program that built and dropped pools one after the other was otherwise
/// sometimes told that it "already runs 2 threads" (2 of 20 processes of 60 lives each).
pub(crate) struct EndingThread;

impl Drop for EndingThread {
    fn drop(&mut self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as Pid;
            let mut ending = ENDING.lock().unwrap_or_else(PoisonError::into_inner);
            if ending.len() >= ENDING_KEPT {
                match listed_threads() {
                    Some(tasks) => forget_gone(&mut ending, &tasks),
                    None => ending.clear(),
                }
            }
            ending.push(tid);
        }
    }
}

/// True on the process's main thread (the one whose thread id is the process id). Where that
/// cannot be told, false: the caller then takes the cautious path.
pub(crate) fn is_main_thread() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as Pid;
        tid == getpid()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    false
}

/// Cancels `PR_SET_PDEATHSIG` in this process: for a helper forked by a thread that may end
/// before the process does (the death signal follows the forking *thread*). Such a helper
/// notices its parent's death by end of file on its socket instead.
pub(crate) fn clear_parent_death_signal() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: prctl(PR_SET_PDEATHSIG, 0) only changes an attribute of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong, 0, 0, 0);
    }
}

/// `shutdown(fd, SHUT_WR)`: the peer reads end of file while this side can still read.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown has no memory-safety preconditions.
    syscall!(shutdown(fd, libc::SHUT_WR)).map(drop)
}

/// The highest signal number a [`SignalSet`] holds.
const MAX_SIGNAL: i32 = 64;

/// A set of signals as plain bits (bit `n - 1` is signal `n`), so that a signal mask can travel
/// between processes as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SignalSet(pub(crate) u64);

impl SignalSet {
    /// The calling thread's signal mask.
    pub(crate) fn current() -> io::Result<SignalSet> {
        // SAFETY: sigset_t is plain data; pthread_sigmask with a null new set only writes the
        // current mask into `mask`.
        let mask = unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            mask
        };
        Ok(SignalSet::from_sigset(&mask))
    }

    /// The bits of a `sigset_t`.
    pub(crate) fn from_sigset(mask: &libc::sigset_t) -> SignalSet {
        let mut bits = 0;
        for sig in 1..=MAX_SIGNAL {
            // SAFETY: sigismember only reads an initialized set; an invalid signal number
            // returns -1, which is not 1.
            if unsafe { libc::sigismember(mask, sig) } == 1 {
                bits |= 1 << (sig - 1);
            }
        }
        SignalSet(bits)
    }

    /// The `sigset_t` with these bits.
    pub(crate) fn to_sigset(self) -> libc::sigset_t {
        // SAFETY: sigemptyset initializes the set; sigaddset of an invalid number fails and
        // changes nothing.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut mask);
            for sig in 1..=MAX_SIGNAL {
                if self.0 & (1 << (sig - 1)) != 0 {
                    libc::sigaddset(&mut mask, sig);
                }
            }
            mask
        }
    }

    /// This set with `sig` added.
    pub(crate) fn with(self, sig: i32) -> SignalSet {
        SignalSet(self.0 | 1 << (sig - 1))
    }

    /// This set with `sig` removed.
    pub(crate) fn without(self, sig: i32) -> SignalSet {
        SignalSet(self.0 & !(1 << (sig - 1)))
    }
}

/// The signal mask of a pool's helper processes (the zygote, a fork server): only SIGPIPE is
/// blocked (they write to sockets whose reader may be gone); SIGCHLD, which tells them a child
/// ended, and everything else are delivered, whatever the mask of the thread that forked them.
pub(crate) fn helper_mask() -> libc::sigset_t {
    SignalSet::default().with(libc::SIGPIPE).to_sigset()
}

#[cfg(test)]
mod zygote_wrapper_tests {
    use super::*;

    #[test]
    fn a_signal_set_round_trips_through_a_sigset() {
        let set = SignalSet::default()
            .with(libc::SIGCHLD)
            .with(libc::SIGPIPE)
            .with(64)
            .without(libc::SIGPIPE);
        assert_eq!(SignalSet::from_sigset(&set.to_sigset()), set);
        assert_eq!(
            SignalSet::from_sigset(&helper_mask()),
            SignalSet::default().with(libc::SIGPIPE)
        );
    }

    #[test]
    fn ending_threads_are_not_counted_while_listed_and_forgotten_once_gone() {
        let mut ending = vec![12, 99];
        // 12 is still listed (it has not left the thread group yet); 99 has gone.
        assert_eq!(count_besides_ending(&[10, 11, 12], &mut ending), 2);
        assert_eq!(ending, [12]);
        // Once 12 has gone too, nothing is subtracted and nothing is remembered.
        assert_eq!(count_besides_ending(&[10, 11], &mut ending), 2);
        assert!(ending.is_empty());
    }

    /// A program that never counts its threads (it called `init()`) still keeps only a few
    /// ending threads noted, however many pools' threads end.
    #[test]
    fn ending_threads_noted_stay_few_however_many_end() {
        for _ in 0..200 {
            std::thread::spawn(|| drop(EndingThread)).join().unwrap();
        }
        let noted = ENDING.lock().unwrap().len();
        // Other tests' threads may be ending too, a few at a time.
        assert!(noted <= ENDING_KEPT + 8, "{noted} ending threads noted");
    }

    #[test]
    fn the_current_mask_is_read_and_threads_are_counted() {
        let before = SignalSet::current().unwrap();
        let seen = std::thread::spawn(|| {
            let set = SignalSet::default().with(libc::SIGUSR2).to_sigset();
            // SAFETY: a valid, initialized set; this thread's mask only.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
            (SignalSet::current().unwrap(), thread_count())
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, before.with(libc::SIGUSR2));
        if cfg!(target_os = "linux") {
            assert!(seen.1.unwrap() >= 2, "{:?}", seen.1);
        }
    }
}
// Process hygiene: names, process groups, parent death, resource limits, and
// errors that name the call that failed.
// ---------------------------------------------------------------------------------------------

/// An [`io::Error`] that says which system call failed, carried inside an `io::Error` (of the
/// same kind) through code that only knows `io::Result`; [`Error::io`](crate::Error) unwraps it
/// into `Error::Io { op: call, .. }`.
#[derive(Debug)]
pub(crate) struct Failed {
    call: &'static str,
    source: io::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.call, self.source)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Failed {
    /// Splits an error made by [`failed`] into the call's name and the original error; any
    /// other error comes back as it is, with no name.
    pub(crate) fn unwrap(e: io::Error) -> (Option<&'static str>, io::Error) {
        if e.get_ref().is_some_and(|inner| inner.is::<Failed>()) {
            let inner = e.into_inner().expect("checked above");
            let failed = inner.downcast::<Failed>().expect("checked above");
            return (Some(failed.call), failed.source);
        }
        (None, e)
    }
}

/// Names the call an `io::Error` came from: `sys::pipe().map_err(sys::failed("pipe"))`.
pub(crate) fn failed(call: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |source| {
        if source.get_ref().is_some_and(|inner| inner.is::<Failed>()) {
            return source; // already named, by a deeper call
        }
        io::Error::new(source.kind(), Failed { call, source })
    }
}

/// Names the calling process (Linux `PR_SET_NAME`: what `ps`, `top` and `/proc/PID/comm`
/// show; at most 15 bytes are kept). Best effort; a no-op elsewhere. For a forked pool process,
/// whose only thread is the one that names it.
pub(crate) fn set_process_name(name: &std::ffi::CStr) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: PR_SET_NAME reads a NUL-terminated string, which a CStr is, and changes only the
    // calling thread's name.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = name;
}

/// Makes the calling process the leader of a new process group whose id is its pid
/// (`setpgid(0, 0)`), so that the programs it starts can be killed with it as one group.
pub(crate) fn own_process_group() -> io::Result<()> {
    // SAFETY: setpgid has no memory-safety preconditions.
    syscall!(setpgid(0, 0)).map(drop)
}

/// SIGKILLs a worker and its whole process group: the programs its tasks started, unless they
/// left the group (`setsid`, `setpgid`).
///
/// The caller guarantees that `pid` is one of its children that it has not reaped: neither
/// the pid nor the group id (the same number) can then belong to anyone else.
pub(crate) fn kill_worker(pid: Pid) {
    // SAFETY: kill has no memory-safety preconditions; see the contract above for the pid.
    // ESRCH (the worker has not made its group yet, or the group is empty) is fine.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Like [`wait_any`], but a worker that was killed by a signal (a crash, its time limit, a kill
/// by the pool or from outside) has its process group killed before it is reaped, so the
/// programs it started die with it. The group is killed while the worker is still a zombie,
/// so its id cannot have been reused. A worker that exited on its own keeps its group: programs
/// it deliberately left running go on. For the fork server, whose only children are workers.
pub(crate) fn reap_any_worker() -> io::Result<Option<(Pid, WaitStatus)>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it (or leaves si_pid 0 with WNOHANG
        // when no child has ended). WNOWAIT leaves the child unreaped.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        match syscall!(waitid(libc::P_ALL, 0, &mut info, flags)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        // SAFETY: waitid filled a SIGCHLD siginfo, whose pid field is the one to read.
        let pid = unsafe { info.si_pid() };
        if pid == 0 {
            return Ok(None);
        }
        if info.si_code == libc::CLD_KILLED || info.si_code == libc::CLD_DUMPED {
            // SAFETY: kill has no memory-safety preconditions; the group's leader `pid` is an
            // unreaped zombie, so the group id is still ours.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        return wait(pid, 0).map(|s| s.map(|s| (pid, s)));
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        // Without waitid's WNOWAIT here, the group is killed just after the reap: a new
        // process could in theory have taken the id in between, so only a group that is not
        // ours could be hit, which setpgid of a fresh pid makes very unlikely.
        let reaped = wait_any()?;
        if let Some((pid, WaitStatus::Signaled(_))) = reaped {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        Ok(reaped)
    }
}

/// Set by the fork server's SIGTERM handler: its parent died (PR_SET_PDEATHSIG) or someone
/// asked it to stop.
static TERM_RECEIVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigterm(sig: libc::c_int) {
    TERM_RECEIVED.store(true, std::sync::atomic::Ordering::Relaxed);
    on_sigchld(sig);
}

/// For the fork server, after [`notify_sigchld`]: its parent's death (PR_SET_PDEATHSIG on
/// Linux) and SIGTERM no longer kill it outright but set [`term_received`] and wake its `poll`
/// through the SIGCHLD pipe, so that it can kill its workers' process groups before it exits.
/// (Until this call the death signal is [`child_setup`]'s SIGKILL, so a parent that died
/// earlier has already ended this process.)
pub(crate) fn catch_parent_death() -> io::Result<()> {
    // SAFETY: sigaction is plain data, initialized before use; the handler only stores to an
    // atomic and calls async-signal-safe functions. prctl changes only this process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) == -1 {
            return Err(io::Error::last_os_error());
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    Ok(())
}

/// Whether the fork server was told to stop; see [`catch_parent_death`].
pub(crate) fn term_received() -> bool {
    TERM_RECEIVED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A soft resource limit, or `None` if it is unlimited or unknown.
fn soft_limit(resource: LimitResource) -> Option<u64> {
    // SAFETY: rlimit is plain data for getrlimit to fill.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(resource, &mut limit) != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        Some(limit.rlim_cur as u64)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type LimitResource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type LimitResource = libc::c_int;

/// How many descriptors this process may have open (`RLIMIT_NOFILE`), if limited.
pub(crate) fn open_file_limit() -> Option<u64> {
    soft_limit(libc::RLIMIT_NOFILE)
}

/// How many processes this user may have (`RLIMIT_NPROC`), if limited. Root is not held to
/// it, so for root: `None`.
pub(crate) fn process_limit() -> Option<u64> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return None;
    }
    soft_limit(libc::RLIMIT_NPROC)
}

/// How many descriptors this process has open now (Linux: `/proc/self/fd`), if known.
pub(crate) fn open_fd_count() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory's own descriptor is among those listed.
    Some(dir.count().saturating_sub(1) as u64)
}

/// Whether `fd` is open with its close-on-exec flag set (`fcntl(F_GETFD)`, about as cheap as a
/// system call gets). Every pool descriptor has the flag; `dup2` over one clears it, so a
/// worker tells its own pipes from what a task put in their place.
pub(crate) fn is_open_cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed `fd` gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags != -1 && flags & libc::FD_CLOEXEC != 0
}

// ---------------------------------------------------------------------------------------------
// Shared read-only memory, for `SharedBytes` (src/shared.rs)
// ---------------------------------------------------------------------------------------------, for `SharedBytes` (src/shared.rs) ----

/// `memfd_create(2)` with `MFD_CLOEXEC | MFD_ALLOW_SEALING`: an anonymous file in memory.
#[cfg(target_os = "linux")]
pub(crate) fn memfd_sealable(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
    let fd = syscall!(memfd_create(
        name.as_ptr(),
        libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING
    ))?;
    // SAFETY: memfd_create succeeded, so `fd` is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Seals a memfd against every change: no write, no resize, no further seal.
#[cfg(target_os = "linux")]
pub(crate) fn seal_read_only(fd: &OwnedFd) -> io::Result<()> {
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: `fd` is open for as long as the borrow lives; F_ADD_SEALS takes an int.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals))?;
    Ok(())
}

/// True if `fd` is a memfd sealed as [`seal_read_only`] leaves it.
#[cfg(target_os = "linux")]
pub(crate) fn is_sealed_read_only(fd: &OwnedFd) -> bool {
    let want = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: `fd` is open for as long as the borrow lives; F_GET_SEALS takes no argument.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_GET_SEALS)).is_ok_and(|seals| seals & want == want)
}

/// A read-only shared mapping of a whole file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; sharing the pointer between
// threads only ever reads memory that nobody can write (the file is sealed or private).
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only reads.
unsafe impl Sync for Mapping {}

/// Shared, and on Linux populated at once: one pass in the kernel instead of a page fault per
/// few pages as a task reads through the data.
#[cfg(target_os = "linux")]
const MAP_FLAGS: libc::c_int = libc::MAP_SHARED | libc::MAP_POPULATE;
#[cfg(not(target_os = "linux"))]
const MAP_FLAGS: libc::c_int = libc::MAP_SHARED;

impl Mapping {
    /// Maps the first `len` bytes of `fd` read-only (`len` may be 0: nothing is mapped).
    pub(crate) fn read_only(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint), of an open descriptor;
        // nothing else is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                MAP_FLAGS,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    /// The mapped bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes until drop; the file is sealed against writes
        // and shrinking, so the bytes neither change nor vanish under the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr` and `len` are exactly what mmap returned, unmapped only here.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared writable memory, for a worker's ledger (src/ledger.rs)
// ---------------------------------------------------------------------------------------------

/// A memfd of `len` zeroed bytes (close-on-exec), to be mapped by two processes.
#[cfg(target_os = "linux")]
pub(crate) fn memfd_sized(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the flag is valid for memfd_create.
    let fd = syscall!(memfd_create(name.as_ptr(), libc::MFD_CLOEXEC))?;
    // SAFETY: memfd_create succeeded, so `fd` is open and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `fd` is open; ftruncate takes a length and touches no memory of ours.
    syscall!(ftruncate(fd.as_raw_fd(), len as libc::off_t))?;
    Ok(fd)
}

/// Without memfd there is no ledger: the pool works as it did before ledgers.
#[cfg(not(target_os = "linux"))]
pub(crate) fn memfd_sized(_name: &std::ffi::CStr, _len: usize) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// A shared, writable mapping of a whole file, unmapped on drop. Another process may map the
/// same file and write it at any time: the bytes are only ever read through raw pointers and
/// atomics (see [`SharedRegion::as_ptr`]), never as a Rust reference that claims they hold
/// still.
#[derive(Debug)]
pub(crate) struct SharedRegion {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the region is owned by this value; what it points to is plain memory that every
// access reads or writes through raw pointers (the owner of the value decides who writes).
unsafe impl Send for SharedRegion {}

impl SharedRegion {
    /// Maps the first `len` bytes (more than 0) of `fd` for reading and writing, shared.
    pub(crate) fn map(fd: &OwnedFd, len: usize) -> io::Result<SharedRegion> {
        // SAFETY: a fresh mapping chosen by the kernel (null hint), of an open descriptor;
        // nothing else is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedRegion { ptr, len })
    }

    /// Keeps the mapping out of every child this process forks from now on (`MADV_DONTFORK`):
    /// a child gets no copy of it, and so cannot read or write it.
    pub(crate) fn keep_from_forks(&self) -> io::Result<()> {
        // SAFETY: `ptr` and `len` are exactly a mapping this value owns; the advice changes
        // only what a fork copies, not this process's view of the memory.
        syscall!(madvise(self.ptr, self.len, libc::MADV_DONTFORK)).map(drop)
    }

    /// The first byte; `len` bytes from it are mapped until drop.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.cast()
    }

    /// How many bytes are mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned, unmapped only here.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The executable's image, for the `mpi` module
// ---------------------------------------------------------------------------------------------

/// Where the running executable is mapped: its load base, its executable segments (as
/// offsets from the base), and its GNU build-id if the link recorded one. Used by the `mpi`
/// module, which sends functions between processes of the same binary as offsets from the base.
#[cfg(feature = "mpi")]
#[derive(Debug, Clone, Default)]
pub(crate) struct ExeImage {
    pub(crate) base: u64,
    /// `[start, end)` offsets from `base` of every loaded, executable segment.
    pub(crate) code: Vec<(u64, u64)>,
    pub(crate) build_id: Option<Vec<u8>>,
}

/// Describes the main executable with `dl_iterate_phdr` (its entry comes first).
#[cfg(all(feature = "mpi", target_os = "linux"))]
pub(crate) fn exe_image() -> ExeImage {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of the call, and `data`
        // is the `&mut ExeImage` given below, not otherwise borrowed while it runs.
        let (info, image) = unsafe { (&*info, &mut *(data as *mut ExeImage)) };
        image.base = info.dlpi_addr;
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                image.code.push((ph.p_vaddr, ph.p_vaddr + ph.p_memsz));
            }
            if ph.p_type == libc::PT_NOTE && image.build_id.is_none() {
                // SAFETY: a PT_NOTE segment is loaded, so its p_memsz bytes at base + p_vaddr
                // are mapped and readable for the life of the process.
                let notes = unsafe {
                    std::slice::from_raw_parts(
                        (info.dlpi_addr + ph.p_vaddr) as *const u8,
                        ph.p_memsz as usize,
                    )
                };
                image.build_id = gnu_build_id(notes);
            }
        }
        1 // the first entry is the executable: stop
    }
    let mut image = ExeImage::default();
    // SAFETY: the callback matches dl_iterate_phdr's contract and only writes through `data`,
    // which points to `image` for the duration of the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first),
            &mut image as *mut ExeImage as *mut libc::c_void,
        )
    };
    image
}

/// The descriptor of the `NT_GNU_BUILD_ID` note in a segment of ELF notes, if there is one.
#[cfg(all(feature = "mpi", target_os = "linux"))]
fn gnu_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    let word = |b: &[u8], i: usize| -> Option<usize> {
        Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let name_end = 12 + namesz.div_ceil(4) * 4;
        let desc_end = name_end + descsz.div_ceil(4) * 4;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == 3 && name == b"GNU\0" {
            return Some(desc.to_vec());
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Knowing, cheaply, that this process is a fork of the one that made a result
// ---------------------------------------------------------------------------------------------

/// This process's id, kept up to date across `fork()` by an atfork handler; 0 until
/// [`watch_forks`] ran.
static CACHED_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn refresh_cached_pid() {
    // SAFETY: getpid is async-signal-safe; an atomic store is too. Runs in the child of every
    // fork() made through libc, before fork returns there.
    let pid = unsafe { libc::getpid() } as u32;
    CACHED_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
}

/// Starts keeping [`cached_pid`] true in the children of `fork()` (a `pthread_atfork` child
/// handler, registered once per process). Called when a pool is built, before any of its
/// results exist.
pub(crate) fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        refresh_cached_pid();
        // SAFETY: the handler only calls getpid and stores to an atomic, both
        // async-signal-safe, as a child handler after fork in a threaded process must.
        unsafe { libc::pthread_atfork(None, None, Some(refresh_cached_pid)) };
    });
}

/// This process's id without a system call: an atomic load. 0 before [`watch_forks`].
pub(crate) fn cached_pid() -> u32 {
    CACHED_PID.load(std::sync::atomic::Ordering::Relaxed)
}

/// `struct sched_attr` of `sched_setattr(2)`, its first version (48 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// The time slice [`prefer_short_slice`] asks for: the shortest the kernel grants.
#[cfg(target_os = "linux")]
const SHORT_SLICE_NS: u64 = 100_000;

/// Asks the scheduler for a short time slice for the calling thread (EEVDF's custom slice,
/// Linux 6.12 and later, `sched_attr.sched_runtime` of a fair-class thread). For the pool's
/// helpers, which run in bursts of microseconds and then sleep: the zygote, the fork servers,
/// and the dispatcher thread while its pool starts and once it is closed (never the workers,
/// which run the caller's code). On a CPU
/// that a busy program holds, a woken helper otherwise often waits for that program's slice
/// to end, a scheduler tick (4 ms at HZ=250), and a pool's start or `join` is a chain of such
/// wake-ups (issue 9, W8d). A shorter slice changes how soon a thread runs, not its share of
/// the CPU. Keeps the policy and nice value; does nothing under other policies (real-time,
/// idle), and an older kernel ignores or refuses it, which is harmless. Async-signal-safe
/// (two raw system calls), so a freshly forked child may call it.
pub(crate) fn prefer_short_slice() {
    #[cfg(target_os = "linux")]
    set_slice(SHORT_SLICE_NS);
}

/// Gives the calling thread the kernel's default time slice back, undoing an inherited
/// [`prefer_short_slice`]: a worker, forked by a fork server, runs the caller's code at the
/// slice any thread of the machine has. Async-signal-safe.
pub(crate) fn default_slice() {
    #[cfg(target_os = "linux")]
    set_slice(0);
}

/// The calling thread's short slice for a moment: while the pool's first process and thread
/// are forked and spawned from the caller's thread (they inherit it, and so get a CPU beside a
/// busy program at once instead of waiting a scheduler tick for their first run: issue 9, W8d
/// without `init()`). Dropping it gives the thread back the slice it had.
pub(crate) struct BorrowedShortSlice {
    #[cfg(target_os = "linux")]
    previous: Option<u64>,
}

impl BorrowedShortSlice {
    pub(crate) fn take() -> BorrowedShortSlice {
        BorrowedShortSlice {
            #[cfg(target_os = "linux")]
            previous: set_slice(SHORT_SLICE_NS),
        }
    }
}

impl Drop for BorrowedShortSlice {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(previous) = self.previous {
            set_slice(previous);
        }
    }
}

/// `sched_attr.sched_flags`: children of the thread start with the default policy.
#[cfg(target_os = "linux")]
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The calling thread's scheduling attributes (`size` set to the struct's), or `None` if
/// `sched_getattr` failed.
#[cfg(target_os = "linux")]
fn sched_attr() -> Option<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: sched_getattr writes at most `size` bytes into `attr`, which has that size.
    let got = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    attr.size = size;
    (got == 0).then_some(attr)
}

/// Sets the calling thread's custom slice (`runtime_ns`; 0 for the default) if it runs under
/// a fair policy; returns the slice it had if it changed it.
#[cfg(target_os = "linux")]
fn set_slice(runtime_ns: u64) -> Option<u64> {
    let mut attr = sched_attr()?;
    if !matches!(attr.policy as i32, libc::SCHED_OTHER | libc::SCHED_BATCH) {
        return None;
    }
    // Keep reset-on-fork, the one flag sched_getattr reports that setattr takes back as is:
    // the caller's thread may have set it, and lending it a slice must not clear it.
    attr.flags &= SCHED_FLAG_RESET_ON_FORK;
    if attr.runtime == runtime_ns {
        return None; // already so: spare the second call
    }
    let previous = attr.runtime;
    attr.runtime = runtime_ns;
    // SAFETY: `attr` is a valid sched_attr of the size it says; it changes only this
    // thread's slice (policy and nice stay as they were).
    let set = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    (set == 0).then_some(previous)
}

#[cfg(all(test, target_os = "linux"))]
mod slice_tests {
    use super::*;

    /// This thread's custom slice as the kernel reports it (0: the default).
    fn current_slice() -> u64 {
        sched_attr().expect("sched_getattr").runtime
    }

    /// `Pool::new` borrows the caller's thread for a short slice while it forks and spawns,
    /// and must give back exactly the slice the thread had, the program's own choice included.
    #[test]
    fn a_borrowed_short_slice_is_given_back_as_it_was() {
        // On its own thread: the slice is a thread's attribute.
        std::thread::spawn(|| {
            let before = current_slice();
            let borrowed = BorrowedShortSlice::take();
            if current_slice() != SHORT_SLICE_NS {
                // A kernel before 6.12 has no custom slices: nothing to give back either.
                drop(borrowed);
                assert_eq!(current_slice(), before);
                return;
            }
            drop(borrowed);
            assert_eq!(current_slice(), before);
            // A slice the program chose itself comes back too.
            set_slice(500_000);
            let borrowed = BorrowedShortSlice::take();
            assert_eq!(current_slice(), SHORT_SLICE_NS);
            drop(borrowed);
            assert_eq!(current_slice(), 500_000);
        })
        .join()
        .unwrap();
    }

    /// A thread that asked for reset-on-fork keeps it through a borrowed slice.
    #[test]
    fn a_borrowed_short_slice_keeps_reset_on_fork() {
        std::thread::spawn(|| {
            let mut attr = sched_attr().expect("sched_getattr");
            attr.flags = SCHED_FLAG_RESET_ON_FORK;
            // SAFETY: `attr` is this thread's valid sched_attr, of the size it says.
            let set =
                unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
            assert_eq!(set, 0, "sched_setattr: {}", io::Error::last_os_error());
            let borrowed = BorrowedShortSlice::take();
            assert_ne!(sched_attr().unwrap().flags & SCHED_FLAG_RESET_ON_FORK, 0);
            drop(borrowed);
            assert_ne!(sched_attr().unwrap().flags & SCHED_FLAG_RESET_ON_FORK, 0);
        })
        .join()
        .unwrap();
    }
}
