"""Faults on the real services: every valid uplink sent is stored exactly once and every frame
completes, whatever crashes in between.

- the broker SIGKILLed mid-frame with uplinks delivered but not yet acknowledged (QoS 1
  redelivery from the persistent session, de-duplicated);
- MariaDB stopped mid-stream for THERMAL_FAULT_DB_OUTAGE_S seconds (default 3; the issue's 60 s
  run: `THERMAL_FAULT_DB_OUTAGE_S=60 pytest tests/test_faults.py -k database`), with
  `GET /api/health` answering 503 throughout and 200 after;
- the `python -m bridge` process SIGKILLed mid-frame and started again (open frames resume from
  the stored fragments, the broker's queue brings the rest);
- the push server process SIGKILLed and started again: a Socket.IO client reconnects,
  subscribes again and gets a fresh snapshot;
- two bridges started by mistake against one application (two sessions, both get everything):
  the database constraints keep storage idempotent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio as sio_client
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from bridge.config import MqttConfig
from db import schema as t
from db.gridpack import unpack_grid
from node_firmware.protocol import Mode, NodeStatus, encode_fragment, encode_status, fragment_frame
from tests import waiting
from tests.bridge.harness import BridgeHarness, Publisher, bridge_config
from tests.services import MosquittoServer, free_port
from tests.ttn_messages import APP_ID, TENANT, topic, uplink
from tests.webapp.fixtures import make_config, scene
from webapp import create_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 90.0
DB_OUTAGE_S = float(os.environ.get("THERMAL_FAULT_DB_OUTAGE_S", "3"))


def wait_for(condition: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "") -> Any:
    """tests.waiting.wait_for with this module's longer bound."""
    return waiting.wait_for(condition, timeout_s, what)


class Node:
    """One device's uplinks: increasing f_cnt, live received_at (the bridge's ticker runs)."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.f_cnt = 0
        self.start = datetime.now(UTC)
        self.sent: list[bytes] = []

    def body(self, payload: bytes, f_port: int = 1) -> bytes:
        at = self.start + timedelta(milliseconds=10 * self.f_cnt)
        body = uplink(self.device_id, self.f_cnt, payload, at, f_port=f_port)
        self.f_cnt += 1
        self.sent.append(body)
        return body

    def status(self) -> bytes:
        return self.body(encode_status(NodeStatus(1, False, False, Mode.SLOW, 50, 22)), 2)

    def frame(self, seed: int, hot: float, number: int, mode: Mode = Mode.SLOW) -> list[bytes]:
        grid = scene(seed, hot)
        parts = fragment_frame(grid, mode, number, fan=False, ambient=22)
        return [self.body(encode_fragment(f)) for f in parts]


class Database:
    """Counts in the test's database, through its own engine."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, pool_pre_ping=True)

    def count(self, table: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def frames(self, device_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(t.frames)
                    .where(t.frames.c.device_id == device_id)
                    .order_by(t.frames.c.frame_number)
                )
            )

    def uplink_keys(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(t.uplinks.c.uplink_key))]

    def close(self) -> None:
        self.engine.dispose()


def assert_exactly_once(db: Database, nodes: list[Node], frames: dict[str, int]) -> None:
    """Every uplink sent is one row; each device has its frames, all complete, once each."""
    sent = sum(len(n.sent) for n in nodes)
    keys = db.uplink_keys()
    assert len(keys) == len(set(keys)) == sent
    for device_id, count in frames.items():
        rows = db.frames(device_id)
        assert [r.complete for r in rows] == [True] * count, device_id
        assert len({r.frame_number for r in rows}) == count
    assert db.count(t.open_fragments) == 0


@pytest.fixture
def db(mysql_url: str) -> Iterator[Database]:
    database = Database(mysql_url)
    yield database
    database.close()


# --- the broker crashes ---------------------------------------------------------------------


