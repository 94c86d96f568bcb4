//! What makes two ranks the same program: the binary's identity, and the translation of a
//! function's address to and from an offset from the executable's load base.
//!
//! Ranks run the same executable at different addresses (PIE and ASLR), but a function's offset
//! from the executable's load base is the same in every rank. The offset alone is not enough: a
//! rebuilt binary with one constant changed can keep a function at the same offset with other
//! code in it. So every rank's [`Identity`] is checked against rank 0's before any task is sent,
//! and an offset is turned back into an address only if it falls inside the executable's code.

use std::fmt;
use std::hash::Hasher;

use crate::sys::{self, ExeImage};

/// A binary's identity: its GNU build-id if the link recorded one, else a hash of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity(pub(crate) Vec<u8>);

impl Identity {
    /// The identity of the running executable.
    pub(crate) fn of_self(image: &ExeImage) -> Identity {
        if let Some(id) = &image.build_id {
            let mut bytes = b"build-id:".to_vec();
            bytes.extend_from_slice(id);
            return Identity(bytes);
        }
        // No build-id: hash the executable (SipHash with fixed keys, the same in every rank).
        let mut hasher = std::hash::DefaultHasher::new();
        match std::fs::read("/proc/self/exe") {
            Ok(bytes) => hasher.write(&bytes),
            Err(e) => hasher.write(e.to_string().as_bytes()),
        }
        let mut bytes = b"sip13:".to_vec();
        bytes.extend_from_slice(&hasher.finish().to_be_bytes());
        Identity(bytes)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.0.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
        f.write_str(&String::from_utf8_lossy(&self.0[..cut]))?;
        for b in &self.0[cut..] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// This process's executable, for turning addresses into offsets and back.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    inner: ExeImage,
}

impl Image {
    pub(crate) fn of_self() -> Image {
        Image {
            inner: sys::exe_image(),
        }
    }

    pub(crate) fn identity(&self) -> Identity {
        Identity::of_self(&self.inner)
    }

    /// The offset of a function of this executable from its load base.
    pub(crate) fn offset(&self, address: u64) -> u64 {
        address.wrapping_sub(self.inner.base)
    }

    /// The address of the function at `offset`, if the offset falls inside the executable's
    /// code; `None` otherwise, and the offset must not be called.
    pub(crate) fn address(&self, offset: u64) -> Option<u64> {
        self.inner
            .code
            .iter()
            .any(|&(start, end)| (start..end).contains(&offset))
            .then(|| self.inner.base.wrapping_add(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(x: u64) -> u64 {
        x + 1
    }

    #[test]
    fn a_function_round_trips_through_its_offset() {
        let image = Image::of_self();
        let address = probe as fn(u64) -> u64 as usize as u64;
        let offset = image.offset(address);
        assert_eq!(image.address(offset), Some(address));
    }

    #[test]
    fn offsets_outside_the_code_are_refused() {
        let image = Image::of_self();
        static DATA: u64 = 7;
        let data = image.offset(&DATA as *const u64 as u64);
        assert_eq!(image.address(data), None);
        assert_eq!(image.address(u64::MAX), None);
        let heap = Box::new(1u64);
        assert_eq!(
            image.address(image.offset(&*heap as *const u64 as u64)),
            None
        );
    }

    #[test]
    fn identity_is_stable_and_printable() {
        let image = Image::of_self();
        assert_eq!(image.identity(), Image::of_self().identity());
        let shown = image.identity().to_string();
        assert!(
            shown.starts_with("build-id:") || shown.starts_with("sip13:"),
            "{shown}"
        );
    }
}
