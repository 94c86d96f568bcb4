//! [`Spin`]: a short busy wait that keeps itself only while it pays.
//!
//! Waking a thread or process that sleeps on the other CPU costs tens of microseconds, so on a
//! quiet machine the dispatcher (expecting an answer), a worker (expecting its next task) and a
//! caller in `get` each spin a moment before they sleep. On a busy machine the
//! same spin takes a CPU share from the very process it waits for, and the awaited event comes
//! late or not at all within the spin: issue 9 measured W1 falling to 0.03x Python. A `Spin`
//! learns which case it is in from its own outcomes:
//!
//! - a spin that ends in success restores the full budget;
//! - a spin that runs out halves the budget (a few failures in a row bring it to zero);
//! - a spin during which one turn of the loop took longer than [`CONTENDED`] ends at once and
//!   quarters the budget: the thread was preempted, so another runnable thread wanted that CPU,
//!   and spinning takes it from someone (once is chance, on a machine where a compile runs
//!   now and then; three times in a row and the spin is off);
//! - at zero budget, one wait in [`PROBE_EVERY`] spins (with the full budget) to notice that
//!   the machine became quiet again; the others sleep at once. On a busy machine that costs
//!   about a sixteenth of a spin per wait, and a probe that loses its CPU ends at once.
//!
//! The state is two relaxed atomics (advice, not synchronization: a stale read only costs or
//! saves one spin), so one `Spin` can be shared by threads (the callers') and, being lock-free,
//! used in a forked worker. See docs/DESIGN.md, *Spinning*.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A turn of the spin loop (one look, one [`pause`]; a microsecond or so) that took longer than
/// this means the thread was off its CPU for someone else: the CPUs are contended.
pub(crate) const CONTENDED: Duration = Duration::from_micros(200);
/// At zero budget, one wait in this many spins briefly, to find out whether spinning pays again.
pub(crate) const PROBE_EVERY: u32 = 16;
/// A budget halved below this is zero.
const MIN_BUDGET_NS: u64 = 2_000;

/// How a spin ended (returned for tests and for the callers that care).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The awaited thing happened while spinning (or was already there).
    Done,
    /// The budget ran out first.
    Spent,
    /// The thread lost its CPU to another while spinning: it stopped at once.
    Contended,
    /// Spinning had not paid lately and this wait was not a probe: no spin at all.
    Skipped,
}

/// A spin budget that follows how well spinning has paid. See the module docs.
#[derive(Debug)]
pub(crate) struct Spin {
    max_ns: u64,
    budget_ns: AtomicU64,
    skipped: AtomicU32,
}

impl Spin {
    /// A spin of at most `max`, starting with the full budget.
    pub(crate) const fn new(max: Duration) -> Spin {
        let max_ns = max.as_nanos() as u64;
        Spin {
            max_ns,
            budget_ns: AtomicU64::new(max_ns),
            skipped: AtomicU32::new(0),
        }
    }

