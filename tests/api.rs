//! The pool's API contract: payload sizes, many submitting threads, lazy imap, codec errors,
//! lifecycle errors, and the auto traits the types promise.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::within;
use forkpool::{AsyncResult, Error, Imap, Pool};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn square(x: u64) -> u64 {
    x * x
}

fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn types_are_send_and_sync_as_promised() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<Pool>();
    send::<AsyncResult<Vec<u8>>>();
    send::<Imap<String>>();
    error::<Error>();
}

#[test]
fn sixty_four_mib_both_ways_at_once() {
    within(Duration::from_secs(120), || {
        const SIZE: usize = 64 << 20;
        // One worker and two tasks: while the worker writes the first 64 MiB result, the parent
        // is still writing the second 64 MiB argument to it.
        let pool = Pool::new(1).unwrap();
        let a = pool.apply_async(echo, pattern(SIZE, 1)).unwrap();
        let b = pool.apply_async(echo, pattern(SIZE, 2)).unwrap();
        assert!(a.get().unwrap() == pattern(SIZE, 1));
        assert!(b.get().unwrap() == pattern(SIZE, 2));
    })
}

#[test]
fn large_payloads_on_several_workers() {
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        let sizes = [0, 1, 65_535, 65_536, 65_537, 1 << 20, 9 << 20];
        let pending: Vec<_> = sizes
            .iter()
            .map(|&n| pool.apply_async(echo, pattern(n, n as u8)).unwrap())
            .collect();
        for (r, &n) in pending.into_iter().zip(&sizes) {
            assert!(r.get().unwrap() == pattern(n, n as u8), "size {n}");
        }
    })
}

#[test]
fn eight_threads_submit_at_once() {
    within(Duration::from_secs(60), || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let base = t * 1000;
                    let pending: Vec<_> = (base..base + 300)
                        .map(|i| pool.apply_async(square, i).unwrap())
                        .collect();
                    let mapped = pool.map(square, base..base + 300).unwrap();
                    for (i, r) in (base..).zip(pending) {
                        assert_eq!(r.get().unwrap(), i * i);
                    }
                    assert_eq!(
                        mapped,
                        (base..base + 300).map(|i| i * i).collect::<Vec<_>>()
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        pool.close();
        pool.join().unwrap();
    })
}

static PULLED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn imap_pulls_input_lazily_and_works_on_endless_input() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let endless = (0u64..).inspect(|_| {
            PULLED.fetch_add(1, Ordering::SeqCst);
        });
        let mut it = pool.imap(square, endless).unwrap();
        for i in 0..50u64 {
            assert_eq!(it.next().unwrap().unwrap(), i * i);
        }
        // Bounded window: a few items per worker ahead of what was taken.
        let pulled = PULLED.load(Ordering::SeqCst);
        assert!(
            (50..=50 + 8 * pool.processes()).contains(&pulled),
            "pulled {pulled}"
        );
        // Input is pulled only inside next(): once every task submitted so far has completed,
        // with no call to next() meanwhile, nothing more has been pulled (a feeder that refilled
        // the window as results came in would have).
        assert!(common::eventually(Duration::from_secs(20), || {
            let s = pool.stats();
            s.completed == s.submitted
        }));
        assert_eq!(
            PULLED.load(Ordering::SeqCst),
            pulled,
            "imap pulled input nobody asked for"
        );
        // Dropping it early stops the input, and close+join finish.
        drop(it);
        pool.close();
        pool.join().unwrap();
    })
}

#[test]
fn imap_results_arrive_while_later_tasks_run() {
    within(Duration::from_secs(60), || {
        fn slow_after_first(x: u64) -> u64 {
            if x > 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            x
        }
        let pool = Pool::new(2).unwrap();
        let started = Instant::now();
        let mut it = pool.imap(slow_after_first, 0..10).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), 0);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the first result waited for later tasks"
        );
        assert_eq!(
            it.map(Result::unwrap).collect::<Vec<_>>(),
            (1..10).collect::<Vec<_>>()
        );
    })
}

#[test]
fn imap_unordered_yields_in_completion_order() {
    within(Duration::from_secs(60), || {
        fn sleep_ms(ms: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        }
        let pool = Pool::new(2).unwrap();
        let got: Vec<u64> = pool
            .imap_unordered(sleep_ms, [600, 10])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, [10, 600]);
        let got: Vec<u64> = pool
            .imap(sleep_ms, [600, 10])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, [600, 10]);
    })
}

#[test]
fn an_imap_started_before_close_still_finishes() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let it = pool.imap(square, 0..200).unwrap();
        pool.close();
        assert!(matches!(pool.imap(square, 0..1), Err(Error::Closed)));
        let got: Vec<u64> = it.map(Result::unwrap).collect();
        assert_eq!(got, (0..200).map(|i| i * i).collect::<Vec<_>>());
        pool.join().unwrap();
    })
}

#[test]
fn an_imap_outlives_its_pool() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let mut it = pool.imap(square, 0..1_000_000).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), 0);
        drop(pool);
        // Results already delivered may still come out; after that, Terminated, and the end.
        let rest: Vec<_> = it.collect();
        assert!(rest.len() < 100, "a terminated imap kept pulling input");
        assert!(rest.iter().any(|r| matches!(r, Err(Error::Terminated))));
    })
}

/// A value whose encoding always fails.
#[derive(Debug, Deserialize)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unencodable refuses"))
    }
}

/// A value that encodes fine but never decodes.
#[derive(Debug, Serialize)]
struct Undecodable(u32);

