//! A worker dying in the middle of a chunk fails only the item it ran (issue 10, item 4c): the
//! items of the chunk that had finished keep their results (the worker's ledger, shared memory,
//! outlives it), the ones not yet started run elsewhere, and no item runs twice. Real workers,
//! real aborts, real SIGSEGVs, real time limits; every item logs itself to a file opened with
//! O_APPEND before it runs, so each test counts how often each item ran.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{within, LIMIT};
use forkpool::{Error, ExitCause, Pool};

/// The item that misbehaves, in a chunk of [`ITEMS`].
const BAD: u64 = 6;
const ITEMS: u64 = 10;

/// How the bad item misbehaves.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Bad {
    Abort,
    Segv,
    Sleep,
    /// Scribbles over the worker's ledger, then aborts.
    Scribble,
    /// Does nothing wrong.
    None,
}

/// One item: where to log, its position, how the bad item behaves, and how large a result
/// each item returns.
type Arg = (PathBuf, u64, Bad, usize);

fn log(path: &Path, x: u64) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(format!("{x}\n").as_bytes()).unwrap();
}

/// The result of item `x`: `size` bytes, each `x`.
fn expected(x: u64, size: usize) -> Vec<u8> {
    vec![x as u8; size]
}

fn item((path, x, bad, size): Arg) -> Vec<u8> {
    log(&path, x);
    if x == BAD {
        match bad {
            Bad::Abort => std::process::abort(),
            // SAFETY: setting a signal's default action and raising it have no memory-safety
            // precondition. The default action is needed: std's own SIGSEGV handler ignores a
            // raised (not faulting) SIGSEGV.
            Bad::Segv => unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            },
            Bad::Sleep => std::thread::sleep(Duration::from_secs(60)),
            Bad::Scribble => {
                scribble_ledger();
                std::process::abort()
            }
            Bad::None => {}
        }
    }
    expected(x, size)
}

/// Finds this worker's ledger in its memory map and claims, in its commit word, 3 items and
/// 4 GiB - 1 bytes of results: garbage the parent must refuse.
fn scribble_ledger() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("forkpool-ledger"))
        .expect("the worker maps its ledger");
    let start = usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap();
    let commit = (start + 16) as *mut u64;
    // SAFETY: the line says `start` begins a mapping of at least one page, readable and
    // writable by this process; the word at offset 16 is inside it and aligned.
    unsafe { commit.write_volatile(3 << 32 | u32::MAX as u64) };
}

fn args(path: &Path, bad: Bad, size: usize) -> Vec<Arg> {
    (0..ITEMS)
        .map(|x| (path.to_path_buf(), x, bad, size))
        .collect()
}

fn log_path(name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("forkpool-ledger-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// How many times each item ran.
fn runs(path: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs = vec![0; ITEMS as usize];
    for line in text.lines() {
        runs[line.parse::<usize>().unwrap()] += 1;
    }
    let _ = std::fs::remove_file(path);
    runs
}

fn pool(processes: usize) -> Pool {
    common::quiet_pool(processes)
}

/// Two quiet workers, each item limited to `limit`.
fn timed_pool(limit: Duration) -> Pool {
    Pool::builder()
        .processes(2)
        .print_panics(false)
        .task_timeout(limit)
        .build()
        .unwrap()
}

/// Every item but [`BAD`] has its result; `BAD` fails as `check` wants, naming index 6 alone.
fn assert_only_bad_failed(
    each: &[forkpool::Result<Vec<u8>>],
    size: usize,
    check: impl Fn(&Error) -> bool,
) {
    assert_eq!(each.len(), ITEMS as usize);
    for (i, r) in each.iter().enumerate() {
        if i as u64 == BAD {
            let e = r.as_ref().unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Item {
                        index: 6,
                        items: 1,
                        ..
                    }
                ),
                "item {i}: {e:?}"
            );
            assert!(check(e.cause()), "item {i}: {e:?}");
        } else {
            let got = r.as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
            assert!(*got == expected(i as u64, size), "item {i}: wrong result");
        }
    }
}

fn died_of(signal: i32) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::WorkerDied { cause: ExitCause::Signal(s), .. } if *s == signal)
}

