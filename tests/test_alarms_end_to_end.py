"""Alarms end to end on real services: TTN uplinks → Mosquitto → bridge → MariaDB → Socket.IO
and REST. A scripted heat-up and cool-down, the demo's scene from a cold start (the flapping of
issue 13), and acknowledgement."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask

from bridge.config import Config, MqttConfig
from node_firmware.protocol import Mode, encode_fragment, fragment_frame
from node_firmware.simulator import Simulator
from tests.bridge.harness import Publisher
from tests.ttn_messages import APP_ID, TENANT, at_seconds, topic, uplink
from tests.waiting import wait_for
from tests.webapp.fixtures import make_config, scene
from webapp import create_app, socketio
from webapp.demo import demo_alarm_rules

pytestmark = pytest.mark.integration

TOKEN = "alarm-test-token"


@contextmanager
def running_bridge(broker: Any, config: Config, client_id: str) -> Iterator[Flask]:
    """The webapp with its bridge on the real broker, subscribed."""
    config = config.with_overrides(
        mqtt=MqttConfig(
            host=broker.host, port=broker.port, app_id=APP_ID, tenant=TENANT, client_id=client_id
        )
    )
    app = create_app(config, start_bridge=True)
    app.config["TESTING"] = True
    runtime = app.extensions["thermal"]
    wait_for(runtime.mqtt.connected.is_set, what="the bridge to subscribe")
    try:
        yield app
    finally:
        runtime.stop()
        runtime.store.engine.dispose()


class Pushed:
    """A Socket.IO client subscribed to every device; the `alarm` events it received."""

    def __init__(self, app: Flask, token: str | None = None) -> None:
        self.client = socketio.test_client(app, auth={"token": token} if token else None)
        assert self.client.is_connected()
        self.client.emit("subscribe", {"devices": "*"})
        self.received: list[dict[str, Any]] = []

    def alarms(self, device_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        self.received.extend(self.client.get_received())
        return [
            r["args"][0]
            for r in self.received
            if r["name"] == "alarm"
            and r["args"][0]["device_id"] == device_id
            and (kind is None or r["args"][0]["kind"] == kind)
        ]


def test_heat_up_and_cool_down_give_one_open_one_escalation_one_clear(
    mqtt_broker: Any, mysql_url: str
) -> None:
    config = make_config(mysql_url, api_tokens=(TOKEN,))
    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    with running_bridge(mqtt_broker, config, "alarm-e2e") as app:
        pushed = Pushed(app, TOKEN)
        http = app.test_client()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # Fast frames (2 uplinks each), 10 s apart. Threshold 50, critical above 60, cleared
        # after two complete frames at or below 48. 49 is inside the band: it resets the count.
        script = [30.0, 55.0, 58.0, 65.0, 63.0, 49.0, 45.0, 49.5, 45.0, 45.0, 44.0]
        f_cnt = 0
        for number, hot in enumerate(script):
            grid = scene(number, hot)
            for fragment in fragment_frame(grid, Mode.FAST, number, fan=False, ambient=23):
                at = at_seconds(10 * number + fragment.index)
                body = uplink("hot1", f_cnt, encode_fragment(fragment), at)
                publisher.publish(topic("hot1"), body)
                f_cnt += 1
        publisher.close()

        def over() -> list[dict[str, Any]]:
            return pushed.alarms("hot1", "over_threshold")

        wait_for(lambda: any(not a["active"] for a in over()), what="the alarm to clear")
        events = over()
        assert [(a["transition"], a["severity"]) for a in events] == [
            ("opened", "warning"),
            ("escalated", "critical"),
            ("cleared", "critical"),
        ]
        assert len({a["alarm_id"] for a in events}) == 1, "one alarm, updated"
        opened, escalated, cleared = events
        assert opened["value"] == 55.0 and opened["limit"] == 50.0
        assert escalated["value"] == 65.0
        assert cleared["cleared_at"] == cleared["at"] and cleared["opened_at"] == opened["at"]
        # Cleared by the 2nd complete frame at or below 48 after the band's 49.5: frame 9.
        assert cleared["cleared_at"].startswith("2026-11-01T12:01:31")

        listed = http.get("/api/alarms?device=hot1&kind=over_threshold", headers=auth).get_json()
        [alarm] = listed["alarms"]
        assert alarm["alarm_id"] == opened["alarm_id"] and not alarm["active"]
        assert alarm["severity"] == "critical" and alarm["cleared_at"] == cleared["cleared_at"]
        assert http.get("/api/alarms?device=hot1&active=true&kind=over_threshold").get_json() == {
            "alarms": []
        }
        # The frames also rose fast (30 -> 55 within a minute): one rate_of_rise alarm.
        assert [a["transition"] for a in pushed.alarms("hot1", "rate_of_rise")][:1] == ["opened"]
        critical = http.get("/api/alarms?device=hot1&severity=critical").get_json()["alarms"]
        assert {a["kind"] for a in critical} == {"over_threshold", "rate_of_rise"}

        # Acknowledge by REST, with a note: pushed, listed, and only once.
        path = f"/api/alarms/{alarm['alarm_id']}/ack"
        assert http.post(path, json={"note": "fan"}).status_code == 401
        answer = http.post(path, json={"note": "fan checked, cell 4 replaced"}, headers=auth)
        assert answer.status_code == 200, answer.get_json()
        acked = answer.get_json()
        assert acked["acked_by"] == "token" and acked["note"] == "fan checked, cell 4 replaced"
        assert acked["acked_at"] is not None
        wait_for(lambda: any(a.get("transition") == "acked" for a in over()), what="ack push")
        again = http.post(path, json={"note": "other"}, headers=auth).get_json()
        assert again == acked, "acking an acked alarm returns it unchanged"
        assert [a.get("transition") for a in over()].count("acked") == 1
        listed = http.get("/api/alarms?device=hot1&kind=over_threshold").get_json()["alarms"]
        assert listed[0]["acked_by"] == "token" and listed[0]["note"].startswith("fan checked")


@contextmanager
def _cold_started_demo(
    broker: Any, mysql_url: str, frames: int
) -> Iterator[tuple[Flask, Simulator, Pushed]]:
    """The demo's three nodes (its seed, scenes and rules), publishing before the bridge
    listens: the first frame of each node is partial, as in `make_demo`'s first seconds."""
    interval_s = 0.03
    simulator = Simulator(
        host=broker.host,
        port=broker.port,
        app_id=APP_ID,
        tenant=TENANT,
        nodes=3,
        interval_s=interval_s,
        mode="slow",
        seed=7,
    )
    simulator.start()
    wait_for(lambda: simulator.published["up"] >= 30, what="uplinks before the bridge listens")
    rules = demo_alarm_rules(interval_s)
    config = make_config(mysql_url, frame_timeout_s=120.0, alarm_rules=rules)
    try:
        with running_bridge(broker, config, "alarm-demo") as app:
            pushed = Pushed(app)
            store = app.extensions["thermal"].store
            wait_for(
                lambda: store.frame_count() >= 3 * frames, timeout_s=120, what=f"{frames} frames"
            )
            yield app, simulator, pushed
    finally:
        simulator.stop()


