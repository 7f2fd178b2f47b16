"""The OpenAPI 3.1 document of the REST API (served at /api/openapi.json, checked by a test)."""

from __future__ import annotations

from typing import Any

from bridge.alarms import KINDS, RULE_RANGES, SEVERITIES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad input; the message names the field",
        401: "a bearer token is needed",
        403: "the token may not do this",
        404: "unknown device, frame or alarm",
        413: "body too large",
        415: "the body must be JSON",
        429: "too many settings changes for this device today",
        503: "the database is unavailable",
    }
    return {
        str(c): _retry_after(_json(_ERROR, text[c])) if c == 429 else _json(_ERROR, text[c])
        for c in codes
    }


def _retry_after(response: dict[str, Any]) -> dict[str, Any]:
    """A 429 says when to retry: Retry-After, in seconds (RFC 9110 10.2.3)."""
    header = {
        "description": "seconds until a request may succeed",
        "schema": {"type": "integer", "minimum": 1},
    }
    return {**response, "headers": {"Retry-After": header}}


def _param(name: str, kind: str, where: str = "query", **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": {"type": kind, **schema},
    }


DEVICE_ID = _param("device_id", "string", "path", maxLength=64)
FRAME_ID = _param("frame_id", "integer", "path", minimum=1)
SINCE = _param("since", "string", format="date-time")
UNTIL = _param("until", "string", format="date-time")


