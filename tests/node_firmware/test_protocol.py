"""The PROTOCOL.md v1 codec: golden vectors from its text, round trips, and every invalid case."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_firmware.protocol import (
    COLS,
    ROWS,
    FieldValueError,
    Fragment,
    FragmentIndexError,
    Mode,
    NodeStatus,
    PayloadLengthError,
    ProtocolError,
    ReservedModeError,
    Settings,
    UnknownPortError,
    block_maxima,
    celsius_to_raw,
    decode_fragment,
    decode_settings,
    decode_status,
    decode_uplink,
    encode_fragment,
    encode_settings,
    encode_status,
    fragment_bytes,
    fragment_count,
    fragment_frame,
    pack_pixels,
    raw_to_celsius,
    unpack_pixels,
)

# --- golden vectors: PROTOCOL.md's own examples -------------------------------------------


def test_pixel_pair_example_packs_to_0f_af_83() -> None:
    assert celsius_to_raw(25.0) == 0x0FA
    assert celsius_to_raw(-12.5) == -125
    assert pack_pixels([250, -125]) == bytes.fromhex("0FAF83")
    assert unpack_pixels(bytes.fromhex("0FAF83")) == [250, -125]


@pytest.mark.parametrize(
    ("settings", "payload"),
    [
        (Settings(fan=True, mode=Mode.FAST, threshold=50), "810032"),
        (Settings(fan=False, mode=Mode.SLOW, threshold=-5), "00FFFB"),
    ],
)
def test_settings_examples(settings: Settings, payload: str) -> None:
    assert encode_settings(settings) == bytes.fromhex(payload)
    assert decode_settings(bytes.fromhex(payload)) == settings


def test_slow_fragment_header_bytes() -> None:
    pixels = (25.0, -12.5) * 16
    f = Fragment(Mode.SLOW, frame_number=5, fan=True, index=23, ambient=-3, pixels=pixels)
    payload = encode_fragment(f)
    assert len(payload) == 51
    assert payload[:3] == bytes((0x05, 0x80 | 23, 0xFD))
    assert payload[3:6] == bytes.fromhex("0FAF83")
    assert decode_fragment(payload) == f


def test_fast_fragment_header_bytes() -> None:
    f = Fragment(Mode.FAST, frame_number=63, fan=False, index=1, ambient=None, pixels=(1.5,) * 24)
    payload = encode_fragment(f)
    assert len(payload) == 39
    assert payload[:3] == bytes((0x40 | 63, 0x01, 0x80))
    assert decode_fragment(payload) == f


def test_status_bytes() -> None:
    status = NodeStatus(
        1, fan_requested=True, fan_running=False, mode=Mode.FAST, threshold=-40, ambient=21
    )
    payload = encode_status(status)
    assert payload == bytes((1, 0x81, 0xFF, 0xD8, 21))
    assert decode_status(payload) == status


def test_no_data_pixel_is_0x800_and_decodes_to_none() -> None:
    assert celsius_to_raw(None) == -2048
    assert pack_pixels([-2048, 0]) == bytes.fromhex("800000")
    assert raw_to_celsius(-2048) is None


def test_values_are_clamped_to_204_7() -> None:
    assert celsius_to_raw(500.0) == 2047
    assert celsius_to_raw(-500.0) == -2047  # never the no-data value
    assert raw_to_celsius(celsius_to_raw(-204.75)) == -204.7


def test_reserved_bits_of_byte_1_are_ignored() -> None:
    f = Fragment(Mode.SLOW, 1, False, 2, 20, (20.0,) * 32)
    payload = bytearray(encode_fragment(f))
    payload[1] |= 0x60
    assert decode_fragment(bytes(payload)) == f


# --- invalid payloads: one exception type, a message that names the problem --------------


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        (b"", PayloadLengthError, "header"),
        (bytes(50), PayloadLengthError, "51 bytes"),
        (bytes([0x40]) + bytes(50), PayloadLengthError, "39 bytes"),
        (bytes([0x80]) + bytes(50), FieldValueError, "count 0"),
        (bytes([0xC0]) + bytes(38), ReservedModeError, "reserved"),
        (bytes([0x00, 24]) + bytes(49), FragmentIndexError, "index 24"),
        (bytes([0x40, 2]) + bytes(37), FragmentIndexError, "index 2"),
    ],
)
def test_invalid_fragments(payload: bytes, error: type[ProtocolError], words: str) -> None:
    with pytest.raises(error, match=words):
        decode_fragment(payload)
    assert issubclass(error, ProtocolError) and issubclass(error, ValueError)


def test_invalid_status_and_settings_and_ports() -> None:
    with pytest.raises(PayloadLengthError, match="5 bytes"):
        decode_status(bytes(4))
    with pytest.raises(PayloadLengthError, match="3 bytes"):
        decode_settings(bytes(5))
    with pytest.raises(FieldValueError, match="-40 to 150"):
        decode_settings(bytes.fromhex("0000FF"))  # 255 °C
    with pytest.raises(FieldValueError, match="-40 to 150"):
        encode_settings(Settings(False, Mode.SLOW, 151))
    with pytest.raises(UnknownPortError, match="FPort 3"):
        decode_uplink(3, b"\x00")
    with pytest.raises(FieldValueError, match="mode"):
        Mode.from_label("turbo")


def test_decode_uplink_dispatches_by_port() -> None:
    status = NodeStatus(1, False, True, Mode.SLOW, 50, None)
    assert decode_uplink(2, encode_status(status)) == status
    f = Fragment(Mode.FAST, 0, True, 0, 30, (None,) * 24)
    assert decode_uplink(1, encode_fragment(f)) == f


# --- whole frames -------------------------------------------------------------------------

temperatures = st.one_of(
    st.none(),
    st.floats(min_value=-300, max_value=300, allow_nan=False),
    st.sampled_from([-204.7, 204.7, -204.8, 0.05, -0.05]),
)
grids = st.lists(st.lists(temperatures, min_size=COLS, max_size=COLS), min_size=ROWS, max_size=ROWS)


def _quantised(v: float | None) -> float | None:
    return raw_to_celsius(celsius_to_raw(v))


@given(grids, st.integers(0, 200), st.booleans(), st.one_of(st.none(), st.integers(-200, 200)))
def test_slow_frame_round_trips(grid, number, fan, ambient) -> None:  # type: ignore[no-untyped-def]
    fragments = fragment_frame(grid, Mode.SLOW, number, fan=fan, ambient=ambient)
    assert len(fragments) == fragment_count(Mode.SLOW) == 24
    rows = []
    for f in fragments:
        payload = encode_fragment(f)
        assert len(payload) == fragment_bytes(Mode.SLOW) <= 51
        decoded = decode_fragment(payload)
        assert decoded == f
        assert decoded.frame_number == number % 64
        assert decoded.fan is fan
        rows.append(decoded.pixels)
    assert rows == [tuple(_quantised(v) for v in row) for row in grid]


@given(grids, st.integers(0, 63))
def test_fast_frame_is_block_maxima(grid, number) -> None:  # type: ignore[no-untyped-def]
    fragments = fragment_frame(grid, Mode.FAST, number, fan=False, ambient=None)
    assert [f.index for f in fragments] == [0, 1]
    decoded = [decode_fragment(encode_fragment(f)) for f in fragments]
    pixels = decoded[0].pixels + decoded[1].pixels
    maxima = block_maxima(grid)
    assert pixels == tuple(_quantised(v) for row in maxima for v in row)
    for br in range(6):
        for bc in range(8):
            block = [
                v
                for r in range(br * 4, br * 4 + 4)
                for v in grid[r][bc * 4 : bc * 4 + 4]
                if v is not None
            ]
            assert maxima[br][bc] == (max(block) if block else None)


@given(
    st.lists(st.integers(-2048, 2047), min_size=0, max_size=64).filter(lambda x: len(x) % 2 == 0)
)
def test_pixel_packing_round_trips(raws: list[int]) -> None:
    packed = pack_pixels(raws)
    assert len(packed) == len(raws) * 3 // 2
    assert unpack_pixels(packed) == raws


@given(st.binary(max_size=60), st.integers(0, 20))
def test_arbitrary_bytes_either_raise_a_protocol_error_or_round_trip(
    data: bytes, port: int
) -> None:
    try:
        decoded = decode_uplink(port, data)
    except ProtocolError:
        return
    if isinstance(decoded, Fragment):
        assert port == 1
        # Bits 6..5 of byte 1 are reserved in slow and fast mode (compressed: the step).
        mask = 0xFF if decoded.mode is Mode.COMPRESSED else 0x9F
        assert encode_fragment(decoded) == data[:1] + bytes([data[1] & mask]) + data[2:]
    else:
        assert port == 2
        # Byte 1: bit 1 set = compressed with its step in bits 3..2 (bit 0 then ignored).
        mask = 0xCE if data[1] & 0x02 else 0xC1
        assert encode_status(decoded) == data[:1] + bytes([data[1] & mask]) + data[2:]


@given(st.booleans(), st.sampled_from(list(Mode)), st.integers(-40, 150))
def test_settings_round_trip(fan: bool, mode: Mode, threshold: int) -> None:
    s = Settings(fan, mode, threshold)
    assert decode_settings(encode_settings(s)) == s
