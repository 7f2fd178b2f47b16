"""The simulator against a real Mosquitto: TTN v3's JSON, Class A downlinks, their events."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.ttn import DownlinkEvent, Uplink, build_downlink_replace, parse_message
from node_firmware import protocol
from node_firmware.protocol import Fragment, Mode, NodeStatus, Settings
from node_firmware.simulator import (
    DownlinkBodyError,
    Simulator,
    format_duration,
    lora_airtime_ns,
    main,
    parse_downlink_body,
)
from tests.node_firmware.conftest import Broker, Listener, Message

T0 = datetime(2026, 11, 23, 1, 2, 3, 123456, tzinfo=UTC)
TTN_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
FAN_ON_FAST_60 = Settings(fan=True, mode=Mode.FAST, threshold=60)

MakeSim = Callable[..., tuple[Simulator, Listener]]


@pytest.fixture
def make_sim(
    node_broker: Broker, listener_factory: Callable[[list[str]], Listener]
) -> Iterator[MakeSim]:
    """A Simulator on the test broker (own app id) and a listener on all of its topics."""
    made: list[Simulator] = []

    def make(**kwargs: Any) -> tuple[Simulator, Listener]:
        kwargs.setdefault("nodes", 1)
        kwargs.setdefault("interval_s", 0.2)
        kwargs.setdefault("app_id", f"app-{uuid.uuid4().hex[:8]}")
        kwargs.setdefault("tenant", "ttn")
        listener = listener_factory([f"v3/{kwargs['app_id']}@ttn/devices/#"])
        sim = Simulator(host=node_broker.host, port=node_broker.port, **kwargs)
        made.append(sim)
        return sim, listener

    yield make
    for sim in made:
        sim.stop()


def simulator_messages(listener: Listener) -> list[tuple[str, Message]]:
    """What the simulator published, in order, by kind: up, queued, sent, ack, nack, failed."""
    out = []
    for m in listener.wait_for(lambda ms: True, "messages"):
        kind = m.topic.rsplit("/", 1)[-1]
        if kind not in ("push", "replace"):  # not the test's own downlink requests
            out.append((kind, m))
    return out


def kinds(listener: Listener) -> list[str]:
    """The kinds of what the simulator published, in order."""
    return [kind for kind, _ in simulator_messages(listener)]


def uplinks(messages: list[Message]) -> list[Uplink]:
    """Parse uplink messages with the bridge's parser."""
    parsed = [parse_message(m.payload) for m in messages]
    assert all(isinstance(p, Uplink) for p in parsed)
    return [p for p in parsed if isinstance(p, Uplink)]


def body(message: Message) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(message.payload)
    return doc


def replace_settings(
    sim: Simulator,
    listener: Listener,
    settings: Settings,
    correlation_id: str,
    device: str = "node1",
) -> None:
    """What the bridge does: a confirmed FPort 10 downlink on down/replace."""
    payload = build_downlink_replace(
        sim.app_id, device, 10, protocol.encode_settings(settings), correlation_id
    )
    listener.publish(sim.topic(device, "down/replace"), payload)


def push(sim: Simulator, listener: Listener, settings: Settings, correlation_id: str) -> None:
    doc = {
        "downlinks": [
            {
                "f_port": 10,
                "frm_payload": base64.b64encode(protocol.encode_settings(settings)).decode(),
                "priority": "NORMAL",
                "confirmed": True,
                "correlation_ids": [correlation_id],
            }
        ]
    }
    listener.publish(sim.topic("node1", "down/push"), json.dumps(doc))


# --- airtime ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phy_bytes", "sf", "expected_ns"),
    [
        # 51-byte fragments + 13 bytes of LoRaWAN overhead: TTN's airtime calculator values.
        (64, 7, 118_016_000),
        (64, 8, 215_552_000),
        (64, 9, 390_144_000),
        (64, 10, 698_368_000),
        (64, 11, 1_560_576_000),  # low data rate optimisation from SF11
        (64, 12, 2_793_472_000),
        (26, 7, 61_696_000),  # 13 bytes of payload: TTN's "0.061696s"
        (18, 7, 51_456_000),  # a 5-byte status
        (52, 7, 102_656_000),  # a 39-byte fast fragment
    ],
)
def test_airtime_follows_the_semtech_formula(phy_bytes: int, sf: int, expected_ns: int) -> None:
    assert lora_airtime_ns(phy_bytes, sf) == expected_ns


def test_airtime_is_written_like_a_protobuf_duration() -> None:
    assert format_duration(61_696_000) == "0.061696s"
    assert format_duration(2_793_472_000) == "2.793472s"
    assert format_duration(2_000_000_000) == "2s"
    assert format_duration(500_000_000) == "0.500s"
    assert format_duration(1) == "0.000000001s"


