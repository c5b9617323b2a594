"""Helpers shared by the benchmarks: machine description, statistics, Markdown output.

Every benchmark measures torchtroupe and its baselines in the same run and writes
its results into its own section of ``docs/benchmarks.md``, between
``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers, leaving the other
sections as they were.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "docs" / "benchmarks.md"

DOC_INTRO = """\
# Benchmarks

Run them with `make bench` (or one at a time, e.g. `.venv/bin/python -m bench.transport`;
`--quick` gives a short, noisier run). Each benchmark measures torchtroupe and its
baselines on the same machine in the same run, so compare the **ratios**, not the
absolute numbers: those depend on the machine, which each section describes. Each
section below is rewritten by its benchmark; the rest of this file is left alone.
"""


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or the platform's best guess)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, OS, Python, torch, date."""
    import torch

    return {
        "CPU": cpu_model(),
        "cores": str(os.cpu_count()),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def machine_markdown() -> str:
    """The machine description as one Markdown line."""
    return "; ".join(f"{key}: {value}" for key, value in machine_description().items())


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return percentile(values, 50.0)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; floats are written with 3 significant digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "—"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Writes ``body`` between the ``name`` markers of ``path``.

    Creates the file (with :data:`DOC_INTRO`) if it is missing, and appends the
    section at the end if the file has no markers for ``name`` yet.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else DOC_INTRO
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        text = text[:start] + block + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def timed_us(iterations: int, warmup: int, once: Callable[[], object]) -> list[float]:
    """Runs ``once`` ``warmup`` times, then times ``iterations`` calls one by one; µs."""
    for _ in range(warmup):
        once()
    clock = time.perf_counter_ns
    samples = [0.0] * iterations
    for i in range(iterations):
        start = clock()
        once()
        samples[i] = (clock() - start) / 1000.0
    return samples


def target_status(met: bool) -> str:
    """The status cell of a targets table."""
    return "met" if met else "**not met**"


def shm_entries() -> set[str]:
    """Names in ``/dev/shm`` now (to check that a benchmark leaves nothing behind)."""
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def say(*parts: object) -> None:
    """Prints progress to stderr, so stdout keeps only the results."""
    print(*parts, file=sys.stderr, flush=True)
