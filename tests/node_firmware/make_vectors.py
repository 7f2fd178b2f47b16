"""Generate tests/node_firmware/vectors.json, the golden vectors, from the Python codec.

    .venv/bin/python -m tests.node_firmware.make_vectors

The same file is read by test_vectors.py (the Python codec) and ttn_formatter.test.js (the TTN
payload formatter), so both sides are held to PROTOCOL.md byte for byte. `decoded` is the
formatter's `data`: the protocol's fields with fan "on"/"off", mode "slow"/"fast", °C numbers
and null for no data. Entries marked "warns" decode, but the formatter also warns (reserved bits
set, an unknown protocol version); the Python codec ignores what the protocol says to ignore.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from node_firmware import protocol
from node_firmware.protocol import (
    COLS,
    ROWS,
    Fragment,
    Mode,
    NodeStatus,
    ProtocolError,
    Settings,
)

VECTORS_PATH = Path(__file__).with_name("vectors.json")
# docs/protocol.md's worked example: 25.0, 25.5, no data, 31.0 at step 0.5, k = 0.
WORKED_EXAMPLE_HEX = "87C018000004032DE730"


def on_off(value: bool) -> str:
    return "on" if value else "off"


def decoded_json(decoded: Fragment | NodeStatus) -> dict[str, Any]:
    """The formatter's `data` for a decoded uplink."""
    if isinstance(decoded, Fragment) and decoded.mode is Mode.COMPRESSED:
        return {
            "type": "fragment",
            "mode": "compressed",
            "frame_number": decoded.frame_number,
            "fan": on_off(decoded.fan),
            "index": decoded.index,
            "ambient": decoded.ambient,
            "last": decoded.last,
            "step": decoded.step,
            "rice_k": decoded.rice_k,
            "start": decoded.start,
            "rows": list(decoded.rows()),
            "pixels": list(decoded.pixels),
        }
    if isinstance(decoded, Fragment):
        return {
            "type": "fragment",
            "mode": Mode(decoded.mode).label,
            "frame_number": decoded.frame_number,
            "fan": on_off(decoded.fan),
            "index": decoded.index,
            "ambient": decoded.ambient,
            "rows": list(decoded.rows()),
            "pixels": list(decoded.pixels),
        }
    status = {
        "type": "status",
        "version": decoded.version,
        "fan_requested": on_off(decoded.fan_requested),
        "fan_running": on_off(decoded.fan_running),
        "mode": Mode(decoded.mode).label,
        "threshold": decoded.threshold,
        "ambient": decoded.ambient,
    }
    if decoded.mode is Mode.COMPRESSED:
        status["step"] = decoded.step
    return status


def settings_json(settings: Settings) -> dict[str, Any]:
    """The formatter's downlink `data`."""
    data: dict[str, Any] = {
        "fan": on_off(settings.fan),
        "mode": Mode(settings.mode).label,
        "threshold": settings.threshold,
    }
    if settings.mode is Mode.COMPRESSED:
        data["step"] = settings.step
    return data


def error_kind(f_port: int, payload: bytes) -> str:
    """The ProtocolError subclass decoding raises (the generator insists that it raises)."""
    try:
        protocol.decode_uplink(f_port, payload)
    except ProtocolError as exc:
        return type(exc).__name__
    raise AssertionError(f"FPort {f_port} {payload.hex()} decoded; it should not")


def settings_error_kind(payload: bytes) -> str:
    try:
        protocol.decode_settings(payload)
    except ProtocolError as exc:
        return type(exc).__name__
    raise AssertionError(f"settings {payload.hex()} decoded; it should not")


def sample_grid() -> list[list[float | None]]:
    """A deterministic 24 x 32 frame: a gradient, a hot spot, out-of-range and dead pixels."""
    grid: list[list[float | None]] = [
        [round(20.0 + 0.37 * r + 0.21 * c + ((r * 7 + c * 3) % 5) * 0.1, 2) for c in range(COLS)]
        for r in range(ROWS)
    ]
    grid[10][14] = 63.46  # the hot spot
    grid[10][15] = 58.04
    grid[0][0] = 250.0  # clamps to 204.7
    grid[0][1] = -300.0  # clamps to -204.7
    grid[3][31] = None  # a dead pixel
    for r in range(20, 24):  # one 4 x 4 block without any reading: no data in fast mode too
        for c in range(4, 8):
            grid[r][c] = None
    grid[23][31] = -12.5
    return grid


