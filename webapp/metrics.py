"""`GET /metrics`: the Prometheus text format (DESIGN.md "Operations"), with the REST API's read
permission. One registry per app (never prometheus_client's global one), read at scrape time."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from flask_socketio import SocketIO
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.metrics import BridgeCollector, StoreCollector, registry_for
from db.counts import tallies
from webapp.api import error_response
from webapp.auth import bearer, can_read

bp = Blueprint("metrics", __name__)


class SocketIOCollector(Collector):
    """Socket.IO clients connected to this process (each process answers for its own)."""

    def __init__(self, socketio: SocketIO) -> None:
        self.socketio = socketio

    def collect(self) -> Any:
        server = self.socketio.server
        clients = 0
        if server is not None:
            for _ in range(3):  # the rooms may change while counted: count again
                try:
                    clients = sum(1 for _ in server.manager.get_participants("/", None))
                    break
                except RuntimeError:
                    continue
        metric: Metric = GaugeMetricFamily(
            "thermal_socketio_clients", "Socket.IO clients connected to this process", clients
        )
        yield metric


def build_registry(app: Flask, socketio: SocketIO) -> CollectorRegistry:
    """The app's registry: its bridge (if it runs here), the database, its Socket.IO clients."""
    runtime = app.extensions["thermal"]

    def mqtt_connected() -> bool | None:
        return None if runtime.mqtt is None else runtime.mqtt.connected.is_set()

    return registry_for(
        BridgeCollector(lambda: runtime.bridge, mqtt_connected),
        StoreCollector(lambda: tallies(runtime.store.engine)),
        SocketIOCollector(socketio),
    )


@bp.get("/metrics")
def metrics() -> Response:
    """Every metric of this process in the Prometheus text format."""
    if not can_read(current_app.config["THERMAL"], bearer(request.headers.get("Authorization"))):
        response = error_response(
            401, "reading needs a bearer token (Authorization: Bearer <token>)"
        )
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    registry: CollectorRegistry = current_app.extensions["thermal_metrics"]
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
