//! forkpool beside Python's `multiprocessing.Pool` and the raw pipe limits, in one run.
//!
//! ```sh
//! cargo bench --bench compare                    # the full comparison, 10 to 15 minutes
//! cargo bench --bench compare -- --quick         # a smoke run with small sizes, < 1 minute
//! cargo bench --bench compare -- --reps 3 --no-python
//! cargo bench --bench compare -- --check-busy-cleanup
//! cargo bench --bench compare -- --mpi            # issue 11's MPI targets, see compare/mpi.rs
//! ```
//!
//! Options after `--`: `--reps N` (default 5; 2 with `--quick`), `--quick` (small sizes),
//! `--no-python` (skip `benches/python_pool.py`), `--check-busy-cleanup` (only check that no
//! busy loop outlives the harness, see `compare/busy.rs`; `--quick` runs it first).
//!
//! Each repetition runs every workload three ways, back to back, so that the three see the
//! same load on a noisy machine (the order alternates between repetitions): W1-W7; W6 again in
//! this process, after the others (and once before them, and once after `malloc_trim(0)`, to
//! tell why it differs); W8c, W1 on new(4C) beside new(C) (C = CPUs; each the median of three
//! batches), quiet; W10, a 2 GiB
//! parent (`compare/large_parent.rs`); then, with one busy-loop process per CPU running
//! (`compare/busy.rs`), W8a (W1 on new(C)), W8b (W3) and W8d (W6 on new(C)). W9, a 1 GiB echo
//! and the parent's peak RSS during it (`compare/big_payload.rs`), runs once per run. Each
//! target of issue 9 is a row of the table with its PASS or MISS.
//!
//! The three ways:
//!
//! * on forkpool: a pool of 2 workers, built first thing in `main` (W8 and W10 build their
//!   own);
//! * on Python's `multiprocessing.Pool(2)`, start method fork: `python3 benches/python_pool.py
//!   --json --serve`, one per repetition, runs each workload this program names on its stdin and
//!   answers with one JSON line;
//! * the raw limit, implemented below with libc, beside the workloads judged against it: a
//!   ping-pong of 8-byte messages between this process and a forked child over two pipes, both
//!   processes pinned to one CPU and unpinned (W3), and a 64 MiB echo over two plain pipes (W4:
//!   store-and-forward or streamed, default or 1 MiB pipe buffers; the fastest of the four is
//!   the limit).
//!
//! Every ratio is computed per repetition, and the table shows the median of those ratios (with
//! their range). The table is printed and written as markdown to `target/compare.md`, and every
//! number of every repetition to `target/compare-reps.tsv` (under `CARGO_TARGET_DIR` when that
//! is set).
//!
//! Some measurements run in fresh processes, through hidden options of this binary:
//! W6 and W8d (`--w6 N WORKERS`; Python's with `--w6-only`), because a fork costs more in a
//! process that the other workloads have grown; W7's imap peak RSS (`--imap-rss N`) and W9
//! (`--big-echo BYTES`), because `VmHWM` in `/proc/self/status` is a process-wide high-water
//! mark; W10 (`--large-parent`), so that its 2 GiB distort nothing else; the busy loops
//! (`--busy-loop`); and once per run the pinned ping-pong (`--ping-pong N`), to show whether
//! this process's state inflates the raw figure W3 is judged against. The imap runs happen once per run, not
//! once per repetition, and Python's W7 at 1M tasks only in the first repetition; the output
//! says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{self, BufRead, BufReader, Write as _};
use std::os::raw::c_int;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use forkpool::Pool;

#[path = "compare/big_payload.rs"]
mod big_payload;
#[path = "compare/busy.rs"]
mod busy;
#[path = "compare/large_parent.rs"]
mod large_parent;
#[path = "compare/mpi.rs"]
mod mpi;
#[path = "compare/w6.rs"]
mod w6;

use busy::BusyLoad;
use w6::{w6_in_fresh_process, w6_lives, w6_measured};

/// Workers in every pool, forkpool's and Python's.
const WORKERS: usize = 2;
/// The script that runs the workloads on Python's Pool.
pub(crate) const PYTHON_SCRIPT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_pool.py");
/// W7's imap peak RSS passes if the larger count's peak is at most this multiple of the smaller's.
const IMAP_RSS_FLAT: f64 = 1.10;

pub(crate) fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

pub(crate) fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// A fixed amount of pure computation: `rounds` xorshift64 rounds the optimizer cannot skip.
/// `benches/python_pool.py` has the same loop.
fn spin((seed, rounds): (u64, u64)) -> u64 {
    let mut x = seed | 1;
    for _ in 0..black_box(rounds) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

// ---------------------------------------------------------------------------------------------
// Options and sizes

struct Options {
    reps: usize,
    quick: bool,
    python: bool,
    /// Call `forkpool::init()` first, the setup the docs recommend for programs that grow
    /// (`--no-init` leaves it out).
    init: bool,
}

enum Mode {
    Compare(Options),
    /// Hidden: run imap over this many items in a fresh process and report its VmHWM.
    ImapRss(u64),
    /// Hidden: W6 this many times with this many workers in a fresh process; report the median.
    W6(usize, usize),
    /// W6's lives split into their phases (lives, workers, busy loops beside them): the
    /// breakdown behind docs/DESIGN.md's W8d analysis, for one command to reproduce it.
    W6Phases(usize, usize, usize),
    /// Hidden: a busy loop for W8 (harness pid, seconds).
    BusyLoop(libc::pid_t, u32),
    /// Hidden: start this many busy loops and wait to be killed (for `--check-busy-cleanup`).
    BusyHold(usize),
    /// Check that no busy loop outlives the harness, then exit.
    CheckBusyCleanup,
    /// Issue 11's MPI comparison only, this many repetitions (`compare/mpi.rs`).
    Mpi(usize),
    /// Hidden: the pinned raw ping-pong of this many round trips, in a fresh process.
    PingPong(usize),
    /// Hidden: W9's big echo of this many bytes in a fresh process.
    BigEcho(usize),
    /// Hidden: W10 in a fresh process (MiB of ballast, W6 lives, (tasks, seconds), init()).
    LargeParent(usize, usize, (u64, f64), bool),
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench compare [-- [--reps N] [--quick] [--no-python]]\n\
         \n  --reps N      repetitions (default 5, or 2 with --quick)\
         \n  --quick       small sizes, for a smoke run\
         \n  --no-python   skip Python's multiprocessing.Pool\
         \n  --no-init     do not call forkpool::init() first (pools fork from this grown process)\
         \n  --check-busy-cleanup   check that no busy loop outlives the harness, and exit\
         \n  --w6-phases N WORKERS BUSY   N pool lives of WORKERS, beside BUSY busy loops: the\
         \n                median of each phase (new, apply, close + join, drop) and every life, in ms\
         \n  --mpi         only the MPI pool against mpi4py (--reps N, default 5), and exit"
    );
    std::process::exit(2)
}

fn parse_args() -> Mode {
    let mut reps = None;
    let mut quick = false;
    let mut python = true;
    let mut init = true;
    let mut mpi = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reps" => {
                reps = match args.next().and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) if n > 0 => Some(n),
                    _ => usage(),
                }
            }
            "--quick" => quick = true,
            "--no-python" => python = false,
            "--no-init" => init = false,
            "--imap-rss" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => return Mode::ImapRss(n),
                None => usage(),
            },
            "--w6" => {
                let n = args.next().and_then(|n| n.parse().ok());
                let workers = args.next().and_then(|n| n.parse().ok());
                match (n, workers) {
                    (Some(n), Some(w)) => return Mode::W6(n, w),
                    _ => usage(),
                }
            }
            "--w6-phases" => {
                let mut next = || args.next().and_then(|n| n.parse().ok());
                match (next(), next(), next()) {
                    (Some(n), Some(w), Some(b)) if n > 0 => return Mode::W6Phases(n, w, b),
                    _ => usage(),
                }
            }
            "--busy-loop" => {
                let ppid = args.next().and_then(|n| n.parse().ok());
                let secs = args.next().and_then(|n| n.parse().ok());
                match (ppid, secs) {
                    (Some(p), Some(s)) => return Mode::BusyLoop(p, s),
                    _ => usage(),
                }
            }
            "--busy-hold" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => return Mode::BusyHold(n),
                None => usage(),
            },
            "--check-busy-cleanup" => return Mode::CheckBusyCleanup,
            "--mpi" => mpi = true,
            "--ping-pong" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => return Mode::PingPong(n),
                None => usage(),
            },
            "--big-echo" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => return Mode::BigEcho(n),
                None => usage(),
            },
            "--large-parent" => {
                let mib = args.next().and_then(|n| n.parse().ok());
                let lives = args.next().and_then(|n| n.parse().ok());
                let tasks = args.next().and_then(|n| n.parse().ok());
                let secs = args.next().and_then(|n| n.parse().ok());
                let init = args.next().as_deref() == Some("--init");
                match (mib, lives, tasks, secs) {
                    (Some(m), Some(l), Some(t), Some(s)) => {
                        return Mode::LargeParent(m, l, (t, s), init)
                    }
                    _ => usage(),
                }
            }
            // cargo bench passes --bench to every harness = false target.
            "--bench" => {}
            "-h" | "--help" => usage(),
            other => {
                eprintln!("compare: unknown argument {other:?}");
                usage()
            }
        }
    }
    if mpi {
        return Mode::Mpi(reps.unwrap_or(5));
    }
    Mode::Compare(Options {
        reps: reps.unwrap_or(if quick { 2 } else { 5 }),
        quick,
        python,
        init,
    })
}

