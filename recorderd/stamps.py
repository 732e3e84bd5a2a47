"""Wall-clock times for the segments of one FFmpeg run: exact tiling, honest when the stream lies.

FFmpeg's segment list gives each segment's start and end in stream seconds. Within a run they tile
exactly, so a run needs one anchor to place them in time. The anchor is kept on the monotonic clock
(``mono = anchor + stream seconds``) and converted to wall time with the offset current when a
segment is stamped, so a wall-clock step never moves footage already stamped in monotonic terms
(see ``clock.py`` for what happens to segments stamped before a step).

* The anchor is taken when the first segment closes: the cut happens when the first packet of the
  next segment arrives, so ``anchor = now - end`` places the run within the network latency, unfooled
  by the seconds FFmpeg spends probing before it opens the first file.
* A first close that arrives long after the file last grew (a camera frozen with its connection
  open: FFmpeg only prints the line when ``-timeout`` ends it) is anchored on the last growth instead,
  else the segment would be stamped ``timeout_seconds`` late.
* Stream time that parts from monotonic time by more than ``DRIFT_LIMIT`` (frozen or jumping camera
  timestamps, a camera that declares 25 fps and sends 21) starts an episode: its segments are stamped
  by arrival (previous end to the close), so footage on disk is never indexed as a gap. Once two
  segments in a row hold as much stream time as wall time, the episode is over and the run is
  re-anchored; an episode that lasts ``PERSISTENT`` seconds is a camera whose clock cannot place
  footage, and the supervisor restarts it with arrival-time timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass

DRIFT_LIMIT = 2.0  # seconds stream time may part from monotonic time before segments are stamped by arrival
STEP_MIN = 0.5  # an offset change this large between two closes is a clock step: no wall tiling
LATE_CLOSE = 3.0  # a first close this long after the file last grew is anchored on that growth
PERSISTENT = 20.0  # an episode this long is the camera, not a glitch
STEADY_SEGMENTS = 2  # segments in a row whose stream time matches wall time end an episode


@dataclass(frozen=True, slots=True)
class Stamp:
    start: float  # wall seconds
    end: float
    lag: float  # monotonic now minus where stream time puts this close (0 for the first close)
    by_arrival: bool  # stamped by arrival time: stream time is not tracking wall time
    episode_seconds: float = 0.0  # how long the current drift episode has lasted
    episode_started: bool = False  # this close began an episode
    recovered: bool = False  # this close ended one: stream time tracks again, run re-anchored


class RunTimeline:
    """Turns ``(stream start, stream end)`` of each closed segment into wall times; pure."""

    def __init__(self, drift_limit: float = DRIFT_LIMIT, late_close: float = LATE_CLOSE) -> None:
        self.drift_limit = drift_limit
        self.late_close = late_close
        self.anchor: float | None = None  # monotonic = anchor + stream seconds
        self.last_end_stream: float | None = None
        self.last_end_mono: float | None = None
        self.last_close_mono: float | None = None
        self.last_end_wall: float | None = None
        self.last_offset = 0.0
        self.drifting = False  # inside an episode: segments stamped by arrival
        self.episode_since = 0.0
        self._steady = 0

    def close(self, start_s: float, end_s: float, *, mono_now: float, offset: float,
              last_growth: float | None = None, growth_gap: float = 0.0) -> Stamp:
        """Stamp a closed segment.

        ``last_growth`` is the monotonic time its file last grew, if known, and ``growth_gap`` the
        longest pause between growths seen in this run (a camera writes a fragment per keyframe
        interval): a close that comes later than both after the last growth came late (FFmpeg only
        printed the line when its ``-timeout`` ended a frozen camera), and the data ended at the growth.
        """
        lag = 0.0
        started = recovered = False
        ref = mono_now
        if last_growth is not None and mono_now - last_growth > max(self.late_close, 2 * growth_gap):
            ref = last_growth
        if self.anchor is None:
            self.anchor = ref - end_s
        else:
            lag = ref - (self.anchor + end_s)
            if not self.drifting and abs(lag) > self.drift_limit:
                self.drifting, started, self._steady = True, True, 0
                self.episode_since = self.last_close_mono if self.last_close_mono is not None else mono_now
        start_m = self.last_end_mono if self.last_end_mono is not None else self.anchor + start_s
        by_arrival = self.drifting
        if self.drifting:
            end_m = max(start_m, ref)
            if not started and self._tracks(start_s, end_s, mono_now):
                self._steady += 1
            elif not started:
                self._steady = 0
            if self._steady >= STEADY_SEGMENTS:
                self.drifting, recovered = False, True
                self.anchor = end_m - end_s  # stream time is good again, from where it is now
        else:
            end_m = max(start_m, self.anchor + end_s)
        start = start_m + offset
        if self.last_end_wall is not None and abs(offset - self.last_offset) < STEP_MIN:
            start = self.last_end_wall  # the very float the previous segment ended at
        end = max(start, end_m + offset)
        episode = mono_now - self.episode_since if self.drifting else 0.0
        self.last_end_stream, self.last_end_mono, self.last_close_mono = end_s, end_m, mono_now
        self.last_end_wall, self.last_offset = end, offset
        return Stamp(start, end, lag, by_arrival, episode, started, recovered)

    def _tracks(self, start_s: float, end_s: float, mono_now: float) -> bool:
        """This segment holds about as much stream time as wall time passed since the last close."""
        if self.last_close_mono is None:
            return False
        stream = end_s - (self.last_end_stream if self.last_end_stream is not None else start_s)
        wall = mono_now - self.last_close_mono
        return wall > 0 and abs(stream - wall) <= max(0.25, 0.05 * wall)

    def cut_start(self) -> float | None:
        """Monotonic start of a segment the run never closed (killed FFmpeg): where the last one ended."""
        return self.last_end_mono