class GatedHarness(BridgeHarness):
    """A bridge whose worker stops after `open_for` messages until the gate opens; `held` is
    how many messages the stopped worker holds (one, or a batch of those that were waiting)."""

    def __init__(self, *args: Any, open_for: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_for = open_for
        self.gate = threading.Event()
        self.blocked = threading.Event()
        self.held = 0

    def _wait_at_gate(self, count: int) -> None:
        if self.recorder.handled >= self.open_for and not self.gate.is_set():
            self.held = count
            self.blocked.set()
            self.gate.wait(WAIT_S)

    def _handle(self, body: bytes) -> None:
        self._wait_at_gate(1)
        super()._handle(body)

    def _handle_batch(self, bodies: Sequence[bytes]) -> None:
        # Store up to open_for, then stop holding the rest (none of the batch is acknowledged
        # before all of it is stored, so more may be redelivered than with single messages).
        room = max(0, self.open_for - self.recorder.handled)
        if not self.gate.is_set() and room < len(bodies):
            if room:
                super()._handle_batch(bodies[:room])
            self._wait_at_gate(len(bodies) - room)
            super()._handle_batch(bodies[room:])
            return
        super()._handle_batch(bodies)


def test_broker_killed_mid_frame_redelivers_unacknowledged_uplinks_stored_once(
    mysql_url: str, db: Database, tmp_path: Path
) -> None:
    # A broker of its own that saves its store on every change, so a SIGKILL loses no session.
    broker = MosquittoServer(tmp_path / "broker", autosave_on_changes=True).start()
    harness = GatedHarness(
        bridge_config(broker.host, broker.port, mysql_url),
        client_id=f"crash-{uuid.uuid4().hex[:6]}",
        open_for=9,
    ).start()
    publisher = Publisher(broker.host, broker.port)
    node = Node("brokercrash")
    try:
        first = [node.status(), *node.frame(1, 41.0, 7)]
        for body in first[:16]:
            publisher.publish(topic(node.device_id), body)
        # 9 stored; the worker holds the 10th (alone or in a batch with those already waiting),
        # the rest wait in its queue: at least these 7 are unacknowledged.
        wait_for(harness.blocked.is_set, what="the worker to hold the 10th message")
        wait_for(
            lambda: harness.held + harness.adapter.messages.qsize() == 7,
            what="7 unacknowledged messages",
        )
        publisher.close()
        broker.save()  # what a crash keeps must not depend on when mosquitto last autosaved
        broker.kill()
        harness.gate.set()  # they are stored now, but their acks cannot reach the dead broker
        harness.wait_handled(16)
        broker.start()
        publisher = Publisher(broker.host, broker.port)
        assert harness.adapter.connected.wait(WAIT_S), "the bridge did not reconnect"
        for body in first[16:]:
            publisher.publish(topic(node.device_id), body)
        harness.recorder.wait_for(lambda: len(harness.recorder.of("frame")) == 1, WAIT_S)
        harness.wait_handled(25 + 7)  # everything, plus the 7 redelivered
        assert harness.bridge.metrics["duplicate_uplinks"] >= 7
        assert harness.adapter.connects == 2
        assert_exactly_once(db, [node], {"brokercrash": 1})
        [frame] = db.frames("brokercrash")
        assert unpack_grid(frame.grid, 24, 32)[10][20] == 41.0
    finally:
        harness.gate.set()
        publisher.close()
        harness.stop()
        broker.close()


# --- the database goes away -----------------------------------------------------------------


def test_database_stopped_mid_stream_holds_uplinks_and_health_says_so(
    mqtt_broker: Any, mariadb_server: Any, mysql_url: str, db: Database
) -> None:
    config = make_config(mysql_url, frame_timeout_s=600).with_overrides(
        mqtt=MqttConfig(
            host=mqtt_broker.host,
            port=mqtt_broker.port,
            app_id=APP_ID,
            tenant=TENANT,
            client_id=f"dbdown-{uuid.uuid4().hex[:6]}",
        )
    )
    app = create_app(config, start_bridge=True)
    runtime = app.extensions["thermal"]
    http = app.test_client()
    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    node = Node("dbout")
    bodies = [node.status(), *node.frame(2, 42.0, 1), *node.frame(3, 43.0, 2)]
    health: list[int] = []
    try:
        wait_for(runtime.mqtt.connected.is_set, what="the bridge to connect")
        for body in bodies[:10]:
            publisher.publish(topic(node.device_id), body)
        wait_for(lambda: db.count(t.uplinks) == 10, what="10 uplinks stored")
        db.engine.dispose()
        mariadb_server.stop()
        began = time.monotonic()
        try:
            for body in bodies[10:40]:  # they wait, unacknowledged
                publisher.publish(topic(node.device_id), body)
            wait_for(lambda: runtime.mqtt.storage_down, what="the bridge to see the outage")
            stop = threading.Event()
            while True:  # hold the outage, asking for health all along
                response = http.get("/api/health")
                health.append(response.status_code)
                assert response.json["database"] == "unreachable"
                if time.monotonic() - began >= DB_OUTAGE_S or stop.wait(0.5):
                    break
        finally:
            mariadb_server.start()
        outage_s = time.monotonic() - began
        for body in bodies[40:]:
            publisher.publish(topic(node.device_id), body)
        wait_for(lambda: http.get("/api/health").status_code == 200, what="health to recover")
        wait_for(lambda: len(db.frames("dbout")) == 2, what="both frames stored")
        wait_for(lambda: db.count(t.uplinks) == len(bodies), what="every uplink stored")
        assert set(health) == {503} and len(health) >= 2
        assert not runtime.mqtt.storage_down
        assert_exactly_once(db, [node], {"dbout": 2})
        print(
            f"database outage {outage_s:.1f} s: {len(health)} health checks, all 503; "
            f"{len(bodies)} uplinks stored once, 2 frames complete"
        )
    finally:
        publisher.close()
        runtime.stop()
        runtime.store.engine.dispose()


# --- processes crash ------------------------------------------------------------------------


def write_config(tmp_path: Path, broker: Any, db_url: str, **extra: Any) -> tuple[Path, Path]:
    """conf.json and credentials.json for a bridge or webapp process."""
    conf = {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "app_id": APP_ID,
            "tenant": TENANT,
            "client_id": f"proc-{uuid.uuid4().hex[:6]}",
        },
        "database": {"url": db_url},
        "frame_timeout_s": 600,
        "log_level": "DEBUG",
        **extra,
    }
    conf_path = tmp_path / f"conf-{uuid.uuid4().hex[:6]}.json"
    creds_path = tmp_path / "credentials.json"
    conf_path.write_text(json.dumps(conf))
    creds_path.write_text("{}")
    return conf_path, creds_path


