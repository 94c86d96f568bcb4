//! The worker's side: everything that runs in a forked child, and nothing else does.
//!
//! A worker runs the pool's initializer once, says it is ready, then loops: read a task frame,
//! run it (with a SIGALRM timer armed if the task has a time limit), write the reply frame (or,
//! while another task waits in its buffer, hold it back in its ledger and write many at once:
//! [`ledger::hold`], docs/DESIGN.md's *Held replies*). It
//! ends when the task pipe reaches end of file (the pool closed it, or the parent died), when it
//! has served `max_tasks` tasks, when its resident memory passed `max_memory` (after flagging
//! its last reply), or when the parent stops reading. It never
//! returns or unwinds into the code that forked it: [`serve`] ends the process with `_exit`.
//!
//! A panic in a task is caught and reported in the reply, with the location the panic hook
//! recorded; the worker goes on. A panic anywhere else in the loop ends the worker with
//! [`EXIT_PANICKED`].
//!
//! A worker names itself `forkpool-worker` (what `ps` shows) and leads a process group of its
//! own, so that when the pool kills it, the programs its tasks started die with it (see
//! [`sys::kill_worker`] and [`sys::reap_any_worker`]). Before it answers a task and before it
//! reads the next one, it checks that it is still itself: a task that forked and whose child
//! returned instead of exiting would otherwise have two processes answer on the same pipes;
//! the copy ends at once with `_exit`, touching nothing. A worker that ends normally flushes
//! stdout first, so text a task printed without a newline is not lost.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::frame::{self, Bytes, FrameReader, OutFrame, Status};
use crate::ledger;
use crate::spin::Spin;
use crate::sys::{self, SharedRegion};
use crate::task;

/// Exit status of a worker whose own loop (not a task) panicked.
const EXIT_PANICKED: i32 = 121;
/// Exit status of a worker that received a frame it could not parse.
const EXIT_PROTOCOL: i32 = 122;
/// Exit status of a worker whose pipes failed.
const EXIT_IO: i32 = 123;
/// The longest a worker spins for its next task before it sleeps in `read` (see [`Spin`]).
const SPIN: Duration = Duration::from_micros(50);
/// The longest a finished reply is held back while the worker runs the tasks waiting in its
/// buffer (see [`ledger::hold`]): past it, the next reply goes out with the held ones at once.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_micros(200);
/// A reply buffer above this size is released after use, so one large result does not pin
/// memory in the worker.
const KEEP_BUFFER: usize = 1 << 20;
/// How long a worker that is done may take to flush stdout. A lock another thread of the
/// parent held when the pool forked is never released in the worker: then SIGALRM ends it
/// rather than letting it hang.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// What a forkpool exit status of a worker means, for error messages: the statuses a worker
/// uses for its own failures. `None` for any other status (a task's own `exit`).
pub(crate) fn exit_status_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        sys::EXIT_SETUP_FAILED => "forkpool's status for a worker whose setup after fork failed",
        EXIT_PANICKED => "forkpool's status for a worker whose own loop panicked",
        EXIT_PROTOCOL => {
            "forkpool's status for a worker that received a task frame it could not parse"
        }
        EXIT_IO => {
            "forkpool's status for a worker whose pipes to the pool failed: did the task close \
             or replace descriptor 3 or 4 (with close or dup2)?"
        }
        _ => return None,
    })
}

/// What a worker needs to know, fixed when the pool is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerConfig {
    pub(crate) initializer: Option<task::Initializer>,
    pub(crate) max_tasks: Option<usize>,
    /// Resident set size above which the worker exits after its current task.
    pub(crate) max_memory: Option<u64>,
    /// Whether a task's panic is reported on the worker's stderr.
    pub(crate) print_panics: bool,
    /// The largest reply body the pool accepts: a larger result is answered with an error.
    pub(crate) max_frame: u64,
}

/// Serves tasks from `input` and replies on `output` until done, then ends the process.
/// `ledger` is the region shared with the pool in which chunks record their progress (see
/// [`crate::ledger`]).
pub(crate) fn serve(
    input: RawFd,
    output: RawFd,
    ledger: Option<SharedRegion>,
    config: WorkerConfig,
) -> ! {
    sys::set_process_name(c"forkpool-worker");
    // Best effort: without a group of its own, a killed worker's programs outlive it.
    let _ = sys::own_process_group();
    // The pid a check compares with comes from the atfork-kept cache (an atomic load, not a
    // system call per answer): a task's fork() through libc refreshes it in the copy.
    sys::watch_forks();
    let me = sys::cached_pid();
    ledger::install(ledger, output, config.max_frame);
    let code = panic::catch_unwind(AssertUnwindSafe(|| serve_loop(input, output, config, me)));
    let code = code.unwrap_or(EXIT_PANICKED);
    still_me(me);
    if code == 0 {
        flush_stdout();
    }
    sys::exit_now(code)
}

