"""The simulator's Storage Integration endpoint, read by the bridge's own client (no broker)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.backfill import BackfillError, StorageIntegration
from bridge.config import Secret
from bridge.ttn import Uplink, parse_message
from node_firmware.simulator import Simulator, StorageIntegrationServer
from tests.ttn_messages import APP_ID, TENANT

KEY = "NNSXS.SIMULATOR-STORAGE-KEY"
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


class NoBroker(Simulator):
    """A simulator whose MQTT publishing is a no-op (uplinks still reach its storage)."""

    def connect(self, timeout_s: float = 0) -> None:
        return None


@pytest.fixture
def served() -> Iterator[tuple[Simulator, StorageIntegrationServer]]:
    sim = NoBroker("127.0.0.1", 1, APP_ID, TENANT, nodes=2, interval_s=1, loss=0.0, seed=5)
    server = StorageIntegrationServer(sim.storage, APP_ID, KEY).start()
    yield sim, server
    server.stop()


def test_every_uplink_the_network_received_is_served_oldest_first_after_a_time(
    served: tuple[Simulator, StorageIntegrationServer],
) -> None:
    sim, server = served
    for i in range(6):
        sim.step_all(T0 + timedelta(seconds=10 * i))  # 12 uplinks, 2 devices
    assert len(sim.storage) == 12
    client = StorageIntegration(server.url, APP_ID, Secret(KEY))
    page = client.fetch(T0 + timedelta(seconds=25))  # the rounds at 30, 40, 50 s
    messages = [parse_message(body) for body, _ in page]
    assert all(isinstance(m, Uplink) for m in messages) and len(messages) == 6
    assert [m.received_at for m in messages] == sorted(m.received_at for m in messages)  # type: ignore[union-attr]
    assert {m.device_id for m in messages} == {"node1", "node2"}
    assert [at for _, at in page] == [m.received_at for m in messages]  # type: ignore[union-attr]
    assert len(client.fetch(T0 - timedelta(seconds=1), limit=5)) == 5
    assert server.requests[200] == 2


def test_lost_uplinks_are_not_stored_and_the_device_route_filters(
    served: tuple[Simulator, StorageIntegrationServer],
) -> None:
    sim, server = served
    sim.loss = 1.0
    sim.step_all(T0)
    assert len(sim.storage) == 0  # lost on the air: the network never had them
    sim.loss = 0.0
    sim.step_all(T0 + timedelta(seconds=1))
    url = (
        f"{server.url}/api/v3/as/applications/{APP_ID}/devices/node2/packages/storage/"
        "uplink_message?after=2026-11-01T00:00:00Z"
    )
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        lines = [line for line in response.read().split(b"\n") if line.strip()]
    assert len(lines) == 1
    assert json.loads(lines[0])["result"]["end_device_ids"]["device_id"] == "node2"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/packages/storage/uplink_message", {}, 401),
        ("/packages/storage/uplink_message", {"Authorization": "Bearer wrong"}, 401),
        ("/packages/storage/uplink_message", {"Authorization": f"Basic {KEY}"}, 401),
        (
            "/packages/storage/uplink_message?after=yesterday",
            {"Authorization": f"Bearer {KEY}"},
            400,
        ),
        ("/packages/storage/uplink_message?limit=0", {"Authorization": f"Bearer {KEY}"}, 400),
        ("/packages/storage/nothing", {"Authorization": f"Bearer {KEY}"}, 404),
    ],
)
def test_wrong_key_bad_query_and_unknown_route_are_refused(
    served: tuple[Simulator, StorageIntegrationServer],
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    _, server = served
    request = urllib.request.Request(
        f"{server.url}/api/v3/as/applications/{APP_ID}{path}", headers=headers
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == status
    assert KEY.encode() not in info.value.read()


def test_the_bridge_client_reports_a_wrong_key_as_http_401(
    served: tuple[Simulator, StorageIntegrationServer],
) -> None:
    _, server = served
    client = StorageIntegration(server.url, APP_ID, Secret("not-the-key"))
    with pytest.raises(BackfillError, match="HTTP 401"):
        client.fetch(T0)
    other_app = StorageIntegration(server.url, "someone-else", Secret(KEY))
    with pytest.raises(BackfillError, match="HTTP 404"):
        other_app.fetch(T0)


@pytest.mark.integration
def test_the_command_line_serves_it_with_the_configured_key(
    mqtt_broker: Any, tmp_path: Path
) -> None:
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"mqtt": {"password": KEY}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMAL_")}
    env["PYTHONPATH"] = str(ROOT)
    out = tmp_path / "sim.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node_firmware.simulator",
                "--credentials",
                str(creds),
                "--host",
                mqtt_broker.host,
                "--port",
                str(mqtt_broker.port),
                "--app-id",
                APP_ID,
                "--nodes",
                "1",
                "--interval",
                "0.05",
                "--storage-port",
                "0",
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"storage integration on (http://\S+)", out.read_text())
            time.sleep(0.05)
        assert found, out.read_text()
        client = StorageIntegration(found.group(1), APP_ID, Secret(KEY))
        since = datetime.now(UTC) - timedelta(hours=1)  # the simulator stamps wall time
        page: list[Any] = []
        while not page and time.monotonic() < deadline:
            page = client.fetch(since)
        assert page and parse_message(page[0][0]).device_id == "node1"
        with pytest.raises(BackfillError, match="HTTP 401"):
            StorageIntegration(found.group(1), APP_ID, Secret("wrong")).fetch(since)
    finally:
        proc.terminate()
        proc.wait(20)
