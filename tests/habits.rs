//! The habits Python's `Pool` users bring (issue 10): `res.get(timeout)`, chunked imap,
//! initializer arguments, borrowed inputs, byte buffers inside types, map's memory bound,
//! shared read-only data, and progress counted from callbacks. Real workers throughout.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::within;
use forkpool::{Error, Pool};
use serde::{Deserialize, Deserializer, Serialize};

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

// ---- item 2: get with a limit ----

#[test]
fn get_timeout_gives_up_and_the_result_stays_obtainable() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let mut r = pool.apply_async(nap, 1_500).unwrap();
        match r.get_timeout(Duration::from_millis(20)) {
            Err(Error::WaitTimedOut { waited }) => assert_eq!(waited, Duration::from_millis(20)),
            other => panic!("expected WaitTimedOut, got {other:?}"),
        }
        assert!(!r.ready(), "the task went on");
        // Twice, to show that an expiry changes nothing.
        assert!(matches!(
            r.get_timeout(Duration::ZERO),
            Err(Error::WaitTimedOut { .. })
        ));
        assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 1_500);
        // Spent: the value was moved out.
        assert!(matches!(
            r.get_timeout(Duration::from_secs(1)),
            Err(Error::Terminated)
        ));
    })
}

#[test]
fn get_timeout_then_get_and_await() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let mut r = pool.apply_async(nap, 500).unwrap();
        assert!(r.get_timeout(Duration::from_millis(1)).is_err());
        assert_eq!(r.get().unwrap(), 500);
        let mut m = pool.map_async(nap, [300, 1]).unwrap();
        assert!(matches!(
            m.get_timeout(Duration::from_millis(1)),
            Err(Error::WaitTimedOut { .. })
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(m).unwrap(), [300, 1]);
    })
}

#[test]
fn get_timeout_returns_the_tasks_own_error() {
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(1)
            .print_panics(false)
            .build()
            .unwrap();
        let mut r = pool
            .apply_async(|_: u8| -> u8 { panic!("inner") }, 0)
            .unwrap();
        match r.get_timeout(Duration::from_secs(30)) {
            Err(Error::TaskPanicked { message, .. }) => assert_eq!(message, "inner"),
            other => panic!("{other:?}"),
        }
    })
}

// ---- item 10: progress from callbacks, and one decode per result ----

#[test]
fn callbacks_run_counts_one_two_three_inside_callbacks() {
    within(Duration::from_secs(120), || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let pending: Vec<_> = (0..60u64)
            .map(|i| {
                let (pool2, seen) = (Arc::clone(&pool), Arc::clone(&seen));
                pool.apply_async_with(square, i, move |_: &forkpool::Result<u64>| {
                    seen.lock().unwrap().push(pool2.stats().callbacks_run);
                })
                .unwrap()
            })
            .collect();
        for r in pending {
            r.get().unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (1..=60).collect::<Vec<u64>>(), "no repeat, no skip");
        assert_eq!(pool.stats().callbacks_run, 60);
    })
}

/// How many `Counted` values this process has decoded.
static DECODED: AtomicUsize = AtomicUsize::new(0);

/// A result type that counts its own decodes.
#[derive(Debug, Serialize, PartialEq)]
struct Counted(u64);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODED.fetch_add(1, Ordering::SeqCst);
        u64::deserialize(d).map(Counted)
    }
}

fn counted(x: u64) -> Counted {
    Counted(x + 1)
}

#[test]
fn a_result_with_a_callback_is_decoded_once() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let before = DECODED.load(Ordering::SeqCst);
        let saw: Arc<Mutex<Option<u64>>> = Arc::default();
        let saw2 = Arc::clone(&saw);
        let r = pool
            .apply_async_with(counted, 41, move |r: &forkpool::Result<Counted>| {
                *saw2.lock().unwrap() = r.as_ref().ok().map(|c| c.0);
            })
            .unwrap();
        assert_eq!(r.get().unwrap(), Counted(42));
        assert_eq!(*saw.lock().unwrap(), Some(42));
        assert_eq!(DECODED.load(Ordering::SeqCst) - before, 1, "decoded once");
    })
}

// ---- item 6: borrowed inputs ----

fn name_len(path: std::path::PathBuf) -> usize {
    path.as_os_str().len()
}

