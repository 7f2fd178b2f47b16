"""REST API (DESIGN.md's table) on a real database, fed through the bridge's message handler."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bridge.ttn import parse_time
from tests.ttn_messages import at_seconds, downlink_event
from tests.webapp.fixtures import Feeder, make_app, make_config


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/api.sqlite3"
    return request.getfixturevalue("mysql_url")


@pytest.fixture
def app(db_url: str) -> Iterator[Flask]:
    yield from make_app(make_config(db_url, settings_per_day=3))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def feeder(app: Flask) -> Feeder:
    feed = Feeder(app)
    feed.status("node1")
    feed.frame("node1", hot=35.5, number=1)
    feed.frame("node2", hot=71.2, number=1)
    return feed


def test_health_reports_database_and_mqtt(client: FlaskClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json == {
        "status": "ok",
        "database": "ok",
        "mqtt": "not running in this process",
    }


def test_health_is_503_when_the_database_is_unreachable(tmp_path: Any) -> None:
    config = make_config("mysql+pymysql://root@127.0.0.1:1/nothing")
    for app in make_app(config):
        response = app.test_client().get("/api/health")
        assert response.status_code == 503
        assert response.json["database"] == "unreachable"
        assert app.test_client().get("/api/devices").status_code == 503


def test_devices_list_and_hottest(client: FlaskClient, feeder: Feeder) -> None:
    devices = client.get("/api/devices").json["devices"]
    assert [d["device_id"] for d in devices] == ["node1", "node2"]
    node1 = devices[0]
    assert node1["online"] and node1["mode"] == "slow" and node1["threshold"] == 50
    assert node1["latest_frame"]["temp_max"] == 35.5 and node1["latest_frame"]["complete"]
    assert node1["ambient"]["temperature"] == 23.0
    hottest = client.get("/api/devices?order=temp_max&limit=1&interval=past_week").json
    # The frames' received_at are in the test's past; all_time finds them.
    hottest = client.get("/api/devices?order=temp_max&limit=1&interval=all_time").json
    assert [d["device_id"] for d in hottest["devices"]] == ["node2"]
    assert hottest["devices"][0]["temp_max_in_interval"] == 71.2
    assert any(a["kind"] == "over_threshold" for a in hottest["devices"][0]["alarms"])


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/api/devices/nope", 404, "unknown device 'nope'"),
        ("/api/devices?limit=0", 400, "limit must be from 1 to 1000"),
        ("/api/devices?limit=abc", 400, "limit must be an integer"),
        ("/api/devices?limit=99999999", 400, "limit must be from 1 to 1000"),
        ("/api/devices?order=colour", 400, "order must be"),
        ("/api/devices?interval=forever", 400, "interval must be one of"),
        ("/api/devices/node1/frames?since=yesterday", 400, "since must be an ISO 8601"),
        ("/api/frames/999999", 404, "unknown frame 999999"),
        ("/api/frames/999999.png", 404, "unknown frame"),
        ("/api/alarms?active=maybe", 400, "active must be true or false"),
        ("/api/nothing-here", 404, "no such route"),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    client: FlaskClient, feeder: Feeder, url: str, status: int, message: str
) -> None:
    response = client.get(url)
    assert response.status_code == status
    assert message in response.json["error"]


def test_frames_grid_png_csv_and_histogram(client: FlaskClient, feeder: Feeder) -> None:
    frames = client.get("/api/devices/node1/frames?limit=5").json["frames"]
    assert len(frames) == 1
    frame_id = frames[0]["frame_id"]
    detail = client.get(f"/api/frames/{frame_id}").json
    assert len(detail["grid"]) == 24 and len(detail["grid"][0]) == 32
    assert detail["grid"][0][0] is None and detail["grid"][10][20] == 35.5
    png = client.get(f"/api/frames/{frame_id}.png")
    assert png.mimetype == "image/png" and png.data.startswith(b"\x89PNG")
    rows = list(csv.reader(io.StringIO(client.get(f"/api/frames/{frame_id}.csv").text)))
    assert len(rows) == 24 and rows[0][0] == "" and rows[10][20] == "35.5"
    hist = client.get(f"/api/frames/{frame_id}/histogram?bins=10").json["bins"]
    assert len(hist) == 10 and sum(b["count"] for b in hist) == 24 * 32 - 1
    history = list(csv.reader(io.StringIO(client.get("/api/devices/node1/frames.csv").text)))
    assert history[0][:3] == ["captured_at", "mode", "complete"]
    assert history[1][1:3] == ["slow", "true"]
    ambient = client.get("/api/devices/node1/ambient").json["ambient"]
    assert ambient and ambient[-1]["temperature"] == 23.0


def test_partial_frame_is_listed_with_its_coverage(client: FlaskClient, feeder: Feeder) -> None:
    feeder.frame("node1", hot=30, number=2, skip=(3, 4))
    feeder.frame("node1", hot=30, number=3)
    frames = client.get("/api/devices/node1/frames").json["frames"]
    partial = next(f for f in frames if f["frame_number"] == 2)
    assert not partial["complete"] and partial["coverage"] == pytest.approx(22 / 24, abs=1e-3)
    grid = client.get(f"/api/frames/{partial['frame_id']}").json["grid"]
    assert all(v is None for v in grid[3] + grid[4])


def test_settings_are_validated_merged_and_queued(client: FlaskClient, feeder: Feeder) -> None:
    bad = client.post("/api/devices/node1/settings", json={"threshold": 500})
    assert bad.status_code == 400 and "threshold" in bad.json["error"]
    assert client.post("/api/devices/node1/settings", data="fan=on").status_code == 415
    assert client.post("/api/devices/ghost/settings", json={"fan": "on"}).status_code == 404
    queued = client.post("/api/devices/node1/settings", json={"fan": "on"})
    assert queued.status_code == 202
    body = queued.json
    assert body["status"] == "queued"
    assert body["settings"] == {"fan": "on", "mode": "slow", "threshold": 50}
    assert body["downlink"]["status"] == "queued"
    again = client.post("/api/devices/node1/settings", json={"fan": "on", "threshold": 50})
    assert again.status_code == 200 and again.json["status"] == "unchanged"
    downlinks = client.get("/api/devices/node1/downlinks").json["downlinks"]
    assert downlinks[0]["settings"]["fan"] == "on" and downlinks[0]["history"]
    state = client.get("/api/devices/node1").json
    assert (
        state["fan_requested"] == "on"
        and state["pending_downlink"] == body["downlink"]["downlink_id"]
    )


def test_settings_rate_limit_is_a_clear_429(client: FlaskClient, feeder: Feeder) -> None:
    for threshold in (51, 52, 53):
        response = client.post("/api/devices/node1/settings", json={"threshold": threshold})
        assert response.status_code == 202
        cid = client.get("/api/devices/node1/downlinks").json["downlinks"][0]["correlation_id"]
        feeder.bridge.handle_message(downlink_event("node1", "sent", [cid], at_seconds(100)))
    response = client.post("/api/devices/node1/settings", json={"threshold": 54})
    assert response.status_code == 429 and "fair-use" in response.json["error"]
    # When to retry: 24 h after the oldest of the three was requested (RFC 9110 10.2.3).
    retry_after = int(response.headers["Retry-After"])
    assert 86_400 - 60 < retry_after <= 86_400
    said = re.search(r"try again after (\S+Z)", response.json["error"])
    assert said is not None, response.json
    until = (parse_time(said.group(1)) - datetime.now(UTC)).total_seconds()
    assert abs(until - retry_after) < 60
    legacy = client.post("/request", json={"threshold": 54})
    assert legacy.status_code == 429 and legacy.json["success"] is False
    assert 86_400 - 60 < int(legacy.headers["Retry-After"]) <= 86_400


def test_requests_replaced_before_they_were_sent_are_not_rate_limited(
    client: FlaskClient, feeder: Feeder
) -> None:
    for threshold in range(51, 61):  # ten quick edits, each replacing the last one unsent
        response = client.post("/api/devices/node1/settings", json={"threshold": threshold})
        assert response.status_code == 202, response.json


def test_oversized_body_is_413(client: FlaskClient, feeder: Feeder) -> None:
    response = client.post(
        "/api/devices/node1/settings", data="x" * 70_000, content_type="application/json"
    )
    assert response.status_code == 413 and "larger than" in response.json["error"]


def test_alarm_opens_once_and_closes_after_two_cool_frames(
    client: FlaskClient, feeder: Feeder
) -> None:
    feeder.frame("node1", hot=80.0, number=4)
    feeder.frame("node1", hot=81.0, number=5)
    active = client.get("/api/alarms?active=true").json["alarms"]
    over = [a for a in active if a["device_id"] == "node1" and a["kind"] == "over_threshold"]
    assert len(over) == 1 and over[0]["limit"] == 50.0 and over[0]["severity"] == "critical"
    feeder.frame("node1", hot=30.0, number=6)
    active = client.get("/api/alarms?active=true").json["alarms"]
    still = [a for a in active if a["device_id"] == "node1" and a["kind"] == "over_threshold"]
    assert [a["alarm_id"] for a in still] == [over[0]["alarm_id"]], "one cool frame clears nothing"
    feeder.frame("node1", hot=30.0, number=7)
    active = client.get("/api/alarms?active=true").json["alarms"]
    assert not [a for a in active if a["device_id"] == "node1" and a["kind"] == "over_threshold"]
    closed = client.get("/api/alarms?active=false").json["alarms"]
    assert any(a["device_id"] == "node1" and a["kind"] == "over_threshold" for a in closed)


def test_legacy_request_route_acts_on_the_default_device(
    client: FlaskClient, feeder: Feeder
) -> None:
    ok = client.post("/request", json={"fan": "on", "mode": "fast", "threshold": 45})
    assert ok.status_code == 200 and ok.json == {"success": True}
    bad = client.post("/request", json={"fan": "sideways"})
    assert bad.status_code == 400 and bad.json["success"] is False and "fan" in bad.json["msg"]
    downlinks = client.get("/api/devices/node1/downlinks").json["downlinks"]
    assert downlinks[0]["settings"] == {"fan": "on", "mode": "fast", "threshold": 45}


def test_openapi_lists_exactly_the_routes(app: Flask, client: FlaskClient) -> None:
    documented = set(client.get("/api/openapi.json").json["paths"])
    served = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if path.startswith("/api/") or path in ("/request", "/metrics"):
            for arg in rule.arguments:
                path = path.replace(f"<int:{arg}>", f"{{{arg}}}").replace(f"<{arg}>", f"{{{arg}}}")
            served.add(path)
    assert documented == served


@pytest.fixture
def token_app(db_url: str) -> Iterator[Flask]:
    yield from make_app(make_config(db_url, api_tokens=("write-token",), settings_per_day=10))


def test_writes_need_a_token_when_configured(token_app: Flask) -> None:
    client = token_app.test_client()
    Feeder(token_app).status("node1")
    url = "/api/devices/node1/settings"
    assert client.post(url, json={"fan": "on"}).status_code == 401
    wrong = client.post(url, json={"fan": "on"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    right = client.post(url, json={"fan": "on"}, headers={"Authorization": "Bearer write-token"})
    assert right.status_code == 202
    assert client.get("/api/devices").status_code == 200  # reads stay open by default
    legacy = client.post("/request", json={"fan": "off"})
    assert legacy.status_code == 401 and legacy.json["success"] is False


@pytest.mark.parametrize("route", ["frames", "ambient", "frames.csv"])
@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+01:00",  # in UTC that is year 0: converting it overflows
        "9999-12-31T23:59:59-01:00",  # in UTC, year 10000
    ],
)
def test_out_of_range_times_are_a_400_naming_the_parameter(
    client: FlaskClient, feeder: Feeder, route: str, name: str, value: str
) -> None:
    response = client.get(f"/api/devices/node1/{route}", query_string={name: value})
    assert response.status_code == 400, response.text
    assert response.json["error"].startswith(f"{name} must be"), response.json


@pytest.mark.parametrize("route", ["frames", "ambient", "frames.csv"])
def test_the_extreme_times_in_range_are_accepted(
    client: FlaskClient, feeder: Feeder, route: str
) -> None:
    url = f"/api/devices/node1/{route}"
    extremes = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999999Z"}
    response = client.get(url, query_string=extremes)
    assert response.status_code == 200 and "23.0" in response.text  # the ambient reading
