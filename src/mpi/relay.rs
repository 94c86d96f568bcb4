//! A serving rank's loop: receive batches of task frames from rank 0, hand each to the local
//! pool, send the outcomes back in batches, until rank 0 says the pool is closed or terminated.
//! The rank itself runs no user code; its local pool's workers do. Each task it holds watches a
//! slot of the relay's own, through which a CANCEL from rank 0 cancels it in the local pool.
//!
//! The relay thread runs the local pool's dispatcher itself, a turn between its looks at MPI
//! ([`Driven`]): a task from rank 0 goes to a worker's pipe, and its reply into a RESULTS
//! batch, without waking another thread. (With a dispatcher thread of its own, each of those
//! two hand-offs could wait tens of microseconds for a sleeping thread on the other CPU.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::mpi::point_to_point::{MatchedReceiveVec, Source};
use ::mpi::topology::{Communicator, SimpleCommunicator};
use crossbeam_channel::{Receiver, Sender};

use super::identity::Image;
use super::scheduler;
use super::wire::{self, Hello, Outbox};
use crate::dispatch::{Canceller, Driven, Submitter, Task};
use crate::error::Error;
use crate::frame::{self, OutFrame};
use crate::result::{Outcome, Sink, Slot};
use crate::task;

/// The longest sleep between two probes: bounds the latency an idle rank adds to a task, and
/// keeps an idle rank near 0.1% of a CPU.
const MAX_NAP: Duration = Duration::from_millis(2);
/// Exit status of a rank whose binary rank 0 refused. Zero on purpose: Open MPI aborts the
/// job when a rank exits non-zero, which could kill rank 0 before it reports the mismatch
/// (rank 0's `build` error is the report; the refused rank also prints why on stderr).
const EXIT_REFUSED: i32 = 0;
/// Exit status of a rank that failed (MPI, or rank 0 broke the protocol).
const EXIT_FAILED: i32 = 4;

/// Serves rank 0 with a local pool (its callers' end and its dispatcher, which this thread
/// runs), then ends the process: status 0 once rank 0 closed or terminated the pool.
pub(super) fn serve(local: (Submitter, Driven)) -> ! {
    let code = match run(local) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("forkpool: MPI serving rank failed: {message}");
            EXIT_FAILED
        }
    };
    std::process::exit(code)
}

fn run((submitter, driven): (Submitter, Driven)) -> Result<i32, String> {
    let universe = super::initialize()?;
    let world = universe.world();
    let rank = world.rank();
    if rank == 0 {
        return Err("the launcher's environment named another rank than MPI does".into());
    }
    let image = Image::of_self();
    let identity = image.identity();
    let host = super::host();
    let hello = Hello {
        processes: driven.processes() as u64,
        pid: u64::from(std::process::id()),
        identity: identity.0.clone(),
        host: host.clone(),
    };
    let mut outbox = Outbox::default();
    outbox.send(&world, 0, wire::HELLO, hello.encode());
    let verdict = receive_from_root(&world, &mut outbox, wire::VERDICT);
    if verdict.first() != Some(&wire::WELCOME) {
        eprintln!(
            "forkpool: rank {rank} on {host} (binary {identity}) was refused by rank 0: it runs \
             another build of the program"
        );
        wind_down(&submitter, driven, wire::TERMINATE);
        outbox.flush();
        drop(universe);
        return Ok(EXIT_REFUSED);
    }
    let mut relay = Relay::new(submitter, driven, image, &host);
    let end = relay.serve(&world, &mut outbox)?;
    relay.end(end);
    outbox.send(&world, 0, wire::BYE, Vec::new());
    outbox.flush();
    drop(outbox);
    drop(universe);
    Ok(0)
}

