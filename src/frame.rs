//! Length-prefixed frames on a pipe, and the two message layouts carried in them.
//!
//! Every frame is a little-endian `u64` body length followed by the body:
//!
//! ```text
//! task  (parent -> worker): | len u64 | id u64 | trampoline u64 | function u64 | limit u64 | argument ... |
//! reply (worker -> parent): | len u64 | id u64 | status u8 | run_us u32 | payload ... |
//! ```
//!
//! A worker's first reply is a `Ready` frame (id 0, no payload), sent once its initializer has
//! run: a worker that dies before it is ready failed to start, not in a task. A chunk of
//! `map_each` may send `Partial` frames before its reply, when its results overflow the
//! worker's ledger (see [`crate::ledger`]).
//!
//! `limit` is the task's time limit per item in microseconds, 0 for none. The status byte's top
//! bit says the worker retires after this reply (it passed its memory cap). `run_us` is how long
//! the task ran, measured in the worker from taking the task to having its reply ready
//! (saturating), which is what the dispatcher judges a task's length by: unlike the time
//! between sending a task and reading its reply, it does not grow when the processes wait for a
//! CPU on a busy machine (issue 9). The argument and a
//! successful reply's payload are codec bytes; a failed reply's payload is a
//! UTF-8 message. A frame's length is checked against a limit before anything is allocated for
//! it, and a large frame is read straight into a buffer of its own size, so a 64 MiB result is
//! never copied after the kernel hands it over.

use std::io;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::sys;

/// Bytes in the length prefix.
pub(crate) const LEN: usize = 8;
/// Bytes of a task body before the argument: id, trampoline, function, limit.
pub(crate) const TASK_HEADER: usize = 32;
/// The status byte's flag for "this worker exits after this reply".
const RETIRING: u8 = 0x80;
/// Bytes of a reply body before the payload: id, status, run time.
pub(crate) const REPLY_HEADER: usize = 13;
/// How much a reader asks the kernel for when it is between frames or in a small one.
const READ_CHUNK: usize = 64 * 1024;

/// A frame alone in the reader's buffer, at least this long, takes the buffer with it; a
/// shorter one is copied out and the buffer stays. Handing over a 64 KiB buffer for a 20-byte
/// reply cost a 64 KiB allocation per read and, on its free, a consolidation of glibc's
/// fast bins (a free of 64 KiB or more triggers one): 4.5% of the dispatcher's time in W1.
const HAND_OVER: usize = 16 * 1024;

/// The least a reader grows its buffer by inside a large frame.
const GROW_STEP: usize = 1 << 20;

/// A frame's tail at least this long goes into the pipe as references to its pages
/// ([`sys::vmsplice`]), not copied: the reader's copy is then the only one.
pub(crate) const SPLICE_TAIL: usize = 256 << 10;

/// A payload at least this long is read into a buffer of its own, apart from its frame's
/// fixed fields (see [`FrameReader::split_after`]).
pub(crate) const LARGE_PAYLOAD: usize = 1 << 20;

/// A large payload of at most this many bytes gets its whole buffer at once (one allocation,
/// no growth, huge pages asked for); a longer announced length is believed only once a
/// quarter of it has arrived (the buffer grows by doubling until then).
const TRUSTED_PAYLOAD: usize = 256 << 20;
/// A reader keeps a spare payload buffer (see [`FrameReader::keep_spare`]) of at most this
/// capacity.
const SPARE_MAX: usize = TRUSTED_PAYLOAD;
/// How long a reader keeps an unused spare (see [`FrameReader::drop_spare_if_idle`]).
pub(crate) const SPARE_KEEP: Duration = Duration::from_secs(1);

/// The largest frame body accepted unless the pool is told otherwise: 4 GiB.
pub(crate) const DEFAULT_MAX_FRAME: u64 = 4 << 30;

/// What a task is: the fixed fields at the front of a task frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskHeader {
    pub(crate) id: u64,
    pub(crate) trampoline: u64,
    pub(crate) function: u64,
    /// Time limit per item, in microseconds; 0 for none.
    pub(crate) limit_us: u64,
}

