//! W6, the life of a pool (`Pool::new`, one task, close, join, drop), and what explains its
//! time: the state of the process that builds the pools (resident set, page tables, threads)
//! and the page faults each life costs, in this process and in its reaped descendants (the
//! fork servers, and the workers they reaped).
//!
//! W6 runs in a fresh copy of this binary (the hidden `--w6 N WORKERS` mode) for the W6 and
//! W8d rows, and in the harness itself, before and after the other workloads, for the rows and
//! the diagnosis table that tell why the two differ.

use std::os::raw::c_int;
use std::time::Instant;

use forkpool::Pool;

use crate::{median, proc_status_kib, put, run_self, square, Metrics};

/// W6's median life of `n` pools of `workers`, in ms, each from `Pool::new` to the pool dropped
/// after `join`.
pub fn w6_lives(n: usize, workers: usize) -> f64 {
    let mut lives = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let p = Pool::new(workers).expect("pool");
        assert_eq!(p.apply(square, 3).expect("apply"), 9);
        p.close();
        p.join().expect("join");
        drop(p);
        lives.push(start.elapsed().as_secs_f64() * 1e3);
    }
    median(&lives)
}

/// `n` lives of a pool of `workers` without `init()` (as in the `--w6` mode), each split into
/// its phases: the median of `Pool::new`, the one `apply`, `close` + `join`, the drop and the
/// whole life, in ms, how many lives took over 6 ms (two scheduler ticks lost beside busy
/// loops), then every life's length. Beside busy loops (`--w6-phases N W BUSY`), it shows which
/// phase loses the scheduler tick (docs/DESIGN.md, *A pool's start and end on a busy
/// machine*).
pub fn w6_phases(n: usize, workers: usize) -> String {
    let mut phases: [Vec<f64>; 5] = Default::default();
    for _ in 0..n {
        let start = Instant::now();
        let pool = Pool::new(workers).expect("pool");
        let built = start.elapsed();
        assert_eq!(pool.apply(square, 3).expect("apply"), 9);
        let applied = start.elapsed();
        pool.close();
        pool.join().expect("join");
        let joined = start.elapsed();
        drop(pool);
        let dropped = start.elapsed();
        let ends = [built, applied, joined, dropped];
        let mut from = std::time::Duration::ZERO;
        for (phase, &end) in phases.iter_mut().zip(&ends) {
            phase.push((end - from).as_secs_f64() * 1e3);
            from = end;
        }
        phases[4].push(dropped.as_secs_f64() * 1e3);
    }
    let lives: Vec<String> = phases[4].iter().map(|ms| format!("{ms:.1}")).collect();
    // Beside busy loops a life that loses one scheduler tick (4 ms at HZ=250) takes about 4 ms,
    // one that loses two about 8: over 6 ms counts as two or more.
    let two_ticks = phases[4].iter().filter(|&&ms| ms > 6.0).count();
    format!(
        "new {:.3} apply {:.3} close+join {:.3} drop {:.3} life {:.3} (medians, ms); \
         lives over 6 ms: {two_ticks} of {n}; lives: {}",
        median(&phases[0]),
        median(&phases[1]),
        median(&phases[2]),
        median(&phases[3]),
        median(&phases[4]),
        lives.join(" ")
    )
}

/// W6 and what may explain it: the state of the process that builds the pools, and the page
/// faults the pool lives cost.
pub struct W6 {
    pub ms: f64,
    /// Minor page faults in this process during the lives, per life.
    pub self_minflt: f64,
    /// Minor page faults of the reaped descendants (fork servers and the workers they reaped),
    /// per life.
    pub children_minflt: f64,
    pub rss_kib: f64,
    /// Page tables (`VmPTE`): what every fork copies.
    pub pte_kib: f64,
    pub threads: f64,
}

impl W6 {
    pub fn file(&self, m: &mut Metrics, prefix: &str) {
        put(m, format!("{prefix}.self_minflt"), self.self_minflt);
        put(m, format!("{prefix}.children_minflt"), self.children_minflt);
        put(m, format!("{prefix}.rss_mib"), self.rss_kib / 1024.0);
        put(m, format!("{prefix}.pte_kib"), self.pte_kib);
        put(m, format!("{prefix}.threads"), self.threads);
    }
}

fn minflt(who: c_int) -> f64 {
    // SAFETY: rusage is plain data that getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid rusage to write to.
    unsafe { libc::getrusage(who, &mut usage) };
    usage.ru_minflt as f64
}

/// [`w6_lives`] in this process, with the diagnostics.
pub fn w6_measured(n: usize, workers: usize) -> W6 {
    let (rss_kib, pte_kib) = (
        proc_status_kib("VmRSS") as f64,
        proc_status_kib("VmPTE") as f64,
    );
    let threads = proc_status_kib("Threads") as f64;
    let (s0, c0) = (minflt(libc::RUSAGE_SELF), minflt(libc::RUSAGE_CHILDREN));
    let ms = w6_lives(n, workers);
    let (s1, c1) = (minflt(libc::RUSAGE_SELF), minflt(libc::RUSAGE_CHILDREN));
    W6 {
        ms,
        self_minflt: (s1 - s0) / n as f64,
        children_minflt: (c1 - c0) / n as f64,
        rss_kib,
        pte_kib,
        threads,
    }
}

/// Runs W6 in a fresh copy of this binary (the hidden `--w6 N WORKERS` mode). A pool's fork
/// costs more the more memory the forking process maps, and this one has grown through the
/// other workloads (W7's million pending results leave a few hundred MB of heap behind);
/// Python's W6 runs in a fresh process too. `Step::W6Here` measures the difference.
pub fn w6_in_fresh_process(n: usize, workers: usize) -> Result<W6, String> {
    let line = run_self(&["--w6", &n.to_string(), &workers.to_string()], "w6 ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    match f[..] {
        [ms, self_minflt, children_minflt, rss_kib, pte_kib, threads] => Ok(W6 {
            ms,
            self_minflt,
            children_minflt,
            rss_kib,
            pte_kib,
            threads,
        }),
        _ => Err(format!("W6 child printed {line:?}")),
    }
}
