"""deploy/: the systemd units pass `systemd-analyze verify` and its offline security check, the
nginx site passes `nginx -t`, the Grafana dashboard asks only for metrics the services expose,
and the backup script's dump restores every table of a real MariaDB database row for row."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from bridge.metrics import BridgeCollector, StoreCollector, registry_for
from bridge.service import Bridge
from db.counts import tallies
from db.retention import RetentionPolicy, run
from db.store import make_engine
from tests.ttn_messages import BASE_TIME
from tests.webapp.fixtures import Feeder, make_app, make_config
from webapp import socketio
from webapp.metrics import SocketIOCollector

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = ("thermal-web.service", "thermal-bridge.service")
INSTALLED = "/opt/thermal-bridge/.venv/bin/"


def tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def units_here(tmp_path: Path) -> list[Path]:
    """The units with this checkout's interpreter and gunicorn where the install has them
    (verify checks that ExecStart's program exists)."""
    here = str(Path(sys.executable).parent) + "/"
    out = []
    for name in UNITS:
        unit = tmp_path / name
        unit.write_text((DEPLOY / "systemd" / name).read_text().replace(INSTALLED, here))
        out.append(unit)
    return out


@pytest.mark.skipif(
    tool("systemd-analyze") is None,
    reason="systemd-analyze is not installed (scripts/ensure-services.sh installs systemd)",
)
def test_systemd_units_verify_cleanly_and_are_hardened(tmp_path: Path) -> None:
    units = units_here(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on a directive it cannot parse (it ignores it): any output is a failure.
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), (
        verify.stdout + verify.stderr
    )
    for unit in units:
        body = unit.read_text()
        for line in ("User=thermal", "ProtectSystem=strict", "Restart=on-failure"):
            assert re.search(rf"^{re.escape(line)}$", body, re.MULTILINE), (unit.name, line)
        # Exposure 0-10 as systemd rates it: at most 2.5 ("OK"); a unit without the hardening
        # block rates 9.6 ("UNSAFE").
        security = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert security.returncode == 0, security.stdout[-2000:] + security.stderr


@pytest.mark.skipif(
    tool("nginx") is None,
    reason="nginx is not installed (scripts/ensure-services.sh installs nginx-light)",
)
def test_nginx_site_passes_nginx_t_and_forwards_websockets(tmp_path: Path) -> None:
    site = (DEPLOY / "nginx" / "thermal-bridge.conf").read_text()
    socket_io = site.split("location /socket.io/", 1)[1].split("}", 1)[0]
    assert "proxy_set_header Upgrade $http_upgrade;" in socket_io
    assert "proxy_http_version 1.1;" in socket_io
    assert "ssl_certificate " in site and "listen 443 ssl" in site
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=thermal.example.org", "-keyout", str(tmp_path / "key.pem")),
            *("-out", str(tmp_path / "cert.pem")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    site = site.replace(
        "/etc/letsencrypt/live/thermal.example.org/fullchain.pem", str(tmp_path / "cert.pem")
    ).replace("/etc/letsencrypt/live/thermal.example.org/privkey.pem", str(tmp_path / "key.pem"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n"
        f"  include {tmp_path}/site.conf;\n}}\n"
    )
    checked = subprocess.run(
        [tool("nginx") or "nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "[warn]" not in checked.stderr


def test_grafana_dashboard_asks_only_for_metrics_the_services_expose(sqlite_url: str) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "thermal-bridge.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {n for e in exprs for n in re.findall(r"\b((?:thermal|process)_[a-z_]+)\b", e)}
    design = {
        "thermal_uplinks_total",
        "thermal_frames_total",
        "thermal_downlinks_total",
        "thermal_alarms_active",
        "thermal_notifications_total",
        "thermal_mqtt_connected",
        "thermal_ingest_seconds_bucket",
        "thermal_socketio_clients",
    }
    assert design <= wanted, "every metric of DESIGN.md has a panel"
    for app in make_app(make_config(sqlite_url)):
        runtime = app.extensions["thermal"]
        bridge = Bridge(runtime.config, runtime.store, runtime.announce)
        Feeder(app).frame("node1", hot=40.0)
        engine = runtime.store.engine
        registry = registry_for(
            BridgeCollector(lambda b=bridge: b, lambda: True),
            StoreCollector(lambda e=engine: tallies(e)),
            SocketIOCollector(socketio),
        )
        exposed = {
            sample.name
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples
        }
    assert wanted <= exposed, wanted - exposed


def table_state(url: str) -> dict[str, tuple[int, Any]]:
    """Rows and CHECKSUM TABLE of every table of the database."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for name in inspect(conn).get_table_names():
                rows = conn.execute(text(f"SELECT COUNT(*) FROM `{name}`")).scalar()
                checksum = conn.execute(text(f"CHECKSUM TABLE `{name}`")).one()[1]
                out[name] = (int(rows or 0), checksum)
            return out
    finally:
        engine.dispose()


def test_backup_then_drop_then_restore_gives_back_every_row(
    mysql_url: str, mariadb_server: Any, tmp_path: Path
) -> None:
    for app in make_app(make_config(mysql_url)):
        feeder = Feeder(app)
        feeder.status("node1")
        feeder.frame("node1", hot=71.5, number=1)  # over the threshold: an alarm
        feeder.frame("node2", hot=38.0, number=1, skip=(3,))
        assert (
            app.test_client().post("/api/devices/node1/settings", json={"fan": "on"}).status_code
            == 202
        )
        # Summaries written (the feeder's uplinks are of BASE_TIME: nothing past retention).
        run(
            app.extensions["thermal"].store.engine, RetentionPolicy(), BASE_TIME + timedelta(days=1)
        )
    before = table_state(mysql_url)
    assert {"frames", "uplinks", "downlinks", "alarms", "frame_summaries"} <= before.keys()
    assert all(
        before[t][0] > 0 for t in ("frames", "uplinks", "downlinks", "alarms", "frame_summaries")
    )
    url = make_url(mysql_url)
    options = tmp_path / "backup.cnf"
    options.write_text(f"[client]\nhost={url.host}\nport={url.port}\nuser={url.username}\n")
    options.chmod(0o600)
    env = {
        **os.environ,
        "THERMAL_BACKUP_DEFAULTS": str(options),
        "THERMAL_BACKUP_DATABASE": str(url.database),
    }
    script = str(DEPLOY / "backup.sh")
    made = subprocess.run(
        [script, "backup", str(tmp_path / "dumps")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    dump = Path(made.stdout.strip())
    assert dump.is_file() and dump.name.endswith(".sql.gz")
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600, "the dump is its owner's only"

    with mariadb_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{url.database}`")
    restored = subprocess.run(
        [script, "restore", str(dump)], env=env, capture_output=True, text=True, timeout=300
    )
    assert restored.returncode == 0, restored.stderr
    assert table_state(mysql_url) == before
