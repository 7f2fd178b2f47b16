"""Does pruning slow ingest? The bridge's ingest rate with and without retention running.

    python bench/retention.py            # 20,000 frames past retention, 2 runs
    python bench/retention.py --quick    # 4,000 frames, 1 run, not recorded

Each run, on a fresh database of one throw-away MariaDB: history past `retention.frames_days`
(100 nodes, frames with a 1,536-byte grid and the PNG kept now, 1.2 KB, or with `--legacy` the
20.7 KB one of frames stored before this release, made by the server
with INSERT ... SELECT over the SEQUENCE engine), then in one process, as in `python -m bridge`:

1. without pruning: `Bridge.handle_messages` in batches of 50 (what the MQTT worker does under
   load) over 100 devices, timed;
2. with pruning: `db.retention.run` in a thread of the same process (what the daily schedule
   does: summaries, then frames deleted 100 rows per transaction, each followed by a pause nine
   times as long as it took) while the same ingest goes
   on; uplinks per second counted over the time the pruning ran;
3. without pruning again, once InnoDB has purged the deleted rows in the background (the machine
   may be busier or quieter than at first).

MariaDB runs with bench/storage.py's production-sized buffer pool (512M).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append_section, markdown_table, median  # noqa: E402
from bench.storage import BenchMariaDB  # noqa: E402
from db.retention import PAUSE_FACTOR  # noqa: E402
from tests.services import MariaDBServer  # noqa: E402

PNG_BYTES = 1_228  # the median stored heatmap PNG now (bridge/renderings.py, bench/storage.py)
LEGACY_PNG_BYTES = 20_700  # what frames stored before kept: 640 x 480 PNGs, off-page
NODES = 100

CHILD = r"""
import json, re, sys, threading, time
url, uplinks = sys.argv[1], int(sys.argv[2])
from sqlalchemy import text
from bench.stack import now_utc, stream
from bridge.service import Bridge
from db.migrations import upgrade
from db.retention import RetentionPolicy, run
from db.store import Store
from tests.bridge.harness import bridge_config

store = Store.from_url(url)
upgrade(store.engine)
bridge = Bridge(bridge_config("127.0.0.1", 1883, url), store, lambda *a: None)
bodies = [m.body for m in stream("b", 100, uplinks * 30 + 300, 1000.0, now_utc())]
for start in range(0, 300, 50):
    bridge.handle_messages(bodies[start : start + 50])
bodies = bodies[300:]

def ingest(batches, until=None):
    done, began = 0, time.perf_counter()
    while batches and (until is None or not until.is_set()):
        bridge.handle_messages(batches.pop(0))
        done += 50
    return done, time.perf_counter() - began

