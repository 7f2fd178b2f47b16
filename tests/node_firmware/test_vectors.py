"""The Python codec against the golden vectors the TTN formatter is tested with too."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node_firmware import protocol
from node_firmware.hardware import settings_from_json
from node_firmware.protocol import Fragment, Mode, NodeStatus, ProtocolError, Settings
from tests.node_firmware.make_vectors import (
    VECTORS_PATH,
    WORKED_EXAMPLE_HEX,
    build_vectors,
    decoded_json,
    render,
)

VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def named(section: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in VECTORS[section]]


def test_vectors_json_is_up_to_date_with_the_codec() -> None:
    expected = render(build_vectors())
    assert VECTORS_PATH.read_text(encoding="utf-8") == expected, (
        "tests/node_firmware/vectors.json is stale: run "
        ".venv/bin/python -m tests.node_firmware.make_vectors"
    )


def test_protocol_md_examples_are_in_the_vectors() -> None:
    assert VECTORS["pixel_pairs"][0] == {
        "celsius": [25.0, -12.5],
        "raw": [250, -125],
        "hex": "0FAF83",
    }
    hexes = {v["hex"] for v in VECTORS["downlinks"]}
    assert {"810032", "00FFFB"} <= hexes
    assert VECTORS["uplinks"][0]["hex"][6:12] == "0FAF83"


@pytest.mark.parametrize("pair", VECTORS["pixel_pairs"], ids=lambda p: p["hex"])
def test_pixel_pairs_pack_and_unpack(pair: dict[str, Any]) -> None:
    assert [protocol.celsius_to_raw(c) for c in pair["celsius"]] == pair["raw"]
    assert protocol.pack_pixels(pair["raw"]).hex().upper() == pair["hex"]
    assert protocol.unpack_pixels(bytes.fromhex(pair["hex"])) == pair["raw"]


@pytest.mark.parametrize("vector", named("uplinks"))
def test_uplink_decodes_to_the_vector(vector: dict[str, Any]) -> None:
    decoded = protocol.decode_uplink(vector["f_port"], bytes.fromhex(vector["hex"]))
    assert decoded_json(decoded) == vector["decoded"]


@pytest.mark.parametrize("vector", [p for p in named("uplinks") if not p.values[0].get("warns")])
def test_uplink_encodes_to_the_vector(vector: dict[str, Any]) -> None:
    d = vector["decoded"]
    if d["type"] == "fragment":
        compressed = {
            key: d[key] for key in ("start", "step", "last", "rice_k") if d["mode"] == "compressed"
        }
        payload = protocol.encode_fragment(
            Fragment(
                mode=Mode.from_label(d["mode"]),
                frame_number=d["frame_number"],
                fan=d["fan"] == "on",
                index=d["index"],
                ambient=d["ambient"],
                pixels=tuple(d["pixels"]),
                **compressed,
            )
        )
    else:
        payload = protocol.encode_status(
            NodeStatus(
                version=d["version"],
                fan_requested=d["fan_requested"] == "on",
                fan_running=d["fan_running"] == "on",
                mode=Mode.from_label(d["mode"]),
                threshold=d["threshold"],
                ambient=d["ambient"],
                step=d.get("step", 0.1),
            )
        )
    assert payload.hex().upper() == vector["hex"]


@pytest.mark.parametrize("vector", named("invalid_uplinks"))
def test_invalid_uplink_raises_the_named_error(vector: dict[str, Any]) -> None:
    error = getattr(protocol, vector["error"])
    assert issubclass(error, ProtocolError)
    with pytest.raises(error):
        protocol.decode_uplink(vector["f_port"], bytes.fromhex(vector["hex"]))


@pytest.mark.parametrize("vector", named("downlinks"))
def test_settings_downlink_matches_the_vector(vector: dict[str, Any]) -> None:
    settings = protocol.decode_settings(bytes.fromhex(vector["hex"]))
    assert settings == settings_from_json(vector["data"])
    if not vector.get("warns"):
        assert protocol.encode_settings(settings).hex().upper() == vector["hex"]


@pytest.mark.parametrize("vector", named("invalid_downlinks"))
def test_invalid_settings_payload_raises_the_named_error(vector: dict[str, Any]) -> None:
    with pytest.raises(getattr(protocol, vector["error"])):
        protocol.decode_settings(bytes.fromhex(vector["hex"]))


@pytest.mark.parametrize("vector", named("invalid_settings"))
def test_invalid_settings_refuse_to_encode(vector: dict[str, Any]) -> None:
    data = vector["data"]
    with pytest.raises(getattr(protocol, vector["error"])):
        protocol.encode_settings(
            Settings(data["fan"] == "on", Mode.from_label(data["mode"]), data["threshold"])
        )


def test_compressed_vectors_cover_every_step_and_the_worked_example() -> None:
    compressed = [v for v in VECTORS["uplinks"] if v["decoded"].get("mode") == "compressed"]
    assert {v["decoded"]["step"] for v in compressed if v["decoded"]["type"] == "fragment"} == {
        0.1,
        0.2,
        0.5,
        1.0,
    }
    assert any(v["hex"] == WORKED_EXAMPLE_HEX for v in compressed)
    assert any(v["decoded"].get("last") for v in compressed)
