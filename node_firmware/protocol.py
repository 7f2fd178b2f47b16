"""Node <-> bridge payload codec, PROTOCOL.md version 1: bytes in, dataclasses out, no I/O.

One module for both sides: the firmware and the simulator encode with it, the bridge decodes
with it. Every violation raises a subclass of `ProtocolError` whose message names the byte or
field that was wrong. Compressed mode (mode 2) is this project's extension of PROTOCOL.md,
specified byte for byte in docs/protocol.md.
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
SETTINGS_COMPRESSED_BYTES = 4  # docs/protocol.md: byte 3 requests compressed mode and its step

NO_DATA_RAW = -2048  # 0x800: "no data for this pixel"
PIXEL_RAW_MIN = -2047  # -204.7 degC; values are clamped to this range
PIXEL_RAW_MAX = 2047  # 204.7 degC
AMBIENT_NO_READING = -128  # 0x80
THRESHOLD_MIN_C = -40  # FPort 10: "valid range -40..150"
THRESHOLD_MAX_C = 150

Grid = tuple[tuple[float | None, ...], ...]

# docs/protocol.md "Compressed mode": the quantisation steps a 2-bit code selects, in °C/10.
STEPS_TENTHS = (1, 2, 5, 10)
STEPS_C = tuple(t / 10 for t in STEPS_TENTHS)  # 0.1 (lossless), 0.2, 0.5, 1.0
LOSSLESS_STEP_C = STEPS_C[0]
FRAME_PIXELS = ROWS * COLS  # 768
COMPRESSED_HEADER_BYTES = 6
COMPRESSED_DATA_BITS = (MAX_PAYLOAD_BYTES - COMPRESSED_HEADER_BYTES) * 8  # 360
RICE_K_MAX = 7  # 3 bits
RICE_ESCAPE_PREFIX = 3  # this many 1-bits (no terminating 0): an escape code follows
ESCAPE_ORDER_EXTRA = 2  # the escape is Exp-Golomb coded with order k + 2
ESCAPE_ZEROS_MAX = 16  # longest Exp-Golomb prefix a valid escape has
RAW_BITS = 12
MAX_COMPRESSED_FRAGMENTS = 24  # more than slow mode's 24 uplinks: send the frame slow instead
FRAGMENT_INDEX_MAX = 31  # byte 1 bits 4..0


def step_code(step: float) -> int:
    """The 2-bit code of a quantisation step (0.1 -> 0, 0.2 -> 1, 0.5 -> 2, 1.0 -> 3)."""
    for code, allowed in enumerate(STEPS_C):
        if abs(step - allowed) < 1e-9:
            return code
    raise FieldValueError(f"step must be one of 0.1, 0.2, 0.5, 1.0 °C, got {step!r}")


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


class CompressedDataError(ProtocolError):
    """A compressed fragment whose bit stream is truncated, corrupt or has bytes left over."""


class IncompressibleFrameError(ProtocolError):
    """A frame that would need more compressed fragments than slow mode sends (fall back)."""


class Mode(enum.IntEnum):
    """Transmission mode (fragment byte 0 bits 7..6)."""

    SLOW = 0
    FAST = 1
    COMPRESSED = 2  # docs/protocol.md: the full frame, quantised, predicted, Rice-coded

    @property
    def label(self) -> str:
        """The name used in JSON, SQL and the UI: "slow", "fast" or "compressed"."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Mode:
        """Parse "slow" / "fast" / "compressed"."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise FieldValueError(
                f"mode must be 'slow', 'fast' or 'compressed', not {label!r}"
            ) from None


MODE_LABELS = tuple(m.label for m in Mode)


def fragment_count(mode: Mode) -> int:
    """How many fragments a frame of this mode has (slow 24, fast 2; compressed varies: 0)."""
    if mode is Mode.COMPRESSED:
        return 0
    return ROWS if mode is Mode.SLOW else FAST_ROWS // 3


def grid_shape(mode: Mode) -> tuple[int, int]:
    """(rows, columns) of the grid a mode sends: 24 x 32 (slow, compressed) or 6 x 8 (fast)."""
    return (FAST_ROWS, FAST_COLS) if mode is Mode.FAST else (ROWS, COLS)


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
    # Compressed mode only (docs/protocol.md); slow and fast fragments keep the defaults.
    start: int = 0  # index (row-major, 0..767) of the first pixel carried
    step: float = LOSSLESS_STEP_C  # quantisation step, °C: one of STEPS_C
    last: bool = False  # carries the frame's last pixel (767)
    rice_k: int | None = None  # Golomb-Rice parameter; None: the encoder picks the best

    def rows(self) -> tuple[int, ...]:
        """The grid rows this fragment carries (slow: row i; fast: rows 3i..3i+2; compressed:
        every row it has a pixel of)."""
        if self.mode is Mode.COMPRESSED:
            if not self.pixels:
                return ()
            return tuple(range(self.start // COLS, (self.start + len(self.pixels) - 1) // COLS + 1))
        per = rows_per_fragment(self.mode)
        return tuple(range(self.index * per, self.index * per + per))

    def pixel_range(self) -> range:
        """Row-major indexes (0..767 of the full frame, 0..47 in fast mode) of its pixels."""
        if self.mode is Mode.COMPRESSED:
            return range(self.start, self.start + len(self.pixels))
        n = pixels_per_fragment(self.mode)
        return range(self.index * n, self.index * n + n)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One FPort 2 uplink: the node's settings and state."""

    version: int
    fan_requested: bool
    fan_running: bool
    mode: Mode
    threshold: int
    ambient: int | None
    step: float = LOSSLESS_STEP_C  # compressed mode's step (byte 1 bits 3..2); else 0.1

    def __post_init__(self) -> None:
        _normalise_step(self)


