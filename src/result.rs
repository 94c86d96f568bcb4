//! How a caller waits for and receives results: [`AsyncResult`], and the [`Sink`] through which
//! the dispatcher hands each task's outcome back.
//!
//! A result travels as the worker's encoded bytes until the caller asks for it, so decoding (of
//! a 64 MiB result, say) happens in the caller's thread, never in the dispatcher's. A result
//! with a callback is decoded once, on the callback thread, and waits decoded for `get`.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;

use crate::callback;
use crate::codec;
use crate::dispatch::Canceller;
use crate::error::{Error, Result};
use crate::frame::Bytes;
use crate::spin::Spin;
use crate::sys;

/// The longest a caller spins for a result before it sleeps; every caller of the process
/// shares the budget, which shrinks while spinning does not pay (see [`Spin`]).
static CALLER_SPIN: Spin = Spin::new(Duration::from_micros(30));
/// How long a callback that waits for a result sleeps at a time, between looks at the result,
/// while it runs the callbacks queued behind it.
const HELP_SLICE: Duration = Duration::from_millis(1);

/// What became of one task: the worker's encoded result, or why there is none.
pub(crate) type Outcome = Result<Bytes>;

/// One task's outcome on an [`Imap`](crate::Imap)'s stream: its index, how many input items
/// it carried, and the outcome.
pub(crate) type Streamed = (usize, usize, Outcome);

/// Where the dispatcher delivers one task's outcome.
///
/// A sink dropped without a delivery delivers [`Error::Terminated`], so no path that loses a
/// task, even a bug, can leave its caller waiting forever.
#[derive(Debug)]
pub(crate) struct Sink {
    target: Option<Target>,
}

enum Target {
    /// Part `index` of an [`AsyncResult`]'s slot, or of another holder of parts.
    Part(Arc<dyn Parts>, usize),
    /// Task `index` of an [`Imap`](crate::Imap)'s stream, carrying `items` input items.
    Stream(Sender<Streamed>, usize, usize),
    /// Whatever the closure does with it (run a callback, then fill a slot).
    Then(Box<dyn FnOnce(Outcome) + Send>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Part(_, i) => write!(f, "Part({i})"),
            Target::Stream(_, i, n) => write!(f, "Stream({i}, {n} items)"),
            Target::Then(_) => write!(f, "Then"),
        }
    }
}

impl Sink {
    pub(crate) fn slot(slot: &Arc<Slot>, index: usize) -> Sink {
        Sink::part(Arc::clone(slot) as Arc<dyn Parts>, index)
    }

    /// Part `index` of `parts`. Unlike [`then`](Sink::then), allocates nothing: a `map` with
    /// chunks of one item makes a sink per item, and a box made by the caller's thread and
    /// freed by the dispatcher's costs a `free` under the other thread's arena lock.
    pub(crate) fn part(parts: Arc<dyn Parts>, index: usize) -> Sink {
        Sink {
            target: Some(Target::Part(parts, index)),
        }
    }

    pub(crate) fn stream(tx: &Sender<Streamed>, index: usize, items: usize) -> Sink {
        Sink {
            target: Some(Target::Stream(tx.clone(), index, items)),
        }
    }

    pub(crate) fn then(f: impl FnOnce(Outcome) + Send + 'static) -> Sink {
        Sink {
            target: Some(Target::Then(Box::new(f))),
        }
    }

    /// Hands the outcome to whoever waits for it (nobody, if they dropped their handle).
    pub(crate) fn deliver(mut self, outcome: Outcome) {
        match self.target.take() {
            Some(Target::Part(parts, index)) => parts.fill(index, outcome),
            Some(Target::Stream(tx, index, items)) => {
                let _ = tx.send((index, items, outcome));
            }
            Some(Target::Then(f)) => f(outcome),
            None => {}
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.target.is_some() {
            Sink {
                target: self.target.take(),
            }
            .deliver(Err(Error::Terminated));
        }
    }
}

/// What takes the outcomes of several tasks, each by its index: a [`Slot`], or a `map`'s feed,
/// which fills its slot and feeds the next chunk.
pub(crate) trait Parts: Send + Sync {
    /// Takes the outcome of part `index`.
    fn fill(&self, index: usize, outcome: Outcome);
}

impl Parts for Slot {
    fn fill(&self, index: usize, outcome: Outcome) {
        Slot::fill(self, index, outcome);
    }
}

/// The outcomes of the tasks behind one [`AsyncResult`], filled in any order.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
    /// Set (under the lock) once every part is in: lets a spinning caller look without taking
    /// the lock the dispatcher needs to fill the slot.
    complete: AtomicBool,
    /// Set (under the lock) by [`cancel`](Slot::cancel), before the parts it fills: the
    /// dispatcher reads it without the lock to drop or stop the slot's tasks.
    cancelled: AtomicBool,
    /// The process whose pool fills this slot (`sys::cached_pid`, 0 if unknown). In a child
    /// made by `fork()`, nothing will ever fill it: see [`Slot::forked`].
    owner: u32,
}

