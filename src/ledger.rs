//! A worker's ledger: a small shared memory region in which a worker records, item by item,
//! how far it got in the chunk it runs, so that the parent still knows after the worker died.
//!
//! The parent makes one memfd per worker ([`Ledger::create`]), maps it, and sends it to the
//! fork server with the worker's pipes; the server maps it before it forks the worker, so the
//! worker inherits the mapping and holds no descriptor for it. Recording an item is a `memcpy`
//! and one release store, no system call, so it costs a chunk of tiny items almost nothing.
//!
//! ```text
//! | task u64 | first u64 | commit u64 | skip u64 x 4 | held u64 | data ... | held replies |
//! ```
//!
//! - `task` is the running task's id plus one (0: no task yet), written when a task starts;
//! - `first` is how many of the task's items went out in partial reply frames before the items
//!   in `data` (see [`crate::frame::Status::Partial`]);
//! - `commit` is `count << 32 | bytes`: `count` items are finished, and for a chunk of
//!   [`Pool::map_each`](crate::Pool::map_each) their encoded results are the first `bytes` bytes
//!   of `data`, back to back. It is stored last, with release ordering, after the data.
//!
//! - each `skip` word is 0, or the id plus one of a task the parent cancelled while it waited in
//!   the worker's pipe: the worker answers it with [`Status::Skipped`] instead of running it
//!   ([`Ledger::skip`], [`begin`]).
//! - `held` is `generation << 32 | bytes`: the worker's finished replies that it holds back
//!   while it runs the tasks already waiting in its pipe (one `write` for many replies), whole
//!   reply frames back to back in the last [`HELD_BYTES`] of the ledger ([`hold`],
//!   [`flush_held`]). They are in shared memory so that they survive the worker: after its
//!   death the parent delivers them; and the parent may take them while it lives, if they wait
//!   too long ([`Ledger::held`], a seqlock on the generation).
//!
//! A chunk of `map` records only the count (its results go out whole at the end, as before).
//! A chunk of `map_each` records each item's encoded `Each<R>`; when the next one does not fit,
//! the worker first sends what the ledger holds as a partial reply frame and starts it afresh
//! (an item larger than the whole ledger goes out as a partial frame of its own).
//!
//! The parent reads a ledger only once its worker is dead ([`Ledger::committed`]), so the two
//! never race; the worker may have written anything there, so every field is checked before it
//! is used, as the pipe's frames are.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};

use crate::frame::{self, Status};
use crate::sys::{self, SharedRegion};

/// Bytes in a ledger, header included.
pub(crate) const LEDGER_BYTES: usize = 256 << 10;
/// Where the data starts.
const DATA: usize = 64;
/// Bytes at the end of a ledger for the replies a worker holds back.
pub(crate) const HELD_BYTES: usize = 16 << 10;
/// Offsets of the header's words.
const TASK: usize = 0;
const FIRST: usize = 8;
const COMMIT: usize = 16;
const SKIPS: usize = 24;
const HELD: usize = 56;
/// How many tasks waiting in a worker's pipe can be marked to be skipped at once.
pub(crate) const SKIP_SLOTS: usize = 4;
/// Bytes of a partial frame's payload before the items: `first` and `count`, as `u64`s.
pub(crate) const PARTIAL_HEADER: usize = 16;

/// The word at `offset` of a region of at least `DATA` bytes, as an atomic.
///
/// # Safety
/// `base` must point to a mapping of at least [`DATA`] bytes, aligned to 8, that outlives the
/// returned reference.
unsafe fn word<'a>(base: *mut u8, offset: usize) -> &'a AtomicU64 {
    // SAFETY: per the contract, `base + offset` (offset < DATA, a multiple of 8) is inside the
    // mapping and aligned; every access to the word goes through this atomic.
    unsafe { AtomicU64::from_ptr(base.add(offset).cast()) }
}

/// The parent's end of one worker's ledger.
#[derive(Debug)]
pub(crate) struct Ledger {
    region: SharedRegion,
}

/// What a dead worker had recorded for the task it was running.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Committed {
    /// Items of the task sent in partial frames before these.
    pub(crate) first: u64,
    /// Items finished after those.
    pub(crate) count: usize,
    /// Their encoded results, back to back (empty for a chunk of `map`).
    pub(crate) bytes: Vec<u8>,
}

