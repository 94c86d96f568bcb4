//! `forkpool::init()`: the process-wide zygote that forks every pool's fork server (issue 8,
//! items 1, 2 and 6). A harness-less binary (`harness = false`): `main` calls `init()` first,
//! as a program would, with SIGCHLD and SIGALRM blocked as a signalfd program has them; checks
//! that need a process's output or fate re-run this binary as a scenario child.

mod scenario;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkpool::{Error, ExitCause, Pool};
use scenario::{check, gone, play, ppid_of};

/// Set by main after init(): workers, forked from the program as it was at init(), see 0.
static LATE: AtomicU64 = AtomicU64::new(0);
/// The descriptors this process was started with (by cargo, a shell), before init().
static INHERITED: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();

fn open_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn main() {
    // A signalfd/sigwait program blocks SIGCHLD first; the zygote inherits that mask and must
    // set its own.
    if scenario::requested().as_deref() == Some("init_off_main") {
        return init_off_main();
    }
    INHERITED.set(open_fds()).unwrap();
    scenario::block(&[libc::SIGCHLD, libc::SIGALRM]);
    forkpool::init().expect("init");
    unblock_all();
    if let Some(name) = scenario::requested() {
        return play_scenario(&name);
    }
    LATE.store(7, Ordering::Relaxed);
    scenario::watchdog(Duration::from_secs(600));
    let checks: [(&str, fn()); 13] = [
        (
            "a_killed_zygote_is_reaped_and_later_pools_fork_their_own_server",
            a_killed_zygote_is_reaped_and_later_pools_fork_their_own_server,
        ),
        (
            "init_on_a_thread_that_ends_leaves_a_working_zygote",
            init_on_a_thread_that_ends_leaves_a_working_zygote,
        ),
        (
            "init_is_idempotent_from_any_thread",
            init_is_idempotent_from_any_thread,
        ),
        (
            "workers_are_forked_from_the_zygote",
            workers_are_forked_from_the_zygote,
        ),
        (
            "workers_start_from_the_program_as_it_was_at_init",
            workers_start_from_the_program_as_it_was_at_init,
        ),
        (
            "an_initializer_argument_made_after_init_reaches_every_worker",
            an_initializer_argument_made_after_init_reaches_every_worker,
        ),
        (
            "tasks_that_print_answer_in_pools_built_beside_printing_threads",
            tasks_that_print_answer_in_pools_built_beside_printing_threads,
        ),
        (
            "a_killed_fork_server_is_forked_again_by_the_zygote",
            a_killed_fork_server_is_forked_again_by_the_zygote,
        ),
        (
            "helpers_unblock_sigchld_and_a_crash_behind_a_grandchild_is_noticed",
            helpers_unblock_sigchld_and_a_crash_behind_a_grandchild_is_noticed,
        ),
        (
            "the_zygote_leaks_no_descriptor_and_leaves_no_zombie",
            the_zygote_leaks_no_descriptor_and_leaves_no_zombie,
        ),
        (
            "a_task_can_build_a_pool_of_its_own",
            a_task_can_build_a_pool_of_its_own,
        ),
        (
            "a_death_mid_chunk_fails_only_its_item_through_the_zygote",
            a_death_mid_chunk_fails_only_its_item_through_the_zygote,
        ),
        (
            "the_zygote_and_its_servers_die_with_the_program",
            the_zygote_and_its_servers_die_with_the_program,
        ),
    ];
    for (name, f) in checks {
        check(name, Duration::from_secs(200), f);
    }
}

