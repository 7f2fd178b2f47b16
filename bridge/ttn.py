"""The Things Stack v3 JSON <-> domain objects, with no I/O.

A message is recognised by its JSON body (`uplink_message`, `downlink_queued`, ...) and the device
by `end_device_ids.device_id`, never by the topic (DESIGN.md "TTN side"), so Pub/Sub's
operator-chosen topics work. TTN omits empty fields: a missing `f_cnt` is 0 (the first uplink
after a join), a missing boolean is false. Unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from node_firmware.protocol import ProtocolError

MAX_CORRELATION_ID_CHARS = 100  # The Things Stack rejects longer correlation ids
MAX_DEVICE_ID = 64  # TTN allows 36; the database column holds 64
MAX_F_CNT = 2**32 - 1  # LoRaWAN frame counters are 32-bit

# TTN event key -> our downlink status (DESIGN.md "downlink" event statuses).
DOWNLINK_EVENT_STATUS = {
    "downlink_queued": "queued",
    "downlink_sent": "sent",
    "downlink_ack": "acked",
    "downlink_nack": "nacked",
    "downlink_failed": "failed",
}


class TTNMessageError(ProtocolError):
    """An MQTT message that is not a TTN v3 message this bridge can use."""


@dataclass(frozen=True, slots=True)
class Uplink:
    """One TTN v3 uplink (`uplink_message`)."""

    device_id: str
    application_id: str | None
    received_at: datetime
    f_port: int
    f_cnt: int
    payload: bytes
    rssi: float | None = None
    snr: float | None = None
    gateway_id: str | None = None
    data_rate: str | None = None
    correlation_ids: tuple[str, ...] = ()

    @property
    def uplink_id(self) -> str:
        """A key equal for redeliveries of the same uplink: device, f_cnt and received_at."""
        return f"{self.device_id}:{self.f_cnt}:{self.received_at.isoformat()}"


@dataclass(frozen=True, slots=True)
class DownlinkEvent:
    """A TTN downlink event: queued, sent, acked, nacked or failed."""

    device_id: str
    status: str
    at: datetime
    f_port: int | None
    payload: bytes | None
    correlation_ids: tuple[str, ...]
    message: str | None = None


@dataclass(frozen=True, slots=True)
class IgnoredMessage:
    """A valid TTN message of a kind the bridge does not act on (join_accept, ...)."""

    device_id: str
    kind: str


TTNMessage = Uplink | DownlinkEvent | IgnoredMessage


def parse_time(value: Any) -> datetime:
    """TTN's RFC 3339 timestamp (nanoseconds allowed) -> an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        raise TTNMessageError(f"timestamp must be an RFC 3339 string, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python parses at most microseconds: cut nanosecond fractions to 6 digits.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TTNMessageError(f"timestamp {value!r} is not RFC 3339") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(value: datetime) -> str:
    """An aware datetime -> ISO 8601 UTC with a Z (the format the push side uses)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TTNMessageError(f"{what} must be a JSON object")
    return value


def _b64(value: Any, what: str) -> bytes:
    if value is None or value == "":
        return b""  # TTN omits an empty frm_payload
    if not isinstance(value, str):
        raise TTNMessageError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TTNMessageError(f"{what} is not valid base64") from None


def _int(value: Any, what: str, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise TTNMessageError(f"{what} is missing")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TTNMessageError(f"{what} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise TTNMessageError(f"{what} must be an integer") from None


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_message(body: bytes | str) -> TTNMessage:
    """Parse one MQTT message body from The Things Stack; raise TTNMessageError if unusable."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TTNMessageError(f"not valid JSON: {exc}") from None
    doc = _object(doc, "message")
    ids = _object(doc.get("end_device_ids"), "end_device_ids")
    device_id = ids.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise TTNMessageError("end_device_ids.device_id is missing")
    if len(device_id) > MAX_DEVICE_ID:
        raise TTNMessageError(f"end_device_ids.device_id is longer than {MAX_DEVICE_ID} characters")
    app_ids = ids.get("application_ids")
    application_id = app_ids.get("application_id") if isinstance(app_ids, dict) else None
    top_correlation = _str_list(doc.get("correlation_ids"))

    if "uplink_message" in doc:
        return _parse_uplink(doc, device_id, application_id, top_correlation)
    for key, status in DOWNLINK_EVENT_STATUS.items():
        if key in doc:
            return _parse_downlink_event(doc, key, status, device_id, top_correlation)
    kinds = [k for k in doc if k not in ("end_device_ids", "correlation_ids", "received_at")]
    return IgnoredMessage(device_id=device_id, kind=kinds[0] if kinds else "empty")


