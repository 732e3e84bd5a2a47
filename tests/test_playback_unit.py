"""LiveKeys: the URLs of files listed before the index holds them stay the same, and go in time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from recorderd.api.playback import LiveKeys


def test_a_file_keeps_its_key_and_its_listed_start() -> None:
    keys = LiveKeys()
    k1 = keys.remember("cam", "/r/cam/a.mp4", "run-1", 100.0)
    assert keys.remember("cam", "/r/cam/a.mp4", "run-1", 100.5) == k1
    assert keys.known("/r/cam/a.mp4") == k1 and keys.file(k1) is not None
    assert keys.file(k1).start == 100.5  # type: ignore[union-attr]
    assert len(k1) == 32 and "/" not in k1 and keys.known("/r/cam/b.mp4") is None
    assert keys.file("0" * 32) is None


def test_unindexed_lists_only_this_cameras_recent_files_not_in_the_index_oldest_first() -> None:
    keys = LiveKeys()
    keys.remember("cam", "/r/cam/b.mp4", "run-1", 110.0)
    keys.remember("cam", "/r/cam/a.mp4", "run-1", 100.0)
    keys.remember("other", "/r/other/a.mp4", "run-2", 100.0)
    assert [f.path for f in keys.unindexed("cam", set())] == ["/r/cam/a.mp4", "/r/cam/b.mp4"]
    assert [f.path for f in keys.unindexed("cam", {"/r/cam/a.mp4"})] == ["/r/cam/b.mp4"]
    assert keys.unindexed("cam", set(), within=-1.0) == []  # listed longer ago than `within`
    time.sleep(0.01)
    assert keys.unindexed("cam", set(), within=0.005) == []


def test_the_oldest_keys_go_past_the_limit() -> None:
    keys = LiveKeys(limit=2)
    k1 = keys.remember("cam", "/1", "r", 1.0)
    keys.remember("cam", "/2", "r", 2.0)
    keys.remember("cam", "/3", "r", 3.0)
    assert keys.file(k1) is None and keys.known("/1") is None and keys.known("/3") is not None


def test_fragment_cache_checks_a_path_once_per_inode_and_refuses_a_swapped_in_symlink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recorderd.api import playback
    from recorderd.fmp4 import FragmentIndex

    root = tmp_path / "rec"
    (root / "cam").mkdir(parents=True)
    seg = root / "cam" / "a.mp4"
    seg.write_bytes(b"x" * 100)
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"y" * 100)
    checks: list[str] = []
    real_safe = playback.safe_file
    monkeypatch.setattr(playback, "safe_file", lambda r, p: checks.append(p) or real_safe(r, p))
    scans: list[tuple[str, object]] = []

    def fake_scan(path: str, previous: object = None) -> FragmentIndex:
        scans.append((path, previous))
        return FragmentIndex(100, 90000, 1, 0, (), os.path.getsize(path), False)

    monkeypatch.setattr(playback, "scan", fake_scan)
    cache = playback.FragmentCache()
    first = cache.lookup(str(root), str(seg))
    assert first is not None and cache.lookup(str(root), str(seg)) is first
    assert len(checks) == 1 and len(scans) == 1  # the hit is the inode already checked
    with seg.open("ab") as f:  # it grew: checked again, scanned from where it was
        f.write(b"x" * 10)
    assert cache.lookup(str(root), str(seg)) is not None
    assert len(checks) == 2 and scans[-1][1] is first
    seg.unlink()
    os.symlink(outside, seg)  # swapped for a link out of the root: another inode, refused
    assert cache.lookup(str(root), str(seg)) is None and len(checks) == 3
