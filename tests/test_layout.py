"""recorderd.layout: <root>/<camera>/<YYYY-MM-DD>/<HH-MM-SS>.mp4, UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recorderd.layout import (
    FFMPEG_PATTERN,
    STATE_DIR,
    camera_dir,
    day_dir,
    iso,
    parse_segment_path,
    segment_path,
)

ROOT = Path("/srv/rec")


def epoch(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_segment_path_shape() -> None:
    want = ROOT / "cam1" / "2024-03-09" / "07-05-03.mp4"
    assert segment_path(ROOT, "cam1", epoch(2024, 3, 9, 7, 5, 3)) == want


def test_segment_path_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        want = ROOT / "c" / "2024-01-01" / "23-30-00.mp4"
        assert segment_path(ROOT, "c", epoch(2024, 1, 1, 23, 30, 0)) == want
    finally:
        monkeypatch.undo()
        time.tzset()


def test_fractional_seconds_truncate() -> None:
    assert segment_path(ROOT, "c", epoch(2024, 1, 1, 0, 0, 59) + 0.999).name == "00-00-59.mp4"


@pytest.mark.parametrize("when", [
    epoch(1970, 1, 1, 0, 0, 0),
    epoch(2024, 2, 29, 12, 0, 0),  # leap day
    epoch(2023, 12, 31, 23, 59, 59),  # day rollover
    epoch(2024, 1, 1, 0, 0, 0),
    epoch(2038, 1, 19, 3, 14, 8),  # past the 32-bit limit
    1_700_000_000.0,
])
@pytest.mark.parametrize("camera", ["cam1", "A-b_9", "x" * 64, "-"])
def test_round_trip(when: float, camera: str) -> None:
    p = segment_path(ROOT, camera, when)
    assert parse_segment_path(ROOT, p) == (camera, when)
    assert parse_segment_path(ROOT, str(p)) == (camera, when)
    assert p.parent == day_dir(ROOT, camera, when)
    assert p.parent.parent == camera_dir(ROOT, camera)


def test_round_trip_truncates_to_the_second() -> None:
    when = 1_700_000_000.75
    assert parse_segment_path(ROOT, segment_path(ROOT, "c", when)) == ("c", 1_700_000_000.0)


def test_round_trip_relative_root() -> None:
    root = Path("var/rec")
    assert parse_segment_path(root, segment_path(root, "c", 0.0)) == ("c", 0.0)


def test_ffmpeg_pattern_matches_layout() -> None:
    when = epoch(2024, 3, 9, 7, 5, 3)
    rel = datetime.fromtimestamp(when, UTC).strftime(FFMPEG_PATTERN)
    assert camera_dir(ROOT, "c") / rel == segment_path(ROOT, "c", when)
    assert parse_segment_path(ROOT, camera_dir(ROOT, "c") / rel) == ("c", when)


@pytest.mark.parametrize("path", [
    "/srv/other/cam1/2024-01-01/00-00-00.mp4",  # another root
    "/srv/recordings/cam1/2024-01-01/00-00-00.mp4",  # a sibling whose name extends the root's
    "/srv/cam1/2024-01-01/00-00-00.mp4",  # above the root
    "srv/rec/cam1/2024-01-01/00-00-00.mp4",  # relative, not under the absolute root
    "/srv/rec/../rec/cam1/2024-01-01/00-00-00.mp4",  # not normalised: '..' is not a camera
    "/srv/rec/cam1/2024-01-01/00-00-00.mp4/extra",
    "/srv/rec/cam1/2024-01-01",  # a day dir, not a file
    "/srv/rec/cam1",
    "/srv/rec",
    "/srv/rec/cam1/00-00-00.mp4",  # no day level
    "/srv/rec/a/cam1/2024-01-01/00-00-00.mp4",  # one level too deep
    f"/srv/rec/{STATE_DIR}/2024-01-01/00-00-00.mp4",  # the state dir is no camera
    "/srv/rec/.hidden/2024-01-01/00-00-00.mp4",
    "/srv/rec/c d/2024-01-01/00-00-00.mp4",
    "/srv/rec/" + "x" * 65 + "/2024-01-01/00-00-00.mp4",
    "/srv/rec/cam1/2024-1-01/00-00-00.mp4",
    "/srv/rec/cam1/20240101/00-00-00.mp4",
    "/srv/rec/cam1/2024-01-01/00-00-00.mkv",
    "/srv/rec/cam1/2024-01-01/00-00-00.mp4.tmp",
    "/srv/rec/cam1/2024-01-01/0-00-00.mp4",
    "/srv/rec/cam1/2024-01-01/00:00:00.mp4",
    "/srv/rec/cam1/2024-01-01/x00-00-00.mp4",
    "/srv/rec/cam1/2024-02-30/00-00-00.mp4",  # no such date
    "/srv/rec/cam1/2023-02-29/00-00-00.mp4",  # not a leap year
    "/srv/rec/cam1/2024-13-01/00-00-00.mp4",
    "/srv/rec/cam1/2024-00-10/00-00-00.mp4",
    "/srv/rec/cam1/2024-01-01/24-00-00.mp4",  # no such time
    "/srv/rec/cam1/2024-01-01/23-60-00.mp4",
    "/srv/rec/cam1/2024-01-01/23-59-60.mp4",  # leap second: not produced by strftime of an epoch
])
def test_rejects(path: str) -> None:
    assert parse_segment_path(ROOT, path) is None


@pytest.mark.parametrize("path", [
    "/srv/rec/cam\n/2024-01-01/00-00-00.mp4",
    "/srv/rec/cam/2024-01-01\n/00-00-00.mp4",
    "/srv/rec/cam/2024-01-01/00-00-00.mp4\n",
    "/srv/rec/cam/\uff12024-01-01/00-00-00.mp4",
    "/srv/rec/cam/2024-01-01/\u0660\u0660-00-00.mp4",
])
def test_rejects_non_canonical(path: str) -> None:
    assert parse_segment_path(ROOT, path) is None


def test_day_dir_is_utc_day() -> None:
    assert day_dir(ROOT, "c", epoch(2024, 1, 1, 23, 59, 59)) == ROOT / "c" / "2024-01-01"
    assert day_dir(ROOT, "c", epoch(2024, 1, 2, 0, 0, 0)) == ROOT / "c" / "2024-01-02"


@pytest.mark.parametrize(("when", "text"), [
    (0.0, "1970-01-01T00:00:00.000000Z"),
    (1_700_000_000.5, "2023-11-14T22:13:20.500000Z"),
    (epoch(2024, 2, 29, 1, 2, 3) + 0.000123, "2024-02-29T01:02:03.000123Z"),
])
def test_iso(when: float, text: str) -> None:
    assert iso(when) == text
    assert datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() == pytest.approx(when, abs=1e-6)