impl Ledger {
    /// Makes a ledger: the parent's mapping, and the descriptor to send to the fork server.
    pub(crate) fn create() -> io::Result<(Ledger, OwnedFd)> {
        let fd = sys::memfd_sized(c"forkpool-ledger", LEDGER_BYTES)?;
        let region = SharedRegion::map(&fd, LEDGER_BYTES)?;
        // Not into the fork server of a pool built later, nor its workers, nor any fork of the
        // program: only the worker it belongs to (through its own fork server) and the parent
        // may touch a worker's ledger.
        region.keep_from_forks()?;
        Ok((Ledger { region }, fd))
    }

    /// What the (dead) worker recorded for task `id`: `Ok(None)` if it had not started that
    /// task, `Err` if the ledger makes no sense.
    pub(crate) fn committed(&self, id: u64) -> Result<Option<Committed>, String> {
        let base = self.region.as_ptr();
        // SAFETY: the region is LEDGER_BYTES (> DATA) long, page-aligned, and lives with self.
        let [task, first, commit] =
            [TASK, FIRST, COMMIT].map(|at| unsafe { word(base, at) }.load(Ordering::Acquire));
        if task != id.wrapping_add(1) {
            return Ok(None);
        }
        let count = (commit >> 32) as usize;
        let bytes = (commit & u32::MAX as u64) as usize;
        if bytes > data_room(self.region.len()) {
            return Err(format!(
                "its ledger claims {bytes} bytes of results, more than the {} it holds",
                data_room(self.region.len())
            ));
        }
        if bytes > 0 && count == 0 {
            return Err(format!(
                "its ledger holds {bytes} bytes of results for no item"
            ));
        }
        let mut copy = vec![0u8; bytes];
        // SAFETY: `bytes` fits in the data area (checked above); the worker is dead, so nobody
        // writes the region while it is copied, and `copy` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(base.add(DATA), copy.as_mut_ptr(), bytes) };
        Ok(Some(Committed {
            first,
            count,
            bytes: copy,
        }))
    }

    /// The held-replies word (`generation << 32 | bytes`): non-zero bytes mean the worker holds
    /// replies back. A plain load, for the dispatcher's every turn.
    pub(crate) fn held_word(&self) -> u64 {
        // SAFETY: the region is LEDGER_BYTES (> DATA) long, page-aligned, and lives with self.
        unsafe { word(self.region.as_ptr(), HELD) }.load(Ordering::Acquire)
    }

    /// A copy of the replies the worker holds back (whole frames, back to back), as they were
    /// at one moment: `Ok(None)` if the worker changed them meanwhile (it is flushing them to
    /// the pipe: they arrive there), `Err` if the word makes no sense. Once the worker is dead
    /// the copy is always consistent.
    ///
    /// A seqlock: the worker writes frames only past the published length, and before it
    /// reuses the area it bumps the generation (then a release fence); so if the generation
    /// is the same before and after the copy, the copied bytes were not being written.
    pub(crate) fn held(&self) -> Result<Option<Vec<u8>>, String> {
        let base = self.region.as_ptr();
        let room = held_room(self.region.len());
        // SAFETY: as in `held_word`.
        let held = unsafe { word(base, HELD) };
        let before = held.load(Ordering::Acquire);
        let bytes = (before & u32::MAX as u64) as usize;
        if bytes > room.len() {
            return Err(format!(
                "its ledger claims {bytes} bytes of held replies, more than the {} it holds",
                room.len()
            ));
        }
        let mut copy = vec![0u8; bytes];
        // SAFETY: `bytes` fits in the held area (checked above), which lies inside the
        // mapping; `copy` is a distinct buffer. The worker may be writing the area at the same
        // time (only past `bytes` unless it started a new generation): volatile reads, and the
        // generation check below throws away a copy that may be torn.
        unsafe {
            let from = base.add(room.start);
            for (i, byte) in copy.iter_mut().enumerate() {
                *byte = std::ptr::read_volatile(from.add(i));
            }
        }
        std::sync::atomic::fence(Ordering::Acquire);
        let after = held.load(Ordering::Relaxed);
        Ok((before >> 32 == after >> 32).then_some(copy))
    }

