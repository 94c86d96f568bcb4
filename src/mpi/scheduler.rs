//! Rank 0's side: a scheduler thread that consumes the pool's submission front, as the local
//! dispatcher does, and spreads the tasks over the serving ranks (and rank 0's own local pool,
//! if it has one) in batches, under a credit per rank.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::mpi::point_to_point::{MatchedReceiveVec, Source};
use ::mpi::topology::{Communicator, SimpleCommunicator};
use crossbeam_channel::{Receiver, Sender};

use super::identity::{Identity, Image};
use super::wire::{self, Hello, Outbox};
use crate::codec::SeqIndex;
use crate::dispatch::{Front, Phase, Task};
use crate::error::{Error, Result};
use crate::frame;
use crate::pool::Pool;
use crate::result::{Outcome, Sink};
use crate::stats::HostCounters;

/// Tasks a rank may hold per worker while its tasks are short.
const DEPTH: usize = 32;
/// Below this average time from sending a task to its outcome, a rank's tasks count as short.
const SHORT: Duration = Duration::from_millis(20);
/// After activity, how long the scheduler (and a relay) only yields, looking between yields,
/// before it naps: the least, when no quick message is expected (see [`spin_window`]).
pub(super) const SPIN: Duration = Duration::from_micros(50);
/// The longest such spin, when the next message is expected soon (see [`spin_window`]).
pub(super) const MAX_SPIN: Duration = Duration::from_micros(500);
/// The longest sleep between two probes while outcomes are awaited, unless every task out has
/// run long (see [`LONG_NAP`]).
const MAX_BUSY_NAP: Duration = Duration::from_millis(1);
/// The longest sleep between two probes while every task out has been running for a while:
/// at most 1/[`LONG_NAP_SHARE`] of the time since the latest was sent, so an outcome waits
/// for the scheduler no more than that share of its task's run time. Spares the CPU the
/// workers want for long tasks (polling every millisecond cost 3% of a CPU during W5).
pub(super) const LONG_NAP: Duration = Duration::from_millis(20);
/// See [`LONG_NAP`].
pub(super) const LONG_NAP_SHARE: u32 = 64;
/// How long the scheduler sleeps when nothing is in flight (a submission wakes it at once).
const IDLE_NAP: Duration = Duration::from_millis(100);

/// One place tasks run: a serving rank, or rank 0's own local pool.
struct Member {
    link: Link,
    host: String,
    processes: usize,
    inflight: HashMap<u64, Out>,
    /// Outcomes received, and their average time from sending.
    served: u64,
    avg: Duration,
    /// The TASKS message being filled this round.
    batch: Vec<u8>,
}

enum Link {
    Rank(i32),
    Local(Pool),
}

/// A task in a member's hands.
struct Out {
    task: Task,
    /// When it was sent (or handed to the local pool).
    sent: Instant,
    /// Its cancel was passed on to the member (a CANCEL sent, or the local pool told).
    cancel_passed: bool,
}

/// What rank 0's MPI thread reports once the pool runs: its total worker count, and the
/// counters it keeps per host.
pub(super) type Started = (usize, Arc<[HostCounters]>);

