"""The mobile dashboard (issue 4): a fleet page and a node page, static shells fed by the API.

The pages hold no data: the browser reads the REST API and subscribes to the Socket.IO push
(DESIGN.md "Push side", "REST"). So a page never touches the database, renders the same whether
the database is up or not, and the page of a device that has not uplinked yet is a 200 that says
"no data yet" and fills in live when the device first appears. The CSP of `api.security_headers`
allows no inline script or style: everything comes from `/static`.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template

from bridge.config import Config

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

# The database's device_id column is 64 characters (db/schema.py); TTN's ids are at most 36.
MAX_DEVICE_ID_CHARS = 64


def _page_context() -> dict[str, bool]:
    config: Config = current_app.config["THERMAL"]
    return {
        # Sockets and writes need the token; reads need it too unless they are left open.
        "tokens_required": bool(current_app.config["THERMAL_TOKENS_REQUIRED"]),
        "reads_open": config.reads_open or not (config.api_tokens or config.read_tokens),
    }


@bp.get("/")
def fleet() -> str:
    """Every node with its latest heatmap, hottest pixel, online state, fan, mode and alarms."""
    return render_template("fleet.html", **_page_context())


@bp.get("/alarms")
def alarms() -> str:
    """Alarm history with filters; acknowledge with a note; who acknowledged."""
    return render_template("alarms.html", **_page_context())


@bp.get("/devices/<device_id>")
def node(device_id: str) -> str:
    """One node live: heatmap, statistics, settings form, history, charts, CSV links."""
    if not device_id or len(device_id) > MAX_DEVICE_ID_CHARS:
        abort(404)
    return render_template("node.html", device_id=device_id, **_page_context())
