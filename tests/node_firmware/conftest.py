"""Fixtures of the node_firmware tests: a private Mosquitto and an MQTT listener."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

WAIT_S = 20.0


@dataclass(frozen=True)
class Broker:
    """Where a test broker listens."""

    host: str
    port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the broker are integration tests (`make unit` skips them)."""
    for item in items:
        if "node_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def node_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Mosquitto of our own on a free loopback port (never the system's on 1883)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.skip("mosquitto is not installed")
    workdir = tmp_path_factory.mktemp("mosquitto")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\n",
        encoding="utf-8",
    )
    log_file = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {(workdir / 'mosquitto.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                pytest.fail("mosquitto did not start listening")
            time.sleep(0.05)
        yield Broker("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


@dataclass(frozen=True)
class Message:
    """One received MQTT message."""

    topic: str
    payload: bytes


class Listener:
    """An MQTT client that records what arrives and lets a test wait for it (no sleeps)."""

    def __init__(self, broker: Broker, topics: list[str]) -> None:
        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.topics = topics
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"listener-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 0) for t in self.topics])
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self.ready.wait(WAIT_S):
            raise AssertionError("the listener did not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Message]], bool], what: str) -> list[Message]:
        """Wait until the predicate holds on the messages so far; return them."""
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.messages), WAIT_S):
                topics = [m.topic.rsplit("/", 2)[-2:] for m in self.messages]
                raise AssertionError(f"timed out waiting for {what}; got {topics}")
            return list(self.messages)

    def wait_count(self, suffix: str, count: int) -> list[Message]:
        """Wait for `count` messages whose topic ends with `suffix`; return those."""
        self.wait_for(
            lambda ms: sum(m.topic.endswith(suffix) for m in ms) >= count,
            f"{count} x {suffix}",
        )
        return self.of(suffix)

    def of(self, suffix: str) -> list[Message]:
        """The messages so far whose topic ends with `suffix`."""
        with self.cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def publish(self, topic: str, payload: bytes | str) -> None:
        """Publish at QoS 1 and wait until the broker has it."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener_factory(node_broker: Broker) -> Iterator[Callable[[list[str]], Listener]]:
    """Make listeners on the test broker; all are closed after the test."""
    made: list[Listener] = []

    def make(topics: list[str]) -> Listener:
        listener = Listener(node_broker, topics)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()
