//! A large parent: how much a program's size costs its pool, with and without
//! `forkpool::init()` (issue 9, W10; an indicative harness, not a benchmark suite).
//!
//! ```sh
//! cargo run --release --example large_parent -- [--init] [--mib N]
//! ```
//!
//! With `--init`, `forkpool::init()` runs first, before the parent fills `N` MiB (default
//! 2048; 0 for a small parent). Then it reports W6 (`Pool::new(2)`, one task, `close`, `join`;
//! the median of 7) and the rate of tasks through `Pool(2)` with `max_tasks_per_child(1)`, a
//! fork per task. Without `init()` every worker fork copies the parent's page tables (the fork
//! server is a copy of the whole parent); with it, the server is a copy of the small program
//! that called `init()`.

use std::time::{Duration, Instant};

use forkpool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> forkpool::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let init = args.iter().any(|a| a == "--init");
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .map_or(2048, |n| n.parse().expect("--mib takes a number"));
    if init {
        forkpool::init()?;
    }
    // Resident, not just reserved: touch every page.
    let mut ballast = vec![0u8; mib << 20];
    for page in ballast.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&ballast);

    let mut w6: Vec<Duration> = (0..7)
        .map(|_| {
            let start = Instant::now();
            let pool = Pool::new(2).expect("Pool::new");
            assert_eq!(pool.apply(square, 3).expect("task"), 9);
            pool.close();
            pool.join().expect("join");
            start.elapsed()
        })
        .collect();
    w6.sort();

    let tasks = 200u64;
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .build()?;
    let start = Instant::now();
    let results: Vec<_> = (0..tasks)
        .map(|i| pool.apply_async(square, i))
        .collect::<forkpool::Result<_>>()?;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.get()?, (i * i) as u64);
    }
    let rate = tasks as f64 / start.elapsed().as_secs_f64();
    pool.close();
    pool.join()?;

    println!(
        "parent {mib} MiB, init() {}: W6 median {:.2?} (min {:.2?}, max {:.2?}); \
         max_tasks_per_child(1): {rate:.0} tasks/s",
        if init { "yes" } else { "no " },
        w6[3],
        w6[0],
        w6[6],
    );
    drop(ballast);
    Ok(())
}
