//! A serde deserializer in front of bincode's that gives byte fields their bytes in one copy,
//! or hands over the input buffer itself.
//!
//! Serde asks for a `#[serde(with = "serde_bytes")]` field with `deserialize_byte_buf`, for
//! which bincode 2 allocates a zeroed buffer and then copies the bytes into it: two passes over
//! fresh memory (and for 64 MiB, 16 384 page faults). [`Fields`] wraps bincode's deserializer
//! at every level of the value (sequences, maps, enums, options, newtypes) and answers
//! `deserialize_byte_buf` with bincode's `deserialize_bytes`, which borrows the bytes from the
//! input, so the field's `Vec` is made with one copy. Strings likewise go through
//! `deserialize_str`. Nothing about the wire changes: the same bincode reads the same bytes,
//! only the way the result is allocated differs.
//!
//! One step further: when the input buffer is owned ([`Source::owning`]) and a byte field's
//! bytes run to the end of it, which is where a value's last field lies (the common "header,
//! then payload" shape), the field takes the buffer itself, its front cut off in place, like a
//! bare `Vec<u8>` does (see `decode_owned` in the parent module). That skips the copy and the
//! fresh allocation.

use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// A byte field takes the input buffer only if it is at least this long...
const TAKE_MIN: usize = 64 * 1024;

/// ...and at least this fraction (1 / `TAKE_SHARE`) of the buffer's capacity, so a short field
/// never keeps a large buffer alive.
const TAKE_SHARE: usize = 2;

/// The input of one decode: where it ends, and (for an owned input) the buffer that holds it,
/// for a byte field at the end to take.
pub(super) struct Source {
    /// The address one past the input's last byte.
    end: usize,
    /// The owned buffer, in raw parts, until a byte field takes it; `None` for a borrowed
    /// input, or once taken.
    owned: Cell<Option<RawBuf>>,
}

/// A `Vec<u8>` taken apart: the allocation stays live and is freed by whoever rebuilds it.
#[derive(Clone, Copy)]
struct RawBuf {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    /// Where the input starts in the buffer.
    start: usize,
}

impl Source {
    /// The source of a borrowed input: byte fields are copied out of it.
    pub(super) fn borrowed(input: &[u8]) -> Source {
        Source {
            end: input.as_ptr_range().end as usize,
            owned: Cell::new(None),
        }
    }

    /// The source of `buf[start..]`, owned: a byte field at its end may take the buffer.
    pub(super) fn owning(buf: Vec<u8>, start: usize) -> Source {
        assert!(start <= buf.len(), "the input starts inside the buffer");
        let mut buf = ManuallyDrop::new(buf);
        let raw = RawBuf {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            cap: buf.capacity(),
            start,
        };
        Source {
            // SAFETY: `len` is within the allocation `ptr` points into (one past its end at most).
            end: unsafe { raw.ptr.add(raw.len) } as usize,
            owned: Cell::new(Some(raw)),
        }
    }

    /// The input an owned source holds: `buf[start..]` of [`owning`](Self::owning).
    ///
    /// # Panics
    /// If the source is borrowed or its buffer has been taken.
    pub(super) fn owned_input(&self) -> &[u8] {
        let raw = self.owned.get().expect("an owned source, not yet taken");
        // SAFETY: `raw` describes a live `Vec<u8>` of `len` initialized bytes that this source
        // owns (nobody else can reach it) and frees only in `drop` or hands over in `take`;
        // `start <= len` was checked in `owning`. The slice may outlive a `take`: see the
        // contract there for why it is never read past that point.
        unsafe { std::slice::from_raw_parts(raw.ptr.add(raw.start), raw.len - raw.start) }
    }

    /// The owned buffer, made into the `Vec` of `field` alone, if `field` runs to the input's
    /// end, is large enough to be worth it, and the buffer has not been taken yet.
    ///
    /// `field` was borrowed from [`owned_input`](Self::owned_input); once this returns `Some`,
    /// the memory behind it and behind every slice of the input belongs to the returned `Vec`.
    /// That is sound because a decode reads its input front to back and `field` ended at the
    /// input's end: nothing is left for the decoder to read, so no byte of the old slices is
    /// read again (what remains of them are empty slices at the end, whose length only is
    /// looked at), and the decoded value owns all its data (`DeserializeOwned`).
    fn take(&self, field: &[u8]) -> Option<Vec<u8>> {
        let range = field.as_ptr_range();
        if range.end as usize != self.end || field.len() < TAKE_MIN {
            return None;
        }
        let raw = self.owned.get()?;
        if field.len() < raw.cap / TAKE_SHARE {
            return None;
        }
        self.owned.set(None);
        let offset = range.start as usize - raw.ptr as usize;
        // SAFETY: `raw` came from a `Vec<u8>` in `owning` and was just taken out of the cell,
        // so this is the only rebuild of it; see above for why the old slices are not read.
        let mut buf = unsafe { Vec::from_raw_parts(raw.ptr, raw.len, raw.cap) };
        buf.drain(..offset);
        Some(buf)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(raw) = self.owned.take() {
            // SAFETY: `raw` came from a `Vec<u8>` in `owning` and was never rebuilt (`take`
            // empties the cell when it does).
            drop(unsafe { Vec::from_raw_parts(raw.ptr, raw.len, raw.cap) });
        }
    }
}

