//! Helpers shared by the crate's unit tests.

/// A xorshift generator from `seed` (not 0): fast, reproducible noise for tests that feed
/// garbage to a parser.
pub(crate) fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
