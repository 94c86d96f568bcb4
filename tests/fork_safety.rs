//! Fork safety: no worker is ever forked from the threaded parent.
//!
//! A fork copies only the forking thread; a lock that another thread held at that moment stays
//! locked forever in the child. Here four parent threads take a shared mutex and the `stdout`
//! lock and allocate in a tight loop, while 300 worker replacements happen and every task takes
//! the same two locks. If a replacement were forked from the parent, some worker would sooner or
//! later start with a lock held by a thread that does not exist in it, and hang. The pool's fork
//! server, forked before those threads started, is what every worker is forked from.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::within;
use forkpool::{Error, ExitCause, Pool};

static SHARED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Takes the locks the parent's threads are hammering, then answers.
fn locked_square(x: u64) -> u64 {
    let mut shared = SHARED.lock().unwrap();
    shared.push(x);
    let _out = std::io::stdout().lock();
    let scratch = vec![x; 1000];
    scratch[999] * x
}

/// Takes the same locks, then ends the worker.
fn locked_exit(x: u64) -> u64 {
    let _ = locked_square(x);
    std::process::exit(5)
}

#[test]
fn replacements_never_inherit_a_lock_held_by_another_thread() {
    within(Duration::from_secs(120), || {
        // The pool first, then the threads: the fork server is forked before they exist.
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hammers: Vec<_> = (0..4)
            .map(|t| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut shared = SHARED.lock().unwrap();
                        shared.push(t);
                        if shared.len() > 1000 {
                            shared.clear();
                        }
                        let out = std::io::stdout().lock();
                        let garbage: Vec<u64> = (0..64).collect();
                        std::hint::black_box(&garbage);
                        drop(out);
                        drop(shared);
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        // 300 replacements: 200 from max_tasks_per_child(1), 100 from tasks that exit.
        let ordinary: Vec<_> = (0..200u64)
            .map(|i| pool.apply_async(locked_square, i).unwrap())
            .collect();
        let exits: Vec<_> = (0..100u64)
            .map(|i| pool.apply_async(locked_exit, i).unwrap())
            .collect();
        for (i, r) in ordinary.into_iter().enumerate() {
            let i = i as u64;
            assert_eq!(r.get().unwrap(), i * i);
        }
        for r in exits {
            assert!(matches!(
                r.get(),
                Err(Error::WorkerDied {
                    cause: ExitCause::Exited(5),
                    ..
                })
            ));
        }
        stop.store(true, Ordering::Relaxed);
        let rounds: u64 = hammers.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(rounds > 0);
        std::io::stdout().flush().unwrap();
        pool.close();
        pool.join().unwrap();
    })
}
