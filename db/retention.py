"""Retention (DESIGN.md "Operations"): hourly summaries per device, kept before frames are pruned.

`run(engine, policy, now)` does, in this order:

1. summarises every settled hour (ended over an hour ago) not summarised yet, and the last
   summarised hour again (a late frame may have joined it), into `frame_summaries`;
2. for each day older than `frames_days` (cut-off on an hour boundary, oldest first): summarises
   that day's hours once more from its frames, then deletes those frames, in batches;
3. deletes ambient readings older than `frames_days`, the uplink log past `uplinks_days` and
   summaries past `summaries_days`, in batches.

Every batch is its own short transaction that deletes rows by primary key (row locks on those
rows only), followed by a pause nine times as long as the batch took, so the bridge keeps
ingesting while it runs (BENCHMARKS.md, "Retention"). A summary row is written from the frames of its hour only and
replaces the row of the same device and hour: hours whose frames are gone keep their summary.
A frame older than `frames_days` cannot arrive late (The Things Stack keeps uplinks for backfill
30 days at most), so a pruned hour is never summarised again from a part of its frames.

`RetentionSchedule` runs it once a day in a thread of its own (the bridge's tick starts it);
`python -m db prune` runs it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text, tuple_

from db import schema as t

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DELETE_BATCH_ROWS = 100  # frames rows with their PNG: ~3.6 MB of pages a batch
PAUSE_S = 0.02  # at least this long between batches
# ... and at least this many times the batch's own time: pruning takes at most a tenth of the
# database's time, so ingest on a small server goes on (BENCHMARKS.md, "Retention"; with 4 the
# bridge lost a quarter of its rate on a busy 2-core machine).
PAUSE_FACTOR = 9.0
RETENTION_LOCK = "thermal_retention"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How many days each kind of row is kept (conf.json `retention`)."""

    frames_days: int = 90
    uplinks_days: int = 30
    summaries_days: int = 3650


@dataclass(frozen=True, slots=True)
class Summary:
    """One device's frames of one hour: count, min / max / mean of temp_max and of ambient."""

    device_id: str
    hour: datetime
    frames: int
    temp_max_min: float | None
    temp_max_max: float | None
    temp_max_mean: float | None
    ambient_min: float | None
    ambient_max: float | None
    ambient_mean: float | None


@dataclass
class RetentionReport:
    """What one run did."""

    hours_summarised: int = 0
    frames_pruned: int = 0
    ambient_pruned: int = 0
    uplinks_pruned: int = 0
    summaries_pruned: int = 0
    seconds: float = 0.0
    skipped: str | None = None  # why nothing was done (another run holds the lock)
    batches: int = field(default=0, repr=False)


def floor_hour(at: datetime) -> datetime:
    """The start of the hour `at` is in."""
    return at.replace(minute=0, second=0, microsecond=0)


def _hour_of(conn: Connection, column: Any) -> Any:
    """SQL for the start of the hour of a datetime column, as 'YYYY-MM-DD HH:00:00'."""
    if conn.dialect.name in ("mysql", "mariadb"):
        return func.date_format(column, "%Y-%m-%d %H:00:00")
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def hourly_aggregates(
    conn: Connection, since: datetime, until: datetime, device_id: str | None = None
) -> list[Summary]:
    """The summaries of the frames with first_received_at in [since, until), computed now."""
    f = t.frames.c
    hour = _hour_of(conn, f.first_received_at)
    query = (
        select(
            f.device_id,
            hour,
            func.count(),
            func.min(f.temp_max),
            func.max(f.temp_max),
            func.avg(f.temp_max),
            func.min(f.ambient),
            func.max(f.ambient),
            func.avg(f.ambient),
        )
        .where(f.first_received_at >= since, f.first_received_at < until)
        .group_by(f.device_id, hour)
    )
    if device_id is not None:
        query = query.where(f.device_id == device_id)
    return [
        Summary(
            device_id=row[0],
            hour=_as_utc(row[1]),
            frames=int(row[2]),
            temp_max_min=_float(row[3]),
            temp_max_max=_float(row[4]),
            temp_max_mean=_float(row[5]),
            ambient_min=_float(row[6]),
            ambient_max=_float(row[7]),
            ambient_mean=_float(row[8]),
        )
        for row in conn.execute(query)
    ]


