"""Prometheus metrics (DESIGN.md "Operations") read from what the bridge and the database already
hold: ingest gains no work but one histogram bucket per uplink.

Collectors, not live prometheus_client counters: `Bridge.metrics` (a Counter of what committed
transactions did) and the database are the truth, read at scrape time. The webapp serves them at
`GET /metrics` (webapp/metrics.py); `python -m bridge` serves them on its own port
(`metrics.host`, `metrics.port`), see `serve`.
"""

from __future__ import annotations

import hmac
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridge.config import Config

log = logging.getLogger(__name__)

# received_at -> committed: a batch commits in milliseconds, a backlog or backfill in minutes.
INGEST_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

ALARM_KINDS = ("over_threshold", "non_uniform", "rate_of_rise", "offline")
DOWNLINK_STATUSES = ("queued", "sent", "acked", "nacked", "failed", "applied", "superseded")
NOTIFICATION_STATUSES = ("pending", "sent", "failed")
FRAME_MODES = ("slow", "fast", "compressed")


class LatencyHistogram:
    """Per-bucket counts of durations: `observe` is one bisect and two additions.

    Written by the one thread that commits (the bridge's worker, under its lock), read by a
    scrape; a scrape may see a sum a few observations apart from the counts, never less.
    """

    def __init__(self, bounds_s: Iterable[float] = INGEST_BUCKETS_S) -> None:
        self.bounds_s = tuple(bounds_s)
        self.counts = [0] * (len(self.bounds_s) + 1)  # the last one is +Inf
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration (negative, from a clock skew with the network, counts as 0)."""
        seconds = max(seconds, 0.0)
        self.counts[bisect_left(self.bounds_s, seconds)] += 1
        self.sum_s += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram as a Prometheus family (cumulative buckets)."""
        counts = list(self.counts)
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds_s, float("inf")), counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum_s)


def uplink_results(counts: Mapping[str, int]) -> dict[str, int]:
    """thermal_uplinks_total's `result` label from the bridge's counter keys."""
    invalid_payloads = counts.get("invalid_payloads", 0)
    return {
        "stored": counts.get("uplinks", 0) - invalid_payloads,
        "invalid_payload": invalid_payloads,  # logged with its error, not decoded
        "duplicate": counts.get("duplicate_uplinks", 0),
        "invalid_message": counts.get("invalid_messages", 0),  # not a usable TTN message
        "failed": counts.get("failed_messages", 0),
        "lost": counts.get("lost_uplinks", 0),  # f_cnt gaps: never received
    }


class BridgeCollector(Collector):
    """The counters of one Bridge in this process and its MQTT connection state.

    `bridge` is a callable so that a webapp whose bridge starts after the registry was built,
    or never starts, reports what it has: no bridge, no bridge metrics."""

    def __init__(
        self, bridge: Callable[[], Any], mqtt_connected: Callable[[], bool | None]
    ) -> None:
        self._bridge = bridge
        self._mqtt_connected = mqtt_connected

    def collect(self) -> Iterator[Metric]:
        bridge = self._bridge()
        if bridge is None:
            return
        counts, latency = bridge.metrics_snapshot()
        uplinks = CounterMetricFamily(
            "thermal_uplinks", "Uplinks handled by the bridge, by result", labels=["result"]
        )
        for result, value in uplink_results(counts).items():
            uplinks.add_metric([result], value)
        yield uplinks
        frames = CounterMetricFamily(
            "thermal_frames",
            "Frames stored (re-stored when a late fragment arrived), by mode and completeness",
            labels=["mode", "complete"],
        )
        for mode in FRAME_MODES:
            for complete in ("true", "false"):
                frames.add_metric([mode, complete], counts.get(f"frames:{mode}:{complete}", 0))
        yield frames
        yield latency.family(
            "thermal_ingest_seconds", "Time from an uplink's received_at to its commit"
        )
        connected = self._mqtt_connected()
        if connected is not None:
            yield GaugeMetricFamily(
                "thermal_mqtt_connected",
                "1 while the bridge's MQTT session is up",
                value=1 if connected else 0,
            )


class StoreCollector(Collector):
    """What the database holds, the same from every process: active alarms, downlink status
    changes, notifications; and whether the database answers."""

    def __init__(self, read: Callable[[], dict[str, dict[str, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            tallies = self._read()
        except Exception as exc:  # the database is down: say so rather than fail the scrape
            log.warning("metrics: the database did not answer: %s", type(exc).__name__)
            yield GaugeMetricFamily("thermal_database_up", "1 when the database answers", 0)
            return
        yield GaugeMetricFamily("thermal_database_up", "1 when the database answers", 1)
        alarms = GaugeMetricFamily(
            "thermal_alarms_active", "Alarms active now, by kind", labels=["kind"]
        )
        for kind in sorted({*ALARM_KINDS, *tallies["alarms_active"]}):
            alarms.add_metric([kind], tallies["alarms_active"].get(kind, 0))
        yield alarms
        downlinks = CounterMetricFamily(
            "thermal_downlinks",
            "Downlink status changes recorded, by the status reached",
            labels=["status"],
        )
        for status in sorted({*DOWNLINK_STATUSES, *tallies["downlinks"]}):
            downlinks.add_metric([status], tallies["downlinks"].get(status, 0))
        yield downlinks
        notifications = CounterMetricFamily(
            "thermal_notifications", "Alarm notifications, by status", labels=["status"]
        )
        found = tallies.get("notifications", {})
        for status in sorted({*NOTIFICATION_STATUSES, *found}):
            notifications.add_metric([status], found.get(status, 0))
        yield notifications


def reads_allowed(config: Config, authorization: str | None) -> bool:
    """The REST API's read rule (webapp.auth.can_read) for the bridge's own metrics port:
    open when reads are open or no token is configured, else a read or write bearer token."""
    if config.reads_open or not (config.api_tokens or config.read_tokens):
        return True
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    given = value.strip().encode()
    found = False
    for secret in (*config.api_tokens, *config.read_tokens):
        found |= hmac.compare_digest(given, secret.value.encode())  # no early exit
    return found


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


def serve(config: Config, registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve `registry` at http://host:port/metrics in a daemon thread (the bridge's own port)."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not reads_allowed(config, environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "application/json"), ("WWW-Authenticate", "Bearer")],
            )
            return [b'{"error": "reading needs a bearer token (Authorization: Bearer <token>)"}']
        answer: Iterable[bytes] = metrics_app(environ, start_response)
        return answer

    server = make_server(host, port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def registry_for(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own (never prometheus_client's global one: one per app or process)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes
    for collector in collectors:
        registry.register(collector)
    return registry
