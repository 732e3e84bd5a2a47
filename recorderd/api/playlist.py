"""HLS playlists over the recorded files, built from their fragment indexes (pure: no I/O).

Every segment file is already fragmented MP4: an init section (``ftyp`` + ``moov``) and one
``moof`` + ``mdat`` per GOP. HLS version 7 plays that as is: ``EXT-X-MAP`` points at the init byte
range and each media segment is a byte range of the same file, so the server only serves files
with Range support and never remuxes. This module turns an ordered list of files (their index rows
and ``fmp4.FragmentIndex``) and a period into the playlist text.

Choices, and why:

* Consecutive fragments of a file are merged into one byte range of about ``target`` seconds:
  players prefer 2-10 s segments, and a 1 s GOP camera would otherwise list 86400 entries a day.
  A new media segment only ever starts on a keyframe fragment, so ``EXT-X-INDEPENDENT-SEGMENTS``
  holds (it is left out if a file's first fragment is not a keyframe).
* ``EXT-X-DISCONTINUITY`` comes before a file whose media timestamps do not continue the previous
  file's: a new FFmpeg run, a gap in wall-clock time (an outage), or a decode-time jump. The
  recorder segments with ``-reset_timestamps 1``, so in practice every file starts again at 0 and
  every file boundary is a discontinuity; HLS requires the tag whenever the timestamp sequence
  changes, and players (Safari, hls.js) misplace the segments without it.
* ``EXT-X-PROGRAM-DATE-TIME`` (the wall clock of the index) opens each file: players show wall time
  and seek by it, and within a file the fragment durations are exact.
* An open period (reaching now) is an ``EVENT`` playlist without ``EXT-X-ENDLIST``. Published media
  segments must never change on a later reload, so the last merged segment of the file still being
  written is held back until it is full (or the file is closed): it could still grow.
"""

from __future__ import annotations

import math
import operator
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from recorderd.fmp4 import Fragment, FragmentIndex

GAP_SECONDS = 0.5  # wall-clock hole between two files that makes a discontinuity
TARGET_SECONDS = 4.0  # merged media segment length to aim for
_EPSILON = 0.001  # float slack on durations (a millisecond: far below one frame)
_START = operator.itemgetter(2)  # Fragment.start, for bisect


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """One recorded file as the playlist needs it: its index row and its fragment index.

    ``start``/``end`` are the wall clock of the row (epoch seconds); the first fragment plays at
    ``start``. ``run_id`` is the FFmpeg run (files of one run tile exactly); None when unknown.
    """

    id: int
    start: float
    end: float
    run_id: str | None
    index: FragmentIndex


class Piece(NamedTuple):
    """One media segment: fragments ``[first, stop)`` of a file, merged into one byte range."""

    first: int
    stop: int
    duration: float


def build(files: Sequence[SegmentFile], start: float, end: float, *, open_ended: bool,
          url: Callable[[int], str], gap: float = GAP_SECONDS, target: float = TARGET_SECONDS,
          date_every_segment: bool = False) -> str:
    """The HLS playlist of ``files`` (ordered by start) over the period ``[start, end)``.

    ``open_ended``: the period reaches now (EVENT, no ENDLIST; the last file may be growing).
    ``url(file id)`` is the media URL of a file, used for its init section and its byte ranges.
    ``gap``: seconds of wall-clock hole that make a discontinuity. ``target``: merged segment length
    (0 disables merging). ``date_every_segment`` writes PROGRAM-DATE-TIME on every media segment
    instead of once per file (bigger, only useful to players that ignore durations).
    """
    body: list[str] = []
    longest = 0.0
    independent = True
    previous: tuple[SegmentFile, Fragment] | None = None
    for n, file in enumerate(files):
        frags = file.index.fragments
        first, stop = select(frags, start - file.start, end - file.start)
        if first >= stop:
            continue
        growing = open_ended and n == len(files) - 1 and not file.index.complete and stop == len(frags)
        pieces = merge(frags, first, stop, target, hold_back=growing)
        if not pieces:
            continue
        link = _checked(url(file.id))
        if previous is not None and discontinuous(previous[0], previous[1], file, frags[first], gap):
            body.append("#EXT-X-DISCONTINUITY")
        body.append(f'#EXT-X-MAP:URI="{link}",BYTERANGE="{file.index.init_length}@0"')
        for k, (i, j, duration) in enumerate(pieces):
            head, last = frags[i], frags[j - 1]
            if k == 0 or date_every_segment:
                body.append(f"#EXT-X-PROGRAM-DATE-TIME:{date_time(file.start + head.start)}")
            # one string per media segment: the join at the end is the only copy of the text
            body.append(f"#EXTINF:{duration:.3f},\n"
                        f"#EXT-X-BYTERANGE:{last.offset + last.length - head.offset}@{head.offset}\n{link}")
            if duration > longest:
                longest = duration
            if not head.keyframe:
                independent = False
        previous = (file, frags[pieces[-1].stop - 1])
    return _document(body, longest=longest, target=target, open_ended=open_ended, independent=independent)