/// Runs rank 0's MPI thread: the start-up handshake, then the scheduling loop until the pool
/// is closed and drained, or terminated. Reports how the pool [`Started`], or why it could
/// not start, on `ready`.
pub(super) fn run(front: Front, local: Option<Pool>, ready: Sender<Result<Started>>) {
    let universe = match super::initialize() {
        Ok(u) => u,
        Err(message) => {
            let _ = ready.send(Err(Error::Mpi { message }));
            return;
        }
    };
    let world = universe.world();
    if world.rank() != 0 {
        // The launcher's environment said rank 0; MPI disagrees. Waiting for HELLOs here would
        // hang the job, and a serving rank must not return: end the job instead.
        eprintln!(
            "forkpool: the launcher's environment says rank 0, MPI says rank {}",
            world.rank()
        );
        std::process::exit(1);
    }
    let image = Image::of_self();
    let mut outbox = Outbox::default();
    let members = match handshake(&world, &image, &mut outbox) {
        Ok(members) => members,
        Err(message) => {
            outbox.flush();
            drop(outbox);
            drop(universe);
            let _ = ready.send(Err(Error::Mpi { message }));
            return;
        }
    };
    let (local_tx, local_rx) = crossbeam_channel::unbounded();
    let mut scheduler = Scheduler {
        front,
        image,
        members,
        hosts: Arc::new([]),
        queue: VecDeque::new(),
        next_id: 0,
        cancels: 0,
        last_sent: Instant::now(),
        emptied_at: None,
        resubmit: None,
        local_tx,
        local_rx,
    };
    if let Some(pool) = local {
        scheduler
            .members
            .push(Member::new(Link::Local(pool), super::host(), 0));
        let last = scheduler.members.last_mut().expect("just pushed");
        last.processes = match &last.link {
            Link::Local(pool) => pool.processes(),
            Link::Rank(_) => 0,
        };
    }
    let total = scheduler.members.iter().map(|m| m.processes).sum();
    scheduler.front.set_workers(total);
    scheduler.hosts = scheduler
        .members
        .iter()
        .map(|m| {
            let rank = match m.link {
                Link::Rank(rank) => rank as u32,
                Link::Local(_) => 0,
            };
            HostCounters::new(m.host.clone(), rank, m.processes)
        })
        .collect();
    let _ = ready.send(Ok((total, scheduler.hosts.clone())));
    scheduler.run(&world, &mut outbox);
    outbox.flush();
    drop(outbox);
    drop(universe);
}

/// Collects every serving rank's HELLO, checks its binary against ours, and welcomes or
/// refuses them all.
fn handshake(
    world: &SimpleCommunicator,
    image: &Image,
    outbox: &mut Outbox,
) -> std::result::Result<Vec<Member>, String> {
    let ours = image.identity();
    let our_host = super::host();
    let mut hellos: Vec<Option<Hello>> = (0..world.size()).map(|_| None).collect();
    let mut missing = world.size() as usize - 1;
    let mut nap = Duration::from_micros(10);
    while missing > 0 {
        match world
            .any_process()
            .immediate_matched_probe_with_tag(wire::HELLO)
        {
            Some(probed) => {
                let (bytes, status) = probed.matched_receive_vec::<u8>();
                let rank = status.source_rank();
                // A malformed HELLO counts as a mismatch: the rank is refused with the others.
                let hello = Hello::decode(&bytes).unwrap_or_else(|e| Hello {
                    processes: 0,
                    pid: 0,
                    identity: format!("malformed HELLO ({e}):").into_bytes(),
                    host: "an unknown host".into(),
                });
                let slot = &mut hellos[rank as usize];
                if slot.is_none() {
                    missing -= 1;
                }
                *slot = Some(hello);
            }
            None => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(2));
            }
        }
    }
    let mismatches: Vec<String> = hellos
        .iter()
        .enumerate()
        .filter_map(|(rank, h)| Some((rank, h.as_ref()?)))
        .filter(|(_, h)| h.identity != ours.0)
        .map(|(rank, h)| {
            format!(
                "rank {rank} on {} runs binary {}, but rank 0 on {our_host} runs binary {ours}",
                h.host,
                Identity(h.identity.clone())
            )
        })
        .collect();
    let verdict = if mismatches.is_empty() {
        wire::WELCOME
    } else {
        wire::REFUSED
    };
    for rank in 1..world.size() {
        outbox.send(world, rank, wire::VERDICT, vec![verdict]);
    }
    if !mismatches.is_empty() {
        return Err(format!(
            "{}; every rank must run the same build of the program (launch one executable, \
             rebuilt everywhere at once)",
            mismatches.join("; ")
        ));
    }
    Ok(hellos
        .into_iter()
        .enumerate()
        .filter_map(|(rank, h)| {
            let h = h?;
            Some(Member::new(
                Link::Rank(rank as i32),
                h.host,
                h.processes as usize,
            ))
        })
        .collect())
}

