//! The program `tests/mpi.rs` launches under `mpirun`: one scenario per argument, each printing
//! what the test checks. Not an example to copy; see `mpi_crawl.rs` for that.
//!
//! `mpirun -n 3 --oversubscribe target/debug/examples/mpi_probe map`

use std::time::Duration;

use std::path::{Path, PathBuf};
use std::time::Instant;

use forkpool::{AsyncResult, Error, HostStats, Pool};

/// Which build this is: the mismatch test patches this marker in a copy of the binary.
static VARIANT: &str = "forkpool-mpi-probe-variant-A";

fn square(x: u64) -> u64 {
    x * x
}

/// The MPI rank whose worker ran the task (workers inherit the launcher's environment).
fn rank_of_worker() -> i32 {
    std::env::var("OMPI_COMM_WORLD_RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(-1)
}

/// Segfaults if it runs on rank 2, else returns the rank it ran on.
fn segv_on_rank2(_: u32) -> i32 {
    let rank = rank_of_worker();
    if rank == 2 {
        // SAFETY: none; this is the crash the test wants.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    }
    // Long enough that tasks spread over both serving ranks.
    std::thread::sleep(Duration::from_millis(20));
    rank
}

static INITIALIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init() {
    INITIALIZED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this worker ran the initializer, and its pid.
fn initialized(_: u32) -> (bool, u32) {
    std::thread::sleep(Duration::from_millis(5));
    (
        INITIALIZED.load(std::sync::atomic::Ordering::Relaxed),
        std::process::id(),
    )
}

/// Open MPI's yield-when-idle setting as a worker of a serving rank inherited it.
fn yield_setting(_: ()) -> String {
    std::env::var("OMPI_MCA_mpi_yield_when_idle").unwrap_or_else(|_| "unset".into())
}

fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

fn nap(ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(ms));
    rank_of_worker()
}

/// Kills the serving rank this task's worker belongs to (the fork server's parent).
fn kill_my_rank(_: ()) -> i32 {
    let ppid = |pid: u32| -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    let server = ppid(std::process::id());
    let rank = ppid(server);
    let _ = std::process::Command::new("kill")
        .args(["-9", &rank.to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(30));
    0
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_else(|| "map".into());
    let mut builder = Pool::builder().processes(2).mpi();
    if scenario == "timeout" {
        builder = builder.task_timeout(Duration::from_millis(500));
    }
    if scenario == "limits" {
        builder = builder.initializer(init).max_tasks_per_child(2);
    }
    if scenario == "rank0" || scenario == "each_rank0" || scenario == "cancel_rank0" {
        builder = builder.mpi_rank0_workers(true);
    }
    let pool = match builder.build() {
        Ok(pool) => pool,
        Err(e) => {
            println!("build failed: {e}");
            std::process::exit(2);
        }
    };
    println!("variant {VARIANT}");
    println!("processes {}", pool.processes());
    let outcome = match scenario.as_str() {
        "map" | "rank0" => map(&pool),
        "crash" => crash(&pool),
        "each" | "each_rank0" => each(&pool),
        "timeout" => timeout(&pool),
        "spread" => spread(&pool),
        "limits" => limits(&pool),
        "terminate" => terminate(&pool),
        "idle" => {
            idle();
            Ok(())
        }
        "long" => long(&pool),
        "loop" => apply_loop(&pool),
        "cancel" | "cancel_rank0" => cancel(&pool),
        "yield" => pool
            .apply(yield_setting, ())
            .map(|setting| println!("yield_when_idle {setting}"))
            .map_err(|e| e.to_string()),
        "lost" => {
            let r = pool.apply(kill_my_rank, ());
            println!("lost rank: {r:?}");
            Ok(())
        }
        other => {
            println!("unknown scenario {other}");
            std::process::exit(2);
        }
    };
    if let Err(e) = outcome {
        println!("FAILED: {e}");
        std::process::exit(1);
    }
    pool.close();
    pool.join().expect("join");
    println!("joined");
}

fn map(pool: &Pool) -> Result<(), String> {
    let n = 5_000u64;
    let got = pool.map(square, 0..n).map_err(|e| e.to_string())?;
    let want: Vec<u64> = (0..n).map(square).collect();
    if got != want {
        return Err("map: wrong results".into());
    }
    println!("map ok {}", got.len());
    let chunked = pool
        .map_chunked(square, 0..999u64, 7)
        .map_err(|e| e.to_string())?;
    if chunked != (0..999u64).map(square).collect::<Vec<_>>() {
        return Err("map_chunked: wrong results".into());
    }
    println!("map_chunked ok");
    let imap: Vec<u64> = pool
        .imap(square, 0..2_000u64)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if imap != (0..2_000u64).map(square).collect::<Vec<_>>() {
        return Err("imap: wrong results or order".into());
    }
    println!("imap ok");
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..500u64)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    unordered.sort_unstable();
    if unordered != (0..500u64).map(square).collect::<Vec<_>>() {
        return Err("imap_unordered: wrong results".into());
    }
    println!("imap_unordered ok");
    let pending: Vec<_> = (0..200u64)
        .map(|i| pool.apply_async(square, i))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for (i, r) in pending.into_iter().enumerate() {
        if r.get().map_err(|e| e.to_string())? != square(i as u64) {
            return Err("apply_async: wrong result".into());
        }
    }
    println!("apply_async ok");
    let (tx, rx) = std::sync::mpsc::channel();
    let _handle = pool
        .apply_async_with(square, 12, move |r| {
            let _ = tx.send(r.as_ref().ok().copied());
        })
        .map_err(|e| e.to_string())?;
    if rx.recv_timeout(Duration::from_secs(60)) != Ok(Some(144)) {
        return Err("apply_async_with: no callback".into());
    }
    println!("apply_async_with ok");
    let panicked = pool.apply(|_: ()| -> u8 { panic!("on purpose") }, ());
    if !matches!(panicked, Err(Error::TaskPanicked { ref message, ref location })
        if message == "on purpose"
            && location.as_deref().is_some_and(|l| l.contains("mpi_probe.rs")))
    {
        return Err(format!("panic: {panicked:?}"));
    }
    println!("panic ok");
    // Raw byte payloads (a Vec<u8> is its own encoding), past the 8 MiB batch size.
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let back = pool.apply(echo, big.clone()).map_err(|e| e.to_string())?;
    let several: Vec<_> = (0..6)
        .map(|_| pool.apply_async(echo, big[..3 << 20].to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let several: Vec<Vec<u8>> = several
        .into_iter()
        .map(|r| r.get())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if back != big || several.iter().any(|b| b[..] != big[..3 << 20]) {
        return Err("large arguments and results came back wrong".into());
    }
    println!("large ok");
    let ranks: std::collections::BTreeSet<i32> = pool
        .map(nap, vec![30; 8])
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    println!("ranks used {ranks:?}");
    let s = pool.stats();
    println!(
        "stats submitted={} completed={} failed={} panicked={} running={} queued={} workers={}",
        s.submitted, s.completed, s.failed, s.panicked, s.running, s.queued, s.workers_alive
    );
    if s.submitted != s.completed {
        return Err("stats: submitted and completed differ with nothing in flight".into());
    }
    host_stats(pool)
}

/// Prints `pool.host_stats()` and checks that it adds up to `pool.stats()`, with nothing in
/// flight.
fn host_stats(pool: &Pool) -> Result<(), String> {
    let s = pool.stats();
    let hosts = pool.host_stats();
    for h in &hosts {
        println!(
            "host rank={} on {}: workers={} sent={} completed={} failed={} died={} running={}",
            h.rank, h.host, h.workers, h.sent, h.completed, h.failed, h.died, h.running
        );
        if h.sent == 0 {
            return Err(format!("host stats: rank {} was sent nothing", h.rank));
        }
    }
    let sum = |field: fn(&HostStats) -> u64| hosts.iter().map(field).sum::<u64>();
    let pairs = [
        ("sent", sum(|h| h.sent), s.submitted),
        ("completed", sum(|h| h.completed), s.completed),
        ("failed", sum(|h| h.failed), s.failed),
        ("died", sum(|h| h.died), s.died),
        ("running", sum(|h| h.running), s.running),
        ("workers", sum(|h| h.workers), pool.processes() as u64),
    ];
    for (name, hosts, total) in pairs {
        if hosts != total {
            return Err(format!(
                "host stats: {name} adds up to {hosts}, stats say {total}"
            ));
        }
    }
    let ranks: Vec<u32> = hosts.iter().map(|h| h.rank).collect();
    println!("host stats add up: ranks {ranks:?}");
    Ok(())
}

fn crash(pool: &Pool) -> Result<(), String> {
    let results: Vec<_> = (0..24u32)
        .map(|i| pool.apply_async(segv_on_rank2, i))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let (mut died, mut ok) = (0, 0);
    for r in results {
        match r.get() {
            Ok(1) => ok += 1,
            Err(Error::WorkerDied {
                pid,
                cause,
                host: Some(host),
            }) => {
                if died == 0 {
                    println!("died: worker {pid} on {host}: {cause}");
                }
                died += 1;
            }
            other => return Err(format!("unexpected outcome {other:?}")),
        }
    }
    println!("crash: {died} died on rank 2, {ok} ok on rank 1");
    if died == 0 || ok == 0 {
        return Err("expected tasks on both ranks".into());
    }
    let after = pool.map(square, 0..100u64).map_err(|e| e.to_string())?;
    if after != (0..100u64).map(square).collect::<Vec<_>>() {
        return Err("the 100 tasks after the crash".into());
    }
    println!("after crash: 100 ok");
    let died: Vec<(u32, u64)> = pool.host_stats().iter().map(|h| (h.rank, h.died)).collect();
    println!("died per rank {died:?}");
    host_stats(pool)
}

/// Items per chunk in the `each` scenarios, and the position in every chunk of the item that
/// aborts its worker.
const EACH_CHUNK: u64 = 10;
const EACH_BAD: u64 = 6;
/// Chunks per run: enough that every rank (and rank 0's local pool) gets some.
const EACH_CHUNKS: u64 = 12;

/// Logs `x` to the file `path` (opened O_APPEND: one line per run, from any rank), then
/// aborts the worker if `x` is the bad item of its chunk; else `x * x` and the worker's rank.
fn log_then_abort((path, x): (String, u64)) -> (u64, i32) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .expect("the log");
    file.write_all(format!("{x}\n").as_bytes())
        .expect("a log line");
    if x % EACH_CHUNK == EACH_BAD {
        std::process::abort();
    }
    (x * x, rank_of_worker())
}

/// A worker's death in the middle of a chunk of `map_each_chunked` and of `imap_chunked`, on
/// whichever rank runs the chunk: only the item that aborted fails (WorkerDied, naming the
/// host of a serving rank), every other item has its result, and no item runs twice.
fn each(pool: &Pool) -> Result<(), String> {
    let n = EACH_CHUNK * EACH_CHUNKS;
    for form in ["map_each_chunked", "imap_chunked"] {
        let path = std::env::temp_dir()
            .join(format!(
                "forkpool-mpi-each-{form}-{}.log",
                std::process::id()
            ))
            .to_string_lossy()
            .into_owned();
        let _ = std::fs::remove_file(&path);
        let args = {
            let path = path.clone();
            (0..n).map(move |x| (path.clone(), x))
        };
        let each: Vec<forkpool::Result<(u64, i32)>> = match form {
            "map_each_chunked" => pool.map_each_chunked(log_then_abort, args, EACH_CHUNK as usize),
            _ => pool
                .imap_chunked(log_then_abort, args, EACH_CHUNK as usize)
                .map(|imap| imap.collect()),
        }
        .map_err(|e| format!("{form}: {e}"))?;
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let mut runs = vec![0; n as usize];
        for line in log.lines() {
            let x: usize = line
                .parse()
                .map_err(|_| format!("{form}: log line {line:?}"))?;
            *runs.get_mut(x).ok_or(format!("{form}: logged item {x}"))? += 1;
        }
        let (mut ok, mut died, mut named) = (0, 0, true);
        let mut died_on = std::collections::BTreeMap::new();
        for (x, r) in each.iter().enumerate() {
            let bad = x as u64 % EACH_CHUNK == EACH_BAD;
            match r {
                Ok((square, _)) if !bad && *square == (x * x) as u64 => ok += 1,
                Err(e) if bad && e.index() == Some(x) => {
                    let Error::WorkerDied { host, .. } = e.cause() else {
                        return Err(format!("{form}: item {x} failed with {e}"));
                    };
                    // The item before it ran in the same worker, just before.
                    let rank = match &each[x - 1] {
                        Ok((_, rank)) => *rank,
                        Err(e) => return Err(format!("{form}: item {} failed with {e}", x - 1)),
                    };
                    *died_on.entry(rank).or_insert(0) += 1;
                    // A serving rank's host is named; rank 0's own workers are local.
                    named &= host.is_some() == (rank != 0);
                    if died == 0 {
                        println!("each {form}: {e}");
                    }
                    died += 1;
                }
                other => return Err(format!("{form}: item {x}: {other:?}")),
            }
        }
        let once = runs.iter().all(|&r| r == 1);
        println!(
            "each {form}: {ok} ok, {died} died, every item ran once {once}, hosts named {named}, \
             deaths by rank {died_on:?}"
        );
        if !once {
            println!("each {form}: runs {runs:?}");
        }
    }
    Ok(())
}

fn timeout(pool: &Pool) -> Result<(), String> {
    let long: Vec<_> = (0..4)
        .map(|_| pool.apply_async(nap, 20_000))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let short: Vec<_> = (0..8)
        .map(|_| pool.apply_async(nap, 10))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut timed_out = 0;
    for r in long {
        match r.get() {
            Err(Error::TimedOut { limit, .. }) if limit == Duration::from_millis(500) => {
                timed_out += 1
            }
            other => return Err(format!("a long task ended with {other:?}")),
        }
    }
    let mut ranks = std::collections::BTreeSet::new();
    for r in short {
        ranks.insert(r.get().map_err(|e| e.to_string())?);
    }
    println!("timeout: {timed_out} timed out, short tasks ran on ranks {ranks:?}");
    // In a chunk of map_each, the limit is per item: only the item that overran fails.
    let each = pool
        .map_each_chunked(nap_at_2, 0..8u64, 4)
        .map_err(|e| e.to_string())?;
    let (mut ok, mut timed_out) = (0, 0);
    for (x, r) in each.iter().enumerate() {
        match r {
            Ok(rank) if x % 4 != 2 && *rank > 0 => ok += 1,
            Err(e) if x % 4 == 2 && e.index() == Some(x) => match e.cause() {
                Error::TimedOut { limit, .. } if *limit == Duration::from_millis(500) => {
                    timed_out += 1
                }
                other => return Err(format!("item {x} of map_each failed with {other}")),
            },
            other => return Err(format!("item {x} of map_each: {other:?}")),
        }
    }
    println!("timeout each: {ok} ok, {timed_out} timed out");
    Ok(())
}

/// Naps 20 s (past the pool's limit) for the item at position 2 of a chunk of 4, else 10 ms.
fn nap_at_2(x: u64) -> i32 {
    nap(if x % 4 == 2 { 20_000 } else { 10 })
}

/// CPU time (clock ticks of 10 ms) used so far by every process of this binary whose name
/// `count` accepts (all threads of each).
fn ticks(count: impl Fn(&str) -> bool) -> u64 {
    let me = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&me) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !count(&stat[open + 1..close]) {
            continue;
        }
        let fields: Vec<u64> = stat[close + 1..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        total += fields.iter().sum::<u64>();
    }
    total
}

/// CPU time (clock ticks of 10 ms) used so far by the calling thread.
fn thread_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

/// Prints the CPU time (clock ticks of 10 ms) every process of this binary used over 2 s with
/// the pool open and idle.
fn idle() {
    std::thread::sleep(Duration::from_millis(500));
    let before = ticks(|_| true);
    std::thread::sleep(Duration::from_secs(2));
    println!("idle ticks {}", ticks(|_| true) - before);
}

/// With every worker of every rank busy on a long task (one that sleeps, so that the machine's
/// load does not matter), prints the CPU time the ranks themselves (every process but the fork
/// servers and workers) used over 2 s: what the pool's polling takes from the workers.
fn long(pool: &Pool) -> Result<(), String> {
    let workers = pool.processes();
    let pending: Vec<_> = (0..workers)
        .map(|_| pool.apply_async(nap, 5_000))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // Let every task reach its worker and the polling settle.
    std::thread::sleep(Duration::from_millis(1_500));
    let ranks = |name: &str| !name.starts_with("forkpool-");
    // This thread's own reading of /proc is not the pool's: it is taken out.
    let (before, mine) = (ticks(ranks), thread_ticks());
    std::thread::sleep(Duration::from_secs(2));
    let mine = thread_ticks() - mine;
    let used = (ticks(ranks) - before).saturating_sub(mine);
    let mut ran = 0;
    for r in pending {
        r.get().map_err(|e| e.to_string())?;
        ran += 1;
    }
    println!("long ticks {used}, {ran} of {workers} ran");
    Ok(())
}

/// Sleeps (blocking waits: `poll`, futexes) of rank 0's MPI thread so far, from
/// `voluntary_ctxt_switches` in its `/proc` status; a `sched_yield` is not one.
fn mpi_thread_sleeps() -> Option<u64> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|task| {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            if comm.trim() != "forkpool-mpi" {
                return None;
            }
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse()
                .ok()
        })
}