#[test]
fn map_family_takes_borrowed_items() {
    use std::path::PathBuf;
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        let paths: Vec<PathBuf> = (0..50).map(|i| PathBuf::from("x".repeat(i))).collect();
        let want: Vec<usize> = (0..50).collect();
        assert_eq!(pool.map(name_len, &paths).unwrap(), want);
        assert_eq!(pool.map(name_len, paths.iter()).unwrap(), want);
        assert_eq!(pool.map(name_len, &paths[..]).unwrap(), want);
        assert_eq!(pool.map_chunked(name_len, &paths, 7).unwrap(), want);
        // Owned items still work, and inference still works from the function.
        assert_eq!(pool.map(name_len, paths.clone()).unwrap(), want);
        assert_eq!(pool.map(|x: u64| x * 2, 0..10).unwrap()[9], 18);
        assert_eq!(pool.map(square, vec![3]).unwrap(), [9]);
        // 'static borrowers for the calls that outlive the call.
        let shared: Vec<Arc<PathBuf>> = paths.iter().cloned().map(Arc::new).collect();
        assert_eq!(
            pool.map_async(name_len, shared.clone())
                .unwrap()
                .get()
                .unwrap(),
            want
        );
        let ordered: Vec<usize> = pool
            .imap(name_len, shared.clone())
            .unwrap()
            .collect::<forkpool::Result<_>>()
            .unwrap();
        assert_eq!(ordered, want);
        let mut unordered: Vec<usize> = pool
            .imap_unordered_chunked(name_len, shared.clone(), 8)
            .unwrap()
            .collect::<forkpool::Result<_>>()
            .unwrap();
        unordered.sort();
        assert_eq!(unordered, want);
        let boxed: Vec<Box<PathBuf>> = paths.iter().cloned().map(Box::new).collect();
        assert_eq!(
            pool.imap_chunked(name_len, boxed, 3)
                .unwrap()
                .collect::<forkpool::Result<Vec<_>>>()
                .unwrap(),
            want
        );
        let strings: &'static [String] = Box::leak(vec!["ab".to_string()].into_boxed_slice());
        assert_eq!(
            pool.imap(|s: String| s.len(), strings.iter())
                .unwrap()
                .collect::<forkpool::Result<Vec<_>>>()
                .unwrap(),
            [2]
        );
    })
}

#[test]
fn chunks_of_bytes_keep_their_values() {
    // A chunk of u8 items travels raw, as a Vec<u8> does: borrowed or owned, any chunk size.
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let bytes: Vec<u8> = (0..=255).collect();
        let want: Vec<u16> = (1..=256).collect();
        let inc = |x: u8| u16::from(x) + 1;
        for chunk in [1, 2, 3, 100, 1000] {
            assert_eq!(pool.map_chunked(inc, &bytes, chunk).unwrap(), want);
            assert_eq!(pool.map_chunked(inc, bytes.clone(), chunk).unwrap(), want);
            let got: Vec<u16> = pool
                .imap_chunked(inc, bytes.clone(), chunk)
                .unwrap()
                .collect::<forkpool::Result<_>>()
                .unwrap();
            assert_eq!(got, want);
        }
    })
}

// ---- item 3: chunked imap ----

#[test]
fn imap_chunked_yields_every_item_in_order_from_endless_input() {
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        let got: Vec<u64> = pool
            .imap_chunked(square, 0.., 1000)
            .unwrap()
            .take(20_500)
            .collect::<forkpool::Result<_>>()
            .unwrap();
        assert_eq!(got, (0..20_500u64).map(square).collect::<Vec<_>>());
        // A short last chunk, and chunks bigger than the input.
        for (n, chunk) in [(10, 3), (5, 100), (0, 4), (1, 1)] {
            let got: Vec<u64> = pool
                .imap_chunked(square, 0..n, chunk)
                .unwrap()
                .collect::<forkpool::Result<_>>()
                .unwrap();
            assert_eq!(
                got,
                (0..n).map(square).collect::<Vec<_>>(),
                "n={n} chunk={chunk}"
            );
        }
        assert!(matches!(
            pool.imap_chunked(square, 0..3, 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            pool.imap_unordered_chunked(square, 0..3, 0),
            Err(Error::InvalidArgument { .. })
        ));
    })
}

