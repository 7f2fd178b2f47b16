"""Throw-away MariaDB, Mosquitto and Redis servers for the test suite.

Each one runs from the distribution's binaries on a free loopback port with a private temp
directory, so it never touches the system services (3306 / 1883 / 6379) nor another test run.
`stop()` is graceful, `kill()` is a crash (SIGKILL), `restart()` comes back on the same port with
the same data directory. Every process still running when the interpreter exits is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

HOST = "127.0.0.1"
SYSTEM_PORTS = frozenset({1883, 3306, 6379})  # the machine's own services: never ours
BINARY_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.05
LOG_TAIL_CHARS = 3000
DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class ServiceUnavailable(Exception):
    """A service's binary is missing or the service did not come up."""


class PortInUse(ServiceUnavailable):
    """Another process listens on the port a service must use."""


def find_binary(*names: str) -> str:
    """The first of `names` on PATH or in the sbin/bin directories; ServiceUnavailable if none."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in BINARY_DIRS:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ServiceUnavailable(
        f"{' / '.join(names)} not found on PATH nor in {', '.join(BINARY_DIRS)}; "
        "scripts/ensure-services.sh installs it"
    )


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on now (and not one of the system services')."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in SYSTEM_PORTS and port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ServiceUnavailable("no free loopback port found")


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The end of a log file, or a note that there is none."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return f"({path} does not exist)"


def is_root() -> bool:
    """Whether we run as root (the servers then need to be told to stay root)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


_running: set[Service] = set()
_owned_dirs: set[Path] = set()
_running_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    with _running_lock:
        leftovers = list(_running)
    for service in leftovers:
        with contextlib.suppress(Exception):
            service.kill()
    for directory in list(_owned_dirs):
        shutil.rmtree(directory, ignore_errors=True)


class Service:
    """One server process on a fixed loopback port with its own directory."""

    name = "service"
    stop_signal = signal.SIGTERM

    def __init__(self, base_dir: Path | str | None = None, port: int | None = None) -> None:
        self._owns_dir = base_dir is None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix=f"thermal-{self.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._owns_dir:
            _owned_dirs.add(self.dir)
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.host = HOST
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0
        self.boot_times_s: list[float] = []
        self.prepare_s = 0.0  # one-time set-up before the first boot (MariaDB's install-db)
        self._lock = threading.RLock()
        self._prepared = False

    # What each service defines.

    def _prepare(self) -> None:
        """One-time set-up of the directory before the first boot."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _before_boot(self) -> None:
        """Note what `_ready` needs to tell this boot from an earlier one."""

    def _ready(self) -> bool:
        """Whether this very process answers (called repeatedly while it boots)."""
        raise NotImplementedError

    def _after_first_boot(self) -> None:
        """Work done once the service first answers (e.g. create a database)."""

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.out"

    @property
    def url(self) -> str:
        raise NotImplementedError

    # The common life cycle.

    @property
    def last_boot_s(self) -> float | None:
        """How long the latest boot took until the service answered."""
        return self.boot_times_s[-1] if self.boot_times_s else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        """Boot the server (a no-op if it runs) and wait until it answers."""
        with self._lock:
            if self.running:
                return self
            if not self._prepared:
                began = time.monotonic()
                self._prepare()
                self.prepare_s = time.monotonic() - began
                self._prepared = True
            # Only the very first boot may move to another port (if ours was taken meanwhile);
            # a restart must come back where clients expect it.
            attempts = 3 if self.boots == 0 and not self._fixed_port else 1
            for attempt in range(attempts):
                try:
                    self._boot()
                    break
                except ServiceUnavailable as exc:
                    taken = isinstance(exc, PortInUse) or self._port_taken()
                    if attempt == attempts - 1 or not taken:
                        raise
                    self.port = free_port()
            if self.boots == 1:
                self._after_first_boot()
            return self

    def _boot(self) -> None:
        began = time.monotonic()
        # Whoever else answers there would pass for us in the readiness check.
        if self._tcp_accepts():
            raise PortInUse(f"{self.name}: port {self.host}:{self.port} is already in use")
        self._before_boot()
        out = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServiceUnavailable(f"{self.name} could not be started: {exc}") from exc
        finally:
            out.close()
        with _running_lock:
            _running.add(self)
        deadline = began + BOOT_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._forget()
                raise ServiceUnavailable(
                    f"{self.name} exited with status {code} while booting on port {self.port}:\n"
                    f"{self.diagnostics()}"
                )
            try:
                if self._ready():
                    break
            except PortInUse:
                self.kill()
                raise
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceUnavailable(
                    f"{self.name} did not answer on {self.host}:{self.port} within "
                    f"{BOOT_TIMEOUT_S:.0f} s:\n{self.diagnostics()}"
                )
            time.sleep(POLL_S)
        self.boots += 1
        self.boot_times_s.append(time.monotonic() - began)

    def _port_taken(self) -> bool:
        return "already in use" in self.diagnostics().lower()

    def diagnostics(self) -> str:
        """The tail of what the server logged, for error messages."""
        return tail(self.log_path)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut the server down gracefully and wait for it (SIGKILL if it takes too long)."""
        with self._lock:
            if self.proc is None:
                return
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(self.stop_signal)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(10)
            self._forget()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and reap it."""
        with self._lock:
            if self.proc is None:
                return
            if self.proc.poll() is None:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
            self._forget()

    def restart(self) -> Self:
        """Graceful stop, then start again on the same port with the same data."""
        with self._lock:
            self.stop()
            return self.start()

    def ensure_running(self) -> Self:
        """Start the server again if a test left it stopped or crashed (no-op otherwise)."""
        with self._lock:
            if self.boots and not self.running:
                self.proc = None
                return self.start()
            return self

    def close(self) -> None:
        """Stop for good and delete the directory if we created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            _owned_dirs.discard(self.dir)

    def _signal_group(self, signum: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signum)  # start_new_session: the pid is the group's id
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def _forget(self) -> None:
        with _running_lock:
            _running.discard(self)

    def _tcp_accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} dir={self.dir}>"


