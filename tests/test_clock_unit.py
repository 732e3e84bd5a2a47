"""Wall clock against monotonic time (injected clocks), the run ledger, and run stamping: pure logic."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from recorderd.clock import PLAUSIBLE_AFTER, RunLedger, Step, WallClock
from recorderd.events import SegmentEvent
from recorderd.stamps import DRIFT_LIMIT, PERSISTENT, RunTimeline

NOW = 1_790_000_000.0  # 2026-09


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = NOW

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def make_clock(c: Clocks) -> WallClock:
    return WallClock(wall=lambda: c.wall, mono=lambda: c.mono)


def test_steps_are_detected_both_ways_and_told_before_the_next_stamp() -> None:
    c = Clocks()
    clock = make_clock(c)
    heard: list[Step] = []
    clock.listeners.append(heard.append)
    c.advance(5)
    assert clock.check() is None
    c.wall += 3 * 86400  # NTP steps a box that booted 3 days behind
    assert clock.offset() == pytest.approx(NOW - 100 + 3 * 86400)  # offset() checks first
    assert [round(s.delta) for s in heard] == [3 * 86400]
    assert heard[0].direction == "forward"
    assert heard[0].wall_before == pytest.approx(NOW + 5)
    c.wall -= 3600
    step = clock.check()
    assert step is not None and step.direction == "backward" and round(step.delta) == -3600


def test_slewing_never_adds_up_to_a_step() -> None:
    c = Clocks()
    clock = make_clock(c)
    for _ in range(10_000):  # 10,000 s slewed at 500 ppm = 5 s in total, 0.5 ms per reading
        c.advance(1)
        c.wall += 0.0005
        assert clock.check() is None
    assert clock.steps == []


def test_reason_while_restamp_pending_and_before_a_plausible_date() -> None:
    c = Clocks()
    clock = make_clock(c)
    pending = [False]
    clock.restamp_pending = lambda: pending[0]
    assert clock.reason() is None
    c.wall += 86400
    pending[0] = True
    why = clock.reason()
    assert why is not None and "stepped by +86400.0s" in why
    pending[0] = False
    assert clock.reason() is None
    c.wall = PLAUSIBLE_AFTER - 86400 * 365  # firmware date: a step back, and implausible
    why = clock.reason()
    assert why is not None and "not synchronised" in why


def _event(run: str | None, seq: int | None) -> SegmentEvent:
    return SegmentEvent("cam", f"/r/cam/{run}-{seq}.mp4", 1.0, 2.0, 1, run, seq, "ffmpeg", 2.0)


def test_ledger_names_exactly_what_was_stamped_before_the_step() -> None:
    sunk: list[SegmentEvent] = []
    asked: list[tuple[dict[str, int], float]] = []

    def restamp(runs: Mapping[str, int], delta: float) -> None:
        asked.append((dict(runs), delta))

    ledger = RunLedger(sunk.append, restamp)
    for ev in (_event("a", 0), _event("a", 1), _event("b", 0), _event(None, None)):
        ledger.submit(ev)
    ledger.on_step(Step(delta=60.0, mono=1.0, wall_before=0.0, wall_after=60.0))
    ledger.submit(_event("b", 1))
    ledger.on_step(Step(delta=-5.0, mono=2.0, wall_before=0.0, wall_after=-5.0))
    assert len(sunk) == 5
    assert asked == [({"a": 1, "b": 0}, 60.0), ({"a": 1, "b": 1}, -5.0)]


def test_ledger_is_bounded() -> None:
    asked: list[dict[str, int]] = []
    ledger = RunLedger(lambda e: None, lambda runs, d: asked.append(dict(runs)), max_runs=3)
    for i in range(5):
        ledger.submit(_event(f"r{i}", 0))
    ledger.on_step(Step(1.5, 0.0, 0.0, 1.5))
    assert sorted(asked[0]) == ["r2", "r3", "r4"]


# ------------------------------------------------------------------ stamping one run


def test_segments_tile_exactly_and_follow_the_offset_current_at_stamping() -> None:
    t = RunTimeline()
    a = t.close(0.0, 2.0, mono_now=102.3, offset=1000.0)
    b = t.close(2.0, 4.05, mono_now=104.3, offset=1000.0)  # FFmpeg's start can sit a frame off
    assert a.start == pytest.approx(1100.3) and a.end == pytest.approx(1102.3)
    assert b.start == a.end and b.end == pytest.approx(1104.35)
    c = t.close(4.0, 6.0, mono_now=106.3, offset=4600.0)  # stamped after a 3600 s step
    assert c.start == pytest.approx(b.end + 3600) and not c.by_arrival


def test_a_late_first_close_is_anchored_on_the_last_growth() -> None:
    # camera froze at mono 106 after 6 s of data; FFmpeg printed the list line at its -timeout exit
    old = RunTimeline().close(0.0, 6.0, mono_now=111.2, offset=0.0)
    assert old.start == pytest.approx(105.2)  # what anchoring on "now" does: 5.2 s late
    t = RunTimeline()
    s = t.close(0.0, 6.0, mono_now=111.2, offset=0.0, last_growth=106.0)
    assert s.start == pytest.approx(100.0) and s.end == pytest.approx(106.0)
    fresh = RunTimeline().close(0.0, 6.0, mono_now=106.4, offset=0.0, last_growth=105.5)
    assert fresh.end == pytest.approx(106.4)  # a normal close: growth moments ago, anchored on now


def test_frozen_timestamps_are_stamped_by_arrival_without_a_gap() -> None:
    t = RunTimeline()
    stamps = [t.close(0.0, 2.0, mono_now=102.0, offset=0.0)]
    end = 2.0
    for i in range(2, 8):  # each 2 s file holds 0.002 s of stream time
        stamps.append(t.close(end, end + 0.002, mono_now=100.0 + 2 * i, offset=0.0))
        end += 0.002
    assert t.drifting
    for prev, cur in zip(stamps, stamps[1:], strict=False):
        assert cur.start == prev.end  # no gap, no overlap
    assert stamps[-1].end == pytest.approx(114.0)  # the index covers the wall time footage spans
    assert stamps[2].by_arrival and not stamps[0].by_arrival


def test_a_slow_camera_is_caught_once_it_parts_by_the_drift_limit() -> None:
    t = RunTimeline()
    mono, stream = 100.0, 0.0
    caught_at = None
    for i in range(40):  # declares 25 fps, delivers 21: stream time runs at 0.84
        mono += 2.0
        s = t.close(stream, stream + 1.68, mono_now=mono, offset=0.0)
        stream += 1.68
        if s.by_arrival and caught_at is None:
            caught_at = i
    assert caught_at is not None
    assert (caught_at - 1) * 2.0 * 0.16 <= DRIFT_LIMIT + 0.33  # within one segment of the limit
    assert s.end == pytest.approx(mono)


def test_a_glitch_ends_its_episode_and_the_run_is_re_anchored() -> None:
    """The shared test camera freezes its timestamps for about 8 s when clients come and go."""
    t = RunTimeline()
    mono, stream = 102.0, 2.0
    t.close(0.0, stream, mono_now=mono, offset=0.0)
    stamps = []
    for frozen in (True, True, True, True, False, False, False, False):
        mono += 2.0
        step = 0.002 if frozen else 2.0
        stamps.append(t.close(stream, stream + step, mono_now=mono, offset=0.0))
        stream += step
    assert stamps[1].episode_started and stamps[1].by_arrival  # the first frozen one is within the limit
    assert [s.recovered for s in stamps].index(True) == 5  # two true segments after the glitch
    assert not t.drifting and max(s.episode_seconds for s in stamps) < PERSISTENT
    last = stamps[-1]
    assert not last.by_arrival and last.end == pytest.approx(mono)  # re-anchored where it really is
    for prev, cur in zip(stamps, stamps[1:], strict=False):
        assert cur.start == prev.end


def test_a_persistent_drift_outlasts_the_episode_limit() -> None:
    t = RunTimeline()
    mono, stream = 100.0, 0.0
    longest = 0.0
    for _ in range(30):
        mono += 2.0
        s = t.close(stream, stream + 1.4, mono_now=mono, offset=0.0)  # 0.7 x wall time
        stream += 1.4
        longest = max(longest, s.episode_seconds)
    assert t.drifting and longest >= PERSISTENT  # the supervisor restarts with arrival timestamps


def test_a_late_close_later_in_a_run_is_not_drift() -> None:
    """A clock boundary cut a segment before the camera froze; the next close comes at -timeout."""
    t = RunTimeline()
    a = t.close(0.0, 2.0, mono_now=102.0, offset=0.0, last_growth=101.9, growth_gap=1.0)
    b = t.close(2.0, 6.0, mono_now=111.2, offset=0.0, last_growth=106.0, growth_gap=1.0)
    assert not b.by_arrival and not t.drifting
    assert b.start == a.end and b.end == pytest.approx(106.0)


def test_a_long_keyframe_interval_is_not_a_late_close() -> None:
    """A camera that writes a fragment every 4 s: 3.9 s since the last growth is normal."""
    t = RunTimeline()
    t.close(0.0, 8.0, mono_now=108.0, offset=0.0)
    s = t.close(8.0, 16.0, mono_now=116.0, offset=0.0, last_growth=112.1, growth_gap=4.0)
    assert s.end == pytest.approx(116.0) and not s.by_arrival