def select(frags: Sequence[Fragment], rel_start: float, rel_end: float) -> tuple[int, int]:
    """Fragments ``[first, stop)`` that cover ``[rel_start, rel_end)`` (seconds into the file).

    The first is the one containing ``rel_start`` (backed up to a keyframe, so it decodes), the last
    the one containing ``rel_end`` (exclusive): the period is covered, never cut mid-GOP. Binary
    search, so a long file costs only what it contributes.
    """
    first = bisect_right(frags, rel_start, key=_START) - 1
    if first < 0:
        first = 0
    elif frags[first].start + frags[first].duration <= rel_start:
        first += 1  # rel_start falls in a hole after this fragment (or past the end)
    stop = bisect_left(frags, rel_end, key=_START)
    while 0 < first < stop and not frags[first].keyframe:
        first -= 1
    return first, stop


def merge(frags: Sequence[Fragment], first: int, stop: int, target: float, *, hold_back: bool = False) -> list[Piece]:
    """Group fragments ``[first, stop)`` into media segments of up to ``target`` seconds.

    A group grows while the next fragment is contiguous in the file and fits; a fragment that does
    not start with a keyframe always joins its group (a segment must start decodable). With
    ``hold_back`` (the file is still being written) a last group shorter than ``target`` is left
    out: the next fragment could still join it, and a published segment must not change.
    """
    pieces: list[Piece] = []
    limit = target + _EPSILON
    i = first
    while i < stop:
        duration = frags[i].duration
        end_offset = frags[i].offset + frags[i].length
        j = i + 1
        while j < stop:
            frag = frags[j]
            if frag.offset != end_offset or (frag.keyframe and duration + frag.duration > limit):
                break
            duration += frag.duration
            end_offset += frag.length
            j += 1
        pieces.append(Piece(i, j, duration))
        i = j
    if hold_back and pieces and target > 0 and pieces[-1].duration < target - _EPSILON:
        pieces.pop()
    return pieces


def discontinuous(before: SegmentFile, last: Fragment, after: SegmentFile, first: Fragment, gap: float) -> bool:
    """Whether ``after``'s fragment ``first`` does not continue ``before``'s fragment ``last``.

    True for another (or an unknown) FFmpeg run, a wall-clock hole or overlap of more than ``gap``
    seconds, or media decode times that do not follow on (new timescale, timestamps reset).
    """
    if before.run_id is None or before.run_id != after.run_id:
        return True
    wall_end = before.start + last.start + last.duration
    if abs(after.start + first.start - wall_end) > gap:
        return True
    a, b = before.index, after.index
    if a.timescale != b.timescale:
        return True
    decode_end = a.base_decode_time / a.timescale + last.start + last.duration
    return abs(b.base_decode_time / b.timescale + first.start - decode_end) > _EPSILON


def date_time(t: float) -> str:
    """ISO 8601 UTC with milliseconds, as PROGRAM-DATE-TIME wants: ``2024-05-01T12:00:00.040Z``."""
    ms = round(t * 1000)
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _checked(link: str) -> str:
    """``link``, refused if it would break the playlist syntax (quoted in EXT-X-MAP, one line)."""
    if not link or any(c in link for c in '"\r\n'):
        raise ValueError(f"URL unusable in a playlist: {link!r}")
    return link


def _document(body: list[str], *, longest: float, target: float, open_ended: bool, independent: bool) -> str:
    """Header + ``body`` + trailer, joined once.

    TARGETDURATION is the longest EXTINF rounded up (as written, so 4.0000001 s is 4, not 5); an
    empty playlist announces the merge target instead.
    """
    longest_written = round(longest, 3) if body else target
    head = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest_written))}",
            "#EXT-X-MEDIA-SEQUENCE:0", f"#EXT-X-PLAYLIST-TYPE:{'EVENT' if open_ended else 'VOD'}"]
    if independent:
        head.append("#EXT-X-INDEPENDENT-SEGMENTS")
    tail = [] if open_ended else ["#EXT-X-ENDLIST"]
    return "\n".join(head + body + tail) + "\n"


def benchmark(file_seconds: float, *, hours: float = 24.0, fragment_seconds: float = 1.0,
              target: float = TARGET_SECONDS) -> tuple[int, int, float]:
    """(media segments, playlist bytes, build seconds) of a closed playlist over ``hours`` of
    back-to-back files of ``file_seconds``, each of ``fragment_seconds`` fragments of ~100 KB.

    The cost of the API's biggest answer (a day of one camera); the synthetic indexes are made
    before the clock starts. URLs are like the API's signed media URLs.
    """
    per_file = max(1, round(file_seconds / fragment_seconds))
    files = []
    t0 = 1_700_000_000.0
    for n in range(max(1, round(hours * 3600 / file_seconds))):
        frags = tuple(Fragment(1000 + k * 100_000, 100_000, k * fragment_seconds, fragment_seconds, True)
                      for k in range(per_file))
        index = FragmentIndex(init_length=1000, timescale=90000, track_id=1, base_decode_time=0, fragments=frags,
                              media_end=1000 + per_file * 100_000, complete=True)
        start = t0 + n * file_seconds
        files.append(SegmentFile(n + 1, start, start + file_seconds, "run", index))
    clock = time.perf_counter()
    text = build(files, t0, t0 + hours * 3600, open_ended=False, target=target,
                 url=lambda i: f"/api/v1/media/{i}.mp4?exp=1700086400&sig=0123456789abcdef0123456789abcdef")
    elapsed = time.perf_counter() - clock
    return text.count("#EXTINF:"), len(text.encode()), elapsed