class MariaDBServer(Service):
    """mariadbd on a private data directory; root has no password over TCP."""

    name = "mariadb"
    database = "thermal_test"

    def __init__(self, base_dir: Path | str | None = None, port: int | None = None) -> None:
        # Fail at once, before any work (or temp dir), if the binaries are missing.
        self.server_bin = find_binary("mariadbd", "mysqld")
        self.install_bin = find_binary("mariadb-install-db", "mysql_install_db")
        super().__init__(base_dir, port)
        self.datadir = self.dir / "data"
        self.error_log = self.dir / "err.log"

    def _user_args(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; install-db needs the owner too.
        return [f"--user={pwd.getpwuid(os.geteuid()).pw_name}"] if is_root() else []

    def _prepare(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        install_log = self.dir / "install.log"
        with install_log.open("wb") as log:
            result = subprocess.run(
                [
                    self.install_bin,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    "--innodb-log-file-size=16M",
                    *self._user_args(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise ServiceUnavailable(
                f"{self.install_bin} failed with status {result.returncode}:\n{tail(install_log)}"
            )

    def _command(self) -> list[str]:
        return [
            self.server_bin,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.dir / 'sock'}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--log-error={self.error_log}",
            f"--tmpdir={self.dir}",
            "--skip-log-bin",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--max-connections=500",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            *self._user_args(),
        ]

    def diagnostics(self) -> str:
        return f"{tail(self.error_log)}\n{tail(self.log_path, 500)}".strip()

    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A PyMySQL connection as root over TCP."""
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user="root",
            password="",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            **kwargs,
        )

    def _ready(self) -> bool:
        try:
            conn = self.connect(connect_timeout=1)
        except Exception:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@datadir")
                (datadir,) = cur.fetchone()
        finally:
            conn.close()
        if Path(datadir).resolve() != self.datadir.resolve():
            raise PortInUse(f"another MariaDB ({datadir}) answers on port {self.port}")
        return True

    def _after_first_boot(self) -> None:
        self.fresh_database(self.database)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of one database on this server."""
        return f"mysql+pymysql://root@{self.host}:{self.port}/{database}?charset=utf8mb4"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def fresh_database(self, name: str) -> str:
        """Create `name` empty (dropping any old one) and return its URL."""
        if not DATABASE_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {DATABASE_NAME.pattern}")
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        finally:
            conn.close()
        return self.url_for(name)


class MosquittoServer(Service):
    """Mosquitto with persistence, so QoS 1 sessions and queues survive a broker restart."""

    name = "mosquitto"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        port: int | None = None,
        autosave_on_changes: bool = False,
        max_inflight_messages: int | None = None,
    ) -> None:
        self.binary = find_binary("mosquitto")
        super().__init__(base_dir, port)
        self.conf = self.dir / "mosquitto.conf"
        self.broker_log = self.dir / "mosquitto.log"
        self.autosave_on_changes = autosave_on_changes
        self.max_inflight_messages = max_inflight_messages  # None: Mosquitto's default, 20
        self._runs_before = 0

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            # A graceful stop always saves; this bounds what a kill() loses. Saving on every
            # change rewrites the whole store per message, which gets slow as queues grow.
            *(["autosave_on_changes true"] if self.autosave_on_changes else []),
            "autosave_interval 1",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
            *(
                [f"max_inflight_messages {self.max_inflight_messages}"]
                if self.max_inflight_messages is not None
                else []
            ),
            f"log_dest file {self.broker_log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if is_root():
            # Mosquitto started as root drops to the "mosquitto" user, who cannot write here.
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _command(self) -> list[str]:
        self._write_conf()  # each boot: the port may have moved before the first one succeeded
        return [self.binary, "-c", str(self.conf)]

    def _logged(self, pattern: str) -> int:
        """How many times the broker's log matches a regular expression."""
        try:
            text = self.broker_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return 0
        return len(re.findall(pattern, text))

    def _runs_logged(self) -> int:
        return self._logged(r"mosquitto version \S+ running")

    def _before_boot(self) -> None:
        self._runs_before = self._runs_logged()

    def _ready(self) -> bool:
        # Mosquitto logs "running" once its listeners are open: this boot's, not an earlier one's.
        return self._runs_logged() > self._runs_before and self._tcp_accepts()

    def diagnostics(self) -> str:
        return f"{tail(self.broker_log)}\n{tail(self.log_path, 500)}".strip()

    def save(self, timeout: float = 10.0) -> None:
        """Make the broker write its persistence file now (SIGUSR1) and wait until it has.

        autosave_on_changes counts subscription changes and queued messages, not messages in
        flight to a connected client; a test that kills the broker and expects those to be
        redelivered saves first, so what survives the kill does not depend on timing.
        """
        with self._lock:
            saves_before = self._saves_logged()
            self._signal_group(signal.SIGUSR1)
            deadline = time.monotonic() + timeout
            while self._saves_logged() <= saves_before:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"mosquitto did not save:\n{self.diagnostics()}")
                time.sleep(0.02)

    def _saves_logged(self) -> int:
        return self._logged("Saving in-memory database")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


class RedisServer(Service):
    """redis-server without persistence (a message queue; nothing in it must survive)."""

    name = "redis"

    def __init__(self, base_dir: Path | str | None = None, port: int | None = None) -> None:
        self.binary = find_binary("redis-server")
        super().__init__(base_dir, port)

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]

    def _ready(self) -> bool:
        assert self.proc is not None
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        return False
                    reply += chunk
        except OSError:
            return False
        found = re.search(rb"process_id:(\d+)", reply)
        if found is None or int(found.group(1)) != self.proc.pid:
            raise PortInUse(f"another Redis answers on port {self.port}")
        return True

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@contextlib.contextmanager
def service_down(service: Service, crash: bool = False) -> Iterator[Service]:
    """Stop (or, with `crash`, SIGKILL) a service for the block; it runs again afterwards,
    whatever the block raised."""
    if crash:
        service.kill()
    else:
        service.stop()
    try:
        yield service
    finally:
        service.start()
