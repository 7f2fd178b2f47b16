"""The push server (and the bridge) in processes of their own, as operators run them: what the
server tests (`tests/webapp/test_servers.py`) and the end-to-end benchmarks (`bench/`) start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.ttn_messages import APP_ID, TENANT

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60.0


def app_env(mqtt_host: str, mqtt_port: int, db_url: str, **extra: str) -> dict[str, str]:
    """The environment of a server process: broker, database, a fresh MQTT client id, and none
    of the caller's own THERMAL_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMAL_")}
    env.update(
        THERMAL_MQTT_HOST=mqtt_host,
        THERMAL_MQTT_PORT=str(mqtt_port),
        THERMAL_MQTT_APP_ID=APP_ID,
        THERMAL_MQTT_TENANT=TENANT,
        THERMAL_MQTT_CLIENT_ID=f"server-{uuid.uuid4().hex[:12]}",
        THERMAL_DATABASE_URL=db_url,
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def gunicorn_args(worker: str, port: int, connections: int = 2000) -> list[str]:
    """gunicorn with one worker: eventlet (`--worker-connections`) or gthread (threads)."""
    args = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}"]
    args += ["--graceful-timeout", "5", "--timeout", "120", "--backlog", "4096"]
    if worker == "eventlet":
        args += ["-k", "eventlet", "--worker-connections", str(connections)]
    else:
        args += ["-k", "gthread", "--threads", str(min(connections, 1200))]
    return [*args, "webapp:create_app()"]


class Server:
    """A server subprocess (on a port, if it serves HTTP) with its log; stop() at the end."""

    def __init__(self, args: list[str], env: dict[str, str], port: int | None, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        """Until /api/health answers and the bridge in it, if any, has its subscriptions
        confirmed ("connected" is set on SUBACK: an uplink published before could be missed)."""
        import requests

        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                health = requests.get(f"http://127.0.0.1:{self.port}/api/health", timeout=1)
                if health.ok and health.json().get("mqtt") != "disconnected":
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready:\n{self.log.read_text()[-3000:]}")

    @property
    def worker_pid(self) -> int:
        """The gunicorn worker's pid (the arbiter's only child), or the process itself."""
        import psutil

        children = psutil.Process(self.proc.pid).children()
        return children[0].pid if children else self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
