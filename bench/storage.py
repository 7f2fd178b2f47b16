"""Storage growth and the dashboard's queries over a year of history for 100 nodes.

    python bench/storage.py             # 100 nodes × 365 days at one slow frame per 12 min
    python bench/storage.py --days 30   # less history
    python bench/storage.py --quick     # 10 nodes × 30 days, not recorded

Frame rate: a node sends one uplink every 30 s (the simulator's "real node" interval, README);
in slow mode a frame is 24 uplinks, so one frame every 12 minutes, 120 frames per node per day:
4.38 million frames for 100 nodes in a year. (TTN's public fair-use policy, 30 s of airtime a day,
allows far fewer; a private network or a Pub/Sub-fed broker has no such limit.)

Two measurements, each in a throw-away MariaDB with the project's schema (`db.migrations`):

1. bytes per row: a sample of real frames (reassembled grid packed by
   `db.gridpack.pack_grid`, the small heatmap PNG the bridge keeps, `bridge.renderings.stored_png`
   (the 640 × 480 one is rendered when pushed or asked for), every
   metadata column; the synthetic battery-rack frames of bench/render.py) inserted through `Tx.upsert_frame`, the same as the bridge stores them; the
   growth of `frames.ibd` over the sample gives bytes per frame, and the uplink log
   (`Tx.record_uplink`) and ambient readings (`Tx.add_ambient`) are sampled the same way;
2. query time: the year of history is generated with bulk INSERT ... SELECT statements over
   MariaDB's SEQUENCE engine (the server makes the rows), metadata columns only, grid and PNG
   left empty (a year of PNGs would be ~70 GB; the queries timed never
   read them, and (1) measures their bytes). Then `Store.latest_frames()` (the dashboard and
   `/api/devices`), `Store.latest_frames([one])`, and `Store.frames(device, since, until)` for
   one day (`/api/devices/<id>/frames`) are timed: median and p95 of warm runs.

Target: both queries under 10 ms with a year of history.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append_section, markdown_table, median, percentile  # noqa: E402
from bench.render import battery_rack_frame  # noqa: E402
from bridge import renderings  # noqa: E402
from bridge.config import Config  # noqa: E402
from bridge.reassembly import Reassembler  # noqa: E402
from db.gridpack import pack_grid  # noqa: E402
from db.migrations import upgrade  # noqa: E402
from db.store import Store  # noqa: E402
from imaging.heatmap import grid_stats  # noqa: E402
from node_firmware.protocol import Mode, fragment_frame  # noqa: E402
from tests.services import MariaDBServer  # noqa: E402

FRAME_INTERVAL_S = 12 * 60  # 24 uplinks × 30 s
UPLINKS_PER_DAY = 24 * 3600 // 30
AMBIENT_PER_DAY = 24 * 60  # the bridge stores an unchanged reading at most once a minute
TARGET_MS = 10.0
# A frame row before bridge/renderings.py kept the small heatmap (2026-11-24, bench/HISTORY.md).
BEFORE_FRAME_BYTES = 36_340
END = datetime(2026, 11, 1, tzinfo=UTC)


class BenchMariaDB(MariaDBServer):
    """The suite's throw-away MariaDB with a production-sized buffer pool for the year's data."""

    buffer_pool = "512M"

    def _command(self) -> list[str]:
        return [
            "--innodb-buffer-pool-size=" + self.buffer_pool
            if arg.startswith("--innodb-buffer-pool-size")
            else arg
            for arg in super()._command()
        ]


def ibd_bytes(server: MariaDBServer, database: str, table: str) -> int:
    """The size of a table's InnoDB file (file-per-table), what the table takes on disk."""
    return (server.datadir / database / f"{table}.ibd").stat().st_size


def allocated_bytes(server: MariaDBServer, database: str, table: str) -> int:
    """Pages allocated to a table's indexes (clustered index with its off-page BLOB pages, and
    every secondary index) × 16 KiB, from InnoDB's persistent statistics after ANALYZE TABLE:
    page-exact, unlike the .ibd file, which grows by whole extents."""
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute(f"ANALYZE TABLE {table}")
        cur.fetchall()
        cur.execute(
            "SELECT SUM(stat_value) FROM mysql.innodb_index_stats "
            "WHERE database_name = %s AND table_name = %s AND stat_name = 'size'",
            (database, table),
        )
        (pages,) = cur.fetchone()
    return int(pages or 0) * 16384


