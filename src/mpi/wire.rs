//! The messages between rank 0 and a serving rank, imported by both sides: their tags, their
//! layouts, and the outbox that sends them without blocking.
//!
//! Every message is a byte buffer; integers are little-endian.
//!
//! ```text
//! HELLO   (rank -> 0)  | processes u64 | pid u64 | identity len u64 | identity | host (UTF-8) |
//! VERDICT (0 -> rank)  | 0 welcome, or 1 refused u8 |
//! TASKS   (0 -> rank)  ( | items u32 | index flag u8 | [ index len u32 | index ] | task frame, its length prefix included | )*
//! RESULTS (rank -> 0)  ( | id u64 | kind u8 | a u64 | b u64 | len u64 | bytes | )*
//! END     (0 -> rank)  | 0 close, or 1 terminate u8 |
//! BYE     (rank -> 0)  (empty: the rank's local pool is down; it finalizes and exits)
//! CANCEL  (0 -> rank)  | count u32 | ( | id u64 | ){count}, count >= 1 |
//! ```
//!
//! A task frame is the crate's own (see `frame.rs`) with rank 0's task id in its id field and,
//! in its trampoline and function fields, offsets from the executable's load base instead of
//! addresses (see `identity.rs`). A task's index flag is 1 for a chunk of `map_each` (or of a
//! chunked imap), followed by where each item's argument starts in the frame
//! (`codec::SeqIndex::to_wire`: LEB128 deltas), so that the rank's local pool can run the
//! items after a lost one again on their own; 0 for any other task, with nothing after it. A
//! result's `kind` is 0 for success (`bytes` is the encoded
//! result) or the error it carries, with `a`, `b` and `bytes` holding its fields.
//!
//! CANCEL names tasks rank 0 sent that rank and whose result handle was cancelled: the rank
//! cancels them in its local pool (a queued one never runs, a running one has its worker
//! killed and replaced), and their outcome, `Error::Cancelled` (kind 12), comes back in
//! RESULTS. An id the rank no longer holds (its result crossed the CANCEL) is ignored.
//!
//! Every send is an `MPI_Isend` whose buffer the [`Outbox`] keeps until MPI is done with it,
//! so that neither side ever blocks sending a large message while the other one blocks sending
//! too.

use std::time::Duration;

use ::mpi::point_to_point::Destination;
use ::mpi::request::{Request, StaticScope};
use ::mpi::topology::{Communicator, SimpleCommunicator};
use ::mpi::Tag;

use crate::error::{Error, ExitCause};
use crate::result::Outcome;

pub(crate) const HELLO: Tag = 1;
pub(crate) const VERDICT: Tag = 2;
pub(crate) const TASKS: Tag = 3;
pub(crate) const RESULTS: Tag = 4;
pub(crate) const END: Tag = 5;
pub(crate) const BYE: Tag = 6;
pub(crate) const CANCEL: Tag = 7;

/// The largest message MPI carries (its counts are `int`s), less room for the fields around
/// a frame or a payload.
pub(crate) const MAX_MESSAGE: usize = i32::MAX as usize - 4096;
/// A batch this large is sent at once rather than grown further.
pub(crate) const BATCH_BYTES: usize = 8 << 20;

pub(crate) const WELCOME: u8 = 0;
pub(crate) const REFUSED: u8 = 1;
pub(crate) const CLOSE: u8 = 0;
pub(crate) const TERMINATE: u8 = 1;

