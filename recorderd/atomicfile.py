"""Small state files replaced whole: a reader sees the old content or the new, never half of one.

Used for the status file, the volume marker, the saved protected-paths list and the last good config.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, *, mode: int = 0o640, durable: bool = False) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``.

    ``durable``: fsync the file before the rename and the directory after it, for files that must
    survive a power cut (the marker, the last good config), not ones rewritten every few seconds.
    The directory must exist. Raises ``OSError``; the temp file never stays behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
