"""Schema migrations: `python -m db upgrade` creates or upgrades a database, idempotently, on
SQLite and on a real MariaDB, and an older database keeps its data."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from bridge.announcements import frame_meta
from db import schema as t
from db.migrations import CURRENT_VERSION, MIGRATIONS, current_version, upgrade
from db.store import Store, make_engine

ROOT = Path(__file__).resolve().parents[2]


def db_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_upgrade_creates_the_current_schema_and_running_it_again_changes_nothing(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "mysql_url")
    first = db_command("upgrade", "--url", url)
    assert first.returncode == 0, first.stderr
    assert f"schema version {CURRENT_VERSION}" in first.stdout
    engine = make_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert {"devices", "uplinks", "open_fragments", "frames", "ambient", "downlinks"} <= tables
    again = db_command("upgrade", "--url", url)
    assert again.returncode == 0 and "applying migration" not in again.stderr
    assert db_command("version", "--url", url).stdout.strip() == str(CURRENT_VERSION)
    with engine.connect() as conn:
        versions = conn.execute(select(t.schema_version.c.version)).scalars().all()
    assert sorted(versions) == [n for n, _, _ in MIGRATIONS], "each step recorded once"
    engine.dispose()


def _as_version_2(engine: Engine) -> None:
    """Turn a current database back into what version 2 looked like (no frames.step)."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE frames DROP COLUMN step"))
        conn.execute(t.schema_version.delete().where(t.schema_version.c.version > 2))


def test_a_version_2_database_upgrades_and_keeps_its_frames(mysql_url: str) -> None:
    engine = make_engine(mysql_url)
    upgrade(engine)
    _as_version_2(engine)
    at = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    old_frame = {
        "device_id": "old1",
        "mode": "slow",
        "frame_number": 7,
        "opened_at": at,
        "complete": True,
        "coverage": 1.0,
        "received_mask": (1 << 24) - 1,
        "first_received_at": at,
        "last_received_at": at,
        "temp_min": 20.0,
        "temp_max": 30.0,
        "temp_mean": 25.0,
        "ambient": 21.0,
        "fan": False,
        "grid_rows": 24,
        "grid_cols": 32,
        "grid": b"\x00",
        "png": b"\x89PNG",
    }
    with engine.begin() as conn:
        assert current_version(conn) == 2
        conn.execute(insert(t.frames).values(old_frame))

    assert upgrade(engine) == CURRENT_VERSION
    assert "step" in {c["name"] for c in inspect(engine).get_columns("frames")}
    [record] = Store(engine).frames("old1", None, None, 10)
    assert record.frame_number == 7 and record.step_tenths is None
    assert frame_meta(record)["step"] == 0.1, "a slow frame is at the protocol's 0.1 °C"
    engine.dispose()


def _as_version_3(engine: Engine) -> None:
    """Turn a current database back into what version 3 looked like (alarms without severity,
    acknowledgement or the one-active key; devices without alarm rules and state)."""
    with engine.begin() as conn:
        if conn.dialect.name in ("mysql", "mariadb"):
            conn.execute(text("DROP INDEX uq_alarms_active ON alarms"))
            for column in ("severity", "active_kind", "acked_at", "acked_by", "note"):
                conn.execute(text(f"ALTER TABLE alarms DROP COLUMN {column}"))
        else:  # SQLite cannot drop a column of a unique constraint: the table as it was
            conn.execute(text("DROP TABLE alarms"))
            conn.execute(
                text(
                    "CREATE TABLE alarms (alarm_id INTEGER PRIMARY KEY AUTOINCREMENT, "
                    "device_id VARCHAR(64) NOT NULL, kind VARCHAR(32) NOT NULL, "
                    "active BOOLEAN NOT NULL, value FLOAT, limit_value FLOAT, "
                    "opened_at DATETIME NOT NULL, closed_at DATETIME, detail TEXT)"
                )
            )
        for column in ("alarm_rules", "alarm_state"):
            conn.execute(text(f"ALTER TABLE devices DROP COLUMN {column}"))
        conn.execute(t.schema_version.delete().where(t.schema_version.c.version > 3))


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_version_5_keeps_one_active_alarm_per_kind_and_the_database_enforces_it(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "mysql_url")
    engine = make_engine(url)
    upgrade(engine)
    _as_version_3(engine)
    at = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    old = {"device_id": "old1", "kind": "over_threshold", "active": True, "value": 60.0}
    with engine.begin() as conn:
        # What the first release could leave behind: the same kind active twice, and history.
        for minute in (0, 5):
            conn.execute(insert(t.alarms).values({**old, "opened_at": at.replace(minute=minute)}))
        conn.execute(
            insert(t.alarms).values({**old, "active": False, "opened_at": at, "closed_at": at})
        )
    assert upgrade(engine) == CURRENT_VERSION
    assert upgrade(engine) == CURRENT_VERSION  # again: nothing to do
    store = Store(engine)
    active = store.alarms(active=True)
    assert [(a.opened_at.minute, a.severity) for a in active] == [(5, "warning")]
    assert len(store.alarms()) == 3
    with pytest.raises(IntegrityError), store.transaction() as tx:
        tx.open_alarm("old1", "over_threshold", "critical", 70.0, 50.0, at.replace(minute=9))
    with store.transaction() as tx:  # another kind, or once the first cleared, is fine
        tx.open_alarm("old1", "non_uniform", "warning", 12.0, 10.0, at)
        tx.close_alarm(active[0], 40.0, at.replace(minute=10))
        tx.open_alarm("old1", "over_threshold", "warning", 55.0, 50.0, at.replace(minute=11))
    assert len(store.alarms(active=True)) == 2
    engine.dispose()


def test_a_step_numbered_below_one_already_applied_is_still_applied(sqlite_url: str) -> None:
    """Migration numbers were reserved per feature: a database that recorded a later step
    before an earlier one landed still gets the earlier one (frames.step here)."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    _as_version_2(engine)
    with engine.begin() as conn:
        conn.execute(insert(t.schema_version).values(version=10, applied_at=datetime.now(UTC)))
    assert upgrade(engine) == CURRENT_VERSION
    assert "step" in {c["name"] for c in inspect(engine).get_columns("frames")}
    with engine.connect() as conn:
        versions = conn.execute(select(t.schema_version.c.version)).scalars().all()
    assert sorted(versions) == [n for n, _, _ in MIGRATIONS]
    engine.dispose()