def _parse_uplink(
    doc: dict[str, Any],
    device_id: str,
    application_id: str | None,
    correlation_ids: tuple[str, ...],
) -> Uplink:
    up = _object(doc["uplink_message"], "uplink_message")
    if "frm_payload" not in up:
        raise TTNMessageError("uplink_message.frm_payload is missing")
    payload = _b64(up.get("frm_payload"), "uplink_message.frm_payload")
    f_port = _int(up.get("f_port"), "uplink_message.f_port", default=0)
    f_cnt = _int(up.get("f_cnt"), "uplink_message.f_cnt", default=0)  # absent = 0
    if not 0 <= f_port <= 255:
        raise TTNMessageError(f"uplink_message.f_port {f_port} is outside 0..255")
    if not 0 <= f_cnt <= MAX_F_CNT:
        raise TTNMessageError(f"uplink_message.f_cnt {f_cnt} is outside 0..{MAX_F_CNT}")
    received = doc.get("received_at") or up.get("received_at")
    received_at = parse_time(received)
    rssi = snr = None
    gateway_id = None
    metadata = up.get("rx_metadata")
    if isinstance(metadata, list) and metadata:
        # The best gateway: highest RSSI (TTN lists them in no promised order).
        best = max(
            (m for m in metadata if isinstance(m, dict)),
            key=lambda m: _number(m.get("rssi")) or -1e9,
            default=None,
        )
        if best is not None:
            rssi = _number(best.get("rssi"))
            snr = _number(best.get("snr"))
            gw = best.get("gateway_ids")
            if isinstance(gw, dict) and isinstance(gw.get("gateway_id"), str):
                gateway_id = gw["gateway_id"]
    return Uplink(
        device_id=device_id,
        application_id=application_id,
        received_at=received_at,
        f_port=f_port,
        f_cnt=f_cnt,
        payload=payload,
        rssi=rssi,
        snr=snr,
        gateway_id=gateway_id,
        data_rate=_data_rate(up.get("settings")),
        correlation_ids=correlation_ids,
    )


def _data_rate(settings: Any) -> str | None:
    if not isinstance(settings, dict):
        return None
    dr = settings.get("data_rate")
    lora = dr.get("lora") if isinstance(dr, dict) else None
    if not isinstance(lora, dict):
        return None
    sf = lora.get("spreading_factor")
    bw = lora.get("bandwidth")
    if not isinstance(sf, int) or not isinstance(bw, int):
        return None
    return f"SF{sf}BW{bw // 1000}"


def _parse_downlink_event(
    doc: dict[str, Any], key: str, status: str, device_id: str, top: tuple[str, ...]
) -> DownlinkEvent:
    event = _object(doc[key], key)
    message = None
    downlink = event
    if key == "downlink_failed":
        downlink = _object(event.get("downlink") or {}, "downlink_failed.downlink")
        error = event.get("error")
        if isinstance(error, dict):
            message = str(error.get("name") or error.get("message_format") or "failed")
        else:
            message = "failed"
    elif key == "downlink_nack":
        message = "the node did not acknowledge; The Things Stack retries"
    payload = _b64(downlink.get("frm_payload"), f"{key}.frm_payload") if downlink else None
    f_port = downlink.get("f_port")
    at = parse_time(doc["received_at"]) if doc.get("received_at") else None
    if at is None:
        raise TTNMessageError(f"{key}: received_at is missing")
    ids = _str_list(downlink.get("correlation_ids")) + top
    return DownlinkEvent(
        device_id=device_id,
        status=status,
        at=at,
        f_port=f_port if isinstance(f_port, int) else None,
        payload=payload,
        correlation_ids=tuple(dict.fromkeys(ids)),
        message=message,
    )


def build_downlink_replace(
    application_id: str, device_id: str, f_port: int, payload: bytes, correlation_id: str
) -> bytes:
    """The `down/replace` body of DESIGN.md: confirmed, NORMAL priority, our correlation id."""
    if len(correlation_id) > MAX_CORRELATION_ID_CHARS:
        raise ValueError("correlation id longer than 100 characters")
    body = {
        "end_device_ids": {
            "device_id": device_id,
            "application_ids": {"application_id": application_id},
        },
        "downlinks": [
            {
                "f_port": f_port,
                "frm_payload": base64.b64encode(payload).decode("ascii"),
                "priority": "NORMAL",
                "confirmed": True,
                "correlation_ids": [correlation_id],
            }
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()
