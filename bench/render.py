"""Heatmap rendering speed: imaging.heatmap against the naive matplotlib way, in one run.

    python bench/render.py               # 200 frames per renderer and mode, recorded
    python bench/render.py --runs 500    # more frames
    python bench/render.py --quick       # 20 frames, a smoke run, not recorded

Both renderers draw the same synthetic battery-rack frames (24 × 32 slow mode, and their 6 × 8
block maxima for fast mode) at 640 × 480, smoothly (bilinearly) upscaled, with a scale bar and a
caption. The baseline is what the old server did for every frame: a new matplotlib figure (Agg),
imshow, colorbar, savefig to PNG, close. The runs are split into interleaved rounds (ours, baseline, ours, ...) so that a
change in the machine's load affects both alike. Prints a table of median and p95 milliseconds
per frame, PNG size and the speed ratio, and records it (bench/HISTORY.md, BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append_section, markdown_table, median, percentile, time_calls  # noqa: E402
from imaging.heatmap import render_heatmap  # noqa: E402

Grid = list[list[float | None]]
WIDTH_PX, HEIGHT_PX = 640, 480
COLORMAP = "inferno"
FRAMES = 8


def battery_rack_frame(seed: int) -> Grid:
    """A 24 × 32 frame of a battery rack: warm cells on a cooler shelf, a hot spot, dead pixels."""
    rng = random.Random(seed)
    ambient = 22.0 + rng.uniform(-1.0, 1.0)
    grid: Grid = [[ambient + rng.gauss(0.0, 0.3) for _ in range(32)] for _ in range(24)]
    # Two shelves of six battery blocks, each a bit warmer than the air around it.
    for shelf_top in (3, 14):
        for block in range(6):
            warmth = rng.uniform(4.0, 9.0)
            left = 1 + block * 5
            for row in range(shelf_top, shelf_top + 7):
                for col in range(left, left + 4):
                    value = grid[row][col]
                    assert value is not None
                    grid[row][col] = value + warmth + rng.gauss(0.0, 0.4)
    hot_row, hot_col = rng.randrange(4, 20), rng.randrange(2, 30)
    for row in range(hot_row - 1, hot_row + 2):
        for col in range(hot_col - 1, hot_col + 2):
            value = grid[row][col]
            assert value is not None
            grid[row][col] = value + 15.0 + rng.uniform(0.0, 10.0)
    for _ in range(2):  # dead pixels: PROTOCOL.md's -2048 "no data"
        grid[rng.randrange(24)][rng.randrange(32)] = None
    # Values travel as tenths of a degree (PROTOCOL.md, FPort 1).
    return [[None if v is None else round(v, 1) for v in row] for row in grid]


def block_maxima(grid: Grid) -> Grid:
    """The fast-mode 6 × 8 grid: the maximum of each 4 × 4 block, None if a block has no data."""
    out: Grid = []
    for block_row in range(len(grid) // 4):
        row: list[float | None] = []
        for block_col in range(len(grid[0]) // 4):
            values = [
                v
                for r in range(block_row * 4, block_row * 4 + 4)
                for v in grid[r][block_col * 4 : block_col * 4 + 4]
                if v is not None
            ]
            row.append(max(values) if values else None)
        out.append(row)
    return out


def render_ours(grid: Grid, caption: str) -> bytes:
    """imaging.heatmap with the bridge's defaults."""
    return render_heatmap(
        grid, width=WIDTH_PX, height=HEIGHT_PX, colormap=COLORMAP, caption=caption
    )


