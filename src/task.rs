//! A type-erased task: a function pointer, the trampoline that knows its types, and the encoded
//! argument.
//!
//! Workers are forks of this very program, so a function's address in the parent is the same
//! function in every worker. A task frame carries two addresses: the user's `fn(A) -> R`, and a
//! trampoline monomorphized for `A` and `R` that decodes the argument, calls the function and
//! encodes the result. The worker only knows the trampoline's erased signature, [`Trampoline`].

use std::borrow::Borrow;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, SeqIndex};
use crate::error::{Error, ExitCause, Result};
use crate::frame::{self, Bytes, OutFrame, Status, TaskHeader};
use crate::ledger;
use crate::sys;

/// The erased signature of every trampoline: the function's address, the argument bytes, the
/// reply frame to put the encoded result (or an error message) in, and the time limit of each
/// call, which the trampoline arms before each item (the worker disarms it afterwards).
///
/// # Safety
/// `function` must be the address of the `fn(A) -> R` this trampoline was monomorphized for.
pub(crate) type Trampoline =
    unsafe fn(function: u64, arg: Bytes, out: &mut OutFrame, limit: Option<Duration>) -> Status;

/// Builds the frame for one call of `f` on `arg`.
///
/// # Errors
/// [`Error::Encode`] if the argument cannot be encoded; nothing is sent then.
pub(crate) fn call<A, R>(f: fn(A) -> R, arg: A) -> Result<OutFrame>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    item(f, arg)
}

/// Builds the frame for one call of `f` on the item `arg` stands for: an `A`, or anything that
/// borrows as one (`&A`, `Arc<A>`), encoded from the reference without a clone. An owned
/// `Vec<u8>` is moved into the frame, not copied.
///
/// # Errors
/// [`Error::Encode`] if the argument cannot be encoded; nothing is sent then.
pub(crate) fn item<A, R, B>(f: fn(A) -> R, arg: B) -> Result<OutFrame>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    B: Borrow<A> + 'static,
{
    let mut head = begin(call_one::<A, R>, f as usize);
    let tail = codec::encode_owned::<A, B>(arg, &mut head).map_err(encode_error)?;
    Ok(sealed(head, tail))
}

/// Builds the frame for one chunk: `f` applied to each of `args` in the same worker, the
/// results coming back as one `Vec<R>`.
///
/// # Errors
/// [`Error::Encode`] if an argument cannot be encoded; nothing is sent then.
pub(crate) fn chunk<A, R, B>(f: fn(A) -> R, args: &[B]) -> Result<OutFrame>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    B: Borrow<A>,
{
    let mut head = begin(call_chunk::<A, R>, f as usize);
    // Encoded as the Vec<A> the trampoline decodes, from the borrowed items.
    codec::encode_seq::<A, B>(args, &mut head).map_err(encode_error)?;
    Ok(sealed(head, Vec::new()))
}

/// Builds the frame for one chunk of [`Pool::map_each`](crate::Pool::map_each): as [`chunk`],
/// but each item's panic is caught on its own, and the results come back as one
/// `Vec<Each<R>>`: every item of the chunk runs, whatever the others do. Also returns where
/// each item's argument starts, so that the items after one can be sent again as a chunk of
/// their own should the worker die at that one ([`tail`]).
///
/// # Errors
/// [`Error::Encode`] if an argument cannot be encoded; nothing is sent then.
pub(crate) fn chunk_each<A, R, B>(f: fn(A) -> R, args: &[B]) -> Result<(OutFrame, SeqIndex)>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    B: Borrow<A>,
{
    let mut head = begin(call_chunk_each::<A, R>, f as usize);
    let index = codec::encode_seq_indexed::<A, B>(args, &mut head).map_err(encode_error)?;
    Ok((sealed(head, Vec::new()), index))
}

/// The frame of the items of a chunk frame built by [`chunk_each`] from item `from` on, with
/// their index: the same task on fewer items.
pub(crate) fn tail(frame: &OutFrame, index: &SeqIndex, from: usize) -> (OutFrame, SeqIndex) {
    let start = frame::TASK_ARG_START;
    let mut head = frame.head[..start].to_vec();
    let index = codec::seq_tail(&frame.head[start..], index, from, &mut head);
    (sealed(head, Vec::new()), index)
}

