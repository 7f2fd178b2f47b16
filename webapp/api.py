"""REST API (DESIGN.md "REST"): JSON in and out; every error is `{"error": "..."}` with a 4xx/5xx."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from bridge import announcements as ann
from bridge.alarms import (
    KINDS,
    SEVERITIES,
    AlarmRuleError,
    merge_overrides,
    rules_dict,
    rules_with,
)
from bridge.config import Config
from bridge.downlinks import RateLimited
from bridge.ttn import format_time, parse_time
from db import retention
from db.alarms import MAX_NOTE_CHARS, AlarmFilter
from db.gridpack import unpack_grid
from db.store import PENDING_STATUSES, DeviceRecord, StorageUnavailable, Store
from imaging.heatmap import histogram
from webapp import heatmaps
from webapp.auth import bearer, can_read, can_write
from webapp.settings import SettingsError, parse_settings_request, settings_to_json

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

MAX_LIMIT = 1000
MAX_BINS = 200
MAX_ID = 2**63 - 1  # BIGINT
INTERVALS = {
    "past_minute": timedelta(minutes=1),
    "past_hour": timedelta(hours=1),
    "past_day": timedelta(days=1),
    "past_week": timedelta(days=7),
    "all_time": None,
}


class ApiError(Exception):
    """An error answered as `{"error": message}` with a status code (and headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The one shape of every API error."""
    response = jsonify({"error": message})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> NoReturn:
    """Abort the request with an API error."""
    raise ApiError(status, message, headers)


def retry_after(at: datetime) -> dict[str, str]:
    """The Retry-After header (RFC 9110 10.2.3: delay in seconds) for a time to retry at."""
    return {"Retry-After": str(max(1, math.ceil((at - datetime.now(UTC)).total_seconds())))}


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.headers)


@bp.errorhandler(StorageUnavailable)
def _storage_down(exc: StorageUnavailable) -> Response:
    return error_response(503, "the database is unavailable; try again shortly")


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response | HTTPException:
    if request.path.startswith("/api/") or request.path == "/request":
        messages = {
            404: "no such route",
            405: f"method {request.method} is not allowed here",
            413: f"the body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        response = error_response(
            exc.code or 500, messages.get(exc.code or 0, exc.description or "")
        )
        for name, value in exc.get_headers():  # e.g. the Allow of a 405 (RFC 9110 15.5.6)
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response
    return exc


@bp.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)  # type: ignore[return-value]
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(500, "internal error; it has been logged")


def security_headers(response: Response) -> Response:
    """Security headers and a CSP that needs no inline script (DESIGN.md, SECURITY.md)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    )
    return response


# --- helpers ------------------------------------------------------------------------------


def _config() -> Config:
    return current_app.config["THERMAL"]


def _store() -> Store:
    return current_app.extensions["thermal"].store


