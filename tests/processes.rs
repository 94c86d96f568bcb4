//! What a worker's process does beyond its tasks, tested with real forks, programs and signals:
//! a pool used in a forked child, a task whose fork returns into the worker, programs a task
//! starts (they die with a killed worker), output flushed at a worker's exit, process names.

mod common;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{eventually, state, within, LIMIT};
use forkpool::{Error, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn my_pid(_: ()) -> u32 {
    std::process::id()
}

/// Waits (bounded) for a child forked by this test and returns its exit code; kills it and
/// fails the test if it is not done within `limit`.
fn wait_child(pid: libc::pid_t, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int; `pid` is our unreaped child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(
                libc::WIFEXITED(status),
                "child ended by a signal: {status:#x}"
            );
            return libc::WEXITSTATUS(status);
        }
        assert_eq!(r, 0, "waitpid failed");
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("child {pid} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the forked child checks; its exit code says which check failed (0: all passed).
fn use_in_forked_child(pool: Pool, owner: u32) -> i32 {
    let me = std::process::id();
    let forked = |r: &Result<(), Error>| matches!(r, Err(Error::ForkedProcess { owner: o, current }) if *o == owner && *current == me);
    if !forked(&pool.apply_async(square, 3).map(drop)) {
        return 1;
    }
    if !forked(&pool.map(square, 0..4).map(drop)) {
        return 2;
    }
    if !forked(&pool.imap(square, 0..4).map(drop)) {
        return 3;
    }
    if !forked(
        &pool
            .apply_async_with(square, 3, |_: &forkpool::Result<u64>| {})
            .map(drop),
    ) {
        return 4;
    }
    pool.close();
    pool.terminate();
    if !forked(&pool.join()) {
        return 5;
    }
    let message = pool.apply(square, 1).unwrap_err().to_string();
    if !message.contains("build a new pool after fork()") {
        return 6;
    }
    // Must neither panic nor kill the parent's workers.
    drop(pool);
    0
}

/// Regression (issue 8, item 7): in the child of a fork, apply_async returned Ok and its result
/// never came; dropping the pool panicked ("failed to join thread: Invalid argument").
#[test]
fn a_pool_used_in_a_forked_child_refuses_clearly_and_drops_without_harm() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        let owner = std::process::id();
        // SAFETY: the child runs only the checks above (no lock another thread may hold is
        // needed: the pool refuses before touching its channel) and ends in _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code =
                std::panic::catch_unwind(AssertUnwindSafe(|| use_in_forked_child(pool, owner)))
                    .unwrap_or(99);
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        assert_eq!(
            wait_child(pid, LIMIT),
            0,
            "a check failed in the child (see its code)"
        );
        // The parent's pool, its dispatcher and its workers are untouched.
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
        assert_eq!(pool.stats().workers_alive, 1);
        pool.close();
        pool.join().unwrap();
    })
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Regression (issue 8, item 7, the rest of it): results made before a fork() and used in the
/// child waited forever there, since only the parent's dispatcher fills them. They fail with
/// `ForkedProcess` at once; a result already complete at the fork is still there.
#[test]
fn results_made_before_a_fork_fail_in_the_child_instead_of_waiting() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let done = pool.apply_async(square, 5).unwrap();
        done.wait();
        let pending = pool.apply_async(nap, 3_000).unwrap();
        let waited = pool.apply_async(nap, 3_000).unwrap();
        let mut timed = pool.apply_async(nap, 3_000).unwrap();
        let mut items = pool.imap(nap, [3_000, 3_000]).unwrap();
        let owner = std::process::id();
        // SAFETY: the child only inspects the copies of results and ends in _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let me = std::process::id();
            let forked = |e: &Error| matches!(e, Error::ForkedProcess { owner: o, current } if *o == owner && *current == me);
            let code = (|| {
                if done.get().ok() != Some(25) {
                    return 1;
                }
                if !pending.get().as_ref().is_err_and(forked) {
                    return 2;
                }
                if waited.wait_timeout(Duration::from_secs(30)) {
                    return 3;
                }
                waited.wait(); // returns at once
                if !timed
                    .get_timeout(Duration::from_secs(30))
                    .as_ref()
                    .is_err_and(forked)
                {
                    return 4;
                }
                if !items.next().is_some_and(|r| r.as_ref().is_err_and(forked)) {
                    return 5;
                }
                if items.next().is_some() {
                    return 6;
                }
                0
            })();
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        assert_eq!(
            wait_child(pid, LIMIT),
            0,
            "a check failed in the child (see its code)"
        );
        // The parent's own copies are untouched.
        assert_eq!(pending.get().unwrap(), 3_000);
        drop(items);
        pool.terminate();
        pool.join().unwrap();
    })
}