/// The index of a chunk frame built by [`chunk_each`] (`frame`: its bytes, length prefix
/// included, as a serving rank of an MPI pool receives it), read from its wire form
/// ([`SeqIndex::to_wire`]) and checked to fit the frame's `items` arguments.
///
/// # Errors
/// What is wrong with the index, as [`SeqIndex::from_wire`] says.
#[cfg(feature = "mpi")]
pub(crate) fn chunk_index(frame: &[u8], items: usize, wire: &[u8]) -> Result<SeqIndex, String> {
    let encoded = frame
        .len()
        .checked_sub(frame::TASK_ARG_START)
        .ok_or("a task frame too short for its header")?;
    SeqIndex::from_wire(wire, items, encoded)
}

/// One item's result in a [`chunk_each`] reply: its value, or why it has none.
pub(crate) type Each<R> = std::result::Result<R, Failed>;

/// Why an item of a [`chunk_each`] reply has no value: it panicked (`Ok((message,
/// location))`), or its worker was lost while it ran (`Err`, written by the parent: see
/// [`lost_item`]).
pub(crate) type Failed = std::result::Result<(String, Option<String>), Lost>;

/// A lost item, as the parent records it among the results of a chunk: `(kind, pid, code,
/// limit in microseconds, host)`, kind 0 for a worker killed by signal `code`, 1 for one that
/// exited with status `code`, 2 for a time limit; `host` names the host of a worker that died
/// on another rank of an MPI pool (the error's own `host`).
type Lost = (u8, u32, i32, u64, Option<String>);

/// The encoding of a [`chunk_each`] item that failed with `error` because its worker was lost
/// (it died, or was killed past the item's time limit), to stand among the results of the
/// items that finished. `None` for any other error.
pub(crate) fn lost_item(error: &Error) -> Option<Vec<u8>> {
    let lost: Lost = match error {
        Error::WorkerDied {
            pid,
            cause: ExitCause::Signal(sig),
            host,
        } => (0, *pid, *sig, 0, host.clone()),
        Error::WorkerDied {
            pid,
            cause: ExitCause::Exited(code),
            host,
        } => (1, *pid, *code, 0, host.clone()),
        Error::TimedOut { pid, limit } => (
            2,
            *pid,
            0,
            limit.as_micros().min(u64::MAX as u128) as u64,
            None,
        ),
        _ => return None,
    };
    let item: Each<()> = Err(Err(lost));
    codec::encode_element(&item).ok()
}

/// The error of an item that has no value, as [`Error::Item`] at `index`.
pub(crate) fn failed_item(failed: Failed, index: usize) -> Error {
    let source = match failed {
        Ok((message, location)) => Error::TaskPanicked { message, location },
        Err((0, pid, sig, _, host)) => Error::WorkerDied {
            pid,
            cause: ExitCause::Signal(sig),
            host,
        },
        Err((1, pid, code, _, host)) => Error::WorkerDied {
            pid,
            cause: ExitCause::Exited(code),
            host,
        },
        Err((_, pid, _, limit_us, _)) => Error::TimedOut {
            pid,
            limit: Duration::from_micros(limit_us),
        },
    };
    Error::Item {
        index,
        items: 1,
        source: Box::new(source),
    }
}

/// In a worker: the position, within the chunk being run, of the item being run;
/// `usize::MAX` outside a chunk. A worker runs one task at a time on one thread, so a plain
/// static is enough; the worker reads it when a task panics, to say which item did.
static CHUNK_ITEM: AtomicUsize = AtomicUsize::new(usize::MAX);

/// In a worker, when a task panicked: the position within its chunk of the item that did, or
/// `None` for a task of one item. Resets the position for the next task.
pub(crate) fn take_chunk_item() -> Option<usize> {
    let item = CHUNK_ITEM.swap(usize::MAX, Relaxed);
    (item != usize::MAX).then_some(item)
}

fn begin(trampoline: Trampoline, function: usize) -> Vec<u8> {
    frame::begin_task(TaskHeader {
        id: 0,
        trampoline: trampoline as usize as u64,
        function: function as u64,
        limit_us: 0,
    })
}

fn sealed(head: Vec<u8>, tail: Vec<u8>) -> OutFrame {
    let mut frame = OutFrame { head, tail };
    frame.seal();
    frame
}

fn encode_error(message: String) -> Error {
    Error::Encode {
        what: "argument",
        message,
    }
}