#[test]
fn an_abort_in_the_middle_of_a_chunk_fails_that_item_alone_and_runs_none_twice() {
    within(LIMIT, || {
        let pool = pool(2);
        let path = log_path("abort");
        let each = pool
            .map_each_chunked(item, args(&path, Bad::Abort, 8), ITEMS as usize)
            .unwrap();
        assert_only_bad_failed(&each, 8, died_of(libc::SIGABRT));
        assert_eq!(runs(&path), [1; ITEMS as usize], "each item ran once");
    })
}

#[test]
fn a_sigsegv_in_the_middle_of_a_chunk_fails_that_item_alone_and_runs_none_twice() {
    within(LIMIT, || {
        let pool = pool(1);
        let path = log_path("segv");
        let each = pool
            .map_each_chunked(item, args(&path, Bad::Segv, 8), ITEMS as usize)
            .unwrap();
        assert_only_bad_failed(&each, 8, died_of(libc::SIGSEGV));
        assert_eq!(runs(&path), [1; ITEMS as usize], "each item ran once");
        // The pool replaced the worker and goes on.
        assert_eq!(pool.apply(|x: u32| x + 1, 1).unwrap(), 2);
    })
}

#[test]
fn an_item_past_its_time_limit_fails_alone_with_the_items_limit() {
    within(LIMIT, || {
        let limit = Duration::from_millis(300);
        let pool = timed_pool(limit);
        let path = log_path("timeout");
        let each = pool
            .map_each_chunked(item, args(&path, Bad::Sleep, 8), ITEMS as usize)
            .unwrap();
        assert_only_bad_failed(
            &each,
            8,
            |e| matches!(e, Error::TimedOut { limit: l, .. } if *l == limit),
        );
        assert_eq!(runs(&path), [1; ITEMS as usize], "each item ran once");
    })
}

#[test]
fn results_that_overflow_the_ledger_survive_a_death_after_them() {
    within(LIMIT, || {
        let pool = pool(2);
        // 100 KiB per item: the 256 KiB ledger overflows every two or three items, and the
        // worker sends what it holds as partial frames.
        let size = 100 << 10;
        let path = log_path("overflow");
        let each = pool
            .map_each_chunked(item, args(&path, Bad::Abort, size), ITEMS as usize)
            .unwrap();
        assert_only_bad_failed(&each, size, died_of(libc::SIGABRT));
        assert_eq!(runs(&path), [1; ITEMS as usize], "each item ran once");
        // Without a death, in partial frames and a final reply, every result arrives.
        for size in [100 << 10, 600 << 10] {
            let path = log_path("overflow-ok");
            let each = pool
                .map_each_chunked(item, args(&path, Bad::None, size), ITEMS as usize)
                .unwrap();
            for (i, r) in each.iter().enumerate() {
                assert!(*r.as_ref().unwrap() == expected(i as u64, size), "item {i}");
            }
            assert_eq!(runs(&path), [1; ITEMS as usize]);
            let all = pool
                .map_chunked(item, args(&log_path("overflow-map"), Bad::None, size), 10)
                .unwrap();
            assert_eq!(all.len(), ITEMS as usize);
        }
    })
}

