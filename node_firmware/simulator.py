"""N simulated nodes behind a stand-in for The Things Stack, on any MQTT broker.

Each simulated node runs the real `Node` logic with the simulated hardware of `simulated.py`.
The simulator plays The Things Stack's part on the broker: it publishes each uplink in TTN v3's
JSON on `v3/{app}@{tenant}/devices/{id}/up` (QoS 0, zero/false/empty fields omitted), takes
downlinks from `.../down/push` and `.../down/replace`, delivers them Class A style in the RX
window of the node's next uplink, and reports `down/queued`, `down/sent`, `down/ack`,
`down/nack` and `down/failed` as The Things Stack does (a nacked confirmed downlink is queued
again, 8 attempts in all, then fails with `max_retries_reached`).

    python -m node_firmware.simulator --config conf.json --credentials credentials.json \\
        --nodes 3 --interval 1.0 [--mode fast] [--loss 0.05] [--seed 7]

Time: uplinks go out every `interval_s` of wall time (accelerated for the demo and the tests),
while each node's scene moves on by `scene_step_s` (30 s, a real node's interval) per uplink,
so the hot spot heats and the fan cools at the pace they would on a real rack.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from node_firmware.hardware import Downlink
from node_firmware.node import DEFAULT_SETTINGS, Node, SentUplink
from node_firmware.protocol import Mode
from node_firmware.signals import stop_on_signals
from node_firmware.simulated import (
    BatteryRackScene,
    MemorySettingsStore,
    SimClock,
    SimulatedAmbientSensor,
    SimulatedCamera,
    SimulatedFan,
)

log = logging.getLogger(__name__)

SCENE_STEP_S = 30.0  # simulated scene time per uplink: a real node's interval
MAX_ATTEMPTS = 8  # The Things Stack's default number of tries for a confirmed downlink
LORAWAN_OVERHEAD_BYTES = 13  # MHDR 1 + DevAddr 4 + FCtrl 1 + FCnt 2 + FPort 1 + MIC 4
BANDWIDTH_HZ = 125_000
CODING_RATE = "4/5"
MAX_DOWNLINK_BYTES = 222  # the largest EU868 application payload (DR5..DR7)
MAX_CORRELATION_ID_CHARS = 100
DOWNLINK_PRIORITIES = (
    "LOWEST",
    "LOW",
    "BELOW_NORMAL",
    "NORMAL",
    "ABOVE_NORMAL",
    "HIGH",
    "HIGHEST",
)
# TTN's eight EU868 uplink channels.
EU868_FREQUENCIES_HZ = (
    868_100_000,
    868_300_000,
    868_500_000,
    867_100_000,
    867_300_000,
    867_500_000,
    867_700_000,
    867_900_000,
)
GATEWAY_ID = "sim-gateway"
GATEWAY_EUI = "B827EBFFFE5A1B01"
CONNECT_TIMEOUT_S = 15.0
CROCKFORD32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

MAX_RETRIES_ERROR = {
    "namespace": "pkg/networkserver",
    "name": "max_retries_reached",
    "message_format": "maximum number of confirmed downlink retries reached",
    "code": 4,
}
# What `fail` simulates: the gateway could not schedule the transmission.
SCHEDULE_ERROR = {
    "namespace": "pkg/gatewayserver/scheduling",
    "name": "too_late",
    "message_format": "too late to transmit scheduled time",
    "code": 9,
}


# --- pure helpers -------------------------------------------------------------------------


def lora_airtime_ns(
    phy_payload_bytes: int,
    spreading_factor: int,
    bandwidth_hz: int = BANDWIDTH_HZ,
    *,
    coding_rate: int = 1,
    preamble_symbols: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
) -> int:
    """LoRa time on air in nanoseconds (Semtech AN1200.13, "LoRa Modem Designer's Guide").

    `coding_rate` 1..4 means 4/5..4/8. Low data rate optimisation is on for SF11 and SF12 at
    125 kHz, as LoRaWAN requires.
    """
    if not 6 <= spreading_factor <= 12:
        raise ValueError(f"spreading factor must be 6..12, got {spreading_factor}")
    de = 1 if spreading_factor >= 11 and bandwidth_hz <= BANDWIDTH_HZ else 0
    h = 0 if explicit_header else 1
    numerator = 8 * phy_payload_bytes - 4 * spreading_factor + 28 + (16 if crc else 0) - 20 * h
    denominator = 4 * (spreading_factor - 2 * de)
    payload_symbols = 8 + max(-(-numerator // denominator) * (coding_rate + 4), 0)
    # (preamble + 4.25 + payload) symbols, counted in quarter symbols to stay exact.
    quarter_symbols = 4 * preamble_symbols + 17 + 4 * payload_symbols
    return quarter_symbols * (1 << spreading_factor) * 1_000_000_000 // (4 * bandwidth_hz)


def format_duration(ns: int) -> str:
    """A protobuf JSON Duration as TTN writes `consumed_airtime`: "0.061696s" (0/3/6/9 digits)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    if nanos == 0:
        return f"{seconds}s"
    if nanos % 1_000_000 == 0:
        return f"{seconds}.{nanos // 1_000_000:03d}s"
    if nanos % 1_000 == 0:
        return f"{seconds}.{nanos // 1_000:06d}s"
    return f"{seconds}.{nanos:09d}s"


