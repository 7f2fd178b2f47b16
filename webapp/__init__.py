"""The push server, REST API and dashboard: `create_app()` builds the Flask app.

Run it with `python -m webapp` (threading mode), `gunicorn -k eventlet -w 1 "webapp:create_app()"`
or `gunicorn -k gthread --threads 50 -w 1 "webapp:create_app()"`. The code does not depend on
the async mode: it is chosen from how the process was started.
"""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask
from flask_socketio import SocketIO

from bridge import config as config_mod
from bridge.config import Config

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024

socketio = SocketIO()


def detect_async_mode() -> str:
    """eventlet when the process is monkey-patched by eventlet (gunicorn -k eventlet), else threading."""
    forced = os.environ.get("THERMAL_ASYNC_MODE")
    if forced:
        return forced
    if "eventlet" in sys.modules:  # never import eventlet just to ask (it warns it is deprecated)
        from eventlet import patcher

        if patcher.is_monkey_patched("socket"):
            return "eventlet"
    return "threading"


def create_app(config: Config | None = None, *, start_bridge: bool | None = None) -> Flask:
    """Build the app; with the bridge running in this process unless told otherwise."""
    from webapp.delivery import Delivery
    from webapp.runtime import Runtime

    if config is None:
        config = config_mod.load(
            os.environ.get("THERMAL_CONFIG"), os.environ.get("THERMAL_CREDENTIALS")
        )
    app = Flask(__name__)
    app.config.update(
        THERMAL=config,
        THERMAL_TOKENS_REQUIRED=config.tokens_required(),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
    )
    async_mode = detect_async_mode()
    # Without a queue, say so: Flask-SocketIO would otherwise keep the queue manager an earlier
    # create_app of this process left in the module-level SocketIO's options.
    no_queue: dict[str, None] = {} if config.message_queue else {"client_manager": None}
    socketio.init_app(
        app,
        async_mode=async_mode,
        message_queue=config.message_queue,
        **no_queue,
        cors_allowed_origins=None,  # engineio: same origin only (clients without Origin pass)
        max_http_buffer_size=MAX_BODY_BYTES,
        ping_interval=20,
        ping_timeout=20,
    )
    app.extensions["delivery"] = Delivery.install(socketio.server)
    runtime = Runtime(config, socketio)
    app.extensions["thermal"] = runtime

    from webapp import api, dashboard, push

    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    push.register(socketio)
    app.after_request(api.security_headers)

    run_bridge = config.run_bridge if start_bridge is None else start_bridge
    if run_bridge:
        runtime.start_bridge()
    log.info("webapp ready (async mode %s, bridge %s)", async_mode, "on" if run_bridge else "off")
    return app
