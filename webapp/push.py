"""Socket.IO: `subscribe` / `unsubscribe` per DESIGN.md, a snapshot at once, then live changes."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, request
from flask_socketio import SocketIO, emit, join_room, leave_room

from bridge import announcements as ann
from db.store import StorageUnavailable, Store
from webapp.auth import is_known
from webapp.delivery import Delivery
from webapp.runtime import ROOM_ALL, device_room

log = logging.getLogger(__name__)

MAX_DEVICES_PER_SUBSCRIBE = 1000


def _store() -> Store:
    return current_app.extensions["thermal"].store


def on_connect(auth: Any = None) -> bool:
    """Refuse a connection without a valid token when tokens are configured."""
    config = current_app.config["THERMAL"]
    token = auth.get("token") if isinstance(auth, dict) else None
    if (config.api_tokens or config.read_tokens) and not is_known(config, token):
        log.info(
            "refused a Socket.IO connection without a valid token from %s", request.remote_addr
        )
        return False
    return True


def _parse_devices(data: Any) -> list[str] | str | None:
    devices = data.get("devices") if isinstance(data, dict) else None
    if devices == "*":
        return "*"
    if isinstance(devices, str):
        devices = [devices]
    if not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices):
        return None
    return devices[:MAX_DEVICES_PER_SUBSCRIBE]


def snapshot(store: Store, device_ids: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """The current node_state, ambient and latest frame of each device, as events."""
    events: list[tuple[str, dict[str, Any]]] = []
    devices = store.devices(device_ids)
    frames = store.latest_frames([d.device_id for d in devices])
    for device in devices:
        pending = [
            d
            for d in store.downlinks(device.device_id, limit=5)
            if d.status in ("queued", "sent", "acked", "nacked")
        ]
        events.append(("node_state", ann.node_state(device, pending[0] if pending else None)))
        reading = store.latest_ambient(device.device_id)
        if reading is not None:
            events.append(("ambient", ann.ambient(reading)))
        frame = frames.get(device.device_id)
        if frame is not None:
            png = store.frame_png(frame.frame_id) or b""
            events.append(("frame", ann.frame_event(frame, png)))
    return events


def on_subscribe(data: Any = None) -> dict[str, Any]:
    """Join the rooms of the requested devices and send their snapshot at once, before any
    live event that could be newer than it (webapp/delivery.py)."""
    devices = _parse_devices(data)
    if devices is None:
        return {"error": 'subscribe takes {"devices": ["node1", ...]} or {"devices": "*"}'}
    delivery: Delivery = current_app.extensions["delivery"]
    with delivery.snapshot_first(request.sid, request.namespace) as send_snapshot:  # type: ignore[attr-defined]
        if devices == "*":
            join_room(ROOM_ALL)
            wanted: list[str] | None = None
        else:
            for device_id in devices:
                join_room(device_room(device_id))
            wanted = list(devices)
        try:
            events = snapshot(_store(), wanted)
        except StorageUnavailable:
            return {"subscribed": devices, "error": "database unavailable: no snapshot"}

        def emit_snapshot() -> None:
            for event, payload in events:
                # Straight to this connection, not through the message queue: its place in the
                # order is here.
                emit(event, payload, ignore_queue=True)

        send_snapshot(emit_snapshot)
    return {"subscribed": devices}


def on_unsubscribe(data: Any = None) -> dict[str, Any]:
    """Leave the rooms of the given devices (or of all-devices)."""
    devices = _parse_devices(data)
    if devices is None:
        return {"error": 'unsubscribe takes {"devices": [...]} or {"devices": "*"}'}
    if devices == "*":
        leave_room(ROOM_ALL)
    else:
        for device_id in devices:
            leave_room(device_room(device_id))
    return {"unsubscribed": devices}


def register(socketio: SocketIO) -> None:
    """Attach the handlers to the server created by the latest init_app."""
    socketio.on_event("connect", on_connect)
    socketio.on_event("subscribe", on_subscribe)
    socketio.on_event("unsubscribe", on_unsubscribe)
