"""The MySQL connection pool pings a connection before reuse only after it sat idle; a server
that dropped a connection is then noticed at checkout (idle) or on the first statement (busy),
and the next transaction gets a fresh connection either way."""

from __future__ import annotations

from typing import Any

import pymysql
import pytest

from db import store as store_module
from db.store import StorageUnavailable, Store


def connection_id(store: Store) -> int:
    with store.transaction() as tx:
        return int(tx.conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())


def kill(url: str, thread_id: int) -> None:
    """Drop one server connection from the server side (as a restart or wait_timeout would)."""
    engine = Store.from_url(url).engine
    with engine.connect() as conn:
        conn.exec_driver_sql(f"KILL CONNECTION {thread_id}")
    engine.dispose()


def count_pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    original = pymysql.connections.Connection.ping

    def ping(self: Any, reconnect: bool = True) -> None:
        pings.append(1)
        original(self, reconnect)

    monkeypatch.setattr(pymysql.connections.Connection, "ping", ping)
    return pings


def test_a_connection_back_from_the_pool_at_once_is_not_pinged(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PING_AFTER_IDLE_S", 3600.0)
    store = Store.from_url(mysql_url)
    first = connection_id(store)  # a new connection: pinged once, at its first checkout
    pings = count_pings(monkeypatch)
    for _ in range(5):
        assert connection_id(store) == first
    assert pings == [], "no round trip spent on pings between back-to-back transactions"
    store.engine.dispose()


def test_an_idle_connection_the_server_dropped_is_replaced_at_checkout(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PING_AFTER_IDLE_S", 0.0)  # every checkout counts as idle
    store = Store.from_url(mysql_url)
    first = connection_id(store)
    kill(mysql_url, first)
    assert connection_id(store) != first  # no error: the ping found it dead, the pool replaced it
    store.engine.dispose()


def test_a_busy_connection_the_server_dropped_fails_once_then_is_replaced(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PING_AFTER_IDLE_S", 3600.0)  # never pinged
    store = Store.from_url(mysql_url)
    first = connection_id(store)
    kill(mysql_url, first)
    with pytest.raises(StorageUnavailable):  # the caller keeps the message and retries
        connection_id(store)
    assert connection_id(store) != first
    store.engine.dispose()
