"""Settings downlinks end to end on real Mosquitto and MariaDB: published to down/replace,
followed through TTN's events by correlation id, applied on the node's status uplink."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.downlinks import RateLimited
from bridge.ttn import format_time
from node_firmware.protocol import (
    Mode,
    NodeStatus,
    Settings,
    decode_settings,
    encode_fragment,
    encode_status,
    fragment_frame,
)
from tests.bridge.harness import BridgeHarness, Publisher, bridge_config
from tests.ttn_messages import APP_ID, at_seconds, downlink_event, topic, uplink
from webapp.settings import SettingsChange

pytestmark = pytest.mark.integration


@pytest.fixture
def publisher(mqtt_broker: Any) -> Iterator[Publisher]:
    pub = Publisher(mqtt_broker.host, mqtt_broker.port)
    pub.subscribe(f"v3/{APP_ID}@ttn/devices/+/down/replace")
    yield pub
    pub.close()


@pytest.fixture
def harness(mqtt_broker: Any, mysql_url: str, publisher: Publisher) -> Iterator[BridgeHarness]:
    h = BridgeHarness(bridge_config(mqtt_broker.host, mqtt_broker.port, mysql_url)).start()
    # The device must exist: it sent its boot status.
    status = encode_status(NodeStatus(1, False, False, Mode.SLOW, 50, 21))
    publisher.publish(topic("node1"), uplink("node1", 0, status, at_seconds(0), f_port=2))
    h.wait_handled(1)
    yield h
    h.stop()


def statuses(h: BridgeHarness, downlink_id: int) -> list[str]:
    return [p["status"] for p in h.recorder.of("downlink") if p["downlink_id"] == downlink_id]


def request(h: BridgeHarness, **change: Any) -> Any:
    outcome = h.bridge.downlinks.request("node1", SettingsChange(**change), datetime.now(UTC))
    h.bridge.publish_now()
    return outcome


def test_downlink_lifecycle_queued_sent_acked_applied(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    outcome = request(harness, fan=True, mode=Mode.FAST)
    assert outcome.status == "queued"
    downlink = outcome.downlink
    assert downlink is not None
    # Published to down/replace in DESIGN.md's shape with our correlation id.
    topic_, body = publisher.wait_received(1)[0]
    assert topic_ == f"v3/{APP_ID}@ttn/devices/node1/down/replace"
    sent = json.loads(body)
    item = sent["downlinks"][0]
    assert sent["end_device_ids"]["application_ids"]["application_id"] == APP_ID
    assert item["f_port"] == 10 and item["confirmed"] and item["priority"] == "NORMAL"
    assert decode_settings(base64.b64decode(item["frm_payload"])) == Settings(True, Mode.FAST, 50)
    cid = item["correlation_ids"]
    assert cid == [downlink.correlation_id] and len(cid[0]) <= 100

    for i, kind in enumerate(["queued", "sent", "ack"]):
        publisher.publish(
            topic("node1", f"down/{kind}"), downlink_event("node1", kind, cid, at_seconds(10 + i))
        )
    harness.wait_handled(4)
    # The node applies it and reports its new settings in a status uplink.
    status = encode_status(NodeStatus(1, True, True, Mode.FAST, 50, 22))
    publisher.publish(topic("node1"), uplink("node1", 1, status, at_seconds(20), f_port=2))
    harness.wait_handled(5)
    assert statuses(harness, downlink.downlink_id) == [
        "queued",
        "queued",
        "sent",
        "acked",
        "applied",
    ]
    history = harness.store.downlinks("node1")[0].history
    assert [s.status for s in history] == ["queued", "queued", "sent", "acked", "applied"]
    device = harness.store.device("node1")
    assert device is not None
    assert (device.reported_fan, device.reported_mode, device.fan_running) == (True, "fast", True)


def test_event_without_correlation_id_falls_back_to_port_and_payload(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    downlink = request(harness, threshold=70).downlink
    publisher.wait_received(1)
    publisher.publish(
        topic("node1", "down/sent"),
        downlink_event("node1", "sent", [], at_seconds(5), payload=downlink.payload),
    )
    harness.wait_handled(2)
    assert statuses(harness, downlink.downlink_id)[-1] == "sent"


def test_nack_then_failed_after_retries(harness: BridgeHarness, publisher: Publisher) -> None:
    downlink = request(harness, fan=True).downlink
    cid = [downlink.correlation_id]
    for i, kind in enumerate(["queued", "sent", "nack", "sent", "failed"]):
        publisher.publish(
            topic("node1", f"down/{kind}"), downlink_event("node1", kind, cid, at_seconds(i))
        )
    harness.wait_handled(6)
    assert statuses(harness, downlink.downlink_id)[1:] == [
        "queued",
        "sent",
        "nacked",
        "sent",
        "failed",
    ]
    record = harness.store.downlink(downlink.downlink_id)
    assert record is not None and record.status == "failed"
    assert record.message == "max_retries_reached"


def test_newer_request_supersedes_the_pending_one(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    first = request(harness, threshold=60).downlink
    second = request(harness, threshold=65).downlink
    assert statuses(harness, first.downlink_id) == ["queued", "superseded"]
    # A late ack of the superseded one does not revive it.
    publisher.publish(
        topic("node1", "down/ack"),
        downlink_event("node1", "ack", [first.correlation_id], at_seconds(3)),
    )
    harness.wait_handled(2)
    record = harness.store.downlink(first.downlink_id)
    assert record is not None and record.status == "superseded"
    assert harness.store.downlink(second.downlink_id).status == "queued"


def test_same_settings_again_is_unchanged(harness: BridgeHarness) -> None:
    outcome = request(harness, threshold=50, fan=False)
    assert outcome.status == "unchanged" and outcome.downlink is None


def test_fan_request_keeps_the_mode_the_node_sends_in_when_its_status_was_lost(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    # node7's boot status uplink was lost: the bridge knows its mode only from its fragments.
    grid: list[list[float | None]] = [[20.0 + c / 10 for c in range(32)] for _ in range(24)]
    fragments = fragment_frame(grid, Mode.FAST, 3, fan=False, ambient=21)
    for i, fragment in enumerate(fragments):
        body = uplink("node7", i + 1, encode_fragment(fragment), at_seconds(1 + i))
        publisher.publish(topic("node7"), body)
    harness.wait_handled(1 + len(fragments))

    outcome = harness.bridge.downlinks.request("node7", SettingsChange(fan=True), datetime.now(UTC))
    harness.bridge.publish_now()

    assert outcome.status == "queued"
    item = json.loads(publisher.wait_received(1)[0][1])["downlinks"][0]
    sent = decode_settings(base64.b64decode(item["frm_payload"]))
    assert sent == Settings(True, Mode.FAST, 50), "the fan changes, the mode stays fast"


def test_superseded_requests_never_sent_do_not_count_against_the_daily_limit(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    # A user trying thresholds: each request replaces the last before TTN sent it.
    limit = harness.bridge.config.settings_per_day
    outcomes = [request(harness, threshold=60 + i) for i in range(limit + 3)]
    assert [o.status for o in outcomes] == ["queued"] * (limit + 3)
    first = outcomes[0].downlink
    assert first is not None and statuses(harness, first.downlink_id) == ["queued", "superseded"]


def test_transmitted_downlinks_count_against_the_daily_limit_until_a_slot_frees(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    limit = harness.bridge.config.settings_per_day
    start = datetime.now(UTC)
    for i in range(limit):
        downlink = request(harness, threshold=60 + i).downlink
        publisher.publish(
            topic("node1", "down/sent"),
            downlink_event("node1", "sent", [downlink.correlation_id], at_seconds(i)),
        )
        harness.wait_handled(2 + i)
    # Sent, then superseded by the next request: each of them was transmitted and counts.
    with pytest.raises(RateLimited) as refused:
        request(harness, threshold=40)
    # A slot frees 24 h after the oldest of them was requested.
    assert start + timedelta(days=1) <= refused.value.retry_at
    assert refused.value.retry_at <= datetime.now(UTC) + timedelta(days=1)
    assert format_time(refused.value.retry_at) in str(refused.value)


def history(h: BridgeHarness, downlink_id: int) -> list[str]:
    record = next(d for d in h.store.downlinks("node1") if d.downlink_id == downlink_id)
    return [step.status for step in record.history]


def test_a_redelivered_downlink_event_is_recorded_and_pushed_once(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    downlink = request(harness, fan=True).downlink
    sent = downlink_event("node1", "sent", [downlink.correlation_id], at_seconds(5))
    publisher.publish(topic("node1", "down/sent"), sent)
    publisher.publish(topic("node1", "down/sent"), sent)  # the broker delivers it again
    harness.wait_handled(3)
    assert statuses(harness, downlink.downlink_id) == ["queued", "sent"]
    assert history(harness, downlink.downlink_id) == ["queued", "sent"]
    # A late duplicate of an event a final status already outran is kept once too.
    status = encode_status(NodeStatus(1, True, True, Mode.SLOW, 50, 21))
    publisher.publish(topic("node1"), uplink("node1", 1, status, at_seconds(6), f_port=2))
    ack = downlink_event("node1", "ack", [downlink.correlation_id], at_seconds(7))
    for _ in range(2):
        publisher.publish(topic("node1", "down/ack"), ack)
    harness.wait_handled(6)
    assert history(harness, downlink.downlink_id) == ["queued", "sent", "applied", "acked"]


def test_a_correlation_id_matches_only_a_downlink_of_the_event_s_device(
    harness: BridgeHarness, publisher: Publisher
) -> None:
    downlink = request(harness, fan=True).downlink
    publisher.publish(
        topic("node2", "down/sent"),
        downlink_event("node2", "sent", [downlink.correlation_id], at_seconds(5)),
    )
    harness.wait_handled(2)
    assert statuses(harness, downlink.downlink_id) == ["queued"]
    assert history(harness, downlink.downlink_id) == ["queued"]
    record = harness.store.downlink(downlink.downlink_id)
    assert record is not None and record.status == "queued"