# --- uplinks ------------------------------------------------------------------------------


def test_uplink_json_is_exactly_ttn_v3_shaped(make_sim: MakeSim) -> None:
    sim, listener = make_sim(nodes=3, seed=7)
    sim.step_all(T0)
    ups = listener.wait_count("/up", 3)
    assert [m.topic for m in ups] == [f"v3/{sim.app_id}@ttn/devices/node{i}/up" for i in (1, 2, 3)]
    for n, message in enumerate(ups, start=1):
        doc = body(message)
        assert list(doc) == ["end_device_ids", "correlation_ids", "received_at", "uplink_message"]
        assert doc["end_device_ids"] == {
            "device_id": f"node{n}",
            "application_ids": {"application_id": sim.app_id},
            "dev_eui": doc["end_device_ids"]["dev_eui"],
            "join_eui": "0000000000000000",
            "dev_addr": doc["end_device_ids"]["dev_addr"],
        }
        assert re.fullmatch(r"[0-9A-F]{16}", doc["end_device_ids"]["dev_eui"])
        assert re.fullmatch(r"[0-9A-F]{8}", doc["end_device_ids"]["dev_addr"])
        assert doc["correlation_ids"] and all(isinstance(c, str) for c in doc["correlation_ids"])
        assert doc["received_at"].startswith("2026-11-23T01:02:03.123456")
        assert TTN_TIME.match(doc["received_at"])
        up = doc["uplink_message"]
        assert "f_cnt" not in up  # the first uplink after the join has f_cnt 0: omitted
        assert up["f_port"] == 2  # the boot status
        assert {
            "session_key_id",
            "f_port",
            "frm_payload",
            "rx_metadata",
            "settings",
            "received_at",
            "consumed_airtime",
        } <= set(up)
        payload = base64.b64decode(up["frm_payload"])
        assert isinstance(protocol.decode_uplink(up["f_port"], payload), NodeStatus)
        meta = up["rx_metadata"][0]
        assert set(meta["gateway_ids"]) == {"gateway_id", "eui"}
        assert isinstance(meta["rssi"], int) and meta["channel_rssi"] == meta["rssi"]
        assert isinstance(meta["timestamp"], int) and 0 <= meta["timestamp"] < 2**32
        assert TTN_TIME.match(meta["received_at"]) and TTN_TIME.match(up["received_at"])
        lora = up["settings"]["data_rate"]["lora"]
        assert set(lora) == {"bandwidth", "spreading_factor", "coding_rate"}
        assert lora["bandwidth"] == 125000 and lora["coding_rate"] == "4/5"
        assert re.fullmatch(r"86[78]\d{6}", up["settings"]["frequency"])
        assert up["consumed_airtime"] == format_duration(
            lora_airtime_ns(len(payload) + 13, lora["spreading_factor"])
        )

        parsed = parse_message(message.payload)
        assert isinstance(parsed, Uplink)
        assert parsed.device_id == f"node{n}"
        assert parsed.application_id == sim.app_id
        assert parsed.f_cnt == 0 and parsed.f_port == 2 and parsed.payload == payload
        assert parsed.received_at == T0
        assert parsed.rssi == meta["rssi"] and parsed.gateway_id == "sim-gateway"
        assert parsed.data_rate == f"SF{lora['spreading_factor']}BW125"


def test_f_cnt_counts_from_the_second_uplink(make_sim: MakeSim) -> None:
    sim, listener = make_sim()
    for k in range(4):
        sim.step_all(T0 + timedelta(seconds=30 * k))
    ups = listener.wait_count("/up", 4)
    assert [body(m)["uplink_message"].get("f_cnt") for m in ups] == [None, 1, 2, 3]
    parsed = uplinks(ups)
    assert [p.f_cnt for p in parsed] == [0, 1, 2, 3]
    fragment = protocol.decode_uplink(1, parsed[1].payload)
    assert isinstance(fragment, Fragment) and fragment.index == 0


def test_simulated_nodes_send_a_whole_frame_the_bridge_can_decode(make_sim: MakeSim) -> None:
    sim, listener = make_sim(mode="fast", seed=3)
    for _ in range(3):
        sim.step_all()
    ups = uplinks(listener.wait_count("/up", 3))
    decoded = [protocol.decode_uplink(u.f_port, u.payload) for u in ups]
    assert isinstance(decoded[0], NodeStatus) and decoded[0].mode is Mode.FAST
    fragments = [d for d in decoded if isinstance(d, Fragment)]
    assert [f.index for f in fragments] == [0, 1]
    assert len({f.frame_number for f in fragments}) == 1
    pixels = [p for f in fragments for p in f.pixels if p is not None]
    assert min(pixels) > 20.0 and max(pixels) < 75.0


