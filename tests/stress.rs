//! Stress and abuse, with real processes: tens of thousands of tasks from several threads while
//! workers abort, SIGKILL themselves, `exit` and panic at random; a thousand pools built and
//! dropped; every worker killed from outside at once; the pool's owner killed with SIGKILL; and
//! workers that write garbage on their reply pipe. Each test proves that every task is accounted
//! for with the right outcome (its value, or the error that says what happened), that the pool
//! recovers to its full size, and that afterwards no process (not even a zombie) and no file
//! descriptor is left behind.
//!
//! Processes are counted as descendants of the test process (found by walking /proc by parent
//! pid), not only as its direct children, so the counts hold whether workers are forked by the
//! pool's own thread or by an intermediate fork-server process.
//!
//! These tests count process-wide resources, so each one holds `SERIAL` to keep the others in
//! this binary out of its counts.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{descendants, descendants_of, eventually, open_fds, stat_field, state, within};
use forkpool::{AsyncResult, Error, ExitCause, Pool, PoolBuilder};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Processes, from /proc
// ---------------------------------------------------------------------------------------------

/// True if the process exists and is neither a zombie nor dead.
fn live(pid: u32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// True if the process is gone, or a zombie waiting for whoever adopted it.
fn gone_or_zombie(pid: u32) -> bool {
    matches!(state(pid), None | Some('Z') | Some('X'))
}

/// A process's identity: its pid and its start time (field 22 of /proc/PID/stat), so that a
/// later process that reuses the pid is not mistaken for it.
type Identity = (u32, String);

/// The identities of these processes that exist now.
fn identities(pids: &[u32]) -> Vec<Identity> {
    pids.iter()
        .filter_map(|&p| Some((p, stat_field(p, 22)?)))
        .collect()
}

/// The processes among `known` that still exist (zombies included), with their states.
fn still_there(known: &[Identity]) -> Vec<(u32, Option<char>)> {
    known
        .iter()
        .filter(|(p, start)| stat_field(*p, 22).as_deref() == Some(start.as_str()))
        .map(|&(p, _)| (p, state(p)))
        .collect()
}

fn states(pids: &[u32]) -> Vec<(u32, Option<char>)> {
    pids.iter().map(|&p| (p, state(p))).collect()
}

fn kill9(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is one of our pool's workers.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

fn square(x: u64) -> u64 {
    x * x
}

/// What an ordinary stress task returns for `x`.
fn expected_value(x: u64) -> u64 {
    x.wrapping_mul(2_654_435_761)
}

fn ordinary(x: u64) -> u64 {
    expected_value(x)
}

fn planned_panic(x: u64) -> u64 {
    panic!("planned panic {x}")
}

fn planned_abort(_: u64) -> u64 {
    std::process::abort()
}

fn planned_sigkill(_: u64) -> u64 {
    // SAFETY: kill and getpid have no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn planned_exit(_: u64) -> u64 {
    std::process::exit(7)
}

/// Sleeps `ms` milliseconds, then returns the worker's pid.
fn sleepy_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The distinct pids of the workers that ran `4 * processes` tasks of 20 ms each, one at a time.
fn worker_pids(pool: &Pool) -> Vec<u32> {
    let mut pids = pool
        .map_chunked(sleepy_pid, vec![20; 4 * pool.processes()], 1)
        .expect("ordinary tasks succeed");
    pids.sort();
    pids.dedup();
    pids
}

/// Waits (bounded) until the pool answers from `processes()` distinct workers, each a live,
/// non-zombie descendant of this process; returns their pids.
fn full_pool(pool: &Pool) -> Vec<u32> {
    let mut last = Vec::new();
    let full = eventually(Duration::from_secs(15), || {
        last = worker_pids(pool);
        let family = descendants();
        last.len() == pool.processes() && last.iter().all(|&p| live(p) && family.contains(&p))
    });
    assert!(
        full,
        "the pool of {} does not have its full number of live workers: answered from {:?}, \
         descendants {:?}",
        pool.processes(),
        states(&last),
        states(&descendants())
    );
    last
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: many tasks, random deaths and panics, several submitting threads
// ---------------------------------------------------------------------------------------------

/// splitmix64: a small, good, deterministic generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Value,
    Panic,
    Abort,
    Kill,
    Exit,
}

impl Plan {
    /// About 1% deaths (split among abort, SIGKILL and exit(7)), 1% panics, the rest values.
    fn draw(r: u64) -> Plan {
        match r % 1000 {
            0..=9 => match (r / 1000) % 3 {
                0 => Plan::Abort,
                1 => Plan::Kill,
                _ => Plan::Exit,
            },
            10..=19 => Plan::Panic,
            _ => Plan::Value,
        }
    }

    fn task(self) -> Task {
        match self {
            Plan::Value => ordinary,
            Plan::Panic => planned_panic,
            Plan::Abort => planned_abort,
            Plan::Kill => planned_sigkill,
            Plan::Exit => planned_exit,
        }
    }

    fn cause(self) -> Option<ExitCause> {
        match self {
            Plan::Abort => Some(ExitCause::Signal(libc::SIGABRT)),
            Plan::Kill => Some(ExitCause::Signal(libc::SIGKILL)),
            Plan::Exit => Some(ExitCause::Exited(7)),
            Plan::Value | Plan::Panic => None,
        }
    }
}

/// What one submitting thread saw.
#[derive(Debug, Default)]
struct Tally {
    values: usize,
    panics: usize,
    aborts: usize,
    kills: usize,
    exits: usize,
    worker_died: usize,
    planned_deaths: usize,
    mismatches: Vec<String>,
}

fn submit_and_check(pool: &Pool, thread: u64, tasks: usize) -> Tally {
    let mut rng = SplitMix64(0x5EED_0000 + thread);
    let plan: Vec<(u64, Plan)> = (0..tasks)
        .map(|_| {
            let arg = rng.next();
            (arg, Plan::draw(rng.next()))
        })
        .collect();
    let pending: Vec<AsyncResult<u64>> = plan
        .iter()
        .map(|&(arg, p)| pool.apply_async(p.task(), arg).expect("the pool is open"))
        .collect();
    let mut tally = Tally::default();
    for (i, (&(arg, p), result)) in plan.iter().zip(pending).enumerate() {
        let got = result.get();
        if matches!(got, Err(Error::WorkerDied { .. })) {
            tally.worker_died += 1;
        }
        let ok = match (p, &got) {
            (Plan::Value, Ok(v)) => *v == expected_value(arg),
            (Plan::Panic, Err(Error::TaskPanicked { message, .. })) => {
                *message == format!("planned panic {arg}")
            }
            (Plan::Abort | Plan::Kill | Plan::Exit, Err(Error::WorkerDied { cause, .. })) => {
                Some(*cause) == p.cause()
            }
            _ => false,
        };
        if !ok {
            tally.mismatches.push(format!(
                "thread {thread} task {i} ({p:?}, arg {arg}): got {got:?}"
            ));
        }
        match p {
            Plan::Value => tally.values += 1,
            Plan::Panic => tally.panics += 1,
            Plan::Abort => tally.aborts += 1,
            Plan::Kill => tally.kills += 1,
            Plan::Exit => tally.exits += 1,
        }
        if p.cause().is_some() {
            tally.planned_deaths += 1;
        }
    }
    tally
}

fn random_deaths_and_panics(total_tasks: usize, limit: Duration) {
    const WORKERS: usize = 4;
    const THREADS: usize = 4;
    within(limit, move || {
        let per_thread = total_tasks / THREADS;
        let fds_before = open_fds();
        let procs_before = descendants();
        let started = Instant::now();
        let pool = common::quiet_pool(WORKERS);
        let tallies: Vec<Tally> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS as u64)
                .map(|t| {
                    let pool = &pool;
                    s.spawn(move || submit_and_check(pool, t, per_thread))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let run_time = started.elapsed();

        // Before close: the pool is whole again, with live workers that are ours.
        let workers = full_pool(&pool);
        let procs_during: Vec<u32> = descendants().into_iter().filter(|&p| live(p)).collect();
        assert!(
            workers.iter().all(|p| procs_during.contains(p)),
            "workers {workers:?} are not among the live descendants {procs_during:?}"
        );
        let known = identities(&procs_during);

        pool.close();
        pool.join().unwrap();
        let elapsed = started.elapsed();
        let procs_after = descendants();
        let fds_after = open_fds();

        let sum = |f: fn(&Tally) -> usize| tallies.iter().map(f).sum::<usize>();
        let tasks = sum(|t| t.values + t.panics + t.aborts + t.kills + t.exits);
        let deaths = sum(|t| t.planned_deaths);
        let died = sum(|t| t.worker_died);
        let mismatches: Vec<&String> = tallies.iter().flat_map(|t| &t.mismatches).collect();
        println!(
            "stress: {tasks} tasks from {THREADS} threads on {WORKERS} workers: {} values, \
             {deaths} deaths planned ({} abort, {} SIGKILL, {} exit(7)), {died} WorkerDied, \
             {} panics; run {run_time:.2?}, total with checks and join {elapsed:.2?}; \
             fds before {} after {}; descendant processes before {} during {} (live) after {}",
            sum(|t| t.values),
            sum(|t| t.aborts),
            sum(|t| t.kills),
            sum(|t| t.exits),
            sum(|t| t.panics),
            fds_before.len(),
            fds_after.len(),
            procs_before.len(),
            procs_during.len(),
            procs_after.len(),
        );
        assert_eq!(tasks, total_tasks);
        assert!(
            mismatches.is_empty(),
            "{} tasks had the wrong outcome; the first ones: {:#?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(20)]
        );
        assert_eq!(died, deaths, "one WorkerDied per planned death");
        assert!(
            deaths > 0 && sum(|t| t.panics) > 0,
            "the plan has deaths and panics"
        );
        assert_eq!(
            procs_after,
            procs_before,
            "no worker left after join, not even a zombie: {:?}",
            states(&procs_after)
        );
        assert_eq!(fds_after, fds_before, "no descriptor leaked");
        let left = still_there(&known);
        assert!(
            left.is_empty(),
            "processes of the pool outlived join (adopted by someone else?): {left:?}"
        );
    })
}

#[test]
fn twenty_thousand_tasks_with_random_deaths_and_panics() {
    let _guard = serial();
    random_deaths_and_panics(20_000, Duration::from_secs(120));
}

#[test]
#[ignore = "long: run with cargo test --release --test stress -- --ignored"]
fn two_hundred_thousand_tasks_with_random_deaths_and_panics() {
    let _guard = serial();
    random_deaths_and_panics(200_000, Duration::from_secs(600));
}

// ---------------------------------------------------------------------------------------------
// 3: many pools
// ---------------------------------------------------------------------------------------------

#[test]
fn a_thousand_pools_built_and_dropped_leave_nothing() {
    let _guard = serial();
    within(Duration::from_secs(120), || {
        let fds_before = open_fds();
        let procs_before = descendants();
        let started = Instant::now();
        let mut slowest = (Duration::ZERO, 0);
        let mut known = Vec::new();
        // Time spent reading /proc for the sample, left out of the figures.
        let mut sampling = Duration::ZERO;
        for i in 0..1000u64 {
            let lap = Instant::now();
            let pool = Pool::new(2).unwrap();
            let mut sampled = Duration::ZERO;
            if i % 10 == 0 {
                // A sample of the pools' processes, to look for after the loop by identity.
                let sample = Instant::now();
                known.extend(identities(&descendants()));
                sampled = sample.elapsed();
                sampling += sampled;
            }
            match i % 3 {
                0 => drop(pool),
                1 => {
                    assert_eq!(pool.apply(square, i).unwrap(), i * i);
                    drop(pool);
                }
                _ => {
                    pool.close();
                    pool.join().unwrap();
                }
            }
            slowest = slowest.max((lap.elapsed() - sampled, i));
        }
        let elapsed = started.elapsed() - sampling;
        let procs_after = descendants();
        let fds_after = open_fds();
        println!(
            "1000 pools of 2 (dropped at once / after one apply / closed and joined): \
             {elapsed:.2?} (not counting {sampling:.2?} spent sampling /proc), the slowest \
             (number {}) {:.2?}; fds before {} after {}; descendant processes before {} after {}",
            slowest.1,
            slowest.0,
            fds_before.len(),
            fds_after.len(),
            procs_before.len(),
            procs_after.len()
        );
        assert_eq!(
            procs_after,
            procs_before,
            "no worker left, not even a zombie: {:?}",
            states(&procs_after)
        );
        assert_eq!(fds_after, fds_before, "no descriptor leaked");
        assert!(known.len() >= 200, "sampled {} processes", known.len());
        let left = still_there(&known);
        assert!(
            left.is_empty(),
            "processes of dropped pools are still there (adopted by someone else?): {left:?}"
        );
    })
}

// ---------------------------------------------------------------------------------------------
// 4: every worker killed at once
// ---------------------------------------------------------------------------------------------

#[test]
fn every_worker_killed_from_outside_at_once_recovers() {
    let _guard = serial();
    within(Duration::from_secs(60), || {
        const TASKS: usize = 200;
        let pool = Pool::new(4).unwrap();
        let mut pending: Vec<Option<AsyncResult<u32>>> = (0..TASKS)
            .map(|_| Some(pool.apply_async(sleepy_pid, 5).unwrap()))
            .collect();
        let mut outcomes: Vec<Option<forkpool::Result<u32>>> = (0..TASKS).map(|_| None).collect();
        let mut seen = BTreeSet::new();
        // Wait until every worker has finished a task, so that we know all their pids.
        let all_seen = eventually(Duration::from_secs(20), || {
            for (slot, outcome) in pending.iter_mut().zip(&mut outcomes) {
                if slot.as_ref().is_some_and(AsyncResult::ready) {
                    let got = slot.take().unwrap().get();
                    if let Ok(pid) = got {
                        seen.insert(pid);
                    }
                    *outcome = Some(got);
                }
            }
            seen.len() == 4
        });
        assert!(all_seen, "only saw workers {seen:?}");
        let killed: Vec<u32> = seen.into_iter().collect();
        let done_before_kill = outcomes.iter().filter(|o| o.is_some()).count();
        for &p in &killed {
            kill9(p);
        }
        for (slot, outcome) in pending.iter_mut().zip(&mut outcomes) {
            if let Some(r) = slot.take() {
                *outcome = Some(r.get());
            }
        }
        let mut ok = 0;
        let mut failed_pids = Vec::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome.expect("every task has an outcome") {
                Ok(pid) => {
                    assert!(pid > 0);
                    ok += 1;
                }
                Err(Error::WorkerDied { pid, cause, .. }) => {
                    assert_eq!(cause, ExitCause::Signal(libc::SIGKILL), "task {i}");
                    assert!(
                        killed.contains(&pid),
                        "task {i} failed in worker {pid}, not one we killed ({killed:?})"
                    );
                    failed_pids.push(pid);
                }
                Err(e) => panic!("task {i}: {e:?}"),
            }
        }
        let failed = failed_pids.len();
        println!(
            "killed all 4 workers {killed:?} after {done_before_kill} of {TASKS} tasks: \
             {ok} returned, {failed} failed with WorkerDied(SIGKILL)"
        );
        assert_eq!(ok + failed, TASKS, "every task accounted for");
        assert!(failed <= 4, "{failed} tasks failed for 4 kills");
        failed_pids.sort();
        failed_pids.dedup();
        assert_eq!(
            failed_pids.len(),
            failed,
            "a killed worker failed more than its running task"
        );

        // The pool is whole again: new tasks succeed, on 4 new live workers.
        let workers = full_pool(&pool);
        assert!(
            workers.iter().all(|p| !killed.contains(p)),
            "a killed worker answered: {workers:?} vs {killed:?}"
        );
        for &p in &killed {
            assert!(gone_or_zombie(p), "killed worker {p} is {:?}", state(p));
        }
        let more: Vec<u64> = pool.map_chunked(square, 0..100u64, 1).unwrap();
        assert_eq!(more, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        let known = identities(&descendants());
        pool.close();
        pool.join().unwrap();
        let left = still_there(&known);
        assert!(left.is_empty(), "processes outlived join: {left:?}");
    })
}

// ---------------------------------------------------------------------------------------------
// 5: the pool's owner killed with SIGKILL
// ---------------------------------------------------------------------------------------------

const PARENT_KILL_ENV: &str = "FORKPOOL_STRESS_PARENT_KILL_HELPER";

/// Helper for `parent_killed_with_sigkill_leaves_no_worker`: run in a child process of the test
/// binary, it keeps a pool of 3 busy, prints the pids of all its descendant processes and waits
/// to be killed.
#[test]
#[ignore = "run by parent_killed_with_sigkill_leaves_no_worker in a separate process"]
fn parent_killed_helper() {
    if std::env::var_os(PARENT_KILL_ENV).is_none() {
        return;
    }
    let pool = Pool::new(3).unwrap();
    let workers = worker_pids(&pool);
    let busy: Vec<_> = (0..3)
        .map(|_| pool.apply_async(nap, 60_000).unwrap())
        .collect();
    // Let the long tasks reach the workers.
    std::thread::sleep(Duration::from_millis(200));
    let family = descendants();
    assert!(
        workers.iter().all(|p| family.contains(p)),
        "workers {workers:?} are not among the descendants {family:?}"
    );
    println!(
        "PIDS {}",
        family
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::thread::sleep(Duration::from_secs(60));
    drop(busy);
}

#[test]
fn parent_killed_with_sigkill_leaves_no_worker() {
    let _guard = serial();
    within(Duration::from_secs(60), || {
        use std::io::{BufRead, BufReader};
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "parent_killed_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PARENT_KILL_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pids: Vec<u32> = Vec::new();
        for line in BufReader::new(helper.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            // The harness prints "test parent_killed_helper ... " before it on the same line.
            if let Some(rest) = line.split("PIDS ").nth(1) {
                pids = rest
                    .split_whitespace()
                    .map(|p| p.parse::<u32>().unwrap())
                    .collect();
                break;
            }
        }
        let helper_pid = helper.id();
        let before_kill = descendants_of(helper_pid);
        if pids.len() < 3 {
            let _ = helper.kill();
            let _ = helper.wait();
        }
        assert!(
            pids.len() >= 3,
            "the helper reported at least its 3 workers: {pids:?}"
        );
        helper.kill().unwrap();
        helper.wait().unwrap();
        // Orphans are reparented; whoever adopts them may leave a zombie for a moment.
        let all_gone = eventually(Duration::from_secs(1), || {
            pids.iter().all(|&p| gone_or_zombie(p))
        });
        println!(
            "helper {helper_pid} had {} descendants {pids:?} (seen from here: {before_kill:?}); \
             1 s after its SIGKILL: {:?}",
            pids.len(),
            states(&pids)
        );
        assert!(
            all_gone,
            "processes outlived their SIGKILLed parent by 1 s: {:?}",
            states(&pids)
        );
    })
}

// ---------------------------------------------------------------------------------------------
// 6: error messages
// ---------------------------------------------------------------------------------------------

fn panics_with(message: String) -> u64 {
    panic!("{message}")
}

#[test]
fn error_messages_say_what_happened_and_what_to_do() {
    let _guard = serial();
    within(Duration::from_secs(60), || {
        let pool = common::quiet_pool(1);

        let err = pool.apply(planned_sigkill, 0).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::WorkerDied { .. }), "{err:?}");
        assert!(text.contains("killed by signal 9 (SIGKILL)"), "{text}");
        assert!(text.contains("replaced"), "{text}");
        println!("SIGKILL: {text}");

        let err = pool.apply(planned_exit, 0).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exited with status 7"), "{text}");
        println!("exit(7): {text}");

        let err = pool
            .apply(panics_with, "the disk is on fire".to_string())
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::TaskPanicked { .. }), "{err:?}");
        assert!(text.contains("the disk is on fire"), "{text}");
        println!("panic: {text}");

        let err = pool.join().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::StillRunning), "{err:?}");
        assert!(
            text.contains("close()") || text.contains("terminate()"),
            "{text}"
        );
        println!("join on a running pool: {text}");

        pool.close();
        let err = pool.apply(square, 2).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Closed), "{err:?}");
        assert!(text.contains("closed"), "{text}");
        assert!(text.contains("new pool"), "{text}");
        println!("closed: {text}");
        pool.join().unwrap();
    })
}