/// How long to yield, looking between yields, after activity before napping, given the recent
/// average wait for the next message (`None`: unknown). While messages come back quickly (W3:
/// a round trip through a rank), twice that wait, up to [`MAX_SPIN`]: a spin that a round trip
/// outlasts turns every hop into a nap, which lengthens the round trip, which keeps the spin
/// too short (W3 sat at 250-350 µs that way, from 50 µs, with a fixed 50 µs spin). Otherwise
/// (long tasks, deep batches, an idle pool) only [`SPIN`], which spares the workers' CPU.
pub(super) fn spin_window(expected: Option<Duration>) -> Duration {
    match expected {
        Some(wait) if wait < MAX_SPIN => (wait * 2).clamp(SPIN, MAX_SPIN),
        _ => SPIN,
    }
}

/// How long to look for the next submission between yields, after an outcome that left nothing
/// in hand, given the average time the callers lately took to submit one then (`None`: not
/// known yet): twice that, up to [`MAX_SPIN`], while they submit within [`MAX_SPIN`] (a caller
/// that waits for each result before it submits the next task); otherwise none, and the
/// scheduler sleeps until a submission wakes it, as an idle pool should.
pub(super) fn resubmit_window(expected: Option<Duration>) -> Duration {
    match expected {
        Some(wait) if wait < MAX_SPIN => (wait * 2).clamp(SPIN, MAX_SPIN),
        _ => Duration::ZERO,
    }
}

/// The longest nap between two probes while tasks are out, `out` after the latest was sent (or
/// reached the rank): `short` for young tasks, growing with `out` to [`LONG_NAP`], so that an
/// outcome waits at most 1/[`LONG_NAP_SHARE`] of its task's run time for the next probe.
pub(super) fn long_nap(out: Duration, short: Duration) -> Duration {
    (out / LONG_NAP_SHARE).clamp(short, LONG_NAP.max(short))
}

impl Member {
    fn new(link: Link, host: String, processes: usize) -> Member {
        Member {
            link,
            host,
            processes,
            inflight: HashMap::new(),
            served: 0,
            avg: Duration::ZERO,
            batch: Vec::new(),
        }
    }

    /// How many tasks it may hold: many per worker while its tasks are short, else one. Until
    /// it has answered, it goes by the others (one per worker in a fresh pool).
    fn depth(&self, others_short: bool) -> usize {
        let short = if self.served > 0 {
            self.avg < SHORT
        } else {
            others_short
        };
        self.processes.max(1) * if short { DEPTH } else { 1 }
    }
}

struct Scheduler {
    front: Front,
    image: Image,
    members: Vec<Member>,
    /// Per-host counters, one per member, in the same order.
    hosts: Arc<[HostCounters]>,
    queue: VecDeque<Task>,
    next_id: u64,
    /// The front's cancel count when the tasks held were last searched for cancelled ones.
    cancels: usize,
    /// When the latest task was sent (or handed to the local pool).
    last_sent: Instant,
    /// When the scheduler last delivered an outcome that left nothing in hand (cleared by the
    /// next submission), and the average time the callers then took to submit the next task.
    emptied_at: Option<Instant>,
    resubmit: Option<Duration>,
    /// Outcomes of the tasks run by rank 0's own local pool.
    local_tx: Sender<(u64, Outcome)>,
    local_rx: Receiver<(u64, Outcome)>,
}