def render_matplotlib(grid: Grid, caption: str) -> bytes:
    """The naive baseline: one matplotlib figure per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure = plt.figure(figsize=(WIDTH_PX / 100, HEIGHT_PX / 100), dpi=100)
    plt.imshow(
        np.ma.masked_invalid(np.array(grid, dtype=float)), cmap=COLORMAP, interpolation="bilinear"
    )
    plt.colorbar(label="°C")
    plt.title(caption)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


Renderer = Callable[[Grid, str], bytes]


def measure(renderer: Renderer, grids: Sequence[Grid], runs: int) -> tuple[list[float], list[int]]:
    """Seconds per frame and PNG sizes of `runs` renders cycling through the grids."""
    sizes: list[int] = []
    frame = iter(range(runs))

    def one() -> None:
        index = next(frame)
        sizes.append(
            len(
                renderer(
                    grids[index % len(grids)], f"rack-{index % len(grids)}  2024-05-01T12:00:00Z"
                )
            )
        )

    return time_calls(one, runs), sizes


def compare(
    grids: Sequence[Grid], runs: int, rounds: int
) -> dict[str, tuple[list[float], list[int]]]:
    """Interleaved rounds of both renderers; all samples per renderer."""
    results: dict[str, tuple[list[float], list[int]]] = {"ours": ([], []), "matplotlib": ([], [])}
    renderers: dict[str, Renderer] = {"ours": render_ours, "matplotlib": render_matplotlib}
    for renderer in renderers.values():  # warm up: imports, font and palette caches
        for grid in grids[:2]:
            renderer(grid, "warm-up")
    per_round = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    for count in per_round:
        for name, renderer in renderers.items():
            times, sizes = measure(renderer, grids, count)
            results[name][0].extend(times)
            results[name][1].extend(sizes)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=200, help="frames per renderer and mode (default 200)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="20 frames in 2 rounds, not recorded")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    runs, rounds = (20, 2) if args.quick else (args.runs, args.rounds)
    if runs < 1 or not 1 <= rounds <= runs:
        parser.error("--runs must be at least 1 and --rounds 1..runs")

    slow = [battery_rack_frame(seed) for seed in range(FRAMES)]
    modes = {"slow 24×32": slow, "fast 6×8": [block_maxima(g) for g in slow]}
    rows: list[list[str]] = []
    ratios: list[float] = []
    medians_ms: dict[str, list[float]] = {}
    for mode, grids in modes.items():
        results = compare(grids, runs, rounds)
        ours_median = median(results["ours"][0])
        for name, (times, sizes) in results.items():
            ratio = median(times) / ours_median
            medians_ms.setdefault(name, []).append(median(times) * 1000)
            if name == "matplotlib":
                ratios.append(ratio)
            rows.append(
                [
                    mode,
                    "imaging.heatmap" if name == "ours" else "matplotlib figure per frame",
                    str(len(times)),
                    f"{median(times) * 1000:.2f}",
                    f"{percentile(times, 95) * 1000:.2f}",
                    f"{median([float(s) for s in sizes]) / 1024:.1f}",
                    "1.0×" if name == "ours" else f"{ratio:.1f}× slower",
                ]
            )
    table = markdown_table(
        ["mode", "renderer", "frames", "median ms", "p95 ms", "PNG KiB (median)", "vs ours"], rows
    )
    verdict = (
        f"Output {WIDTH_PX}×{HEIGHT_PX}, colormap {COLORMAP}, scale bar and caption on. "
        f"Speed-up over the baseline (median): {', '.join(f'{r:.0f}×' for r in ratios)} "
        f"({'meets' if min(ratios) >= 20 else 'misses'} the 20× target)."
    )
    print(table)
    print()
    print(verdict)
    if not (args.quick or args.no_record):
        import matplotlib
        import numpy
        import PIL

        path = append_section(
            "Heatmap rendering: imaging.heatmap vs matplotlib",
            " ".join(["python bench/render.py", *sys.argv[1:]]),
            table + "\n\n" + verdict,
            notes={
                "libraries": f"numpy {numpy.__version__}, Pillow {PIL.__version__}, "
                f"matplotlib {matplotlib.__version__} (baseline only)",
                "frames": f"{FRAMES} synthetic battery-rack frames cycled, {rounds} interleaved rounds",
            },
            latest=[
                (
                    "heatmap 640 × 480 PNG, slow / fast, median",
                    " / ".join(f"{ms:.2f}" for ms in medians_ms["ours"]) + " ms",
                    "matplotlib "
                    + " / ".join(f"{ms:.2f}" for ms in medians_ms["matplotlib"])
                    + " ms ("
                    + " / ".join(f"{r:.0f}×" for r in ratios)
                    + " slower); target 20×",
                )
            ],
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
