"""Storage adapter: SQLAlchemy Core over PyMySQL (production) or SQLite (the demo).

Rows never leave this module: reads return the frozen dataclasses below. Writes that belong to
one uplink happen in one transaction (`Store.transaction()`), so the bridge acknowledges an
uplink to the broker only after everything it caused is committed. Every write is idempotent
under the schema's unique constraints, so a redelivered uplink or a second bridge stores nothing
twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

from db import alarms as alarm_rows
from db import schema as t
from db.alarms import AlarmFilter, AlarmRecord

log = logging.getLogger(__name__)

PENDING_STATUSES = ("queued", "sent", "acked", "nacked")
UPLINK_KEY_CHARS = 160  # the uplink log's key column
FINAL_STATUSES = ("applied", "failed", "superseded")
TRANSMITTED_STATUSES = ("sent", "acked", "nacked", "applied")  # it reached the node's radio


class StorageUnavailable(RuntimeError):
    """The database cannot be reached right now; the caller should retry later."""


def make_engine(url: str) -> Engine:
    """An engine with pre-ping (survives MySQL's wait_timeout and restarts) for MySQL or SQLite."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(
        url,
        pool_recycle=3600,
        pool_size=10,
        max_overflow=20,
        connect_args={"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
        pool_reset_on_return=None,  # _reset_mysql below decides
    )

    @event.listens_for(engine, "checkin")
    def _note_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        # Pre-ping, but only a connection that sat in the pool for a while: the bridge's worker
        # takes one transaction after another, and a ping before each was one round trip in
        # ten. A server that went away within PING_AFTER_IDLE_S shows up on the first
        # statement instead (StorageUnavailable: the message is retried, nothing is lost).
        returned = record.info.get("returned_at")
        if returned is not None and time.monotonic() - returned < PING_AFTER_IDLE_S:
            return
        try:
            dbapi_conn.ping(reconnect=False)
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc

    @event.listens_for(engine, "reset")
    def _reset_mysql(dbapi_conn: Any, _record: Any, state: Any) -> None:
        # SQLAlchemy's default sends a ROLLBACK on every return to the pool, even right after a
        # COMMIT: a round trip per bridge transaction. Roll back only when the server's latest
        # reply says a transaction is still open (or we cannot tell).
        status = getattr(dbapi_conn, "server_status", None)
        if state.asyncio_safe and (status is None or status & _SERVER_STATUS_IN_TRANS):
            dbapi_conn.rollback()

    return engine


_SERVER_STATUS_IN_TRANS = 1  # MySQL protocol: SERVER_STATUS_IN_TRANS in OK / EOF packets
PING_AFTER_IDLE_S = 1.0


# --- records returned to callers ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device with its desired and reported settings."""

    device_id: str
    created_at: datetime
    last_seen: datetime | None
    last_f_cnt: int | None
    online: bool
    desired_fan: bool | None
    desired_mode: str | None
    desired_threshold: int | None
    fan_running: bool | None
    reported_fan: bool | None
    reported_mode: str | None
    reported_threshold: int | None
    uplinks: int
    lost_uplinks: int
    invalid_uplinks: int
    desired_step: int | None = None  # compressed mode's step in °C/10
    reported_step: int | None = None
    protocol_version: int | None = None
    alarm_rules: str | None = None  # JSON object of rule overrides (bridge/alarms.py)
    alarm_state: str | None = None  # the alarm engine's state, JSON


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """A stored frame's metadata (the grid and PNG are fetched separately)."""

    frame_id: int
    device_id: str
    mode: str
    frame_number: int
    complete: bool
    coverage: float
    first_received_at: datetime
    last_received_at: datetime
    temp_min: float | None
    temp_max: float | None
    temp_mean: float | None
    ambient: float | None
    fan: bool
    grid_rows: int
    grid_cols: int
    step_tenths: int | None = None  # quantisation step, °C/10; None: stored before version 3


@dataclass(frozen=True, slots=True)
class AmbientRecord:
    """One ambient temperature reading."""

    device_id: str
    at: datetime
    temperature: float


@dataclass(frozen=True, slots=True)
class DownlinkStep:
    """One entry of a downlink's status history."""

    status: str
    at: datetime
    message: str | None


@dataclass(frozen=True, slots=True)
class DownlinkRecord:
    """A settings downlink request and where it stands."""

    downlink_id: int
    device_id: str
    correlation_id: str
    fan: bool
    mode: str
    threshold: int
    f_port: int
    payload: bytes
    status: str
    message: str | None
    requested_at: datetime
    updated_at: datetime
    published_at: datetime | None
    history: tuple[DownlinkStep, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class StoredFragment:
    """A persisted fragment of a frame still open (replayed at start-up)."""

    device_id: str
    payload: bytes
    received_at: datetime
    opened_at: datetime


def _device(row: Any) -> DeviceRecord:
    return DeviceRecord(
        device_id=row.device_id,
        created_at=row.created_at,
        last_seen=row.last_seen,
        last_f_cnt=row.last_f_cnt,
        online=bool(row.online),
        desired_fan=None if row.desired_fan is None else bool(row.desired_fan),
        desired_mode=row.desired_mode,
        desired_threshold=row.desired_threshold,
        fan_running=None if row.fan_running is None else bool(row.fan_running),
        reported_fan=None if row.reported_fan is None else bool(row.reported_fan),
        reported_mode=row.reported_mode,
        reported_threshold=row.reported_threshold,
        uplinks=row.uplinks or 0,
        lost_uplinks=row.lost_uplinks or 0,
        invalid_uplinks=row.invalid_uplinks or 0,
        desired_step=row.desired_step,
        reported_step=row.reported_step,
        protocol_version=row.protocol_version,
        alarm_rules=getattr(row, "alarm_rules", None),
        alarm_state=getattr(row, "alarm_state", None),
    )


_FRAME_COLUMNS = [
    c for c in t.frames.c if c.name not in ("grid", "png", "opened_at", "received_mask")
]


def _frame(row: Any) -> FrameRecord:
    return FrameRecord(
        frame_id=row.frame_id,
        device_id=row.device_id,
        mode=row.mode,
        frame_number=row.frame_number,
        complete=bool(row.complete),
        coverage=row.coverage,
        first_received_at=row.first_received_at,
        last_received_at=row.last_received_at,
        temp_min=row.temp_min,
        temp_max=row.temp_max,
        temp_mean=row.temp_mean,
        ambient=row.ambient,
        fan=bool(row.fan),
        grid_rows=row.grid_rows,
        grid_cols=row.grid_cols,
        step_tenths=row.step,
    )


@contextmanager
def _unavailable_on_lost_server() -> Iterator[None]:
    """Turn "the server cannot be reached" (down, restarted, connection dropped) into
    StorageUnavailable, which callers retry; any other database error stays what it is."""
    try:
        yield
    except OperationalError as exc:
        raise StorageUnavailable(_short(exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StorageUnavailable(_short(exc)) from exc
        raise


def frame_record(frame_id: int, values: dict[str, Any]) -> FrameRecord:
    """The FrameRecord of a frame just written with `values` (its frames-table columns)."""
    return _frame(SimpleNamespace(frame_id=frame_id, **values))


def _open_fragments(conn: Connection, device_id: str | None = None) -> list[StoredFragment]:
    """Persisted fragments of open frames (of one device, or all), in arrival order."""
    c = t.open_fragments.c
    query = select(c.device_id, c.payload, c.received_at, c.opened_at).order_by(c.id)
    if device_id is not None:
        query = query.where(c.device_id == device_id)
    return [
        StoredFragment(r.device_id, bytes(r.payload), r.received_at, r.opened_at)
        for r in conn.execute(query).all()
    ]


def _downlink(row: Any, history: Sequence[DownlinkStep] = ()) -> DownlinkRecord:
    return DownlinkRecord(
        downlink_id=row.downlink_id,
        device_id=row.device_id,
        correlation_id=row.correlation_id,
        fan=bool(row.fan),
        mode=row.mode,
        threshold=row.threshold,
        f_port=row.f_port,
        payload=bytes(row.payload),
        status=row.status,
        message=row.message,
        requested_at=row.requested_at,
        updated_at=row.updated_at,
        published_at=row.published_at,
        history=tuple(history),
    )


# --- writes inside one transaction --------------------------------------------------------


def _insert_unless_present(conn: Connection, table: Any, values: dict[str, Any]) -> None:
    """One INSERT that leaves the row alone if a unique key already holds it (no other error
    is hidden): ON DUPLICATE KEY UPDATE of the key to itself on MySQL/MariaDB, ON CONFLICT DO
    NOTHING on SQLite."""
    _insert_many_unless_present(conn, table, [values])


def _insert_many_unless_present(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """`_insert_unless_present` for many rows in one multi-row INSERT."""
    values: Any = rows[0] if len(rows) == 1 else rows
    if conn.dialect.name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        key = next(iter(table.primary_key.columns))
        conn.execute(mysql_insert(table).on_duplicate_key_update({key: key}), values)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(table).on_conflict_do_nothing(), values)


def _upsert_many(
    conn: Connection, table: Any, rows: list[dict[str, Any]], columns: list[str]
) -> None:
    """One multi-row INSERT whose rows, where the primary key already holds one, set only
    `columns` of it (ON DUPLICATE KEY UPDATE on MySQL/MariaDB, ON CONFLICT on SQLite)."""
    if conn.dialect.name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        my = mysql_insert(table)
        conn.execute(my.on_duplicate_key_update({c: my.inserted[c] for c in columns}), rows)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(table)
        conn.execute(
            lite.on_conflict_do_update(
                index_elements=list(table.primary_key.columns),
                set_={c: lite.excluded[c] for c in columns},
            ),
            rows,
        )


class Tx:
    """The writes (and the reads they need) of one transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # uplinks and devices

    def uplink_seen(self, uplink_key: str) -> bool:
        """True when this uplink is already in the log (a redelivery)."""
        found = self.conn.execute(
            select(t.uplinks.c.id).where(t.uplinks.c.uplink_key == uplink_key[:UPLINK_KEY_CHARS])
        ).first()
        return found is not None

    def record_uplink(self, values: dict[str, Any]) -> None:
        """Append to the uplink log (the caller checked uplink_seen first)."""
        # Parameters passed to execute, not .values(): no per-value SQL construct to build.
        self.conn.execute(insert(t.uplinks), values)

    def device_for_update(self, device_id: str, now: datetime) -> DeviceRecord:
        """The device row, created if new, locked for this transaction on MySQL."""
        query = select(t.devices).where(t.devices.c.device_id == device_id)
        if self.conn.dialect.name in ("mysql", "mariadb"):
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        if row is None:
            self.conn.execute(
                insert(t.devices).values(
                    device_id=device_id,
                    created_at=now,
                    online=False,
                    uplinks=0,
                    lost_uplinks=0,
                    invalid_uplinks=0,
                )
            )
            row = self.conn.execute(query).first()
        return _device(row)

    def update_device(self, device_id: str, **values: Any) -> None:
        """Set some columns of a device."""
        if values:
            self.conn.execute(
                update(t.devices).where(t.devices.c.device_id == device_id).values(**values)
            )

    # open fragments

    def add_open_fragment(self, values: dict[str, Any]) -> None:
        """Persist a fragment of an open frame unless it is already there."""
        # One statement, not SELECT then INSERT: uq_open_fragment decides.
        _insert_unless_present(self.conn, t.open_fragments, values)

    def open_fragments_of(self, device_id: str) -> list[StoredFragment]:
        """The persisted fragments of one device's open frames, in arrival order."""
        return _open_fragments(self.conn, device_id)

    def close_open_fragments(
        self, device_id: str, mode: str, frame_number: int, opened_at: datetime
    ) -> None:
        """Forget the persisted fragments of a frame that has been stored."""
        c = t.open_fragments.c
        self.conn.execute(
            delete(t.open_fragments).where(
                c.device_id == device_id,
                c.mode == mode,
                c.frame_number == frame_number,
                c.opened_at == opened_at,
            )
        )

    # frames

    def upsert_frame(self, values: dict[str, Any], first: bool = False) -> tuple[int, bool]:
        """Insert a frame or improve the stored one; returns (frame_id, changed).

        A stored frame is only replaced by one that carries more fragments, so a late or
        second writer can never turn a complete frame back into a partial one. `first` says
        the caller has not stored this frame before; a batch then inserts it without looking
        (a second writer's copy makes the batch fail and be redone here, one by one).
        """
        c = t.frames.c
        row = self.conn.execute(
            select(c.frame_id, c.received_mask).where(
                c.device_id == values["device_id"],
                c.mode == values["mode"],
                c.frame_number == values["frame_number"],
                c.opened_at == values["opened_at"],
            )
        ).first()
        if row is None:
            result = self.conn.execute(insert(t.frames), values)
            return int(result.inserted_primary_key[0]), True
        old_mask = int(row.received_mask)
        new_mask = int(values["received_mask"])
        if new_mask | old_mask == old_mask:
            return int(row.frame_id), False
        self.conn.execute(update(t.frames).where(c.frame_id == row.frame_id).values(**values))
        return int(row.frame_id), True

    def add_ambient(self, device_id: str, at: datetime, temperature: float) -> bool:
        """Store an ambient reading once per (device, time)."""
        c = t.ambient.c
        exists = self.conn.execute(select(c.id).where(c.device_id == device_id, c.at == at)).first()
        if exists is not None:
            return False
        self.conn.execute(
            insert(t.ambient).values(device_id=device_id, at=at, temperature=temperature)
        )
        return True

    def latest_frame_mode(self, device_id: str) -> str | None:
        """The mode of a device's newest frame: what its fragments last said it runs in."""
        c = t.frames.c
        return self.conn.execute(
            select(c.mode)
            .where(c.device_id == device_id)
            .order_by(c.first_received_at.desc())
            .limit(1)
        ).scalar()

    # downlinks

    def create_downlink(self, values: dict[str, Any]) -> int:
        """Insert a downlink request with its first history entry; returns its id."""
        result = self.conn.execute(insert(t.downlinks).values(**values))
        downlink_id = int(result.inserted_primary_key[0])
        self.add_history(downlink_id, values["status"], values["requested_at"], values["message"])
        return downlink_id

    def add_history(self, downlink_id: int, status: str, at: datetime, message: str | None) -> None:
        """Append to a downlink's status history."""
        self.conn.execute(
            insert(t.downlink_history).values(
                downlink_id=downlink_id, status=status, at=at, message=message
            )
        )

    def set_downlink_status(
        self, downlink_id: int, status: str, at: datetime, message: str | None
    ) -> None:
        """Move a downlink to a status and record it in the history."""
        self.conn.execute(
            update(t.downlinks)
            .where(t.downlinks.c.downlink_id == downlink_id)
            .values(status=status, updated_at=at, message=message)
        )
        self.add_history(downlink_id, status, at, message)

    def mark_published(self, downlink_id: int, at: datetime) -> None:
        """Record that the downlink was handed to the broker."""
        self.conn.execute(
            update(t.downlinks)
            .where(t.downlinks.c.downlink_id == downlink_id)
            .values(published_at=at)
        )

    def pending_downlinks(self, device_id: str) -> list[DownlinkRecord]:
        """A device's downlinks that are not final yet, oldest first."""
        c = t.downlinks.c
        rows = self.conn.execute(
            select(t.downlinks)
            .where(c.device_id == device_id, c.status.in_(PENDING_STATUSES))
            .order_by(c.downlink_id)
        ).all()
        return [_downlink(r) for r in rows]

    def downlink_by_correlation(
        self, device_id: str, correlation_ids: Sequence[str]
    ) -> DownlinkRecord | None:
        """The downlink of this device one of these correlation ids belongs to, locked for
        this transaction (two bridges may apply the same event at once)."""
        if not correlation_ids:
            return None
        c = t.downlinks.c
        row = self.conn.execute(
            select(t.downlinks)
            .where(c.device_id == device_id, c.correlation_id.in_(list(correlation_ids)))
            .with_for_update()
        ).first()
        return None if row is None else _downlink(row)

    def downlink_by_payload(
        self, device_id: str, f_port: int, payload: bytes
    ) -> DownlinkRecord | None:
        """Fallback match: the newest pending downlink with this port and payload."""
        c = t.downlinks.c
        row = self.conn.execute(
            select(t.downlinks)
            .where(
                c.device_id == device_id,
                c.f_port == f_port,
                c.payload == payload,
                c.status.in_(PENDING_STATUSES),
            )
            .order_by(c.downlink_id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        return None if row is None else _downlink(row)

    def has_history(self, downlink_id: int, status: str, at: datetime) -> bool:
        """Whether a downlink's history already holds this status at this time (the event
        was applied before: a redelivery)."""
        h = t.downlink_history.c
        return (
            self.conn.execute(
                select(h.downlink_id)
                .where(h.downlink_id == downlink_id, h.status == status, h.at == at)
                .limit(1)
            ).first()
            is not None
        )

    def transmitted_downlink_times(self, device_id: str, since: datetime) -> list[datetime]:
        """When a device's downlinks requested since a time and transmitted to it were
        requested, oldest first (the fair-use rate limit): The Things Stack reported them
        sent, acked or nacked, or the node applied them. A request replaced before it was
        sent never reached the air and is not among them."""
        d, h = t.downlinks.c, t.downlink_history.c
        was_sent = (
            select(h.downlink_id)
            .where(h.downlink_id == d.downlink_id, h.status.in_(TRANSMITTED_STATUSES))
            .exists()
        )
        rows = self.conn.execute(
            select(d.requested_at)
            .where(
                d.device_id == device_id,
                d.requested_at >= since,
                d.status.in_(TRANSMITTED_STATUSES) | was_sent,
            )
            .order_by(d.requested_at)
        ).all()
        return [r.requested_at for r in rows]

    # alarms (records and queries in db/alarms.py)

    def active_alarms(self, device_id: str) -> dict[str, AlarmRecord]:
        """The active alarms of a device by kind."""
        return alarm_rows.active_alarms(self.conn, device_id)

    def open_alarm(
        self,
        device_id: str,
        kind: str,
        severity: str,
        value: float | None,
        limit: float | None,
        at: datetime,
    ) -> AlarmRecord:
        """Open an alarm (the database refuses a second active one of a kind)."""
        return alarm_rows.open_alarm(self.conn, device_id, kind, severity, value, limit, at)

    def change_alarm_severity(
        self, alarm: AlarmRecord, severity: str, value: float | None, at: datetime
    ) -> AlarmRecord:
        """Escalate or de-escalate an active alarm."""
        return alarm_rows.change_severity(self.conn, alarm, severity, value, at)

    def close_alarm(self, alarm: AlarmRecord, value: float | None, at: datetime) -> AlarmRecord:
        """Clear an alarm whose condition cleared."""
        return alarm_rows.clear_alarm(self.conn, alarm, value, at)


class BatchTx(Tx):
    """The transaction of a batch of uplinks: fewer round trips for the same writes.

    `prefetch` reads the batch's devices (locked, in key order) and which of its uplinks are
    already logged, one query each. The writes nothing in the batch reads back (the uplink log, open fragments,
    ambient readings, device columns, the removal of a stored frame's fragments) wait in memory
    and go out as one multi-row statement each in `flush`, just before the commit. Frames,
    alarms and downlinks are written at once.
    """

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._asked: set[str] = set()  # uplink keys looked up by prefetch
        self._seen: set[str] = set()  # ... of them, those logged, and those logged since
        self._devices: dict[str, DeviceRecord] = {}
        self._dirty: dict[str, dict[str, Any]] = {}
        self._uplinks: list[dict[str, Any]] = []
        self._fragments: list[dict[str, Any]] = []
        self._closed: list[tuple[str, str, int, datetime]] = []
        self._ambient: dict[tuple[str, datetime], dict[str, Any]] = {}

    def prefetch(self, uplink_keys: Sequence[str], devices: dict[str, datetime]) -> None:
        """Read what the batch will ask for: which uplinks are logged, and the devices (created
        if new, with the time given for each) locked for the batch."""
        keys = sorted({key[:UPLINK_KEY_CHARS] for key in uplink_keys} - self._asked)
        self._asked.update(keys)
        if keys:
            c = t.uplinks.c
            found = self.conn.execute(select(c.uplink_key).where(c.uplink_key.in_(keys)))
            self._seen.update(row.uplink_key for row in found)
        ids = sorted(set(devices) - self._devices.keys())
        if not ids:
            return
        query = select(t.devices).where(t.devices.c.device_id.in_(ids))
        if self.conn.dialect.name in ("mysql", "mariadb"):
            query = query.with_for_update()
        for row in self.conn.execute(query.order_by(t.devices.c.device_id)):
            self._devices[row.device_id] = _device(row)
        new = [_new_device(i, devices[i]) for i in ids if i not in self._devices]
        if new:
            self.conn.execute(insert(t.devices), new)
            self._devices.update((row["device_id"], _device(SimpleNamespace(**row))) for row in new)

    def uplink_seen(self, uplink_key: str) -> bool:
        """True when this uplink is logged, or was earlier in the batch."""
        key = uplink_key[:UPLINK_KEY_CHARS]
        if key in self._seen:
            return True
        return key not in self._asked and super().uplink_seen(key)

    def record_uplink(self, values: dict[str, Any]) -> None:
        self._seen.add(values["uplink_key"])
        self._uplinks.append(values)

    def device_for_update(self, device_id: str, now: datetime) -> DeviceRecord:
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = super().device_for_update(device_id, now)
        return device

    def update_device(self, device_id: str, **values: Any) -> None:
        device = self._devices.get(device_id)
        if device is None:  # not read in this batch: there is no copy to keep in step
            super().update_device(device_id, **values)
        elif values:
            self._devices[device_id] = replace(device, **values)
            self._dirty.setdefault(device_id, {}).update(values)

    def add_open_fragment(self, values: dict[str, Any]) -> None:
        self._fragments.append(values)

    def close_open_fragments(
        self, device_id: str, mode: str, frame_number: int, opened_at: datetime
    ) -> None:
        key = (device_id, mode, frame_number, opened_at)
        self._fragments = [f for f in self._fragments if _fragment_key(f) != key]
        self._closed.append(key)

    def upsert_frame(self, values: dict[str, Any], first: bool = False) -> tuple[int, bool]:
        if not first:
            return super().upsert_frame(values)
        result = self.conn.execute(insert(t.frames), values)
        return int(result.inserted_primary_key[0]), True

    def add_ambient(self, device_id: str, at: datetime, temperature: float) -> bool:
        """Store an ambient reading once per (device, time). True unless the batch holds it
        already: a copy already in the database (only a second writer makes one) is left as
        it is, and then announced once more."""
        if (device_id, at) in self._ambient:
            return False
        self._ambient[(device_id, at)] = {
            "device_id": device_id,
            "at": at,
            "temperature": temperature,
        }
        return True

    def flush(self) -> None:
        """Write what waits in memory: one statement per table, in an order that keeps the
        fragments of a frame reopened after its store."""
        if self._uplinks:
            self.conn.execute(insert(t.uplinks), self._uplinks)
        if self._closed:
            c = t.open_fragments.c
            self.conn.execute(
                delete(t.open_fragments).where(
                    tuple_(c.device_id, c.mode, c.frame_number, c.opened_at).in_(self._closed)
                )
            )
        if self._fragments:
            _insert_many_unless_present(self.conn, t.open_fragments, self._fragments)
        if self._ambient:
            _insert_many_unless_present(self.conn, t.ambient, list(self._ambient.values()))
        if self._dirty:
            columns = sorted({column for changes in self._dirty.values() for column in changes})
            rows = []
            for device_id in sorted(self._dirty):
                device = self._devices[device_id]
                row = {c: getattr(device, c) for c in (*_DEVICE_REQUIRED, *columns)}
                rows.append(row)
            _upsert_many(self.conn, t.devices, rows, columns)
        self._uplinks, self._fragments, self._closed = [], [], []
        self._ambient, self._dirty = {}, {}


_DEVICE_REQUIRED = (
    "device_id",
    "created_at",
    "online",
    "uplinks",
    "lost_uplinks",
    "invalid_uplinks",
)


def _new_device(device_id: str, now: datetime) -> dict[str, Any]:
    """The row of a device first seen now."""
    return {
        **{c.name: None for c in t.devices.c},
        "device_id": device_id,
        "created_at": now,
        "online": False,
        "uplinks": 0,
        "lost_uplinks": 0,
        "invalid_uplinks": 0,
    }


def _fragment_key(values: dict[str, Any]) -> tuple[str, str, int, datetime]:
    return (values["device_id"], values["mode"], values["frame_number"], values["opened_at"])


# --- the dashboard's frame queries (also EXPLAINed by bench/storage.py) --------------------


def latest_frames_query(device_ids: Sequence[str] | None = None) -> Select[Any]:
    """The newest frame (by capture time) of each device, or of these."""
    f = t.frames.c
    newest = (
        select(f.device_id, func.max(f.first_received_at).label("at"))
        .group_by(f.device_id)
        .subquery()
    )
    query = select(*_FRAME_COLUMNS).join(
        newest, and_(f.device_id == newest.c.device_id, f.first_received_at == newest.c.at)
    )
    if device_ids is not None:
        query = query.where(f.device_id.in_(list(device_ids)))
    return query


def device_frames_query(
    device_id: str, since: datetime | None, until: datetime | None, limit: int
) -> Select[Any]:
    """A device's frames, newest first, within an optional time range."""
    f = t.frames.c
    query = select(*_FRAME_COLUMNS).where(f.device_id == device_id)
    if since is not None:
        query = query.where(f.first_received_at >= since)
    if until is not None:
        query = query.where(f.first_received_at <= until)
    return query.order_by(f.first_received_at.desc(), f.frame_id.desc()).limit(limit)


# --- the store ----------------------------------------------------------------------------


class Store:
    """Reads for the webapp and transactions for the bridge."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._batch = threading.local()  # this thread's open batch transaction, if any

    @classmethod
    def from_url(cls, url: str) -> Store:
        """A store on a new engine."""
        return cls(make_engine(url))

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One database transaction; StorageUnavailable when the server cannot be reached.

        Inside `batch()` on the same thread it is the batch's transaction: it commits (or
        rolls back) with the batch, not on its own.
        """
        batch_tx: Tx | None = getattr(self._batch, "tx", None)
        if batch_tx is not None:
            yield batch_tx
            return
        with _unavailable_on_lost_server(), self.engine.begin() as conn:
            yield Tx(conn)

    @contextmanager
    def batch(self) -> Iterator[BatchTx]:
        """One transaction for every `transaction()` of this thread inside it: one commit for
        many messages (the commit, and its log flush, is the dearest part of a small write),
        with the writes that can wait sent together just before it (`BatchTx`). Any exception
        rolls back all of it."""
        joined: BatchTx | None = getattr(self._batch, "tx", None)
        if joined is not None:
            yield joined  # already in a batch: join it
            return
        with _unavailable_on_lost_server(), self.engine.begin() as conn:
            tx = self._batch.tx = BatchTx(conn)
            try:
                yield tx
                tx.flush()
            finally:
                self._batch.tx = None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with _unavailable_on_lost_server(), self.engine.connect() as conn:
            yield conn

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            with self._read() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except (StorageUnavailable, DBAPIError):
            return False

    # devices

    def device(self, device_id: str) -> DeviceRecord | None:
        """One device, or None."""
        with self._read() as conn:
            row = conn.execute(select(t.devices).where(t.devices.c.device_id == device_id)).first()
        return None if row is None else _device(row)

    def devices(self, device_ids: Sequence[str] | None = None) -> list[DeviceRecord]:
        """All devices (or these), by id."""
        query = select(t.devices).order_by(t.devices.c.device_id)
        if device_ids is not None:
            query = query.where(t.devices.c.device_id.in_(list(device_ids)))
        with self._read() as conn:
            return [_device(r) for r in conn.execute(query)]

    def devices_seen_before(self, cutoff: datetime) -> list[DeviceRecord]:
        """Devices marked online whose last uplink is older than the cutoff."""
        c = t.devices.c
        with self._read() as conn:
            rows = conn.execute(
                select(t.devices)
                .where(c.online.is_(True), c.last_seen < cutoff)
                .order_by(c.device_id)
            ).all()
        return [_device(r) for r in rows]

    # frames

    def latest_frames(self, device_ids: Sequence[str] | None = None) -> dict[str, FrameRecord]:
        """The newest frame of each device (by capture time)."""
        with self._read() as conn:
            return {r.device_id: _frame(r) for r in conn.execute(latest_frames_query(device_ids))}

    def hottest_devices(self, since: datetime | None, limit: int) -> list[tuple[str, float]]:
        """Devices by their maximum frame temperature since a time, hottest first."""
        f = t.frames.c
        query = (
            select(f.device_id, func.max(f.temp_max).label("hottest"))
            .where(f.temp_max.is_not(None))
            .group_by(f.device_id)
            .order_by(func.max(f.temp_max).desc())
            .limit(limit)
        )
        if since is not None:
            query = query.where(f.first_received_at >= since)
        with self._read() as conn:
            return [(r.device_id, float(r.hottest)) for r in conn.execute(query)]

    def frames(
        self,
        device_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[FrameRecord]:
        """A device's frames, newest first, within an optional time range."""
        query = device_frames_query(device_id, since, until, limit)
        with self._read() as conn:
            return [_frame(r) for r in conn.execute(query)]

    def frame(self, frame_id: int) -> FrameRecord | None:
        """One frame's metadata."""
        with self._read() as conn:
            row = conn.execute(
                select(*_FRAME_COLUMNS).where(t.frames.c.frame_id == frame_id)
            ).first()
        return None if row is None else _frame(row)

    def frame_grid(self, frame_id: int) -> bytes | None:
        """A frame's packed grid (int16 big-endian °C/10, -2048 = no data)."""
        with self._read() as conn:
            value = conn.execute(
                select(t.frames.c.grid).where(t.frames.c.frame_id == frame_id)
            ).scalar_one_or_none()
        return None if value is None else bytes(value)

    def frame_png(self, frame_id: int) -> bytes | None:
        """A frame's stored heatmap PNG."""
        with self._read() as conn:
            value = conn.execute(
                select(t.frames.c.png).where(t.frames.c.frame_id == frame_id)
            ).scalar_one_or_none()
        return None if value is None else bytes(value)

    def frame_count(self) -> int:
        """How many frames are stored."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(t.frames)).scalar_one())

    # ambient

    def ambient_series(
        self,
        device_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[AmbientRecord]:
        """Ambient readings, oldest first, the newest `limit` of the range."""
        c = t.ambient.c
        query = select(c.device_id, c.at, c.temperature).where(c.device_id == device_id)
        if since is not None:
            query = query.where(c.at >= since)
        if until is not None:
            query = query.where(c.at <= until)
        query = query.order_by(c.at.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [AmbientRecord(r.device_id, r.at, r.temperature) for r in reversed(rows)]

    def latest_ambient(self, device_id: str) -> AmbientRecord | None:
        """The newest ambient reading of a device."""
        series = self.ambient_series(device_id, limit=1)
        return series[-1] if series else None

    # downlinks

    def downlinks(self, device_id: str, limit: int = 50) -> list[DownlinkRecord]:
        """A device's downlink requests with their histories, newest first."""
        c = t.downlinks.c
        with self._read() as conn:
            rows = conn.execute(
                select(t.downlinks)
                .where(c.device_id == device_id)
                .order_by(c.downlink_id.desc())
                .limit(limit)
            ).all()
            ids = [r.downlink_id for r in rows]
            steps: dict[int, list[DownlinkStep]] = {i: [] for i in ids}
            if ids:
                h = t.downlink_history.c
                for s in conn.execute(
                    select(t.downlink_history).where(h.downlink_id.in_(ids)).order_by(h.id)
                ):
                    steps[s.downlink_id].append(DownlinkStep(s.status, s.at, s.message))
        return [_downlink(r, steps[r.downlink_id]) for r in rows]

    def downlink(self, downlink_id: int) -> DownlinkRecord | None:
        """One downlink request."""
        with self._read() as conn:
            row = conn.execute(
                select(t.downlinks).where(t.downlinks.c.downlink_id == downlink_id)
            ).first()
        return None if row is None else _downlink(row)

    def unpublished_downlinks(self) -> list[DownlinkRecord]:
        """Pending downlinks not yet handed to the broker (the outbox), oldest first."""
        c = t.downlinks.c
        with self._read() as conn:
            rows = conn.execute(
                select(t.downlinks)
                .where(c.published_at.is_(None), c.status.in_(PENDING_STATUSES))
                .order_by(c.downlink_id)
            ).all()
        return [_downlink(r) for r in rows]

    # alarms

    def alarms(
        self,
        active: bool | None = None,
        device_id: str | None = None,
        limit: int = 200,
        filter: AlarmFilter | None = None,
    ) -> list[AlarmRecord]:
        """Alarms, newest first (the filter's, or active / device / limit)."""
        f = filter or AlarmFilter(active=active, device_id=device_id, limit=limit)
        with self._read() as conn:
            return alarm_rows.list_alarms(conn, f)

    def alarm(self, alarm_id: int) -> AlarmRecord | None:
        """One alarm, or None."""
        with self._read() as conn:
            return alarm_rows.alarm_by_id(conn, alarm_id)

    def ack_alarm(
        self, alarm_id: int, by: str, note: str | None, at: datetime
    ) -> tuple[AlarmRecord | None, bool]:
        """Acknowledge an alarm (once): (the alarm or None if unknown, whether this acked it)."""
        with self.transaction() as tx:
            return alarm_rows.ack_alarm(tx.conn, alarm_id, by, note, at)

    def set_alarm_rules(self, device_id: str, rules_json: str | None) -> None:
        """Store a device's alarm rule overrides (None: the configured rules)."""
        with self.transaction() as tx:
            tx.conn.execute(
                update(t.devices)
                .where(t.devices.c.device_id == device_id)
                .values(alarm_rules=rules_json)
            )

    # open fragments

    def open_fragments(self) -> list[StoredFragment]:
        """Every persisted fragment of the open frames, in arrival order."""
        with self._read() as conn:
            return _open_fragments(conn)

    # housekeeping

    def latest_uplink_at(self) -> datetime | None:
        """The network time of the newest logged uplink, if any."""
        c = t.uplinks.c
        with self._read() as conn:
            return conn.execute(select(func.max(c.received_at))).scalar()


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


__all__ = [
    "FINAL_STATUSES",
    "PENDING_STATUSES",
    "AlarmFilter",
    "AlarmRecord",
    "AmbientRecord",
    "BatchTx",
    "DeviceRecord",
    "DownlinkRecord",
    "DownlinkStep",
    "FrameRecord",
    "StorageUnavailable",
    "Store",
    "StoredFragment",
    "Tx",
    "make_engine",
]
