//! The same pool across the ranks of an MPI job (feature `mpi`): rank 0 schedules, every other
//! rank relays tasks into a local pool of its own and sends the outcomes back.
//!
//! ```text
//! rank 0:  callers ──Submitter──▶ scheduler thread ──MPI──▶ rank r: relay thread ──pipes──▶ workers
//!             ▲                        │    ▲                   (runs the local  ◀──────────┘
//!             └──── AsyncResult ◀──────┘    └──── RESULTS ────── pool's dispatcher)
//! ```
//!
//! - [`PoolBuilder::mpi`] makes `build` collective. Each rank learns
//!   its rank from the launcher's environment (`OMPI_COMM_WORLD_RANK`, `PMIX_RANK`, `PMI_RANK`,
//!   `SLURM_PROCID`) and builds its local pool *before* MPI is initialized, so its fork server
//!   never inherits MPI's threads or sockets. Without a launcher, or with one rank, `build`
//!   returns a plain local pool and MPI is never initialized.
//! - One thread per rank makes every MPI call (`MPI_THREAD_FUNNELED`): rank 0's scheduler
//!   thread ([`scheduler`]), a serving rank's relay thread ([`relay`]), which also runs its
//!   local pool's dispatcher, a turn between its looks at MPI. Neither blocks in MPI:
//!   they poll with `MPI_Iprobe`, send with `MPI_Isend` ([`wire::Outbox`]), and sleep with a
//!   growing backoff when idle, so an idle job costs almost no CPU.
//! - At start every rank sends rank 0 its binary's identity ([`identity`]); one mismatch and
//!   rank 0's `build` fails with [`Error::Mpi`], naming the hosts and both
//!   identities. Functions travel as offsets from the executable's load base, and a rank turns
//!   an offset back into an address only if it falls inside its executable's code.
//! - Serving ranks never run user code: a task that crashes kills a worker of the rank's local
//!   pool, which fails that task alone ([`Error::WorkerDied`], with
//!   the host); a chunk of `map_each` (or of a chunked imap) travels with its item index
//!   ([`wire`]'s TASKS entry), so a crash in its middle fails only the item that was running
//!   there, as in a local pool. The loss of a whole rank ends the job, as MPI does (`mpirun` reports it).
//! - [`AsyncResult::cancel`](crate::AsyncResult::cancel) reaches whichever rank holds the
//!   task: rank 0 never sends a cancelled task it still queues, and sends the rank holding one
//!   a CANCEL ([`wire`]), on which the relay cancels it in its local pool (never run if it
//!   waits there, its worker killed and replaced if it runs); rank 0's own local pool watches
//!   the caller's slot.
//! - Tasks are sent in batches, one message per rank per round, under a credit per rank:
//!   many tasks per worker while tasks are short, one per worker (and no more than a rank's
//!   share of the work in hand) while they are long, so no rank idles while another has a
//!   backlog.

mod identity;
mod relay;
mod scheduler;
mod wire;

use std::thread;

use crate::dispatch;
use crate::error::{Error, Result};
use crate::pool::{Pool, PoolBuilder};

/// What `PoolBuilder::mpi` adds to a builder.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// Rank 0 runs a local pool too.
    pub(crate) rank0_workers: bool,
}

/// Stack of the MPI thread of a rank.
const MPI_THREAD_STACK: usize = 4 << 20;

/// Builds an MPI pool: on rank 0 it returns; on every other rank it serves, then exits.
pub(crate) fn build(local: PoolBuilder, options: Options) -> Result<Pool> {
    let Some(rank) = launcher_rank() else {
        return local.build();
    };
    if launcher_size() == Some(1) {
        return local.build();
    }
    let (_, task_timeout) = local.mpi_settings();
    quiet_open_mpi_progress();
    // The local pool first: its fork server starts before MPI exists in this process.
    if rank != 0 {
        // A serving rank never returns, not even an error: rank 0 would wait for it forever.
        // Exiting non-zero before MPI starts makes the launcher end the job.
        // Its dispatcher runs on the relay thread, between the relay's looks at MPI.
        let pool = local.build_driven().unwrap_or_else(|e| {
            eprintln!("forkpool: rank {rank} could not start its local pool: {e}");
            std::process::exit(1)
        });
        let relay = thread::Builder::new()
            .name("forkpool-mpi".into())
            .stack_size(MPI_THREAD_STACK)
            .spawn(move || {
                let _ending = crate::sys::EndingThread;
                relay::serve(pool)
            })
            .map_err(Error::io("spawning the MPI thread"))?;
        // The relay ends the process; this thread only waits for it.
        let _ = relay.join();
        eprintln!("forkpool: the MPI relay thread of rank {rank} ended unexpectedly");
        std::process::exit(1);
    }
    let local_pool = if options.rank0_workers {
        Some(local.build()?)
    } else {
        None
    };
    let (submitter, front) = dispatch::front()?;
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let handle = thread::Builder::new()
        .name("forkpool-mpi".into())
        .stack_size(MPI_THREAD_STACK)
        .spawn(move || {
            let _ending = crate::sys::EndingThread;
            scheduler::run(front, local_pool, ready_tx)
        })
        .map_err(Error::io("spawning the MPI thread"))?;
    match ready_rx.recv() {
        Ok(Ok((processes, hosts))) => Ok(Pool::with_scheduler(
            submitter,
            processes,
            task_timeout,
            handle,
            hosts,
        )),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(Error::Mpi {
                message: "the MPI thread of rank 0 ended before the pool started".into(),
            })
        }
    }
}

/// Open MPI reads this variable in `MPI_Init`: whether its progress engine calls
/// `sched_yield` after each poll that found nothing.
const YIELD_WHEN_IDLE: &str = "OMPI_MCA_mpi_yield_when_idle";

/// Turns off Open MPI's yield-when-idle, unless the user set it: `mpirun --oversubscribe`
/// turns it on, and then every `MPI_Improbe` that finds nothing gives the CPU away, which on a
/// loaded machine costs a task's round trip 100 µs or more per probe that misses (measured:
/// W3 over MPI 184-201 µs with it, 51-74 µs without, same load). This pool never spins in MPI
/// (its threads nap between probes), so the yield only adds latency. Called before the local
/// pool starts its threads; `std::env` serializes it with every other read of the environment
/// through `std`.
fn quiet_open_mpi_progress() {
    if std::env::var_os("OMPI_COMM_WORLD_RANK").is_some()
        && std::env::var_os(YIELD_WHEN_IDLE).is_none()
    {
        std::env::set_var(YIELD_WHEN_IDLE, "0");
    }
}

/// This process's rank, as the launcher's environment says; `None` if no launcher started it.
fn launcher_rank() -> Option<i32> {
    env_number(&[
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ])
}

/// The job's size, if the launcher's environment says.
fn launcher_size() -> Option<i32> {
    env_number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"])
}

fn env_number(names: &[&str]) -> Option<i32> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// Initializes MPI on the calling thread, which must be the only one to call MPI afterwards.
fn initialize() -> std::result::Result<::mpi::environment::Universe, String> {
    match ::mpi::initialize_with_threading(::mpi::Threading::Funneled) {
        Some((universe, _)) => Ok(universe),
        None => Err("MPI was initialized before in this process: one MPI pool per program".into()),
    }
}

/// This host's name, as MPI has it.
fn host() -> String {
    ::mpi::environment::processor_name().unwrap_or_else(|_| "an unnamed host".into())
}