#[derive(Debug)]
struct SlotState {
    /// Emptied when the caller takes the outcomes.
    parts: Vec<Option<Outcome>>,
    /// How many parts the slot has, taken or not.
    len: usize,
    missing: usize,
    /// The task awaiting this slot as a future, to wake when it is complete.
    waker: Option<Waker>,
    /// Threads asleep on the condvar: a fill wakes them only if there are any, which spares
    /// the dispatcher a futex call per task when callers poll or collect late.
    sleepers: usize,
}

impl Slot {
    pub(crate) fn new(parts: usize) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                parts: (0..parts).map(|_| None).collect(),
                len: parts,
                missing: parts,
                waker: None,
                sleepers: 0,
            }),
            ready: Condvar::new(),
            complete: AtomicBool::new(parts == 0),
            cancelled: AtomicBool::new(false),
            owner: sys::cached_pid(),
        })
    }

    /// If this process is a fork of the one whose pool fills the slot, and the slot is not
    /// complete, the error to give instead of waiting forever (issue 8, item 7): the pool's
    /// threads and workers stayed with the parent. Never takes the slot's lock, which a thread
    /// of the parent may have held at the fork.
    fn forked(&self) -> Option<Error> {
        let current = sys::cached_pid();
        (self.owner != current && self.owner != 0 && !self.is_ready()).then_some(
            Error::ForkedProcess {
                owner: self.owner,
                current,
            },
        )
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Only this module's short critical sections take the lock, and none of them panics
        // while holding it; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fills part `index`, unless it is filled already (a cancel came first): the first outcome
    /// of a part is the one that stays. A slot complete already (cancelled, its parts perhaps
    /// taken by the caller since) takes no more.
    pub(crate) fn fill(&self, index: usize, outcome: Outcome) {
        let mut state = self.lock();
        if state.missing == 0 || state.parts[index].is_some() {
            return;
        }
        state.parts[index] = Some(outcome);
        state.missing -= 1;
        if state.missing == 0 {
            self.completed(state);
        }
    }

    /// Publishes a slot that just became complete, and wakes whoever waits for it.
    fn completed(&self, state: MutexGuard<'_, SlotState>) {
        let mut state = state;
        self.complete.store(true, Ordering::Release);
        if state.sleepers > 0 {
            self.ready.notify_all();
        }
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
    }

    /// Cancels the parts not yet in: each becomes [`Error::Cancelled`], and a later fill of it
    /// is ignored. False, changing nothing, if every part was in already. The slot's lock
    /// decides a race with the last fill: exactly one of the two completes the slot.
    pub(crate) fn cancel(&self) -> bool {
        let mut state = self.lock();
        if state.missing == 0 {
            return false;
        }
        self.cancelled.store(true, Ordering::Release);
        for part in state.parts.iter_mut().filter(|p| p.is_none()) {
            *part = Some(Err(Error::Cancelled));
        }
        state.missing = 0;
        self.completed(state);
        true
    }

    /// True once [`cancel`](Slot::cancel) succeeded.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// The outcomes if complete; otherwise remembers `waker` to wake when they are.
    fn poll_take(&self, waker: &Waker) -> Option<Vec<Outcome>> {
        let mut state = self.lock();
        if state.missing > 0 {
            match &mut state.waker {
                Some(w) if w.will_wake(waker) => {}
                w => *w = Some(waker.clone()),
            }
            return None;
        }
        Some(take_parts(&mut state))
    }

    /// Forgets the waker of a future that is dropped, so a late result wakes nobody.
    fn forget_waker(&self) {
        self.lock().waker = None;
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        // An answer is often a few microseconds away; waking from a condvar wait on the other
        // CPU costs tens. Spin a moment first, while spinning pays (the callers share one
        // budget: whether it pays is the machine's state).
        CALLER_SPIN.run(|| self.is_ready());
        // On the callback thread, this result may be waiting for a callback queued behind the
        // one that waits: run those meanwhile (issue 8, item 5; see `callback`).
        while !self.is_ready() {
            let left = match deadline {
                None => HELP_SLICE,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(HELP_SLICE),
                    _ => return false,
                },
            };
            if !callback::run_pending(left) {
                break;
            }
        }
        let mut state = self.lock();
        while state.missing > 0 {
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return false,
                },
            };
            state.sleepers += 1;
            state = match left {
                None => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    let woken = self.ready.wait_timeout(state, left);
                    woken.unwrap_or_else(PoisonError::into_inner).0
                }
            };
            state.sleepers -= 1;
        }
        true
    }

    fn take(&self) -> Vec<Outcome> {
        self.wait_until(None);
        take_parts(&mut self.lock())
    }

    /// The outcomes if the slot completes by `deadline`; otherwise `None`, and they stay.
    pub(crate) fn take_by(&self, deadline: Option<Instant>) -> Option<Vec<Outcome>> {
        self.wait_until(deadline)
            .then(|| take_parts(&mut self.lock()))
    }
}

