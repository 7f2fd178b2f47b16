"""Two bridges on one database (started by mistake): each sees every uplink in order, at its own
pace, and together they must store each uplink once and each frame once, complete, leaving no
open fragments behind. Without the per-device resync in bridge/service.py about half of all
interleavings left an extra partial frame or stray open fragments."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bridge.service import Bridge
from db import schema as t
from db.migrations import upgrade
from db.store import Store
from node_firmware.protocol import Mode, encode_fragment, fragment_frame
from tests.bridge.harness import Recorder, bridge_config
from tests.ttn_messages import at_seconds, uplink

DEVICES = ("twin1", "twin2")
FRAMES_PER_DEVICE = 3


def stream(rng: random.Random) -> list[bytes]:
    """Three frames of two devices, interleaved device by device, each in a random mode."""
    bodies: list[bytes] = []
    f_cnt = dict.fromkeys(DEVICES, 0)
    for number in range(FRAMES_PER_DEVICE):
        for device_id in DEVICES:
            mode = rng.choice([Mode.SLOW, Mode.FAST])
            grid = [[round(20 + rng.random() * 20, 1) for _ in range(32)] for _ in range(24)]
            for fragment in fragment_frame(grid, mode, number, fan=False, ambient=22):
                f_cnt[device_id] += 1
                at = at_seconds(len(bodies))
                bodies.append(uplink(device_id, f_cnt[device_id], encode_fragment(fragment), at))
    return bodies


def run_two_bridges(
    url: str, bodies: list[bytes], first_goes: list[bool], sizes: list[int] | None = None
) -> Store:
    """Both bridges handle every body in order; first_goes[k] says who takes step k, and
    sizes[k] (when given) how many bodies it takes at once, as one batch."""
    store = Store.from_url(url)
    upgrade(store.engine)
    bridges = [Bridge(bridge_config("127.0.0.1", 1, url), Store.from_url(url), Recorder())]
    bridges.append(Bridge(bridge_config("127.0.0.1", 1, url), Store.from_url(url), Recorder()))
    done, step = [0, 0], 0
    while min(done) < len(bodies):
        who = 0 if first_goes[step % len(first_goes)] else 1
        if done[who] == len(bodies):
            who = 1 - who
        if sizes is None:
            bridges[who].handle_message(bodies[done[who]])
            done[who] += 1
        else:
            taken = bodies[done[who] : done[who] + sizes[step % len(sizes)]]
            bridges[who].handle_messages(taken)
            done[who] += len(taken)
        step += 1
    for bridge in bridges:  # long after the last uplink: any frame still open would time out
        bridge.tick(at_seconds(len(bodies) + 3600))
    return store


def assert_stored_once(store: Store, bodies: list[bytes]) -> None:
    with store.engine.connect() as conn:
        uplinks = conn.execute(select(func.count()).select_from(t.uplinks)).scalar_one()
        left_open = conn.execute(select(func.count()).select_from(t.open_fragments)).scalar_one()
        frames = conn.execute(
            select(t.frames.c.device_id, t.frames.c.frame_number, t.frames.c.complete)
        ).all()
    assert uplinks == len(bodies)
    assert left_open == 0, "no half-seen frame is left open"
    assert sorted((f.device_id, f.frame_number) for f in frames) == sorted(
        (d, n) for d in DEVICES for n in range(FRAMES_PER_DEVICE)
    ), "each frame once"
    assert all(f.complete for f in frames), "and complete"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), first_goes=st.lists(st.booleans(), min_size=1, max_size=60))
def test_any_interleaving_of_two_bridges_stores_everything_once(
    tmp_path_factory: pytest.TempPathFactory, seed: int, first_goes: list[bool]
) -> None:
    path: Path = tmp_path_factory.mktemp("two") / "thermal.sqlite3"
    bodies = stream(random.Random(seed))
    store = run_two_bridges(f"sqlite:///{path}", bodies, first_goes)
    try:
        assert_stored_once(store, bodies)
    finally:
        store.engine.dispose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    first_goes=st.lists(st.booleans(), min_size=1, max_size=30),
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=30),
)
def test_two_bridges_taking_batches_store_everything_once(
    tmp_path_factory: pytest.TempPathFactory, seed: int, first_goes: list[bool], sizes: list[int]
) -> None:
    path: Path = tmp_path_factory.mktemp("two") / "thermal.sqlite3"
    bodies = stream(random.Random(seed))
    store = run_two_bridges(f"sqlite:///{path}", bodies, first_goes, sizes)
    try:
        assert_stored_once(store, bodies)
    finally:
        store.engine.dispose()


def test_two_bridges_taking_batches_on_mariadb_store_everything_once(mysql_url: str) -> None:
    rng = random.Random(9)
    bodies = stream(rng)
    first_goes = [rng.random() < 0.5 for _ in range(len(bodies))]
    sizes = [rng.randint(1, 10) for _ in range(len(bodies))]
    store = run_two_bridges(mysql_url, bodies, first_goes, sizes)
    try:
        assert_stored_once(store, bodies)
    finally:
        store.engine.dispose()


def test_two_bridges_on_mariadb_store_everything_once(mysql_url: str) -> None:
    rng = random.Random(8)  # an interleaving that broke the bridge before the resync
    bodies = stream(rng)
    store = run_two_bridges(mysql_url, bodies, [rng.random() < 0.5 for _ in range(len(bodies))])
    try:
        assert_stored_once(store, bodies)
    finally:
        store.engine.dispose()