/// How a task ended, as the worker reports it in the reply's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    /// The payload is the encoded result.
    Ok = 0,
    /// The task panicked; the payload is the message.
    Panicked = 1,
    /// The result failed to encode; the payload is the codec's message.
    EncodeFailed = 2,
    /// The argument failed to decode; the payload is the codec's message.
    DecodeFailed = 3,
    /// The worker's initializer panicked; the payload is its message.
    InitializerPanicked = 4,
    /// Not an answer: the worker has run its initializer and takes tasks. Its first frame.
    Ready = 5,
    /// Not the answer yet: some of the running chunk's results, sent early because they
    /// overflowed the worker's ledger (see [`crate::ledger`]). The payload is the position of
    /// the first item within the task (`u64`), the number of items (`u64`), and their encoded
    /// results back to back; the task's final reply carries the items after them.
    Partial = 6,
    /// The task was not run: the parent cancelled it while it waited in the worker's pipe and
    /// asked, through the worker's ledger, that it be skipped (see [`crate::ledger`]). No
    /// payload.
    Skipped = 7,
}

impl Status {
    fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Panicked,
            2 => Status::EncodeFailed,
            3 => Status::DecodeFailed,
            4 => Status::InitializerPanicked,
            5 => Status::Ready,
            6 => Status::Partial,
            7 => Status::Skipped,
            _ => return None,
        })
    }
}

/// A frame on its way out, in two parts written back to back: the head (length prefix, fixed
/// fields, and usually the payload) and a tail, which is a raw byte payload moved in whole
/// rather than copied into the head.
#[derive(Debug, Default)]
pub(crate) struct OutFrame {
    pub(crate) head: Vec<u8>,
    pub(crate) tail: Vec<u8>,
}

impl OutFrame {
    /// Bytes on the wire.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Bytes in the body: what a reader checks against its limit.
    pub(crate) fn body_len(&self) -> u64 {
        (self.len() - LEN) as u64
    }

    /// The bytes from `offset` on, as at most two slices.
    pub(crate) fn parts_from(&self, offset: usize) -> [&[u8]; 2] {
        let h = self.head.len();
        if offset < h {
            [&self.head[offset..], &self.tail]
        } else {
            [&[], &self.tail[offset - h..]]
        }
    }

    /// The parts to write from `offset` on: as [`parts_from`](Self::parts_from), except that a
    /// large tail is left out, for [`spliced_from`](Self::spliced_from) to hand over.
    pub(crate) fn copied_parts_from(&self, offset: usize) -> [&[u8]; 2] {
        let [head, tail] = self.parts_from(offset);
        [head, if self.splices_tail() { &[] } else { tail }]
    }

    /// The rest of a large tail, if `offset` is inside one: bytes to give a pipe by
    /// [`sys::vmsplice`] rather than copy into it. The frame must then stay unchanged and
    /// alive until the reader has read it.
    pub(crate) fn spliced_from(&self, offset: usize) -> Option<&[u8]> {
        let h = self.head.len();
        (self.splices_tail() && offset >= h && offset < self.len())
            .then(|| &self.tail[offset - h..])
    }

    /// True if the tail goes to the pipe by page references ([`SPLICE_TAIL`]).
    pub(crate) fn splices_tail(&self) -> bool {
        self.tail.len() >= SPLICE_TAIL
    }

    /// Fills in the length prefix, counting the tail.
    pub(crate) fn seal(&mut self) {
        let body = (self.len() - LEN) as u64;
        self.head[..LEN].copy_from_slice(&body.to_le_bytes());
    }
}

/// Starts a task frame; the caller adds the encoded argument, then calls [`OutFrame::seal`].
pub(crate) fn begin_task(header: TaskHeader) -> Vec<u8> {
    let mut frame = Vec::with_capacity(LEN + TASK_HEADER + 64);
    frame.extend_from_slice(&[0; LEN]);
    frame.extend_from_slice(&header.id.to_le_bytes());
    frame.extend_from_slice(&header.trampoline.to_le_bytes());
    frame.extend_from_slice(&header.function.to_le_bytes());
    frame.extend_from_slice(&header.limit_us.to_le_bytes());
    frame
}

/// The fixed fields of a task frame built by [`begin_task`] (length prefix included), or `None`
/// if it is too short to hold them.
#[cfg(feature = "mpi")]
pub(crate) fn task_header(frame: &[u8]) -> Option<TaskHeader> {
    let word = |i: usize| Some(u64::from_le_bytes(frame.get(i..i + 8)?.try_into().ok()?));
    Some(TaskHeader {
        id: word(LEN)?,
        trampoline: word(LEN + 8)?,
        function: word(LEN + 16)?,
        limit_us: word(LEN + 24)?,
    })
}

/// Rewrites the trampoline and function addresses of a task frame built by [`begin_task`].
#[cfg(feature = "mpi")]
pub(crate) fn set_task_addresses(frame: &mut [u8], trampoline: u64, function: u64) {
    frame[LEN + 8..LEN + 16].copy_from_slice(&trampoline.to_le_bytes());
    frame[LEN + 16..LEN + 24].copy_from_slice(&function.to_le_bytes());
}