/// Takes the outcomes out of a complete slot; parts taken before (a future polled after it
/// completed) read as terminated.
///
/// The outcomes are collected in the parts' own buffer (`Option<Outcome>` is as large as an
/// `Outcome`, so `collect` reuses it): a `map` of 20,000 single-item chunks used to allocate a
/// second buffer of 800 KB here, and free the first, each time.
fn take_parts(state: &mut SlotState) -> Vec<Outcome> {
    if state.parts.len() < state.len {
        return (0..state.len).map(|_| Err(Error::Terminated)).collect();
    }
    std::mem::take(&mut state.parts)
        .into_iter()
        .map(|p| p.unwrap_or(Err(Error::Terminated)))
        .collect()
}

/// Decodes a worker's encoded result, taking the buffer (a `Vec<u8>` result is the buffer).
pub(crate) fn decode_result_owned<R: DeserializeOwned + 'static>(bytes: Bytes) -> Result<R> {
    codec::decode_owned(bytes).map_err(|message| Error::Decode {
        what: "result",
        message,
    })
}

/// Turns the outcome of a single task into its value.
pub(crate) fn finish_one<R: DeserializeOwned + 'static>(parts: Vec<Outcome>) -> Result<R> {
    let bytes = parts.into_iter().next().unwrap_or(Err(Error::Terminated))?;
    decode_result_owned(bytes)
}

/// Concatenates the results of chunks of `chunksize` items (of `len` in all) in input order;
/// the first failed chunk's error wins, naming its item ([`Error::Item`]).
pub(crate) fn finish_chunks<R: DeserializeOwned + 'static>(
    parts: Vec<Outcome>,
    chunksize: usize,
    len: usize,
) -> Result<Vec<R>> {
    let mut all = Vec::with_capacity(len);
    for (i, part) in parts.into_iter().enumerate() {
        let (base, items) = chunk_span(i, chunksize, len);
        let chunk: Vec<R> = part
            .and_then(decode_result_owned)
            .map_err(|e| e.at_items(base, items))?;
        all.extend(chunk);
    }
    Ok(all)
}

/// Where chunk `i` of `chunksize` items starts in an input of `len`, and how many it holds.
fn chunk_span(i: usize, chunksize: usize, len: usize) -> (usize, usize) {
    let base = i * chunksize;
    (base, chunksize.min(len.saturating_sub(base)))
}

