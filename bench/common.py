"""Helpers shared by the benchmarks: timing summaries, the machine, Markdown, BENCHMARKS.md.

Every benchmark prints its table and appends a dated section to BENCHMARKS.md at the top of
the repository with `append_section`, so the file keeps a history of figures together with
the machine and the exact command that produced them.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Figures measured by the scripts in `bench/` (run them with `python bench/<name>.py`). Each
section is appended by a run and names the machine, the command and the date; newer sections
are further down. Timings are wall-clock on a machine that may have been doing other work, so
compare figures from the same section, not across sections.
"""


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default does."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below, above = math.floor(position), math.ceil(position)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction


def time_calls(function: Callable[[], object], runs: int) -> list[float]:
    """Wall-clock seconds of each of `runs` calls of function."""
    samples: list[float] = []
    for _ in range(runs):
        started = perf_counter()
        function()
        samples.append(perf_counter() - started)
    return samples


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory() -> str:
    """Total memory from /proc/meminfo, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was during the run."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine() -> dict[str, str]:
    """What the figures were measured on: CPU, cores, memory, OS, Python, current load."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "memory": _memory(),
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "load average (1/5/15 min) when recorded": _load_average(),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table with padded columns, readable as plain text too."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def append_section(
    title: str,
    command: str,
    body: str,
    *,
    notes: dict[str, str] | None = None,
    path: Path = BENCHMARKS_MD,
    now: datetime | None = None,
) -> Path:
    """Append a dated section (machine, command, body) to BENCHMARKS.md, creating it if absent."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    details = {**machine(), **(notes or {})}
    lines = [
        f"## {title} — {stamp}",
        "",
        *(f"- {key}: {value}" for key, value in details.items()),
        "",
        "```",
        command,
        "```",
        "",
        body.rstrip(),
        "",
    ]
    existing = path.read_text() if path.exists() else HEADER
    path.write_text(existing.rstrip("\n") + "\n\n" + "\n".join(lines))
    return path


def process_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of a process and its children so far."""
    import psutil

    root = psutil.Process(pid)
    cpu, rss = 0.0, 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system
            rss += proc.memory_info().rss
        except psutil.Error:  # a child that just exited
            continue
    return cpu, rss