    /// The budget the next spin gets (zero: it is skipped, unless it is a probe).
    #[cfg(test)]
    pub(crate) fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget_ns.load(Relaxed))
    }

    /// Spins until `done` returns true or the budget runs out, yielding between looks unless a
    /// yield lately cost a time slice (see [`pause`] and [`YIELD_PENALTY`]).
    /// `done` is always asked at least once.
    pub(crate) fn run(&self, mut done: impl FnMut() -> bool) -> Outcome {
        // Yield between looks while yielding is cheap (a quiet machine: the CPU goes to the
        // pool's own thread or process the spin waits for, and comes back at once); keep the
        // CPU for a while once a yield was seen to cost a time slice (a busy machine: see
        // `pause`). One finding covers every spin of this process.
        let now = Instant::now();
        let may_yield = !yield_hurts(now);
        let mut yielded = false;
        let mut pause = || {
            if may_yield {
                yielded = true;
                std::thread::yield_now();
            } else {
                pause();
            }
        };
        let outcome = self.run_with(&mut done, &mut pause, &mut Instant::now);
        if yielded && outcome == Outcome::Contended {
            note_yield_hurt(now);
        }
        outcome
    }

    /// [`Spin::run`] with the yield and the clock given, so that tests can play a quiet or a
    /// contended CPU deterministically.
    pub(crate) fn run_with(
        &self,
        done: &mut dyn FnMut() -> bool,
        pause: &mut dyn FnMut(),
        clock: &mut dyn FnMut() -> Instant,
    ) -> Outcome {
        let budget = self.budget_ns.load(Relaxed);
        let limit = if budget > 0 {
            budget
        } else if self.skipped.fetch_add(1, Relaxed) % PROBE_EVERY == PROBE_EVERY - 1 {
            // A probe gets the full budget: a shorter one would never see an event that takes
            // most of it (a W3 round trip), and spinning would never come back.
            self.max_ns
        } else {
            return if done() {
                Outcome::Done
            } else {
                Outcome::Skipped
            };
        };
        let limit = Duration::from_nanos(limit);
        let start = clock();
        let mut last = start;
        loop {
            let done_now = done();
            let now = clock();
            // Off the CPU for a while: another runnable thread wanted it. That holds even when
            // the awaited event came meanwhile, as it usually did during a lost time slice:
            // this spin (and its yield) cost the slice all the same.
            if now - last > CONTENDED {
                self.shrink(budget / 4);
                return Outcome::Contended;
            }
            if done_now {
                self.budget_ns.store(self.max_ns, Relaxed);
                return Outcome::Done;
            }
            if now - start >= limit {
                self.shrink(budget / 2);
                return Outcome::Spent;
            }
            last = now;
            pause();
        }
    }
}

/// How long spins keep their CPU after a yield was seen to cost a time slice, before they try
/// yielding again.
pub(crate) const YIELD_PENALTY: Duration = Duration::from_millis(100);

/// When (milliseconds after [`epoch`], plus one; 0 for never) a yield last cost a time slice.
static YIELD_HURT_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

/// Whether a spin of this process lately found that a yield costs a time slice (less than
/// [`YIELD_PENALTY`] ago): what a new worker is told when it is forked (`proto::SPAWN_CONTENDED`).
pub(crate) fn yields_hurt() -> bool {
    yield_hurts(Instant::now())
}

/// In a new worker whose parent found the CPUs contended: its spins start without yielding,
/// as the parent's do (for [`YIELD_PENALTY`], then they try again). Fit for a freshly forked
/// child of a single-threaded process (the fork server): a clock read, a once-set epoch that
/// no other thread can be setting, and atomic stores.
pub(crate) fn note_contended() {
    note_yield_hurt(Instant::now());
}

/// Whether a yield cost a time slice less than [`YIELD_PENALTY`] ago.
fn yield_hurts(now: Instant) -> bool {
    let at = YIELD_HURT_AT.load(Relaxed);
    at != 0 && millis(now).saturating_sub(at) < YIELD_PENALTY.as_millis() as u64
}

fn note_yield_hurt(now: Instant) {
    YIELD_HURT_AT.store(millis(now), Relaxed);
}

/// Between two looks while yielding is costly: a moment of `spin_loop` hints, not
/// `sched_yield`. On a busy machine a yield hands the CPU to a runnable process for the rest of
/// its time slice (milliseconds under EEVDF and CFS alike), which made every spin a sleep of
/// that length; a spin that keeps its CPU costs at most its budget.
fn pause() {
    for _ in 0..64 {
        std::hint::spin_loop();
    }
}

