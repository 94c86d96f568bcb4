//! Randomized tests of the parent's reply decoder (`FrameReader` + `parse_reply`), through the
//! hidden `forkpool::fuzzing::parse_reply_stream`. A stable-Rust companion of the cargo-fuzz target
//! in `fuzz/`: no nightly, no extra crates, deterministic.
//!
//! Run with `cargo test --features fuzzing --test frame_fuzz`. `FRAME_FUZZ_CASES` and
//! `FRAME_FUZZ_SEED` change the number of random cases and the PRNG seed.
//!
//! `parse_reply_stream(input, max)` takes the first byte of `input` as the seed of the sizes of
//! the pieces it feeds the reader, and the rest as the byte stream
//! `| len u64 LE | id u64 LE | status u8 | payload |`..., so every input built here is
//! `[piece_seed] ++ stream`.
#![cfg(feature = "fuzzing")]

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use forkpool::fuzzing::parse_reply_stream;

/// Bytes in the length prefix.
const LEN: usize = 8;
/// Bytes of a reply body before the payload: id, status.
const REPLY_HEADER: usize = 13;
/// The reader's read chunk: frames longer than this are read into a buffer of their own size.
const READ_CHUNK: u64 = 64 * 1024;
/// The pool's default frame limit: 4 GiB.
const DEFAULT_MAX_FRAME: u64 = 4 << 30;
/// Above this, an announced length that passes the limit makes the reader reserve that much
/// memory before any of the body arrives; random cases keep below it (see `pick_limit_for`).
const MAX_RESERVATION: u64 = 1 << 20;

/// splitmix64: small, fast, and good enough to drive test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        for _ in 0..n / 8 {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        let tail = self.next().to_le_bytes();
        out.extend_from_slice(&tail[..n % 8]);
    }
}

/// One reply frame as the worker writes it.
fn reply_frame(id: u64, status: u8, payload: &[u8]) -> Vec<u8> {
    let body = (REPLY_HEADER + payload.len()) as u64;
    let mut f = Vec::with_capacity(LEN + REPLY_HEADER + payload.len());
    f.extend_from_slice(&body.to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.push(status);
    f.extend_from_slice(&7u32.to_le_bytes()); // the task's run time in the worker, µs
    f.extend_from_slice(payload);
    f
}

/// What the decoder must make of a stream (without the piece seed byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// This many replies, and the stream ends on a frame boundary.
    Replies(usize),
    /// A length prefix above the limit.
    TooLarge,
    /// A whole frame whose body is not a reply: shorter than its header, or a bad status byte.
    BadReply,
    /// The stream ends inside a frame (or inside a length prefix).
    Truncated,
}

/// The status bytes a reply may carry. The decoder knows 0..=4 (Ok, Panicked, EncodeFailed,
/// DecodeFailed, InitializerPanicked) and may know more (5, Ready), and the top bit may be a flag
/// (0x80, the worker retires after this reply), so the test asks the decoder once, and checks
/// the answer has that shape: `0..=N` with `N >= 4`, alone or also with the top bit set.
fn statuses() -> &'static [u8] {
    static STATUSES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    STATUSES.get_or_init(|| {
        let accepted: Vec<u8> = (0..=255u8)
            .filter(|&status| {
                let mut input = vec![0];
                input.extend_from_slice(&reply_frame(1, status, b"p"));
                parse_reply_stream(&input, DEFAULT_MAX_FRAME) == Ok(1)
            })
            .collect();
        let low: Vec<u8> = accepted.iter().copied().filter(|&b| b < 0x80).collect();
        let high: Vec<u8> = accepted.iter().copied().filter(|&b| b >= 0x80).collect();
        let n = low.len();
        let shaped = (5..=16).contains(&n)
            && low.iter().copied().eq(0..n as u8)
            && (high.is_empty() || high.iter().copied().eq(low.iter().map(|&b| b | 0x80)));
        assert!(shaped, "accepted status bytes: {accepted:?}");
        accepted
    })
}

fn status_ok(status: u8) -> bool {
    statuses().binary_search(&status).is_ok()
}

/// The reference decoder: walks the frames in order and stops at the first problem. Also returns
/// the largest announced length that passed the limit (how much the reader may reserve).
fn model(stream: &[u8], max: u64) -> (Expect, u64) {
    let mut at = 0;
    let mut replies = 0;
    let mut reserved = 0;
    loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            return (Expect::Replies(replies), reserved);
        }
        if rest.len() < LEN {
            return (Expect::Truncated, reserved);
        }
        let len = u64::from_le_bytes(rest[..LEN].try_into().unwrap());
        if len > max || len > isize::MAX as u64 - LEN as u64 {
            return (Expect::TooLarge, reserved);
        }
        reserved = reserved.max(len);
        if ((rest.len() - LEN) as u64) < len {
            return (Expect::Truncated, reserved);
        }
        let body = &rest[LEN..LEN + len as usize];
        if body.len() < REPLY_HEADER || !status_ok(body[8]) {
            return (Expect::BadReply, reserved);
        }
        replies += 1;
        at += LEN + len as usize;
    }
}

