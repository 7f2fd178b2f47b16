"""The frames table keeps a small heatmap (one pixel per sensor pixel, inside the row); what
users get is unchanged: the pushed `frame` event, the subscribe snapshot and
`GET /api/frames/<id>.png` are the same 640 × 480 heatmap, byte for byte."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from node_firmware.protocol import Mode
from tests.webapp.fixtures import Feeder, make_app, make_config
from webapp import socketio


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize(("rotate", "stored"), [(0, (32, 24)), (90, (24, 32))])
def test_stored_heatmap_is_small_and_users_get_the_full_one(
    tmp_path: Path, rotate: int, stored: tuple[int, int]
) -> None:
    for app in make_app(make_config(f"sqlite:///{tmp_path}/h.sqlite3", rotate=rotate)):
        watcher = socketio.test_client(app)
        watcher.emit("subscribe", {"devices": "*"})
        watcher.get_received()
        feeder = Feeder(app)
        feeder.frame("node1", hot=44.4, number=1)
        feeder.frame("node1", hot=45.5, number=2, mode=Mode.FAST)
        pushed = [r["args"][0] for r in watcher.get_received() if r["name"] == "frame"]
        assert len(pushed) == 2
        http = app.test_client()
        store = app.extensions["thermal"].store
        for event in pushed:
            served = http.get(f"/api/frames/{event['frame_id']}.png")
            assert served.status_code == 200
            assert served.data == event["image"], "the same rendering as the frame event's"
            assert png_size(served.data) == (640, 480)
            kept = store.frame_png(event["frame_id"])
            assert kept is not None
            cols, rows = (32, 24) if event["mode"] == "slow" else (8, 6)
            assert png_size(kept) == (
                stored
                if event["mode"] == "slow"
                else ((cols, rows) if rotate == 0 else (rows, cols))
            )
            assert len(kept) < 2048 < len(served.data)
        late = socketio.test_client(app)
        late.emit("subscribe", {"devices": ["node1"]})
        snapshot = [r["args"][0] for r in late.get_received() if r["name"] == "frame"]
        assert snapshot[0]["image"] == pushed[-1]["image"]
