"""The storage volume marker and the one-daemon-per-root lock: real files, real processes, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from recorderd.config import parse_config
from recorderd.db import Database
from recorderd.layout import segment_path
from recorderd.retention import DAY, Sweeper
from recorderd.volume import (
    MARKER_REL,
    Evidence,
    RootLock,
    RootLocked,
    StorageVolume,
    VolumeState,
    decide,
)

REPO = Path(__file__).resolve().parent.parent
OK, UNVERIFIED, MISSING = VolumeState.OK, VolumeState.UNVERIFIED, VolumeState.MISSING


# --------------------------------------------------------------------------- the decision


def ev(present: bool = False, seen: bool = False, indexed: int | None = 0, sample: bool = False,
       previous: VolumeState = UNVERIFIED) -> Evidence:
    return Evidence(present, seen, indexed, sample, previous)


def test_decide_every_case() -> None:
    got = {
        "marker there": decide(ev(present=True, indexed=None)),
        "marker gone while running": decide(ev(seen=True, indexed=10, sample=True)),
        "first start": decide(ev(indexed=0)),
        "upgrade": decide(ev(indexed=10, sample=True)),
        "disk not mounted": decide(ev(indexed=10, sample=False)),
        "index away": decide(ev(indexed=None)),
        "index away, still missing": decide(ev(indexed=None, previous=MISSING)),
    }
    assert {k: (d.state, d.write_marker, d.why) for k, d in got.items()} == {
        "marker there": (OK, False, "marker_present"),
        "marker gone while running": (MISSING, False, "marker_gone"),
        "first start": (OK, True, "first_start"),
        "upgrade": (OK, True, "upgrade"),
        "disk not mounted": (MISSING, False, "no_files"),
        "index away": (UNVERIFIED, False, "index_unreachable"),
        "index away, still missing": (MISSING, False, "index_unreachable"),
    }


# --------------------------------------------------------------------------- one daemon per root

HOLDER = """
import sys, time
from pathlib import Path
from recorderd.volume import RootLock
RootLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_a_second_daemon_fails_at_once_naming_the_holder_until_it_is_killed(
        tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    t0 = time.monotonic()
    with pytest.raises(RootLocked) as info:
        RootLock(tmp_path).acquire()
    assert time.monotonic() - t0 < 1.0  # no waiting for the lock
    assert info.value.pid == holder.pid
    assert str(info.value) == f"another recorderd (pid {holder.pid}) is recording into {tmp_path}"

    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
    holder.wait(10)
    lock = RootLock(tmp_path)
    lock.acquire()
    try:
        assert (tmp_path / ".recorderd" / "daemon.lock").read_text().strip() == str(os.getpid())
    finally:
        lock.release()


def test_root_lock_is_exclusive_within_one_process_too_and_released_on_exit(tmp_path: Path) -> None:
    with RootLock(tmp_path) as first:
        assert first.held
        with pytest.raises(RootLocked):
            RootLock(tmp_path).acquire()
    with RootLock(tmp_path) as again:
        assert again.held


# --------------------------------------------------------------------------- the marker, with the index



async def index(db: Database, root: Path, cam: str, end: float, *, write: bool) -> Path:
    p = segment_path(root, cam, end - 60)
    if write:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"footage")
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO segments (camera_id, start_time, end_time, duration_seconds, size_bytes, path,"
            " source, source_rank) VALUES ($1,$2,$3,60,7,$4,'ffmpeg',3)",
            cam, datetime.fromtimestamp(end - 60, UTC), datetime.fromtimestamp(end, UTC), str(p))
    return p


def storage_missing() -> float | None:
    return REGISTRY.get_sample_value("recorderd_storage_missing")


def events(logs: list[Any], name: str) -> list[Any]:
    return [e for e in logs if e["event"] == name]


async def wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.integration
async def test_first_start_writes_the_marker(tmp_path: Path, root: Path, db: Database, logs: list[Any]) -> None:
    await index(db, tmp_path / "elsewhere", "c1", time.time() - 600, write=False)  # another root's footage
    changes: list[str] = []
    vol = StorageVolume(root, db, on_change=changes.append)
    assert vol.state == "unverified" and vol.reason() is not None
    assert await vol.check_once() == "ok"
    marker = json.loads((root / MARKER_REL).read_text())
    assert len(marker["uuid"]) == 36 and marker["created_at"].endswith("Z") and vol.uuid == marker["uuid"]
    assert changes == ["ok"] and vol.reason() is None and vol.is_ok() and storage_missing() == 0.0
    [line] = events(logs, "storage_verified")
    assert line["how"] == "first_start" and line["uuid"] == marker["uuid"]
    await vol.check_once()
    assert changes == ["ok"] and len(events(logs, "storage_verified")) == 1


@pytest.mark.integration
async def test_upgrade_with_footage_on_disk_writes_the_marker(root: Path, db: Database, logs: list[Any]) -> None:
    now = time.time()
    for i in range(5):
        await index(db, root, "c1", now - 600 * (i + 1), write=(i == 3))  # one of the newest is there
    vol = StorageVolume(root, db)
    assert await vol.check_once() == "ok" and (root / MARKER_REL).exists()
    assert events(logs, "storage_verified")[0]["how"] == "upgrade"