fn unblock_all() {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn play_scenario(name: &str) {
    match name {
        "printers" => scenario::pools_beside_printers(),
        "killed_server" => {
            scenario::start_printers(4);
            let pool = Pool::new(2).unwrap();
            let old = pool.apply(scenario::parent_pid, 0).unwrap();
            let zygote = ppid_of(old).unwrap();
            kill(old);
            // Until a worker of a new server answers; each task is bounded.
            let deadline = Instant::now() + Duration::from_secs(60);
            let new = loop {
                assert!(Instant::now() < deadline, "no new fork server within 60 s");
                let r = pool.apply_async(scenario::parent_pid, 0).unwrap();
                assert!(r.wait_timeout(Duration::from_secs(20)), "a task hung");
                match r.get() {
                    Ok(server) if server != old => break server,
                    Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                    Err(Error::WorkerDied { .. }) => {}
                    Err(e) => panic!("unexpected error: {e:?}"),
                }
            };
            assert_eq!(
                ppid_of(new),
                Some(zygote),
                "the new server is not the zygote's"
            );
            let results: Vec<_> = (0..20u64)
                .map(|i| pool.apply_async(scenario::print_square, i).unwrap())
                .collect();
            for (i, r) in results.into_iter().enumerate() {
                if !r.wait_timeout(Duration::from_secs(20)) {
                    eprintln!("HUNG: task {i} of the new server");
                    std::process::exit(3);
                }
                assert_eq!(r.get().unwrap(), (i * i) as u64);
            }
            eprintln!("NEW SERVER SERVES");
            std::process::exit(0);
        }
        "orphan" => {
            let pool = Pool::new(2).unwrap();
            let workers: Vec<u32> = (0..2).map(|_| pool.apply(worker_pid, 0).unwrap()).collect();
            let server = pool.apply(scenario::parent_pid, 0).unwrap();
            let zygote = ppid_of(server).unwrap();
            println!("PIDS {zygote} {server} {}", workers[0]);
            std::thread::sleep(Duration::from_secs(60));
        }
        "zygote_killed" => {
            let before = Pool::new(1).unwrap();
            let server = before.apply(scenario::parent_pid, 0).unwrap();
            let zygote = ppid_of(server).unwrap();
            kill(zygote);
            // Its servers die with it (PR_SET_PDEATHSIG): wait until this one has.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !gone(server) {
                assert!(Instant::now() < deadline, "the server outlived the zygote");
                std::thread::sleep(Duration::from_millis(10));
            }
            // A pool built now forks its own server, as without init().
            let after = Pool::new(1).unwrap();
            let own = after.apply(scenario::parent_pid, 0).unwrap();
            assert_eq!(ppid_of(own), Some(std::process::id()));
            // Found dead when the pool asked it for a server, and reaped: not even a zombie.
            assert!(!scenario::exists(zygote), "the dead zygote was not reaped");
            // The pool whose server died with the zygote fails its later tasks, clearly.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "the orphaned pool kept running");
                let r = before.apply_async(scenario::print_square, 1).unwrap();
                assert!(r.wait_timeout(Duration::from_secs(20)), "a task hung");
                match r.get() {
                    Err(e @ Error::Io { .. }) => {
                        assert!(e.to_string().contains("forkpool::init()"), "{e}");
                        break;
                    }
                    Err(Error::WorkerDied { .. }) | Ok(_) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }
            eprintln!("FELL BACK");
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// `init()` first, but on a thread that then ends: the zygote must outlive that thread (the
/// death signal follows the forking thread), and serve a pool built afterwards.
fn init_off_main() {
    std::thread::spawn(|| forkpool::init().unwrap())
        .join()
        .unwrap();
    let pool = Pool::new(1).unwrap();
    let server = pool.apply(scenario::parent_pid, 0).unwrap();
    let zygote = ppid_of(server).unwrap();
    assert_ne!(
        zygote,
        std::process::id(),
        "the server was not forked by a zygote"
    );
    assert_eq!(ppid_of(zygote), Some(std::process::id()));
    eprintln!("ZYGOTE SERVES");
}

fn init_on_a_thread_that_ends_leaves_a_working_zygote() {
    let run = play("init_off_main", &[], false, Duration::from_secs(60));
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert!(run.stderr.contains("ZYGOTE SERVES"), "{}", run.stderr);
}

fn a_killed_zygote_is_reaped_and_later_pools_fork_their_own_server() {
    let run = play("zygote_killed", &[], false, Duration::from_secs(120));
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert!(run.stderr.contains("FELL BACK"), "{}", run.stderr);
    // The fallback is the path without init(): the process has threads, so it warns.
    assert!(
        run.stderr.contains("Call forkpool::init()"),
        "{}",
        run.stderr
    );
}

fn kill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; the pid was alive a moment ago.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn worker_pid(_: u64) -> u32 {
    std::process::id()
}

fn late_value(_: u64) -> u64 {
    LATE.load(Ordering::Relaxed)
}

fn set_late(value: String) {
    LATE.store(value.len() as u64, Ordering::Relaxed);
}

/// Workers start from the program as it was at init(); state made later travels in the
/// initializer's argument, whose bytes the zygote receives with the pool's START message. With
/// max_tasks_per_child(1) every task runs in a fresh worker: each must have it.
fn an_initializer_argument_made_after_init_reaches_every_worker() {
    let made_later = "x".repeat(100_000);
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .initializer_with(set_late, made_later)
        .build()
        .unwrap();
    let seen = pool.map(late_value, 0..6u64).unwrap();
    assert_eq!(seen, [100_000; 6]);
    let server = pool.apply(scenario::parent_pid, 0).unwrap();
    let zygote = ppid_of(server).unwrap();
    assert_ne!(zygote, std::process::id(), "the server is not the zygote's");
    assert_eq!(ppid_of(zygote), Some(std::process::id()));
    pool.close();
    pool.join().unwrap();
}

fn square(x: u64) -> u64 {
    x * x
}

fn init_is_idempotent_from_any_thread() {
    forkpool::init().unwrap();
    let others: Vec<_> = (0..4).map(|_| std::thread::spawn(forkpool::init)).collect();
    for t in others {
        t.join().unwrap().unwrap();
    }
    // Still one zygote: every pool's server has the same parent.
    let a = Pool::new(1).unwrap();
    let b = Pool::new(1).unwrap();
    let za = ppid_of(a.apply(scenario::parent_pid, 0).unwrap());
    let zb = ppid_of(b.apply(scenario::parent_pid, 0).unwrap());
    assert_eq!(za, zb);
}

fn workers_are_forked_from_the_zygote() {
    let pool = Pool::new(2).unwrap();
    let server = pool.apply(scenario::parent_pid, 0).unwrap();
    let zygote = ppid_of(server).unwrap();
    assert_ne!(
        zygote,
        std::process::id(),
        "the server was forked by the pool's process"
    );
    assert_eq!(ppid_of(zygote), Some(std::process::id()));
    // The zygote is single-threaded.
    let status = std::fs::read_to_string(format!("/proc/{zygote}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Threads:\t1"), "{status}");
    pool.close();
    pool.join().unwrap();
}

fn aborts_on_6(x: u64) -> u64 {
    if x == 6 {
        std::process::abort();
    }
    x * 10
}

/// Issue 10, item 4c, with the fork server forked by the zygote: the worker's ledger still
/// reaches it (a third descriptor of the spawn request), so in a chunk of 10 whose item 6
/// aborts, `map_each` keeps the other nine results and `map` names item 6.
fn a_death_mid_chunk_fails_only_its_item_through_the_zygote() {
    let pool = Pool::builder()
        .processes(2)
        .print_panics(false)
        .build()
        .unwrap();
    let each = pool.map_each_chunked(aborts_on_6, 0..10, 10).unwrap();
    for (i, r) in each.iter().enumerate() {
        if i == 6 {
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
                "{e:?}"
            );
            assert!(matches!(
                e.cause(),
                Error::WorkerDied {
                    cause: ExitCause::Signal(6),
                    ..
                }
            ));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64 * 10);
        }
    }
    let err = pool.map_chunked(aborts_on_6, 0..10, 10).unwrap_err();
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
    pool.close();
    pool.join().unwrap();
}

fn workers_start_from_the_program_as_it_was_at_init() {
    assert_eq!(LATE.load(Ordering::Relaxed), 7);
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(late_value, 0).unwrap(), 0);
}

