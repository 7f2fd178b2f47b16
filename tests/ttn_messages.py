"""TTN v3 MQTT messages as The Things Stack publishes them, for tests to publish or inject."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

APP_ID = "thermal-test"
TENANT = "ttn"
BASE_TIME = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def ttn_time(at: datetime) -> str:
    """RFC 3339 with nanoseconds and a Z, as TTN writes it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def at_seconds(seconds: float) -> datetime:
    """BASE_TIME plus some seconds."""
    return BASE_TIME + timedelta(seconds=seconds)


def ids(device_id: str) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "application_ids": {"application_id": APP_ID},
        "dev_eui": "70B3D57ED005A1B2",
        "join_eui": "0000000000000000",
        "dev_addr": "260B1234",
    }


def uplink(
    device_id: str,
    f_cnt: int,
    payload: bytes,
    received_at: datetime,
    f_port: int = 1,
    **extra: Any,
) -> bytes:
    """An uplink message body; f_cnt 0 is omitted like TTN does."""
    up: dict[str, Any] = {
        "session_key_id": "AYPeCk0RmT0OyWm0pK5j3A==",
        "f_port": f_port,
        "frm_payload": base64.b64encode(payload).decode(),
        "decoded_payload": {"note": "from the payload formatter"},
        "rx_metadata": [
            {
                "gateway_ids": {"gateway_id": "gw-roof", "eui": "B827EBFFFE000001"},
                "time": ttn_time(received_at),
                "timestamp": 1234567,
                "rssi": -97,
                "channel_rssi": -97,
                "snr": 7.5,
                "uplink_token": "ChIKEAoOZ3ctcm9vZhIIuCfr//4AAAE=",
                "received_at": ttn_time(received_at),
            },
            {
                "gateway_ids": {"gateway_id": "gw-cellar"},
                "rssi": -112,
                "snr": -3.25,
            },
        ],
        "settings": {
            "data_rate": {
                "lora": {"bandwidth": 125000, "spreading_factor": 7, "coding_rate": "4/5"}
            },
            "frequency": "868100000",
        },
        "received_at": ttn_time(received_at),
        "consumed_airtime": "0.102656s",
        "network_ids": {"net_id": "000013", "tenant_id": "ttn", "cluster_id": "eu1"},
    }
    if f_cnt:
        up["f_cnt"] = f_cnt
    body = {
        "end_device_ids": ids(device_id),
        "correlation_ids": [f"as:up:01HX{device_id}{f_cnt:06d}", "gs:uplink:01HX"],
        "received_at": ttn_time(received_at),
        "uplink_message": up,
        "locations": {"user": {"latitude": 38.7, "longitude": -9.1, "source": "SOURCE_REGISTRY"}},
        **extra,
    }
    return json.dumps(body).encode()


def downlink_event(
    device_id: str,
    kind: str,
    correlation_ids: list[str],
    at: datetime,
    f_port: int = 10,
    payload: bytes | None = None,
) -> bytes:
    """A downlink event body: kind is queued, sent, ack, nack or failed."""
    downlink: dict[str, Any] = {
        "f_port": f_port,
        "confirmed": True,
        "priority": "NORMAL",
        "correlation_ids": [*correlation_ids, "as:downlink:01HXYZ"],
    }
    if payload is not None:
        downlink["frm_payload"] = base64.b64encode(payload).decode()
    if kind in ("sent", "ack", "nack"):
        downlink["f_cnt"] = 3
        downlink["session_key_id"] = "AYPeCk0RmT0OyWm0pK5j3A=="
    inner: dict[str, Any] = downlink
    if kind == "failed":
        inner = {
            "downlink": downlink,
            "error": {
                "namespace": "pkg/networkserver",
                "name": "max_retries_reached",
                "message_format": "maximum number of retries reached",
                "code": 4,
            },
        }
    return json.dumps(
        {
            "end_device_ids": ids(device_id),
            "correlation_ids": ["as:downlink:01HXYZ"],
            "received_at": ttn_time(at),
            f"downlink_{kind}": inner,
        }
    ).encode()


def topic(device_id: str, suffix: str = "up") -> str:
    """The TTN topic of a device."""
    return f"v3/{APP_ID}@{TENANT}/devices/{device_id}/{suffix}"
