"""Compressed mode end to end (docs/protocol.md): simulator → Mosquitto → bridge → MariaDB →
Socket.IO, and a settings change to compressed at 0.5 °C applied by a node in fast mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from node_firmware.protocol import Mode
from node_firmware.simulator import Simulator
from tests.test_end_to_end import Pushed, running_system
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def compressed_system(mqtt_broker: Any, mysql_url: str) -> Iterator[tuple[Flask, Simulator]]:
    with running_system(
        mqtt_broker,
        mysql_url,
        "e2e-compressed-bridge",
        mode="compressed",
        step=0.2,
        seed=11,
        device_prefix="cnode",
    ) as running:
        yield running


def test_compressed_frames_reach_a_socket_client_whole(
    compressed_system: tuple[Flask, Simulator],
) -> None:
    app, simulator = compressed_system
    pushed = Pushed(app)

    def frames_of(device: str) -> list[dict[str, Any]]:
        return [frame for frame in pushed.events("frame", device) if frame["complete"]]

    for device in ("cnode1", "cnode2"):
        frame = wait_for(lambda d=device: frames_of(d), what=f"a compressed frame of {device}")[0]
        assert frame["mode"] == "compressed" and frame["coverage"] == 1.0
        assert frame["step"] == 0.2, "the frame says how precise its values are"
        assert frame["image"].startswith(b"\x89PNG")
        stored = app.test_client().get(f"/api/frames/{frame['frame_id']}").get_json()
        assert stored["step"] == 0.2
        grid = stored["grid"]
        assert len(grid) == 24 and all(len(row) == 32 for row in grid)
        values = [v for row in grid for v in row if v is not None]
        assert len(values) >= 767  # at most one dead pixel
        # Step 0.2 °C: every value is a multiple of 0.2 °C.
        assert all(abs(v * 5 - round(v * 5)) < 1e-6 for v in values)
        assert min(values) > 15 and max(values) < 90

    http = app.test_client()
    answer = http.post("/api/devices/cnode1/settings", json={"mode": "compressed", "step": 0.5})
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["settings"]["step"] == 0.5

    def statuses() -> list[str]:
        return [event["status"] for event in pushed.events("downlink", "cnode1")]

    wait_for(lambda: "applied" in statuses(), what="the compressed settings to be applied")
    node = simulator.nodes["cnode1"]
    assert node.settings.mode is Mode.COMPRESSED and node.settings.step == 0.5
    device = app.test_client().get("/api/devices/cnode1").get_json()
    assert device["mode"] == "compressed" and device["step"] == 0.5
    assert device["pending_downlink"] is None