// ---------------------------------------------------------------------------------------------
// 7: garbage on the reply pipe
// ---------------------------------------------------------------------------------------------

/// The worker's reply pipe: descriptor 4 (3 is its task pipe); see src/sys.rs `child_setup`.
const REPLY_FD: libc::c_int = 4;

/// Writes `bytes` straight to the worker's reply pipe, behind the pool's back.
fn write_reply_pipe(bytes: &[u8]) {
    // SAFETY: `bytes` is a valid buffer of `bytes.len()` bytes; writing to a descriptor has no
    // other memory-safety precondition.
    let n = unsafe { libc::write(REPLY_FD, bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize, "write to the reply pipe");
}

/// A reply frame: | len u64 LE | id u64 LE | status u8 | payload |, len counting what follows it.
fn reply_frame(id: u64, status: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&(9 + payload.len() as u64).to_le_bytes());
    frame.extend_from_slice(&id.to_le_bytes());
    frame.push(status);
    frame.extend_from_slice(payload);
    frame
}

/// A task as the stress and garbage tests submit it.
type Task = fn(u64) -> u64;

/// (a) A length prefix of u64::MAX, then a long sleep.
fn huge_length(_: u64) -> u64 {
    write_reply_pipe(&u64::MAX.to_le_bytes());
    std::thread::sleep(Duration::from_secs(10));
    0
}

