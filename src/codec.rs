//! The only place that calls bincode: swap the codec here and nowhere else.
//!
//! Values are encoded with bincode 2's standard configuration through serde. Decoding insists on
//! consuming every byte, so a reply that does not match its type is an error, not a silent
//! partial read.

use serde::de::DeserializeOwned;
use serde::Serialize;

const CONFIG: bincode::config::Configuration = bincode::config::standard();

/// Appends the encoding of `value` to `out`. On error `out` may hold a partial encoding after
/// its original length; callers truncate it.
pub(crate) fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    bincode::serde::encode_into_std_write(value, out, CONFIG)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Decodes a whole buffer as one `T`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value ({} bytes in all)",
            bytes.len() - used,
            bytes.len()
        ));
    }
    Ok(value)
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
    fn short_input_is_an_error() {
        assert!(decode::<(u64, u64)>(&[1]).is_err());
    }
}