def _shown(value: str, limit: int = 40) -> str:
    """A client's value quoted in an error message, cut short: errors stay small."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"


def _token() -> str | None:
    return bearer(request.headers.get("Authorization"))


@bp.before_request
def _check_read_access() -> None:
    if request.method in ("GET", "HEAD") and not can_read(_config(), _token()):
        fail(401, "reading needs a bearer token (Authorization: Bearer <token>)")


def _require_write() -> None:
    config = _config()
    if not config.api_tokens:
        return
    token = _token()
    if token is None:
        fail(401, "this change needs a bearer token (Authorization: Bearer <token>)")
    if not can_write(config, token):
        fail(403, "the bearer token is not allowed to change settings")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        fail(400, f"{name} must be an integer from {low} to {high}, got {_shown(raw)}")
    if not low <= value <= high:
        fail(400, f"{name} must be from {low} to {high}, got {value}")
    return value


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_time(raw)
    except OverflowError:  # a valid time whose UTC equivalent is before year 1 or after 9999
        fail(
            400,
            f"{name} must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, "
            f"got {_shown(raw)}",
        )
    except ValueError:
        fail(
            400, f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z, got {_shown(raw)}"
        )


def _device_or_404(device_id: str) -> DeviceRecord:
    device = _store().device(device_id)
    if device is None:
        fail(404, f"unknown device {_shown(device_id)}")
    return device


def device_view(store: Store, device: DeviceRecord, frame: Any, alarms: list[Any]) -> dict:
    """A device with its latest state, frame, ambient reading and active alarms."""
    pending = [
        d for d in store.downlinks(device.device_id, limit=5) if d.status in PENDING_STATUSES
    ]
    view = ann.node_state(device, pending[0] if pending else None)
    reading = store.latest_ambient(device.device_id)
    view["latest_frame"] = ann.frame_meta(frame) if frame is not None else None
    view["ambient"] = (
        {"temperature": ann.one_decimal(reading.temperature), "at": format_time(reading.at)}
        if reading
        else None
    )
    view["alarms"] = [ann.alarm(a) for a in alarms if a.device_id == device.device_id]
    return view


def _csv_response(rows: list[list[Any]], filename: str) -> Response:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return Response(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


# --- routes -------------------------------------------------------------------------------


@bp.get("/api/health")
def health() -> tuple[Response, int]:
    """Database and MQTT state; 503 when the database is unreachable."""
    database_ok = _store().ping()
    body = {
        "status": "ok" if database_ok else "degraded",
        "database": "ok" if database_ok else "unreachable",
        "mqtt": current_app.extensions["thermal"].mqtt_state(),
    }
    return jsonify(body), 200 if database_ok else 503


@bp.get("/api/devices")
def list_devices() -> Response:
    """Every device with its latest state; ?order=temp_max&limit=N&interval=... for the hottest."""
    store = _store()
    order = request.args.get("order", "device_id")
    if order not in ("device_id", "temp_max", "last_seen"):
        fail(400, f"order must be device_id, temp_max or last_seen, got {_shown(order)}")
    limit = _int_arg("limit", MAX_LIMIT, 1, MAX_LIMIT)
    interval = request.args.get("interval", "all_time")
    if interval not in INTERVALS:
        fail(400, f"interval must be one of {', '.join(INTERVALS)}, got {_shown(interval)}")
    alarms = store.alarms(active=True, limit=MAX_LIMIT)
    if order == "temp_max":
        span = INTERVALS[interval]
        since = datetime.now(UTC) - span if span else None
        hottest = store.hottest_devices(since, limit)
        devices = {d.device_id: d for d in store.devices([d for d, _ in hottest])}
        frames = store.latest_frames(list(devices))
        out = []
        for device_id, temp in hottest:
            view = device_view(store, devices[device_id], frames.get(device_id), alarms)
            view["temp_max_in_interval"] = ann.one_decimal(temp)
            out.append(view)
        return jsonify({"devices": out, "interval": interval})
    devices_list = store.devices()
    if order == "last_seen":
        devices_list.sort(
            key=lambda d: d.last_seen or datetime.min.replace(tzinfo=UTC), reverse=True
        )
    frames = store.latest_frames()
    views = [device_view(store, d, frames.get(d.device_id), alarms) for d in devices_list[:limit]]
    return jsonify({"devices": views})


@bp.get("/api/devices/<device_id>")
def get_device(device_id: str) -> Response:
    """One device; 404 if unknown."""
    store = _store()
    device = _device_or_404(device_id)
    frame = store.latest_frames([device_id]).get(device_id)
    return jsonify(
        device_view(store, device, frame, store.alarms(active=True, device_id=device_id))
    )


@bp.get("/api/devices/<device_id>/frames")
def device_frames(device_id: str) -> Response:
    """Frame metadata, newest first; since, until, limit."""
    _device_or_404(device_id)
    since, until = _time_arg("since"), _time_arg("until")
    limit = _int_arg("limit", 100, 1, MAX_LIMIT)
    frames = _store().frames(device_id, since, until, limit)
    return jsonify({"device_id": device_id, "frames": [ann.frame_meta(f) for f in frames]})


def _frame_id_in_range(frame_id: int) -> None:
    # The id column is a signed 64-bit integer: a larger id is unknown, not a database error.
    if frame_id > MAX_ID:
        fail(404, f"unknown frame {frame_id}")


def _frame_or_404(frame_id: int) -> Any:
    _frame_id_in_range(frame_id)
    frame = _store().frame(frame_id)
    if frame is None:
        fail(404, f"unknown frame {frame_id}")
    return frame


def _grid(frame: Any) -> Any:
    data = _store().frame_grid(frame.frame_id)
    if data is None:
        fail(404, f"unknown frame {frame.frame_id}")
    return unpack_grid(data, frame.grid_rows, frame.grid_cols)


@bp.get("/api/frames/<int:frame_id>")
def get_frame(frame_id: int) -> Response:
    """Metadata and the temperature grid (null for no-data pixels)."""
    frame = _frame_or_404(frame_id)
    body = ann.frame_meta(frame)
    body["grid"] = [list(row) for row in _grid(frame)]
    return jsonify(body)


@bp.get("/api/frames/<int:frame_id>.png")
def frame_png(frame_id: int) -> Response:
    """The frame's heatmap, 640 × 480 (rendered from its grid and cached: webapp/heatmaps.py)."""
    frame = _frame_or_404(frame_id)
    png = heatmaps.frame_png(_store(), _config(), frame)
    if png is None:
        fail(404, f"unknown frame {frame_id}")
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "public, max-age=86400, immutable"
    return response