/// A serving rank's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) processes: u64,
    pub(crate) pid: u64,
    pub(crate) identity: Vec<u8>,
    pub(crate) host: String,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.identity.len() + self.host.len());
        out.extend_from_slice(&self.processes.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&(self.identity.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(self.host.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Hello, String> {
        let mut r = Reader(bytes);
        let processes = r.u64()?;
        let pid = r.u64()?;
        let len = r.u64()?;
        let identity = r.bytes(len)?.to_vec();
        let host = String::from_utf8_lossy(r.0).into_owned();
        Ok(Hello {
            processes,
            pid,
            identity,
            host,
        })
    }
}

/// One entry of a TASKS message, as [`tasks`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskEntry<'a> {
    /// How many items the frame holds.
    pub(crate) items: u32,
    /// For a chunk of `map_each`: its index, in `SeqIndex::to_wire`'s form (unchecked: see
    /// `task::chunk_index`).
    pub(crate) index: Option<&'a [u8]>,
    /// The task frame, its length prefix included.
    pub(crate) frame: &'a [u8],
}

/// The bytes [`push_task`] appends for a frame of `frame_len` bytes and an index of
/// `index_len` bytes (if any; a bound of it gives a bound of the entry).
pub(crate) fn task_entry_len(frame_len: usize, index_len: Option<usize>) -> usize {
    4 + 1 + index_len.map_or(0, |n| 4 + n) + frame_len
}

/// Appends one task entry to a TASKS message. The index of a chunk of `map_each` must be
/// under 4 GiB (it is about the frame's size at most, and the frame is under
/// [`MAX_MESSAGE`]).
pub(crate) fn push_task(
    out: &mut Vec<u8>,
    items: u32,
    index: Option<&crate::codec::SeqIndex>,
    frame: [&[u8]; 2],
) {
    out.extend_from_slice(&items.to_le_bytes());
    match index {
        None => out.push(0),
        Some(index) => {
            out.push(1);
            // Its length, written once the index is (one pass over the items, not two).
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            index.to_wire(out);
            let len = u32::try_from(out.len() - at - 4).expect("an index under 4 GiB");
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
    out.extend_from_slice(frame[0]);
    out.extend_from_slice(frame[1]);
}

/// Splits a TASKS message into its entries, each frame with its length prefix. Frames above
/// `max_frame` bytes, an unknown index flag, or an entry cut short end the message with an
/// error.
pub(crate) fn tasks(
    mut bytes: &[u8],
    max_frame: u64,
) -> impl Iterator<Item = Result<TaskEntry<'_>, String>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let entry = (|| {
            let mut r = Reader(bytes);
            let items = r.u32()?;
            let index = match r.u8()? {
                0 => None,
                1 => {
                    let len = r.u32()?;
                    Some(r.bytes(u64::from(len))?)
                }
                flag => return Err(format!("a task entry with index flag {flag}")),
            };
            let at = bytes.len() - r.0.len();
            let len = r.u64()?;
            if len > max_frame {
                return Err(format!(
                    "a task frame of {len} bytes is above the limit of {max_frame}"
                ));
            }
            // The frame's end, its 8-byte length prefix included; past the message (or past
            // the address space, for a length near 2^64) it is an error.
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| len.checked_add(8 + at))
                .filter(|&end| end <= bytes.len())
                .ok_or("a TASKS message ends inside a frame")?;
            let frame = &bytes[at..end];
            bytes = &bytes[end..];
            Ok(TaskEntry {
                items,
                index,
                frame,
            })
        })();
        if entry.is_err() {
            bytes = &[];
        }
        Some(entry)
    })
}