@dataclass(frozen=True, slots=True)
class Settings:
    """The FPort 10 downlink: what the user wants the node to do."""

    fan: bool
    mode: Mode
    threshold: int
    step: float = LOSSLESS_STEP_C  # compressed mode's quantisation step, °C; else 0.1

    def __post_init__(self) -> None:
        _normalise_step(self)


def _normalise_step(obj: NodeStatus | Settings) -> None:
    """A step is one of STEPS_C; only compressed mode has one (others read as 0.1)."""
    step_code(obj.step)
    if obj.mode != Mode.COMPRESSED and obj.step != LOSSLESS_STEP_C:
        object.__setattr__(obj, "step", LOSSLESS_STEP_C)


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
    if mode is Mode.COMPRESSED:
        return encode_compressed_fragment(fragment)
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
    if mode_bits > Mode.COMPRESSED:
        raise ReservedModeError(
            f"byte 0: mode {mode_bits} is reserved (0 slow, 1 fast, 2 compressed)"
        )
    mode = Mode(mode_bits)
    if mode is Mode.COMPRESSED:
        return decode_compressed_fragment(payload)
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
    flags = (0x80 if status.fan_requested else 0) | (0x40 if status.fan_running else 0)
    if status.mode is Mode.COMPRESSED:
        # docs/protocol.md: byte 1 bit 1 = compressed, bits 3..2 its step; bit 0 stays 0.
        flags |= 0x02 | (step_code(status.step) << 2)
    else:
        flags |= int(Mode(status.mode))
    return (
        bytes((status.version & 0xFF, flags))
        + (status.threshold.to_bytes(2, "big", signed=True))
        + bytes((ambient_to_byte(status.ambient),))
    )


