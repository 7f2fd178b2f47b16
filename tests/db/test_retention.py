"""Retention on a real MariaDB with a year of synthetic history: hourly summaries kept before
frames are pruned, the uplink log and ambient readings pruned, `GET /api/devices/<id>/summaries`
across the pruned and the raw range, and pruning while the bridge ingests through Mosquitto."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.engine import make_url

from db import schema as t
from db.migrations import upgrade
from db.retention import HOUR, RetentionPolicy, device_summaries, floor_hour, run
from db.store import make_engine
from node_firmware.protocol import Mode, encode_fragment, fragment_frame
from tests.bridge.harness import BridgeHarness, Publisher, bridge_config
from tests.ttn_messages import APP_ID, TENANT, uplink
from tests.webapp.fixtures import make_app, make_config, scene

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 9, 40, tzinfo=UTC)
INTERVAL_S = 1800  # a frame every half hour per device
DEVICES = 2
POLICY = RetentionPolicy(frames_days=90, uplinks_days=30, summaries_days=3650)


def load_history(url: str, days: int, end: datetime = NOW) -> int:
    """`days` of frames, ambient readings and uplinks for DEVICES devices up to `end`, made
    by the server (MariaDB's SEQUENCE engine), one statement per table; returns frames."""
    per_device = days * 86400 // INTERVAL_S
    start = (end - timedelta(days=days)).replace(tzinfo=None).isoformat(sep=" ")
    at = f"TIMESTAMP'{start}' + INTERVAL s.seq * {INTERVAL_S} SECOND"
    rows = f"FROM seq_0_to_{per_device - 1} s JOIN seq_0_to_{DEVICES - 1} d"
    device = "CONCAT('hist-', d.seq)"
    u = make_url(url)
    with (
        pymysql.connect(
            host=u.host, port=u.port, user=u.username, database=u.database, autocommit=True
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(
            "INSERT INTO devices (device_id, created_at, online, uplinks, lost_uplinks, "
            f"invalid_uplinks) SELECT {device}, TIMESTAMP'{start}', 0, 0, 0, 0 "
            f"FROM seq_0_to_{DEVICES - 1} d"
        )
        cur.execute(
            "INSERT INTO frames (device_id, mode, frame_number, opened_at, complete, coverage, "
            "received_mask, first_received_at, last_received_at, temp_min, temp_max, "
            "temp_mean, ambient, fan, grid_rows, grid_cols, grid, png) "
            f"SELECT {device}, 'slow', s.seq % 64, {at}, 1, 1.0, 16777215, {at}, "
            f"{at} + INTERVAL 600 SECOND, 20.0, 28 + (s.seq % 17) * 0.5 + d.seq, 25.0, "
            f"IF(s.seq % 5 = 0, NULL, 20 + (s.seq % 7)), 0, 24, 32, 'g', 'p' {rows}"
        )
        cur.execute(
            f"INSERT INTO ambient (device_id, at, temperature) SELECT {device}, {at}, "
            f"20 + (s.seq % 7) {rows}"
        )
        cur.execute(
            "INSERT INTO uplinks (uplink_key, device_id, f_cnt, f_port, received_at, payload) "
            f"SELECT CONCAT({device}, '/', s.seq), {device}, s.seq, 1, {at}, 'x' {rows}"
        )
    return per_device * DEVICES


def expected_summaries(engine: Engine, before: datetime) -> dict[tuple[str, datetime], Any]:
    """Summaries of the frames before `before`, computed here from the rows themselves."""
    f = t.frames.c
    hours: dict[tuple[str, datetime], list[tuple[float, float | None]]] = defaultdict(list)
    with engine.connect() as conn:
        query = select(f.device_id, f.first_received_at, f.temp_max, f.ambient).where(
            f.first_received_at < before
        )
        for device_id, at, temp_max, ambient in conn.execute(query):
            hours[(device_id, floor_hour(at))].append((temp_max, ambient))
    out = {}
    for key, values in hours.items():
        temps = [v[0] for v in values]
        ambients = [v[1] for v in values if v[1] is not None]
        out[key] = (
            len(values),
            min(temps),
            max(temps),
            sum(temps) / len(temps),
            min(ambients, default=None),
            max(ambients, default=None),
            sum(ambients) / len(ambients) if ambients else None,
        )
    return out


def stored_summaries(engine: Engine) -> dict[tuple[str, datetime], Any]:
    s = t.frame_summaries.c
    with engine.connect() as conn:
        return {
            (r.device_id, r.hour): (
                r.frames,
                r.temp_max_min,
                r.temp_max_max,
                r.temp_max_mean,
                r.ambient_min,
                r.ambient_max,
                r.ambient_mean,
            )
            for r in conn.execute(select(t.frame_summaries).order_by(s.device_id, s.hour))
        }


def count(engine: Engine, table: Any, where: Any = None) -> int:
    query = select(func.count()).select_from(table)
    if where is not None:
        query = query.where(where)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def assert_same(found: dict[Any, Any], expected: dict[Any, Any]) -> None:
    assert found.keys() == expected.keys()
    for key, want in expected.items():
        for got, value in zip(found[key], want, strict=True):
            assert (got is None and value is None) or got == pytest.approx(value, rel=1e-6), key


def test_a_year_of_history_is_summarised_then_pruned_and_still_answers(mysql_url: str) -> None:
    engine = make_engine(mysql_url)
    upgrade(engine)
    began = time.perf_counter()
    frames = load_history(mysql_url, days=366)
    load_s = time.perf_counter() - began
    assert frames == 366 * 48 * DEVICES
    cutoff = floor_hour(NOW - timedelta(days=90))
    settled = floor_hour(NOW) - HOUR
    expected = expected_summaries(engine, settled)
    old_summary = {
        "device_id": "hist-0",
        "hour": NOW - timedelta(days=3651),
        "frames": 3,
        "temp_max_min": 30.0,
        "temp_max_max": 31.0,
        "temp_max_mean": 30.5,
    }
    with engine.begin() as conn:
        conn.execute(insert(t.frame_summaries).values(old_summary))

    report = run(engine, POLICY, NOW, pause_s=0)

    assert report.skipped is None
    kept = count(engine, t.frames)
    assert report.frames_pruned == frames - kept
    assert count(engine, t.frames, t.frames.c.first_received_at < cutoff) == 0
    # Everything from the cut-off on is still there: 90 days and the hours since.
    times = [NOW - timedelta(days=366, seconds=-k * INTERVAL_S) for k in range(366 * 48)]
    assert kept == DEVICES * sum(1 for at in times if at >= cutoff)
    assert count(engine, t.ambient, t.ambient.c.at < cutoff) == 0
    assert count(engine, t.ambient) == kept
    assert count(engine, t.uplinks, t.uplinks.c.received_at < NOW - timedelta(days=30)) == 0
    assert report.uplinks_pruned == frames - count(engine, t.uplinks)
    assert report.summaries_pruned == 1  # the 10-year-old one
    # One summary per device and settled hour, pruned or not, equal to the frames it replaced.
    assert_same(stored_summaries(engine), expected)
    assert report.batches > 100, "pruned in many small transactions"

    again = run(engine, POLICY, NOW, pause_s=0)
    assert (again.frames_pruned, again.uplinks_pruned, again.ambient_pruned) == (0, 0, 0)
    assert_same(stored_summaries(engine), expected)

    # The API: summaries across the pruned range and the raw frames, newer hours computed.
    for app in make_app(make_config(mysql_url)):
        http = app.test_client()
        since = cutoff - timedelta(days=2)
        answer = http.get(
            "/api/devices/hist-1/summaries",
            query_string={"since": since.isoformat(), "until": NOW.isoformat(), "limit": 10000},
        )
        assert answer.status_code == 200
        hours = answer.get_json()["summaries"]
        assert len(hours) == (floor_hour(NOW) - since) // HOUR + 1  # the current hour too
        first = hours[0]
        want = expected[("hist-1", since)]
        assert first["hour"].startswith(since.strftime("%Y-%m-%dT%H:00:00"))
        assert first["frames"] == want[0] == 2
        assert first["temp_max"]["max"] == round(want[2], 1)
        assert hours[-1]["frames"] == 1  # 09:30 of the current hour, computed from its frame
        assert http.get("/api/devices/nobody/summaries").status_code == 404
        assert http.get("/api/devices/hist-1/summaries?since=yesterday").status_code == 400
    print(f"history of {frames} frames loaded in {load_s:.1f} s; pruned in {report.seconds:.1f} s")
    engine.dispose()


def test_prune_command_prints_what_it_did(mysql_url: str) -> None:
    engine = make_engine(mysql_url)
    upgrade(engine)
    frames = load_history(mysql_url, days=100, end=datetime.now(UTC))
    engine.dispose()
    done = subprocess.run(
        [sys.executable, "-m", "db", "prune", "--url", mysql_url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pruned = int(done.stdout.split(" frames")[0].rsplit(" ", 1)[1])
    # 10 days (give or take the hour of the cut-off) of 48 frames for 2 devices.
    assert 10 * 96 - 4 <= pruned <= 10 * 96 + 4, done.stdout
    assert frames > pruned


def test_pruning_while_the_bridge_ingests_loses_nothing_valid(
    mqtt_broker: Any, mysql_url: str
) -> None:
    engine = make_engine(mysql_url)
    upgrade(engine)
    now = datetime.now(UTC)
    load_history(mysql_url, days=120, end=now)
    cutoff = floor_hour(now - timedelta(days=90))
    expected = expected_summaries(engine, cutoff)
    recent = count(engine, t.frames, t.frames.c.first_received_at >= cutoff)
    harness = BridgeHarness(bridge_config(mqtt_broker.host, mqtt_broker.port, mysql_url)).start()
    publisher = Publisher(mqtt_broker.host, mqtt_broker.port)
    done = threading.Event()
    reports = []

    def prune() -> None:
        reports.append(run(engine, POLICY, now, batch=20, pause_s=0.005))
        done.set()

    published = 0
    frames_sent = 0
    pruner = threading.Thread(target=prune)
    try:
        pruner.start()
        # Whole slow frames from 3 live devices for as long as the pruning runs (at least one).
        while not done.is_set() or frames_sent == 0:
            for node in range(3):
                device = f"live-{node}"
                received = datetime.now(UTC)
                fragments = fragment_frame(
                    scene(frames_sent, 40.0 + node),
                    Mode.SLOW,
                    frames_sent % 64,
                    fan=False,
                    ambient=22,
                )
                for i, fragment in enumerate(fragments):
                    body = uplink(
                        device,
                        frames_sent * 24 + i,
                        encode_fragment(fragment),
                        received + timedelta(milliseconds=i),
                    )
                    publisher.publish(f"v3/{APP_ID}@{TENANT}/devices/{device}/up", body)
                    published += 1
            frames_sent += 1
        pruner.join(120)
        harness.wait_handled(published, timeout=120)
    finally:
        publisher.close()
        harness.stop()
    report = reports[0]
    assert report.frames_pruned > 0 and report.batches > 10
    # Every uplink published during the pruning is one row, every frame complete and stored.
    live = t.uplinks.c.device_id.like("live-%")
    assert count(engine, t.uplinks, live) == published
    f = t.frames.c
    assert count(engine, t.frames, f.device_id.like("live-%") & f.complete.is_(True)) == (
        3 * frames_sent
    )
    assert count(engine, t.frames, f.device_id.like("live-%") & f.complete.is_(False)) == 0
    # Nothing of the history within retention lost, nothing past it left, every pruned hour
    # summarised as its frames were.
    assert count(
        engine, t.frames, f.device_id.like("hist-%") & (f.first_received_at >= cutoff)
    ) == (recent)
    assert count(engine, t.frames, f.first_received_at < cutoff) == 0
    found = stored_summaries(engine)
    assert_same({k: v for k, v in found.items() if k[1] < cutoff}, expected)
    summaries = device_summaries(engine, "live-0", None, None, 100)
    assert sum(s.frames for s in summaries) == frames_sent
    engine.dispose()
