"""The order of what the push server sends on each connection.

Two guarantees, both about one Socket.IO connection:

- A binary event (a `frame` with its PNG) reaches the client whole. python-socketio sends it as
  a header packet followed by one Engine.IO packet per attachment, and nothing in it stops a
  packet of another thread from landing in between (`Manager.emit` → `_send_eio_packet`,
  `Server._send_packet`); the client then pairs a header with another event's PNG or fails
  ("Unexpected binary attachment"). This product sends from the bridge worker, the ticker, REST
  handlers, each Socket.IO handler's thread and the message queue's listener, so every send of
  the process goes through one lock.
- A `subscribe` answer is never preceded by anything newer: while the handler reads the
  snapshot, what is sent to that connection is held back, then sent after the snapshot (see
  `Delivery.snapshot_first`).

The lock is a `threading.RLock` created after eventlet's monkey-patching (gunicorn's eventlet
worker patches before it loads the app), so it is a green lock there; what it guards only queues
packets on Engine.IO sockets, it never waits on the network.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import socketio

Send = Callable[[str, Any], None]


@dataclass
class _Held:
    """What is held back for one connection while its subscribe handlers read snapshots."""

    holders: int = 1
    queue: list[tuple[Send, Any]] = field(default_factory=list)
    insert_at: int | None = None  # while a snapshot is placed in front of the queue


class Delivery:
    """Serializes every send of one Socket.IO server and orders snapshots before live events."""

    def __init__(self, server: socketio.Server) -> None:
        self.server = server
        self.lock = threading.RLock()
        self._held: dict[str, _Held] = {}

    @classmethod
    def install(cls, server: socketio.Server) -> Delivery:
        """Route every send of `server` through one Delivery (call once per server)."""
        delivery = cls(server)
        # Every packet python-socketio (>= 5.11, < 6) sends to a client goes through
        # `_send_packet` (or, for the emits it encodes once for many clients, through
        # `_send_eio_packet`, which older versions lack), and a whole event (header and
        # attachments) through one call of the manager's emit (`_handle_emit` for the
        # message-queue managers, whose listener calls it).
        manager = server.manager
        emit_name = "_handle_emit" if isinstance(manager, socketio.PubSubManager) else "emit"
        for owner, name in ((server, "_send_packet"), (manager, emit_name)):
            if not callable(getattr(owner, name, None)):
                raise RuntimeError(
                    f"python-socketio changed: {type(owner).__name__}.{name} is gone"
                )
        server._send_packet = delivery._held_back(server._send_packet)
        if callable(getattr(server, "_send_eio_packet", None)):
            server._send_eio_packet = delivery._held_back(server._send_eio_packet)
        setattr(manager, emit_name, delivery._locked(getattr(manager, emit_name)))
        return delivery

    def _locked(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                return function(*args, **kwargs)

        return locked

    def _held_back(self, send: Send) -> Send:
        @wraps(send)
        def held_back(eio_sid: str, packet: Any) -> None:
            with self.lock:
                held = self._held.get(eio_sid)
                if held is None:
                    send(eio_sid, packet)
                elif held.insert_at is None:
                    held.queue.append((send, packet))
                else:
                    held.queue.insert(held.insert_at, (send, packet))
                    held.insert_at += 1

        return held_back

    @contextmanager
    def snapshot_first(
        self, sid: str, namespace: str
    ) -> Iterator[Callable[[Callable[[], None]], None]]:
        """Hold back what is sent to this connection until the snapshot is sent.

        Use: `with delivery.snapshot_first(sid, ns) as send_snapshot:` join the rooms, read the
        snapshot, then `send_snapshot(emit_all)`. Anything sent to the connection after the
        `with` began follows the snapshot, so no live event newer than the snapshot precedes
        it. Overlapping subscribes on one connection: each snapshot goes in front of what is
        held, and the connection is released when the last of them ends.
        """
        eio_sid = self.server.manager.eio_sid_from_sid(sid, namespace)
        if eio_sid is None:  # disconnected meanwhile: nothing to order
            yield lambda send: send()
            return
        with self.lock:
            held = self._held.get(eio_sid)
            if held is None:
                held = self._held[eio_sid] = _Held()
            else:
                held.holders += 1
        snapshot: list[Callable[[], None]] = []
        try:
            yield snapshot.append
        finally:
            self._release(eio_sid, held, snapshot)

    def _release(self, eio_sid: str, held: _Held, snapshot: list[Callable[[], None]]) -> None:
        with self.lock:
            held.holders -= 1
            if held.holders > 0:
                held.insert_at = 0
                try:
                    for send in snapshot:
                        send()
                finally:
                    held.insert_at = None
                return
            del self._held[eio_sid]
            try:
                for send in snapshot:
                    send()
            finally:
                for send_packet, packet in held.queue:
                    send_packet(eio_sid, packet)
