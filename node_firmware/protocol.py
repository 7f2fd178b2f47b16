"""Node <-> bridge payload codec, PROTOCOL.md version 1: bytes in, dataclasses out, no I/O.

One module for both sides: the firmware and the simulator encode with it, the bridge decodes
with it. Every violation raises a subclass of `ProtocolError` whose message names the byte or
field that was wrong.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

PROTOCOL_VERSION = 1

# PROTOCOL.md "Uplinks": the MLX90640 frame is 24 rows x 32 columns, row-major.
ROWS = 24
COLS = 32
# Fast mode sends the maximum of each 4 x 4 block: a 6 x 8 grid.
BLOCK = 4
FAST_ROWS = ROWS // BLOCK
FAST_COLS = COLS // BLOCK

FRAME_NUMBER_MODULUS = 64  # byte 0 bits 5..0
MAX_PAYLOAD_BYTES = 51  # fits DR0-DR2 on EU868

FRAGMENT_PORT = 1
STATUS_PORT = 2
SETTINGS_PORT = 10

HEADER_BYTES = 3
STATUS_BYTES = 5
SETTINGS_BYTES = 3

NO_DATA_RAW = -2048  # 0x800: "no data for this pixel"
PIXEL_RAW_MIN = -2047  # -204.7 degC; values are clamped to this range
PIXEL_RAW_MAX = 2047  # 204.7 degC
AMBIENT_NO_READING = -128  # 0x80
THRESHOLD_MIN_C = -40  # FPort 10: "valid range -40..150"
THRESHOLD_MAX_C = 150

Grid = tuple[tuple[float | None, ...], ...]


class ProtocolError(ValueError):
    """A payload or value that PROTOCOL.md does not allow."""


class PayloadLengthError(ProtocolError):
    """The payload length does not match its port or mode."""


class ReservedModeError(ProtocolError):
    """A mode value PROTOCOL.md reserves (2, 3 in a fragment)."""


class FragmentIndexError(ProtocolError):
    """A fragment index out of range for its mode."""


class UnknownPortError(ProtocolError):
    """An uplink on an FPort the protocol does not define."""


class FieldValueError(ProtocolError):
    """A field whose value is outside its allowed range."""


class Mode(enum.IntEnum):
    """Transmission mode (fragment byte 0 bits 7..6)."""

    SLOW = 0
    FAST = 1

    @property
    def label(self) -> str:
        """The name used in JSON, SQL and the UI: "slow" or "fast"."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Mode:
        """Parse "slow" / "fast"."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise FieldValueError(f"mode must be 'slow' or 'fast', not {label!r}") from None


def fragment_count(mode: Mode) -> int:
    """How many fragments a frame of this mode has (slow 24, fast 2)."""
    return ROWS if mode is Mode.SLOW else FAST_ROWS // 3


def grid_shape(mode: Mode) -> tuple[int, int]:
    """(rows, columns) of the grid a mode sends: 24 x 32 or 6 x 8."""
    return (ROWS, COLS) if mode is Mode.SLOW else (FAST_ROWS, FAST_COLS)


def rows_per_fragment(mode: Mode) -> int:
    """Grid rows per fragment: slow 1 row of 32, fast 3 rows of 8."""
    return 1 if mode is Mode.SLOW else 3


def pixels_per_fragment(mode: Mode) -> int:
    """Pixels per fragment: slow 32, fast 24."""
    return grid_shape(mode)[1] * rows_per_fragment(mode)


def fragment_bytes(mode: Mode) -> int:
    """Payload length of a fragment of this mode: slow 51, fast 39."""
    return HEADER_BYTES + pixels_per_fragment(mode) * 3 // 2


@dataclass(frozen=True, slots=True)
class Fragment:
    """One FPort 1 uplink: part of a thermal frame."""

    mode: Mode
    frame_number: int
    fan: bool
    index: int
    ambient: int | None
    pixels: tuple[float | None, ...]

    def rows(self) -> tuple[int, ...]:
        """The grid rows this fragment carries (slow: row i; fast: rows 3i..3i+2)."""
        per = rows_per_fragment(self.mode)
        return tuple(range(self.index * per, self.index * per + per))


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One FPort 2 uplink: the node's settings and state."""

    version: int
    fan_requested: bool
    fan_running: bool
    mode: Mode
    threshold: int
    ambient: int | None


@dataclass(frozen=True, slots=True)
class Settings:
    """The FPort 10 downlink: what the user wants the node to do."""

    fan: bool
    mode: Mode
    threshold: int


# --- scalar conversions ------------------------------------------------------------------


def celsius_to_raw(value: float | None) -> int:
    """°C to the 12-bit °C/10 value: rounded, clamped to ±204.7, None/NaN -> no data."""
    if value is None or math.isnan(value):
        return NO_DATA_RAW
    raw = math.floor(value * 10 + 0.5)
    return min(max(raw, PIXEL_RAW_MIN), PIXEL_RAW_MAX)