/// A CANCEL message naming the tasks `ids` (at least one).
pub(crate) fn cancel_message(ids: &[u64]) -> Vec<u8> {
    debug_assert!(!ids.is_empty(), "a CANCEL names at least one task");
    let count = u32::try_from(ids.len()).expect("fewer than 2^32 tasks in a rank's hands");
    let mut out = Vec::with_capacity(4 + 8 * ids.len());
    out.extend_from_slice(&count.to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The task ids of a CANCEL message. A count of 0, or a message longer or shorter than its
/// count says, is an error.
pub(crate) fn cancelled_ids(bytes: &[u8]) -> Result<Vec<u64>, String> {
    let mut r = Reader(bytes);
    let count = r.u32()?;
    if count == 0 {
        return Err("a CANCEL message that names no task".into());
    }
    if r.0.len() as u64 != u64::from(count) * 8 {
        return Err(format!(
            "a CANCEL message of {count} ids in {} bytes",
            bytes.len()
        ));
    }
    (0..count).map(|_| r.u64()).collect()
}

/// Appends one outcome to a RESULTS message.
pub(crate) fn push_outcome(out: &mut Vec<u8>, id: u64, outcome: &Outcome) {
    let (kind, a, b, bytes): (u8, u64, u64, &[u8]) = match outcome {
        Ok(payload) => (0, 0, 0, payload),
        Err(e) => match e {
            Error::TaskPanicked { message, location } => {
                // The location (if any) first, its length in `a`, then the message.
                let location = location.as_deref().unwrap_or("");
                let mut text = Vec::with_capacity(location.len() + message.len());
                text.extend_from_slice(location.as_bytes());
                text.extend_from_slice(message.as_bytes());
                let a = if location.is_empty() {
                    0
                } else {
                    location.len() as u64 + 1
                };
                return push_raw(out, id, 1, a, 0, &text);
            }
            Error::WorkerDied { pid, cause, .. } => (2, u64::from(*pid), cause_code(*cause), &[]),
            Error::Encode { what, message } => (3, what_code(what), 0, message.as_bytes()),
            Error::Decode { what, message } => (4, what_code(what), 0, message.as_bytes()),
            Error::TimedOut { pid, limit } => (
                5,
                u64::from(*pid),
                limit.as_micros().min(u128::from(u64::MAX)) as u64,
                &[],
            ),
            Error::Terminated => (6, 0, 0, &[]),
            Error::InitializerPanicked { message } => (7, 0, 0, message.as_bytes()),
            Error::Protocol { pid, message } => (8, u64::from(*pid), 0, message.as_bytes()),
            Error::Closed => (9, 0, 0, &[]),
            Error::Item {
                index,
                items,
                source,
            } => {
                // The item's error, encoded as an outcome of its own.
                let mut inner = Vec::new();
                push_outcome(&mut inner, 0, &Err(source.duplicate()));
                return push_raw(out, id, 11, *index as u64, *items as u64, &inner);
            }
            Error::Cancelled => (12, 0, 0, &[]),
            other => {
                let message = other.to_string();
                return push_raw(out, id, 10, 0, 0, message.as_bytes());
            }
        },
    };
    push_raw(out, id, kind, a, b, bytes);
}

fn push_raw(out: &mut Vec<u8>, id: u64, kind: u8, a: u64, b: u64, bytes: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Splits a RESULTS message into `(id, outcome)` pairs. `host` names the rank's host in the
/// errors that name a worker.
pub(crate) fn outcomes(bytes: Vec<u8>, host: &str) -> Result<Vec<(u64, Outcome)>, String> {
    let mut r = Reader(&bytes);
    let mut spans = Vec::new();
    while !r.0.is_empty() {
        let id = r.u64()?;
        let kind = r.u8()?;
        let (a, b) = (r.u64()?, r.u64()?);
        let len = r.u64()?;
        let start = bytes.len() - r.0.len();
        r.bytes(len)?;
        spans.push((id, kind, a, b, start, start + len as usize));
    }
    let single = spans.len() == 1;
    let mut out = Vec::with_capacity(spans.len());
    let mut whole = Some(bytes);
    for (id, kind, a, b, start, end) in spans {
        let buf = whole.as_ref().expect("taken only for the last span");
        let text = || String::from_utf8_lossy(&buf[start..end]).into_owned();
        let outcome = match kind {
            0 if single => {
                // The only result: hand the message's own buffer on, without a copy.
                let mut buf = whole.take().expect("one span");
                buf.truncate(end);
                Ok(crate::frame::Bytes::from_vec(buf, start))
            }
            0 => Ok(crate::frame::Bytes::from_vec(buf[start..end].to_vec(), 0)),
            1 => {
                // `a` is 0 without a location, else its length plus one.
                let text = text();
                let split = (a as usize).saturating_sub(1).min(text.len());
                let (location, message) = if a == 0 || !text.is_char_boundary(split) {
                    (None, text)
                } else {
                    let (l, m) = text.split_at(split);
                    (Some(l.to_string()), m.to_string())
                };
                Err(Error::TaskPanicked { message, location })
            }
            2 => Err(Error::WorkerDied {
                pid: a as u32,
                cause: cause_from(b),
                host: Some(host.to_string()),
            }),
            3 => Err(Error::Encode {
                what: what_from(a),
                message: text(),
            }),
            4 => Err(Error::Decode {
                what: what_from(a),
                message: text(),
            }),
            5 => Err(Error::TimedOut {
                pid: a as u32,
                limit: Duration::from_micros(b),
            }),
            6 => Err(Error::Terminated),
            7 => Err(Error::InitializerPanicked { message: text() }),
            8 => Err(Error::Protocol {
                pid: a as u32,
                message: format!("on {host}: {}", text()),
            }),
            9 => Err(Error::Closed),
            10 => Err(Error::Mpi {
                message: format!("on {host}: {}", text()),
            }),
            11 => {
                let inner = outcomes(buf[start..end].to_vec(), host)?;
                let [(_, Err(source))] = <[_; 1]>::try_from(inner)
                    .map_err(|_| "an item error holds more than one outcome".to_string())?
                else {
                    return Err("an item error holds a result".into());
                };
                Err(Error::Item {
                    index: a as usize,
                    items: b as usize,
                    source: Box::new(source),
                })
            }
            12 => Err(Error::Cancelled),
            k => return Err(format!("unknown result kind {k}")),
        };
        out.push((id, outcome));
    }
    Ok(out)
}

fn cause_code(cause: ExitCause) -> u64 {
    match cause {
        ExitCause::Signal(s) => 1 << 32 | u64::from(s as u32),
        ExitCause::Exited(c) => u64::from(c as u32),
    }
}

fn cause_from(code: u64) -> ExitCause {
    let value = code as u32 as i32;
    if code >> 32 == 1 {
        ExitCause::Signal(value)
    } else {
        ExitCause::Exited(value)
    }
}

fn what_code(what: &str) -> u64 {
    u64::from(what == "result")
}

fn what_from(code: u64) -> &'static str {
    if code == 1 {
        "result"
    } else {
        "argument"
    }
}

/// Reads little-endian fields off the front of a message; every read checks the length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "a length above the address space")?;
        if n > self.0.len() {
            return Err(format!(
                "a field of {n} bytes with {} left in the message",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Sends in flight: each buffer stays alive, and unmoved, until MPI reports its send complete.
#[derive(Default)]
pub(crate) struct Outbox {
    pending: Vec<(Request<'static, [u8]>, *mut [u8])>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({} pending)", self.pending.len())
    }
}

impl Outbox {
    /// Starts sending `bytes` to `rank` under `tag`.
    pub(crate) fn send(&mut self, world: &SimpleCommunicator, rank: i32, tag: Tag, bytes: Vec<u8>) {
        let buf: &'static mut [u8] = Box::leak(bytes.into_boxed_slice());
        let raw: *mut [u8] = buf;
        // SAFETY: `raw` was just leaked from a Box; this shared view of it lives until
        // `progress` sees the request complete and frees it, and nothing writes to it.
        let view: &'static [u8] = unsafe { &*raw };
        let request = world
            .process_at_rank(rank)
            .immediate_send_with_tag(StaticScope, view, tag);
        self.pending.push((request, raw));
    }

    /// Completes what MPI has finished sending and frees those buffers. True if none is left.
    pub(crate) fn progress(&mut self) -> bool {
        let mut i = 0;
        while i < self.pending.len() {
            let (request, raw) = self.pending.swap_remove(i);
            match request.test() {
                Ok(_) => {
                    // SAFETY: `raw` came from Box::leak in `send`, MPI is done with it (the
                    // request completed), and the only other view of it died with the request.
                    drop(unsafe { Box::from_raw(raw) });
                }
                Err(request) => {
                    self.pending.push((request, raw));
                    let last = self.pending.len() - 1;
                    self.pending.swap(i, last);
                    i += 1;
                }
            }
        }
        self.pending.is_empty()
    }

    /// Waits until every send is complete.
    pub(crate) fn flush(&mut self) {
        while !self.progress() {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A Request dropped incomplete panics (and its buffer is in use): finish them first.
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Bytes;

    #[test]
    fn hello_round_trips() {
        let hello = Hello {
            processes: 3,
            pid: 42,
            identity: b"build-id:\x01\x02".to_vec(),
            host: "node-7".into(),
        };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        assert!(Hello::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn cancel_messages_round_trip() {
        for ids in [&[7u64][..], &[0, u64::MAX, 42, 42]] {
            let msg = cancel_message(ids);
            assert_eq!(msg.len(), 4 + 8 * ids.len());
            assert_eq!(cancelled_ids(&msg).as_deref(), Ok(ids));
        }
    }

    #[test]
    fn malformed_cancel_messages_are_errors_not_panics() {
        let msg = cancel_message(&[1, 2, 3]);
        // Every cut, and a byte too many: refused.
        for cut in 0..msg.len() {
            assert!(cancelled_ids(&msg[..cut]).is_err(), "cut at {cut}");
        }
        assert!(cancelled_ids(&[msg.as_slice(), &[0]].concat()).is_err());
        // A count of 0 (alone or with ids after it); a count that the bytes do not hold.
        assert!(cancelled_ids(&[0, 0, 0, 0]).is_err());
        assert!(cancelled_ids(&[&[0u8, 0, 0, 0][..], &7u64.to_le_bytes()].concat()).is_err());
        let mut big = msg.clone();
        big[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(cancelled_ids(&big).is_err());
        let mut fewer = msg;
        fewer[..4].copy_from_slice(&2u32.to_le_bytes());
        assert!(cancelled_ids(&fewer).is_err());
        // Random bytes: an error, or ids that fill the message exactly.
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1du64);
        for _ in 0..20_000 {
            let n = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if n >= 4 {
                bytes[1..4].fill(0);
                bytes[0] %= 5;
            }
            if let Ok(ids) = cancelled_ids(&bytes) {
                assert_eq!(4 + 8 * ids.len(), bytes.len());
                assert!(!ids.is_empty());
            }
        }
    }

    #[test]
    fn outcomes_round_trip_with_the_host() {
        let mut msg = Vec::new();
        push_outcome(&mut msg, 1, &Ok(Bytes::from_vec(vec![9, 8, 7], 0)));
        let died = Error::WorkerDied {
            pid: 77,
            cause: ExitCause::Signal(11),
            host: None,
        };
        push_outcome(&mut msg, 2, &Err(died));
        let timed_out = Error::TimedOut {
            pid: 5,
            limit: Duration::from_millis(300),
        };
        push_outcome(&mut msg, 3, &Err(timed_out));
        let panicked = |location: Option<&str>| Error::TaskPanicked {
            message: "bad ünicode".into(),
            location: location.map(String::from),
        };
        push_outcome(&mut msg, 4, &Err(panicked(Some("src/x.rs:1:2"))));
        push_outcome(&mut msg, 5, &Err(panicked(None)));
        let item = Error::Item {
            index: 17,
            items: 1,
            source: Box::new(panicked(None)),
        };
        push_outcome(&mut msg, 6, &Err(item));
        let got = outcomes(msg, "node-2").unwrap();
        assert_eq!(got.len(), 6);
        match &got[5].1 {
            Err(e @ Error::Item { index: 17, .. }) => {
                assert!(matches!(e.cause(), Error::TaskPanicked { .. }), "{e:?}")
            }
            other => panic!("{other:?}"),
        }
        for (i, location) in [(3, Some("src/x.rs:1:2")), (4, None)] {
            match &got[i].1 {
                Err(Error::TaskPanicked {
                    message,
                    location: l,
                }) => {
                    assert_eq!(message, "bad ünicode");
                    assert_eq!(l.as_deref(), location);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(&got[0], (1, Ok(b)) if **b == [9, 8, 7]));
        assert!(matches!(
            &got[1],
            (2, Err(Error::WorkerDied { pid: 77, cause: ExitCause::Signal(11), host: Some(h) })) if h == "node-2"
        ));
        assert!(matches!(
            &got[2],
            (3, Err(Error::TimedOut { pid: 5, limit })) if *limit == Duration::from_millis(300)
        ));
    }

    #[test]
    fn truncated_results_are_errors_not_panics() {
        let mut msg = Vec::new();
        push_outcome(&mut msg, 1, &Ok(Bytes::from_vec(vec![1; 100], 0)));
        for cut in 0..msg.len() {
            let _ = outcomes(msg[..cut].to_vec(), "h");
        }
        assert!(outcomes(msg[..msg.len() - 1].to_vec(), "h").is_err());
    }

    #[test]
    fn task_entries_split_and_refuse_bad_lengths() {
        let frame_a = [&[4u8, 0, 0, 0, 0, 0, 0, 0][..], &[1, 2, 3, 4][..]];
        let mut msg = Vec::new();
        push_task(&mut msg, 1, None, frame_a);
        push_task(&mut msg, 5, None, frame_a);
        let got: Vec<_> = tasks(&msg, 1 << 20).collect::<Result<_, _>>().unwrap();
        let entry = |items, frame| TaskEntry {
            items,
            index: None,
            frame,
        };
        assert_eq!(got, [entry(1, &msg[5..17]), entry(5, &msg[22..34])]);
        assert_eq!(msg.len(), 2 * task_entry_len(12, None));
        assert!(tasks(&msg, 2).next().unwrap().is_err());
        assert!(tasks(&msg[..10], 1 << 20).next().unwrap().is_err());
    }

    fn length(s: String) -> usize {
        s.len()
    }

    /// A chunk of `map_each` as rank 0 has it (a task marked with its index) and its TASKS
    /// entry.
    fn each_entry() -> (crate::dispatch::Task, Vec<u8>) {
        let args: Vec<String> = (0..20).map(|i| "y".repeat(i * 7)).collect();
        let (frame, index) = crate::task::chunk_each(length, &args).expect("encode");
        let mut msg = Vec::new();
        push_task(&mut msg, 20, Some(&index), frame.parts_from(0));
        assert_eq!(
            msg.len(),
            task_entry_len(frame.len(), Some(index.wire_len()))
        );
        let task =
            crate::dispatch::Task::new(frame, crate::result::Sink::then(drop)).each_chunk(index);
        (task, msg)
    }

    #[test]
    fn a_chunk_index_travels_with_its_task_and_is_checked_against_the_frame() {
        let (mut task, msg) = each_entry();
        let index = task.take_each_index().expect("an index");
        let frame = task.frame_mut();
        let entries: Vec<_> = tasks(&msg, u64::MAX).collect::<Result<_, _>>().unwrap();
        let [entry] = entries[..] else {
            panic!("{entries:?}")
        };
        assert_eq!(entry.items, 20);
        assert_eq!(entry.frame, &frame.head[..]);
        let wire = entry.index.expect("the index");
        assert_eq!(
            crate::task::chunk_index(entry.frame, 20, wire),
            Ok(index.clone())
        );
        // The same tail as rank 0 would build.
        let (tail, _) = crate::task::tail(frame, &index, 7);
        let rebuilt = crate::task::chunk_index(entry.frame, 20, wire).unwrap();
        // As the relay holds a received frame.
        let received = crate::frame::OutFrame {
            head: entry.frame.to_vec(),
            tail: Vec::new(),
        };
        assert_eq!(crate::task::tail(&received, &rebuilt, 7).0.head, tail.head);
        // Another count, a frame cut or grown: refused.
        assert!(crate::task::chunk_index(entry.frame, 19, wire).is_err());
        assert!(crate::task::chunk_index(&entry.frame[..entry.frame.len() - 1], 20, wire).is_err());
        assert!(crate::task::chunk_index(&[entry.frame, &[0]].concat(), 20, wire).is_err());
        assert!(crate::task::chunk_index(&entry.frame[..16], 20, wire).is_err());
    }

    #[test]
    fn garbage_task_entries_are_errors_not_panics() {
        let (_, msg) = each_entry();
        // Every cut of a good entry: an error (or, cut at 0, no entry), never a panic.
        assert!(tasks(&msg[..0], u64::MAX).next().is_none());
        for cut in 1..msg.len() {
            let got: Vec<_> = tasks(&msg[..cut], u64::MAX).collect();
            assert!(got.last().unwrap().is_err(), "cut at {cut}");
        }
        // An unknown flag; an index length past the message; a frame length near 2^64.
        let mut flag = msg.clone();
        flag[4] = 2;
        assert!(tasks(&flag, u64::MAX).next().unwrap().is_err());
        let mut index_len = msg.clone();
        index_len[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(tasks(&index_len, u64::MAX).next().unwrap().is_err());
        let mut huge = vec![1, 0, 0, 0, 0];
        huge.extend_from_slice(&(u64::MAX - 3).to_le_bytes());
        huge.extend_from_slice(&[0; 16]);
        assert!(tasks(&huge, u64::MAX).next().unwrap().is_err());
        // Random bytes: errors, and the entries that parse are inside the message.
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15u64);
        for _ in 0..20_000 {
            let n = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if n > 4 {
                bytes[4] %= 3;
            }
            for entry in tasks(&bytes, u64::MAX).flatten() {
                if let Some(index) = entry.index {
                    let _ = crate::task::chunk_index(entry.frame, entry.items as usize, index);
                }
            }
        }
    }
}
