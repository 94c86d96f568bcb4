//! Helpers shared by the integration tests: bounded waits, and counts of this process's open
//! descriptors and child processes, read from /proc.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Runs `f` on a thread and fails the test if it takes longer than `limit`: a hang must fail a
/// test, not stall CI.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not finish within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the bounded closure panicked")
        }
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs this test binary again for its ignored test `name` alone, with the environment
/// variable `env` set (that test does nothing without it): for a test that must have a process
/// of its own (resource limits, a seccomp filter, memory counts). Bound it with [`within`].
pub fn run_ignored(name: &str, env: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--nocapture"])
        .env(env, "1")
        .output()
        .unwrap()
}

/// The numbers of this process's open file descriptors.
pub fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

/// Pids of every process descended from this one (children, grandchildren...), zombies
/// included, sorted: a pool's fork server and its workers. /proc lists processes, not threads,
/// so this process's own threads are not among them.
pub fn descendants() -> Vec<u32> {
    descendants_of(std::process::id())
}

/// Pids of every descendant of `root`, zombies included, sorted.
pub fn descendants_of(root: u32) -> Vec<u32> {
    let mut by_parent: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = stat_field(pid, 4).and_then(|p| p.parse::<u32>().ok()) {
            by_parent.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &child in by_parent.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if child != root && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found.sort();
    found
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat, or None if the process is gone.
pub fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3).map(str::to_string)
}

/// The state letter of a process (R, S, Z...), or None if it no longer exists.
pub fn state(pid: u32) -> Option<char> {
    stat_field(pid, 3).and_then(|s| s.chars().next())
}

/// True if a process with this pid exists (a zombie counts).
pub fn exists(pid: u32) -> bool {
    state(pid).is_some()
}

pub const LIMIT: Duration = Duration::from_secs(60);

/// Whether `signal` is pending for process `pid` (its ShdPnd or SigPnd mask in
/// /proc/PID/status); false once the process is gone.
pub fn signal_pending(pid: u32, signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (signal - 1);
    status.lines().any(|line| {
        let Some((key, value)) = line.split_once(':') else {
            return false;
        };
        (key == "ShdPnd" || key == "SigPnd")
            && u64::from_str_radix(value.trim(), 16).is_ok_and(|mask| mask & bit != 0)
    })
}

/// Runs `round` (which returns the pids that served it) until `n` distinct pids have been seen
/// or `limit` passes, and returns the pids seen. For checking that a pool has `n` live workers:
/// a worker still starting serves nothing until it is ready, so one round may not show it.
pub fn distinct_pids(
    n: usize,
    limit: Duration,
    mut round: impl FnMut() -> Vec<u32>,
) -> std::collections::HashSet<u32> {
    let deadline = Instant::now() + limit;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n && Instant::now() < deadline {
        seen.extend(round());
    }
    seen
}

/// A pool whose workers do not print a line for each task that panics: for tests in which
/// panics are expected (the line is tested on its own in crash.rs).
pub fn quiet_pool(processes: usize) -> forkpool::Pool {
    forkpool::Pool::builder()
        .processes(processes)
        .print_panics(false)
        .build()
        .unwrap()
}
