//! Criterion benchmarks of a pool of 2 worker processes.
//!
//! Run with `cargo bench --bench pool` (a minute or two); add a filter to run some, such as
//! `cargo bench --bench pool -- w3`. Sample sizes and measurement times are kept small, so
//! compare the numbers as ratios within one run, not across machines or runs.
//!
//! * **W1 `w1_apply_async`**: throughput of single tasks. Submits 2,000 trivial tasks
//!   (`square` of a `u64`) with `apply_async`, then `get`s them all. Reported in tasks per
//!   second; every task is its own round trip over the pipes.
//! * **W2 `w2_map`**: `map(square, 0..200_000)` with Python's default chunk size (8 chunks of
//!   25,000), against `map_chunked(square, 0..2_000, 1)`, one task per item. Reported in items
//!   per second: the gap is what chunking saves.
//! * **W2 `w2_chunk_forms`**: the same 200,000 items in chunks of 1,000 through each chunked
//!   form: `map_chunked`, `map_each_chunked` (each item's own result) and `imap_chunked` /
//!   `imap_unordered_chunked` (lazy, a window of chunks ahead). What per-item results and
//!   laziness cost over the plain all-or-nothing `map`.
//! * **W3 `w3_round_trip`**: latency of one `apply(square, i)`, called back to back: encode,
//!   pipe, decode, run, and the same way back.
//! * **W4 `w4_payload`**: `apply(echo, v)` with an 8 MiB `Vec<u8>` that comes back unchanged.
//!   Reported in bytes per second of the argument, which crosses the pipes twice. A `Vec<u8>`
//!   skips serde and travels raw, so this measures copies and pipes.
//! * **W5 `w5_cpu_bound`**: 8 tasks of a fixed pure-compute loop (about 20 ms each) with
//!   `map_chunked(spin, 0..8, 1)`, against the same 8 calls run serially in this process. On 2
//!   free cores the pool should take about half as long.
//! * **W6 `w6_start_stop`**: the life of a pool: `Pool::new(2)`, one trivial task, `close`,
//!   `join`. The cost of forking and reaping 2 workers.
//!
//! Except in W6, the pool is built once per workload, outside the timed loop.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use forkpool::Pool;

/// Workers in every pool.
const WORKERS: usize = 2;
/// Rounds of [`spin`]: about 20 ms on the machine this was tuned on.
const SPIN_ROUNDS: u64 = 10_000_000;
/// Size of the W4 payload.
const PAYLOAD: usize = 8 << 20;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// A fixed amount of pure computation: xorshift rounds the optimizer cannot skip.
fn spin(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..black_box(SPIN_ROUNDS) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

fn pool() -> Pool {
    Pool::new(WORKERS).expect("start a pool")
}

fn w1_apply_async(c: &mut Criterion) {
    const TASKS: u64 = 2_000;
    let pool = pool();
    let mut group = c.benchmark_group("w1_apply_async");
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("submit_2000_then_get", |b| {
        b.iter(|| {
            let pending: Vec<_> = (0..TASKS)
                .map(|i| pool.apply_async(square, i).expect("submit"))
                .collect();
            for result in pending {
                black_box(result.get().expect("task"));
            }
        })
    });
    group.finish();
}

fn w2_map(c: &mut Criterion) {
    const BIG: u64 = 200_000;
    const SMALL: u64 = 2_000;
    let pool = pool();
    let mut group = c.benchmark_group("w2_map");
    group.throughput(Throughput::Elements(BIG));
    group.bench_function("map_default_chunks_200000", |b| {
        b.iter(|| black_box(pool.map(square, 0..BIG).expect("map")))
    });
    group.throughput(Throughput::Elements(SMALL));
    group.bench_function("map_chunked_1_2000", |b| {
        b.iter(|| black_box(pool.map_chunked(square, 0..SMALL, 1).expect("map")))
    });
    group.finish();
}

fn w2_chunk_forms(c: &mut Criterion) {
    const ITEMS: u64 = 200_000;
    const CHUNK: usize = 1_000;
    let pool = pool();
    let mut group = c.benchmark_group("w2_chunk_forms");
    group.throughput(Throughput::Elements(ITEMS));
    group.bench_function("map_chunked", |b| {
        b.iter(|| black_box(pool.map_chunked(square, 0..ITEMS, CHUNK).expect("map")))
    });
    group.bench_function("map_each_chunked", |b| {
        b.iter(|| {
            black_box(
                pool.map_each_chunked(square, 0..ITEMS, CHUNK)
                    .expect("map_each"),
            )
        })
    });
    group.bench_function("imap_chunked", |b| {
        b.iter(|| {
            let it = pool.imap_chunked(square, 0..ITEMS, CHUNK).expect("imap");
            black_box(it.map(|r| r.expect("item")).fold(0u64, u64::wrapping_add))
        })
    });
    group.bench_function("imap_unordered_chunked", |b| {
        b.iter(|| {
            let it = pool
                .imap_unordered_chunked(square, 0..ITEMS, CHUNK)
                .expect("imap");
            black_box(it.map(|r| r.expect("item")).fold(0u64, u64::wrapping_add))
        })
    });
    group.finish();
}

fn w3_round_trip(c: &mut Criterion) {
    let pool = pool();
    let mut group = c.benchmark_group("w3_round_trip");
    group.bench_function("apply", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(pool.apply(square, black_box(i)).expect("apply"))
        })
    });
    group.finish();
}

fn w4_payload(c: &mut Criterion) {
    let pool = pool();
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
    assert_eq!(pool.apply(echo, payload.clone()).expect("echo"), payload);
    let mut group = c.benchmark_group("w4_payload");
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    group.bench_function("echo_8MiB", |b| {
        b.iter_batched(
            || payload.clone(),
            |bytes| pool.apply(echo, bytes).expect("echo"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn w5_cpu_bound(c: &mut Criterion) {
    const TASKS: u64 = 8;
    let pool = pool();
    let mut group = c.benchmark_group("w5_cpu_bound");
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("pool_2_workers", |b| {
        b.iter(|| black_box(pool.map_chunked(spin, 0..TASKS, 1).expect("map")))
    });
    group.bench_function("serial_in_process", |b| {
        b.iter(|| black_box((0..TASKS).map(|i| spin(black_box(i))).collect::<Vec<_>>()))
    });
    group.finish();
}

fn w6_start_stop(c: &mut Criterion) {
    let mut group = c.benchmark_group("w6_start_stop");
    group.bench_function("new_apply_close_join", |b| {
        b.iter(|| {
            let pool = pool();
            black_box(pool.apply(square, 3).expect("apply"));
            pool.close();
            pool.join().expect("join");
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    targets = w1_apply_async, w2_map, w2_chunk_forms, w3_round_trip, w4_payload, w5_cpu_bound, w6_start_stop
}
criterion_main!(benches);
