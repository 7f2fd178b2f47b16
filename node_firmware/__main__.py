"""`python -m node_firmware --config node.json`: the node's program on a Raspberry Pi.

`python -m node_firmware encode --mode compressed --step 0.5 GRID.json` prints the FPort 1
fragments of a 24 x 32 grid (a JSON list of rows, null = no data), one hex payload per line.

Reads the node's own configuration (see `node.example.json`), builds the Pi drivers of `pi.py`,
joins the LoRaWAN network and sends one uplink every `interval_s` seconds until stopped.
`--dry-run` runs the same loop on any host with the simulated hardware and a radio that only
logs what it would send.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from node_firmware import protocol
from node_firmware.hardware import Downlink, JsonSettingsStore, settings_from_json
from node_firmware.node import DEFAULT_SETTINGS, Node
from node_firmware.protocol import Mode, ProtocolError, Settings
from node_firmware.signals import stop_on_signals

log = logging.getLogger("node_firmware")

DEFAULT_INTERVAL_S = 360.0  # 240 slow-mode uplinks a day: within TTN's 30 s of SF7 airtime
DEFAULT_SETTINGS_FILE = "/var/lib/thermal-node/settings.json"
ENV_PREFIX = "THERMAL_NODE_"  # e.g. THERMAL_NODE_APP_KEY keeps the key out of node.json


class NodeConfigError(ValueError):
    """A node.json value that is missing or malformed; the message names the key."""


@dataclass(frozen=True)
class NodeConfig:
    """node.json: the Pi node's configuration."""

    interval_s: float = DEFAULT_INTERVAL_S
    settings_file: str = DEFAULT_SETTINGS_FILE
    defaults: Settings = DEFAULT_SETTINGS
    camera: dict[str, Any] = field(default_factory=dict)
    ambient: dict[str, Any] = field(default_factory=dict)
    fan: dict[str, Any] = field(default_factory=dict)
    radio: dict[str, Any] = field(default_factory=dict)
    log_level: str = "INFO"


def load_config(path: str | None, environ: Mapping[str, str]) -> NodeConfig:
    """Read node.json (optional) and apply THERMAL_NODE_* overrides for the radio's keys."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise NodeConfigError(f"cannot read {path}: {exc}") from None
        except ValueError as exc:
            raise NodeConfigError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise NodeConfigError(f"{path} must hold a JSON object")
    radio = dict(data.get("radio") or {})
    for key in ("dev_eui", "join_eui", "app_key", "port"):
        if f"{ENV_PREFIX}{key.upper()}" in environ:
            radio[key] = environ[f"{ENV_PREFIX}{key.upper()}"]
    try:
        interval_s = float(
            environ.get(f"{ENV_PREFIX}INTERVAL_S", data.get("interval_s", DEFAULT_INTERVAL_S))
        )
    except (TypeError, ValueError):
        raise NodeConfigError("interval_s must be a number of seconds") from None
    if not interval_s > 0:
        raise NodeConfigError("interval_s must be positive")
    defaults = DEFAULT_SETTINGS
    if "defaults" in data:
        try:
            defaults = settings_from_json(data["defaults"])
        except ProtocolError as exc:
            raise NodeConfigError(f"defaults: {exc}") from None
    sections = {}
    for key in ("camera", "ambient", "fan"):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise NodeConfigError(f"{key} must be a JSON object")
        sections[key] = section
    return NodeConfig(
        interval_s=interval_s,
        settings_file=str(data.get("settings_file", DEFAULT_SETTINGS_FILE)),
        defaults=defaults,
        radio=radio,
        log_level=str(data.get("log_level", "INFO")).upper(),
        **sections,
    )


class LoggingRadio:
    """`Radio` for --dry-run: prints each uplink, never receives anything."""

    def __init__(
        self, out: Callable[[str], None] = print, tick: Callable[[], object] | None = None
    ) -> None:
        self.out = out
        self.tick = tick
        self.sent = 0

    def send(self, port: int, payload: bytes) -> Downlink | None:
        """Print `FPort <n> <hex>`."""
        self.sent += 1
        if self.tick is not None:
            self.tick()
        self.out(f"FPort {port} {payload.hex().upper()}")
        return None


def build_pi_node(config: NodeConfig) -> Node:
    """The node with the Pi's drivers; joins the network before returning."""
    from node_firmware import pi

    radio_conf = dict(config.radio)
    radio = pi.AtModemRadio(
        port=str(radio_conf.get("port", "/dev/serial0")),
        baudrate=int(radio_conf.get("baudrate", 115200)),
    )
    if all(radio_conf.get(k) for k in ("dev_eui", "join_eui", "app_key")):
        radio.configure(
            dev_eui=str(radio_conf["dev_eui"]),
            join_eui=str(radio_conf["join_eui"]),
            app_key=str(radio_conf["app_key"]),
            band=int(radio_conf.get("band", 4)),
        )
    radio.join(timeout_s=float(radio_conf.get("join_timeout_s", 60)))
    return Node(
        camera=pi.MLX90640Camera(**config.camera),
        ambient=pi.DhtAmbientSensor(**config.ambient),
        fan=pi.RelayFan(**config.fan),
        radio=radio,
        store=JsonSettingsStore(config.settings_file),
        default_settings=config.defaults,
        # A fresh frame number after a reboot, so no half-sent frame of before is continued.
        first_frame_number=random.SystemRandom().randrange(64),
    )


