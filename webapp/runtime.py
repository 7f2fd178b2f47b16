"""What runs behind the app: the store, the bridge and its MQTT adapter, the periodic ticker."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask_socketio import SocketIO

from bridge import backfill
from bridge.config import Config
from bridge.downlinks import Downlinks
from bridge.mqtt import MqttAdapter
from bridge.service import Bridge
from db.migrations import upgrade
from db.store import StorageUnavailable, Store

log = logging.getLogger(__name__)

TICK_S = 1.0
ROOM_ALL = "devices:*"


def device_room(device_id: str) -> str:
    """The Socket.IO room of one device."""
    return f"device:{device_id}"


class Announcer:
    """Emits push events to the rooms of a device and of the all-devices subscribers."""

    def __init__(self, socketio: SocketIO) -> None:
        self.socketio = socketio

    def __call__(self, event: str, payload: dict[str, Any], device_id: str) -> None:
        self.socketio.emit(event, payload, to=[device_room(device_id), ROOM_ALL])


class Runtime:
    """The store, the downlink service and (optionally) the bridge of one process."""

    def __init__(self, config: Config, socketio: SocketIO) -> None:
        self.config = config
        self.socketio = socketio
        self.store = Store.from_url(config.db_url())
        try:
            upgrade(self.store.engine)
        except Exception as exc:  # the database may be down at start: keep serving, report it
            log.error("could not create/upgrade the database schema: %s", exc)
        self.announce = Announcer(socketio)
        self.downlinks = Downlinks(config, self.store, self.announce)
        self.bridge: Bridge | None = None
        self.mqtt: MqttAdapter | None = None
        self._stop = threading.Event()

    def start_bridge(self) -> None:
        """Run the bridge in this process: MQTT adapter, worker and ticker as background tasks."""
        if self.bridge is not None:
            return
        self.bridge = Bridge(self.config, self.store, self.announce)
        self.bridge.backfiller = backfill.from_config(self.config, self.bridge.handle_message)
        self.mqtt = MqttAdapter(
            self.config.mqtt,
            self.bridge.handle_message,
            spawn=self.socketio.start_background_task,
            on_connected=self.bridge.connected,
            handle_batch=self.bridge.handle_messages,
        )
        self.bridge.publish = self.mqtt.publish
        self.mqtt.start()
        self.socketio.start_background_task(self._tick_forever)

    def _tick_forever(self) -> None:
        assert self.bridge is not None
        while not self._stop.is_set():
            try:
                self.bridge.tick()
            except StorageUnavailable as exc:
                log.warning("tick skipped, database unavailable: %s", exc)
            except Exception:
                log.exception("tick failed")
            self.socketio.sleep(TICK_S)

    def after_settings_request(self) -> None:
        """Publish a just-queued downlink at once when the bridge runs here."""
        if self.bridge is not None:
            self.bridge.publish_now()

    def mqtt_state(self) -> str:
        """ "connected", "disconnected", or "not running here" for health."""
        if self.mqtt is None:
            return "not running in this process"
        return "connected" if self.mqtt.connected.is_set() else "disconnected"

    def stop(self) -> None:
        """Stop the bridge's background work."""
        self._stop.set()
        if self.mqtt is not None:
            self.mqtt.stop()
