"""The MQTT adapter's worker: what is waiting goes to the bridge as one batch, and every message
is acknowledged only after the bridge has handled it.

No broker here: messages are put on the adapter's queue as paho's `on_message` would, and the
paho client's `ack` is replaced by a recorder."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

from bridge.config import MqttConfig
from bridge.mqtt import BATCH_MAX_MESSAGES, MqttAdapter
from tests.waiting import wait_for


class Worker:
    """An adapter whose worker runs against recorders instead of a broker and a bridge."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.acked: list[int] = []
        self.events: list[str] = []  # "handled <n>" and "ack <mid>" in the order they happened
        self.release = threading.Event()
        self.release.set()
        self.adapter = MqttAdapter(
            MqttConfig(host="127.0.0.1", port=1, app_id="app", tenant="ttn", qos=1),
            self._one,
            handle_batch=self._many,
        )
        self.adapter.client.ack = self._ack  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.adapter._work, daemon=True)
        self.thread.start()

    def _one(self, body: bytes) -> None:
        self._many([body])

    def _many(self, bodies: Sequence[bytes]) -> None:
        self.release.wait(30)
        self.batches.append(list(bodies))
        self.events.append(f"handled {len(bodies)}")

    def _ack(self, mid: int, qos: int) -> Any:
        self.acked.append(mid)
        self.events.append(f"ack {mid}")

    def put(self, mid: int) -> None:
        message = mqtt.MQTTMessage(mid=mid, topic=b"v3/app@ttn/devices/d/up")
        message.payload = f"body {mid}".encode()
        message.qos = 1
        self.adapter.messages.put(message)

    def stop(self) -> None:
        self.adapter.messages.put(None)
        self.thread.join(10)


def test_a_lone_message_goes_at_once_and_what_waits_goes_together() -> None:
    worker = Worker()
    worker.put(1)
    wait_for(lambda: worker.acked == [1], what="the lone message handled and acknowledged")
    worker.release.clear()  # the bridge is busy with the next one while three more arrive
    worker.put(2)
    wait_for(lambda: worker.adapter.messages.empty(), what="the worker took message 2")
    for mid in (3, 4, 5):
        worker.put(mid)
    worker.release.set()
    wait_for(lambda: worker.acked == [1, 2, 3, 4, 5], what="everything acknowledged")
    worker.stop()
    assert worker.batches == [[b"body 1"], [b"body 2"], [b"body 3", b"body 4", b"body 5"]]


def test_messages_are_acknowledged_only_after_their_batch_is_handled() -> None:
    worker = Worker()
    worker.release.clear()  # the bridge is busy: the first batch is not done yet
    worker.put(1)
    wait_for(lambda: worker.adapter.messages.empty(), what="the worker took the message")
    worker.put(2)
    worker.put(3)
    assert worker.acked == []
    worker.release.set()
    wait_for(lambda: worker.acked == [1, 2, 3], what="all three acknowledged")
    worker.stop()
    assert worker.events == ["handled 1", "ack 1", "handled 2", "ack 2", "ack 3"]


def test_a_batch_holds_at_most_batch_max_messages() -> None:
    worker = Worker()
    worker.release.clear()
    worker.put(0)
    wait_for(lambda: worker.adapter.messages.empty(), what="the worker took the first message")
    for mid in range(1, BATCH_MAX_MESSAGES + 11):
        worker.put(mid)
    worker.release.set()
    wait_for(lambda: len(worker.acked) == BATCH_MAX_MESSAGES + 11, what="everything acknowledged")
    worker.stop()
    assert [len(b) for b in worker.batches] == [1, BATCH_MAX_MESSAGES, 10]
