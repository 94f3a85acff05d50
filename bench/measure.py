"""What the harness reads from the kernel and how it sums up samples: CPU time and RSS from
``/proc``, latency histograms from the load generator, medians over repetitions."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOG_STEP = math.log(1.01)  # the load generator's histogram: 1 % wide buckets of µs


def cpu_us(pid: int) -> int:
    """utime + stime of ``pid`` (all its threads) in µs, from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces or parens
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) * 1_000_000 // CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` in bytes, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(f"pid {pid} has no VmRSS: it has exited")


class CpuMeter:
    """CPU µs used by a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self.before: dict[int, int] = {}
        self.used_us = 0
        self.used_by_pid: dict[int, int] = {}
        self.wall_s = 0.0
        self.started_at = 0.0  # time.monotonic() of start()

    def start(self) -> CpuMeter:
        self.before = {pid: cpu_us(pid) for pid in self.pids}
        self.started_at = time.monotonic()
        return self

    def stop(self) -> int:
        self.used_by_pid = {pid: cpu_us(pid) - self.before[pid] for pid in self.pids}
        self.wall_s = time.monotonic() - self.started_at
        self.used_us = sum(self.used_by_pid.values())
        return self.used_us

    def busiest_pct(self) -> float:
        """CPU % of the busiest process over the window (100 = one core)."""
        return 100 * max(self.used_by_pid.values(), default=0) / 1e6 / max(self.wall_s, 1e-9)


def merge_hists(hists: Iterable[Mapping[str, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for hist in hists:
        for bucket, count in hist.items():
            merged[int(bucket)] = merged.get(int(bucket), 0) + count
    return merged


def percentile_us(hist: Mapping[int, int], fraction: float) -> float | None:
    """The upper edge (µs) of the bucket holding the ``fraction`` quantile; ``None`` if empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return math.expm1(bucket * LOG_STEP)
    raise AssertionError("unreachable")


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