def raw_to_celsius(raw: int) -> float | None:
    """12-bit °C/10 to °C with one decimal; the no-data value becomes None."""
    if raw == NO_DATA_RAW:
        return None
    return raw / 10


def ambient_to_byte(value: float | None) -> int:
    """Ambient °C to the signed byte: whole degrees, clamped, None -> -128 (no reading)."""
    if value is None or math.isnan(value):
        return AMBIENT_NO_READING & 0xFF
    whole = min(max(math.floor(value + 0.5), -127), 127)
    return whole & 0xFF


def byte_to_ambient(byte: int) -> int | None:
    """The signed ambient byte to whole °C; -128 -> None."""
    value = byte - 256 if byte & 0x80 else byte
    return None if value == AMBIENT_NO_READING else value


# --- pixel packing (PROTOCOL.md "Pixel packing") -----------------------------------------


def pack_pixels(raws: Sequence[int]) -> bytes:
    """Pack 12-bit two's complement values, two pixels in three bytes."""
    if len(raws) % 2:
        raise PayloadLengthError(f"pixel count must be even, got {len(raws)}")
    out = bytearray()
    for k in range(0, len(raws), 2):
        a = raws[k] & 0xFFF
        b = raws[k + 1] & 0xFFF
        out += bytes((a >> 4, ((a & 0xF) << 4) | (b >> 8), b & 0xFF))
    return bytes(out)


def unpack_pixels(data: bytes) -> list[int]:
    """Unpack three bytes into two signed 12-bit values, for the whole buffer."""
    if len(data) % 3:
        raise PayloadLengthError(f"pixel bytes must be a multiple of 3, got {len(data)}")
    raws: list[int] = []
    for k in range(0, len(data), 3):
        b0, b1, b2 = data[k], data[k + 1], data[k + 2]
        a = (b0 << 4) | (b1 >> 4)
        b = ((b1 & 0x0F) << 8) | b2
        raws.append(a - 0x1000 if a & 0x800 else a)
        raws.append(b - 0x1000 if b & 0x800 else b)
    return raws


# --- FPort 1: thermal fragment ------------------------------------------------------------


def encode_fragment(fragment: Fragment) -> bytes:
    """Fragment -> FPort 1 payload bytes."""
    mode = Mode(fragment.mode)
    if not 0 <= fragment.frame_number < FRAME_NUMBER_MODULUS:
        raise FieldValueError(f"frame_number must be 0..63, got {fragment.frame_number}")
    if not 0 <= fragment.index < fragment_count(mode):
        raise FragmentIndexError(
            f"fragment index {fragment.index} out of range 0..{fragment_count(mode) - 1} "
            f"for {mode.label} mode"
        )
    expected = pixels_per_fragment(mode)
    if len(fragment.pixels) != expected:
        raise PayloadLengthError(
            f"{mode.label} fragment needs {expected} pixels, got {len(fragment.pixels)}"
        )
    header = bytes(
        (
            (mode << 6) | fragment.frame_number,
            (0x80 if fragment.fan else 0) | fragment.index,
            ambient_to_byte(fragment.ambient),
        )
    )
    return header + pack_pixels([celsius_to_raw(p) for p in fragment.pixels])


def decode_fragment(payload: bytes) -> Fragment:
    """FPort 1 payload -> Fragment; raises a ProtocolError naming what is wrong."""
    if len(payload) < HEADER_BYTES:
        raise PayloadLengthError(
            f"fragment is {len(payload)} bytes; the header alone is {HEADER_BYTES}"
        )
    mode_bits = payload[0] >> 6
    if mode_bits > Mode.FAST:
        raise ReservedModeError(f"byte 0: mode {mode_bits} is reserved (0 slow, 1 fast)")
    mode = Mode(mode_bits)
    expected = fragment_bytes(mode)
    if len(payload) != expected:
        raise PayloadLengthError(
            f"{mode.label} fragment must be {expected} bytes, got {len(payload)}"
        )
    index = payload[1] & 0x1F  # bits 6..5 reserved: ignored on receipt
    if index >= fragment_count(mode):
        raise FragmentIndexError(
            f"byte 1: fragment index {index} out of range 0..{fragment_count(mode) - 1} "
            f"for {mode.label} mode"
        )
    pixels = tuple(raw_to_celsius(r) for r in unpack_pixels(payload[HEADER_BYTES:]))
    return Fragment(
        mode=mode,
        frame_number=payload[0] & 0x3F,
        fan=bool(payload[1] & 0x80),
        index=index,
        ambient=byte_to_ambient(payload[2]),
        pixels=pixels,
    )


# --- FPort 2: node status -----------------------------------------------------------------