    /// Asks the worker not to run task `id`, which waits in its pipe, through skip slot `slot`
    /// (below [`SKIP_SLOTS`]). True if it will not run it; false if it may already have begun
    /// it, and then the task must be treated as running (clear the slot).
    ///
    /// The parent stores the slot and then loads the worker's `task` word; the worker stores
    /// `task` as it begins a task and then loads the slots ([`begin`]). Both sequentially
    /// consistent, so at least one of the two loads sees the other's store: if the parent's
    /// does not see the task begun, the worker's sees the slot and skips it.
    pub(crate) fn skip(&self, slot: usize, id: u64) -> bool {
        assert!(slot < SKIP_SLOTS, "skip slot {slot} of {SKIP_SLOTS}");
        let base = self.region.as_ptr();
        // SAFETY: the region is LEDGER_BYTES (> DATA) long, page-aligned, and lives with self;
        // the slot's offset is below DATA.
        let (skip, task) = unsafe { (word(base, SKIPS + 8 * slot), word(base, TASK)) };
        skip.store(id.wrapping_add(1), Ordering::SeqCst);
        task.load(Ordering::SeqCst) != id.wrapping_add(1)
    }

    /// Frees skip slot `slot`.
    pub(crate) fn clear_skip(&self, slot: usize) {
        assert!(slot < SKIP_SLOTS, "skip slot {slot} of {SKIP_SLOTS}");
        // SAFETY: as in `skip`.
        unsafe { word(self.region.as_ptr(), SKIPS + 8 * slot) }.store(0, Ordering::SeqCst);
    }

    /// Writes the held-replies word and area as a worker would, for tests.
    #[cfg(test)]
    pub(crate) fn forge_held(&self, word_value: u64, data: &[u8]) {
        let base = self.region.as_ptr();
        let room = held_room(self.region.len());
        // SAFETY: as in `held`; `data` is cut to fit the held area.
        unsafe {
            let n = data.len().min(room.len());
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(room.start), n);
            word(base, HELD).store(word_value, Ordering::Release);
        }
    }

    /// Writes a ledger as a worker would, for tests of the parent's checks.
    #[cfg(test)]
    pub(crate) fn forge(&self, task: u64, first: u64, commit: u64, data: &[u8]) {
        let base = self.region.as_ptr();
        // SAFETY: as in `committed`; `data` is cut to fit the data area.
        unsafe {
            word(base, TASK).store(task, Ordering::Relaxed);
            word(base, FIRST).store(first, Ordering::Relaxed);
            word(base, COMMIT).store(commit, Ordering::Relaxed);
            let n = data.len().min(data_room(self.region.len()));
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(DATA), n);
        }
    }
}

/// Bytes of the data area of a ledger of `len` bytes (chunks' results).
fn data_room(len: usize) -> usize {
    len - DATA - HELD_BYTES
}

/// Where the held replies live in a ledger of `len` bytes.
fn held_room(len: usize) -> std::ops::Range<usize> {
    len - HELD_BYTES..len
}

// ----- The worker's end --------------------------------------------------------------------

/// In a worker: the ledger's first byte (null until [`install`]), its length, the reply pipe
/// partial frames go to, and the largest frame the pool accepts. A worker runs one task at a
/// time on one thread; these are set once, before its first task.
static BASE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static LEN: AtomicUsize = AtomicUsize::new(0);
static OUTPUT: AtomicI32 = AtomicI32::new(-1);
static MAX_FRAME: AtomicU64 = AtomicU64::new(u64::MAX);
/// In a worker: the id of the task it runs (set by [`begin`]).
static CURRENT: AtomicU64 = AtomicU64::new(0);
/// In a worker: the ledger is shared with the parent. Without that, no reply is held back
/// ([`hold`]): nobody could deliver it if the worker died.
static SHARED: AtomicBool = AtomicBool::new(false);

