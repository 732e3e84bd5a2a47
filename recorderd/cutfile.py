"""The file FFmpeg was writing when it died (SIGKILL, a crash): still footage, up to its last fragment.

With ``frag_keyframe`` every fragment on disk is playable, so the cut file is probed and indexed like
any other; its start tiles onto the run's previous segment when there was one. A file holding only
the MP4 header (killed before its first fragment) has no footage and would never be swept as one:
it is removed. File work runs in threads, so a hung mount delays this file only, not the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from recorderd import metrics, mp4
from recorderd.stamps import RunTimeline


@dataclass(frozen=True, slots=True)
class Recovered:
    path: str
    start: float
    end: float
    size: int
    duration: float


def _remove_if_header_only(path: str, size: int) -> bool:
    if size and not mp4.is_header_only(path):
        return False
    with contextlib.suppress(OSError):
        os.unlink(path)
    return True


async def recover(path: str, timeline: RunTimeline, offset: Callable[[], float],
                  probe: Callable[[str], Awaitable[float | None]] | None, log: Any) -> Recovered | None:
    """What ``path`` holds, with wall times; None when it holds nothing (removed) or cannot be read."""
    try:
        st = await asyncio.to_thread(os.stat, path)
    except OSError:
        return None
    if await asyncio.to_thread(_remove_if_header_only, path, st.st_size):
        if st.st_size:
            metrics.HEADER_ONLY_REMOVED.inc()
            log.info("segment_header_only_removed", path=path, size=st.st_size)
        return None
    duration = await probe(path) if probe else None
    if not duration:
        log.warning("segment_unreadable", path=path, size=st.st_size)
        return None
    start_m = timeline.cut_start()
    if start_m is not None:
        start = start_m + offset()  # tiles onto the previous segment of this run
        end = max(start, st.st_mtime) if timeline.drifting else start + duration
    else:
        start, end = st.st_mtime - duration, st.st_mtime  # the last fragment hit the disk at its end
    log.info("segment_recovered", path=path, duration=round(duration, 3))
    return Recovered(path=path, start=start, end=end, size=st.st_size, duration=duration)
