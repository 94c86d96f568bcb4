//! The job forkpool started from: 27 crawl jobs on a pool of 4 processes.
//!
//! It is the Python program people wrote when the GIL pushed them from threads to processes:
//!
//! ```text
//! pool = Pool(4)
//! for name in sites:
//!     pool.apply_async(crawl, (name,))
//! pool.close()
//! pool.join()
//! print("All subprocesses done.")
//! ```
//!
//! Each task runs an external command (`sh -c 'echo crawling NAME; sleep 0.2'`) with
//! `std::process::Command` and returns what it printed and which worker ran it, or why it
//! failed. The 27 jobs are submitted with `apply_async`; then `close` stops the pool taking
//! more, `join` waits for the workers to finish them all and exit, and `get` collects each
//! result, reporting every error: a command that failed (the task's own `Err`) or a task that
//! failed in the pool (a panic, a worker that died). Four at a time, the jobs take about 1.5
//! seconds.
//!
//! Run with `cargo run --example crawl`.

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
        "{} (worker {})",
        printed.trim_end(),
        std::process::id()
    ))
}

fn main() -> forkpool::Result<()> {
    // Build the pool first thing in main, before any other thread exists.
    let pool = Pool::new(4)?;

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
    if failed > 0 {
        eprintln!("{failed} of {} jobs failed", SITES.len());
        std::process::exit(1);
    }
    Ok(())
}