impl Scheduler {
    fn run(&mut self, world: &SimpleCommunicator, outbox: &mut Outbox) {
        let mut last_activity = Instant::now();
        loop {
            let phase = self.front.phase();
            if phase == Phase::Terminated {
                return self.end(world, outbox, wire::TERMINATE);
            }
            let before = self.queue.len();
            let cancels = self.front.cancels();
            for task in self.front.tasks() {
                if task.is_cancelled() {
                    self.front.finish(task, Err(Error::Cancelled));
                } else {
                    self.queue.push_back(task);
                }
            }
            let mut active = self.queue.len() != before;
            if active {
                self.note_submission();
            }
            if cancels != self.cancels {
                self.cancels = cancels;
                self.pass_cancels(world, outbox);
                active = true;
            }
            match self.receive(world) {
                Ok(got) => active |= got,
                Err(message) => {
                    // A rank broke the protocol: a bug, not a user error. Fail what is left.
                    eprintln!("forkpool: MPI pool stopped: {message}");
                    self.front.shut();
                    return self.end(world, outbox, wire::TERMINATE);
                }
            }
            active |= self.assign(world, outbox);
            outbox.progress();
            let inflight: usize = self.members.iter().map(|m| m.inflight.len()).sum();
            if phase == Phase::Draining && self.queue.is_empty() && inflight == 0 {
                return self.end(world, outbox, wire::CLOSE);
            }
            if active && inflight == 0 && self.queue.is_empty() && self.emptied_at.is_none() {
                self.emptied_at = Some(Instant::now());
            }
            let now = Instant::now();
            if active {
                last_activity = now;
                continue;
            }
            let idle = now - last_activity;
            // The quickest round trip of the ranks with tasks out, if any.
            let expected = self
                .members
                .iter()
                .filter(|m| matches!(m.link, Link::Rank(_)) && !m.inflight.is_empty())
                .filter(|m| m.served > 0)
                .map(|m| m.avg)
                .min();
            let remote = self
                .members
                .iter()
                .any(|m| matches!(m.link, Link::Rank(_)) && !m.inflight.is_empty());
            if remote && idle < spin_window(expected) {
                std::thread::yield_now();
            } else if remote {
                let nap = (idle / 8).clamp(Duration::from_micros(20), self.busy_nap(now));
                self.front.wait(phase, nap, || self.pending());
            } else if self.emptied_at.is_some()
                && idle < resubmit_window(self.resubmit)
                && phase == Phase::Taking
            {
                // The last outcome just went out and the callers lately submitted the next task
                // at once (a caller in a loop of `apply`): look for it between yields rather
                // than sleep, as a wake through the pipe costs the caller and this thread a
                // cross-CPU wake-up each (10-25 µs here, half of W3's round trip).
                std::thread::yield_now();
            } else {
                // Nothing can come from the ranks; a submission or a local outcome wakes this.
                self.front.wait(phase, IDLE_NAP, || self.pending());
            }
        }
    }

    /// A submission came in: if it followed an outcome that left nothing in hand, adds the
    /// time between them to the average [`resubmit_window`] goes by.
    fn note_submission(&mut self) {
        if let Some(emptied) = self.emptied_at.take() {
            // A long pause counts as twice the longest spin, so that quick resubmissions bring
            // the average back under it within a few tasks.
            let took = emptied.elapsed().min(MAX_SPIN * 2);
            self.resubmit = Some(self.resubmit.map_or(took, |avg| (avg * 7 + took) / 8));
        }
    }

    /// Whether work came in that the front's wake pipe may not announce: a local outcome, or
    /// a cancel published before the scheduler got ready to sleep.
    fn pending(&self) -> bool {
        !self.local_rx.is_empty() || self.front.cancels() != self.cancels
    }

    /// The longest nap between two probes while tasks are out: [`MAX_BUSY_NAP`], or up to
    /// [`LONG_NAP`] once the latest task sent has been out long enough that a longer nap delays
    /// no outcome by more than 1/[`LONG_NAP_SHARE`] of its task's run time.
    fn busy_nap(&self, now: Instant) -> Duration {
        long_nap(now.saturating_duration_since(self.last_sent), MAX_BUSY_NAP)
    }

    /// Takes every message the ranks sent and every local outcome, and delivers them.
    fn receive(&mut self, world: &SimpleCommunicator) -> std::result::Result<bool, String> {
        let mut got = false;
        while let Some(probed) = world.any_process().immediate_matched_probe() {
            got = true;
            let (bytes, status) = probed.matched_receive_vec::<u8>();
            let rank = status.source_rank();
            let Some(i) = self.member_of(rank) else {
                return Err(format!(
                    "a message from rank {rank}, which is not in the pool"
                ));
            };
            if status.tag() != wire::RESULTS {
                return Err(format!(
                    "rank {rank} sent a message with tag {}",
                    status.tag()
                ));
            }
            let outcomes = wire::outcomes(bytes, &self.members[i].host)
                .map_err(|e| format!("rank {rank} sent malformed results: {e}"))?;
            for (id, outcome) in outcomes {
                self.deliver(i, id, outcome);
            }
        }
        while let Ok((id, outcome)) = self.local_rx.try_recv() {
            got = true;
            let i = self
                .members
                .iter()
                .position(|m| matches!(m.link, Link::Local(_)))
                .expect("local outcomes come from the local member");
            self.deliver(i, id, outcome);
        }
        Ok(got)
    }

