//! Ports the pool tests of CPython's `Lib/test/_test_multiprocessing.py` to `forkpool`, run
//! against real forked worker processes.
//!
//! Ported, each test naming its CPython original in a comment:
//! * `_TestPool`: `test_apply`, `test_map`, `test_starmap`, `test_starmap_async`,
//!   `test_map_async`, `test_map_async_callbacks` (no callbacks here: `wait`/`ready`/`get`),
//!   `test_map_unplicklable` (an argument whose `Serialize` fails), `test_map_chunksize`,
//!   `test_map_handle_iterable_exception` and `test_imap_handle_iterable_exception` (a Rust
//!   iterator cannot fail, so the failure is an item that cannot be encoded), `test_async`,
//!   `test_async_timeout`, `test_imap`, `test_imap_unordered`, `test_make_pool`,
//!   `test_terminate`, `test_empty_iterable`, `test_context` (dropping the pool),
//!   `test_traceback` and `test_wrapped_exception` (a panic keeps its message),
//!   `test_map_no_failfast`.
//! * `_TestPoolWorkerErrors`: `test_async_error_callback`, `test_unpickleable_result`.
//! * `_TestPoolWorkerLifetime`: `test_pool_worker_lifetime`,
//!   `test_pool_worker_lifetime_early_close`.
//! * `_TestInitializers`: `test_pool_initializer`.
//! * `MiscTestCase`: `test_large_pool` (50 workers here rather than 200).
//!
//! Not ported: `test_release_task_refs` (Rust ownership releases arguments and results; there
//! is no reference count to observe) and `Pool(-1)` (the process count is a `usize`).
//!
//! Tests that look at this process's children hold [`exclusive`]; every other test holds
//! [`shared`], so no other test's workers come and go while the children are counted.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{descendants, eventually, exists, within};
use forkpool::{Error, Pool};
use serde::{Deserialize, Serialize, Serializer};

// ---------------------------------------------------------------------------------------------
// Serialization of tests that count child processes.

static CHILDREN_LOCK: RwLock<()> = RwLock::new(());

/// Held by tests that do not count children.
fn shared() -> RwLockReadGuard<'static, ()> {
    CHILDREN_LOCK.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held by tests that count children: no other test forks or reaps meanwhile.
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CHILDREN_LOCK
        .write()
        .unwrap_or_else(PoisonError::into_inner)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------------------------
// Tasks (CPython's module-level helpers `sqr`, `mul`, `identity`, ...).

fn sqr(x: u64) -> u64 {
    x * x
}

/// CPython's `sqr(x, wait)`.
fn sqr_wait((x, wait_ms): (u64, u64)) -> u64 {
    sleep(Duration::from_millis(wait_ms));
    x * x
}

fn mul((x, y): (u64, u64)) -> u64 {
    x * y
}

fn sleep_ms(ms: u64) -> u64 {
    sleep(Duration::from_millis(ms));
    ms
}

fn parse_int(s: String) -> i64 {
    s.parse().unwrap()
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn sqr_and_pid(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

fn raise_runtime_error(_: ()) -> u32 {
    panic!("RuntimeError(123) # some comment")
}

fn raise_formatted(x: u32) -> u32 {
    panic!("RuntimeError: bad value {x}")
}

fn raising(_: ()) -> u32 {
    panic!("KeyError: key")
}

/// Item 3 fails at once, item 7 only after a sleep: `raise_large_valuerror`'s role.
const LATE_FAILURE: Duration = Duration::from_millis(500);
fn fail_3_and_7(i: u64) -> u64 {
    match i {
        3 => panic!("item 3 failed"),
        7 => {
            sleep(LATE_FAILURE);
            panic!("item 7 failed")
        }
        _ => i,
    }
}

/// The later items finish first, so order comes from the pool, not from timing.
fn reverse_sleep(i: u64) -> u64 {
    sleep(Duration::from_millis((8 - i) * 30));
    i
}

static INITIALIZED: AtomicU64 = AtomicU64::new(0);

fn initializer() {
    INITIALIZED.store(42, SeqCst);
}

fn read_initialized(_: u64) -> u64 {
    INITIALIZED.load(SeqCst)
}

/// A value that refuses to be encoded when it holds [`REFUSED`]: CPython's class `A` whose
/// `__reduce__` raises.
#[derive(Debug, Deserialize, PartialEq)]
struct Picky(u64);

const REFUSED: u64 = 13;

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == REFUSED {
            Err(serde::ser::Error::custom("Picky(13) refuses to be encoded"))
        } else {
            s.serialize_newtype_struct("Picky", &self.0)
        }
    }
}