/// A caller in a loop of `apply` (W3): prints how many times rank 0's MPI thread slept over
/// 1,000 round trips. Between an outcome and the caller's next task it should look for the
/// task rather than sleep until the task's submission wakes it through the pipe.
fn apply_loop(pool: &Pool) -> Result<(), String> {
    for i in 0..200u64 {
        pool.apply(square, i).map_err(|e| e.to_string())?;
    }
    let before = mpi_thread_sleeps().ok_or("no forkpool-mpi thread on rank 0")?;
    let rounds = 1_000u64;
    let start = Instant::now();
    for i in 0..rounds {
        if pool.apply(square, i).map_err(|e| e.to_string())? != i * i {
            return Err(format!("a wrong square of {i}"));
        }
    }
    let took = start.elapsed();
    let sleeps = mpi_thread_sleeps().ok_or("no forkpool-mpi thread on rank 0")? - before;
    println!(
        "loop sleeps {sleeps} of {rounds} round trips ({:.1} us each)",
        took.as_secs_f64() * 1e6 / rounds as f64
    );
    Ok(())
}

/// Busy for `ms` milliseconds of wall time; returns (rank, pid).
fn busy(ms: u64) -> (i32, u32) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        std::hint::spin_loop();
    }
    (rank_of_worker(), std::process::id())
}