def build_dry_run_node(config: NodeConfig, seed: int = 0) -> Node:
    """The node with simulated hardware and `LoggingRadio`, for trying the loop on a host."""
    from node_firmware.simulated import (
        BatteryRackScene,
        SimClock,
        SimulatedAmbientSensor,
        SimulatedCamera,
        SimulatedFan,
    )

    clock = SimClock()
    scene = BatteryRackScene(random.Random(seed), clock)
    return Node(
        camera=SimulatedCamera(scene),
        ambient=SimulatedAmbientSensor(scene),
        fan=SimulatedFan(scene),
        # The scene moves on by one interval per uplink, as it would on a rack.
        radio=LoggingRadio(tick=lambda: clock.advance(config.interval_s)),
        store=JsonSettingsStore(config.settings_file),
        default_settings=config.defaults,
    )


def run(
    node: Node,
    interval_s: float,
    stop: threading.Event,
    *,
    count: int | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Send one uplink every interval until `stop` is set (or `count` uplinks); returns sent."""
    sent = 0
    while not stop.is_set():
        started = monotonic()
        try:
            node.step()
            sent += 1
        except Exception:  # a failed uplink must not end the node: log, wait, try again
            log.exception("uplink failed")
        if count is not None and sent >= count:
            break
        stop.wait(max(0.0, interval_s - (monotonic() - started)))
    return sent


def encode_command(argv: Sequence[str]) -> int:
    """`encode`: print the fragments of a grid file, one hex payload per line."""
    parser = argparse.ArgumentParser(
        prog="python -m node_firmware encode",
        description="Print the FPort 1 fragments of a 24 x 32 grid, one hex payload per line.",
    )
    parser.add_argument("--mode", choices=protocol.MODE_LABELS, default="compressed")
    parser.add_argument(
        "--step", type=float, default=0.1, help="compressed: 0.1 (lossless), 0.2, 0.5 or 1.0 °C"
    )
    parser.add_argument("--frame-number", type=int, default=0)
    parser.add_argument("grid", help="JSON file: a list of 24 rows of 32 °C values, null = no data")
    args = parser.parse_args(argv)
    try:
        grid = json.loads(Path(args.grid).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.grid}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(grid, list) or not all(
        isinstance(row, list) and all(v is None or isinstance(v, int | float) for v in row)
        for row in grid
    ):
        print("error: the grid must be a JSON list of rows of numbers or null", file=sys.stderr)
        return 2
    try:
        fragments = protocol.fragment_frame(
            grid,
            Mode.from_label(args.mode),
            args.frame_number,
            fan=False,
            ambient=None,
            step=args.step,
        )
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for fragment in fragments:
        print(protocol.encode_fragment(fragment).hex().upper())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until SIGTERM / Ctrl-C."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "encode":
        return encode_command(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m node_firmware", description="The thermal node's program (Raspberry Pi)."
    )
    parser.add_argument("--config", help="node.json (see node_firmware/node.example.json)")
    parser.add_argument("--interval", type=float, help="seconds between uplinks (overrides)")
    parser.add_argument("--dry-run", action="store_true", help="simulated hardware, print uplinks")
    parser.add_argument("--count", type=int, help="stop after this many uplinks")
    parser.add_argument("--settings-file", help="where the settings are kept (overrides)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, os.environ)
    except NodeConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.interval is not None:
        if not args.interval > 0:
            print("--interval must be positive", file=sys.stderr)
            return 2
        config = replace(config, interval_s=args.interval)
    if args.settings_file:
        config = replace(config, settings_file=args.settings_file)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with stop_on_signals() as stop:
        try:
            node = build_dry_run_node(config) if args.dry_run else build_pi_node(config)
            log.info(
                "node running: %s mode, threshold %d °C, one uplink every %g s",
                node.settings.mode.label,
                node.settings.threshold,
                config.interval_s,
            )
            run(node, config.interval_s, stop, count=args.count)
        except Exception as exc:  # hardware missing, join failed: say so plainly, exit non-zero
            log.error("the node stopped: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
