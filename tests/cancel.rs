//! `AsyncResult::cancel` (issue 10, item 1), with real workers: a queued task never runs, a
//! running one has its worker killed and replaced, no other task is affected, and a result
//! already in stays.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, exists, within, LIMIT};
use forkpool::{Error, Pool};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// Writes the worker's pid into `path`, then sleeps a minute: a task that is running for as
/// long as a test cares, and says where.
fn mark_and_sleep(path: PathBuf) -> u32 {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}

/// Writes `path` and returns at once: a task that leaves a trace if it ever runs.
fn touch(path: PathBuf) -> u32 {
    std::fs::write(&path, b"ran").unwrap();
    std::process::id()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("forkpool-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits until `path` holds the pid a `mark_and_sleep` task wrote.
fn running_pid(path: &PathBuf) -> u32 {
    let mut pid = 0;
    assert!(
        eventually(LIMIT, || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            pid != 0
        }),
        "the task did not start"
    );
    pid
}

#[test]
fn cancelling_a_running_task_kills_its_worker_and_a_new_one_serves() {
    within(LIMIT * 2, || {
        let pool = Pool::new(2).unwrap();
        let marker = scratch("running");
        let long = pool.apply_async(mark_and_sleep, marker.clone()).unwrap();
        let victim = running_pid(&marker);
        // Another task runs meanwhile on the other worker, and must not notice.
        let other = pool.apply_async(nap, 300).unwrap();
        assert!(long.cancel());
        assert!(long.ready(), "a cancelled handle is ready at once");
        assert!(matches!(long.get(), Err(Error::Cancelled)));
        assert!(
            eventually(LIMIT, || !exists(victim)),
            "worker {victim} still exists"
        );
        assert_eq!(other.get().unwrap(), 300);
        let served: Vec<u32> = (0..20).map(|_| pool.apply(pid, ()).unwrap()).collect();
        assert!(!served.contains(&victim));
        let stats = pool.stats();
        assert_eq!(stats.cancelled, 1);
        assert_eq!(stats.died, 0, "a cancel is no crash");
        assert!(stats.workers_replaced >= 1);
        pool.close();
        pool.join().unwrap();
    })
}

#[test]
fn a_cancelled_queued_task_never_runs() {
    within(LIMIT * 2, || {
        let pool = Pool::new(1).unwrap();
        let marker = scratch("blocker");
        let trace = scratch("trace");
        let long = pool.apply_async(mark_and_sleep, marker.clone()).unwrap();
        let victim = running_pid(&marker);
        let queued = pool.apply_async(touch, trace.clone()).unwrap();
        assert!(queued.cancel());
        assert!(!queued.cancel(), "a second cancel finds it done");
        assert!(matches!(queued.get(), Err(Error::Cancelled)));
        // The worker is untouched by the queued task's cancel: still running the long task.
        std::thread::sleep(Duration::from_millis(200));
        assert!(exists(victim) && !long.ready());
        assert!(long.cancel());
        pool.close();
        pool.join().unwrap();
        assert!(!trace.exists(), "the cancelled task ran");
        assert_eq!(pool.stats().cancelled, 2);
    })
}

#[test]
fn cancel_after_the_result_is_in_returns_false_and_keeps_it() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let r = pool.apply_async(nap, 1).unwrap();
        assert!(r.wait_timeout(LIMIT));
        assert!(!r.cancel());
        assert_eq!(r.get().unwrap(), 1);
        assert_eq!(pool.stats().cancelled, 0);
    })
}

#[test]
fn cancelling_a_map_async_cancels_the_chunks_not_done_and_sends_no_more() {
    within(LIMIT * 2, || {
        let pool = Pool::new(2).unwrap();
        let mut args = vec![1u64; 4];
        args.extend([60_000; 4]);
        let r = pool.map_async(nap, args).unwrap();
        // The quick items finish; the long ones run (or wait).
        assert!(eventually(LIMIT, || pool.stats().running == 2));
        assert!(r.cancel());
        assert!(matches!(r.get(), Err(Error::Cancelled)));
        // Both workers ran a long item: both are replaced, and the pool serves again.
        assert_eq!(pool.apply(nap, 2).unwrap(), 2);
        pool.close();
        pool.join().unwrap();
        let stats = pool.stats();
        assert!(stats.cancelled >= 2, "{stats:?}");
        assert_eq!(stats.died, 0);
    })
}