def real_frames(count: int, start: datetime) -> list[dict[str, Any]]:
    """Frame rows as the bridge writes them: reassembled slow frames with grid and PNG."""
    rows = []
    for i in range(count):
        device_id = f"node-{i % 100:03d}"
        at = start + timedelta(seconds=FRAME_INTERVAL_S * (i // 100))
        reassembler = Reassembler()
        frame = None
        fragments = fragment_frame(battery_rack_frame(i), Mode.SLOW, i % 64, fan=False, ambient=23)
        for index, fragment in enumerate(fragments):
            for event in reassembler.receive(
                device_id, fragment, at + timedelta(seconds=30 * index)
            ):
                frame = getattr(event, "frame", frame)
        assert frame is not None
        stats = grid_stats(frame.grid)
        assert stats is not None
        rows.append(
            {
                "device_id": device_id,
                "mode": "slow",
                "frame_number": frame.frame_number,
                "opened_at": frame.opened_at,
                "complete": True,
                "coverage": 1.0,
                "received_mask": (1 << 24) - 1,
                "first_received_at": frame.first_received_at,
                "last_received_at": frame.last_received_at,
                "temp_min": stats[0],
                "temp_max": stats[1],
                "temp_mean": stats[2],
                "ambient": 23.0,
                "fan": False,
                "grid_rows": 24,
                "grid_cols": 32,
                "grid": pack_grid(frame.grid),
                "png": renderings.stored_png(Config(), frame.grid),  # what the bridge keeps
            }
        )
    return rows


def bytes_per_row(server: MariaDBServer, frames: int) -> dict[str, float]:
    """On-disk bytes per frame, per uplink log entry and per ambient reading."""
    database = "bench_bytes"
    store = Store.from_url(server.fresh_database(database))
    upgrade(store.engine)
    start = END - timedelta(days=1)
    sample = real_frames(frames, start)
    before = {t: allocated_bytes(server, database, t) for t in ("frames", "uplinks", "ambient")}
    for chunk in range(0, len(sample), 200):
        with store.transaction() as tx:
            for values in sample[chunk : chunk + 200]:
                tx.upsert_frame(values)
    uplinks = frames * 24
    payload = bytes(51)
    with store.transaction() as tx:
        for i in range(uplinks):
            device_id = f"node-{i % 100:03d}"
            at = start + timedelta(seconds=30 * (i // 100), microseconds=i % 100)
            tx.record_uplink(
                {
                    "uplink_key": f"{device_id}:{i}:{at.isoformat()}",
                    "device_id": device_id,
                    "f_cnt": i,
                    "f_port": 1,
                    "received_at": at,
                    "rssi": -97.0,
                    "snr": 7.5,
                    "gateway_id": "gw-roof",
                    "data_rate": "SF7BW125",
                    "payload": payload,
                    "error": None,
                }
            )
            tx.add_ambient(device_id, at, 23.0)
    store.engine.dispose()
    after = {t: allocated_bytes(server, database, t) for t in before}
    png = median([float(len(r["png"])) for r in sample])
    grid = median([float(len(r["grid"])) for r in sample])
    return {
        "frame": (after["frames"] - before["frames"]) / frames,
        "uplink": (after["uplinks"] - before["uplinks"]) / uplinks,
        "ambient": (after["ambient"] - before["ambient"]) / uplinks,
        "png": png,
        "grid": grid,
        "sample": frames,
    }


def load_history(server: MariaDBServer, database: str, nodes: int, days: int) -> tuple[int, float]:
    """`days` of frame metadata for `nodes` nodes in time order; (rows, seconds).

    Bulk multi-row INSERT ... SELECT over MariaDB's SEQUENCE engine (seq_0_to_N tables), one
    statement per 10 days of history, so the rows are made by the server, not by Python."""
    columns = (
        "device_id, mode, frame_number, opened_at, complete, coverage, received_mask, "
        "first_received_at, last_received_at, temp_min, temp_max, temp_mean, ambient, fan, "
        "grid_rows, grid_cols, grid, png"
    )
    per_node = days * 86400 // FRAME_INTERVAL_S
    per_chunk = 10 * 86400 // FRAME_INTERVAL_S
    start = (END - timedelta(days=days)).replace(tzinfo=None).isoformat(sep=" ")
    at = f"TIMESTAMP'{start}' + INTERVAL s.seq * {FRAME_INTERVAL_S} SECOND + INTERVAL d.seq MICROSECOND"
    began = time.perf_counter()
    with server.connect(database) as conn, conn.cursor() as cur:
        for first in range(0, per_node, per_chunk):
            last = min(per_node, first + per_chunk) - 1
            cur.execute(
                f"INSERT INTO frames ({columns}) "
                f"SELECT CONCAT('node-', LPAD(d.seq, 3, '0')), 'slow', s.seq % 64, {at}, 1, 1.0, "
                f"16777215, {at}, {at} + INTERVAL 690 SECOND, 22.0, ROUND(28 + RAND(s.seq) * 6, 1), "
                "25.0, 23.0, 0, 24, 32, '', '' "
                f"FROM seq_{first}_to_{last} s JOIN seq_0_to_{nodes - 1} d ORDER BY s.seq, d.seq"
            )
        cur.execute("ANALYZE TABLE frames")
        cur.fetchall()
        cur.execute("SELECT COUNT(*) FROM frames")
        (rows,) = cur.fetchone()
    return int(rows), time.perf_counter() - began


def time_query(function: Any, runs: int) -> tuple[float, float, int]:
    """(median ms, p95 ms, rows) of warm runs of a query."""
    result = function()
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        result = function()
        samples.append((time.perf_counter() - began) * 1000)
    return median(samples), percentile(samples, 95), len(result)


def explain(server: MariaDBServer, database: str, store: Store, query: Any) -> str:
    """MariaDB's plan of a SQLAlchemy statement: the access type and key of each table."""
    sql = str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN " + sql)
        names = [d[0] for d in cur.description]
        plans = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return "; ".join(
        f"{p['table']}: {p['type']} {p['key'] or ''} {p['Extra'] or ''}".strip() for p in plans
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sample", type=int, default=1000, help="real frames for the bytes")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query")
    parser.add_argument("--quick", action="store_true", help="10 nodes × 30 days, not recorded")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.days, args.sample, args.runs = 10, 30, 200, 10

    server = BenchMariaDB().start()
    try:
        print(f"bytes per row from {args.sample} real frames ...", flush=True)
        sizes = bytes_per_row(server, args.sample)
        database = "bench_history"
        store = Store.from_url(server.fresh_database(database))
        upgrade(store.engine)
        print(f"loading {args.nodes} nodes × {args.days} days of frames ...", flush=True)
        rows, load_s = load_history(server, database, args.nodes, args.days)
        device = f"node-{args.nodes // 2:03d}"
        day_start = END - timedelta(days=args.days // 2)
        queries = {
            "latest frame per device (all)": lambda: store.latest_frames(),
            "latest frame of one device": lambda: store.latest_frames([device]),
            "frames of one device in a day": lambda: store.frames(
                device, day_start, day_start + timedelta(days=1), limit=1000
            ),
        }
        timings = {name: time_query(q, args.runs) for name, q in queries.items()}
        plans = _plans(server, database, store, device, day_start)
        store.engine.dispose()
        disk = ibd_bytes(server, database, "frames")
    finally:
        server.close()

    per_day = 86400 // FRAME_INTERVAL_S
    node_day = {
        "frames (grid + PNG + metadata)": sizes["frame"] * per_day,
        "uplink log (30-day retention)": sizes["uplink"] * UPLINKS_PER_DAY,
        "ambient readings (≤ 1/min)": sizes["ambient"] * AMBIENT_PER_DAY,
    }
    growth = markdown_table(
        ["what", "bytes per row", "rows per node per day", "KiB per node per day"],
        [
            [
                "frame (grid + PNG + metadata)",
                f"{sizes['frame']:,.0f}",
                str(per_day),
                f"{node_day['frames (grid + PNG + metadata)'] / 1024:,.0f}",
            ],
            [
                "uplink log entry",
                f"{sizes['uplink']:,.0f}",
                f"{UPLINKS_PER_DAY:,}",
                f"{node_day['uplink log (30-day retention)'] / 1024:,.0f}",
            ],
            [
                "ambient reading",
                f"{sizes['ambient']:,.0f}",
                f"{AMBIENT_PER_DAY:,}",
                f"{node_day['ambient readings (≤ 1/min)'] / 1024:,.0f}",
            ],
        ],
    )
    kept = node_day["frames (grid + PNG + metadata)"] + node_day["ambient readings (≤ 1/min)"]
    year_gib = kept * 365 * 100 / 2**30
    query_rows = []
    for name, (p50, p95, count) in timings.items():
        query_rows.append(
            [name, str(count), f"{p50:.2f}", f"{p95:.2f}", "yes" if p95 < TARGET_MS else "NO"]
        )
    queries_table = markdown_table(
        ["query (db/store.py)", "rows", "median ms", "p95 ms", f"p95 < {TARGET_MS:.0f} ms"],
        query_rows,
    )
    body = "\n\n".join(
        [
            f"Frame rate: one slow frame per node every {FRAME_INTERVAL_S // 60} min "
            f"({per_day} a day; one uplink every 30 s).",
            f"Bytes per row (InnoDB pages allocated over {sizes['sample']:,} real frames, "
            f"{sizes['sample'] * 24:,} uplinks and readings; "
            f"PNG median {sizes['png']:,.0f} B, packed grid {sizes['grid']:,.0f} B):",
            growth,
            f"Per node per day: {sum(node_day.values()) / 2**20:.1f} MiB; 100 nodes for a year "
            f"(frames and ambient; the uplink log is pruned after 30 days): {year_gib:,.0f} GiB.",
            f"Query times with {rows:,} frames ({args.nodes} nodes × {args.days} days, metadata "
            f"only; frames.ibd {disk / 2**30:.2f} GiB; loaded in {load_s:.0f} s by INSERT … "
            f"SELECT over MariaDB's SEQUENCE engine; InnoDB buffer pool "
            f"{BenchMariaDB.buffer_pool}), warm, "
            f"{args.runs} runs each:",
            queries_table,
            "Plans (EXPLAIN): " + plans,
        ]
    )
    print(body)
    if not (args.quick or args.no_record):
        path = append_section(
            "Storage: bytes per frame and query times over a year",
            " ".join(["python bench/storage.py", *sys.argv[1:]]),
            body,
            latest=[
                (
                    "InnoDB bytes per frame row",
                    f"{sizes['frame']:,.0f} B",
                    f"{BEFORE_FRAME_BYTES:,} B with the 640 × 480 PNG stored "
                    f"({BEFORE_FRAME_BYTES / sizes['frame']:.1f}× more); uplink log "
                    f"{sizes['uplink']:,.0f} B, ambient {sizes['ambient']:,.0f} B per row",
                ),
                (
                    "latest frame per device / one device's day, "
                    f"{rows / 1e6:.2f} M frames, median",
                    " / ".join(
                        f"{timings[name][0]:.2f}"
                        for name in timings
                        if name != "latest frame of one device"
                    )
                    + " ms",
                    f"target p95 < {TARGET_MS:.0f} ms",
                ),
            ],
        )
        print(f"appended to {path}")
    return 0


def _plans(server: MariaDBServer, database: str, store: Store, device: str, day: datetime) -> str:
    """EXPLAIN of the two queries, built by the functions db/store.py builds them with."""
    from db.store import device_frames_query, latest_frames_query

    latest = latest_frames_query()
    day_query = device_frames_query(device, day, day + timedelta(days=1), 1000)
    return (
        f"latest per device → {explain(server, database, store, latest)}; "
        f"one day → {explain(server, database, store, day_query)}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