def encode_status(status: NodeStatus) -> bytes:
    """NodeStatus -> FPort 2 payload bytes."""
    if not -32768 <= status.threshold <= 32767:
        raise FieldValueError(f"threshold {status.threshold} does not fit 16 bits")
    flags = (
        (0x80 if status.fan_requested else 0)
        | (0x40 if status.fan_running else 0)
        | int(Mode(status.mode))
    )
    return (
        bytes((status.version & 0xFF, flags))
        + (status.threshold.to_bytes(2, "big", signed=True))
        + bytes((ambient_to_byte(status.ambient),))
    )


def decode_status(payload: bytes) -> NodeStatus:
    """FPort 2 payload -> NodeStatus; exactly 5 bytes."""
    if len(payload) != STATUS_BYTES:
        raise PayloadLengthError(f"status must be {STATUS_BYTES} bytes, got {len(payload)}")
    return NodeStatus(
        version=payload[0],
        fan_requested=bool(payload[1] & 0x80),
        fan_running=bool(payload[1] & 0x40),
        mode=Mode(payload[1] & 0x01),
        threshold=int.from_bytes(payload[2:4], "big", signed=True),
        ambient=byte_to_ambient(payload[4]),
    )


# --- FPort 10: settings downlink ----------------------------------------------------------


def check_threshold(threshold: int) -> int:
    """Return the threshold if it is within -40..150 °C, else raise FieldValueError."""
    if not THRESHOLD_MIN_C <= threshold <= THRESHOLD_MAX_C:
        raise FieldValueError(
            f"threshold must be an integer from {THRESHOLD_MIN_C} to {THRESHOLD_MAX_C} °C, "
            f"got {threshold}"
        )
    return threshold


def encode_settings(settings: Settings) -> bytes:
    """Settings -> FPort 10 payload bytes (e.g. fan on, fast, 50 °C -> 81 00 32)."""
    check_threshold(settings.threshold)
    flags = (0x80 if settings.fan else 0) | int(Mode(settings.mode))
    return bytes((flags,)) + settings.threshold.to_bytes(2, "big", signed=True)


def decode_settings(payload: bytes) -> Settings:
    """FPort 10 payload -> Settings; exactly 3 bytes, threshold in -40..150."""
    if len(payload) != SETTINGS_BYTES:
        raise PayloadLengthError(f"settings must be {SETTINGS_BYTES} bytes, got {len(payload)}")
    threshold = check_threshold(int.from_bytes(payload[1:3], "big", signed=True))
    return Settings(fan=bool(payload[0] & 0x80), mode=Mode(payload[0] & 0x01), threshold=threshold)


# --- uplink dispatch and whole frames -----------------------------------------------------


def decode_uplink(f_port: int, payload: bytes) -> Fragment | NodeStatus:
    """Decode an uplink by its FPort: 1 fragment, 2 status; other ports raise."""
    if f_port == FRAGMENT_PORT:
        return decode_fragment(payload)
    if f_port == STATUS_PORT:
        return decode_status(payload)
    raise UnknownPortError(f"FPort {f_port} is not part of the protocol (1 fragment, 2 status)")


def block_maxima(grid: Sequence[Sequence[float | None]]) -> Grid:
    """Fast mode's 6 x 8 grid: the maximum of each 4 x 4 block, ignoring no-data pixels."""
    check_grid(grid, ROWS, COLS)
    out: list[tuple[float | None, ...]] = []
    for br in range(FAST_ROWS):
        row: list[float | None] = []
        for bc in range(FAST_COLS):
            values = [
                v
                for r in range(br * BLOCK, br * BLOCK + BLOCK)
                for v in grid[r][bc * BLOCK : bc * BLOCK + BLOCK]
                if v is not None and not math.isnan(v)
            ]
            row.append(max(values) if values else None)
        out.append(tuple(row))
    return tuple(out)


def check_grid(grid: Sequence[Sequence[float | None]], rows: int, cols: int) -> None:
    """Raise FieldValueError unless the grid is rows x cols."""
    if len(grid) != rows or any(len(row) != cols for row in grid):
        raise FieldValueError(f"grid must be {rows} x {cols}")


def fragment_frame(
    grid: Sequence[Sequence[float | None]],
    mode: Mode,
    frame_number: int,
    *,
    fan: bool,
    ambient: float | None,
) -> list[Fragment]:
    """Split a full 24 x 32 frame into the fragments of `mode` (fast: of its block maxima)."""
    sent = block_maxima(grid) if mode is Mode.FAST else tuple(tuple(r) for r in grid)
    if mode is Mode.SLOW:
        check_grid(sent, ROWS, COLS)
    ambient_whole = byte_to_ambient(ambient_to_byte(ambient))
    per = rows_per_fragment(mode)
    fragments = []
    for index in range(fragment_count(mode)):
        pixels = tuple(
            raw_to_celsius(celsius_to_raw(v))
            for row in sent[index * per : index * per + per]
            for v in row
        )
        fragments.append(
            Fragment(
                mode=mode,
                frame_number=frame_number % FRAME_NUMBER_MODULUS,
                fan=fan,
                index=index,
                ambient=ambient_whole,
                pixels=pixels,
            )
        )
    return fragments
