#!/usr/bin/env python3
"""Lays a run's slowest deliveries beside a scheduler trace of the same run.

The load generator (benches/relay, `--slowest N --json`) reports each of its
slowest deliveries with its due time on CLOCK_MONOTONIC and its latency;
`perf sched record -k CLOCK_MONOTONIC` stamps scheduler events on the same
clock. For each slow delivery, over [due, due + latency], this prints how
long the server's threads and the generator were running, how long they
waited on a run queue (runnable, another task on their CPU), what held it
for at least half its latency ("mostly"), and which other tasks held the
CPUs meanwhile; the last line names the worst delivery's cause. What
neither side ran or waited for ("unseen") is time both were asleep: the
kernel path, or the host (a vCPU that is not scheduled shows no events).

Usage:
  scripts/tail-explain.py RESULT.json SCHED.data SERVER_PID

RESULT.json holds the generator's JSON line (or a bench-compare results line,
whose "result" is one), which names the generator's process id; SCHED.data is
the `perf sched record` file.
"""

import json
import re
import subprocess
import sys
from collections import defaultdict

LINE = re.compile(
    r"^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/(\d+))?\]\s+"
    r"(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\S+)"
)


def intervals(sched_file):
    """(cpu, comm, tid, pid, kind, start, end): each task's running and
    run-queue-waiting spans, from `perf sched timehist --state` (one line per
    switch-out: the task ran `run` ms before it; before that it was off the
    CPU for `wait` ms, all of it runnable if its previous switch-out was a
    preemption (state R), else the last `delay` ms of it, from its wake-up)."""
    out = subprocess.run(
        ["perf", "sched", "timehist", "--state", "-i", sched_file],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spans = []
    preempted = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        t, cpu, comm, tid, pid = float(m[1]), int(m[2]), m[3].strip(), int(m[4]), m[5]
        pid = int(pid) if pid else tid
        wait, delay, run = float(m[6]) / 1e3, float(m[7]) / 1e3, float(m[8]) / 1e3
        spans.append((cpu, comm, tid, pid, "run", t - run, t))
        queued = wait if preempted.get(tid) else delay
        if queued > 0:
            spans.append((cpu, comm, tid, pid, "wait", t - run - queued, t - run))
        preempted[tid] = m[9].startswith("R")
    return spans


def overlap(a0, a1, b0, b1):
    return max(0.0, min(a1, b1) - max(a0, b0))


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    result = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
    result = result.get("result", result)
    server_pid = int(sys.argv[3])
    generator_pid = result.get("generator_pid")
    if generator_pid is None:
        sys.exit("the result names no generator_pid (a generator older than this script)")
    slowest = result.get("slowest") or []
    if not slowest:
        sys.exit("the result has no slowest deliveries (run the generator with --slowest N)")
    spans = intervals(sys.argv[2])

    def side(pid):
        if pid == server_pid:
            return "server"
        if pid == generator_pid:
            return "generator"
        return None

    print(
        "due (mono s)       latency  =  late + flight   | server run/wait  | generator run/wait | mostly          | others on the CPUs meanwhile"
    )
    worst = None
    for s in slowest:
        t0 = s["due_mono_s"]
        t1 = t0 + s["lat_us"] / 1e6
        took = defaultdict(float)
        others = defaultdict(float)
        for cpu, comm, _tid, pid, kind, a, b in spans:
            ms = overlap(a, b, t0, t1) * 1e3
            if ms <= 0:
                continue
            who = side(pid)
            if who:
                took[(who, kind)] += ms
            elif kind == "run" and not comm.startswith("<idle>"):
                others[f"{comm}@{cpu}"] += ms
        top = sorted(others.items(), key=lambda kv: -kv[1])[:3]
        cause = mostly(took, s["lat_us"] / 1e3)
        print(
            "%.6f %8.0f µs = %6.0f + %6.0f | %5.2f / %5.2f ms | %5.2f / %5.2f ms    | %-15s | %s"
            % (
                t0,
                s["lat_us"],
                s["late_us"],
                s["flight_us"],
                took[("server", "run")],
                took[("server", "wait")],
                took[("generator", "run")],
                took[("generator", "wait")],
                cause,
                ", ".join(f"{k} {v:.2f} ms" for k, v in top) or "-",
            )
        )
        if worst is None or s["lat_us"] > worst[0]:
            worst = (s["lat_us"], cause)
    print("worst: %.0f µs, mostly %s" % worst)


def mostly(took, latency_ms):
    """What held a slow delivery for at least half of its latency: one side
    running or queued, or, when neither did, time the guest cannot see."""
    parts = {
        "server ran": took[("server", "run")],
        "server queued": took[("server", "wait")],
        "generator ran": took[("generator", "run")],
        "generator queued": took[("generator", "wait")],
    }
    name, ms = max(parts.items(), key=lambda kv: kv[1])
    return name if ms >= latency_ms / 2 else "unseen"


if __name__ == "__main__":
    main()
