"""`python -m webapp --demo`: an in-process MQTT broker, SQLite under var/, three simulated nodes."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from bridge.alarms import AlarmRules
from bridge.config import Config, MqttConfig

log = logging.getLogger(__name__)

DEMO_NODES = 3
DEMO_INTERVAL_S = 0.25  # accelerated: a slow-mode frame (24 uplinks) every 6 s per node
DEMO_APP_ID = "thermal-demo"
SCENE_STEP_S = 30.0  # node_firmware.simulator's scene time per uplink


def demo_alarm_rules(interval_s: float) -> AlarmRules:
    """The demo's alarm rules for nodes publishing every `interval_s`.

    - Its scenes move 30 s per uplink (a real node's pace), 120 times the clock at 0.25 s: the
      rate-of-rise window shrinks by as much, or an ordinary warm-up would look like a runaway.
    - The racks' cells sit some 10 °C above the room: uneven means a hot spot, 25 °C.
    - A node's automatic fan (PROTOCOL.md: on while the hottest pixel is above the threshold)
      holds a faulty cell just under the threshold for two or three frames, then it climbs
      back. Cleared after two cool frames, that alarm would open and clear every few frames;
      five frames (an hour of the scene) keep it open while the fault is only held at bay, as
      Prometheus's `keep_firing_for` does, and let it clear once the fan is on for good.
    """
    return AlarmRules(
        non_uniform_spread_c=25.0,
        clear_after_frames=5,
        rise_window_s=600.0 * interval_s / SCENE_STEP_S,
    )


DEMO_ALARM_RULES = demo_alarm_rules(DEMO_INTERVAL_S)


def free_port(preferred: int | None = None) -> int:
    """A free TCP port on 127.0.0.1 (the preferred one when it is free)."""
    candidates = [preferred] if preferred else []
    for port in [*candidates, 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port or 0))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


class EmbeddedBroker:
    """amqtt's pure-Python MQTT broker on its own asyncio loop in a daemon thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.broker: Any = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start listening on 127.0.0.1:port; returns when the broker accepts connections."""
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self.broker = Broker(config, loop=self.loop)

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.broker.start())
            except BaseException as exc:  # reported to the caller below
                self.error = exc
                self.ready.set()
                return
            self.ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True, name="amqtt").start()
        self.ready.wait(15)
        if self.error is not None:
            raise RuntimeError(f"the embedded MQTT broker did not start: {self.error}")

    def stop(self) -> None:
        """Shut the broker down (best effort: the process is exiting anyway)."""
        if self.broker is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.broker.shutdown(), self.loop).result(3)
        except (FutureTimeout, RuntimeError):
            log.debug("embedded broker did not shut down in time")


def demo_config(base: Config, mqtt_port: int, web_port: int) -> Config:
    """The demo's configuration: SQLite under var/, the embedded broker, no secrets."""
    return base.with_overrides(
        mqtt=MqttConfig(host="127.0.0.1", port=mqtt_port, app_id=DEMO_APP_ID, tenant="ttn"),
        mysql=None,
        database_url=None,
        sqlite_path="var/demo.sqlite3",
        default_device="node1",
        offline_after_s=30.0,
        frame_timeout_s=120.0,
        web_port=web_port,
        alarm_rules=DEMO_ALARM_RULES,
    )


def start_simulator(config: Config) -> Any:
    """Three simulated nodes publishing like TTN into the embedded broker."""
    from node_firmware.simulator import Simulator

    simulator = Simulator(
        host=config.mqtt.host,
        port=config.mqtt.port,
        app_id=config.mqtt.app_id,
        tenant=config.mqtt.tenant,
        nodes=DEMO_NODES,
        interval_s=DEMO_INTERVAL_S,
        mode="slow",
        seed=7,
    )
    simulator.start()
    return simulator