/// After a run of short tasks (which deepens every rank's credit), 4 long tasks must still go
/// to 4 different workers, 2 per rank: no rank holds a backlog while another idles.
fn spread(pool: &Pool) -> Result<(), String> {
    pool.map(square, 0..2_000u64).map_err(|e| e.to_string())?;
    for _ in 0..200 {
        pool.apply(square, 3).map_err(|e| e.to_string())?;
    }
    let placed = pool
        .map_chunked(busy, vec![300; 4], 1)
        .map_err(|e| e.to_string())?;
    let pids: std::collections::BTreeSet<u32> = placed.iter().map(|p| p.1).collect();
    let on_rank1 = placed.iter().filter(|p| p.0 == 1).count();
    println!("spread: {} workers, {on_rank1} of 4 on rank 1", pids.len());
    Ok(())
}

/// Terminates the pool with long tasks running on both ranks and more queued: every task still
/// pending fails with Terminated, at once.
fn terminate(pool: &Pool) -> Result<(), String> {
    let pending: Vec<_> = (0..12)
        .map(|_| pool.apply_async(nap, 60_000))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pool.stats().running < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = std::time::Instant::now();
    pool.terminate();
    let terminated = pending
        .into_iter()
        .map(|r| r.get())
        .filter(|o| matches!(o, Err(Error::Terminated)))
        .count();
    pool.join().map_err(|e| e.to_string())?;
    println!(
        "terminate: {terminated} of 12 terminated in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if start.elapsed() > Duration::from_secs(30) {
        return Err("terminate waited for the tasks".into());
    }
    Ok(())
}

