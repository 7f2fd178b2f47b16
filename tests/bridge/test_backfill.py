"""Storage Integration backfill: the stream format, the client against a real HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from bridge.backfill import (
    Backfiller,
    BackfillError,
    StorageIntegration,
    parse_stream,
)
from bridge.config import ConfigError, Secret
from bridge.ttn import Uplink, format_time, parse_message, parse_time
from tests.ttn_messages import at_seconds, uplink

KEY = "NNSXS.SECRET-KEY-FOR-TESTS"


class FakeTTN:
    """A real HTTP server answering like the Storage Integration, from a list of uplinks."""

    def __init__(self, uplinks: list[bytes]) -> None:
        self.uplinks = uplinks
        self.requests: list[dict[str, object]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                outer.requests.append(
                    {"path": url.path, "query": query, "headers": dict(self.headers)}
                )
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                after = parse_time(query["after"])
                limit = int(query.get("limit", "1000"))
                rows = [
                    u for u in outer.uplinks if parse_time(json.loads(u)["received_at"]) > after
                ][:limit]
                body = b"".join(b'{"result":' + u + b"}\n\n" for u in rows)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def ttn() -> Iterator[FakeTTN]:
    server = FakeTTN([uplink("n1", i, bytes([i]), at_seconds(i * 10), 3) for i in range(1, 8)])
    yield server
    server.server.shutdown()


def test_parse_stream_yields_results_and_skips_noise() -> None:
    body = uplink("n1", 4, b"\x01", at_seconds(40))
    lines = [b'{"result":' + body + b"}\n", b"\n", b"not json\n", b'{"other":1}\n']
    [(doc, at)] = list(parse_stream(lines))
    message = parse_message(doc)
    assert isinstance(message, Uplink) and message.f_cnt == 4
    assert at == parse_time(json.loads(body)["received_at"])


def test_parse_stream_raises_on_an_error_object() -> None:
    with pytest.raises(BackfillError, match="storage integration error"):
        list(parse_stream([b'{"error":{"code":7,"message":"no rights"}}']))


def test_client_asks_like_the_documentation_says(ttn: FakeTTN) -> None:
    client = StorageIntegration(ttn.url, "thermal-test", Secret(KEY))
    page = client.fetch(parse_time(json.loads(ttn.uplinks[2])["received_at"]), limit=2)
    assert [json.loads(b)["uplink_message"]["f_cnt"] for b, _ in page] == [4, 5]
    [req] = ttn.requests
    assert req["path"] == "/api/v3/as/applications/thermal-test/packages/storage/uplink_message"
    headers = req["headers"]
    assert isinstance(headers, dict)
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Accept"] == "text/event-stream"
    assert req["query"] == {"after": format_time(at_seconds(30)), "limit": "2"}  # type: ignore[comparison-overlap]


def test_http_errors_become_backfill_errors_without_the_key(ttn: FakeTTN) -> None:
    ttn.status = 403
    client = StorageIntegration(ttn.url, "thermal-test", Secret(KEY))
    with pytest.raises(BackfillError, match="HTTP 403") as info:
        client.fetch(at_seconds(0))
    assert KEY not in str(info.value)


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="clear text"):
        StorageIntegration("http://eu1.cloud.thethings.network", "app", Secret(KEY))
    StorageIntegration("https://eu1.cloud.thethings.network", "app", Secret(KEY))


def test_backfiller_feeds_everything_after_the_earliest_request(ttn: FakeTTN) -> None:
    fed: list[bytes] = []
    backfiller = Backfiller(StorageIntegration(ttn.url, "a", None), fed.append, min_interval_s=60)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert backfiller.run_pending(now) == 0  # nothing owed
    backfiller.request(at_seconds(45), "f_cnt gap")
    backfiller.request(at_seconds(35), "reconnect")
    assert backfiller.run_pending(now) == 4  # f_cnt 4..7 (received after 30 s: 5 s overlap)
    assert [json.loads(b)["uplink_message"]["f_cnt"] for b in fed] == [4, 5, 6, 7]
    backfiller.request(at_seconds(0), "again")
    assert backfiller.run_pending(now + timedelta(seconds=10)) == 0  # rate limited
    assert backfiller.pending == at_seconds(0)
    assert backfiller.run_pending(now + timedelta(seconds=61)) == 7


def test_backfiller_keeps_the_request_when_it_fails(ttn: FakeTTN) -> None:
    backfiller = Backfiller(
        StorageIntegration(ttn.url, "a", None), lambda b: None, min_interval_s=0
    )
    ttn.status = 500
    backfiller.request(at_seconds(20), "gap")
    assert backfiller.run_pending(datetime.now(UTC)) == 0
    assert backfiller.failures == 1 and backfiller.pending is not None
    ttn.status = 200
    assert backfiller.run_pending(datetime.now(UTC)) == 6
