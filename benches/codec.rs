//! Criterion benchmarks of byte buffers inside arguments and results (issue 10, item 7).
//!
//! Run with `cargo bench --bench codec` (about a minute). Each case sends a 64 MiB buffer to a
//! worker with `apply` and gets it back unchanged, so the bytes cross the pipes twice and go
//! through the codec four times (encode and decode, each way):
//!
//! * `bare`: a `Vec<u8>` argument and result, which skips serde and travels raw: the yardstick.
//! * `serde_bytes`: a struct with a `#[serde(with = "serde_bytes")]` field, which serde hands
//!   to the codec in one `serialize_bytes` call.
//! * `tuple`: `(u64, Vec<u8>)`, whose `Vec<u8>` serde hands over one byte at a time.
//! * `shared`: a [`forkpool::SharedBytes`] handle to the same bytes, made once outside the
//!   loop: what a task pays for large read-only data that does not travel at all.
//!
//! Reported in bytes per second of the buffer. Compare the cases as ratios within one run.
//!
//! Figures (README, Performance), 2026-12-02, 3 runs alternating with the code before the
//! codec's byte-field paths, load average 1.1 to 1.5 on 2 cores: `serde_bytes` at 1.07, 1.15
//! and 1.37 of `bare` (before: 1.66, 1.71, 1.74), `tuple` at 3.8 to 4.8 (before: 3.9 to 4.7).
//! At a load of 5 to 8 wall times swing by 2x; the figures that do not move with load are the
//! page faults per round trip from `perf stat -e task-clock,page-faults` over a loop of round
//! trips: bare 49 k, serde_bytes 50 k (before: 115 k), tuple 115 k.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use forkpool::Pool;
use serde::{Deserialize, Serialize};

/// Size of every buffer.
const LEN: usize = 64 << 20;

#[derive(Serialize, Deserialize)]
struct Tagged {
    id: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn bare(v: Vec<u8>) -> Vec<u8> {
    v
}

fn tagged(t: Tagged) -> Tagged {
    t
}

fn tuple(t: (u64, Vec<u8>)) -> (u64, Vec<u8>) {
    t
}

fn shared_sum(s: forkpool::SharedBytes) -> u64 {
    s.as_slice()
        .iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum()
}

fn payload() -> Vec<u8> {
    (0..LEN).map(|i| (i as u8).wrapping_mul(31)).collect()
}

fn codec(c: &mut Criterion) {
    let pool = Pool::new(2).expect("pool");
    let data = payload();
    let mut group = c.benchmark_group("codec_64MiB_round_trip");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(LEN as u64));
    group.bench_function("bare", |b| {
        b.iter(|| black_box(pool.apply(bare, data.clone()).unwrap()))
    });
    group.bench_function("serde_bytes", |b| {
        b.iter(|| {
            let t = Tagged {
                id: 1,
                data: data.clone(),
            };
            black_box(pool.apply(tagged, t).unwrap())
        })
    });
    group.bench_function("tuple", |b| {
        b.iter(|| black_box(pool.apply(tuple, (1, data.clone())).unwrap()))
    });
    let shared = forkpool::SharedBytes::new(&data).expect("shared bytes");
    group.bench_function("shared", |b| {
        b.iter(|| black_box(pool.apply(shared_sum, shared.clone()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