/// Ends the process at once if it is not the worker `me` but a copy of it that a task forked
/// and that returned into the worker's loop: the copy must not answer for the worker, nor read
/// its tasks, nor flush the output it inherited.
fn still_me(me: u32) {
    if sys::cached_pid() != me {
        sys::exit_now(0);
    }
}

/// Flushes stdout (and stderr), bounded by [`FLUSH_LIMIT`].
fn flush_stdout() {
    sys::set_alarm(Some(FLUSH_LIMIT));
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::set_alarm(None);
}

fn serve_loop(input: RawFd, output: RawFd, config: WorkerConfig, me: u32) -> i32 {
    IN_WORKER.store(true, Ordering::Relaxed);
    PRINT_PANICS.store(config.print_panics, Ordering::Relaxed);
    let init_failure = config.initializer.and_then(|init| {
        // SAFETY: the pool built `init` in the program image this worker is a fork of.
        let ran = panic::catch_unwind(|| unsafe { init.run() });
        ran.err().map(panic_message)
    });
    let mut reader = FrameReader::new(u64::MAX).split_after(frame::TASK_HEADER);
    let mut out = OutFrame::default();
    frame::begin_reply(&mut out.head, 0, Status::Ready);
    out.seal();
    still_me(me);
    if let Err(e) = write_frame(output, &out) {
        return pipe_failed("write to", output, &e);
    }
    let mut lent = Lent::default();
    lent.wrote(&mut out);
    let mut served = 0usize;
    // When the oldest reply held back was finished (see `ledger::hold`).
    let mut held_since: Option<Instant> = None;
    let spin = Spin::new(SPIN);
    // Only the worker's own code runs between a check (before the Ready frame, then before each
    // answer) and the next read, so each check also covers the read that follows it.
    while config.max_tasks.is_none_or(|max| served < max) {
        let body = loop {
            match reader.take() {
                Ok(Some(body)) => break body,
                Ok(None) => {}
                Err(_) => return EXIT_PROTOCOL,
            }
            // No task waits in the buffer: the replies held back go out before we wait.
            if let Err(code) = flush_held(output, &mut lent) {
                return code;
            }
            held_since = None;
            lent.release_read(output, &mut reader);
            // The next task often follows at once: spin a moment before sleeping in read,
            // since waking a sleeping process on the other CPU is slow.
            spin.run(|| sys::wait_readable(input, Duration::ZERO));
            if let Some(due) = reader.spare_due() {
                // Sleep no longer than the spare may wait; if no task came by then, give its
                // memory back before sleeping for good.
                let wait = due.saturating_duration_since(Instant::now());
                if !sys::readable_within(input, wait) {
                    reader.drop_spare();
                }
            }
            match reader.fill(input) {
                // End of file: the pool closed our task pipe, and we are done; unless a task
                // put something else (say /dev/null) in its place.
                Ok(0) if !sys::is_open_cloexec(input) => return replaced("read from", input),
                Ok(0) => return 0,
                Ok(_) => {}
                Err(e) => return pipe_failed("read from", input, &e),
            }
        };
        let Some((header, arg)) = frame::parse_task(body) else {
            return EXIT_PROTOCOL;
        };
        // Replies are held back only while another task waits behind this one: a held reply
        // never waits for the last task we have, which may be long.
        if reader.is_empty() {
            if let Err(code) = flush_held(output, &mut lent) {
                return code;
            }
            held_since = None;
        }
        let started = Instant::now();
        let run = ledger::begin(header.id);
        frame::begin_reply(&mut out.head, header.id, Status::Ok);
        let status = match &init_failure {
            // Cancelled while it waited in our pipe: answered, not run (it still counts
            // against max_tasks_per_child, as the pool counted it when it sent it).
            _ if !run => Status::Skipped,
            Some(message) => task::error_reply(&mut out, Status::InitializerPanicked, message),
            None => run_caught(header, arg, &mut out),
        };
        if header.limit_us > 0 {
            sys::set_alarm(None);
        }
        still_me(me);
        let status = fit_reply(&mut out, status, config.max_frame);
        // Billiard's rule: past the memory cap, answer, then make way for a fresh worker. The
        // cap is the task's memory, not ours: a spare buffer is given back first.
        if config.max_memory.is_some() {
            reader.drop_spare();
        }
        let retiring = config
            .max_memory
            .is_some_and(|cap| sys::resident_bytes() > cap);
        let finished = Instant::now();
        frame::set_reply_status(&mut out.head, status, retiring);
        frame::set_reply_run_time(&mut out.head, finished - started);
        out.seal();
        // While another task waits in the buffer, a small reply is held back in the ledger, where
        // it survives the worker, and goes out with the next ones in one write; for no longer
        // than HOLD_LIMIT by our clock (the pool takes it from the ledger if it waits longer
        // behind a long task: `dispatch::worker`).
        let fresh = held_since.is_none_or(|since| finished - since < HOLD_LIMIT);
        let held = !retiring
            && !reader.is_empty()
            && !out.splices_tail()
            && fresh
            && ledger::hold(out.parts_from(0));
        if held {
            held_since.get_or_insert(finished);
        } else {
            if let Err(code) = flush_held(output, &mut lent) {
                return code;
            }
            held_since = None;
            // A task that put a writable file in place of the reply pipe (dup2) would have the
            // answer vanish into it and its caller wait forever.
            if !sys::is_open_cloexec(output) {
                return replaced("write to", output);
            }
            if let Err(e) = write_frame(output, &out) {
                return pipe_failed("write to", output, &e);
            }
            lent.wrote(&mut out);
        }
        if retiring {
            return 0;
        }
        lent.release_read(output, &mut reader);
        out.tail = Vec::new();
        if out.head.capacity() > KEEP_BUFFER {
            out.head = Vec::new();
        }
        served += 1;
    }
    // max_tasks_per_child reached: what is held back goes out before the worker exits.
    flush_held(output, &mut lent).err().unwrap_or(0)
}

