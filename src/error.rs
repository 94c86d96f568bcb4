//! [`Error`] and [`Result`]: everything that can go wrong with a pool or a task.

use std::fmt;
use std::io;

/// `Result<T, forkpool::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a task or a pool call failed.
///
/// Each message says what happened and, where there is a choice, what to do next.
///
/// # Examples
///
/// ```
/// use forkpool::{Error, Pool};
///
/// fn boom(_: u32) -> u32 {
///     panic!("no luck")
/// }
///
/// let pool = Pool::new(1)?;
/// match pool.apply(boom, 7) {
///     Err(Error::TaskPanicked { message, location }) => {
///         assert_eq!(message, "no luck");
///         assert!(location.unwrap().starts_with("src/"));
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), forkpool::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked in its worker. The worker survived and serves the next task.
    #[error("the task panicked{}: {message}", location.as_ref().map_or_else(String::new, |l| format!(" at {l}")))]
    TaskPanicked {
        /// The panic message: the payload if it was a string (`&str`, `String`), else a
        /// description of it (an integer or `bool` payload is printed, an `std::error::Error`
        /// payload gives its message, any other type is named as such).
        message: String,
        /// Where the panic happened, as `file:line:column`, when the panic hook saw it. Present
        /// whether or not [`PoolBuilder::print_panics`](crate::PoolBuilder::print_panics) is on.
        location: Option<String>,
    },

    /// The worker process running the task died before it answered (a signal such as SIGSEGV or
    /// SIGKILL, an abort, a stack overflow, or `std::process::exit`). The pool replaced it; no
    /// other task was affected.
    #[error(
        "worker {pid}{} {cause} while running the task; the pool replaced it",
        on_host(host)
    )]
    WorkerDied {
        /// The dead worker's process id.
        pid: u32,
        /// How it ended.
        cause: ExitCause,
        /// The host the worker ran on, for a worker of another rank of an MPI pool
        /// (`PoolBuilder::mpi`, feature `mpi`); `None` for a local worker.
        host: Option<String>,
    },

    /// A value could not be serialized: an argument in the calling thread (the call returns this
    /// and nothing was submitted), or a result in the worker (the task fails; the worker goes on).
    #[error("could not encode the {what}: {message}")]
    Encode {
        /// `"argument"`, `"result"`, or `"initializer argument"` (from
        /// [`PoolBuilder::build`](crate::PoolBuilder::build)).
        what: &'static str,
        /// The codec's message.
        message: String,
    },

    /// Bytes could not be deserialized: an argument in the worker, or a result in
    /// [`AsyncResult::get`](crate::AsyncResult::get). Usually the `Serialize` and `Deserialize`
    /// impls of the type do not agree.
    #[error("could not decode the {what}: {message}")]
    Decode {
        /// `"argument"` or `"result"`.
        what: &'static str,
        /// The codec's message.
        message: String,
    },

    /// The task ran past its time limit ([`PoolBuilder::task_timeout`](crate::PoolBuilder::task_timeout)
    /// or [`Pool::apply_async_timeout`](crate::Pool::apply_async_timeout)). Its worker was
    /// killed and replaced; no other task was affected.
    #[error("the task ran past its time limit of {limit:?}; worker {pid} was killed and replaced")]
    TimedOut {
        /// The worker that ran it.
        pid: u32,
        /// The limit, per item for a chunk of `map`.
        limit: std::time::Duration,
    },

    /// [`AsyncResult::get_timeout`](crate::AsyncResult::get_timeout) gave up waiting. Unlike
    /// [`Error::TimedOut`], nothing happened to the task: it goes on, and its result can still
    /// be waited for on the same handle.
    #[error("no result within {waited:?}; the task goes on and its result can still be awaited")]
    WaitTimedOut {
        /// How long the call waited.
        waited: std::time::Duration,
    },

    /// One input item of a `map`, `map_chunked`, `map_async`, `map_each`, `imap` or
    /// `imap_unordered` (or a chunked form) failed: `index` is its position in the input, and
    /// `source` what happened to it ([`Error::TaskPanicked`], [`Error::WorkerDied`], ...).
    ///
    /// `items` is 1 when the failure is pinned to that one item: a panic, and a worker's death
    /// or time limit in a chunk (the worker's ledger says which item it was running). Only when
    /// that cannot be known (the worker died before it recorded anything of the chunk) is
    /// `index` the chunk's first item and `items` its length.
    ///
    /// Errors that concern the pool rather than an item ([`Error::Closed`],
    /// [`Error::Terminated`], [`Error::Cancelled`], [`Error::Io`], [`Error::ForkedProcess`],
    /// [`Error::InvalidArgument`]) are not wrapped.
    ///
    /// To match what happened regardless of the wrapping (code that matched
    /// `Err(Error::WorkerDied { .. })` from `map` before), match on
    /// [`cause`](Error::cause); [`index`](Error::index) gives the position.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool::Error;
    ///
    /// fn picky(x: u32) -> u32 {
    ///     assert!(x != 17, "no 17");
    ///     x
    /// }
    ///
    /// let pool = forkpool::Pool::new(2)?;
    /// let err = pool.map(picky, 0..21).unwrap_err();
    /// assert_eq!(err.index(), Some(17));
    /// assert!(err.to_string().starts_with("item 17: the task panicked"));
    /// assert!(matches!(err.cause(), Error::TaskPanicked { .. }));
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    #[error("{}: {source}", if *items <= 1 { format!("item {index}") } else {
        format!("items {index} to {} (one chunk; which of them is not known)", index.saturating_add(items - 1))
    })]
    Item {
        /// The failed item's position in the input (the first of its chunk if `items > 1`).
        index: usize,
        /// How many items the error covers: 1, or the length of the chunk a worker died in.
        items: usize,
        /// What happened.
        source: Box<Error>,
    },

    /// The task was cancelled with [`AsyncResult::cancel`](crate::AsyncResult::cancel) before
    /// its result was in: it never ran, or its worker was killed and replaced while it ran.
    #[error("the task was cancelled before it finished")]
    Cancelled,

    /// The task was submitted after [`Pool::close`](crate::Pool::close) or
    /// [`Pool::terminate`](crate::Pool::terminate).
    #[error("the pool is closed and takes no new tasks; build a new pool")]
    Closed,

    /// [`Pool::terminate`](crate::Pool::terminate), or dropping the pool, ended the task before it
    /// finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,

    /// [`Pool::join`](crate::Pool::join) was called on a pool still taking tasks.
    #[error("the pool is still running; call close() or terminate() before join()")]
    StillRunning,

    /// The worker's initializer panicked, so the worker refuses its tasks.
    #[error("the worker's initializer panicked: {message}")]
    InitializerPanicked {
        /// The panic message.
        message: String,
    },

    /// An argument was out of range, such as a pool of 0 processes or a chunk size of 0.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// What was wrong.
        message: &'static str,
    },

    /// A worker broke the protocol: it sent a frame that is too large or malformed. The pool
    /// killed and replaced it.
    #[error("worker {pid} sent a malformed reply ({message}); the pool killed and replaced it")]
    Protocol {
        /// The worker's process id.
        pid: u32,
        /// What was wrong with the frame.
        message: String,
    },

    /// The pool was used in a process forked from the one that built it (the daemonize
    /// pattern: `fork()` and go on in the child). The pool's dispatcher thread and its workers
    /// belong to the process that built it; a fork copies neither, so the call was refused.
    /// Build a new pool in the child, after the fork.
    #[error(
        "this pool belongs to process {owner}, and this is process {current}, a fork of it: a \
         pool works only in the process that built it; build a new pool after fork()"
    )]
    ForkedProcess {
        /// The process that built the pool.
        owner: u32,
        /// The process that tried to use it.
        current: u32,
    },

    /// An MPI pool (`PoolBuilder::mpi`, feature `mpi`) could not start or a rank
    /// broke its protocol: for example a rank runs a different build of the program, or MPI
    /// was initialized before.
    #[error("MPI: {message}")]
    Mpi {
        /// What went wrong, naming the host and rank concerned.
        message: String,
    },

    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The call that failed, such as `"fork"` or `"pipe"`.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The position in the input of the item this error is about: `Some` for
    /// [`Error::Item`], `None` for any other error.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(1)?;
    /// let bad = pool.map_chunked(|x: u8| 10 / x, [5, 2, 0, 1], 1).unwrap_err();
    /// assert_eq!(bad.index(), Some(2));
    /// assert_eq!(forkpool::Error::Closed.index(), None);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn index(&self) -> Option<usize> {
        match self {
            Error::Item { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// What happened, without the item's position: the `source` of an [`Error::Item`], or
    /// the error itself. Match on this to handle a kind of failure from `map` and `apply`
    /// alike.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool::Error;
    ///
    /// let pool = forkpool::Pool::new(1)?;
    /// let err = pool.map_chunked(|code: i32| -> u8 { std::process::exit(code) }, [3], 1);
    /// assert!(matches!(err.unwrap_err().cause(), Error::WorkerDied { .. }));
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn cause(&self) -> &Error {
        match self {
            Error::Item { source, .. } => source.cause(),
            other => other,
        }
    }

    /// [`cause`](Error::cause), by value: the error without the item's position, for a
    /// `match` that moves out of it.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool::Error;
    ///
    /// let pool = forkpool::Pool::new(1)?;
    /// match pool.map(|_: u8| -> u8 { panic!("no") }, [1]).map_err(Error::into_cause) {
    ///     Err(Error::TaskPanicked { message, .. }) => assert_eq!(message, "no"),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn into_cause(self) -> Error {
        match self {
            Error::Item { source, .. } => source.into_cause(),
            other => other,
        }
    }

    /// This error as the failure of the `items` items starting at input position `base`: an
    /// [`Error::Item`] pinned inside them (a chunk's panic, `index` counted from the chunk's
    /// start) is moved to its place in the input; an error about the pool is left as it is.
    pub(crate) fn at_items(self, base: usize, items: usize) -> Error {
        match self {
            Error::Item {
                index,
                items: n,
                source,
            } => Error::Item {
                // A position a worker reported: never trusted to be small (no overflow panic).
                index: base.saturating_add(index),
                items: n,
                source,
            },
            Error::Closed
            | Error::Terminated
            | Error::Cancelled
            | Error::StillRunning
            | Error::WaitTimedOut { .. }
            | Error::Io { .. }
            | Error::ForkedProcess { .. }
            | Error::InvalidArgument { .. } => self,
            other => Error::Item {
                index: base,
                items: items.max(1),
                source: Box::new(other),
            },
        }
    }

    /// Wraps an `io::Error` from `op`. If the error names the call that failed (a
    /// [`sys::Failed`](crate::sys::Failed) inside it, as from `pipe` within a spawn), that call
    /// is reported as the operation instead of `op`.
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| match crate::sys::Failed::unwrap(source) {
            (Some(call), source) => Error::Io { op: call, source },
            (None, source) => Error::Io { op, source },
        }
    }

    /// A copy of this error for a second task that failed for the same reason. `Io` keeps its
    /// OS error code (or else its kind and message) but loses any inner source chain, which
    /// `io::Error` cannot clone.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::TaskPanicked { message, location } => Error::TaskPanicked {
                message: message.clone(),
                location: location.clone(),
            },
            Error::ForkedProcess { owner, current } => Error::ForkedProcess {
                owner: *owner,
                current: *current,
            },
            Error::WorkerDied { pid, cause, host } => Error::WorkerDied {
                pid: *pid,
                cause: *cause,
                host: host.clone(),
            },
            Error::Encode { what, message } => Error::Encode {
                what,
                message: message.clone(),
            },
            Error::Decode { what, message } => Error::Decode {
                what,
                message: message.clone(),
            },
            Error::TimedOut { pid, limit } => Error::TimedOut {
                pid: *pid,
                limit: *limit,
            },
            Error::WaitTimedOut { waited } => Error::WaitTimedOut { waited: *waited },
            Error::Item {
                index,
                items,
                source,
            } => Error::Item {
                index: *index,
                items: *items,
                source: Box::new(source.duplicate()),
            },
            Error::Cancelled => Error::Cancelled,
            Error::Closed => Error::Closed,
            Error::Terminated => Error::Terminated,
            Error::StillRunning => Error::StillRunning,
            Error::InitializerPanicked { message } => Error::InitializerPanicked {
                message: message.clone(),
            },
            Error::InvalidArgument { message } => Error::InvalidArgument { message },
            Error::Protocol { pid, message } => Error::Protocol {
                pid: *pid,
                message: message.clone(),
            },
            Error::Mpi { message } => Error::Mpi {
                message: message.clone(),
            },
            Error::Io { op, source } => Error::Io {
                op,
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
        }
    }
}

