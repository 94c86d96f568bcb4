//! The shortest useful program: a pool, one task, a map, a clean shutdown.
//!
//! Run with `cargo run --example quickstart`.

use forkpool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> forkpool::Result<()> {
    // Build the pool first thing in main, before any other thread exists.
    let pool = Pool::new(4)?;

    let one = pool.apply_async(square, 7)?;
    let all = pool.map(square, 0..10)?;
    println!("7 squared is {}", one.get()?);
    println!("squares of 0..10: {all:?}");

    pool.close();
    pool.join()?;
    Ok(())
}