    fn member_of(&self, rank: i32) -> Option<usize> {
        self.members
            .iter()
            .position(|m| matches!(m.link, Link::Rank(r) if r == rank))
    }

    fn deliver(&mut self, i: usize, id: u64, outcome: Outcome) {
        let member = &mut self.members[i];
        // An id not in flight there (a rank's bug) is dropped: nothing a rank sends may panic
        // rank 0.
        let Some(Out { task, sent, .. }) = member.inflight.remove(&id) else {
            return;
        };
        member.served += 1;
        self.front.running(false);
        // An average over the last few tasks (weight 1/8 for the newest).
        member.avg = (member.avg * 7 + sent.elapsed()) / 8;
        self.hosts[i].completed(&outcome);
        self.front.finish(task, outcome);
    }

    /// Moves queued tasks to the members with the most room, one batch per member, and sends
    /// the batches. True if it sent anything.
    fn assign(&mut self, world: &SimpleCommunicator, outbox: &mut Outbox) -> bool {
        if self.queue.is_empty() || self.members.is_empty() {
            return false;
        }
        let total: usize = self.members.iter().map(|m| m.processes.max(1)).sum();
        let in_hand =
            self.queue.len() + self.members.iter().map(|m| m.inflight.len()).sum::<usize>();
        let short = self.members.iter().any(|m| m.served > 0 && m.avg < SHORT);
        let caps: Vec<usize> = self
            .members
            .iter()
            .map(|m| {
                // No member holds more than its share of the work in hand.
                let fair = (in_hand * m.processes.max(1)).div_ceil(total).max(1);
                m.depth(short).min(fair)
            })
            .collect();
        let now = Instant::now();
        let mut sent = false;
        while !self.queue.is_empty() {
            let best = self
                .members
                .iter()
                .enumerate()
                .filter(|(i, m)| m.inflight.len() < caps[*i])
                .min_by_key(|(_, m)| m.inflight.len() * 1024 / m.processes.max(1))
                .map(|(i, _)| i);
            let Some(i) = best else { break };
            let mut task = self.queue.pop_front().expect("queue is not empty");
            if task.is_cancelled() {
                // Cancelled while it waited here: it is never sent.
                self.front.finish(task, Err(Error::Cancelled));
                continue;
            }
            // A chunk of `map_each` takes its index along, wherever it runs.
            let index = task.take_each_index();
            let remote = matches!(self.members[i].link, Link::Rank(_));
            let frame_len = task.frame_mut().len();
            let mut entry = wire::task_entry_len(
                frame_len,
                index
                    .as_ref()
                    .filter(|_| remote)
                    .map(SeqIndex::wire_len_bound),
            );
            if remote && entry > wire::MAX_MESSAGE {
                // The bound was not enough: the exact size (one pass over the items).
                entry = wire::task_entry_len(frame_len, index.as_ref().map(SeqIndex::wire_len));
            }
            if remote && entry > wire::MAX_MESSAGE {
                let message = format!(
                    "an argument frame of {} bytes is above the largest MPI message ({} bytes)",
                    task.frame_mut().len(),
                    wire::MAX_MESSAGE
                );
                self.front.finish(task, Err(Error::Mpi { message }));
                continue;
            }
            // A batch stays under MPI's message limit: send it before a frame would overflow it.
            let room = wire::MAX_MESSAGE - self.members[i].batch.len();
            if remote && entry > room {
                self.send_batch(i, world, outbox);
            }
            let id = self.next_id;
            self.next_id += 1;
            self.place(i, id, task, index, now);
            sent = true;
            if self.members[i].batch.len() >= wire::BATCH_BYTES {
                self.send_batch(i, world, outbox);
            }
        }
        for i in 0..self.members.len() {
            self.send_batch(i, world, outbox);
        }
        sent
    }

