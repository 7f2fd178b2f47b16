"""Counts for the Prometheus metrics that the database holds (the same from every process)."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from db import schema as t


def tallies(engine: Engine) -> dict[str, dict[str, int]]:
    """Active alarms by kind, downlink status changes by status (the history only grows, so
    they are counters), notifications by status once that table exists."""
    alarms = t.alarms.c
    history = t.downlink_history.c
    with engine.connect() as conn:
        active = conn.execute(
            select(alarms.kind, func.count()).where(alarms.active.is_(True)).group_by(alarms.kind)
        ).all()
        steps = conn.execute(select(history.status, func.count()).group_by(history.status)).all()
        notifications: list[tuple[str, int]] = []
        # The notifications outbox (second release), once db/schema.py has it.
        table = t.metadata.tables.get("notifications")
        if table is not None and "status" in table.c:
            rows = conn.execute(select(table.c.status, func.count()).group_by(table.c.status))
            notifications = [(s, n) for s, n in rows.all()]
    return {
        "alarms_active": {kind: int(n) for kind, n in active},
        "downlinks": {status: int(n) for status, n in steps},
        "notifications": {str(status): int(n) for status, n in notifications},
    }