/// Workload sizes. The defaults are the issue's; `--quick` shrinks them.
struct Sizes {
    w1: u64,
    w2: u64,
    w2_cs1: u64,
    w3: usize,
    w4_bytes: usize,
    /// Timed echoes per repetition (the median counts), for W4 and each raw echo variant.
    w4_iters: usize,
    w5_tasks: u64,
    w5_seconds: f64,
    /// Pool lifetimes per repetition (the median counts).
    w6_iters: usize,
    /// W7's W1 counts, every repetition.
    w7: Vec<u64>,
    /// W7's counts Python runs in the first repetition only (too slow for every one).
    w7_python_once: Vec<u64>,
    /// W7's imap item counts, measured once per run.
    imap: [u64; 2],
    /// Round trips per raw ping-pong measurement.
    ping_pongs: usize,
    /// CPUs (C): busy loops in W8, workers in W8a, W8c (and 4C) and W8d.
    cpus: usize,
    /// W9's big echo, bytes (1 GiB; 128 MiB with `--quick`).
    w9_bytes: usize,
    /// W10's ballast, MiB (2 GiB; 256 MiB with `--quick`).
    w10_mib: usize,
    /// W10's pool lives (the median counts).
    w10_w6_iters: usize,
    /// W10's tasks through Pool(2) with max_tasks_per_child(1): at most this many...
    w10_tasks: u64,
    /// ... or as many as this many seconds allow (at least 20).
    w10_seconds: f64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if quick {
            Sizes {
                w1: 2_000,
                w2: 20_000,
                w2_cs1: 2_000,
                w3: 1_000,
                w4_bytes: 8 << 20,
                w4_iters: 3,
                w5_tasks: 8,
                w5_seconds: 0.02,
                w6_iters: 3,
                w7: vec![1_000, 10_000],
                w7_python_once: vec![],
                imap: [100_000, 1_000_000],
                ping_pongs: 5_000,
                cpus,
                w9_bytes: 128 << 20,
                w10_mib: 256,
                w10_w6_iters: 3,
                w10_tasks: 200,
                w10_seconds: 0.3,
            }
        } else {
            Sizes {
                w1: 20_000,
                w2: 200_000,
                w2_cs1: 20_000,
                w3: 5_000,
                w4_bytes: 64 << 20,
                w4_iters: 3,
                w5_tasks: 8,
                w5_seconds: 0.2,
                w6_iters: 5,
                w7: vec![1_000, 10_000, 100_000, 1_000_000],
                w7_python_once: vec![1_000_000],
                imap: [1_000_000, 10_000_000],
                ping_pongs: 20_000,
                cpus,
                w9_bytes: 1 << 30,
                w10_mib: 2048,
                w10_w6_iters: 5,
                w10_tasks: 5_000,
                w10_seconds: 2.0,
            }
        }
    }

    /// The W7 count W1's per-task time at the largest count is compared with.
    fn w7_base(&self) -> u64 {
        if self.w7.contains(&10_000) && self.w7.iter().any(|&n| n > 10_000) {
            10_000
        } else {
            self.w7[0]
        }
    }

    fn w7_top(&self) -> u64 {
        *self.w7.iter().max().expect("W7 counts")
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of a sorted slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median_p99(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (median(&samples), percentile(&samples, 99.0))
}

/// A measured value: three significant digits, thousands separated.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() >= 10_000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio and, over several repetitions, the range of the per-repetition ratios.
fn ratio_cell(values: &[f64]) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return "–".into();
    }
    let m = median(&finite);
    if finite.len() == 1 {
        return format!("{}x", ratio(m));
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}x ({}–{})", ratio(m), ratio(lo), ratio(hi))
}

fn ratio(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements: one map of named values per repetition

type Metrics = BTreeMap<String, f64>;

fn put(m: &mut Metrics, key: impl Into<String>, value: f64) {
    m.insert(key.into(), value);
}

fn w7_key(side: &str, n: u64) -> String {
    format!("{side}.w7.{n}")
}

// ---------------------------------------------------------------------------------------------
// The forkpool workloads

/// W1 and W7: submit `n` trivial tasks with `apply_async`, then get them all. Seconds.
fn apply_async_secs(pool: &Pool, n: u64) -> f64 {
    let start = Instant::now();
    let pending: Vec<_> = (0..n)
        .map(|i| pool.apply_async(square, i).expect("submit"))
        .collect();
    let mut sum = 0u64;
    for result in pending {
        sum = sum.wrapping_add(result.get().expect("task"));
    }
    let secs = start.elapsed().as_secs_f64();
    let expected = (0..n).fold(0u64, |acc, i| acc.wrapping_add(square(i)));
    assert_eq!(sum, expected, "apply_async results");
    secs
}

/// One workload of a repetition. Each step runs on forkpool and on Python back to back, beside
/// the raw limit it is judged against, so that their ratio is taken under the same load.
#[derive(Clone, Copy, Debug)]
enum Step {
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7(u64),
    /// W6 in this process (and in Python's serving process), after the other workloads.
    W6Here,
    /// Many workers, quiet: W1 on new(4C) beside W1 on new(C) (the baseline side).
    W8c,
    /// W10, large parent: fresh processes holding the ballast, beside a small parent.
    W10,
    /// Busy machine: W1 on new(C).
    W8a,
    /// Busy machine: W3.
    W8b,
    /// Busy machine: W6 on new(C), in fresh processes.
    W8d,
}

impl Step {
    /// The command `python_pool.py --serve` knows this step by (W6, W8d and W10 run in fresh
    /// Python processes instead; W8c is forkpool's only).
    fn command(self, sizes: &Sizes) -> String {
        match self {
            Step::W1 => "w1".into(),
            Step::W2 => "w2".into(),
            Step::W3 | Step::W8b => "w3".into(),
            Step::W4 => "w4".into(),
            Step::W5 => "w5".into(),
            Step::W6 | Step::W6Here | Step::W8d | Step::W10 | Step::W8c => "w6".into(),
            Step::W7(n) => format!("w7 {n}"),
            Step::W8a => format!("w1_pool {}", sizes.cpus),
        }
    }

    /// Where Python's answer to this step is filed: `pyraw.` and this, then the script's keys.
    fn python_prefix(self) -> &'static str {
        match self {
            Step::W6Here => "w6here.",
            Step::W8a => "w8a.",
            Step::W8b => "w8b.",
            Step::W8d => "w8d.",
            Step::W10 => "w10.",
            _ => "",
        }
    }

    /// Runs with one busy loop per CPU beside it.
    fn busy(self) -> bool {
        matches!(self, Step::W8a | Step::W8b | Step::W8d)
    }
}

/// Who runs a step: the raw limit, forkpool, or Python's Pool.
#[derive(Clone, Copy, Debug)]
enum Side {
    Raw,
    Forkpool,
    Python,
}

/// What the forkpool steps need besides the pool.
struct Bench<'a> {
    sizes: &'a Sizes,
    w5_rounds: u64,
    payload: &'a [u8],
}