/// Deserializes a `T` through [`Fields`]: the seed to give bincode for the top-level value.
pub(super) struct Value<'s, T>(
    pub(super) &'s Source,
    pub(super) std::marker::PhantomData<T>,
);

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Value<'_, T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(Fields {
            inner: d,
            source: self.0,
        })
    }
}

/// Bincode's deserializer `D`, with byte buffers and strings read as borrowed slices.
struct Fields<'s, D> {
    inner: D,
    source: &'s Source,
}

/// A visitor `V` whose nested deserializers and accesses are wrapped in [`Fields`] too.
/// `take`: this visitor answers a `deserialize_byte_buf`, and may be given the input buffer.
struct Wrap<'s, V> {
    inner: V,
    source: &'s Source,
    take: bool,
}

/// A seed, a sequence, a map, an enum or a variant, whose deserializers are wrapped.
struct Nested<'s, A> {
    inner: A,
    source: &'s Source,
}

impl<'s, D> Fields<'s, D> {
    #[inline(always)]
    fn wrap<V>(&self, inner: V) -> Wrap<'s, V> {
        Wrap {
            inner,
            source: self.source,
            take: false,
        }
    }
}

#[inline(always)]
fn nested<A>(inner: A, source: &Source) -> Nested<'_, A> {
    Nested { inner, source }
}

/// True if a `T` cannot own a byte buffer: it has no drop glue, so no `Vec` or `Box` inside.
/// Such a value is deserialized by bincode directly, without the wrapper's layers, which cost
/// about as much again per element when the elements are the bytes of a plain `Vec<u8>`. That
/// is always correct, since the wrapper changes how byte fields are allocated, never what is
/// read: at worst a value that reads a byte field and keeps only a summary of it reads it
/// bincode's slower way.
#[inline(always)]
const fn owns_nothing<T>() -> bool {
    !std::mem::needs_drop::<T>()
}

/// Forwards `deserialize_*` methods that take only a visitor.
macro_rules! forward {
    ($($method:ident)*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Fields<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_bytes
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        // Borrowed, then copied once by the visitor, rather than bincode's zeroed buffer.
        let visitor = self.wrap(visitor);
        self.inner.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = Wrap {
            take: true,
            ..self.wrap(visitor)
        };
        self.inner.deserialize_bytes(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `visit_*` methods that take one plain value.
macro_rules! visit {
    ($($method:ident($ty:ty))*) => {$(
        #[inline(always)]
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit! {
        visit_bool(bool)
        visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        if self.take {
            if let Some(buf) = self.source.take(v) {
                return self.inner.visit_byte_buf(buf);
            }
        }
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Fields {
            inner: d,
            source: self.source,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Fields {
            inner: d,
            source: self.source,
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(nested(seq, self.source))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(nested(map, self.source))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(nested(data, self.source))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nested<'_, S> {
    type Value = S::Value;
    #[inline(always)]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Fields {
            inner: d,
            source: self.source,
        })
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Nested<'_, A> {
    type Error = A::Error;

    #[inline(always)]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        if owns_nothing::<T::Value>() {
            // Each byte of a plain `Vec<u8>` comes this way: wrapping it would double its cost.
            return self.inner.next_element_seed(seed);
        }
        self.inner.next_element_seed(nested(seed, self.source))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Nested<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if owns_nothing::<K::Value>() {
            return self.inner.next_key_seed(seed);
        }
        self.inner.next_key_seed(nested(seed, self.source))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        if owns_nothing::<T::Value>() {
            return self.inner.next_value_seed(seed);
        }
        self.inner.next_value_seed(nested(seed, self.source))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 's, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Nested<'s, A> {
    type Error = A::Error;
    type Variant = Nested<'s, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(nested(seed, self.source))?;
        Ok((value, nested(variant, self.source)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Nested<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(nested(seed, self.source))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = Wrap {
            inner: visitor,
            source: self.source,
            take: false,
        };
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = Wrap {
            inner: visitor,
            source: self.source,
            take: false,
        };
        self.inner.struct_variant(fields, visitor)
    }
}
