"""The free-space floor on a real, small filesystem (tmpfs, else a loop-mounted ext4 image).

A writer keeps filling the disk faster than it can hold; the sweeper must keep free space above zero
(the writer never sees ENOSPC), keep protected footage and the file being written, with the database
up (index first) and down (filesystem scan honouring the saved protected list). The last test records
for real with FFmpeg from the shared RTSP test camera.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from fixtures_storage import FS_SIZE, MB
from prometheus_client import REGISTRY

from recorderd.config import Config, parse_config
from recorderd.db import Database
from recorderd.diskguard import read_usage
from recorderd.ffmpeg import build_command
from recorderd.layout import segment_path
from recorderd.retention import DAY, Sweeper

pytestmark = pytest.mark.integration


def make_config(root: Path, cameras: list[dict[str, Any]]) -> Config:
    return parse_config({
        "storage": {"root": str(root), "min_free_percent": 10, "free_margin_percent": 5},
        "cameras": [{"url": "rtsp://127.0.0.1:1/x", **c} for c in cameras],
        "retention": {"disk_check_seconds": 0.05, "interval_seconds": 3600, "batch_size": 20},
        "metrics": {"listen": None},
    })


async def insert(db: Database, cam: str, path: Path, start: float, end: float, *,
                 protected: bool = False) -> None:
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO segments (camera_id, start_time, end_time, duration_seconds, size_bytes, path,"
            " source, source_rank, protected) VALUES ($1,$2,$3,$4,$5,$6,'ffmpeg',3,$7)",
            cam, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), end - start,
            path.stat().st_size, str(path), protected)


async def prefill(root: Path, db: Database | None, *, leave_free: int, chunk: int = MB) -> tuple[list[Path], list[Path]]:
    """Old (but not expired) footage of two cameras until free = floor + ``leave_free``.

    Returns (all files oldest first, the protected ones: the three oldest).
    """
    now = time.time()
    floor = int(read_usage(root).total * 0.10)
    files: list[Path] = []
    t = now - 20 * DAY
    i = 0
    while True:
        free = read_usage(root).free
        size = min(chunk, free - floor - leave_free)
        if size <= 0:
            break
        cam = ("old1", "old2")[i % 2]
        p = segment_path(root, cam, t)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        files.append(p)
        if db is not None:
            await insert(db, cam, p, t, t + 60, protected=i < 3)
        t += 600
        i += 1
    return files, files[:3]


class Writer(threading.Thread):
    """A recorder that never waits: 256 KiB chunks into 1 MiB segments at ~``rate`` bytes/s."""

    def __init__(self, root: Path, cam: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.root, self.cam, self.rate, self.seconds = root, cam, rate, seconds
        self.current: str | None = None
        self.closed: list[tuple[Path, float, float]] = []
        self.written = 0
        self.enospc = 0
        self.min_free = 1 << 62
        self.lock = threading.Lock()

    def current_files(self) -> set[str]:
        with self.lock:
            return {self.current} if self.current else set()

    def run(self) -> None:
        t0 = time.monotonic()
        start = time.time()
        n = 0
        chunk = os.urandom(256 * 1024)
        while time.monotonic() - t0 < self.seconds:
            seg_start = start + n
            path = segment_path(self.root, self.cam, seg_start)
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.lock:
                self.current = str(path)
            with open(path, "wb") as f:
                for _ in range(4):
                    try:
                        f.write(chunk)
                        f.flush()
                        self.written += len(chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        self.enospc += 1
                    self.min_free = min(self.min_free, read_usage(self.root).free)
                    time.sleep(len(chunk) / self.rate)
            with self.lock:
                self.closed.append((path, seg_start, seg_start + 1))
            n += 1
        with self.lock:
            self.current = None


async def index_closed(db: Database, writer: Writer, stop: asyncio.Event) -> None:
    """A stand-in indexer: rows for the writer's closed segments, as they close."""
    done = 0
    while not stop.is_set() or done < len(writer.closed):
        while done < len(writer.closed) and db.up:
            path, start, end = writer.closed[done]
            done += 1
            if path.exists():
                await insert(db, writer.cam, path, start, end)
        await asyncio.sleep(0.02)


def disk_deleted() -> float:
    return REGISTRY.get_sample_value("recorderd_retention_deleted_segments_total", {"reason": "disk"}) or 0.0