/// Writes the replies held back in the ledger, if any, in one write. `Err` holds the exit
/// status if the reply pipe failed or was replaced.
fn flush_held(output: RawFd, lent: &mut Lent) -> Result<(), i32> {
    if ledger::held_bytes() == 0 {
        return Ok(());
    }
    // As for every write to the reply pipe: not into a file a task put in its place.
    if !sys::is_open_cloexec(output) {
        return Err(replaced("write to", output));
    }
    match ledger::flush_held(output) {
        Ok(n) => {
            lent.written += n as u64;
            Ok(())
        }
        Err(e) => Err(pipe_failed("write to", output, &e)),
    }
}

/// Runs one task, turning a panic into a [`Status::Panicked`] reply whose payload is the
/// panic's location, a NUL byte, and its message (see [`split_panic_payload`]).
fn run_caught(header: frame::TaskHeader, arg: Bytes, out: &mut OutFrame) -> Status {
    take_location();
    // SAFETY: the header came from our parent, which built it with task::call or task::chunk in
    // the program image this process is a fork of.
    match panic::catch_unwind(AssertUnwindSafe(|| unsafe { task::run(header, arg, out) })) {
        Ok(status) => status,
        Err(payload) => {
            let location = take_location();
            let message = panic_message(payload);
            let mut payload = format!("{}\0{message}", location.unwrap_or_default());
            if let Some(item) = task::take_chunk_item() {
                // Which item of a chunk panicked: `CHUNK_ITEM` then `item` then NUL first.
                payload.insert_str(0, &format!("{CHUNK_ITEM}{item}\0"));
            }
            task::error_reply(out, Status::Panicked, &payload)
        }
    }
}

/// Marks a [`Status::Panicked`] payload that starts with the position, within its chunk, of
/// the item that panicked.
const CHUNK_ITEM: char = '\u{1}';

/// The parent's side of a chunk's [`Status::Panicked`] payload: the position of the item that
/// panicked, if the payload names one, and the rest for [`split_panic_payload`].
pub(crate) fn split_chunk_item(payload: &str) -> (Option<usize>, &str) {
    let named = payload
        .strip_prefix(CHUNK_ITEM)
        .and_then(|rest| rest.split_once('\0'))
        .and_then(|(item, rest)| Some((item.parse().ok()?, rest)));
    match named {
        Some((item, rest)) => (Some(item), rest),
        None => (None, payload),
    }
}

