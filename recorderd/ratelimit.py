"""Per-key token buckets, so one broken camera cannot flood the journal with FFmpeg stderr.

Each key (camera id) may log a burst of ``burst`` lines, then ``rate`` lines per second. Lines over
the limit are counted, not logged; the count is handed back once the key may log again (or on
``pop_suppressed`` when FFmpeg exits) so the caller can write one summary line::

    decision = limiter.check(camera_id)
    if decision.suppressed_before:
        log.warning("ffmpeg_output_suppressed", camera=camera_id, count=decision.suppressed_before)
    if decision.allowed:
        log.info("ffmpeg_output", camera=camera_id, line=line)
    else:
        metrics.FFMPEG_OUTPUT_SUPPRESSED.labels(camera_id).inc()

Pure and clock-injected: no I/O, no timers, deterministic in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # lines suppressed since the key last logged; non-zero only on the first allowed line after them
    suppressed_before: int = 0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0


class KeyedRateLimiter:
    """Token bucket per key: ``burst`` tokens, refilled at ``rate`` tokens per second."""

    def __init__(self, rate: float = 1.0, burst: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str) -> Decision:
        """Take one token for ``key`` if there is one."""
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
        else:
            elapsed = max(0.0, now - b.updated)  # a clock stepping back never adds tokens
            b.tokens = min(float(self.burst), b.tokens + elapsed * self.rate)
            b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            suppressed, b.suppressed = b.suppressed, 0
            return Decision(True, suppressed)
        b.suppressed += 1
        return Decision(False)

    def allow(self, key: str) -> bool:
        """``check(key).allowed`` for callers that do not report the suppressed count."""
        return self.check(key).allowed

    def suppressed(self, key: str) -> int:
        b = self._buckets.get(key)
        return b.suppressed if b is not None else 0

    def pop_suppressed(self, key: str) -> int:
        """The pending suppressed count for ``key``, reset to zero (report it when FFmpeg exits)."""
        b = self._buckets.get(key)
        if b is None:
            return 0
        count, b.suppressed = b.suppressed, 0
        return count

    def pop_all_suppressed(self) -> dict[str, int]:
        """Pending counts of every key that has some, reset (for a periodic summary)."""
        out = {k: b.suppressed for k, b in self._buckets.items() if b.suppressed}
        for k in out:
            self._buckets[k].suppressed = 0
        return out

    def forget(self, key: str) -> int:
        """Drop a removed camera's bucket; returns its unreported suppressed count."""
        b = self._buckets.pop(key, None)
        return b.suppressed if b is not None else 0

    def __len__(self) -> int:
        return len(self._buckets)