/// (b) A well-formed Ok frame for a task that is not running, then a long sleep.
fn wrong_id(_: u64) -> u64 {
    write_reply_pipe(&reply_frame(0xDEAD_BEEF_DEAD_BEEF, 0, &42u64.to_le_bytes()));
    std::thread::sleep(Duration::from_secs(10));
    0
}

/// (c) A frame with status byte 200, then a long sleep. Its id is 0, the id the current
/// dispatcher gives a pool's first task, so that only the status is wrong when this runs
/// first; the frame is malformed either way.
fn unknown_status(_: u64) -> u64 {
    write_reply_pipe(&reply_frame(0, 200, &42u64.to_le_bytes()));
    std::thread::sleep(Duration::from_secs(10));
    0
}

/// (d) A length prefix of 16 followed by only 4 bytes, then a clean exit. Either error is
/// right; what we saw is `Error::Protocol` ("the reply pipe closed in the middle of a frame"),
/// both with the pool's own thread forking workers and with a fork server.
fn truncated_then_exit(_: u64) -> u64 {
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    write_reply_pipe(&bytes);
    std::process::exit(0)
}

/// Runs `hostile` as the first task of a fresh 1-worker pool built from `builder`, checks that
/// it fails promptly, that the worker that sent the garbage is killed, and that the pool goes on
/// with a new worker. Returns the error.
fn garbage_fails_promptly(builder: PoolBuilder, hostile: Task, what: &str) -> Error {
    let pool = builder.processes(1).build().unwrap();
    let mut known = identities(&descendants());
    let started = Instant::now();
    let result = pool.apply_async(hostile, 0).unwrap();
    assert!(
        result.wait_timeout(Duration::from_secs(5)),
        "{what}: the task was not failed within 5 s of its garbage (it sleeps 10 s)"
    );
    let took = started.elapsed();
    let err = result.get().expect_err(what);
    println!("{what}: failed after {took:.2?} with {err:?}: {err}");
    let culprit = match &err {
        Error::Protocol { pid, .. } | Error::WorkerDied { pid, .. } => *pid,
        other => panic!("{what}: expected Protocol or WorkerDied, got {other:?}"),
    };
    // The pool goes on, on a new worker; the one that lied is dead.
    let next = pool
        .apply(sleepy_pid, 0)
        .expect("a normal task after the garbage");
    assert_ne!(next, culprit, "{what}: the lying worker still serves tasks");
    assert!(
        eventually(Duration::from_secs(5), || gone_or_zombie(culprit)),
        "{what}: the worker {culprit} that sent garbage is still {:?}",
        state(culprit)
    );
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    known.extend(identities(&descendants()));
    pool.close();
    pool.join().unwrap();
    let left = still_there(&known);
    assert!(left.is_empty(), "{what}: processes outlived join: {left:?}");
    err
}

