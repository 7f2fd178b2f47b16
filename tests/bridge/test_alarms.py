"""The alarm engine (bridge/alarms.py): DESIGN.md's alarm rules, and properties over any input."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.alarms import (
    AlarmRuleError,
    AlarmRules,
    AlarmState,
    FrameSummary,
    Transition,
    evaluate_frames,
    evaluate_silence,
    evaluate_uplink,
    merge_overrides,
    rules_with,
    state_from_json,
    state_to_json,
)

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
THRESHOLD = 50.0
RULES = AlarmRules()
FRAGMENTS = 4  # fragments per frame in the model below


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def frame(
    n: int,
    temp_max: float,
    temp_min: float | None = None,
    complete: bool = True,
    settled: bool = True,
) -> FrameSummary:
    low = temp_max - 5 if temp_min is None else temp_min
    return FrameSummary(f"f{n}", at(n * 10), at(n * 10 + 5), settled, complete, temp_max, low)


def run(frames: list[FrameSummary], rules: AlarmRules = RULES) -> list[Transition]:
    state = AlarmState()
    out: list[Transition] = []
    for f in frames:
        state, got = evaluate_frames(state, rules, THRESHOLD, [f])
        out += got
    return out


def changes(transitions: list[Transition]) -> list[tuple[str, str, str]]:
    return [(t.kind, t.change, t.severity) for t in transitions]


# --- the rules, one by one ------------------------------------------------------------------


def test_one_hot_pixel_opens_while_the_frame_is_still_arriving() -> None:
    got = run([frame(0, 51.0, complete=False, settled=False)])
    assert changes(got) == [("over_threshold", "opened", "warning")]
    assert got[0].value == 51.0 and got[0].limit == THRESHOLD


def test_clears_after_two_complete_frames_below_the_band_not_one() -> None:
    got = run([frame(0, 55), frame(1, 47.9)])
    assert changes(got) == [("over_threshold", "opened", "warning")]
    got = run([frame(0, 55), frame(1, 47.9), frame(2, 48.0)])
    assert changes(got)[-1] == ("over_threshold", "cleared", "warning")
    assert got[-1].at == at(25)


def test_a_frame_in_the_band_resets_the_clearing_count() -> None:
    got = run([frame(0, 55), frame(1, 45), frame(2, 49.5), frame(3, 45)])
    assert changes(got) == [("over_threshold", "opened", "warning")]
    got = run([frame(0, 55), frame(1, 45), frame(2, 49.5), frame(3, 45), frame(4, 45)])
    assert changes(got)[-1] == ("over_threshold", "cleared", "warning")


def test_partial_and_still_arriving_frames_never_clear() -> None:
    cool_partials = [frame(n, 30, complete=False) for n in range(1, 6)]
    arriving = [frame(n, 30, complete=False, settled=False) for n in range(6, 9)]
    got = run([frame(0, 55), *cool_partials, *arriving])
    assert changes(got) == [("over_threshold", "opened", "warning")]


def test_escalation_and_deescalation_update_the_same_alarm() -> None:
    got = run([frame(0, 55), frame(1, 60.1), frame(2, 58), frame(3, 40), frame(4, 40)])
    assert [c for c in changes(got) if c[0] == "over_threshold"] == [
        ("over_threshold", "opened", "warning"),
        ("over_threshold", "escalated", "critical"),
        ("over_threshold", "deescalated", "warning"),
        ("over_threshold", "cleared", "warning"),
    ]


def test_a_cooling_critical_alarm_clears_as_critical_without_deescalating() -> None:
    got = run([frame(0, 65), frame(1, 45), frame(2, 49), frame(3, 45), frame(4, 45)])
    assert [c for c in changes(got) if c[0] == "over_threshold"] == [
        ("over_threshold", "opened", "critical"),
        ("over_threshold", "cleared", "critical"),
    ]


def test_a_partial_frame_does_not_deescalate() -> None:
    got = run([frame(0, 65), frame(1, 55, complete=False)])
    assert changes(got) == [("over_threshold", "opened", "critical")]


def test_open_after_frames_needs_consecutive_hot_frames() -> None:
    rules = AlarmRules(open_after_frames=3)
    assert run([frame(0, 55), frame(1, 55), frame(2, 40), frame(3, 55)], rules) == []
    got = run([frame(0, 55), frame(1, 55), frame(2, 55)], rules)
    assert changes(got) == [("over_threshold", "opened", "warning")]
    assert got[0].at == at(25)


def test_non_uniform_only_on_complete_frames_with_hysteresis() -> None:
    partial = frame(0, 45, 20, complete=False)
    assert run([partial]) == []
    got = run([frame(0, 45, 30), frame(1, 39, 30), frame(2, 37.9, 30), frame(3, 38, 30)])
    assert changes(got) == [
        ("non_uniform", "opened", "warning"),
        ("non_uniform", "cleared", "warning"),
    ]
    assert got[0].value == 15.0 and got[0].limit == 10.0


def test_rate_of_rise_opens_critical_within_its_window_only() -> None:
    # 40 -> 46 within 600 s: a rise of 6 > 5.
    got = run([frame(0, 40, 35), frame(30, 43, 38), frame(59, 46, 41)])
    assert changes(got) == [("rate_of_rise", "opened", "critical")]
    assert got[0].value == 6.0
    # The same rise spread over more than the window is no alarm.
    assert run([frame(0, 40, 35), frame(61, 46, 41)]) == []
    # Clears after two complete frames without such a rise.
    steady = [frame(60, 46, 41), frame(61, 46, 41), frame(62, 46, 41)]
    got = run([frame(0, 40, 35), frame(59, 46, 41), *steady])
    assert [(t.kind, t.change) for t in got] == [
        ("rate_of_rise", "opened"),
        ("rate_of_rise", "cleared"),
    ]


def test_offline_opens_once_and_clears_on_the_next_uplink() -> None:
    state, got = evaluate_silence(AlarmState(), at(100), 299, 300)
    assert got == []
    state, got = evaluate_silence(state, at(101), 301, 300)
    assert changes(got) == [("offline", "opened", "warning")]
    state, again = evaluate_silence(state, at(200), 400, 300)
    assert again == []
    state, got = evaluate_uplink(state, at(300))
    assert changes(got) == [("offline", "cleared", "warning")]
    assert evaluate_uplink(state, at(301))[1] == []


def test_a_late_fragment_of_an_older_frame_neither_clears_nor_opens() -> None:
    """Issue 20, item 3: the newest frame is hot; an older frame completing late is not judged."""
    state = AlarmState()
    state, got = evaluate_frames(state, RULES, THRESHOLD, [frame(1, 48), frame(2, 48)])
    assert got == []
    state, got = evaluate_frames(state, RULES, THRESHOLD, [frame(3, 52)])
    assert changes(got) == [("over_threshold", "opened", "warning")]
    for late in (frame(1, 30), frame(2, 30), frame(0, 90)):  # re-stored complete, late
        state, got = evaluate_frames(state, RULES, THRESHOLD, [late])
        assert got == []
    assert state.active() == {"over_threshold": "warning"}


def test_a_newer_complete_frame_waits_for_an_older_one_still_arriving() -> None:
    state = AlarmState()
    state, got = evaluate_frames(state, RULES, THRESHOLD, [frame(0, 55)])
    older = frame(1, 30, complete=False, settled=False)
    state, got = evaluate_frames(state, RULES, THRESHOLD, [older, frame(2, 30)])
    state, got = evaluate_frames(state, RULES, THRESHOLD, [older, frame(3, 30)])
    assert got == []  # frames 2 and 3 wait for frame 1
    assert [f.key for f in state.waiting] == ["f2", "f3"]
    state, got = evaluate_frames(state, RULES, THRESHOLD, [frame(1, 30)])
    assert changes(got) == [("over_threshold", "cleared", "warning")]
    assert state.waiting == ()


def test_a_hot_frame_opens_at_once_while_an_older_one_waits_for_a_lost_fragment() -> None:
    state = AlarmState()
    older = frame(1, 30, complete=False, settled=False)
    newer = frame(2, 52, complete=False, settled=False)
    state, got = evaluate_frames(state, RULES, THRESHOLD, [older, newer])
    assert changes(got) == [("over_threshold", "opened", "warning")]
    assert got[0].at == newer.at


def test_state_survives_json_and_rebuilds_from_active_alarms() -> None:
    state = AlarmState()
    for f in [frame(0, 65), frame(1, 40), frame(2, 30, complete=False, settled=False)]:
        state, _ = evaluate_frames(state, RULES, THRESHOLD, [f])
    state, _ = evaluate_frames(state, RULES, THRESHOLD, [frame(4, 40)])
    assert state_from_json(state_to_json(state)) == state
    rebuilt = state_from_json(None, {"over_threshold": "critical", "offline": "warning"})
    assert rebuilt.active() == {"over_threshold": "critical", "offline": "warning"}
    # The alarms table has the last word on what is active.
    assert state_from_json(state_to_json(state), {}).active() == {}


def test_rules_name_a_bad_key_or_value() -> None:
    with pytest.raises(AlarmRuleError, match="unknown alarm rule 'colour'"):
        rules_with(RULES, {"colour": 1})
    with pytest.raises(AlarmRuleError, match="clear_after_frames must be an integer from 1"):
        rules_with(RULES, {"clear_after_frames": 0})
    with pytest.raises(AlarmRuleError, match="hysteresis_c must be a number"):
        rules_with(RULES, {"hysteresis_c": "2"})
    with pytest.raises(AlarmRuleError, match="unknown alarm rule"):
        merge_overrides({}, {"nope": None})
    assert merge_overrides({"rise_c": 3.0}, {"rise_c": None, "hysteresis_c": 1}) == {
        "hysteresis_c": 1.0
    }
    assert rules_with(RULES, {"open_after_frames": 2.0}).open_after_frames == 2


# --- properties -------------------------------------------------------------------------------

temperatures = st.sampled_from([30.0, 47.5, 48.0, 49.0, 50.0, 50.1, 55.0, 60.0, 60.1, 75.0])


@dataclass
class ModelFrame:
    """A frame in the model: fragment maxima (None = a lost fragment)."""

    n: int
    fragments: list[float | None]


frames_strategy = st.lists(
    st.builds(
        lambda n, temps, lost: ModelFrame(
            n, [None if i in lost else t for i, t in enumerate(temps)]
        ),
        st.just(0),
        st.lists(temperatures, min_size=FRAGMENTS, max_size=FRAGMENTS),
        st.sets(st.integers(0, FRAGMENTS - 1), max_size=1),
    ),
    min_size=1,
    max_size=12,
)
rules_strategy = st.builds(
    AlarmRules,
    open_after_frames=st.integers(1, 3),
    clear_after_frames=st.integers(1, 3),
    hysteresis_c=st.sampled_from([0.0, 2.0, 5.0]),
)


class Bridge:
    """The engine driven as the bridge drives it: fragments arrive, frames settle."""

    def __init__(self, model: list[ModelFrame], rules: AlarmRules) -> None:
        self.model = {m.n: m for m in model}
        self.rules = rules
        self.got: dict[int, list[float]] = {m.n: [] for m in model}
        self.settled: set[int] = set()
        self.state = AlarmState()
        self.out: list[Transition] = []
        self.calls: list[tuple[list[FrameSummary], list[Transition]]] = []

    def summary(self, n: int) -> FrameSummary:
        temps = self.got[n]
        return FrameSummary(
            f"f{n}",
            at(n * 10),
            at(n * 10 + len(temps)),
            n in self.settled,
            len(temps) == len(self.model[n].fragments),
            max(temps) if temps else None,
            min(temps) - 5 if temps else None,
        )

    def arrive(self, n: int, temp: float) -> None:
        self.got[n].append(temp)
        settled_now = []
        if len(self.got[n]) == len(self.model[n].fragments):
            settled_now.append(n)
            # A frame completing closes older open frames as partial (PROTOCOL.md).
            settled_now += [m for m in self.model if m < n and m not in self.settled]
        self.settled.update(settled_now)
        self.call(settled_now)

    def finish(self) -> None:
        rest = [n for n in self.model if n not in self.settled]  # timeouts
        self.settled.update(rest)
        self.call(rest)

    def call(self, settled_now: list[int]) -> None:
        arriving = [n for n in self.model if n not in self.settled and self.got[n]]
        frames = [self.summary(n) for n in sorted(set(settled_now) | set(arriving))]
        self.state, got = evaluate_frames(self.state, self.rules, THRESHOLD, frames)
        self.calls.append((frames, got))
        self.out += got


def numbered(model: list[ModelFrame]) -> list[ModelFrame]:
    return [ModelFrame(i, m.fragments) for i, m in enumerate(model)]


def in_order(model: list[ModelFrame]) -> list[tuple[int, float]]:
    return [(m.n, t) for m in model for t in m.fragments if t is not None]


def drive(model: list[ModelFrame], rules: AlarmRules, arrivals: list[tuple[int, float]]) -> Bridge:
    bridge = Bridge(model, rules)
    for n, temp in arrivals:
        bridge.arrive(n, temp)
    bridge.finish()
    return bridge


@settings(max_examples=150, deadline=None)
@given(frames_strategy, rules_strategy, st.randoms(use_true_random=False))
def test_any_interleaving_of_consecutive_frames_gives_the_in_order_transitions(
    model: list[ModelFrame], rules: AlarmRules, rnd: random.Random
) -> None:
    model = numbered(model)
    ordered = in_order(model)
    # Each fragment may arrive up to half a frame early or late: fragments of consecutive frames
    # interleave, and the fragments of one frame come in any order. (More, and a newer frame
    # can complete first and close the older one as partial: what it then misses is not judged.)
    shift = FRAGMENTS / 2 - 0.1
    keyed = [(i + rnd.uniform(-shift, shift), n, t) for i, (n, t) in enumerate(ordered)]
    shuffled = [(n, t) for _, n, t in sorted(keyed)]
    a = drive(model, rules, ordered)
    b = drive(model, rules, shuffled)
    opened_cleared = {"opened", "cleared"}
    assert [(t.kind, t.change) for t in a.out if t.change in opened_cleared] == [
        (t.kind, t.change) for t in b.out if t.change in opened_cleared
    ]
    assert a.state.kinds == b.state.kinds


@settings(max_examples=150, deadline=None)
@given(frames_strategy, rules_strategy, st.randoms(use_true_random=False))
def test_no_alarm_opens_twice_and_nothing_clears_on_a_partial_frame_or_in_the_band(
    model: list[ModelFrame], rules: AlarmRules, rnd: random.Random
) -> None:
    model = numbered(model)
    arrivals = in_order(model)
    rnd.shuffle(arrivals)  # any arrival order at all
    bridge = drive(model, rules, arrivals)
    active: set[str] = set()
    settled: dict[str, FrameSummary] = {}  # every settled frame as last given to the engine
    for frames, got in bridge.calls:
        settled.update((f.key, f) for f in frames if f.settled)
        for t in got:
            if t.change == "opened":
                assert t.kind not in active, "opened twice"
                active.add(t.kind)
            else:
                assert t.kind in active, f"{t.change} of an alarm that is not active"
            if t.change == "cleared":
                active.discard(t.kind)
                # The frame that cleared it: settled and complete, and below the band.
                judged = [f for f in settled.values() if f.at == t.at]
                assert judged and all(f.complete for f in judged)
                if t.kind == "over_threshold":
                    cool = THRESHOLD - rules.hysteresis_c
                    assert all(f.temp_max is not None and f.temp_max <= cool for f in judged)
    assert active == set(bridge.state.active())


@settings(max_examples=200, deadline=None)
@given(frames_strategy, rules_strategy)
def test_the_clearing_frames_are_the_last_complete_ones_and_all_below_the_band(
    model: list[ModelFrame], rules: AlarmRules
) -> None:
    model = numbered(model)
    bridge = drive(model, rules, in_order(model))
    complete = [m for m in model if None not in m.fragments]
    for t in bridge.out:
        if t.kind == "over_threshold" and t.change == "cleared":
            n = (t.at - T0).seconds // 10
            before = [m for m in complete if m.n <= n][-rules.clear_after_frames :]
            assert len(before) == rules.clear_after_frames
            assert all(
                max(m.fragments) <= THRESHOLD - rules.hysteresis_c  # type: ignore[type-var]
                for m in before
            )