/// In a worker, before its first task: records into `region` (kept mapped for the rest of the
/// process), or, without one, into a private buffer that nobody else reads, and sends partial
/// frames to `output`.
pub(crate) fn install(region: Option<SharedRegion>, output: RawFd, max_frame: u64) {
    let (base, len) = match region {
        Some(region) if region.len() == LEDGER_BYTES => {
            let (base, len) = (region.as_ptr(), region.len());
            // The worker ends in _exit: the mapping is simply never unmapped.
            std::mem::forget(region);
            SHARED.store(true, Ordering::Relaxed);
            (base, len)
        }
        _ => {
            // Aligned to 8 for the header's words.
            let words: &'static mut [u64] = Box::leak(vec![0u64; LEDGER_BYTES / 8].into());
            (words.as_mut_ptr().cast::<u8>(), LEDGER_BYTES)
        }
    };
    LEN.store(len, Ordering::Relaxed);
    OUTPUT.store(output, Ordering::Relaxed);
    MAX_FRAME.store(max_frame, Ordering::Relaxed);
    BASE.store(base, Ordering::Release);
}

/// In a worker: the installed ledger, or `None` (outside a worker).
fn installed() -> Option<(*mut u8, usize)> {
    let base = BASE.load(Ordering::Acquire);
    (!base.is_null()).then(|| (base, LEN.load(Ordering::Relaxed)))
}

/// In a worker, as task `id` starts: an empty ledger for it. False if the parent asked, in a
/// skip slot, that it not run (see [`Ledger::skip`]).
pub(crate) fn begin(id: u64) -> bool {
    CURRENT.store(id, Ordering::Relaxed);
    let Some((base, _)) = installed() else {
        return true;
    };
    let marked = id.wrapping_add(1);
    // SAFETY: `install` set a mapping (or buffer) of LEN > DATA bytes, aligned, that lives
    // for the rest of the process; every offset used is below DATA.
    unsafe {
        word(base, COMMIT).store(0, Ordering::Relaxed);
        word(base, FIRST).store(0, Ordering::Relaxed);
        word(base, TASK).store(marked, Ordering::SeqCst);
        (0..SKIP_SLOTS).all(|slot| word(base, SKIPS + 8 * slot).load(Ordering::SeqCst) != marked)
    }
}

/// In a worker: holds a finished reply frame (`parts`, back to back) in the ledger instead of
/// writing it now; [`flush_held`] writes every held frame in one go. False, and nothing held,
/// if the ledger is not shared with the parent or has no room for it: write it now.
pub(crate) fn hold(parts: [&[u8]; 2]) -> bool {
    if !SHARED.load(Ordering::Relaxed) {
        return false;
    }
    match installed() {
        // SAFETY: `install` set a mapping of `len` bytes, aligned, alive for the process.
        Some((base, len)) => unsafe { hold_in(base, len, parts) },
        None => false,
    }
}

/// [`hold`] in the ledger at `base`.
///
/// # Safety
/// `base` must point to a ledger mapping of `len` bytes (aligned, alive), which only this
/// thread writes.
unsafe fn hold_in(base: *mut u8, len: usize, parts: [&[u8]; 2]) -> bool {
    let room = held_room(len);
    // SAFETY: per the contract (HELD < DATA).
    let held = unsafe { word(base, HELD) };
    let current = held.load(Ordering::Relaxed);
    let bytes = (current & u32::MAX as u64) as usize;
    let n = parts[0].len() + parts[1].len();
    if bytes + n > room.len() {
        return false;
    }
    // SAFETY: `bytes + n` fits in the held area, which lies inside the mapping; only this
    // thread writes it, past the length it has published (the parent only reads).
    unsafe {
        let to = base.add(room.start + bytes);
        std::ptr::copy_nonoverlapping(parts[0].as_ptr(), to, parts[0].len());
        std::ptr::copy_nonoverlapping(parts[1].as_ptr(), to.add(parts[0].len()), parts[1].len());
    }
    held.store(current + n as u64, Ordering::Release);
    true
}

/// In a worker: how many bytes of replies it holds back.
pub(crate) fn held_bytes() -> usize {
    match installed() {
        // SAFETY: as in `begin`.
        Some((base, _)) => {
            (unsafe { word(base, HELD) }.load(Ordering::Relaxed) & u32::MAX as u64) as usize
        }
        None => 0,
    }
}

/// In a worker: writes the replies it holds back to `output` (blocking until they are in),
/// then empties the held area under a new generation. Returns the bytes written.
pub(crate) fn flush_held(output: RawFd) -> io::Result<usize> {
    match installed() {
        // SAFETY: as in `hold`.
        Some((base, len)) => unsafe { flush_in(base, len, output) },
        None => Ok(0),
    }
}