def ttn_timestamp(at: datetime, nanos: int = 0) -> str:
    """RFC 3339 UTC with a nanosecond fraction and a Z, as TTN writes `received_at`."""
    at = at.astimezone(UTC)
    return f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond:06d}{nanos % 1000:03d}Z"


def ulid(at: datetime, rng: random.Random) -> str:
    """A ULID (48-bit milliseconds + 80 random bits, Crockford base32), like TTN's ids."""
    value = ((int(at.timestamp() * 1000) & (2**48 - 1)) << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD32[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class DownlinkBodyError(ValueError):
    """A `down/push` or `down/replace` body The Things Stack would refuse."""


@dataclass(slots=True)
class QueuedDownlink:
    """One downlink in a device's queue (The Things Stack's `ApplicationDownlink`)."""

    f_port: int
    payload: bytes
    priority: str = "NORMAL"
    confirmed: bool = False
    correlation_ids: list[str] = field(default_factory=list)
    attempts: int = 0

    def to_json(self, f_cnt: int = 0, session_key_id: str | None = None) -> dict[str, Any]:
        """TTN's JSON of the downlink; zero, false and empty fields omitted like TTN does."""
        out: dict[str, Any] = {}
        if session_key_id:
            out["session_key_id"] = session_key_id
        out["f_port"] = self.f_port
        if f_cnt:
            out["f_cnt"] = f_cnt
        if self.payload:
            out["frm_payload"] = base64.b64encode(self.payload).decode("ascii")
        if self.confirmed:
            out["confirmed"] = True
        out["priority"] = self.priority
        if self.correlation_ids:
            out["correlation_ids"] = list(self.correlation_ids)
        return out


def parse_downlink_body(body: bytes | str) -> list[QueuedDownlink]:
    """A `down/push` / `down/replace` body -> its downlinks; DownlinkBodyError if malformed."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DownlinkBodyError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DownlinkBodyError("the body must be a JSON object")
    items = doc.get("downlinks")
    if not isinstance(items, list):
        raise DownlinkBodyError("downlinks must be a list")
    out = []
    for n, item in enumerate(items):
        where = f"downlinks[{n}]"
        if not isinstance(item, dict):
            raise DownlinkBodyError(f"{where} must be an object")
        f_port = item.get("f_port")
        if isinstance(f_port, bool) or not isinstance(f_port, int) or not 1 <= f_port <= 223:
            raise DownlinkBodyError(f"{where}.f_port must be an integer 1..223, got {f_port!r}")
        if "frm_payload" not in item:
            raise DownlinkBodyError(
                f"{where}.frm_payload is missing (decoded_payload needs the payload formatter, "
                "which this simulator does not run)"
            )
        raw = item["frm_payload"]
        if not isinstance(raw, str):
            raise DownlinkBodyError(f"{where}.frm_payload must be a base64 string")
        try:
            payload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise DownlinkBodyError(f"{where}.frm_payload is not valid base64") from None
        if len(payload) > MAX_DOWNLINK_BYTES:
            raise DownlinkBodyError(
                f"{where}.frm_payload is {len(payload)} bytes; at most {MAX_DOWNLINK_BYTES}"
            )
        priority = item.get("priority", "NORMAL")
        if priority not in DOWNLINK_PRIORITIES:
            raise DownlinkBodyError(f"{where}.priority {priority!r} is not a TTN priority")
        confirmed = item.get("confirmed", False)
        if not isinstance(confirmed, bool):
            raise DownlinkBodyError(f"{where}.confirmed must be true or false")
        ids = item.get("correlation_ids", [])
        if not isinstance(ids, list) or not all(
            isinstance(i, str) and len(i) <= MAX_CORRELATION_ID_CHARS for i in ids
        ):
            raise DownlinkBodyError(
                f"{where}.correlation_ids must be strings of at most "
                f"{MAX_CORRELATION_ID_CHARS} characters"
            )
        out.append(
            QueuedDownlink(
                f_port=f_port,
                payload=payload,
                priority=priority,
                confirmed=confirmed,
                correlation_ids=list(ids),
            )
        )
    return out


# --- one simulated device -----------------------------------------------------------------


@dataclass(slots=True)
class InFlight:
    """A confirmed downlink sent in an RX window, waiting for the device's next uplink."""

    downlink: QueuedDownlink
    f_cnt: int
    delivered: bool  # False: lost on the air, so the next uplink carries no ack


class SimulatedDevice:
    """The network's view of one simulated node, plus the node itself and its scene."""

    def __init__(
        self,
        simulator: Simulator,
        device_id: str,
        index: int,
        seed: int,
        mode: Mode,
        scene_step_s: float,
        step: float = 0.1,
    ) -> None:
        self.device_id = device_id
        setup = random.Random(f"{seed}/{device_id}/setup")
        self.rng = random.Random(f"{seed}/{device_id}/network")
        self.dev_eui = f"70B3D57ED0{(seed * 4099 + index) % 16**6:06X}"
        self.dev_addr = f"260B{setup.getrandbits(16):04X}"
        self.session_key_id = base64.b64encode(setup.randbytes(16)).decode("ascii")
        self.spreading_factor = setup.choice((7, 7, 7, 8, 9))
        self.rssi_base = setup.uniform(-112.0, -85.0)
        self.snr_base = setup.uniform(-2.0, 10.0)
        self.scene_step_s = scene_step_s
        self.clock = SimClock()
        self.scene = BatteryRackScene(random.Random(f"{seed}/{device_id}/scene"), self.clock)
        self.store = MemorySettingsStore()
        self.node = Node(
            camera=SimulatedCamera(self.scene),
            ambient=SimulatedAmbientSensor(self.scene),
            fan=SimulatedFan(self.scene),
            radio=SimulatedRadio(simulator, self),
            store=self.store,
            default_settings=replace(DEFAULT_SETTINGS, mode=mode, step=step),
            first_frame_number=setup.randrange(64),
        )
        self.f_cnt = 0  # FCntUp: 0 for the first uplink after the join
        self.f_cnt_down = 0  # AFCntDown
        self.queue: deque[QueuedDownlink] = deque()
        self.in_flight: InFlight | None = None
        self.held: list[bytes] = []  # an uplink held back to be published after the next one
        self.now: datetime | None = None  # the network time of the uplink being sent

    def ids_json(self, app_id: str) -> dict[str, Any]:
        """`end_device_ids` as TTN writes it."""
        return {
            "device_id": self.device_id,
            "application_ids": {"application_id": app_id},
            "dev_eui": self.dev_eui,
            "join_eui": "0000000000000000",
            "dev_addr": self.dev_addr,
        }


class SimulatedRadio:
    """`Radio` of a simulated node: its uplinks go through the simulator's network."""

    def __init__(self, simulator: Simulator, device: SimulatedDevice) -> None:
        self.simulator = simulator
        self.device = device

    def send(self, port: int, payload: bytes) -> Downlink | None:
        """Transmit; the downlink, if any, comes back from this uplink's RX window."""
        return self.simulator.transmit(self.device, port, payload)


# --- the simulator ------------------------------------------------------------------------


class Simulator:
    """N simulated nodes and a stand-in for The Things Stack's MQTT server."""

    def __init__(
        self,
        host: str,
        port: int,
        app_id: str,
        tenant: str,
        nodes: int,
        interval_s: float,
        mode: str = "slow",
        seed: int = 0,
        loss: float = 0.0,
        duplicates: float = 0.0,
        reorder: float = 0.0,
        nack: float = 0.0,
        fail: float = 0.0,
        username: str | None = None,
        password: str | None = None,
        device_prefix: str = "node",
        tls: bool = False,
        *,
        ca_certs: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        scene_step_s: float = SCENE_STEP_S,
        client_id: str | None = None,
        step: float = 0.1,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        for name, chance in (
            ("loss", loss),
            ("duplicates", duplicates),
            ("reorder", reorder),
            ("nack", nack),
            ("fail", fail),
        ):
            if not 0.0 <= chance <= 1.0:
                raise ValueError(f"{name} must be a probability from 0 to 1, got {chance}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.host = host
        self.port = port
        self.app_id = app_id
        self.tenant = tenant
        self.interval_s = float(interval_s)
        self.mode = Mode.from_label(mode)
        self.step = step  # compressed mode's quantisation step, °C (docs/protocol.md)
        self.seed = seed
        self.loss = loss
        self.duplicates = duplicates
        self.reorder = reorder
        self.nack = nack
        self.fail = fail
        self.username = username if username or not password else f"{app_id}@{tenant}"
        self.password = password
        self.tls = tls
        self.ca_certs = ca_certs
        self.max_attempts = max_attempts
        self.client_id = client_id or f"thermal-sim-{uuid.uuid4().hex[:12]}"
        self.topic_prefix = f"v3/{app_id}@{tenant}/devices"
        # MQTT messages published, by kind: up, queued, sent, ack, nack, failed; and what
        # happened to uplinks and downlink bodies: lost, duplicates, reordered, malformed,
        # unknown_device, publish_errors.
        self.published: Counter[str] = Counter()
        self.devices: dict[str, SimulatedDevice] = {}
        for index in range(1, nodes + 1):
            device_id = f"{device_prefix}{index}"
            self.devices[device_id] = SimulatedDevice(
                self, device_id, index, seed, self.mode, scene_step_s, step
            )
        self._lock = threading.RLock()  # network state: queues, counters, publishing order
        self._step_lock = threading.Lock()  # one node step at a time
        self._ids_rng = random.Random(f"{seed}/ids")
        self._client: mqtt.Client | None = None
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.finished = threading.Event()  # set when a `start(rounds=...)` run is done
        # What The Things Stack's Storage Integration would have kept of this network's
        # uplinks (served over HTTP by StorageIntegrationServer).
        self.storage = UplinkStorage()

    # --- what tests and callers look at ---------------------------------------------------

    @property
    def nodes(self) -> dict[str, Node]:
        """The Node of each simulated device, by device id."""
        return {device_id: d.node for device_id, d in self.devices.items()}

    @property
    def scenes(self) -> dict[str, BatteryRackScene]:
        """The scene each simulated node looks at, by device id."""
        return {device_id: d.scene for device_id, d in self.devices.items()}

    def topic(self, device_id: str, suffix: str) -> str:
        """The TTN topic of a device: `v3/{app}@{tenant}/devices/{id}/{suffix}`."""
        return f"{self.topic_prefix}/{device_id}/{suffix}"

    # --- connection -----------------------------------------------------------------------

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Connect to the broker and subscribe to the downlink topics (idempotent)."""
        if self._client is not None:
            return
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_certs)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._subscribed.clear()
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        if not self._subscribed.wait(timeout_s):
            client.disconnect()
            client.loop_stop()
            raise ConnectionError(
                f"could not connect to the MQTT broker {self.host}:{self.port} "
                f"and subscribe within {timeout_s:g} s"
            )
        self._client = client
        log.info(
            "simulator connected to %s:%d: %d nodes (%s), one uplink each every %g s",
            self.host,
            self.port,
            len(self.devices),
            ", ".join(self.devices),
            self.interval_s,
        )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error(
                "the MQTT broker %s:%d refused the simulator: %s", self.host, self.port, reason
            )
            return
        # No persistent session (clean_session): subscribe again on every connect.
        client.subscribe(
            [
                (f"{self.topic_prefix}/+/down/push", 1),
                (f"{self.topic_prefix}/+/down/replace", 1),
            ]
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("the MQTT broker refused the simulator's downlink subscriptions: %s", reasons)
            return
        self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not self._stop.is_set():
            log.warning("simulator disconnected from MQTT (%s); paho reconnects", reason)

    # --- running --------------------------------------------------------------------------

    def start(self, rounds: int | None = None) -> None:
        """Connect and send uplinks in a background thread: each node once every interval
        (staggered); with `rounds`, stop after that many uplinks per node (`finished` is set)."""
        if self._thread is not None:
            return
        self.connect()
        self._stop.clear()
        self.finished.clear()
        self._thread = threading.Thread(
            target=self._run, args=(rounds,), name="thermal-simulator", daemon=True
        )
        self._thread.start()

    def _run(self, rounds: int | None) -> None:
        ids = list(self.devices)
        period = self.interval_s / len(ids)
        next_at = time.monotonic()
        k = 0
        while not self._stop.is_set():
            device_id = ids[k % len(ids)]
            try:
                self.step_device(device_id)
            except Exception:
                log.exception("simulated node %s failed a step", device_id)
            k += 1
            if rounds is not None and k >= rounds * len(ids):
                break
            next_at += period
            delay = next_at - time.monotonic()
            if delay < -self.interval_s:
                next_at = time.monotonic()  # far behind (a slow broker): do not burst
            if delay > 0 and self._stop.wait(delay):
                break
        self.finished.set()

    def stop(self) -> None:
        """Stop the uplink thread, flush held uplinks, disconnect. Safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        with self._lock:
            for device in self.devices.values():
                self._flush_held(device)
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Simulator:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def step_device(self, device_id: str, now: datetime | None = None) -> SentUplink:
        """One uplink of one node (its scene moves on by `scene_step_s` first)."""
        device = self.devices[device_id]
        with self._step_lock:
            device.clock.advance(device.scene_step_s)
            device.now = now
            try:
                return device.node.step()
            finally:
                device.now = None

    def step_all(self, now: datetime | None = None) -> list[SentUplink]:
        """One uplink for each node, synchronously (connects first if needed). `now` is the
        network time stamped as `received_at` (default: the wall clock)."""
        self.connect()
        return [self.step_device(device_id, now) for device_id in self.devices]

    # --- the network: uplinks and Class A downlinks -----------------------------------------

    def transmit(self, device: SimulatedDevice, port: int, payload: bytes) -> Downlink | None:
        """A node's uplink reaches the network: publish it, settle the downlink that was in
        flight, and open the RX window for the next queued downlink."""
        now = device.now or datetime.now(UTC)
        rng = device.rng
        f_cnt = device.f_cnt
        device.f_cnt = (device.f_cnt + 1) % 2**32  # the device counts lost uplinks too
        lost = rng.random() < self.loss
        duplicate = rng.random() < self.duplicates
        reorder = rng.random() < self.reorder
        with self._lock:
            if lost:
                # Lost on the air: the network never sees it, so no ack and no RX window.
                self.published["lost"] += 1
                return None
            body = self._uplink_json(device, port, payload, f_cnt, now)
            self.storage.add(now, body)  # stored by the network, published or not
            # The Things Stack reports the ack (or nack) the uplink carries before the uplink.
            self._settle_in_flight(device, now)
            self._publish_uplink(device, body, duplicate=duplicate, reorder=reorder)
            return self._open_rx_window(device, now)

    def _uplink_json(
        self, device: SimulatedDevice, port: int, payload: bytes, f_cnt: int, now: datetime
    ) -> bytes:
        rng = device.rng
        gateway_at = now - timedelta(microseconds=rng.randrange(25_000, 60_000))
        network_at = now - timedelta(microseconds=rng.randrange(2_000, 20_000))
        concentrator_us = int(gateway_at.timestamp() * 1_000_000) % 2**32
        rssi = round(device.rssi_base + rng.gauss(0.0, 2.0))
        snr = round((device.snr_base + rng.gauss(0.0, 1.0)) * 4) / 4
        frequency = rng.choice(EU868_FREQUENCIES_HZ)
        airtime_ns = lora_airtime_ns(len(payload) + LORAWAN_OVERHEAD_BYTES, device.spreading_factor)
        metadata: dict[str, Any] = {
            "gateway_ids": {"gateway_id": GATEWAY_ID, "eui": GATEWAY_EUI},
            "timestamp": concentrator_us,
            "rssi": rssi,
            "channel_rssi": rssi,
            "snr": snr,
            "received_at": ttn_timestamp(gateway_at, rng.randrange(1000)),
        }
        if not snr:
            del metadata["snr"]  # TTN omits zero values
        uplink: dict[str, Any] = {"session_key_id": device.session_key_id, "f_port": port}
        if f_cnt:
            uplink["f_cnt"] = f_cnt  # omitted at 0, like TTN (the first uplink after a join)
        uplink["frm_payload"] = base64.b64encode(payload).decode("ascii")
        uplink["rx_metadata"] = [metadata]
        uplink["settings"] = {
            "data_rate": {
                "lora": {
                    "bandwidth": BANDWIDTH_HZ,
                    "spreading_factor": device.spreading_factor,
                    "coding_rate": CODING_RATE,
                }
            },
            "frequency": str(frequency),
            "timestamp": concentrator_us,
        }
        uplink["received_at"] = ttn_timestamp(network_at, rng.randrange(1000))
        uplink["consumed_airtime"] = format_duration(airtime_ns)
        uplink["network_ids"] = {
            "net_id": "000013",
            "tenant_id": self.tenant,
            "cluster_id": "eu1",
            "cluster_address": "eu1.cloud.thethings.network",
        }
        body = {
            "end_device_ids": device.ids_json(self.app_id),
            "correlation_ids": [
                f"gs:uplink:{ulid(now, rng)}",
                f"ns:uplink:{ulid(now, rng)}",
                f"as:up:{ulid(now, rng)}",
            ],
            "received_at": ttn_timestamp(now, rng.randrange(1000)),
            "uplink_message": uplink,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def _publish_uplink(
        self, device: SimulatedDevice, body: bytes, *, duplicate: bool, reorder: bool
    ) -> None:
        copies = [body, body] if duplicate else [body]
        if duplicate:
            self.published["duplicates"] += 1
        if reorder and not device.held:
            # Swap with the next uplink: this one is published right after it.
            device.held = copies
            self.published["reordered"] += 1
            return
        for copy in copies:
            self._publish(device.device_id, "up", copy)
        self._flush_held(device)

    def _flush_held(self, device: SimulatedDevice) -> None:
        held, device.held = device.held, []
        for copy in held:
            self._publish(device.device_id, "up", copy)

    def _settle_in_flight(self, device: SimulatedDevice, now: datetime) -> None:
        in_flight, device.in_flight = device.in_flight, None
        if in_flight is None:
            return
        downlink = in_flight.downlink
        inner = downlink.to_json(in_flight.f_cnt, device.session_key_id)
        if in_flight.delivered:
            self._publish_event(device, "ack", inner, downlink, now)
            return
        self._publish_event(device, "nack", inner, downlink, now)
        if downlink.attempts >= self.max_attempts:
            failed = {"downlink": inner, "error": dict(MAX_RETRIES_ERROR)}
            self._publish_event(device, "failed", failed, downlink, now)
        else:
            device.queue.appendleft(downlink)  # The Things Stack queues it again

    def _open_rx_window(self, device: SimulatedDevice, now: datetime) -> Downlink | None:
        if not device.queue:
            return None
        fail_roll = device.rng.random()
        nack_roll = device.rng.random()
        downlink = device.queue.popleft()
        if fail_roll < self.fail:
            failed = {"downlink": downlink.to_json(), "error": dict(SCHEDULE_ERROR)}
            self._publish_event(device, "failed", failed, downlink, now)
            return None
        downlink.attempts += 1
        f_cnt = device.f_cnt_down
        device.f_cnt_down += 1  # every transmission, retries too, has its own FCnt
        self._publish_event(
            device, "sent", downlink.to_json(f_cnt, device.session_key_id), downlink, now
        )
        delivered = nack_roll >= self.nack
        if downlink.confirmed:
            device.in_flight = InFlight(downlink, f_cnt, delivered)
        if not delivered:
            return None
        return Downlink(port=downlink.f_port, payload=downlink.payload)

    def _publish_event(
        self,
        device: SimulatedDevice,
        kind: str,
        inner: dict[str, Any],
        downlink: QueuedDownlink,
        now: datetime,
    ) -> None:
        body = {
            "end_device_ids": device.ids_json(self.app_id),
            "correlation_ids": list(downlink.correlation_ids),
            "received_at": ttn_timestamp(now, self._ids_rng.randrange(1000)),
            f"downlink_{kind}": inner,
        }
        self._publish(device.device_id, f"down/{kind}", json.dumps(body, separators=(",", ":")))

    def _publish(self, device_id: str, suffix: str, body: bytes | str) -> None:
        kind = "up" if suffix == "up" else suffix.removeprefix("down/")
        client = self._client
        if client is None:
            self.published["publish_errors"] += 1
            log.warning("not connected: %s of %s not published", suffix, device_id)
            return
        info = client.publish(self.topic(device_id, suffix), body, qos=0)  # TTN publishes QoS 0
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.published["publish_errors"] += 1
            log.warning("could not publish %s of %s: %s", suffix, device_id, info.rc)
            return
        self.published[kind] += 1

    # --- downlinks from the application ---------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self.receive_downlink(message.topic, bytes(message.payload))
        except Exception:  # never let one message stop the network thread
            log.exception("downlink handling failed on %s", message.topic)

    def receive_downlink(self, topic: str, body: bytes | str) -> list[QueuedDownlink]:
        """Queue the downlinks of a `down/push` or `down/replace` message (replace clears the
        queue first) and publish `down/queued` for each; a malformed body is logged and
        ignored. Returns what was queued."""
        parts = topic.split("/")
        prefix = self.topic_prefix.split("/")
        if (
            len(parts) != len(prefix) + 3
            or parts[: len(prefix)] != prefix
            or parts[-2] != "down"
            or parts[-1] not in ("push", "replace")
        ):
            log.warning("ignored a message on %s: not a down/push or down/replace topic", topic)
            return []
        device_id, operation = parts[len(prefix)], parts[-1]
        device = self.devices.get(device_id)
        if device is None:
            with self._lock:
                self.published["unknown_device"] += 1
            log.warning("ignored a downlink for %s: no such simulated device", device_id)
            return []
        try:
            downlinks = parse_downlink_body(body)
        except DownlinkBodyError as exc:
            with self._lock:
                self.published["malformed"] += 1
            text = body if isinstance(body, str) else body[:200].decode("utf-8", "replace")
            log.warning(
                "ignored a malformed down/%s for %s: %s (body %.200r)",
                operation,
                device_id,
                exc,
                text,
            )
            return []
        now = datetime.now(UTC)
        with self._lock:
            if operation == "replace":
                device.queue.clear()
            for downlink in downlinks:
                downlink.correlation_ids.append(f"as:downlink:{ulid(now, self._ids_rng)}")
                device.queue.append(downlink)
                self._publish_event(device, "queued", downlink.to_json(), downlink, now)
        return downlinks


# --- The Things Stack's Storage Integration ------------------------------------------------

STORAGE_RETENTION_S = 24 * 3600.0  # the TTN sandbox keeps 24 h
STORAGE_MAX_UPLINKS = 100_000
STORAGE_DEFAULT_LIMIT = 1000
STORAGE_MAX_LIMIT = 100_000


class UplinkStorage:
    """The uplinks the simulated network received, as the Storage Integration keeps them."""

    def __init__(
        self, retention_s: float = STORAGE_RETENTION_S, max_uplinks: int = STORAGE_MAX_UPLINKS
    ) -> None:
        self.retention_s = retention_s
        self._uplinks: deque[tuple[datetime, str, bytes]] = deque(maxlen=max_uplinks)
        self._lock = threading.Lock()

    def add(self, received_at: datetime, body: bytes) -> None:
        """Keep one uplink message body (TTN v3 JSON) received at `received_at`."""
        device_id = json.loads(body)["end_device_ids"]["device_id"]
        with self._lock:
            self._uplinks.append((received_at, device_id, body))
            cutoff = received_at - timedelta(seconds=self.retention_s)
            while self._uplinks and self._uplinks[0][0] < cutoff:
                self._uplinks.popleft()

    def __len__(self) -> int:
        with self._lock:
            return len(self._uplinks)

    def query(
        self,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int = STORAGE_DEFAULT_LIMIT,
        device_id: str | None = None,
        f_port: int | None = None,
    ) -> list[bytes]:
        """Bodies received strictly after `after` (and before `before`), oldest first."""
        with self._lock:
            rows = sorted(self._uplinks, key=lambda row: row[0])
        out = []
        for at, device, body in rows:
            if after is not None and at <= after:
                continue
            if before is not None and at >= before:
                continue
            if device_id is not None and device != device_id:
                continue
            if f_port is not None and json.loads(body)["uplink_message"].get("f_port") != f_port:
                continue
            out.append(body)
            if len(out) >= limit:
                break
        return out


class StorageQueryError(ValueError):
    """A query parameter the Storage Integration would refuse."""


def _storage_time(name: str, raw: str) -> datetime:
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise StorageQueryError(f"{name} must be an RFC 3339 time, got {raw!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class StorageIntegrationServer:
    """The Storage Integration's HTTP API on loopback, for the uplinks of one simulator:

    GET /api/v3/as/applications/{app_id}/packages/storage/uplink_message?after=…&limit=…
    GET /api/v3/as/applications/{app_id}/devices/{device_id}/packages/storage/uplink_message
    Authorization: Bearer <API key>; Accept: text/event-stream
    -> 200, Content-Type text/event-stream, one {"result": <uplink JSON>} per line; 401 with a
    wrong or missing key; 400 on a bad `after` / `before` / `limit`; 404 for another application.
    """

    def __init__(
        self,
        storage: UplinkStorage,
        app_id: str,
        api_key: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.storage = storage
        self.app_id = app_id
        self.api_key = api_key
        self.requests: Counter[int] = Counter()  # answers by HTTP status
        handler = type("Handler", (_StorageHandler,), {"owner": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to configure as `storage_integration.url`."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StorageIntegrationServer:
        """Serve in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.server.serve_forever, name="thermal-storage-integration", daemon=True
            )
            self._thread.start()
            log.info("storage integration for %s on %s", self.app_id, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server.server_close()

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries the API key (constant-time comparison)."""
        if self.api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    def answer(self, path: str, query: dict[str, str], auth: str | None) -> tuple[int, bytes]:
        """(status, body) of one GET."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        device_id: str | None = None
        if parts[:4] != ["api", "v3", "as", "applications"] or parts[-3:] != [
            "packages",
            "storage",
            "uplink_message",
        ]:
            return 404, _storage_error(5, "no such route")
        middle = parts[4:-3]
        if len(middle) == 3 and middle[1] == "devices":
            device_id = middle[2]
        elif len(middle) != 1:
            return 404, _storage_error(5, "no such route")
        if not self.authorized(auth):
            return 401, _storage_error(16, "error:pkg/auth:unauthenticated (unauthenticated)")
        if middle[0] != self.app_id:
            return 404, _storage_error(5, f"application {middle[0]!r} not found")
        try:
            after = _storage_time("after", query["after"]) if "after" in query else None
            before = _storage_time("before", query["before"]) if "before" in query else None
            limit = int(query.get("limit", STORAGE_DEFAULT_LIMIT))
            f_port = int(query["f_port"]) if "f_port" in query else None
        except (StorageQueryError, ValueError) as exc:
            return 400, _storage_error(3, str(exc))
        if not 1 <= limit <= STORAGE_MAX_LIMIT:
            return 400, _storage_error(3, f"limit must be 1..{STORAGE_MAX_LIMIT}")
        rows = self.storage.query(after, before, limit, device_id, f_port)
        return 200, b"".join(b'{"result":' + body + b"}\n\n" for body in rows)


def _storage_error(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


class _StorageHandler(BaseHTTPRequestHandler):
    owner: StorageIntegrationServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, body = self.owner.answer(url.path, query, self.headers.get("Authorization"))
        self.owner.requests[status] += 1
        self.send_response(status)
        self.send_header(
            "Content-Type", "text/event-stream" if status == 200 else "application/json"
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("storage integration: %s", format % args)


# --- command line -------------------------------------------------------------------------


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m node_firmware.simulator`."""
    p = argparse.ArgumentParser(
        prog="python -m node_firmware.simulator",
        description="Simulated thermal nodes publishing like The Things Stack v3 over MQTT.",
    )
    p.add_argument("--config", help="conf.json (mqtt.host, port, tls, app_id, tenant)")
    p.add_argument("--credentials", help="credentials.json (mqtt.username, mqtt.password)")
    p.add_argument("--nodes", type=int, default=3, help="number of simulated nodes (default 3)")
    p.add_argument(
        "--interval",
        type=_positive,
        default=30.0,
        help="seconds between two uplinks of a node (default 30; e.g. 1.0 for a demo)",
    )
    p.add_argument(
        "--mode", choices=("slow", "fast", "compressed"), default="slow", help="initial mode"
    )
    p.add_argument(
        "--step",
        type=float,
        choices=(0.1, 0.2, 0.5, 1.0),
        default=0.1,
        help="compressed mode's quantisation step in °C (default 0.1: lossless)",
    )
    p.add_argument("--loss", type=_probability, default=0.0, help="uplink loss chance")
    p.add_argument("--duplicates", type=_probability, default=0.0, help="duplicate chance")
    p.add_argument("--reorder", type=_probability, default=0.0, help="reorder chance")
    p.add_argument("--nack", type=_probability, default=0.0, help="confirmed downlink nack chance")
    p.add_argument("--fail", type=_probability, default=0.0, help="downlink failure chance")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--host", help="MQTT host (overrides mqtt.host)")
    p.add_argument("--port", type=int, help="MQTT port (overrides mqtt.port)")
    p.add_argument("--app-id", help="TTN application id (overrides mqtt.app_id)")
    p.add_argument("--tenant", help="TTN tenant (overrides mqtt.tenant)")
    p.add_argument("--device-prefix", default="node", help="device ids are PREFIX1..PREFIXN")
    p.add_argument("--rounds", type=int, help="stop after this many uplinks per node")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default: the config's)")
    p.add_argument(
        "--storage-port",
        type=int,
        help="also serve the Storage Integration HTTP API on 127.0.0.1:PORT (0: any free "
        "port); the API key is storage_integration.api_key, else mqtt.password",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until Ctrl-C / SIGTERM (or `--rounds` uplinks per node)."""
    from bridge.config import ConfigError, load

    args = build_parser().parse_args(argv)
    try:
        config = load(args.config, args.credentials, os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=(args.log_level or config.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    mqtt_config = config.mqtt
    if args.nodes < 1:
        print("--nodes must be at least 1", file=sys.stderr)
        return 2
    simulator = Simulator(
        host=args.host or mqtt_config.host,
        port=args.port or mqtt_config.port,
        app_id=args.app_id or mqtt_config.app_id,
        tenant=args.tenant or mqtt_config.tenant,
        nodes=args.nodes,
        interval_s=args.interval,
        mode=args.mode,
        step=args.step,
        seed=args.seed,
        loss=args.loss,
        duplicates=args.duplicates,
        reorder=args.reorder,
        nack=args.nack,
        fail=args.fail,
        username=mqtt_config.effective_username,
        password=mqtt_config.password.value if mqtt_config.password else None,
        device_prefix=args.device_prefix,
        tls=mqtt_config.tls,
        ca_certs=mqtt_config.ca_certs,
    )
    storage_server: StorageIntegrationServer | None = None
    if args.storage_port is not None:
        key = config.storage_integration_api_key or mqtt_config.password
        storage_server = StorageIntegrationServer(
            simulator.storage, simulator.app_id, key.value if key else None, port=args.storage_port
        ).start()
        print(f"storage integration on {storage_server.url}", flush=True)
    with stop_on_signals() as stop:
        try:
            try:
                simulator.start(rounds=args.rounds)
            except ConnectionError as exc:
                print(str(exc), file=sys.stderr)
                return 1
            print(
                f"simulating {args.nodes} nodes on {simulator.host}:{simulator.port} "
                f"(v3/{simulator.app_id}@{simulator.tenant}/devices/...); Ctrl-C stops",
                flush=True,
            )
            while not stop.is_set() and not simulator.finished.wait(0.2):
                pass
        finally:
            simulator.stop()
            if storage_server is not None:
                storage_server.stop()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(simulator.published.items()))
    print(f"stopped; published: {counts or 'nothing'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