fn sqr_picky(p: Picky) -> u64 {
    p.0 * p.0
}

/// CPython's `unpickleable_result`: a result that cannot be encoded in the worker.
fn make_picky(x: u64) -> Picky {
    Picky(x)
}

fn squares(n: u64) -> Vec<u64> {
    (0..n).map(sqr).collect()
}

fn assert_encode_argument<T: std::fmt::Debug>(r: Result<T, Error>) {
    // From map and imap the error names its item (Error::Item); what happened is its cause.
    match r.map_err(Error::into_cause) {
        Err(Error::Encode { what, message }) => {
            assert_eq!(what, "argument");
            assert!(message.contains("refuses"), "message: {message}");
        }
        other => panic!("expected Encode {{ what: \"argument\" }}, got {other:?}"),
    }
}

fn assert_panicked<T: std::fmt::Debug>(r: Result<T, Error>, expected: &str) {
    match r.map_err(Error::into_cause) {
        Err(Error::TaskPanicked { message, .. }) => assert_eq!(message, expected),
        other => panic!("expected TaskPanicked({expected:?}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// _TestPool

#[test]
fn apply() {
    // CPython: _TestPool.test_apply
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
        assert_eq!(pool.apply(sqr_wait, (3, 0)).unwrap(), 9);
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn map_and_map_chunked() {
    // CPython: _TestPool.test_map
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        assert_eq!(pool.map(sqr, 0..10).unwrap(), squares(10));
        assert_eq!(pool.map_chunked(sqr, 0..100, 20).unwrap(), squares(100));
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn map_chunked_100_over_1000_items() {
    // CPython: _TestPool.test_imap (its `chunksize=100` over 1000 items part, as a map)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        assert_eq!(pool.map_chunked(sqr, 0..1000, 100).unwrap(), squares(1000));
        // A chunk size of 0 is refused rather than looping forever.
        assert!(matches!(
            pool.map_chunked(sqr, 0..10, 0),
            Err(Error::InvalidArgument { .. })
        ));
    });
}

#[test]
fn map_results_come_in_input_order() {
    // CPython: _TestPool.test_map (results in input order, even when later items finish first)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        assert_eq!(
            pool.map_chunked(reverse_sleep, 0..8, 1).unwrap(),
            (0..8).collect::<Vec<u64>>()
        );
        assert_eq!(
            pool.map(reverse_sleep, 0..8).unwrap(),
            (0..8).collect::<Vec<u64>>()
        );
    });
}

#[test]
fn starmap() {
    // CPython: _TestPool.test_starmap (map over tuple arguments)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        let tuples: Vec<(u64, u64)> = (0..10).zip((0..10).rev()).collect();
        let expected: Vec<u64> = tuples.iter().map(|&(x, y)| x * y).collect();
        assert_eq!(pool.map(mul, tuples).unwrap(), expected);

        let tuples: Vec<(u64, u64)> = (0..100).zip((0..100).rev()).collect();
        let expected: Vec<u64> = tuples.iter().map(|&(x, y)| x * y).collect();
        assert_eq!(pool.map_chunked(mul, tuples, 20).unwrap(), expected);
    });
}

#[test]
fn starmap_async() {
    // CPython: _TestPool.test_starmap_async
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        let tuples: Vec<(u64, u64)> = (0..100).zip((0..100).rev()).collect();
        let expected: Vec<u64> = tuples.iter().map(|&(x, y)| x * y).collect();
        assert_eq!(
            pool.map_async(mul, tuples).unwrap().get().unwrap(),
            expected
        );
    });
}

