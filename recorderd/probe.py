"""Duration of a segment file found without a completion event (reconcile, watcher).

ffprobe runs as a subprocess with a timeout and a small concurrency bound: a reconcile after an
outage may find thousands of files, and probing them must not starve the FFmpegs recording now.
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from dataclasses import dataclass

from recorderd.logging import get_logger

log = get_logger(component="probe")

FFPROBE = os.environ.get("RECORDERD_FFPROBE", "ffprobe")
PROBE_CONCURRENCY = 4
PROBE_TIMEOUT = 30.0
# mtime is when the last fragment was flushed, i.e. about the wall time of the segment's end; trust
# ``mtime - duration`` as the start only when it agrees with the second-resolution path time.
START_EARLY_TOLERANCE = 10.0
START_LATE_TOLERANCE = 2.0

_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())
_missing_logged = False


def _semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _semaphores.get(loop)
    if sem is None:
        sem = _semaphores[loop] = asyncio.Semaphore(PROBE_CONCURRENCY)
    return sem


async def probe_duration(path: str, timeout: float = PROBE_TIMEOUT) -> float | None:
    """Seconds of media in ``path``, or None if ffprobe cannot read it (empty, corrupt, timeout)."""
    global _missing_logged
    async with _semaphore():
        try:
            proc = await asyncio.create_subprocess_exec(
                FFPROBE, "-v", "error", "-show_entries", "format=duration",
                "-of", "default=noprint_wrappers=1:nokey=1", path,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL)
        except FileNotFoundError:
            if not _missing_logged:
                log.error("ffprobe_missing", binary=FFPROBE)
                _missing_logged = True
            return None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
    if proc.returncode != 0:
        return None
    try:
        value = float(out.decode("ascii", "replace").strip().splitlines()[0])
    except (ValueError, IndexError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value


@dataclass(frozen=True, slots=True)
class FoundFile:
    """A segment file seen on disk: what reconcile and the watcher know before probing it."""

    path: str
    camera_id: str
    path_time: float  # start from the file name (1 s resolution)
    mtime: float
    size: int


def start_time(found: FoundFile, duration: float) -> float:
    """Exact start from mtime when plausible, else the path's whole second."""
    guess = found.mtime - duration
    if found.path_time - START_EARLY_TOLERANCE <= guess <= found.path_time + START_LATE_TOLERANCE:
        return guess
    return found.path_time
