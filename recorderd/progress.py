"""Is each camera's file still growing? One worker-thread call a tick answers it for every camera.

Stall detection needs the size of the file each FFmpeg is writing. A ``stat`` per camera on the event
loop freezes the whole daemon on a hung mount (and the systemd watchdog then kills every camera), and
a timer per camera costs a wakeup per camera per second. Instead one task stats all current files in
one ``asyncio.to_thread`` call per tick and hands each supervisor its result; if the storage hangs,
that thread hangs, the loop does not, and the cameras' files simply stop "growing" (stall).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from recorderd.logging import get_logger

log = get_logger()

TICK = 1.0


@dataclass(slots=True)
class FileProgress:
    """What the poller saw of one camera's current file; the supervisor resets it per FFmpeg run."""

    path: str | None = None  # set by the supervisor: the file FFmpeg is writing
    size: int = -1
    seen_path: str | None = None  # the file ``size`` belongs to
    grew_mono: float = 0.0  # monotonic time a tick first saw the current size (stall clock)
    grew_wall: float | None = None  # the file's mtime at its last growth (when it really grew)
    max_gap: float = 0.0  # longest pause between two growths seen in this run (about the GOP)
    on_tick: Callable[[float], None] | None = None

    def reset(self, now: float) -> None:
        self.path = self.seen_path = self.grew_wall = None
        self.size, self.grew_mono, self.max_gap = -1, now, 0.0

    @property
    def wrote_bytes(self) -> bool:
        return self.size > 0


def _stat_all(paths: dict[str, str]) -> dict[str, tuple[str, int, float] | None]:
    out: dict[str, tuple[str, int, float] | None] = {}
    for key, path in paths.items():
        try:
            st = os.stat(path)
            out[key] = (path, st.st_size, st.st_mtime)
        except OSError:
            out[key] = None
    return out


class ProgressPoller:
    """``track(key)`` gives a FileProgress that is updated every tick while ``run()`` runs."""

    def __init__(self, tick: float = TICK, mono: Callable[[], float] = time.monotonic) -> None:
        self.tick = tick
        self._mono = mono
        self._tracked: dict[str, FileProgress] = {}

    def track(self, key: str) -> FileProgress:
        fp = self._tracked.get(key)
        if fp is None:
            fp = self._tracked[key] = FileProgress(grew_mono=self._mono())
        return fp

    def untrack(self, key: str) -> None:
        self._tracked.pop(key, None)

    async def poll_once(self) -> None:
        paths = {k: fp.path for k, fp in self._tracked.items() if fp.path}
        stats = await asyncio.to_thread(_stat_all, paths) if paths else {}
        now = self._mono()
        for key, fp in list(self._tracked.items()):
            seen = stats.get(key)
            if seen is not None and seen[0] == fp.path and (seen[0], seen[1]) != (fp.seen_path, fp.size):
                if fp.size > 0 and fp.grew_wall is not None and seen[1] > 0:
                    fp.max_gap = min(30.0, max(fp.max_gap, seen[2] - fp.grew_wall))
                fp.seen_path, fp.size = seen[0], seen[1]
                fp.grew_mono = now
                fp.grew_wall = seen[2]
            if fp.on_tick is not None:
                try:
                    fp.on_tick(now)
                except Exception as exc:  # one camera's bug must not blind the others' stall checks
                    log.exception("supervisor_error", camera=key, error=repr(exc))

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.tick)
