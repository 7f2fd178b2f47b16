"""The bridge end to end on real Mosquitto and MariaDB: TTN-format uplinks published with paho,
asserted in MySQL. Nothing that arrived and was valid may be lost."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from db import schema as t
from db.gridpack import unpack_grid
from node_firmware.protocol import (
    Mode,
    NodeStatus,
    encode_fragment,
    encode_status,
    fragment_frame,
)
from tests.bridge.harness import BridgeHarness, Publisher, bridge_config
from tests.ttn_messages import at_seconds, topic, uplink

pytestmark = pytest.mark.integration


def scene(seed: int, hot: float = 40.0) -> list[list[float | None]]:
    rng = random.Random(seed)
    grid: list[list[float | None]] = [
        [round(22 + rng.random() * 6, 1) for _ in range(32)] for _ in range(24)
    ]
    grid[5][7] = hot  # the hot cell
    grid[3][4] = None  # a dead pixel
    return grid


def payloads(
    grid: list[list[float | None]], mode: Mode, number: int, ambient: float = 24
) -> list[bytes]:
    return [
        encode_fragment(f) for f in fragment_frame(grid, mode, number, fan=False, ambient=ambient)
    ]


class Node:
    """Publishes one device's uplinks with increasing f_cnt and received_at."""

    def __init__(self, pub: Publisher, device_id: str, start_s: float = 0.0) -> None:
        self.pub, self.device_id = pub, device_id
        self.f_cnt = 0
        self.t = start_s
        self.sent: list[bytes] = []

    def body(self, payload: bytes, f_port: int = 1) -> bytes:
        body = uplink(self.device_id, self.f_cnt, payload, at_seconds(self.t), f_port=f_port)
        self.f_cnt += 1
        self.t += 1.0
        return body

    def send(self, payload: bytes, f_port: int = 1) -> bytes:
        body = self.body(payload, f_port)
        self.pub.publish(topic(self.device_id), body)
        self.sent.append(body)
        return body


@pytest.fixture
def publisher(mqtt_broker: Any) -> Iterator[Publisher]:
    pub = Publisher(mqtt_broker.host, mqtt_broker.port)
    yield pub
    pub.close()


@pytest.fixture
def harness(mqtt_broker: Any, mysql_url: str) -> Iterator[BridgeHarness]:
    h = BridgeHarness(bridge_config(mqtt_broker.host, mqtt_broker.port, mysql_url)).start()
    yield h
    h.stop()


def frames_of(h: BridgeHarness, device_id: str) -> list[Any]:
    with h.store.engine.connect() as conn:
        return conn.execute(
            select(t.frames).where(t.frames.c.device_id == device_id).order_by(t.frames.c.frame_id)
        ).all()


def count(h: BridgeHarness, table: Any) -> int:
    with h.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def quantised(grid: list[list[float | None]]) -> tuple[tuple[float | None, ...], ...]:
    return tuple(tuple(None if v is None else round(v, 1) for v in row) for row in grid)


