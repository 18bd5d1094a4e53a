"""Timing loops: latency percentiles from many samples, and throughput under concurrency."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stats:
    """Latencies in milliseconds; throughput in operations per second of wall time."""

    samples: int
    concurrency: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    throughput: float

    def ratio(self, floor: Stats) -> dict[str, float]:
        """How many times slower than the floor, per percentile."""
        return {
            "p50": _div(self.p50_ms, floor.p50_ms),
            "p95": _div(self.p95_ms, floor.p95_ms),
            "p99": _div(self.p99_ms, floor.p99_ms),
        }


def _div(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else 0.0


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy's default."""
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(latencies_ns: Sequence[int], wall_seconds: float, concurrency: int) -> Stats:
    ordered = sorted(v / 1e6 for v in latencies_ns)
    n = len(ordered)
    return Stats(
        samples=n,
        concurrency=concurrency,
        p50_ms=round(percentile(ordered, 0.50), 4),
        p95_ms=round(percentile(ordered, 0.95), 4),
        p99_ms=round(percentile(ordered, 0.99), 4),
        mean_ms=round(sum(ordered) / n, 4) if n else 0.0,
        max_ms=round(ordered[-1], 4) if n else 0.0,
        throughput=round(n / wall_seconds, 1) if wall_seconds > 0 else 0.0,
    )


@dataclass(frozen=True, slots=True)
class Budget:
    """How long to measure one thing: `samples`, unless `seconds` run out first
    (but never fewer than `min_samples`, so slow operations still get percentiles)."""

    samples: int
    seconds: float
    warmup: int
    min_samples: int = 10


def time_calls(call: Callable[[], object], budget: Budget) -> Stats:
    """One caller, one call at a time."""
    for _ in range(budget.warmup):
        call()
    latencies: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    deadline = started + int(budget.seconds * 1e9)
    while len(latencies) < budget.samples:
        t0 = clock()
        call()
        t1 = clock()
        latencies.append(t1 - t0)
        if t1 > deadline and len(latencies) >= budget.min_samples:
            break
    return summarize(latencies, (clock() - started) / 1e9, 1)


def time_interleaved(calls: dict[str, Callable[[], object]], budget: Budget) -> dict[str, Stats]:
    """One caller, the calls taken in turn, in a new random order each round, so
    whatever the machine does meanwhile falls on all of them alike: their
    ratios are then fair even when its speed drifts. Each gets `budget` (its
    samples; the seconds are per call, as time_calls gives each). A call's
    throughput is per second of its own time."""
    for call in calls.values():
        for _ in range(budget.warmup):
            call()
    latencies: dict[str, list[int]] = {name: [] for name in calls}
    order = list(calls)
    shuffle = random.Random(len(order)).shuffle  # noqa: S311 - an order, not a secret
    clock = time.perf_counter_ns
    deadline = clock() + int(budget.seconds * len(calls) * 1e9)
    for _ in range(budget.samples):
        shuffle(order)
        for name in order:
            t0 = clock()
            calls[name]()
            latencies[name].append(clock() - t0)
        if clock() > deadline and len(latencies[order[0]]) >= budget.min_samples:
            break
    return {name: summarize(v, sum(v) / 1e9, 1) for name, v in latencies.items()}


def time_concurrent(
    make_caller: Callable[[int], Callable[[], object]],
    workers: int,
    budget: Budget,
) -> Stats:
    """`workers` threads, each with its own caller (its own connection), calling
    in a loop until together they made budget.samples calls or time is up."""
    callers = [make_caller(i) for i in range(workers)]
    per_worker = max(1, budget.samples // workers)
    results: list[list[int]] = [[] for _ in range(workers)]
    failures: list[BaseException] = []
    start = threading.Barrier(workers + 1)
    stop = threading.Event()

    def run(i: int) -> None:
        call, mine = callers[i], results[i]
        clock = time.perf_counter_ns
        try:
            for _ in range(max(1, budget.warmup // workers)):
                call()
            start.wait()
            while len(mine) < per_worker and not stop.is_set():
                t0 = clock()
                call()
                mine.append(clock() - t0)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
            stop.set()
            start.abort()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    with suppress(threading.BrokenBarrierError):  # a worker failed; raised below
        start.wait()
    began = time.perf_counter()
    while any(t.is_alive() for t in threads):
        if time.perf_counter() - began > budget.seconds and all(
            len(r) >= max(1, budget.min_samples // workers) for r in results
        ):
            stop.set()
        for thread in threads:
            thread.join(timeout=0.05)
    wall = time.perf_counter() - began
    if failures:
        raise failures[0]
    return summarize([v for r in results for v in r], wall, workers)