/// Waits, without spinning, for the next message with `tag` from rank 0.
fn receive_from_root(world: &SimpleCommunicator, outbox: &mut Outbox, tag: ::mpi::Tag) -> Vec<u8> {
    let root = world.process_at_rank(0);
    let mut nap = Duration::from_micros(10);
    loop {
        outbox.progress();
        if let Some(probed) = root.immediate_matched_probe_with_tag(tag) {
            return probed.matched_receive_vec::<u8>().0;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(MAX_NAP);
    }
}

struct Relay {
    /// The local pool: its callers' end, and its dispatcher, which this thread runs.
    submitter: Submitter,
    driven: Driven,
    image: Image,
    /// This rank's host, which the local pool names in the deaths it records among the
    /// results of a `map_each` chunk.
    host: Arc<str>,
    tx: Sender<(u64, Outcome)>,
    rx: Receiver<(u64, Outcome)>,
    inflight: usize,
    /// The slot each task in the local pool's hands watches, by rank 0's task id: cancelling
    /// it cancels the task there (see [`Relay::on_cancel`]). Removed with the task's outcome.
    watches: HashMap<u64, Arc<Slot>>,
    /// Tells the local pool to look for cancelled tasks.
    canceller: Canceller,
    /// When the latest task came from rank 0.
    last_task: Instant,
    /// When this relay last sent results and had nothing left in hand (cleared by the next
    /// task), and the average time rank 0 then took to send the next task.
    emptied_at: Option<Instant>,
    turnaround: Option<Duration>,
    batch: Vec<u8>,
}

impl Relay {
    fn new(submitter: Submitter, driven: Driven, image: Image, host: &str) -> Relay {
        let (tx, rx) = crossbeam_channel::unbounded();
        let canceller = submitter.canceller();
        Relay {
            submitter,
            driven,
            image,
            host: host.into(),
            tx,
            rx,
            inflight: 0,
            watches: HashMap::new(),
            canceller,
            last_task: Instant::now(),
            emptied_at: None,
            turnaround: None,
            batch: Vec::new(),
        }
    }

    /// Relays until rank 0 sends END; returns its word (close or terminate).
    fn serve(&mut self, world: &SimpleCommunicator, outbox: &mut Outbox) -> Result<u8, String> {
        let root = world.process_at_rank(0);
        let mut last_activity = Instant::now();
        loop {
            let mut active = false;
            let mut end = None;
            while let Some(probed) = root.immediate_matched_probe() {
                active = true;
                let (bytes, status) = probed.matched_receive_vec::<u8>();
                match status.tag() {
                    wire::TASKS => self.on_tasks(&bytes)?,
                    wire::CANCEL => self.on_cancel(&bytes)?,
                    wire::END => {
                        end = Some(bytes.first().copied().unwrap_or(wire::TERMINATE));
                        break;
                    }
                    tag => return Err(format!("rank 0 sent a message with tag {tag}")),
                }
            }
            // The local pool's turn: it takes the tasks just submitted (this thread's own
            // submissions wake nobody), writes them to workers, reads what workers sent.
            self.driven.turn(Duration::ZERO);
            while let Ok((id, outcome)) = self.rx.try_recv() {
                self.push(id, &outcome, world, outbox);
                active = true;
            }
            if !self.batch.is_empty() {
                outbox.send(world, 0, wire::RESULTS, std::mem::take(&mut self.batch));
                if self.inflight == 0 {
                    self.emptied_at = Some(Instant::now());
                }
            }
            outbox.progress();
            if let Some(end) = end {
                return Ok(end);
            }
            let now = Instant::now();
            if active {
                last_activity = now;
                continue;
            }
            let idle = now - last_activity;
            // With nothing in hand, the next message is rank 0's next task: spin for as long as
            // rank 0 lately took to send one after our results.
            let expected = (self.inflight == 0).then_some(self.turnaround).flatten();
            if idle < scheduler::spin_window(expected) {
                std::thread::yield_now();
                continue;
            }
            // While every worker is busy, a task from rank 0 would only wait in the local pool:
            // nap longer, as the tasks in hand have run long (an outcome still wakes this).
            let longest = if self.inflight >= self.driven.processes() {
                scheduler::long_nap(now.saturating_duration_since(self.last_task), MAX_NAP)
            } else {
                MAX_NAP
            };
            let nap = (idle / 8).clamp(Duration::from_micros(20), longest);
            // The nap is the local pool's sleep in `poll`: a worker's reply (or death) ends it
            // at once; a message from rank 0 waits for the nap. The outcomes are taken at the
            // top of the loop.
            self.driven.turn(nap);
        }
    }

    /// Adds an outcome to the RESULTS batch, sending the batch first if the outcome would push
    /// it past MPI's message limit, and after if it is large enough to go.
    fn push(
        &mut self,
        id: u64,
        outcome: &Outcome,
        world: &SimpleCommunicator,
        outbox: &mut Outbox,
    ) {
        self.settle(id);
        let size = outcome.as_ref().map_or(0, |payload| payload.len()) + 64;
        if self.batch.len() + size.min(wire::MAX_MESSAGE) > wire::MAX_MESSAGE {
            outbox.send(world, 0, wire::RESULTS, std::mem::take(&mut self.batch));
        }
        self.push_one(id, outcome);
        if self.batch.len() >= wire::BATCH_BYTES {
            outbox.send(world, 0, wire::RESULTS, std::mem::take(&mut self.batch));
        }
    }

    /// Task `id` has its outcome: the relay no longer holds it.
    fn settle(&mut self, id: u64) {
        self.inflight -= 1;
        self.watches.remove(&id);
    }

    fn push_one(&mut self, id: u64, outcome: &Outcome) {
        match outcome {
            Ok(payload) if payload.len() > wire::MAX_MESSAGE => {
                let message = format!(
                    "a result of {} bytes is above the largest MPI message ({} bytes)",
                    payload.len(),
                    wire::MAX_MESSAGE
                );
                wire::push_outcome(&mut self.batch, id, &Err(Error::Mpi { message }));
            }
            _ => wire::push_outcome(&mut self.batch, id, outcome),
        }
    }

    /// Hands every task of a TASKS message to the local pool; a task that cannot run (an
    /// offset outside the executable's code, a malformed frame or item index) fails alone at
    /// once.
    fn on_tasks(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Some(emptied) = self.emptied_at.take() {
            // A long pause (an idle pool) counts as twice the longest spin, so that quick
            // round trips bring the average back under it within a few tasks.
            let took = emptied.elapsed().min(scheduler::MAX_SPIN * 2);
            self.turnaround = Some(self.turnaround.map_or(took, |avg| (avg * 7 + took) / 8));
        }
        for entry in wire::tasks(bytes, u64::MAX) {
            let entry = entry.map_err(|e| format!("a malformed TASKS message: {e}"))?;
            let header =
                frame::task_header(entry.frame).ok_or("a task frame too short for its header")?;
            self.inflight += 1;
            self.last_task = Instant::now();
            match self.task(header, entry) {
                // A refused submission (the local pool closed) drops the task, whose sink then
                // reports Terminated through the channel like any outcome.
                Ok(task) => {
                    let slot = Slot::new(1);
                    let task = task.cancellable(&slot);
                    self.watches.insert(header.id, slot);
                    drop(self.submitter.submit([task]));
                }
                Err(message) => {
                    self.inflight -= 1;
                    wire::push_outcome(&mut self.batch, header.id, &Err(Error::Mpi { message }));
                }
            }
        }
        Ok(())
    }

    /// Cancels, in the local pool, the tasks a CANCEL message names: one still queued there
    /// never runs, one running has its worker killed and replaced; either way its outcome,
    /// [`Error::Cancelled`], goes back to rank 0 as any other. An id no longer held (its
    /// outcome was sent before the CANCEL came) is ignored.
    fn on_cancel(&mut self, bytes: &[u8]) -> Result<(), String> {
        let ids = wire::cancelled_ids(bytes).map_err(|e| format!("a malformed CANCEL: {e}"))?;
        let mut any = false;
        for id in ids {
            if let Some(slot) = self.watches.get(&id) {
                any |= slot.cancel();
            }
        }
        if any {
            self.canceller.notify();
        }
        Ok(())
    }

    /// The local task of `entry` (whose frame's header is `header`): its code's offsets made
    /// addresses, and, for a chunk of `map_each`, marked with its item index, checked against
    /// the frame, so that the local pool fails only the item a worker dies at.
    fn task(&self, header: frame::TaskHeader, entry: wire::TaskEntry<'_>) -> Result<Task, String> {
        let wire::TaskEntry {
            items,
            index,
            frame,
        } = entry;
        let index = index
            .map(|wire| task::chunk_index(frame, items as usize, wire))
            .transpose()
            .map_err(|e| format!("task {} has a malformed item index: {e}", header.id))?;
        let (Some(trampoline), Some(function)) = (
            self.image.address(header.trampoline),
            self.image.address(header.function),
        ) else {
            return Err(format!(
                "task {} names code at offsets {:#x} and {:#x}, outside this executable's code; \
                 refused",
                header.id, header.trampoline, header.function
            ));
        };
        let mut head = frame.to_vec();
        frame::set_task_addresses(&mut head, trampoline, function);
        let tx = self.tx.clone();
        let id = header.id;
        let sink = Sink::then(move |outcome| {
            let _ = tx.send((id, outcome));
        });
        let limit = (header.limit_us > 0).then(|| Duration::from_micros(header.limit_us));
        let task = Task::new(
            OutFrame {
                head,
                tail: Vec::new(),
            },
            sink,
        )
        .with_limit(limit, items as usize);
        Ok(match index {
            Some(index) => task.each_chunk(index).on_host(Arc::clone(&self.host)),
            None => task,
        })
    }

    /// Winds the local pool down: after a close, rank 0 has every outcome already; after a
    /// terminate, the outcomes left are not wanted.
    fn end(self, end: u8) {
        wind_down(&self.submitter, self.driven, end);
    }
}

/// Closes (`wire::CLOSE`) or terminates the local pool and runs its dispatcher until every
/// worker is reaped, as `Pool::join` waits for a dispatcher thread.
fn wind_down(submitter: &Submitter, mut driven: Driven, end: u8) {
    if end == wire::CLOSE {
        submitter.close();
    } else {
        submitter.terminate();
    }
    while driven.turn(Duration::MAX) {}
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::codec;
    use crate::pool::PoolBuilder;

    fn square(x: u64) -> u64 {
        x * x
    }

    fn entry<'a>(items: u32, index: Option<&'a [u8]>, frame: &'a [u8]) -> wire::TaskEntry<'a> {
        wire::TaskEntry {
            items,
            index,
            frame,
        }
    }

    /// A task frame as rank 0 sends it: addresses rewritten as offsets.
    fn wire_frame(image: &Image, x: u64) -> Vec<u8> {
        let frame = crate::task::call(square, x).expect("encode");
        let mut bytes = [frame.head.as_slice(), frame.tail.as_slice()].concat();
        frame::stamp_task(&mut bytes, 42, 0);
        let h = frame::task_header(&bytes).expect("header");
        frame::set_task_addresses(
            &mut bytes,
            image.offset(h.trampoline),
            image.offset(h.function),
        );
        bytes
    }

    /// Writes its pid to `path`, then sleeps for a minute: a task still running when cancelled.
    fn pid_then_sleep(path: String) -> u32 {
        let pid = std::process::id();
        std::fs::write(&path, pid.to_string()).expect("write the pid");
        std::thread::sleep(Duration::from_secs(60));
        pid
    }

    /// Leaves a file at `path`: a task that must never run.
    fn mark(path: String) -> u32 {
        std::fs::write(&path, "ran").expect("write the marker");
        0
    }

    /// A TASKS message of one task, `f(arg)` as rank 0 sends it with id `id`.
    fn tasks_message<A, R>(image: &Image, f: fn(A) -> R, arg: A, id: u64) -> Vec<u8>
    where
        A: serde::Serialize + serde::de::DeserializeOwned + 'static,
        R: serde::Serialize + serde::de::DeserializeOwned + 'static,
    {
        let frame = crate::task::call(f, arg).expect("encode");
        let mut bytes = [frame.head.as_slice(), frame.tail.as_slice()].concat();
        frame::stamp_task(&mut bytes, id, 0);
        let h = frame::task_header(&bytes).expect("header");
        frame::set_task_addresses(
            &mut bytes,
            image.offset(h.trampoline),
            image.offset(h.function),
        );
        let mut msg = Vec::new();
        wire::push_task(&mut msg, 1, None, [&bytes, &[]]);
        msg
    }

    /// Whether process `pid` exists and is not a zombie.
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// A relay over a local pool of one worker, as a serving rank on `host` has it.
    fn relay(image: &Image, host: &str) -> Relay {
        let (submitter, driven) = PoolBuilder::default()
            .processes(1)
            .build_driven()
            .expect("pool");
        Relay::new(submitter, driven, image.clone(), host)
    }

    impl Relay {
        /// Runs the local pool (as `serve` does between its looks at MPI) until `done`, for at
        /// most 30 s.
        fn wait_for(&mut self, what: &str, mut done: impl FnMut() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                self.driven.turn(Duration::from_millis(10));
            }
        }

        /// Runs the local pool until an outcome comes, for at most `limit`.
        fn next_outcome(&mut self, limit: Duration) -> (u64, Outcome) {
            let deadline = Instant::now() + limit;
            loop {
                if let Ok(outcome) = self.rx.try_recv() {
                    return outcome;
                }
                assert!(Instant::now() < deadline, "no outcome within {limit:?}");
                self.driven.turn(Duration::from_millis(10));
            }
        }
    }

    /// A CANCEL from rank 0 reaches the local pool (real fork, real kill): the task queued
    /// there never runs, the running one's worker is killed (and replaced: a task after it
    /// runs), both outcomes are `Cancelled`, and an id no longer held or a malformed message
    /// changes nothing. Without the relay's cancel handles the outcomes never come.
    #[test]
    fn a_cancel_from_rank_0_stops_the_task_in_the_local_pool() {
        let image = Image::of_self();
        let mut relay = relay(&image, "here");
        let dir =
            std::env::temp_dir().join(format!("forkpool-relay-cancel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let pid_file = dir.join("pid").to_string_lossy().into_owned();
        let marker = dir.join("marker").to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(&marker);
        relay
            .on_tasks(&tasks_message(&image, pid_then_sleep, pid_file.clone(), 1))
            .expect("tasks");
        relay
            .on_tasks(&tasks_message(&image, mark, marker.clone(), 2))
            .expect("tasks");
        assert_eq!(relay.inflight, 2);
        relay.wait_for("the long task to start", || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| p.parse::<u32>().is_ok())
        });
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        // The queued one first: it must not run, even once its worker is free.
        relay
            .on_cancel(&wire::cancel_message(&[2]))
            .expect("cancel");
        let (id, outcome) = relay.next_outcome(Duration::from_secs(30));
        assert_eq!(id, 2);
        assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
        assert!(
            alive(pid),
            "cancelling a queued task killed the running one"
        );
        let started = Instant::now();
        relay
            .on_cancel(&wire::cancel_message(&[1, 77]))
            .expect("cancel");
        let (id, outcome) = relay.next_outcome(Duration::from_secs(30));
        assert_eq!(id, 1);
        assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        relay.wait_for("the cancelled task's worker to be gone", || !alive(pid));
        // The outcomes went out: their ids are no longer held, so a late CANCEL is ignored.
        relay.settle(1);
        relay.settle(2);
        assert!(relay.watches.is_empty());
        relay
            .on_cancel(&wire::cancel_message(&[1, 2]))
            .expect("ignored");
        assert!(relay.on_cancel(&[1, 0, 0]).is_err());
        // The worker was replaced: the next task runs.
        relay
            .on_tasks(&tasks_message(&image, square, 5, 3))
            .expect("tasks");
        let (id, outcome) = relay.next_outcome(Duration::from_secs(30));
        assert_eq!(id, 3);
        assert_eq!(codec::decode::<u64>(&outcome.expect("ran")), Ok(25));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !Path::new(&marker).exists(),
            "the cancelled queued task ran"
        );
        assert_eq!(relay.submitter.stats().cancelled, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The CPU time this thread has used.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// The relay naps in its local pool's `poll` between looks at MPI, mostly for less than a
    /// millisecond: such naps must sleep. With `poll`'s whole milliseconds each was a look
    /// that returned at once, and an idle relay a busy loop (37,000 "naps" of 400 µs in
    /// 100 ms, all of it on the CPU).
    #[test]
    fn naps_below_a_millisecond_in_the_local_pool_sleep() {
        let image = Image::of_self();
        let mut relay = relay(&image, "here");
        let (start, cpu) = (Instant::now(), thread_cpu());
        let mut naps = 0;
        while start.elapsed() < Duration::from_millis(100) {
            assert!(relay.driven.turn(Duration::from_micros(400)));
            naps += 1;
        }
        let (wall, cpu) = (start.elapsed(), thread_cpu() - cpu);
        // 250 naps fill 100 ms; a look that returns at once makes thousands.
        assert!(naps <= 300, "{naps} naps of 400 µs in {wall:?}");
        assert!(cpu < wall / 4, "{cpu:?} of CPU in {wall:?}");
    }

    #[test]
    fn a_task_from_offsets_runs_in_the_local_pool() {
        let image = Image::of_self();
        let mut relay = relay(&image, "here");
        let bytes = wire_frame(&image, 7);
        let header = frame::task_header(&bytes).expect("header");
        let task = relay
            .task(header, entry(1, None, &bytes))
            .expect("offsets inside the code");
        relay.submitter.submit([task]).expect("submit");
        let (id, outcome) = relay.next_outcome(Duration::from_secs(60));
        assert_eq!(id, 42);
        let bytes = outcome.expect("the task ran");
        assert_eq!(codec::decode::<u64>(&bytes), Ok(49));
    }

    fn abort_at_3(x: u64) -> u64 {
        if x == 3 {
            std::process::abort();
        }
        x * x
    }

    /// A chunk of `map_each` over `0..6` as rank 0 sends it, and its index's wire form.
    fn wire_chunk(image: &Image) -> (Vec<u8>, Vec<u8>) {
        let args: Vec<u64> = (0..6).collect();
        let (frame, index) = crate::task::chunk_each(abort_at_3, &args).expect("encode");
        let mut bytes = frame.head;
        frame::stamp_task(&mut bytes, 43, 0);
        let h = frame::task_header(&bytes).expect("header");
        frame::set_task_addresses(
            &mut bytes,
            image.offset(h.trampoline),
            image.offset(h.function),
        );
        let mut wire = Vec::new();
        index.to_wire(&mut wire);
        (bytes, wire)
    }

    /// The relay marks a chunk with the index rank 0 sent: its local pool then fails only the
    /// item a worker died at, naming this rank's host, and runs the rest (real fork, real
    /// abort).
    #[test]
    fn a_death_in_a_chunk_from_rank_0_fails_only_its_item_naming_the_host() {
        let image = Image::of_self();
        let mut relay = relay(&image, "node-9");
        let (bytes, wire) = wire_chunk(&image);
        let header = frame::task_header(&bytes).expect("header");
        let task = relay
            .task(header, entry(6, Some(&wire), &bytes))
            .expect("a good index");
        relay.submitter.submit([task]).expect("submit");
        let (id, outcome) = relay.next_outcome(Duration::from_secs(60));
        assert_eq!(id, 43);
        let each = crate::result::each_of_chunk::<u64>(outcome, 0, 6).expect("per-item results");
        for (x, r) in each.iter().enumerate() {
            let x = x as u64;
            match r {
                Ok(v) => assert!(x != 3 && *v == x * x, "{x}: {v}"),
                Err(e) => {
                    assert_eq!(x, 3, "{e}");
                    assert_eq!(e.index(), Some(3), "{e}");
                    assert!(
                        matches!(e.cause(), Error::WorkerDied { host: Some(h), .. } if h == "node-9"),
                        "{e:?}"
                    );
                }
            }
        }
        assert!(each[3].is_err());
    }

    #[test]
    fn a_chunk_whose_index_does_not_fit_its_frame_is_refused() {
        let image = Image::of_self();
        let relay = relay(&image, "here");
        let (bytes, wire) = wire_chunk(&image);
        let header = frame::task_header(&bytes).expect("header");
        let mut bad = wire.clone();
        *bad.last_mut().unwrap() += 1;
        for (items, index) in [(5, &wire), (6, &bad), (6, &wire[..3].to_vec())] {
            let refused = relay
                .task(header, entry(items, Some(index), &bytes))
                .expect_err("refused");
            assert!(refused.contains("malformed item index"), "{refused}");
        }
    }

    #[test]
    fn offsets_outside_the_code_are_refused_and_never_called() {
        let image = Image::of_self();
        let relay = relay(&image, "here");
        let mut bytes = wire_frame(&image, 7);
        let h = frame::task_header(&bytes).expect("header");
        static NOT_CODE: u64 = 0;
        let data = image.offset(&NOT_CODE as *const u64 as u64);
        for (trampoline, function) in [(data, h.function), (h.trampoline, u64::MAX - 7)] {
            frame::set_task_addresses(&mut bytes, trampoline, function);
            let header = frame::task_header(&bytes).expect("header");
            let refused = relay
                .task(header, entry(1, None, &bytes))
                .expect_err("refused");
            assert!(
                refused.contains("outside this executable's code"),
                "{refused}"
            );
        }
    }
}
