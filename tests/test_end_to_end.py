"""The demo's pieces end to end on real services: simulator → Mosquitto → bridge → MariaDB →
Socket.IO client, and a settings change all the way to a simulated node and back as `applied`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask

from bridge.config import MqttConfig
from node_firmware.simulator import Simulator
from tests.ttn_messages import APP_ID, TENANT
from tests.waiting import wait_for
from tests.webapp.fixtures import make_config
from webapp import create_app, socketio

pytestmark = pytest.mark.integration


@contextmanager
def running_system(
    broker: Any, mysql_url: str, client_id: str, **simulator_options: Any
) -> Iterator[tuple[Flask, Simulator]]:
    """The demo's pieces on the real broker and MariaDB: webapp with its bridge, and two
    simulated nodes publishing every 50 ms once the bridge has subscribed."""
    config = make_config(mysql_url, frame_timeout_s=600).with_overrides(
        mqtt=MqttConfig(
            host=broker.host, port=broker.port, app_id=APP_ID, tenant=TENANT, client_id=client_id
        )
    )
    app = create_app(config, start_bridge=True)
    app.config["TESTING"] = True
    runtime = app.extensions["thermal"]
    wait_for(runtime.mqtt.connected.is_set, what="the bridge to subscribe")
    simulator = Simulator(
        host=broker.host,
        port=broker.port,
        app_id=APP_ID,
        tenant=TENANT,
        nodes=2,
        interval_s=0.05,
        **simulator_options,
    )
    simulator.start()
    try:
        yield app, simulator
    finally:
        simulator.stop()
        runtime.stop()
        runtime.store.engine.dispose()


class Pushed:
    """A Socket.IO test client subscribed to every device, and what it has received so far."""

    def __init__(self, app: Flask) -> None:
        self.client = socketio.test_client(app)
        self.client.emit("subscribe", {"devices": "*"})
        self.received: list[dict[str, Any]] = []

    def events(self, name: str, device_id: str) -> list[dict[str, Any]]:
        """The payloads of the `name` events about one device, oldest first."""
        self.received.extend(self.client.get_received())
        return [
            r["args"][0]
            for r in self.received
            if r["name"] == name and r["args"][0]["device_id"] == device_id
        ]


@pytest.fixture
def system(mqtt_broker: Any, mysql_url: str) -> Iterator[tuple[Flask, Simulator]]:
    with running_system(mqtt_broker, mysql_url, "e2e-bridge", mode="fast", seed=3) as running:
        yield running


def test_frames_flow_to_a_socket_client_and_settings_reach_the_node(
    system: tuple[Flask, Simulator],
) -> None:
    app, simulator = system
    pushed = Pushed(app)
    for device in ("node1", "node2"):
        frame = wait_for(lambda d=device: pushed.events("frame", d), what=f"a frame of {device}")[0]
        assert frame["mode"] == "fast" and frame["image"].startswith(b"\x89PNG")
    store = app.extensions["thermal"].store
    assert store.frame_count() >= 2

    http = app.test_client()
    answer = http.post("/api/devices/node1/settings", json={"fan": "on", "threshold": 45})
    assert answer.status_code == 202, answer.get_json()

    def statuses() -> list[str]:
        return [event["status"] for event in pushed.events("downlink", "node1")]

    wait_for(lambda: "applied" in statuses(), what="the downlink to be applied")
    seen = statuses()
    assert seen[0] == "queued"
    assert seen.index("sent") < seen.index("acked") < seen.index("applied")
    node = simulator.nodes["node1"]
    assert node.settings.fan is True and node.settings.threshold == 45
    assert node.fan.running
    device = app.test_client().get("/api/devices/node1").get_json()
    assert device["fan_requested"] == "on" and device["threshold"] == 45
    assert device["pending_downlink"] is None
