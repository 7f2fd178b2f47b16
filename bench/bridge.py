"""The bridge alone against MariaDB: per uplink and in batches, this tree against a baseline tree.

    python bench/bridge.py                            # this tree only
    python bench/bridge.py --baseline-ref c34485d     # against the code of a commit
    python bench/bridge.py --baseline-dir /tmp/before # against a directory holding the repo
    python bench/bridge.py --quick                    # 1,000 uplinks, 1 run, not recorded

For hot-spot work on the bridge and the store: no MQTT, no Socket.IO, no gunicorn, only the
service and the database, so a change shows up undiluted. Each run is a fresh process importing
the bridge from one tree, on a fresh database of one throw-away MariaDB: 100 devices (half slow,
half fast mode) interleaved, 300 uplinks to warm up, then the timed uplinks. Runs of the two
trees alternate (baseline, this, baseline, this, ...) so a change in the machine's load touches
both alike. Besides uplinks per second it counts the MySQL commands (round trips) per uplink.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append_section, markdown_table, median  # noqa: E402
from tests.services import MariaDBServer  # noqa: E402

CHILD = r"""
import json, sys, time
tree, url, devices, uplinks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
batch = int(sys.argv[5])
sys.path.insert(0, tree)
import pymysql.connections as pc
from bench.stack import now_utc, stream
from bridge.service import Bridge
from db.migrations import upgrade
from db.store import Store
from tests.bridge.harness import bridge_config

commands = 0
original_command, original_ping = pc.Connection._execute_command, pc.Connection.ping

def counting_command(self, command, sql):
    global commands
    commands += 1
    return original_command(self, command, sql)

def counting_ping(self, reconnect=True):
    global commands
    commands += 1
    original_command_bak = pc.Connection._execute_command
    pc.Connection._execute_command = original_command  # the ping's own command, counted once
    try:
        return original_ping(self, reconnect)
    finally:
        pc.Connection._execute_command = original_command_bak

pc.Connection._execute_command = counting_command
pc.Connection.ping = counting_ping
store = Store.from_url(url)
upgrade(store.engine)
bridge = Bridge(bridge_config("127.0.0.1", 1883, url), store, lambda *a: None)
messages = stream("b", devices, uplinks + 300, 1000.0, now_utc())
for m in messages[:300]:
    bridge.handle_message(m.body)
commands = 0
began = time.perf_counter()
timed = [m.body for m in messages[300:]]
if batch > 1:  # what the MQTT adapter does with the messages already waiting
    for start in range(0, len(timed), batch):
        bridge.handle_messages(timed[start : start + batch])
else:
    for body in timed:
        bridge.handle_message(body)
elapsed = time.perf_counter() - began
print(json.dumps({"rate": uplinks / elapsed, "commands": commands / uplinks}))
"""


def one_run(
    tree: Path, server: MariaDBServer, name: str, devices: int, uplinks: int, batch: int
) -> dict:
    url = server.fresh_database(name)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), url, str(devices), str(uplinks), str(batch)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-ref", help="a git commit to compare with")
    parser.add_argument("--baseline-dir", help="a directory holding the baseline repository")
    parser.add_argument("--label", default="", help="what the baseline is, for the record")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--uplinks", type=int, default=3000, help="timed uplinks per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per tree (default 3)")
    parser.add_argument(
        "--batch",
        type=int,
        default=50,
        help="also time this tree with Bridge.handle_messages in batches of N (default 50; 1: off)",
    )
    parser.add_argument("--quick", action="store_true", help="1,000 uplinks, 1 run, no record")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    if args.quick:
        args.uplinks, args.runs = 1000, 1

    trees: dict[str, tuple[Path, int]] = {}
    if args.baseline_ref:
        exported = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
        archive = subprocess.run(
            ["git", "archive", args.baseline_ref], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(exported)], input=archive, check=True)
        trees[f"baseline ({args.baseline_ref})"] = (exported, 1)
    elif args.baseline_dir:
        trees[f"baseline ({args.baseline_dir})"] = (Path(args.baseline_dir), 1)
    trees["this tree, one by one"] = (ROOT, 1)
    if args.batch > 1:
        trees[f"this tree, batches of {args.batch}"] = (ROOT, args.batch)

    server = MariaDBServer().start()
    results: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        for run in range(args.runs):
            for index, (name, (tree, batch)) in enumerate(trees.items()):
                print(f"run {run + 1}: {name} ...", flush=True)
                database = f"bench_bridge_{run}_{index}"
                results[name].append(
                    one_run(tree, server, database, args.devices, args.uplinks, batch)
                )
    finally:
        server.close()

    first = median([r["rate"] for r in next(iter(results.values()))])
    rows = []
    for name, runs in results.items():
        rates = [r["rate"] for r in runs]
        rows.append(
            [
                name,
                f"{median(rates):,.0f}",
                f"{min(rates):,.0f}–{max(rates):,.0f}",
                f"{median([r['commands'] for r in runs]):.2f}",
                f"{median(rates) / first:.2f}×",
            ]
        )
    table = markdown_table(
        ["code", "uplinks/s (median)", "range", "MySQL round trips per uplink", "vs first"], rows
    )
    context = (
        "Bridge.handle_message (one transaction per uplink) or Bridge.handle_messages (one per "
        f"batch) in a fresh process per run, {args.devices} devices (half slow, "
        f"half fast), {args.uplinks:,} timed uplinks after 300 to warm up, {args.runs} "
        "alternating runs per tree, one throw-away MariaDB on loopback."
    )
    print(table)
    print()
    print(context)
    if not (args.quick or args.no_record):
        notes = {"baseline": args.label} if args.label else None
        path = append_section(
            "The bridge alone: one transaction per uplink or per batch, against MariaDB",
            " ".join(["python bench/bridge.py", *sys.argv[1:]]),
            context + "\n\n" + table,
            notes=notes,
            latest=[
                (
                    f"bridge alone, {name.removeprefix('this tree, ')}",
                    f"{median([r['rate'] for r in runs]):,.0f} uplinks/s, "
                    f"{median([r['commands'] for r in runs]):.2f} round trips each",
                    f"{next(iter(results))}: {first:,.0f}/s" if len(results) > 1 else "—",
                )
                for name, runs in results.items()
                if name.startswith("this tree")
            ],
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
