"""Schema migrations: one numbered step each, applied in order, recorded in schema_version.

`upgrade(engine)` creates a new database or brings an old one to the current schema; running it
again does nothing. Add a step by appending a function to MIGRATIONS; never edit a released one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, select, text

from db import schema

log = logging.getLogger(__name__)


def _v1_initial(conn: Connection) -> None:
    """Version 1: every table of db/schema.py as first released."""
    schema.metadata.create_all(conn, checkfirst=True)


# Columns that hold a mode: "compressed" (docs/protocol.md) needs more than VARCHAR(8).
_MODE_COLUMNS = (
    ("devices", "desired_mode", True),
    ("devices", "reported_mode", True),
    ("open_fragments", "mode", False),
    ("frames", "mode", False),
    ("downlinks", "mode", False),
)


def _v2_compressed_mode(conn: Connection) -> None:
    """Version 2: mode columns VARCHAR(16) for "compressed"; devices' desired/reported step."""
    existing = {c["name"] for c in inspect(conn).get_columns("devices")}
    for name in ("desired_step", "reported_step"):
        if name not in existing:
            conn.execute(text(f"ALTER TABLE devices ADD COLUMN {name} SMALLINT NULL"))
    if conn.dialect.name in ("mysql", "mariadb"):
        # SQLite does not enforce VARCHAR lengths; MySQL/MariaDB in strict mode do.
        for table, column, nullable in _MODE_COLUMNS:
            null = "NULL" if nullable else "NOT NULL"
            conn.execute(text(f"ALTER TABLE {table} MODIFY COLUMN {column} VARCHAR(16) {null}"))


def _v3_frame_step(conn: Connection) -> None:
    """Version 3: frames.step, the quantisation step of the frame's values (°C/10)."""
    if "step" not in {c["name"] for c in inspect(conn).get_columns("frames")}:
        conn.execute(text("ALTER TABLE frames ADD COLUMN step SMALLINT NULL"))


def _v5_alarms(conn: Connection) -> None:
    """Version 5: alarm severity, acknowledgement and the one-active-per-kind key; devices'
    alarm rule overrides and engine state."""
    mysql = conn.dialect.name in ("mysql", "mariadb")
    datetime_type = "DATETIME(6)" if mysql else "DATETIME"
    _add_columns(conn, "devices", {"alarm_rules": "TEXT NULL", "alarm_state": "TEXT NULL"})
    _add_columns(
        conn,
        "alarms",
        {
            "severity": "VARCHAR(16) NULL",
            "active_kind": "VARCHAR(32) NULL",
            "acked_at": f"{datetime_type} NULL",
            "acked_by": "VARCHAR(64) NULL",
            "note": "VARCHAR(500) NULL",
        },
    )
    conn.execute(text("UPDATE alarms SET severity = 'warning' WHERE severity IS NULL"))
    # Before the key: an older release could leave two active alarms of a kind; keep the newest.
    rows = conn.execute(
        text(
            "SELECT alarm_id, device_id, kind FROM alarms WHERE active = :t "
            "ORDER BY opened_at DESC, alarm_id DESC"
        ),
        {"t": True},
    ).all()
    seen: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.device_id, row.kind)
        if key in seen:
            conn.execute(
                text("UPDATE alarms SET active = :f, closed_at = opened_at WHERE alarm_id = :i"),
                {"f": False, "i": row.alarm_id},
            )
        else:
            seen.add(key)
            conn.execute(
                text("UPDATE alarms SET active_kind = kind WHERE alarm_id = :i"),
                {"i": row.alarm_id},
            )
    names = {u["name"] for u in inspect(conn).get_unique_constraints("alarms")}
    names |= {i["name"] for i in inspect(conn).get_indexes("alarms")}
    if "uq_alarms_active" not in names:
        conn.execute(
            text("CREATE UNIQUE INDEX uq_alarms_active ON alarms (device_id, active_kind)")
        )


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ... ADD COLUMN for each column the table does not have yet."""
    existing = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, definition in columns.items():
        if name not in existing:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {definition}"))


def _v10_frame_summaries(conn: Connection) -> None:
    """Version 10: frame_summaries, the hourly summaries kept after frames are pruned."""
    schema.frame_summaries.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _v1_initial),
    (2, "compressed mode: wider mode columns, step columns", _v2_compressed_mode),
    (3, "frame step", _v3_frame_step),
    (5, "alarms: severity, acknowledgement, one active per kind; rules and state", _v5_alarms),
    (10, "hourly frame summaries (retention)", _v10_frame_summaries),
]
CURRENT_VERSION = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    """The schema version a database is at; 0 for an empty database."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    versions = conn.execute(select(schema.schema_version.c.version)).scalars().all()
    return max(versions, default=0)


SCHEMA_LOCK = "thermal_bridge_schema"
SCHEMA_LOCK_TIMEOUT_S = 120


def upgrade(engine: Engine) -> int:
    """Apply every missing migration; return the resulting version. Idempotent.

    On MySQL/MariaDB a named lock serialises processes that start together (a webapp and a
    separate bridge), so one migrates while the other waits and then finds nothing to do.
    """
    if engine.dialect.name not in ("mysql", "mariadb"):
        return _upgrade(engine)
    with engine.connect() as lock:
        got = lock.execute(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": SCHEMA_LOCK, "timeout": SCHEMA_LOCK_TIMEOUT_S},
        ).scalar()
        if got != 1:
            raise RuntimeError(f"could not take the schema lock {SCHEMA_LOCK!r} to migrate")
        try:
            return _upgrade(engine)
        finally:
            lock.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": SCHEMA_LOCK})


def applied_versions(conn: Connection) -> set[int]:
    """The migration numbers recorded in schema_version."""
    if not inspect(conn).has_table("schema_version"):
        return set()
    return set(conn.execute(select(schema.schema_version.c.version)).scalars().all())


def _upgrade(engine: Engine) -> int:
    # Every step not yet recorded is applied, not only those above the highest recorded: the
    # numbers were reserved per feature while the second release was built in parallel, so a
    # database may hold a later step before an earlier one lands. Steps check before altering.
    with engine.begin() as conn:
        schema.schema_version.create(conn, checkfirst=True)
        applied = applied_versions(conn)
    for number, title, step in MIGRATIONS:
        if number in applied:
            continue
        with engine.begin() as conn:
            log.info("applying migration %d: %s", number, title)
            step(conn)
            conn.execute(
                schema.schema_version.insert().values(version=number, applied_at=datetime.now(UTC))
            )
        applied.add(number)
    return max(applied, default=0)