@bp.get("/api/frames/<int:frame_id>.csv")
def frame_csv(frame_id: int) -> Response:
    """The temperature grid as CSV (one row per sensor row; empty = no data)."""
    frame = _frame_or_404(frame_id)
    rows = [[_num(v) for v in row] for row in _grid(frame)]
    return _csv_response(rows, f"frame-{frame_id}.csv")


@bp.get("/api/frames/<int:frame_id>/histogram")
def frame_histogram(frame_id: int) -> Response:
    """Pixel temperature histogram; ?bins= (default 20)."""
    frame = _frame_or_404(frame_id)
    bins = _int_arg("bins", 20, 1, MAX_BINS)
    return jsonify({"frame_id": frame_id, "bins": histogram(_grid(frame), bins)})


@bp.get("/api/devices/<device_id>/frames.csv")
def device_frames_csv(device_id: str) -> Response:
    """One row per frame: time, mode, complete, min, max, mean, ambient, fan."""
    _device_or_404(device_id)
    since, until = _time_arg("since"), _time_arg("until")
    limit = _int_arg("limit", MAX_LIMIT, 1, 100_000)
    rows: list[list[Any]] = [
        [
            "captured_at",
            "mode",
            "complete",
            "coverage",
            "temp_min",
            "temp_max",
            "temp_mean",
            "ambient",
            "fan",
            "frame_id",
        ]
    ]
    for f in _store().frames(device_id, since, until, limit):
        rows.append(
            [
                format_time(f.first_received_at),
                f.mode,
                "true" if f.complete else "false",
                f"{f.coverage:.3f}",
                _num(f.temp_min),
                _num(f.temp_max),
                _num(f.temp_mean),
                _num(f.ambient),
                "on" if f.fan else "off",
                f.frame_id,
            ]
        )
    return _csv_response(rows, f"{device_id}-frames.csv")


@bp.get("/api/devices/<device_id>/ambient")
def device_ambient(device_id: str) -> Response:
    """Ambient temperature series, oldest first."""
    _device_or_404(device_id)
    since, until = _time_arg("since"), _time_arg("until")
    limit = _int_arg("limit", 500, 1, 10_000)
    series = _store().ambient_series(device_id, since, until, limit)
    return jsonify(
        {
            "device_id": device_id,
            "ambient": [
                {"temperature": ann.one_decimal(r.temperature), "at": format_time(r.at)}
                for r in series
            ],
        }
    )


def _stats(low: float | None, high: float | None, mean: float | None) -> dict[str, Any] | None:
    if low is None or high is None or mean is None:
        return None
    return {"min": ann.one_decimal(low), "max": ann.one_decimal(high), "mean": round(mean, 2)}