@pytest.mark.integration
async def test_footage_indexed_but_not_there_is_missing_until_the_disk_comes_back(
        tmp_path: Path, db: Database, logs: list[Any]) -> None:
    disk = tmp_path / "disk1"  # the index spells paths with the resolved root: both spellings count
    disk.mkdir()
    root = tmp_path / "rec"
    root.symlink_to(disk)
    now = time.time()
    paths = [await index(db, disk, "c1", now - 600 * (i + 1), write=False) for i in range(3)]
    changes: list[str] = []
    vol = StorageVolume(root, db, on_change=changes.append)
    for _ in range(3):
        assert await vol.check_once() == "missing"
    assert not (root / MARKER_REL).exists()  # nothing written onto what may be the wrong filesystem
    assert changes == ["missing"] and storage_missing() == 1.0 and not vol.is_ok()
    [crit] = events(logs, "storage_missing")  # once per episode
    assert crit["log_level"] == "critical" and crit["indexed"] == 3
    assert crit["reason"] == vol.reason()
    reason = vol.reason()
    assert reason is not None
    assert f"storage volume marker {root / MARKER_REL} is missing but the index has 3 segments under {root}" in reason
    assert "is the disk mounted? recording and deletion paused" in reason

    db.mark_down("test")  # the index going away proves nothing: still missing
    assert await vol.check_once() == "missing" and changes == ["missing"]

    paths[1].parent.mkdir(parents=True)
    paths[1].write_bytes(b"footage")  # the disk is mounted: its files are back
    assert await vol.check_once() == "ok"  # from the index's last answer, the database still down
    assert (root / MARKER_REL).exists() and changes == ["missing", "ok"] and storage_missing() == 0.0


@pytest.mark.integration
async def test_database_down_is_unverified_until_it_is_back(pg_dsn: str, root: Path, logs: list[Any]) -> None:
    setup = Database(pg_dsn)
    await setup.connect()
    await index(setup, root, "c1", time.time() - 600, write=True)
    await setup.close()
    db = Database(pg_dsn)  # not connected yet: the indexer has not reached it
    changes: list[str] = []
    vol = StorageVolume(root, db, on_change=changes.append, interval=30)  # only the wake-up can be quick
    task = asyncio.create_task(vol.run())
    try:
        await asyncio.sleep(0.3)
        assert vol.state == "unverified" and changes == [] and storage_missing() == 0.0
        reason = vol.reason()
        assert reason is not None and "index database cannot be asked" in reason
        t0 = time.monotonic()
        await db.connect()
        await wait_for(lambda: vol.state == "ok")
        assert time.monotonic() - t0 < 5 and changes == ["ok"]
        assert events(logs, "storage_verified")[0]["how"] == "upgrade"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


@pytest.mark.integration
async def test_marker_removed_while_running_pauses_and_its_return_resumes(
        root: Path, db: Database, logs: list[Any]) -> None:
    changes: list[str] = []
    vol = StorageVolume(root, db, on_change=changes.append, interval=0.05)
    task = asyncio.create_task(vol.run())
    marker = root / MARKER_REL
    try:
        await wait_for(lambda: vol.state == "ok")
        saved = marker.read_bytes()
        marker.unlink()  # what an unmount or a dead disk looks like from here
        await wait_for(lambda: vol.state == "missing")
        await asyncio.sleep(0.3)  # several more checks
        assert changes == ["ok", "missing"] and storage_missing() == 1.0
        [crit] = events(logs, "storage_missing")
        reason = vol.reason()
        assert reason is not None and "disappeared" in reason and "recording and deletion paused" in reason
        assert crit["log_level"] == "critical"
        assert not marker.exists()  # not rewritten: the index is not asked once the marker was seen

        marker.write_bytes(saved)  # the disk is back
        await wait_for(lambda: vol.state == "ok")
        assert changes == ["ok", "missing", "ok"] and storage_missing() == 0.0 and vol.reason() is None
        assert len(events(logs, "storage_verified")) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.integration
async def test_the_sweeper_deletes_nothing_while_the_volume_is_missing(root: Path, db: Database) -> None:
    cfg = parse_config({"storage": {"root": str(root), "min_free_percent": 0},
                        "cameras": [{"id": "c1", "url": "rtsp://127.0.0.1:1/x", "plan": "basic"}],
                        "metrics": {"listen": None}})
    now = time.time()
    expired = await index(db, root, "c1", now - 10 * DAY, write=True)
    vol = StorageVolume(root, db)
    await vol.check_once()  # footage there: ok, marker written
    sweeper = Sweeper(cfg, db, set, storage_gate=vol.reason, volume_marker=MARKER_REL)
    (root / MARKER_REL).unlink()
    assert await vol.check_once() == "missing"
    await sweeper.sweep_once()
    assert expired.exists()
    (root / MARKER_REL).write_text("{}")
    assert await vol.check_once() == "ok"
    await sweeper.sweep_once()
    assert not expired.exists()


@pytest.mark.integration
async def test_a_marker_that_cannot_be_written_keeps_the_volume_unverified(
        root: Path, db: Database, logs: list[Any]) -> None:
    """ok means "the marker is there" (the sweeper's unlinks check it): no marker, no ok."""
    (root / ".recorderd").write_text("not a directory")  # fails the write even as root
    changes: list[str] = []
    vol = StorageVolume(root, db, on_change=changes.append)
    for _ in range(2):
        assert await vol.check_once() == "unverified"
    reason = vol.reason()
    assert reason is not None and "cannot be written" in reason and changes == []
    assert len([e for e in events(logs, "storage_error") if e["log_level"] == "error"]) == 1
    (root / ".recorderd").unlink()
    assert await vol.check_once() == "ok" and (root / MARKER_REL).exists() and changes == ["ok"]
