"""The JSON shapes of DESIGN.md's push events (and the REST views built from the same records)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.ttn import format_time
from db.store import AlarmRecord, AmbientRecord, DeviceRecord, DownlinkRecord, FrameRecord
from node_firmware.protocol import STEPS_C

# announce(event, payload, device_id): hand one push event to Socket.IO (or the message queue).
Announce = Callable[[str, dict[str, Any], str], None]

DEFAULT_THRESHOLD_C = 50


def one_decimal(value: float | None) -> float | None:
    """Temperatures go out as numbers with one decimal."""
    return None if value is None else round(float(value), 1)


def on_off(value: bool | None) -> str | None:
    """True/False/None -> "on"/"off"/None."""
    return None if value is None else ("on" if value else "off")


def effective_threshold(device: DeviceRecord) -> int:
    """The threshold in force: reported by the node, else requested, else the default."""
    if device.reported_threshold is not None:
        return device.reported_threshold
    if device.desired_threshold is not None:
        return device.desired_threshold
    return DEFAULT_THRESHOLD_C


def _step_c(tenths: int | None) -> float | None:
    return None if tenths is None else tenths / 10


def node_state(device: DeviceRecord, pending: DownlinkRecord | None) -> dict[str, Any]:
    """The `node_state` event."""
    fan_requested = device.desired_fan if device.desired_fan is not None else device.reported_fan
    return {
        "device_id": device.device_id,
        "online": device.online,
        "last_seen": format_time(device.last_seen) if device.last_seen else None,
        "fan": on_off(device.fan_running),
        "fan_requested": on_off(fan_requested),
        "mode": device.reported_mode or device.desired_mode,
        "threshold": effective_threshold(device),
        # Compressed mode's step in °C (docs/protocol.md); null in slow and fast mode.
        "step": _step_c(device.reported_step if device.reported_mode else device.desired_step),
        "desired": {
            "fan": on_off(device.desired_fan),
            "mode": device.desired_mode,
            "threshold": device.desired_threshold,
            "step": _step_c(device.desired_step),
        },
        "pending_downlink": pending.downlink_id if pending else None,
        "uplinks": device.uplinks,
        "lost_uplinks": device.lost_uplinks,
        "invalid_uplinks": device.invalid_uplinks,
    }


def ambient(record: AmbientRecord) -> dict[str, Any]:
    """The `ambient` event."""
    return {
        "device_id": record.device_id,
        "temperature": one_decimal(record.temperature),
        "at": format_time(record.at),
    }


def frame_meta(frame: FrameRecord) -> dict[str, Any]:
    """Frame metadata as the REST API and the `frame` event share it."""
    return {
        "device_id": frame.device_id,
        "frame_id": frame.frame_id,
        "frame_number": frame.frame_number,
        "mode": frame.mode,
        "complete": frame.complete,
        "coverage": round(frame.coverage, 4),
        "captured_at": format_time(frame.first_received_at),
        "last_received_at": format_time(frame.last_received_at),
        "temp_min": one_decimal(frame.temp_min),
        "temp_max": one_decimal(frame.temp_max),
        "temp_mean": one_decimal(frame.temp_mean),
        "ambient": one_decimal(frame.ambient),
        "fan": on_off(frame.fan),
        "rows": frame.grid_rows,
        "cols": frame.grid_cols,
        "step": frame_step(frame),
    }


def frame_step(frame: FrameRecord) -> float | None:
    """The frame's quantisation step in °C: its values are within step / 2 of what the camera
    read. Slow and fast frames carry the protocol's 0.1 °C; None for a compressed frame stored
    before frames recorded their step."""
    if frame.step_tenths is not None:
        return frame.step_tenths / 10
    return None if frame.mode == "compressed" else 0.1


def frame_event(frame: FrameRecord, png: bytes) -> dict[str, Any]:
    """The `frame` event: metadata plus the PNG as a binary attachment."""
    payload = frame_meta(frame)
    payload["image"] = png
    return payload


def _payload_step(record: DownlinkRecord) -> dict[str, float]:
    """{"step": °C} for a compressed-mode request (the step lives in its payload's byte 3)."""
    if record.mode == "compressed" and len(record.payload) == 4:
        return {"step": STEPS_C[record.payload[3] & 0x03]}
    return {}


def downlink(record: DownlinkRecord, status: str | None = None, at: Any = None) -> dict[str, Any]:
    """The `downlink` event."""
    return {
        "device_id": record.device_id,
        "downlink_id": record.downlink_id,
        "status": status or record.status,
        "settings": {
            "fan": on_off(record.fan),
            "mode": record.mode,
            "threshold": record.threshold,
            **_payload_step(record),
        },
        "at": format_time(at or record.updated_at),
        "message": record.message,
    }


def downlink_view(record: DownlinkRecord) -> dict[str, Any]:
    """A downlink with its history, for `GET /api/devices/<id>/downlinks`."""
    view = downlink(record)
    view["requested_at"] = format_time(record.requested_at)
    view["correlation_id"] = record.correlation_id
    view["history"] = [
        {"status": s.status, "at": format_time(s.at), "message": s.message} for s in record.history
    ]
    return view


def alarm(record: AlarmRecord, transition: str | None = None) -> dict[str, Any]:
    """The `alarm` event (and an alarm in REST); `transition` names the change announced."""
    payload = {
        "device_id": record.device_id,
        "alarm_id": record.alarm_id,
        "kind": record.kind,
        "severity": record.severity,
        "value": one_decimal(record.value),
        "limit": one_decimal(record.limit_value),
        "at": format_time(record.closed_at or record.updated_at or record.opened_at),
        "opened_at": format_time(record.opened_at),
        "cleared_at": format_time(record.closed_at) if record.closed_at else None,
        "closed_at": format_time(record.closed_at) if record.closed_at else None,
        "acked_at": format_time(record.acked_at) if record.acked_at else None,
        "acked_by": record.acked_by,
        "note": record.note,
        "active": record.active,
    }
    if transition is not None:
        payload["transition"] = transition
    return payload