#[test]
fn a_task_that_writes_garbage_to_its_reply_pipe_is_killed_not_believed() {
    let _guard = serial();
    within(Duration::from_secs(120), || {
        let cases: [(&str, PoolBuilder, Task); 4] = [
            (
                "(a) length u64::MAX, max_frame_bytes 1 MiB",
                Pool::builder().max_frame_bytes(1 << 20),
                huge_length,
            ),
            (
                "(a) length u64::MAX, default max_frame_bytes",
                Pool::builder(),
                huge_length,
            ),
            ("(b) a reply for another task id", Pool::builder(), wrong_id),
            ("(c) status byte 200", Pool::builder(), unknown_status),
        ];
        for (what, builder, hostile) in cases {
            let err = garbage_fails_promptly(builder, hostile, what);
            assert!(
                matches!(err, Error::Protocol { .. }),
                "{what}: expected Error::Protocol, got {err:?}"
            );
        }
        let what = "(d) length 16 with 4 bytes, then exit(0)";
        let err = garbage_fails_promptly(Pool::builder(), truncated_then_exit, what);
        assert!(
            matches!(err, Error::Protocol { .. } | Error::WorkerDied { .. }),
            "{what}: expected Protocol or WorkerDied, got {err:?}"
        );
    })
}

/// A worker's "successful" reply whose payload claims an absurd length must fail `get` with a
/// decode error: bincode sizes a string's buffer from its length prefix before reading it, and
/// without a budget that allocation aborted the whole parent.
#[test]
fn a_forged_result_with_an_absurd_length_is_a_decode_error() {
    let _guard = serial();
    within(Duration::from_secs(60), || {
        fn forge(_: ()) -> String {
            // The first task of a fresh pool has id 0. Payload: bincode's varint for a length
            // of 2^61 (the u64 marker 253, then 8 bytes), and nothing behind it.
            let mut payload = vec![253u8];
            payload.extend_from_slice(&(1u64 << 61).to_le_bytes());
            let mut frame = ((8 + 1 + payload.len()) as u64).to_le_bytes().to_vec();
            frame.extend_from_slice(&0u64.to_le_bytes());
            frame.push(0); // status Ok
            frame.extend_from_slice(&payload);
            // SAFETY: writing a byte slice to a descriptor has no memory-safety preconditions;
            // 4 is this worker's reply pipe.
            unsafe { libc::write(4, frame.as_ptr().cast(), frame.len()) };
            std::thread::sleep(Duration::from_secs(1));
            String::new()
        }
        let pool = Pool::new(1).unwrap();
        match pool.apply(forge, ()) {
            Err(Error::Decode { what: "result", .. }) => {}
            other => panic!("expected a decode error, got {other:?}"),
        }
        // The worker's real answer then comes for a task no longer running: the pool kills it,
        // which fails the task it was running by then, and goes on with a fresh worker.
        match pool.apply(|x: u32| x + 1, 1) {
            Ok(2) | Err(Error::Protocol { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.apply(|x: u32| x + 1, 2).unwrap(), 3);
    })
}