def decode_status(payload: bytes) -> NodeStatus:
    """FPort 2 payload -> NodeStatus; exactly 5 bytes."""
    if len(payload) != STATUS_BYTES:
        raise PayloadLengthError(f"status must be {STATUS_BYTES} bytes, got {len(payload)}")
    compressed = bool(payload[1] & 0x02)
    return NodeStatus(
        version=payload[0],
        fan_requested=bool(payload[1] & 0x80),
        fan_running=bool(payload[1] & 0x40),
        mode=Mode.COMPRESSED if compressed else Mode(payload[1] & 0x01),
        threshold=int.from_bytes(payload[2:4], "big", signed=True),
        ambient=byte_to_ambient(payload[4]),
        step=STEPS_C[(payload[1] >> 2) & 0x03] if compressed else LOSSLESS_STEP_C,
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
    """Settings -> FPort 10 payload bytes (e.g. fan on, fast, 50 °C -> 81 00 32).

    Slow and fast stay the 3 bytes of PROTOCOL.md; compressed adds byte 3 (docs/protocol.md).
    """
    check_threshold(settings.threshold)
    mode = Mode(settings.mode)
    flags = (0x80 if settings.fan else 0) | (int(mode) if mode is not Mode.COMPRESSED else 0)
    data = bytes((flags,)) + settings.threshold.to_bytes(2, "big", signed=True)
    if mode is Mode.COMPRESSED:
        data += bytes((0x80 | step_code(settings.step),))
    return data


def decode_settings(payload: bytes) -> Settings:
    """FPort 10 payload -> Settings; 3 bytes (slow/fast) or 4 (compressed), threshold -40..150."""
    if len(payload) not in (SETTINGS_BYTES, SETTINGS_COMPRESSED_BYTES):
        raise PayloadLengthError(
            f"settings must be {SETTINGS_BYTES} bytes (slow, fast) or "
            f"{SETTINGS_COMPRESSED_BYTES} (compressed), got {len(payload)}"
        )
    threshold = check_threshold(int.from_bytes(payload[1:3], "big", signed=True))
    fan = bool(payload[0] & 0x80)
    if len(payload) == SETTINGS_COMPRESSED_BYTES:
        if not payload[3] & 0x80:
            raise FieldValueError(
                f"byte 3: 0x{payload[3]:02X} lacks the compressed bit 7 (a 4-byte settings "
                "downlink requests compressed mode)"
            )
        return Settings(fan, Mode.COMPRESSED, threshold, STEPS_C[payload[3] & 0x03])
    return Settings(fan=fan, mode=Mode(payload[0] & 0x01), threshold=threshold)


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
    step: float = LOSSLESS_STEP_C,
) -> list[Fragment]:
    """Split a full 24 x 32 frame into the fragments of `mode` (fast: of its block maxima).

    Compressed mode raises IncompressibleFrameError when the frame needs more than
    MAX_COMPRESSED_FRAGMENTS; the node then sends it in slow mode.
    """
    if mode is Mode.COMPRESSED:
        return compress_frame(grid, frame_number, step=step, fan=fan, ambient=ambient)
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


# --- compressed mode (docs/protocol.md "Compressed mode") ---------------------------------
#
# Pixels are quantised to a multiple q of the step, predicted from their already-sent
# neighbours *within the same fragment* (so every fragment decodes on its own), and the
# prediction error is Golomb-Rice coded with the fragment's parameter k; an escape carries a
# large error (or no data) as an Exp-Golomb code. Bits are written most significant first,
# the last byte padded with 0-bits.


def step_tenths(step: float) -> int:
    """The step in °C/10 (1, 2, 5 or 10)."""
    return STEPS_TENTHS[step_code(step)]


def quantise(value: float | None, step: float) -> int | None:
    """°C -> the nearest multiple q of the step (°C = q * step), clamped; None/NaN -> None.

    At 0.1 °C this is exactly `celsius_to_raw`, so step 0.1 is lossless at the sensor's
    resolution.
    """
    tenths = step_tenths(step)
    if value is None or math.isnan(value):
        return None
    if tenths == 1:
        return celsius_to_raw(value)
    low, high = q_range(tenths)
    if math.isinf(value):
        return high if value > 0 else low
    return min(max(math.floor(value * 10 / tenths + 0.5), low), high)


def dequantise(q: int | None, step: float) -> float | None:
    """q -> °C with one decimal (q * step); None stays None."""
    return None if q is None else q * step_tenths(step) / 10


def q_range(tenths: int) -> tuple[int, int]:
    """The q that -204.7 and 204.7 °C quantise to (round half up) at a step of `tenths`."""
    return (-2 * PIXEL_RAW_MAX + tenths) // (2 * tenths), (2 * PIXEL_RAW_MAX + tenths) // (
        2 * tenths
    )


def _predict(values: list[int], p: int, start: int) -> int:
    """The prediction of pixel p from pixels start..p-1 (docs/protocol.md "Prediction")."""
    left = p % COLS > 0
    up = p - COLS
    if up >= start:
        b = values[up]
        if not left:
            return b
        a = values[p - 1]
        if up - 1 < start:
            return (a + b) >> 1
        c = values[up - 1]
        # LOCO-I's median edge detector.
        if c >= max(a, b):
            return min(a, b)
        if c <= min(a, b):
            return max(a, b)
        return a + b - c
    # The fragment's first row: the previous pixel (the left one, or the end of the row above).
    return values[p - 1]


def _zigzag(error: int) -> int:
    return error << 1 if error >= 0 else (-error << 1) - 1


def _unzigzag(m: int) -> int:
    return m >> 1 if not m & 1 else -((m + 1) >> 1)