def _limit(default: int, maximum: int) -> dict[str, Any]:
    return _param("limit", "integer", minimum=1, maximum=maximum, default=default)


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    obj = {"type": "object"}
    settings_body = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "fan": {"type": "string", "enum": ["on", "off"]},
            "mode": {"type": "string", "enum": ["slow", "fast", "compressed"]},
            "threshold": {"type": "integer", "minimum": -40, "maximum": 150},
            "step": {"type": "number", "enum": [0.1, 0.2, 0.5, 1.0]},
        },
    }
    rules_body = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **{
                key: {
                    "type": ["integer" if integer else "number", "null"],
                    "minimum": low,
                    "maximum": high,
                }
                for key, (integer, low, high) in RULE_RANGES.items()
            },
        },
    }
    paths: dict[str, Any] = {
        "/api/health": {
            "get": {
                "summary": "Database and MQTT state",
                "responses": {"200": _json(obj, "healthy"), **_errors(503)},
            }
        },
        "/api/devices": {
            "get": {
                "summary": "Every device with its latest state, or the hottest over an interval",
                "parameters": [
                    _param("order", "string", enum=["device_id", "temp_max", "last_seen"]),
                    _limit(1000, 1000),
                    _param(
                        "interval",
                        "string",
                        enum=["past_minute", "past_hour", "past_day", "past_week", "all_time"],
                    ),
                ],
                "responses": {"200": _json(obj, "devices"), **_errors(400, 401, 503)},
            }
        },
        "/api/devices/{device_id}": {
            "get": {
                "summary": "One device",
                "parameters": [DEVICE_ID],
                "responses": {"200": _json(obj, "the device"), **_errors(401, 404, 503)},
            }
        },
        "/api/devices/{device_id}/frames": {
            "get": {
                "summary": "Frame metadata, newest first",
                "parameters": [DEVICE_ID, SINCE, UNTIL, _limit(100, 1000)],
                "responses": {"200": _json(obj, "frames"), **_errors(400, 401, 404, 503)},
            }
        },
        "/api/devices/{device_id}/frames.csv": {
            "get": {
                "summary": "One CSV row per frame",
                "parameters": [DEVICE_ID, SINCE, UNTIL, _limit(1000, 100000)],
                "responses": {
                    "200": {"description": "CSV", "content": {"text/csv": {}}},
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/api/devices/{device_id}/ambient": {
            "get": {
                "summary": "Ambient temperature series",
                "parameters": [DEVICE_ID, SINCE, UNTIL, _limit(500, 10000)],
                "responses": {"200": _json(obj, "readings"), **_errors(400, 401, 404, 503)},
            }
        },
        "/api/devices/{device_id}/summaries": {
            "get": {
                "summary": "Hourly summaries (frames, min/max/mean of temp_max and ambient)",
                "parameters": [DEVICE_ID, SINCE, UNTIL, _limit(1000, 100000)],
                "responses": {"200": _json(obj, "summaries"), **_errors(400, 401, 404, 503)},
            }
        },
        "/api/devices/{device_id}/settings": {
            "post": {
                "summary": "Queue a settings downlink (fan, mode, threshold; any subset)",
                "parameters": [DEVICE_ID],
                "security": [{"bearer": []}, {}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": settings_body}},
                },
                "responses": {
                    "200": _json(obj, "nothing would change"),
                    "202": _json(obj, "the queued downlink"),
                    **_errors(400, 401, 403, 404, 413, 415, 429, 503),
                },
            }
        },
        "/api/devices/{device_id}/downlinks": {
            "get": {
                "summary": "Downlink requests and their status history",
                "parameters": [DEVICE_ID, _limit(50, 1000)],
                "responses": {"200": _json(obj, "downlinks"), **_errors(400, 401, 404, 503)},
            }
        },
        "/api/frames/{frame_id}": {
            "get": {
                "summary": "Frame metadata and its temperature grid (null = no data)",
                "parameters": [FRAME_ID],
                "responses": {"200": _json(obj, "the frame"), **_errors(401, 404, 503)},
            }
        },
        "/api/frames/{frame_id}.png": {
            "get": {
                "summary": "The stored heatmap",
                "parameters": [FRAME_ID],
                "responses": {
                    "200": {"description": "PNG", "content": {"image/png": {}}},
                    **_errors(401, 404, 503),
                },
            }
        },
        "/api/frames/{frame_id}.csv": {
            "get": {
                "summary": "The temperature grid as CSV",
                "parameters": [FRAME_ID],
                "responses": {
                    "200": {"description": "CSV", "content": {"text/csv": {}}},
                    **_errors(401, 404, 503),
                },
            }
        },
        "/api/frames/{frame_id}/histogram": {
            "get": {
                "summary": "Pixel temperature histogram",
                "parameters": [FRAME_ID, _param("bins", "integer", minimum=1, maximum=200)],
                "responses": {"200": _json(obj, "bins"), **_errors(400, 401, 404, 503)},
            }
        },
        "/api/alarms": {
            "get": {
                "summary": "Alarms, newest first, with filters",
                "parameters": [
                    _param("active", "string", enum=["true", "false"]),
                    _param("device", "string"),
                    _param("device_id", "string"),
                    _param("kind", "string", enum=list(KINDS)),
                    _param("severity", "string", enum=list(SEVERITIES)),
                    SINCE,
                    UNTIL,
                    _limit(100, 1000),
                ],
                "responses": {"200": _json(obj, "alarms"), **_errors(400, 401, 503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of this process (text exposition format)",
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {}}},
                    **_errors(401),
                },
            }
        },
        "/api/alarms/{alarm_id}/ack": {
            "post": {
                "summary": "Acknowledge an alarm, with an optional note",
                "parameters": [_param("alarm_id", "integer", "path", minimum=1)],
                "security": [{"bearer": []}, {}],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "note": {"type": ["string", "null"], "maxLength": 500}
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(obj, "the alarm"),
                    **_errors(400, 401, 403, 404, 413, 415, 503),
                },
            }
        },
        "/api/devices/{device_id}/alarm-rules": {
            "get": {
                "summary": "The alarm rules in effect for a device",
                "parameters": [DEVICE_ID],
                "responses": {"200": _json(obj, "rules"), **_errors(401, 404, 503)},
            },
            "put": {
                "summary": "Override some alarm rules of a device (null resets one)",
                "parameters": [DEVICE_ID],
                "security": [{"bearer": []}, {}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": rules_body}},
                },
                "responses": {
                    "200": _json(obj, "the rules in effect"),
                    **_errors(400, 401, 403, 404, 413, 415, 503),
                },
            },
        },
        "/api/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json(obj, "OpenAPI")}}
        },
        "/request": {
            "post": {
                "summary": "The original server's route: settings for the default node",
                "requestBody": {
                    "required": True,
                    # The old clients' route ignores keys it does not know.
                    "content": {
                        "application/json": {
                            "schema": {**settings_body, "additionalProperties": True}
                        }
                    },
                },
                "responses": {
                    "200": _json(obj, '{"success": true}'),
                    "400": _json(obj, '{"success": false, "msg": "..."}'),
                    "401": _json(obj, '{"success": false, "msg": "..."}'),
                    "404": _json(obj, '{"success": false, "msg": "..."}'),
                    "429": _retry_after(_json(obj, '{"success": false, "msg": "..."}')),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "LoRa/TTN thermal bridge", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