#[test]
fn map_async() {
    // CPython: _TestPool.test_map_async
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        assert_eq!(
            pool.map_async(sqr, 0..10).unwrap().get().unwrap(),
            squares(10)
        );
    });
}

#[test]
fn map_async_success_and_error() {
    // CPython: _TestPool.test_map_async_callbacks (no callbacks in this API: the outcome is
    // observed through wait, ready and get instead)
    let _g = shared();
    within(secs(30), || {
        let pool = common::quiet_pool(2);
        let ok = pool.map_async(parse_int, vec!["1".to_string()]).unwrap();
        ok.wait();
        assert!(ok.ready());
        assert_eq!(ok.get().unwrap(), [1]);

        let bad = pool.map_async(parse_int, vec!["a".to_string()]).unwrap();
        bad.wait();
        assert!(bad.ready());
        match bad.get().map_err(Error::into_cause) {
            Err(Error::TaskPanicked { message, .. }) => {
                assert!(message.contains("InvalidDigit"), "message: {message}");
            }
            other => panic!("expected TaskPanicked, got {other:?}"),
        }
    });
}

#[test]
fn map_async_empty_input_is_ready_at_once() {
    // CPython: _TestPool.test_map_chunksize (map_async on [] must not stall)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(2).unwrap();
        let r = pool.map_async(sqr, Vec::<u64>::new()).unwrap();
        assert!(r.ready(), "map_async on empty input is not ready at once");
        assert_eq!(r.get().unwrap(), Vec::<u64>::new());
        assert_eq!(
            pool.map_chunked(sqr, Vec::<u64>::new(), 1).unwrap(),
            Vec::<u64>::new()
        );
    });
}

#[test]
fn map_unencodable_argument() {
    // CPython: _TestPool.test_map_unplicklable (issue #19425: no hang)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(2).unwrap();
        assert_encode_argument(pool.map(sqr_picky, (0..10).map(|_| Picky(REFUSED))));
        // One bad item among good ones fails the whole call, with nothing submitted.
        assert_encode_argument(pool.map(sqr_picky, [1, 2, REFUSED, 4].map(Picky)));
        assert_encode_argument(pool.map_chunked(sqr_picky, [1, REFUSED, 3].map(Picky), 1));
        assert_encode_argument(pool.map_async(sqr_picky, [REFUSED].map(Picky)));
        assert_encode_argument(pool.apply_async(sqr_picky, Picky(REFUSED)));
        assert_encode_argument(pool.apply(sqr_picky, Picky(REFUSED)));
        // The pool still works afterwards.
        assert_eq!(pool.map(sqr, 0..10).unwrap(), squares(10));
        assert_eq!(
            pool.map(sqr_picky, [1, 2, 3].map(Picky)).unwrap(),
            [1, 4, 9]
        );
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn imap_unencodable_argument() {
    // CPython: _TestPool.test_map_unplicklable and test_imap_handle_iterable_exception (the
    // error arrives in its place, after the results before it)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(2).unwrap();
        let mut it = pool.imap(sqr_picky, [1, 2, REFUSED, 4].map(Picky)).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), 1);
        assert_eq!(it.next().unwrap().unwrap(), 4);
        assert_encode_argument(it.next().unwrap());
        assert_eq!(it.next().unwrap().unwrap(), 16);
        assert!(it.next().is_none());

        // An input whose very first item fails, twice (CPython checks reentrancy).
        for _ in 0..2 {
            let mut it = pool.imap(sqr_picky, [REFUSED].map(Picky)).unwrap();
            assert_encode_argument(it.next().unwrap());
            assert!(it.next().is_none());
        }

        // imap_unordered: exactly one error among the results.
        let results: Vec<_> = pool
            .imap_unordered(sqr_picky, [1, 2, REFUSED, 4].map(Picky))
            .unwrap()
            .collect();
        assert_eq!(results.len(), 4);
        let mut ok: Vec<u64> = Vec::new();
        let mut errors = 0;
        for r in results {
            match r {
                Ok(v) => ok.push(v),
                Err(e) => {
                    assert_encode_argument::<()>(Err(e));
                    errors += 1;
                }
            }
        }
        ok.sort();
        assert_eq!(ok, [1, 4, 16]);
        assert_eq!(errors, 1);

        // The pool still works afterwards.
        assert_eq!(pool.map(sqr, 0..10).unwrap(), squares(10));
    });
}

