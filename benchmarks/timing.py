"""Interleaved timing for the benchmark scripts: every row once per round, so drift hits every row alike."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import torch

from shortcut_fast.ops.autotune import cpu_model


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


def cpu_line() -> str:
    """The CPU a CPU benchmark ran on, as its first printed line says it: model, vector ISA, threads, dtype."""
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, fp32"


def save_results(results: list[dict], path: str | None) -> None:
    """Write a benchmark's results to ``path`` as JSON; nothing without a path."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