#[test]
fn a_callback_sees_the_cancel() {
    within(LIMIT * 2, || {
        let pool = Pool::new(1).unwrap();
        let marker = scratch("callback");
        let seen = Arc::new(Mutex::new(None));
        let into = Arc::clone(&seen);
        let r = pool
            .apply_async_with(mark_and_sleep, marker.clone(), move |res| {
                *into.lock().unwrap() = Some(matches!(res, Err(Error::Cancelled)));
            })
            .unwrap();
        running_pid(&marker);
        assert!(r.cancel());
        assert!(matches!(r.get(), Err(Error::Cancelled)));
        pool.close();
        pool.join().unwrap(); // join waits for the callbacks
        assert_eq!(*seen.lock().unwrap(), Some(true));
    })
}

/// A cancel racing the result: for every task exactly one of "cancel returned false and the
/// result is kept" or "cancel returned true and get says Cancelled", and nothing else fails.
#[test]
fn cancel_races_with_completion_without_losing_or_doubling_anything() {
    within(LIMIT * 3, || {
        let pool = Pool::new(2).unwrap();
        let square = |x: u64| x * x;
        let mut won = 0;
        let mut lost = 0;
        for round in 0..300u64 {
            let r = pool.apply_async(square, round).unwrap();
            // Spread the cancels over the task's life: queued, in the pipe, running, done.
            for _ in 0..(round % 7) * 50 {
                std::hint::spin_loop();
            }
            if round % 5 == 0 {
                std::thread::yield_now();
            }
            let cancelled = r.cancel();
            match (cancelled, r.get()) {
                (true, Err(Error::Cancelled)) => won += 1,
                (false, Ok(v)) => {
                    assert_eq!(v, round * round);
                    lost += 1;
                }
                (c, other) => panic!("round {round}: cancel {c}, get {other:?}"),
            }
        }
        assert_eq!(won + lost, 300);
        let check: Vec<u64> = pool.map(square, 0..50u64).unwrap();
        assert_eq!(check, (0..50).map(|x| x * x).collect::<Vec<_>>());
        pool.close();
        pool.join().unwrap();
        let stats = pool.stats();
        assert_eq!(stats.died, 0, "{stats:?}");
        assert!(stats.cancelled <= won as u64, "{stats:?}");
    })
}

/// Polls a future to completion on this thread (the pool wakes it).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn an_awaited_result_that_is_cancelled_gives_cancelled() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let marker = scratch("future");
        let r = pool.apply_async(mark_and_sleep, marker.clone()).unwrap();
        running_pid(&marker);
        assert!(r.cancel());
        assert!(matches!(block_on(r), Err(Error::Cancelled)));
    })
}

/// A task cancelled while it waits in a worker's pipe, behind the task the worker runs, is
/// answered unrun: the pool asks the worker, through its ledger, to skip it. It never runs,
/// even for a moment, and its worker is not killed for it.
#[test]
fn a_cancelled_task_waiting_in_a_workers_pipe_never_runs_and_costs_no_worker() {
    within(LIMIT * 2, || {
        let pool = Pool::new(1).unwrap();
        // Short tasks first: the worker then holds several tasks at once, so the next ones
        // are written into its pipe behind the one it runs.
        for _ in 0..20 {
            pool.apply(nap, 0).unwrap();
        }
        let worker = pool.apply(pid, ()).unwrap();
        for round in 0..5 {
            let marker = scratch(&format!("skipped-{round}"));
            let long = pool.apply_async(nap, 300).unwrap();
            let waiting = pool.apply_async(touch, marker.clone()).unwrap();
            let after = pool.apply_async(pid, ()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert!(waiting.cancel());
            assert!(matches!(waiting.get(), Err(Error::Cancelled)));
            assert_eq!(long.get().unwrap(), 300);
            assert_eq!(
                after.get().unwrap(),
                worker,
                "round {round}: the worker was replaced"
            );
            assert!(!marker.exists(), "round {round}: the cancelled task ran");
        }
        let stats = pool.stats();
        assert_eq!(stats.workers_replaced, 0, "{stats:?}");
        assert_eq!(stats.cancelled, 5, "{stats:?}");
    })
}
