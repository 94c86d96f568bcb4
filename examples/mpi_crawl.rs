//! The crawl job of `crawl.rs`, spread over the ranks of an MPI job: 27 commands on a pool of
//! 4 workers in total, 2 on each serving rank of `mpirun -n 3`.
//!
//! The only change from the local program is `.mpi()` on the builder. Rank 0 runs `main` past
//! `build()`: it submits the jobs, closes the pool, waits, and prints the results. Ranks 1 and
//! 2 never return from `build()`: each runs a local pool of 2 workers, relays rank 0's tasks
//! into it, and exits with status 0 once rank 0 closes the pool.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_crawl
//! mpirun -n 3 ./target/release/examples/mpi_crawl        # 2 serving ranks x 2 workers
//! srun -n 3 ./target/release/examples/mpi_crawl          # the same under Slurm
//! ```
//!
//! (As root, Open MPI also wants `OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`,
//! and more ranks than cores want `--oversubscribe`.) Run without `mpirun`, it is a local pool
//! of 2 workers.

use std::process::Command;

use forkpool::Pool;

const SITES: [&str; 27] = [
    "alpha.example",
    "bravo.example",
    "charlie.example",
    "delta.example",
    "echo.example",
    "foxtrot.example",
    "golf.example",
    "hotel.example",
    "india.example",
    "juliett.example",
    "kilo.example",
    "lima.example",
    "mike.example",
    "november.example",
    "oscar.example",
    "papa.example",
    "quebec.example",
    "romeo.example",
    "sierra.example",
    "tango.example",
    "uniform.example",
    "victor.example",
    "whiskey.example",
    "xray.example",
    "yankee.example",
    "zulu.example",
    "omega.example",
];

/// Runs in a worker process: crawls one site (here, a shell command that pretends to) and
/// returns the command's output with the worker's pid, or why it failed.
fn crawl(name: String) -> Result<String, String> {
    // The name goes in as "$1", not spliced into the script, so no name can inject shell code.
    let output = Command::new("sh")
        .args(["-c", r#"echo crawling "$1"; sleep 0.2"#, "sh", &name])
        .output()
        .map_err(|e| format!("could not run sh: {e}"))?;
    if !output.status.success() {
        return Err(format!("sh {}", output.status));
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    Ok(format!(
        "{} (worker {} of rank {})",
        printed.trim_end(),
        std::process::id(),
        std::env::var("OMPI_COMM_WORLD_RANK")
            .or_else(|_| std::env::var("PMI_RANK"))
            .unwrap_or_else(|_| "0".into())
    ))
}

fn main() -> forkpool::Result<()> {
    // First thing in main, on every rank: on ranks other than 0 this never returns.
    let pool = Pool::builder().processes(2).mpi().build()?;
    println!("a pool of {} workers", pool.processes());

    let mut jobs = Vec::with_capacity(SITES.len());
    for name in SITES {
        jobs.push((name, pool.apply_async(crawl, name.to_string())?));
    }
    pool.close();
    pool.join()?;

    let mut failed = 0;
    for (name, job) in jobs {
        match job.get() {
            Ok(Ok(output)) => println!("{name}: {output}"),
            Ok(Err(message)) => {
                failed += 1;
                eprintln!("{name}: the command failed: {message}");
            }
            Err(error) => {
                failed += 1;
                eprintln!("{name}: the task failed: {error}");
            }
        }
    }
    println!("All subprocesses done.");
    for host in pool.host_stats() {
        println!(
            "rank {} on {}: {} workers ran {} of the jobs, {} failed",
            host.rank, host.host, host.workers, host.completed, host.failed
        );
    }
    if failed > 0 {
        eprintln!("{failed} of {} jobs failed", SITES.len());
        std::process::exit(1);
    }
    Ok(())
}
