"""What one Socket.IO connection receives when the server sends from many threads at once
(webapp/delivery.py): every `frame` arrives whole with its own PNG, and a subscribe's snapshot is
never the last word when something newer was announced meanwhile.

The app is served for real in threading mode (werkzeug's threaded server, as `python -m webapp`
and gunicorn's gthread worker run it) on MariaDB, with a real python-socketio client over
websocket; with the Redis message queue, the live events come from a separate emitter as the
`python -m bridge` process sends them.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import socketio as sio_client
from flask_socketio import SocketIO
from sqlalchemy import create_engine, text

from bridge import announcements as ann
from bridge.announcements import Announce
from node_firmware.protocol import Mode
from tests.processes import Server, app_env, gunicorn_args
from tests.services import free_port
from tests.waiting import wait_for
from tests.webapp.fixtures import Feeder, LiveServer, make_config
from webapp import create_app
from webapp.runtime import ROOM_ALL, device_room

pytestmark = pytest.mark.integration

DEVICES = ("d0", "d1", "d2", "d3")
T = TypeVar("T")


@dataclass
class Site:
    url: str
    feeder: Feeder  # stores through the bridge's logic and announces through `announce`
    announce: Announce  # how the bridge's announcements reach the server
    db_url: str


@contextmanager
def threading_site(db_url: str, queue: str | None) -> Iterator[Site]:
    """The app in this process, in threading mode; with a queue, live events come from a
    write-only emitter on it, as `python -m bridge` sends them."""
    app = create_app(make_config(db_url, message_queue=queue), start_bridge=False)
    assert app.extensions["socketio"].async_mode == "threading"
    server = LiveServer(app)
    runtime = app.extensions["thermal"]
    announce: Announce = runtime.announce
    if queue is not None:
        emitter = SocketIO(message_queue=queue)

        def announce(event: str, payload: dict[str, Any], device_id: str) -> None:
            emitter.emit(event, payload, to=[device_room(device_id), ROOM_ALL])

    try:
        yield Site(server.url, Feeder(app), announce, db_url)
    finally:
        server.stop()
        runtime.stop()
        runtime.store.engine.dispose()


@contextmanager
def eventlet_site(db_url: str, log: Path) -> Iterator[Site]:
    """gunicorn's eventlet worker in a process of its own; the feeder writes to its database
    from here (its announcements reach no client)."""
    app = create_app(make_config(db_url), start_bridge=False)
    runtime = app.extensions["thermal"]
    port = free_port()
    env = app_env("127.0.0.1", free_port(), db_url, THERMAL_RUN_BRIDGE="false")
    server = Server(gunicorn_args("eventlet", port, 50), env, port, log)
    try:
        server.wait_ready()
        yield Site(f"http://127.0.0.1:{port}", Feeder(app), runtime.announce, db_url)
    finally:
        server.stop()
        runtime.stop()
        runtime.store.engine.dispose()


@pytest.fixture(params=["threading", "threading+redis"])
def site(request: pytest.FixtureRequest, mysql_url: str) -> Iterator[Site]:
    queue = request.getfixturevalue("redis_server").url if "redis" in request.param else None
    with threading_site(mysql_url, queue) as made:
        yield made


@pytest.fixture(params=["threading", "threading+redis", "gunicorn-eventlet"])
def any_site(request: pytest.FixtureRequest, mysql_url: str, tmp_path: Path) -> Iterator[Site]:
    if request.param == "gunicorn-eventlet":
        with eventlet_site(mysql_url, tmp_path / "eventlet.log") as made:
            yield made
        return
    queue = request.getfixturevalue("redis_server").url if "redis" in request.param else None
    with threading_site(mysql_url, queue) as made:
        yield made


class InOrderClient:
    """A python-socketio AsyncClient on an event loop of its own, driven from the test's threads.

    It handles what arrives in arrival order; the threaded `socketio.Client` does not (it hands
    each Engine.IO message to a new thread, so it can itself pair a header with the wrong
    attachment or record two events in reverse)."""

    def __init__(self, url: str, events: tuple[str, ...]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = sio_client.AsyncClient(reconnection=False)
        self.received: list[tuple[str, Any]] = []
        for name in events:
            self.client.on(name, handler=self._recorder(name))
        self.run(self.client.connect(url, transports=["websocket"], wait_timeout=20))

    def _recorder(self, name: str) -> Callable[[Any], Awaitable[None]]:
        async def record(data: Any) -> None:
            self.received.append((name, data))

        return record

    def start(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine of the client on its loop; its result comes later."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 30) -> T:
        """Run a coroutine of the client on its loop and wait for its result."""
        return self.start(coroutine).result(timeout_s)

    def of(self, event: str) -> list[Any]:
        """The payloads of one event, in arrival order."""
        return [data for name, data in list(self.received) if name == event]

    def close(self) -> None:
        try:
            self.run(self.client.disconnect())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def test_frames_sent_from_many_threads_arrive_whole_with_their_own_png(site: Site) -> None:
    for number, device_id in enumerate(DEVICES):
        site.feeder.frame(device_id, hot=30.0 + number, number=number, mode=Mode.FAST)
        site.feeder.frame(device_id, hot=40.0 + number, number=number + 10, mode=Mode.FAST)
    store = site.feeder.bridge.store
    frames = [f for d in DEVICES for f in store.frames(d)]
    pngs = {
        f.frame_id: requests.get(f"{site.url}/api/frames/{f.frame_id}.png").content for f in frames
    }
    assert len(set(pngs.values())) == len(frames) == 8

    client = InOrderClient(site.url, events=("frame",))
    try:
        ack = client.run(client.client.call("subscribe", {"devices": "*"}, timeout=20))
        assert ack == {"subscribed": "*"}
        wait_for(lambda: len(client.of("frame")) >= len(DEVICES), 20, "the snapshot's frames")
        emitters, per_emitter, subscribes = 4, 150, 20

        def emit_frames(offset: int) -> None:
            for i in range(per_emitter):
                frame = frames[(offset + i) % len(frames)]
                site.announce(
                    "frame", ann.frame_event(frame, pngs[frame.frame_id]), frame.device_id
                )

        def subscribe_again() -> None:  # each answered by a handler thread sending a snapshot
            for _ in range(subscribes):
                client.run(client.client.emit("subscribe", {"devices": "*"}))

        threads = [threading.Thread(target=emit_frames, args=(n,)) for n in range(emitters)]
        threads.append(threading.Thread(target=subscribe_again))
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # switch threads often: any unguarded gap will be hit
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            sys.setswitchinterval(interval)
        expected = len(DEVICES) * (1 + subscribes) + emitters * per_emitter
        try:
            wait_for(lambda: len(client.of("frame")) >= expected, 60, "every frame event")
        finally:
            received = client.of("frame")
            mismatched = [
                f.get("frame_id") for f in received if pngs.get(f.get("frame_id")) != f.get("image")
            ]
            assert (len(received), mismatched) == (expected, [])
    finally:
        client.close()


def waiting_for_table_lock(db_url: str, table: str) -> bool:
    """Whether a query of the server waits for a table lock on `table` (SHOW PROCESSLIST)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT STATE, INFO FROM information_schema.PROCESSLIST"
                    " WHERE STATE LIKE 'Waiting for table%%'"
                )
            ).all()
    finally:
        engine.dispose()
    return any(table in (row.INFO or "") for row in rows)