/// A task that forks, and whose child returns from the task instead of exiting.
fn fork_and_return(_: ()) -> String {
    // SAFETY: the child returns into the worker's loop, which is what this test is about; the
    // worker is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        return format!("CHILD {}", std::process::id());
    }
    // Wait for the copy to end (it should, at once); bounded, so that without the fix the
    // task still answers and the test fails on its value rather than hanging.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    // SAFETY: `status` is a valid int; `pid` is this process's child.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    format!("PARENT {}", std::process::id())
}

/// Regression (issue 8, item 8): the caller got the child's value ("CHILD 4235"), the real
/// reply was discarded, and the next tasks ran in the rogue copy.
#[test]
fn a_forked_copy_of_a_worker_never_answers_for_it() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.apply(my_pid, ()).unwrap();
        let answer = pool.apply(fork_and_return, ()).unwrap();
        assert_eq!(answer, format!("PARENT {worker}"));
        for _ in 0..8 {
            assert_eq!(
                pool.apply(my_pid, ()).unwrap(),
                worker,
                "a task ran elsewhere"
            );
        }
        assert_eq!(pool.stats().workers_replaced, 0);
        pool.close();
        pool.join().unwrap();
    })
}

static NEXT_FILE: AtomicU32 = AtomicU32::new(0);

fn scratch_file(what: &str) -> PathBuf {
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("forkpool-{what}-{}-{n}.pid", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Starts `sleep 300` and leaves it running; writes its pid to `path` and returns it.
#[allow(clippy::zombie_processes)] // leaving it running is the point
fn start_sleeper(path: String) -> u32 {
    let child = Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    std::fs::write(format!("{path}.tmp"), pid.to_string()).unwrap();
    std::fs::rename(format!("{path}.tmp"), &path).unwrap();
    pid
}

/// Starts `sleep 300`, then runs until killed.
fn start_sleeper_and_hang(path: String) -> u32 {
    start_sleeper(path);
    std::thread::sleep(Duration::from_secs(600));
    0
}

/// The pid a task wrote to `path`, once it is there.
fn pid_from(path: &PathBuf) -> u32 {
    assert!(
        eventually(LIMIT, || path.exists()),
        "the task never started its program"
    );
    let pid = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let _ = std::fs::remove_file(path);
    pid
}

/// Alive: it exists and is not a zombie waiting for init to reap it.
fn alive(pid: u32) -> bool {
    matches!(common::state(pid), Some(s) if s != 'Z' && s != 'X')
}

fn assert_dies(pid: u32, how: &str) {
    let died = eventually(LIMIT, || !alive(pid));
    if !died {
        // SAFETY: kill has no memory-safety preconditions; `pid` is the sleeper we started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    assert!(
        died,
        "the program a task started outlived its worker ({how})"
    );
}

/// Regression (issue 8, item 9): a task killed by its time limit left the programs it started
/// running (one leaked crawler per timeout).
#[test]
fn programs_a_task_started_die_when_its_time_limit_kills_it() {
    within(LIMIT * 2, || {
        let pool = Pool::new(1).unwrap();
        let path = scratch_file("timeout");
        let r = pool
            .apply_async_timeout(
                start_sleeper_and_hang,
                path.to_str().unwrap().to_string(),
                Duration::from_millis(1500),
            )
            .unwrap();
        let sleeper = pid_from(&path);
        assert!(matches!(r.get(), Err(Error::TimedOut { .. })));
        assert_dies(sleeper, "time limit");
        // The replacement serves as usual.
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
    })
}

/// Regression (issue 8, item 9), for terminate() and for dropping the pool.
#[test]
fn programs_a_task_started_die_when_the_pool_is_terminated_or_dropped() {
    within(LIMIT * 2, || {
        for drop_it in [false, true] {
            let pool = Pool::new(2).unwrap();
            let path = scratch_file("terminate");
            let r = pool
                .apply_async(start_sleeper_and_hang, path.to_str().unwrap().to_string())
                .unwrap();
            let sleeper = pid_from(&path);
            if drop_it {
                drop(pool);
            } else {
                pool.terminate();
                pool.join().unwrap();
            }
            assert!(matches!(r.get(), Err(Error::Terminated)));
            assert_dies(sleeper, if drop_it { "drop" } else { "terminate" });
        }
    })
}

/// A task that ends normally keeps today's behaviour: a program it deliberately left running
/// goes on after the task, and after the pool is closed and joined.
#[test]
fn programs_a_task_left_running_on_purpose_survive_a_normal_end() {
    within(LIMIT, || {
        let pool = Pool::builder()
            .processes(1)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        let path = scratch_file("normal");
        let sleeper = pool
            .apply(start_sleeper, path.to_str().unwrap().to_string())
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(pool.apply(square, 3).unwrap(), 9); // its worker retired meanwhile
        pool.close();
        pool.join().unwrap();
        let still_alive = alive(sleeper);
        // SAFETY: kill has no memory-safety preconditions; `sleeper` is the program we started.
        unsafe { libc::kill(sleeper as libc::pid_t, libc::SIGKILL) };
        assert!(still_alive, "a program left running on purpose was killed");
    })
}

const PARENT_KILL_ENV: &str = "FORKPOOL_PROGRAM_PATH";

/// Helper for `programs_a_task_started_die_when_the_parent_is_sigkilled`: builds a pool, has
/// a task start a program, and waits to be killed.
#[test]
#[ignore = "run by programs_a_task_started_die_when_the_parent_is_sigkilled"]
fn parent_killed_helper() {
    let Some(path) = std::env::var_os(PARENT_KILL_ENV) else {
        return;
    };
    let pool = Pool::new(1).unwrap();
    let _r = pool
        .apply_async(start_sleeper_and_hang, path.into_string().unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// Issue 8, item 9: the parent SIGKILLed; the fork server sees it (its death signal, or end of
/// file on its socket) and kills its workers' groups before it exits.
#[test]
fn programs_a_task_started_die_when_the_parent_is_sigkilled() {
    within(LIMIT * 2, || {
        let path = scratch_file("parent");
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "parent_killed_helper",
                "--nocapture",
            ])
            .env(PARENT_KILL_ENV, &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let sleeper = pid_from(&path);
        helper.kill().unwrap();
        helper.wait().unwrap();
        assert_dies(sleeper, "parent SIGKILLed");
    })
}

fn print_partial(n: u32) -> u32 {
    print!("partial-{n}; ");
    n
}

/// Helper for `output_without_a_newline_is_flushed_when_a_worker_exits`.
#[test]
#[ignore = "run by output_without_a_newline_is_flushed_when_a_worker_exits"]
fn partial_output_helper() {
    if std::env::var_os("FORKPOOL_PARTIAL_OUTPUT").is_none() {
        return;
    }
    // Retired by max_tasks_per_child after each task...
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    assert_eq!(pool.apply(print_partial, 1).unwrap(), 1);
    assert_eq!(pool.apply(print_partial, 2).unwrap(), 2);
    pool.close();
    pool.join().unwrap();
    // ...and ended by close and join.
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(print_partial, 3).unwrap(), 3);
    pool.close();
    pool.join().unwrap();
}

/// Regression (issue 8, item 11): `print!("partial; ")` in a task never appeared: the worker's
/// buffered stdout was lost when it exited.
#[test]
fn output_without_a_newline_is_flushed_when_a_worker_exits() {
    within(LIMIT, || {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "partial_output_helper",
                "--nocapture",
            ])
            .env("FORKPOOL_PARTIAL_OUTPUT", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        for n in 1..=3 {
            assert_eq!(
                stdout.matches(&format!("partial-{n}; ")).count(),
                1,
                "output of task {n} in: {stdout:?}"
            );
        }
    })
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

fn own_comm_and_parent(_: ()) -> (String, u32) {
    (
        comm_of(std::process::id()),
        std::os::unix::process::parent_id(),
    )
}

/// Regression (issue 8, item 15): workers showed in ps as "forkpool-dispat", the dispatcher
/// thread's name.
#[test]
fn workers_and_the_fork_server_are_named_in_ps() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let (comm, server) = pool.apply(own_comm_and_parent, ()).unwrap();
        assert_eq!(comm, "forkpool-worker");
        assert_eq!(comm_of(server), "forkpool-server");
        pool.close();
        pool.join().unwrap();
    })
}