@bp.get("/api/devices/<device_id>/summaries")
def device_summaries(device_id: str) -> Response:
    """Hourly summaries, oldest first: what is left of frames past retention (db/retention.py)."""
    _device_or_404(device_id)
    since, until = _time_arg("since"), _time_arg("until")
    limit = _int_arg("limit", 1000, 1, 100_000)
    try:
        rows = retention.device_summaries(_store().engine, device_id, since, until, limit)
    except OperationalError as exc:  # the server cannot be reached: as the store says it
        raise StorageUnavailable(str(exc.orig)[:200]) from exc
    return jsonify(
        {
            "device_id": device_id,
            "summaries": [
                {
                    "hour": format_time(r.hour),
                    "frames": r.frames,
                    "temp_max": _stats(r.temp_max_min, r.temp_max_max, r.temp_max_mean),
                    "ambient": _stats(r.ambient_min, r.ambient_max, r.ambient_mean),
                }
                for r in rows
            ],
        }
    )


def _parsed_json() -> Any:
    """The JSON body, or None when it is not JSON; 400 when it nests too deeply to parse."""
    try:
        return request.get_json(silent=True)
    except RecursionError:  # e.g. 60 KiB of "[": json raises this, not a ValueError
        fail(400, "the body is nested too deeply")


def _json_body() -> Any:
    if not request.is_json:
        fail(415, "send the body as JSON with Content-Type: application/json")
    body = _parsed_json()
    if body is None:
        fail(400, "the body is not valid JSON")
    return body


@bp.post("/api/devices/<device_id>/settings")
def post_settings(device_id: str) -> tuple[Response, int]:
    """Queue a settings downlink: 202 with the downlink, 200 when nothing would change."""
    _require_write()
    body = _json_body()
    try:
        change = parse_settings_request(body)
    except SettingsError as exc:
        fail(400, str(exc))
    _device_or_404(device_id)
    runtime = current_app.extensions["thermal"]
    try:
        outcome = runtime.downlinks.request(device_id, change, datetime.now(UTC))
    except RateLimited as exc:
        fail(429, str(exc), retry_after(exc.retry_at))
    if outcome.downlink is None:
        return jsonify({"status": "unchanged", "settings": settings_to_json(outcome.settings)}), 200
    runtime.after_settings_request()
    return jsonify(
        {
            "status": "queued",
            "settings": settings_to_json(outcome.settings),
            "downlink": ann.downlink_view(outcome.downlink),
        }
    ), 202


@bp.get("/api/devices/<device_id>/downlinks")
def device_downlinks(device_id: str) -> Response:
    """Downlink requests with their status history, newest first."""
    _device_or_404(device_id)
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    records = _store().downlinks(device_id, limit)
    return jsonify({"device_id": device_id, "downlinks": [ann.downlink_view(r) for r in records]})


