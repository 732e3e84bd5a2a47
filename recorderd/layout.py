"""Where segments live: ``<root>/<camera_id>/<YYYY-MM-DD>/<HH-MM-SS>.mp4``, all UTC.

The path alone gives a camera and a start time to the second, which is what reconciling a file
that has no completion line falls back on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from recorderd.config import CAMERA_ID_RE

DAY_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})\Z")
# ``HH-MM-SS.mp4``; ``HH-MM-SS_<tag>.mp4`` when the clock stepped back and the plain name may exist
FILE_RE = re.compile(r"^([0-9]{2})-([0-9]{2})-([0-9]{2})(?:_[a-z0-9]{1,16})?\.mp4\Z")
FFMPEG_PATTERN = "%Y-%m-%d/%H-%M-%S.mp4"  # relative to the camera directory; FFmpeg runs with TZ=UTC


def ffmpeg_pattern(tag: str | None = None) -> str:
    """FFmpeg's output pattern; a ``tag`` keeps names unique when the wall clock repeats itself."""
    return FFMPEG_PATTERN if not tag else f"%Y-%m-%d/%H-%M-%S_{tag}.mp4"
STATE_DIR = ".recorderd"  # under the root; camera ids cannot start with '.'


def camera_dir(root: Path, camera_id: str) -> Path:
    return root / camera_id


def day_dir(root: Path, camera_id: str, epoch: float) -> Path:
    return root / camera_id / datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def segment_path(root: Path, camera_id: str, epoch: float) -> Path:
    dt = datetime.fromtimestamp(epoch, UTC)
    return root / camera_id / dt.strftime("%Y-%m-%d") / dt.strftime("%H-%M-%S.mp4")


def parse_segment_path(root: Path, path: str | Path) -> tuple[str, float] | None:
    """``(camera_id, start_epoch)`` for a path in our layout under ``root``, else None."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) != 3 or not CAMERA_ID_RE.match(parts[0]):
        return None
    d, f = DAY_RE.match(parts[1]), FILE_RE.match(parts[2])
    if not d or not f:
        return None
    try:
        dt = datetime(int(d[1]), int(d[2]), int(d[3]), int(f[1]), int(f[2]), int(f[3]), tzinfo=UTC)
    except ValueError:
        return None
    return parts[0], dt.timestamp()


def iso(epoch: float) -> str:
    """ISO 8601 UTC with microseconds, 'Z' suffix."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
