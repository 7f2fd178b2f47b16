"""Schema migrations: one numbered step each, applied in order, recorded in schema_version.

`upgrade(engine)` creates a new database or brings an old one to the current schema; running it
again does nothing. Add a step by appending a function to MIGRATIONS; never edit a released one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, select

from db import schema

log = logging.getLogger(__name__)


def _v1_initial(conn: Connection) -> None:
    """Version 1: every table of db/schema.py as first released."""
    schema.metadata.create_all(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _v1_initial),
]
CURRENT_VERSION = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    """The schema version a database is at; 0 for an empty database."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    versions = conn.execute(select(schema.schema_version.c.version)).scalars().all()
    return max(versions, default=0)


def upgrade(engine: Engine) -> int:
    """Apply every missing migration; return the resulting version. Idempotent."""
    with engine.begin() as conn:
        schema.schema_version.create(conn, checkfirst=True)
        version = current_version(conn)
    for number, title, step in MIGRATIONS:
        if number <= version:
            continue
        with engine.begin() as conn:
            log.info("applying migration %d: %s", number, title)
            step(conn)
            conn.execute(
                schema.schema_version.insert().values(version=number, applied_at=datetime.now(UTC))
            )
        version = number
    return version