def summarise(engine: Engine, since: datetime, until: datetime) -> int:
    """Write the summaries of [since, until) from the frames, one transaction a day; returns
    how many (device, hour) rows were written."""
    written = 0
    start = floor_hour(since)
    while start < until:
        end = min(start + DAY, until)
        with engine.begin() as conn:
            rows = hourly_aggregates(conn, start, end)
            if rows:
                s = t.frame_summaries.c
                keys = [(r.device_id, r.hour) for r in rows]
                conn.execute(delete(t.frame_summaries).where(tuple_(s.device_id, s.hour).in_(keys)))
                conn.execute(insert(t.frame_summaries), [_summary_values(r) for r in rows])
        written += len(rows)
        start = end
    return written


def _summary_values(summary: Summary) -> dict[str, Any]:
    return {name: getattr(summary, name) for name in Summary.__slots__}


def device_summaries(
    engine: Engine,
    device_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    now: datetime | None = None,
) -> list[Summary]:
    """A device's hourly summaries in [since, until), oldest first: the stored ones, and for
    the hours after the last stored one, computed from its frames at once."""
    now = now or datetime.now(UTC)
    until = until or now + HOUR
    s = t.frame_summaries.c
    with engine.connect() as conn:
        query = select(t.frame_summaries).where(s.device_id == device_id, s.hour < until)
        if since is not None:
            query = query.where(s.hour >= floor_hour(since))
        stored = [
            Summary(**row._mapping) for row in conn.execute(query.order_by(s.hour).limit(limit))
        ]
        last = conn.execute(select(func.max(s.hour)).where(s.device_id == device_id)).scalar()
        fresh_since = floor_hour(since) if since is not None else None
        if last is not None:
            after_last = _as_utc(last) + HOUR
            fresh_since = after_last if fresh_since is None else max(fresh_since, after_last)
        if fresh_since is None:  # nothing stored yet: from the device's first frame
            f = t.frames.c
            first = conn.execute(
                select(func.min(f.first_received_at)).where(f.device_id == device_id)
            ).scalar()
            fresh_since = floor_hour(_as_utc(first)) if first is not None else until
        fresh = (
            hourly_aggregates(conn, fresh_since, until, device_id) if fresh_since < until else []
        )
    return sorted(stored + fresh, key=lambda r: r.hour)[:limit]


def _delete_batches(
    engine: Engine,
    table: Table,
    keys: Sequence[Any],
    where: Any,
    order: Any | None,
    batch: int,
    pause_s: float,
    report: RetentionReport,
) -> int:
    """Delete the rows matching `where`, `batch` at a time by key, each batch committed on its
    own; returns how many."""
    total = 0
    key = keys[0] if len(keys) == 1 else tuple_(*keys)
    while True:
        began = time.monotonic()
        with engine.begin() as conn:
            query = select(*keys).where(where).limit(batch)
            if order is not None:
                query = query.order_by(order)
            found = [row[0] if len(keys) == 1 else tuple(row) for row in conn.execute(query)]
            if not found:
                return total
            conn.execute(delete(table).where(key.in_(found)))
        total += len(found)
        report.batches += 1
        if len(found) < batch:
            return total
        time.sleep(max(pause_s, PAUSE_FACTOR * (time.monotonic() - began)) if pause_s else 0)