/// The parent's side of a [`Status::Panicked`] payload: `(message, location)`.
pub(crate) fn split_panic_payload(payload: &str) -> (String, Option<String>) {
    match payload.split_once('\0') {
        Some(("", message)) => (message.to_string(), None),
        Some((location, message)) => (message.to_string(), Some(location.to_string())),
        None => (payload.to_string(), None),
    }
}

/// Makes a reply fit the pool's frame limit: a result too large for it becomes a clear error
/// (the parent would otherwise see an oversized frame, a protocol violation, and kill the
/// worker), and an error message too large is cut short.
fn fit_reply(out: &mut OutFrame, status: Status, max_frame: u64) -> Status {
    let body = OutFrame::body_len;
    let mut status = status;
    if body(out) <= max_frame {
        return status;
    }
    if status == Status::Ok {
        let message = format!(
            "the result is {} bytes encoded, over the pool's limit of {max_frame} bytes \
             (PoolBuilder::max_frame_bytes): return less, or raise the limit",
            body(out) - frame::REPLY_HEADER as u64
        );
        status = task::error_reply(out, Status::EncodeFailed, &message);
    }
    if body(out) > max_frame {
        let room = (max_frame as usize).saturating_sub(frame::REPLY_HEADER);
        let mut keep = room.min(out.head.len() - frame::REPLY_PAYLOAD_START);
        let text = &out.head[frame::REPLY_PAYLOAD_START..];
        while keep > 0 && std::str::from_utf8(&text[..keep]).is_err() {
            keep -= 1;
        }
        out.head.truncate(frame::REPLY_PAYLOAD_START + keep);
        out.tail = Vec::new();
    }
    status
}

/// A worker's pipe to the pool was closed or replaced by a task (its close-on-exec flag is
/// gone).
fn replaced(what: &str, fd: RawFd) -> i32 {
    let error = std::io::Error::other("it was closed or replaced, as by dup2");
    pipe_failed(what, fd, &error)
}

/// A worker's pipe to the pool failed. Unless the pool simply stopped reading (EPIPE), says so
/// on stderr (if the pool prints panics, the worker's other line there), since the likely
/// cause is a task that closed or replaced the descriptor.
fn pipe_failed(what: &str, fd: RawFd, error: &std::io::Error) -> i32 {
    if error.kind() != std::io::ErrorKind::BrokenPipe && PRINT_PANICS.load(Ordering::Relaxed) {
        let line = format!(
            "forkpool worker {}: could not {what} descriptor {fd}, its pipe to the pool \
             ({error}); did the task close or replace it? The worker exits with status \
             {EXIT_IO}.\n",
            std::process::id()
        );
        let _ = write_all(2, line.as_bytes());
    }
    EXIT_IO
}

/// True in a worker process: the panic hook reports panics the worker's way.
static IN_WORKER: AtomicBool = AtomicBool::new(false);
/// In a worker: whether to report a task's panic on stderr at all.
static PRINT_PANICS: AtomicBool = AtomicBool::new(true);

thread_local! {
    /// In a worker: where the last panic on this thread happened, as the hook saw it.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes the location the panic hook recorded on this thread, if any.
pub(crate) fn take_location() -> Option<String> {
    LOCATION.with(|l| l.borrow_mut().take())
}

/// Installs, once per process and in the parent, a panic hook that reports a worker's panics
/// with [`report_panic`] and hands every other panic to the hook it replaced.
///
/// Installing it in a worker instead would take the hook's lock after the fork, and a thread of
/// the parent may have held that lock when the fork server was forked (it does while it
/// panics): the worker would hang. Reading the hook, as a panic does, only shares the lock.
pub(crate) fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_WORKER.load(Ordering::Relaxed) {
                if let Some(l) = info.location() {
                    let _ = LOCATION.try_with(|slot| {
                        if let Ok(mut slot) = slot.try_borrow_mut() {
                            *slot = Some(l.to_string());
                        }
                    });
                }
                if PRINT_PANICS.load(Ordering::Relaxed) {
                    report_panic(info);
                }
            } else {
                previous(info);
            }
        }));
    });
}

