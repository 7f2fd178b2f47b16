"""The alarm engine inside the bridge, on a real database: one active alarm per device and kind
with two bridges on one database and across restarts, and a late fragment of an older frame
(issue 20, item 3) that must not clear the alarm of the newest frame."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from bridge.alarms import AlarmRules
from bridge.service import Bridge
from db import schema as t
from db.migrations import upgrade
from db.store import Store
from node_firmware.protocol import Fragment, Mode, encode_fragment, fragment_frame
from tests.bridge.harness import Recorder, bridge_config
from tests.ttn_messages import at_seconds, uplink
from tests.webapp.fixtures import scene

ONLY_OVER_THRESHOLD = AlarmRules(non_uniform_spread_c=100.0, rise_c=100.0)
SCRIPT = [30.0, 55.0, 65.0, 45.0, 45.0, 55.0, 45.0, 45.0]
EXPECTED = ["opened", "escalated", "cleared", "opened", "cleared"]


def fragments(number: int, hot: float) -> list[Fragment]:
    return fragment_frame(scene(number, hot), Mode.FAST, number, fan=False, ambient=22)


def stream(temps: list[float], device_id: str = "hot1") -> list[bytes]:
    """Fast frames (2 uplinks each), 10 s apart."""
    bodies = []
    for number, hot in enumerate(temps):
        for fragment in fragments(number, hot):
            at = at_seconds(10 * number + fragment.index)
            bodies.append(uplink(device_id, len(bodies), encode_fragment(fragment), at))
    return bodies


def new_bridge(url: str, recorder: Recorder, **rules: Any) -> Bridge:
    rules_in_force = AlarmRules(**{**vars_of(ONLY_OVER_THRESHOLD), **rules})
    return Bridge(
        bridge_config("127.0.0.1", 1, url, alarm_rules=rules_in_force),
        Store.from_url(url),
        recorder,
    )


def vars_of(rules: AlarmRules) -> dict[str, Any]:
    return {name: getattr(rules, name) for name in rules.__dataclass_fields__}


def over_threshold(recorders: list[Recorder]) -> list[str]:
    return [
        p["transition"]
        for r in recorders
        for p in r.of("alarm")
        if p["kind"] == "over_threshold" and "transition" in p
    ]


def run_two_bridges(url: str, first_goes: list[bool], sizes: list[int]) -> list[Recorder]:
    """Two bridges on one database, each handling every uplink in order, in batches."""
    upgrade(Store.from_url(url).engine)
    recorders = [Recorder(), Recorder()]
    bridges = [new_bridge(url, r) for r in recorders]
    bodies = stream(SCRIPT)
    done, step = [0, 0], 0
    while min(done) < len(bodies):
        who = 0 if first_goes[step % len(first_goes)] else 1
        if done[who] == len(bodies):
            who = 1 - who
        taken = bodies[done[who] : done[who] + sizes[step % len(sizes)]]
        bridges[who].handle_messages(taken)
        done[who] += len(taken)
        step += 1
    for bridge in bridges:
        bridge.store.engine.dispose()
    return recorders


def assert_each_alarm_once(url: str, recorders: list[Recorder]) -> None:
    # Announced by whichever bridge judged it first: every transition exactly once overall.
    assert sorted(over_threshold(recorders)) == sorted(EXPECTED)
    store = Store.from_url(url)
    alarms = store.alarms()
    assert [(a.kind, a.active, a.severity) for a in alarms] == [
        ("over_threshold", False, "warning"),
        ("over_threshold", False, "critical"),
    ]
    store.engine.dispose()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first_goes=st.lists(st.booleans(), min_size=1, max_size=20),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=20),
)
def test_two_bridges_on_one_database_open_and_clear_each_alarm_once(
    tmp_path_factory: pytest.TempPathFactory, first_goes: list[bool], sizes: list[int]
) -> None:
    path: Path = tmp_path_factory.mktemp("alarms") / "thermal.sqlite3"
    url = f"sqlite:///{path}"
    assert_each_alarm_once(url, run_two_bridges(url, first_goes, sizes))


def test_two_bridges_on_mariadb_open_and_clear_each_alarm_once(mysql_url: str) -> None:
    rng = random.Random(4)
    first_goes = [rng.random() < 0.5 for _ in range(40)]
    sizes = [rng.randint(1, 4) for _ in range(40)]
    assert_each_alarm_once(mysql_url, run_two_bridges(mysql_url, first_goes, sizes))


def test_a_restarted_bridge_continues_the_clearing_count(mysql_url: str) -> None:
    upgrade(Store.from_url(mysql_url).engine)
    bodies = stream([55.0, 45.0, 45.0])
    first, second = Recorder(), Recorder()
    before = new_bridge(mysql_url, first)
    for body in bodies[:4]:  # the hot frame and the first cool one
        before.handle_message(body)
    assert over_threshold([first]) == ["opened"]
    after = new_bridge(mysql_url, second)  # a new process: nothing in memory
    for body in bodies[4:]:
        after.handle_message(body)
    assert over_threshold([second]) == ["cleared"], "the count went on across the restart"


def test_a_database_from_before_the_engine_does_not_open_a_second_alarm(mysql_url: str) -> None:
    upgrade(Store.from_url(mysql_url).engine)
    recorder = Recorder()
    bridge = new_bridge(mysql_url, recorder)
    for body in stream([55.0]):
        bridge.handle_message(body)
    with bridge.store.transaction() as tx:  # as an upgraded database has it: no engine state
        tx.conn.execute(update(t.devices).values(alarm_state=None))
    restarted = new_bridge(mysql_url, recorder)
    for body in stream([55.0, 58.0, 45.0, 45.0])[2:]:
        restarted.handle_message(body)
    assert over_threshold([recorder]) == ["opened", "cleared"]
    assert len(bridge.store.alarms()) == 1


def test_a_late_fragment_of_an_older_frame_does_not_clear_the_newest_frames_alarm(
    mysql_url: str,
) -> None:
    """Issue 20, item 3. Frame 1 (cool) loses its 2nd fragment on the way; frame 2 (hot)
    completes, closes frame 1 as partial and opens the alarm; then frame 1's 2nd fragment
    arrives late and completes it. Stored, not judged: with clear_after_frames 1 a judged
    cool complete frame would clear the alarm."""
    upgrade(Store.from_url(mysql_url).engine)
    recorder = Recorder()
    bridge = new_bridge(mysql_url, recorder, clear_after_frames=1)
    old, new = fragments(1, 30.0), fragments(2, 55.0)
    sent = [(old[0], 10.0), (new[0], 20.0), (new[1], 21.0), (old[1], 11.0)]
    for f_cnt, (fragment, seconds) in enumerate(sent):
        bridge.handle_message(uplink("hot1", f_cnt, encode_fragment(fragment), at_seconds(seconds)))
    frames = {f.frame_number: f for f in bridge.store.frames("hot1")}
    assert frames[1].complete, "the late fragment completed the older frame (stored)"
    assert over_threshold([recorder]) == ["opened"]
    [alarm] = bridge.store.alarms(active=True)
    assert alarm.kind == "over_threshold"
    # The next frame, newer, is judged: it clears.
    for f_cnt, fragment in enumerate(fragments(3, 30.0), start=len(sent)):
        at = at_seconds(30 + fragment.index)
        bridge.handle_message(uplink("hot1", f_cnt, encode_fragment(fragment), at))
    assert over_threshold([recorder]) == ["opened", "cleared"]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    temps=st.lists(st.sampled_from([30.0, 47.0, 49.0, 55.0, 65.0]), min_size=2, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_through_the_bridge_fragments_of_consecutive_frames_in_any_interleaving_give_the_in_order_alarms(
    tmp_path_factory: pytest.TempPathFactory, temps: list[float], seed: int
) -> None:
    """Slow frames (24 uplinks each) through the real reassembler and store: each uplink
    delivered up to a few uplinks early or late (network time stays the node's)."""
    bodies = []
    for number, hot in enumerate(temps):
        for fragment in fragment_frame(
            scene(number, hot), Mode.SLOW, number, fan=False, ambient=22
        ):
            at = at_seconds(30 * number + fragment.index)
            bodies.append(uplink("hot1", len(bodies), encode_fragment(fragment), at))
    rng = random.Random(seed)
    shuffled = [b for _, b in sorted((i + rng.uniform(-4, 4), b) for i, b in enumerate(bodies))]
    got = []
    for order in (bodies, shuffled):
        url = f"sqlite:///{tmp_path_factory.mktemp('order') / 'thermal.sqlite3'}"
        upgrade(Store.from_url(url).engine)
        recorder = Recorder()
        bridge = new_bridge(url, recorder)
        for body in order:
            bridge.handle_message(body)
        got.append([t for t in over_threshold([recorder]) if t in ("opened", "cleared")])
        bridge.store.engine.dispose()
    assert got[0] == got[1]