def run(
    engine: Engine,
    policy: RetentionPolicy,
    now: datetime | None = None,
    *,
    batch: int = DELETE_BATCH_ROWS,
    pause_s: float = PAUSE_S,
) -> RetentionReport:
    """Summarise, then prune what is past retention (module docstring). Two runs at once (two
    processes on one MySQL database) do not both work: the second returns at once, skipped."""
    now = now or datetime.now(UTC)
    report = RetentionReport()
    started = time.monotonic()
    if engine.dialect.name in ("mysql", "mariadb"):
        with engine.connect() as lock:
            got = lock.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": RETENTION_LOCK}).scalar()
            if got != 1:
                report.skipped = "another retention run holds the lock"
                return report
            try:
                _run(engine, policy, now, batch, pause_s, report)
            finally:
                lock.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": RETENTION_LOCK})
    else:
        with _LOCAL_LOCK:
            _run(engine, policy, now, batch, pause_s, report)
    report.seconds = time.monotonic() - started
    return report


_LOCAL_LOCK = threading.Lock()


def _run(
    engine: Engine,
    policy: RetentionPolicy,
    now: datetime,
    batch: int,
    pause_s: float,
    report: RetentionReport,
) -> None:
    f = t.frames.c
    s = t.frame_summaries.c
    frames_cutoff = floor_hour(now - timedelta(days=policy.frames_days))
    settled = floor_hour(now) - HOUR
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(f.first_received_at))).scalar()
        last = conn.execute(select(func.max(s.hour))).scalar()
    if oldest is not None:
        oldest_hour = floor_hour(_as_utc(oldest))
        # 1. Settled hours not summarised yet (and the last one again), from the cut-off on.
        start = max(oldest_hour, frames_cutoff, _as_utc(last) if last is not None else oldest_hour)
        if start < settled:
            report.hours_summarised += summarise(engine, start, settled)
        # 2. Days past retention: summarise each once more from its frames, then delete them.
        day = oldest_hour
        while day < frames_cutoff:
            end = min(day + DAY, frames_cutoff)
            report.hours_summarised += summarise(engine, day, end)
            report.frames_pruned += _delete_batches(
                engine,
                t.frames,
                [f.frame_id],
                f.first_received_at < end,
                f.first_received_at,
                batch,
                pause_s,
                report,
            )
            day = end
    # 3. Ambient readings with the frames (the summaries keep ambient), per device by its index.
    a = t.ambient.c
    with engine.connect() as conn:
        devices = conn.execute(select(t.devices.c.device_id)).scalars().all()
    for device_id in devices:
        report.ambient_pruned += _delete_batches(
            engine,
            t.ambient,
            [a.id],
            (a.device_id == device_id) & (a.at < frames_cutoff),
            None,
            batch * 5,
            pause_s,
            report,
        )
    u = t.uplinks.c
    report.uplinks_pruned = _delete_batches(
        engine,
        t.uplinks,
        [u.id],
        u.received_at < now - timedelta(days=policy.uplinks_days),
        u.received_at,
        batch * 5,
        pause_s,
        report,
    )
    report.summaries_pruned = _delete_batches(
        engine,
        t.frame_summaries,
        [s.device_id, s.hour],
        s.hour < now - timedelta(days=policy.summaries_days),
        s.hour,
        batch * 5,
        pause_s,
        report,
    )


class RetentionSchedule:
    """Runs `run` in a thread of its own: first `first_after_s` after start, then once a day
    (an hour after a failure). `run_if_due()` is what the bridge's tick calls."""

    def __init__(
        self,
        engine: Engine,
        policy: RetentionPolicy,
        first_after_s: float = 600.0,
        every_s: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.every_s = every_s
        self.clock = clock
        self.next_at = clock() + first_after_s
        self.last: RetentionReport | None = None
        self._thread: threading.Thread | None = None

    def run_if_due(self) -> None:
        """Start a run in the background if one is due and none is running."""
        if self.clock() < self.next_at or (self._thread and self._thread.is_alive()):
            return
        self.next_at = self.clock() + self.every_s
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            report = run(self.engine, self.policy)
        except Exception as exc:
            self.next_at = self.clock() + 3600.0
            log.warning("retention run failed (again in an hour): %s", type(exc).__name__)
            return
        self.last = report
        if report.skipped:
            log.info("retention run skipped: %s", report.skipped)
        else:
            log.info("retention: %s", report)
