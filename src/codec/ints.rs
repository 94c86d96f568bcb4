//! Sequences of integers, written and read without serde, in bincode's own format.
//!
//! `map(f, 0..n)` sends chunks of integers and gets chunks of integers back: through serde,
//! bincode spends about 4 ns on each (a call chain per item, a varint each way), which was
//! half the CPU time of a 200,000-item `map` in the parent and in the workers (`perf record`
//! of W2). The loops here write and read the very bytes bincode's standard configuration does
//! (a varint length, then each item as a varint: below 251 one byte, else a marker byte 251,
//! 252 or 253 and a little-endian `u16`, `u32` or `u64`; signed integers zigzagged first), so
//! either end may take either path. Decoding takes the fast path only for input it is sure
//! of; anything else (garbage, a value out of range) goes to serde, whose error is the one
//! reported.

use std::any::{Any, TypeId};
use std::borrow::Borrow;

/// Varint markers of bincode's standard configuration.
const SINGLE_MAX: u8 = 250;
const U16_BYTE: u8 = 251;
const U32_BYTE: u8 = 252;
const U64_BYTE: u8 = 253;

/// An integer type whose sequences take the fast path: how it maps to the unsigned varint
/// bincode writes, and back (`None` if the varint is out of its range).
trait Int: Copy + 'static {
    /// The largest varint marker bincode accepts for the type.
    const MAX_MARKER: u8;
    fn to_varint(self) -> u64;
    fn from_varint(v: u64) -> Option<Self>;
}

impl Int for u64 {
    const MAX_MARKER: u8 = U64_BYTE;
    fn to_varint(self) -> u64 {
        self
    }
    fn from_varint(v: u64) -> Option<u64> {
        Some(v)
    }
}

impl Int for u32 {
    const MAX_MARKER: u8 = U32_BYTE;
    fn to_varint(self) -> u64 {
        u64::from(self)
    }
    fn from_varint(v: u64) -> Option<u32> {
        u32::try_from(v).ok()
    }
}

impl Int for usize {
    const MAX_MARKER: u8 = U64_BYTE;
    fn to_varint(self) -> u64 {
        self as u64
    }
    fn from_varint(v: u64) -> Option<usize> {
        usize::try_from(v).ok()
    }
}

impl Int for i64 {
    const MAX_MARKER: u8 = U64_BYTE;
    fn to_varint(self) -> u64 {
        ((self << 1) ^ (self >> 63)) as u64
    }
    fn from_varint(v: u64) -> Option<i64> {
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
}

impl Int for i32 {
    const MAX_MARKER: u8 = U32_BYTE;
    fn to_varint(self) -> u64 {
        i64::from(self).to_varint()
    }
    fn from_varint(v: u64) -> Option<i32> {
        u32::try_from(v).ok()?;
        i32::try_from(i64::from_varint(v)?).ok()
    }
}

/// Appends `v` as bincode's varint.
fn write_varint(v: u64, out: &mut Vec<u8>) {
    if v <= u64::from(SINGLE_MAX) {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(U16_BYTE);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(U32_BYTE);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(U64_BYTE);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads a varint of at most marker `max` from the front of `input`: the value and the bytes
/// it took, or `None` for anything this fast path leaves to serde.
fn read_varint(input: &[u8], max: u8) -> Option<(u64, usize)> {
    let (&first, rest) = input.split_first()?;
    match first {
        0..=SINGLE_MAX => Some((u64::from(first), 1)),
        U16_BYTE if max >= U16_BYTE => Some((
            u64::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)),
            3,
        )),
        U32_BYTE if max >= U32_BYTE => Some((
            u64::from(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?)),
            5,
        )),
        U64_BYTE if max >= U64_BYTE => {
            Some((u64::from_le_bytes(rest.get(..8)?.try_into().ok()?), 9))
        }
        _ => None,
    }
}

/// Calls `$body` with `$t` bound to the integer type `$of` is, if it is one of them.
macro_rules! for_int {
    ($of:ty, $t:ident => $body:expr) => {{
        let id = TypeId::of::<$of>();
        if id == TypeId::of::<u64>() {
            type $t = u64;
            $body
        } else if id == TypeId::of::<i64>() {
            type $t = i64;
            $body
        } else if id == TypeId::of::<u32>() {
            type $t = u32;
            $body
        } else if id == TypeId::of::<i32>() {
            type $t = i32;
            $body
        } else if id == TypeId::of::<usize>() {
            type $t = usize;
            $body
        } else {
            None
        }
    }};
}

/// Appends `items`, borrowed as `T`s, as a `Vec<T>` if `T` is one of the integer types; false
/// (and nothing written) otherwise.
pub(super) fn encode_seq<T: 'static, B: Borrow<T>>(items: &[B], out: &mut Vec<u8>) -> bool {
    for_int!(T, I => {
        write_varint(items.len() as u64, out);
        out.reserve(items.len());
        for item in items {
            let item: &dyn Any = item.borrow();
            write_varint(item.downcast_ref::<I>().expect("T is I").to_varint(), out);
        }
        Some(())
    })
    .is_some()
}

