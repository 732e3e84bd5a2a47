"""What the recording side hands to the index side; plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

# How a row's times were obtained; a better source replaces a worse one for the same path.
SOURCE_RANK = {"watch": 0, "reconcile": 1, "recovered": 2, "ffmpeg": 3}


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """One finished (or cut) segment file.

    ``start``/``end`` are UTC epoch seconds. Within one FFmpeg run (``run_id``) consecutive
    segments tile exactly: segment ``seq + 1`` starts at the very float this one ends at.
    """

    camera_id: str
    path: str  # absolute
    start: float
    end: float
    size_bytes: int
    run_id: str | None
    seq: int | None
    source: str  # key of SOURCE_RANK
    closed_at: float  # wall time the file was closed (lag = commit time - closed_at)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class OpenFile:
    """The segment file a camera's FFmpeg is writing now (for live playback).

    ``start`` is where it begins in wall time when the run already closed a segment (files of a run
    tile exactly); None for a run's first file, whose start is only known when it closes.
    """

    camera_id: str
    path: str  # absolute
    run_id: str
    start: float | None