def test_a_client_subscribing_during_a_change_ends_with_the_newest_state(any_site: Site) -> None:
    site = any_site
    # The subscribe handler is paused between reading the devices and reading their frames (a
    # table lock held by the test); meanwhile a settings change commits and is announced. The
    # snapshot read the device before that change: the client must still end with the change.
    site.feeder.status("d0")
    site.feeder.frame("d0", hot=33.3, number=1, mode=Mode.FAST)
    client = InOrderClient(site.url, events=("node_state",))
    locker = create_engine(site.db_url).connect()
    try:
        locker.execute(text("LOCK TABLES frames WRITE"))
        answer = client.start(client.client.call("subscribe", {"devices": "*"}, timeout=30))
        wait_for(lambda: waiting_for_table_lock(site.db_url, "frames"), 20, "the snapshot to wait")
        response = requests.post(
            f"{site.url}/api/devices/d0/settings", json={"threshold": 61}, timeout=20
        )
        assert response.status_code == 202, response.text
        downlink_id = response.json()["downlink"]["downlink_id"]
        locker.execute(text("UNLOCK TABLES"))
        assert answer.result(30) == {"subscribed": "*"}
        states = [s for s in client.of("node_state") if s["device_id"] == "d0"]
        assert states[-1]["desired"]["threshold"] == 61, states
        assert states[-1]["pending_downlink"] == downlink_id
    finally:
        locker.close()
        client.close()