    /// Sends member `i`'s TASKS batch, if it is a rank and the batch holds anything.
    fn send_batch(&mut self, i: usize, world: &SimpleCommunicator, outbox: &mut Outbox) {
        let member = &mut self.members[i];
        if let Link::Rank(rank) = member.link {
            if !member.batch.is_empty() {
                outbox.send(world, rank, wire::TASKS, std::mem::take(&mut member.batch));
            }
        }
    }

    /// Puts task `id` in member `i`'s batch (or hands it to the local pool), with its `index`
    /// if it is a chunk of `map_each`, so that a death in its middle fails only the item that
    /// was running there.
    fn place(&mut self, i: usize, id: u64, mut task: Task, index: Option<SeqIndex>, now: Instant) {
        let (limit, items) = task.limit();
        let limit_us = limit.map_or(0, |l| l.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
        let frame = std::mem::take(task.frame_mut());
        let member = &mut self.members[i];
        match &member.link {
            Link::Rank(_) => {
                let mut frame = frame;
                frame::stamp_task(&mut frame.head, id, limit_us);
                let header = frame::task_header(&frame.head).expect("a task frame has a header");
                frame::set_task_addresses(
                    &mut frame.head,
                    self.image.offset(header.trampoline),
                    self.image.offset(header.function),
                );
                wire::push_task(
                    &mut member.batch,
                    items,
                    index.as_ref(),
                    frame.parts_from(0),
                );
            }
            Link::Local(pool) => {
                let tx = self.local_tx.clone();
                let wake = self.front.waker();
                let sink = Sink::then(move |outcome| {
                    let _ = tx.send((id, outcome));
                    wake();
                });
                let mut local = Task::new(frame, sink).with_limit(limit, items as usize);
                if let Some(index) = index {
                    local = local.each_chunk(index);
                }
                // The caller's cancel reaches the local pool's dispatcher through the same
                // slot, once `pass_cancels` tells it to look.
                if let Some(slot) = task.cancel_watch() {
                    local = local.cancellable(slot);
                }
                // Refused only once rank 0's local pool is closed, which happens after this
                // loop ends; the dropped task's sink reports Terminated then.
                drop(pool.submit_task(local));
            }
        }
        member.inflight.insert(
            id,
            Out {
                task,
                sent: now,
                cancel_passed: false,
            },
        );
        self.last_sent = now;
        self.hosts[i].sent();
        // A task in a rank's hands counts as running, whether it runs or waits there.
        self.front.running(true);
    }

    /// After a cancel: resolves the cancelled tasks still queued here as cancelled (they are
    /// never sent), and passes the cancel of each one in a member's hands on to it: a CANCEL
    /// naming them to a serving rank, a word to rank 0's local pool (whose task watches the
    /// same slot). Their outcome (`Error::Cancelled`, unless the result crossed the cancel)
    /// then comes back as any other.
    fn pass_cancels(&mut self, world: &SimpleCommunicator, outbox: &mut Outbox) {
        let (cancelled, kept): (VecDeque<Task>, VecDeque<Task>) =
            self.queue.drain(..).partition(Task::is_cancelled);
        self.queue = kept;
        for task in cancelled {
            self.front.finish(task, Err(Error::Cancelled));
        }
        for member in &mut self.members {
            let mut ids = Vec::new();
            for (id, out) in &mut member.inflight {
                if !out.cancel_passed && out.task.is_cancelled() {
                    out.cancel_passed = true;
                    ids.push(*id);
                }
            }
            if ids.is_empty() {
                continue;
            }
            match &member.link {
                Link::Rank(rank) => {
                    outbox.send(world, *rank, wire::CANCEL, wire::cancel_message(&ids));
                }
                Link::Local(pool) => pool.canceller().notify(),
            }
        }
    }

    /// Tells every rank the pool is closed (all outcomes are in) or terminated, waits for their
    /// goodbyes, and resolves whatever is left as terminated.
    fn end(&mut self, world: &SimpleCommunicator, outbox: &mut Outbox, how: u8) {
        let mut waiting = 0;
        for member in &self.members {
            match &member.link {
                Link::Rank(rank) => {
                    outbox.send(world, *rank, wire::END, vec![how]);
                    waiting += 1;
                }
                Link::Local(pool) if how == wire::CLOSE => pool.close(),
                Link::Local(pool) => pool.terminate(),
            }
        }
        for member in &mut self.members {
            if let Link::Local(pool) = &member.link {
                let _ = pool.join();
            }
        }
        let mut nap = Duration::from_micros(10);
        while waiting > 0 {
            outbox.progress();
            match world.any_process().immediate_matched_probe() {
                Some(probed) => {
                    let (_, status) = probed.matched_receive_vec::<u8>();
                    if status.tag() == wire::BYE {
                        waiting -= 1;
                    }
                }
                None => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(2));
                }
            }
        }
        for (member, host) in self.members.iter_mut().zip(self.hosts.iter()) {
            for (_, Out { task, .. }) in member.inflight.drain() {
                self.front.running(false);
                let outcome = Err(Error::Terminated);
                host.completed(&outcome);
                self.front.finish(task, outcome);
            }
        }
        while self.local_rx.try_recv().is_ok() {}
        for task in self.queue.drain(..).chain(self.front.tasks()) {
            self.front.finish(task, Err(Error::Terminated));
        }
    }
}