/// With an initializer and max_tasks_per_child(2): every worker on every rank ran the
/// initializer, and workers are recycled after 2 tasks.
fn limits(pool: &Pool) -> Result<(), String> {
    let got: Vec<_> = (0..24)
        .map(|i| pool.apply_async(initialized, i))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let got: Vec<(bool, u32)> = got
        .into_iter()
        .map(|r| r.get())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let pids: std::collections::BTreeSet<u32> = got.iter().map(|g| g.1).collect();
    let all = got.iter().all(|g| g.0);
    // 2 tasks per worker at most: at least 12 workers (more if the ranks split the 24 unevenly).
    println!(
        "limits: initialized everywhere {all}, recycled {} ({} workers for 24 tasks)",
        pids.len() >= 12,
        pids.len()
    );
    Ok(())
}

/// Writes "pid rank" to `path`, then a line every 50 ms for `ms` milliseconds; returns the
/// rank it ran on.
fn ticker((path, ms): (String, u64)) -> i32 {
    use std::io::Write;
    let mut file = std::fs::File::create(&path).expect("create the ticker's file");
    writeln!(file, "{} {}", std::process::id(), rank_of_worker()).expect("write");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        std::thread::sleep(Duration::from_millis(50));
        writeln!(file, "tick").expect("write");
    }
    rank_of_worker()
}