/// Every item's own result, in input order, from chunks made by
/// [`task::chunk_each`](crate::task::chunk_each): a panic fails its item alone, and so does a
/// worker's death in the middle of a chunk (the dispatcher records the item as lost among the
/// others' results); a chunk that failed as a whole (a death the worker's ledger cannot place,
/// a broken protocol) fails each of its items, with the chunk's error.
pub(crate) fn finish_each<R: DeserializeOwned + 'static>(
    parts: Vec<Outcome>,
    chunksize: usize,
    len: usize,
) -> Result<Vec<Result<R>>> {
    let mut all = Vec::with_capacity(len);
    for (i, part) in parts.into_iter().enumerate() {
        let (base, items) = chunk_span(i, chunksize, len);
        match each_of_chunk(part, base, items) {
            Ok(results) => all.extend(results),
            // The pool is gone (or the map was cancelled): no item has a result of its own.
            Err(e @ (Error::Terminated | Error::Cancelled)) => return Err(e),
            Err(e) => {
                let e = e.at_items(base, items);
                all.extend((0..items).map(|_| Err(e.duplicate())));
            }
        }
    }
    Ok(all)
}

/// The results of the `items` items of one chunk made by
/// [`task::chunk_each`](crate::task::chunk_each), the first at input position `base`: each
/// item's value, or its own error naming its position. `Err` with the chunk's error (not yet
/// placed with [`Error::at_items`]) if the chunk failed as a whole.
pub(crate) fn each_of_chunk<R: DeserializeOwned + 'static>(
    part: Outcome,
    base: usize,
    items: usize,
) -> Result<Vec<Result<R>>> {
    let bytes = part?;
    let decode_error = |message| Error::Decode {
        what: "result",
        message,
    };
    let (len, _) = codec::split_seq(&bytes).map_err(decode_error)?;
    if len != items as u64 {
        return Err(decode_error(format!(
            "a chunk of {items} items came back with {len} results"
        )));
    }
    let mut results = Vec::with_capacity(items);
    codec::decode_results(bytes, |r| {
        let index = base + results.len();
        results.push(r.map_err(|failed| crate::task::failed_item(failed, index)));
    })
    .map_err(decode_error)?;
    Ok(results)
}

/// The result of a task submitted with [`Pool::apply_async`](crate::Pool::apply_async) or
/// [`Pool::map_async`](crate::Pool::map_async), available once the task has finished.
///
/// It may be sent to another thread and may outlive its pool: a result that was ready before the
/// pool was terminated or dropped stays `Ok`, and one that was not becomes
/// [`Error::Terminated`].
///
/// It is also a [`Future`]: `.await` it in any async runtime (the pool wakes the task when the
/// result arrives; no runtime is needed or assumed). Awaiting it a second time after it
/// completed gives [`Error::Terminated`].
///
/// # Caveats
/// Dropping an `AsyncResult` (or a future awaiting it, as `tokio::time::timeout` does when it
/// gives up) does not cancel its task: the task runs to its end, its result is discarded, and
/// [`Pool::join`](crate::Pool::join) after `close` waits for it. To stop a task, call
/// [`cancel`](AsyncResult::cancel); to bound it, give it a time limit
/// ([`Pool::apply_async_timeout`](crate::Pool::apply_async_timeout)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use forkpool::Pool;
///
/// let pool = Pool::new(2)?;
/// let result = pool.apply_async(|x: u64| x * x, 12)?;
/// assert!(result.wait_timeout(Duration::from_secs(10)));
/// assert!(result.ready());
/// assert_eq!(result.get()?, 144);
/// # Ok::<(), forkpool::Error>(())
/// ```
pub struct AsyncResult<R> {
    slot: Arc<Slot>,
    finish: Finish<R>,
    /// Tells the pool about a [`cancel`](AsyncResult::cancel).
    canceller: Option<Canceller>,
    _result: PhantomData<fn() -> R>,
}

/// How an [`AsyncResult`] turns its slot's outcomes into its value.
enum Finish<R> {
    /// By decoding them.
    Decode(Box<dyn Fn(Vec<Outcome>) -> Result<R> + Send + Sync>),
    /// The value was decoded already (to show a callback) and waits here; the slot only says
    /// when it is in.
    Decoded(Arc<Decoded<R>>),
}

/// A value decoded before its [`AsyncResult`] asked for it, so that it is decoded only once.
#[derive(Debug)]
pub(crate) struct Decoded<R>(Mutex<Option<Result<R>>>);

impl<R> Decoded<R> {
    pub(crate) fn new() -> Arc<Decoded<R>> {
        Arc::new(Decoded(Mutex::new(None)))
    }

    /// Stores the value; call before filling the slot, which publishes it.
    pub(crate) fn put(&self, value: Result<R>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
    }