def uplink_vector(name: str, f_port: int, payload: bytes, warns: bool = False) -> dict[str, Any]:
    decoded = protocol.decode_uplink(f_port, payload)
    vector: dict[str, Any] = {
        "name": name,
        "f_port": f_port,
        "hex": payload.hex().upper(),
        "decoded": decoded_json(decoded),
    }
    if warns:
        vector["warns"] = True
    return vector


def build_vectors() -> dict[str, Any]:
    """Every vector, computed from the codec (deterministic)."""
    uplinks: list[dict[str, Any]] = []

    # PROTOCOL.md: (25.0 °C, -12.5 °C) packs to 0F AF 83 — the first pixel pair of this row.
    pair_row = (25.0, -12.5, *[21.0 + 0.5 * i for i in range(30)])
    example = Fragment(
        mode=Mode.SLOW, frame_number=5, fan=False, index=0, ambient=24, pixels=pair_row
    )
    payload = protocol.encode_fragment(example)
    assert payload[3:6] == bytes.fromhex("0FAF83")
    uplinks.append(
        uplink_vector("slow fragment whose first pixel pair is PROTOCOL.md's 0F AF 83", 1, payload)
    )

    grid = sample_grid()
    slow = protocol.fragment_frame(grid, Mode.SLOW, 63, fan=True, ambient=23.6)
    uplinks.append(
        uplink_vector(
            "slow row 0 with clamped pixels (204.7, -204.7), fan on, frame 63",
            1,
            protocol.encode_fragment(slow[0]),
        )
    )
    uplinks.append(
        uplink_vector("slow row 3 with a no-data pixel", 1, protocol.encode_fragment(slow[3]))
    )
    uplinks.append(
        uplink_vector("slow row 10 with the hot spot", 1, protocol.encode_fragment(slow[10]))
    )
    uplinks.append(
        uplink_vector(
            "slow row 23 (last index), no-data pixels and -12.5",
            1,
            protocol.encode_fragment(slow[23]),
        )
    )
    no_ambient = protocol.fragment_frame(grid, Mode.SLOW, 0, fan=False, ambient=None)
    uplinks.append(
        uplink_vector(
            "slow row 22 without an ambient reading (0x80)",
            1,
            protocol.encode_fragment(no_ambient[22]),
        )
    )
    cold = protocol.fragment_frame(grid, Mode.SLOW, 17, fan=False, ambient=-12.0)
    uplinks.append(
        uplink_vector("slow row 1 with a negative ambient", 1, protocol.encode_fragment(cold[1]))
    )
    fast = protocol.fragment_frame(grid, Mode.FAST, 42, fan=True, ambient=25.0)
    uplinks.append(
        uplink_vector(
            "fast fragment 0: block maxima of rows 0-11, clamped",
            1,
            protocol.encode_fragment(fast[0]),
        )
    )
    uplinks.append(
        uplink_vector(
            "fast fragment 1: block maxima of rows 12-23, a no-data block",
            1,
            protocol.encode_fragment(fast[1]),
        )
    )
    # docs/protocol.md "Worked example": four pixels of row 0 at step 0.5, by hand.
    worked = Fragment(
        mode=Mode.COMPRESSED,
        frame_number=7,
        fan=True,
        index=0,
        ambient=24,
        pixels=(25.0, 25.5, None, 31.0),
        start=0,
        step=0.5,
        rice_k=0,
    )
    worked_payload = protocol.encode_fragment(worked)
    assert worked_payload.hex().upper() == WORKED_EXAMPLE_HEX, worked_payload.hex().upper()
    uplinks.append(
        uplink_vector("compressed: docs/protocol.md's worked example", 1, worked_payload)
    )
    for step in protocol.STEPS_C:
        frags = protocol.compress_frame(grid, 12, step=step, fan=False, ambient=24.2)
        picks = [0, len(frags) // 2, len(frags) - 1] if step in (0.1, 0.5) else [1]
        for i in picks:
            where = "first" if i == 0 else "last" if i == len(frags) - 1 else "middle"
            uplinks.append(
                uplink_vector(
                    f"compressed sample grid at step {step} °C: {where} fragment {i} "
                    f"of {len(frags)}",
                    1,
                    protocol.encode_fragment(frags[i]),
                )
            )
    reserved = bytearray(protocol.encode_fragment(slow[3]))
    reserved[1] |= 0x60  # bits 6..5 reserved: "ignored on receipt"
    uplinks.append(
        uplink_vector(
            "slow fragment with byte 1's reserved bits set", 1, bytes(reserved), warns=True
        )
    )

    statuses = [
        (
            "status after boot: slow, fan off, 50 °C, ambient 24",
            NodeStatus(1, False, False, Mode.SLOW, 50, 24),
        ),
        (
            "status: fan requested and running, fast, 45 °C, no ambient",
            NodeStatus(1, True, True, Mode.FAST, 45, None),
        ),
        (
            "status: fan running by the threshold rule, slow, -5 °C, ambient -3",
            NodeStatus(1, False, True, Mode.SLOW, -5, -3),
        ),
        ("status: threshold 150, fast", NodeStatus(1, False, False, Mode.FAST, 150, 22)),
        (
            "status: compressed at 0.1 °C (lossless), fan off, 50 °C",
            NodeStatus(1, False, False, Mode.COMPRESSED, 50, 24, 0.1),
        ),
        (
            "status: compressed at 0.5 °C, fan running, 45 °C",
            NodeStatus(1, False, True, Mode.COMPRESSED, 45, 23, 0.5),
        ),
        (
            "status: compressed at 1.0 °C, no ambient",
            NodeStatus(1, True, True, Mode.COMPRESSED, 60, None, 1.0),
        ),
    ]
    for name, status in statuses:
        uplinks.append(uplink_vector(name, 2, protocol.encode_status(status)))
    uplinks.append(
        uplink_vector(
            "status of an unknown protocol version 2", 2, bytes.fromhex("0200003219"), warns=True
        )
    )
    uplinks.append(
        uplink_vector("status with reserved bits set", 2, bytes.fromhex("0130003219"), warns=True)
    )

    slow_ok = protocol.encode_fragment(slow[3])
    fast_ok = protocol.encode_fragment(fast[0])
    comp_ok = protocol.encode_fragment(protocol.compress_frame(grid, 3, fan=False, ambient=20)[0])
    invalid: list[tuple[str, int, bytes]] = [
        ("empty fragment", 1, b""),
        ("fragment shorter than its header", 1, bytes.fromhex("0581")),
        ("slow fragment one byte short (50)", 1, slow_ok[:-1]),
        ("slow fragment one byte long (52)", 1, slow_ok + b"\x00"),
        ("fast fragment with a slow fragment's length (51)", 1, fast_ok + b"\x00" * 12),
        ("fast fragment one byte short (38)", 1, fast_ok[:-1]),
        ("reserved mode 3", 1, bytes([0xC0 | 5]) + slow_ok[1:]),
        ("compressed fragment of 5 bytes (header is 6)", 1, worked_payload[:5]),
        ("compressed fragment of 52 bytes", 1, comp_ok + bytes(52 - len(comp_ok))),
        ("compressed fragment carrying 0 pixels", 1, comp_ok[:3] + bytes(3) + comp_ok[6:]),
        (
            "compressed fragment past pixel 767",
            1,
            comp_ok[:3] + ((767 << 10) | 2).to_bytes(3, "big") + comp_ok[6:],
        ),
        (
            "compressed fragment flagged last that ends early",
            1,
            bytes([comp_ok[0], comp_ok[1], comp_ok[2], comp_ok[3] | 0x80]) + comp_ok[4:],
        ),
        ("compressed fragment truncated by one byte", 1, comp_ok[:-1]),
        ("compressed fragment with a byte left over", 1, worked_payload + b"\x00"),
        (
            "compressed fragment with padding bits set",
            1,
            worked_payload[:-1] + bytes([worked_payload[-1] | 0x01]),
        ),
        ("slow fragment index 24", 1, slow_ok[:1] + bytes([24]) + slow_ok[2:]),
        ("slow fragment index 31", 1, slow_ok[:1] + bytes([0x80 | 31]) + slow_ok[2:]),
        ("fast fragment index 2", 1, fast_ok[:1] + bytes([2]) + fast_ok[2:]),
        ("status of 4 bytes", 2, bytes.fromhex("01000032")),
        ("status of 6 bytes", 2, bytes.fromhex("010000321900")),
        ("empty status", 2, b""),
        ("FPort 3 is not part of the protocol", 3, bytes.fromhex("010203")),
        ("FPort 10 is a downlink port", 10, bytes.fromhex("810032")),
    ]
    invalid_uplinks = [
        {"name": name, "f_port": port, "hex": data.hex().upper(), "error": error_kind(port, data)}
        for name, port, data in invalid
    ]

    settings_cases = [
        ("PROTOCOL.md: fan on, fast, 50 °C", Settings(True, Mode.FAST, 50)),
        ("PROTOCOL.md: fan off, slow, -5 °C", Settings(False, Mode.SLOW, -5)),
        ("lowest threshold -40", Settings(False, Mode.FAST, -40)),
        ("highest threshold 150", Settings(True, Mode.SLOW, 150)),
        ("fan on, slow, 45 °C", Settings(True, Mode.SLOW, 45)),
        ("compressed lossless (0.1 °C), fan off, 50 °C", Settings(False, Mode.COMPRESSED, 50)),
        ("compressed 0.2 °C, fan on, 45 °C", Settings(True, Mode.COMPRESSED, 45, 0.2)),
        ("compressed 0.5 °C, fan off, -5 °C", Settings(False, Mode.COMPRESSED, -5, 0.5)),
        ("compressed 1.0 °C, fan on, 150 °C", Settings(True, Mode.COMPRESSED, 150, 1.0)),
    ]
    downlinks = []
    for name, settings in settings_cases:
        data = protocol.encode_settings(settings)
        assert protocol.decode_settings(data) == settings
        downlinks.append(
            {"name": name, "f_port": 10, "hex": data.hex().upper(), "data": settings_json(settings)}
        )
    assert downlinks[0]["hex"] == "810032" and downlinks[1]["hex"] == "00FFFB"
    reserved_settings = bytes.fromhex("FE0032")  # reserved bits 6..1 set: ignored, warned
    downlinks.append(
        {
            "name": "settings with reserved bits set",
            "f_port": 10,
            "hex": reserved_settings.hex().upper(),
            "data": settings_json(protocol.decode_settings(reserved_settings)),
            "warns": True,
        }
    )

    bad_settings = [
        ("settings of 2 bytes", bytes.fromhex("8100")),
        ("4-byte settings without the compressed bit", bytes.fromhex("81003200")),
        ("settings of 5 bytes", bytes.fromhex("8100328000")),
        ("threshold 151", bytes.fromhex("000097")),
        ("threshold -41", bytes.fromhex("00FFD7")),
        ("threshold 32767", bytes.fromhex("007FFF")),
    ]
    invalid_downlinks = [
        {"name": name, "f_port": 10, "hex": data.hex().upper(), "error": settings_error_kind(data)}
        for name, data in bad_settings
    ]

    invalid_settings = []
    bad_settings_data: list[tuple[str, dict[str, Any]]] = [
        ("threshold 151", {"fan": "on", "mode": "fast", "threshold": 151}),
        ("threshold -41", {"fan": "off", "mode": "slow", "threshold": -41}),
        ("mode turbo", {"fan": "off", "mode": "turbo", "threshold": 50}),
    ]
    for name, settings_data in bad_settings_data:
        try:
            protocol.encode_settings(
                Settings(
                    settings_data["fan"] == "on",
                    Mode.from_label(settings_data["mode"]),
                    settings_data["threshold"],
                )
            )
        except ProtocolError as exc:
            invalid_settings.append(
                {"name": name, "data": settings_data, "error": type(exc).__name__}
            )
        else:
            raise AssertionError(f"{name} encoded; it should not")

    return {
        "about": "Golden vectors of PROTOCOL.md v1, generated from node_firmware/protocol.py by "
        "tests/node_firmware/make_vectors.py; do not edit by hand.",
        "protocol_version": protocol.PROTOCOL_VERSION,
        "pixel_pairs": [
            {
                "celsius": [25.0, -12.5],
                "raw": [protocol.celsius_to_raw(25.0), protocol.celsius_to_raw(-12.5)],
                "hex": protocol.pack_pixels([250, -125]).hex().upper(),
            },
            {
                "celsius": [None, 204.7],
                "raw": [protocol.NO_DATA_RAW, protocol.PIXEL_RAW_MAX],
                "hex": protocol.pack_pixels([protocol.NO_DATA_RAW, 2047]).hex().upper(),
            },
            {
                "celsius": [-204.7, 0.0],
                "raw": [protocol.PIXEL_RAW_MIN, 0],
                "hex": protocol.pack_pixels([protocol.PIXEL_RAW_MIN, 0]).hex().upper(),
            },
        ],
        "uplinks": uplinks,
        "invalid_uplinks": invalid_uplinks,
        "downlinks": downlinks,
        "invalid_downlinks": invalid_downlinks,
        "invalid_settings": invalid_settings,
    }


def render(vectors: dict[str, Any]) -> str:
    """JSON with one vector per line: readable diffs, stable bytes."""
    lines = ["{"]
    keys = list(vectors)
    for n, key in enumerate(keys):
        value = vectors[key]
        end = "," if n < len(keys) - 1 else ""
        if isinstance(value, list):
            lines.append(f"  {json.dumps(key)}: [")
            for m, item in enumerate(value):
                sep = "," if m < len(value) - 1 else ""
                lines.append(f"    {json.dumps(item, ensure_ascii=False)}{sep}")
            lines.append(f"  ]{end}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{end}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    VECTORS_PATH.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
