"""Alarm records and queries (the alarms table); `db.store` re-exports what callers need.

One active alarm per device and kind is the database's own rule: `active_kind` holds the kind
while the alarm is active and NULL after, under the unique key (device_id, active_kind).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from db import schema as t

MAX_NOTE_CHARS = 500


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """An alarm: opened once, updated when its severity changes, cleared once."""

    alarm_id: int
    device_id: str
    kind: str
    active: bool
    value: float | None
    limit_value: float | None
    opened_at: datetime
    closed_at: datetime | None  # "cleared_at" in REST and events
    severity: str = "warning"
    updated_at: datetime | None = None  # of the change being announced, if not a clearing
    acked_at: datetime | None = None
    acked_by: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class AlarmFilter:
    """`GET /api/alarms` filters."""

    active: bool | None = None
    device_id: str | None = None
    kind: str | None = None
    severity: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


def alarm_record(row: Any) -> AlarmRecord:
    """The record of an alarms row."""
    return AlarmRecord(
        alarm_id=row.alarm_id,
        device_id=row.device_id,
        kind=row.kind,
        active=bool(row.active),
        value=row.value,
        limit_value=row.limit_value,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
        severity=row.severity or "warning",
        acked_at=row.acked_at,
        acked_by=row.acked_by,
        note=row.note,
    )


def active_alarms(conn: Connection, device_id: str) -> dict[str, AlarmRecord]:
    """The active alarms of a device by kind."""
    c = t.alarms.c
    rows = conn.execute(
        select(t.alarms).where(c.device_id == device_id, c.active_kind.is_not(None))
    )
    return {row.kind: alarm_record(row) for row in rows}


def alarm_by_id(conn: Connection, alarm_id: int) -> AlarmRecord | None:
    """One alarm, or None."""
    row = conn.execute(select(t.alarms).where(t.alarms.c.alarm_id == alarm_id)).first()
    return None if row is None else alarm_record(row)


def open_alarm(
    conn: Connection,
    device_id: str,
    kind: str,
    severity: str,
    value: float | None,
    limit: float | None,
    at: datetime,
) -> AlarmRecord:
    """Insert an active alarm (the unique key refuses a second active one of the kind)."""
    result = conn.execute(
        insert(t.alarms).values(
            device_id=device_id,
            kind=kind,
            active=True,
            active_kind=kind,
            severity=severity,
            value=value,
            limit_value=limit,
            opened_at=at,
        )
    )
    return AlarmRecord(
        int(result.inserted_primary_key[0]),
        device_id,
        kind,
        True,
        value,
        limit,
        at,
        None,
        severity,
    )


def change_severity(
    conn: Connection, alarm: AlarmRecord, severity: str, value: float | None, at: datetime
) -> AlarmRecord:
    """Escalate or de-escalate an active alarm: the same alarm, a new severity."""
    conn.execute(
        update(t.alarms)
        .where(t.alarms.c.alarm_id == alarm.alarm_id)
        .values(severity=severity, value=value)
    )
    return replace(alarm, severity=severity, value=value, updated_at=at)


def clear_alarm(
    conn: Connection, alarm: AlarmRecord, value: float | None, at: datetime
) -> AlarmRecord:
    """Clear an active alarm."""
    conn.execute(
        update(t.alarms)
        .where(t.alarms.c.alarm_id == alarm.alarm_id)
        .values(active=False, active_kind=None, closed_at=at)
    )
    return replace(alarm, active=False, value=value, closed_at=at)


def ack_alarm(
    conn: Connection, alarm_id: int, by: str, note: str | None, at: datetime
) -> tuple[AlarmRecord | None, bool]:
    """Acknowledge an alarm once: (the alarm, whether this acked it). An acked alarm is
    returned unchanged; (None, False) if there is no such alarm."""
    c = t.alarms.c
    result = conn.execute(
        update(t.alarms)
        .where(c.alarm_id == alarm_id, c.acked_at.is_(None))
        .values(acked_at=at, acked_by=by[:64], note=note)
    )
    return alarm_by_id(conn, alarm_id), bool(result.rowcount)


def list_alarms(conn: Connection, f: AlarmFilter) -> list[AlarmRecord]:
    """Alarms matching the filter, newest first."""
    c = t.alarms.c
    query = select(t.alarms)
    if f.active is not None:
        query = query.where(c.active.is_(f.active))
    if f.device_id is not None:
        query = query.where(c.device_id == f.device_id)
    if f.kind is not None:
        query = query.where(c.kind == f.kind)
    if f.severity is not None:
        query = query.where(c.severity == f.severity)
    if f.since is not None:
        query = query.where(c.opened_at >= f.since)
    if f.until is not None:
        query = query.where(c.opened_at <= f.until)
    query = query.order_by(c.opened_at.desc(), c.alarm_id.desc()).limit(f.limit)
    return [alarm_record(r) for r in conn.execute(query)]
