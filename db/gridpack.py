"""A frame's temperature grid as compact bytes: big-endian int16 °C/10 per pixel, row-major.

-2048 (the protocol's no-data value) marks a pixel without data. 1,536 bytes for 24 x 32.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from sys import byteorder

from node_firmware.protocol import NO_DATA_RAW, Grid, celsius_to_raw, raw_to_celsius


def pack_grid(grid: Sequence[Sequence[float | None]]) -> bytes:
    """Grid (°C, None = no data) -> bytes."""
    values = array("h", (celsius_to_raw(v) for row in grid for v in row))
    if byteorder == "little":
        values.byteswap()
    return values.tobytes()


def unpack_grid(data: bytes, rows: int, cols: int) -> Grid:
    """Bytes -> grid of `rows` x `cols` (°C with one decimal, None = no data)."""
    values = array("h")
    values.frombytes(data)
    if byteorder == "little":
        values.byteswap()
    if len(values) != rows * cols:
        raise ValueError(f"grid holds {len(values)} values, expected {rows} x {cols}")
    return tuple(
        tuple(raw_to_celsius(v) for v in values[r * cols : (r + 1) * cols]) for r in range(rows)
    )


__all__ = ["NO_DATA_RAW", "pack_grid", "unpack_grid"]