fn tasks_that_print_answer_in_pools_built_beside_printing_threads() {
    let run = play("printers", &[], false, Duration::from_secs(180));
    assert!(
        run.status.success(),
        "a task hung: {:?}\n{}",
        run.status,
        run.stderr
    );
    // init() was called: no warning, however many threads there are.
    assert!(!run.stderr.contains("forkpool::init()"), "{}", run.stderr);
}

fn a_killed_fork_server_is_forked_again_by_the_zygote() {
    let run = play("killed_server", &[], false, Duration::from_secs(180));
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert!(run.stderr.contains("NEW SERVER SERVES"), "{}", run.stderr);
}

fn helpers_unblock_sigchld_and_a_crash_behind_a_grandchild_is_noticed() {
    scenario::block(&[libc::SIGCHLD, libc::SIGALRM]);
    let pool = Pool::new(1).unwrap();
    let (worker, server) = pool.apply(scenario::masks, 0).unwrap();
    let zygote = ppid_of(pool.apply(scenario::parent_pid, 0).unwrap()).unwrap();
    let zygote_mask = scenario::blocked_signals(zygote).unwrap();
    // main blocked SIGCHLD before init(): the zygote and the server set their own masks.
    assert!(
        !scenario::has(zygote_mask, libc::SIGCHLD),
        "{zygote_mask:x}"
    );
    assert!(
        !scenario::has(server, libc::SIGCHLD),
        "server mask {server:x}"
    );
    // Workers: the mask of the thread that built the pool, less SIGALRM.
    assert!(
        scenario::has(worker, libc::SIGCHLD),
        "worker mask {worker:x}"
    );
    assert!(
        !scenario::has(worker, libc::SIGALRM),
        "worker mask {worker:x}"
    );
    let r = pool
        .apply_async(scenario::abort_leaving_a_grandchild, 0)
        .unwrap();
    assert!(
        r.wait_timeout(Duration::from_secs(5)),
        "the crash was not noticed within 5 s"
    );
    match r.get() {
        Err(Error::WorkerDied { cause, .. }) => {
            assert_eq!(cause, ExitCause::Signal(libc::SIGABRT))
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    pool.close();
    pool.join().unwrap();
}

fn the_zygote_leaks_no_descriptor_and_leaves_no_zombie() {
    // Every descriptor opened since main began, the zygote's socket among them, is
    // close-on-exec.
    let inherited = INHERITED.get().unwrap();
    for fd in open_fds() {
        if inherited.contains(&fd) {
            continue;
        }
        // SAFETY: F_GETFD only reads a descriptor's flags (the read_dir's own may be closed).
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(
            flags == -1 || flags & libc::FD_CLOEXEC != 0,
            "fd {fd} is inherited by exec"
        );
    }
    let probe = std::fs::File::open("/proc/self/status").unwrap();
    let pools: Vec<Pool> = (0..3).map(|_| Pool::new(1).unwrap()).collect();
    let zygote = ppid_of(pools[0].apply(scenario::parent_pid, 0).unwrap()).unwrap();
    // The zygote holds stdio, its socket and its SIGCHLD self-pipe: nothing of ours (the probe,
    // the pools' pipes, what cargo passed us).
    let held: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{zygote}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .filter(|(fd, _)| *fd > 2)
        .collect();
    assert_eq!(held.len(), 3, "the zygote holds {held:?}");
    assert_eq!(
        held.iter()
            .filter(|(_, t)| t.starts_with("socket:"))
            .count(),
        1,
        "{held:?}"
    );
    assert_eq!(
        held.iter().filter(|(_, t)| t.starts_with("pipe:")).count(),
        2,
        "{held:?}"
    );
    drop(probe);
    for pool in pools {
        pool.close();
        pool.join().unwrap();
    }
    // Every server the zygote forked is reaped: no zombie child of it.
    let zombies = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| ppid_of(p) == Some(zygote) && gone(p))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while zombies() > 0 {
        assert!(Instant::now() < deadline, "the zygote left zombies");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A task that builds a pool in its worker: the worker is a fork of the zygote's server, whose
/// copy of the zygote handle it must not use.
fn nested(x: u64) -> u64 {
    let pool = Pool::new(1).unwrap();
    pool.apply(square, x).unwrap()
}

fn a_task_can_build_a_pool_of_its_own() {
    let pool = Pool::new(1).unwrap();
    let r = pool.apply_async(nested, 9).unwrap();
    assert!(
        r.wait_timeout(Duration::from_secs(60)),
        "the nested pool hung"
    );
    assert_eq!(r.get().unwrap(), 81);
}

fn the_zygote_and_its_servers_die_with_the_program() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(scenario::SCENARIO, "orphan")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("the scenario printed no pids within 60 s");
    let pids: Vec<u32> = line
        .trim()
        .strip_prefix("PIDS ")
        .expect("a PIDS line")
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&p| gone(p)) {
        assert!(
            Instant::now() < deadline,
            "zygote, server or worker outlived the killed program: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
