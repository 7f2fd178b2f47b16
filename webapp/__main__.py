"""`python -m webapp`: the bridge and the push server in one process (threading mode)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from bridge import config as config_mod
from bridge.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m webapp`."""
    parser = argparse.ArgumentParser(prog="python -m webapp", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("THERMAL_CONFIG"))
    parser.add_argument("--credentials", default=os.environ.get("THERMAL_CREDENTIALS"))
    parser.add_argument(
        "--demo",
        action="store_true",
        help="embedded broker, SQLite under var/, three simulated nodes",
    )
    parser.add_argument("--host", help="listen address (default web.host)")
    parser.add_argument("--port", type=int, help="listen port (default web.port, 3002)")
    parser.add_argument(
        "--no-bridge",
        action="store_true",
        help="serve only; a separate `python -m bridge` feeds the message queue",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("THERMAL_ASYNC_MODE", "threading")

    try:
        config = config_mod.load(args.config, args.credentials)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)  # amqtt's state machine
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    broker: Any = None
    simulator: Any = None
    if args.demo:
        from webapp import demo

        broker = demo.EmbeddedBroker(demo.free_port(1884))
        broker.start()
        config = demo.demo_config(config, broker.port, args.port or config.web_port)
    if args.host:
        config = config.with_overrides(web_host=args.host)
    if args.port:
        config = config.with_overrides(web_port=args.port)

    from webapp import create_app, socketio

    try:
        app = create_app(config, start_bridge=not args.no_bridge)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.demo:
        from webapp import demo

        simulator = demo.start_simulator(config)

    def shutdown(*_: Any) -> None:
        logging.getLogger(__name__).info("stopping")
        if simulator is not None:
            simulator.stop()
        app.extensions["thermal"].stop()
        if broker is not None:
            broker.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    url = f"http://{config.web_host}:{config.web_port}"
    print(f"dashboard on {url}  (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        socketio.run(
            app,
            host=config.web_host,
            port=config.web_port,
            allow_unsafe_werkzeug=True,
            use_reloader=False,
            log_output=False,
        )
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