def _code(m: int | None, k: int) -> tuple[int, int]:
    """(bits, length) of one zigzagged error m (None = no data) with Rice parameter k.

    u = m >> k below RICE_ESCAPE_PREFIX: u 1-bits, a 0-bit, the k low bits of m. Otherwise the
    escape: RICE_ESCAPE_PREFIX 1-bits, then v = 0 (no data) or m - (RICE_ESCAPE_PREFIX << k) + 1
    as Exp-Golomb of order j = k + 2: w = v + 2**j written as (len(w) - 1 - j) 0-bits and w.
    """
    if m is not None:
        u = m >> k
        if u < RICE_ESCAPE_PREFIX:
            return ((((1 << u) - 1) << 1) << k) | (m & ((1 << k) - 1)), u + 1 + k
    v = 0 if m is None else m - (RICE_ESCAPE_PREFIX << k) + 1
    j = k + ESCAPE_ORDER_EXTRA
    w = v + (1 << j)
    n = w.bit_length()
    length = RICE_ESCAPE_PREFIX + 2 * n - 1 - j
    return (((1 << RICE_ESCAPE_PREFIX) - 1) << (2 * n - 1 - j)) | w, length


def _code_bits(m: int, k: int) -> int:
    """Length of `_code(m, k)`; m = -1 stands for no data."""
    u = m >> k
    if 0 <= u < RICE_ESCAPE_PREFIX:
        return u + 1 + k
    j = k + ESCAPE_ORDER_EXTRA
    v = 0 if m < 0 else m - (RICE_ESCAPE_PREFIX << k) + 1
    return RICE_ESCAPE_PREFIX + 2 * (v + (1 << j)).bit_length() - 1 - j


def _raw12(q: int | None) -> int:
    return NO_DATA_RAW & 0xFFF if q is None else q & 0xFFF


def _scan(qs: Sequence[int | None], values: list[int], start: int, stop: int) -> list[int | None]:
    """Zigzagged prediction errors of pixels start+1..stop-1 (None = escape), filling `values`
    with what the decoder reconstructs (a no-data pixel reconstructs as its prediction)."""
    first = qs[start]
    values[start] = 0 if first is None else first
    errors: list[int | None] = []
    for p in range(start + 1, stop):
        prediction = _predict(values, p, start)
        q = qs[p]
        if q is None:
            values[p] = prediction
            errors.append(None)
        else:
            values[p] = q
            errors.append(_zigzag(q - prediction))
    return errors


def _encode_bits(
    qs: Sequence[int | None], errors: Sequence[int | None], start: int, k: int
) -> bytes:
    acc = _raw12(qs[start])
    nbits = RAW_BITS
    for m in errors:
        bits, length = _code(m, k)
        acc = (acc << length) | bits
        nbits += length
    pad = -nbits % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big")


def _bits_for(errors: Sequence[int | None], k: int) -> int:
    return RAW_BITS + sum(_code_bits(-1 if m is None else m, k) for m in errors)


def _best_k(errors: Sequence[int | None]) -> int:
    return min(range(RICE_K_MAX + 1), key=lambda k: (_bits_for(errors, k), k))


def _compressed_header(fragment: Fragment, k: int, count: int) -> bytes:
    start = fragment.start
    if not 0 <= fragment.index <= FRAGMENT_INDEX_MAX:
        raise FragmentIndexError(
            f"fragment index {fragment.index} out of range 0..{FRAGMENT_INDEX_MAX} "
            "for compressed mode"
        )
    if not 0 <= k <= RICE_K_MAX:
        raise FieldValueError(f"rice_k must be 0..{RICE_K_MAX}, got {k}")
    if count < 1 or not 0 <= start < FRAME_PIXELS or start + count > FRAME_PIXELS:
        raise FieldValueError(
            f"compressed fragment carries pixels {start}..{start + count - 1}; "
            f"they must lie within 0..{FRAME_PIXELS - 1} (at least one)"
        )
    if fragment.last != (start + count == FRAME_PIXELS):
        raise FieldValueError(
            f"last must be set exactly when the fragment ends at pixel {FRAME_PIXELS - 1}"
        )
    bits = (fragment.last << 23) | (k << 20) | (start << 10) | count
    return bytes(
        (
            (Mode.COMPRESSED << 6) | fragment.frame_number,
            (0x80 if fragment.fan else 0) | (step_code(fragment.step) << 5) | fragment.index,
            ambient_to_byte(fragment.ambient),
        )
    ) + bits.to_bytes(3, "big")


