//! A small benchmark of the MPI pool, for the figures in the README beside mpi4py's
//! (`benches/mpi4py_pool.py` runs the same workloads with `mpi4py.util.pool.Pool`):
//!
//! - W1: `apply_async` of a trivial task, 20,000 times, then `get` them all (tasks per second);
//! - W3: `apply` round trip of a trivial task, median of 2,000 (microseconds);
//! - W5: 4 CPU-bound tasks of about 0.5 s each, pool against serial on rank 0 (speedup);
//! - idle: CPU time used by every process of this binary (all ranks, fork servers and
//!   workers) over 2 s while the pool is open and has nothing to do (percent of one CPU).
//!
//! ```text
//! cargo build --release --features mpi --example mpi_bench
//! mpirun -n 3 --oversubscribe ./target/release/examples/mpi_bench
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use forkpool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn spin((seed, rounds): (u64, u64)) -> u64 {
    let mut x = seed | 1;
    for _ in 0..black_box(rounds) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Rounds of `spin` that take about `secs` here.
fn calibrate(secs: f64) -> u64 {
    let rounds = 20_000_000;
    let start = Instant::now();
    black_box(spin((1, rounds)));
    (rounds as f64 * secs / start.elapsed().as_secs_f64()) as u64
}

/// utime + stime, in clock ticks, of every process running this executable.
fn cpu_ticks() -> u64 {
    let me = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&me) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // After the command: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(14) + field(15);
    }
    total
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> forkpool::Result<()> {
    let pool = Pool::builder().mpi().build()?;
    // Only rank 0 gets here; calibrated while the pool's ranks sleep.
    let rounds = calibrate(0.5);
    println!("pool of {} workers", pool.processes());
    pool.map(square, 0..1_000u64)?; // warm up every rank

    let mut w1 = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let pending: Vec<_> = (0..20_000u64)
            .map(|i| pool.apply_async(square, i))
            .collect::<Result<_, _>>()?;
        for (i, r) in pending.into_iter().enumerate() {
            assert_eq!(r.get()?, square(i as u64));
        }
        w1.push(20_000.0 / start.elapsed().as_secs_f64());
    }
    println!(
        "W1 apply_async 20k: {:.0} tasks/s (median of 3)",
        median(w1)
    );

    let mut w3 = Vec::with_capacity(2_000);
    for i in 0..2_100u64 {
        let start = Instant::now();
        assert_eq!(pool.apply(square, i)?, square(i));
        if i >= 100 {
            w3.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    println!("W3 apply round trip: {:.1} us median of 2000", median(w3));

    let tasks: Vec<(u64, u64)> = (0..4).map(|i| (i, rounds)).collect();
    let start = Instant::now();
    let serial: Vec<u64> = tasks.iter().map(|&t| spin(black_box(t))).collect();
    let serial_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let parallel = pool.map_chunked(spin, tasks, 1)?;
    let parallel_secs = start.elapsed().as_secs_f64();
    assert_eq!(serial, parallel);
    println!(
        "W5 4 CPU-bound tasks: {:.2}x serial ({serial_secs:.2} s serial, {parallel_secs:.2} s pool)",
        serial_secs / parallel_secs
    );

    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks() - before;
    let secs = start.elapsed().as_secs_f64();
    // Linux reports these times in 1/100 s.
    println!(
        "idle open pool: {:.1}% of one CPU ({ticks} ticks of 10 ms in {secs:.1} s, all ranks)",
        ticks as f64 / 100.0 / secs * 100.0
    );
    pool.close();
    pool.join()
}