/// A worker's initializer, type-erased as a task is: the address of a trampoline that knows
/// the argument's type, the address of the user's `fn(A)` (or `fn()`), and the encoded
/// argument. A self-contained value of three plain parts, so that it can be copied into every
/// worker (by fork, or as bytes).
///
/// The argument's bytes live for the rest of the process (they are leaked when the builder is
/// configured), since both [`PoolBuilder`](crate::PoolBuilder) and the worker configuration are
/// `Copy`; an initializer argument is set once per pool and is usually small.
#[derive(Clone, Copy)]
pub(crate) struct Initializer {
    trampoline: usize,
    function: usize,
    arg: &'static [u8],
}

/// The erased signature of an initializer's trampoline.
///
/// # Safety
/// `function` must be the address of the function this trampoline was monomorphized for.
type InitTrampoline = unsafe fn(function: usize, arg: &[u8]);

impl Initializer {
    /// An initializer without an argument.
    pub(crate) fn plain(f: fn()) -> Initializer {
        Initializer {
            trampoline: init_plain as InitTrampoline as usize,
            function: f as usize,
            arg: &[],
        }
    }

    /// `f(arg)`, with `arg` encoded now, once, in the parent.
    ///
    /// # Errors
    /// The codec's message if `arg` cannot be encoded.
    pub(crate) fn with<A: Serialize + DeserializeOwned + 'static>(
        f: fn(A),
        arg: &A,
    ) -> std::result::Result<Initializer, String> {
        let mut bytes = Vec::new();
        codec::encode_into(arg, &mut bytes)?;
        Ok(Initializer {
            trampoline: init_with::<A> as InitTrampoline as usize,
            function: f as usize,
            arg: Box::leak(bytes.into_boxed_slice()),
        })
    }

    /// The initializer's three parts, to send to a process of the same program image (the
    /// zygote): the trampoline's and the function's addresses, and the argument's bytes.
    pub(crate) fn parts(&self) -> (usize, usize, &'static [u8]) {
        (self.trampoline, self.function, self.arg)
    }

    /// Puts an initializer back together from [`parts`](Self::parts).
    ///
    /// # Safety
    /// The parts must come from `parts` in a process running the same program image.
    pub(crate) unsafe fn from_parts(
        trampoline: usize,
        function: usize,
        arg: &'static [u8],
    ) -> Initializer {
        Initializer {
            trampoline,
            function,
            arg,
        }
    }

    /// Runs the initializer. Panics, as the initializer itself may, if the argument does not
    /// decode; the worker reports either as [`Error::InitializerPanicked`].
    ///
    /// # Safety
    /// `self` must have been made by [`plain`](Self::plain) or [`with`](Self::with) in the
    /// program image this process runs (the parent, or a fork of it).
    pub(crate) unsafe fn run(&self) {
        // SAFETY: per this function's contract the address is an `InitTrampoline` of this
        // program; fn pointers and usize have the same size on every platform this crate
        // builds for.
        let trampoline = unsafe { std::mem::transmute::<usize, InitTrampoline>(self.trampoline) };
        // SAFETY: `plain` and `with` paired this trampoline with its function.
        unsafe { trampoline(self.function, self.arg) }
    }
}

impl std::fmt::Debug for Initializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initializer")
            .field("arg_bytes", &self.arg.len())
            .finish()
    }
}

/// # Safety
/// `function` is the address of a `fn()`.
unsafe fn init_plain(function: usize, _arg: &[u8]) {
    // SAFETY: the caller guarantees `function` is a `fn()` of this program.
    let f = unsafe { std::mem::transmute::<usize, fn()>(function) };
    f();
}

/// # Safety
/// `function` is the address of a `fn(A)`.
unsafe fn init_with<A: DeserializeOwned + 'static>(function: usize, arg: &[u8]) {
    // SAFETY: the caller guarantees `function` is a `fn(A)` of this program.
    let f = unsafe { std::mem::transmute::<usize, fn(A)>(function) };
    match codec::decode::<A>(arg) {
        Ok(arg) => f(arg),
        Err(message) => panic!("could not decode the initializer's argument: {message}"),
    }
}

