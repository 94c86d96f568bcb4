//! The fork-server protocol: the messages between the pool's dispatcher ([`crate::spawn`]) and
//! its fork server ([`crate::server`]). Both sides import this module; neither imports the other.
//!
//! A message is three little-endian `u64`s, a kind and two arguments, on a Unix stream socket.
//! A [`SPAWN`] request carries the new worker's two pipe ends as SCM_RIGHTS descriptors attached
//! to its first byte. Requests are keyed by a token the parent chooses, never by a pid, so an
//! answer can come back at any time, between other reports, and still find its request.
//!
//! The parent may send requests before the server exists: a server forked by the zygote finds
//! them waiting in its socket, and its first message, [`HELLO`], travels with the answers to
//! them (the zygote writes [`START_FAILED`] there instead if it could not fork the server).

use crate::error::ExitCause;
use crate::sys::WaitStatus;

/// Bytes in one message.
pub(crate) const MESSAGE: usize = 24;

/// Parent to server: fork a worker on the two attached descriptors. `[SPAWN, token, flags]`,
/// flags being [`SPAWN_CONTENDED`] or 0.
pub(crate) const SPAWN: u64 = 1;
/// A [`SPAWN`] flag: the parent's spins lately found the CPUs contended, so the new worker's
/// spins start without yielding (see [`crate::spin`]): a fresh process knows nothing of the
/// machine, and on a busy one its first yield would hand its CPU to a busy process until the
/// next scheduler tick.
pub(crate) const SPAWN_CONTENDED: u64 = 1;
/// Parent to server: SIGKILL this worker if it has not been reaped. `[KILL, pid, 0]`.
pub(crate) const KILL: u64 = 2;
/// Parent to server: the pool is winding down and asks for no more workers; exit once every
/// worker has ended and been reaped (KILL requests are still served). `[FINISH, 0, 0]`. The
/// parent learns of the exit by end of file on the socket, right behind the last [`EXITED`],
/// so `join` needs no round trip of its own to end the server (issue 9, W8d).
pub(crate) const FINISH: u64 = 3;
/// Server to parent, first, once: the server runs, as `pid`. `[HELLO, pid, 0]`. (A server
/// forked by the zygote is not the pool's child: this is how the pool learns its pid.)
pub(crate) const HELLO: u64 = 10;
/// Zygote to parent, on the server's socket, instead of a [`HELLO`]: the server could not be
/// forked, with `errno`. `[START_FAILED, errno, 0]`.
pub(crate) const START_FAILED: u64 = 14;
/// Server to parent: the worker for `token` is `pid`. `[SPAWNED, token, pid]`.
pub(crate) const SPAWNED: u64 = 11;
/// Server to parent: fork failed with `errno`. `[SPAWN_FAILED, token, errno]`.
pub(crate) const SPAWN_FAILED: u64 = 12;
/// Server to parent: the worker `pid` ended and was reaped. `[EXITED, pid, status]`, where
/// status is `code` for an exit and `1 << 32 | signal` for a signal (see [`encode_status`]).
pub(crate) const EXITED: u64 = 13;

/// Encodes a message.
pub(crate) fn message(kind: u64, a: u64, b: u64) -> [u8; MESSAGE] {
    let mut m = [0; MESSAGE];
    for (i, word) in [kind, a, b].into_iter().enumerate() {
        m[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
    }
    m
}

/// Decodes a message from its [`MESSAGE`] bytes.
pub(crate) fn parse(m: &[u8; MESSAGE]) -> [u64; 3] {
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

/// Decodes the status word of an [`EXITED`] message.
pub(crate) fn decode_status(word: u64) -> ExitCause {
    if word >> 32 == 1 {
        ExitCause::Signal(word as u32 as i32)
    } else {
        ExitCause::Exited(word as u32 as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = message(SPAWNED, 7, u64::MAX);
        assert_eq!(parse(&m), [SPAWNED, 7, u64::MAX]);
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