#[test]
fn async_get_waits_for_the_task() {
    // CPython: _TestPool.test_async
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(2).unwrap();
        let wait = Duration::from_millis(300);
        let start = Instant::now();
        let r = pool.apply_async(sqr_wait, (7, 300)).unwrap();
        assert_eq!(r.get().unwrap(), 49);
        assert!(
            start.elapsed() >= wait,
            "get returned before the task slept"
        );
    });
}

#[test]
fn async_timeout() {
    // CPython: _TestPool.test_async_timeout
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(2).unwrap();
        let r = pool.apply_async(sqr_wait, (6, 1500)).unwrap();
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        assert!(
            !r.wait_timeout(timeout),
            "a 1.5 s task finished within 200 ms"
        );
        assert!(start.elapsed() >= timeout, "wait_timeout returned early");
        assert!(!r.ready());
        assert!(r.wait_timeout(secs(20)), "the task never finished");
        assert!(r.ready());
        assert_eq!(r.get().unwrap(), 36);
    });
}

#[test]
fn imap() {
    // CPython: _TestPool.test_imap
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        let all: Vec<u64> = pool
            .imap(sqr, 0..10)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(all, squares(10));

        let mut it = pool.imap(sqr, 0..10).unwrap();
        for i in 0..10 {
            assert_eq!(it.next().unwrap().unwrap(), i * i);
        }
        assert!(it.next().is_none());

        let mut it = pool.imap(sqr, (0..1000).collect::<Vec<u64>>()).unwrap();
        for i in 0..1000 {
            assert_eq!(it.next().unwrap().unwrap(), i * i);
        }
        assert!(it.next().is_none());
    });
}

#[test]
fn imap_unordered() {
    // CPython: _TestPool.test_imap_unordered
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(4).unwrap();
        let got: Vec<u64> = pool
            .imap_unordered(sqr, 0..1000)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 1000);
        let set: BTreeSet<u64> = got.into_iter().collect();
        assert_eq!(set, squares(1000).into_iter().collect::<BTreeSet<u64>>());
    });
}

#[test]
fn make_pool() {
    // CPython: _TestPool.test_make_pool
    let _g = exclusive();
    within(secs(30), || {
        assert!(matches!(Pool::new(0), Err(Error::InvalidArgument { .. })));
        assert!(matches!(
            Pool::builder().processes(0).build(),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Pool::builder().processes(1).max_tasks_per_child(0).build(),
            Err(Error::InvalidArgument { .. })
        ));

        let before = descendants();
        let pool = Pool::new(3).unwrap();
        assert_eq!(pool.processes(), 3);
        let ours = || -> Vec<u32> {
            descendants()
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect()
        };
        assert!(
            // Three workers and the pool's fork server.
            eventually(secs(10), || ours().len() == 4),
            "expected 3 worker processes and a fork server, found {:?}",
            ours()
        );
        let workers = ours();
        pool.close();
        pool.join().unwrap();
        for w in workers {
            assert!(!exists(w), "worker {w} still exists after join");
        }
    });
}

#[test]
fn terminate_with_10000_pending_tasks() {
    // CPython: _TestPool.test_terminate
    let _g = shared();
    within(secs(60), || {
        let pool = Pool::new(2).unwrap();
        // Long enough that none can finish before terminate.
        let pending: Vec<_> = (0..10_000)
            .map(|_| pool.apply_async(sleep_ms, 60_000).unwrap())
            .collect();
        let start = Instant::now();
        pool.terminate();
        pool.join().unwrap();
        let took = start.elapsed();
        assert!(took < secs(10), "terminate + join took {took:?}");
        for (i, r) in pending.into_iter().enumerate() {
            match r.get() {
                Err(Error::Terminated) => {}
                other => panic!("task {i}: expected Terminated, got {other:?}"),
            }
        }
        // CPython's test_context: a terminated pool refuses new work.
        assert!(matches!(pool.apply_async(sqr, 1), Err(Error::Closed)));
        assert!(matches!(pool.map_async(sqr, 0..10), Err(Error::Closed)));
    });
}

