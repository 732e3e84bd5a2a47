"""FFmpeg's two output pipes, drained line by line for as long as FFmpeg lives.

A pipe nobody reads fills (64 KiB) and then blocks FFmpeg itself in its next write: recording would
stop because of us. So a reader never stops early, whatever a line holds or a handler raises; the
supervisor only says what a line means (``CameraSupervisor._on_list_line`` / ``_on_stderr_line``).
Problems FFmpeg reports while recording reach the journal rate-limited per camera (a burst of 20
lines, then one a second), so a broken camera cannot flood it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from recorderd import metrics
from recorderd.masking import mask_text
from recorderd.ratelimit import KeyedRateLimiter

_STDERR_LIMIT = KeyedRateLimiter(rate=1.0, burst=20)


async def drain(stream: asyncio.StreamReader | None, handle: Callable[[str], None], log: Any, event: str) -> None:
    """Call ``handle`` with each non-empty line until EOF; a handler error is logged as ``event``."""
    assert stream is not None
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line longer than the buffer: not ours
            continue
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            continue
        try:
            handle(line)
        except Exception as exc:  # keep draining; never the line itself: it may hold the camera URL
            log.exception(event, error=repr(exc))


def forward(camera_id: str, line: str, log: Any, secrets: list[str]) -> None:
    """A problem FFmpeg reports while recording, to the journal within the camera's rate limit."""
    decision = _STDERR_LIMIT.check(camera_id)
    if decision.suppressed_before:
        log.warning("ffmpeg_output_suppressed", count=decision.suppressed_before)
    if decision.allowed:
        log.warning("ffmpeg_output", line=mask_text(line, secrets))
    else:
        metrics.FFMPEG_OUTPUT_SUPPRESSED.labels(camera_id).inc()


def pop_suppressed(camera_id: str) -> int:
    """Lines held back since the last report (told when FFmpeg exits)."""
    return _STDERR_LIMIT.pop_suppressed(camera_id)


def forget(camera_id: str) -> None:
    _STDERR_LIMIT.forget(camera_id)
