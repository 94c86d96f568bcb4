//! Regressions of the dispatcher's hangs and crashes listed in issue 8 (items 2, 3, 4, 5, 12 and
//! 13), each named after the bug it pins. Every wait is bounded: a hang fails the test.
//!
//! The tests run one at a time (`SERIAL`): some send signals to every dispatcher thread of the
//! process, or count this process's pipes.

mod common;

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::{stat_field, within};
use forkpool::{Error, ExitCause, Pool};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// Issue 8, item 3: `task_timeout(Duration::MAX)` overflowed in the dispatcher's backstop; the
/// panic failed every pending task as Terminated and every later call as Closed.
#[test]
fn huge_time_limits_mean_no_practical_limit() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(1)
            .task_timeout(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        let r = pool
            .apply_async_timeout(square, 4, Duration::MAX - Duration::from_millis(100))
            .unwrap();
        assert_eq!(r.get().unwrap(), 16);
        assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        pool.close();
        pool.join().unwrap();
    })
}

fn never_returns() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Issue 8, item 4: with an initializer that never returns, a task with a time limit waited
/// forever (its clock started only after Ready), and close() + join() hung forever. Now the
/// task fails with TimedOut once its limit (and the backstop's slack) has passed, and join kills
/// the workers that never became ready.
#[test]
fn an_initializer_that_never_returns_times_out_tasks_and_join_returns() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        let limit = Duration::from_millis(300);
        let pool = Pool::builder()
            .processes(2)
            .initializer(never_returns)
            .task_timeout(limit)
            .build()
            .unwrap();
        let r = pool.apply_async(square, 3).unwrap();
        assert!(
            r.wait_timeout(Duration::from_secs(20)),
            "the limit did not bound the wait"
        );
        match r.get() {
            Err(Error::TimedOut { limit: l, .. }) => assert_eq!(l, limit),
            other => panic!("expected TimedOut, got {other:?}"),
        }
        pool.close();
        pool.join().unwrap();
        assert_eq!(pool.stats().workers_alive, 0);
    })
}

/// The same without a time limit: the task waits (there is no limit to bound it), but closing
/// the pool does not wait forever on workers stuck in their initializer.
#[test]
fn join_kills_workers_that_never_became_ready() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(2)
            .initializer(never_returns)
            .build()
            .unwrap();
        pool.close();
        pool.join().unwrap();
    })
}

/// Issue 8, item 12: close() + join() hung forever on an idle worker stopped by SIGSTOP. After
/// its task pipe closes, a worker that does not exit within a grace period is killed (SIGKILL
/// works on a stopped process).
#[test]
fn join_returns_with_a_stopped_idle_worker() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.apply(pid, ()).unwrap();
        // SAFETY: kill has no memory-safety preconditions; `worker` is this pool's live worker.
        assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGSTOP) }, 0);
        assert!(common::eventually(Duration::from_secs(10), || {
            common::state(worker) == Some('T')
        }));
        pool.close();
        pool.join().unwrap();
        assert!(common::eventually(Duration::from_secs(10), || {
            common::state(worker).is_none()
        }));
    })
}

/// close() + join() waited forever on a fork server stopped by SIGSTOP: the idle workers exit
/// (or are to be killed) but only the server reaps and reports them. Now the pool stops
/// waiting for a server that has not reported a worker it was asked to kill for 5 s, and ends
/// it; its workers die with it. Results already in hand stay; tasks still run while the server
/// is stopped (it is not on their path).
#[test]
fn join_returns_with_a_stopped_fork_server() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let worker = pool.apply(pid, ()).unwrap();
        let server: i32 = stat_field(worker, 4).unwrap().parse().unwrap();
        assert_eq!(
            stat_field(server as u32, 4),
            Some(std::process::id().to_string()),
            "workers are the server's children, and the server is ours"
        );
        // SAFETY: kill has no memory-safety preconditions; `server` is our own unreaped child.
        assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
        assert!(common::eventually(Duration::from_secs(10), || {
            common::state(server as u32) == Some('T')
        }));
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        let started = Instant::now();
        pool.close();
        pool.join().unwrap();
        // 1 s for the workers to exit, 5 s for the server to report them, 2 s for it to end.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "join took {:?}",
            started.elapsed()
        );
        assert!(common::eventually(Duration::from_secs(10), || {
            !common::exists(server as u32) && !common::exists(worker)
        }));
        assert!(common::descendants().is_empty(), "a process was left");
    })
}

