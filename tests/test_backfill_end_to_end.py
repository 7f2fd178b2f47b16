"""Backfill end to end, TTN-style: the simulator publishes at QoS 0 to a broker that keeps no
session for the bridge (as TTN's MQTT server), the bridge is offline for part of a frame, and on
reconnect it fetches what it missed from the simulator's Storage Integration endpoint; the frame
completes and every uplink the network received is stored exactly once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from bridge import backfill
from bridge.config import Config, MqttConfig, Secret
from bridge.mqtt import MqttAdapter
from bridge.service import Bridge
from db import schema as t
from db.migrations import upgrade
from db.store import Store
from node_firmware.simulator import Simulator, StorageIntegrationServer
from tests import waiting
from tests.bridge.harness import Recorder
from tests.ttn_messages import APP_ID, TENANT

pytestmark = pytest.mark.integration

KEY = "NNSXS.BACKFILL-END-TO-END"
WAIT_S = 60.0


def wait_for(condition: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "") -> Any:
    """tests.waiting.wait_for with this module's longer bound."""
    return waiting.wait_for(condition, timeout_s, what)


def test_bridge_offline_mid_frame_is_backfilled_from_the_storage_integration(
    mqtt_broker: Any, mysql_url: str
) -> None:
    simulator = Simulator(
        mqtt_broker.host, mqtt_broker.port, APP_ID, TENANT, nodes=1, interval_s=1, seed=21
    )
    storage = StorageIntegrationServer(simulator.storage, APP_ID, KEY).start()
    config = Config(
        # QoS 0 and a clean session, as on TTN: what is published while offline is gone.
        mqtt=MqttConfig(
            host=mqtt_broker.host, port=mqtt_broker.port, app_id=APP_ID, tenant=TENANT, qos=0
        ),
        database_url=mysql_url,
        storage_integration_url=storage.url,
        storage_integration_api_key=Secret(KEY),
    )
    store = Store.from_url(mysql_url)
    upgrade(store.engine)
    recorder = Recorder()
    bridge = Bridge(config, store, recorder)
    bridge.backfiller = backfill.from_config(config, bridge.handle_message)
    assert bridge.backfiller is not None

    def handle(body: bytes) -> None:
        bridge.handle_message(body)
        recorder.bump()

    def adapter() -> MqttAdapter:
        made = MqttAdapter(
            config.mqtt,
            handle,
            client_id=f"bf-{uuid.uuid4().hex[:6]}",
            on_connected=bridge.connected,
        )
        made.start()
        assert made.connected.wait(WAIT_S), "the bridge did not subscribe"
        return made

    stop = threading.Event()

    def tick_forever() -> None:  # what the bridge's ticker does every second
        while not stop.wait(0.1):
            bridge.tick()

    def uplinks() -> int:
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.uplinks)).scalar_one())

    ticker = threading.Thread(target=tick_forever, daemon=True)
    ticker.start()
    online = adapter()
    simulator.connect()
    try:
        for _ in range(9):  # a status, then fragments 0..7 of the first frame
            simulator.step_device("node1")
        recorder.wait_for(lambda: recorder.handled == 9)
        online.stop()
        wait_for(lambda: not online.connected.is_set(), what="the bridge to go offline")
        for _ in range(10):  # fragments 8..17: published at QoS 0 to nobody
            simulator.step_device("node1")
        assert uplinks() == 9
        online = adapter()  # back: backfill "reconnect"
        for _ in range(6):  # fragments 18..23, live
            simulator.step_device("node1")
        recorder.wait_for(lambda: len(recorder.of("frame")) == 1)
        wait_for(lambda: uplinks() == 25, what="every uplink stored")
        [frame] = recorder.of("frame")
        assert frame["complete"] and frame["coverage"] == 1.0
        with store.engine.connect() as conn:
            keys = [r[0] for r in conn.execute(select(t.uplinks.c.uplink_key))]
            rows = conn.execute(select(t.frames.c.complete)).all()
        assert len(keys) == len(set(keys)) == len(simulator.storage) == 25
        assert [r.complete for r in rows] == [True]
        # The 10 missed came from the storage integration (with an overlap, de-duplicated) ...
        wait_for(lambda: bridge.backfiller.fetched >= 10, what="the backfill run to finish")
        assert recorder.handled == 9 + 6  # ... not from MQTT
        assert storage.requests[200] >= 1 and storage.requests[401] == 0
        assert simulator.published["up"] == 25
    finally:
        stop.set()
        ticker.join(10)
        online.stop()
        simulator.stop()
        storage.stop()
        store.engine.dispose()
