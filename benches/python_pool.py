#!/usr/bin/env python3
"""The forkpool comparison workloads (W1-W8, W10) on Python's multiprocessing.Pool.

Standard library only (Python 3.8+; written for 3.11). Pools have 2 workers unless a workload
names its size, and use the "fork" start method. The functions are the Rust benchmark's:
square(x) = x*x, echo(b) = b, and spin, a fixed number of xorshift64 rounds.

    python3 benches/python_pool.py            # W1-W7, printed readably
    python3 benches/python_pool.py --json     # W1-W7, one JSON object
    python3 benches/python_pool.py --json --serve

    python3 benches/python_pool.py --json --w6-only [--w6-workers N]
    python3 benches/python_pool.py --json --large-parent MIB [--mtpc-tasks N]

`cargo bench --bench compare` runs it once per repetition with --serve: the script builds its
pool, prints one JSON line ({"ready": true, ...}), then reads workload names from stdin ("w1",
"w2", "w3", "w4", "w5", "w6", "w7 N", "w1_pool N", "quit") and answers each with one JSON line.
That way each Python workload runs right beside the same forkpool workload, and their ratio is
taken under the same load on a noisy machine (the harness starts its busy loops for W8a and W8b
around the same commands: "w1_pool N" is W1 on a new Pool(N), "w3" is W3). "w6" here is W6 in
this process, after the other workloads; the harness's W6 and W8d run it with --w6-only, in a
fresh process, as the Rust side does, so that neither side's pool is forked from a process
grown by the other workloads. --large-parent is W10: W6 and the rate through
Pool(2, maxtasksperchild=1) in a fresh process that holds MIB MiB resident. The sizes are given
on the command line; the defaults are the issue's.

Python runs far fewer spin rounds per second than Rust, so W5 calibrates its own round count for
the requested task duration: compare each implementation's own speedup (parallel over serial),
not absolute times.
"""

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import time

WORKERS = 2
MASK = (1 << 64) - 1


def square(x):
    return x * x


def echo(b):
    return b


def spin(args):
    """xorshift64 rounds, as the Rust benchmark's spin()."""
    seed, rounds = args
    x = seed | 1
    for _ in range(rounds):
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
    return x


