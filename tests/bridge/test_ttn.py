"""TTN v3 JSON parsing and the down/replace body (bridge/ttn.py)."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ttn import (
    DownlinkEvent,
    IgnoredMessage,
    TTNMessageError,
    Uplink,
    build_downlink_replace,
    format_time,
    parse_message,
    parse_time,
)
from tests.ttn_messages import at_seconds, downlink_event, uplink


def test_uplink_fields_are_read_and_extras_ignored() -> None:
    body = uplink("node1", 42, b"\x01\x02\x03", at_seconds(5), f_port=2)
    msg = parse_message(body)
    assert isinstance(msg, Uplink)
    assert msg.device_id == "node1"
    assert msg.application_id == "thermal-test"
    assert (msg.f_port, msg.f_cnt, msg.payload) == (2, 42, b"\x01\x02\x03")
    assert msg.received_at == at_seconds(5).replace(microsecond=at_seconds(5).microsecond)
    assert msg.rssi == -97 and msg.snr == 7.5 and msg.gateway_id == "gw-roof"
    assert msg.data_rate == "SF7BW125"


def test_first_uplink_after_join_has_no_f_cnt_and_means_zero() -> None:
    msg = parse_message(uplink("node1", 0, b"\x00", at_seconds(0)))
    assert isinstance(msg, Uplink) and msg.f_cnt == 0
    assert b'"f_cnt"' not in uplink("node1", 0, b"\x00", at_seconds(0))


def test_redelivered_uplink_has_the_same_uplink_id() -> None:
    a = parse_message(uplink("n", 7, b"x", at_seconds(1)))
    b = parse_message(uplink("n", 7, b"x", at_seconds(1)))
    c = parse_message(uplink("n", 7, b"x", at_seconds(2)))
    assert isinstance(a, Uplink) and isinstance(b, Uplink) and isinstance(c, Uplink)
    assert a.uplink_id == b.uplink_id != c.uplink_id


def test_nanosecond_timestamps_parse_to_utc() -> None:
    assert parse_time("2026-01-02T03:04:05.123456789Z") == datetime(
        2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC
    )
    assert parse_time("2026-01-02T04:04:05+01:00") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"uplink_message": {}}', "end_device_ids"),
        (b'{"end_device_ids": {"application_ids": {}}}', "device_id"),
        (
            b'{"end_device_ids": {"device_id": "n"}, "uplink_message": {"f_port": 1}}',
            "frm_payload is missing",
        ),
        (
            b'{"end_device_ids": {"device_id": "n"}, "received_at": "2026-01-01T00:00:00Z",'
            b' "uplink_message": {"frm_payload": "!!!"}}',
            "not valid base64",
        ),
        (
            b'{"end_device_ids": {"device_id": "n"}, "received_at": "yesterday",'
            b' "uplink_message": {"frm_payload": "AA=="}}',
            "RFC 3339",
        ),
        (
            b'{"end_device_ids": {"device_id": "n"}, "received_at": "2026-01-01T00:00:00Z",'
            b' "uplink_message": {"frm_payload": "AA==", "f_cnt": "x"}}',
            "f_cnt",
        ),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_unusable_messages_raise_one_error_type_naming_the_problem(
    body: bytes, fragment: str
) -> None:
    with pytest.raises(TTNMessageError, match=fragment):
        parse_message(body)


def test_other_ttn_messages_are_recognised_and_ignored() -> None:
    body = json.dumps({"end_device_ids": {"device_id": "n"}, "join_accept": {}}).encode()
    msg = parse_message(body)
    assert msg == IgnoredMessage(device_id="n", kind="join_accept")


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("queued", "queued"),
        ("sent", "sent"),
        ("ack", "acked"),
        ("nack", "nacked"),
        ("failed", "failed"),
    ],
)
def test_downlink_events_carry_status_and_our_correlation_id(kind: str, status: str) -> None:
    body = downlink_event(
        "node1", kind, ["thermal:downlink:abc"], at_seconds(3), payload=b"\x81\x00\x32"
    )
    msg = parse_message(body)
    assert isinstance(msg, DownlinkEvent)
    assert msg.status == status
    assert "thermal:downlink:abc" in msg.correlation_ids
    assert msg.payload == b"\x81\x00\x32" and msg.f_port == 10
    if kind == "failed":
        assert msg.message == "max_retries_reached"


def test_down_replace_body_matches_design() -> None:
    body = json.loads(build_downlink_replace("app1", "node1", 10, b"\x81\x00\x32", "thermal:x"))
    assert body == {
        "end_device_ids": {"device_id": "node1", "application_ids": {"application_id": "app1"}},
        "downlinks": [
            {
                "f_port": 10,
                "frm_payload": base64.b64encode(b"\x81\x00\x32").decode(),
                "priority": "NORMAL",
                "confirmed": True,
                "correlation_ids": ["thermal:x"],
            }
        ],
    }
    with pytest.raises(ValueError):
        build_downlink_replace("a", "n", 10, b"", "x" * 101)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "end_device_ids",
                    "device_id",
                    "uplink_message",
                    "frm_payload",
                    "f_port",
                    "f_cnt",
                    "received_at",
                    "rx_metadata",
                    "settings",
                    "downlink_failed",
                    "downlink",
                    "correlation_ids",
                    "downlink_sent",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(json_values)
def test_any_json_either_parses_or_raises_ttn_message_error(value: object) -> None:
    with contextlib.suppress(TTNMessageError):
        parse_message(json.dumps(value))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_raise_ttn_message_error(body: bytes) -> None:
    with contextlib.suppress(TTNMessageError):
        parse_message(body)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"f_port": 256}, "f_port 256 is outside"),
        ({"f_port": -1}, "f_port -1 is outside"),
        ({"f_cnt": 2**32}, "f_cnt 4294967296 is outside"),
    ],
)
def test_out_of_range_counters_are_refused(change: dict[str, int], words: str) -> None:
    doc = json.loads(uplink("n1", 1, b"\x00", at_seconds(0)))
    doc["uplink_message"].update(change)
    with pytest.raises(TTNMessageError, match=words):
        parse_message(json.dumps(doc))


def test_a_too_long_device_id_is_refused() -> None:
    with pytest.raises(TTNMessageError, match="longer than 64"):
        parse_message(uplink("n" * 65, 1, b"\x00", at_seconds(0)))
