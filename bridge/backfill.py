"""Backfill from The Things Stack Storage Integration: the uplinks a QoS 0 stream lost.

TTN's own MQTT server delivers at QoS 0 and keeps no session, so what it published while the
bridge was disconnected is gone from the stream. When `storage_integration.url` is configured,
the bridge asks the Storage Integration HTTP API (DESIGN.md) for the uplinks after a point in
time, after every (re)connect and whenever an `f_cnt` gap shows it missed some, and feeds them
through the same `Bridge.handle_message` path: uplink de-duplication makes the overlap harmless.

    GET {url}/api/v3/as/applications/{app_id}/packages/storage/uplink_message?after=…&limit=…
    Authorization: Bearer <API key>
    Accept: text/event-stream
    -> newline-delimited JSON, one {"result": <uplink JSON>} per line
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from bridge.config import ConfigError, Secret
from bridge.mqtt import is_loopback
from bridge.ttn import format_time, parse_time

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
MAX_PAGES = 50
OVERLAP_S = 5.0  # ask a little before the point asked for: clocks and equal timestamps


class BackfillError(Exception):
    """The Storage Integration could not be queried (network, HTTP status, body)."""


def parse_stream(lines: Iterable[bytes | str]) -> Iterator[tuple[bytes, datetime | None]]:
    """Yield (uplink JSON body, its received_at) for each `{"result": …}` line; skip the rest."""
    for number, line in enumerate(lines, 1):
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text:
            continue
        if text.startswith("data:"):  # tolerate the SSE framing too
            text = text[5:].strip()
        try:
            doc = json.loads(text)
        except ValueError:
            log.warning("storage integration: line %d is not JSON; skipped", number)
            continue
        result = doc.get("result") if isinstance(doc, dict) else None
        if not isinstance(result, dict):
            if isinstance(doc, dict) and "error" in doc:
                raise BackfillError(f"storage integration error: {doc['error']}")
            log.warning("storage integration: line %d has no result object; skipped", number)
            continue
        received = result.get("received_at")
        try:
            at = parse_time(received) if isinstance(received, str) else None
        except ValueError:
            at = None
        yield json.dumps(result).encode(), at


Opener = Callable[..., Any]


class StorageIntegration:
    """A client of the Storage Integration's uplink_message endpoint."""

    def __init__(
        self,
        base_url: str,
        app_id: str,
        api_key: Secret | None,
        *,
        timeout_s: float = 30.0,
        allow_insecure: bool = False,
        opener: Opener = urllib.request.urlopen,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"storage_integration.url must be an http(s) URL, not {base_url!r}")
        if parsed.scheme == "http" and not is_loopback(parsed.hostname) and not allow_insecure:
            raise ConfigError(
                "storage_integration.url is plain http to a non-loopback host: the API key "
                "would travel in clear text; use https"
            )
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.opener = opener

    def url(self, after: datetime, limit: int) -> str:
        """The request URL for uplinks after a time."""
        query = urllib.parse.urlencode({"after": format_time(after), "limit": str(limit)})
        app = urllib.parse.quote(self.app_id, safe="")
        return (
            f"{self.base_url}/api/v3/as/applications/{app}/packages/storage/uplink_message?{query}"
        )

    def fetch(
        self, after: datetime, limit: int = PAGE_LIMIT
    ) -> list[tuple[bytes, datetime | None]]:
        """One page of stored uplinks after `after`, oldest first."""
        headers = {"Accept": "text/event-stream"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.value}"
        request = urllib.request.Request(self.url(after, limit), headers=headers)
        try:
            with self.opener(request, timeout=self.timeout_s) as response:
                return list(parse_stream(response))
        except urllib.error.HTTPError as exc:
            raise BackfillError(f"storage integration answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackfillError(f"storage integration unreachable: {reason}") from None


class Backfiller:
    """Remembers from when uplinks may be missing and fetches them when allowed."""

    def __init__(
        self,
        client: StorageIntegration,
        handle: Callable[[bytes], None],
        *,
        min_interval_s: float = 30.0,
    ) -> None:
        self.client = client
        self.handle = handle
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._after: datetime | None = None
        self._reasons: set[str] = set()
        self._last_run: datetime | None = None
        self.fetched = 0
        self.runs = 0
        self.failures = 0

    def request(self, after: datetime, reason: str) -> None:
        """Ask for a backfill of everything after `after` (the earliest request wins)."""
        with self._lock:
            if self._after is None or after < self._after:
                self._after = after
            self._reasons.add(reason)

    @property
    def pending(self) -> datetime | None:
        """From when a backfill is owed, if one is."""
        return self._after

    def run_pending(self, now: datetime) -> int:
        """Fetch and feed what is owed, if the minimum interval has passed; returns uplinks fed.

        A failure (HTTP, or the database through `handle`) keeps the request for the next run.
        """
        with self._lock:
            after, reasons = self._after, self._reasons
            if after is None:
                return 0
            if self._last_run is not None and (
                (now - self._last_run).total_seconds() < self.min_interval_s
            ):
                return 0
            self._after, self._reasons, self._last_run = None, set(), now
        self.runs += 1
        cursor = after - timedelta(seconds=OVERLAP_S)
        fed = 0
        try:
            for _ in range(MAX_PAGES):
                page = self.client.fetch(cursor)
                for body, _at in page:
                    self.handle(body)
                    fed += 1
                times = [at for _, at in page if at is not None]
                if len(page) < PAGE_LIMIT or not times or max(times) <= cursor:
                    break
                cursor = max(times)
        except BaseException as exc:
            self.failures += 1
            self.request(cursor, next(iter(reasons), "retry"))
            if isinstance(exc, BackfillError):
                log.warning("backfill after %s failed: %s; retrying later", format_time(after), exc)
                return fed
            raise
        self.fetched += fed
        log.info(
            "backfill after %s (%s): %d uplink(s) fetched from the storage integration",
            format_time(after),
            ", ".join(sorted(reasons)),
            fed,
        )
        return fed


def from_config(config: Any, handle: Callable[[bytes], None]) -> Backfiller | None:
    """The backfiller configured by `storage_integration.*`, or None when it is not."""
    if not config.storage_integration_url:
        return None
    api_key = config.storage_integration_api_key or config.mqtt.password
    client = StorageIntegration(
        config.storage_integration_url,
        config.mqtt.app_id,
        api_key,
        allow_insecure=config.mqtt.tls_insecure_allowed,
    )
    return Backfiller(client, handle)
