//! Large byte payloads (issue 9, W4): a `Vec<u8>` of a megabyte or more goes into the pipe as
//! references to its pages (`vmsplice`) and is read into a buffer of its own. The pages are
//! lent, not copied, so what these tests check is that no byte changes on the way: the sender
//! may not free or reuse a buffer before the reader has read it, whether tasks are pipelined,
//! the worker exits right after its reply, or the worker dies with a task half read.

mod common;

use std::time::Duration;

use common::within;
use forkpool::{Error, Pool};

/// Bytes whose every position depends on `seed`, so that a buffer reused for another payload
/// shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fresh large result per task, built in the worker: the worker's allocator would hand the
/// same memory to the next result if the last one were freed while its pages sat in the pipe.
fn make(spec: (u64, usize)) -> Vec<u8> {
    pattern(spec.0, spec.1)
}

fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

/// Many large results in a row, pipelined (chunks of one item, several tasks in each pipe):
/// each arrives as the worker made it.
#[test]
fn pipelined_large_results_arrive_unchanged() {
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        // Sizes around and above the splice threshold, and above the pipe's capacity.
        let sizes = [256 << 10, (1 << 20) + 3, 3 << 20, 300_000, 8 << 20];
        let specs: Vec<(u64, usize)> = (0..40u64).map(|i| (i, sizes[i as usize % 5])).collect();
        let results = pool.map_chunked(make, specs.clone(), 1).unwrap();
        for (spec, got) in specs.iter().zip(&results) {
            assert!(
                *got == pattern(spec.0, spec.1),
                "result {} changed on the way",
                spec.0
            );
        }
    });
}

/// Many large arguments in flight at once, each freed by the caller's side as soon as it is
/// answered: each worker sees its own bytes, and echoes them back unchanged.
#[test]
fn pipelined_large_arguments_arrive_unchanged() {
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        let handles: Vec<_> = (0..24u64)
            .map(|i| {
                let len = if i % 3 == 0 {
                    5 << 20
                } else {
                    (1 << 20) + i as usize
                };
                (i, len, pool.apply_async(echo, pattern(i, len)).unwrap())
            })
            .collect();
        for (i, len, h) in handles {
            assert!(
                h.get().unwrap() == pattern(i, len),
                "argument {i} changed on the way"
            );
        }
    });
}

/// A worker that exits right after its reply (one task per worker) leaves its result's pages
/// in the pipe: they stay valid after the process is gone.
#[test]
fn a_result_outlives_the_worker_that_lent_it() {
    within(Duration::from_secs(120), || {
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        let specs: Vec<(u64, usize)> = (0..10u64).map(|i| (i, 4 << 20)).collect();
        let results = pool.map_chunked(make, specs.clone(), 1).unwrap();
        for (spec, got) in specs.iter().zip(&results) {
            assert!(*got == pattern(spec.0, spec.1), "result {} changed", spec.0);
        }
    });
}

fn die_on_big(v: Vec<u8>) -> usize {
    if v.len() > 1 << 20 {
        std::process::abort();
    }
    v.len()
}

/// A worker that dies with large arguments in its pipe: those tasks go to another worker (or
/// fail with the death), and every answer that comes is right.
#[test]
fn a_worker_dying_with_large_arguments_in_its_pipe_loses_nothing() {
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        let handles: Vec<_> = (0..12u64)
            .map(|i| {
                let len = if i % 4 == 0 {
                    2 << 20
                } else {
                    1000 + i as usize
                };
                (len, pool.apply_async(die_on_big, pattern(i, len)).unwrap())
            })
            .collect();
        for (len, h) in handles {
            match h.get() {
                Ok(n) => assert_eq!(n, len),
                Err(Error::WorkerDied { .. }) => assert!(len > 1 << 20, "a small task died"),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(pool.apply(die_on_big, vec![7; 10]).unwrap(), 10);
    });
}
