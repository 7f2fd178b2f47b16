"""Bridge.handle_messages: many uplinks in one transaction store exactly what one-by-one
handling stores, announce only what committed, and a failed batch is redone one by one."""

from __future__ import annotations

import itertools
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bridge.service import Bridge
from db import schema as t
from db.migrations import upgrade
from db.store import Store
from node_firmware.protocol import (
    IncompressibleFrameError,
    Mode,
    NodeStatus,
    encode_fragment,
    encode_status,
    fragment_frame,
)
from tests.bridge.harness import Recorder, bridge_config
from tests.bridge.test_two_writers import stream
from tests.services import MariaDBServer
from tests.ttn_messages import at_seconds, uplink


def new_bridge(url: str, recorder: Recorder, bridge_class: type[Bridge] = Bridge) -> Bridge:
    store = Store.from_url(url)
    upgrade(store.engine)
    return bridge_class(bridge_config("127.0.0.1", 1, url), store, recorder)


SURROGATE_KEYS = {"id", "frame_id", "alarm_id"}


def everything(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the bridge writes, all columns but surrogate keys, sorted."""
    engine = Store.from_url(url).engine
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in (t.devices, t.uplinks, t.open_fragments, t.frames, t.ambient, t.alarms):
            columns = [c for c in table.c if c.name not in SURROGATE_KEYS]
            rows = conn.execute(select(*columns)).all()
            out[table.name] = sorted((tuple(row) for row in rows), key=repr)
    engine.dispose()
    return out


def rich_stream(rng: random.Random, devices: int = 4, rounds: int = 4) -> list[bytes]:
    """What a batch meets in the field, per device in order, devices interleaved at random:
    slow, fast and compressed frames, some missing a fragment (partial), hot and uneven frames
    (alarms), fan and ambient changes, status uplinks, invalid payloads, f_cnt gaps, and
    redeliveries of earlier uplinks."""
    per_device: list[list[bytes]] = []
    clock = [0.0]

    def at() -> datetime:
        clock[0] += 0.5
        return at_seconds(clock[0])

    for d in range(devices):
        device_id, f_cnt, bodies = f"batch{d}", 0, []
        for number in range(rounds):
            mode = rng.choice([Mode.SLOW, Mode.FAST, Mode.FAST, Mode.COMPRESSED])
            base = rng.choice([22.0, 30.0, 65.0])  # 65 °C: over the default threshold
            spread = rng.choice([1.0, 15.0])  # 15 °C: non-uniform
            grid = [[round(base + rng.random() * spread, 1) for _ in range(32)] for _ in range(24)]
            fan, ambient = rng.random() < 0.5, rng.choice([21, 22, 35])
            try:
                fragments = fragment_frame(grid, mode, number, fan=fan, ambient=ambient)
            except IncompressibleFrameError:
                fragments = fragment_frame(grid, Mode.SLOW, number, fan=fan, ambient=ambient)
            if len(fragments) > 1 and rng.random() < 0.3:
                fragments.pop(rng.randrange(len(fragments)))  # never arrives: a partial frame
            for fragment in fragments:
                f_cnt += 1 + (rng.random() < 0.05)  # now and then an uplink lost on the way
                bodies.append(uplink(device_id, f_cnt, encode_fragment(fragment), at()))
            if rng.random() < 0.4:
                status = NodeStatus(1, fan, not fan, mode, rng.choice([45, 50]), ambient)
                f_cnt += 1
                bodies.append(uplink(device_id, f_cnt, encode_status(status), at(), f_port=2))
            if rng.random() < 0.2:
                f_cnt += 1
                bodies.append(uplink(device_id, f_cnt, b"\xff\x00", at()))  # invalid
        per_device.append(bodies)
    merged: list[bytes] = []
    while any(per_device):
        merged.append(rng.choice([b for b in per_device if b]).pop(0))
    for _ in range(len(merged) // 10):  # redeliveries, each after its original
        k = rng.randrange(len(merged))
        merged.insert(rng.randrange(k + 1, len(merged) + 1), merged[k])
    return merged


def announced(recorder: Recorder) -> list[tuple[str, str]]:
    return sorted((event, device_id) for event, _, device_id in recorder.events)


def one_by_one(url: str, bodies: list[bytes]) -> Recorder:
    recorder = Recorder()
    bridge = new_bridge(url, recorder)
    for body in bodies:
        bridge.handle_message(body)
    bridge.tick(at_seconds(10**6))  # close what is left open
    return recorder


def in_batches(url: str, bodies: list[bytes], cuts: list[int]) -> Recorder:
    recorder = Recorder()
    bridge = new_bridge(url, recorder)
    bounds = [0, *sorted(set(cuts)), len(bodies)]
    for start, end in itertools.pairwise(bounds):
        bridge.handle_messages(bodies[start:end])
    bridge.tick(at_seconds(10**6))
    return recorder


def assert_same(batch_url: str, batched: Recorder, one_url: str, one: Recorder) -> None:
    assert everything(batch_url) == everything(one_url)
    # The same announcements in the same order, payloads included (frame ids, images).
    assert [(e, d, sorted(p.items())) for e, p, d in batched.events] == [
        (e, d, sorted(p.items())) for e, p, d in one.events
    ]


@settings(
    deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_any_batching_stores_and_announces_exactly_what_one_by_one_does(
    tmp_path_factory: pytest.TempPathFactory, seed: int, data: st.DataObject
) -> None:
    bodies = rich_stream(random.Random(seed))
    cuts = data.draw(st.lists(st.integers(0, len(bodies)), max_size=len(bodies) // 3))
    folder = tmp_path_factory.mktemp("batches")
    one_url, batch_url = f"sqlite:///{folder}/one.db", f"sqlite:///{folder}/batch.db"
    one = one_by_one(one_url, bodies)
    batched = in_batches(batch_url, bodies, cuts)
    assert_same(batch_url, batched, one_url, one)


def test_batches_on_mariadb_store_and_announce_what_one_by_one_does(
    mariadb_server: MariaDBServer,
) -> None:
    for seed in range(3):
        bodies = rich_stream(random.Random(seed), devices=6, rounds=5)
        one_url = mariadb_server.fresh_database(f"batch_eq_one_{seed}")
        batch_url = mariadb_server.fresh_database(f"batch_eq_batch_{seed}")
        one = one_by_one(one_url, bodies)
        rng = random.Random(seed)
        cuts = rng.sample(range(len(bodies)), len(bodies) // 40)  # batches of about 40
        batched = in_batches(batch_url, bodies, cuts)
        assert_same(batch_url, batched, one_url, one)


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
    counted = ("uplinks", "duplicate_uplinks", "frames_complete", "frames_partial")
    assert {k: bridge.metrics[k] for k in counted} == {k: reference.metrics[k] for k in counted}, (
        "what the rolled-back attempt counted is not counted twice"
    )
    assert everything(flaky_url) == everything(ok_url)
    # Nothing of the rolled-back attempt was announced: every event once, as one by one.
    assert announced(flaky) == announced(ok)


def test_a_frame_another_writer_stored_makes_the_batch_fall_back_not_fail(tmp_path: Path) -> None:
    """A batch inserts a newly completed frame without looking first; if another writer stored
    that very frame meanwhile, the insert collides, the batch is rolled back and redone one by
    one, which finds the stored frame: still one frame, and nothing announced twice."""
    url = f"sqlite:///{tmp_path}/collide.db"
    grid = [[25.0] * 32 for _ in range(24)]
    fragments = fragment_frame(grid, Mode.FAST, 7, fan=False, ambient=None)
    times = [at_seconds(0), at_seconds(1)]

    def bodies(first_f_cnt: int) -> list[bytes]:
        return [
            uplink("twin", first_f_cnt + k, encode_fragment(f), times[k])
            for k, f in enumerate(fragments)
        ]

    other = Recorder()
    new_bridge(url, other).handle_messages(bodies(1))  # the other writer
    ours = Recorder()
    bridge = new_bridge(url, ours)
    # The same fragments under other uplink ids (as a second network server would deliver).
    bridge.handle_messages(bodies(101))

    assert bridge.metrics["batches"] == 0, "the batch fell back to one by one"
    assert len(everything(url)["frames"]) == 1
    assert len(everything(url)["uplinks"]) == 4
    assert [e for e, _, _ in other.events].count("frame") == 1
    assert [e for e, _, _ in ours.events].count("frame") == 0
