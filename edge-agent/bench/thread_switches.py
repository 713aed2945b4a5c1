#!/usr/bin/env python3
"""Context switches of a pp-sim run's threads, by thread name.

    python3 edge-agent/bench/thread_switches.py [PROCESS_NAME_PREFIX] &
    build/bin/pp-sim ...            # the run to look at
    touch /tmp/thread_switches.stop # after it: prints the table, exits

Every half second it reads /proc/*/task/*/status of the processes whose name
starts with the prefix (default "pp-sim": the director and its shard
processes) and keeps the reading with the most voluntary switches in all: the
processes' threads go when they end, and that reading is the last before
they did. Prints, by thread name, how many threads and their voluntary and
involuntary context switches since each started. Divide by the run's posts
for switches a post (docs/benchmarks.md, "Session 34").
"""
import collections
import os
import sys
import time

STOP = "/tmp/thread_switches.stop"


def reading(prefix):
    by_name = collections.defaultdict(lambda: [0, 0, 0])  # threads, voluntary, involuntary
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith(prefix):
                    continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                voluntary = involuntary = 0
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            voluntary = int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            involuntary = int(line.split()[1])
                row = by_name[name]
                row[0] += 1
                row[1] += voluntary
                row[2] += involuntary
        except OSError:  # a process or thread that ended meanwhile
            continue
    return by_name


def main():
    prefix = sys.argv[1] if len(sys.argv) > 1 else "pp-sim"
    if os.path.exists(STOP):
        os.remove(STOP)
    best, best_total = {}, -1
    while not os.path.exists(STOP):
        r = reading(prefix)
        total = sum(row[1] for row in r.values())
        if total > best_total:
            best, best_total = dict(r), total
        time.sleep(0.5)
    os.remove(STOP)
    print(f"{'thread':<16} {'threads':>8} {'voluntary':>10} {'involuntary':>12}")
    for name, (n, v, i) in sorted(best.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<16} {n:>8} {v:>10} {i:>12}")
    print(f"{'all':<16} {sum(r[0] for r in best.values()):>8} "
          f"{sum(r[1] for r in best.values()):>10} {sum(r[2] for r in best.values()):>12}")


if __name__ == "__main__":
    main()