/// [`flush_held`] from the ledger at `base`.
///
/// # Safety
/// As for [`hold_in`].
unsafe fn flush_in(base: *mut u8, len: usize, output: RawFd) -> io::Result<usize> {
    // SAFETY: per the contract.
    let held = unsafe { word(base, HELD) };
    let current = held.load(Ordering::Relaxed);
    let bytes = (current & u32::MAX as u64) as usize;
    if bytes == 0 {
        return Ok(0);
    }
    // SAFETY: the first `bytes` bytes of the held area were written by `hold_in`; nothing
    // writes them while the slice lives (this thread is the only writer).
    let frames = unsafe { std::slice::from_raw_parts(base.add(held_room(len).start), bytes) };
    let mut done = 0;
    while done < bytes {
        done += sys::write(output, &frames[done..])?;
    }
    // The replies are in the pipe: a new generation, and only then (the fence orders the store
    // before the writes that follow) new frames over the old ones. A parent copying the old
    // ones meanwhile sees the generation change and throws its copy away.
    let generation = (current >> 32).wrapping_add(1) & u32::MAX as u64;
    held.store(generation << 32, Ordering::Release);
    fence(Ordering::Release);
    Ok(bytes)
}

/// In a worker running a chunk of `map`: `done` items of it are finished.
pub(crate) fn finished(done: usize) {
    if let Some((base, _)) = installed() {
        // SAFETY: as in `begin`.
        unsafe { word(base, COMMIT).store((done as u64) << 32, Ordering::Release) };
    }
}

/// Records the encoded results of a chunk of `map_each` in the worker's ledger, item by item.
#[derive(Debug)]
pub(crate) struct Recorder {
    base: *mut u8,
    /// Bytes of the data area.
    room: usize,
    id: u64,
    /// Items sent in partial frames so far.
    first: u64,
    /// Items in the ledger, and their bytes.
    count: u64,
    bytes: usize,
}

/// Why an item could not be recorded: the chunk then fails with this message.
pub(crate) type Refused = String;

impl Recorder {
    /// Starts recording the task the worker runs (it called [`begin`] for it).
    pub(crate) fn new() -> Recorder {
        let id = CURRENT.load(Ordering::Relaxed);
        let (base, len) = installed().unwrap_or_else(|| {
            // Not in a worker (a trampoline called directly): a private ledger of its own.
            install(None, -1, u64::MAX);
            installed().expect("just installed")
        });
        Recorder {
            base,
            room: data_room(len),
            id,
            first: 0,
            count: 0,
            bytes: 0,
        }
    }

