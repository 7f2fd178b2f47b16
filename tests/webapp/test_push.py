"""Socket.IO: subscribe gives a snapshot at once, then live changes; rooms per device; tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from tests.webapp.fixtures import Feeder, make_app, make_config
from webapp import socketio


@pytest.fixture
def app(tmp_path: Any) -> Iterator[Flask]:
    yield from make_app(make_config(f"sqlite:///{tmp_path}/push.sqlite3"))


def names(received: list[dict[str, Any]]) -> list[str]:
    return [r["name"] for r in received]


def test_subscribe_sends_a_snapshot_then_live_changes(app: Flask) -> None:
    feeder = Feeder(app)
    feeder.status("node1")
    feeder.frame("node1", hot=33.3, number=1)
    client = socketio.test_client(app)
    ack = client.emit("subscribe", {"devices": ["node1"]}, callback=True)
    assert ack == {"subscribed": ["node1"]}
    snapshot = client.get_received()
    assert names(snapshot) == ["node_state", "ambient", "frame"]
    state = snapshot[0]["args"][0]
    assert state["device_id"] == "node1" and state["online"] and state["fan"] == "off"
    frame = snapshot[2]["args"][0]
    assert frame["temp_max"] == 33.3 and frame["complete"] and frame["image"].startswith(b"\x89PNG")

    feeder.frame("node1", hot=36.6, number=2)
    live = client.get_received()
    frames = [r["args"][0] for r in live if r["name"] == "frame"]
    assert [f["temp_max"] for f in frames] == [36.6]
    assert isinstance(frames[0]["image"], bytes)


def test_clients_get_only_the_devices_they_subscribed_to(app: Flask) -> None:
    feeder = Feeder(app)
    one = socketio.test_client(app)
    everything = socketio.test_client(app)
    one.emit("subscribe", {"devices": ["node1"]})
    everything.emit("subscribe", {"devices": "*"})
    one.get_received()
    everything.get_received()
    feeder.frame("node2", hot=40, number=1)
    assert "frame" not in names(one.get_received())
    got = [r["args"][0]["device_id"] for r in everything.get_received() if r["name"] == "frame"]
    assert got == ["node2"]
    feeder.frame("node1", hot=40, number=2)
    # Subscribed to node1 and to everything: still one copy for the all-devices client.
    assert names(everything.get_received()).count("frame") == 1
    assert names(one.get_received()).count("frame") == 1
    one.emit("unsubscribe", {"devices": ["node1"]})
    feeder.frame("node1", hot=41, number=3)
    assert "frame" not in names(one.get_received())


def test_bad_subscribe_is_answered_with_an_error(app: Flask) -> None:
    client = socketio.test_client(app)
    ack = client.emit("subscribe", {"devices": 5}, callback=True)
    assert "error" in ack


def test_downlink_status_is_pushed(app: Flask) -> None:
    feeder = Feeder(app)
    feeder.status("node1")
    client = socketio.test_client(app)
    client.emit("subscribe", {"devices": ["node1"]})
    client.get_received()
    response = app.test_client().post("/api/devices/node1/settings", json={"mode": "fast"})
    assert response.status_code == 202
    pushed = [r["args"][0] for r in client.get_received() if r["name"] == "downlink"]
    assert pushed[0]["status"] == "queued" and pushed[0]["settings"]["mode"] == "fast"
    feeder.status("node1", mode=__import__("node_firmware.protocol").protocol.Mode.FAST)
    pushed = [r["args"][0] for r in client.get_received() if r["name"] == "downlink"]
    assert pushed[-1]["status"] == "applied"


@pytest.fixture
def token_app(tmp_path: Any) -> Iterator[Flask]:
    yield from make_app(make_config(f"sqlite:///{tmp_path}/t.sqlite3", api_tokens=("sekrit",)))


def test_socket_without_valid_token_is_refused(token_app: Flask) -> None:
    assert not socketio.test_client(token_app).is_connected()
    assert not socketio.test_client(token_app, auth={"token": "wrong"}).is_connected()
    assert socketio.test_client(token_app, auth={"token": "sekrit"}).is_connected()


def test_a_silent_node_goes_offline_with_an_alarm_and_comes_back(app: Flask) -> None:
    from datetime import timedelta

    from tests.ttn_messages import at_seconds

    feeder = Feeder(app)
    feeder.status("node1")
    client = socketio.test_client(app)
    client.emit("subscribe", {"devices": ["node1"]})
    client.get_received()
    offline_after = app.extensions["thermal"].config.offline_after_s
    feeder.bridge.tick(at_seconds(feeder.t) + timedelta(seconds=offline_after + 1))
    got = client.get_received()
    states = [r["args"][0] for r in got if r["name"] == "node_state"]
    alarms = [r["args"][0] for r in got if r["name"] == "alarm"]
    assert [s["online"] for s in states] == [False]
    assert [(a["kind"], a["active"]) for a in alarms] == [("offline", True)]
    feeder.t += offline_after + 10
    feeder.status("node1")
    got = client.get_received()
    assert [r["args"][0]["online"] for r in got if r["name"] == "node_state"] == [True]
    closed = [r["args"][0] for r in got if r["name"] == "alarm"]
    assert [(a["kind"], a["active"]) for a in closed] == [("offline", False)]
    listed = app.test_client().get("/api/alarms?active=true").get_json()
    assert all(a["kind"] != "offline" for a in listed["alarms"])