/// Where a task frame's argument starts (length prefix included).
pub(crate) const TASK_ARG_START: usize = LEN + TASK_HEADER;

/// Sets the id and the time limit of a task frame built by [`begin_task`].
pub(crate) fn stamp_task(frame: &mut [u8], id: u64, limit_us: u64) {
    frame[LEN..LEN + 8].copy_from_slice(&id.to_le_bytes());
    frame[LEN + 24..LEN + 32].copy_from_slice(&limit_us.to_le_bytes());
}

/// Starts a reply frame in `out` (cleared first); the caller appends the payload, then seals
/// it.
pub(crate) fn begin_reply(out: &mut Vec<u8>, id: u64, status: Status) {
    out.clear();
    out.extend_from_slice(&[0; LEN]);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(status as u8);
    out.extend_from_slice(&[0; 4]);
}

/// Writes into a reply frame how long its task ran in the worker (microseconds, saturating).
pub(crate) fn set_reply_run_time(frame: &mut [u8], run: Duration) {
    let us = u32::try_from(run.as_micros()).unwrap_or(u32::MAX);
    frame[LEN + 9..LEN + 13].copy_from_slice(&us.to_le_bytes());
}

/// Rewrites a reply frame's status byte, and whether the worker retires after it.
pub(crate) fn set_reply_status(frame: &mut [u8], status: Status, retiring: bool) {
    frame[LEN + 8] = status as u8 | if retiring { RETIRING } else { 0 };
}

/// The length of a reply frame holding no payload yet: where its payload starts.
pub(crate) const REPLY_PAYLOAD_START: usize = LEN + REPLY_HEADER;

/// Fills in the length prefix of a one-part frame.
#[cfg(test)]
pub(crate) fn seal(frame: &mut [u8]) {
    let body = (frame.len() - LEN) as u64;
    frame[..LEN].copy_from_slice(&body.to_le_bytes());
}

/// Splits a task body into its header and argument bytes.
pub(crate) fn parse_task(mut body: Bytes) -> Option<(TaskHeader, Bytes)> {
    let fixed = body.fixed(TASK_HEADER)?;
    let word = |i: usize| u64::from_le_bytes(fixed[i * 8..i * 8 + 8].try_into().unwrap());
    let header = TaskHeader {
        id: word(0),
        trampoline: word(1),
        function: word(2),
        limit_us: word(3),
    };
    body.advance(TASK_HEADER);
    Some((header, body))
}

/// A reply as the parent receives it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) status: Status,
    /// The worker exits after this reply.
    pub(crate) retiring: bool,
    /// How long the task ran, as the worker measured it.
    pub(crate) run: Duration,
    pub(crate) payload: Bytes,
}

/// Splits a reply body into its id, status and payload.
pub(crate) fn parse_reply(mut body: Bytes) -> Result<Reply, String> {
    let Some(fixed) = body.fixed(REPLY_HEADER) else {
        return Err(format!(
            "a reply of {} bytes is too short",
            body.total_len()
        ));
    };
    let id = u64::from_le_bytes(fixed[..8].try_into().unwrap());
    let status = Status::from_byte(fixed[8] & !RETIRING)
        .ok_or_else(|| format!("unknown status byte {} in a reply", fixed[8]))?;
    let retiring = fixed[8] & RETIRING != 0;
    let run_us = u32::from_le_bytes(fixed[9..13].try_into().unwrap());
    body.advance(REPLY_HEADER);
    Ok(Reply {
        id,
        status,
        retiring,
        run: Duration::from_micros(run_us.into()),
        payload: body,
    })
}

/// Cuts whole frames laid back to back (a worker's held replies: `ledger`) into their bodies.
/// `Err` if the last one is cut short.
pub(crate) fn split_frames(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut bodies = Vec::new();
    while !bytes.is_empty() {
        let len = bytes
            .get(..LEN)
            .map(|prefix| u64::from_le_bytes(prefix.try_into().expect("LEN bytes")))
            .and_then(|len| usize::try_from(len).ok())
            .filter(|len| *len <= bytes.len() - LEN)
            .ok_or_else(|| format!("a frame cut short in {} bytes", bytes.len()))?;
        bodies.push(&bytes[LEN..LEN + len]);
        bytes = &bytes[LEN + len..];
    }
    Ok(bodies)
}

