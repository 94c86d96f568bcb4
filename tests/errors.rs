//! Errors that say what happened: panic locations and payloads, a result over the frame limit,
//! a task that broke its worker's pipes, absurd pool sizes, and which system call failed.

mod common;

use common::{within, LIMIT};
use forkpool::{Error, ExitCause, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn my_pid(_: ()) -> u32 {
    std::process::id()
}

fn quiet_pool() -> Pool {
    Pool::builder()
        .processes(1)
        .print_panics(false)
        .build()
        .unwrap()
}

fn panics_on_a_known_line(_: ()) -> u32 {
    panic!("boom on line {}", line!())
}

/// Issue 10, item 9: `TaskPanicked` carries the panic's location, also with
/// print_panics(false), and `message` is the payload as before.
#[test]
fn a_panic_reports_its_location_and_message() {
    within(LIMIT, || {
        let pool = quiet_pool();
        match pool.apply(panics_on_a_known_line, ()) {
            Err(e @ Error::TaskPanicked { .. }) => {
                let text = e.to_string();
                let Error::TaskPanicked { message, location } = e else {
                    unreachable!()
                };
                let line: u32 = message.trim_start_matches("boom on line ").parse().unwrap();
                let location = location.expect("a location");
                assert!(
                    location.starts_with(&format!("tests/errors.rs:{line}:")),
                    "{location}"
                );
                assert!(
                    text.contains(&location) && text.contains(&message),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The worker survived.
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
    })
}

#[derive(Debug)]
struct Opaque;

fn panics_with_an_integer(_: ()) -> u32 {
    std::panic::panic_any(42_i32)
}

fn panics_with_an_error(_: ()) -> u32 {
    let e: Box<dyn std::error::Error + Send + Sync> = "the disk is full".into();
    std::panic::panic_any(e)
}

fn panics_with_an_opaque_value(_: ()) -> u32 {
    std::panic::panic_any(Opaque)
}

/// Regression (issue 8, item 14): a non-string panic payload lost all detail ("a panic with a
/// non-string payload"), location included.
#[test]
fn non_string_panic_payloads_keep_their_detail() {
    within(LIMIT, || {
        let pool = quiet_pool();
        let panicked = |f: fn(()) -> u32| match pool.apply(f, ()) {
            Err(Error::TaskPanicked { message, location }) => (message, location),
            other => panic!("{other:?}"),
        };
        let (message, location) = panicked(panics_with_an_integer);
        assert!(
            message.contains("42") && message.contains("i32"),
            "{message}"
        );
        assert!(location.unwrap().starts_with("tests/errors.rs:"));
        let (message, _) = panicked(panics_with_an_error);
        assert_eq!(message, "the disk is full");
        let (message, location) = panicked(panics_with_an_opaque_value);
        assert!(message.contains("panic_any"), "{message}");
        assert!(location.is_some());
    })
}

fn big_result(n: usize) -> Vec<u8> {
    vec![7; n]
}

/// Regression (issue 8, item 14): an honest result over max_frame_bytes was reported as "a
/// malformed reply" and its worker killed.
#[test]
fn a_result_over_the_frame_limit_is_a_clear_error_and_the_worker_lives() {
    within(LIMIT, || {
        let pool = Pool::builder()
            .processes(1)
            .max_frame_bytes(4096)
            .build()
            .unwrap();
        let worker = pool.apply(my_pid, ()).unwrap();
        assert_eq!(pool.apply(big_result, 100).unwrap().len(), 100);
        match pool.apply(big_result, 10_000) {
            Err(Error::Encode {
                what: "result",
                message,
            }) => {
                assert!(message.contains("max_frame_bytes"), "{message}");
                assert!(message.contains("4096"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pool.apply(my_pid, ()).unwrap(),
            worker,
            "the worker was replaced"
        );
        assert_eq!(pool.stats().workers_replaced, 0);
    })
}

fn close_reply_pipe(_: ()) -> u32 {
    // SAFETY: closing a descriptor has no memory-safety preconditions; breaking the worker's
    // reply pipe (descriptor 4) is the point of this task.
    unsafe { libc::close(4) };
    1
}

fn replace_reply_pipe_with_dev_null(_: ()) -> u32 {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    // SAFETY: dup2 has no memory-safety preconditions; replacing the worker's reply pipe
    // (descriptor 4) with /dev/null is the point of this task.
    unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 4) };
    1
}

/// Regression (issue 8, item 14): a task that put a writable file over its worker's reply
/// pipe (dup2) had its reply vanish into the file; the pool saw the pipe close, killed the
/// lingering worker and reported a bare `WorkerDied { Signal(9) }`. The worker now notices
/// (the descriptor lost its close-on-exec flag) and exits with the status that explains it.
#[test]
fn a_task_that_replaces_its_workers_reply_pipe_is_explained() {
    within(LIMIT, || {
        let pool = quiet_pool();
        match pool.apply(replace_reply_pipe_with_dev_null, ()) {
            Err(
                e @ Error::WorkerDied {
                    cause: ExitCause::Exited(123),
                    ..
                },
            ) => {
                let text = e.to_string();
                assert!(text.contains("descriptor 3 or 4"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
    })
}

/// Regression (issue 8, item 14): a task that closed or replaced its worker's descriptors gave
/// a bare `WorkerDied { Exited(123) }`; the message now says what the status means.
#[test]
fn a_task_that_breaks_its_workers_pipes_is_explained() {
    within(LIMIT, || {
        let pool = quiet_pool();
        match pool.apply(close_reply_pipe, ()) {
            Err(
                e @ Error::WorkerDied {
                    cause: ExitCause::Exited(123),
                    ..
                },
            ) => {
                let text = e.to_string();
                assert!(text.contains("descriptor 3 or 4"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
    })
}

/// Regression (issue 8, item 10): Pool::new(1 << 40) aborted the parent, Pool::new(usize::MAX)
/// panicked the dispatcher. Both are refused at once, before anything is forked.
#[test]
fn absurd_pool_sizes_are_refused_at_once() {
    within(LIMIT, || {
        for n in [usize::MAX, 1 << 40, (1 << 22) + 1] {
            match Pool::new(n) {
                Err(Error::InvalidArgument { message }) => assert!(!message.is_empty()),
                other => panic!("Pool::new({n}): {other:?}"),
            }
        }
    })
}

fn set_open_file_limit(n: u64) {
    // SAFETY: rlimit is plain data; setrlimit only reads it.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = n as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Helper for `the_descriptor_limit_is_checked_up_front_and_the_failed_call_named`: lowers
/// its own RLIMIT_NOFILE, which must not affect the other tests.
#[test]
#[ignore = "run by the_descriptor_limit_is_checked_up_front_and_the_failed_call_named"]
fn descriptor_limit_helper() {
    if std::env::var_os("FORKPOOL_NOFILE_HELPER").is_none() {
        return;
    }
    set_open_file_limit(256);
    // 10,000 workers need 20,000 descriptors: refused before any fork.
    match Pool::new(10_000) {
        Err(Error::InvalidArgument { message }) => assert!(message.contains("RLIMIT_NOFILE")),
        other => panic!("{other:?}"),
    }
    assert!(common::descendants().is_empty(), "something was forked");
    // A pool that fits, whose worker retires after each task; then no descriptor is left for
    // the replacement's pipes: the error names the call that failed. The limit bounds
    // descriptor numbers, so fill every number up to 24 first: the pool's own are above, and
    // a limit of 25 then leaves no number free (while poll, which needs nfds <= the limit,
    // still works).
    // SAFETY: dup only creates descriptors.
    loop {
        // SAFETY: as above.
        let fd = unsafe { libc::dup(2) };
        assert!(fd >= 0, "dup failed");
        if fd >= 24 {
            break;
        }
    }
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    set_open_file_limit(25);
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    match pool.apply(square, 3) {
        Err(Error::Io { op, source }) => {
            assert_eq!(op, "pipe", "{source}");
            assert_eq!(source.raw_os_error(), Some(libc::EMFILE));
        }
        other => panic!("{other:?}"),
    }
    set_open_file_limit(256);
}

/// Regression (issue 8, item 10): Pool::new(10_000) forked for 12.7 s, then reported "fork
/// failed: Too many open files" when pipe() had failed.
#[test]
fn the_descriptor_limit_is_checked_up_front_and_the_failed_call_named() {
    within(LIMIT, || {
        let out = common::run_ignored("descriptor_limit_helper", "FORKPOOL_NOFILE_HELPER");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

/// `Pool::new` when the fork server's fork fails (EAGAIN, as at `RLIMIT_NPROC` or with the
/// process table full): the error names `fork`, and nothing is left behind, neither the
/// dispatcher thread (started before the fork, then told there is nothing to run) nor a
/// descriptor nor a child. Run in a fresh process, which makes forks fail with a seccomp
/// filter: `clone` without `CLONE_THREAD`, `fork` and `vfork` get EAGAIN; threads still start.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_failed_fork_of_the_server_leaves_nothing_behind() {
    within(LIMIT, || {
        let out = common::run_ignored("fork_failure_helper", "FORKPOOL_FORK_FAILURE_HELPER");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("FORK FAILED CLEANLY"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "run by a_failed_fork_of_the_server_leaves_nothing_behind"]
fn fork_failure_helper() {
    use std::time::Duration;
    if std::env::var_os("FORKPOOL_FORK_FAILURE_HELPER").is_none() {
        return;
    }
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let (before, fds) = (threads(), common::open_fds());
    refuse_forks_on_this_thread();
    match Pool::new(2) {
        Err(Error::Io { op, source }) => {
            assert_eq!(op, "fork", "{source}");
            assert_eq!(source.raw_os_error(), Some(libc::EAGAIN), "{source}");
        }
        other => panic!("{other:?}"),
    }
    // The dispatcher thread was joined; the kernel may list it a moment longer.
    assert!(
        common::eventually(Duration::from_secs(5), || threads() == before),
        "a thread was left running"
    );
    assert_eq!(common::open_fds(), fds, "a descriptor was left open");
    // SAFETY: waitpid with WNOHANG only asks; no child exists to be reaped.
    let waited = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        waited == -1 && errno == Some(libc::ECHILD),
        "a child was left: {waited}"
    );
    println!("FORK FAILED CLEANLY");
}

/// Installs, for the calling thread and the threads it starts, a seccomp filter under which
/// every fork fails with EAGAIN and threads still start (x86_64).
#[cfg(target_arch = "x86_64")]
fn refuse_forks_on_this_thread() {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // Offsets into struct seccomp_data: nr, arch, then args[0] (its low half, little-endian).
    let filter = [
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 0, 7, AUDIT_ARCH_X86_64), // another arch: allow
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 4, 0, libc::SYS_fork as u32),  // refuse
        op(JEQ_K, 3, 0, libc::SYS_vfork as u32), // refuse
        op(JEQ_K, 0, 3, libc::SYS_clone as u32), // not clone: allow
        op(LD_W_ABS, 0, 0, 16),
        op(JSET_K, 1, 0, libc::CLONE_THREAD as u32), // a thread: allow
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EAGAIN as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: no_new_privs and a seccomp filter change only this thread (and the threads it
    // starts, and this test process); `program` points at `filter`, alive across the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}
