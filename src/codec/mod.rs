//! The only place that calls bincode: swap the codec here and nowhere else.
//!
//! Values are encoded with bincode 2's standard configuration through serde. Decoding insists on
//! consuming every byte, so a reply that does not match its type is an error, not a silent
//! partial read.
//!
//! One fast path: a `Vec<u8>` is its own encoding. Serde would walk it byte by byte (hundreds
//! of milliseconds for 64 MiB); here it is one copy. Both ends pick the path from the static
//! type, so they always agree.
//!
//! Byte buffers inside a value (a `#[serde(with = "serde_bytes")]` field, anything serde
//! hands over with `serialize_bytes` / `deserialize_byte_buf`) keep bincode's wire format but
//! not its way of allocating (issue 10, item 7):
//!
//! * encoding, a large field is one write, for which the output grows in one step onto huge
//!   pages (`VecWriter`): a fresh 64 MiB buffer then costs 32 page faults, not 16 384;
//! * decoding goes through [`byte_fields`], a serde wrapper over bincode's deserializer that
//!   reads byte fields (and strings) as borrowed slices, copied once into their `Vec`, where
//!   bincode would zero a buffer and then copy; a large byte field that ends an owned input
//!   (`decode_owned`, the usual "header, then payload" value) takes the input buffer itself.
//!
//! A plain `Vec<u8>` field still goes through serde one byte at a time, at bincode's speed.
//!
//! A `Vec` of `u64`, `i64`, `u32`, `i32` or `usize` (a result of `map`, a chunk of its
//! arguments) is written and read by a loop of its own, in bincode's bytes ([`ints`]).

use std::any::{Any, TypeId};
use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::Bytes;

mod byte_fields;
mod ints;
use byte_fields::Source;

const CONFIG: bincode::config::Configuration = bincode::config::standard();

/// Appends the encoding of `value` to `out`. On error `out` may hold a partial encoding after
/// its original length; callers truncate it.
pub(crate) fn encode_into<T: Serialize + ?Sized + 'static>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if let Some(bytes) = as_bytes(value) {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    bincode::serde::encode_into_writer(value, VecWriter(out), CONFIG).map_err(|e| e.to_string())
}

/// Encodes the `T` that `value` stands for (a `T`, or something that borrows as one) for a
/// frame whose head is `head`: an owned `Vec<u8>` comes back whole to go out as the frame's
/// tail, anything else is appended to `head` (and an empty tail comes back).
pub(crate) fn encode_owned<T: Serialize + 'static, B: Borrow<T> + 'static>(
    value: B,
    head: &mut Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut value = Some(value);
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        if let Some(bytes) = (&mut value as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
            return Ok(bytes.take().expect("just set"));
        }
    }
    let value = value.as_ref().expect("still set").borrow();
    if !ints::encode_vec(value, head) {
        encode_into(value, head)?;
    }
    Ok(Vec::new())
}

/// Appends the encoding of `items` as a `Vec<T>`, each item borrowed as a `T`.
pub(crate) fn encode_seq<T: Serialize + 'static, B: Borrow<T>>(
    items: &[B],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    /// Serializes a slice of borrowers as the sequence of what they borrow.
    struct Seq<'a, T, B>(&'a [B], PhantomData<fn(&T)>);
    impl<T: Serialize, B: Borrow<T>> Serialize for Seq<'_, T, B> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(Borrow::<T>::borrow))
        }
    }
    if TypeId::of::<T>() == TypeId::of::<u8>() {
        // A Vec<u8> travels raw (see `decode`), so a chunk of bytes does too.
        out.extend(items.iter().filter_map(|b| {
            let item: &dyn Any = b.borrow();
            item.downcast_ref::<u8>().copied()
        }));
        return Ok(());
    }
    if ints::encode_seq::<T, B>(items, out) {
        return Ok(());
    }
    bincode::serde::encode_into_writer(Seq::<T, B>(items, PhantomData), VecWriter(out), CONFIG)
        .map_err(|e| e.to_string())
}

/// Where each item of an encoded sequence starts, so that the sequence of the items from any
/// one on can be rebuilt without knowing their type ([`seq_tail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeqIndex {
    /// The offset of each item from the sequence's start, then the sequence's end; empty for a
    /// sequence of bytes, whose items are its bytes.
    starts: Vec<usize>,
    /// Items in the sequence.
    len: usize,
}

/// The form byte of a [`SeqIndex`] on the wire: a sequence of bytes (item `i` is byte `i`).
#[cfg(any(test, feature = "mpi"))]
const WIRE_BYTES: u8 = 0;
/// The form byte of a [`SeqIndex`] on the wire: item offsets follow.
#[cfg(any(test, feature = "mpi"))]
const WIRE_OFFSETS: u8 = 1;

#[cfg(any(test, feature = "mpi"))]
impl SeqIndex {
    /// Appends the index in the form [`from_wire`](SeqIndex::from_wire) reads, for a process
    /// that has the encoded sequence but not its type (a serving rank of an MPI pool):
    ///
    /// ```text
    /// | form u8: 0 bytes, 1 offsets | items varint | (offset deltas varint, items + 1 of them) |
    /// ```
    ///
    /// Varints are LEB128; the first delta is the first item's offset (the length of the
    /// sequence's header), each next one the size of an item, so that small items cost a
    /// byte each.
    pub(crate) fn to_wire(&self, out: &mut Vec<u8>) {
        if self.starts.is_empty() {
            out.push(WIRE_BYTES);
            push_varint(self.len as u64, out);
            return;
        }
        out.reserve(self.starts.len() + 11);
        out.push(WIRE_OFFSETS);
        push_varint(self.len as u64, out);
        let mut last = 0;
        for &start in &self.starts {
            let delta = start - last;
            if delta < 0x80 {
                // The usual case, small items: one byte.
                out.push(delta as u8);
            } else {
                push_varint(delta as u64, out);
            }
            last = start;
        }
    }