/// An owned byte buffer viewed from an offset: a frame body handed on without copying.
///
/// A large frame's body comes in two parts: its fixed fields in `fixed`, and its payload alone
/// in `buf` from offset 0, so that handing the payload on as a `Vec` moves no byte. Such a body
/// is read through [`fixed`](Self::fixed) and [`advance`](Self::advance) past the fixed fields
/// before anything else looks at it (only this module's parsers see it before that).
#[derive(Debug, Default)]
pub(crate) struct Bytes {
    buf: Vec<u8>,
    start: usize,
    fixed: Vec<u8>,
}

impl Bytes {
    /// `buf` from `start` on.
    pub(crate) fn from_vec(buf: Vec<u8>, start: usize) -> Bytes {
        debug_assert!(start <= buf.len());
        Bytes {
            buf,
            start,
            fixed: Vec::new(),
        }
    }

    /// The first `n` bytes (a body's fixed fields), if the body has that many.
    fn fixed(&self, n: usize) -> Option<&[u8]> {
        if self.fixed.is_empty() {
            self.buf.get(self.start..self.start.checked_add(n)?)
        } else {
            // A split body's fixed part is exactly its reader's `split_after` length.
            self.fixed.get(..n)
        }
    }

    /// Bytes in all, fixed part included.
    fn total_len(&self) -> usize {
        self.fixed.len() + self.buf.len() - self.start
    }

    /// Drops the first `n` bytes: a split body's whole fixed part, whatever `n` is.
    fn advance(&mut self, n: usize) {
        if self.fixed.is_empty() {
            self.start += n;
        } else {
            debug_assert_eq!(
                n,
                self.fixed.len(),
                "a split body is advanced past its fixed part"
            );
            self.fixed = Vec::new();
        }
    }

    /// The buffer and where the bytes start in it.
    pub(crate) fn into_parts(self) -> (Vec<u8>, usize) {
        debug_assert!(
            self.fixed.is_empty(),
            "a split body taken before its fixed part"
        );
        (self.buf, self.start)
    }

    /// The bytes as a `Vec` of their own: the buffer itself, its head cut off in place (a
    /// move within memory already touched, not a new allocation).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        let mut buf = self.buf;
        buf.drain(..self.start);
        buf
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        debug_assert!(
            self.fixed.is_empty(),
            "a split body read before its fixed part"
        );
        &self.buf[self.start..]
    }
}

/// Why a frame could not be taken from a reader.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The length prefix is above the reader's limit.
    TooLarge { len: u64, max: u64 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "a frame of {len} bytes is above the limit of {max} bytes"
                )
            }
        }
    }
}

/// Accumulates bytes read from a pipe and cuts them into frames.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// Where the first frame not yet taken starts in `buf`.
    start: usize,
    max: u64,
    /// Bytes of fixed fields at the front of each body (0: no splitting).
    fixed: usize,
    /// The large frame being read, apart from `buf`.
    large: Option<Large>,
    /// A buffer whose pages are already mapped, for the next large payload, and since when it
    /// waits (see [`keep_spare`](Self::keep_spare)).
    spare: Option<(Vec<u8>, Instant)>,
}

/// A large frame on its way in: its fixed fields, and its payload in a buffer of its own.
#[derive(Debug)]
struct Large {
    fixed: Vec<u8>,
    payload: Vec<u8>,
    /// The payload's whole length.
    len: usize,
}

