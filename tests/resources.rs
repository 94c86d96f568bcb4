//! Processes and file descriptors: after join or drop no worker is left, not even a zombie, and
//! the process's descriptors are back to what they were. These tests count process-wide
//! resources, so each one holds `SERIAL` to keep the others in this binary out of its counts.

mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{descendants, eventually, exists, open_fds, state, within};
use forkpool::{Error, Pool};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: ()) -> u32 {
    std::thread::sleep(Duration::from_millis(30));
    std::process::id()
}

fn abort(_: ()) -> u64 {
    std::process::abort()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn worker_pids(pool: &Pool) -> Vec<u32> {
    let mut pids = pool
        .map_chunked(pid, vec![(); 4 * pool.processes()], 1)
        .unwrap();
    pids.sort();
    pids.dedup();
    pids
}

#[test]
fn join_leaves_no_zombie_and_no_descriptor() {
    let _guard = serial();
    within(Duration::from_secs(60), || {
        let fds_before = open_fds();
        let kids_before = descendants();
        let pool = Pool::new(3).unwrap();
        assert_eq!(
            descendants().len(),
            kids_before.len() + 4,
            "Pool::new starts its fork server and forks its 3 workers at once"
        );
        let results: Vec<_> = (0..100)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        assert!(matches!(
            pool.apply(abort, ()),
            Err(Error::WorkerDied { .. })
        ));
        pool.close();
        pool.join().unwrap();
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
        assert_eq!(
            descendants(),
            kids_before,
            "no worker left, not even a zombie"
        );
        assert_eq!(open_fds(), fds_before, "no descriptor leaked");
    })
}

#[test]
fn drop_without_join_terminates_and_reaps() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        let fds_before = open_fds();
        let kids_before = descendants();
        let pool = Pool::new(2).unwrap();
        let pids = worker_pids(&pool);
        let pending = pool.apply_async(nap, 60_000).unwrap();
        let started = std::time::Instant::now();
        drop(pool);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "drop does not block for long"
        );
        assert!(matches!(pending.get(), Err(Error::Terminated)));
        for p in pids {
            assert!(!exists(p), "worker {p} outlived its pool");
        }
        assert_eq!(descendants(), kids_before);
        assert_eq!(open_fds(), fds_before);
    })
}

#[test]
fn terminate_with_tasks_pending_joins_promptly() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        let kids_before = descendants();
        let pool = Pool::new(2).unwrap();
        let done = pool.apply_async(square, 3).unwrap();
        assert!(done.wait_timeout(Duration::from_secs(10)));
        let pending: Vec<_> = (0..1000)
            .map(|_| pool.apply_async(nap, 10_000).unwrap())
            .collect();
        let started = std::time::Instant::now();
        pool.terminate();
        pool.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        for r in pending {
            assert!(matches!(r.get(), Err(Error::Terminated)));
        }
        assert_eq!(
            done.get().unwrap(),
            9,
            "a result that finished before terminate stays Ok"
        );
        assert_eq!(descendants(), kids_before);
        // Idempotent calls after the end.
        pool.close();
        pool.terminate();
        pool.join().unwrap();
        assert!(matches!(pool.apply_async(square, 1), Err(Error::Closed)));
    })
}

#[test]
fn a_long_lived_program_spawned_by_a_task_does_not_hold_the_pool_open() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        fn spawn_sleep(_: ()) -> u32 {
            let child = Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep");
            let pid = child.id();
            std::mem::forget(child);
            pid
        }
        let pool = Pool::new(1).unwrap();
        let sleeper = pool.apply(spawn_sleep, ()).unwrap();
        // Crash detection still works at once although `sleep` lives on.
        assert!(matches!(
            pool.apply(abort, ()),
            Err(Error::WorkerDied { .. })
        ));
        let started = std::time::Instant::now();
        pool.close();
        pool.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "join waited for the task's grandchild"
        );
        // SAFETY: kill has no memory-safety preconditions; the pid is the sleep we spawned.
        unsafe { libc::kill(sleeper as i32, libc::SIGKILL) };
    })
}

#[test]
fn workers_hold_only_stdio_and_their_own_pipes() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        fn worker_fds(_: ()) -> Vec<i32> {
            let dir = std::fs::read_dir("/proc/self/fd").unwrap();
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        }
        // A descriptor of the parent's that a worker must not inherit.
        let inherited = std::fs::File::open("/dev/null").unwrap();
        let pool = Pool::new(2).unwrap();
        let mut fds = pool.apply(worker_fds, ()).unwrap();
        fds.sort();
        // stdio, the task pipe (3), the reply pipe (4), and the directory read_dir opened.
        assert_eq!(&fds[..5], &[0, 1, 2, 3, 4], "{fds:?}");
        assert!(fds.len() <= 6, "the worker inherited descriptors: {fds:?}");
        drop(inherited);
    })
}

#[test]
fn two_pools_do_not_hold_each_others_pipes() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        let a = Pool::new(2).unwrap();
        let b = Pool::new(2).unwrap();
        // Workers replaced in A after B exists are forked while B's pipes are open.
        assert!(a.apply(abort, ()).is_err());
        assert_eq!(a.apply(square, 2).unwrap(), 4);
        let started = std::time::Instant::now();
        b.close();
        b.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(a.apply(square, 3).unwrap(), 9);
    })
}