/// What a stopped task does: with a time limit, the backstop kills it and it fails TimedOut.
/// (Without one it waits until the process is continued; `terminate` and drop still return.)
#[test]
fn a_stopped_task_with_a_limit_times_out() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        fn stop_self(_: ()) -> u64 {
            // SAFETY: kill and getpid have no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
            0
        }
        let pool = Pool::new(1).unwrap();
        let r = pool
            .apply_async_timeout(stop_self, (), Duration::from_millis(200))
            .unwrap();
        assert!(r.wait_timeout(Duration::from_secs(20)));
        assert!(matches!(r.get(), Err(Error::TimedOut { .. })));
        assert_eq!(pool.apply(square, 6).unwrap(), 36);
        let stopped = pool.apply_async(stop_self, ()).unwrap();
        pool.terminate();
        assert!(matches!(stopped.get(), Err(Error::Terminated)));
        pool.join().unwrap();
    })
}

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// The thread ids of this process's threads whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with(prefix).then_some(tid)
        })
        .collect()
}

/// Issue 8, item 13: a signal whose handler has no SA_RESTART (a profiler's SIGPROF) made the
/// dispatcher's wait for the fork server return EINTR, taken as "the fork server did not
/// answer in time": Pool::new failed, terminate was cut short.
#[test]
fn signals_without_sa_restart_do_not_fail_the_pool() {
    let _serial = serial();
    // SAFETY: sigaction is plain data, initialized before use; the handler only touches an
    // atomic. No SA_RESTART, on purpose.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut()),
            0
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let me = std::process::id() as i32;
            while !stop.load(Ordering::Relaxed) {
                for tid in threads_named("forkpool-dispat") {
                    // SAFETY: tgkill has no memory-safety preconditions; the handler is set.
                    unsafe { libc::syscall(libc::SYS_tgkill, me, tid, libc::SIGPROF) };
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let result = within(Duration::from_secs(120), || {
        for _ in 0..20 {
            let pool = Pool::new(4)?;
            let results: Vec<_> = (0..20u64)
                .map(|i| pool.apply_async(square, i))
                .collect::<Result<_, _>>()?;
            for (i, r) in results.into_iter().enumerate() {
                assert_eq!(r.get()?, (i * i) as u64);
            }
            pool.terminate();
            pool.join()?;
        }
        Ok::<(), Error>(())
    });
    stop.store(true, Ordering::Relaxed);
    hammer.join().unwrap();
    assert!(
        SIGNALS.load(Ordering::Relaxed) > 0,
        "no signal was delivered"
    );
    result.unwrap();
}

struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

/// Issue 8, item 13: a user's Waker that panicked in `wake` (called on the dispatcher thread
/// when the result came in) ended the dispatcher, and with it the pool.
#[test]
fn a_panicking_waker_does_not_end_the_pool() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        fn slow_square(x: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(200));
            x * x
        }
        let pool = Pool::new(1).unwrap();
        let mut r = pool.apply_async(slow_square, 7).unwrap();
        let waker = Waker::from(Arc::new(PanickingWaker));
        let mut cx = Context::from_waker(&waker);
        // Most likely pending: the waker is registered, and the dispatcher calls it.
        let polled = std::pin::Pin::new(&mut r).poll(&mut cx);
        assert!(r.wait_timeout(Duration::from_secs(20)));
        if let Poll::Ready(v) = polled {
            assert_eq!(v.unwrap(), 49);
        }
        assert_eq!(pool.apply(square, 8).unwrap(), 64);
        pool.close();
        pool.join().unwrap();
    })
}

use std::future::Future;

/// This process's pipe descriptors and their buffer sizes.
fn pipe_sizes() -> Vec<(RawFd, i32)> {
    common::open_fds()
        .into_iter()
        .filter(|&fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|t| t.to_string_lossy().starts_with("pipe:"))
        })
        // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
        .map(|fd| (fd, unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }))
        .collect()
}

/// Issue 8, item 13: every worker's two pipes were grown to 1 MiB up front, so 16 workers used
/// the whole per-user pipe quota (pipe-user-pages-soft), after which every pipe of that user is
/// cut to one page. Now a pipe grows only while a large frame passes, and shrinks back.
#[test]
fn worker_pipes_grow_only_for_large_frames() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        fn echo(v: Vec<u8>) -> Vec<u8> {
            v
        }
        let pool = Pool::new(4).unwrap();
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
        let large: Vec<_> = pipe_sizes()
            .into_iter()
            .filter(|&(_, size)| size > 64 << 10)
            .collect();
        assert!(large.is_empty(), "pipes grown up front: {large:?}");
        let big = vec![7u8; 8 << 20];
        assert_eq!(pool.apply(echo, big.clone()).unwrap(), big);
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        let large: Vec<_> = pipe_sizes()
            .into_iter()
            .filter(|&(_, size)| size > 64 << 10)
            .collect();
        assert!(large.is_empty(), "pipes not shrunk back: {large:?}");
        pool.terminate();
        pool.join().unwrap();
    })
}