#[test]
fn terminate_map_async_with_10000_items() {
    // CPython: _TestPool.test_terminate (its map_async form)
    let _g = shared();
    within(secs(60), || {
        let pool = Pool::new(2).unwrap();
        let r = pool.map_async(sleep_ms, vec![60_000u64; 10_000]).unwrap();
        let start = Instant::now();
        pool.terminate();
        pool.join().unwrap();
        let took = start.elapsed();
        assert!(took < secs(10), "terminate + join took {took:?}");
        assert!(r.ready());
        assert!(matches!(r.get(), Err(Error::Terminated)));
    });
}

#[test]
fn empty_iterable() {
    // CPython: _TestPool.test_empty_iterable (issue 12157)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.map(sqr, Vec::<u64>::new()).unwrap(), Vec::<u64>::new());
        assert_eq!(pool.imap(sqr, Vec::<u64>::new()).unwrap().count(), 0);
        assert_eq!(
            pool.imap_unordered(sqr, Vec::<u64>::new()).unwrap().count(),
            0
        );
        assert_eq!(
            pool.map_async(sqr, Vec::<u64>::new())
                .unwrap()
                .get()
                .unwrap(),
            Vec::<u64>::new()
        );
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn context_manager_drop_terminates() {
    // CPython: _TestPool.test_context (dropping the pool is leaving the `with` block, which
    // terminates it)
    let _g = exclusive();
    within(secs(30), || {
        let before = descendants();
        let pool = Pool::new(2).unwrap();
        let ours = || -> Vec<u32> {
            descendants()
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect()
        };
        assert!(
            // Two workers and the pool's fork server.
            eventually(secs(10), || ours().len() == 3),
            "expected 2 worker processes and a fork server, found {:?}",
            ours()
        );
        let workers = ours();

        assert_eq!(
            pool.map_async(sqr, 0..10).unwrap().get().unwrap(),
            squares(10)
        );

        let finished = pool.apply_async(sqr, 7).unwrap();
        assert!(finished.wait_timeout(secs(10)));
        let running: Vec<_> = (0..4)
            .map(|_| pool.apply_async(sleep_ms, 60_000).unwrap())
            .collect();
        // Let the workers pick up the long tasks.
        sleep(Duration::from_millis(100));

        let start = Instant::now();
        drop(pool);
        let took = start.elapsed();
        assert!(took < secs(10), "dropping the pool took {took:?}");

        // A result received before the drop is still there.
        assert_eq!(finished.get().unwrap(), 49);
        for (i, r) in running.into_iter().enumerate() {
            match r.get() {
                Err(Error::Terminated) => {}
                other => panic!("task {i}: expected Terminated, got {other:?}"),
            }
        }
        for w in &workers {
            assert!(!exists(*w), "worker {w} still exists after drop");
        }
        let left = ours();
        assert!(left.is_empty(), "children left after drop: {left:?}");
    });
}

#[test]
fn panic_keeps_its_message() {
    // CPython: _TestPool.test_traceback and test_wrapped_exception
    let _g = shared();
    within(secs(30), || {
        let pool = common::quiet_pool(1);
        let worker = pool.apply(pid, ()).unwrap();
        assert_panicked(
            pool.apply(raise_runtime_error, ()),
            "RuntimeError(123) # some comment",
        );
        assert_panicked(pool.apply(raise_formatted, 5), "RuntimeError: bad value 5");
        assert_panicked(pool.map(raise_formatted, [9]), "RuntimeError: bad value 9");
        // The worker survived its tasks' panics.
        assert_eq!(pool.apply(pid, ()).unwrap(), worker);
    });
}

#[test]
fn map_no_failfast() {
    // CPython: _TestPool.test_map_no_failfast (issue #23992)
    let _g = shared();
    within(secs(30), || {
        let pool = common::quiet_pool(2);
        let start = Instant::now();
        let r = pool.map(fail_3_and_7, 0..10);
        let took = start.elapsed();
        assert_panicked(r, "item 3 failed");
        assert!(
            took >= LATE_FAILURE,
            "map returned after {took:?}, before item 7 had finished"
        );
        pool.close();
        pool.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// _TestPoolWorkerErrors

#[test]
fn async_error() {
    // CPython: _TestPoolWorkerErrors.test_async_error_callback
    let _g = shared();
    within(secs(30), || {
        let pool = common::quiet_pool(2);
        let r = pool.apply_async(raising, ()).unwrap();
        assert_panicked(r.get(), "KeyError: key");
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn unencodable_result() {
    // CPython: _TestPoolWorkerErrors.test_unpickleable_result
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.apply(pid, ()).unwrap();
        for _ in 0..20 {
            let r = pool.apply_async(make_picky, REFUSED).unwrap();
            match r.get() {
                Err(Error::Encode { what, message }) => {
                    assert_eq!(what, "result");
                    assert!(message.contains("refuses"), "message: {message}");
                }
                other => panic!("expected Encode {{ what: \"result\" }}, got {other:?}"),
            }
        }
        // No worker was lost to the encoding errors.
        assert_eq!(pool.apply(pid, ()).unwrap(), worker);
        assert_eq!(pool.apply(make_picky, 3).unwrap(), Picky(3));
        pool.close();
        pool.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// _TestPoolWorkerLifetime

#[test]
fn pool_worker_lifetime() {
    // CPython: _TestPoolWorkerLifetime.test_pool_worker_lifetime
    let _g = shared();
    within(secs(60), || {
        let pool = Pool::builder()
            .processes(3)
            .max_tasks_per_child(10)
            .build()
            .unwrap();
        let results: Vec<_> = (0..100)
            .map(|i| pool.apply_async(sqr_and_pid, i).unwrap())
            .collect();
        let mut pids = HashSet::new();
        for (i, r) in results.into_iter().enumerate() {
            let (v, pid) = r.get().unwrap();
            assert_eq!(v, (i * i) as u64);
            pids.insert(pid);
        }
        assert!(
            pids.len() >= 10,
            "100 tasks at 10 per child ran in only {} workers",
            pids.len()
        );
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn pool_worker_lifetime_early_close() {
    // CPython: _TestPoolWorkerLifetime.test_pool_worker_lifetime_early_close (issue #10332)
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::builder()
            .processes(3)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        let results: Vec<_> = (0..6)
            .map(|i| pool.apply_async(sqr_wait, (i, 300)).unwrap())
            .collect();
        pool.close();
        pool.join().unwrap();
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// _TestInitializers

#[test]
fn pool_initializer() {
    // CPython: _TestInitializers.test_pool_initializer
    let _g = shared();
    within(secs(30), || {
        let pool = Pool::builder()
            .processes(2)
            .initializer(initializer)
            .build()
            .unwrap();
        assert_eq!(pool.apply(read_initialized, 0).unwrap(), 42);
        assert_eq!(
            pool.map_chunked(read_initialized, 0..20, 1).unwrap(),
            vec![42; 20]
        );
        pool.close();
        pool.join().unwrap();

        // Replacement workers run it too.
        let pool = Pool::builder()
            .processes(2)
            .initializer(initializer)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        assert_eq!(
            pool.map_chunked(read_initialized, 0..10, 1).unwrap(),
            vec![42; 10]
        );
        pool.close();
        pool.join().unwrap();

        // It ran in the workers, not here.
        assert_eq!(INITIALIZED.load(SeqCst), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// MiscTestCase

#[test]
fn large_pool() {
    // CPython: MiscTestCase.test_large_pool (gh-89240), with 50 workers instead of 200
    let _g = shared();
    within(secs(120), || {
        let pool = Pool::new(50).unwrap();
        let sum: u64 = pool.map(sqr, 0..1000).unwrap().into_iter().sum();
        assert_eq!(sum, 332_833_500);
        pool.close();
        pool.join().unwrap();
    });
}
