//! Byte buffers inside arguments and results (issue 10, item 7): `serde_bytes` fields in every
//! position serde can put them cross real pipes to real workers and back intact, through
//! `apply` (owned frames), `map` chunks (borrowed decoding) and `imap` over borrowed items;
//! a worker's garbage length prefix for a byte field is a decode error, not an abort.

mod common;

use common::{within, LIMIT};
use forkpool::{Error, Pool};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Tagged {
    id: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape {
    Bare(#[serde(with = "serde_bytes")] Vec<u8>),
    Nested {
        inner: Tagged,
        #[serde(with = "serde_bytes")]
        maybe: Option<Vec<u8>>,
        count: u32,
    },
    Several(Vec<Tagged>, #[serde(with = "serde_bytes")] Vec<u8>),
    Nothing,
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn shapes(len: usize) -> Vec<Shape> {
    let t = |seed| Tagged {
        id: u64::from(seed),
        data: bytes(len, seed),
    };
    vec![
        Shape::Bare(bytes(len, 1)),
        Shape::Bare(Vec::new()),
        Shape::Nested {
            inner: t(2),
            maybe: Some(bytes(len, 3)),
            count: 4,
        },
        Shape::Nested {
            inner: t(5),
            maybe: None,
            count: 6,
        },
        Shape::Several(vec![t(7), t(8), t(9)], bytes(len, 10)),
        Shape::Several(Vec::new(), Vec::new()),
        Shape::Nothing,
    ]
}

/// Echoes its argument, and checks in the worker that it arrived intact.
fn echo(s: Shape) -> Shape {
    assert!(
        shapes(len_of(&s)).contains(&s),
        "the worker got a damaged argument"
    );
    s
}

/// The buffer length the shape was made with.
fn len_of(s: &Shape) -> usize {
    match s {
        Shape::Bare(v) => v.len(),
        Shape::Nested { inner, .. } => inner.data.len(),
        Shape::Several(v, last) => v.first().map_or(last.len(), |t| t.data.len()),
        Shape::Nothing => 0,
    }
}

fn tagged_last(t: (u8, Tagged)) -> (Tagged, u8) {
    (t.1, t.0)
}

#[test]
fn byte_fields_round_trip_through_apply_map_and_imap() {
    within(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        for len in [0, 1, 1000, 100_000, 3 << 20] {
            for s in shapes(len) {
                assert_eq!(
                    pool.apply(echo, s.clone()).unwrap(),
                    s,
                    "apply, {len} bytes"
                );
            }
            let all = shapes(len);
            assert_eq!(pool.map_chunked(echo, all.clone(), 3).unwrap(), all);
            let borrowed: &'static [Shape] = Box::leak(all.clone().into_boxed_slice());
            let back: Vec<Shape> = pool
                .imap(echo, borrowed.iter())
                .unwrap()
                .collect::<forkpool::Result<_>>()
                .unwrap();
            assert_eq!(back, all, "imap over borrowed items");
            let t = Tagged {
                id: 11,
                data: bytes(len, 11),
            };
            assert_eq!(
                pool.apply(tagged_last, (12, t.clone())).unwrap(),
                (t, 12),
                "a byte field first, then last"
            );
        }
    });
}

/// A result that encodes as a bare integer but decodes as a byte buffer: the integer is the
/// buffer's length prefix, claiming far more bytes than the reply holds.
#[derive(Debug)]
struct Liar(u64);

impl Serialize for Liar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Liar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Liar, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(Liar(bytes.len() as u64))
    }
}

fn lie(claim: u64) -> (u8, Liar) {
    (1, Liar(claim))
}

#[test]
fn a_garbage_byte_field_length_from_a_worker_is_a_decode_error() {
    within(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        for claim in [u64::MAX, 1 << 40, 1 << 32, 1000] {
            match pool.apply(lie, claim) {
                Err(Error::Decode { what, message }) => {
                    assert_eq!(what, "result", "{message}")
                }
                other => panic!("a length of {claim} gave {other:?}"),
            }
        }
        // The pool is still whole.
        assert_eq!(pool.apply(echo, Shape::Nothing).unwrap(), Shape::Nothing);
    });
}
