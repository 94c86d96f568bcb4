//! AsyncResult as a Future (in tokio's runtimes and a hand-written executor), callbacks, and
//! the pool's counters.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::within;
use forkpool::{Error, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_thousand_results_awaited_on_a_current_thread_runtime() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sum: u64 = rt.block_on(async {
            let pending: Vec<_> = (0..1000u64)
                .map(|i| pool.apply_async(square, i).unwrap())
                .collect();
            let mut sum = 0;
            for r in pending {
                sum += r.await.unwrap();
            }
            sum
        });
        assert_eq!(sum, (0..1000u64).map(|i| i * i).sum());
    })
}

#[test]
fn a_thousand_results_awaited_concurrently_on_a_multi_thread_runtime() {
    within(Duration::from_secs(60), || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sum: u64 = rt.block_on(async {
            let tasks: Vec<_> = (0..1000u64)
                .map(|i| {
                    let r = pool.apply_async(square, i).unwrap();
                    tokio::spawn(async move { r.await.unwrap() })
                })
                .collect();
            let mut sum = 0;
            for t in tasks {
                sum += t.await.unwrap();
            }
            sum
        });
        assert_eq!(sum, (0..1000u64).map(|i| i * i).sum());
    })
}

#[test]
fn errors_arrive_through_await_too() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let crash = pool
                .apply_async(|_: ()| -> u8 { std::process::abort() }, ())
                .unwrap();
            assert!(matches!(crash.await, Err(Error::WorkerDied { .. })));
            let timed = pool
                .apply_async_timeout(nap, 10_000, Duration::from_millis(100))
                .unwrap();
            assert!(matches!(timed.await, Err(Error::TimedOut { .. })));
            // A timeout from the runtime's side leaves the pool untouched.
            let slow = pool.apply_async(nap, 300).unwrap();
            assert!(tokio::time::timeout(Duration::from_millis(10), slow)
                .await
                .is_err());
            assert_eq!(pool.apply_async(square, 3).unwrap().await.unwrap(), 9);
        });
    })
}

/// Counts its wakeups; unparks the thread that made it.
struct CountingWaker {
    wakes: AtomicUsize,
    thread: std::thread::Thread,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// A minimal executor: poll, park until woken, poll again.
fn block_on<F: Future>(future: F) -> (F::Output, usize) {
    let counter = Arc::new(CountingWaker {
        wakes: AtomicUsize::new(0),
        thread: std::thread::current(),
    });
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return (v, counter.wakes.load(Ordering::SeqCst));
        }
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn a_hand_written_block_on_is_woken_by_the_pool() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let (value, wakes) = block_on(pool.apply_async(nap, 200).unwrap());
        assert_eq!(value.unwrap(), 200);
        assert!(wakes >= 1, "the pool never woke the executor");
    })
}

#[test]
fn a_result_dropped_before_completion_wakes_nobody_and_leaks_nothing() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let counter = Arc::new(CountingWaker {
            wakes: AtomicUsize::new(0),
            thread: std::thread::current(),
        });
        let waker = Waker::from(Arc::clone(&counter));
        let mut result = pool.apply_async(nap, 200).unwrap();
        assert!(Pin::new(&mut result)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(
            Arc::strong_count(&counter),
            3,
            "the slot holds a clone of the waker"
        );
        drop(result);
        assert_eq!(
            Arc::strong_count(&counter),
            2,
            "dropping the result released the waker"
        );
        // Let the task finish: nobody is woken.
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
        assert_eq!(counter.wakes.load(Ordering::SeqCst), 0);
        drop(waker);
        assert_eq!(Arc::strong_count(&counter), 1);
    })
}

use std::pin::Pin;

