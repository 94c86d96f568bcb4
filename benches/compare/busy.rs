//! The busy machine of W8a, W8b and W8d: one busy-loop process per CPU, and the guarantees that
//! none of them outlives the harness.
//!
//! A busy loop is this binary re-executed as `--busy-loop <harness pid> <seconds>`: a plain
//! `loop {}` at nice 0, as a compile or another job would be. Three things end it, whatever
//! happens to the harness:
//!
//! 1. its own alarm: `alarm(seconds)` before it starts spinning, and SIGALRM's default action
//!    ends the process;
//! 2. `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills it when the harness's main thread (the one
//!    that spawned it) dies, by SIGKILL too; it checks `getppid()` after the prctl, so a harness
//!    that died before the prctl is noticed;
//! 3. the [`BusyLoad`] guard: all the loops share one process group, which its `Drop` SIGKILLs
//!    and then reaps.
//!
//! `--check-busy-cleanup` tests all three (the harness runs it first in `--quick`): a holder
//! process that starts the loops is killed with SIGKILL and every loop must be gone within a
//! bound; a loop with a 1-second alarm must end by itself; a dropped guard leaves none.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a busy loop may live at most, in seconds, if nothing else ends it. Longer than any
/// busy phase of a repetition (W8a alone takes about half a minute at 700 tasks/s).
pub const ALARM_SECS: u32 = 900;
/// How long the cleanup check waits for a loop to disappear.
const GONE_WITHIN: Duration = Duration::from_secs(20);

/// The hidden `--busy-loop <ppid> <seconds>` mode: spin until one of the three ends comes.
pub fn busy_loop_child(ppid: libc::pid_t, seconds: u32) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number takes no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // SAFETY: getppid cannot fail and takes no arguments.
    if r != 0 || unsafe { libc::getppid() } != ppid {
        // SAFETY: ends this process at once; nothing of it needs to run.
        unsafe { libc::_exit(3) }
    }
    // SAFETY: alarm takes a plain integer; SIGALRM's default action ends the process.
    unsafe { libc::alarm(seconds) };
    println!("busy");
    // The harness reads the line above, then nothing more: close stdout so that no write of
    // ours can ever block on it.
    // SAFETY: closes this process's own stdout, which it writes no more to.
    unsafe { libc::close(1) };
    #[allow(clippy::empty_loop)]
    loop {}
}

/// `n` busy loops, running until this guard is dropped.
pub struct BusyLoad {
    children: Vec<Child>,
    pgid: libc::pid_t,
    started: Instant,
}

impl BusyLoad {
    /// Starts `n` busy loops that end after `seconds` at the latest, and returns once each of
    /// them has started spinning.
    pub fn start(n: usize, seconds: u32) -> Result<BusyLoad, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        let mut load = BusyLoad {
            children: Vec::with_capacity(n),
            pgid: 0,
            started: Instant::now(),
        };
        for _ in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.args(["--busy-loop", &me.to_string(), &seconds.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // The first loop leads a new process group; the others join it.
            std::os::unix::process::CommandExt::process_group(&mut cmd, load.pgid);
            let mut child = cmd.spawn().map_err(|e| format!("spawn a busy loop: {e}"))?;
            if load.pgid == 0 {
                load.pgid = child.id() as libc::pid_t;
            }
            let stdout = child.stdout.take().expect("piped stdout");
            load.children.push(child);
            let mut line = String::new();
            // The loop closes its stdout after the line, so this read cannot hang on a live
            // loop; a loop that died gives end of file.
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(|e| format!("read from a busy loop: {e}"))?;
            if line.trim() != "busy" {
                return Err(format!("a busy loop did not start (said {line:?})"));
            }
        }
        Ok(load)
    }

    /// The loops' process ids.
    pub fn pids(&self) -> Vec<libc::pid_t> {
        self.children
            .iter()
            .map(|c| c.id() as libc::pid_t)
            .collect()
    }

