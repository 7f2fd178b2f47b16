"""Ingest end to end: TTN uplinks → Mosquitto → bridge → MariaDB → Socket.IO client.

    python bench/ingest.py                 # 100 devices; 300/s for 30 s; 12,000-uplink saturation
    python bench/ingest.py --quick         # shorter runs, not recorded
    python bench/ingest.py --worker gthread
    python bench/ingest.py --profile       # also py-spy the server during saturation

A publisher process speaks TTN v3 uplink JSON (the bodies of `tests/ttn_messages.py`, the topics
`v3/{app}@{tenant}/devices/{id}/up`) at QoS 1 into a throw-away Mosquitto; half the devices send
slow frames (24 fragments), half fast frames (2). The bridge runs as operators run it: inside the
push server under gunicorn (eventlet worker by default), with a throw-away MariaDB; a Socket.IO
client (websocket) is subscribed to every device ("*") and notes when each frame arrives.

Four measurements, in one run against the same broker and database server:

1. ceiling: a bare paho subscriber (QoS 1, the bridge's topic filter) drains the same kind of
   stream published as fast as the publisher can; that is what the broker and one paho client
   can carry, the upper bound for any bridge written with paho;
   then `Bridge.handle_messages` (batches of 50) called in the benchmark's own process on the
   same stream (the bridge and MariaDB without MQTT, Socket.IO or gunicorn): what the service
   itself costs;
2. latency at a fixed offered rate (default 300 uplinks/s), and at a third of it (a light
   load: the pipeline's own latency): uplink → client latency is the time from publishing the
   uplink that completes a frame to the `frame` event at the client;
3. saturation: a burst published as fast as possible; the sustained rate is uplinks stored
   (devices.uplinks, polled) over the time from the first publish to the last one stored.

Targets: ≥ 1,000 uplinks/s sustained, p99 < 100 ms at 300 uplinks/s.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    append_section,
    markdown_table,
    percentile,
    process_usage,
)
from bench.stack import FrameWatcher, now_utc, publish_in_process, stream  # noqa: E402
from tests.processes import Server, app_env, gunicorn_args  # noqa: E402
from tests.services import MariaDBServer, MosquittoServer, free_port  # noqa: E402
from tests.ttn_messages import APP_ID, TENANT  # noqa: E402

TARGET_RATE = 1000
TARGET_P99_MS = 100
STALL_S = 30.0


def ceiling(broker: MosquittoServer, devices: int, uplinks: int) -> dict[str, float]:
    """A bare paho subscriber draining a burst: messages/s from first to last received."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[float] = []
    ready = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex}")
    client.on_message = lambda *_a: got.append(time.monotonic())
    client.on_subscribe = lambda *_a: ready.set()
    client.connect(broker.host, broker.port)
    client.subscribe(f"v3/{APP_ID}@{TENANT}/devices/+/up", qos=1)
    client.loop_start()
    ready.wait(10)
    messages = stream("ceil", devices, uplinks, 1000.0, now_utc())
    process, results = publish_in_process(broker.host, broker.port, messages, None)
    report = results.get(timeout=300)
    process.join(10)
    deadline = time.monotonic() + 60
    while len(got) < len(messages) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return {
        "uplinks": len(got),
        "rate": len(got) / (got[-1] - report["started"]),
        "publish_rate": len(messages) / (report["acked"] - report["started"]),
    }


ALONE_BATCH = 50  # what the MQTT adapter hands the bridge at once when messages are waiting


def bridge_alone(mariadb: MariaDBServer, devices: int, uplinks: int) -> dict[str, float]:
    """`Bridge.handle_messages` called in this process on the same kind of stream, in batches
    of ALONE_BATCH: the bridge and MariaDB without MQTT, Socket.IO or gunicorn (what the
    service itself costs)."""
    from bridge.service import Bridge
    from db.migrations import upgrade
    from db.store import Store
    from tests.bridge.harness import bridge_config

    url = mariadb.fresh_database("bench_alone")
    store = Store.from_url(url)
    upgrade(store.engine)
    bridge = Bridge(bridge_config("127.0.0.1", 1883, url), store, lambda *_a: None)
    messages = stream("alone", devices, uplinks + 300, 1000.0, now_utc())
    for message in messages[:300]:  # warm-up: devices created, caches filled
        bridge.handle_message(message.body)
    warm_frames = bridge.metrics["frames_complete"]
    timed = [message.body for message in messages[300:]]
    began = time.perf_counter()
    for start in range(0, len(timed), ALONE_BATCH):
        bridge.handle_messages(timed[start : start + ALONE_BATCH])
    elapsed = time.perf_counter() - began
    store.engine.dispose()
    frames = bridge.metrics["frames_complete"] - warm_frames
    return {
        "uplinks": len(messages) - 300,
        "rate": (len(messages) - 300) / elapsed,
        "frames": frames,
    }


