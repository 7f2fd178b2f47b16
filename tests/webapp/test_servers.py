"""The push server as operators run it: gunicorn's eventlet worker, gunicorn's gthread worker
(threading mode), and a separate bridge process pushing through the Redis message queue.
Each run: a real Socket.IO client over websocket, uplinks published to real Mosquitto, the frame
arriving at the client, and a settings change reaching the broker as a down/replace."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio as sio_client

from node_firmware.protocol import Mode, NodeStatus, encode_fragment, encode_status, fragment_frame
from tests.bridge.harness import Publisher
from tests.processes import WAIT_S, Server, app_env, gunicorn_args
from tests.services import free_port
from tests.ttn_messages import APP_ID, TENANT, topic, uplink
from tests.webapp.fixtures import scene

pytestmark = pytest.mark.integration


def wait_for_line(log: Path, text: str, timeout_s: float = WAIT_S) -> None:
    """Wait until a subprocess's log file contains text."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise AssertionError(f"{text!r} never appeared in {log.name}:\n{tail}")


def watch_frames(port: int) -> tuple[Any, list[dict[str, Any]], threading.Event]:
    client = sio_client.Client(reconnection=False)
    frames: list[dict[str, Any]] = []
    got = threading.Event()

    @client.on("frame")
    def _frame(data: dict[str, Any]) -> None:
        frames.append(data)
        got.set()

    client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=20)
    ack = client.call("subscribe", {"devices": ["srv1"]}, timeout=20)
    assert ack == {"subscribed": ["srv1"]}
    return client, frames, got


def publish_frame_and_settings(broker: Any, port: int) -> None:
    client, frames, got = watch_frames(port)
    pub = Publisher(broker.host, broker.port)
    pub.subscribe(f"v3/{APP_ID}@{TENANT}/devices/srv1/down/replace")
    now = datetime.now(UTC)  # live timestamps: the server's ticker closes stale frames
    try:
        status = encode_status(NodeStatus(1, False, False, Mode.SLOW, 50, 21))
        pub.publish(topic("srv1"), uplink("srv1", 0, status, now, f_port=2))
        for i, f in enumerate(fragment_frame(scene(1, 44.4), Mode.FAST, 1, fan=False, ambient=21)):
            pub.publish(
                topic("srv1"),
                uplink("srv1", i + 1, encode_fragment(f), now + timedelta(seconds=i + 1)),
            )
        assert got.wait(WAIT_S), "no frame reached the Socket.IO client"
        assert frames[0]["temp_max"] == 44.4 and frames[0]["image"].startswith(b"\x89PNG")
        response = requests.post(
            f"http://127.0.0.1:{port}/api/devices/srv1/settings", json={"fan": "on"}, timeout=20
        )
        assert response.status_code == 202, response.text
        received = pub.wait_received(1, timeout=WAIT_S)
        assert received[0][0].endswith("/srv1/down/replace")
    finally:
        pub.close()
        client.disconnect()


@pytest.fixture
def db_url(mysql_url: str) -> str:
    return mysql_url


@pytest.mark.parametrize("worker", ["eventlet", "gthread"])
def test_gunicorn_worker_serves_bridge_and_push(
    worker: str, mqtt_broker: Any, db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = app_env(mqtt_broker.host, mqtt_broker.port, db_url)
    server = Server(gunicorn_args(worker, port, 50), env, port, tmp_path / f"{worker}.log")
    try:
        server.wait_ready()
        publish_frame_and_settings(mqtt_broker, port)
    finally:
        server.stop()
    log = (tmp_path / f"{worker}.log").read_text()
    expected = "eventlet" if worker == "eventlet" else "threading"
    assert f"async mode {expected}" in log or "Traceback" not in log


def test_separate_bridge_process_pushes_through_redis(
    mqtt_broker: Any, db_url: str, redis_server: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = app_env(
        mqtt_broker.host, mqtt_broker.port, db_url, THERMAL_MESSAGE_QUEUE=redis_server.url
    )
    web = Server(
        gunicorn_args("eventlet", port, 50),
        {**env, "THERMAL_RUN_BRIDGE": "false"},
        port,
        tmp_path / "web.log",
    )
    bridge = Server([sys.executable, "-m", "bridge"], env, None, tmp_path / "bridge.log")
    try:
        web.wait_ready()
        # The bridge's first connection has no session yet: an uplink published before its
        # subscriptions are confirmed would never reach it.
        wait_for_line(tmp_path / "bridge.log", "the broker confirmed the subscriptions")
        health = requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json()
        assert health["mqtt"] == "not running in this process"
        publish_frame_and_settings(mqtt_broker, port)
    finally:
        bridge.stop()
        web.stop()
