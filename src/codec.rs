//! The only place that calls bincode: swap the codec here and nowhere else.
//!
//! Values are encoded with bincode 2's standard configuration through serde. Decoding insists on
//! consuming every byte, so a reply that does not match its type is an error, not a silent
//! partial read.
//!
//! One fast path: a `Vec<u8>` is its own encoding. Serde would walk it byte by byte (hundreds
//! of milliseconds for 64 MiB); here it is one copy. Both ends pick the path from the static
//! type, so they always agree.

use std::any::{Any, TypeId};
use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::Bytes;

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
    encode_into(value.as_ref().expect("still set").borrow(), head)?;
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

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
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
    decode(&bytes)
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
    // The limit is a type parameter in bincode, so pick the smallest class that fits.
    match bytes.len().saturating_mul(EXPANSION) {
        0..=0xFF_FFFF => decode_within::<T, { 1 << 24 }>(bytes),
        0x100_0000..=0xFFF_FFFF => decode_within::<T, { 1 << 28 }>(bytes),
        0x1000_0000..=0xFFFF_FFFF => decode_within::<T, { 1 << 32 }>(bytes),
        0x1_0000_0000..=0xF_FFFF_FFFF => decode_within::<T, { 1 << 36 }>(bytes),
        _ => decode_within::<T, { 1 << 40 }>(bytes),
    }
}

/// How many bytes of memory a decoded value may claim per byte of input.
const EXPANSION: usize = 64;

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, CONFIG.with_limit::<LIMIT>())
        .map_err(|e| match e {
            // A type's own message (serde's `Error::custom`), as it wrote it.
            bincode::error::DecodeError::OtherString(message) => message,
            e => e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value ({} bytes in all)",
            bytes.len() - used,
            bytes.len()
        ));
    }
    Ok(value)
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

    /// A worker's reply payload is untrusted: garbage, or a length prefix claiming far more
    /// than the bytes at hand, must give an error, never a panic or a huge allocation.
    #[test]
    fn garbage_decodes_to_errors_not_panics() {
        use std::collections::HashMap;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
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

    #[test]
    fn short_input_is_an_error() {
        assert!(decode::<(u64, u64)>(&[1]).is_err());
    }
}
