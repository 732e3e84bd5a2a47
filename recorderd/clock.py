"""The wall clock, watched against the monotonic clock: steps are detected, never trusted blindly.

A box without a battery clock boots days behind and NTP steps it forward later; a bad RTC or an
operator's ``date -s`` steps it either way. Footage times and file names come from the wall clock and
retention compares them with it, so a step must be noticed the moment it matters:

* ``check()`` compares ``time.time() - time.monotonic()`` with the last reading. A change beyond
  ``STEP_THRESHOLD`` is a step (NTP's slewing moves it by well under a millisecond per second, and the
  reference follows slow changes, so slewing never adds up to a step). Listeners hear of each step
  synchronously, before any segment is stamped with the new clock, so "stamped before the step" is
  exact: the supervisor stamps a segment only right after a ``check()``.
* ``reason()`` says why the clock is not to be trusted right now (None when it is): a step whose
  footage is still being re-stamped, or a wall clock before ``PLAUSIBLE_AFTER`` (a firmware date).
  The retention sweeper refuses age deletions while there is a reason.

Segment times are kept on the monotonic clock inside a run and turned into wall time with the
offset current at the moment they are stamped (see ``stamps.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from recorderd import metrics
from recorderd.events import SegmentEvent
from recorderd.logging import get_logger

log = get_logger()

STEP_THRESHOLD = 1.0  # seconds the wall-monotonic offset may change between two readings
SLEW_FOLLOW = 0.001  # the offset used for stamps follows slewing in steps of a millisecond
CHECK_INTERVAL = 1.0
# No NVR footage is stamped before this: a wall clock earlier than it is a firmware or RTC reset date.
PLAUSIBLE_AFTER = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Step:
    """The wall clock jumped by ``delta`` seconds (positive: forward) just before ``mono``."""

    delta: float
    mono: float
    wall_before: float  # what the wall clock would read now without the step
    wall_after: float

    @property
    def direction(self) -> str:
        return "forward" if self.delta > 0 else "backward"


class WallClock:
    """One per daemon; supervisors, the stamping of segments and the sweeper's gate share it."""

    def __init__(self, *, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 threshold: float = STEP_THRESHOLD) -> None:
        self._wall = wall
        self._mono = mono
        self.threshold = threshold
        self._offset = wall() - mono()
        self.listeners: list[Callable[[Step], None]] = []
        self.steps: list[Step] = []
        # set by the daemon: True while re-stamped times are not yet in the index
        self.restamp_pending: Callable[[], bool] = lambda: False
        self._last_reason: str | None = None
        metrics.CLOCK_TRUSTED.set(1)

    def mono(self) -> float:
        return self._mono()

    def offset(self) -> float:
        """wall - monotonic, after checking for a step: the conversion for a stamp made now."""
        self.check()
        return self._offset

    def check(self) -> Step | None:
        """Compare the clocks once; a step is recorded, logged, counted and told to the listeners."""
        mono = self._mono()
        wall = self._wall()
        offset = wall - mono
        delta = offset - self._offset
        if abs(delta) <= self.threshold:
            if abs(delta) > SLEW_FOLLOW:  # follow slewing; a steady offset keeps stamps consistent
                self._offset = offset
            return None
        step = Step(delta=delta, mono=mono, wall_before=mono + self._offset, wall_after=wall)
        self._offset = offset
        self.steps.append(step)
        del self.steps[:-100]
        metrics.CLOCK_STEPS.labels(step.direction).inc()
        log.warning("clock_stepped", direction=step.direction, seconds=round(delta, 3),
                    wall_before=_iso(step.wall_before), wall_after=_iso(step.wall_after))
        for listener in list(self.listeners):
            try:
                listener(step)
            except Exception as exc:  # a listener's bug must not hide the step from the others
                log.exception("clock_listener_failed", error=repr(exc))
        self.reason()
        return step

    def reason(self) -> str | None:
        """Why age deletions must wait, or None; the gauge and a log line follow every change."""
        self.check()  # a step not yet seen is told (and re-stamped) before the verdict
        why: str | None = None
        wall = self._mono() + self._offset
        if wall < PLAUSIBLE_AFTER:
            why = (f"wall clock reads {_iso(wall)}, before {_iso(PLAUSIBLE_AFTER)}: "
                   "not synchronised yet (firmware date?)")
        elif self.restamp_pending():
            last = self.steps[-1] if self.steps else None
            step = f" by {last.delta:+.1f}s" if last else ""
            why = f"wall clock stepped{step}; footage recorded before the step is being re-stamped"
        if why != self._last_reason:
            self._last_reason = why
            metrics.CLOCK_TRUSTED.set(0 if why else 1)
            if why:
                log.warning("clock_untrusted", reason=why)
            else:
                log.info("clock_trusted")
        return why

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        """Check once a second so a step is noticed even while no segment closes."""
        while True:
            self.check()
            await asyncio.sleep(interval)


class RunLedger:
    """Between the supervisors and the index: remembers the last ``seq`` each run has stamped.

    Every segment of this process goes through ``submit``; on a step, ``on_step`` asks the index to
    shift exactly the segments stamped before it (each run's seq up to its last one) by the step,
    whether their rows are committed or still queued. Segments found on disk at start-up (no run of
    ours) are not touched: nothing says which clock stamped them.
    """

    def __init__(self, sink: Callable[[SegmentEvent], None],
                 restamp: Callable[[Mapping[str, int], float], None], max_runs: int = 10_000) -> None:
        self._sink = sink
        self._restamp = restamp
        self._max_runs = max_runs
        self._last: OrderedDict[str, int] = OrderedDict()

    def submit(self, event: SegmentEvent) -> None:
        if event.run_id is not None and event.seq is not None:
            self._last[event.run_id] = event.seq
            self._last.move_to_end(event.run_id)
            if len(self._last) > self._max_runs:
                self._last.popitem(last=False)
        self._sink(event)

    def on_step(self, step: Step) -> None:
        if self._last:
            self._restamp(dict(self._last), step.delta)


def _iso(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(epoch)