    fn take(&self) -> Result<R> {
        let value = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        value.unwrap_or(Err(Error::Terminated))
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(
        slot: Arc<Slot>,
        finish: impl Fn(Vec<Outcome>) -> Result<R> + Send + Sync + 'static,
    ) -> AsyncResult<R> {
        AsyncResult {
            slot,
            finish: Finish::Decode(Box::new(finish)),
            canceller: None,
            _result: PhantomData,
        }
    }

    /// Lets [`cancel`](AsyncResult::cancel) reach the pool whose tasks fill the slot (the
    /// tasks must be [`cancellable`](crate::dispatch::Task::cancellable) through it).
    pub(crate) fn with_canceller(mut self, canceller: Canceller) -> AsyncResult<R> {
        self.canceller = Some(canceller);
        self
    }

    /// A result whose value arrives already decoded in `decoded` once `slot` is complete.
    pub(crate) fn decoded(slot: Arc<Slot>, decoded: Arc<Decoded<R>>) -> AsyncResult<R> {
        AsyncResult {
            slot,
            finish: Finish::Decoded(decoded),
            canceller: None,
            _result: PhantomData,
        }
    }

    fn finish(&self, parts: Vec<Outcome>) -> Result<R> {
        if self.slot.is_cancelled() {
            // Some parts may have finished (a map's early chunks); the whole is cancelled.
            return Err(Error::Cancelled);
        }
        match &self.finish {
            Finish::Decode(decode) => decode(parts),
            // The slot's part only marks the value's arrival: the value is already here, or
            // was taken by an earlier call (and then reads as terminated).
            Finish::Decoded(decoded) => decoded.take(),
        }
    }

    /// Blocks until the task has finished, then returns its value.
    ///
    /// # Errors
    /// The task's own error ([`Error::TaskPanicked`], [`Error::WorkerDied`], ...), or
    /// [`Error::Decode`] if the result's bytes do not decode as `R`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(1)?;
    /// let len = pool.apply_async(|s: String| s.len(), "four".to_string())?;
    /// assert_eq!(len.get()?, 4);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn get(self) -> Result<R> {
        if let Some(e) = self.slot.forked() {
            return Err(e);
        }
        self.finish(self.slot.take())
    }