def test_slow_frame_in_shuffled_order_with_duplicates_is_stored_once(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    node = Node(publisher, "node1")
    grid = scene(1)
    bodies = [node.body(p) for p in payloads(grid, Mode.SLOW, 5)]
    shuffled = bodies + random.Random(2).sample(bodies, 6)  # six redeliveries
    random.Random(3).shuffle(shuffled)
    for body in shuffled:
        publisher.publish(topic("node1"), body)
    harness.wait_handled(len(shuffled))
    rows = frames_of(harness, "node1")
    assert len(rows) == 1
    frame = rows[0]
    assert frame.complete and frame.coverage == 1.0 and frame.mode == "slow"
    assert unpack_grid(frame.grid, 24, 32) == quantised(grid)
    assert frame.png.startswith(b"\x89PNG")
    assert frame.temp_max == pytest.approx(40.0, abs=0.05)
    assert count(harness, t.uplinks) == 24  # the duplicates are logged once
    assert count(harness, t.open_fragments) == 0
    assert [e["complete"] for e in harness.recorder.of("frame")] == [True]
    assert harness.recorder.of("ambient")[0]["temperature"] == 24.0
    # The first frame fragment of the device arrived with f_cnt 0: no f_cnt key, still counted.
    device = harness.store.device("node1")
    assert device is not None and device.uplinks == 24 and device.online


def test_fast_frame_is_the_block_maxima(harness: BridgeHarness, publisher: Publisher) -> None:
    node = Node(publisher, "fast1")
    grid = scene(4, hot=61.3)
    parts = payloads(grid, Mode.FAST, 63)
    for p in reversed(parts + parts):
        node.send(p)
    harness.wait_handled(4)
    rows = frames_of(harness, "fast1")
    assert len(rows) == 1 and rows[0].complete and rows[0].mode == "fast"
    stored = unpack_grid(rows[0].grid, 6, 8)
    assert stored[1][1] == 61.3  # the 4 x 4 block holding the hot pixel
    assert rows[0].frame_number == 63


def test_lost_fragment_keeps_partial_frame_with_no_data_row(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    node = Node(publisher, "lossy")
    first = payloads(scene(5), Mode.SLOW, 10)
    del first[7]  # lost on the air
    for p in first + payloads(scene(6), Mode.SLOW, 11):
        node.send(p)
    harness.wait_handled(47)
    harness.recorder.wait_for(lambda: len(harness.recorder.of("frame")) >= 2)
    rows = frames_of(harness, "lossy")
    partial = next(r for r in rows if r.frame_number == 10)
    assert not partial.complete and partial.coverage == pytest.approx(23 / 24)
    grid = unpack_grid(partial.grid, 24, 32)
    assert all(v is None for v in grid[7]) and grid[8] == quantised(scene(5))[8]
    assert next(r for r in rows if r.frame_number == 11).complete


def test_two_devices_interleaved(harness: BridgeHarness, publisher: Publisher) -> None:
    a, b = Node(publisher, "alpha"), Node(publisher, "bravo")
    pa, pb = payloads(scene(7), Mode.SLOW, 1), payloads(scene(8), Mode.FAST, 1)
    for i in range(24):
        a.send(pa[i])
        if i < 2:
            b.send(pb[i])
    harness.wait_handled(26)
    assert [r.complete for r in frames_of(harness, "alpha")] == [True]
    assert [r.complete for r in frames_of(harness, "bravo")] == [True]


def test_bridge_restarted_mid_frame_still_completes_it(
    mqtt_broker: Any, mysql_url: str, publisher: Publisher
) -> None:
    config = bridge_config(mqtt_broker.host, mqtt_broker.port, mysql_url)
    first = BridgeHarness(config, client_id="restart-bridge").start()
    node = Node(publisher, "restart1")
    parts = payloads(scene(9), Mode.SLOW, 2)
    for p in parts[:10]:
        node.send(p)
    first.wait_handled(10)
    first.stop()
    for p in parts[10:]:  # published while no bridge runs: the broker keeps them (QoS 1 session)
        node.send(p)
    second = BridgeHarness(config, client_id="restart-bridge").start()
    try:
        second.recorder.wait_for(lambda: len(second.recorder.of("frame")) == 1)
        rows = frames_of(second, "restart1")
        assert len(rows) == 1 and rows[0].complete
        assert unpack_grid(rows[0].grid, 24, 32) == quantised(scene(9))
    finally:
        second.stop()


def test_database_down_mid_stream_loses_nothing(
    harness: BridgeHarness, publisher: Publisher, mariadb_server: Any
) -> None:
    node = Node(publisher, "dbdown")
    parts = payloads(scene(10), Mode.SLOW, 3) + payloads(scene(11), Mode.SLOW, 4)
    for p in parts[:12]:
        node.send(p)
    harness.wait_handled(12)
    mariadb_server.stop()
    try:
        for p in parts[12:30]:
            node.send(p)
        harness.recorder.wait_for(lambda: harness.adapter.storage_down)
    finally:
        mariadb_server.start()
    for p in parts[30:]:
        node.send(p)
    harness.wait_handled(48, timeout=90)
    rows = frames_of(harness, "dbdown")
    assert [(r.frame_number, r.complete) for r in rows] == [(3, True), (4, True)]
    assert count(harness, t.uplinks) == 48


def test_broker_restart_resumes_the_session(
    harness: BridgeHarness, mqtt_broker: Any, publisher: Publisher
) -> None:
    node = Node(publisher, "brokerbounce")
    parts = payloads(scene(12), Mode.SLOW, 6)
    for p in parts[:8]:
        node.send(p)
    harness.wait_handled(8)
    publisher.close()
    mqtt_broker.restart()
    pub2 = Publisher(mqtt_broker.host, mqtt_broker.port)
    node.pub = pub2
    try:
        assert harness.adapter.connected.wait(60), "bridge did not reconnect"
        for p in parts[8:]:
            node.send(p)
        harness.recorder.wait_for(lambda: len(harness.recorder.of("frame")) == 1, timeout=60)
        assert frames_of(harness, "brokerbounce")[0].complete
    finally:
        pub2.close()


def test_malformed_input_is_counted_logged_skipped_and_the_bridge_keeps_working(
    harness: BridgeHarness, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    node = Node(publisher, "noisy")
    good = payloads(scene(13), Mode.SLOW, 9)
    bad_bodies = [
        b"{this is not json",
        b'{"end_device_ids": {"device_id": "noisy"}, "received_at": "2026-11-01T12:00:00Z",'
        b' "uplink_message": {"f_port": 1, "frm_payload": "%%%not-base64"}}',
        b'{"uplink_message": {"frm_payload": "AAAA"}}',
    ]
    for body in bad_bodies:
        publisher.publish(topic("noisy"), body)
    node.send(good[0][:40])  # wrong length for slow mode
    node.send(bytes([0xC0 | 9]) + good[0][1:])  # reserved mode 3
    node.send(good[0], f_port=7)  # unknown FPort
    node.send(encode_status(NodeStatus(1, False, False, Mode.SLOW, 50, 20))[:4], f_port=2)
    for p in good:
        node.send(p)
    harness.wait_handled(len(bad_bodies) + 4 + 24)
    metrics = harness.bridge.metrics
    assert metrics["invalid_messages"] == 3
    assert metrics["invalid_payloads"] == 4
    assert [r.complete for r in frames_of(harness, "noisy")] == [True]
    text = caplog.text
    assert "not valid JSON" in text and "not valid base64" in text and "device_id" in text
    assert "reserved" in text and "FPort 7" in text and "status must be 5 bytes" in text
    device = harness.store.device("noisy")
    assert device is not None and device.invalid_uplinks == 4


def test_the_mqtt_socket_sends_without_nagle_delay(harness: BridgeHarness) -> None:
    """The worker acknowledges each message with a small packet after its commit; with Nagle's
    algorithm on (paho's default) each waited for the broker's ACK of the one before."""
    sock = harness.adapter.client.socket()
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