#[cfg(test)]
mod nap_tests {
    use super::*;

    #[test]
    fn naps_grow_with_the_age_of_the_tasks_out_within_their_share_and_the_cap() {
        let short = MAX_BUSY_NAP;
        // Young tasks (short ones, W1 and W3): the short nap.
        assert_eq!(long_nap(Duration::from_micros(50), short), short);
        assert_eq!(long_nap(Duration::from_millis(20), short), short);
        // Older: a share of their age, so an outcome waits at most that share of its run time.
        let out = Duration::from_millis(640);
        assert_eq!(long_nap(out, short), out / LONG_NAP_SHARE);
        assert!(long_nap(out, short) > short);
        // Long: capped.
        assert_eq!(long_nap(Duration::from_secs(60), short), LONG_NAP);
        // A short nap above the cap stays (the relay's is 2 ms).
        let big = LONG_NAP * 2;
        assert_eq!(long_nap(Duration::ZERO, big), big);
    }

    #[test]
    fn callers_that_resubmit_at_once_are_waited_for_and_others_are_slept_through() {
        // Nothing known yet (a fresh pool), or callers that take long: no spin at all.
        assert_eq!(resubmit_window(None), Duration::ZERO);
        assert_eq!(resubmit_window(Some(MAX_SPIN)), Duration::ZERO);
        assert_eq!(
            resubmit_window(Some(Duration::from_secs(1))),
            Duration::ZERO
        );
        // A caller in a loop of `apply`: its next task comes within microseconds.
        assert_eq!(resubmit_window(Some(Duration::from_micros(3))), SPIN);
        assert_eq!(
            resubmit_window(Some(Duration::from_micros(40))),
            Duration::from_micros(80)
        );
        assert_eq!(resubmit_window(Some(Duration::from_micros(400))), MAX_SPIN);
    }

    #[test]
    fn spins_cover_quick_round_trips_twice_over_and_stay_short_otherwise() {
        assert_eq!(spin_window(None), SPIN);
        assert_eq!(spin_window(Some(Duration::from_micros(5))), SPIN);
        // A W3 round trip, fast or slow: spun through.
        assert_eq!(
            spin_window(Some(Duration::from_micros(60))),
            Duration::from_micros(120)
        );
        assert_eq!(spin_window(Some(Duration::from_micros(300))), MAX_SPIN);
        // Long waits are napped through.
        assert_eq!(spin_window(Some(MAX_SPIN)), SPIN);
        assert_eq!(spin_window(Some(Duration::from_millis(500))), SPIN);
    }
}
