"""The fragment index of a fragmented-MP4 segment file: where each GOP's bytes are, and when it plays.

FFmpeg writes every segment as ``ftyp`` + ``moov`` (the init section, HLS ``EXT-X-MAP``) followed by
one ``moof`` + ``mdat`` pair per video keyframe (``frag_keyframe``), and a clean close appends an
``mfra``. Each pair is independently decodable after the init section, so a byte range per fragment
is all an HLS playlist needs to serve recordings straight from the files, with no remuxing.

``scan`` reads only box headers, the ``moov`` and the ``moof`` boxes (one ``pread`` per fragment in
the common case), and seeks over the ``mdat`` payloads: a one-hour file of 3600 fragments is indexed
in milliseconds whatever its size. A file FFmpeg is still writing ends with a fragment in progress;
the walk stops at the first box that is not complete yet, so only whole fragments are ever listed.
Nothing here raises on a damaged file: the index holds what is complete, or is None when not even
the ``moov`` is.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

from recorderd.mp4 import open_regular

# A moov with empty sample tables (empty_moov) is 1-2 KB; anything near this is not one of ours.
MAX_MOOV_BYTES = 1 << 20
# First read at each fragment: a moof of a 1-2 s GOP (video + audio) is 0.3-3 KB. The read grows to
# fit the biggest moof seen (plus a margin and the mdat header), so one read usually holds both:
# reading much more than that costs more than the parse.
_READ_AHEAD = 1024
# A moof is a few KB; a much bigger one is damage, not a fragment to parse.
_MAX_MOOF_BYTES = 16 << 20
_MAX_READ_AHEAD = 256 << 10
_NON_SYNC = 0x00010000  # sample_is_non_sync_sample in the ISO-BMFF sample flags

_BOX = struct.Struct(">I4s")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_FULLBOX_U32 = struct.Struct(">II")  # version/flags, then one u32 (tfhd track_ID, trun sample_count)


class Fragment(NamedTuple):
    """One ``moof`` + ``mdat`` pair: a byte range of the file that plays on its own after the init section."""

    offset: int  # of the moof
    length: int  # moof + mdat
    start: float  # seconds after the file's first fragment (video decode time)
    duration: float  # seconds (sum of the video samples' durations)
    keyframe: bool  # the first video sample is a sync sample


@dataclass(frozen=True, slots=True)
class FragmentIndex:
    """What ``scan`` found in a segment file.

    The init section is bytes ``[0, init_length)`` (``ftyp`` + ``moov``). ``media_end`` is the offset
    just after the last complete fragment (where an incremental scan resumes). ``complete`` is True
    once the ``mfra`` FFmpeg writes on a clean close was seen: no fragment will ever be added.
    """

    init_length: int
    timescale: int  # of the video track (ticks per second)
    track_id: int  # the video track
    base_decode_time: int  # tfdt of the first fragment, in ticks (0 while there is none)
    fragments: tuple[Fragment, ...]
    media_end: int
    complete: bool

    @property
    def duration(self) -> float:
        """Seconds from the first fragment's start to the last one's end (0 without fragments)."""
        if not self.fragments:
            return 0.0
        last = self.fragments[-1]
        return last.start + last.duration


@dataclass(frozen=True, slots=True)
class _Track:
    """What the moov says about the video track: enough to read its runs in every moof."""

    track_id: int
    timescale: int
    default_duration: int  # trex
    default_flags: int  # trex


def scan(path: str | os.PathLike[str], previous: FragmentIndex | None = None) -> FragmentIndex | None:
    """Index the complete fragments of a segment file; None when it has no complete ``moov``.

    Blocking (the API runs it in a worker thread). ``previous``, an earlier index of the same file
    (one being written), lets the walk resume at ``previous.media_end`` instead of the start; it is
    ignored when the header no longer matches or the file shrank (it was replaced).
    Symlinks are refused (O_NOFOLLOW); non-regular files and every read or parse error give what is
    complete so far, never an exception.
    """
    opened = open_regular(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        return _scan_fd(fd, st.st_size, previous)
    except (OSError, ValueError, struct.error):
        return None
    finally:
        os.close(fd)


def _scan_fd(fd: int, size: int, previous: FragmentIndex | None) -> FragmentIndex | None:
    """``scan`` on an open regular file of ``size`` bytes."""
    header = _read_init(fd, size)
    if header is None:
        return None
    init_length, track = header
    if (previous is not None and previous.init_length == init_length and previous.track_id == track.track_id
            and previous.timescale == track.timescale and init_length <= previous.media_end <= size):
        if previous.complete:
            return previous
        walk = _Walk(fd, size, track, previous.media_end, list(previous.fragments),
                     previous.base_decode_time if previous.fragments else None)
    else:
        walk = _Walk(fd, size, track, init_length, [], None)
    walk.run()
    last = walk.fragments[-1] if walk.fragments else None
    return FragmentIndex(init_length=init_length, timescale=track.timescale, track_id=track.track_id,
                         base_decode_time=walk.base or 0, fragments=tuple(walk.fragments),
                         media_end=last.offset + last.length if last else init_length, complete=walk.complete)


def _box_header(buf: bytes, pos: int, limit: int) -> tuple[int, bytes, int] | None:
    """(size, type, header length) of the box whose header is at ``buf[pos:limit]``.

    A size of 0 is returned as is: the box runs to the end of its container (the file, at top
    level), which only the caller knows. None when the header itself is cut or the size is nonsense.
    """
    if limit - pos < 8:
        return None
    size, kind = _BOX.unpack_from(buf, pos)
    header = 8
    if size == 1:  # 64-bit largesize follows the type
        if limit - pos < 16:
            return None
        (size,) = _U64.unpack_from(buf, pos + 8)
        header = 16
    if size != 0 and size < header:
        return None
    return size, kind, header


def _pread(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (short only at the end of the file)."""
    data = os.pread(fd, length, offset)
    while 0 < len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _read_init(fd: int, size: int) -> tuple[int, _Track] | None:
    """End of the ``moov`` and its video track, walking the top-level boxes before it.

    Only ``ftyp``/``free``/``skip``/``uuid``/``styp`` may come first; any other box there (media before
    the header, a plain non-fragmented file's ``mdat``) means this is not a segment we can serve.
    """
    pos = 0
    while pos < size:
        head = _pread(fd, 16, pos)
        box = _box_header(head, 0, min(len(head), size - pos))
        if box is None:
            return None
        box_size, kind, header = box
        box_size = box_size or size - pos
        if pos + box_size > size:
            return None  # still being written (or truncated)
        if kind == b"moov":
            if box_size > MAX_MOOV_BYTES:
                return None
            moov = _pread(fd, box_size - header, pos + header)
            if len(moov) != box_size - header:
                return None
            track = _video_track(moov)
            return None if track is None else (pos + box_size, track)
        if kind not in (b"ftyp", b"free", b"skip", b"uuid", b"styp"):
            return None
        pos += box_size
    return None