    /// At least as many bytes as [`to_wire`](SeqIndex::to_wire) appends (at most 1% more for
    /// a sequence of large items), without a pass over the items: a delta `d` takes at most
    /// `1 + d / 128` bytes.
    pub(crate) fn wire_len_bound(&self) -> usize {
        let end = self.starts.last().copied().unwrap_or(0);
        1 + varint_len(self.len as u64) + self.starts.len() + end / 128
    }

    /// How many bytes [`to_wire`](SeqIndex::to_wire) appends.
    pub(crate) fn wire_len(&self) -> usize {
        let mut n = 1 + varint_len(self.len as u64);
        let mut last = 0;
        for &start in &self.starts {
            n += varint_len((start - last) as u64);
            last = start;
        }
        n
    }

    /// Reads an index written by [`to_wire`](SeqIndex::to_wire) for a sequence of `items`
    /// items encoded in `encoded_len` bytes, checking it before anything slices with it: every
    /// byte of `bytes` used, `items` items, the first item right after the sequence's header,
    /// offsets that never decrease, the last one the sequence's end.
    ///
    /// # Errors
    /// What is wrong with `bytes`; nothing is allocated from a length not yet checked.
    pub(crate) fn from_wire(
        bytes: &[u8],
        items: usize,
        encoded_len: usize,
    ) -> Result<SeqIndex, String> {
        let (&form, mut rest) = bytes.split_first().ok_or("an empty item index")?;
        let len = read_varint(&mut rest)?;
        if len != items as u64 {
            return Err(format!(
                "an item index of {len} items for a task of {items}"
            ));
        }
        match form {
            WIRE_BYTES => {
                if !rest.is_empty() {
                    return Err("bytes after an index of a sequence of bytes".into());
                }
                if items != encoded_len {
                    return Err(format!(
                        "an index of {items} bytes for a sequence of {encoded_len} bytes"
                    ));
                }
                Ok(SeqIndex {
                    starts: Vec::new(),
                    len: items,
                })
            }
            WIRE_OFFSETS => {
                // Each offset takes a byte at least: a count the bytes cannot hold is refused
                // before the allocation it would size.
                if rest.len() < items.saturating_add(1) {
                    return Err(format!(
                        "an index of {items} items in {} bytes of offsets",
                        rest.len()
                    ));
                }
                let mut header = Vec::new();
                seq_header(items, &mut header);
                let mut starts = Vec::with_capacity(items + 1);
                let mut at = 0usize;
                for _ in 0..=items {
                    let delta = match rest.split_first() {
                        // The usual case, small items: one byte.
                        Some((&b, tail)) if b < 0x80 => {
                            rest = tail;
                            u64::from(b)
                        }
                        _ => read_varint(&mut rest)?,
                    };
                    at = usize::try_from(delta)
                        .ok()
                        .and_then(|d| at.checked_add(d))
                        .filter(|&at| at <= encoded_len)
                        .ok_or_else(|| {
                            format!("an item offset past the sequence's {encoded_len} bytes")
                        })?;
                    starts.push(at);
                }
                if !rest.is_empty() {
                    return Err("bytes after the item offsets".into());
                }
                if starts[0] != header.len() {
                    return Err(format!(
                        "the first item at offset {}, not after the {}-byte header",
                        starts[0],
                        header.len()
                    ));
                }
                if starts[items] != encoded_len {
                    return Err(format!(
                        "the items end at offset {}, the sequence at {encoded_len}",
                        starts[items]
                    ));
                }
                Ok(SeqIndex { starts, len: items })
            }
            other => Err(format!("an item index of unknown form {other}")),
        }
    }
}

/// Appends `value` as a LEB128 varint.
#[cfg(any(test, feature = "mpi"))]
fn push_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The length of `value` as a LEB128 varint.
#[cfg(any(test, feature = "mpi"))]
fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads a LEB128 varint off the front of `bytes`: at most 10 bytes, none of its bits past
/// the 64th set.
#[cfg(any(test, feature = "mpi"))]
fn read_varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = bytes.split_first().ok_or("an item index cut short")?;
        *bytes = rest;
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return Err("a varint above 64 bits in an item index".into());
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint longer than 10 bytes in an item index".into())
}

/// As [`encode_seq`], and returns where each item starts.
pub(crate) fn encode_seq_indexed<T: Serialize + 'static, B: Borrow<T>>(
    items: &[B],
    out: &mut Vec<u8>,
) -> Result<SeqIndex, String> {
    if TypeId::of::<T>() == TypeId::of::<u8>() {
        encode_seq::<T, B>(items, out)?;
        return Ok(SeqIndex {
            starts: Vec::new(),
            len: items.len(),
        });
    }
    let start = out.len();
    seq_header(items.len(), out);
    let mut starts = Vec::with_capacity(items.len() + 1);
    for item in items {
        starts.push(out.len() - start);
        // Each item as an element of the sequence: never the raw fast path of a whole value.
        bincode::serde::encode_into_writer(item.borrow(), VecWriter(out), CONFIG)
            .map_err(|e| e.to_string())?;
    }
    starts.push(out.len() - start);
    Ok(SeqIndex {
        starts,
        len: items.len(),
    })
}

