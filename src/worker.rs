//! The worker's side: everything that runs in a forked child, and nothing else does.
//!
//! A worker runs the pool's initializer once, says it is ready, then loops: read a task frame,
//! run it (with a SIGALRM timer armed if the task has a time limit), write the reply frame. It
//! ends when the task pipe reaches end of file (the pool closed it, or the parent died), when it
//! has served `max_tasks` tasks, when its resident memory passed `max_memory` (after flagging
//! its last reply), or when the parent stops reading. It never
//! returns or unwinds into the code that forked it: [`serve`] ends the process with `_exit`.
//!
//! A panic in a task is caught and reported in the reply; the worker goes on. A panic anywhere
//! else in the loop ends the worker with [`EXIT_PANICKED`].

use std::any::Any;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

use crate::frame::{self, Bytes, FrameReader, OutFrame, Status};
use crate::sys;
use crate::task;

/// Exit status of a worker whose own loop (not a task) panicked.
const EXIT_PANICKED: i32 = 121;
/// Exit status of a worker that received a frame it could not parse.
const EXIT_PROTOCOL: i32 = 122;
/// Exit status of a worker whose pipes failed.
const EXIT_IO: i32 = 123;
/// How long a worker spins for its next task before it sleeps in `read`.
const SPIN: Duration = Duration::from_micros(50);
/// A reply buffer above this size is released after use, so one large result does not pin
/// memory in the worker.
const KEEP_BUFFER: usize = 1 << 20;

/// What a worker needs to know, fixed when the pool is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerConfig {
    pub(crate) initializer: Option<task::Initializer>,
    pub(crate) max_tasks: Option<usize>,
    /// Resident set size above which the worker exits after its current task.
    pub(crate) max_memory: Option<u64>,
    /// Whether a task's panic is reported on the worker's stderr.
    pub(crate) print_panics: bool,
}

/// Serves tasks from `input` and replies on `output` until done, then ends the process.
pub(crate) fn serve(input: RawFd, output: RawFd, config: WorkerConfig) -> ! {
    let code = panic::catch_unwind(AssertUnwindSafe(|| serve_loop(input, output, config)));
    sys::exit_now(code.unwrap_or(EXIT_PANICKED))
}

fn serve_loop(input: RawFd, output: RawFd, config: WorkerConfig) -> i32 {
    IN_WORKER.store(true, Ordering::Relaxed);
    PRINT_PANICS.store(config.print_panics, Ordering::Relaxed);
    let init_failure = config.initializer.and_then(|init| {
        // SAFETY: the pool built `init` in the program image this worker is a fork of.
        let ran = panic::catch_unwind(|| unsafe { init.run() });
        ran.err().map(panic_message)
    });
    let mut reader = FrameReader::new(u64::MAX);
    let mut out = OutFrame::default();
    frame::begin_reply(&mut out.head, 0, Status::Ready);
    out.seal();
    if write_frame(output, &out).is_err() {
        return EXIT_IO;
    }
    let mut served = 0usize;
    while config.max_tasks.is_none_or(|max| served < max) {
        let body = loop {
            match reader.take() {
                Ok(Some(body)) => break body,
                Ok(None) => {}
                Err(_) => return EXIT_PROTOCOL,
            }
            // The next task often follows at once: spin a moment before sleeping in read,
            // since waking a sleeping process on the other CPU is slow.
            sys::wait_readable(input, SPIN);
            match reader.fill(input) {
                Ok(0) => return 0, // the pool closed our task pipe: done
                Ok(_) => {}
                Err(_) => return EXIT_IO,
            }
        };
        let Some((header, arg)) = frame::parse_task(body) else {
            return EXIT_PROTOCOL;
        };
        frame::begin_reply(&mut out.head, header.id, Status::Ok);
        let status = match &init_failure {
            Some(message) => task::error_reply(&mut out, Status::InitializerPanicked, message),
            None => run_caught(header, arg, &mut out),
        };
        if header.limit_us > 0 {
            sys::set_alarm(None);
        }
        // Billiard's rule: past the memory cap, answer, then make way for a fresh worker.
        let retiring = config
            .max_memory
            .is_some_and(|cap| sys::resident_bytes() > cap);
        frame::set_reply_status(&mut out.head, status, retiring);
        out.seal();
        if write_frame(output, &out).is_err() {
            return EXIT_IO; // the parent is gone
        }
        if retiring {
            return 0;
        }
        out.tail = Vec::new();
        if out.head.capacity() > KEEP_BUFFER {
            out.head = Vec::new();
        }
        served += 1;
    }
    0
}

/// Runs one task, turning a panic into a [`Status::Panicked`] reply.
fn run_caught(header: frame::TaskHeader, arg: Bytes, out: &mut OutFrame) -> Status {
    // SAFETY: the header came from our parent, which built it with task::call or task::chunk in
    // the program image this process is a fork of.
    match panic::catch_unwind(AssertUnwindSafe(|| unsafe { task::run(header, arg, out) })) {
        Ok(status) => status,
        Err(payload) => {
            let message = panic_message(payload);
            task::error_reply(out, Status::Panicked, &message)
        }
    }
}

/// True in a worker process: the panic hook reports panics the worker's way.
static IN_WORKER: AtomicBool = AtomicBool::new(false);
/// In a worker: whether to report a task's panic on stderr at all.
static PRINT_PANICS: AtomicBool = AtomicBool::new(true);

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
    let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
        s
    } else if let Some(s) = info.payload().downcast_ref::<String>() {
        s.as_str()
    } else {
        "a panic with a non-string payload"
    };
    let line = format!(
        "forkpool worker {}: task panicked{location}: {message}\n",
        std::process::id()
    );
    let _ = write_all(2, line.as_bytes());
}

/// The message of a panic payload, if it is a string. The payload is dropped inside a guard, in
/// case its own destructor panics.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    };
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    message
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = sys::write(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Writes both parts of a frame, blocking until done.
fn write_frame(fd: RawFd, frame: &OutFrame) -> std::io::Result<()> {
    let mut offset = 0;
    while offset < frame.len() {
        offset += sys::writev(fd, &frame.parts_from(offset))?;
    }
    Ok(())
}