/// Appends `value` if it is a `Vec` of one of the integer types; false otherwise.
pub(super) fn encode_vec<V: 'static>(value: &V, out: &mut Vec<u8>) -> bool {
    let value: &dyn Any = value;
    macro_rules! try_vec {
        ($($t:ty),*) => {
            $(if let Some(items) = value.downcast_ref::<Vec<$t>>() {
                return encode_seq::<$t, $t>(items, out);
            })*
        };
    }
    try_vec!(u64, i64, u32, i32, usize);
    false
}

/// Decodes the whole of `input` as a `V`, if `V` is a `Vec` of one of the integer types and
/// the input is plainly one; `None` sends the caller to serde.
pub(super) fn decode_vec<V: 'static>(input: &[u8]) -> Option<V> {
    macro_rules! try_vec {
        ($($t:ty),*) => {
            $(if TypeId::of::<V>() == TypeId::of::<Vec<$t>>() {
                let items: Box<dyn Any> = Box::new(decode_seq::<$t>(input)?);
                return items.downcast::<V>().ok().map(|v| *v);
            })*
        };
    }
    try_vec!(u64, i64, u32, i32, usize);
    None
}

fn decode_seq<I: Int>(input: &[u8]) -> Option<Vec<I>> {
    let (len, mut at) = read_varint(input, U64_BYTE)?;
    // Each item takes a byte at least: a longer length is garbage, for serde to report.
    if len > (input.len() - at) as u64 {
        return None;
    }
    let mut items = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let (v, used) = read_varint(&input[at..], I::MAX_MARKER)?;
        items.push(I::from_varint(v)?);
        at += used;
    }
    (at == input.len()).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::xorshift;

    const CONFIG: bincode::config::Configuration = bincode::config::standard();

    fn bincode_of<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, CONFIG).unwrap()
    }

    /// Values at every varint boundary and random ones, of every type: the bytes are
    /// bincode's, and they read back.
    #[test]
    fn integers_encode_as_bincode_does_and_read_back() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut u: Vec<u64> = vec![0, 1, 250, 251, 252, 65_535, 65_536, u32::MAX as u64];
        u.extend([u32::MAX as u64 + 1, u64::MAX - 1, u64::MAX]);
        u.extend((0..2000).map(|_| next() >> (next() % 64)));
        let i: Vec<i64> = u
            .iter()
            .map(|&v| v as i64)
            .chain([i64::MIN, -1, -126])
            .collect();
        fn check<T>(values: Vec<T>)
        where
            T: serde::Serialize + serde::de::DeserializeOwned + Int + PartialEq + std::fmt::Debug,
        {
            let want = bincode_of(&values);
            let mut got = Vec::new();
            assert!(encode_seq::<T, T>(&values, &mut got));
            assert_eq!(got, want);
            let mut got = Vec::new();
            assert!(encode_vec(&values, &mut got));
            assert_eq!(got, want);
            assert_eq!(decode_vec::<Vec<T>>(&want), Some(values));
        }
        check(u.clone());
        check(i.clone());
        check(u.iter().map(|&v| v as u32).collect());
        check(i.iter().map(|&v| v as i32).collect());
        check(u.iter().map(|&v| v as usize).collect());
        // Borrowed items, and no other type.
        let mut got = Vec::new();
        assert!(encode_seq::<u64, &u64>(
            &u.iter().collect::<Vec<_>>(),
            &mut got
        ));
        assert_eq!(got, bincode_of(&u));
        assert!(!encode_seq::<u16, u16>(&[1, 2], &mut Vec::new()));
        assert!(decode_vec::<Vec<u16>>(&bincode_of(&vec![1u16])).is_none());
    }

    /// Whatever the fast path decodes, serde decodes to the same; whatever serde refuses, the
    /// fast path leaves to it.
    #[test]
    fn garbage_is_left_to_serde_and_never_decoded_differently() {
        fn agree<T>(input: &[u8])
        where
            T: serde::de::DeserializeOwned + Int + PartialEq + std::fmt::Debug,
        {
            let serde: Result<(Vec<T>, usize), _> =
                bincode::serde::decode_from_slice(input, CONFIG);
            let serde = serde
                .ok()
                .filter(|(_, used)| *used == input.len())
                .map(|(v, _)| v);
            if let Some(fast) = decode_vec::<Vec<T>>(input) {
                assert_eq!(Some(fast), serde, "{input:?}");
            }
        }
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = input.first_mut() {
                *first %= 8;
            }
            agree::<u64>(&input);
            agree::<i64>(&input);
            agree::<u32>(&input);
            agree::<i32>(&input);
            agree::<usize>(&input);
        }
        // A u32 written as a u64 varint, a length past the input, trailing bytes.
        assert!(decode_vec::<Vec<u32>>(&[1, U64_BYTE, 1, 0, 0, 0, 0, 0, 0, 0]).is_none());
        assert!(decode_vec::<Vec<u64>>(&[5, 1]).is_none());
        assert!(decode_vec::<Vec<u64>>(&[1, 1, 1]).is_none());
    }
}