#[test]
fn map_fails_naming_the_item_it_died_in_and_runs_none_twice() {
    within(LIMIT, || {
        let pool = pool(2);
        let path = log_path("map");
        let err = pool
            .map_chunked(item, args(&path, Bad::Abort, 8), ITEMS as usize)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Item {
                    index: 6,
                    items: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(died_of(libc::SIGABRT)(err.cause()), "{err:?}");
        assert!(err.to_string().starts_with("item 6: worker "), "{err}");
        let ran = runs(&path);
        assert!(ran.iter().all(|&n| n <= 1), "no item ran twice: {ran:?}");
        assert_eq!(&ran[..=BAD as usize], [1; BAD as usize + 1]);
        // The same from map_async.
        let path = log_path("map-async");
        let err = pool
            .map_async(item, args(&path, Bad::Segv, 8))
            .unwrap()
            .get()
            .unwrap_err();
        assert_eq!(err.index(), Some(BAD as usize), "{err:?}");
        assert!(died_of(libc::SIGSEGV)(err.cause()), "{err:?}");
        let ran = runs(&path);
        assert!(ran.iter().all(|&n| n <= 1), "no item ran twice: {ran:?}");
    })
}

#[test]
fn a_cancelled_map_stays_cancelled_and_its_rest_never_runs() {
    within(LIMIT, || {
        let pool = pool(1);
        let path = log_path("cancel");
        // One worker, chunks of 3: 0-2, 3-5, then 6 (which sleeps), 7, 8 in one chunk, then 9.
        let result = pool.map_async(item, args(&path, Bad::Sleep, 8)).unwrap();
        let started = common::eventually(Duration::from_secs(20), || {
            std::fs::read_to_string(&path).is_ok_and(|t| t.lines().any(|l| l == "6"))
        });
        assert!(started, "item 6 started");
        assert!(result.cancel());
        assert!(matches!(result.get(), Err(Error::Cancelled)));
        // The killed chunk's rest is not sent again, nor is the chunk behind it.
        assert!(pool.apply(|x: u32| x + 1, 1).is_ok());
        let ran = runs(&path);
        assert_eq!(ran, [1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "{ran:?}");
    })
}

#[test]
fn a_ledger_full_of_garbage_fails_its_chunk_with_a_clear_error() {
    within(LIMIT, || {
        let pool = pool(1);
        let path = log_path("garbage");
        let each = pool
            .map_each_chunked(item, args(&path, Bad::Scribble, 8), ITEMS as usize)
            .unwrap();
        for r in &each {
            let e = r.as_ref().unwrap_err();
            assert!(
                matches!(e.cause(), Error::Protocol { message, .. } if message.contains("ledger")),
                "{e:?}"
            );
        }
        let ran = runs(&path);
        assert_eq!(&ran[..=BAD as usize], [1; BAD as usize + 1]);
        assert!(ran.iter().all(|&n| n <= 1));
        // The pool goes on, with a fresh worker.
        let each = pool
            .map_each_chunked(item, args(&log_path("after"), Bad::None, 8), 5)
            .unwrap();
        assert!(each.iter().all(Result::is_ok));
    })
}

#[test]
fn deaths_in_many_chunks_each_fail_their_own_item_and_keep_the_rest() {
    within(LIMIT, || {
        let pool = pool(2);
        // Four chunks of 10, each with item 6 aborting: items 6, 16, 26, 36 fail.
        let path = log_path("many");
        let args: Vec<Arg> = (0..40u64)
            .map(|x| (path.clone(), x % ITEMS, Bad::Abort, 8))
            .collect();
        let each = pool.map_each_chunked(item, args, 10).unwrap();
        for (i, r) in each.iter().enumerate() {
            if i as u64 % ITEMS == BAD {
                assert_eq!(r.as_ref().unwrap_err().index(), Some(i), "item {i}");
            } else {
                assert!(
                    *r.as_ref().unwrap() == expected(i as u64 % ITEMS, 8),
                    "item {i}"
                );
            }
        }
        assert_eq!(runs(&path), [4; ITEMS as usize]);
    })
}

/// `imap_chunked` and `imap_unordered_chunked` of the items of `args` in one chunk, collected.
fn imaps(pool: &Pool, args: impl Fn() -> Vec<Arg>) -> [Vec<forkpool::Result<Vec<u8>>>; 2] {
    let chunk = ITEMS as usize;
    [
        pool.imap_chunked(item, args(), chunk).unwrap().collect(),
        // One chunk: its items come in input order, unordered or not.
        pool.imap_unordered_chunked(item, args(), chunk)
            .unwrap()
            .collect(),
    ]
}

#[test]
fn a_death_in_the_middle_of_an_imap_chunk_fails_that_item_alone_and_runs_none_twice() {
    within(LIMIT, || {
        let pool = pool(2);
        // 100 KiB results overflow the ledger into partial frames before the death.
        for (bad, signal, size) in [
            (Bad::Abort, libc::SIGABRT, 8),
            (Bad::Segv, libc::SIGSEGV, 8),
            (Bad::Abort, libc::SIGABRT, 100 << 10),
        ] {
            let path = log_path("imap");
            for got in imaps(&pool, || args(&path, bad, size)) {
                assert_only_bad_failed(&got, size, died_of(signal));
            }
            let ran = runs(&path);
            assert_eq!(ran, [2; ITEMS as usize], "each item ran once per imap");
        }
    })
}

#[test]
fn an_imap_item_past_its_time_limit_fails_alone_with_the_items_limit() {
    within(LIMIT, || {
        let limit = Duration::from_millis(300);
        let pool = timed_pool(limit);
        let path = log_path("imap-timeout");
        for got in imaps(&pool, || args(&path, Bad::Sleep, 8)) {
            assert_only_bad_failed(
                &got,
                8,
                |e| matches!(e, Error::TimedOut { limit: l, .. } if *l == limit),
            );
        }
        assert_eq!(
            runs(&path),
            [2; ITEMS as usize],
            "each item ran once per imap"
        );
    })
}

#[test]
fn deaths_in_many_imap_chunks_each_fail_their_own_item() {
    within(LIMIT, || {
        let pool = pool(2);
        // Four chunks of 10, each with item 6 aborting: items 6, 16, 26, 36 fail, in order.
        let path = log_path("imap-many");
        let args = move || -> Vec<Arg> {
            (0..40u64)
                .map(|x| (path.clone(), x % ITEMS, Bad::Abort, 8))
                .collect()
        };
        let got: Vec<_> = pool.imap_chunked(item, args(), 10).unwrap().collect();
        for (i, r) in got.iter().enumerate() {
            if i as u64 % ITEMS == BAD {
                assert_eq!(r.as_ref().unwrap_err().index(), Some(i), "item {i}");
            } else {
                assert!(
                    *r.as_ref().unwrap() == expected(i as u64 % ITEMS, 8),
                    "item {i}"
                );
            }
        }
        let got: Vec<_> = pool
            .imap_unordered_chunked(item, args(), 10)
            .unwrap()
            .collect();
        let mut failed: Vec<usize> = got
            .iter()
            .filter_map(|r| r.as_ref().err()?.index())
            .collect();
        failed.sort();
        assert_eq!(failed, [6, 16, 26, 36]);
        assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 36);
        assert_eq!(runs(&args()[0].0), [8; ITEMS as usize]);
    })
}

/// How many ledgers this process has mapped.
fn ledgers_mapped(_: ()) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.contains("forkpool-ledger"))
        .count()
}