async def run_floor(sweeper: Sweeper, writer: Writer, db: Database | None) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run())
    indexer = asyncio.create_task(index_closed(db, writer, stop)) if db is not None else None
    writer.start()
    try:
        while writer.is_alive():
            await asyncio.sleep(0.05)
            assert not task.done(), task
    finally:
        stop.set()
        if indexer is not None:
            await indexer
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_floor_holds_against_a_fast_writer_with_the_index(small_fs: Path, db: Database) -> None:
    root = small_fs / "rec"
    root.mkdir()
    cfg = make_config(root, [{"id": "old1", "plan": "premium"}, {"id": "old2", "plan": "premium"},
                             {"id": "live", "plan": "basic"}])
    files, protected = await prefill(root, db, leave_free=2 * MB)
    writer = Writer(root, "live", rate=16 * MB, seconds=4)  # ~64 MiB: the whole disk, in 4 s
    sweeper = Sweeper(cfg, db, writer.current_files)
    before = disk_deleted()
    with structlog.testing.capture_logs() as logs:
        await run_floor(sweeper, writer, db)
    assert writer.enospc == 0 and writer.written > FS_SIZE // 2
    assert writer.min_free > 0
    assert all(p.exists() for p in protected)
    assert sum(not p.exists() for p in files) > 10  # old footage made room
    assert writer.closed[-1][0].exists()  # the newest recording is there
    emergencies = [e for e in logs if e["event"] == "retention_emergency" and "count" in e]
    assert emergencies and all(e["log_level"] == "error" for e in emergencies)
    assert {"index"} <= {e["source"] for e in emergencies}
    assert emergencies[0]["free_after"] > emergencies[0]["free_before"]
    assert disk_deleted() > before
    assert read_usage(root).free >= int(FS_SIZE * 0.10) - 8 * MB


async def test_floor_holds_with_the_database_down(small_fs: Path, db: Database) -> None:
    root = small_fs / "rec"
    root.mkdir()
    cfg = make_config(root, [{"id": "old1", "plan": "premium"}, {"id": "old2", "plan": "premium"},
                             {"id": "live", "plan": "basic"}])
    files, protected = await prefill(root, db, leave_free=2 * MB)
    writer = Writer(root, "live", rate=16 * MB, seconds=3)
    await Sweeper(cfg, db, writer.current_files).sweep_once()  # learns (and saves) the protected list
    db.mark_down("test: database went away")
    sweeper = Sweeper(cfg, db, writer.current_files)  # a restart with the database down
    with structlog.testing.capture_logs() as logs:
        await run_floor(sweeper, writer, None)
    assert writer.enospc == 0 and writer.min_free > 0
    assert all(p.exists() for p in protected)
    assert sum(not p.exists() for p in files) > 10
    emergencies = [e for e in logs if e["event"] == "retention_emergency" and "count" in e]
    assert emergencies and {e["source"] for e in emergencies} == {"filesystem"}


async def test_floor_refuses_blind_deletion_when_protection_is_unknown(small_fs: Path, db: Database) -> None:
    root = small_fs / "rec"
    root.mkdir()
    cfg = make_config(root, [{"id": "old1", "plan": "premium"}, {"id": "old2", "plan": "premium"}])
    files, _ = await prefill(root, None, leave_free=-MB)  # below the floor already
    db.mark_down("test")
    sweeper = Sweeper(cfg, db, set)
    with structlog.testing.capture_logs() as logs:
        check = await sweeper.check_disk_once()
        await sweeper.check_disk_once()
    assert check.deleted == 0 and all(p.exists() for p in files)
    crit = [e for e in logs if e["event"] == "retention_emergency"]
    assert len(crit) == 1 and crit[0]["log_level"] == "critical" and crit[0]["outcome"] == "refused"


async def test_real_recording_goes_on_at_the_floor(small_fs: Path, db: Database, shared_cam: Any) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg")
    root = small_fs / "rec"
    root.mkdir()
    cfg = make_config(root, [{"id": "old1", "plan": "premium"}, {"id": "old2", "plan": "premium"},
                             {"id": "live", "plan": "basic", "url": shared_cam.url, "segment_seconds": 1,
                              "audio": "off"}])
    cam = cfg.camera("live")
    assert cam is not None
    now = datetime.now(UTC)
    for day in (now, now + timedelta(days=1)):  # what the supervisor does for FFmpeg
        (root / "live" / day.strftime("%Y-%m-%d")).mkdir(parents=True, exist_ok=True)
    files, protected = await prefill(root, db, leave_free=48 * 1024, chunk=256 * 1024)
    live_dir = root / "live"

    def current() -> set[str]:
        segs = sorted(live_dir.glob("*/*.mp4"))
        return {str(segs[-1])} if segs else set()

    proc = subprocess.Popen(build_command(cam), cwd=live_dir, env=dict(os.environ, TZ="UTC"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweeper = Sweeper(cfg, db, current)
    task = asyncio.create_task(sweeper.run())
    min_free = 1 << 62
    try:
        with structlog.testing.capture_logs() as logs:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                min_free = min(min_free, read_usage(root).free)
                if any(e["event"] == "retention_emergency" for e in logs) and len(list(live_dir.glob("*/*.mp4"))) >= 4:
                    break
        assert proc.poll() is None, "FFmpeg stopped"
        segs_before = len(list(live_dir.glob("*/*.mp4")))
        await asyncio.sleep(2.5)
        assert proc.poll() is None and len(list(live_dir.glob("*/*.mp4"))) > segs_before  # recording goes on
    finally:
        proc.terminate()
        proc.wait(10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert any(e["event"] == "retention_emergency" for e in logs), "the floor was never reached"
    assert min_free > 0
    assert all(p.exists() for p in protected)
