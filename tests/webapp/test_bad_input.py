"""Hostile input to the REST API: a clear 4xx in the one error shape, and a small answer,
whatever comes in (deep JSON, wrong content types, broken encodings, unknown devices, huge
numbers and strings). tests/webapp/test_api.py has the everyday errors; this is the rest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.fixtures import Feeder, make_app, make_config

SETTINGS = "/api/devices/node1/settings"
MAX_ERROR_BYTES = 400  # an error answer never grows with the input


@pytest.fixture
def app(tmp_path: Any) -> Iterator[Flask]:
    for app in make_app(make_config(f"sqlite:///{tmp_path}/bad.sqlite3")):
        Feeder(app).frame("node1", hot=30, number=1)
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data()[:300]
    assert len(response.get_data()) < MAX_ERROR_BYTES
    return str(response.json["error"])


@pytest.mark.parametrize(
    "body",
    [
        "[" * 60_000,  # 60 KB, under the 64 KiB cap: json raises RecursionError, not ValueError
        '{"a":' * 12_000 + "1" + "}" * 12_000,
        "[" * 5_000 + "]" * 5_000,
    ],
)
def test_deeply_nested_json_is_a_400(client: FlaskClient, body: str) -> None:
    response = client.post(SETTINGS, data=body, content_type="application/json")
    assert response.status_code in (400, 413)
    error(response, response.status_code)
    legacy = client.post("/request", data=body, content_type="application/json")
    assert legacy.status_code in (400, 413) and len(legacy.get_data()) < MAX_ERROR_BYTES


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", '{"fan": "on"}'),
        ("application/x-www-form-urlencoded", "fan=on"),
        (
            "multipart/form-data; boundary=x",
            '--x\r\nContent-Disposition: form-data; name="fan"\r\n\r\non\r\n--x--',
        ),
        ("application/xml", "<fan>on</fan>"),
        (None, '{"fan": "on"}'),
    ],
)
def test_a_body_that_is_not_declared_json_is_a_415(
    client: FlaskClient, content_type: str | None, body: str
) -> None:
    response = client.post(SETTINGS, data=body, content_type=content_type)
    assert "Content-Type: application/json" in error(response, 415)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'\xff\xfe{"fan": "on"}', "not valid JSON"),
        (b'{"fan": "on"', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"fan"', "JSON object"),
        (b'{"fan": "on", "fan": "off", "threshold": 1e400}', "threshold"),
        (b'{"threshold": 99999999999999999999999999}', "threshold"),
        (b'{"colour": "red"}', "colour"),
    ],
)
def test_malformed_json_bodies_are_a_400(client: FlaskClient, body: bytes, message: str) -> None:
    response = client.post(SETTINGS, data=body, content_type="application/json")
    assert message in error(response, 400)


def test_unknown_devices_are_404_on_every_device_route(client: FlaskClient) -> None:
    for device_id in ("ghost", "x" * 5_000, "%00", "node%201", "nöde"):
        for suffix in ("", "/frames", "/frames.csv", "/ambient", "/downlinks"):
            assert "unknown device" in error(client.get(f"/api/devices/{device_id}{suffix}"), 404)
        posted = client.post(f"/api/devices/{device_id}/settings", json={"fan": "on"})
        assert "unknown device" in error(posted, 404)


@pytest.mark.parametrize(
    "url",
    [
        "/api/devices?limit=" + "9" * 5_000,  # past Python's int-from-string digit limit
        "/api/devices?limit=1e9",
        "/api/devices?limit=-1",
        "/api/devices/node1/frames?limit=1001",
        "/api/devices/node1/frames?limit=" + "9" * 30,
        "/api/devices/node1/frames.csv?limit=100001",
        "/api/devices/node1/ambient?limit=10001",
        "/api/devices/node1/downlinks?limit=99999",
        "/api/alarms?limit=99999",
        "/api/frames/1/histogram?bins=201",
        "/api/frames/1/histogram?bins=" + "9" * 30,
        "/api/devices/node1/frames?since=" + "2" * 5_000,
        "/api/devices?order=" + "o" * 5_000,
        "/api/alarms?active=" + "t" * 5_000,
    ],
)
def test_huge_or_malformed_query_values_are_a_small_400(client: FlaskClient, url: str) -> None:
    assert "must be" in error(client.get(url), 400)


def test_oversized_legacy_request_is_413(client: FlaskClient) -> None:
    response = client.post("/request", data="x" * 70_000, content_type="application/json")
    assert response.status_code == 413