#[test]
fn a_worker_maps_its_own_ledger_and_no_other() {
    within(LIMIT, || {
        // Pools built one after the other: the parent maps every worker's ledger, and the
        // fork server of a later pool (a fork of the parent) must not carry the earlier ones
        // into its workers, where a scribble would land in another worker's ledger.
        let pools: Vec<Pool> = (0..3).map(|_| pool(2)).collect();
        for pool in &pools {
            for mapped in pool.map_chunked(ledgers_mapped, vec![(); 8], 1).unwrap() {
                assert_eq!(mapped, 1, "a worker's ledgers");
            }
        }
        // Nor does a plain fork of the parent: the ledgers stay the pools' own.
        assert!(
            ledgers_mapped(()) >= 6,
            "the parent maps each worker's ledger"
        );
        let mut fds = [0; 2];
        // SAFETY: a valid array for pipe to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only reads /proc, writes one byte to a pipe and calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let n = std::fs::read_to_string("/proc/self/maps")
                .map(|m| m.lines().filter(|l| l.contains("forkpool-ledger")).count())
                .unwrap_or(255);
            let byte = n.min(255) as u8;
            // SAFETY: writing one byte from a live local to an open pipe, then _exit.
            unsafe {
                libc::write(fds[1], (&byte as *const u8).cast(), 1);
                libc::_exit(0);
            }
        }
        let mut byte = 255u8;
        // SAFETY: reading one byte into a live local from the pipe's read end.
        unsafe {
            libc::close(fds[1]);
            libc::read(fds[0], (&mut byte as *mut u8).cast(), 1);
            libc::close(fds[0]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert_eq!(byte, 0, "a fork of the parent maps no ledger");
    })
}