class Process:
    """`python -m <module> --config … --credentials …`, its output in a file."""

    def __init__(self, module: str, conf: Path, creds: Path, log: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            module,
            "--config",
            str(conf),
            "--credentials",
            str(creds),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("THERMAL_")}
        env["PYTHONPATH"] = str(ROOT)
        with self.log.open("ab") as out:
            out.write(f"\n=== run {self.runs + 1}\n".encode())
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.runs += 1
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def run_text(self) -> str:
        """The output of the current run."""
        return self.text().rsplit(f"=== run {self.runs}\n", 1)[-1]

    def wait_log(self, needle: str, count: int = 1, what: str = "") -> None:
        def found() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited:\n{self.text()[-3000:]}")
            return self.run_text().count(needle) >= count

        wait_for(found, what=what or needle)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def sentinel(n: int) -> bytes:
    """A message the bridge ignores and logs at DEBUG: once logged, all before it is handled."""
    return json.dumps(
        {"end_device_ids": {"device_id": f"sentinel{n}"}, "join_accept": {"session_key_id": "x"}}
    ).encode()


def test_bridge_process_killed_mid_frame_resumes_from_stored_fragments(
    mqtt_broker: Any, mysql_url: str, db: Database, tmp_path: Path
) -> None:
    conf, creds = write_config(tmp_path, mqtt_broker, mysql_url)
    bridge = Process("bridge", conf, creds, tmp_path / "bridge.log").start()
    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    node = Node("prockill")
    bodies = [node.status(), *node.frame(4, 44.0, 3), *node.frame(5, 45.0, 4, Mode.FAST)]
    try:
        bridge.wait_log("connected to MQTT", what="the bridge process to subscribe")
        for body in bodies[:11]:
            publisher.publish(topic(node.device_id), body)
        wait_for(lambda: db.count(t.uplinks) == 11, what="11 uplinks stored")
        for body in bodies[11:15]:  # some of these are in flight when the process dies
            publisher.publish(topic(node.device_id), body)
        bridge.kill()
        stored_at_kill = db.count(t.uplinks)
        for body in bodies[15:]:  # published while no bridge runs: the session queues them
            publisher.publish(topic(node.device_id), body)
        publisher.publish(topic("sentinel1"), sentinel(1))
        bridge.start()
        bridge.wait_log("ignoring join_accept message of sentinel1", what="the queue drained")
        assert "resumed 1 open frame(s)" in bridge.run_text()
        wait_for(lambda: len(db.frames("prockill")) == 2, what="both frames")
        assert_exactly_once(db, [node], {"prockill": 2})
        print(f"bridge SIGKILLed with {stored_at_kill} of {len(bodies)} uplinks stored")
    finally:
        publisher.close()
        bridge.stop()


