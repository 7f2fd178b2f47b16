"""Schema migrations: `python -m db upgrade` creates or upgrades a database, idempotently, on
SQLite and on a real MariaDB, and an older database keeps its data."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, inspect, select, text

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