#[test]
fn callbacks_run_before_get_returns_for_success_and_failure() {
    within(Duration::from_secs(60), || {
        let pool = common::quiet_pool(2);
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut pending = Vec::new();
        for i in 0..20u64 {
            let log = Arc::clone(&log);
            let f: fn(u64) -> u64 = if i == 7 { |_| panic!("seven") } else { square };
            pending.push(
                pool.apply_async_with(f, i, move |r: &forkpool::Result<u64>| {
                    log.lock().unwrap().push(match r {
                        Ok(v) => format!("ok {v}"),
                        Err(e) => format!("err {e}"),
                    });
                })
                .unwrap(),
            );
        }
        for (i, r) in pending.into_iter().enumerate() {
            let got = r.get();
            let found = |entry: &String| {
                if i == 7 {
                    // "the task panicked at tests/async_results.rs:LINE:COL: seven"
                    entry.starts_with("err the task panicked at tests/async_results.rs:")
                        && entry.ends_with(": seven")
                } else {
                    *entry == format!("ok {}", i * i)
                }
            };
            assert!(
                log.lock().unwrap().iter().any(found),
                "callback for {i} had not run before get returned"
            );
            assert_eq!(got.is_ok(), i != 7);
        }
        pool.close();
        pool.join().unwrap();
        assert_eq!(log.lock().unwrap().len(), 20);
    })
}

#[test]
fn a_panicking_callback_changes_nothing() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let results: Vec<_> = (0..10u64)
            .map(|i| {
                let ran = Arc::clone(&ran);
                pool.apply_async_with(square, i, move |_: &forkpool::Result<u64>| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    if i % 2 == 0 {
                        panic!("callback {i} panics");
                    }
                })
                .unwrap()
            })
            .collect();
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(
                r.get().unwrap(),
                (i * i) as u64,
                "get returns the task's own result"
            );
        }
        assert_eq!(
            ran.load(Ordering::SeqCst),
            10,
            "the callback thread survived the panics"
        );
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        pool.close();
        pool.join().unwrap();
    })
}

#[test]
fn callbacks_of_terminated_tasks_see_terminated() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
        let results: Vec<_> = (0..5)
            .map(|_| {
                let seen = Arc::clone(&seen);
                pool.apply_async_with(nap, 10_000, move |r: &forkpool::Result<u64>| {
                    seen.lock()
                        .unwrap()
                        .push(matches!(r, Err(Error::Terminated)));
                })
                .unwrap()
            })
            .collect();
        pool.terminate();
        pool.join().unwrap();
        for r in results {
            assert!(matches!(r.get(), Err(Error::Terminated)));
        }
        assert_eq!(*seen.lock().unwrap(), vec![true; 5]);
    })
}

#[test]
fn stats_count_what_happened() {
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(2)
            .print_panics(false)
            .max_tasks_per_child(10)
            .build()
            .unwrap();
        let fresh = pool.stats();
        assert_eq!(
            (fresh.submitted, fresh.workers_alive, fresh.workers_replaced),
            (0, 2, 0)
        );
        let slow: Vec<_> = (0..6)
            .map(|_| pool.apply_async(nap, 300).unwrap())
            .collect();
        // Both workers pick up a task (they run for 300 ms each, so this is seen).
        let mut busy = pool.stats();
        assert!(common::eventually(Duration::from_secs(20), || {
            busy = pool.stats();
            busy.running == 2
        }));
        assert_eq!(busy.submitted, 6);
        assert_eq!(busy.running + busy.queued + busy.completed, 6);
        assert_eq!(busy.running, 2, "one running task per worker: {busy:?}");
        for r in slow {
            r.get().unwrap();
        }
        let _ = pool.apply(|_: ()| -> u8 { panic!("p") }, ());
        let _ = pool.apply(|_: ()| -> u8 { std::process::abort() }, ());
        let _ = pool
            .apply_async_timeout(nap, 10_000, Duration::from_millis(50))
            .unwrap()
            .get();
        pool.map_chunked(square, 0..30, 1).unwrap();
        let s = pool.stats();
        assert_eq!(s.submitted, 6 + 3 + 30);
        assert_eq!(s.completed, s.submitted);
        assert_eq!((s.failed, s.panicked, s.died, s.timed_out), (3, 1, 1, 1));
        assert_eq!((s.running, s.queued), (0, 0));
        // The crash and the timeout each cost a worker. Of the 37 other tasks, the two workers
        // alive now served at most 9 each and the two that died at most 9 each, so at least one
        // more worker reached 10 and was replaced: 3 replacements at least.
        assert!(s.workers_replaced >= 3, "{s:?}");
        assert!(common::eventually(Duration::from_secs(5), || pool
            .stats()
            .workers_alive
            == 2));
    })
}