/// How many input items the test's iterator has handed out.
static PULLED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn imap_chunked_pulls_input_a_window_of_chunks_ahead() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        let input = (0..u64::MAX).inspect(|_| {
            PULLED.fetch_add(1, Ordering::SeqCst);
        });
        let mut it = pool.imap_chunked(square, input, 10).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), 0);
        let pulled = PULLED.load(Ordering::SeqCst);
        // The window is a few chunks per worker (4 x 2 workers x 10 items), plus one chunk.
        assert!(
            pulled <= 10 * (4 * 2 + 1),
            "pulled {pulled} items for one result"
        );
        assert!(pulled >= 10, "a whole chunk is pulled at once");
    })
}

fn fail_on_13(x: u64) -> u64 {
    if x == 13 {
        panic!("thirteen");
    }
    x
}

fn die_on_13(x: u64) -> u64 {
    if x == 13 {
        std::process::abort();
    }
    x
}

#[test]
fn a_failed_item_of_a_chunk_fails_alone() {
    within(Duration::from_secs(120), || {
        let pool = Pool::builder()
            .processes(2)
            .print_panics(false)
            .build()
            .unwrap();
        // A panic at 13, then an abort at 13, in the chunk of items 10 to 14: only item 13
        // fails, its neighbours in the chunk keep their results.
        for f in [fail_on_13 as fn(u64) -> u64, die_on_13] {
            let got: Vec<forkpool::Result<u64>> = pool.imap_chunked(f, 0..40, 5).unwrap().collect();
            assert_eq!(got.len(), 40);
            for (i, r) in got.iter().enumerate() {
                if i == 13 {
                    let e = r.as_ref().unwrap_err();
                    assert_eq!(e.index(), Some(13), "{e:?}");
                    assert!(
                        matches!(
                            e.cause(),
                            Error::TaskPanicked { .. } | Error::WorkerDied { .. }
                        ),
                        "item {i}: {r:?}"
                    );
                } else {
                    assert_eq!(*r.as_ref().unwrap(), i as u64);
                }
            }
            let got: Vec<forkpool::Result<u64>> =
                pool.imap_unordered_chunked(f, 0..40, 5).unwrap().collect();
            assert_eq!(got.len(), 40);
            let failed: Vec<usize> = got
                .iter()
                .filter_map(|r| r.as_ref().err()?.index())
                .collect();
            assert_eq!(failed, [13]);
            let mut ok: Vec<u64> = got.into_iter().filter_map(Result::ok).collect();
            ok.sort();
            assert_eq!(ok, (0..40).filter(|&i| i != 13).collect::<Vec<_>>());
        }
    })
}

// ---- item 7b: map does not encode its whole input at once ----

const MEM_CHILD: &str = "FORKPOOL_HABITS_MEM_CHILD";
const ITEM_BYTES: usize = 4 << 20;
const ITEMS: usize = 32;

fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn str_len(s: String) -> usize {
    s.len()
}

/// Run by `map_keeps_the_parents_extra_memory_to_a_few_chunks` in a child process of its own:
/// maps 32 arguments of 4 MiB each (chunks of 1 for `map`, Python's default of 4 for
/// `map_async`, on 2 workers) and prints how far the peak resident set rose above the
/// resident set with the input built.
#[test]
#[ignore = "runs in a child process of map_keeps_the_parents_extra_memory_to_a_few_chunks"]
fn map_memory_child() {
    if std::env::var_os(MEM_CHILD).is_none() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    let input: Vec<String> = (0..ITEMS)
        .map(|i| {
            char::from(b'a' + i as u8 % 26)
                .to_string()
                .repeat(ITEM_BYTES)
        })
        .collect();
    let mode = std::env::var(MEM_CHILD).unwrap();
    // Reset the peak to the current resident set (Linux: "5" to clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let lens = match mode.as_str() {
        "map" => pool.map_chunked(str_len, &input, 1).unwrap(),
        // Moved in: map_async's chunks are Python's default, 4 items each here.
        _ => pool.map_async(str_len, input).unwrap().get().unwrap(),
    };
    assert_eq!(lens, vec![ITEM_BYTES; ITEMS]);
    let peak = status_kib("VmHWM:");
    println!("EXTRA_KIB {}", peak.saturating_sub(before));
}

