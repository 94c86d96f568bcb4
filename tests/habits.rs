//! The habits Python's `Pool` users bring (issue 10): `res.get(timeout)`, chunked imap,
//! initializer arguments, borrowed inputs, byte buffers inside types, map's memory bound,
//! shared read-only data, and progress counted from callbacks. Real workers throughout.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::within;
use forkpool::{Error, Pool};
use serde::{Deserialize, Deserializer, Serialize};

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

// ---- item 2: get with a limit ----

#[test]
fn get_timeout_gives_up_and_the_result_stays_obtainable() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let mut r = pool.apply_async(nap, 1_500).unwrap();
        match r.get_timeout(Duration::from_millis(20)) {
            Err(Error::WaitTimedOut { waited }) => assert_eq!(waited, Duration::from_millis(20)),
            other => panic!("expected WaitTimedOut, got {other:?}"),
        }
        assert!(!r.ready(), "the task went on");
        // Twice, to show that an expiry changes nothing.
        assert!(matches!(
            r.get_timeout(Duration::ZERO),
            Err(Error::WaitTimedOut { .. })
        ));
        assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 1_500);
        // Spent: the value was moved out.
        assert!(matches!(
            r.get_timeout(Duration::from_secs(1)),
            Err(Error::Terminated)
        ));
    })
}

#[test]
fn get_timeout_then_get_and_await() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let mut r = pool.apply_async(nap, 500).unwrap();
        assert!(r.get_timeout(Duration::from_millis(1)).is_err());
        assert_eq!(r.get().unwrap(), 500);
        let mut m = pool.map_async(nap, [300, 1]).unwrap();
        assert!(matches!(
            m.get_timeout(Duration::from_millis(1)),
            Err(Error::WaitTimedOut { .. })
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(m).unwrap(), [300, 1]);
    })
}

#[test]
fn get_timeout_returns_the_tasks_own_error() {
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(1)
            .print_panics(false)
            .build()
            .unwrap();
        let mut r = pool
            .apply_async(|_: u8| -> u8 { panic!("inner") }, 0)
            .unwrap();
        match r.get_timeout(Duration::from_secs(30)) {
            Err(Error::TaskPanicked { message }) => assert_eq!(message, "inner"),
            other => panic!("{other:?}"),
        }
    })
}

// ---- item 10: progress from callbacks, and one decode per result ----

#[test]
fn callbacks_run_counts_one_two_three_inside_callbacks() {
    within(Duration::from_secs(120), || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let pending: Vec<_> = (0..60u64)
            .map(|i| {
                let (pool2, seen) = (Arc::clone(&pool), Arc::clone(&seen));
                pool.apply_async_with(square, i, move |_: &forkpool::Result<u64>| {
                    seen.lock().unwrap().push(pool2.stats().callbacks_run);
                })
                .unwrap()
            })
            .collect();
        for r in pending {
            r.get().unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (1..=60).collect::<Vec<u64>>(), "no repeat, no skip");
        assert_eq!(pool.stats().callbacks_run, 60);
    })
}

/// How many `Counted` values this process has decoded.
static DECODED: AtomicUsize = AtomicUsize::new(0);

/// A result type that counts its own decodes.
#[derive(Debug, Serialize, PartialEq)]
struct Counted(u64);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODED.fetch_add(1, Ordering::SeqCst);
        u64::deserialize(d).map(Counted)
    }
}

fn counted(x: u64) -> Counted {
    Counted(x + 1)
}

#[test]
fn a_result_with_a_callback_is_decoded_once() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let before = DECODED.load(Ordering::SeqCst);
        let saw: Arc<Mutex<Option<u64>>> = Arc::default();
        let saw2 = Arc::clone(&saw);
        let r = pool
            .apply_async_with(counted, 41, move |r: &forkpool::Result<Counted>| {
                *saw2.lock().unwrap() = r.as_ref().ok().map(|c| c.0);
            })
            .unwrap();
        assert_eq!(r.get().unwrap(), Counted(42));
        assert_eq!(*saw.lock().unwrap(), Some(42));
        assert_eq!(DECODED.load(Ordering::SeqCst) - before, 1, "decoded once");
    })
}
