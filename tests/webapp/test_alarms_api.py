"""Alarm routes (DESIGN.md "Alarm rules"): rules per device, acknowledgement, history filters;
on SQLite and MariaDB, fed through the bridge's message handler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bridge.alarms import AlarmRules
from tests.webapp.fixtures import Feeder, make_app, make_config
from webapp import socketio


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/alarms.sqlite3"
    return request.getfixturevalue("mysql_url")


@pytest.fixture
def app(db_url: str) -> Iterator[Flask]:
    rules = AlarmRules(non_uniform_spread_c=100.0, rise_c=50.0)  # only over_threshold here
    yield from make_app(make_config(db_url, alarm_rules=rules))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def feeder(app: Flask) -> Feeder:
    feed = Feeder(app)
    feed.status("node1")
    return feed


def test_rules_in_effect_come_from_the_config_and_overrides_reset_with_null(
    client: FlaskClient, feeder: Feeder
) -> None:
    rules = client.get("/api/devices/node1/alarm-rules").json
    assert rules == {
        "device_id": "node1",
        "open_after_frames": 1,
        "clear_after_frames": 2,
        "hysteresis_c": 2.0,
        "critical_margin_c": 10.0,
        "non_uniform_spread_c": 100.0,
        "rise_c": 50.0,
        "rise_window_s": 600.0,
        "threshold": 50,
        "overridden": [],
    }
    put = client.put("/api/devices/node1/alarm-rules", json={"clear_after_frames": 3})
    assert put.status_code == 200 and put.json["clear_after_frames"] == 3
    assert put.json["overridden"] == ["clear_after_frames"]
    # The rules of a GET may be PUT back (device_id, threshold and overridden are not rules).
    back = {k: v for k, v in put.json.items() if k not in ("device_id", "threshold", "overridden")}
    assert client.put("/api/devices/node1/alarm-rules", json=back).status_code == 200
    reset = client.put("/api/devices/node1/alarm-rules", json={"clear_after_frames": None})
    assert reset.json["clear_after_frames"] == 2
    assert client.get("/api/devices/node1/alarm-rules").json["overridden"] == sorted(
        k for k in back if k != "clear_after_frames"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"colour": 1}, "unknown alarm rule 'colour'"),
        ({"clear_after_frames": 0}, "clear_after_frames must be an integer from 1 to 100"),
        ({"hysteresis_c": "2"}, "hysteresis_c must be a number from 0 to 50"),
        ({"rise_window_s": 1e9}, "rise_window_s must be a number from 1 to 86400"),
        ({"threshold": 40}, "threshold cannot be set here"),
        ({"device_id": "node1"}, "device_id is read-only; send only alarm rules"),
        ([1], "the body must be a JSON object of alarm rules"),
    ],
)
def test_a_bad_rule_is_a_400_naming_it(
    client: FlaskClient, feeder: Feeder, body: Any, message: str
) -> None:
    response = client.put("/api/devices/node1/alarm-rules", json=body)
    assert response.status_code == 400
    assert message in response.json["error"]


def test_rules_of_an_unknown_device_are_404(client: FlaskClient) -> None:
    assert client.get("/api/devices/nope/alarm-rules").status_code == 404
    assert client.put("/api/devices/nope/alarm-rules", json={"rise_c": 3}).status_code == 404


def test_a_device_override_changes_what_the_bridge_does(
    client: FlaskClient, feeder: Feeder
) -> None:
    client.put("/api/devices/node1/alarm-rules", json={"open_after_frames": 2})
    feeder.frame("node1", hot=55.0, number=1)
    assert client.get("/api/alarms?active=true").json["alarms"] == []
    feeder.frame("node1", hot=55.0, number=2)
    [alarm] = client.get("/api/alarms?active=true").json["alarms"]
    assert alarm["kind"] == "over_threshold" and alarm["severity"] == "warning"


def test_ack_with_a_note_once_pushed_and_404_for_unknown(app: Flask, feeder: Feeder) -> None:
    client = app.test_client()
    listener = socketio.test_client(app)
    listener.emit("subscribe", {"devices": ["node1"]})
    feeder.frame("node1", hot=55.0, number=1)
    [alarm] = client.get("/api/alarms?active=true").json["alarms"]
    assert alarm["acked_at"] is None and alarm["acked_by"] is None
    listener.get_received()
    path = f"/api/alarms/{alarm['alarm_id']}/ack"
    acked = client.post(path, json={"note": "looked at it"}).json
    assert acked["acked_by"] == "anonymous" and acked["note"] == "looked at it"
    assert acked["active"] and acked["alarm_id"] == alarm["alarm_id"]
    pushed = [r["args"][0] for r in listener.get_received() if r["name"] == "alarm"]
    assert [(p["transition"], p["acked_by"]) for p in pushed] == [("acked", "anonymous")]
    assert client.post(path).json == acked, "acked again: unchanged"
    assert not [r for r in listener.get_received() if r["name"] == "alarm"]
    # An ack does not clear it; it clears by itself.
    feeder.frame("node1", hot=40.0, number=2)
    feeder.frame("node1", hot=40.0, number=3)
    [cleared] = client.get("/api/alarms").json["alarms"]
    assert not cleared["active"] and cleared["acked_by"] == "anonymous"
    assert client.post("/api/alarms/999999/ack").status_code == 404
    assert client.post(f"{path}x").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"note": "x" * 501}, 400, "note must be a string of at most 500 characters"),
        ({"note": 5}, 400, "note must be a string"),
        ({"notes": "typo"}, 400, "unknown key 'notes'"),
        ("just text", 400, "the body must be a JSON object"),
    ],
)
def test_a_bad_ack_is_a_400_naming_it(
    client: FlaskClient, feeder: Feeder, body: Any, status: int, message: str
) -> None:
    feeder.frame("node1", hot=55.0, number=1)
    [alarm] = client.get("/api/alarms?active=true").json["alarms"]
    response = client.post(f"/api/alarms/{alarm['alarm_id']}/ack", json=body)
    assert response.status_code == status and message in response.json["error"]
    assert client.get("/api/alarms").json["alarms"][0]["acked_at"] is None


def test_alarm_history_filters(client: FlaskClient, feeder: Feeder) -> None:
    feeder.frame("node1", hot=55.0, number=1)  # opens (warning)
    feeder.frame("node1", hot=40.0, number=2)
    feeder.frame("node1", hot=40.0, number=3)  # clears
    feeder.frame("node2", hot=75.0, number=1)  # opens critical
    everything = client.get("/api/alarms").json["alarms"]
    assert [(a["device_id"], a["severity"], a["active"]) for a in everything] == [
        ("node2", "critical", True),
        ("node1", "warning", False),
    ]

    def ids(query: str) -> list[str]:
        response = client.get(f"/api/alarms?{query}")
        assert response.status_code == 200, response.json
        return [a["device_id"] for a in response.json["alarms"]]

    assert ids("active=true") == ["node2"]
    assert ids("active=false") == ["node1"]
    assert ids("device=node1") == ["node1"]
    assert ids("severity=critical") == ["node2"]
    assert ids("kind=over_threshold&limit=1") == ["node2"]
    assert ids("kind=offline") == []
    node1 = everything[1]
    assert ids(f"since={node1['opened_at']}&until={node1['opened_at']}") == ["node1"]
    assert ids(f"since={everything[0]['opened_at']}") == ["node2"]
    for query, message in [
        ("kind=hot", "kind must be one of over_threshold, non_uniform, rate_of_rise, offline"),
        ("severity=major", "severity must be warning or critical"),
        ("limit=1001", "limit must be from 1 to 1000"),
        ("since=yesterday", "since must be an ISO 8601 time"),
        ("until=", "until must be an ISO 8601 time"),
    ]:
        response = client.get(f"/api/alarms?{query}")
        assert response.status_code == 400 and message in response.json["error"], query
