"""`python -m bridge`: the bridge alone (pushes through the Socket.IO message queue), or
`python -m bridge decode --port P HEX [HEX ...]`: decode payloads and print each as JSON; given
several compressed fragments (docs/protocol.md), a last line assembles their frame."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from typing import Any

from node_firmware.protocol import (
    FRAME_PIXELS,
    Fragment,
    Mode,
    ProtocolError,
    decode_settings,
    decode_uplink,
    decompress_fragments,
)

# Fields only compressed fragments and settings have; slow and fast print as they always did.
COMPRESSED_ONLY = ("start", "step", "last", "rice_k")


def decode_command(port: int, hex_payload: str, *more: str) -> int:
    """Print each payload as JSON (and the frame of several compressed fragments); exit 2
    with a clear message when one is invalid."""
    fragments: list[Fragment] = []
    for text in (hex_payload, *more):
        try:
            payload = bytes.fromhex(text.replace(" ", "").replace(":", ""))
        except ValueError:
            print(f"error: {text!r} is not hexadecimal", file=sys.stderr)
            return 2
        try:
            decoded: Any = decode_settings(payload) if port == 10 else decode_uplink(port, payload)
        except ProtocolError as exc:
            print(f"error: invalid payload on FPort {port}: {exc}", file=sys.stderr)
            return 2
        data = asdict(decoded)
        data = {k: (Mode(v).label if isinstance(v, Mode) else v) for k, v in data.items()}
        if decoded.mode is not Mode.COMPRESSED:
            data = {k: v for k, v in data.items() if k not in COMPRESSED_ONLY}
        data = {"type": type(decoded).__name__, "f_port": port, **data}
        if "pixels" in data:
            data["pixels"] = list(data["pixels"])
        print(json.dumps(data))
        if isinstance(decoded, Fragment) and decoded.mode is Mode.COMPRESSED:
            fragments.append(decoded)
    if len(fragments) > 1:
        grid, covered = decompress_fragments(fragments)
        frame = {
            "type": "Frame",
            "mode": "compressed",
            "frame_numbers": sorted({f.frame_number for f in fragments}),
            "complete": len(covered) == FRAME_PIXELS,
            "coverage": len(covered) / FRAME_PIXELS,
            "grid": [list(row) for row in grid],
        }
        print(json.dumps(frame))
    return 0


def run_bridge(args: argparse.Namespace) -> int:
    """Run the bridge alone until SIGINT/SIGTERM."""
    from flask_socketio import SocketIO

    from bridge import backfill
    from bridge import config as config_mod
    from bridge.mqtt import MqttAdapter
    from bridge.service import Bridge
    from db.migrations import upgrade
    from db.store import StorageUnavailable, Store
    from webapp.runtime import Announcer

    try:
        config = config_mod.load(args.config, args.credentials)
    except config_mod.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("bridge")
    if not config.message_queue:
        log.warning("no message_queue configured: events are stored but not pushed live")
    store = Store.from_url(config.db_url())
    upgrade(store.engine)
    emitter = SocketIO(message_queue=config.message_queue) if config.message_queue else None

    def announce(event: str, payload: dict[str, Any], device_id: str) -> None:
        if emitter is not None:
            Announcer(emitter)(event, payload, device_id)

    bridge = Bridge(config, store, announce)
    try:
        bridge.backfiller = backfill.from_config(config, bridge.handle_message)
        adapter = MqttAdapter(
            config.mqtt,
            bridge.handle_message,
            on_connected=bridge.connected,
            handle_batch=bridge.handle_messages,
        )
    except config_mod.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    bridge.publish = adapter.publish
    metrics_server = None
    if config.metrics_port:
        from bridge import metrics
        from db.counts import tallies

        registry = metrics.registry_for(
            metrics.BridgeCollector(lambda: bridge, adapter.connected.is_set),
            metrics.StoreCollector(lambda: tallies(store.engine)),
        )
        try:
            metrics_server = metrics.serve(
                config, registry, config.metrics_host, config.metrics_port
            )
            log.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
        except OSError as exc:  # e.g. a second bridge on this host: ingest matters more
            log.error(
                "metrics not served: %s:%d: %s (set metrics.port)",
                config.metrics_host,
                config.metrics_port,
                exc.strerror or exc,
            )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    adapter.start()
    log.info(
        "bridge running for %s on %s:%d", config.mqtt.app_user, config.mqtt.host, config.mqtt.port
    )
    while not stop.wait(1.0):
        try:
            bridge.tick()
        except StorageUnavailable as exc:
            log.warning("tick skipped, database unavailable: %s", exc)
        except Exception:
            log.exception("tick failed")
    adapter.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bridge`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "decode":
        parser = argparse.ArgumentParser(
            prog="python -m bridge decode", description="decode one payload (hex) and print JSON"
        )
        parser.add_argument("--port", type=int, required=True, help="FPort: 1, 2 or 10")
        parser.add_argument(
            "hex", nargs="+", help="payload(s) as hex, e.g. copied from the TTN console"
        )
        args = parser.parse_args(argv[1:])
        return decode_command(args.port, *args.hex)
    parser = argparse.ArgumentParser(prog="python -m bridge", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("THERMAL_CONFIG"))
    parser.add_argument("--credentials", default=os.environ.get("THERMAL_CREDENTIALS"))
    return run_bridge(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
