#!/usr/bin/env python3
"""CPU of the hub, the simulator and the broker in each busy phase of a run.

    python3 edge-agent/bench/phase_cpu.py &     # before the run
    build/bin/pp-sim ...                        # the run to look at
    touch /tmp/phase_cpu.stop                   # after it: prints, exits

Every quarter second it adds up the CPU time (user + system, /proc/PID/stat)
of the processes named pp-hub, pp-sim (the director and its shards) and
mosquitto. A phase is a run of quarter seconds in which the three together
used more than a fifth of a core; quiet moments between two phases end the
first. For each phase it prints when it began and ended (seconds since the
first busy moment) and the CPU seconds each used in it, and the cores they
kept busy. With --delay longer than a post takes to reach its van, a rush
has two phases: the posts, then the vans' claims, which is how claims are
measured apart from posts (docs/benchmarks.md, "Session 36"). Every
process of those names on the machine counts: look at one run at a time.
"""
import os
import sys
import time

STOP = "/tmp/phase_cpu.stop"
STEP = 0.25
BUSY_CORES = 0.2
GROUPS = {"pp-hub": "hub", "pp-sim": "simulator", "mosquitto": "broker"}


def cpu_by_group(ticks):
    used = {g: 0.0 for g in GROUPS.values()}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone between the listing and the read
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name in GROUPS:
            fields = stat[stat.rindex(")") + 2:].split()
            used[GROUPS[name]] += (int(fields[11]) + int(fields[12])) / ticks
    return used


def main():
    if os.path.exists(STOP):
        os.remove(STOP)
    ticks = os.sysconf("SC_CLK_TCK")
    steps = []  # (time, {group: CPU seconds in the step})
    before = cpu_by_group(ticks)
    while not os.path.exists(STOP):
        time.sleep(STEP)
        now = cpu_by_group(ticks)
        # A process that ended takes its CPU with it: never count below zero.
        steps.append((time.time(), {g: max(0.0, now[g] - before[g]) for g in now}))
        before = now
    os.remove(STOP)

    phases, current = [], None
    for at, used in steps:
        if sum(used.values()) > BUSY_CORES * STEP:
            if current is None:
                current = {"from": at - STEP, "to": at, "cpu": {g: 0.0 for g in used}}
                phases.append(current)
            current["to"] = at
            for g, s in used.items():
                current["cpu"][g] += s
        else:
            current = None
    if not phases:
        print("no busy phase")
        return
    origin = phases[0]["from"]
    print("phase  from_s  to_s  " + "  ".join(f"{g}_cpu_s" for g in GROUPS.values()) + "  cores")
    for i, p in enumerate(phases, 1):
        seconds = p["to"] - p["from"]
        total = sum(p["cpu"].values())
        print(f"{i:5d}  {p['from'] - origin:6.2f}  {p['to'] - origin:4.2f}  " +
              "  ".join(f"{p['cpu'][g]:{len(g) + 6}.2f}" for g in GROUPS.values()) +
              f"  {total / seconds:5.2f}")


if __name__ == "__main__":
    sys.exit(main())
