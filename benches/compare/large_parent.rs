//! W10, a large parent: a program holding 2 GiB resident (filled, not just reserved) builds
//! pools. Measured in a fresh process (this binary with the hidden `--large-parent` option;
//! Python's with `python_pool.py --large-parent`), so that the 2 GiB distort nothing else.
//!
//! Each run reports W6 (the median life of `Pool::new(2)`, one task, close, join, drop) and the
//! rate of tasks through `Pool(2)` with `max_tasks_per_child(1)`, where every task costs a
//! worker's fork. The harness runs it with the ballast and without (the small parent), and
//! Python's with the same ballast.
//!
//! `W10-init`: the setup the docs recommend for large programs is `forkpool::init()` first in
//! `main`, before the ballast is allocated. [`init`] is where that call goes; the harness runs
//! W10 with it, and again without it for comparison.

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::Instant;

use forkpool::Pool;

use crate::{parse_flat_json, proc_status_kib, run_self, square, w6_lives, Json};

/// Whether this build has `forkpool::init()`, so that the "with init()" variant runs.
pub const INIT_AVAILABLE: bool = true;

/// The setup the docs recommend for large programs, called first in the child's `main`.
fn init() -> Result<(), String> {
    forkpool::init().map_err(|e| format!("forkpool::init: {e}"))
}

/// Tasks submitted at once through the max_tasks_per_child(1) pool, between two looks at the
/// clock.
const BATCH: u64 = 10;

/// What one large-parent run measured.
pub struct Measured {
    /// W6, median ms.
    pub w6_ms: f64,
    /// Tasks per second through Pool(2) with max_tasks_per_child(1).
    pub mtpc_rate: f64,
    /// The parent's resident set while it measured, MiB.
    pub rss_mib: f64,
}

/// The hidden `--large-parent <MiB> <W6 lives> <tasks> <seconds> [--init]` mode. The
/// max_tasks_per_child(1) rate is taken over batches of [`BATCH`] tasks until `tasks` are done
/// or `seconds` have passed (at least two batches): a few thousand tasks a second with a small
/// parent, a few with a large one, both measured for long enough.
pub fn child(mib: usize, w6_iters: usize, tasks: u64, seconds: f64, with_init: bool) {
    if with_init {
        init().expect("W10-init");
    }
    // Filled with ones, so every page is resident (zeroes could stay unfaulted).
    let ballast = vec![1u8; mib << 20];
    black_box(&ballast);
    let rss_kib = proc_status_kib("VmRSS");
    let w6_ms = w6_lives(w6_iters, 2);
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .build()
        .expect("pool with max_tasks_per_child(1)");
    let start = Instant::now();
    let mut done = 0;
    while done < tasks.max(2 * BATCH)
        && (done < 2 * BATCH || start.elapsed().as_secs_f64() < seconds)
    {
        let pending: Vec<_> = (done..done + BATCH)
            .map(|i| (i, pool.apply_async(square, i).expect("submit")))
            .collect();
        for (i, r) in pending {
            assert_eq!(r.get().expect("task"), square(i));
        }
        done += BATCH;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    pool.close();
    pool.join().expect("join");
    drop(pool);
    // The ballast must stay resident until here.
    assert!(black_box(&ballast).get(mib << 19).is_none_or(|&b| b == 1));
    println!("large_parent {w6_ms} {rate} {rss_kib}");
}

/// Runs [`child`] in a fresh copy of this binary.
pub fn run_forkpool(
    mib: usize,
    w6_iters: usize,
    (tasks, seconds): (u64, f64),
    with_init: bool,
) -> Result<Measured, String> {
    let (mib_s, w6_s) = (mib.to_string(), w6_iters.to_string());
    let (tasks_s, secs_s) = (tasks.to_string(), seconds.to_string());
    let mut args = vec!["--large-parent", &mib_s, &w6_s, &tasks_s, &secs_s];
    if with_init {
        args.push("--init");
    }
    let line = run_self(&args, "large_parent ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    match f[..] {
        [w6_ms, mtpc_rate, rss_kib] => Ok(Measured {
            w6_ms,
            mtpc_rate,
            rss_mib: rss_kib / 1024.0,
        }),
        _ => Err(format!("large-parent child printed {line:?}")),
    }
}

/// `python3 benches/python_pool.py --json --large-parent MiB`: the same on Python's Pool.
pub fn run_python(
    mib: usize,
    w6_iters: usize,
    (tasks, seconds): (u64, f64),
) -> Result<Measured, String> {
    let out = Command::new("python3")
        .arg(crate::PYTHON_SCRIPT)
        .args(["--json", "--large-parent", &mib.to_string()])
        .args(["--w6-iters", &w6_iters.to_string()])
        .args(["--mtpc-tasks", &tasks.to_string()])
        .args(["--mtpc-seconds", &seconds.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("python_pool.py --large-parent: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("no JSON from python_pool.py --large-parent: {text:?}"))?;
    let map = parse_flat_json(line)?;
    let num = |k: &str| match map.get(k) {
        Some(Json::Num(v)) => Ok(*v),
        _ => Err(format!("python_pool.py --large-parent gave no {k}: {line}")),
    };
    Ok(Measured {
        w6_ms: num("w6_ms")?,
        mtpc_rate: num("mtpc_tasks_per_s")?,
        rss_mib: num("rss_kib")? / 1024.0,
    })
}