def test_same_seed_same_uplinks(make_sim: MakeSim) -> None:
    a, _ = make_sim(nodes=2, seed=11)
    b, _ = make_sim(nodes=2, seed=11)
    c, _ = make_sim(nodes=2, seed=12)
    runs = [[u.payload for _ in range(5) for u in sim.step_all(T0)] for sim in (a, b, c)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


# --- Class A downlinks --------------------------------------------------------------------


def test_replace_is_queued_sent_acked_and_applied(make_sim: MakeSim) -> None:
    sim, listener = make_sim()
    sim.step_all(T0)  # boot status
    replace_settings(sim, listener, FAN_ON_FAST_60, "thermal:dl:42")
    listener.wait_count("down/queued", 1)
    assert sim.nodes["node1"].settings != FAN_ON_FAST_60  # Class A: not before an uplink

    sim.step_all(T0 + timedelta(seconds=30))  # the downlink goes out in this uplink's RX window
    node = sim.nodes["node1"]
    assert node.settings == FAN_ON_FAST_60
    assert node.fan.running is True
    sim.step_all(T0 + timedelta(seconds=60))  # its next uplink acks it, and is the status
    listener.wait_count("down/ack", 1)
    listener.wait_count("/up", 3)
    published = simulator_messages(listener)
    assert [kind for kind, _ in published] == ["up", "queued", "up", "sent", "ack", "up"]

    events = {kind: m for kind, m in published if kind != "up"}
    statuses = []
    for kind in ("queued", "sent", "ack"):
        parsed = parse_message(events[kind].payload)
        assert isinstance(parsed, DownlinkEvent)
        assert "thermal:dl:42" in parsed.correlation_ids
        assert parsed.f_port == 10
        assert parsed.payload == bytes.fromhex("81003C")
        statuses.append(parsed.status)
        inner = body(events[kind])[f"downlink_{kind}"]
        assert inner["confirmed"] is True and inner["priority"] == "NORMAL"
        assert "thermal:dl:42" in inner["correlation_ids"]
    assert statuses == ["queued", "sent", "acked"]
    assert "session_key_id" in body(events["sent"])["downlink_sent"]

    last = parse_message(listener.of("/up")[-1].payload)
    assert isinstance(last, Uplink) and last.f_port == 2
    assert protocol.decode_status(last.payload) == NodeStatus(
        version=1,
        fan_requested=True,
        fan_running=True,
        mode=Mode.FAST,
        threshold=60,
        ambient=protocol.decode_status(last.payload).ambient,
    )
    assert sim.published["queued"] == sim.published["sent"] == sim.published["ack"] == 1


def test_nacked_downlink_is_requeued_then_fails_after_eight_attempts(make_sim: MakeSim) -> None:
    sim, listener = make_sim(nack=1.0)
    sim.step_all()
    replace_settings(sim, listener, FAN_ON_FAST_60, "thermal:dl:nack")
    listener.wait_count("down/queued", 1)
    for _ in range(9):
        sim.step_all()
    listener.wait_count("down/failed", 1)
    events = [k for k in kinds(listener) if k != "up"]
    assert events == ["queued"] + ["sent", "nack"] * 8 + ["failed"]
    sent_f_cnts = [body(m)["downlink_sent"].get("f_cnt", 0) for m in listener.of("down/sent")]
    assert sent_f_cnts == list(range(8))  # every retry is a new transmission
    failed = parse_message(listener.of("down/failed")[0].payload)
    assert isinstance(failed, DownlinkEvent)
    assert failed.status == "failed" and failed.message == "max_retries_reached"
    assert "thermal:dl:nack" in failed.correlation_ids
    error = body(listener.of("down/failed")[0])["downlink_failed"]["error"]
    assert error["namespace"] == "pkg/networkserver" and error["name"] == "max_retries_reached"
    nack = parse_message(listener.of("down/nack")[0].payload)
    assert isinstance(nack, DownlinkEvent) and nack.status == "nacked"
    assert sim.nodes["node1"].settings.threshold == 50  # it never reached the node
    sim.step_all()  # nothing left to send
    assert sim.published["sent"] == 8


def test_fail_chance_fails_the_downlink_at_once(make_sim: MakeSim) -> None:
    sim, listener = make_sim(fail=1.0)
    sim.connect()
    replace_settings(sim, listener, FAN_ON_FAST_60, "thermal:dl:fail")
    listener.wait_count("down/queued", 1)
    sim.step_all()
    sim.step_all()
    listener.wait_count("/up", 2)
    failed = listener.wait_count("down/failed", 1)
    assert [k for k in kinds(listener) if k != "up"] == ["queued", "failed"]
    parsed = parse_message(failed[0].payload)
    assert isinstance(parsed, DownlinkEvent) and "thermal:dl:fail" in parsed.correlation_ids
    assert sim.nodes["node1"].settings.threshold == 50


def test_replace_clears_the_queue(make_sim: MakeSim) -> None:
    sim, listener = make_sim()
    sim.step_all()
    push(sim, listener, Settings(False, Mode.SLOW, 40), "dl:a")
    push(sim, listener, Settings(False, Mode.SLOW, 41), "dl:b")
    replace_settings(sim, listener, FAN_ON_FAST_60, "dl:c")
    listener.wait_count("down/queued", 3)
    for _ in range(3):
        sim.step_all()
    listener.wait_count("down/ack", 1)
    listener.wait_count("/up", 4)
    sent = [parse_message(m.payload) for m in listener.of("down/sent")]
    assert len(sent) == 1 and "dl:c" in sent[0].correlation_ids  # type: ignore[union-attr]
    assert sim.nodes["node1"].settings == FAN_ON_FAST_60


def test_push_appends_to_the_queue_one_downlink_per_uplink(make_sim: MakeSim) -> None:
    sim, listener = make_sim()
    sim.step_all()
    push(sim, listener, Settings(False, Mode.SLOW, 40), "dl:a")
    push(sim, listener, Settings(True, Mode.SLOW, 41), "dl:b")
    listener.wait_count("down/queued", 2)
    sim.step_all()
    assert sim.nodes["node1"].settings.threshold == 40
    sim.step_all()
    assert sim.nodes["node1"].settings.threshold == 41
    sim.step_all()
    listener.wait_count("down/ack", 2)
    acks = [parse_message(m.payload) for m in listener.of("down/ack")]
    assert ["dl:a" in a.correlation_ids for a in acks] == [True, False]  # type: ignore[union-attr]
    assert [k for k in kinds(listener) if k != "up"] == [
        "queued",
        "queued",
        "sent",
        "ack",
        "sent",
        "ack",
    ]


# --- loss, duplicates, reordering ---------------------------------------------------------


def test_lost_uplinks_leave_f_cnt_gaps(make_sim: MakeSim) -> None:
    sim, listener = make_sim(loss=0.4, seed=5)
    for _ in range(30):
        sim.step_all()
    lost = sim.published["lost"]
    assert 0 < lost < 30
    ups = listener.wait_count("/up", 30 - lost)
    f_cnts = [body(m)["uplink_message"].get("f_cnt", 0) for m in ups]
    assert f_cnts == sorted(f_cnts) and len(f_cnts) == 30 - lost
    assert max(f_cnts) - min(f_cnts) + 1 > len(f_cnts)  # gaps show the loss


def test_total_loss_publishes_nothing(make_sim: MakeSim) -> None:
    sim, _ = make_sim(nodes=2, loss=1.0)
    for _ in range(3):
        sim.step_all()
    assert sim.published["lost"] == 6 and sim.published["up"] == 0


def test_duplicates_republish_the_exact_same_json(make_sim: MakeSim) -> None:
    sim, listener = make_sim(duplicates=1.0)
    for _ in range(3):
        sim.step_all()
    ups = listener.wait_count("/up", 6)
    assert [m.payload for m in ups[0::2]] == [m.payload for m in ups[1::2]]
    assert len({m.payload for m in ups}) == 3
    assert sim.published["duplicates"] == 3


def test_reorder_swaps_an_uplink_with_the_next(make_sim: MakeSim) -> None:
    sim, listener = make_sim(reorder=1.0)
    for _ in range(4):
        sim.step_all()
    ups = listener.wait_count("/up", 4)
    assert [body(m)["uplink_message"].get("f_cnt", 0) for m in ups] == [1, 0, 3, 2]


def test_held_uplink_is_flushed_on_stop(make_sim: MakeSim) -> None:
    sim, listener = make_sim(reorder=1.0)
    sim.step_all()
    sim.stop()
    assert len(listener.wait_count("/up", 1)) == 1


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"downlinks": "x"}',
        b'{"downlinks": [{"f_port": 0, "frm_payload": "gQAy"}]}',
        b'{"downlinks": [{"f_port": 10, "frm_payload": "***"}]}',
        b'{"downlinks": [{"f_port": 10}]}',
        b'{"downlinks": [{"f_port": 10, "frm_payload": "gQAy", "confirmed": "yes"}]}',
        b'{"downlinks": [{"f_port": 10, "frm_payload": "gQAy", "priority": "URGENT"}]}',
        b'{"downlinks": [{"f_port": 10, "frm_payload": "gQAy", "correlation_ids": [1]}]}',
    ],
)
def test_parse_downlink_body_refuses_malformed_bodies(payload: bytes) -> None:
    with pytest.raises(DownlinkBodyError):
        parse_downlink_body(payload)


