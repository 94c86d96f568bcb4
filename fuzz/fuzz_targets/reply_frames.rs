//! Fuzzes the parent's reply decoder: `FrameReader` fed in pieces, every whole frame parsed as a
//! reply (see `parse_reply_stream` in src/frame.rs).
//!
//! Input layout: `| selector u16 LE | rest |`. The selector picks the frame limit; the rest goes to
//! `parse_reply_stream` as it is (its first byte seeds the sizes of the pieces, the remainder is
//! the byte stream `| len u64 LE | id u64 LE | status u8 | run_us u32 LE | payload |`...).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The pool's default limit (`frame::DEFAULT_MAX_FRAME`): 4 GiB.
const DEFAULT_MAX_FRAME: u64 = 4 << 30;

/// Maps the selector to a frame limit:
/// - `0b0xxx...`: 0..=32767, small limits, where random length prefixes hit the limit often;
/// - `0b10xx...`: 60000..=125532, around the reader's 64 KiB read chunk, where a frame switches to
///   being read into a buffer of its own size;
/// - `0b11xx...`: the default 4 GiB.
fn max_frame(selector: u16) -> u64 {
    match selector >> 14 {
        0 | 1 => u64::from(selector & 0x7fff),
        2 => 60_000 + 4 * u64::from(selector & 0x3fff),
        _ => DEFAULT_MAX_FRAME,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = max_frame(u16::from_le_bytes(*selector));
    // Must not panic; an oversized frame is an `Err`, and `parse_reply_stream` itself panics if
    // a frame above `max` is ever handed out.
    let _ = forkpool::fuzzing::parse_reply_stream(rest, max);
});