def encode_compressed_fragment(fragment: Fragment) -> bytes:
    """A compressed Fragment -> FPort 1 payload bytes (at most 51)."""
    count = len(fragment.pixels)
    qs: list[int | None] = [None] * FRAME_PIXELS
    for offset, value in enumerate(fragment.pixels):
        if 0 <= fragment.start + offset < FRAME_PIXELS:
            qs[fragment.start + offset] = quantise(value, fragment.step)
    header_k = fragment.rice_k
    # The header validates start and count before the pixels are scanned.
    _compressed_header(fragment, 0 if header_k is None else header_k, count)
    values = [0] * FRAME_PIXELS
    errors = _scan(qs, values, fragment.start, fragment.start + count)
    k = _best_k(errors) if header_k is None else header_k
    payload = _compressed_header(fragment, k, count) + _encode_bits(qs, errors, fragment.start, k)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadLengthError(
            f"compressed fragment of {count} pixels needs {len(payload)} bytes; "
            f"at most {MAX_PAYLOAD_BYTES}"
        )
    return payload


def decode_compressed_fragment(payload: bytes) -> Fragment:
    """FPort 1 payload of mode 2 -> Fragment with the pixels it carries."""
    if not COMPRESSED_HEADER_BYTES <= len(payload) <= MAX_PAYLOAD_BYTES:
        raise PayloadLengthError(
            f"compressed fragment must be {COMPRESSED_HEADER_BYTES}..{MAX_PAYLOAD_BYTES} bytes, "
            f"got {len(payload)}"
        )
    head = int.from_bytes(payload[3:6], "big")
    last = bool(head >> 23)
    k = (head >> 20) & 0x07
    start = (head >> 10) & 0x3FF
    count = head & 0x3FF
    if count == 0 or start >= FRAME_PIXELS or start + count > FRAME_PIXELS:
        raise FieldValueError(
            f"bytes 3..5: start pixel {start} and count {count} must lie within "
            f"0..{FRAME_PIXELS - 1} (count at least 1)"
        )
    if last != (start + count == FRAME_PIXELS):
        raise FieldValueError(
            f"byte 3 bit 7: last is {int(last)} but the pixels end at {start + count - 1}"
        )
    step = STEPS_C[(payload[1] >> 5) & 0x03]
    tenths = step_tenths(step)
    low, high = q_range(tenths)
    data = payload[COMPRESSED_HEADER_BYTES:]
    total = len(data) * 8
    acc = int.from_bytes(data, "big")
    pos = 0  # bits consumed

    def read(n: int, pixel: int) -> int:
        nonlocal pos
        if pos + n > total:
            raise CompressedDataError(
                f"byte {COMPRESSED_HEADER_BYTES + pos // 8}: the bit stream ends inside pixel "
                f"{pixel} ({pixel - start + 1} of {count})"
            )
        pos += n
        return (acc >> (total - pos)) & ((1 << n) - 1)

    def read_raw(pixel: int) -> int | None:
        raw = read(RAW_BITS, pixel)
        if raw == NO_DATA_RAW & 0xFFF:
            return None
        q = raw - 0x1000 if raw & 0x800 else raw
        return check(q, pixel)

    def check(q: int, pixel: int) -> int:
        if not low <= q <= high:
            raise CompressedDataError(
                f"byte {COMPRESSED_HEADER_BYTES + (pos - 1) // 8}: pixel {pixel} decodes to "
                f"{q * tenths / 10:g} °C, outside ±{PIXEL_RAW_MAX / 10} °C"
            )
        return q

    values = [0] * FRAME_PIXELS
    first = read_raw(start)
    values[start] = 0 if first is None else first
    pixels: list[float | None] = [dequantise(first, step)]
    for p in range(start + 1, start + count):
        prediction = _predict(values, p, start)
        u = 0
        while u < RICE_ESCAPE_PREFIX and read(1, p):
            u += 1
        q: int | None
        if u == RICE_ESCAPE_PREFIX:
            j = k + ESCAPE_ORDER_EXTRA
            zeros = 0
            while not read(1, p):
                zeros += 1
                if zeros > ESCAPE_ZEROS_MAX:
                    raise CompressedDataError(
                        f"byte {COMPRESSED_HEADER_BYTES + (pos - 1) // 8}: pixel {p}'s escape "
                        f"code has more than {ESCAPE_ZEROS_MAX} leading 0-bits"
                    )
            v = ((1 << (zeros + j)) | read(zeros + j, p)) - (1 << j)
            escaped = v - 1 + (RICE_ESCAPE_PREFIX << k)
            q = None if v == 0 else check(prediction + _unzigzag(escaped), p)
        else:
            m = (u << k) | read(k, p)
            q = check(prediction + _unzigzag(m), p)
        values[p] = prediction if q is None else q
        pixels.append(dequantise(q, step))
    if total - pos >= 8:
        raise CompressedDataError(
            f"byte {COMPRESSED_HEADER_BYTES + (pos + 7) // 8}: {(total - pos) // 8} byte(s) "
            f"left over after the last pixel ({start + count - 1})"
        )
    if acc & ((1 << (total - pos)) - 1):
        raise CompressedDataError(
            f"byte {len(payload) - 1}: the padding bits after the last pixel must be 0"
        )
    return Fragment(
        mode=Mode.COMPRESSED,
        frame_number=payload[0] & 0x3F,
        fan=bool(payload[1] & 0x80),
        index=payload[1] & 0x1F,
        ambient=byte_to_ambient(payload[2]),
        pixels=tuple(pixels),
        start=start,
        step=step,
        last=last,
        rice_k=k,
    )


