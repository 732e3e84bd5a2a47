"""When a camera's FFmpeg starts again after it exited: at once, after a backoff, or when the camera's
port opens again.

Backoff is for a camera that keeps failing (unreachable, refusing, dying before it records), so that
a hundred broken cameras do not spin. Its pace depends on the cause: a wrong password is retried
once a minute at first and at most every 30 minutes later, because cameras lock an account after a
few failed logins (and a fixed password arrives as a config edit, which restarts the camera at once);
a stream the MP4 container cannot take is not retried often either; an unreachable camera keeps the
fast return probe; a busy server (503) is asked again within seconds.

A camera whose FFmpeg dies after recording well (SIGKILL, the OOM killer, a codec hiccup) is not
failing: it restarts at once and the backoff starts over, because waiting out a delay raised by
faults earlier in the minute only loses footage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from recorderd import ffmpeg
from recorderd.backoff import Backoff
from recorderd.process import port_open

PROBE_INTERVAL = 1.0  # TCP probe of an offline camera, so a return is noticed within seconds
GOOD_RUN_SECONDS = 3.0  # a run recording at least this long earns an immediate restart
# exits that are our own doing and restart at once (no backoff, not the camera's fault)
IMMEDIATE = ("audio_transcode", "clock_step", "resync")
# backoff per cause (Exit.reason); anything else uses the policy's default backoff
SLOW = {"unauthorized": (60.0, 1800.0), "unsupported": (60.0, 1800.0)}  # (first delay, cap) in seconds
BUSY_CAP = 10.0  # a 503 is the server shedding load: come back soon, spread by jitter


@dataclass(frozen=True, slots=True)
class Exit:
    """What the supervisor knows of a run that ended (not by our stop)."""

    reason: str  # unreachable, unauthorized, not_found, unsupported, error, killed, camera_dropped, stall,
    # storage_error, IMMEDIATE...
    lasted: float  # seconds the run lasted
    recorded: bool  # the camera was recording (bytes reached its file) when FFmpeg went
    segments: int  # segments the run produced, the file it was cutting included
    unreachable: bool = False  # FFmpeg could not reach the camera at all (port probing applies)
    busy: bool = False  # the camera answered 503: shedding load


class RestartPolicy:
    """One camera's restart decisions; ``wait`` returns early only when ``stopping`` is set."""

    def __init__(self, url: str, stopping: asyncio.Event, *, backoff: Backoff | None = None,
                 log: Any = None) -> None:
        self.backoff = backoff or Backoff()
        self._by_cause: dict[str, Backoff] = {}
        self._addr = ffmpeg.camera_address(url)
        self._stopping = stopping
        self._log = log

    def delay(self, ended: Exit) -> float:
        """Seconds to wait before the next FFmpeg; resets the backoff after a good run."""
        if ended.reason in IMMEDIATE:
            return 0.0
        if ended.recorded and ended.lasted >= GOOD_RUN_SECONDS:
            self.reset()
            return 0.0
        return self.backoff_for(ended).next_delay(ended.lasted if ended.segments else 0.0)

    def backoff_for(self, ended: Exit) -> Backoff:
        """The sequence this exit advances: one per slow cause, so a password fixed on the camera (not
        in the config) is still tried within 30 minutes, and a camera that alternates between
        unreachable and 401 does not make either wait the other's delays."""
        key = "busy" if ended.busy else ended.reason
        if key not in SLOW and key != "busy":
            return self.backoff
        b = self._by_cause.get(key)
        if b is None:
            base, cap = SLOW.get(key, (self.backoff.base, BUSY_CAP))
            b = self._by_cause[key] = Backoff(base=base, cap=cap, jitter=self.backoff.jitter,
                                              stable_after=self.backoff.stable_after)
        return b

    def reset(self) -> None:
        self.backoff.reset()
        for b in self._by_cause.values():
            b.reset()

    @staticmethod
    def name_wait(newest_name: float | None, last_exit_wall: float, now: float | None = None) -> float:
        """Seconds until a new FFmpeg cannot open a file under a name this camera already has.

        Names have whole seconds: a file opened in the second the last one was opened would replace
        it. The newest name on disk says exactly which second is taken (a run that opened its file 8 s
        ago needs no wait); without it, the second of the last exit is assumed taken. Never more than
        a second: a clock further behind the footage is the supervisor's suffix case, not a wait.
        """
        now = time.time() if now is None else now
        taken = newest_name if newest_name is not None else last_exit_wall // 1
        return max(0.0, min(1.0, taken + 1 - now))

    async def wait(self, seconds: float, ended: Exit) -> None:
        """Sleep ``seconds``; an unreachable camera's port coming back cuts it short."""
        if ended.unreachable and self._addr is not None:
            await self._wait_for_camera(seconds, self._addr)
        else:
            await self.sleep(seconds)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait_for_camera(self, delay: float, addr: tuple[str, int]) -> None:
        """Back off, but come back within a second of the camera's port opening again.

        Only a port seen closed and then open cuts the wait short: a camera that accepts TCP and then
        resets the stream would otherwise get a new FFmpeg every second, forever.
        """
        deadline = time.monotonic() + delay
        seen_closed = False
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await self.sleep(min(PROBE_INTERVAL, left))
            if await port_open(*addr, timeout=min(1.0, PROBE_INTERVAL)):
                if seen_closed:
                    if self._log is not None:
                        self._log.debug("camera_port_open", host=addr[0], port=addr[1])
                    return
            else:
                seen_closed = True