/// Issue 8, item 2: a fork server killed from outside was replaced by a fork of the (by then
/// multi-threaded) parent. Now the pool fails its tasks with an error that names the fork server.
#[test]
fn a_killed_fork_server_fails_tasks_with_a_clear_error() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.apply(pid, ()).unwrap();
        let server: i32 = stat_field(worker, 4).unwrap().parse().unwrap();
        assert_ne!(
            server as u32,
            std::process::id(),
            "workers are the server's children"
        );
        // SAFETY: kill has no memory-safety preconditions; `server` is our own unreaped child.
        assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
        let check = |r: forkpool::Result<u32>| match r {
            Err(Error::Io { op, source }) => {
                assert_eq!(op, "fork server");
                assert!(
                    source.to_string().contains("fork server is gone"),
                    "{source}"
                );
            }
            other => panic!("expected the fork server's error, got {other:?}"),
        };
        // The worker dies with the server (PR_SET_PDEATHSIG), a moment after the server's socket
        // closes: until the pool has seen both, a task may still be answered by that worker, or
        // find it dying (WorkerDied). Never by a new one.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match pool.apply(pid, ()) {
                Err(Error::WorkerDied {
                    cause: ExitCause::Signal(libc::SIGKILL),
                    ..
                }) if Instant::now() < deadline => continue,
                Ok(p) if p == worker && Instant::now() < deadline => continue,
                other => break check(other),
            }
        }
        check(pool.apply(pid, ()));
        pool.terminate();
        pool.join().unwrap();
    })
}

/// Issue 8, item 13: with stdin, stdout and stderr closed, the pool's own descriptors landed on
/// 0-2, and a worker's panic line went into the fork server's socket. Runs in a child process
/// (this test binary again), which closes its stdio first.
#[test]
fn a_pool_works_in_a_process_with_stdio_closed() {
    let _serial = serial();
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "stdio_closed_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env("FORKPOOL_STDIO_CLOSED_CHILD", "1")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child with stdio closed hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the child failed: {status:?}");
}

/// The child of [`a_pool_works_in_a_process_with_stdio_closed`]; does nothing when run directly.
#[test]
#[ignore = "run by a_pool_works_in_a_process_with_stdio_closed in a child process"]
fn stdio_closed_child() {
    if std::env::var_os("FORKPOOL_STDIO_CLOSED_CHILD").is_none() {
        return;
    }
    fn panics(_: ()) -> u64 {
        panic!("a panic line on the worker's stderr")
    }
    let _ = std::io::stdout().flush();
    for fd in 0..3 {
        // SAFETY: closing the standard descriptors is what this child is for; Rust's standard
        // streams treat a closed descriptor as a sink.
        unsafe { libc::close(fd) };
    }
    let outcome = std::panic::catch_unwind(|| {
        let pool = Pool::new(1).unwrap();
        for fd in 0..3 {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
            assert!(!open, "a pool descriptor landed on {fd}");
        }
        for _ in 0..5 {
            assert!(matches!(
                pool.apply(panics, ()),
                Err(Error::TaskPanicked { .. })
            ));
            assert_eq!(pool.apply(square, 5).unwrap(), 25);
        }
        pool.close();
        pool.join().unwrap();
    });
    // The harness cannot report through closed descriptors: the exit status says it.
    std::process::exit(if outcome.is_ok() { 0 } else { 1 });
}

/// Issue 8, item 5: a callback that called get() on another apply_async_with result deadlocked
/// the callback thread (that result is complete only after its own callback, queued behind the
/// waiting one, has run), and with it later callbacks, terminate(), join() and drop.
#[test]
fn a_callback_may_wait_for_another_callbacks_result() {
    let _serial = serial();
    within(Duration::from_secs(60), || {
        fn slow_square(x: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(300));
            x * x
        }
        let pool = Pool::new(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let b = pool.apply_async_with(slow_square, 3, |_| {}).unwrap();
        let a = pool
            .apply_async_with(square, 2, move |_| {
                let _ = tx.send(b.get());
            })
            .unwrap();
        let got = rx.recv_timeout(Duration::from_secs(20));
        assert!(matches!(got, Ok(Ok(9))), "{got:?}");
        assert_eq!(a.get().unwrap(), 4);
        let (tx, rx) = std::sync::mpsc::channel();
        pool.apply_async_with(square, 5, move |r| {
            let _ = tx.send(*r.as_ref().unwrap());
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), 25);
        pool.close();
        pool.join().unwrap();
    })
}