def test_malformed_downlinks_are_logged_and_ignored(
    make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="node_firmware.simulator")
    sim, listener = make_sim()
    sim.connect()
    bad = [b"not json", b'{"downlinks": "x"}', b'{"downlinks": [{"f_port": 10, "frm_payload": 5}]}']
    for payload in bad:
        listener.publish(sim.topic("node1", "down/push"), payload)
    listener.publish(sim.topic("ghost", "down/push"), b'{"downlinks": []}')
    replace_settings(sim, listener, FAN_ON_FAST_60, "dl:after")
    listener.wait_count("down/queued", 1)
    assert sim.published["malformed"] == 3
    assert sim.published["unknown_device"] == 1
    assert caplog.text.count("ignored a malformed down/push for node1") == 3
    assert "no such simulated device" in caplog.text
    sim.step_all()  # still serving
    assert sim.nodes["node1"].settings == FAN_ON_FAST_60


# --- running ------------------------------------------------------------------------------


def test_background_thread_sends_every_node_and_stops_cleanly(make_sim: MakeSim) -> None:
    sim, listener = make_sim(nodes=3, interval_s=0.05)
    sim.start(rounds=3)
    assert sim.finished.wait(20)
    ups = listener.wait_count("/up", 9)
    assert {m.topic.split("/")[3] for m in ups} == {"node1", "node2", "node3"}
    sim.stop()
    sim.stop()  # twice is fine
    assert sim.published["up"] == 9


