"""Why the recorder is degraded, computed from a plain snapshot so it is testable without a daemon.

``/healthz`` and the ``recorderd_healthy`` gauge both come from ``health_reasons``: an empty list means
healthy. Each reason reads ``"<check>: <detail>"``; ``<check>`` is one of ``CHECKS`` (stable, used as a
metric label), the detail is for the operator reading the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

CHECKS = ("database_down", "disk_unknown", "disk_low", "camera_not_recording", "index_backlog",
          "storage_missing", "clock_untrusted", "config_fallback", "storage_read_only", "health_error")
# States in which a camera is fine without producing segments.
QUIET_STATES = frozenset({"recording", "disabled"})
# A camera is "not recording" once it has been out of QUIET_STATES for this many segment lengths.
SEGMENTS_OF_GRACE = 2
# A disk reading older than this many check periods (and at least DISK_STALE_MIN seconds) means the
# storage filesystem stopped answering: a hung mount, which must show instead of the last good numbers.
DISK_STALE_CHECKS = 3
DISK_STALE_MIN = 30.0


class CameraHealth(NamedTuple):
    """One camera as the supervisor sees it; ``state_since`` uses the same clock as ``now``."""

    camera_id: str
    state: str
    state_since: float
    segment_seconds: float


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """What the daemon knows right now.

    ``disk_*`` are None (or a total of 0) when the storage root could not be statted; ``floor_bytes``
    comes from ``disk_floor_bytes``; ``pending_limit`` is the backlog beyond which the index is
    degraded (half the default ``database.pending_max_rows``; None disables the check).

    ``disk_age_seconds`` is how long ago the storage filesystem last answered statvfs (the sweeper
    reads it in a thread; None: the numbers are fresh); beyond ``disk_stale_seconds`` the numbers are
    not trusted and the reason is ``disk_unknown``. ``storage_missing`` / ``clock_untrusted`` carry the
    storage and clock gates' reasons (None: fine). ``config_fallback`` says why the daemon runs its
    last good config instead of the file on disk; ``storage_read_only`` that the filesystem is mounted
    read-only (nothing can be recorded).
    """

    now: float
    database_up: bool
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    floor_bytes: int
    cameras: Sequence[CameraHealth] = ()
    pending_rows: int = 0
    pending_limit: int | None = 100_000
    disk_age_seconds: float | None = None
    disk_stale_seconds: float = DISK_STALE_MIN
    storage_missing: str | None = None
    clock_untrusted: str | None = None
    config_fallback: str | None = None
    storage_read_only: bool = False


def disk_stale_after(disk_check_seconds: float) -> float:
    """How old a disk reading may get before /healthz calls it unknown: a few missed checks, never
    less than ``DISK_STALE_MIN`` (a busy disk answering late is not a hung one)."""
    return max(DISK_STALE_MIN, DISK_STALE_CHECKS * disk_check_seconds)


def disk_floor_bytes(total_bytes: int, min_free_percent: float, min_free_bytes: int) -> int:
    """The free-space floor: the larger of the absolute and the percentage minimum.

    Free space below it is the same statement as "used ratio above 1 - min_free_percent/100"
    whenever the percentage is the larger of the two.
    """
    return max(int(min_free_bytes), math.ceil(total_bytes * min_free_percent / 100.0))


def health_reasons(snapshot: HealthSnapshot) -> list[str]:
    """Every reason the recorder is degraded; ``[]`` means healthy."""
    s = snapshot
    reasons: list[str] = []
    if not s.database_up:
        reasons.append(f"database_down: index database unreachable, {s.pending_rows} rows waiting")

    if s.storage_missing is not None:
        reasons.append(f"storage_missing: {s.storage_missing}")

    if s.disk_age_seconds is not None and s.disk_age_seconds > s.disk_stale_seconds:
        reasons.append(f"disk_unknown: storage filesystem did not answer for {_duration(s.disk_age_seconds)}")
    elif s.disk_free_bytes is None or s.disk_total_bytes is None or s.disk_total_bytes <= 0:
        reasons.append("disk_unknown: cannot stat the storage filesystem")
    elif s.disk_free_bytes < s.floor_bytes:
        used = 1.0 - s.disk_free_bytes / s.disk_total_bytes
        reasons.append(f"disk_low: {_bytes(s.disk_free_bytes)} free is below the floor of "
                       f"{_bytes(s.floor_bytes)} ({used:.1%} used)")

    for cam in sorted(s.cameras, key=lambda c: c.camera_id):
        if cam.state in QUIET_STATES:
            continue
        limit = SEGMENTS_OF_GRACE * cam.segment_seconds
        age = s.now - cam.state_since
        if age > limit:
            reasons.append(f"camera_not_recording: {cam.camera_id} {cam.state} for {_duration(age)} "
                           f"(limit {_duration(limit)} = {SEGMENTS_OF_GRACE} segments)")

    if s.pending_limit is not None and s.pending_rows > s.pending_limit:
        reasons.append(f"index_backlog: {s.pending_rows} segment rows pending (limit {s.pending_limit})")

    if s.clock_untrusted is not None:
        reasons.append(f"clock_untrusted: {s.clock_untrusted}")
    if s.config_fallback is not None:
        reasons.append(f"config_fallback: {s.config_fallback}")
    if s.storage_read_only:
        reasons.append("storage_read_only: the storage filesystem is mounted read-only: nothing can be recorded")
    return reasons


def check_of(reason: str) -> str:
    """The stable check name a reason starts with (its metric label)."""
    return reason.split(":", 1)[0]


def _duration(seconds: float) -> str:
    total = max(0, int(seconds))
    h, rem = divmod(total, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    raise AssertionError("unreachable")