fn forkpool_step(pool: &Pool, step: Step, b: &Bench<'_>, m: &mut Metrics) {
    let sizes = b.sizes;
    match step {
        Step::W1 => {
            let secs = apply_async_secs(pool, sizes.w1);
            put(m, "fp.w1", sizes.w1 as f64 / secs);
        }
        Step::W2 => {
            let start = Instant::now();
            let squares = pool.map(square, 0..sizes.w2).expect("map");
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(squares.len() as u64, sizes.w2);
            assert_eq!(squares[squares.len() - 1], square(sizes.w2 - 1));
            drop(squares);
            put(m, "fp.w2", sizes.w2 as f64 / secs);
            let start = Instant::now();
            let squares = pool.map_chunked(square, 0..sizes.w2_cs1, 1).expect("map");
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(squares.len() as u64, sizes.w2_cs1);
            drop(squares);
            put(m, "fp.w2c1", sizes.w2_cs1 as f64 / secs);
        }
        Step::W3 | Step::W8b => {
            let (med, p99) = apply_latencies(pool, sizes.w3);
            let tag = if let Step::W3 = step { "w3" } else { "w8b" };
            put(m, format!("fp.{tag}_med"), med);
            put(m, format!("fp.{tag}_p99"), p99);
        }
        Step::W4 => {
            // The argument is cloned before the clock starts; the result is dropped after it
            // stops.
            let mut times = Vec::with_capacity(sizes.w4_iters);
            for _ in 0..sizes.w4_iters {
                let arg = b.payload.to_vec();
                let start = Instant::now();
                let back = pool.apply(echo, arg).expect("echo");
                times.push(start.elapsed().as_secs_f64());
                assert_eq!(back.len(), b.payload.len());
                drop(back);
            }
            put(m, "fp.w4", b.payload.len() as f64 / 1e6 / median(&times));
        }
        Step::W5 => {
            let tasks: Vec<(u64, u64)> = (0..sizes.w5_tasks).map(|i| (i, b.w5_rounds)).collect();
            let start = Instant::now();
            let serial: Vec<u64> = tasks.iter().map(|&t| spin(black_box(t))).collect();
            let serial_secs = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let parallel = pool.map_chunked(spin, tasks, 1).expect("map");
            let parallel_secs = start.elapsed().as_secs_f64();
            assert_eq!(serial, parallel);
            put(m, "fp.w5", serial_secs / parallel_secs);
            put(m, "fp.w5_serial_s", serial_secs);
            put(m, "fp.w5_parallel_s", parallel_secs);
        }
        Step::W6 | Step::W8d => {
            let (workers, key) = match step {
                Step::W6 => (WORKERS, "fp.w6"),
                _ => (sizes.cpus, "fp.w8d"),
            };
            match w6_in_fresh_process(sizes.w6_iters, workers) {
                Ok(w6) => {
                    put(m, key, w6.ms);
                    w6.file(m, &format!("diag.{key}"));
                }
                Err(e) => eprintln!("compare: {step:?} failed: {e}"),
            }
        }
        Step::W6Here => {
            let w6 = w6_measured(sizes.w6_iters, WORKERS);
            put(m, "fp.w6_here", w6.ms);
            w6.file(m, "diag.fp.w6_here");
            // The diagnosis: the same after glibc gives the heap the other workloads left
            // behind back to the kernel. Only a diagnostic: nothing judges it.
            // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
            unsafe { libc::malloc_trim(0) };
            let w6 = w6_measured(sizes.w6_iters, WORKERS);
            put(m, "fp.w6_trimmed", w6.ms);
            w6.file(m, "diag.fp.w6_trimmed");
        }
        Step::W7(n) => {
            let secs = apply_async_secs(pool, n);
            put(m, w7_key("fp", n), secs / n as f64 * 1e6);
        }
        Step::W8a => put(m, "fp.w8a", w1_on_new_pool(sizes.cpus, sizes.w1, 1)),
        Step::W8c => put(
            m,
            "fp.w8c",
            w1_on_new_pool(4 * sizes.cpus, sizes.w1, W8C_BATCHES),
        ),
        Step::W10 => {
            // The setup the docs recommend for large programs: with init() once it exists.
            let init = large_parent::INIT_AVAILABLE;
            match large_parent::run_forkpool(
                sizes.w10_mib,
                sizes.w10_w6_iters,
                (sizes.w10_tasks, sizes.w10_seconds),
                init,
            ) {
                Ok(r) => {
                    put(m, "fp.w10_w6", r.w6_ms);
                    put(m, "fp.w10_mtpc", r.mtpc_rate);
                    put(m, "diag.fp.w10_rss_mib", r.rss_mib);
                }
                Err(e) => eprintln!("compare: W10 (large parent) failed: {e}"),
            }
            if init {
                match large_parent::run_forkpool(
                    sizes.w10_mib,
                    sizes.w10_w6_iters,
                    (sizes.w10_tasks, sizes.w10_seconds),
                    false,
                ) {
                    Ok(r) => {
                        put(m, "fp.w10_plain_w6", r.w6_ms);
                        put(m, "fp.w10_plain_mtpc", r.mtpc_rate);
                    }
                    Err(e) => eprintln!("compare: W10 (large parent, no init) failed: {e}"),
                }
            }
        }
    }
}

/// W3 and W8b: sequential `apply` round trips after a warm-up, in µs: (median, p99).
fn apply_latencies(pool: &Pool, n: usize) -> (f64, f64) {
    for i in 0..100 {
        black_box(pool.apply(square, i).expect("apply"));
    }
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let start = Instant::now();
        let r = pool.apply(square, black_box(i)).expect("apply");
        latencies.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(r, square(i));
    }
    median_p99(latencies)
}

/// W1 batches per side and repetition in W8c, whose ratio is of forkpool to itself: the
/// median of 3 batches of about 20 ms each, so that one burst of another program on this
/// shared machine does not decide a repetition (single batches gave per-repetition ratios from
/// 0.53 to 1.90 in one run, 2026-12-07).
const W8C_BATCHES: usize = 3;

/// W8a and W8c: W1 on a pool of `workers` built for it (untimed, with one task to start it),
/// in tasks per second: the median of `batches` batches of `n` tasks.
fn w1_on_new_pool(workers: usize, n: u64, batches: usize) -> f64 {
    let pool = Pool::new(workers).expect("pool");
    assert_eq!(pool.apply(square, 5).expect("first task"), 25);
    let rates: Vec<f64> = (0..batches)
        .map(|_| n as f64 / apply_async_secs(&pool, n))
        .collect();
    pool.close();
    pool.join().expect("join");
    median(&rates)
}

fn add_w7_growth(m: &mut Metrics, side: &str, sizes: &Sizes) {
    let top = m.get(&w7_key(side, sizes.w7_top())).copied();
    let base = m.get(&w7_key(side, sizes.w7_base())).copied();
    if let (Some(top), Some(base)) = (top, base) {
        put(m, format!("{side}.w7_growth"), top / base);
    }
}

