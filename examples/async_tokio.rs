//! CPU-heavy work offloaded from async code: tokio tasks await the pool's results while the
//! runtime stays free to do other things.
//!
//! An `AsyncResult` is a `Future`, so an async task submits with `apply_async` and `.await`s
//! the result: the work runs in a worker process and the await parks no runtime thread. Here
//! six tokio tasks each count the primes below some limit in the pool, while a seventh ticks
//! every 100 ms and reports how late each tick came (a runtime busy with the counting itself
//! would fall behind) and what the pool is doing. Then `tokio::time::timeout` around an await:
//! one that answers in time, and one given up on.
//!
//! `forkpool::init()` runs first, before the runtime: it forks the zygote that every pool's
//! fork server comes from, and fork copies only the calling thread, so it must come before
//! tokio starts its threads (after it, pools can be built anywhere, inside the runtime too).
//! That is why `main` builds the runtime with `tokio::runtime::Builder` rather than
//! `#[tokio::main]`, which would start it first.
//!
//! Run with `cargo run --example async_tokio`. It takes a second or two.

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forkpool::Pool;

/// Runs in a worker: the number of primes below `limit`, by trial division (slow on purpose).
fn count_primes(limit: u64) -> u64 {
    (2..limit).filter(|&n| is_prime(n)).count() as u64
}

fn is_prime(n: u64) -> bool {
    n == 2
        || n % 2 == 1
            && (3..)
                .step_by(2)
                .take_while(|d| d * d <= n)
                .all(|d| n % d != 0)
}

fn main() -> Result<(), Box<dyn Error>> {
    // First thing in main, before any other thread exists: before the runtime.
    forkpool::init()?;
    let pool = Arc::new(Pool::new(2)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()?;
    runtime.block_on(run(Arc::clone(&pool)))?;
    drop(runtime);

    pool.close();
    pool.join()?;
    let stats = pool.stats();
    println!(
        "pool: {} tasks, {} failed ({} timed out)",
        stats.submitted, stats.failed, stats.timed_out
    );
    Ok(())
}

async fn run(pool: Arc<Pool>) -> Result<(), Box<dyn Error>> {
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));

    let ticker = tokio::spawn({
        let (pool, done) = (Arc::clone(&pool), Arc::clone(&done));
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            let mut worst = Duration::ZERO;
            let mut tick = 0;
            while !done.load(Ordering::Relaxed) {
                let due = interval.tick().await;
                let late = due.elapsed();
                worst = worst.max(late);
                if tick % 3 == 0 {
                    let stats = pool.stats();
                    println!(
                        "  tick {tick:2} at {:4} ms, {late:.1?} late: {} running, {} queued",
                        start.elapsed().as_millis(),
                        stats.running,
                        stats.queued
                    );
                }
                tick += 1;
            }
            worst
        }
    });

    // Six tokio tasks, each awaiting one count in the pool. Two workers run two at a time; the
    // rest wait in the pool's queue, and their awaits hold no thread meanwhile.
    let mut jobs = Vec::new();
    for limit in (100_000..=350_000).step_by(50_000) {
        let pool = Arc::clone(&pool);
        jobs.push(tokio::spawn(async move {
            let primes = pool.apply_async(count_primes, limit)?.await?;
            println!(
                "primes below {limit}: {primes} (done at {} ms)",
                start.elapsed().as_millis()
            );
            Ok::<_, forkpool::Error>(primes)
        }));
    }
    // Await the JoinHandles in turn: the tasks run concurrently whatever order we await them.
    // The first `?` is tokio's (the task panicked or was cancelled), the second the pool's.
    let mut total = 0;
    for job in jobs {
        total += job.await??;
    }
    println!("all six counts done: {total} primes in all");

    // A timeout around an await: this one answers well within its limit...
    let quick = pool.apply_async(count_primes, 10_000)?;
    match tokio::time::timeout(Duration::from_secs(5), quick).await {
        Ok(primes) => println!("primes below 10000: {} (within the timeout)", primes?),
        Err(_) => println!("primes below 10000: no answer within 5 s"),
    }
    // ...and this one does not. Dropping the future stops the wait, not the task, which runs on
    // in its worker process (and `join` would wait for it). So it is also submitted with a
    // limit of its own, at which the pool kills it.
    let slow = pool.apply_async_timeout(count_primes, u64::MAX, Duration::from_millis(300))?;
    match tokio::time::timeout(Duration::from_millis(200), slow).await {
        Ok(primes) => println!("primes below 2^64: {primes:?}"),
        Err(_) => println!("primes below 2^64: gave up waiting after 200 ms"),
    }

    done.store(true, Ordering::Relaxed);
    let worst = ticker.await?;
    println!(
        "the ticker was never more than {worst:.1?} late; finished after {} ms",
        start.elapsed().as_millis()
    );
    Ok(())
}