#[test]
fn map_keeps_the_parents_extra_memory_to_a_few_chunks() {
    if !std::path::Path::new("/proc/self/clear_refs").exists() {
        eprintln!("skipped: no /proc/self/clear_refs");
        return;
    }
    for mode in ["map", "map_async"] {
        let out = std::process::Command::new("timeout")
            .arg("120")
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "map_memory_child", "--ignored", "--nocapture"])
            .env(MEM_CHILD, mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode} child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let extra: usize = stdout
            .lines()
            .find_map(|l| l.strip_prefix("EXTRA_KIB "))
            .unwrap_or_else(|| panic!("no EXTRA_KIB line in {stdout}"))
            .trim()
            .parse()
            .unwrap();
        let input_kib = ITEMS * (ITEM_BYTES >> 10);
        let (chunk_kib, chunks) = match mode {
            "map" => (ITEM_BYTES >> 10, 10),
            _ => ((4 * ITEM_BYTES) >> 10, 6),
        };
        eprintln!("{mode}: {extra} KiB above the input ({input_kib} KiB)");
        // Two chunks per worker are 4 chunks in flight; allow some slack for the allocator.
        // Encoding everything first, as map did, takes the whole input again.
        let allowed = chunks * chunk_kib;
        assert!(allowed < input_kib);
        assert!(
            extra <= allowed,
            "{mode}: the parent's memory rose {extra} KiB, more than {allowed} KiB (input {input_kib} KiB)"
        );
    }
}

// ---- item 5: initializer arguments ----

/// Set in each worker by its initializer.
static INIT_ARG: Mutex<Option<(String, Vec<u32>)>> = Mutex::new(None);

fn init_with_arg(arg: (String, Vec<u32>)) {
    *INIT_ARG.lock().unwrap() = Some(arg);
}

fn read_init_arg(_: ()) -> (u32, Option<(String, Vec<u32>)>) {
    (std::process::id(), INIT_ARG.lock().unwrap().clone())
}

#[test]
fn the_initializer_argument_reaches_every_worker_and_replacement() {
    within(Duration::from_secs(120), || {
        let arg = ("settings".to_string(), vec![1, 2, 3]);
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(1) // every task on a fresh worker
            .initializer_with(init_with_arg, arg.clone())
            .build()
            .unwrap();
        let seen: Vec<_> = (0..8)
            .map(|_| pool.apply_async(read_init_arg, ()).unwrap())
            .collect::<Vec<_>>()
            .into_iter()
            .map(|r| r.get().unwrap())
            .collect();
        let mut pids: Vec<u32> = seen.iter().map(|(pid, _)| *pid).collect();
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), 8, "each task ran in its own worker");
        for (pid, got) in seen {
            assert_eq!(got.as_ref(), Some(&arg), "worker {pid}");
        }
        assert!(pool.stats().workers_replaced >= 6);
        // The parent never ran it.
        assert!(INIT_ARG.lock().unwrap().is_none());
    })
}

/// Encodes, but refuses to decode: the worker's decode fails.
#[derive(Debug, Serialize)]
struct NoDecode(u8);

impl<'de> Deserialize<'de> for NoDecode {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("NoDecode refuses"))
    }
}

/// Refuses to encode.
#[derive(Debug, Deserialize)]
struct NoEncode;

impl Serialize for NoEncode {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("NoEncode refuses"))
    }
}

#[test]
fn a_bad_initializer_argument_is_a_clear_error() {
    within(Duration::from_secs(60), || {
        match Pool::builder()
            .processes(1)
            .initializer_with(|_: NoEncode| {}, NoEncode)
            .build()
        {
            Err(Error::Encode { what, message }) => {
                assert_eq!(what, "initializer argument");
                assert!(message.contains("NoEncode refuses"), "{message}");
            }
            other => panic!("expected Encode, got {other:?}"),
        }
        let pool = Pool::builder()
            .processes(1)
            .print_panics(false)
            .initializer_with(|_: NoDecode| {}, NoDecode(1))
            .build()
            .unwrap();
        match pool.apply(square, 2) {
            Err(Error::InitializerPanicked { message }) => {
                assert!(message.contains("NoDecode refuses"), "{message}")
            }
            other => panic!("expected InitializerPanicked, got {other:?}"),
        }
        // A later plain initializer replaces the argument one.
        let pool = Pool::builder()
            .processes(1)
            .initializer_with(|_: NoDecode| {}, NoDecode(1))
            .initializer(|| {})
            .build()
            .unwrap();
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
    })
}

// ---- item 8: shared read-only data ----

fn checksum(data: &[u8]) -> u64 {
    data.iter()
        .enumerate()
        .step_by(997)
        .map(|(i, &b)| (i as u64) ^ u64::from(b))
        .sum()
}

