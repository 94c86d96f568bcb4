//! W9, a big payload: one echo of a 1 GiB `Vec<u8>` (scaled down by `--quick`), in a fresh
//! process (this binary with the hidden `--big-echo` option), reporting its MB/s and the
//! parent's peak resident set while it ran.
//!
//! The peak is `VmHWM` of `/proc/self/status`, reset to the current resident set by writing
//! "5" to `/proc/self/clear_refs` just before the echo, when the process holds the payload
//! itself, its pool and nothing else. The payload is checked on return against the pattern it
//! was filled with, so no copy of it is kept.

use std::time::Instant;

use forkpool::Pool;

use crate::{echo, proc_status_kib, run_self};

/// What one big echo measured.
pub struct Measured {
    /// Payload bytes per second, in MB/s (the payload's size over the round trip).
    pub mb_per_s: f64,
    /// The parent's peak resident set during the echo, MiB.
    pub peak_mib: f64,
    /// The parent's resident set just before the echo (the payload in it), MiB.
    pub before_mib: f64,
}

fn byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// The hidden `--big-echo <bytes>` mode.
pub fn child(bytes: usize) {
    let pool = Pool::new(2).expect("pool");
    assert_eq!(pool.apply(echo, vec![1, 2, 3]).expect("warm-up"), [1, 2, 3]);
    let payload: Vec<u8> = (0..bytes).map(byte).collect();
    // The high-water mark starts again from the resident set of this moment.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM via /proc/self/clear_refs");
    let before = proc_status_kib("VmRSS");
    let start = Instant::now();
    let back = pool.apply(echo, payload).expect("the big echo");
    let secs = start.elapsed().as_secs_f64();
    let peak = proc_status_kib("VmHWM");
    assert_eq!(back.len(), bytes, "echo length");
    assert!(
        back.iter().enumerate().all(|(i, &b)| b == byte(i)),
        "the echo came back changed"
    );
    drop(back);
    pool.close();
    pool.join().expect("join");
    println!("big_echo {bytes} {secs} {peak} {before}");
}

/// Runs [`child`] in a fresh copy of this binary.
pub fn run(bytes: usize) -> Result<Measured, String> {
    let line = run_self(&["--big-echo", &bytes.to_string()], "big_echo ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    match f[..] {
        [n, secs, peak, before] => Ok(Measured {
            mb_per_s: n / 1e6 / secs,
            peak_mib: peak / 1024.0,
            before_mib: before / 1024.0,
        }),
        _ => Err(format!("big-echo child printed {line:?}")),
    }
}
