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

/// Echoes of sizes that grow and shrink, one worker: each large payload may land in the
/// pages of the one before it (a spare buffer, on both sides), and none shows a byte, or a
/// length, of another.
#[test]
fn payloads_that_land_in_an_earlier_ones_buffer_are_their_own() {
    within(Duration::from_secs(120), || {
        let pool = Pool::new(1).unwrap();
        let sizes = [
            8 << 20,
            6 << 20,
            (4 << 20) + 7,
            (8 << 20) - 1,
            5 << 20,
            3 << 20,
            (1 << 20) + 1,
            12 << 20,
            12 << 20,
        ];
        for (i, &size) in sizes.iter().enumerate() {
            let want = pattern(1000 + i as u64, size);
            let back = pool.apply(echo, want.clone()).unwrap();
            assert_eq!(back.len(), size, "echo {i}");
            assert!(back == want, "echo {i} of {size} bytes changed on the way");
            // A result made in the worker, into a buffer the parent may have kept.
            let made = pool.apply(make, (2000 + i as u64, size)).unwrap();
            assert!(made == pattern(2000 + i as u64, size), "result {i} changed");
        }
    });
}

/// Resident memory of this process or a worker, in KiB.
fn rss_kib(_: ()) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const SPARE_CHILD: &str = "FORKPOOL_BIG_PAYLOADS_SPARE_CHILD";

/// The spare buffers a large payload leaves behind are given back once the pool has been
/// idle a moment: neither the worker nor the parent keeps 64 MiB for good. Run in a process
/// of its own (`spare_child`), so that no other test's memory moves the parent's count.
#[test]
fn spare_buffers_are_given_back_when_idle() {
    let out = std::process::Command::new("timeout")
        .arg("120")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "spare_child", "--ignored", "--nocapture"])
        .env(SPARE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SPARE_CHILD_OK"),
        "the child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "runs in a child process of spare_buffers_are_given_back_when_idle"]
fn spare_child() {
    if std::env::var_os(SPARE_CHILD).is_none() {
        return;
    }
    let pool = Pool::new(1).unwrap();
    let size = 64 << 20;
    let worker_before = pool.apply(rss_kib, ()).unwrap();
    let parent_before = rss_kib(());
    for seed in 0..3 {
        let back = pool.apply(echo, pattern(seed, size)).unwrap();
        assert_eq!(back.len(), size);
    }
    let spare_held = pool.apply(rss_kib, ()).unwrap();
    // A spare waits a second (`frame::SPARE_KEEP`) before it is given back.
    std::thread::sleep(Duration::from_millis(1800));
    let worker_after = pool.apply(rss_kib, ()).unwrap();
    let parent_after = rss_kib(());
    // While kept, the worker's spare is resident; once idle, it is gone.
    assert!(
        spare_held > worker_before + 32 * 1024,
        "the worker kept a spare: {worker_before} KiB, then {spare_held} KiB"
    );
    assert!(
        worker_after < worker_before + 16 * 1024,
        "the worker gave its spare back: {worker_before} KiB before, {worker_after} KiB after"
    );
    assert!(
        parent_after < parent_before + 16 * 1024,
        "the parent gave its spare back: {parent_before} KiB before, {parent_after} KiB after"
    );
    println!("SPARE_CHILD_OK");
}
