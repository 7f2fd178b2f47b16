"""Compressed mode (docs/protocol.md): uplinks, airtime and encoding time per frame.

    python bench/compression.py             # 60 scenes, recorded in bench/HISTORY.md
    python bench/compression.py --scenes 200
    python bench/compression.py --quick     # 10 scenes, a smoke run, not recorded

Scenes are the simulator's battery racks (node_firmware/simulated.py) at random times of their
day, fan on or off, with a sensor noise of 0.15 °C and now and then a dead pixel. Each is
compressed at every step; the fragments are decoded again and the error checked. Airtime is
Semtech's formula (the simulator's `lora_airtime_ns`) for each uplink's PHY payload (the
application payload plus LoRaWAN's 13 bytes), next to slow and fast mode; frames per day are
what fits TTN's fair-use 30 s of airtime a day.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append_section, markdown_table, median  # noqa: E402
from node_firmware import protocol  # noqa: E402
from node_firmware.protocol import FRAME_PIXELS, STEPS_C, Mode  # noqa: E402
from node_firmware.simulated import BatteryRackScene, SimClock  # noqa: E402
from node_firmware.simulator import LORAWAN_OVERHEAD_BYTES, lora_airtime_ns  # noqa: E402

NOISE_C = 0.15
AIRTIME_PER_DAY_S = 30.0  # TTN fair use
TARGETS = {0.1: 12, 0.5: 6}  # uplinks per frame (the targets)
ENCODE_TARGET_MS = 50.0

Grid = list[list[float | None]]


def scene(seed: int) -> Grid:
    """One frame of a simulated battery rack with 0.15 °C of sensor noise."""
    rng = random.Random(seed)
    clock = SimClock()
    rack = BatteryRackScene(rng, clock)
    clock.advance(rng.uniform(0, 8 * 3600))
    if rng.random() < 0.4:
        rack.set_fan(True)
        clock.advance(rng.uniform(0, 1800))
    grid: Grid = [[v + rng.gauss(0.0, NOISE_C) for v in row] for row in rack.true_frame()]
    if rng.random() < 0.3:
        grid[rng.randrange(24)][rng.randrange(32)] = None
    return grid


def airtime_s(payload_sizes: list[int], sf: int) -> float:
    """Seconds on air of uplinks with these application payload sizes."""
    return sum(lora_airtime_ns(n + LORAWAN_OVERHEAD_BYTES, sf) for n in payload_sizes) / 1e9


def max_error(grid: Grid, decoded: protocol.Grid) -> float:
    worst = 0.0
    for row, back in zip(grid, decoded, strict=True):
        for sent, got in zip(row, back, strict=True):
            if (sent is None) != (got is None):
                return float("inf")
            if sent is not None and got is not None:
                worst = max(worst, abs(min(max(sent, -204.7), 204.7) - got))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="10 scenes, not recorded")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    count = 10 if args.quick else args.scenes
    grids = [scene(seed) for seed in range(count)]

    rows = []
    verdicts = []
    medians: dict[float, float] = {}
    reference = {}
    for label, mode in (("slow", Mode.SLOW), ("fast", Mode.FAST)):
        sizes = [
            len(protocol.encode_fragment(f))
            for f in protocol.fragment_frame(grids[0], mode, 0, fan=False, ambient=None)
        ]
        reference[label] = (len(sizes), airtime_s(sizes, 7), airtime_s(sizes, 12))
    for step in STEPS_C:
        uplinks: list[int] = []
        sf7: list[float] = []
        sf12: list[float] = []
        encode_ms: list[float] = []
        errors: list[float] = []
        fallback = 0
        for grid in grids:
            started = perf_counter()
            try:
                fragments = protocol.compress_frame(grid, 0, step=step, fan=False, ambient=None)
            except protocol.IncompressibleFrameError:
                fallback += 1
                fragments = protocol.fragment_frame(grid, Mode.SLOW, 0, fan=False, ambient=None)
            payloads = [protocol.encode_fragment(f) for f in fragments]
            encode_ms.append((perf_counter() - started) * 1000)
            decoded = [protocol.decode_fragment(p) for p in payloads]
            back, covered = protocol.decompress_fragments(decoded)
            assert len(covered) == FRAME_PIXELS
            errors.append(max_error(grid, back))
            sizes = [len(p) for p in payloads]
            uplinks.append(len(payloads))
            sf7.append(airtime_s(sizes, 7))
            sf12.append(airtime_s(sizes, 12))
        medians[step] = median(uplinks)
        rows.append(
            [
                f"compressed {step} °C",
                f"{median(uplinks):g} / {max(uplinks)}",
                f"{max(errors):.2f}",
                f"{median(sf7):.3f} / {max(sf7):.3f}",
                f"{median(sf12):.2f} / {max(sf12):.2f}",
                f"{AIRTIME_PER_DAY_S / median(sf7):.1f} / {AIRTIME_PER_DAY_S / max(sf7):.1f}",
                f"{AIRTIME_PER_DAY_S / median(sf12):.2f} / {AIRTIME_PER_DAY_S / max(sf12):.2f}",
                f"{median(encode_ms):.1f} / {max(encode_ms):.1f}",
            ]
        )
        if step in TARGETS:
            target = TARGETS[step]
            verdicts.append(
                f"step {step} °C: median {median(uplinks):g}, worst {max(uplinks)} uplinks "
                f"(target ≤ {target}: {'met' if median(uplinks) <= target else 'missed'} by the "
                f"median, {'met' if max(uplinks) <= target else 'missed'} by the worst case); "
                f"max error {max(errors):.2f} °C (≤ {step / 2:g})"
            )
        if fallback:
            verdicts.append(f"step {step} °C: {fallback} frame(s) fell back to slow mode")
        if max(encode_ms) > ENCODE_TARGET_MS:
            verdicts.append(f"step {step} °C: encoding exceeded {ENCODE_TARGET_MS} ms")
    for label, (n, a7, a12) in reference.items():
        rows.append(
            [
                f"{label} (PROTOCOL.md)",
                f"{n}",
                "0.05" if label == "slow" else "block max",
                f"{a7:.3f}",
                f"{a12:.2f}",
                f"{AIRTIME_PER_DAY_S / a7:.1f}",
                f"{AIRTIME_PER_DAY_S / a12:.2f}",
                "—",
            ]
        )
    table = markdown_table(
        [
            "mode",
            "uplinks/frame (median / worst)",
            "max error °C",
            "airtime SF7 s",
            "airtime SF12 s",
            "frames/day SF7",
            "frames/day SF12",
            "encode ms (median / worst)",
        ],
        rows,
    )
    summary = "\n".join(f"- {v}" for v in verdicts)
    print(table)
    print()
    print(summary)
    if not (args.quick or args.no_record):
        path = append_section(
            "Compressed mode: uplinks, airtime, encoding",
            " ".join(["python bench/compression.py", *sys.argv[1:]]),
            table
            + "\n\n"
            + summary
            + "\n\nAirtime per frame: Semtech AN1200.13 at 125 kHz, CR 4/5, 13 bytes of LoRaWAN "
            "overhead per uplink; frames/day = 30 s ÷ airtime (TTN fair use). Encoding: "
            "quantise, predict, choose k and cut fragments, then serialise, in CPython.",
            notes={
                "scenes": f"{count} simulated battery racks, sensor noise {NOISE_C} °C, "
                "30 % with a dead pixel",
            },
            latest=[
                (
                    "uplinks per frame, compressed "
                    + " / ".join(f"{step:g}" for step in TARGETS)
                    + " °C, median",
                    " / ".join(f"{medians[step]:g}" for step in TARGETS),
                    "slow mode 24; targets ≤ " + " / ≤ ".join(str(t) for t in TARGETS.values()),
                )
            ],
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
