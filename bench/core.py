"""The pure core's throughput: fragments decoded and reassembled per second on one core.

    python bench/core.py               # 100 devices, 5 runs per path and mode, recorded
    python bench/core.py --devices 500 --runs 9
    python bench/core.py --quick       # a smoke run, not recorded

The stream is what the bridge sees from many nodes: every device sends whole frames (slow: 24
fragments of 51 bytes; fast: 2 of 39), the devices interleaved uplink by uplink, so each device
has a frame open while the others send. Three paths are timed over the same stream, each in a
fresh Reassembler:

- `decode` (the baseline): `decode_fragment(payload)` alone;
- `decode + reassemble`: `decode_fragment`, then `Reassembler.receive` (frames complete);
- `TTN JSON + decode + reassemble`: the full pure path of an uplink, `parse_message(body)` of the
  TTN v3 JSON, `decode_uplink`, `Reassembler.receive`.

Runs of the paths are interleaved (decode, reassemble, full, decode, ...) so a change in the
machine's load touches all alike; the table gives the median rate over the runs and each path's
cost against bare decode measured in the same run. The target is 20,000 fragments/s for
decode + reassemble on one core (this process is single-threaded).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append_section, markdown_table, median  # noqa: E402
from bridge.reassembly import Reassembler  # noqa: E402
from bridge.ttn import parse_message  # noqa: E402
from node_firmware.protocol import (  # noqa: E402
    Mode,
    decode_fragment,
    decode_uplink,
    encode_fragment,
    fragment_frame,
)
from tests.ttn_messages import BASE_TIME, uplink  # noqa: E402

TARGET_PER_S = 20_000
Stream = list[tuple[str, bytes, datetime, bytes]]  # device, payload, received_at, TTN body


def scene(seed: int) -> list[list[float | None]]:
    """A 24 × 32 frame: warm noise, one hot cell, one dead pixel."""
    rng = random.Random(seed)
    grid: list[list[float | None]] = [
        [round(22 + rng.random() * 8, 1) for _ in range(32)] for _ in range(24)
    ]
    grid[rng.randrange(24)][rng.randrange(32)] = 45.0
    grid[rng.randrange(24)][rng.randrange(32)] = None
    return grid


def make_stream(mode: Mode, devices: int, fragments_per_device: int) -> Stream:
    """Interleaved uplinks of `devices` nodes, each sending whole frames of `mode`."""
    per_frame = 24 if mode is Mode.SLOW else 2
    frames = max(1, fragments_per_device // per_frame)
    per_device: list[list[tuple[str, bytes, datetime, bytes]]] = []
    for d in range(devices):
        device_id = f"bench-{mode.label}-{d:04d}"
        items = []
        f_cnt = 1
        for number in range(frames):
            grid = scene(d * 1000 + number)
            for fragment in fragment_frame(grid, mode, number, fan=False, ambient=23):
                payload = encode_fragment(fragment)
                at = BASE_TIME + timedelta(seconds=f_cnt * 30, microseconds=d)
                items.append((device_id, payload, at, uplink(device_id, f_cnt, payload, at)))
                f_cnt += 1
        per_device.append(items)
    # Round-robin: uplink k of every device, then uplink k+1 of every device, ...
    return [item for step in zip(*per_device, strict=True) for item in step]


def path_decode(stream: Stream) -> int:
    for _device, payload, _at, _body in stream:
        decode_fragment(payload)
    return 0


def path_reassemble(stream: Stream) -> int:
    reassembler = Reassembler()
    frames = 0
    for device, payload, at, _body in stream:
        for event in reassembler.receive(device, decode_fragment(payload), at):
            frames += type(event).__name__ == "FrameCompleted"
    return frames


def path_full(stream: Stream) -> int:
    reassembler = Reassembler()
    frames = 0
    for _device, _payload, _at, body in stream:
        up = parse_message(body)
        fragment = decode_uplink(up.f_port, up.payload)  # type: ignore[union-attr]
        for event in reassembler.receive(up.device_id, fragment, up.received_at):  # type: ignore[union-attr, arg-type]
            frames += type(event).__name__ == "FrameCompleted"
    return frames


PATHS: dict[str, Callable[[Stream], int]] = {
    "decode (baseline)": path_decode,
    "decode + reassemble": path_reassemble,
    "TTN JSON + decode + reassemble": path_full,
}


def measure(stream: Stream, runs: int) -> dict[str, tuple[list[float], int]]:
    """Fragments per second of each path, `runs` interleaved runs each, and frames completed."""
    rates: dict[str, list[float]] = {name: [] for name in PATHS}
    completed: dict[str, int] = {}
    for path in PATHS.values():  # warm-up
        path(stream[: min(len(stream), 2000)])
    for _ in range(runs):
        for name, path in PATHS.items():
            started = perf_counter()
            completed[name] = path(stream)
            rates[name].append(len(stream) / (perf_counter() - started))
    return {name: (rates[name], completed[name]) for name in PATHS}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100, help="devices (default 100)")
    parser.add_argument(
        "--fragments", type=int, default=240, help="fragments per device (default 240)"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per path (default 5)")
    parser.add_argument("--quick", action="store_true", help="20 devices, 2 runs, not recorded")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    devices, runs = (20, 2) if args.quick else (args.devices, args.runs)

    rows: list[list[str]] = []
    verdicts: list[str] = []
    headline: dict[str, tuple[float, float]] = {}
    for mode in (Mode.SLOW, Mode.FAST):
        stream = make_stream(mode, devices, args.fragments)
        results = measure(stream, runs)
        base = median(results["decode (baseline)"][0])
        for name, (rates, frames) in results.items():
            rate = median(rates)
            rows.append(
                [
                    mode.label,
                    name,
                    f"{len(stream):,}",
                    f"{frames:,}" if name != "decode (baseline)" else "—",
                    f"{rate:,.0f}",
                    f"{min(rates):,.0f}–{max(rates):,.0f}",
                    f"{1e6 / rate:.1f}",
                    "1.00×" if rate == base else f"{base / rate:.2f}× the time",
                ]
            )
        reassemble = median(results["decode + reassemble"][0])
        headline[mode.label] = (reassemble, base)
        verdicts.append(
            f"{mode.label}: {reassemble:,.0f} fragments/s decoded + reassembled "
            f"({'meets' if reassemble >= TARGET_PER_S else 'misses'} the {TARGET_PER_S:,}/s "
            f"target, {reassemble / TARGET_PER_S:.1f}× it)"
        )
    table = markdown_table(
        [
            "mode",
            "path",
            "fragments",
            "frames completed",
            "fragments/s (median)",
            "range",
            "µs/fragment",
            "vs decode",
        ],
        rows,
    )
    summary = (
        f"{devices} devices interleaved, {args.fragments} fragments each, {runs} runs per path, "
        "one core (single thread).\n\n" + "\n".join(f"- {v}" for v in verdicts)
    )
    print(table)
    print()
    print(summary)
    if not (args.quick or args.no_record):
        path = append_section(
            "Pure core: decode + reassembly throughput",
            " ".join(["python bench/core.py", *sys.argv[1:]]),
            table + "\n\n" + summary,
            latest=[
                (
                    "decode + reassemble, one core, slow / fast",
                    " / ".join(f"{headline[m][0]:,.0f}" for m in ("slow", "fast")) + " fragments/s",
                    "bare decode "
                    + " / ".join(f"{headline[m][1]:,.0f}" for m in ("slow", "fast"))
                    + f"/s; target {TARGET_PER_S:,}/s",
                )
            ],
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