def _choice_arg(name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw not in allowed:
        choices = " or ".join(allowed) if len(allowed) == 2 else "one of " + ", ".join(allowed)
        fail(400, f"{name} must be {choices}, got {_shown(raw)}")
    return raw


@bp.get("/api/alarms")
def list_alarms() -> Response:
    """Alarms, newest first; filters active, device, kind, severity, since, until, limit."""
    active = _choice_arg("active", ("true", "false"))
    device_id = request.args.get("device", request.args.get("device_id"))
    for name in ("since", "until"):
        if request.args.get(name) == "":
            fail(400, f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z, not empty")
    since, until = _time_arg("since"), _time_arg("until")
    records = _store().alarms(
        filter=AlarmFilter(
            active=None if active is None else active == "true",
            device_id=device_id,
            kind=_choice_arg("kind", KINDS),
            severity=_choice_arg("severity", SEVERITIES),
            since=since,
            until=until,
            limit=_int_arg("limit", 100, 1, MAX_LIMIT),
        )
    )
    return jsonify({"alarms": [ann.alarm(a) for a in records]})


def _acked_by() -> str:
    """Who acknowledges: the name of the API token used. Tokens in credentials.json have no
    names yet (users and named tokens are a later issue), so "token" when a write token was
    given, else "anonymous" (no tokens configured: the open demo)."""
    config = _config()
    token = _token()
    return "token" if config.api_tokens and can_write(config, token) else "anonymous"


@bp.post("/api/alarms/<int:alarm_id>/ack")
def ack_alarm(alarm_id: int) -> Response:
    """Acknowledge an alarm, with an optional note; an acked alarm is returned unchanged."""
    _require_write()
    note: str | None = None
    if request.content_length or request.data:
        body = _json_body()
        if not isinstance(body, dict):
            fail(400, 'the body must be a JSON object such as {"note": "fan checked"}')
        unknown = sorted(set(body) - {"note"})
        if unknown:
            fail(400, f"unknown key {_shown(unknown[0])}; the only key is note")
        note = body.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
            fail(400, f"note must be a string of at most {MAX_NOTE_CHARS} characters")
    if alarm_id > MAX_ID:
        fail(404, f"unknown alarm {alarm_id}")
    record, acked_now = _store().ack_alarm(alarm_id, _acked_by(), note, datetime.now(UTC))
    if record is None:
        fail(404, f"unknown alarm {alarm_id}")
    payload = ann.alarm(record)
    if acked_now:
        current_app.extensions["thermal"].announce(
            "alarm", {**payload, "transition": "acked"}, record.device_id
        )
    return jsonify(payload)


def _overrides(device: DeviceRecord) -> dict[str, Any]:
    """A device's stored rule overrides (unusable ones are ignored, as the bridge does)."""
    if not device.alarm_rules:
        return {}
    try:
        stored = json.loads(device.alarm_rules)
        rules_with(_config().alarm_rules, stored)
    except (ValueError, TypeError, AttributeError, AlarmRuleError):
        return {}
    return dict(stored)


def _rules_view(device: DeviceRecord) -> dict[str, Any]:
    overrides = _overrides(device)
    rules = rules_with(_config().alarm_rules, overrides)
    return {
        "device_id": device.device_id,
        **rules_dict(rules),
        "threshold": ann.effective_threshold(device),
        "overridden": sorted(overrides),
    }


@bp.get("/api/devices/<device_id>/alarm-rules")
def get_alarm_rules(device_id: str) -> Response:
    """The alarm rules in effect for a device (the configured ones and its overrides)."""
    return jsonify(_rules_view(_device_or_404(device_id)))


@bp.put("/api/devices/<device_id>/alarm-rules")
def put_alarm_rules(device_id: str) -> Response:
    """Override some rules of a device; null resets a rule to the configured value."""
    _require_write()
    body = _json_body()
    if not isinstance(body, dict):
        fail(400, 'the body must be a JSON object of alarm rules, e.g. {"hysteresis_c": 3}')
    device = _device_or_404(device_id)
    update = dict(body)
    if "threshold" in update:
        fail(
            400,
            "threshold cannot be set here: it is the node's setting "
            "(POST /api/devices/<id>/settings)",
        )
    for key in ("device_id", "overridden"):
        if key in update:
            fail(400, f"{key} is read-only; send only alarm rules")
    try:
        merged = merge_overrides(_overrides(device), update)
    except AlarmRuleError as exc:
        fail(400, str(exc))
    _store().set_alarm_rules(device_id, json.dumps(merged) if merged else None)
    return jsonify(_rules_view(_device_or_404(device_id)))


@bp.post("/request")
def legacy_request() -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    """The original server's route: settings for the configured default node."""
    config = _config()
    if config.api_tokens and not can_write(config, _token()):
        return jsonify({"success": False, "msg": "a valid bearer token is required"}), 401
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if body is None:
        return jsonify({"success": False, "msg": "send a JSON body with fan, mode, threshold"}), 400
    device_id = config.default_device
    if not device_id:
        return jsonify(
            {"success": False, "msg": "no default_device is configured on the server"}
        ), 404
    if _store().device(device_id) is None:
        return jsonify({"success": False, "msg": f"unknown device {device_id!r}"}), 404
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k in ("fan", "mode", "threshold", "step")}
    try:
        change = parse_settings_request(body)
        runtime = current_app.extensions["thermal"]
        outcome = runtime.downlinks.request(device_id, change, datetime.now(UTC))
    except SettingsError as exc:
        return jsonify({"success": False, "msg": str(exc)}), 400
    except RateLimited as exc:
        return jsonify({"success": False, "msg": str(exc)}), 429, retry_after(exc.retry_at)
    if outcome.downlink is not None:
        runtime.after_settings_request()
    return jsonify({"success": True}), 200


@bp.get("/api/openapi.json")
def openapi() -> Response:
    """The OpenAPI document of these routes."""
    from webapp.openapi import document

    return jsonify(document())