/// Runs this binary with `args` and returns the line of its output that starts with `prefix`.
pub(crate) fn run_self(args: &[&str], prefix: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("run {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
        .ok_or_else(|| format!("{args:?} printed {text:?}"))
}

/// Rounds of [`spin`] that take about `seconds` in this process: the fastest of 3 probes.
fn calibrate_spin(seconds: f64) -> u64 {
    const PROBE: u64 = 20_000_000;
    let best = (0..3)
        .map(|_| {
            let start = Instant::now();
            black_box(spin(black_box((1, PROBE))));
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    ((PROBE as f64 * seconds / best) as u64).max(1)
}

// ---------------------------------------------------------------------------------------------
// W7's imap peak RSS, in a fresh process

/// A field of `/proc/self/status` (`VmHWM`, `VmRSS`, `VmPTE`... in KiB; `Threads`, a count).
pub(crate) fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// `VmHWM` (peak resident set) of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    proc_status_kib("VmHWM")
}

/// The hidden `--imap-rss N` mode: imap over `n` lazily generated items, then print
/// `imap_rss <n> <VmHWM before, KiB> <VmHWM after, KiB> <seconds>`.
fn imap_child(n: u64) {
    let pool = Pool::new(WORKERS).expect("pool");
    assert_eq!(pool.apply(square, 2).expect("apply"), 4);
    let before = vm_hwm_kib();
    let start = Instant::now();
    let mut count = 0u64;
    let mut sum = 0u64;
    for r in pool.imap(square, 0..n).expect("imap") {
        sum = sum.wrapping_add(r.expect("imap item"));
        count += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = vm_hwm_kib();
    assert_eq!(count, n);
    black_box(sum);
    println!("imap_rss {n} {before} {after} {secs}");
    drop(pool);
}

/// Runs `--imap-rss n` in a fresh copy of this binary: (peak RSS in MiB, items per second).
fn imap_rss(n: u64) -> Result<(f64, f64), String> {
    let line = run_self(&["--imap-rss", &n.to_string()], "imap_rss ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    match f[..] {
        [items, _before, after, secs] => Ok((after / 1024.0, items / secs)),
        _ => Err(format!("imap child printed {line:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The raw limits: libc, fork and two pipes. Children make only system calls, then _exit.

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A pipe: `[read end, write end]`.
fn pipe() -> io::Result<[c_int; 2]> {
    let mut fds = [-1; 2];
    // SAFETY: fds has room for the two descriptors pipe(2) writes.
    cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    Ok(fds)
}

fn close(fd: c_int) {
    // SAFETY: closes a descriptor this module opened and owns.
    unsafe { libc::close(fd) };
}

/// Writes all of `buf`; false on an error. Allocation-free, so a forked child may call it.
fn write_all(fd: c_int, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Fills `buf`; false on end of file or an error. Allocation-free.
fn read_exact(fd: c_int, mut buf: &mut [u8]) -> bool {
    while !buf.is_empty() {
        let n = read_some(fd, buf);
        if n == 0 {
            return false;
        }
        buf = &mut buf[n..];
    }
    true
}

/// One read(2) of up to `buf.len()` bytes; 0 on end of file or an error. Allocation-free.
fn read_some(fd: c_int, buf: &mut [u8]) -> usize {
    loop {
        // SAFETY: buf is valid for buf.len() writable bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return n as usize;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 0;
        }
    }
}

/// Forks a child that runs `body` and exits with its return value through `_exit`.
fn fork_child(body: impl FnOnce() -> c_int) -> io::Result<libc::pid_t> {
    // SAFETY: the child only makes system calls (see the callers) and leaves through _exit, so
    // it takes no lock another thread of this process may have held at the fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

fn wait_child(pid: libc::pid_t) -> io::Result<()> {
    let mut status = 0;
    loop {
        // SAFETY: waits for a child this process forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "raw child ended with status {status:#x}"
        )))
    }
}

/// Pins the calling thread to the CPU it runs on; returns the previous mask, to restore.
fn pin_to_current_cpu() -> io::Result<(libc::cpu_set_t, usize)> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data, all zeroes is the empty set, and every pointer passed
    // below points at a cpu_set_t of `size` bytes.
    unsafe {
        let mut saved: libc::cpu_set_t = std::mem::zeroed();
        cvt(libc::sched_getaffinity(0, size, &mut saved))?;
        let cpu = cvt(libc::sched_getcpu())? as usize;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut one);
        libc::CPU_SET(cpu, &mut one);
        cvt(libc::sched_setaffinity(0, size, &one))?;
        Ok((saved, cpu))
    }
}

fn restore_affinity(saved: &libc::cpu_set_t) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: saved is a cpu_set_t that sched_getaffinity filled.
    unsafe { libc::sched_setaffinity(0, size, saved) };
}

/// A ping-pong of 8-byte messages with a forked child over two pipes: round trips in µs
/// (median, p99). Pinned: both processes on the CPU this thread runs on.
fn ping_pong(round_trips: usize, pinned: bool) -> io::Result<(f64, f64)> {
    let saved = if pinned {
        Some(pin_to_current_cpu()?.0)
    } else {
        None
    };
    let result = ping_pong_inner(round_trips);
    if let Some(saved) = saved {
        restore_affinity(&saved);
    }
    result
}

fn ping_pong_inner(round_trips: usize) -> io::Result<(f64, f64)> {
    const WARM_UP: usize = 1_000;
    let down = pipe()?;
    let up = pipe()?;
    let pid = fork_child(|| {
        close(down[1]);
        close(up[0]);
        let mut msg = [0u8; 8];
        while read_exact(down[0], &mut msg) {
            if !write_all(up[1], &msg) {
                return 1;
            }
        }
        0
    })?;
    close(down[0]);
    close(up[1]);
    let mut samples = Vec::with_capacity(round_trips);
    let mut failed = false;
    for i in 0..WARM_UP + round_trips {
        let msg = (i as u64).to_le_bytes();
        let mut back = [0u8; 8];
        let start = Instant::now();
        if !write_all(down[1], &msg) || !read_exact(up[0], &mut back) {
            failed = true;
            break;
        }
        let micros = start.elapsed().as_secs_f64() * 1e6;
        if back != msg {
            failed = true;
            break;
        }
        if i >= WARM_UP {
            samples.push(micros);
        }
    }
    close(down[1]);
    close(up[0]);
    wait_child(pid)?;
    if failed {
        return Err(io::Error::other("ping-pong child stopped answering"));
    }
    Ok(median_p99(samples))
}

#[derive(Clone, Copy)]
enum EchoMode {
    /// The child reads the whole payload, then writes it back.
    StoreForward,
    /// The child writes each chunk back as it reads it; this process writes from a second
    /// thread while it reads.
    Stream,
}

/// A payload echoed by a forked child over two plain pipes: the median seconds of `iters` timed
/// echoes, after one untimed one. `pipe_size` sets the pipes' buffers (F_SETPIPE_SZ).
fn raw_echo(
    payload: &[u8],
    back: &mut [u8],
    mode: EchoMode,
    pipe_size: Option<c_int>,
    iters: usize,
) -> io::Result<f64> {
    let len = payload.len();
    let down = pipe()?;
    let up = pipe()?;
    if let Some(size) = pipe_size {
        for fd in [down[1], up[1]] {
            // SAFETY: F_SETPIPE_SZ on a pipe this function owns.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) })?;
        }
    }
    // The child's buffer is allocated before the fork (the child must not allocate) and left
    // untouched here; the untimed first echo faults its pages in, in the child.
    let chunk = pipe_size.unwrap_or(64 << 10) as usize;
    let mut child_buf = vec![
        0u8;
        if matches!(mode, EchoMode::Stream) {
            chunk
        } else {
            len
        }
    ];
    let pid = fork_child(|| {
        close(down[1]);
        close(up[0]);
        match mode {
            EchoMode::StoreForward => {
                while read_exact(down[0], &mut child_buf) {
                    if !write_all(up[1], &child_buf) {
                        return 1;
                    }
                }
            }
            EchoMode::Stream => loop {
                let n = read_some(down[0], &mut child_buf);
                if n == 0 {
                    break;
                }
                if !write_all(up[1], &child_buf[..n]) {
                    return 1;
                }
            },
        }
        0
    })?;
    drop(child_buf);
    close(down[0]);
    close(up[1]);
    let mut times = Vec::with_capacity(iters);
    let mut ok = true;
    for i in 0..=iters {
        let start = Instant::now();
        ok = match mode {
            EchoMode::StoreForward => write_all(down[1], payload) && read_exact(up[0], back),
            EchoMode::Stream => std::thread::scope(|s| {
                let writer = s.spawn(|| write_all(down[1], payload));
                let read = read_exact(up[0], back);
                writer.join().unwrap_or(false) && read
            }),
        };
        if !ok {
            break;
        }
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    close(down[1]);
    close(up[0]);
    wait_child(pid)?;
    if !ok || back != payload {
        return Err(io::Error::other("raw echo came back wrong"));
    }
    Ok(median(&times))
}

const ECHO_VARIANTS: [(&str, EchoMode, Option<c_int>); 4] = [
    (
        "store-and-forward, 64 KiB pipes",
        EchoMode::StoreForward,
        None,
    ),
    (
        "store-and-forward, 1 MiB pipes",
        EchoMode::StoreForward,
        Some(1 << 20),
    ),
    ("streamed, 64 KiB pipes", EchoMode::Stream, None),
    ("streamed, 1 MiB pipes", EchoMode::Stream, Some(1 << 20)),
];

/// The raw limit a step is judged against: the ping-pongs beside W3, the echoes beside W4.
/// False if the step has no raw counterpart.
fn raw_step(step: Step, sizes: &Sizes, payload: &[u8], m: &mut Metrics) -> bool {
    match step {
        Step::W3 => {
            for (pinned, tag) in [(true, "pin"), (false, "unpin")] {
                match ping_pong(sizes.ping_pongs, pinned) {
                    Ok((med, p99)) => {
                        put(m, format!("raw.pp_{tag}_med"), med);
                        put(m, format!("raw.pp_{tag}_p99"), p99);
                    }
                    Err(e) => eprintln!("compare: raw ping-pong ({tag}ned) failed: {e}"),
                }
            }
        }
        Step::W4 => {
            // Allocated here, not kept: the process that forks W6's pools should hold no more
            // memory than Python's does when it forks its own.
            let mut back = vec![0u8; payload.len()];
            let mut best = 0.0f64;
            for (i, &(name, mode, pipe_size)) in ECHO_VARIANTS.iter().enumerate() {
                match raw_echo(payload, &mut back, mode, pipe_size, sizes.w4_iters) {
                    Ok(secs) => {
                        let mbps = payload.len() as f64 / 1e6 / secs;
                        put(m, format!("raw.echo{i}"), mbps);
                        best = best.max(mbps);
                    }
                    Err(e) => eprintln!("compare: raw echo ({name}) failed: {e}"),
                }
            }
            if best > 0.0 {
                put(m, "raw.echo", best);
            }
        }
        Step::W5 => put(m, "raw.w5", WORKERS as f64),
        // The baselines that are forkpool itself: W1 on new(C) beside new(4C), and the small
        // parent beside the large one.
        Step::W8c => put(
            m,
            "raw.w8c",
            w1_on_new_pool(sizes.cpus, sizes.w1, W8C_BATCHES),
        ),
        Step::W10 => {
            match large_parent::run_forkpool(
                0,
                sizes.w10_w6_iters,
                (sizes.w10_tasks, sizes.w10_seconds),
                false,
            ) {
                Ok(r) => {
                    put(m, "raw.w10_w6", r.w6_ms);
                    put(m, "raw.w10_mtpc", r.mtpc_rate);
                }
                Err(e) => eprintln!("compare: W10 (small parent) failed: {e}"),
            }
        }
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Python's Pool: benches/python_pool.py, one run per repetition

/// `python3 benches/python_pool.py --json --serve`: one per repetition, with its own pool of 2
/// workers, running the workloads this process names on its stdin, one at a time.
struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    version: String,
}

impl Python {
    fn start(sizes: &Sizes) -> Result<Python, String> {
        let mut child = Command::new("python3")
            .arg(PYTHON_SCRIPT)
            .args(["--json", "--serve"])
            .args(["--w1", &sizes.w1.to_string()])
            .args(["--w2", &sizes.w2.to_string()])
            .args(["--w2c1", &sizes.w2_cs1.to_string()])
            .args(["--w3", &sizes.w3.to_string()])
            .args(["--w4-mib", &(sizes.w4_bytes >> 20).to_string()])
            .args(["--w4-iters", &sizes.w4_iters.to_string()])
            .args(["--w5-tasks", &sizes.w5_tasks.to_string()])
            .args(["--w5-seconds", &sizes.w5_seconds.to_string()])
            .args(["--w6-iters", &sizes.w6_iters.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut python = Python {
            child,
            stdin,
            stdout,
            version: String::new(),
        };
        let ready = python.answer()?;
        if !matches!(ready.get("ready"), Some(Json::Other)) {
            return Err("python_pool.py did not say it was ready".into());
        }
        if let Some(Json::Str(v)) = ready.get("python_version") {
            python.version = v.clone();
        }
        Ok(python)
    }

    fn answer(&mut self) -> Result<BTreeMap<String, Json>, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("python3 {PYTHON_SCRIPT} ended early")),
            Ok(_) => parse_flat_json(&line),
            Err(e) => Err(format!("reading from python3: {e}")),
        }
    }

    /// Runs one step; its numbers go into `m` under the script's own names, prefixed `pyraw.`
    /// and the step's [`Step::python_prefix`]. W6 and W8d run in a fresh Python process
    /// (`--w6-only`), as forkpool's do, and W10 in one that holds the ballast.
    fn step(&mut self, step: Step, sizes: &Sizes, m: &mut Metrics) -> Result<(), String> {
        let answer = match step {
            Step::W6 => python_w6(sizes, WORKERS)?,
            Step::W8d => python_w6(sizes, sizes.cpus)?,
            Step::W8c => return Ok(()),
            Step::W10 => {
                let r = large_parent::run_python(
                    sizes.w10_mib,
                    sizes.w10_w6_iters,
                    (sizes.w10_tasks, sizes.w10_seconds),
                )?;
                put(m, "py.w10_w6", r.w6_ms);
                put(m, "py.w10_mtpc", r.mtpc_rate);
                put(m, "diag.py.w10_rss_mib", r.rss_mib);
                return Ok(());
            }
            _ => {
                writeln!(self.stdin, "{}", step.command(sizes))
                    .and_then(|()| self.stdin.flush())
                    .map_err(|e| format!("writing to python3: {e}"))?;
                self.answer()?
            }
        };
        for (key, value) in answer {
            if let Json::Num(v) = value {
                put(m, format!("pyraw.{}{key}", step.python_prefix()), v);
            }
        }
        Ok(())
    }

    fn finish(mut self) {
        let _ = writeln!(self.stdin, "quit").and_then(|()| self.stdin.flush());
        drop(self.stdin);
        let _ = self.child.wait();
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3 benches/python_pool.py --json --w6-only`: W6 in a fresh Python process.
fn python_w6(sizes: &Sizes, workers: usize) -> Result<BTreeMap<String, Json>, String> {
    let out = Command::new("python3")
        .arg(PYTHON_SCRIPT)
        .args(["--json", "--w6-only"])
        .args(["--w6-iters", &sizes.w6_iters.to_string()])
        .args(["--w6-workers", &workers.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("python3 {PYTHON_SCRIPT} --w6-only: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("no JSON from python3 --w6-only: {text:?}"))?;
    parse_flat_json(line)
}

/// Files the Python script's numbers of one repetition under this harness's names.
fn python_metrics(m: &mut Metrics, sizes: &Sizes) {
    for (ours, theirs) in [
        ("py.w1", "w1_tasks_per_s"),
        ("py.w2", "w2_default_items_per_s"),
        ("py.w2c1", "w2_cs1_items_per_s"),
        ("py.w3_med", "w3_median_us"),
        ("py.w3_p99", "w3_p99_us"),
        ("py.w4", "w4_mb_per_s"),
        ("py.w5", "w5_speedup"),
        ("py.w5_serial_s", "w5_serial_s"),
        ("py.w5_parallel_s", "w5_parallel_s"),
        ("py.w6", "w6_ms"),
        ("py.w6_here", "w6here.w6_ms"),
        ("py.w8a", "w8a.w1_tasks_per_s"),
        ("py.w8b_med", "w8b.w3_median_us"),
        ("py.w8b_p99", "w8b.w3_p99_us"),
        ("py.w8d", "w8d.w6_ms"),
    ] {
        if let Some(&v) = m.get(&format!("pyraw.{theirs}")) {
            put(m, ours, v);
        }
    }
    for &n in &sizes.w7 {
        if let Some(&v) = m.get(&format!("pyraw.w7_{n}_us_per_task")) {
            put(m, w7_key("py", n), v);
        }
    }
    add_w7_growth(m, "py", sizes);
}

/// A JSON value, as far as this harness cares.
pub(crate) enum Json {
    Num(f64),
    Str(String),
    Other,
}

/// Parses one flat JSON object (string keys; numbers, strings, booleans or null as values), as
/// `json.dumps` prints it, including its `NaN` and `Infinity`.
pub(crate) fn parse_flat_json(text: &str) -> Result<BTreeMap<String, Json>, String> {
    let mut chars = text.trim().chars().peekable();
    let bad = |what: &str| format!("bad JSON from Python ({what}): {text:?}");
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    let string = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<String> {
        if chars.next()? != '"' {
            return None;
        }
        let mut s = String::new();
        loop {
            match chars.next()? {
                '"' => return Some(s),
                '\\' => match chars.next()? {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'b' => s.push('\u{8}'),
                    'f' => s.push('\u{c}'),
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    c => s.push(c),
                },
                c => s.push(c),
            }
        }
    };
    let mut map = BTreeMap::new();
    if chars.next() != Some('{') {
        return Err(bad("no '{'"));
    }
    skip_ws(&mut chars);
    if chars.peek() == Some(&'}') {
        return Ok(map);
    }
    loop {
        skip_ws(&mut chars);
        let key = string(&mut chars).ok_or_else(|| bad("key"))?;
        skip_ws(&mut chars);
        if chars.next() != Some(':') {
            return Err(bad("no ':'"));
        }
        skip_ws(&mut chars);
        let value = if chars.peek() == Some(&'"') {
            Json::Str(string(&mut chars).ok_or_else(|| bad("string"))?)
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' || c == '}' || c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
            match word.as_str() {
                "true" | "false" | "null" => Json::Other,
                "NaN" => Json::Num(f64::NAN),
                "Infinity" => Json::Num(f64::INFINITY),
                "-Infinity" => Json::Num(f64::NEG_INFINITY),
                w => Json::Num(w.parse().map_err(|_| bad("value"))?),
            }
        };
        map.insert(key, value);
        skip_ws(&mut chars);
        match chars.next() {
            Some(',') => {}
            Some('}') => return Ok(map),
            _ => return Err(bad("no ',' or '}'")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

#[derive(Clone, Copy)]
enum Target {
    /// forkpool's advantage over Python (`fp/py`, or `py/fp` for times) at least this.
    VsPython(f64),
    /// forkpool's advantage over Python at least this in every repetition.
    VsPythonEvery(f64),
    /// forkpool's value is 1 (the workload succeeded) in every repetition.
    Succeeds,
    /// `fp/raw` at least this.
    RawAtLeast(f64),
    /// `fp/raw` at most this.
    RawAtMost(f64),
    /// forkpool's own value (a per-repetition ratio already) at least this.
    AtLeast(f64),
    /// forkpool's own value (a per-repetition ratio already) at most this.
    AtMost(f64),
}

struct Row {
    name: String,
    unit: &'static str,
    fp: String,
    py: Option<String>,
    raw: Option<String>,
    raw_label: &'static str,
    better: Better,
    targets: Vec<Target>,
    /// Measured once per run rather than once per repetition.
    once: bool,
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str, key: &str, better: Better) -> Row {
        Row {
            name: name.into(),
            unit,
            fp: format!("fp.{key}"),
            py: Some(format!("py.{key}")),
            raw: None,
            raw_label: "",
            better,
            targets: Vec::new(),
            once: false,
        }
    }

    fn raw(mut self, key: &str, label: &'static str) -> Row {
        self.raw = Some(format!("raw.{key}"));
        self.raw_label = label;
        self
    }

    fn target(mut self, t: Target) -> Row {
        self.targets.push(t);
        self
    }
}

fn rows(sizes: &Sizes) -> Vec<Row> {
    use Better::{Higher, Lower};
    let k = |n: u64| {
        if n >= 1_000_000 && n % 1_000_000 == 0 {
            format!("{}M", n / 1_000_000)
        } else if n >= 1_000 && n % 1_000 == 0 {
            format!("{}k", n / 1_000)
        } else {
            n.to_string()
        }
    };
    let mut rows = vec![
        Row::new(
            format!("W1 apply_async, {} tasks", k(sizes.w1)),
            "tasks/s",
            "w1",
            Higher,
        )
        .target(Target::VsPython(20.0)),
        Row::new(
            format!("W2 map, {} items, default chunksize", k(sizes.w2)),
            "items/s",
            "w2",
            Higher,
        )
        .target(Target::VsPython(5.0)),
        Row::new(
            format!("W2 map, {} items, chunksize 1", k(sizes.w2_cs1)),
            "items/s",
            "w2c1",
            Higher,
        )
        .target(Target::VsPython(20.0)),
        Row::new(
            format!("W3 apply latency, median of {}", k(sizes.w3 as u64)),
            "µs",
            "w3_med",
            Lower,
        )
        .raw("pp_pin_med", "ping-pong pinned, median")
        .target(Target::RawAtMost(3.0)),
        Row::new(
            format!("W3 apply latency, p99 of {}", k(sizes.w3 as u64)),
            "µs",
            "w3_p99",
            Lower,
        )
        .raw("pp_unpin_p99", "ping-pong unpinned, p99")
        .target(Target::RawAtMost(2.0)),
        Row::new(
            format!("W4 echo {} MiB `Vec<u8>`", sizes.w4_bytes >> 20),
            "MB/s",
            "w4",
            Higher,
        )
        .raw("echo", "two-pipe echo, best")
        // Issue 9's targets: beat the pipe, not just approach it.
        .target(Target::RawAtLeast(1.2))
        .target(Target::VsPython(8.0)),
        Row::new(
            format!(
                "W5 speedup, {} tasks of ~{} s",
                sizes.w5_tasks, sizes.w5_seconds
            ),
            "x serial",
            "w5",
            Higher,
        )
        .raw("w5", "ideal on 2 workers")
        .target(Target::AtLeast(1.9)),
        Row::new("W6 new(2), 1 task, close, join, drop", "ms", "w6", Lower)
            .target(Target::VsPython(5.0)),
    ];
    for &n in &sizes.w7 {
        rows.push(Row::new(
            format!("W7 apply_async, {} tasks", k(n)),
            "µs/task",
            &format!("w7.{n}"),
            Lower,
        ));
    }
    let mut growth = Row::new(
        format!(
            "W7 per-task time, {} vs {}",
            k(sizes.w7_top()),
            k(sizes.w7_base())
        ),
        "ratio",
        "w7_growth",
        Lower,
    )
    .target(Target::AtMost(1.3));
    growth.py = Some("py.w7_growth".into());
    rows.push(growth);
    for n in sizes.imap {
        let mut row = Row::new(
            format!("W7 imap, {} items: parent peak RSS", k(n)),
            "MiB",
            &format!("imap_rss.{n}"),
            Lower,
        );
        row.py = None;
        row.once = true;
        rows.push(row);
        let mut row = Row::new(
            format!("W7 imap, {} items: throughput", k(n)),
            "items/s",
            &format!("imap_rate.{n}"),
            Higher,
        );
        row.py = None;
        row.once = true;
        rows.push(row);
    }
    let mut flat = Row::new(
        format!(
            "W7 imap peak RSS, {} vs {}",
            k(sizes.imap[1]),
            k(sizes.imap[0])
        ),
        "ratio",
        "imap_rss_growth",
        Lower,
    )
    .target(Target::AtMost(IMAP_RSS_FLAT));
    flat.py = None;
    flat.once = true;
    rows.push(flat);
    rows.extend(new_rows(sizes));
    rows
}

/// The rows of issue 9's workloads (W6 after the others, W8-W10).
fn new_rows(sizes: &Sizes) -> Vec<Row> {
    use Better::{Higher, Lower};
    let c = sizes.cpus;
    let fp_only = |mut row: Row| {
        row.py = None;
        row
    };
    let once = |mut row: Row| {
        row.once = true;
        row
    };
    let mut first = Row::new(
        "W6 in the harness process, before the others",
        "ms",
        "w6_first",
        Lower,
    );
    first.py = None;
    first.once = true;
    let w9_mib = sizes.w9_bytes >> 20;
    // 2.5 GiB for 1 GiB: the peak may be 2.5 payloads.
    let w9_limit = (w9_mib * 5 / 2) as f64;
    let w9_name = if w9_mib >= 1024 {
        format!("{} GiB", w9_mib >> 10)
    } else {
        format!("{w9_mib} MiB")
    };
    let ballast = if sizes.w10_mib >= 1024 {
        format!("{} GiB", sizes.w10_mib >> 10)
    } else {
        format!("{} MiB", sizes.w10_mib)
    };
    let init = if large_parent::INIT_AVAILABLE {
        ", init()"
    } else {
        ""
    };
    let mut rows = vec![
        first,
        Row::new(
            "W6 in the harness process, after the others",
            "ms",
            "w6_here",
            Lower,
        )
        .target(Target::VsPython(5.0)),
        Row::new(
            format!("W8a busy: W1 on new({c})"),
            "tasks/s",
            "w8a",
            Higher,
        )
        .target(Target::VsPython(5.0))
        .target(Target::VsPythonEvery(1.0)),
        Row::new("W8b busy: W3 latency, median", "µs", "w8b_med", Lower)
            .target(Target::VsPython(1.0)),
        Row::new("W8b busy: W3 latency, p99", "µs", "w8b_p99", Lower),
        fp_only(
            Row::new(
                format!("W8c quiet: W1 on new({})", 4 * c),
                "tasks/s",
                "w8c",
                Higher,
            )
            .raw("w8c", "W1 on new(C)")
            .target(Target::RawAtLeast(0.8)),
        ),
        Row::new(
            format!("W8d busy: W6 on new({c}), 1 task, close, join, drop"),
            "ms",
            "w8d",
            Lower,
        )
        .target(Target::VsPython(5.0)),
        once(fp_only(
            Row::new(
                format!("W9 echo {w9_name} `Vec<u8>`"),
                "ok",
                "w9_ok",
                Higher,
            )
            .target(Target::Succeeds),
        )),
        once(fp_only(Row::new(
            format!("W9 echo {w9_name}: throughput"),
            "MB/s",
            "w9",
            Higher,
        ))),
        once(fp_only(
            Row::new(
                format!("W9 echo {w9_name}: parent peak RSS"),
                "MiB",
                "w9_peak",
                Lower,
            )
            .target(Target::AtMost(w9_limit)),
        )),
        Row::new(
            format!("W10 {ballast} parent{init}: W6 new(2)"),
            "ms",
            "w10_w6",
            Lower,
        )
        .raw("w10_w6", "small parent")
        .target(Target::RawAtMost(3.0))
        .target(Target::VsPython(5.0)),
        Row::new(
            format!("W10 {ballast} parent{init}: max_tasks_per_child(1)"),
            "tasks/s",
            "w10_mtpc",
            Higher,
        )
        .raw("w10_mtpc", "small parent")
        .target(Target::RawAtLeast(0.5))
        .target(Target::VsPython(5.0)),
    ];
    if large_parent::INIT_AVAILABLE {
        rows.push(fp_only(
            Row::new(
                format!("W10 {ballast} parent, no init(): W6 new(2)"),
                "ms",
                "w10_plain_w6",
                Lower,
            )
            .raw("w10_w6", "small parent"),
        ));
        rows.push(fp_only(
            Row::new(
                format!("W10 {ballast} parent, no init(): max_tasks_per_child(1)"),
                "tasks/s",
                "w10_plain_mtpc",
                Higher,
            )
            .raw("w10_mtpc", "small parent"),
        ));
    }
    rows
}

fn collect(reps: &[Metrics], key: &str) -> Vec<f64> {
    reps.iter().filter_map(|m| m.get(key).copied()).collect()
}

/// Per-repetition ratios of two keys, for the repetitions that have both.
fn per_rep(reps: &[Metrics], a: &str, b: &str, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    reps.iter()
        .filter_map(|m| Some(f(*m.get(a)?, *m.get(b)?)))
        .collect()
}

struct Verdicts {
    pass: usize,
    miss: usize,
    unknown: usize,
    lines: Vec<String>,
}

fn table(rows: &[Row], reps: &[Metrics], once: &[Metrics]) -> (Vec<Vec<String>>, Verdicts) {
    let header = [
        "Workload",
        "Unit",
        "forkpool",
        "Python",
        "Raw limit or baseline",
        "vs Python",
        "forkpool ÷ baseline",
        "Target",
        "Result",
    ];
    let mut cells = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let mut verdicts = Verdicts {
        pass: 0,
        miss: 0,
        unknown: 0,
        lines: Vec::new(),
    };
    for row in rows {
        let source = if row.once { once } else { reps };
        let fp = collect(source, &row.fp);
        let py_vals = row.py.as_deref().map(|k| collect(source, k));
        let raw_vals = row.raw.as_deref().map(|k| collect(source, k));
        // A growth ratio of forkpool's over Python's means nothing: no "vs Python" there.
        let compare_py = row.py.is_some() && row.unit != "ratio";
        let vs_py: Vec<f64> = match row.py.as_deref().filter(|_| compare_py) {
            Some(py) => per_rep(source, &row.fp, py, |f, p| match row.better {
                Better::Higher => f / p,
                Better::Lower => p / f,
            }),
            None => Vec::new(),
        };
        let vs_raw: Vec<f64> = match row.raw.as_deref() {
            Some(raw) => per_rep(source, &row.fp, raw, |f, r| f / r),
            None => Vec::new(),
        };
        let mut target_text = Vec::new();
        let mut results = Vec::new();
        for &t in &row.targets {
            let (text, value, ok): (String, f64, fn(f64, f64) -> bool) = match t {
                Target::VsPython(x) => {
                    (format!("vs Python ≥ {x}x"), median(&vs_py), |v, x| v >= x)
                }
                Target::VsPythonEvery(x) => (
                    format!("every rep. ≥ {x}x"),
                    vs_py.iter().copied().fold(f64::NAN, f64::min),
                    |v, x| v >= x,
                ),
                Target::Succeeds => (
                    "succeeds".into(),
                    fp.iter().copied().fold(f64::NAN, f64::min),
                    |v, _| v == 1.0,
                ),
                Target::RawAtLeast(x) => {
                    (format!("÷ raw ≥ {x}"), median(&vs_raw), |v, x| v >= x)
                }
                Target::RawAtMost(x) => (format!("÷ raw ≤ {x}"), median(&vs_raw), |v, x| v <= x),
                Target::AtLeast(x) => (format!("≥ {x}"), median(&fp), |v, x| v >= x),
                Target::AtMost(x) => (format!("≤ {x}"), median(&fp), |v, x| v <= x),
            };
            let x = match t {
                Target::Succeeds => 1.0,
                Target::VsPython(x)
                | Target::VsPythonEvery(x)
                | Target::RawAtLeast(x)
                | Target::RawAtMost(x)
                | Target::AtLeast(x)
                | Target::AtMost(x) => x,
            };
            let verdict = if !value.is_finite() {
                verdicts.unknown += 1;
                "n/a"
            } else if ok(value, x) {
                verdicts.pass += 1;
                "PASS"
            } else {
                verdicts.miss += 1;
                "MISS"
            };
            verdicts.lines.push(format!(
                "{verdict:4}  {}: {text} (measured {})",
                row.name,
                if value.is_finite() {
                    ratio(value)
                } else {
                    "–".into()
                }
            ));
            target_text.push(text);
            results.push(verdict.to_string());
        }
        let fp_cell = if row.unit == "ratio" || row.unit == "x serial" {
            ratio_cell(&fp)
        } else {
            num(median(&fp))
        };
        let py_cell = match &py_vals {
            Some(v) if row.unit == "ratio" || row.unit == "x serial" => ratio_cell(v),
            Some(v) => num(median(v)),
            None => "–".into(),
        };
        let raw_cell = match &raw_vals {
            Some(v) if !v.is_empty() => format!("{} ({})", num(median(v)), row.raw_label),
            _ => "–".into(),
        };
        cells.push(vec![
            row.name.clone(),
            row.unit.to_string(),
            fp_cell,
            py_cell,
            raw_cell,
            if compare_py {
                ratio_cell(&vs_py)
            } else {
                "–".into()
            },
            if row.raw.is_some() {
                ratio_cell(&vs_raw)
            } else {
                "–".into()
            },
            if target_text.is_empty() {
                "–".into()
            } else {
                target_text.join("; ")
            },
            if results.is_empty() {
                "".into()
            } else {
                results.join(", ")
            },
        ]);
    }
    (cells, verdicts)
}

/// What the new workloads' rows need said, and the numbers that explain W6 and W10.
fn notes(sizes: &Sizes, reps: &[Metrics], once: &Metrics, busy_secs: f64) -> String {
    let mut out = String::new();
    let med = |key: &str| num(median(&collect(reps, key)));
    let c = sizes.cpus;
    let _ = writeln!(
        out,
        "Busy machine (W8a, W8b, W8d): {c} busy-loop processes (one per CPU, `loop {{}}` at nice \
         0, this binary re-executed) run for the whole busy phase of each repetition, {:.0} s \
         per repetition on average; forkpool and Python run back to back under the same load.",
        busy_secs / reps.len().max(1) as f64
    );
    let _ = writeln!(
        out,
        "W8c: the baseline is W1 on new({c}), measured beside new({}) in the same repetition; \
         each side is the median of {W8C_BATCHES} batches on its pool.",
        4 * c
    );
    let _ = writeln!(
        out,
        "W9 runs once per run, in a fresh process; peak RSS is VmHWM reset (clear_refs 5) just \
         before the echo, when the process already held the payload ({} MiB resident then); the \
         target is 2.5 payloads.",
        once.get("diag.fp.w9_before_mib")
            .map_or("–".into(), |v| num(*v))
    );
    let _ = writeln!(
        out,
        "W10 runs in fresh processes holding {} MiB (resident: forkpool {} MiB, Python {} MiB); \
         the baseline is the same binary with no ballast. {}",
        sizes.w10_mib,
        med("diag.fp.w10_rss_mib"),
        med("diag.py.w10_rss_mib"),
        if large_parent::INIT_AVAILABLE {
            "forkpool's rows use forkpool::init() first in main, as the docs recommend; the \
             \"no init()\" rows are without it."
        } else {
            "This build has no forkpool::init(): the rows are without it (see `W10-init` in \
             benches/compare/large_parent.rs)."
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "W6 and the process it runs in (medians; faults are per pool life):"
    );
    let _ = writeln!(
        out,
        "| where | ms | parent RSS MiB | parent page tables KiB | threads | minor faults, parent | minor faults, children |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (what, key, src) in [
        ("fresh process", "fp.w6", reps),
        (
            "harness, before the others",
            "fp.w6_first",
            std::slice::from_ref(once),
        ),
        ("harness, after the others", "fp.w6_here", reps),
        (
            "harness, after the others and malloc_trim(0)",
            "fp.w6_trimmed",
            reps,
        ),
    ] {
        let d = |f: &str| num(median(&collect(src, &format!("diag.{key}.{f}"))));
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {} | {} |",
            num(median(&collect(src, key))),
            d("rss_mib"),
            d("pte_kib"),
            d("threads"),
            d("self_minflt"),
            d("children_minflt"),
        );
    }
    out
}

/// A markdown table with padded columns, readable as plain text too.
fn markdown(cells: &[Vec<String>]) -> String {
    let cols = cells[0].len();
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        out.push('|');
        for (c, cell) in row.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for w in &width {
                let _ = write!(out, "{}|", "-".repeat(w + 2));
            }
            out.push('\n');
        }
    }
    out
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn target_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let opts = match parse_args() {
        Mode::ImapRss(n) => {
            imap_child(n);
            return;
        }
        Mode::W6(n, workers) => {
            let w = w6_measured(n, workers);
            println!(
                "w6 {} {} {} {} {} {}",
                w.ms, w.self_minflt, w.children_minflt, w.rss_kib, w.pte_kib, w.threads
            );
            return;
        }
        Mode::W6Phases(n, workers, busy_loops) => {
            let load = (busy_loops > 0).then(|| {
                BusyLoad::start(busy_loops, busy::ALARM_SECS).expect("start the busy loops")
            });
            println!("{}", w6::w6_phases(n, workers));
            drop(load);
            return;
        }
        Mode::BusyLoop(ppid, secs) => busy::busy_loop_child(ppid, secs),
        Mode::BusyHold(n) => {
            busy::busy_hold(n);
            return;
        }
        Mode::CheckBusyCleanup => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            match busy::check_cleanup(n) {
                Ok(lines) => lines.iter().for_each(|l| println!("ok: {l}")),
                Err(e) => {
                    eprintln!("compare: busy-loop cleanup check FAILED: {e}");
                    std::process::exit(1);
                }
            }
            return;
        }
        Mode::BigEcho(bytes) => {
            big_payload::child(bytes);
            return;
        }
        Mode::PingPong(n) => {
            let (med, p99) = ping_pong(n, true).expect("ping-pong");
            println!("ping_pong {med} {p99}");
            return;
        }
        Mode::LargeParent(mib, lives, (tasks, secs), init) => {
            large_parent::child(mib, lives, tasks, secs, init);
            return;
        }
        Mode::Mpi(reps) => {
            mpi::run(reps);
            return;
        }
        Mode::Compare(opts) => opts,
    };
    // As the docs recommend for a program that grows: init() first, so that every pool's fork
    // server comes from a zygote of the program as it is now, not from what the workloads grow
    // it into ("W6 in the harness process, after the others"). The W10 rows and `--no-init`
    // show the cost without it.
    if opts.init {
        forkpool::init().expect("forkpool::init");
    }
    // The pool is built first, before this program starts any thread.
    let pool = Pool::new(WORKERS).expect("start a pool of 2 workers");
    assert_eq!(pool.apply(square, 7).expect("first task"), 49);
    let sizes = Sizes::new(opts.quick);
    // W6 in this process before any other workload, beside W6Here after them all.
    let mut once = Metrics::new();
    let w6_first = w6_measured(sizes.w6_iters, WORKERS);
    put(&mut once, "fp.w6_first", w6_first.ms);
    w6_first.file(&mut once, "diag.fp.w6_first");

    let run_start = Instant::now();
    let load_before = load_average();
    let cpus = sizes.cpus;
    if opts.quick {
        // The busy loops' three ends, checked before the harness relies on them.
        match busy::check_cleanup(cpus) {
            Ok(lines) => lines.iter().for_each(|l| eprintln!("compare: ok: {l}")),
            Err(e) => panic!("busy-loop cleanup check failed: {e}"),
        }
    }

    let w5_rounds = calibrate_spin(sizes.w5_seconds);
    let payload: Vec<u8> = (0..sizes.w4_bytes).map(|i| (i % 251) as u8).collect();
    // W4's one-time check and warm-up: the bytes come back unchanged.
    assert_eq!(pool.apply(echo, payload.clone()).expect("echo"), payload);

    eprintln!(
        "compare: {} repetitions{}, {} CPUs, load average {load_before}, W5 spin = {w5_rounds} rounds",
        opts.reps,
        if opts.quick { " (--quick sizes)" } else { "" },
        cpus,
    );

    let bench = Bench {
        sizes: &sizes,
        w5_rounds,
        payload: &payload,
    };
    let mut steps = vec![Step::W1, Step::W2, Step::W3, Step::W4, Step::W5, Step::W6];
    steps.extend(sizes.w7.iter().map(|&n| Step::W7(n)));
    // After W7 (the workload that grows this process most), then the quiet machine's own new
    // workloads, then the busy machine's, last, so that the load comes and goes once.
    steps.extend([Step::W6Here, Step::W8c, Step::W10]);
    steps.extend([Step::W8a, Step::W8b, Step::W8d]);
    let mut busy_secs = 0.0;

    let mut reps: Vec<Metrics> = Vec::new();
    let mut python_version = None;
    let mut python_failed: Option<String> = None;
    // Seconds spent per side, for the time budget.
    let (mut fp_secs, mut py_secs, mut raw_secs) = (0.0, 0.0, 0.0);
    for rep in 0..opts.reps {
        let rep_start = Instant::now();
        let mut m = Metrics::new();
        let mut python = if opts.python && python_failed.is_none() {
            let start = Instant::now();
            let started = Python::start(&sizes);
            py_secs += start.elapsed().as_secs_f64();
            match started {
                Ok(p) => {
                    python_version = Some(p.version.clone());
                    Some(p)
                }
                Err(e) => {
                    eprintln!("compare: Python skipped from now on: {e}");
                    python_failed = Some(e);
                    None
                }
            }
        } else {
            None
        };
        let mut load: Option<BusyLoad> = None;
        for &step in &steps {
            if step.busy() && load.is_none() {
                load = Some(BusyLoad::start(cpus, busy::ALARM_SECS).expect("start the busy loops"));
            } else if !step.busy() {
                load = None;
            }
            let python_runs = match step {
                Step::W7(n) => rep == 0 || !sizes.w7_python_once.contains(&n),
                Step::W8c => false,
                _ => true,
            };
            // Alternate the order, so that neither side always runs first.
            let order = if rep % 2 == 0 {
                [Side::Raw, Side::Forkpool, Side::Python]
            } else {
                [Side::Python, Side::Forkpool, Side::Raw]
            };
            for side in order {
                let start = Instant::now();
                let ran = match side {
                    Side::Raw => raw_step(step, &sizes, &payload, &mut m),
                    Side::Forkpool => {
                        forkpool_step(&pool, step, &bench, &mut m);
                        true
                    }
                    Side::Python => {
                        let ran = python.is_some() && python_runs;
                        if let (Some(p), true) = (python.as_mut(), python_runs) {
                            if let Err(e) = p.step(step, &sizes, &mut m) {
                                eprintln!("compare: Python skipped from now on: {e}");
                                python_failed = Some(e);
                                if let Some(p) = python.take() {
                                    p.kill();
                                }
                            }
                        }
                        ran
                    }
                };
                if !ran {
                    continue;
                }
                let secs = start.elapsed().as_secs_f64();
                let total = match side {
                    Side::Raw => &mut raw_secs,
                    Side::Forkpool => &mut fp_secs,
                    Side::Python => &mut py_secs,
                };
                *total += secs;
                put(&mut m, format!("secs.{side:?}.{step:?}"), secs);
            }
        }
        if let Some(mut l) = load.take() {
            let running = l.running();
            busy_secs += l.age();
            put(&mut m, "diag.busy_loops_at_end", running as f64);
            if running < cpus {
                eprintln!(
                    "compare: only {running} of {cpus} busy loops still ran at the end of the \
                     busy phase: its figures were partly taken on a quieter machine"
                );
            }
        }
        if let Some(p) = python {
            p.finish();
        }
        python_metrics(&mut m, &sizes);
        add_w7_growth(&mut m, "fp", &sizes);
        let py_w1 = m.get("py.w1").map_or("–".into(), |v| num(*v));
        eprintln!(
            "compare: repetition {}/{} done in {:.1} s (W1 forkpool {} tasks/s, Python {py_w1}); \
             so far forkpool {fp_secs:.0} s, Python {py_secs:.0} s, raw {raw_secs:.0} s",
            rep + 1,
            opts.reps,
            rep_start.elapsed().as_secs_f64(),
            num(m["fp.w1"]),
        );
        reps.push(m);
    }
    pool.close();
    pool.join().expect("join");
    drop(pool);

    // The pinned ping-pong once more, in a fresh process with no pool and no history: does
    // the harness's own state inflate the raw figure W3 is judged against?
    match run_self(
        &["--ping-pong", &sizes.ping_pongs.to_string()],
        "ping_pong ",
    ) {
        Ok(line) => {
            if let Some(v) = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
                put(&mut once, "diag.raw.pp_pin_fresh_med", v);
            }
        }
        Err(e) => eprintln!("compare: fresh-process ping-pong failed: {e}"),
    }

    // W9's big echo: once per run, in a fresh process.
    eprintln!(
        "compare: W9 echo of {} MiB in a fresh process",
        sizes.w9_bytes >> 20
    );
    match big_payload::run(sizes.w9_bytes) {
        Ok(r) => {
            put(&mut once, "fp.w9_ok", 1.0);
            put(&mut once, "fp.w9", r.mb_per_s);
            put(&mut once, "fp.w9_peak", r.peak_mib);
            put(&mut once, "diag.fp.w9_before_mib", r.before_mib);
        }
        Err(e) => {
            eprintln!("compare: W9 failed: {e}");
            put(&mut once, "fp.w9_ok", 0.0);
        }
    }

    // W7's imap peak RSS: once per run, each count in a fresh process.
    for n in sizes.imap {
        eprintln!("compare: imap over {n} items in a fresh process");
        match imap_rss(n) {
            Ok((mib, rate)) => {
                put(&mut once, format!("fp.imap_rss.{n}"), mib);
                put(&mut once, format!("fp.imap_rate.{n}"), rate);
            }
            Err(e) => eprintln!("compare: imap RSS for {n} items failed: {e}"),
        }
    }
    if let (Some(a), Some(b)) = (
        once.get(&format!("fp.imap_rss.{}", sizes.imap[0])),
        once.get(&format!("fp.imap_rss.{}", sizes.imap[1])),
    ) {
        let g = b / a;
        put(&mut once, "fp.imap_rss_growth", g);
    }

    let (cells, verdicts) = table(&rows(&sizes), &reps, std::slice::from_ref(&once));
    let wall = run_start.elapsed().as_secs_f64();

    let mut report = String::new();
    let _ = writeln!(
        report,
        "forkpool vs Python's multiprocessing.Pool vs the raw pipe limits, pools of {WORKERS} workers."
    );
    let _ = writeln!(
        report,
        "{} repetitions{}; {} CPUs; load average {} at the start, {} at the end; Python {}.",
        opts.reps,
        if opts.quick {
            " with --quick sizes"
        } else {
            ""
        },
        cpus,
        load_before,
        load_average(),
        match (&python_version, &python_failed, opts.python) {
            (_, _, false) => "skipped (--no-python)".to_string(),
            (_, Some(e), _) => format!("failed ({e})"),
            (Some(v), _, _) => format!("{v}, start method fork"),
            (None, None, _) => "?".to_string(),
        }
    );
    let _ = writeln!(report);
    report.push_str(&markdown(&cells));
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "Cells are medians over the repetitions. \"vs Python\" is how many times better forkpool \
         did (its rate ÷ Python's, or Python's time ÷ its time); \"forkpool ÷ baseline\" is \
         forkpool's number divided by the baseline's: the raw limit for W3-W5, forkpool itself \
         on new(C) for W8c and with a small parent for W10. Both are computed per repetition; the table shows \
         their median and, in brackets, their range. Targets are judged on those medians."
    );
    if !sizes.w7_python_once.is_empty() {
        let once: Vec<String> = sizes.w7_python_once.iter().map(u64::to_string).collect();
        let _ = writeln!(
            report,
            "Reduced repetitions: Python's W7 at {} tasks runs in the first repetition only (it \
             takes about half a minute); so does its row's and the growth row's Python column.",
            once.join(", ")
        );
    }
    let _ = writeln!(
        report,
        "Reduced repetitions: W7's imap peak RSS (VmHWM, each count in a fresh process) is \
         measured once per run, not per repetition."
    );
    let _ = writeln!(
        report,
        "W6 and W8d run in a fresh process on both sides (this binary with a hidden --w6 \
         option; python_pool.py --w6-only), so that no pool is forked from a process grown by \
         the other workloads; the \"W6 in the harness process\" rows run in this process \
         (Python's after the others: in its serving process, after its workloads)."
    );
    let _ = writeln!(
        report,
        "{}",
        if opts.init {
            "This process called forkpool::init() first, as the docs recommend for programs \
             that grow: its pools' fork servers come from a zygote of the program as it was \
             then (--no-init leaves it out; the W10 \"no init()\" rows show that cost)."
        } else {
            "This process did not call forkpool::init() (--no-init): its pools' fork servers \
             are copies of the process as it has grown."
        }
    );
    let _ = writeln!(
        report,
        "W5: each implementation's own speedup (serial in one process ÷ on the pool); the spin \
         loop is calibrated separately in each language (Rust: {w5_rounds} rounds)."
    );
    let _ = writeln!(report);
    let _ = writeln!(report, "Raw limits (medians over the repetitions):");
    for (key, what) in [
        (
            "raw.pp_pin_med",
            "ping-pong, both pinned to one CPU: median µs",
        ),
        (
            "raw.pp_pin_p99",
            "ping-pong, both pinned to one CPU: p99 µs",
        ),
        ("raw.pp_unpin_med", "ping-pong, unpinned: median µs"),
        ("raw.pp_unpin_p99", "ping-pong, unpinned: p99 µs"),
    ] {
        let _ = writeln!(report, "- {what}: {}", num(median(&collect(&reps, key))));
    }
    let _ = writeln!(
        report,
        "- ping-pong, both pinned to one CPU, once in a fresh process (no pool, no history): \
         median µs: {}",
        once.get("diag.raw.pp_pin_fresh_med")
            .map_or("–".into(), |v| num(*v))
    );
    for (i, (name, _, _)) in ECHO_VARIANTS.iter().enumerate() {
        let _ = writeln!(
            report,
            "- {} MiB echo, {name}: {} MB/s",
            sizes.w4_bytes >> 20,
            num(median(&collect(&reps, &format!("raw.echo{i}"))))
        );
    }
    let _ = writeln!(report);
    report.push_str(&notes(&sizes, &reps, &once, busy_secs));
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "Targets: {} PASS, {} MISS{}.",
        verdicts.pass,
        verdicts.miss,
        if verdicts.unknown > 0 {
            format!(", {} not measured", verdicts.unknown)
        } else {
            String::new()
        }
    );
    for line in &verdicts.lines {
        let _ = writeln!(report, "- {line}");
    }
    let _ = writeln!(report);
    let _ = writeln!(report, "Wall time: {wall:.0} s.");

    println!();
    print!("{report}");
    let dir = target_dir();
    let path = dir.join("compare.md");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &report)) {
        Ok(()) => println!("Written to {}", path.display()),
        Err(e) => eprintln!("compare: cannot write {}: {e}", path.display()),
    }
    // Every number of every repetition, for a closer look at the noise.
    let keys: std::collections::BTreeSet<&String> =
        reps.iter().chain([&once]).flat_map(|m| m.keys()).collect();
    let mut tsv = String::from("key");
    for rep in 1..=reps.len() {
        let _ = write!(tsv, "\trep{rep}");
    }
    tsv.push_str("\tonce\n");
    for key in keys {
        tsv.push_str(key);
        for m in reps.iter().chain([&once]) {
            let _ = write!(
                tsv,
                "\t{}",
                m.get(key).map_or(String::new(), |v| v.to_string())
            );
        }
        tsv.push('\n');
    }
    let path = dir.join("compare-reps.tsv");
    match std::fs::write(&path, tsv) {
        Ok(()) => println!("Per-repetition numbers: {}", path.display()),
        Err(e) => eprintln!("compare: cannot write {}: {e}", path.display()),
    }
}