impl FrameReader {
    pub(crate) fn new(max: u64) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            max,
            fixed: 0,
            large: None,
            spare: None,
        }
    }

    /// Keeps `buf`, a large payload's buffer its owner is done with, to read the next large
    /// payload into (its contents are never seen: the payload read replaces them).
    ///
    /// Fresh memory costs a page fault per page, and in a virtual machine whose host takes
    /// freed memory back (a balloon's free page reporting, as in Firecracker), each of those
    /// faults is the host's too: on this project's test machine a 64 MiB echo took 30 ms with
    /// memory the guest still had and up to 220 ms without, at random (5.5 ms per 2 MiB
    /// page). A large payload that comes after another one of about its size lands in the
    /// pages of the one before, as a raw pipe echo does with its one buffer. Kept: one spare,
    /// the larger, up to [`SPARE_MAX`] bytes, for [`SPARE_KEEP`] unless used.
    pub(crate) fn keep_spare(&mut self, mut buf: Vec<u8>, now: Instant) {
        let cap = buf.capacity();
        if !(LARGE_PAYLOAD..=SPARE_MAX).contains(&cap)
            || self
                .spare
                .as_ref()
                .is_some_and(|(s, _)| s.capacity() >= cap)
        {
            return;
        }
        buf.clear();
        self.spare = Some((buf, now));
    }

    /// When the spare buffer will have waited [`SPARE_KEEP`], if one is kept.
    pub(crate) fn spare_due(&self) -> Option<Instant> {
        self.spare.as_ref().map(|(_, since)| *since + SPARE_KEEP)
    }

    /// Drops the spare buffer if it has waited [`SPARE_KEEP`].
    pub(crate) fn drop_spare_if_idle(&mut self, now: Instant) {
        if self.spare_due().is_some_and(|due| now >= due) {
            self.spare = None;
        }
    }

    /// Drops the spare buffer, if any.
    pub(crate) fn drop_spare(&mut self) {
        self.spare = None;
    }

    /// A buffer for a large payload of `len` bytes: the spare, if it holds the payload and is
    /// not more than twice its size.
    fn payload_buffer(&mut self, len: usize) -> Vec<u8> {
        match self.spare.take() {
            Some((buf, _)) if buf.capacity() >= len && buf.capacity() / 2 <= len => buf,
            other => {
                self.spare = other;
                Vec::new()
            }
        }
    }

    /// Reads the payload of every large frame (one whose payload is at least
    /// [`LARGE_PAYLOAD`]) into a buffer of its own, apart from the body's first `fixed` bytes:
    /// the payload then starts at offset 0 and becomes a `Vec` without moving (a 64 MiB
    /// `Vec<u8>` result would otherwise be shifted by its 13-byte header, a copy of it all).
    pub(crate) fn split_after(mut self, fixed: usize) -> FrameReader {
        self.fixed = fixed;
        self
    }

    /// The body length of the frame at the front, once its prefix is in, checked against the
    /// limit.
    fn front_len(&self) -> Result<Option<usize>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < LEN {
            return Ok(None);
        }
        let len = u64::from_le_bytes(avail[..LEN].try_into().unwrap());
        if len > self.max || len > isize::MAX as u64 - LEN as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        Ok(Some(len as usize))
    }

    /// Takes the next whole frame's body, if one is buffered.
    pub(crate) fn take(&mut self) -> Result<Option<Bytes>, FrameError> {
        self.take_into(&mut Vec::new())
    }

    /// [`take`](Self::take), copying a small body into a buffer from `spares` (the last one,
    /// cleared) rather than a new allocation. The dispatcher gives it the frames of finished
    /// tasks: a caller's thread allocated them, and gets the body back, so the memory is freed
    /// where it came from (glibc frees memory of another thread's arena under that arena's
    /// lock, which the caller's allocations contend for).
    pub(crate) fn take_into(
        &mut self,
        spares: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Bytes>, FrameError> {
        if let Some(large) = &self.large {
            if large.payload.len() < large.len {
                return Ok(None);
            }
            let large = self.large.take().expect("checked above");
            return Ok(Some(Bytes {
                buf: large.payload,
                start: 0,
                fixed: large.fixed,
            }));
        }
        let Some(len) = self.front_len()? else {
            return Ok(None);
        };
        let end = self.start + LEN + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body = if self.start == 0 && end == self.buf.len() && len >= HAND_OVER {
            // The frame is all we hold: hand the buffer over as it is.
            Bytes {
                buf: std::mem::take(&mut self.buf),
                start: LEN,
                fixed: Vec::new(),
            }
        } else {
            let bytes = &self.buf[self.start + LEN..end];
            let body = match spares.pop() {
                Some(mut spare) => {
                    spare.clear();
                    spare.extend_from_slice(bytes);
                    spare
                }
                None => bytes.to_vec(),
            };
            self.start = end;
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            Bytes {
                buf: body,
                start: 0,
                fixed: Vec::new(),
            }
        };
        Ok(Some(body))
    }

    /// Reads once from `fd` (which may be non-blocking). `Ok(0)` is end of file.
    ///
    /// Inside a large frame it asks for exactly the rest of that frame, so the frame ends up
    /// alone in a buffer of its own size and [`take`](Self::take) moves it out without a copy.
    pub(crate) fn fill(&mut self, fd: RawFd) -> io::Result<usize> {
        self.fill_from(|buf, want| sys::read_into_spare(fd, buf, want))
    }

    /// [`fill`](Self::fill) from any source: `read(buf, want)` appends at most `want` bytes to
    /// `buf`, which has room for them, and returns how many.
    pub(crate) fn fill_from(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>, usize) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if let Some(large) = &mut self.large {
            return large.fill(read);
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let want = match self.front_len() {
            Ok(Some(len)) if self.fixed > 0 && len >= self.fixed + LARGE_PAYLOAD => {
                let head = LEN + self.fixed;
                if self.buf.len() < head {
                    // The fixed fields first, and no byte of the payload with them.
                    head - self.buf.len()
                } else {
                    // The frame is alone in `buf` (it is the front one, and reads stop at its
                    // end): what has come of its payload moves to a buffer of its own.
                    let mut large = Large {
                        fixed: self.buf[LEN..head].to_vec(),
                        payload: self.payload_buffer(len - self.fixed),
                        len: len - self.fixed,
                    };
                    large.reserve(self.buf.len() - head)?;
                    large.payload.extend_from_slice(&self.buf[head..]);
                    self.buf.clear();
                    return self.large.insert(large).fill(read);
                }
            }
            Ok(Some(len)) if LEN + len > self.buf.len() + READ_CHUNK => LEN + len - self.buf.len(),
            // A frame over the limit is reported by `take`; read a little so the caller sees it.
            _ => READ_CHUNK,
        };
        // Grow with the data, not with the announced length: a length prefix costs the sender
        // nothing, so it must not make us reserve gigabytes (that abort cannot be caught).
        // Doubling keeps a large frame's reads in a buffer of about its own size.
        let step = want.min(self.buf.len().max(GROW_STEP));
        if self.buf.capacity() - self.buf.len() < step {
            self.buf
                .try_reserve_exact(step)
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        }
        // Read no further than the frame, so a large frame's buffer holds that frame alone.
        let room = want.min(self.buf.capacity() - self.buf.len());
        read(&mut self.buf, room)
    }

    /// The whole length (prefix included) of a frame whose prefix is in but whose body is not
    /// yet complete: how much the sender has still to push through the pipe.
    pub(crate) fn partial_len(&self) -> Option<usize> {
        if let Some(large) = &self.large {
            return Some(LEN + self.fixed + large.len);
        }
        let len = self.front_len().ok()??;
        (self.buf.len() - self.start < LEN + len).then_some(LEN + len)
    }

    /// True if no bytes of a next frame are buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.large.is_none() && self.start == self.buf.len()
    }
}