def test_the_demo_scene_from_a_cold_start_does_not_flap_and_clears_once_the_fan_is_on(
    mqtt_broker: Any, mysql_url: str
) -> None:
    with _cold_started_demo(mqtt_broker, mysql_url, frames=16) as (app, _simulator, pushed):
        store = app.extensions["thermal"].store
        partial = [
            f for d in ("node1", "node2", "node3") for f in store.frames(d) if not f.complete
        ]
        assert partial, "the cold start gave a partial first frame (what used to flap)"

        def by_kind(device: str) -> dict[str, list[str]]:
            seen: dict[str, list[str]] = {}
            for event in pushed.alarms(device):
                seen.setdefault(event["kind"], []).append(event["transition"])
            return seen

        for device in ("node1", "node2", "node3"):
            # Sixteen frames of a fault its automatic fan holds near the threshold: each alarm
            # opens once and stays open.
            for kind, transitions in by_kind(device).items():
                assert transitions.count("opened") <= 1, f"{device} {kind}: {transitions}"
                assert "cleared" not in transitions, f"{device} {kind}: {transitions}"
            assert "over_threshold" in by_kind(device), f"{device} never went over"
        # The person's fix: the fan on for good. The node cools and its alarm clears, once.
        http = app.test_client()
        assert http.post("/api/devices/node1/settings", json={"fan": "on"}).status_code == 202
        wait_for(
            lambda: "cleared" in by_kind("node1")["over_threshold"],
            timeout_s=120,
            what="node1's alarm to clear with its fan on",
        )
        assert by_kind("node1")["over_threshold"] == ["opened", "cleared"]
        listed = http.get("/api/alarms?device=node1&kind=over_threshold").get_json()["alarms"]
        assert [a["active"] for a in listed] == [False]
