//! Workers that die mid-task, for real: SIGSEGV, abort, stack overflow, `process::exit`, SIGKILL,
//! and panics. Each failure must fail exactly its own task; the pool replaces the worker and
//! every other task, queued or later, completes. (Python's Pool hangs forever here.)

mod common;

use std::time::Duration;

use common::within;
use forkpool::{Error, ExitCause, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn segfault(_: ()) -> u64 {
    // SAFETY: not safe at all; writing through a null pointer is the point of this task.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    0
}

fn abort(_: ()) -> u64 {
    std::process::abort()
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    recurse(pad[0] + 1) + pad[63]
}

fn overflow_stack(_: ()) -> u64 {
    recurse(0)
}

fn exit3(_: ()) -> u64 {
    std::process::exit(3)
}

fn sigkill_self(_: ()) -> u64 {
    // SAFETY: kill and getpid have no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(10));
    0
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// A task that takes long enough (2 ms) that each worker gets one at a time.
fn slow_pid(_: ()) -> u32 {
    std::thread::sleep(Duration::from_millis(2));
    std::process::id()
}

fn panics(msg: String) -> u64 {
    panic!("{msg}")
}

/// Runs `task` on a 2-worker pool with ordinary tasks queued before and after it, and checks
/// that exactly that task failed with WorkerDied, with the expected cause, and that the pool
/// still has 2 live workers.
fn dies_alone(task: fn(()) -> u64, expect: impl Fn(ExitCause) -> bool + Send + 'static) {
    within(Duration::from_secs(60), move || {
        let pool = Pool::new(2).unwrap();
        let before: Vec<_> = (0..20)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        let bad = pool.apply_async(task, ()).unwrap();
        let after: Vec<_> = (20..40)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        match bad.get() {
            Err(Error::WorkerDied { pid, cause, .. }) => {
                assert!(pid > 0);
                assert!(expect(cause), "unexpected cause {cause:?}");
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        for (i, r) in before.into_iter().chain(after).enumerate() {
            assert_eq!(r.get().unwrap(), (i as u64) * (i as u64));
        }
        // The pool is whole again: ordinary work still runs on 2 distinct live workers.
        let pids = common::distinct_pids(2, Duration::from_secs(20), || {
            pool.map_chunked(slow_pid, vec![(); 20], 1).unwrap()
        });
        assert_eq!(pids.len(), 2, "{pids:?}");
        for p in pids {
            assert!(common::exists(p));
        }
        pool.close();
        pool.join().unwrap();
    })
}

#[test]
fn segfault_fails_only_its_task() {
    dies_alone(segfault, |c| c == ExitCause::Signal(libc::SIGSEGV));
}

#[test]
fn abort_fails_only_its_task() {
    dies_alone(abort, |c| c == ExitCause::Signal(libc::SIGABRT));
}

#[test]
fn stack_overflow_fails_only_its_task() {
    // Rust's guard-page handler reports the overflow and aborts; without it, SIGSEGV.
    dies_alone(overflow_stack, |c| {
        c == ExitCause::Signal(libc::SIGABRT) || c == ExitCause::Signal(libc::SIGSEGV)
    });
}

#[test]
fn process_exit_fails_only_its_task() {
    dies_alone(exit3, |c| c == ExitCause::Exited(3));
}

#[test]
fn sigkill_fails_only_its_task() {
    dies_alone(sigkill_self, |c| c == ExitCause::Signal(libc::SIGKILL));
}

#[test]
fn worker_died_message_names_pid_and_signal() {
    within(Duration::from_secs(30), || {
        let pool = Pool::new(1).unwrap();
        let err = pool.apply(sigkill_self, ()).unwrap_err();
        let Error::WorkerDied { pid, .. } = err else {
            panic!("{err:?}")
        };
        let text = err.to_string();
        assert!(text.contains(&pid.to_string()), "{text}");
        assert!(text.contains("signal 9 (SIGKILL)"), "{text}");
        assert!(text.contains("replaced"), "{text}");
        let text = pool.apply(exit3, ()).unwrap_err().to_string();
        assert!(text.contains("exited with status 3"), "{text}");
    })
}

#[test]
fn panic_keeps_message_and_worker() {
    within(Duration::from_secs(30), || {
        let pool = common::quiet_pool(1);
        let first = pool.apply(pid, ()).unwrap();
        match pool.apply(panics, "disk on fire".to_string()) {
            Err(Error::TaskPanicked { message, .. }) => assert_eq!(message, "disk on fire"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pool.apply(pid, ()).unwrap(),
            first,
            "the worker survives a panic"
        );
        assert_eq!(pool.apply(square, 9).unwrap(), 81);
    })
}

#[test]
fn a_replaced_worker_is_a_new_process() {
    within(Duration::from_secs(30), || {
        let pool = Pool::new(1).unwrap();
        let first = pool.apply(pid, ()).unwrap();
        assert!(pool.apply(abort, ()).is_err());
        let second = pool.apply(pid, ()).unwrap();
        assert_ne!(first, second);
        assert!(!common::exists(first), "the dead worker was reaped");
    })
}

#[test]
fn every_worker_crashing_at_once_recovers() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let crashes: Vec<_> = (0..10)
            .map(|_| pool.apply_async(segfault, ()).unwrap())
            .collect();
        let work: Vec<_> = (0..50)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        for c in crashes {
            assert!(matches!(c.get(), Err(Error::WorkerDied { .. })));
        }
        for (i, r) in work.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
    })
}

#[test]
fn workers_killed_from_outside_are_replaced_and_the_queue_finishes() {
    within(Duration::from_secs(60), || {
        fn slow_square(x: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(20));
            x * x
        }
        let pool = Pool::new(2).unwrap();
        let pids: std::collections::HashSet<u32> = pool
            .map_chunked(
                |_: ()| {
                    std::thread::sleep(Duration::from_millis(50));
                    std::process::id()
                },
                vec![(); 4],
                1,
            )
            .unwrap()
            .into_iter()
            .collect();
        let work: Vec<_> = (0..40)
            .map(|i| pool.apply_async(slow_square, i).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        for p in &pids {
            // SAFETY: kill has no memory-safety preconditions; the pids are our pool's workers.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
        let mut died = 0;
        for (i, r) in work.into_iter().enumerate() {
            match r.get() {
                Ok(v) => assert_eq!(v, (i * i) as u64),
                Err(Error::WorkerDied { cause, .. }) => {
                    assert_eq!(cause, ExitCause::Signal(libc::SIGKILL));
                    died += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        // At most the task each killed worker was running fails.
        assert!(
            died <= pids.len(),
            "{died} tasks failed for {} kills",
            pids.len()
        );
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
    })
}

#[test]
fn a_crash_in_map_fails_map_with_that_error() {
    within(Duration::from_secs(30), || {
        fn maybe_abort(x: u64) -> u64 {
            if x == 13 {
                std::process::abort();
            }
            x
        }
        let pool = Pool::new(2).unwrap();
        let err = pool.map(maybe_abort, 0..100).unwrap_err();
        assert!(matches!(err.cause(), Error::WorkerDied { .. }), "{err:?}");
        // Chunks of 13 (Python's default for 100 items on 2 workers): 13 is the second's first.
        assert_eq!(err.index(), Some(13));
        assert_eq!(
            pool.map(maybe_abort, 0..10).unwrap(),
            (0..10).collect::<Vec<_>>()
        );
    })
}

#[test]
fn a_crash_in_imap_fails_only_that_item() {
    within(Duration::from_secs(30), || {
        fn maybe_die(x: u64) -> u64 {
            match x {
                5 => std::process::exit(9),
                7 => panic!("seven"),
                _ => x * 2,
            }
        }
        let pool = common::quiet_pool(2);
        let got: Vec<_> = pool.imap(maybe_die, 0..20).unwrap().collect();
        assert_eq!(got.len(), 20);
        for (i, r) in got.into_iter().enumerate() {
            if let Err(e) = &r {
                assert_eq!(e.index(), Some(i), "{e}");
            }
            match i {
                5 => assert!(matches!(
                    r.map_err(Error::into_cause),
                    Err(Error::WorkerDied {
                        cause: ExitCause::Exited(9),
                        ..
                    })
                )),
                7 => assert!(matches!(
                    r.map_err(Error::into_cause),
                    Err(Error::TaskPanicked { .. })
                )),
                _ => assert_eq!(r.unwrap(), i as u64 * 2),
            }
        }
        let mut unordered: Vec<_> = pool.imap_unordered(maybe_die, 0..20).unwrap().collect();
        assert_eq!(unordered.len(), 20);
        unordered.retain(|r| r.is_err());
        assert_eq!(unordered.len(), 2);
    })
}

#[test]
fn initializer_that_panics_fails_tasks_instead_of_looping() {
    within(Duration::from_secs(30), || {
        fn bad_init() {
            panic!("no config");
        }
        let pool = Pool::builder()
            .processes(2)
            .print_panics(false)
            .initializer(bad_init)
            .build()
            .unwrap();
        for _ in 0..3 {
            match pool.apply(square, 2) {
                Err(Error::InitializerPanicked { message }) => assert_eq!(message, "no config"),
                other => panic!("{other:?}"),
            }
        }
    })
}

#[test]
fn initializer_that_crashes_fails_tasks_without_hanging() {
    within(Duration::from_secs(30), || {
        fn crash_init() {
            std::process::abort();
        }
        let pool = Pool::builder()
            .processes(2)
            .initializer(crash_init)
            .build()
            .unwrap();
        for _ in 0..3 {
            assert!(matches!(
                pool.apply(square, 2),
                Err(Error::WorkerDied { .. })
            ));
        }
        pool.terminate();
        pool.join().unwrap();
    })
}

/// Helper for `print_panics_controls_the_workers_stderr_line`: run in a child process of the
/// test binary with its stderr captured.
#[test]
#[ignore = "run by print_panics_controls_the_workers_stderr_line in a separate process"]
fn print_panics_helper() {
    let Some(print) = std::env::var_os("FORKPOOL_PRINT_PANICS") else {
        return;
    };
    let pool = Pool::builder()
        .processes(1)
        .print_panics(print == "1")
        .build()
        .unwrap();
    assert!(pool.apply(panics, "marker-7f3a".to_string()).is_err());
}

#[test]
fn print_panics_controls_the_workers_stderr_line() {
    within(Duration::from_secs(60), || {
        let stderr_of = |print: &str| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "print_panics_helper", "--nocapture"])
                .env("FORKPOOL_PRINT_PANICS", print)
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        assert!(
            stderr_of("1").contains("task panicked at"),
            "the default prints the panic"
        );
        let quiet = stderr_of("0");
        assert!(
            !quiet.contains("marker-7f3a"),
            "print_panics(false) printed: {quiet}"
        );
    })
}
