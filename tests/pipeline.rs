//! How the dispatcher judges a task's length (by the run time the worker reports in its reply,
//! issue 9) and what that must not break: fairness for tasks that wait rather than compute, and
//! every reply sent as soon as its task is done, even while more tasks wait in the worker's pipe.

mod common;

use std::time::Duration;

use common::within;
use forkpool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// A task that sleeps uses almost no CPU, but it is long: once a worker's tasks have been
/// sleeping ones, it must be sent one at a time like a computing one (the worker reports wall
/// time, not CPU time), so that short tasks do not wait in the pipe behind a long one while the
/// other worker idles.
#[test]
fn sleeping_tasks_count_as_long_and_nothing_waits_behind_one() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        for i in 0..2000 {
            pool.apply(square, i).unwrap();
        }
        // Enough sleeping tasks for both workers' averages to say "long".
        pool.map_chunked(nap, vec![20u64; 16], 1).unwrap();
        let mut naps = vec![5u64; 8];
        naps[0] = 800;
        let pids = pool.map_chunked(nap, naps, 1).unwrap();
        let long_worker = pids[0];
        let behind_long = pids.iter().filter(|&&p| p == long_worker).count() - 1;
        // Judged short, the long task's worker would hold 3 of the short ones behind it.
        assert!(
            behind_long <= 1,
            "{behind_long} short tasks ran behind the long one: {pids:?}"
        );
    })
}

/// A worker whose tasks are short holds several at once; the reply to the one it finished is
/// written before it starts the next, so it arrives while the next still runs (a reply held
/// back for a batch would wait for the long task, or be lost if that task crashed the worker).
#[test]
fn a_finished_result_arrives_while_the_next_task_in_the_pipe_runs() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        // Many short tasks: the worker is trusted with a deep pipeline.
        let warm: Vec<_> = (0..2000)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        for r in warm {
            r.get().unwrap();
        }
        let mut short = pool.apply_async(square, 9).unwrap();
        let long = pool.apply_async(nap, 5_000).unwrap();
        // Generous for a busy machine, and well under the long task's 5 s.
        assert_eq!(short.get_timeout(Duration::from_secs(3)).unwrap(), 81);
        assert!(!long.ready(), "the long task is still running");
        pool.terminate();
        pool.join().unwrap();
    })
}