impl Large {
    /// Makes room in the payload buffer for the next read, having `arrived` bytes at hand
    /// beyond what it holds. A payload up to [`TRUSTED_PAYLOAD`] gets its whole buffer at once,
    /// with huge pages asked for; a longer one grows by doubling with what arrives, as
    /// [`FrameReader::fill_from`] explains.
    fn reserve(&mut self, arrived: usize) -> io::Result<()> {
        let have = self.payload.len();
        // A longer payload is believed once a quarter of it has come: its sender has paid
        // for that much, and the buffer it then gets is at most four times what arrived.
        let believed = self.len <= TRUSTED_PAYLOAD || have >= self.len / 4;
        let step = if believed {
            self.len - have
        } else {
            (self.len - have).min(have.max(arrived).max(GROW_STEP))
        };
        if self.payload.capacity() - have < step {
            self.payload
                .try_reserve_exact(step)
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
            if believed {
                // Once, on the buffer's last allocation: the hint splits the mapping, which
                // would make a later reallocation copy instead of remap.
                sys::advise_huge(&mut self.payload);
            }
        }
        Ok(())
    }

    fn fill(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>, usize) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.reserve(0)?;
        let room =
            (self.len - self.payload.len()).min(self.payload.capacity() - self.payload.len());
        read(&mut self.payload, room)
    }
}

