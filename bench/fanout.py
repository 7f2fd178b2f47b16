"""Fan-out: 1,000 Socket.IO clients subscribed to one device, each receiving every frame.

    python bench/fanout.py                  # 1,000 clients, eventlet then threading, recorded
    python bench/fanout.py --clients 300    # fewer clients
    python bench/fanout.py --quick          # 200 clients, 3 frames, not recorded

The push server runs as operators run it, with the bridge inside: `gunicorn -k eventlet -w 1
--worker-connections N` (eventlet mode) and `gunicorn -k gthread -w 1 --threads N` (threading
mode), against a throw-away Mosquitto and MariaDB. Several client processes (python-socketio's
asyncio client over aiohttp, websocket transport only) open the connections and subscribe to
one device; then fast-mode frames of that device are published as TTN uplinks, a few seconds
apart. Delivery latency is the time from publishing the uplink that completes a frame to each
client's `frame` event (so it includes the bridge storing the frame, ~10 ms, see ingest).

Reported per mode: connections that subscribed, deliveries received of those expected, delivery
p50 / p99 / max, and the server's CPU (share of one core while frames are fanned out) and
resident memory (whole gunicorn process tree, before and after the clients connected).
The client processes share the 2 cores with the server: on this machine the clients' own
decoding is part of the latency, so the figures are an upper bound. Target: p99 < 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append_section, markdown_table, percentile, process_usage  # noqa: E402
from bench.stack import now_utc, scene  # noqa: E402
from bridge.ttn import format_time  # noqa: E402
from node_firmware.protocol import Mode, encode_fragment, fragment_frame  # noqa: E402
from tests.processes import Server, app_env, gunicorn_args  # noqa: E402
from tests.services import MariaDBServer, MosquittoServer, free_port  # noqa: E402
from tests.ttn_messages import topic, uplink  # noqa: E402

TARGET_P99_MS = 500
CONNECT_CONCURRENCY = 25


def client_process(port: int, count: int, device: str, ready: Any, results: Any, stop: Any) -> None:
    """One process of `count` asyncio Socket.IO clients; puts [(captured_at, t), ...] at the end."""
    asyncio.run(_clients(port, count, device, ready, results, stop))


async def _clients(port: int, count: int, device: str, ready: Any, results: Any, stop: Any) -> None:
    import socketio

    arrivals: list[tuple[str, float]] = []
    clients: list[Any] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failures = 0

    async def one() -> None:
        nonlocal failures
        client = socketio.AsyncClient(reconnection=False)

        @client.on("frame")
        async def _frame(data: dict[str, Any]) -> None:
            arrivals.append((data["captured_at"], time.monotonic()))

        async with gate:
            try:
                await client.connect(
                    f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=60
                )
                ack = await client.call("subscribe", {"devices": [device]}, timeout=60)
                if "error" in ack:
                    raise RuntimeError(ack)
                clients.append(client)
            except Exception:
                failures += 1

    await asyncio.gather(*(one() for _ in range(count)))
    ready.put((len(clients), failures))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, stop.wait)
    await asyncio.sleep(0.5)
    results.put(arrivals)
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


def fan_out(
    worker: str,
    mariadb: MariaDBServer,
    broker: MosquittoServer,
    db_url: str,
    clients: int,
    processes: int,
    frames: int,
    gap_s: float,
    workdir: Path,
) -> dict[str, Any]:
    """One server mode: connect the clients, publish frames, collect deliveries."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    port = free_port()
    device = f"fan-{worker}-{uuid.uuid4().hex[:4]}"
    server = Server(
        gunicorn_args(worker, port, connections=clients + 200),
        app_env(broker.host, broker.port, db_url),
        port,
        workdir / f"{worker}.log",
    )
    context = multiprocessing.get_context("spawn")
    ready, results, stop = context.Queue(), context.Queue(), context.Event()
    procs = []
    try:
        server.wait_ready()
        _cpu, rss_idle = process_usage(server.proc.pid)
        per = [
            clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
        ]
        began = time.monotonic()
        for count in per:
            p = context.Process(
                target=client_process, args=(port, count, device, ready, results, stop)
            )
            p.start()
            procs.append(p)
        connected = failed = 0
        for _ in procs:
            ok, bad = ready.get(timeout=600)
            connected, failed = connected + ok, failed + bad
        connect_s = time.monotonic() - began
        time.sleep(2)  # let the server settle after the connection storm
        _cpu, rss_connected = process_usage(server.proc.pid)

        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fan-{uuid.uuid4().hex}")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        sent: dict[str, float] = {}
        cpu_before = process_usage(server.proc.pid)[0]
        fan_began = time.monotonic()
        start = now_utc()
        f_cnt = 1
        for number in range(frames):
            fragments = fragment_frame(scene(number), Mode.FAST, number, fan=False, ambient=23)
            opened = start + timedelta(seconds=number * gap_s)
            for index, fragment in enumerate(fragments):
                at = opened + timedelta(milliseconds=index)
                body = uplink(device, f_cnt, encode_fragment(fragment), at)
                f_cnt += 1
                if index == len(fragments) - 1:
                    sent[format_time(opened)] = time.monotonic()
                pub.publish(topic(device), body, qos=1).wait_for_publish(30)
            time.sleep(gap_s)
        fan_s = time.monotonic() - fan_began
        cpu = process_usage(server.proc.pid)[0] - cpu_before
        _cpu, rss_after = process_usage(server.proc.pid)
        pub.loop_stop()
        pub.disconnect()
        stop.set()
        arrivals: list[tuple[str, float]] = []
        for _ in procs:
            arrivals += results.get(timeout=120)
    finally:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        server.stop()
    latencies = [(t - sent[key]) * 1000 for key, t in arrivals if key in sent]
    return {
        "connected": connected,
        "failed": failed,
        "connect_s": connect_s,
        "expected": connected * len(sent),
        "delivered": len(latencies),
        "p50": percentile(latencies, 50) if latencies else float("nan"),
        "p99": percentile(latencies, 99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
        "cpu": cpu / fan_s,
        "cpu_per_frame": cpu / max(1, len(sent)),
        "rss_idle": rss_idle,
        "rss_connected": rss_connected,
        "rss_after": rss_after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--frames", type=int, default=8, help="frames published (default 8)")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between frames")
    parser.add_argument(
        "--modes", default="eventlet,gthread", help="server modes (default eventlet,gthread)"
    )
    parser.add_argument("--quick", action="store_true", help="200 clients, 3 frames, not recorded")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.frames, args.processes = 200, 3, 2

    mariadb = MariaDBServer().start()
    broker = MosquittoServer().start()
    db_url = mariadb.fresh_database("bench_fanout")
    workdir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for worker in args.modes.split(","):
            print(f"{worker}: {args.clients} clients ...", flush=True)
            results[worker] = fan_out(
                worker,
                mariadb,
                broker,
                db_url,
                args.clients,
                args.processes,
                args.frames,
                args.gap,
                workdir,
            )
    finally:
        broker.close()
        mariadb.close()

    rows = []
    for worker, r in results.items():
        name = (
            f"eventlet (-k eventlet --worker-connections {args.clients + 200})"
            if worker == "eventlet"
            else f"threading (-k gthread --threads {min(args.clients + 200, 1200)})"
        )
        rows.append(
            [
                name,
                f"{r['connected']:,}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
                f"{r['connect_s']:.0f}",
                f"{r['delivered']:,} / {r['expected']:,}",
                f"{r['p50']:.0f}",
                f"{r['p99']:.0f}",
                f"{r['max']:.0f}",
                f"{100 * r['cpu']:.0f}% ({1000 * r['cpu_per_frame']:.0f} ms/frame)",
                f"{r['rss_idle'] / 2**20:.0f} → {r['rss_connected'] / 2**20:.0f}",
                f"{(r['rss_connected'] - r['rss_idle']) / max(1, r['connected']) / 1024:.0f}",
            ]
        )
    table = markdown_table(
        [
            "server mode",
            "clients",
            "connect s",
            "deliveries",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server CPU (per frame)",
            "RSS MiB idle → connected",
            "KiB per client",
        ],
        rows,
    )
    verdicts = []
    for worker, r in results.items():
        ok = r["p99"] < TARGET_P99_MS and r["delivered"] == r["expected"]
        verdicts.append(
            f"- {worker}: p99 {r['p99']:.0f} ms "
            + (
                f"meets the p99 < {TARGET_P99_MS} ms target"
                if ok
                else f"misses the p99 < {TARGET_P99_MS} ms target"
                + (
                    f" ({r['p99'] - TARGET_P99_MS:.0f} ms over)"
                    if r["p99"] >= TARGET_P99_MS
                    else " (deliveries missing)"
                )
            )
        )
    summary = (
        f"{args.clients} clients in {args.processes} processes (asyncio, websocket), one "
        f"device, {args.frames} fast frames {args.gap:g} s apart; each frame event carries its "
        "PNG. Server CPU is the share of one core over the fan-out period (frames and the gaps "
        "between them), and CPU time per frame (the bridge storing it plus the fan-out).\n\n"
        + "\n".join(verdicts)
    )
    print(table)
    print()
    print(summary)
    if not (args.quick or args.no_record):
        path = append_section(
            "Fan-out: one device's frames to many Socket.IO clients",
            " ".join(["python bench/fanout.py", *sys.argv[1:]]),
            table + "\n\n" + summary,
            latest=[
                (
                    f"{args.clients:,} clients, {worker}, p50 / p99",
                    f"{r['p50']:.0f} / {r['p99']:.0f} ms",
                    f"target p99 < {TARGET_P99_MS} ms",
                )
                for worker, r in results.items()
            ],
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
