//! For the test binaries without the libtest harness (`harness = false`), which own `main` and
//! so can call `forkpool::init()` first, as a program would: named checks, each bounded, and
//! scenarios that re-run this binary as a child process to look at its output and its fate.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that tells the binary which scenario to play instead of its checks.
pub const SCENARIO: &str = "FORKPOOL_TEST_SCENARIO";

/// The scenario this process was started to play, if any.
pub fn requested() -> Option<String> {
    std::env::var(SCENARIO).ok()
}

/// Ends the whole process with a failure if it is still running after `limit`: a hang fails.
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("watchdog: the test binary did not finish within {limit:?}");
        std::process::exit(2);
    });
}

/// Runs one named check on a thread of its own, failing (panicking) if it does not finish in
/// `limit`. Arguments on the command line that do not start with `-` are filters: a check runs
/// only if its name contains one of them (`cargo test --test zygote -- zombie`).
pub fn check(name: &str, limit: Duration, f: fn()) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        return;
    }
    eprintln!("check {name} ...");
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => eprintln!("check {name} ... ok ({:.2?})", started.elapsed()),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("check {name} did not finish within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("check {name} panicked")
        }
    }
}

/// What a scenario child did.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Re-runs this binary as a child playing `name`, with `env` added, its stdout discarded or
/// captured, and kills it (and fails) if it runs longer than `limit`.
pub fn play(name: &str, env: &[(&str, &str)], capture_stdout: bool, limit: Duration) -> Outcome {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.env(SCENARIO, name)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the scenario");
    let mut out = child.stdout.take();
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("scenario {name} did not finish within {limit:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// The blocked-signal mask of a process (`SigBlk` in /proc/PID/status) as bits, bit `n - 1`
/// for signal `n`.
pub fn blocked_signals(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether signal `sig` is in a mask from [`blocked_signals`].
pub fn has(mask: u64, sig: i32) -> bool {
    mask & (1 << (sig - 1)) != 0
}

/// Blocks `signals` in the calling thread (threads it starts inherit the mask).
pub fn block(signals: &[i32]) {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
}

/// A task: forks a grandchild that keeps the worker's pipes open for 8 s, then aborts. Only the
/// fork server's report of the worker's death can tell the pool: no pipe reaches end of file.
pub fn abort_leaving_a_grandchild(_: u64) -> u64 {
    // SAFETY: the child only sleeps and _exits, both async-signal-safe.
    unsafe {
        if libc::fork() == 0 {
            libc::sleep(8);
            libc::_exit(0);
        }
    }
    std::process::abort()
}

/// A task: the pid of the worker's parent (its fork server).
pub fn parent_pid(_: u64) -> u32 {
    std::os::unix::process::parent_id()
}

/// A task: (the worker's blocked mask, its fork server's blocked mask).
pub fn masks(_: u64) -> (u64, u64) {
    let me = std::process::id();
    let server = std::os::unix::process::parent_id();
    (
        blocked_signals(me).unwrap_or(u64::MAX),
        blocked_signals(server).unwrap_or(u64::MAX),
    )
}

/// A task that answers and prints nothing.
pub fn square(x: u64) -> u64 {
    x * x
}

/// A task that prints a line, then answers.
pub fn print_square(x: u64) -> u64 {
    println!("worker {} prints task {x}", std::process::id());
    x * x
}

/// Parent pid of `pid` (field 4 of /proc/PID/stat).
pub fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// True if a process `pid` exists (a zombie counts).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// True if `pid` is gone or a zombie.
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_none_or(|c| c == 'Z'),
    }
}

/// Starts `n` threads that print lines in a tight loop, forever (the scenario process ends).
pub fn start_printers(n: usize) {
    for t in 0..n {
        std::thread::spawn(move || {
            let mut i = 0u64;
            loop {
                println!("printer {t} line {i}");
                eprint!("");
                i += 1;
            }
        });
    }
}

/// The scenario body shared by both binaries: 20 pools built while printing threads run, each
/// running tasks that print; every task must answer within a generous bound. Exits the process
/// with 0 if all did, 3 at the first that did not.
pub fn pools_beside_printers() -> ! {
    start_printers(4);
    // Let the printers get going (not a synchronization: any moment is a fair test).
    std::thread::sleep(Duration::from_millis(50));
    for round in 0..20 {
        let pool = forkpool::Pool::new(2).expect("Pool::new");
        let results: Vec<_> = (0..4u64)
            .map(|i| pool.apply_async(print_square, i).expect("apply_async"))
            .collect();
        for (i, r) in results.into_iter().enumerate() {
            if !r.wait_timeout(Duration::from_secs(20)) {
                eprintln!("HUNG: round {round}, task {i} did not answer within 20 s");
                std::process::exit(3);
            }
            assert_eq!(r.get().expect("task"), (i * i) as u64);
        }
        drop(pool);
    }
    eprintln!("ALL ROUNDS ANSWERED");
    std::process::exit(0)
}
