//! Replies a worker holds back (issue 9: one write for many replies while tasks wait in its
//! pipe) still arrive promptly and survive the worker: when no more tasks come, when a long
//! task runs behind them, and when the worker dies behind them. Real workers, real aborts;
//! tasks that must run once log themselves to a file opened with O_APPEND.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{quiet_pool, within, LIMIT};
use forkpool::{AsyncResult, Error, Pool};

/// Tiny tasks on each side of the one that misbehaves: enough that the worker holds replies.
const AROUND: u64 = 40;

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn logged((path, x): (PathBuf, u64)) -> u64 {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap();
    file.write_all(format!("{x}\n").as_bytes()).unwrap();
    x * x
}

fn abort(_: u64) -> u64 {
    std::process::abort()
}

/// Makes the pool's single worker known for tiny tasks, so that it is given many at once.
fn warm(pool: &Pool) {
    let results: Vec<_> = (0..500)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.get().unwrap(), (i * i) as u64);
    }
}

fn runs(path: &Path) -> Vec<u64> {
    let mut runs: Vec<u64> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    runs.sort_unstable();
    runs
}

/// A batch of tiny tasks and nothing after it: every result arrives at once, none waits for a
/// task that never comes.
#[test]
fn held_replies_arrive_at_once_when_no_more_tasks_come() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        warm(&pool);
        for round in 0..20 {
            let start = Instant::now();
            let mut results: Vec<AsyncResult<u64>> = (0..AROUND)
                .map(|i| pool.apply_async(square, i).unwrap())
                .collect();
            for (i, r) in results.iter_mut().enumerate() {
                let got = r.get_timeout(Duration::from_secs(2));
                assert_eq!(got.unwrap(), (i * i) as u64, "round {round}, task {i}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "round {round}: {:?}",
                start.elapsed()
            );
        }
        pool.close();
        pool.join().unwrap();
    });
}

/// Tiny tasks, then a 4-second task with more tiny tasks waiting behind it: the worker holds
/// the first replies while it runs the long task (another task waits in its buffer), and the
/// pool takes them from the ledger long before the long task ends. The same replies reach
/// the pipe later, and are dropped there: nothing fails, and the pool ends cleanly.
#[test]
fn replies_held_behind_a_long_task_arrive_long_before_it_ends() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        warm(&pool);
        let start = Instant::now();
        let mut before: Vec<_> = (0..AROUND)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        let long = pool.apply_async(nap, 4_000).unwrap();
        let after: Vec<_> = (0..AROUND)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        for (i, r) in before.iter_mut().enumerate() {
            let got = r.get_timeout(Duration::from_millis(1_500));
            assert_eq!(got.unwrap(), (i * i) as u64, "task {i} before the long one");
        }
        let early = start.elapsed();
        assert!(early < Duration::from_millis(1_500), "{early:?}");
        assert_eq!(long.get().unwrap(), 4_000);
        for (i, r) in after.into_iter().enumerate() {
            assert_eq!(
                r.get().unwrap(),
                (i * i) as u64,
                "task {i} after the long one"
            );
        }
        let stats = pool.stats();
        assert_eq!(stats.failed, 0, "{stats:?}");
        pool.close();
        pool.join().unwrap();
    });
}

/// Tiny tasks, then a task that aborts with more waiting behind it: the replies the worker
/// held when it died are delivered from its ledger. The tasks before the abort succeed, run
/// once each (none is re-run as if it had been lost), the abort alone fails, and the tasks
/// after it run on the replacement.
#[test]
fn replies_held_when_the_worker_dies_are_delivered_and_nothing_runs_twice() {
    within(LIMIT, || {
        let dir = std::env::temp_dir().join(format!("forkpool-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = quiet_pool(1);
        for round in 0..5 {
            let path = dir.join(format!("round-{round}"));
            let _ = std::fs::remove_file(&path);
            warm(&pool);
            let before: Vec<_> = (0..AROUND)
                .map(|i| pool.apply_async(logged, (path.clone(), i)).unwrap())
                .collect();
            let bad = pool.apply_async(abort, 0).unwrap();
            let after: Vec<_> = (AROUND..2 * AROUND)
                .map(|i| pool.apply_async(logged, (path.clone(), i)).unwrap())
                .collect();
            for (i, r) in before.into_iter().enumerate() {
                assert_eq!(r.get().unwrap(), (i * i) as u64, "round {round}, task {i}");
            }
            assert!(
                matches!(bad.get(), Err(Error::WorkerDied { .. })),
                "round {round}"
            );
            for (i, r) in after.into_iter().enumerate() {
                let x = AROUND + i as u64;
                assert_eq!(r.get().unwrap(), x * x, "round {round}, task {x}");
            }
            assert_eq!(
                runs(&path),
                (0..2 * AROUND).collect::<Vec<_>>(),
                "round {round}: every task ran exactly once"
            );
        }
        pool.close();
        pool.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
