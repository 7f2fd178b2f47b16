"""What the end-to-end benchmarks share: the push server as operators run it, TTN-format uplink
streams, a paced MQTT publisher process and a Socket.IO client that timestamps frames.

The services are the test suite's throw-away ones (`tests/services.py`): MariaDB and Mosquitto on
free loopback ports with private directories, stopped at the end.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bridge.ttn import format_time  # noqa: E402
from node_firmware.protocol import Mode, encode_fragment, fragment_frame  # noqa: E402
from tests.processes import WAIT_S  # noqa: E402
from tests.ttn_messages import topic, uplink  # noqa: E402


def scene(seed: int) -> list[list[float | None]]:
    """A 24 × 32 battery-rack frame below every alarm limit (22-28 °C, a 31 °C spot)."""
    rng = random.Random(seed)
    grid: list[list[float | None]] = [
        [round(22 + rng.random() * 6, 1) for _ in range(32)] for _ in range(24)
    ]
    grid[rng.randrange(24)][rng.randrange(32)] = 31.0
    grid[rng.randrange(24)][rng.randrange(32)] = None
    return grid


@dataclass(frozen=True)
class Uplink:
    """One message to publish; `key` is set on the uplink that completes a frame."""

    topic: str
    body: bytes
    key: tuple[str, str] | None  # (device_id, captured_at) of the frame it completes


def stream(prefix: str, devices: int, uplinks: int, rate: float, start: datetime) -> list[Uplink]:
    """`uplinks` TTN v3 uplinks of `devices` nodes (even ones slow mode, odd ones fast),
    interleaved one uplink per node in turn, whole frames each, received_at spaced at `rate`."""
    per_device = max(1, uplinks // devices)
    queues: list[Iterator[tuple[bytes, int, bool]]] = []

    def fragments_of(index: int) -> Iterator[tuple[bytes, int, bool]]:
        mode = Mode.SLOW if index % 2 == 0 else Mode.FAST
        number = 0
        while True:
            frags = fragment_frame(
                scene(index * 7919 + number), mode, number, fan=False, ambient=23
            )
            for position, fragment in enumerate(frags):
                yield encode_fragment(fragment), position, position == len(frags) - 1
            number += 1

    for index in range(devices):
        queues.append(fragments_of(index))
    out: list[Uplink] = []
    opened: dict[str, datetime] = {}
    k = 0
    for f_cnt in range(1, per_device + 1):
        for index, frags in enumerate(queues):
            mode = "slow" if index % 2 == 0 else "fast"
            device_id = f"{prefix}-{mode}-{index:03d}"
            payload, position, last = next(frags)
            at = start + timedelta(seconds=k / rate)
            k += 1
            if position == 0:
                opened[device_id] = at
            key = (device_id, format_time(opened[device_id])) if last else None
            out.append(Uplink(topic(device_id), uplink(device_id, f_cnt, payload, at), key))
    return out


def publish_paced(
    host: str, port: int, messages: list[Uplink], rate: float | None, results: Any
) -> None:
    """Publish at QoS 1, at `rate` per second (None: as fast as possible); put into `results`
    a dict of frame key -> monotonic publish time, and the start and end of publishing."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    done = threading.Semaphore(0)
    client.on_publish = lambda *_a: done.release()
    # No Nagle: each uplink leaves at its time instead of waiting for the previous one's ACK.
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    client.connect(host, port)
    client.loop_start()
    sent: dict[tuple[str, str], float] = {}
    started = time.monotonic()
    for index, message in enumerate(messages):
        if rate is not None:
            due = started + index / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        if message.key is not None:
            sent[message.key] = time.monotonic()
        client.publish(message.topic, message.body, qos=1)
    published = time.monotonic()
    for _ in messages:  # every PUBACK: the broker has them all
        done.acquire(timeout=WAIT_S)
    acked = time.monotonic()
    client.loop_stop()
    client.disconnect()
    results.put({"sent": sent, "started": started, "published": published, "acked": acked})


def publish_in_process(
    host: str, port: int, messages: list[Uplink], rate: float | None
) -> tuple[Any, Any]:
    """Start `publish_paced` in a separate process (its own core and GIL); (process, queue)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=publish_paced, args=(host, port, messages, rate, results), daemon=True
    )
    process.start()
    return process, results


class FrameWatcher:
    """A Socket.IO client (websocket) subscribed to devices; notes when each frame arrives."""

    def __init__(self, port: int, devices: list[str] | str = "*") -> None:
        import socketio

        self.arrived: dict[tuple[str, str], float] = {}
        self.frames = 0
        self.lock = threading.Lock()
        self.client = socketio.Client(reconnection=False)
        self.client.on("frame", self._frame)
        self.client.connect(
            f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=WAIT_S
        )
        ack = self.client.call("subscribe", {"devices": devices}, timeout=WAIT_S)
        if "error" in ack:
            raise RuntimeError(f"subscribe failed: {ack}")

    def _frame(self, data: dict[str, Any]) -> None:
        now = time.monotonic()
        with self.lock:
            self.frames += 1
            self.arrived.setdefault((data["device_id"], data["captured_at"]), now)

    def close(self) -> None:
        self.client.disconnect()


def now_utc() -> datetime:
    return datetime.now(UTC)
