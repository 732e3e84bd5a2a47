"""Directory-entry watches (Linux inotify) that FFmpeg's writes never touch.

Why not ``watchfiles``: it watches every file for modification, and with such a watch on a directory
every ``write()`` into it pays the kernel's notification path and wakes the watcher's thread. FFmpeg
with ``flush_packets=1`` writes many times a second per camera, so a recursive watch on the storage
root made recording measurably dearer (512-byte writes: 1.0 µs unwatched, 3.5 µs under the watch).

A watch whose mask holds only ``IN_CREATE | IN_MOVED_TO`` is not a watch on the directory's children:
the kernel does not flag them as watched, so writes to files cost what they cost unwatched. What it
reports is enough: a new name in a watched directory (a file FFmpeg opens, a file or directory an
operator copies or moves in). Whether and when such a file stops changing is the caller's business
(it stats candidates until they settle).

The fd is non-blocking and read by the caller when it likes (``read()``), so a thousand new files a
second cost one read per caller tick, not a wakeup each. An overflowed kernel queue is reported as
``overflowed`` so the caller can fall back to a scan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

MASK = IN_CREATE | IN_MOVED_TO | IN_ONLYDIR | IN_DONT_FOLLOW  # new names only: writes stay unseen
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
READ_SIZE = 256 * 1024


class WatchLimit(OSError):
    """``fs.inotify.max_user_watches`` (or the kernel's memory) is exhausted."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A name that appeared in a watched directory."""

    path: str
    is_dir: bool


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class DirWatch:
    """One inotify instance watching directories for new entries; not thread-safe (one owner).

    ``mask`` may add events (the config watcher wants ``IN_CLOSE_WRITE``: an in-place save), at the
    price of the per-write tax on that directory.
    """

    def __init__(self, mask: int = MASK) -> None:
        self._mask = mask | IN_ONLYDIR
        self._libc = _libc()
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        self._dirs: dict[int, str] = {}  # wd -> directory
        self._wds: dict[str, int] = {}
        self.overflowed = False  # set when the kernel dropped events; the owner clears it

    def __len__(self) -> int:
        return len(self._dirs)

    def __contains__(self, path: object) -> bool:
        return path in self._wds

    def add(self, path: str) -> bool:
        """Watch ``path`` (a directory); False if it is gone or not a directory.

        Raises ``WatchLimit`` when no more watches can be had, ``OSError`` for anything else odd.
        """
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), self._mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return False
            if err in (errno.ENOSPC, errno.ENOMEM):
                raise WatchLimit(err, f"inotify watch limit reached at {len(self._dirs)} directories "
                                      "(raise fs.inotify.max_user_watches)")
            raise OSError(err, f"inotify_add_watch {path!r}: {os.strerror(err)}")
        old = self._dirs.get(wd)
        if old is not None and old != path:  # the same directory under a new name (moved)
            self._wds.pop(old, None)
        self._dirs[wd] = path
        self._wds[path] = wd
        return True

    def read(self) -> list[Entry]:
        """Everything the kernel queued since the last read (no waiting)."""
        out: list[Entry] = []
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return out
            if not data:
                return out
            self._parse(data, out)

    def _parse(self, data: bytes, out: list[Entry]) -> None:
        pos = 0
        while pos + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, pos)
            raw = data[pos + _HEADER.size:pos + _HEADER.size + length]
            pos += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
                continue
            if mask & IN_IGNORED:  # the directory is gone (or unwatched): forget it
                gone = self._dirs.pop(wd, None)
                if gone is not None and self._wds.get(gone) == wd:
                    del self._wds[gone]
                continue
            parent = self._dirs.get(wd)
            if parent is None or not mask & self._mask:
                continue
            name = os.fsdecode(raw.split(b"\0", 1)[0])
            out.append(Entry(path=os.path.join(parent, name), is_dir=bool(mask & IN_ISDIR)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._dirs.clear()
        self._wds.clear()

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