/// Feeds `input` to a [`FrameReader`] in pieces (sizes drawn from the input itself) and parses
/// every whole frame as a reply, the way the dispatcher does. Returns the number of replies, or
/// the first error. It must never panic, and never buffer a frame above `max`.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn parse_reply_stream(input: &[u8], max: u64) -> Result<usize, String> {
    let Some((&seed, mut rest)) = input.split_first() else {
        return Ok(0);
    };
    let mut reader = FrameReader::new(max).split_after(REPLY_HEADER);
    let mut replies = 0;
    let mut step = seed as usize + 1;
    loop {
        while let Some(body) = reader.take().map_err(|e| e.to_string())? {
            if body.total_len() as u64 > max {
                panic!(
                    "a frame of {} bytes passed a limit of {max}",
                    body.total_len()
                );
            }
            parse_reply(body)?;
            replies += 1;
        }
        if rest.is_empty() {
            return if reader.is_empty() {
                Ok(replies)
            } else {
                Err("input ends inside a frame".into())
            };
        }
        let piece = &rest[..step.min(rest.len())];
        step = step * 7 % 4093 + 1;
        let taken = reader
            .fill_from(|buf, want| {
                let n = piece.len().min(want);
                buf.extend_from_slice(&piece[..n]);
                Ok(n)
            })
            .map_err(|e| e.to_string())?;
        rest = &rest[taken..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small body taken into a spare buffer is the same body, in that buffer; without a
    /// spare it gets a buffer of its own.
    #[test]
    fn a_small_body_is_copied_into_a_spare_buffer() {
        let mut reader = FrameReader::new(1 << 20);
        let mut input = Vec::new();
        for body in [&b"first"[..], b"second"] {
            input.extend_from_slice(&(body.len() as u64).to_le_bytes());
            input.extend_from_slice(body);
        }
        reader
            .fill_from(|buf, want| {
                let n = input.len().min(want);
                buf.extend_from_slice(&input[..n]);
                Ok(n)
            })
            .unwrap();
        let spare = Vec::with_capacity(64);
        let spare_at = spare.as_ptr();
        let mut spares = vec![spare];
        let first = reader.take_into(&mut spares).unwrap().unwrap().into_vec();
        assert_eq!(first, b"first");
        assert_eq!(first.as_ptr(), spare_at, "the spare holds it");
        assert!(spares.is_empty());
        let second = reader.take_into(&mut spares).unwrap().unwrap().into_vec();
        assert_eq!(second, b"second");
        assert!(reader.take_into(&mut spares).unwrap().is_none());
    }

    #[test]
    fn frames_back_to_back_split_into_bodies_and_a_cut_one_is_an_error() {
        let mut bytes = Vec::new();
        for body in [&b"abc"[..], b"", b"defgh"] {
            bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
            bytes.extend_from_slice(body);
        }
        assert_eq!(
            split_frames(&bytes).unwrap(),
            vec![&b"abc"[..], b"", b"defgh"]
        );
        assert!(split_frames(&bytes[..bytes.len() - 1]).is_err());
        assert!(split_frames(&bytes[..3]).is_err());
        assert!(split_frames(&u64::MAX.to_le_bytes()).is_err());
        assert_eq!(split_frames(&[]).unwrap(), Vec::<&[u8]>::new());
    }
    use std::os::fd::AsRawFd;

    #[test]
    fn task_frame_round_trip() {
        let header = TaskHeader {
            id: 7,
            trampoline: 0xdead,
            function: 0xbeef,
            limit_us: 0,
        };
        let mut frame = begin_task(header);
        frame.extend_from_slice(b"arg");
        seal(&mut frame);
        stamp_task(&mut frame, 7, 1500);
        let header = TaskHeader {
            limit_us: 1500,
            ..header
        };
        let (r, w) = sys::pipe().unwrap();
        sys::write(w.as_raw_fd(), &frame).unwrap();
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        assert!(reader.take().unwrap().is_none());
        reader.fill(r.as_raw_fd()).unwrap();
        let body = reader.take().unwrap().unwrap();
        let (parsed, arg) = parse_task(body).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(&arg[..], b"arg");
        assert_eq!(arg.into_vec(), b"arg");
        assert!(reader.is_empty());
    }

    #[test]
    fn replies_split_across_reads_and_packed_together() {
        let mut stream = Vec::new();
        for i in 0..3u64 {
            let mut f = Vec::new();
            begin_reply(&mut f, i, Status::Ok);
            f.extend_from_slice(&vec![i as u8; 100_000 * i as usize]);
            seal(&mut f);
            stream.extend_from_slice(&f);
        }
        let (r, w) = sys::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut off = 0;
            while off < stream.len() {
                off += sys::write(w.as_raw_fd(), &stream[off..]).unwrap();
            }
        });
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        let mut got = Vec::new();
        while got.len() < 3 {
            while let Some(body) = reader.take().unwrap() {
                got.push(parse_reply(body).unwrap());
            }
            if got.len() < 3 {
                assert!(reader.fill(r.as_raw_fd()).unwrap() > 0);
            }
        }
        writer.join().unwrap();
        for (i, reply) in got.iter().enumerate() {
            assert_eq!(reply.id, i as u64);
            assert_eq!(reply.payload.len(), 100_000 * i);
            assert!(reply.payload.iter().all(|&b| b == i as u8));
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let (r, w) = sys::pipe().unwrap();
        sys::write(w.as_raw_fd(), &u64::MAX.to_le_bytes()).unwrap();
        let mut reader = FrameReader::new(1024);
        reader.fill(r.as_raw_fd()).unwrap();
        assert!(matches!(reader.take(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn reply_streams_in_any_pieces() {
        let mut stream = vec![3u8];
        for i in 0..5u64 {
            let mut f = Vec::new();
            begin_reply(&mut f, i, Status::Ok);
            f.extend_from_slice(&vec![7; 5000 * i as usize]);
            seal(&mut f);
            stream.extend_from_slice(&f);
        }
        assert_eq!(parse_reply_stream(&stream, DEFAULT_MAX_FRAME), Ok(5));
        assert!(parse_reply_stream(&stream[..stream.len() - 1], DEFAULT_MAX_FRAME).is_err());
        assert!(parse_reply_stream(&stream, 4000).is_err());
    }

    /// Regression (found by the fuzzer): a length prefix made the reader reserve the whole
    /// announced length at once, so 8 bytes from a worker could abort the parent on a system
    /// that refused the allocation.
    #[test]
    fn a_huge_length_prefix_reserves_only_what_arrives() {
        let mut reader = FrameReader::new(u64::MAX);
        let mut input = (1u64 << 62).to_le_bytes().to_vec();
        input.push(0);
        let mut fed = false;
        for _ in 0..3 {
            reader
                .fill_from(|buf, want| {
                    let piece: &[u8] = if fed { &[0; 100] } else { &input };
                    fed = true;
                    let n = piece.len().min(want);
                    buf.extend_from_slice(&piece[..n]);
                    Ok(n)
                })
                .unwrap();
            assert!(reader.take().unwrap().is_none());
            assert!(
                reader.buf.capacity() <= 4 << 20,
                "reserved {}",
                reader.buf.capacity()
            );
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        let short = Bytes {
            buf: vec![1, 2, 3],
            ..Bytes::default()
        };
        assert!(parse_reply(short).is_err());
        let mut bad = vec![0u8; 9];
        bad[8] = 200;
        assert!(parse_reply(Bytes {
            buf: bad,
            ..Bytes::default()
        })
        .is_err());
    }

    /// A large reply's payload is read into a buffer of its own, from offset 0, in whatever
    /// pieces the pipe gives: it becomes the caller's `Vec` without a byte moved, and the
    /// frames around it are cut as before.
    #[test]
    fn a_large_payload_is_read_apart_from_its_header() {
        let big: Vec<u8> = (0..3 * LARGE_PAYLOAD + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut stream = Vec::new();
        for (id, payload) in [(1u64, &b"small"[..]), (2, &big[..]), (3, &b"after"[..])] {
            let mut f = Vec::new();
            begin_reply(&mut f, id, Status::Ok);
            f.extend_from_slice(payload);
            seal(&mut f);
            stream.extend_from_slice(&f);
        }
        for piece in [1usize, 7, 4096, 65_536, 1 << 20, stream.len()] {
            let mut reader = FrameReader::new(DEFAULT_MAX_FRAME).split_after(REPLY_HEADER);
            let mut rest = &stream[..];
            let mut got = Vec::new();
            while !rest.is_empty() {
                let n = reader
                    .fill_from(|buf, want| {
                        let n = piece.min(want).min(rest.len());
                        buf.extend_from_slice(&rest[..n]);
                        Ok(n)
                    })
                    .unwrap();
                rest = &rest[n..];
                while let Some(body) = reader.take().unwrap() {
                    got.push(parse_reply(body).unwrap());
                }
            }
            assert!(reader.is_empty());
            let ids: Vec<u64> = got.iter().map(|r| r.id).collect();
            assert_eq!(ids, [1, 2, 3], "pieces of {piece}");
            let payload = got.remove(1).payload;
            assert!(
                payload.fixed.is_empty() && payload.start == 0,
                "pieces of {piece}"
            );
            let ptr = payload.buf.as_ptr();
            let vec = payload.into_vec();
            assert_eq!(vec.as_ptr(), ptr, "into_vec moved the payload");
            assert_eq!(vec, big, "pieces of {piece}");
        }
    }

    /// A split body that ends inside its fixed fields is an error at the end of the input,
    /// and a huge announced length still reserves only what arrives.
    #[test]
    fn a_split_reader_still_trusts_only_what_arrives() {
        let mut reader = FrameReader::new(u64::MAX).split_after(REPLY_HEADER);
        let mut input = (1u64 << 62).to_le_bytes().to_vec();
        input.extend_from_slice(&[0; REPLY_HEADER + 100]);
        let mut fed = 0;
        for _ in 0..4 {
            fed += reader
                .fill_from(|buf, want| {
                    let n = want.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    Ok(n)
                })
                .unwrap();
            assert!(reader.take().unwrap().is_none());
            let reserved =
                reader.buf.capacity() + reader.large.as_ref().map_or(0, |l| l.payload.capacity());
            assert!(reserved <= 4 << 20, "reserved {reserved}");
        }
        assert!(!reader.is_empty());
    }
}