    /// Waits up to `timeout` for the task, then returns its value: Python's `res.get(timeout)`.
    /// If the task has not finished by then, the call fails with [`Error::WaitTimedOut`] and
    /// changes nothing: the task goes on, and a later `get_timeout`, [`get`](Self::get) or
    /// `.await` on this handle still gets its result.
    ///
    /// It takes `&mut self` because a value it returns is moved out of the handle: after it
    /// returned the task's outcome (`Ok` or the task's own error), the handle is spent and a
    /// further call gives [`Error::Terminated`], as a future polled after completion does.
    /// Compare [`wait_timeout`](Self::wait_timeout), which only waits and returns whether the
    /// result is in.
    ///
    /// # Errors
    /// [`Error::WaitTimedOut`] if `timeout` passed first; otherwise those of
    /// [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = forkpool::Pool::new(1)?;
    /// let mut r = pool.apply_async(nap, 300)?;
    /// let early = r.get_timeout(Duration::from_millis(10));
    /// assert!(matches!(early, Err(forkpool::Error::WaitTimedOut { .. })));
    /// assert_eq!(r.get_timeout(Duration::from_secs(10))?, 300); // still there
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        if let Some(e) = self.slot.forked() {
            return Err(e);
        }
        match self.slot.take_by(Instant::now().checked_add(timeout)) {
            Some(parts) => self.finish(parts),
            None => Err(Error::WaitTimedOut { waited: timeout }),
        }
    }

    /// Blocks until the task has finished.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u8| x, 1)?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn wait(&self) {
        if self.slot.forked().is_none() {
            self.slot.wait_until(None);
        }
    }

    /// Blocks until the task has finished or `timeout` has passed; true if it has finished.
    /// The result stays available for [`get`](Self::get) either way. To wait and take the
    /// value in one call, as Python's `res.get(timeout)`, use
    /// [`get_timeout`](Self::get_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = forkpool::Pool::new(1)?;
    /// let r = pool.apply_async(nap, 300)?;
    /// assert!(!r.wait_timeout(Duration::from_millis(10)));
    /// assert!(r.wait_timeout(Duration::from_secs(10)));
    /// assert_eq!(r.get()?, 300);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        if self.slot.forked().is_some() {
            return false;
        }
        self.slot.wait_until(Instant::now().checked_add(timeout))
    }

    /// Cancels the task, as pebble's and `concurrent.futures`' `Future.cancel()`: a task still
    /// queued is removed and never runs; a task already running has its worker killed and
    /// replaced, and no other task is affected (the tasks waiting behind it in that worker go
    /// back to the queue, as when a worker dies). [`get`](Self::get), `.await` and
    /// [`get_timeout`](Self::get_timeout) then give [`Error::Cancelled`], and
    /// [`ready`](Self::ready) is true at once.
    ///
    /// Returns false, changing nothing, if the result was already in: it stays available.
    /// A result that arrives while the cancel is on its way either is kept (and this returns
    /// false) or is dropped (and this returns true), never both.
    ///
    /// For a [`map_async`](crate::Pool::map_async) result, every chunk not yet done is
    /// cancelled (chunks not yet sent are never sent); the whole map's `get` gives
    /// [`Error::Cancelled`] even if some chunks had finished.
    ///
    /// Dropping a handle does not cancel its task; only this does.
    ///
    /// In a pool over MPI (`PoolBuilder::mpi`, feature `mpi`) the same holds on
    /// every rank: a task still queued on rank 0 is never sent, and one a serving rank holds is
    /// cancelled in that rank's local pool.
    ///
    /// # Caveats
    /// A task the pool had already written into its worker's pipe, behind the running one, is
    /// marked in the worker's ledger and skipped unrun; only if the worker had just begun it
    /// (or four such tasks wait at once) may a short one run to its end before the cancel
    /// reaches it (its result is then discarded). A task is never stopped halfway without its
    /// worker being killed. For
    /// [`apply_async_with`](crate::Pool::apply_async_with), the callback runs with
    /// `Err(Error::Cancelled)` when the task is dropped or killed, but with the task's value if
    /// that was already on its way to the callback.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use forkpool::{Error, Pool};
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = Pool::new(1)?;
    /// let long = pool.apply_async(nap, 60_000)?; // runs in the only worker
    /// let queued = pool.apply_async(nap, 1)?; // waits behind it
    /// assert!(queued.cancel()); // removed: it never runs
    /// assert!(long.cancel()); // its worker is killed and replaced
    /// assert!(matches!(long.get(), Err(Error::Cancelled)));
    /// assert!(matches!(queued.get(), Err(Error::Cancelled)));
    /// let done = pool.apply_async(nap, 1)?; // the new worker serves
    /// assert!(done.wait_timeout(Duration::from_secs(30)));
    /// assert!(!done.cancel()); // too late: the result stays
    /// assert_eq!(done.get()?, 1);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn cancel(&self) -> bool {
        if !self.slot.cancel() {
            return false;
        }
        if let Some(canceller) = &self.canceller {
            canceller.notify();
        }
        true
    }

    /// True once the task has finished, successfully or not. Never blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = forkpool::Pool::new(1)?;
    /// let r = pool.map_async(|x: u8| x, Vec::<u8>::new())?;
    /// assert!(r.ready()); // empty input is ready at once
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        self.slot.is_ready()
    }
}

impl<R> Future for AsyncResult<R> {
    type Output = Result<R>;

