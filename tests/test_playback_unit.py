"""LiveKeys: the URLs of files listed before the index holds them stay the same, and go in time."""

from __future__ import annotations

import time

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
