"""Bridge.handle_messages: many uplinks in one transaction store exactly what one-by-one
handling stores, announce only what committed, and a failed batch is redone one by one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bridge.service import Bridge
from db import schema as t
from db.migrations import upgrade
from db.store import Store
from tests.bridge.harness import Recorder, bridge_config
from tests.bridge.test_two_writers import stream


def new_bridge(url: str, recorder: Recorder, bridge_class: type[Bridge] = Bridge) -> Bridge:
    store = Store.from_url(url)
    upgrade(store.engine)
    return bridge_class(bridge_config("127.0.0.1", 1, url), store, recorder)


def contents(url: str) -> dict[str, Any]:
    engine = Store.from_url(url).engine
    with engine.connect() as conn:
        count = {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (t.uplinks, t.open_fragments, t.ambient)
        }
        frames = conn.execute(
            select(t.frames.c.device_id, t.frames.c.frame_number, t.frames.c.complete).order_by(
                t.frames.c.device_id, t.frames.c.frame_number
            )
        ).all()
    engine.dispose()
    return {"count": count, "frames": [tuple(f) for f in frames]}


def announced(recorder: Recorder) -> list[tuple[str, str]]:
    return sorted((event, device_id) for event, _, device_id in recorder.events)


def test_a_batch_stores_and_announces_what_one_by_one_does(tmp_path: Path) -> None:
    bodies = stream(random.Random(3))
    bodies += bodies[10:20]  # redeliveries inside and across batches
    one_url, batch_url = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/batch.db"
    one, batched = Recorder(), Recorder()
    single = new_bridge(one_url, one)
    for body in bodies:
        single.handle_message(body)
    bridge = new_bridge(batch_url, batched)
    for start in range(0, len(bodies), 37):
        bridge.handle_messages(bodies[start : start + 37])

    assert bridge.metrics["batches"] == -(-len(bodies) // 37)
    assert contents(batch_url) == contents(one_url)
    assert contents(batch_url)["count"]["uplinks"] == len(bodies) - 10
    assert announced(batched) == announced(one)


class FlakyBridge(Bridge):
    """Fails on its 30th message once, as a bug or a lost connection mid-batch would."""

    calls = 0

    def _apply(self, message: Any) -> Any:
        FlakyBridge.calls += 1
        if FlakyBridge.calls == 30:
            raise RuntimeError("boom")
        return super()._apply(message)


def test_a_failed_batch_is_rolled_back_whole_and_redone_one_by_one(tmp_path: Path) -> None:
    bodies = stream(random.Random(4))
    ok_url, flaky_url = f"sqlite:///{tmp_path}/ok.db", f"sqlite:///{tmp_path}/flaky.db"
    ok, flaky = Recorder(), Recorder()
    reference = new_bridge(ok_url, ok)
    for body in bodies:
        reference.handle_message(body)
    bridge = new_bridge(flaky_url, flaky, FlakyBridge)
    bridge.handle_messages(bodies[:50])  # fails at 30: all 50 rolled back, then one by one
    bridge.handle_messages(bodies[50:])

    assert bridge.metrics["batches"] == 1, "the failed batch did not count"
    assert contents(flaky_url) == contents(ok_url)
    # Nothing of the rolled-back attempt was announced: every event once, as one by one.
    assert announced(flaky) == announced(ok)