def test_start_and_stop_like_the_demo(node_broker: Broker, listener_factory: Any) -> None:
    listener = listener_factory(["v3/thermal-demo-test@ttn/devices/+/up"])
    sim = Simulator(
        host=node_broker.host,
        port=node_broker.port,
        app_id="thermal-demo-test",
        tenant="ttn",
        nodes=3,
        interval_s=0.05,
        mode="slow",
        seed=7,
    )
    sim.start()
    try:
        listener.wait_count("/up", 6)
        assert sorted(sim.nodes) == ["node1", "node2", "node3"]
    finally:
        sim.stop()
    assert not any(t.name == "thermal-simulator" for t in threading.enumerate())


def test_connect_fails_clearly_without_a_broker() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = Simulator(host="127.0.0.1", port=port, app_id="a", tenant="ttn", nodes=1, interval_s=1)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        sim.connect(timeout_s=0.5)


def test_invalid_options_are_refused() -> None:
    base = {"host": "127.0.0.1", "port": 1, "app_id": "a", "tenant": "ttn"}
    with pytest.raises(ValueError, match="nodes"):
        Simulator(**base, nodes=0, interval_s=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval_s"):
        Simulator(**base, nodes=1, interval_s=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss"):
        Simulator(**base, nodes=1, interval_s=1, loss=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        Simulator(**base, nodes=1, interval_s=1, mode="turbo")  # type: ignore[arg-type]


def test_command_line_reads_the_config_and_runs(
    node_broker: Broker, listener_factory: Any, tmp_path: Path
) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text(
        json.dumps({"mqtt": {"host": "192.0.2.1", "port": 1, "app_id": "cli-app", "tenant": "ttn"}})
    )
    listener = listener_factory(["v3/cli-app@ttn/devices/+/up"])
    code = main(
        [
            "--config",
            str(conf),
            "--host",
            node_broker.host,
            "--port",
            str(node_broker.port),
            "--nodes",
            "2",
            "--interval",
            "0.05",
            "--rounds",
            "3",
            "--mode",
            "fast",
            "--device-prefix",
            "rack",
            "--seed",
            "4",
        ]
    )
    assert code == 0
    ups = listener.wait_count("/up", 6)
    assert {m.topic.split("/")[3] for m in ups} == {"rack1", "rack2"}
    status = parse_message(ups[0].payload)
    assert isinstance(status, Uplink)
    assert protocol.decode_status(status.payload).mode is Mode.FAST


def test_command_line_reports_a_bad_config(tmp_path: Path, capsys: Any) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text("{not json")
    assert main(["--config", str(conf)]) == 2
    assert "configuration error" in capsys.readouterr().err
