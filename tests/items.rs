//! Per-item failures (issue 10, item 4): every error of a map or an imap names the input item
//! that failed, and `map_each` keeps every other item's result. Real workers, real panics,
//! real aborts, one poisonous input among 21.

mod common;

use std::io::Write;
use std::path::PathBuf;

use common::{within, LIMIT};
use forkpool::{Error, ExitCause, Pool};

const POISON: u64 = 17;

fn panics_on_17(x: u64) -> u64 {
    assert!(x != POISON, "poisonous input");
    x * 10
}

fn aborts_on_17(x: u64) -> u64 {
    if x == POISON {
        std::process::abort();
    }
    x * 10
}

/// Appends the item to a log before it runs, so a test can count how often each item ran.
fn logged_abort_on_17((log, x): (PathBuf, u64)) -> u64 {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .unwrap();
    file.write_all(format!("{x}\n").as_bytes()).unwrap();
    drop(file);
    aborts_on_17(x)
}

fn quiet(processes: usize) -> Pool {
    common::quiet_pool(processes)
}

fn is_abort(e: &Error) -> bool {
    matches!(
        e.cause(),
        Error::WorkerDied {
            cause: ExitCause::Signal(libc_sigabrt),
            ..
        } if *libc_sigabrt == 6
    )
}

#[test]
fn map_names_the_item_that_panicked_whatever_the_chunk_size() {
    within(LIMIT, || {
        let pool = quiet(2);
        for chunksize in [1, 3, 5, 21] {
            let err = pool
                .map_chunked(panics_on_17, 0..21, chunksize)
                .unwrap_err();
            assert_eq!(err.index(), Some(17), "chunksize {chunksize}: {err}");
            assert!(
                err.to_string().starts_with("item 17: the task panicked"),
                "{err}"
            );
            assert!(matches!(err.cause(), Error::TaskPanicked { message, .. }
                if message == "poisonous input"));
        }
        let err = pool.map(panics_on_17, 0..21).unwrap_err();
        assert_eq!(err.index(), Some(17));
        let err = pool
            .map_async(panics_on_17, 0..21)
            .unwrap()
            .get()
            .unwrap_err();
        assert_eq!(err.index(), Some(17));
        // A chunk's panic still counts as a panic.
        assert!(pool.stats().panicked >= 6, "{:?}", pool.stats());
    })
}

#[test]
fn map_names_the_item_whose_worker_died_or_the_chunk_it_died_in() {
    within(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let err = pool.map_chunked(aborts_on_17, 0..21, 1).unwrap_err();
        assert_eq!(err.index(), Some(17));
        assert!(is_abort(&err), "{err:?}");
        assert!(err.to_string().starts_with("item 17: worker "), "{err}");
        // In a chunk of 3 (15, 16, 17) too: the worker's ledger says which item it was
        // running (issue 10, item 4c).
        let err = pool.map_chunked(aborts_on_17, 0..21, 3).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Item {
                    index: 17,
                    items: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("item 17: worker "), "{err}");
    })
}

#[test]
fn imap_and_imap_unordered_name_their_items() {
    within(LIMIT, || {
        let pool = quiet(2);
        let got: Vec<_> = pool.imap(aborts_on_17, 0..21).unwrap().collect();
        let failed: Vec<usize> = got
            .iter()
            .filter_map(|r| r.as_ref().err()?.index())
            .collect();
        assert_eq!(failed, [17]);
        let got: Vec<_> = pool.imap_unordered(panics_on_17, 0..21).unwrap().collect();
        let failed: Vec<usize> = got
            .iter()
            .filter_map(|r| r.as_ref().err()?.index())
            .collect();
        assert_eq!(failed, [17]);
        // Chunked: the panicking item fails alone, its neighbours in the chunk keep theirs.
        let got: Vec<_> = pool
            .imap_unordered_chunked(panics_on_17, 0..21, 4)
            .unwrap()
            .collect();
        let failed: Vec<usize> = got
            .iter()
            .filter_map(|r| r.as_ref().err()?.index())
            .collect();
        assert_eq!(failed, [17]);
        assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 20);
    })
}

#[test]
fn map_each_keeps_the_other_twenty_results_around_a_panic() {
    within(LIMIT, || {
        let pool = quiet(2);
        // Python's default chunks for 21 items on 2 workers hold 3: the panic is in the middle
        // of one, and its neighbours 15 and 16 still have their results.
        let each = pool.map_each(panics_on_17, 0..21).unwrap();
        assert_eq!(each.len(), 21);
        for (i, r) in each.iter().enumerate() {
            if i as u64 == POISON {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.index(), Some(17));
                assert!(matches!(e.cause(), Error::TaskPanicked { .. }));
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u64 * 10, "item {i}");
            }
        }
    })
}

#[test]
fn map_each_with_chunks_of_one_fails_only_the_item_that_aborted_and_runs_none_twice() {
    within(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let log = std::env::temp_dir().join(format!("forkpool-items-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let args: Vec<(PathBuf, u64)> = (0..21).map(|x| (log.clone(), x)).collect();
        let each = pool.map_each_chunked(logged_abort_on_17, args, 1).unwrap();
        for (i, r) in each.iter().enumerate() {
            if i as u64 == POISON {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.index(), Some(17));
                assert!(is_abort(e), "{e:?}");
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u64 * 10, "item {i}");
            }
        }
        let mut ran: Vec<u64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        ran.sort();
        assert_eq!(ran, (0..21).collect::<Vec<_>>(), "every item ran once");
        let _ = std::fs::remove_file(&log);
    })
}

#[test]
fn map_each_in_a_chunk_a_worker_died_in_fails_that_item_only() {
    within(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        // 15 and 16 finished before 17 aborted: the ledger kept their results.
        let each = pool.map_each_chunked(aborts_on_17, 0..21, 3).unwrap();
        for (i, r) in each.iter().enumerate() {
            if i as u64 == POISON {
                let e = r.as_ref().unwrap_err();
                assert!(
                    matches!(
                        e,
                        Error::Item {
                            index: 17,
                            items: 1,
                            ..
                        }
                    ),
                    "{e:?}"
                );
                assert!(is_abort(e));
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u64 * 10, "item {i}");
            }
        }
        assert!(matches!(
            pool.map_each_chunked(aborts_on_17, 0..3, 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(pool.map_each(aborts_on_17, 0..0).unwrap().is_empty());
    })
}

#[test]
fn errors_about_the_pool_are_not_wrapped_in_an_item() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        pool.close();
        assert!(matches!(pool.map(panics_on_17, 0..3), Err(Error::Closed)));
        assert!(matches!(
            pool.map_each(panics_on_17, 0..3),
            Err(Error::Closed)
        ));
    })
}