/// Runs the real decoder on `[piece_seed] ++ stream`, turning a panic into a test failure that
/// shows how to reproduce it.
fn run(case: u64, piece_seed: u8, stream: &[u8], max: u64) -> Result<usize, String> {
    let mut input = Vec::with_capacity(1 + stream.len());
    input.push(piece_seed);
    input.extend_from_slice(stream);
    match panic::catch_unwind(AssertUnwindSafe(|| parse_reply_stream(&input, max))) {
        Ok(result) => result,
        Err(_) => panic!(
            "case {case}: parse_reply_stream panicked; max = {max}, input ({} bytes) = {}",
            input.len(),
            hex(&input)
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(256).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 256 {
        format!("{shown}...")
    } else {
        shown
    }
}

/// Checks the real decoder against the model.
fn check(case: u64, piece_seed: u8, stream: &[u8], max: u64, expect: Expect) {
    let got = run(case, piece_seed, stream, max);
    let ok = match (expect, &got) {
        (Expect::Replies(n), Ok(m)) => n == *m,
        (Expect::Replies(_), Err(_)) | (_, Ok(_)) => false,
        (Expect::TooLarge, Err(e)) => e.contains("limit"),
        (Expect::BadReply | Expect::Truncated, Err(_)) => true,
    };
    assert!(
        ok,
        "case {case}: expected {expect:?}, got {got:?}; max = {max}, piece seed = {piece_seed}, \
         stream ({} bytes) = {}",
        stream.len(),
        hex(stream)
    );
}

/// A frame limit for random bytes and mutated streams: small ones (where random lengths hit the
/// limit), ones around the read chunk, and the default.
fn pick_limit(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => rng.below(REPLY_HEADER as u64 + 2),
        1 => rng.below(64),
        2 => rng.below(4096),
        3 => READ_CHUNK - LEN as u64 - 8 + rng.below(24),
        4 => rng.below(MAX_RESERVATION + 1),
        _ => DEFAULT_MAX_FRAME,
    }
}

/// `pick_limit`, except that a limit that would let an announced length above
/// `MAX_RESERVATION` through is replaced by `MAX_RESERVATION`: such a length makes the reader
/// reserve that much memory up front (up to 4 GiB), which this test should not depend on.
fn pick_limit_for(rng: &mut Rng, stream: &[u8]) -> u64 {
    let max = pick_limit(rng);
    if max > MAX_RESERVATION && model(stream, max).1 > MAX_RESERVATION {
        MAX_RESERVATION
    } else {
        max
    }
}

/// A payload length: mostly small, sometimes a few KiB, rarely past the 64 KiB read chunk.
fn payload_len(rng: &mut Rng) -> usize {
    match rng.below(1000) {
        0..=599 => rng.index(24),
        600..=949 => rng.index(300),
        950..=998 => rng.index(5000),
        _ => READ_CHUNK as usize - 64 + rng.index(80_000),
    }
}

/// A stream of valid replies, with the offsets where each frame starts and its body length.
struct Stream {
    bytes: Vec<u8>,
    starts: Vec<usize>,
    largest_body: u64,
}

fn valid_stream(rng: &mut Rng) -> Stream {
    let frames = match rng.below(10) {
        0 => 0,
        1..=6 => 1 + rng.index(4),
        _ => 1 + rng.index(20),
    };
    let mut s = Stream {
        bytes: Vec::new(),
        starts: Vec::new(),
        largest_body: 0,
    };
    let mut payload = Vec::new();
    for _ in 0..frames {
        payload.clear();
        let n = payload_len(rng);
        rng.fill(&mut payload, n);
        s.starts.push(s.bytes.len());
        let id = if rng.chance(8) { u64::MAX } else { rng.next() };
        let status = statuses()[rng.index(statuses().len())];
        s.bytes
            .extend_from_slice(&reply_frame(id, status, &payload));
        s.largest_body = s.largest_body.max((REPLY_HEADER + n) as u64);
    }
    s
}

/// A huge or limit-straddling length prefix.
fn nasty_len(rng: &mut Rng, max: u64) -> u64 {
    match rng.below(10) {
        0 => u64::MAX,
        1 => 1 << 63,
        2 => isize::MAX as u64,
        3 => isize::MAX as u64 - LEN as u64 + 1,
        4 => DEFAULT_MAX_FRAME + 1,
        5 => max.saturating_add(1),
        6 => max.saturating_add(1 + rng.below(1 << 20)),
        7 => max,
        8 => max.saturating_sub(1),
        _ => rng.below(REPLY_HEADER as u64 + 1),
    }
}

/// Applies one random mutation.
fn mutate(rng: &mut Rng, s: &mut Stream) {
    let bytes = &mut s.bytes;
    match rng.below(8) {
        // Flip a bit.
        0 | 1 if !bytes.is_empty() => {
            let i = rng.index(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        // Truncate.
        2 if !bytes.is_empty() => {
            let at = rng.index(bytes.len());
            bytes.truncate(at);
        }
        // Insert random bytes.
        3 => {
            let at = rng.index(bytes.len() + 1);
            let mut extra = Vec::new();
            let n = 1 + rng.index(16);
            rng.fill(&mut extra, n);
            bytes.splice(at..at, extra);
        }
        // Delete a few bytes.
        4 if !bytes.is_empty() => {
            let at = rng.index(bytes.len());
            let end = (at + 1 + rng.index(16)).min(bytes.len());
            bytes.drain(at..end);
        }
        // Rewrite a frame's length prefix with a huge or limit-straddling value.
        5 if !s.starts.is_empty() => {
            let start = s.starts[rng.index(s.starts.len())];
            if start + LEN <= bytes.len() {
                let len = nasty_len(rng, s.largest_body);
                bytes[start..start + LEN].copy_from_slice(&len.to_le_bytes());
            }
        }
        // Rewrite a status byte.
        6 if !s.starts.is_empty() => {
            let start = s.starts[rng.index(s.starts.len())];
            if start + LEN + 8 < bytes.len() {
                bytes[start + LEN + 8] = rng.byte();
            }
        }
        // Append a bare length prefix, or part of one.
        _ => {
            let len = nasty_len(rng, s.largest_body);
            let keep = 1 + rng.index(LEN);
            bytes.extend_from_slice(&len.to_le_bytes()[..keep]);
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_streams_match_the_model() {
    let cases = env_u64("FRAME_FUZZ_CASES", 200_000);
    let seed = env_u64("FRAME_FUZZ_SEED", 0x5eed_f0e4_c0de_0001);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kinds = [0u64; 4];
    for case in 0..cases {
        let piece_seed = rng.byte();
        let (stream, max, expect) = match case % 5 {
            // Random bytes.
            0 => {
                let mut bytes = Vec::new();
                let cap = if rng.chance(4) { 2048 } else { 64 };
                let n = rng.index(cap);
                rng.fill(&mut bytes, n);
                if rng.chance(2) && !bytes.is_empty() {
                    // Often make the first length prefix small enough to be read.
                    let small = rng.below(64).to_le_bytes();
                    let k = bytes.len().min(LEN);
                    bytes[..k].copy_from_slice(&small[..k]);
                }
                let max = pick_limit_for(&mut rng, &bytes);
                let expect = model(&bytes, max).0;
                (bytes, max, expect)
            }
            // Valid streams: N frames give Ok(N), whatever the limit as long as it admits them.
            1 => {
                let s = valid_stream(&mut rng);
                let max = match rng.below(4) {
                    0 => s.largest_body,
                    1 => s.largest_body + rng.below(100),
                    _ => DEFAULT_MAX_FRAME,
                };
                let expect = Expect::Replies(s.starts.len());
                assert_eq!(model(&s.bytes, max).0, expect, "case {case}: model");
                (s.bytes, max, expect)
            }
            // Mutated valid streams, checked against the model.
            2 => {
                let mut s = valid_stream(&mut rng);
                for _ in 0..1 + rng.below(3) {
                    mutate(&mut rng, &mut s);
                }
                let max = pick_limit_for(&mut rng, &s.bytes);
                let expect = model(&s.bytes, max).0;
                (s.bytes, max, expect)
            }
            // A frame above the limit somewhere in a valid stream: an error, never a reply.
            3 => {
                let mut s = valid_stream(&mut rng);
                if s.starts.is_empty() {
                    s.starts.push(0);
                    s.bytes.extend_from_slice(&reply_frame(1, 0, b"x"));
                    s.largest_body = REPLY_HEADER as u64 + 1;
                }
                let k = rng.index(s.starts.len());
                let start = s.starts[k];
                let body = u64::from_le_bytes(s.bytes[start..start + LEN].try_into().unwrap());
                let max = if rng.chance(2) {
                    // The frame is whole but one byte (or more) over the limit.
                    body - 1 - rng.below(body.min(4))
                } else {
                    // The frame announces a huge length.
                    let max = if rng.chance(2) {
                        DEFAULT_MAX_FRAME
                    } else {
                        s.largest_body + rng.below(1000)
                    };
                    let len = match rng.below(4) {
                        0 => u64::MAX,
                        1 => max + 1,
                        2 => max + 1 + rng.below(u32::MAX as u64),
                        _ => isize::MAX as u64,
                    };
                    s.bytes[start..start + LEN].copy_from_slice(&len.to_le_bytes());
                    max
                };
                // Frames before this one may be over the limit too; either way it is refused.
                assert_eq!(model(&s.bytes, max).0, Expect::TooLarge, "case {case}");
                (s.bytes, max, Expect::TooLarge)
            }
            // A valid stream cut strictly inside a frame: an error.
            _ => {
                let mut s = valid_stream(&mut rng);
                if s.starts.is_empty() {
                    s.starts.push(0);
                    s.bytes.extend_from_slice(&reply_frame(2, 1, b"boom"));
                    s.largest_body = REPLY_HEADER as u64 + 4;
                }
                let k = rng.index(s.starts.len());
                let start = s.starts[k];
                let end = s.starts.get(k + 1).copied().unwrap_or(s.bytes.len());
                let cut = start + 1 + rng.index(end - start - 1);
                s.bytes.truncate(cut);
                let max = if rng.chance(2) {
                    DEFAULT_MAX_FRAME
                } else {
                    s.largest_body
                };
                assert_eq!(model(&s.bytes, max).0, Expect::Truncated, "case {case}");
                (s.bytes, max, Expect::Truncated)
            }
        };
        check(case, piece_seed, &stream, max, expect);
        kinds[match expect {
            Expect::Replies(_) => 0,
            Expect::TooLarge => 1,
            Expect::BadReply => 2,
            Expect::Truncated => 3,
        }] += 1;
    }
    println!(
        "{cases} cases in {:.2?} (seed {seed:#x}, statuses {:?}): {} ok, {} too large, \
         {} bad reply, {} truncated",
        started.elapsed(),
        statuses(),
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3]
    );
    // Every outcome was exercised a fair number of times.
    if cases >= 10_000 {
        assert!(kinds.iter().all(|&k| k >= cases / 50), "{kinds:?}");
    }
}

#[test]
fn empty_inputs_are_zero_replies() {
    assert_eq!(parse_reply_stream(&[], DEFAULT_MAX_FRAME), Ok(0));
    for seed in 0..=255 {
        assert_eq!(parse_reply_stream(&[seed], 0), Ok(0));
    }
}

#[test]
fn huge_length_prefixes_are_refused_before_reading_on() {
    for len in [
        u64::MAX,
        1 << 63,
        isize::MAX as u64,
        isize::MAX as u64 - LEN as u64 + 1,
        DEFAULT_MAX_FRAME + 1,
    ] {
        for piece_seed in [0, 7, 255] {
            let mut input = vec![piece_seed];
            input.extend_from_slice(&len.to_le_bytes());
            input.extend_from_slice(&[0; 64]);
            let got = parse_reply_stream(&input, DEFAULT_MAX_FRAME);
            assert!(
                got.as_ref().is_err_and(|e| e.contains("limit")),
                "len {len}: {got:?}"
            );
        }
    }
}

#[test]
fn limit_is_inclusive() {
    for max in [
        REPLY_HEADER as u64,
        100,
        READ_CHUNK - 8,
        READ_CHUNK + 1,
        200_000,
    ] {
        let payload = vec![0xab; max as usize - REPLY_HEADER];
        let frame = reply_frame(42, 0, &payload);
        for piece_seed in [0, 1, 100, 255] {
            let mut input = vec![piece_seed];
            input.extend_from_slice(&frame);
            assert_eq!(parse_reply_stream(&input, max), Ok(1), "max {max}");
            let got = parse_reply_stream(&input, max - 1);
            assert!(
                got.as_ref().is_err_and(|e| e.contains("limit")),
                "max {}: {got:?}",
                max - 1
            );
        }
    }
}

#[test]
fn every_piece_seed_reassembles_large_and_small_frames() {
    let mut stream = Vec::new();
    let sizes = [0, 1, 300, 70_000, 5, 150_000, 65_527, 65_528, 65_529, 0];
    for (i, &n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
        stream.extend_from_slice(&reply_frame(i as u64, (i % 5) as u8, &payload));
    }
    for piece_seed in 0..=255u8 {
        let mut input = vec![piece_seed];
        input.extend_from_slice(&stream);
        assert_eq!(
            parse_reply_stream(&input, DEFAULT_MAX_FRAME),
            Ok(sizes.len()),
            "piece seed {piece_seed}"
        );
        // Cut inside the last large frame.
        let cut = input.len() - 100_000;
        assert!(parse_reply_stream(&input[..cut], DEFAULT_MAX_FRAME).is_err());
    }
}