#[test]
fn the_users_own_children_keep_their_exit_status() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        let mut mine = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        // Let it exit before the pool reaps anything.
        assert!(eventually(Duration::from_secs(5), || state(mine.id()) == Some('Z')));
        let pool = Pool::new(2).unwrap();
        assert!(pool.apply(abort, ()).is_err());
        pool.close();
        pool.join().unwrap();
        assert_eq!(mine.wait().unwrap().code(), Some(7));
    })
}

#[test]
fn workers_ignore_sigint() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.apply(pid, ()).unwrap();
        // SAFETY: kill has no memory-safety preconditions; the pid is our pool's live worker.
        unsafe { libc::kill(worker as i32, libc::SIGINT) };
        // Wait until the signal has been delivered (handled, or it killed the worker), not for
        // a time that a loaded machine may not honour.
        assert!(eventually(Duration::from_secs(20), || {
            !common::signal_pending(worker, libc::SIGINT)
        }));
        assert!(exists(worker) && state(worker) != Some('Z'));
        assert_eq!(
            pool.apply(pid, ()).unwrap(),
            worker,
            "SIGINT did not kill the worker"
        );
    })
}

#[test]
fn max_tasks_per_child_recycles_without_losing_tasks() {
    let _guard = serial();
    within(Duration::from_secs(60), || {
        let kids_before = descendants();
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(3)
            .build()
            .unwrap();
        let results: Vec<_> = (0..60)
            .map(|_| pool.apply_async(pid, ()).unwrap())
            .collect();
        pool.close();
        pool.join().unwrap();
        let mut pids: Vec<u32> = results.into_iter().map(|r| r.get().unwrap()).collect();
        pids.sort();
        let total = pids.len();
        pids.dedup();
        assert_eq!(total, 60);
        assert!(
            pids.len() >= 20,
            "60 tasks at 3 per worker need at least 20 workers, saw {}",
            pids.len()
        );
        assert_eq!(descendants(), kids_before);
    })
}

/// CPU time (user + system, in clock ticks) a process has used, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let utime: u64 = common::stat_field(pid, 14).unwrap().parse().unwrap();
    let stime: u64 = common::stat_field(pid, 15).unwrap().parse().unwrap();
    utime + stime
}

#[test]
fn an_idle_pool_burns_no_cpu() {
    let _guard = serial();
    within(Duration::from_secs(30), || {
        let pool = Pool::new(2).unwrap();
        // Busy first, so that every spin-before-sleep path has run.
        pool.map_chunked(square, 0..2000, 1).unwrap();
        let mut watched = worker_pids(&pool);
        watched.push(std::process::id());
        std::thread::sleep(Duration::from_millis(200));
        let before: Vec<u64> = watched.iter().map(|&p| cpu_ticks(p)).collect();
        std::thread::sleep(Duration::from_secs(1));
        let after: Vec<u64> = watched.iter().map(|&p| cpu_ticks(p)).collect();
        // Clock ticks are 10 ms: allow one or two for the test's own threads and noise.
        for ((p, b), a) in watched.iter().zip(before).zip(after) {
            assert!(
                a - b <= 2,
                "process {p} used {} ticks while the pool was idle",
                a - b
            );
        }
    })
}

/// The calling thread's `sched_attr` runtime (its custom EEVDF slice; 0 for the default), or
/// `None` where `sched_getattr` is missing.
#[cfg(target_os = "linux")]
fn thread_slice() -> Option<u64> {
    // struct sched_attr, first version (48 bytes).
    let mut attr = [0u64; 6];
    // SAFETY: sched_getattr writes at most 48 bytes (the size passed) into `attr`, which has
    // that size.
    let got = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, attr.as_mut_ptr(), 48u32, 0u32) };
    // Words: size and policy, flags, nice and priority, runtime, deadline, period.
    (got == 0).then_some(attr[3])
}

#[cfg(target_os = "linux")]
fn set_thread_slice(runtime_ns: u64) -> bool {
    let mut attr = [0u64; 6];
    // SAFETY: as in thread_slice.
    let got = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, attr.as_mut_ptr(), 48u32, 0u32) };
    if got != 0 {
        return false;
    }
    attr[0] = (attr[0] & !0xffff_ffff) | 48; // size; the policy stays in the high half
    attr[1] = 0; // flags
    attr[3] = runtime_ns;
    // SAFETY: `attr` is a valid 48-byte sched_attr for this thread; only its slice changes.
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr.as_ptr(), 0u32) == 0 }
}

/// `Pool::new` lends the building thread a short slice while it forks the server and spawns
/// the dispatcher (issue 9, W8d); the thread must get back exactly what it had, the default or
/// a slice the program chose.
#[cfg(target_os = "linux")]
#[test]
fn building_a_pool_leaves_the_threads_time_slice_as_it_was() {
    let _serial = serial();
    std::thread::spawn(|| {
        let Some(before) = thread_slice() else { return };
        let pool = Pool::new(2).unwrap();
        assert_eq!(thread_slice(), Some(before), "after Pool::new");
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        pool.close();
        pool.join().unwrap();
        assert_eq!(thread_slice(), Some(before), "after join");
        // A slice of the program's own (custom slices exist from Linux 6.12).
        if !set_thread_slice(700_000) || thread_slice() != Some(700_000) {
            return;
        }
        let pool = Pool::new(2).unwrap();
        assert_eq!(thread_slice(), Some(700_000), "the program's own slice");
        drop(pool);
    })
    .join()
    .unwrap();
}