/// " on HOST" for a worker of another rank, nothing for a local one.
fn on_host(host: &Option<String>) -> String {
    host.as_ref()
        .map_or_else(String::new, |h| format!(" on {h}"))
}

/// How a worker process ended.
///
/// # Examples
///
/// ```
/// use forkpool::{Error, ExitCause, Pool};
///
/// let pool = Pool::new(1)?;
/// match pool.apply(|code: i32| -> u8 { std::process::exit(code) }, 3) {
///     Err(Error::WorkerDied { cause, .. }) => {
///         assert_eq!(cause, ExitCause::Exited(3));
///         assert_eq!(cause.to_string(), "exited with status 3");
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), forkpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// Killed by this signal (SIGSEGV is 11, SIGABRT 6, SIGKILL 9 on Linux).
    Signal(i32),
    /// Exited with this status, as with `std::process::exit(status)`.
    Exited(i32),
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Signal(sig) => write!(
                f,
                "was killed by signal {sig} ({})",
                crate::sys::signal_name(sig)
            ),
            ExitCause::Exited(code) => {
                write!(f, "exited with status {code}")?;
                match crate::worker::exit_status_meaning(code) {
                    Some(meaning) => write!(f, " ({meaning})"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk position comes from the worker: a huge one must not overflow in the parent.
    #[test]
    fn an_absurd_item_position_neither_overflows_nor_panics_in_display() {
        let panicked = || Error::TaskPanicked {
            message: "x".into(),
            location: None,
        };
        let reported = Error::Item {
            index: usize::MAX,
            items: 1,
            source: Box::new(panicked()),
        };
        let moved = reported.at_items(1_000, 3);
        assert_eq!(moved.index(), Some(usize::MAX));
        let chunk = panicked().at_items(usize::MAX - 1, 5);
        assert!(chunk
            .to_string()
            .starts_with(&format!("items {}", usize::MAX - 1)));
        assert!(matches!(chunk.cause(), Error::TaskPanicked { .. }));
        assert!(matches!(
            Error::Terminated.at_items(3, 1),
            Error::Terminated
        ));
        assert_eq!(
            panicked().at_items(4, 1).to_string(),
            "item 4: the task panicked: x"
        );
    }
}