/// Runs a task in the worker: resolves the trampoline's address and calls it.
///
/// # Safety
/// `header` must come from a frame built by [`call`] or [`chunk`] in the process this worker was
/// forked from, so that both addresses name functions of this same program image.
pub(crate) unsafe fn run(header: TaskHeader, arg: Bytes, out: &mut OutFrame) -> Status {
    let limit = (header.limit_us > 0).then(|| Duration::from_micros(header.limit_us));
    // SAFETY: per this function's contract the address is a `Trampoline` of this program; fn
    // pointers and usize have the same size on every platform this crate builds for.
    let trampoline: Trampoline =
        unsafe { std::mem::transmute::<usize, Trampoline>(header.trampoline as usize) };
    // SAFETY: the frame paired this trampoline with the function it was monomorphized for.
    unsafe { trampoline(header.function, arg, out, limit) }
}

/// # Safety
/// `function` is the address of a `fn(A) -> R` (see [`Trampoline`]).
unsafe fn call_one<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    function: u64,
    arg: Bytes,
    out: &mut OutFrame,
    limit: Option<Duration>,
) -> Status {
    // SAFETY: the caller guarantees `function` is a `fn(A) -> R` of this program.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function as usize) };
    match codec::decode_owned::<A>(arg) {
        Ok(arg) => {
            if limit.is_some() {
                sys::set_alarm(limit);
            }
            encode_result(f(arg), out)
        }
        Err(message) => error_reply(out, Status::DecodeFailed, &message),
    }
}

/// # Safety
/// `function` is the address of a `fn(A) -> R` (see [`Trampoline`]).
unsafe fn call_chunk<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    function: u64,
    arg: Bytes,
    out: &mut OutFrame,
    limit: Option<Duration>,
) -> Status {
    // SAFETY: the caller guarantees `function` is a `fn(A) -> R` of this program.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function as usize) };
    match codec::decode::<Vec<A>>(&arg) {
        Ok(args) => {
            let results: Vec<R> = match limit {
                None => args
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        CHUNK_ITEM.store(i, Relaxed);
                        ledger::finished(i);
                        f(a)
                    })
                    .collect(),
                // The limit is per item: the clock restarts for each one.
                Some(_) => args
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        CHUNK_ITEM.store(i, Relaxed);
                        ledger::finished(i);
                        sys::set_alarm(limit);
                        f(a)
                    })
                    .collect(),
            };
            CHUNK_ITEM.store(usize::MAX, Relaxed);
            encode_result(results, out)
        }
        Err(message) => error_reply(out, Status::DecodeFailed, &message),
    }
}

/// # Safety
/// `function` is the address of a `fn(A) -> R` (see [`Trampoline`]).
unsafe fn call_chunk_each<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    function: u64,
    arg: Bytes,
    out: &mut OutFrame,
    limit: Option<Duration>,
) -> Status {
    // SAFETY: the caller guarantees `function` is a `fn(A) -> R` of this program.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function as usize) };
    let args = match codec::decode::<Vec<A>>(&arg) {
        Ok(args) => args,
        Err(message) => return error_reply(out, Status::DecodeFailed, &message),
    };
    // Each result goes to the ledger as soon as it is known, so that it outlives the worker.
    let mut ledger = ledger::Recorder::new();
    for a in args {
        if limit.is_some() {
            sys::set_alarm(limit);
        }
        // The location of a panic is taken as it is caught (and the worker clears it before
        // each task), so it is this item's own.
        let result: Each<R> = panic::catch_unwind(AssertUnwindSafe(|| f(a))).map_err(|payload| {
            let location = crate::worker::take_location();
            Ok((crate::worker::panic_message(payload), location))
        });
        let recorded = ledger.push(
            |buf| codec::encode_result_to_slice(&result, buf),
            || codec::encode_element(&result),
        );
        if let Err(message) = recorded {
            return error_reply(out, Status::EncodeFailed, &message);
        }
    }
    // The items not sent in partial frames, as a sequence of their own.
    codec::seq_header(ledger.count() as usize, &mut out.head);
    out.head.extend_from_slice(ledger.held());
    out.tail = Vec::new();
    Status::Ok
}

fn encode_result<R: Serialize + 'static>(result: R, out: &mut OutFrame) -> Status {
    match codec::encode_owned(result, &mut out.head) {
        Ok(tail) => {
            out.tail = tail;
            Status::Ok
        }
        Err(message) => error_reply(out, Status::EncodeFailed, &message),
    }
}

/// Replaces whatever payload `out` holds with an error message.
pub(crate) fn error_reply(out: &mut OutFrame, status: Status, message: &str) -> Status {
    out.head.truncate(frame::REPLY_PAYLOAD_START);
    out.head.extend_from_slice(message.as_bytes());
    out.tail = Vec::new();
    status
}
