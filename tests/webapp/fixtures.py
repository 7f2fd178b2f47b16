"""Building blocks for webapp tests: an app on a given database, fed through the bridge."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from bridge.config import Config, MqttConfig, Secret
from bridge.service import Bridge
from node_firmware.protocol import Mode, NodeStatus, encode_fragment, encode_status, fragment_frame
from tests.ttn_messages import APP_ID, TENANT, at_seconds, uplink
from webapp import create_app


def make_config(db_url: str, **overrides: Any) -> Config:
    tokens = overrides.pop("api_tokens", ())
    return Config(
        mqtt=MqttConfig(app_id=APP_ID, tenant=TENANT),
        database_url=db_url,
        default_device="node1",
        api_tokens=tuple(Secret(t) for t in tokens),
        **overrides,
    )


def make_app(config: Config) -> Iterator[Flask]:
    app = create_app(config, start_bridge=False)
    app.config["TESTING"] = True
    yield app
    app.extensions["thermal"].stop()
    app.extensions["thermal"].store.engine.dispose()


def scene(seed: int, hot: float) -> list[list[float | None]]:
    rng = random.Random(seed)
    grid: list[list[float | None]] = [
        [round(24 + rng.random() * 3, 1) for _ in range(32)] for _ in range(24)
    ]
    grid[10][20] = hot
    grid[0][0] = None
    return grid


class Feeder:
    """Injects TTN messages into a bridge sharing the app's store and announcer."""

    def __init__(self, app: Flask) -> None:
        runtime = app.extensions["thermal"]
        self.bridge = Bridge(runtime.config, runtime.store, runtime.announce)
        self.f_cnt: dict[str, int] = {}
        self.t = 0.0

    def send(self, device_id: str, payload: bytes, f_port: int = 1) -> None:
        f_cnt = self.f_cnt.get(device_id, 0)
        self.f_cnt[device_id] = f_cnt + 1
        self.t += 1
        self.bridge.handle_message(uplink(device_id, f_cnt, payload, at_seconds(self.t), f_port))

    def frame(
        self,
        device_id: str,
        hot: float,
        number: int = 0,
        mode: Mode = Mode.SLOW,
        ambient: float = 23,
        skip: tuple[int, ...] = (),
    ) -> None:
        for f in fragment_frame(scene(number, hot), mode, number, fan=False, ambient=ambient):
            if f.index not in skip:
                self.send(device_id, encode_fragment(f))

    def status(
        self, device_id: str, fan: bool = False, mode: Mode = Mode.SLOW, threshold: int = 50
    ) -> None:
        self.send(device_id, encode_status(NodeStatus(1, fan, fan, mode, threshold, 22)), 2)


class LiveServer:
    """The app on a free loopback port, served by werkzeug's threaded server (Socket.IO in
    threading mode, websocket through simple-websocket)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = requests.get(self.url + path, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