/// Appends the encoding of the sequence of the items of `encoded` (a sequence that `index`
/// describes) from item `from` on, and returns its index.
pub(crate) fn seq_tail(
    encoded: &[u8],
    index: &SeqIndex,
    from: usize,
    out: &mut Vec<u8>,
) -> SeqIndex {
    let from = from.min(index.len);
    let len = index.len - from;
    if index.starts.is_empty() {
        // Bytes travel raw: item i is byte i.
        out.extend_from_slice(&encoded[from..index.len]);
        return SeqIndex {
            starts: Vec::new(),
            len,
        };
    }
    let start = out.len();
    seq_header(len, out);
    let shift = index.starts[from];
    let header = out.len() - start;
    out.extend_from_slice(&encoded[shift..index.starts[index.len]]);
    SeqIndex {
        starts: index.starts[from..]
            .iter()
            .map(|s| s - shift + header)
            .collect(),
        len,
    }
}

/// Appends the length prefix of a sequence of `len` items; the items' encodings follow it.
pub(crate) fn seq_header(len: usize, out: &mut Vec<u8>) {
    bincode::serde::encode_into_writer(len as u64, VecWriter(out), CONFIG)
        .expect("a Vec never refuses bytes");
}

/// Splits an encoded sequence into its length and its items' encodings.
pub(crate) fn split_seq(bytes: &[u8]) -> Result<(u64, &[u8]), String> {
    let (len, used): (u64, usize) =
        bincode::serde::decode_from_slice(bytes, CONFIG).map_err(|e| e.to_string())?;
    Ok((len, &bytes[used..]))
}

/// Encodes `value` into `buf`, as an element of a sequence (never the raw fast path): its
/// length, or `None` if it does not fit.
pub(crate) fn encode_to_slice<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<Option<usize>, String> {
    match bincode::serde::encode_into_slice(value, buf, CONFIG) {
        Ok(n) => Ok(Some(n)),
        Err(bincode::error::EncodeError::UnexpectedEnd) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Encodes `result` into `buf` as [`encode_to_slice`] does, the bytes serde's encoding of a
/// `Result` gives: its variant as one byte (0 for `Ok`, 1 for `Err`), then the value. Written
/// here rather than through serde's enum machinery, which costs more than a small value
/// itself (the counterpart of [`decode_results`]).
pub(crate) fn encode_result_to_slice<T: Serialize, E: Serialize>(
    result: &Result<T, E>,
    buf: &mut [u8],
) -> Result<Option<usize>, String> {
    let Some((variant, rest)) = buf.split_first_mut() else {
        return Ok(None);
    };
    let n = match result {
        Ok(value) => {
            *variant = 0;
            encode_to_slice(value, rest)?
        }
        Err(error) => {
            *variant = 1;
            encode_to_slice(error, rest)?
        }
    };
    Ok(n.map(|n| n + 1))
}

/// Encodes `value` as an element of a sequence (never the raw fast path).
pub(crate) fn encode_element<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    bincode::serde::encode_into_writer(value, VecWriter(&mut out), CONFIG)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Appends what bincode writes to a `Vec`. Serde hands a `Vec<u8>` field (one not marked
/// `serde_bytes`) to the codec one byte at a time, so the cost per write is the cost per byte:
/// through `std::io::Write` it was about 3 ns; inlined here, about half (measured with
/// `benches/codec.rs`).
struct VecWriter<'a>(&'a mut Vec<u8>);

/// A `VecWriter` that must grow for a write at least this long asks for huge pages.
const HUGE_WRITE: usize = 4 << 20;

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if bytes.len() >= HUGE_WRITE && self.0.capacity() - self.0.len() < bytes.len() {
            // A large byte field in one piece (serialize_bytes): room for it in one step, on
            // huge pages, so filling it costs one page fault per 2 MiB rather than per 4 KiB
            // (most of the cost of a fresh buffer). Growth by single bytes (a plain `Vec<u8>`
            // field) is left alone: huge pages there cost more faults, not fewer (measured).
            self.0.reserve_exact(bytes.len());
            crate::sys::advise_huge(self.0);
        }
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes an owned buffer as one `T`; a `Vec<u8>` is the buffer itself, not a copy.
pub(crate) fn decode_owned<T: DeserializeOwned + 'static>(bytes: Bytes) -> Result<T, String> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let boxed: Box<dyn Any> = Box::new(bytes.into_vec());
        return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
    }
    if let Some(value) = ints::decode_vec::<T>(&bytes) {
        return Ok(value);
    }
    let (buf, start) = bytes.into_parts();
    let source = Source::owning(buf, start);
    decode_from(source.owned_input(), &source)
}

/// Decodes a whole buffer as one `T`.
///
/// The bytes may come from a broken worker, so decoding runs under a memory budget: bincode
/// allocates a string's or a vector's buffer from its length prefix before it reads the
/// contents, and a garbage prefix would otherwise ask for exabytes and abort the process. The
/// budget is [`EXPANSION`] times the input, rounded up to the next of 16 MiB, 256 MiB, 4 GiB,
/// 64 GiB or 1 TiB: a value whose decoded form claims more fails with a decode error instead.
pub(crate) fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let boxed: Box<dyn Any> = Box::new(bytes.to_vec());
        return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
    }
    if let Some(value) = ints::decode_vec::<T>(bytes) {
        return Ok(value);
    }
    decode_from(bytes, &Source::borrowed(bytes))
}