def test_two_bridges_by_mistake_store_everything_once(
    mqtt_broker: Any, mysql_url: str, db: Database, tmp_path: Path
) -> None:
    first = Process("bridge", *write_config(tmp_path, mqtt_broker, mysql_url), tmp_path / "a.log")
    second = Process("bridge", *write_config(tmp_path, mqtt_broker, mysql_url), tmp_path / "b.log")
    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    nodes = [Node("twin1"), Node("twin2")]
    try:
        # Started together: their schema upgrades of the empty database meet too.
        for bridge in (first.start(), second.start()):
            bridge.wait_log("connected to MQTT", what="a bridge process to subscribe")
        streams = [
            [n.status(), *n.frame(6 + i, 46.0, 1), *n.frame(8 + i, 47.0, 2)]
            for i, n in enumerate(nodes)
        ]
        for pair in zip(*streams, strict=True):  # the two devices interleaved
            for node, body in zip(nodes, pair, strict=True):
                publisher.publish(topic(node.device_id), body)
        publisher.publish(topic("sentinel2"), sentinel(2))
        for bridge in (first, second):  # both have handled every message
            bridge.wait_log("ignoring join_accept message of sentinel2", what="a bridge to drain")
        # Each bridge re-reads a device's open frames when the other stored its uplinks
        # (bridge/service.py, _known_uplinks): no frame is half-seen and left open.
        assert_exactly_once(db, nodes, {"twin1": 2, "twin2": 2})
        assert db.count(t.ambient) <= sum(len(n.sent) for n in nodes)
    finally:
        publisher.close()
        first.stop()
        second.stop()


def test_socket_client_reconnects_after_a_server_crash_and_gets_a_fresh_snapshot(
    mqtt_broker: Any, mysql_url: str, db: Database, tmp_path: Path
) -> None:
    port = free_port()
    conf, creds = write_config(
        tmp_path, mqtt_broker, mysql_url, web={"host": "127.0.0.1", "port": port}, log_level="INFO"
    )
    server = Process("webapp", conf, creds, tmp_path / "web.log").start()
    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    node = Node("sock1")
    client = sio_client.Client(reconnection=True, reconnection_delay=0.2, reconnection_delay_max=1)
    received: list[tuple[int, str, dict[str, Any]]] = []  # (connection number, event, data)
    connections = [0]
    lock = threading.Lock()

    @client.on("connect")
    def _connect() -> None:
        with lock:
            connections[0] += 1
        client.emit("subscribe", {"devices": ["sock1"]})  # what the dashboard does

    for name in ("node_state", "frame", "ambient"):
        client.on(name, lambda data, name=name: received.append((connections[0], name, data)))

    def events(connection: int, name: str) -> list[dict[str, Any]]:
        return [d for c, n, d in list(received) if c == connection and n == name]

    try:
        wait_for(lambda: _healthy(port), what="the push server to answer")
        for body in [node.status(), *node.frame(10, 51.0, 1, Mode.FAST)]:
            publisher.publish(topic(node.device_id), body)
        wait_for(lambda: len(db.frames("sock1")) == 1, what="the first frame")
        client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=20)
        wait_for(lambda: events(1, "frame"), what="the snapshot's frame")
        assert [f["temp_max"] for f in events(1, "frame")] == [51.0]
        server.kill()
        for body in node.frame(11, 52.0, 2, Mode.FAST):  # while the server is down
            publisher.publish(topic(node.device_id), body)
        server.start()
        wait_for(lambda: connections[0] >= 2, what="the client to reconnect")
        # The fresh snapshot after the reconnect (or the live event right after it) has frame 2.
        wait_for(
            lambda: any(f["temp_max"] == 52.0 for f in events(connections[0], "frame")),
            what="the frame stored while the server was down",
        )
        assert events(connections[0], "node_state"), "no node_state in the fresh snapshot"
        assert_exactly_once(db, [node], {"sock1": 2})
    finally:
        client.disconnect()
        publisher.close()
        server.stop()


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False
