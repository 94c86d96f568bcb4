//! A batch job with a live progress bar: 5,000 tasks through `imap_unordered`, the bar moving
//! one step per result and its message showing what the pool is doing, from `Pool::stats`.
//!
//! Each task hashes for a while, the amount fixed by its input (0.1 to 0.7 ms in a debug build,
//! a fifth of that in release), and every 1000th one panics, as a task on bad data would: that
//! item fails with `Error::TaskPanicked`, the failure is reported, and the job goes on. At the
//! end a summary line gives the counts and the time taken: about a second and a half on two
//! idle cores in a debug build.
//!
//! The bar is drawn on stderr, and indicatif hides it when stderr is not a terminal (in CI, or
//! with `2>log`); the failures and the summary print either way.
//!
//! Run with `cargo run --example progress`.

use std::time::{Duration, Instant};

use forkpool::Pool;
use indicatif::{ProgressBar, ProgressStyle};

const TASKS: u64 = 5_000;

/// Runs in a worker: some CPU work whose amount depends only on `n`, then its digest.
fn digest(n: u64) -> u64 {
    if n % 1000 == 999 {
        // The message reaches us in `Error::TaskPanicked`; the pool is built with
        // `print_panics(false)` so that the worker prints no line that would tear the bar.
        panic!("item {n} is malformed");
    }
    let rounds = 20_000 + n.wrapping_mul(7919) % 100_000;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ n; // FNV-1a, over the round numbers
    for i in 0..rounds {
        hash ^= i;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    std::hint::black_box(hash)
}

fn main() -> forkpool::Result<()> {
    // Build the pool first thing in main, before any other thread exists (indicatif's ticker
    // would be one).
    let pool = Pool::builder().print_panics(false).build()?;
    let start = Instant::now();

    let bar = ProgressBar::new(TASKS).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} {wide_bar:.cyan/blue} {pos}/{len} eta {eta} {msg}",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));

    let (mut ok, mut failed, mut checksum) = (0u64, 0u64, 0u64);
    for result in pool.imap_unordered(digest, 0..TASKS)? {
        match result {
            Ok(hash) => {
                ok += 1;
                checksum ^= hash;
            }
            Err(error) => {
                failed += 1;
                // suspend, not bar.println: println prints nothing while the bar is hidden.
                bar.suspend(|| eprintln!("task failed: {error}"));
            }
        }
        let stats = pool.stats();
        bar.set_message(format!(
            "running {}, queued {}, failed {}, workers {}",
            stats.running, stats.queued, stats.failed, stats.workers_alive
        ));
        bar.inc(1);
    }
    bar.finish();

    let (elapsed, workers) = (start.elapsed(), pool.processes());
    println!(
        "{ok} ok, {failed} failed in {elapsed:.2?} on {workers} workers (checksum {checksum:x})"
    );
    pool.close();
    pool.join()?;
    if ok + failed != TASKS {
        eprintln!("lost {} results", TASKS - ok - failed);
        std::process::exit(1);
    }
    Ok(())
}
