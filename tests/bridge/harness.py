"""A bridge wired to a real broker and database, with waits on what it did (no sleeps)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.config import Config, MqttConfig
from bridge.mqtt import MqttAdapter
from bridge.service import Bridge
from db.migrations import upgrade
from db.store import Store
from tests.ttn_messages import APP_ID, TENANT

WAIT_S = 30.0


def bridge_config(host: str, port: int, db_url: str, **overrides: Any) -> Config:
    """A Config for the test broker and database."""
    return Config(
        mqtt=MqttConfig(host=host, port=port, app_id=APP_ID, tenant=TENANT, qos=1),
        database_url=db_url,
        **overrides,
    )


class Recorder:
    """Collects announcements and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str]] = []
        self.handled = 0
        self.cond = threading.Condition()

    def __call__(self, event: str, payload: dict[str, Any], device_id: str) -> None:
        with self.cond:
            self.events.append((event, payload, device_id))
            self.cond.notify_all()

    def bump(self) -> None:
        with self.cond:
            self.handled += 1
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out; events so far: {[e[0] for e in self.events]}")

    def of(self, name: str) -> list[dict[str, Any]]:
        with self.cond:
            return [p for e, p, _ in self.events if e == name]


class BridgeHarness:
    """Store + Bridge + MqttAdapter with a stable client id (so a restart resumes the session)."""

    def __init__(
        self, config: Config, client_id: str | None = None, recorder: Recorder | None = None
    ) -> None:
        self.config = config
        self.client_id = client_id or f"test-bridge-{uuid.uuid4().hex[:8]}"
        self.recorder = recorder or Recorder()
        self.store = Store.from_url(config.db_url())
        upgrade(self.store.engine)
        self.bridge = Bridge(config, self.store, self.recorder)
        self.adapter = MqttAdapter(
            config.mqtt, self._handle, client_id=self.client_id, handle_batch=self._handle_batch
        )
        self.bridge.publish = self.adapter.publish

    def _handle(self, body: bytes) -> None:
        self.bridge.handle_message(body)
        self.recorder.bump()

    def _handle_batch(self, bodies: Sequence[bytes]) -> None:
        self.bridge.handle_messages(bodies)  # what the bridge does under load
        for _ in bodies:
            self.recorder.bump()

    def start(self) -> BridgeHarness:
        self.adapter.start()
        if not self.adapter.connected.wait(WAIT_S):
            raise AssertionError("bridge did not connect to the broker")
        return self

    def stop(self) -> None:
        self.adapter.stop()
        self.store.engine.dispose()

    def wait_handled(self, count: int, timeout: float = WAIT_S) -> None:
        self.recorder.wait_for(lambda: self.recorder.handled >= count, timeout)


class Publisher:
    """A paho client publishing at QoS 1 and subscribing where a test listens."""

    def __init__(self, host: str, port: int) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.received.append((message.topic, message.payload))
            self.cond.notify_all()

    def publish(self, topic: str, body: bytes) -> None:
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(WAIT_S)

    def subscribe(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS

    def wait_received(self, count: int, timeout: float = WAIT_S) -> list[tuple[str, bytes]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"received only {len(self.received)} messages")
            return list(self.received)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
