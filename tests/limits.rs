//! Task time limits and worker memory caps, with real slow tasks, spinning tasks, tasks that
//! dodge SIGALRM, and tasks that leak.

mod common;

use std::time::{Duration, Instant};

use common::within;
use forkpool::{Error, Pool};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn spin(ms: u64) -> u64 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        std::hint::spin_loop();
    }
    ms
}

/// Blocks SIGALRM, so the worker's own timer cannot end it: the pool's backstop must.
fn nap_deaf_to_alarms(ms: u64) -> u64 {
    // SAFETY: sigset_t is plain data initialized by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    nap(ms)
}

/// A task that takes long enough (2 ms) that each worker gets one at a time.
fn slow_pid(_: ()) -> u32 {
    std::thread::sleep(Duration::from_millis(2));
    std::process::id()
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn a_task_past_its_limit_times_out_alone() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let before: Vec<_> = (0..10).map(|i| pool.apply_async(nap, i).unwrap()).collect();
        let slow = pool.apply_async_timeout(nap, 60_000, MS(200)).unwrap();
        let spinning = pool.apply_async_timeout(spin, 60_000, MS(200)).unwrap();
        let after: Vec<_> = (0..10).map(|i| pool.apply_async(nap, i).unwrap()).collect();
        let started = Instant::now();
        match slow.get() {
            Err(e @ Error::TimedOut { limit, .. }) => {
                assert_eq!(limit, MS(200));
                assert!(e.to_string().contains("time limit"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(spinning.get(), Err(Error::TimedOut { .. })));
        assert!(started.elapsed() < Duration::from_secs(10));
        for (i, r) in before.into_iter().chain(after).enumerate() {
            assert_eq!(r.get().unwrap(), i as u64 % 10);
        }
    })
}

#[test]
fn the_clock_starts_when_the_task_runs_not_when_it_is_queued() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        // Each runs 150 ms, under its 1 s limit; the last waits about 1.2 s in the queue.
        let tasks: Vec<_> = (0..9)
            .map(|_| {
                pool.apply_async_timeout(nap, 150, Duration::from_secs(1))
                    .unwrap()
            })
            .collect();
        for t in tasks {
            assert_eq!(t.get().unwrap(), 150);
        }
    })
}

#[test]
fn the_pool_kills_a_task_that_blocks_its_alarm() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let started = Instant::now();
        assert!(matches!(
            pool.apply_async_timeout(nap_deaf_to_alarms, 60_000, MS(200))
                .unwrap()
                .get(),
            Err(Error::TimedOut { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(pool.apply(nap, 1).unwrap(), 1);
    })
}

#[test]
fn the_builders_limit_applies_to_apply_map_items_and_imap() {
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(MS(400))
            .build()
            .unwrap();
        assert!(matches!(
            pool.apply(nap, 5_000),
            Err(Error::TimedOut { .. })
        ));
        // Per item, not per chunk: 10 items of 100 ms in one chunk take 1 s, and pass.
        assert_eq!(
            pool.map_chunked(nap, vec![100; 10], 10).unwrap(),
            vec![100; 10]
        );
        // One slow item fails its chunk with TimedOut, naming that item (the worker's ledger
        // says which it was running) and the limit of one item.
        let mut items = vec![10; 20];
        items[13] = 5_000;
        let err = pool.map_chunked(nap, items.clone(), 5).unwrap_err();
        assert!(
            matches!(err.cause(), Error::TimedOut { limit, .. } if *limit == MS(400)),
            "{err:?}"
        );
        assert_eq!(err.index(), Some(13), "the item that ran out of time");
        let got: Vec<_> = pool.imap(nap, items).unwrap().collect();
        for (i, r) in got.into_iter().enumerate() {
            if i == 13 {
                assert!(matches!(
                    r.map_err(Error::into_cause),
                    Err(Error::TimedOut { .. })
                ));
            } else {
                assert_eq!(r.unwrap(), 10);
            }
        }
    })
}

#[test]
fn a_zero_limit_is_refused() {
    assert!(matches!(
        Pool::builder()
            .processes(1)
            .task_timeout(Duration::ZERO)
            .build(),
        Err(Error::InvalidArgument { .. })
    ));
    let pool = Pool::new(1).unwrap();
    assert!(matches!(
        pool.apply_async_timeout(nap, 1, Duration::ZERO),
        Err(Error::InvalidArgument { .. })
    ));
}

/// Leaks 64 MiB (touched, so resident) and says which worker it ran in.
fn leak_64_mib(_: ()) -> u32 {
    std::mem::forget(std::hint::black_box(vec![1u8; 64 << 20]));
    std::process::id()
}

#[test]
fn a_worker_past_its_memory_cap_is_replaced_after_answering() {
    within(Duration::from_secs(120), || {
        let pool = Pool::builder()
            .processes(2)
            .max_memory_per_child(200 << 20)
            .build()
            .unwrap();
        let pending: Vec<_> = (0..24)
            .map(|_| pool.apply_async(leak_64_mib, ()).unwrap())
            .collect();
        let mut per_worker = std::collections::HashMap::<u32, usize>::new();
        for r in pending {
            *per_worker
                .entry(r.get().expect("no task is lost to a recycled worker"))
                .or_default() += 1;
        }
        // A fresh worker holds well under 200 MiB, so it passes the cap on its 3rd or 4th leak.
        assert!(
            per_worker.values().all(|&n| n <= 4),
            "a worker outgrew its cap: {per_worker:?}"
        );
        assert!(per_worker.len() >= 6, "{per_worker:?}");
        // The pool is whole: two live workers still answer.
        let pids = common::distinct_pids(2, Duration::from_secs(20), || {
            pool.map_chunked(slow_pid, vec![(); 20], 1).unwrap()
        });
        assert_eq!(pids.len(), 2, "{pids:?}");
        pool.close();
        pool.join().unwrap();
    })
}
