"""Helpers shared by the benchmarks: timing summaries, the machine, Markdown, the records.

Every benchmark prints its table and, with `append_section`, appends a dated section to
bench/HISTORY.md (the history of figures with the machine and the exact command that produced
them) and puts its headline figures in the table at the top of BENCHMARKS.md (`update_latest`),
one row per figure, replacing the previous run's.
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
HISTORY_MD = ROOT / "bench" / "HISTORY.md"
HEADER = """# Benchmark history

Every run of the scripts in `bench/` (`python bench/<name>.py`, or `make bench`) appends a
section here naming the machine, the command and the date; newer sections are further down.
The latest figure of each benchmark is in the table at the top of ../BENCHMARKS.md. Timings are
wall-clock on a machine that may have been doing other work, so compare figures from the same
section, not across sections.
"""
LATEST_BEGIN = "<!-- latest: rows replaced by bench/common.py update_latest on every run -->"
LATEST_END = "<!-- end of latest -->"
LATEST_HEADERS = ("benchmark", "what", "figure", "baseline", "date", "machine")


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


def machine_short() -> str:
    """The machine in a table cell: CPU, cores, memory, load when recorded."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_cpu_model()}, {usable} cores, {_memory()}, load {_load_average().split()[0]}"


def update_latest(
    script: str,
    rows: Sequence[tuple[str, str, str]],
    stamp: str,
    path: Path = BENCHMARKS_MD,
) -> None:
    """Put (what, figure, baseline) rows of one script in BENCHMARKS.md's top table, replacing
    the rows of the same script and `what`; the table sits between LATEST_BEGIN / LATEST_END."""
    text = path.read_text() if path.exists() else ""
    if LATEST_BEGIN not in text or LATEST_END not in text:
        text = f"# Benchmarks\n\n{LATEST_BEGIN}\n{LATEST_END}\n\n" + text
    head, rest = text.split(LATEST_BEGIN, 1)
    table, tail = rest.split(LATEST_END, 1)
    current: list[list[str]] = []
    for line in table.strip().splitlines()[2:]:  # past the header and the rule
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == len(LATEST_HEADERS):
            current.append(cells)
    fresh = {
        (script, what): [script, what, figure, baseline, stamp, machine_short()]
        for what, figure, baseline in rows
    }
    merged = [fresh.pop((c[0], c[1]), c) for c in current]  # in place, keeping the order
    merged += fresh.values()  # new rows at the end
    body = markdown_table(LATEST_HEADERS, merged)
    path.write_text(f"{head}{LATEST_BEGIN}\n{body}\n{LATEST_END}{tail}")


def append_section(
    title: str,
    command: str,
    body: str,
    *,
    notes: dict[str, str] | None = None,
    path: Path = HISTORY_MD,
    now: datetime | None = None,
    latest: Sequence[tuple[str, str, str]] = (),
) -> Path:
    """Append a dated section (machine, command, body) to bench/HISTORY.md, creating it if
    absent, and put `latest` (what, figure, baseline) rows in BENCHMARKS.md's top table."""
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
    if latest:
        script = command.split()[1] if command.startswith("python ") else command.split()[0]
        update_latest(script, latest, stamp[:10])
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