def percentile(sorted_values, p):
    """Nearest-rank percentile of a sorted list, as the Rust side computes it."""
    if not sorted_values:
        return float("nan")
    rank = -(-len(sorted_values) * p // 100)  # ceil(n * p / 100)
    rank = min(max(1, int(rank)), len(sorted_values))
    return sorted_values[rank - 1]


def calibrate_spin(seconds):
    """Rounds of spin() that take about `seconds` in this process: the fastest of 3 probes."""
    probe = 200_000
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        spin((1, probe))
        best = min(best, time.perf_counter() - t0)
    return max(1, int(probe * seconds / best))


def apply_async_secs(pool, n):
    """W1 and W7: submit n trivial tasks, then get them all. Seconds."""
    start = time.perf_counter()
    pending = [pool.apply_async(square, (i,)) for i in range(n)]
    total = 0
    for r in pending:
        total += r.get()
    elapsed = time.perf_counter() - start
    assert total == sum(i * i for i in range(n))
    return elapsed


def w6(ctx, iters, workers=WORKERS):
    """The life of a pool, timed from Pool() to the pool gone after join(): the median of
    `iters`."""
    lives = []
    for _ in range(iters):
        t0 = time.perf_counter()
        p = ctx.Pool(workers)
        assert p.apply(square, (3,)) == 9
        p.close()
        p.join()
        del p
        lives.append((time.perf_counter() - t0) * 1000.0)
    return {"w6_ms": statistics.median(lives)}


def rss_kib():
    """VmRSS of this process, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return float("nan")


def large_parent(ctx, mib, iters, tasks, seconds, batch=10):
    """W10: W6 and the rate through Pool(2, maxtasksperchild=1) while this process holds `mib`
    MiB resident (filled with ones, so every page is faulted in). The rate is taken over
    batches of `batch` tasks until `tasks` are done or `seconds` have passed (at least two
    batches), as the Rust side does."""
    ballast = bytearray(b"\x01") * (mib << 20)
    out = {"rss_kib": rss_kib()}
    out.update(w6(ctx, iters))
    with ctx.Pool(WORKERS, maxtasksperchild=1) as pool:
        t0 = time.perf_counter()
        done = 0
        while done < max(tasks, 2 * batch) and (
            done < 2 * batch or time.perf_counter() - t0 < seconds
        ):
            pending = [pool.apply_async(square, (i,)) for i in range(done, done + batch)]
            assert [r.get() for r in pending] == [i * i for i in range(done, done + batch)]
            done += batch
        out["mtpc_tasks_per_s"] = done / (time.perf_counter() - t0)
    assert ballast[len(ballast) // 2] == 1
    return out


class Bench:
    def __init__(self, args, ctx, pool, rounds):
        self.args = args
        self.ctx = ctx
        self.pool = pool
        self.rounds = rounds
        size = args.w4_mib << 20
        self.payload = bytes(range(256)) * (size // 256)

    def w1(self):
        n = self.args.w1
        return {"w1_tasks_per_s": n / apply_async_secs(self.pool, n)}

    def w1_pool(self, workers):
        """W1 on a pool of `workers` built for it (untimed, with one task to start it)."""
        n = self.args.w1
        with self.ctx.Pool(workers) as pool:
            assert pool.apply(square, (5,)) == 25
            return {"w1_tasks_per_s": n / apply_async_secs(pool, n)}

    def w2(self):
        pool, a = self.pool, self.args
        t0 = time.perf_counter()
        res = pool.map(square, range(a.w2))
        default = a.w2 / (time.perf_counter() - t0)
        assert len(res) == a.w2 and res[-1] == (a.w2 - 1) ** 2
        del res
        t0 = time.perf_counter()
        res = pool.map(square, range(a.w2c1), 1)
        cs1 = a.w2c1 / (time.perf_counter() - t0)
        assert len(res) == a.w2c1
        return {"w2_default_items_per_s": default, "w2_cs1_items_per_s": cs1}

    def w3(self):
        pool = self.pool
        for i in range(100):
            pool.apply(square, (i,))
        lat = []
        for i in range(self.args.w3):
            t0 = time.perf_counter_ns()
            r = pool.apply(square, (i,))
            lat.append((time.perf_counter_ns() - t0) / 1000.0)
            assert r == i * i
        lat.sort()
        return {"w3_median_us": statistics.median(lat), "w3_p99_us": percentile(lat, 99)}

    def w4(self):
        payload = self.payload
        times = []
        for _ in range(self.args.w4_iters):
            t0 = time.perf_counter()
            back = self.pool.apply(echo, (payload,))
            times.append(time.perf_counter() - t0)
            assert len(back) == len(payload)
            del back
        return {"w4_mb_per_s": len(payload) / 1e6 / statistics.median(times)}

    def w5(self):
        tasks = [(i, self.rounds) for i in range(self.args.w5_tasks)]
        t0 = time.perf_counter()
        serial = [spin(t) for t in tasks]
        serial_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        parallel = self.pool.map(spin, tasks, 1)
        parallel_s = time.perf_counter() - t0
        assert serial == parallel
        return {
            "w5_rounds": self.rounds,
            "w5_serial_s": serial_s,
            "w5_parallel_s": parallel_s,
            "w5_speedup": serial_s / parallel_s,
        }

    def w6(self):
        return w6(self.ctx, self.args.w6_iters)

    def w7(self, n):
        secs = apply_async_secs(self.pool, n)
        return {f"w7_{n}_us_per_task": secs / n * 1e6}

    def run(self, command):
        name, *rest = command.split()
        if name == "w7":
            return self.w7(int(rest[0]))
        if name == "w1_pool":
            return self.w1_pool(int(rest[0]))
        return getattr(self, name)()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--serve", action="store_true", help="run the workloads named on stdin")
    ap.add_argument("--w1", type=int, default=20_000, help="W1 tasks")
    ap.add_argument("--w2", type=int, default=200_000, help="W2 map items, default chunksize")
    ap.add_argument("--w2c1", type=int, default=20_000, help="W2 map items, chunksize 1")
    ap.add_argument("--w3", type=int, default=5_000, help="W3 sequential applies")
    ap.add_argument("--w4-mib", type=int, default=64, help="W4 payload in MiB")
    ap.add_argument("--w4-iters", type=int, default=3, help="W4 timed echoes (median)")
    ap.add_argument("--w5-tasks", type=int, default=8, help="W5 tasks")
    ap.add_argument("--w5-seconds", type=float, default=0.2, help="W5 seconds per task")
    ap.add_argument("--w6-iters", type=int, default=5, help="W6 pool lifetimes (median)")
    ap.add_argument(
        "--w6-only",
        action="store_true",
        help="run W6 alone, in this fresh process, and nothing else",
    )
    ap.add_argument("--w6-workers", type=int, default=WORKERS, help="W6 pool size (--w6-only)")
    ap.add_argument(
        "--large-parent",
        type=int,
        metavar="MIB",
        help="W10 alone: W6 and maxtasksperchild=1 while holding MIB MiB, and nothing else",
    )
    ap.add_argument(
        "--mtpc-tasks", type=int, default=5000, help="W10 maxtasksperchild=1 tasks, at most"
    )
    ap.add_argument("--mtpc-seconds", type=float, default=2.0, help="W10 ... or this long")
    ap.add_argument("--w7", default="1000,10000,100000,1000000", help="W7 task counts")
    args = ap.parse_args()

    ctx = multiprocessing.get_context("fork")
    info = {
        "python_version": platform.python_version(),
        "start_method": "fork",
        "workers": WORKERS,
    }
    if args.large_parent is not None:
        out = {
            **info,
            **large_parent(
                ctx, args.large_parent, args.w6_iters, args.mtpc_tasks, args.mtpc_seconds
            ),
        }
        print(json.dumps(out) if args.json else out)
        return 0
    if args.w6_only:
        out = {**info, **w6(ctx, args.w6_iters, args.w6_workers)}
        print(json.dumps(out) if args.json else out)
        return 0

    # W5's calibration runs before any pool exists, so nothing competes with it.
    rounds = calibrate_spin(args.w5_seconds)

    with ctx.Pool(WORKERS) as pool:
        bench = Bench(args, ctx, pool, rounds)
        back = pool.apply(echo, (bench.payload,))  # warm, and check W4's bytes once
        assert back == bench.payload
        del back

        if args.serve:
            print(json.dumps({"ready": True, **info}), flush=True)
            for line in sys.stdin:
                command = line.strip()
                if not command:
                    continue
                if command == "quit":
                    break
                print(json.dumps(bench.run(command)), flush=True)
            return 0

        out = dict(info)
        for command in ["w1", "w2", "w3", "w4", "w5", "w6"]:
            out.update(bench.run(command))
        for n in [c for c in args.w7.split(",") if c]:
            out.update(bench.run(f"w7 {n}"))

    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