    /// The free part of the data area, for an item's encoding.
    fn free(&mut self) -> &mut [u8] {
        // SAFETY: the data area is `room` bytes from `base + DATA`, written only by this
        // process (the parent reads it after this process is dead); `bytes <= room`.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.add(DATA + self.bytes), self.room - self.bytes)
        }
    }

    /// Records one item: `encode` writes its encoding into the slice it is given and returns
    /// its length, or `None` if it does not fit, or `Err` if it cannot be encoded at all.
    /// When the item does not fit, what the ledger holds goes out as a partial frame first;
    /// an item too large for an empty ledger goes out as a partial frame of its own.
    pub(crate) fn push(
        &mut self,
        encode: impl Fn(&mut [u8]) -> Result<Option<usize>, String>,
        encode_owned: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<(), Refused> {
        if self.count == u32::MAX as u64 {
            self.flush()?;
        }
        let n = match encode(self.free())? {
            Some(n) => n,
            None if self.count > 0 => {
                self.flush()?;
                match encode(self.free())? {
                    Some(n) => n,
                    None => return self.send_alone(encode_owned()?),
                }
            }
            None => return self.send_alone(encode_owned()?),
        };
        self.bytes += n;
        self.count += 1;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        // SAFETY: as in `begin`.
        unsafe {
            word(self.base, FIRST).store(self.first, Ordering::Relaxed);
            word(self.base, COMMIT).store(self.count << 32 | self.bytes as u64, Ordering::Release);
        }
    }

    /// How many items the ledger holds now (those not yet sent in a partial frame).
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The encoded results the ledger holds now, back to back.
    pub(crate) fn held(&mut self) -> &[u8] {
        // SAFETY: as in `free`: the first `bytes` bytes of the data area are ours.
        unsafe { std::slice::from_raw_parts(self.base.add(DATA), self.bytes) }
    }

    /// Sends what the ledger holds as a partial frame, then empties it.
    fn flush(&mut self) -> Result<(), Refused> {
        if self.count == 0 {
            return Ok(());
        }
        let items = {
            // SAFETY: as in `held`; the slice is not kept past the write.
            let data = unsafe { std::slice::from_raw_parts(self.base.add(DATA), self.bytes) };
            self.send(self.first, self.count, data)?;
            self.count
        };
        self.first += items;
        self.count = 0;
        self.bytes = 0;
        // The items are the parent's now (the frame is in the pipe before the worker can die
        // with them unrecorded); the header says so before anything new is written.
        self.publish();
        Ok(())
    }

    /// Sends one item's encoding, too large for the ledger, as a partial frame of its own.
    fn send_alone(&mut self, encoded: Vec<u8>) -> Result<(), Refused> {
        self.flush()?;
        self.send(self.first, 1, &encoded)?;
        self.first += 1;
        self.publish();
        Ok(())
    }

    fn send(&self, first: u64, count: u64, data: &[u8]) -> Result<(), Refused> {
        let mut head = Vec::with_capacity(frame::REPLY_PAYLOAD_START + PARTIAL_HEADER);
        frame::begin_reply(&mut head, self.id, Status::Partial);
        head.extend_from_slice(&first.to_le_bytes());
        head.extend_from_slice(&count.to_le_bytes());
        let body = (head.len() + data.len() - frame::LEN) as u64;
        if body > MAX_FRAME.load(Ordering::Relaxed) {
            return Err(format!(
                "an item's result is {} bytes encoded, over the pool's limit of {} bytes \
                 (PoolBuilder::max_frame_bytes): return less, or raise the limit",
                data.len(),
                MAX_FRAME.load(Ordering::Relaxed)
            ));
        }
        head[..frame::LEN].copy_from_slice(&body.to_le_bytes());
        let output = OUTPUT.load(Ordering::Relaxed);
        if output < 0 {
            return Err("no reply pipe to send a partial result to".into());
        }
        // The replies held back answer the tasks before this one: they go first.
        flush_held(output).map_err(|e| format!("could not send the held replies: {e}"))?;
        let total = head.len() + data.len();
        let mut offset = 0;
        while offset < total {
            let parts: [&[u8]; 2] = if offset < head.len() {
                [&head[offset..], data]
            } else {
                [&[], &data[offset - head.len()..]]
            };
            match sys::writev(output, &parts) {
                Ok(n) => offset += n,
                // The pool is gone or the pipe was replaced: the worker's loop finds out at
                // its next write and exits; this chunk's answer cannot arrive anyway.
                Err(e) => return Err(format!("could not send a partial result: {e}")),
            }
        }
        Ok(())
    }
}

