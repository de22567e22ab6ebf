"""Interleaved timing for the benchmark scripts: every row once per round, so drift hits every row alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(rows: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each of ``rows`` over ``repeats`` rounds, after ``warmup`` untimed calls of each."""
    for run in rows.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(repeats):
        for label, run in rows.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}