fn shared_checksum(s: forkpool::SharedBytes) -> (u32, usize, u64) {
    (std::process::id(), s.len(), checksum(&s))
}

fn shared_round_trip(s: forkpool::SharedBytes) -> forkpool::SharedBytes {
    s
}

#[test]
fn shared_bytes_made_after_the_pool_reach_every_task_as_a_reference() {
    within(Duration::from_secs(120), || {
        // A reply over 4 KiB would be refused, so a 32 MiB handle coming back proves that only
        // a reference travels.
        let pool = Pool::builder()
            .processes(2)
            .max_frame_bytes(4096)
            .build()
            .unwrap();
        let data: Vec<u8> = (0..32 << 20).map(|i: u32| (i % 251) as u8).collect();
        let shared = forkpool::SharedBytes::new(&data).unwrap();
        assert_eq!(&shared[..], &data[..]);
        let want = checksum(&data);
        let got = pool
            .map_chunked(shared_checksum, vec![shared.clone(); 16], 1)
            .unwrap();
        for (_, len, sum) in &got {
            assert_eq!((*len, *sum), (data.len(), want));
        }
        let back = pool.apply(shared_round_trip, shared.clone()).unwrap();
        assert_eq!(&back[..], &data[..], "a handle decodes in its creator too");
        let empty = forkpool::SharedBytes::new(&[]).unwrap();
        assert_eq!(pool.apply(shared_checksum, empty.clone()).unwrap().1, 0);
        drop(empty);
    })
}

#[test]
fn a_shared_handle_whose_creator_dropped_it_fails_to_decode_clearly() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let shared = forkpool::SharedBytes::new(b"short-lived").unwrap();
        // Encode the handle now, decode it in a worker after every handle here is gone.
        let r = pool.apply_async(nap, 300).unwrap();
        let late = pool.apply_async(shared_checksum, shared).unwrap();
        // `shared` was moved into the call and encoded; nothing else holds the memfd now.
        r.get().unwrap();
        match late.get() {
            Err(Error::Decode { what, message }) => {
                assert_eq!(what, "argument");
                assert!(message.contains("gone"), "{message}");
            }
            // The worker may have decoded it before the drop landed: also fine, and correct.
            Ok((_, len, _)) => assert_eq!(len, 11),
            other => panic!("{other:?}"),
        }
    })
}

#[test]
fn shared_bytes_are_sealed_against_writes() {
    use std::io::Write;
    let shared = forkpool::SharedBytes::new(b"sealed").unwrap();
    // Find our memfd and try to write through it.
    let mut refused = false;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy().contains("forkpool-shared") {
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(entry.path()) {
                refused |= f.write_all(b"X").is_err();
            } else {
                refused = true;
            }
        }
    }
    assert!(
        refused,
        "no sealed forkpool-shared memfd found, or it took a write"
    );
    assert_eq!(&shared[..], b"sealed");
}

#[test]
fn new_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<forkpool::SharedBytes>();
    send_sync::<forkpool::AsyncResult<u64>>();
    fn send<T: Send>() {}
    send::<forkpool::Imap<String>>(); // as before: Send, not Sync
}

fn nap_len(arg: (u64, String)) -> usize {
    std::thread::sleep(Duration::from_millis(arg.0));
    arg.1.len()
}

#[test]
fn map_async_feeds_its_last_chunks_after_close_and_join_waits_for_them() {
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        // 16 MiB in 8 chunks of 4 items: the first 4 chunks (8 MiB) go out at once, a feeder
        // thread sends the rest as they finish.
        let items: Vec<(u64, String)> = (0..32).map(|_| (100, "x".repeat(512 << 10))).collect();
        let r = pool.map_async(nap_len, items).unwrap();
        assert!(pool.stats().submitted < 8, "everything was sent at once");
        pool.close();
        pool.join().unwrap();
        assert!(r.ready(), "join returned before the fed chunks finished");
        assert_eq!(r.get().unwrap(), vec![512 << 10; 32]);
        assert_eq!(pool.stats().submitted, 8);
    })
}

#[test]
fn a_small_map_goes_out_whole() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        // 8 chunks of a few bytes: all submitted before map_async returns.
        let r = pool.map_async(nap, vec![200u64; 32]).unwrap();
        assert_eq!(pool.stats().submitted, 8);
        assert_eq!(r.get().unwrap(), vec![200u64; 32]);
    })
}
