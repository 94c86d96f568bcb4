//! The messages between a program and its zygote, imported by both sides.
//!
//! Every message is [`WORDS`] little-endian `u64`s: a kind, then its arguments, unused ones 0.
//!
//! | message | direction | words | attached |
//! |---|---|---|---|
//! | [`START`] | parent to zygote | a [`ServerSpec`] (see [`start_request`]), then the initializer's argument bytes | the new server's end of its socket |
//! | [`KILL`] | parent to zygote | the pid of a fork server that would not exit | |
//! | [`READY`] | zygote to parent, once, first | | |
//!
//! Neither [`START`] nor [`KILL`] is answered on this socket: the new server says its pid
//! itself, first thing on its own socket ([`crate::proto::HELLO`]), or the zygote writes the
//! failed fork's `errno` there ([`crate::proto::START_FAILED`]). So the pool asks for its
//! server and goes on at once: it queues its first spawn requests on the server's socket,
//! and starts its dispatcher thread, while the zygote forks the server (on a busy machine
//! each wait for another process to run can cost a scheduler tick, 4 ms; issue 9, W8d).

use crate::sys::{Pid, SignalSet};
use crate::task::Initializer;
use crate::worker::WorkerConfig;

/// Words in one message.
pub(crate) const WORDS: usize = 12;
/// Bytes in one message.
pub(crate) const MESSAGE: usize = WORDS * 8;

/// Parent to zygote: fork a fork server on the attached socket, for a pool with this spec.
pub(crate) const START: u64 = 1;
/// Parent to zygote: SIGKILL this fork server if it is still an unreaped child.
pub(crate) const KILL: u64 = 2;
/// Zygote to parent, once, first: its setup is done (in particular, its death signal is
/// cleared when the thread that forked it may end before the program).
pub(crate) const READY: u64 = 13;

/// What a fork server needs from the pool that asked for it: what its workers run, and the
/// signal mask they start with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerSpec {
    pub(crate) worker_mask: SignalSet,
    pub(crate) config: WorkerConfig,
}

/// Encodes a message.
pub(crate) fn encode(words: [u64; WORDS]) -> [u8; MESSAGE] {
    let mut m = [0; MESSAGE];
    for (chunk, word) in m.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    m
}

/// Decodes a message.
pub(crate) fn decode(m: &[u8; MESSAGE]) -> [u64; WORDS] {
    let mut words = [0; WORDS];
    for (word, chunk) in words.iter_mut().zip(m.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    words
}

/// A message of `kind` with one argument.
pub(crate) fn short(kind: u64, arg: u64) -> [u8; MESSAGE] {
    let mut words = [0; WORDS];
    words[0] = kind;
    words[1] = arg;
    encode(words)
}

/// The [`START`] message for `spec`. The initializer travels as its trampoline's and function's
/// addresses, valid in the zygote because the zygote is a fork of this very program image, and
/// its argument's length; the argument's bytes follow the message on the socket.
pub(crate) fn start_request(spec: ServerSpec) -> [u8; MESSAGE] {
    // Destructured, so that a field added to WorkerConfig fails to compile here until it is
    // carried too.
    let WorkerConfig {
        initializer,
        max_tasks,
        max_memory,
        print_panics,
        max_frame,
    } = spec.config;
    let (trampoline, function, arg) = initializer.map_or((0, 0, &[][..]), |i| i.parts());
    encode([
        START,
        trampoline as u64,
        max_tasks.is_some() as u64,
        max_tasks.unwrap_or(0) as u64,
        max_memory.is_some() as u64,
        max_memory.unwrap_or(0),
        print_panics as u64,
        spec.worker_mask.0,
        max_frame,
        function as u64,
        arg.len() as u64,
        0,
    ])
}

/// How many argument bytes follow a [`START`] message on the socket.
pub(crate) fn start_arg_len(words: &[u64; WORDS]) -> u64 {
    words[10]
}

/// The spec of a [`START`] message, whose initializer's argument bytes, read after it, are
/// `arg`.
///
/// # Safety
/// `words` must come from [`start_request`] in a process running the same program image (the
/// zygote's parent): the initializer's address is turned back into a function pointer.
pub(crate) unsafe fn parse_start(words: &[u64; WORDS], arg: &'static [u8]) -> ServerSpec {
    let initializer = match words[1] as usize {
        0 => None,
        // SAFETY: the caller guarantees that these are the parts of an initializer of this
        // image, as start_request sent them.
        trampoline => Some(unsafe { Initializer::from_parts(trampoline, words[9] as usize, arg) }),
    };
    ServerSpec {
        worker_mask: SignalSet(words[7]),
        config: WorkerConfig {
            initializer,
            max_tasks: (words[2] != 0).then_some(words[3] as usize),
            max_memory: (words[4] != 0).then_some(words[5]),
            print_panics: words[6] != 0,
            max_frame: words[8],
        },
    }
}

/// A pid carried in a message word.
pub(crate) fn pid(word: u64) -> Pid {
    word as Pid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(x: u32) {
        assert_eq!(x, 7);
    }

    #[test]
    fn a_spec_round_trips() {
        let spec = ServerSpec {
            worker_mask: SignalSet::default().with(libc::SIGCHLD),
            config: WorkerConfig {
                initializer: Some(Initializer::with(init, &7u32).unwrap()),
                max_tasks: Some(usize::MAX),
                max_memory: Some(1 << 30),
                print_panics: false,
                max_frame: 12345,
            },
        };
        let words = decode(&start_request(spec));
        assert_eq!(words[0], START);
        let sent = spec.config.initializer.unwrap().parts();
        assert_eq!(start_arg_len(&words), sent.2.len() as u64);
        // SAFETY: made by start_request in this process, with its argument's bytes.
        let back = unsafe { parse_start(&words, sent.2) };
        assert_eq!(back.worker_mask, spec.worker_mask);
        assert_eq!(back.config.initializer.map(|i| i.parts()), Some(sent));
        // SAFETY: the parts came from Initializer::with in this process.
        unsafe { back.config.initializer.unwrap().run() };
        assert_eq!(back.config.max_tasks, Some(usize::MAX));
        assert_eq!(back.config.max_memory, Some(1 << 30));
        assert!(!back.config.print_panics);
        assert_eq!(back.config.max_frame, 12345);
        let none = WorkerConfig {
            initializer: None,
            max_tasks: None,
            max_memory: None,
            print_panics: true,
            max_frame: u64::MAX,
        };
        let words = decode(&start_request(ServerSpec {
            worker_mask: SignalSet::default(),
            config: none,
        }));
        assert_eq!(start_arg_len(&words), 0);
        // SAFETY: as above.
        let back = unsafe { parse_start(&words, &[]) };
        assert!(back.config.initializer.is_none());
        assert_eq!(
            (back.config.max_tasks, back.config.max_memory),
            (None, None)
        );
        assert!(back.config.print_panics);
    }
}