    /// Ready with the task's value once it has finished; never blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     struct Unpark(std::thread::Thread);
    /// #     impl std::task::Wake for Unpark {
    /// #         fn wake(self: std::sync::Arc<Self>) { self.0.unpark() }
    /// #     }
    /// #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop {
    /// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
    /// #         std::thread::park();
    /// #     }
    /// # }
    /// let pool = forkpool::Pool::new(2)?;
    /// let squared = block_on(async {
    ///     let a = pool.apply_async(|x: u64| x * x, 3)?;
    ///     let b = pool.apply_async(|x: u64| x * x, 4)?;
    ///     Ok::<_, forkpool::Error>(a.await? + b.await?)
    /// })?;
    /// assert_eq!(squared, 25);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        if let Some(e) = self.slot.forked() {
            return Poll::Ready(Err(e));
        }
        match self.slot.poll_take(cx.waker()) {
            Some(parts) => Poll::Ready(self.finish(parts)),
            None => Poll::Pending,
        }
    }
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        // In a fork of the pool's process, leave the slot's lock alone: a thread of the parent
        // may have held it at the fork.
        if self.slot.forked().is_none() {
            self.slot.forget_waker();
        }
    }
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_sink_resolves_its_part_as_terminated() {
        let slot = Slot::new(2);
        Sink::slot(&slot, 1).deliver(Ok(Bytes::default()));
        assert!(!slot.is_ready());
        drop(Sink::slot(&slot, 0));
        assert!(slot.is_ready());
        let parts = slot.take();
        assert!(matches!(parts[0], Err(Error::Terminated)));
        assert!(parts[1].is_ok());
    }

    /// The outcomes come out in the parts' own buffer, and a second take (a future polled
    /// again after it completed) finds every part terminated, as many as the slot had.
    #[test]
    fn taking_the_parts_reuses_their_buffer_and_a_second_take_finds_them_terminated() {
        assert_eq!(size_of::<Option<Outcome>>(), size_of::<Outcome>());
        let slot = Slot::new(3);
        for i in 0..3 {
            Sink::slot(&slot, i).deliver(Ok(Bytes::from_vec(vec![i as u8], 0)));
        }
        let buffer = slot.lock().parts.as_ptr() as usize;
        let parts = slot.take();
        assert_eq!(parts.as_ptr() as usize, buffer);
        let bytes: Vec<Vec<u8>> = parts.into_iter().map(|p| p.unwrap().into_vec()).collect();
        assert_eq!(bytes, [[0], [1], [2]]);
        let again = slot.take_by(None).expect("complete");
        assert_eq!(again.len(), 3);
        assert!(again.iter().all(|p| matches!(p, Err(Error::Terminated))));
    }

    /// The outcome of a cancelled task that comes after the caller took the cancel (an MPI
    /// rank's Cancelled, or a result that crossed the cancel) is dropped: it underflowed the
    /// missing count (a panic in a debug build) when the parts had been taken.
    #[test]
    fn a_late_fill_after_a_cancel_was_taken_is_ignored() {
        let slot = Slot::new(2);
        assert!(slot.cancel());
        assert!(slot
            .take()
            .iter()
            .all(|p| matches!(p, Err(Error::Cancelled))));
        Sink::slot(&slot, 0).deliver(Err(Error::Cancelled));
        Sink::slot(&slot, 1).deliver(Ok(Bytes::default()));
        assert!(slot.is_ready());
        assert_eq!(slot.lock().missing, 0);
    }

    #[test]
    fn a_fill_wakes_a_sleeping_waiter_and_only_then_notifies() {
        let slot = Slot::new(1);
        // Nobody waits: filling must not need a wakeup.
        assert_eq!(slot.lock().sleepers, 0);
        let waiter = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                slot.wait_until(Some(Instant::now() + Duration::from_secs(10)))
            })
        };
        while slot.lock().sleepers == 0 {
            std::thread::yield_now();
        }
        Sink::slot(&slot, 0).deliver(Ok(Bytes::default()));
        assert!(waiter.join().unwrap(), "the waiter was not woken");
        assert_eq!(slot.lock().sleepers, 0);
    }

    /// The slot's lock decides a cancel racing the last fill: whichever comes first stays.
    #[test]
    fn a_cancel_and_a_fill_exclude_each_other() {
        let slot = Slot::new(2);
        slot.fill(0, Ok(Bytes::default()));
        assert!(slot.cancel(), "one part was missing");
        assert!(slot.is_ready() && slot.is_cancelled());
        slot.fill(1, Ok(Bytes::default()));
        let parts = slot.take();
        assert!(parts[0].is_ok(), "a part that was in keeps its outcome");
        assert!(
            matches!(parts[1], Err(Error::Cancelled)),
            "a late fill is ignored"
        );
        assert!(!slot.cancel(), "complete: nothing to cancel");

        let done = Slot::new(1);
        done.fill(0, Ok(Bytes::default()));
        assert!(!done.cancel());
        assert!(!done.is_cancelled());
        assert!(done.take()[0].is_ok());
    }

    #[test]
    fn wait_until_honours_its_deadline() {
        let slot = Slot::new(1);
        let start = Instant::now();
        assert!(!slot.wait_until(Some(start + Duration::from_millis(20))));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
