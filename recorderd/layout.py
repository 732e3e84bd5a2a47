"""Where segments live: ``<root>/<camera_id>/<YYYY-MM-DD>/<HH-MM-SS>.mp4``, all UTC.

The path alone gives a camera and a start time to the second, which is what reconciling a file
that has no completion line falls back on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from recorderd.config import CAMERA_ID_RE, RESERVED_CAMERA_IDS

DAY_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})\Z")
# ``HH-MM-SS.mp4``; ``HH-MM-SS_<tag>.mp4`` when the clock stepped back and the plain name may exist
FILE_RE = re.compile(r"^([0-9]{2})-([0-9]{2})-([0-9]{2})(?:_[a-z0-9]{1,16})?\.mp4\Z")
FFMPEG_PATTERN = "%Y-%m-%d/%H-%M-%S.mp4"  # relative to the camera directory; FFmpeg runs with TZ=UTC


def ffmpeg_pattern(tag: str | None = None) -> str:
    """FFmpeg's output pattern; a ``tag`` keeps names unique when the wall clock repeats itself."""
    return FFMPEG_PATTERN if not tag else f"%Y-%m-%d/%H-%M-%S_{tag}.mp4"
STATE_DIR = ".recorderd"  # under the root; camera ids cannot start with '.'
# ``<root>/clips/<camera_id>/<id>.mp4``: saved clips, never footage. The config reserves the name as a
# camera id, and every scan of segment files (retention, the floor, reconcile, the watcher) skips it.
CLIPS_DIR = "clips"
RESERVED_NAMES = RESERVED_CAMERA_IDS  # directories under the root that are not cameras
assert CLIPS_DIR in RESERVED_NAMES


def is_camera_dir_name(name: str) -> bool:
    """A directory directly under the root that may hold a camera's segments."""
    return bool(CAMERA_ID_RE.match(name)) and name not in RESERVED_NAMES


def clips_dir(root: Path, camera_id: str | None = None) -> Path:
    return root / CLIPS_DIR if camera_id is None else root / CLIPS_DIR / camera_id


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
    if len(parts) != 3 or not is_camera_dir_name(parts[0]):
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


def day_names(now: float, days: int = 2) -> list[str]:
    """``YYYY-MM-DD`` of ``now`` and the following days (UTC): the dirs FFmpeg's strftime names need."""
    return [datetime.fromtimestamp(now + 86400 * d, UTC).strftime("%Y-%m-%d") for d in range(days)]


def newest_name_time(root: Path, camera_id: str) -> float | None:
    """Newest segment name time on disk for one camera (blocking: run in a thread)."""
    import os

    cam_dir = root / camera_id
    try:
        days = sorted((d for d in os.listdir(cam_dir) if DAY_RE.match(d)), reverse=True)
    except OSError:
        return None
    for day in days:
        try:
            names = [n for n in os.listdir(cam_dir / day) if FILE_RE.match(n)]
        except OSError:
            continue
        times = [p[1] for n in names if (p := parse_segment_path(root, cam_dir / day / n))]
        if times:
            return max(times)
    return None


def find_segment(root: Path, camera_id: str, name: str, now: float) -> str:
    """A closed file FFmpeg never announced, looked up by name in today's and yesterday's dirs."""
    for epoch in (now, now - 86400):
        candidate = day_dir(root, camera_id, epoch) / name
        if candidate.exists():
            return str(candidate)
    return str(root / camera_id / name)