/// Decodes `bytes`, the whole input of `source`, as one `T`, under the budget of [`decode`].
fn decode_from<T: DeserializeOwned>(bytes: &[u8], source: &Source) -> Result<T, String> {
    let (value, used) = within_budget!(bytes.len(), decode_front::<T>(bytes, source))?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value ({} bytes in all)",
            bytes.len() - used,
            bytes.len()
        ));
    }
    Ok(value)
}

/// Calls `$f::<$T.., LIMIT>($args..)` with the budget class of an input of `$len` bytes (see
/// [`decode`]); the limit is a type parameter in bincode, so each class is its own function.
macro_rules! within_budget {
    ($len:expr, $f:ident::<$($t:ty),*>($($arg:expr),*)) => {
        match $len.saturating_mul(EXPANSION) {
            0..=0xFF_FFFF => $f::<$($t,)* { 1 << 24 }>($($arg),*),
            0x100_0000..=0xFFF_FFFF => $f::<$($t,)* { 1 << 28 }>($($arg),*),
            0x1000_0000..=0xFFFF_FFFF => $f::<$($t,)* { 1 << 32 }>($($arg),*),
            0x1_0000_0000..=0xF_FFFF_FFFF => $f::<$($t,)* { 1 << 36 }>($($arg),*),
            _ => $f::<$($t,)* { 1 << 40 }>($($arg),*),
        }
    };
}
use within_budget;

/// How many bytes of memory a decoded value may claim per byte of input.
const EXPANSION: usize = 64;

/// Decodes one `T` from the front of `bytes` (the rest of `source`'s input) under a budget of
/// `LIMIT` bytes: the value, and how many bytes it took.
fn decode_front<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
    source: &Source,
) -> Result<(T, usize), String> {
    let seed = byte_fields::Value::<T>(source, PhantomData);
    bincode::serde::seed_decode_from_slice(seed, bytes, CONFIG.with_limit::<LIMIT>()).map_err(|e| {
        match e {
            // A type's own message (serde's `Error::custom`), as it wrote it.
            bincode::error::DecodeError::OtherString(message) => message,
            e => e.to_string(),
        }
    })
}

/// Decodes an owned buffer that holds a sequence of `Result<T, E>`, the encoding of a
/// `Vec<Result<T, E>>`, handing each element to `each` in order; returns how many there were.
///
/// The same bytes as serde's `Vec<Result<T, E>>` reads, about five times faster for small
/// values: the variant of each element is one byte (bincode writes a variant index below 251
/// as one byte), read here rather than through serde's enum machinery, which cost about 18 ns
/// an element, four times the value itself (measured on a `u64`). On an error, `each` has
/// seen the elements before it.
pub(crate) fn decode_results<T, E>(
    bytes: Bytes,
    each: impl FnMut(Result<T, E>),
) -> Result<usize, String>
where
    T: DeserializeOwned + 'static,
    E: DeserializeOwned + 'static,
{
    let (buf, start) = bytes.into_parts();
    let source = Source::owning(buf, start);
    let input = source.owned_input();
    within_budget!(input.len(), results_within::<T, E>(input, &source, each))
}

fn results_within<T: DeserializeOwned, E: DeserializeOwned, const LIMIT: usize>(
    input: &[u8],
    source: &Source,
    mut each: impl FnMut(Result<T, E>),
) -> Result<usize, String> {
    let (len, mut rest) = split_seq(input)?;
    for i in 0..len {
        let (&variant, value) = rest
            .split_first()
            .ok_or_else(|| format!("the input ends at element {i} of {len}"))?;
        let used = match variant {
            0 => {
                let (ok, used) = decode_front::<T, LIMIT>(value, source)?;
                each(Ok(ok));
                used
            }
            1 => {
                let (err, used) = decode_front::<E, LIMIT>(value, source)?;
                each(Err(err));
                used
            }
            v => {
                return Err(format!(
                    "element {i} has variant {v}, not Ok (0) or Err (1)"
                ))
            }
        };
        rest = &value[used..];
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes after the value ({} bytes in all)",
            rest.len(),
            input.len()
        ));
    }
    Ok(len as usize)
}