class Stored:
    """Polls how many uplinks of a prefix the bridge has stored (devices.uplinks)."""

    def __init__(self, mariadb: MariaDBServer, database: str) -> None:
        self.conn = mariadb.connect(database)

    def count(self, prefix: str) -> int:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT COALESCE(SUM(uplinks), 0) FROM devices WHERE device_id LIKE %s",
                (prefix + "-%",),
            )
            (value,) = cur.fetchone()
        return int(value)

    def close(self) -> None:
        self.conn.close()


def run(
    broker: MosquittoServer,
    server: Server,
    watcher: FrameWatcher,
    stored: Stored,
    mariadb: MariaDBServer,
    prefix: str,
    devices: int,
    uplinks: int,
    rate: float | None,
    profile_s: float | None = None,
) -> dict[str, Any]:
    """Publish one stream; wait until the bridge stored it and the client got its frames."""
    messages = stream(prefix, devices, uplinks, rate or 1000.0, now_utc())
    total = len(messages)
    worker = server.worker_pid
    cpu_before = process_usage(worker)[0]
    db_before = process_usage(mariadb.proc.pid)[0] if mariadb.proc else 0.0
    profiler = None
    if profile_s:
        profile_path = Path(tempfile.gettempdir()) / f"ingest-profile-{uuid.uuid4().hex[:6]}.txt"
        py_spy = str(Path(sys.executable).parent / "py-spy")
        options = ["--rate", "50", "--format", "raw", "--nonblocking", "-o", str(profile_path)]
        profiler = subprocess.Popen(
            [py_spy, "record", "--pid", str(worker), "--duration", str(int(profile_s)), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    process, results = publish_in_process(broker.host, broker.port, messages, rate)
    report: dict[str, Any] | None = None
    last, last_change = 0, time.monotonic()
    finished: float | None = None  # when everything was first seen stored
    while True:
        if report is None:
            with contextlib.suppress(queue.Empty):
                report = results.get(timeout=0.05)
        else:
            time.sleep(0.05)
        done = stored.count(prefix)
        if done != last:
            last, last_change = done, time.monotonic()
        if done >= total and finished is None:
            finished = time.monotonic()
        if finished is not None and report is not None:
            break  # the publisher's report comes after it closed its connection
        if time.monotonic() - last_change > STALL_S:
            raise RuntimeError(f"bridge stalled at {done}/{total} uplinks stored")
    process.join(10)
    assert report is not None and finished is not None
    sent: dict[tuple[str, str], float] = report["sent"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with watcher.lock:
            missing = [k for k in sent if k not in watcher.arrived]
        if not missing:
            break
        time.sleep(0.05)
    with watcher.lock:
        latencies = [
            (watcher.arrived[k] - t) * 1000 for k, t in sent.items() if k in watcher.arrived
        ]
        frames_in = sum(1 for k in sent if k in watcher.arrived)
    cpu, rss = process_usage(worker)
    db_cpu = (process_usage(mariadb.proc.pid)[0] if mariadb.proc else 0.0) - db_before
    elapsed = finished - report["started"]
    out: dict[str, Any] = {
        "uplinks": total,
        "offered": total / (report["published"] - report["started"]),
        "rate": total / elapsed,
        "frames": len(sent),
        "frames_in": frames_in,
        "frame_rate": frames_in / elapsed,
        "p50": percentile(latencies, 50) if latencies else float("nan"),
        "p99": percentile(latencies, 99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
        "elapsed": elapsed,
        "server_cpu": (cpu - cpu_before) / elapsed,
        "db_cpu": db_cpu / elapsed,
        "server_rss": rss,
    }
    if profiler is not None:
        profiler.wait(profile_s + 60)
        out["profile"] = summarise_profile(profile_path)
    return out


def summarise_profile(path: Path, top: int = 25) -> str:
    """py-spy's collapsed stacks -> a table of the functions with the most inclusive time."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = [f.split(" (", 1)[0] + " " + _where(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    rows = [
        [name, f"{100 * n / samples:.1f}", f"{100 * own[name] / samples:.1f}"]
        for name, n in inclusive.most_common(top)
    ]
    return f"{samples} samples of the server process while busy (py-spy, 50 Hz).\n\n" + (
        markdown_table(["function (file)", "inclusive %", "self %"], rows)
    )


def _where(frame: str) -> str:
    inside = frame.split(" (", 1)[1].rstrip(")") if " (" in frame else ""
    path = inside.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"({path})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100, help="devices (default 100)")
    parser.add_argument("--rate", type=float, default=300.0, help="offered rate (default 300/s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="fixed-rate run length")
    parser.add_argument("--burst", type=int, default=12000, help="saturation uplinks")
    parser.add_argument("--worker", choices=["eventlet", "gthread"], default="eventlet")
    parser.add_argument("--profile", action="store_true", help="py-spy the server (saturation)")
    parser.add_argument(
        "--inflight",
        type=int,
        default=1000,
        help="the broker's max_inflight_messages (default 1000; Mosquitto's own default is 20, "
        "which caps a QoS 1 batch at 20 messages: the bridge acknowledges after the commit)",
    )
    parser.add_argument("--quick", action="store_true", help="short runs, not recorded")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    parser.add_argument("--label", default="", help="a note for the recorded section")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.burst = 8.0, 3000

    mariadb = MariaDBServer().start()
    broker = MosquittoServer(max_inflight_messages=args.inflight).start()
    database = "bench_ingest"
    db_url = mariadb.fresh_database(database)
    server = None
    watcher = None
    stored = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        print("ceiling: bare paho subscriber ...", flush=True)
        top = ceiling(broker, args.devices, args.burst)
        print("the bridge alone, in process ...", flush=True)
        alone = bridge_alone(mariadb, args.devices, 1500 if args.quick else 3000)
        port = free_port()
        server = Server(
            gunicorn_args(args.worker, port),
            app_env(broker.host, broker.port, db_url),
            port,
            workdir / "server.log",
        )
        server.wait_ready()
        watcher = FrameWatcher(port, "*")
        stored = Stored(mariadb, database)
        print("warm-up ...", flush=True)
        run(broker, server, watcher, stored, mariadb, "warm", args.devices, 600, 300.0)
        fixed_n = int(args.rate * args.seconds)
        print(f"fixed rate: {fixed_n} uplinks at {args.rate:.0f}/s ...", flush=True)
        fixed = run(
            broker, server, watcher, stored, mariadb, "fixed", args.devices, fixed_n, args.rate
        )
        # Latency under a light load: what the pipeline itself takes, with no queue.
        light_rate = max(10.0, round(args.rate / 3, -1))
        light_n = int(light_rate * args.seconds / 2)
        print(f"light load: {light_n} uplinks at {light_rate:.0f}/s ...", flush=True)
        light = run(
            broker, server, watcher, stored, mariadb, "light", args.devices, light_n, light_rate
        )
        print(f"saturation: {args.burst} uplinks as fast as possible ...", flush=True)
        burst = run(
            broker,
            server,
            watcher,
            stored,
            mariadb,
            "burst",
            args.devices,
            args.burst,
            None,
            profile_s=8.0 if args.profile else None,
        )
    finally:
        if watcher is not None:
            watcher.close()
        if stored is not None:
            stored.close()
        if server is not None:
            server.stop()
        broker.close()
        mariadb.close()

    rows = [
        [
            "bare paho subscriber (ceiling)",
            f"{top['uplinks']:,}",
            f"{top['publish_rate']:,.0f}",
            f"{top['rate']:,.0f}",
            "—",
            "—",
            "—",
            "—",
            "—",
        ],
        [
            f"Bridge.handle_messages in process, batches of {ALONE_BATCH} (no MQTT, no push)",
            f"{alone['uplinks']:,}",
            "—",
            f"{alone['rate']:,.0f}",
            f"{alone['frames'] / (alone['uplinks'] / alone['rate']):,.1f}",
            "—",
            "—",
            "—",
            "—",
        ],
    ]
    for name, r in (
        (f"bridge at {light_rate:.0f}/s offered (light load)", light),
        (f"bridge at {args.rate:.0f}/s offered", fixed),
        ("bridge saturated", burst),
    ):
        rows.append(
            [
                name,
                f"{r['uplinks']:,}",
                f"{r['offered']:,.0f}",
                f"{r['rate']:,.0f}",
                f"{r['frame_rate']:,.1f}",
                f"{r['p50']:,.0f}",
                f"{r['p99']:,.0f}",
                f"{100 * r['server_cpu']:.0f}% / {100 * r['db_cpu']:.0f}%",
                f"{r['server_rss'] / 2**20:.0f}",
            ]
        )
    table = markdown_table(
        [
            "run",
            "uplinks",
            "offered/s",
            "stored/s",
            "frames/s to client",
            "p50 ms",
            "p99 ms",
            "CPU server / MariaDB",
            "server RSS MiB",
        ],
        rows,
    )
    meets_rate = burst["rate"] >= TARGET_RATE
    meets_p99 = fixed["p99"] < TARGET_P99_MS and fixed["rate"] >= 0.97 * fixed["offered"]
    verdict = "\n".join(
        [
            f"- sustained: {burst['rate']:,.0f} uplinks/s, {burst['rate'] / top['rate']:.2f} of "
            f"the bare-paho ceiling ({top['rate']:,.0f}/s), "
            f"{burst['rate'] / alone['rate']:.2f} of the bridge alone ({alone['rate']:,.0f}/s); "
            + (
                f"meets the {TARGET_RATE:,}/s target"
                if meets_rate
                else f"misses the {TARGET_RATE:,}/s target by {TARGET_RATE - burst['rate']:,.0f}/s "
                f"({100 * (1 - burst['rate'] / TARGET_RATE):.0f}%)"
            ),
            f"- at {args.rate:.0f}/s offered: stored {fixed['rate']:,.0f}/s, uplink → client "
            f"p50 {fixed['p50']:.0f} ms, p99 {fixed['p99']:.0f} ms (max {fixed['max']:.0f}) over "
            f"{fixed['frames_in']:,} frames; "
            + (
                f"meets the p99 < {TARGET_P99_MS} ms target"
                if meets_p99
                else f"misses the p99 < {TARGET_P99_MS} ms target"
            ),
            f"- light load, at {light_rate:.0f}/s: uplink → client p50 {light['p50']:.0f} ms, "
            f"p99 {light['p99']:.0f} ms (max {light['max']:.0f}) over {light['frames_in']:,} "
            "frames: the pipeline's own latency when nothing queues",
            f"- saturated: frames reach the client at p50 {burst['p50']:,.0f} ms, p99 "
            f"{burst['p99']:,.0f} ms after publishing (the backlog queues in the broker)",
        ]
    )
    context = (
        f"{args.devices} devices (half slow, half fast), gunicorn -k {args.worker} -w 1 with "
        "the bridge in the worker, MariaDB and Mosquitto on loopback, publisher in its own "
        'process, one Socket.IO client on "*". CPU is the share of one core over the run.'
    )
    print(table)
    print()
    print(verdict)
    if "profile" in burst:
        print()
        print(burst["profile"])
    if not (args.quick or args.no_record):
        body = context + "\n\n" + table + "\n\n" + verdict
        if "profile" in burst:
            body += "\n\nWhere the server's time goes while saturated:\n\n" + burst["profile"]
        notes = {"note": args.label} if args.label else None
        path = append_section(
            "Ingest end to end: uplinks → bridge → MariaDB → Socket.IO",
            " ".join(["python bench/ingest.py", *sys.argv[1:]]),
            body,
            notes=notes,
            latest=[
                (
                    "uplinks stored and pushed, sustained",
                    f"{burst['rate']:,.0f}/s",
                    f"bare paho {top['rate']:,.0f}/s; bridge alone {alone['rate']:,.0f}/s; "
                    f"target {TARGET_RATE:,}/s",
                ),
                (
                    f"uplink → client at {args.rate:.0f}/s, p50 / p99",
                    f"{fixed['p50']:.0f} / {fixed['p99']:.0f} ms",
                    f"target p99 < {TARGET_P99_MS} ms",
                ),
                (
                    f"uplink → client at {light_rate:.0f}/s, p50 / p99",
                    f"{light['p50']:.0f} / {light['p99']:.0f} ms",
                    "—",
                ),
            ],
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
