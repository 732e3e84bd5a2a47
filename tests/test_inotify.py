"""Directory-entry watches (``recorderd.inotify``) and the storage Watcher built on them, on a real
inotify: new names are seen, writes into files are not (the per-write tax this watch avoids)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from recorderd import inotify, layout, watcher
from recorderd.inotify import DirWatch, WatchLimit
from recorderd.probe import FoundFile

T0 = 1_700_000_000.0


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """A watcher's ``run()`` as a task for the block; it must still be running when cancelled."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_watch_sees_new_names_but_not_writes(tmp_path: Path) -> None:
    day = tmp_path / "cam" / "2024-01-01"
    day.mkdir(parents=True)
    with DirWatch() as dw:
        assert dw.add(str(day)) and str(day) in dw and len(dw) == 1
        fd = os.open(day / "00-00-00.mp4", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for _ in range(1000):  # FFmpeg's flush_packets writes: none of them may reach us
                os.write(fd, b"x" * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
        raw = os.read(dw.fd, 65536)  # what the kernel queued: one event, the creation
        wd, mask, _cookie, length = struct.unpack_from("iIII", raw)
        assert len(raw) == 16 + length and mask == inotify.IN_CREATE
        dw._parse(raw, first := [])
        assert [Path(e.path).name for e in first] == ["00-00-00.mp4"]
        (day / "sub").mkdir()
        os.rename(tmp_path / "cam" / "2024-01-01" / "00-00-00.mp4", day / "00-00-10.mp4")  # a move inside
        (tmp_path / "elsewhere.mp4").write_bytes(b"y")
        os.rename(tmp_path / "elsewhere.mp4", day / "00-00-20.mp4")  # a move in
        got = dw.read()
        assert [(Path(e.path).name, e.is_dir) for e in got] == [
            ("sub", True), ("00-00-10.mp4", False), ("00-00-20.mp4", False)]
        assert dw.read() == []  # drained, and a read never waits


def test_a_removed_directory_is_forgotten_and_missing_ones_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "2024-01-01"
    d.mkdir()
    with DirWatch() as dw:
        assert dw.add(str(d))
        assert not dw.add(str(tmp_path / "nope"))  # gone already: no watch, no error
        f = tmp_path / "file"
        f.write_bytes(b"")
        assert not dw.add(str(f))  # not a directory (IN_ONLYDIR)
        shutil.rmtree(d)
        assert dw.read() == []
        assert len(dw) == 0 and str(d) not in dw


def test_an_overflowed_queue_is_reported() -> None:
    with DirWatch() as dw:
        out: list[inotify.Entry] = []
        dw._parse(struct.pack("iIII", -1, inotify.IN_Q_OVERFLOW, 0, 0), out)
        assert dw.overflowed and out == []


def _watcher(root: Path, busy: set[str], settled: list[FoundFile], lost: list[int],
             tick: float = 0.05, settle: float = 0.3) -> watcher.Watcher:
    async def on_settled(files: list[FoundFile]) -> None:
        settled.extend(files)

    return watcher.Watcher(root, current_files=lambda: set(busy), is_known=lambda p: False,
                           on_settled=on_settled, on_lost=lambda: lost.append(1),
                           settle_seconds=settle, tick=tick)


async def _until(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_watcher_follows_new_days_and_cameras_and_leaves_open_files_alone(tmp_path: Path) -> None:
    sample_mp4 = tmp_path / "sample.mp4"  # the watcher never reads a file: any bytes do
    sample_mp4.write_bytes(b"\0" * 4096)
    root = tmp_path / "root"
    (root / "cam-001" / "2024-01-01").mkdir(parents=True)
    (root / layout.STATE_DIR).mkdir()
    busy: set[str] = set()
    settled: list[FoundFile] = []
    lost: list[int] = []
    w = _watcher(root, busy, settled, lost)
    async with running(w.run()):
        await asyncio.wait_for(w.ready.wait(), 10)
        assert w.watched == 3  # root, the camera, its day; not the state directory
        # a day directory made at midnight, its first file written before the watch can be in place
        new_day = layout.segment_path(root, "cam-001", T0)
        new_day.parent.mkdir()
        shutil.copyfile(sample_mp4, new_day)
        # a camera directory moved in whole
        staging = tmp_path / "cam-002"
        moved = layout.segment_path(staging.parent, "cam-002", T0 + 60)
        moved.parent.mkdir(parents=True)
        shutil.copyfile(sample_mp4, moved)
        os.rename(staging, root / "cam-002")
        # FFmpeg's open file, and names outside the layout
        live = layout.segment_path(root, "cam-001", T0 + 120)
        busy.add(str(live))
        shutil.copyfile(sample_mp4, live)
        (root / layout.STATE_DIR / "status.json").write_text("{}")
        (root / "cam-001" / "notes.txt").write_text("x")
        old = time.time() - 60
        for p in (new_day, root / "cam-002" / moved.relative_to(staging.parent / "cam-002"), live):
            os.utime(p, (old, old))
        want = {str(new_day), str(root / "cam-002" / moved.relative_to(staging.parent / "cam-002"))}
        await _until(lambda: {f.path for f in settled} >= want)
        await asyncio.sleep(0.5)
        assert {f.path for f in settled} == want and lost == []
        assert w.watched == 6  # + the new day, cam-002 and its day


async def test_watcher_waits_for_a_file_still_being_copied(tmp_path: Path) -> None:
    root = tmp_path / "root"
    day = root / "cam-001" / "2024-01-01"
    day.mkdir(parents=True)
    settled: list[FoundFile] = []
    w = _watcher(root, set(), settled, [], settle=0.5)
    async with running(w.run()):
        await asyncio.wait_for(w.ready.wait(), 10)
        path = day / "00-00-00.mp4"
        t0 = time.monotonic()
        with path.open("wb") as fh:
            for _ in range(12):  # a slow copy: 1.2 s of writes the watch does not see
                fh.write(b"x" * 100)
                fh.flush()
                await asyncio.sleep(0.1)
        await _until(lambda: settled)
        assert time.monotonic() - t0 >= 1.2 + 0.5  # not before the copy ended and settled
        assert [f.path for f in settled] == [str(path)] and settled[0].size == 1200


async def test_watcher_reconciles_after_lost_events_and_at_the_watch_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    for cam in ("cam-001", "cam-002", "cam-003"):
        (root / cam / "2024-01-01").mkdir(parents=True)
    lost: list[int] = []
    w = _watcher(root, set(), [], lost)
    real_add = DirWatch.add

    def limited(self: DirWatch, path: str) -> bool:
        if len(self) >= 4:
            raise WatchLimit(28, "inotify watch limit reached at 4 directories")
        return real_add(self, path)

    monkeypatch.setattr(DirWatch, "add", limited)
    async with running(w.run()) as task:
        with capture_logs() as logs:
            await asyncio.wait_for(w.ready.wait(), 10)
            assert w.watched == 4
            assert w._dw is not None
            w._dw.overflowed = True  # what a full kernel queue reads as
            await _until(lambda: lost)
        assert [e["event"] for e in logs if e["log_level"] in ("error", "warning")] == [
            "watcher_failed", "watcher_overflow"]  # the limit is said once, not at every re-walk
        assert "limit" in logs[0]["reason"] and not task.done()


async def test_config_watcher_sees_in_place_and_rename_saves_once_each_and_nothing_else(tmp_path: Path) -> None:
    from recorderd.configwatch import ConfigWatcher

    cfg = tmp_path / "cameras.yaml"
    cfg.write_text("a: 1\n")
    calls: list[float] = []
    w = ConfigWatcher(cfg, lambda: calls.append(time.monotonic()), debounce_ms=200)
    async with running(w.run()):
        await asyncio.sleep(0.3)  # the watch is in place
        (tmp_path / "other.yaml").write_text("x")  # not ours
        await asyncio.sleep(0.5)
        assert calls == []
        with cfg.open("w") as fh:  # an in-place save: truncate, several writes, close
            for i in range(5):
                fh.write(f"a: {i}\n")
                fh.flush()
        await _until(lambda: len(calls) == 1)
        tmp = tmp_path / ".cameras.yaml.swp"
        tmp.write_text("a: 9\n")
        os.rename(tmp, cfg)  # an editor's rename-save
        await _until(lambda: len(calls) == 2)
        await asyncio.sleep(0.5)
        assert len(calls) == 2  # one reload per save, not one per event