/// Splits a partial frame's payload into its first item's position, its count and its items.
pub(crate) fn parse_partial(payload: &[u8]) -> Result<(u64, u64, &[u8]), String> {
    if payload.len() < PARTIAL_HEADER {
        return Err(format!(
            "a partial reply of {} bytes is too short",
            payload.len()
        ));
    }
    let first = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    Ok((first, count, &payload[PARTIAL_HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake of a skip, as the worker's side sees it through the same shared memory:
    /// a task marked before it begins is skipped; one begun before it is marked is reported
    /// begun to the parent; a cleared slot skips nothing.
    #[test]
    fn a_task_is_skipped_if_marked_before_it_begins_and_reported_begun_otherwise() {
        let (ledger, fd) = Ledger::create().unwrap();
        // The worker's view: the same memfd mapped again, as the fork server maps it.
        let region = SharedRegion::map(&fd, LEDGER_BYTES).unwrap();
        let base = region.as_ptr();
        let worker_begins = |id: u64| {
            // SAFETY: a mapping of LEDGER_BYTES, alive for the closure's uses; offsets < DATA.
            unsafe {
                word(base, TASK).store(id + 1, Ordering::SeqCst);
                (0..SKIP_SLOTS).all(|s| word(base, SKIPS + 8 * s).load(Ordering::SeqCst) != id + 1)
            }
        };
        assert!(ledger.skip(2, 41), "task 41 has not begun");
        assert!(!worker_begins(41), "the worker skips task 41");
        assert!(worker_begins(42), "task 42 was not marked");
        assert!(!ledger.skip(3, 42), "task 42 had begun");
        ledger.clear_skip(3);
        ledger.clear_skip(2);
        assert!(worker_begins(41), "a cleared slot skips nothing");
    }

    #[test]
    fn a_ledger_never_written_is_no_task_and_garbage_is_an_error() {
        let (ledger, _fd) = Ledger::create().unwrap();
        assert_eq!(ledger.committed(0), Ok(None));
        ledger.forge(8, 0, 3 << 32 | 5, b"abcde");
        assert_eq!(ledger.committed(6), Ok(None));
        assert_eq!(
            ledger.committed(7),
            Ok(Some(Committed {
                first: 0,
                count: 3,
                bytes: b"abcde".to_vec()
            }))
        );
        ledger.forge(8, 0, 1 << 32 | u32::MAX as u64, b"");
        assert!(ledger.committed(7).unwrap_err().contains("more than"));
        ledger.forge(8, 0, 5, b"");
        assert!(ledger.committed(7).unwrap_err().contains("no item"));
    }

    /// The parent's copy of the held replies: what the word says, whole frames; a length past
    /// the area is garbage; a generation that changed during the copy is no copy.
    #[test]
    fn held_replies_are_copied_as_published_and_garbage_is_an_error() {
        let (ledger, _fd) = Ledger::create().unwrap();
        assert_eq!(ledger.held(), Ok(Some(Vec::new())));
        ledger.forge_held(3 << 32 | 5, b"abcdefgh");
        assert_eq!(ledger.held_word(), 3 << 32 | 5);
        assert_eq!(ledger.held(), Ok(Some(b"abcde".to_vec())));
        ledger.forge_held(3 << 32 | (HELD_BYTES as u64 + 1), b"");
        assert!(ledger.held().unwrap_err().contains("more than"));
        // The data area ends where the held replies begin.
        ledger.forge(1, 0, 1 << 32 | (data_room(LEDGER_BYTES) as u64 + 1), b"");
        assert!(ledger.committed(0).unwrap_err().contains("more than"));
    }

    /// The worker's side through the same shared memory: held frames are published with their
    /// length, a flush writes them to the pipe in one piece and starts a new generation.
    #[test]
    fn a_flush_writes_the_held_frames_and_starts_a_new_generation() {
        use std::os::fd::AsRawFd;
        let (ledger, fd) = Ledger::create().unwrap();
        // The worker's view: the same memfd mapped again, as the fork server maps it.
        let region = SharedRegion::map(&fd, LEDGER_BYTES).unwrap();
        let (base, len) = (region.as_ptr(), region.len());
        let (read, write) = sys::pipe().unwrap();
        // SAFETY: `region` is a ledger mapping of `len` bytes that outlives these calls, and
        // only this thread writes it.
        unsafe {
            assert!(hold_in(base, len, [b"one", b"!"]));
            assert!(hold_in(base, len, [b"two", b""]));
            assert_eq!(ledger.held(), Ok(Some(b"one!two".to_vec())));
            let big = vec![0u8; HELD_BYTES];
            assert!(
                !hold_in(base, len, [&big, b""]),
                "no room: written at once instead"
            );
            assert_eq!(flush_in(base, len, write.as_raw_fd()).unwrap(), 7);
        }
        assert_eq!(
            ledger.held_word(),
            1 << 32,
            "a new generation, nothing held"
        );
        let mut got = [0u8; 16];
        let n = sys::read(read.as_raw_fd(), &mut got).unwrap();
        assert_eq!(&got[..n], b"one!two");
    }

    #[test]
    fn a_partial_payload_shorter_than_its_header_is_an_error() {
        assert!(parse_partial(&[0; 15]).is_err());
        let mut p = 7u64.to_le_bytes().to_vec();
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(b"xy");
        assert_eq!(parse_partial(&p), Ok((7, 2, &b"xy"[..])));
    }
}