/// How a worker reports a panic: one line on stderr, written with a single `write(2)`.
///
/// The default hook would lock `stderr`, or the test harness's capture buffer, and another
/// thread of the parent may have held either lock at the moment of the fork, which would hang
/// the worker at its first panic. The message also reaches the caller in
/// [`Error::TaskPanicked`](crate::Error::TaskPanicked); this line adds where it happened.
fn report_panic(info: &panic::PanicHookInfo<'_>) {
    let location = info
        .location()
        .map_or_else(String::new, |l| format!(" at {l}"));
    let message = describe_payload(info.payload());
    let line = format!(
        "forkpool worker {}: task panicked{location}: {message}\n",
        std::process::id()
    );
    let _ = write_all(2, line.as_bytes());
}

/// The message of a panic payload (see [`describe_payload`]). The payload is dropped inside a
/// guard, in case its own destructor panics.
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let message = describe_payload(&*payload).into_owned();
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    message
}

/// A panic payload as text: the string itself for `&str`, `String` and `Box<str>` (as `panic!`
/// and `panic_any` make them), the value for integers, `bool` and `char`, the message for an
/// `std::error::Error`, and otherwise a note that the type is not one of those.
fn describe_payload(payload: &(dyn Any + Send)) -> Cow<'_, str> {
    macro_rules! shown {
        ($($t:ty),*) => {$(
            if let Some(v) = payload.downcast_ref::<$t>() {
                return Cow::Owned(format!("{v} (a panic_any payload of type {})", stringify!($t)));
            }
        )*};
    }
    if let Some(s) = payload.downcast_ref::<&str>() {
        return Cow::Borrowed(s);
    }
    if let Some(s) = payload.downcast_ref::<String>() {
        return Cow::Borrowed(s);
    }
    if let Some(s) = payload.downcast_ref::<Box<str>>() {
        return Cow::Borrowed(s);
    }
    if let Some(e) = payload.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>() {
        return Cow::Owned(e.to_string());
    }
    if let Some(e) = payload.downcast_ref::<Box<dyn std::error::Error + Send>>() {
        return Cow::Owned(e.to_string());
    }
    if let Some(e) = payload.downcast_ref::<std::io::Error>() {
        return Cow::Owned(e.to_string());
    }
    shown!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, bool, char, f32, f64);
    Cow::Borrowed(
        "a panic whose payload is neither a string nor a common type (see std::panic::panic_any)",
    )
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = sys::write(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Writes both parts of a frame, blocking until done. A large tail goes in as page references
/// (see [`OutFrame::spliced_from`]): the caller keeps it unchanged until the pipe is read.
fn write_frame(fd: RawFd, frame: &OutFrame) -> std::io::Result<()> {
    let mut offset = 0;
    while offset < frame.len() {
        offset += match frame.spliced_from(offset) {
            Some(rest) => sys::vmsplice(fd, rest, false)?,
            None => sys::writev(fd, &frame.copied_parts_from(offset))?,
        };
    }
    Ok(())
}

/// Results whose pages the reply pipe may still reference (they went in by
/// [`sys::vmsplice`]): kept unchanged, their memory not reused, until the parent has read them.
#[derive(Default)]
struct Lent {
    /// Each kept tail, with how many bytes had gone into the pipe in all once it was in.
    tails: Vec<(u64, Vec<u8>)>,
    /// Bytes written to the reply pipe in all by [`write_frame`]. The partial frames of a chunk
    /// (`ledger.rs`) are written elsewhere and not counted: that only makes a tail wait longer
    /// (what looks read is then less than what is), never freed early.
    written: u64,
}

impl Lent {
    /// Counts a frame written, and keeps its tail if that went to the pipe by reference.
    fn wrote(&mut self, frame: &mut OutFrame) {
        self.written += frame.len() as u64;
        if frame.splices_tail() {
            self.tails
                .push((self.written, std::mem::take(&mut frame.tail)));
        }
    }

    /// Frees the tails the parent has read: the pipe's unread bytes are the last ones
    /// written, so every tail that ends before them is read. A freed tail is offered to
    /// `reader` as its spare, for the next large task's argument (see
    /// [`FrameReader::keep_spare`]).
    fn release_read(&mut self, output: RawFd, reader: &mut FrameReader) {
        if self.tails.is_empty() {
            return;
        }
        if let Some(unread) = sys::pipe_unread(output) {
            let read = self.written.saturating_sub(unread as u64);
            // Kept in the order written, so the read ones are a prefix.
            let read_ones = self.tails.partition_point(|(end, _)| *end <= read);
            for (_, tail) in self.tails.drain(..read_ones) {
                reader.keep_spare(tail, Instant::now());
            }
        }
    }
}