impl Spin {
    /// Sets a smaller budget, zero once it is too small to see anything.
    fn shrink(&self, to_ns: u64) {
        let to_ns = if to_ns < MIN_BUDGET_NS { 0 } else { to_ns };
        self.budget_ns.store(to_ns, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    /// Runs `spin` on a fake clock that advances `step` per look, with `done` as the event.
    fn run(spin: &Spin, step: Duration, done: &mut dyn FnMut() -> bool) -> Outcome {
        let mut now = Instant::now();
        let mut clock = move || {
            now += step;
            now
        };
        spin.run_with(done, &mut || {}, &mut clock)
    }

    const QUIET: Duration = Duration::from_micros(1);

    /// A yield that cost a time slice stops yielding, for every spin of the process, for
    /// `YIELD_PENALTY`, and no longer.
    #[test]
    fn a_costly_yield_keeps_the_cpu_for_a_while_then_yields_again() {
        let t0 = epoch() + Duration::from_secs(3600);
        note_yield_hurt(t0);
        assert!(yield_hurts(t0));
        assert!(yield_hurts(t0 + YIELD_PENALTY / 2));
        assert!(!yield_hurts(t0 + YIELD_PENALTY + Duration::from_millis(1)));
    }

    #[test]
    fn a_spin_that_succeeds_keeps_the_full_budget() {
        let spin = Spin::new(MAX);
        let mut looks = 0;
        let outcome = run(&spin, QUIET, &mut || {
            looks += 1;
            looks == 3
        });
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(spin.budget(), MAX);
    }

    #[test]
    fn failed_spins_bring_the_budget_to_zero_and_only_probes_spin_then() {
        let spin = Spin::new(MAX);
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            outcomes.push(run(&spin, QUIET, &mut || false));
        }
        assert_eq!(spin.budget(), Duration::ZERO, "{outcomes:?}");
        assert_eq!(outcomes[0], Outcome::Spent);
        // From now on, most waits do not spin at all; one in PROBE_EVERY does, briefly.
        let mut looks = 0usize;
        let mut skipped = 0;
        for _ in 0..PROBE_EVERY {
            let outcome = run(&spin, QUIET, &mut || {
                looks += 1;
                false
            });
            if outcome == Outcome::Skipped {
                skipped += 1;
            }
        }
        assert_eq!(skipped, PROBE_EVERY - 1);
        // The skipped waits looked once each; the probe about MAX / QUIET times.
        assert!(
            looks > PROBE_EVERY as usize + 2,
            "the probe spun: {looks} looks"
        );
    }

    #[test]
    fn a_probe_that_succeeds_restores_spinning() {
        let spin = Spin::new(MAX);
        while spin.budget() > Duration::ZERO {
            run(&spin, QUIET, &mut || false);
        }
        let mut restored = false;
        for _ in 0..PROBE_EVERY {
            let mut looks = 0;
            let outcome = run(&spin, QUIET, &mut || {
                looks += 1;
                looks == 2
            });
            if outcome == Outcome::Done && looks == 2 {
                restored = true;
                break;
            }
        }
        assert!(restored, "a probe spun and saw its event");
        assert_eq!(spin.budget(), MAX);
    }

    #[test]
    fn losing_the_cpu_while_spinning_stops_spinning_at_once() {
        let spin = Spin::new(MAX);
        // Each look comes back much later than a yield should: someone else had the CPU.
        let mut looks = 0;
        let outcome = run(&spin, CONTENDED * 2, &mut || {
            looks += 1;
            false
        });
        assert_eq!(outcome, Outcome::Contended);
        assert_eq!(looks, 1, "it stopped after the first slow turn");
        assert_eq!(spin.budget(), MAX / 4);
        // Three contended spins in a row, and spinning is off.
        run(&spin, CONTENDED * 2, &mut || false);
        run(&spin, CONTENDED * 2, &mut || false);
        assert_eq!(spin.budget(), Duration::ZERO);
    }

    /// On a busy machine the awaited event usually arrives while the spinner is off its CPU:
    /// the slow turn still counts as contention, so the next spins (and their yields) stop.
    #[test]
    fn an_event_that_came_while_the_cpu_was_lost_still_counts_as_contention() {
        let spin = Spin::new(MAX);
        let outcome = run(&spin, CONTENDED * 2, &mut || true);
        assert_eq!(outcome, Outcome::Contended);
        assert_eq!(spin.budget(), MAX / 4, "not restored to the full budget");
        // Quick turns that see the event restore it.
        assert_eq!(run(&spin, QUIET, &mut || true), Outcome::Done);
        assert_eq!(spin.budget(), MAX);
    }

    #[test]
    fn a_ready_event_is_seen_even_when_spinning_is_off() {
        let spin = Spin::new(MAX);
        spin.budget_ns.store(0, Relaxed);
        assert_eq!(run(&spin, QUIET, &mut || true), Outcome::Done);
    }

    #[test]
    fn the_real_clock_and_yield_work_too() {
        let spin = Spin::new(MAX);
        assert_eq!(spin.run(|| true), Outcome::Done);
        assert_ne!(spin.run(|| false), Outcome::Done);
    }
}
