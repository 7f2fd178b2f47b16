"""GET /metrics (DESIGN.md "Operations") and `python -m bridge`'s own metrics port, parsed with
prometheus_client's text parser before and after real traffic through Mosquitto and MariaDB."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import MqttConfig
from node_firmware.protocol import Mode, encode_fragment, fragment_frame
from tests.bridge.harness import Publisher
from tests.processes import ROOT, app_env
from tests.ttn_messages import APP_ID, TENANT, uplink
from tests.waiting import wait_for
from tests.webapp.fixtures import make_app, make_config, scene
from webapp import create_app, socketio

UP_TOPIC = f"v3/{APP_ID}@{TENANT}/devices/node7/up"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition as {(name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def frame_bodies(device_id: str, hot: float, start: datetime, f_cnt: int = 0) -> list[bytes]:
    """One slow frame (24 uplinks) of a device as TTN bodies, received one second apart."""
    fragments = fragment_frame(scene(1, hot), Mode.SLOW, 1, fan=False, ambient=23)
    return [
        uplink(device_id, f_cnt + i, encode_fragment(f), start + timedelta(seconds=i))
        for i, f in enumerate(fragments)
    ]


def send_traffic(publisher: Publisher, topic: str) -> None:
    """24 fragments of one frame with a pixel over the threshold, 2 of them redelivered, one
    uplink with a payload of the wrong length, one body that is not JSON."""
    bodies = frame_bodies("node7", 71.5, datetime.now(UTC) - timedelta(seconds=30))
    for body in bodies:
        publisher.publish(topic, body)
    publisher.publish(topic, bodies[3])
    publisher.publish(topic, bodies[5])
    publisher.publish(topic, uplink("node7", 24, b"\x01\x02", datetime.now(UTC)))
    publisher.publish(topic, b"{not json")


@pytest.fixture
def live_app(mqtt_broker: Any, mysql_url: str) -> Iterator[Flask]:
    config = make_config(mysql_url).with_overrides(
        mqtt=MqttConfig(
            host=mqtt_broker.host,
            port=mqtt_broker.port,
            app_id=APP_ID,
            tenant=TENANT,
            client_id=f"metrics-{uuid.uuid4().hex[:8]}",
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


def test_metrics_count_what_the_traffic_did(live_app: Flask, mqtt_broker: Any) -> None:
    http = live_app.test_client()
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    before = samples(response.get_data(as_text=True))
    for result in ("stored", "duplicate", "invalid_payload", "invalid_message", "failed", "lost"):
        assert value(before, "thermal_uplinks_total", result=result) == 0
    assert value(before, "thermal_frames_total", mode="slow", complete="true") == 0
    assert value(before, "thermal_ingest_seconds_count") == 0
    assert value(before, "thermal_mqtt_connected") == 1
    assert value(before, "thermal_socketio_clients") == 0
    assert value(before, "thermal_alarms_active", kind="over_threshold") == 0
    assert value(before, "thermal_downlinks_total", status="queued") == 0
    assert value(before, "thermal_notifications_total", status="sent") == 0
    assert value(before, "thermal_database_up") == 1

    watcher = socketio.test_client(live_app)
    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    try:
        send_traffic(publisher, UP_TOPIC)

        def scraped() -> dict[Any, float]:
            return samples(http.get("/metrics").get_data(as_text=True))

        after = wait_for(
            lambda: (
                (s := scraped())
                and value(s, "thermal_uplinks_total", result="invalid_payload") == 1
                and value(s, "thermal_uplinks_total", result="invalid_message") == 1
                and s
            ),
            what="every message to be handled",
        )
    finally:
        publisher.close()
    assert value(after, "thermal_downlinks_total", status="queued") == 0
    assert http.post("/api/devices/node7/settings", json={"fan": "on"}).status_code == 202
    assert value(scraped(), "thermal_downlinks_total", status="queued") == 1
    assert value(after, "thermal_uplinks_total", result="stored") == 24
    assert value(after, "thermal_uplinks_total", result="duplicate") == 2
    assert value(after, "thermal_uplinks_total", result="failed") == 0
    assert value(after, "thermal_uplinks_total", result="lost") == 0
    assert value(after, "thermal_frames_total", mode="slow", complete="true") == 1
    assert value(after, "thermal_frames_total", mode="slow", complete="false") == 0
    assert value(after, "thermal_frames_total", mode="fast", complete="true") == 0
    # Every uplink handled has its received_at -> commit time: 24 + 2 redelivered + 1 invalid.
    assert value(after, "thermal_ingest_seconds_count") == 27
    assert value(after, "thermal_ingest_seconds_bucket", le="+Inf") == 27
    # received 30 s ago or less, committed now: above 10 s for the first ones, never above 300.
    assert value(after, "thermal_ingest_seconds_bucket", le="300.0") == 27
    assert value(after, "thermal_ingest_seconds_bucket", le="0.005") == 0
    assert value(after, "thermal_ingest_seconds_sum") >= 27 * 6
    assert value(after, "thermal_alarms_active", kind="over_threshold") == 1
    assert value(after, "thermal_alarms_active", kind="offline") == 0
    assert value(after, "thermal_socketio_clients") == 1
    assert value(after, "thermal_mqtt_connected") == 1
    watcher.disconnect()
    assert value(scraped(), "thermal_socketio_clients") == 0


def test_metrics_need_a_read_token_when_reads_are_closed(sqlite_url: str) -> None:
    config = make_config(sqlite_url, api_tokens=("write-token",), reads_open=False)
    for app in make_app(config):
        http = app.test_client()
        refused = http.get("/metrics")
        assert refused.status_code == 401
        assert "bearer token" in refused.get_json()["error"]
        assert "write-token" not in refused.get_data(as_text=True)
        wrong = http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = http.get("/metrics", headers={"Authorization": "Bearer write-token"})
        assert allowed.status_code == 200
        found = samples(allowed.get_data(as_text=True))
        # No bridge in this process: its metrics are the bridge process's to serve.
        assert ("thermal_mqtt_connected", ()) not in found
        assert value(found, "thermal_alarms_active", kind="rate_of_rise") == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bridge_process_serves_its_own_metrics_port(
    mqtt_broker: Any, mysql_url: str, tmp_path: Path
) -> None:
    port = free_port()
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"read_tokens": ["reader"]}))
    env = app_env(
        mqtt_broker.host,
        mqtt_broker.port,
        mysql_url,
        THERMAL_METRICS_PORT=str(port),
        THERMAL_WEB_READS_OPEN="false",
    )
    log = tmp_path / "bridge.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--credentials", str(creds)],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    auth = {"Authorization": "Bearer reader"}

    def scraped() -> dict[Any, float] | None:
        try:
            response = requests.get(url, headers=auth, timeout=2)
        except requests.RequestException:
            return None
        found = samples(response.text)
        return found if value(found, "thermal_mqtt_connected") == 1 else None

    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    try:
        before = wait_for(scraped, what=f"the bridge's metrics port:\n{log}")
        assert requests.get(url, timeout=2).status_code == 401
        assert value(before, "thermal_uplinks_total", result="stored") == 0
        send_traffic(publisher, UP_TOPIC)
        after = wait_for(
            lambda: (
                (s := scraped())
                and value(s, "thermal_uplinks_total", result="invalid_message") == 1
                and value(s, "thermal_uplinks_total", result="invalid_payload") == 1
                and s
            ),
            what="every message to be handled",
        )
        assert value(after, "thermal_uplinks_total", result="stored") == 24
        assert value(after, "thermal_uplinks_total", result="duplicate") == 2
        assert value(after, "thermal_frames_total", mode="slow", complete="true") == 1
        assert value(after, "thermal_ingest_seconds_count") == 27
        assert value(after, "thermal_alarms_active", kind="over_threshold") == 1
        assert ("thermal_socketio_clients", ()) not in after
    finally:
        publisher.close()
        proc.terminate()
        proc.wait(20)
    assert "Traceback" not in log.read_text()
