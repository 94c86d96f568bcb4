#!/usr/bin/env python3
"""Lost scheduler ticks of a pool's threads and processes, from `perf script` output.

Record pools built beside busy loops (docs/DESIGN.md, *A pool's start and end on a busy
machine*), for example the harness's lives of Pool::new(2) beside 2 busy loops:

    cargo bench --bench compare --no-run
    perf record -e sched:sched_switch,sched:sched_wakeup,sched:sched_wakeup_new \
        -a -o sched.data -- cargo bench --bench compare -- --w6-phases 40 2 2
    perf script -i sched.data -F comm,pid,tid,cpu,time,event,trace > sched.txt
    python3 tools/lost_ticks.py sched.txt [NAME_REGEX]

Every wait of more than a millisecond between one of our threads becoming runnable and its
running is listed with what started it: "woken by X" (a wake-up it could not act on at once:
it was not eligible, or another thread had the earlier deadline) or "preempted by X" (switched
out while still runnable), then a count per kind. NAME_REGEX picks "our" threads by name:
by default forkpool's helpers and workers ('forkpool'); add the program's own name to see its
thread too ('forkpool|myprobe'), unless its busy loops share that name, as the harness's do.
"""
import collections
import re
import sys

LINE = re.compile(r"\s*(\S+)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)")
SWITCH = re.compile(
    r"prev_comm=(.*?) prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
WAKEUP = re.compile(r"comm=(\S+) pid=(\d+) .*target_cpu=(\d+)")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ours = re.compile(sys.argv[2] if len(sys.argv) > 2 else "forkpool")
    ready = {}  # tid -> (since, how, name)
    waits = []
    for line in open(sys.argv[1]):
        m = LINE.match(line)
        if not m:
            continue
        comm, _pid, _tid, _cpu, t, event, rest = m.groups()
        t = float(t)
        if event in ("sched:sched_wakeup", "sched:sched_wakeup_new"):
            w = WAKEUP.search(rest)
            if w and ours.search(w.group(1)):
                how = "new" if event.endswith("new") else "woken by " + comm
                ready[w.group(2)] = (t, how, w.group(1))
        elif event == "sched:sched_switch":
            s = SWITCH.search(rest)
            if not s:
                continue
            prev_comm, prev_tid, prev_state, next_comm, next_tid = s.groups()
            if prev_state.startswith("R") and ours.search(prev_comm):
                ready[prev_tid] = (t, "preempted by " + next_comm, prev_comm)
            if next_tid in ready:
                since, how, name = ready.pop(next_tid)
                if t - since > 0.001:
                    waits.append((since, name, how, (t - since) * 1e3))
    for since, name, how, ms in waits:
        print(f"{since:.6f} {name:<18} {how:<32} {ms:.2f} ms")
    kinds = collections.Counter((name, re.sub(r"\d", "", how)) for _, name, how, _ in waits)
    print(f"\n{len(waits)} waits over 1 ms:")
    for (name, how), n in kinds.most_common():
        print(f"{n:5} {name:<18} {how}")


if __name__ == "__main__":
    main()