/// Sleeps 500 ms (a kill as it starts comes first), then leaves a file at `path`.
fn late_mark(path: String) -> i32 {
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&path, "ran").expect("write the marker");
    rank_of_worker()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// The pid and rank a ticker wrote first.
fn ticker_of(path: &Path) -> Option<(u32, i32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut first = text.lines().next()?.split(' ');
    Some((first.next()?.parse().ok()?, first.next()?.parse().ok()?))
}

/// Whether process `pid` exists and is not a zombie (all ranks run on this host).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z')
    })
}

/// Waits for `done`, at most `secs` seconds.
fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {secs} s waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts one ticker of `ms` milliseconds per worker and waits until every one runs.
fn start_tickers(
    pool: &Pool,
    dir: &Path,
    name: &str,
    ms: u64,
) -> Result<Vec<(PathBuf, AsyncResult<i32>)>, String> {
    let tickers: Vec<_> = (0..pool.processes())
        .map(|i| {
            let path = dir.join(format!("{name}{i}"));
            let arg = (path.to_string_lossy().into_owned(), ms);
            pool.apply_async(ticker, arg).map(|r| (path, r))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    wait_until("every ticker to run", 60, || {
        tickers.iter().all(|(path, _)| lines(path) >= 2)
    })?;
    Ok(tickers)
}

/// AsyncResult::cancel across ranks. A: with every worker of every member running a long
/// ticker, a task queued on rank 0 is cancelled and never runs, then each ticker is cancelled:
/// `cancel` is true, `get` gives Cancelled at once, its worker is gone and it ticks no more,
/// while the others tick on. B: once tasks are short (several per worker in a member's
/// hands), a task held by a rank behind running tickers is cancelled and never runs, while the
/// tickers complete normally; tasks after it run.
fn cancel(pool: &Pool) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("forkpool-mpi-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let outcome = cancel_in(pool, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn cancel_in(pool: &Pool, dir: &Path) -> Result<(), String> {
    let workers = pool.processes();
    // A: a fresh pool gives each member one task per worker: the next one waits on rank 0.
    let tickers = start_tickers(pool, dir, "long", 60_000)?;
    let queued_path = dir.join("queued");
    let queued = pool
        .apply_async(late_mark, queued_path.to_string_lossy().into_owned())
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(200));
    if !queued.cancel() {
        return Err("cancel of the queued task returned false".into());
    }
    let pids: Vec<(u32, i32)> = tickers
        .iter()
        .map(|(path, _)| ticker_of(path).ok_or(format!("no pid in {}", path.display())))
        .collect::<Result<_, _>>()?;
    let mut ranks = std::collections::BTreeSet::new();
    let mut slowest = Duration::ZERO;
    for (i, (path, result)) in tickers.into_iter().enumerate() {
        let (pid, rank) = pids[i];
        let start = Instant::now();
        if !result.cancel() {
            return Err(format!("cancel of ticker {i} returned false"));
        }
        match result.get() {
            Err(Error::Cancelled) => {}
            other => return Err(format!("ticker {i}: get gave {other:?}")),
        }
        slowest = slowest.max(start.elapsed());
        wait_until(
            &format!("the worker (pid {pid}) of cancelled ticker {i} to go"),
            15,
            || !alive(pid),
        )?;
        let n = lines(path.as_path());
        std::thread::sleep(Duration::from_millis(300));
        if lines(&path) != n {
            return Err(format!("ticker {i} still ticks after its cancel"));
        }
        // The others were not touched.
        if let Some(&(next, _)) = pids.get(i + 1) {
            if !alive(next) {
                return Err(format!(
                    "cancelling ticker {i} killed another task's worker"
                ));
            }
        }
        ranks.insert(rank);
    }
    match queued.get() {
        Err(Error::Cancelled) => {}
        other => return Err(format!("the queued task: get gave {other:?}")),
    }
    // Every worker is free now: a queued task sent anyway would have run by then.
    std::thread::sleep(Duration::from_millis(1_000));
    if queued_path.exists() {
        return Err("the cancelled task queued on rank 0 ran".into());
    }
    println!(
        "cancel running: {} of {workers} stopped on ranks {ranks:?}, get within 5 s {}, the queued one never ran",
        pids.len(),
        slowest < Duration::from_secs(5)
    );

    // B: short tasks deepen every member's credit; then a task beyond the running ones waits
    // in a rank's hands.
    let squares = pool
        .map_chunked(square, 0..400u64, 1)
        .map_err(|e| e.to_string())?;
    if squares
        .iter()
        .enumerate()
        .any(|(x, s)| *s != (x * x) as u64)
    {
        return Err("wrong squares before B".into());
    }
    // Long enough that none ends before the task behind them is cancelled, even on a loaded
    // machine where the last starts well after the first.
    let tickers = start_tickers(pool, dir, "short", 3_000)?;
    let held_path = dir.join("held");
    let held = pool
        .apply_async(late_mark, held_path.to_string_lossy().into_owned())
        .map_err(|e| e.to_string())?;
    // A task in a member's hands counts as running.
    wait_until("the task to reach a member", 10, || {
        pool.stats().running > workers as u64
    })?;
    if !held.cancel() {
        return Err("cancel of the held task returned false".into());
    }
    match held.get() {
        Err(Error::Cancelled) => {}
        other => return Err(format!("the held task: get gave {other:?}")),
    }
    let mut completed = 0;
    for (i, (_, result)) in tickers.into_iter().enumerate() {
        match result.get() {
            Ok(rank) if rank >= 0 => completed += 1,
            other => return Err(format!("short ticker {i} gave {other:?}")),
        }
    }
    let after = pool.map(square, 0..100u64).map_err(|e| e.to_string())?;
    if after.iter().enumerate().any(|(x, s)| *s != (x * x) as u64) {
        return Err("wrong squares after the cancels".into());
    }
    std::thread::sleep(Duration::from_millis(1_500));
    if held_path.exists() {
        return Err("the cancelled task a rank held ran".into());
    }
    println!("cancel held: never ran, {completed} of {workers} tickers around it completed");
    let stats = pool.stats();
    println!(
        "cancel stats: cancelled={} running={}",
        stats.cancelled, stats.running
    );
    Ok(())
}
