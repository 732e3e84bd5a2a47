"""Just enough ISO-BMFF (MP4) to recognise a segment file that holds a header and no media.

FFmpeg writes a fragmented MP4's ``ftyp`` + ``moov`` as soon as it opens the output, and the first
``moof`` + ``mdat`` only once the first fragment is complete. A run killed in between (camera lost
before its first keyframe, stall, shutdown) leaves a file of a few hundred bytes that ffprobe reports
no duration for (a run stopped cleanly that early adds only an empty ``mfra``). It can never be
indexed, and kept it would stay forever (retention goes by the index). Such a file is safe to delete;
anything else, including a damaged file that may still hold video, must never be mistaken for one,
so every doubt answers False.
"""

from __future__ import annotations

import os
import stat
import struct

# A moov with empty sample tables is ~0.5-2 KB; a file bigger than this is not "header only".
MAX_HEADER_BYTES = 16 * 1024
# mfra: the fragment index FFmpeg appends when it closes the file cleanly; with no moof it indexes nothing
HEADER_BOX_TYPES = frozenset({b"ftyp", b"moov", b"free", b"skip", b"uuid", b"mfra"})
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result] | None:
    """``(fd, stat)`` of a regular file opened read-only without following a symlink (the last path
    element) and without blocking on a fifo; None for anything else. The caller closes ``fd``."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def is_header_only(path: str | os.PathLike[str]) -> bool:
    """True only for a regular file made entirely of complete top-level ``ftyp``/``moov``/``free``/
    ``skip``/``uuid``/``mfra`` boxes, with a ``moov`` and no ``moof``/``mdat`` (or any other box).

    Reads at most ``MAX_HEADER_BYTES``; never raises (an unreadable file is not header-only).
    """
    opened = open_regular(path)
    if opened is None:
        return False
    fd, st = opened
    try:
        if not 0 < st.st_size <= MAX_HEADER_BYTES:
            return False
        data = b""
        while len(data) < st.st_size:
            chunk = os.read(fd, st.st_size - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        return False
    finally:
        os.close(fd)
    return boxes_are_header_only(data)


def boxes_are_header_only(data: bytes) -> bool:
    """The box walk of ``is_header_only`` over a whole file's bytes."""
    pos, end = 0, len(data)
    seen_moov = False
    while pos < end:
        if end - pos < 8:
            return False  # a truncated box header
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:  # 64-bit largesize follows the type
            if end - pos < 16:
                return False
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:  # the box runs to the end of the file
            size = end - pos
        if size < header or pos + size > end:
            return False  # nonsense or truncated: cannot tell, so not header-only
        if kind not in HEADER_BOX_TYPES:
            return False  # moof, mdat, or anything we do not know
        seen_moov = seen_moov or kind == b"moov"
        pos += size
    return seen_moov