def compress_frame(
    grid: Sequence[Sequence[float | None]],
    frame_number: int,
    *,
    step: float = LOSSLESS_STEP_C,
    fan: bool,
    ambient: float | None,
) -> list[Fragment]:
    """A full 24 x 32 frame -> compressed fragments of at most 51 bytes, each as long as fits.

    Greedy: each fragment starts where the previous ended and takes, over every Rice parameter,
    the most pixels that fit 45 bytes. Raises IncompressibleFrameError beyond 24 fragments.
    """
    check_grid(grid, ROWS, COLS)
    qs = [quantise(v, step) for row in grid for v in row]
    ambient_whole = byte_to_ambient(ambient_to_byte(ambient))
    values = [0] * FRAME_PIXELS
    fragments: list[Fragment] = []
    start = 0
    budget = COMPRESSED_DATA_BITS
    ks = range(RICE_K_MAX + 1)
    while start < FRAME_PIXELS:
        if len(fragments) >= MAX_COMPRESSED_FRAGMENTS:
            raise IncompressibleFrameError(
                f"frame needs more than {MAX_COMPRESSED_FRAGMENTS} compressed fragments "
                f"(pixel {start} of {FRAME_PIXELS} reached): send it in slow mode"
            )
        first = qs[start]
        values[start] = 0 if first is None else first
        bits = [RAW_BITS] * (RICE_K_MAX + 1)
        fits = [1] * (RICE_K_MAX + 1)
        alive = list(ks)
        p = start + 1
        while alive and p < FRAME_PIXELS:
            prediction = _predict(values, p, start)
            q = qs[p]
            m = -1
            if q is None:
                values[p] = prediction
            else:
                values[p] = q
                m = _zigzag(q - prediction)
            still = []
            for k in alive:
                total = bits[k] + _code_bits(m, k)
                if total <= budget:
                    bits[k] = total
                    fits[k] += 1
                    still.append(k)
            alive = still
            p += 1
        k = max(ks, key=lambda j: (fits[j], -bits[j], -j))
        count = fits[k]
        fragments.append(
            Fragment(
                mode=Mode.COMPRESSED,
                frame_number=frame_number % FRAME_NUMBER_MODULUS,
                fan=fan,
                index=len(fragments),
                ambient=ambient_whole,
                pixels=tuple(dequantise(q, step) for q in qs[start : start + count]),
                start=start,
                step=step,
                last=start + count == FRAME_PIXELS,
                rice_k=k,
            )
        )
        start += count
    return fragments


def decompress_fragments(fragments: Sequence[Fragment]) -> tuple[Grid, frozenset[int]]:
    """The 24 x 32 grid the given compressed fragments carry (None elsewhere), and the set of
    pixel indexes they covered."""
    flat: list[float | None] = [None] * FRAME_PIXELS
    covered: set[int] = set()
    for fragment in fragments:
        for offset, value in enumerate(fragment.pixels):
            flat[fragment.start + offset] = value
        covered.update(fragment.pixel_range())
    grid = tuple(tuple(flat[r * COLS : (r + 1) * COLS]) for r in range(ROWS))
    return grid, frozenset(covered)