    /// How many loops are still running (a loop whose alarm fired is not: the phase outlived
    /// [`ALARM_SECS`] and its figures were taken partly on a quieter machine).
    pub fn running(&mut self) -> usize {
        self.children
            .iter_mut()
            .filter_map(|c| c.try_wait().ok())
            .filter(Option::is_none)
            .count()
    }

    /// Seconds since the loops started.
    pub fn age(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl Drop for BusyLoad {
    fn drop(&mut self) {
        if self.pgid > 0 {
            // SAFETY: signals the process group this guard created; its leader is our
            // unreaped child, so the group id cannot have been reused.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Is `pid` a live (not zombie) busy loop of this binary?
fn is_busy_loop(pid: libc::pid_t) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if !cmdline.split(|&b| b == 0).any(|arg| arg == b"--busy-loop") {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until none of `pids` is a live busy loop; the ones still alive after the bound.
fn wait_gone(pids: &[libc::pid_t]) -> Vec<libc::pid_t> {
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        let alive: Vec<libc::pid_t> = pids.iter().copied().filter(|&p| is_busy_loop(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The hidden `--busy-hold N` mode: start N busy loops, print their pids, then wait (for the
/// SIGKILL of the cleanup check; it ends by itself after a minute otherwise).
pub fn busy_hold(n: usize) {
    let load = BusyLoad::start(n, 60).expect("start busy loops");
    let pids: Vec<String> = load.pids().iter().map(|p| p.to_string()).collect();
    println!("pids {}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(60));
    drop(load);
}

/// The `--check-busy-cleanup` check: Ok with a line per case, or what was left behind.
pub fn check_cleanup(n: usize) -> Result<Vec<String>, String> {
    let mut report = Vec::new();
    let fail = |what: &str, alive: &[libc::pid_t]| {
        // Never leave the loops of a failed check behind.
        for &p in alive {
            // SAFETY: kill with a pid we just saw running our --busy-loop command line.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        format!("{what}: busy loops {alive:?} still running after {GONE_WITHIN:?}")
    };

    // 1. The holder (the harness, as far as the loops know) is killed with SIGKILL.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut holder = Command::new(exe)
        .args(["--busy-hold", &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn the holder: {e}"))?;
    let mut out = BufReader::new(holder.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let read = out.read_line(&mut line);
    let pids: Vec<libc::pid_t> = line
        .strip_prefix("pids ")
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let _ = holder.kill(); // SIGKILL
    let status = holder
        .wait()
        .map_err(|e| format!("wait for the holder: {e}"))?;
    if read.is_err() || pids.len() != n {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        return Err(format!("the holder printed {line:?}{rest:?} ({status})"));
    }
    let alive = wait_gone(&pids);
    if !alive.is_empty() {
        return Err(fail("holder killed with SIGKILL", &alive));
    }
    report.push(format!(
        "holder killed with SIGKILL ({status}): its {n} busy loops {pids:?} are gone"
    ));

    // 2. The alarm alone: a loop whose parent stays alive ends by itself.
    let start = Instant::now();
    let mut load = BusyLoad::start(1, 1)?;
    let pid = load.pids()[0];
    let status = loop {
        match load.children[0].try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < GONE_WITHIN => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return Err(fail("1-second alarm", &[pid])),
        }
    };
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(libc::SIGALRM) {
        return Err(format!(
            "the 1-second busy loop ended with {status}, not SIGALRM"
        ));
    }
    report.push(format!(
        "a busy loop with a 1 s alarm ended by itself after {:.1} s ({status})",
        start.elapsed().as_secs_f64()
    ));
    drop(load);

    // 3. The guard's Drop.
    let load = BusyLoad::start(n, 60)?;
    let pids = load.pids();
    drop(load);
    let alive = wait_gone(&pids);
    if !alive.is_empty() {
        return Err(fail("guard dropped", &alive));
    }
    report.push(format!("a dropped guard left none of its {n} busy loops"));
    Ok(report)
}