batches = [bodies[i : i + 50] for i in range(0, len(bodies), 50)]
alone, alone_s = ingest(batches[: uplinks // 50])
rest = batches[uplinks // 50 :]
after = rest[-(uplinks // 50) :]  # kept for the third phase
del rest[-(uplinks // 50) :]
finished = threading.Event()
report = {}

def prune():
    report["run"] = run(store.engine, RetentionPolicy())
    finished.set()

pruner = threading.Thread(target=prune)
pruner.start()
during, during_s = ingest(rest, finished)
ran_out = not finished.is_set()
pruner.join()

def history_length():
    with store.engine.connect() as conn:
        status = conn.execute(text("SHOW ENGINE INNODB STATUS")).one()[2]
    return int(re.search(r"History list length (\d+)", status).group(1))

purge_began = time.perf_counter()  # InnoDB purges the deleted rows' pages in the background
while history_length() > 100 and time.perf_counter() - purge_began < 600:
    time.sleep(1)
purge_s = time.perf_counter() - purge_began
again, again_s = ingest(after)
r = report["run"]
print(json.dumps({
    "alone": alone / alone_s,
    "during": during / during_s,
    "during_uplinks": during,
    "after": again / again_s,
    "purge_s": purge_s,
    "ran_out": ran_out,
    "prune_s": r.seconds,
    "frames_pruned": r.frames_pruned,
    "batches": r.batches,
    "hours": r.hours_summarised,
}))
"""


def load_old_frames(server: MariaDBServer, database: str, frames: int, png_bytes: int) -> None:
    """`frames` frames of NODES nodes, 100 to 120 days old (past the 90-day retention)."""
    per_node = frames // NODES
    at = f"NOW() - INTERVAL 120 DAY + INTERVAL s.seq * {20 * 86400 // per_node} SECOND"
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO frames (device_id, mode, frame_number, opened_at, complete, coverage, "
            "received_mask, first_received_at, last_received_at, temp_min, temp_max, "
            "temp_mean, ambient, fan, grid_rows, grid_cols, grid, png) "
            f"SELECT CONCAT('old-', d.seq), 'slow', s.seq % 64, {at}, 1, 1.0, 16777215, {at}, "
            f"{at}, 20.0, 30 + (s.seq % 9), 25.0, 23.0, 0, 24, 32, REPEAT('g', 1536), "
            f"REPEAT('p', {png_bytes}) FROM seq_0_to_{per_node - 1} s "
            f"JOIN seq_0_to_{NODES - 1} d"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=20_000, help="frames past retention")
    parser.add_argument("--uplinks", type=int, default=3000, help="timed uplinks without pruning")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--legacy",
        action="store_true",
        help=f"frames with {LEGACY_PNG_BYTES:,}-byte PNGs, as stored before (default "
        f"{PNG_BYTES:,}: as stored now)",
    )
    parser.add_argument("--quick", action="store_true", help="4,000 frames, 1 run, no record")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    if args.quick:
        args.frames, args.runs = 4000, 1

    server = BenchMariaDB().start()
    results = []
    try:
        for run in range(args.runs):
            database = f"bench_retention_{run}"
            url = server.fresh_database(database)
            subprocess.run(
                [sys.executable, "-m", "db", "upgrade", "--url", url], cwd=ROOT, check=True
            )
            load_old_frames(
                server, database, args.frames, LEGACY_PNG_BYTES if args.legacy else PNG_BYTES
            )
            print(f"run {run + 1}: {args.frames:,} old frames loaded; ingesting ...", flush=True)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, url, str(args.uplinks)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
                timeout=1800,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    finally:
        server.close()

    alone = median([r["alone"] for r in results])
    during = median([r["during"] for r in results])
    after = median([r["after"] for r in results])
    rows = [
        [
            "ingest alone",
            f"{alone:,.0f}",
            ", ".join(f"{r['alone']:,.0f}" for r in results),
            "—",
            "1.00×",
        ],
        [
            "ingest while pruning",
            f"{during:,.0f}",
            ", ".join(f"{r['during']:,.0f}" for r in results),
            ", ".join(
                f"{r['frames_pruned']:,} frames in {r['prune_s']:.0f} s ({r['batches']} batches), "
                f"purged {r['purge_s']:.0f} s later"
                for r in results
            ),
            f"{during / alone:.2f}×",
        ],
        [
            "ingest alone, after",
            f"{after:,.0f}",
            ", ".join(f"{r['after']:,.0f}" for r in results),
            "—",
            f"{after / alone:.2f}×",
        ],
    ]
    table = markdown_table(
        ["phase", "uplinks/s (median)", "runs", "pruned meanwhile", "vs alone"], rows
    )
    context = (
        f"One process as `python -m bridge` runs it: Bridge.handle_messages in batches of 50 over "
        f"100 devices (half slow, half fast) on MariaDB, {args.uplinks:,} uplinks timed alone before and "
        f"after, between them as many as go in while db.retention.run prunes {args.frames:,} "
        f"frames ({LEGACY_PNG_BYTES if args.legacy else PNG_BYTES:,}-byte PNG each"
        f"{', as stored before this release' if args.legacy else ''}) past 90 days in a thread "
        "of the same process (100 rows per transaction, each followed by a pause "
        f"{PAUSE_FACTOR:g}× its time); InnoDB buffer pool {BenchMariaDB.buffer_pool}. "
        f"{args.runs} runs, a fresh database each."
    )
    if any(r["ran_out"] for r in results):
        context += " Some run ran out of uplinks before the pruning ended (its rate is still "
        context += "one measured while pruning)."
    print(table)
    print()
    print(context)
    if not (args.quick or args.no_record):
        path = append_section(
            "Retention: ingest with and without pruning",
            " ".join(["python bench/retention.py", *sys.argv[1:]]),
            context + "\n\n" + table,
            latest=[
                (
                    "bridge ingest while pruning"
                    + (" legacy 20.7 KB-PNG frames" if args.legacy else "")
                    + " (vs alone)",
                    f"{during:,.0f} uplinks/s ({during / alone:.2f}×)",
                    f"alone {alone:,.0f}/s before, {after:,.0f}/s after",
                )
            ],
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