fn worker_and_server(_: ()) -> (u32, u32) {
    (std::process::id(), std::os::unix::process::parent_id())
}

/// Issue 9, W8d: after `close`, the fork server is told it will fork no more (FINISH) and
/// exits by itself after its last worker. Killed from outside while it still waits for a
/// worker (stopped, so it does not exit when its task pipe closes), its end is a loss as
/// before: the worker died with it, and `join` returns instead of waiting for an exit report
/// that cannot come (it waited forever when that end of file was taken for the planned exit).
#[test]
fn a_fork_server_killed_while_it_finishes_still_lets_join_return() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let (worker, server) = pool.apply(worker_and_server, ()).unwrap();
        assert_eq!(comm_of(server), "forkpool-server");
        // SAFETY: kill(2) on our pool's worker and its fork server, both alive (the pool holds
        // them), so neither pid can have been reused.
        unsafe { libc::kill(worker as i32, libc::SIGSTOP) };
        pool.close();
        // Long enough for the dispatcher to close the task pipe and send FINISH, well short of
        // the second after which it would have the stopped worker killed.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        unsafe { libc::kill(server as i32, libc::SIGKILL) };
        pool.join().unwrap();
        assert!(
            eventually(Duration::from_secs(10), || state(worker)
                .is_none_or(|s| s == 'Z')),
            "the worker died with its server"
        );
    })
}