impl<'de> Deserialize<'de> for Undecodable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("Undecodable refuses"))
    }
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn an_argument_that_fails_to_encode_is_refused_by_the_call() {
    within(Duration::from_secs(30), || {
        let pool = Pool::new(1).unwrap();
        let f = |_: Unencodable| 1u8;
        assert!(matches!(
            pool.apply_async(f, Unencodable),
            Err(Error::Encode {
                what: "argument",
                ..
            })
        ));
        let err = pool.map(f, [Unencodable]).unwrap_err();
        assert!(matches!(err.cause(), Error::Encode { .. }), "{err:?}");
        assert_eq!(err.index(), Some(0));
        let mut it = pool.imap(f, [Unencodable]).unwrap();
        assert!(matches!(
            it.next().map(|r| r.map_err(Error::into_cause)),
            Some(Err(Error::Encode { .. }))
        ));
        assert!(it.next().is_none());
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
    })
}

#[test]
fn a_result_that_fails_to_encode_fails_its_task_and_the_worker_goes_on() {
    within(Duration::from_secs(30), || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.apply(pid, ()).unwrap();
        match pool.apply(|_: ()| Unencodable, ()) {
            Err(e @ Error::Encode { what: "result", .. }) => {
                assert!(e.to_string().contains("Unencodable refuses"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.apply(pid, ()).unwrap(), worker);
    })
}

#[test]
fn decode_failures_are_reported_where_they_happen() {
    within(Duration::from_secs(30), || {
        let pool = Pool::new(1).unwrap();
        // The argument decodes in the worker: the task fails with Decode.
        assert!(matches!(
            pool.apply(|x: Undecodable| x.0, Undecodable(1)),
            Err(Error::Decode {
                what: "argument",
                ..
            })
        ));
        // The result decodes in get().
        let r = pool.apply_async(|x: u32| Undecodable(x), 1).unwrap();
        assert!(matches!(r.get(), Err(Error::Decode { what: "result", .. })));
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
    })
}

#[test]
fn lifecycle_errors() {
    within(Duration::from_secs(30), || {
        assert!(matches!(Pool::new(0), Err(Error::InvalidArgument { .. })));
        assert!(matches!(
            Pool::builder().processes(0).build(),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Pool::builder().processes(1).max_tasks_per_child(0).build(),
            Err(Error::InvalidArgument { .. })
        ));
        let pool = Pool::new(1).unwrap();
        assert!(matches!(
            pool.map_chunked(square, [1], 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(pool.join(), Err(Error::StillRunning)));
        pool.close();
        assert!(matches!(pool.apply_async(square, 1), Err(Error::Closed)));
        assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
        assert!(matches!(pool.map(square, [1]), Err(Error::Closed)));
        assert!(matches!(
            pool.map_async(square, Vec::<u64>::new()),
            Err(Error::Closed)
        ));
        assert!(matches!(
            pool.imap_unordered(square, [1]),
            Err(Error::Closed)
        ));
        pool.join().unwrap();
        pool.join().unwrap();
        pool.terminate();
    })
}

#[test]
fn close_lets_queued_tasks_finish() {
    within(Duration::from_secs(60), || {
        fn slow(x: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(20));
            x
        }
        let pool = Pool::new(2).unwrap();
        let pending: Vec<_> = (0..50)
            .map(|i| pool.apply_async(slow, i).unwrap())
            .collect();
        pool.close();
        pool.join().unwrap();
        for (i, r) in pending.into_iter().enumerate() {
            assert!(r.ready());
            assert_eq!(r.get().unwrap(), i as u64);
        }
    })
}

#[test]
fn map_reports_the_first_failure_in_input_order_after_all_finish() {
    within(Duration::from_secs(60), || {
        fn fail_some(x: u64) -> u64 {
            match x {
                30 => {
                    std::thread::sleep(Duration::from_millis(300));
                    panic!("item 30")
                }
                70 => panic!("item 70"),
                _ => x,
            }
        }
        let pool = common::quiet_pool(2);
        let err = pool.map_chunked(fail_some, 0..100, 10).unwrap_err();
        assert_eq!(err.index(), Some(30), "the panic is pinned to its item");
        match err.into_cause() {
            Error::TaskPanicked { message, .. } => assert_eq!(message, "item 30"),
            other => panic!("{other:?}"),
        }
    })
}

#[test]
fn concurrent_join_and_close_from_threads() {
    within(Duration::from_secs(60), || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let r = pool.apply_async(square, 6).unwrap();
        pool.close();
        let joiners: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || pool.join().unwrap())
            })
            .collect();
        for j in joiners {
            j.join().unwrap();
        }
        assert_eq!(r.get().unwrap(), 36);
    })
}

/// Regression: after many short tasks, a worker was trusted to hold 8 tasks at once, so a
/// following batch of long tasks piled into its pipe while the other worker idled.
#[test]
fn long_tasks_after_short_ones_spread_over_the_workers() {
    within(Duration::from_secs(60), || {
        fn busy(ms: u64) -> u32 {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(ms) {
                std::hint::spin_loop();
            }
            std::process::id()
        }
        let pool = Pool::new(2).unwrap();
        for i in 0..2000 {
            pool.apply(square, i).unwrap();
        }
        let pids = pool.map_chunked(busy, vec![30u64; 8], 1).unwrap();
        let mut per_worker = std::collections::HashMap::<u32, usize>::new();
        for p in pids {
            *per_worker.entry(p).or_default() += 1;
        }
        assert_eq!(per_worker.len(), 2, "{per_worker:?}");
        assert!(per_worker.values().all(|&n| n <= 5), "{per_worker:?}");
    })
}
