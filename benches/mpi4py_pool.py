"""The workloads of examples/mpi_bench.rs, run with mpi4py's pool, for the README's comparison.

    pip install mpi4py      # builds against the installed Open MPI
    mpirun -n 3 --oversubscribe python3 -m mpi4py.futures benches/mpi4py_pool.py

W1: apply_async of square, 20,000 times, then get all (tasks per second, median of 3).
W3: apply round trip of square, median of 2,000 (microseconds).
W5: 4 CPU-bound tasks of about 0.5 s each, pool against serial (speedup). Python runs fewer
    spin rounds per second than Rust, so the rounds are calibrated here: compare speedups.
idle: CPU time of every process running this script (all ranks) over 2 s with the pool open
    and idle, in percent of one CPU.
"""

import os
import statistics
import sys
import time

from mpi4py.util.pool import Pool


def square(x):
    return x * x


def spin(args):
    seed, rounds = args
    x = seed | 1
    mask = (1 << 64) - 1
    for _ in range(rounds):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
    return x


def calibrate(secs):
    rounds = 200_000
    start = time.perf_counter()
    spin((1, rounds))
    return int(rounds * secs / (time.perf_counter() - start))


def cpu_ticks():
    script = os.path.abspath(__file__).encode()
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if b"mpi4py_pool.py" not in cmdline and script not in cmdline:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total


def main():
    rounds = calibrate(0.5)
    with Pool() as pool:
        pool.map(square, range(1000))
        w1 = []
        for _ in range(3):
            start = time.perf_counter()
            pending = [pool.apply_async(square, (i,)) for i in range(20_000)]
            for i, r in enumerate(pending):
                assert r.get() == i * i
            w1.append(20_000 / (time.perf_counter() - start))
        print(f"W1 apply_async 20k: {statistics.median(w1):.0f} tasks/s (median of 3)")

        w3 = []
        for i in range(2100):
            start = time.perf_counter()
            assert pool.apply(square, (i,)) == i * i
            if i >= 100:
                w3.append((time.perf_counter() - start) * 1e6)
        print(f"W3 apply round trip: {statistics.median(w3):.1f} us median of 2000")

        tasks = [(i, rounds) for i in range(4)]
        start = time.perf_counter()
        serial = [spin(t) for t in tasks]
        serial_secs = time.perf_counter() - start
        start = time.perf_counter()
        parallel = pool.map(spin, tasks, chunksize=1)
        parallel_secs = time.perf_counter() - start
        assert serial == parallel
        print(
            f"W5 4 CPU-bound tasks: {serial_secs / parallel_secs:.2f}x serial "
            f"({serial_secs:.2f} s serial, {parallel_secs:.2f} s pool)"
        )

        time.sleep(0.5)
        before = cpu_ticks()
        start = time.perf_counter()
        time.sleep(2)
        ticks = cpu_ticks() - before
        secs = time.perf_counter() - start
        print(f"idle open pool: {ticks / 100 / secs * 100:.1f}% of one CPU (all ranks)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