def _children(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the complete child boxes in ``buf[start:end]``."""
    out = []
    pos = start
    while pos < end:
        box = _box_header(buf, pos, end)
        if box is None:
            break
        size = box[0] or end - pos
        if pos + size > end:
            break
        out.append((box[1], pos + box[2], pos + size))
        pos += size
    return out


def _video_track(moov: bytes) -> _Track | None:
    """The video track (handler ``vide``) of a ``moov`` payload, with its ``trex`` defaults.

    A file with no video track falls back to its first track, so it still gets an index.
    """
    tracks: list[tuple[int, int, bytes]] = []  # (track_ID, timescale, handler)
    trex: dict[int, tuple[int, int]] = {}
    for kind, start, end in _children(moov, 0, len(moov)):
        if kind == b"trak":
            track = _trak(moov, start, end)
            if track is not None:
                tracks.append(track)
        elif kind == b"mvex":
            for sub, s, e in _children(moov, start, end):
                if sub == b"trex" and e - s >= 24:
                    track_id, _index, duration, _size, flags = struct.unpack_from(">5I", moov, s + 4)
                    trex[track_id] = (duration, flags)
    if not tracks:
        return None
    track_id, timescale, _ = next((t for t in tracks if t[2] == b"vide"), tracks[0])
    duration, flags = trex.get(track_id, (0, 0))
    return _Track(track_id, timescale, duration, flags)


def _trak(buf: bytes, start: int, end: int) -> tuple[int, int, bytes] | None:
    """(track_ID, timescale, handler type) of a ``trak``; None when one is missing or nonsense."""
    track_id = timescale = None
    handler = b""
    for kind, s, e in _children(buf, start, end):
        if kind == b"tkhd" and e - s >= 24:
            version = buf[s]
            track_id = _U32.unpack_from(buf, s + (20 if version == 1 else 12))[0]
        elif kind == b"mdia":
            for sub, ss, se in _children(buf, s, e):
                if sub == b"mdhd" and se - ss >= 24:
                    version = buf[ss]
                    timescale = _U32.unpack_from(buf, ss + (20 if version == 1 else 12))[0]
                elif sub == b"hdlr" and se - ss >= 12:
                    handler = buf[ss + 8:ss + 12]
    if not track_id or not timescale:
        return None
    return track_id, timescale, handler


class _Walk:
    """The top-level walk over the fragments, from ``pos`` to the first incomplete box."""

    def __init__(self, fd: int, size: int, track: _Track, pos: int, fragments: list[Fragment],
                 base: int | None) -> None:
        self.fd, self.size, self.track, self.pos = fd, size, track, pos
        self.fragments = fragments
        self.base = base  # tfdt of the first fragment, ticks
        self.complete = False
        self.read_ahead = _READ_AHEAD

    def run(self) -> None:
        """Advance ``pos`` over every complete fragment; a read or parse error ends the walk there."""
        try:
            while self.pos < self.size and self._step():
                pass
        except (OSError, ValueError, IndexError, struct.error):
            pass  # damaged (or vanished) past this point: what was indexed so far stands

    def _step(self) -> bool:
        """Index or skip the box at ``pos``; False when the walk ends there."""
        fd, size, pos = self.fd, self.size, self.pos
        buf = os.pread(fd, min(self.read_ahead, size - pos), pos)
        if len(buf) >= 8 and (head := _BOX.unpack_from(buf, 0))[0] >= 8:
            box_size, kind, header = head[0], head[1], 8  # the common case, without a call
        elif (box := _box_header(buf, 0, len(buf))) is not None:
            box_size, kind, header = box
            box_size = box_size or size - pos
        else:
            return False
        if pos + box_size > size:
            return False  # not written yet
        if kind == b"mfra":
            self.complete = True  # the trailer: FFmpeg closed the file cleanly
            return False
        if kind != b"moof":
            self.pos = pos + box_size  # free/skip/sidx/prft/... or a stray mdat: not media we index
            return True
        if box_size > _MAX_MOOF_BYTES:
            return False
        if box_size + 16 > len(buf) and pos + box_size + 8 <= size:
            # the moof and the mdat header after it did not fit in one read: read them whole
            buf = _pread(fd, min(box_size + 16, size - pos), pos)
        if box_size + box_size // 4 + 16 > self.read_ahead:
            self.read_ahead = min(box_size + box_size // 4 + 16, _MAX_READ_AHEAD)
        if len(buf) >= box_size + 8 and (head := _BOX.unpack_from(buf, box_size))[0] >= 8:
            mdat_size, mdat_kind = head
        else:  # a 64-bit or size-0 header, or one the read did not hold whole
            head16 = _pread(fd, 16, pos + box_size)
            mdat = _box_header(head16, 0, min(len(head16), size - pos - box_size))
            if mdat is None:
                return False  # the mdat header is not there yet (or the file is cut)
            mdat_size, mdat_kind, _ = mdat
            mdat_size = mdat_size or size - pos - box_size
        if mdat_kind != b"mdat":
            self.pos = pos + box_size  # a moof without its media: skip it, the next box decides
            return True
        end = pos + box_size + mdat_size
        if end > size:
            return False  # the fragment's media is still being written
        self._add(buf, pos, header, box_size, end)
        self.pos = end
        return True

    def _add(self, buf: bytes, pos: int, header: int, moof_size: int, end: int) -> None:
        """Record the fragment at ``pos`` (moof in ``buf[:moof_size]``) ending at ``end``."""
        run = _video_run(buf, header, moof_size, self.track)
        if run is None:
            # no video in this moof (the audio FFmpeg flushes after the last video frame when it
            # closes the file): its bytes join the fragment before, so it is played and the
            # ranges stay contiguous
            if self.fragments and self.fragments[-1].offset + self.fragments[-1].length == pos:
                last = self.fragments[-1]
                self.fragments[-1] = last._replace(length=end - last.offset)
            return
        decode, ticks, keyframe = run
        timescale = self.track.timescale
        if decode is None:  # no tfdt: it follows the previous fragment
            before = self.fragments[-1] if self.fragments else None
            start = before.start + before.duration if before else 0.0
            if self.base is None:
                self.base = 0
        else:
            if self.base is None:
                self.base = decode
            start = (decode - self.base) / timescale
        self.fragments.append(Fragment(pos, end - pos, start, ticks / timescale, keyframe))


def _video_run(buf: bytes, start: int, end: int, track: _Track) -> tuple[int | None, int, bool] | None:
    """(decode time, duration in ticks, starts with a sync sample) of the video track in a ``moof``.

    ``buf[start:end]`` is the moof payload. None when the moof has no run of the video track.
    Several trafs/truns of the track add up; the decode time and first-sample flags are the first's.
    """
    decode: int | None = None
    ticks = 0
    first_flags: int | None = None
    found = False
    track_id = _U32.pack(track.track_id)
    pos = start
    while pos + 8 <= end:
        size, kind = _BOX.unpack_from(buf, pos)
        if size < 8 or pos + size > end:
            break  # (largesize/size 0 never occur inside a moof)
        # tfhd comes first in a traf: skip another track's traf without walking it (the hot path:
        # most moofs also carry audio)
        if kind == b"traf" and (buf[pos + 12:pos + 16] != b"tfhd" or buf[pos + 20:pos + 24] == track_id):
            got = _traf(buf, pos + 8, pos + size, track)
            if got is not None:
                t_decode, t_ticks, t_flags = got
                if not found:
                    decode, first_flags, found = t_decode, t_flags, True
                ticks += t_ticks
        pos += size
    if not found:
        return None
    keyframe = first_flags is not None and not first_flags & _NON_SYNC
    return decode, ticks, keyframe


def _traf(buf: bytes, start: int, end: int, track: _Track) -> tuple[int | None, int, int | None] | None:
    """(tfdt, duration in ticks, first sample flags) of a ``traf`` of the video track, else None."""
    default_duration, default_flags = track.default_duration, track.default_flags
    decode: int | None = None
    ticks = 0
    first_flags: int | None = None
    pos = start
    while pos + 8 <= end:
        size, kind = _BOX.unpack_from(buf, pos)
        if size < 8 or pos + size > end:
            break
        p = pos + 8
        if kind == b"tfhd":
            vf, track_id = _FULLBOX_U32.unpack_from(buf, p)
            if track_id != track.track_id:
                return None
            q = p + 8
            if vf & 0x01:  # base_data_offset
                q += 8
            if vf & 0x02:  # sample_description_index
                q += 4
            if vf & 0x08:
                default_duration = _U32.unpack_from(buf, q)[0]
                q += 4
            if vf & 0x10:  # default_sample_size
                q += 4
            if vf & 0x20:
                default_flags = _U32.unpack_from(buf, q)[0]
        elif kind == b"tfdt":
            if buf[p] == 1:
                decode = _U64.unpack_from(buf, p + 4)[0]
            else:
                decode = _U32.unpack_from(buf, p + 4)[0]
        elif kind == b"trun":
            run_ticks, run_flags = _trun(buf, p, pos + size, default_duration, default_flags)
            ticks += run_ticks
            if first_flags is None:
                first_flags = run_flags
        pos += size
    if first_flags is None and ticks == 0:
        return None  # no run (or a tfhd-less traf): nothing of the track here
    return decode, ticks, first_flags


def _trun(buf: bytes, p: int, end: int, default_duration: int, default_flags: int) -> tuple[int, int | None]:
    """(sum of sample durations, first sample's flags or None when empty) of a ``trun`` payload at ``p``."""
    vf, count = _FULLBOX_U32.unpack_from(buf, p)
    q = p + 8
    if vf & 0x001:  # data_offset
        q += 4
    first_flags: int | None = None
    if vf & 0x004:
        first_flags = _U32.unpack_from(buf, q)[0]
        q += 4
    fields = bool(vf & 0x100) + bool(vf & 0x200) + bool(vf & 0x400) + bool(vf & 0x800)
    if count == 0:
        return 0, None
    if q + count * fields * 4 > end:
        raise ValueError("trun runs past its box")
    if vf & 0x100:
        if fields == 1:
            ticks = sum(struct.unpack_from(f">{count}I", buf, q))
        else:
            ticks = sum(struct.unpack_from(f">{count * fields}I", buf, q)[::fields])
    else:
        ticks = count * default_duration
    if first_flags is None:
        if vf & 0x400:
            first_flags = _U32.unpack_from(buf, q + 4 * (bool(vf & 0x100) + bool(vf & 0x200)))[0]
        else:
            first_flags = default_flags
    return ticks, first_flags