/// The bytes of a `Vec<u8>` or a `[u8]`, which travel raw.
fn as_bytes<T: ?Sized + 'static>(value: &T) -> Option<&[u8]> {
    let id = TypeId::of::<T>();
    if id == TypeId::of::<Vec<u8>>() {
        // SAFETY: T is Vec<u8>, checked just above, so the reference has that type.
        Some(unsafe { &*(value as *const T as *const Vec<u8>) })
    } else if id == TypeId::of::<[u8]>() {
        // SAFETY: T is [u8], checked just above: the value is size_of_val(value) bytes starting
        // at its data pointer, borrowed for as long as `value`.
        Some(unsafe {
            std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of_val(value))
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::xorshift;

    #[test]
    fn round_trip() {
        let mut out = vec![9];
        encode_into(&(1u64, "two".to_string(), vec![3u8; 5]), &mut out).unwrap();
        let back: (u64, String, Vec<u8>) = decode(&out[1..]).unwrap();
        assert_eq!(back, (1, "two".to_string(), vec![3; 5]));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut out = Vec::new();
        encode_into(&7u32, &mut out).unwrap();
        out.push(0);
        let err = decode::<u32>(&out).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn byte_vectors_travel_raw() {
        let mut out = Vec::new();
        encode_into(&vec![1u8, 2, 3], &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(decode::<Vec<u8>>(&out).unwrap(), [1, 2, 3]);
        let mut out = Vec::new();
        encode_into(&[4u8, 5][..], &mut out).unwrap();
        assert_eq!(
            decode::<Vec<u8>>(&out).unwrap(),
            [4, 5],
            "a slice encodes as its Vec"
        );
        let mut out = Vec::new();
        encode_seq::<u8, &u8>(&[&7, &8], &mut out).unwrap();
        assert_eq!(out, [7, 8], "a chunk of bytes travels raw too");
        // Other vectors still go through serde, length first.
        let mut out = Vec::new();
        encode_into(&vec![1u16, 2, 3], &mut out).unwrap();
        assert_eq!(decode::<Vec<u16>>(&out).unwrap(), [1, 2, 3]);
        assert_eq!(out[0], 3);
    }

    /// xorshift64 from `seed`: garbage inputs that are the same on every run.
    /// A worker's reply payload is untrusted: garbage, or a length prefix claiming far more
    /// than the bytes at hand, must give an error, never a panic or a huge allocation.
    #[test]
    fn garbage_decodes_to_errors_not_panics() {
        use std::collections::HashMap;
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut inputs: Vec<Vec<u8>> = vec![
            // Lengths of 2^64 - 1 and 2^32 in bincode's varint encoding.
            vec![255, 255, 255, 255, 255, 255, 255, 255, 255],
            vec![253, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![252, 255, 255, 255, 255, 7],
        ];
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            inputs.push((0..len).map(|_| next() as u8).collect());
        }
        for input in &inputs {
            let _ = decode::<Vec<Vec<u64>>>(input);
            let _ = decode::<String>(input);
            let _ = decode::<Vec<String>>(input);
            let _ = decode::<HashMap<String, Vec<u8>>>(input);
            let _ = decode::<(u8, Option<Vec<i32>>, bool)>(input);
        }
    }

    /// Byte fields in every position serde can put them (issue 10, item 7): nested, in enums,
    /// in options, several, not last, empty, short and long; some take the input buffer.
    mod byte_fields {
        use super::*;
        use serde::Deserialize;
        use std::fmt::Debug;

        #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
        struct Tagged {
            id: u64,
            #[serde(with = "serde_bytes")]
            data: Vec<u8>,
        }

        #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
        struct Several {
            #[serde(with = "serde_bytes")]
            first: Vec<u8>,
            name: String,
            #[serde(with = "serde_bytes")]
            maybe: Option<Vec<u8>>,
            inner: Tagged,
            plain: Vec<u8>,
            #[serde(with = "serde_bytes")]
            last: Vec<u8>,
        }

        #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
        enum Message {
            Empty,
            Raw(#[serde(with = "serde_bytes")] Vec<u8>),
            Pair(u8, #[serde(with = "serde_bytes")] Vec<u8>),
            Named {
                #[serde(with = "serde_bytes")]
                body: Vec<u8>,
                tail: u32,
            },
            Boxed(Box<Tagged>),
        }

        /// Bytes that differ from place to place, so a misplaced copy shows.
        fn bytes(len: usize, seed: u8) -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect()
        }

        /// The encoding of `value` behind a frame-like head of `pad` bytes, as an owned input.
        fn owned<T: Serialize + 'static>(value: &T, pad: usize) -> (Bytes, *const u8) {
            let mut buf = vec![0xEE; pad];
            encode_into(value, &mut buf).unwrap();
            let ptr = buf.as_ptr();
            (Bytes::from_vec(buf, pad), ptr)
        }

        /// Decodes `value`'s encoding every way the codec does, checking each against bincode
        /// read plainly: same bytes on the wire, same value back.
        fn round_trip<T>(value: &T)
        where
            T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
        {
            let mut wire = Vec::new();
            encode_into(value, &mut wire).unwrap();
            let plain: T = bincode::serde::decode_from_slice(&wire, CONFIG).unwrap().0;
            assert_eq!(&plain, value);
            assert_eq!(&decode::<T>(&wire).unwrap(), value, "borrowed input");
            for pad in [0, 8, 21] {
                let (input, _) = owned(value, pad);
                assert_eq!(
                    &decode_owned::<T>(input).unwrap(),
                    value,
                    "owned, pad {pad}"
                );
            }
        }

        #[test]
        fn round_trips_in_every_position() {
            for len in [0, 1, 100, 64 * 1024 - 1, 64 * 1024, 200_000] {
                let t = Tagged {
                    id: len as u64,
                    data: bytes(len, 1),
                };
                round_trip(&t);
                round_trip(&(t.clone(), 7u8));
                round_trip(&(String::from("head"), t.clone()));
                round_trip(&Some(t.clone()));
                round_trip(&vec![t.clone(), t.clone()]);
                round_trip(&serde_bytes::ByteBuf::from(bytes(len, 2)));
                round_trip(&(1u64, bytes(len, 3)));
                round_trip(&Several {
                    first: bytes(len, 4),
                    name: "x".repeat(len % 1000),
                    maybe: Some(bytes(len, 5)),
                    inner: t.clone(),
                    plain: bytes(len % 5000, 6),
                    last: bytes(len, 7),
                });
                round_trip(&Several {
                    first: Vec::new(),
                    name: String::new(),
                    maybe: None,
                    inner: t.clone(),
                    plain: Vec::new(),
                    last: Vec::new(),
                });
                for m in [
                    Message::Empty,
                    Message::Raw(bytes(len, 8)),
                    Message::Pair(9, bytes(len, 9)),
                    Message::Named {
                        body: bytes(len, 10),
                        tail: 11,
                    },
                    Message::Boxed(Box::new(t.clone())),
                ] {
                    round_trip(&m);
                    round_trip(&vec![m.clone(), Message::Raw(bytes(3, 12)), m]);
                }
                let map: std::collections::BTreeMap<String, serde_bytes::ByteBuf> = [
                    ("a".to_string(), serde_bytes::ByteBuf::from(bytes(len, 13))),
                    ("b".to_string(), serde_bytes::ByteBuf::from(bytes(len, 14))),
                ]
                .into();
                round_trip(&map);
            }
        }

        /// A byte field large enough for the writer's huge-page path encodes exactly as
        /// bincode writes it, and comes back whole.
        #[test]
        fn a_large_byte_field_encodes_as_bincode_does() {
            let t = Tagged {
                id: 9,
                data: bytes(HUGE_WRITE + 12_345, 19),
            };
            let mut head = vec![1, 2, 3];
            encode_into(&t, &mut head).unwrap();
            assert_eq!(head[..3], [1, 2, 3]);
            let wire = bincode::serde::encode_to_vec(&t, CONFIG).unwrap();
            assert!(
                head[3..] == wire[..],
                "same bytes as bincode's own encoding"
            );
            assert_eq!(decode_owned::<Tagged>(Bytes::from_vec(head, 3)).unwrap(), t);
        }

        /// The parent encodes a borrowed argument (`imap` over `&T`, `&[u8]` fields); what it
        /// sends decodes as the owned type.
        #[test]
        fn borrowed_fields_decode_as_owned_ones() {
            #[derive(Serialize)]
            struct View<'a> {
                id: u64,
                #[serde(with = "serde_bytes")]
                data: &'a [u8],
            }
            // `encode_into` takes `'static` types (it looks at their `TypeId`).
            let data: &'static [u8] = Box::leak(bytes(100_000, 15).into_boxed_slice());
            let mut wire = Vec::new();
            encode_into(&View { id: 3, data }, &mut wire).unwrap();
            let back: Tagged = decode_owned(Bytes::from_vec(wire, 0)).unwrap();
            assert_eq!(
                back,
                Tagged {
                    id: 3,
                    data: data.to_vec()
                }
            );
            let t = Tagged {
                id: 4,
                data: bytes(70_000, 16),
            };
            let mut head = Vec::new();
            let tail =
                encode_owned::<Tagged, &'static Tagged>(Box::leak(Box::new(t.clone())), &mut head)
                    .unwrap();
            assert!(tail.is_empty());
            assert_eq!(decode::<Tagged>(&head).unwrap(), t);
        }

        /// A large byte field at the end of an owned input takes the input's buffer itself
        /// (no copy, no new allocation); one elsewhere, or a short one, is copied.
        #[test]
        fn a_last_large_byte_field_takes_the_input_buffer() {
            let t = Tagged {
                id: 5,
                data: bytes(1 << 20, 17),
            };
            let (input, ptr) = owned(&t, 21);
            let back: Tagged = decode_owned(input).unwrap();
            assert_eq!(back, t);
            assert_eq!(back.data.as_ptr(), ptr, "the field took the input buffer");

            let (input, ptr) = owned(&(t.clone(), 1u8), 21);
            let back: (Tagged, u8) = decode_owned(input).unwrap();
            assert_eq!(back, (t.clone(), 1));
            assert_ne!(back.0.data.as_ptr(), ptr, "not last: copied");

            let small = Tagged {
                id: 6,
                data: bytes(1000, 18),
            };
            let (input, ptr) = owned(&small, 21);
            let back: Tagged = decode_owned(input).unwrap();
            assert_eq!(back, small);
            assert_ne!(back.data.as_ptr(), ptr, "short: copied");

            // A borrowed input is never taken, and stays as it was.
            let mut wire = Vec::new();
            encode_into(&t, &mut wire).unwrap();
            let before = wire.clone();
            let back: Tagged = decode(&wire).unwrap();
            assert_eq!(back, t);
            assert_eq!(wire, before);
        }

        /// Garbage through the wrapped decoder, borrowed and owned: errors exactly where plain
        /// bincode errs, the same value where it succeeds, never a panic or a huge allocation.
        #[test]
        fn garbage_decodes_as_plain_bincode_does() {
            fn check<T>(input: &[u8]) -> bool
            where
                T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
            {
                let plain = bincode::serde::decode_from_slice::<T, _>(
                    input,
                    CONFIG.with_limit::<{ 1 << 24 }>(),
                );
                let plain = match plain {
                    Ok((v, used)) if used == input.len() => Some(v),
                    _ => None,
                };
                let borrowed = decode::<T>(input).ok();
                assert_eq!(borrowed, plain, "borrowed {input:?}");
                let owned = decode_owned::<T>(Bytes::from_vec(input.to_vec(), 0)).ok();
                assert_eq!(owned, plain, "owned {input:?}");
                plain.is_some()
            }
            let mut next = xorshift(0x2545_f491_4f6c_dd1d);
            let mut inputs: Vec<Vec<u8>> = vec![
                vec![255, 255, 255, 255, 255, 255, 255, 255, 255],
                vec![5, 253, 0, 0, 0, 0, 1, 0, 0, 0],
                vec![5, 252, 255, 255, 255, 7, 1, 2],
                vec![1, 251, 255, 255, 1],
            ];
            for _ in 0..20_000 {
                let len = (next() % 48) as usize;
                // Small bytes make plausible lengths and tags.
                let modulus = [4u64, 16, 256][(next() % 3) as usize];
                inputs.push((0..len).map(|_| (next() % modulus) as u8).collect());
            }
            let mut decoded = [0; 6];
            for input in &inputs {
                let ok = [
                    check::<Tagged>(input),
                    check::<Several>(input),
                    check::<Message>(input),
                    check::<Vec<Message>>(input),
                    check::<(Option<serde_bytes::ByteBuf>, String)>(input),
                    check::<std::collections::BTreeMap<String, serde_bytes::ByteBuf>>(input),
                ];
                for (n, ok) in decoded.iter_mut().zip(ok) {
                    *n += usize::from(ok);
                }
            }
            // Not only errors: every type decoded from some of the garbage.
            assert!(decoded.iter().all(|&n| n > 0), "{decoded:?}");
        }
    }

    /// `decode_results` reads the very bytes serde's `Vec<Result<T, E>>` reads, to the same
    /// values, and refuses what serde refuses.
    #[test]
    fn results_decode_as_a_vec_of_results_does() {
        fn both(bytes: &[u8]) -> (Result<Vec<Item>, String>, Result<Vec<Item>, String>) {
            let mut got = Vec::new();
            let fast =
                decode_results(Bytes::from_vec(bytes.to_vec(), 0), |r| got.push(r)).map(|n| {
                    assert_eq!(n, got.len());
                    got
                });
            (fast, decode::<Vec<Item>>(bytes))
        }
        let values: Vec<Item> = vec![
            Ok((1, "one".into())),
            Err((7, None)),
            Ok((u64::MAX, String::new())),
            Err((255, Some("x".repeat(300)))),
        ];
        for n in 0..=values.len() {
            let mut bytes = Vec::new();
            encode_into(&values[..n].to_vec(), &mut bytes).unwrap();
            let (fast, serde) = both(&bytes);
            assert_eq!(fast.unwrap(), serde.unwrap());
            // Cut short anywhere, or with a byte too many: both refuse.
            for cut in 0..bytes.len() {
                let (fast, serde) = both(&bytes[..cut]);
                assert!(fast.is_err() && serde.is_err(), "cut at {cut} of {n} items");
            }
            bytes.push(0);
            let (fast, serde) = both(&bytes);
            assert!(fast.unwrap_err().contains("trailing") && serde.is_err());
        }
        // A variant that is neither Ok nor Err, and a length of 2^64 - 1 with nothing after.
        for bad in [vec![1, 2, 0], vec![255; 9]] {
            let (fast, serde) = both(&bad);
            assert!(fast.is_err() && serde.is_err(), "{bad:?}");
        }
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let (fast, serde) = both(&input);
            assert_eq!(fast.is_ok(), serde.is_ok(), "{input:?}");
            if let (Ok(fast), Ok(serde)) = (fast, serde) {
                assert_eq!(fast, serde);
            }
        }
    }

    /// An element of a sequence of results, in the tests of `decode_results` and
    /// `encode_result_to_slice`.
    type Item = std::result::Result<(u64, String), (u8, Option<String>)>;

    #[test]
    fn a_result_encodes_to_a_slice_as_serde_encodes_it() {
        let values: [Item; 3] = [
            Ok((300, "x".into())),
            Err((1, None)),
            Err((2, Some("y".repeat(200)))),
        ];
        for value in &values {
            let want = encode_element(value).unwrap();
            let mut buf = vec![0u8; want.len() + 3];
            let n = encode_result_to_slice(value, &mut buf).unwrap();
            assert_eq!(n, Some(want.len()));
            assert_eq!(&buf[..want.len()], want);
            for short in 0..want.len() {
                let mut buf = vec![0u8; short];
                assert_eq!(
                    encode_result_to_slice(value, &mut buf).unwrap(),
                    None,
                    "{short}"
                );
            }
        }
    }

    #[test]
    fn short_input_is_an_error() {
        assert!(decode::<(u64, u64)>(&[1]).is_err());
    }

    /// The index of `items`, encoded, its wire form, and the encoding's length.
    fn indexed<T: Serialize + 'static>(items: &[T]) -> (SeqIndex, Vec<u8>, usize) {
        let mut encoded = Vec::new();
        let index =
            encode_seq_indexed::<T, &T>(&items.iter().collect::<Vec<_>>(), &mut encoded).unwrap();
        let mut wire = Vec::new();
        index.to_wire(&mut wire);
        assert_eq!(wire.len(), index.wire_len());
        assert!(index.wire_len_bound() >= wire.len());
        (index, wire, encoded.len())
    }

    #[test]
    fn an_item_index_round_trips_on_the_wire() {
        let strings: Vec<String> = (0..300).map(|i| "x".repeat(i % 200)).collect();
        let (index, wire, len) = indexed(&strings);
        assert_eq!(SeqIndex::from_wire(&wire, 300, len), Ok(index.clone()));
        // One byte an item for small items, the header and the count aside.
        let (small, wire_small, len_small) = indexed(&[1u32, 2, 3, 400_000]);
        assert_eq!(wire_small.len(), 1 + 1 + 5);
        assert_eq!(SeqIndex::from_wire(&wire_small, 4, len_small), Ok(small));
        // Zero-sized items: offsets that stay put are fine.
        let (units, wire_units, len_units) = indexed(&[(), (), ()]);
        assert_eq!(SeqIndex::from_wire(&wire_units, 3, len_units), Ok(units));
        let (bytes, wire_bytes, len_bytes) = indexed(&[7u8, 8, 9]);
        assert_eq!(wire_bytes, [WIRE_BYTES, 3]);
        assert_eq!(SeqIndex::from_wire(&wire_bytes, 3, len_bytes), Ok(bytes));
        let (empty, wire_empty, len_empty) = indexed::<u64>(&[]);
        assert_eq!(SeqIndex::from_wire(&wire_empty, 0, len_empty), Ok(empty));
    }

    /// An index drives slicing in `seq_tail`: one that does not fit its sequence must be
    /// refused, with an error, never a panic or an allocation sized by its claims.
    #[test]
    fn an_item_index_that_does_not_fit_its_sequence_is_refused() {
        let (_, wire, len) = indexed(&[10u64, 20, 300, 4000]);
        // The right one, then each way of being wrong.
        assert!(SeqIndex::from_wire(&wire, 4, len).is_ok());
        assert!(SeqIndex::from_wire(&wire, 5, len).is_err(), "another count");
        assert!(
            SeqIndex::from_wire(&wire, 4, len + 1).is_err(),
            "ends early"
        );
        assert!(SeqIndex::from_wire(&wire, 4, len - 1).is_err(), "ends late");
        for cut in 0..wire.len() {
            assert!(
                SeqIndex::from_wire(&wire[..cut], 4, len).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = wire.clone();
        longer.push(0);
        assert!(
            SeqIndex::from_wire(&longer, 4, len).is_err(),
            "trailing bytes"
        );
        let mut form = wire.clone();
        form[0] = 7;
        assert!(SeqIndex::from_wire(&form, 4, len).is_err(), "unknown form");
        // The first item elsewhere than after the header (the offsets still add up).
        let mut shifted = wire.clone();
        shifted[2] += 1;
        shifted[3] -= 1;
        assert!(
            SeqIndex::from_wire(&shifted, 4, len).is_err(),
            "first offset"
        );
        // A delta of 2^64 - 1: the sum overflows; one far past the end.
        let mut huge = vec![WIRE_OFFSETS, 4];
        push_varint(1, &mut huge);
        push_varint(u64::MAX, &mut huge);
        huge.extend([1, 1, 1]);
        assert!(SeqIndex::from_wire(&huge, 4, len).is_err(), "overflow");
        // Varints too long, or above 64 bits.
        let long = [
            WIRE_OFFSETS,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0,
        ];
        assert!(SeqIndex::from_wire(&long, 4, len).is_err());
        let wide = [
            WIRE_OFFSETS,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x02,
        ];
        assert!(SeqIndex::from_wire(&wide, 4, len).is_err());
        // A count of 2^40 items in a few bytes: refused before any allocation.
        let mut many = vec![WIRE_OFFSETS];
        push_varint(1 << 40, &mut many);
        many.extend([1, 1, 1]);
        assert!(SeqIndex::from_wire(&many, 1 << 40, 1 << 41).is_err());
        // Bytes: the count must be the sequence's length, and nothing may follow.
        assert!(SeqIndex::from_wire(&[WIRE_BYTES, 3], 3, 4).is_err());
        assert!(SeqIndex::from_wire(&[WIRE_BYTES, 3, 0], 3, 3).is_err());
        assert!(SeqIndex::from_wire(&[], 0, 0).is_err());
        // Random garbage: errors or indexes that fit, never a panic; those that fit slice.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let n = (next() % 12) as usize;
            let mut garbage: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if let Some(first) = garbage.first_mut() {
                *first %= 3;
            }
            let items = (next() % 6) as usize;
            let encoded = vec![0u8; (next() % 16) as usize];
            if let Ok(index) = SeqIndex::from_wire(&garbage, items, encoded.len()) {
                for from in 0..=items {
                    seq_tail(&encoded, &index, from, &mut Vec::new());
                }
            }
        }
    }

    #[test]
    fn the_bound_of_an_index_covers_its_wire_form_closely() {
        for size in [0, 1, 100, 127, 128, 129, 1000, 16_383, 16_384, 100_000] {
            let items: Vec<Vec<u16>> = (0..50).map(|i| vec![7; size + i % 3]).collect();
            let (index, wire, _) = indexed(&items);
            let bound = index.wire_len_bound();
            assert!(bound >= wire.len(), "{size}: {bound} < {}", wire.len());
            assert!(
                bound <= wire.len() + 12 + index.starts[50] / 100,
                "{size}: {bound}"
            );
        }
    }

    #[test]
    fn varints_round_trip_and_say_their_length() {
        for value in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            push_varint(value, &mut out);
            assert_eq!(out.len(), varint_len(value), "{value}");
            let mut at = &out[..];
            assert_eq!(read_varint(&mut at), Ok(value));
            assert!(at.is_empty());
        }
    }
}
