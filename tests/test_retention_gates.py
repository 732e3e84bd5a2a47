"""Retention's clock and storage gates, the floor's path spellings and the disk reading /healthz uses.

Real PostgreSQL, real files, and for the storage gate's floor a real small filesystem (tmpfs, else a
loop-mounted ext4 image) filled below its floor.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fixtures_storage import MB
from prometheus_client import REGISTRY

import recorderd.diskguard as diskguard
from recorderd.config import Config, parse_config
from recorderd.db import Database
from recorderd.diskguard import MARKER_MISSING, DiskUsage, Outcome, read_usage, unlink_batch
from recorderd.health import HealthSnapshot, health_reasons
from recorderd.layout import segment_path
from recorderd.retention import DAY, Sweeper
from recorderd.volume import MARKER_REL

pytestmark = pytest.mark.integration
NOW = datetime(2024, 6, 15, 12, 0, 0, tzinfo=UTC).timestamp()
HUGE = 1 << 50  # a floor no disk reaches: the floor deletes whatever it may


class Gate:
    """A gate the test opens (None) and closes (a reason)."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason

    def __call__(self) -> str | None:
        return self.reason


def config(root: Path, cameras: list[dict[str, Any]], *, storage: dict[str, Any] | None = None,
           retention: dict[str, Any] | None = None) -> Config:
    return parse_config({
        "storage": {"root": str(root), "min_free_percent": 0, **(storage or {})},
        "cameras": [{"url": "rtsp://127.0.0.1:1/x", **c} for c in cameras],
        "retention": {"batch_size": 3, "interval_seconds": 3600, "disk_check_seconds": 0.05, **(retention or {})},
        "metrics": {"listen": None},
    })


async def add(db: Database, root: Path, cam: str, end: float, *, size: int = 1000, protected: bool = False,
              deleting: bool = False, path: Path | None = None) -> Path:
    """A real file in the layout and its row (``path`` overrides where the row says it is)."""
    start = end - 60
    p = path or segment_path(root, cam, start)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(os.urandom(size))
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO segments (camera_id, start_time, end_time, duration_seconds, size_bytes, path,"
            " source, source_rank, protected, deleting) VALUES ($1,$2,$3,60,$4,$5,'ffmpeg',3,$6,$7)",
            cam, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), size, str(p),
            protected, deleting)
    return p


async def rows(db: Database) -> set[tuple[str, bool]]:
    async with db.acquire() as conn:
        return {(r["path"], r["deleting"]) for r in await conn.fetch("SELECT path, deleting FROM segments")}


def files_under(root: Path) -> set[str]:
    return {str(p) for p in root.glob("*/*/*.mp4")}


def paused(reason: str) -> float | None:
    return REGISTRY.get_sample_value("recorderd_retention_paused", {"reason": reason})


def events(logs: list[Any], name: str, **match: Any) -> list[Any]:
    return [e for e in logs if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


# --------------------------------------------------------------------------- the clock gate


async def test_clock_gate_keeps_expired_footage_until_it_opens_while_the_cap_runs(
        root: Path, db: Database, logs: list[Any]) -> None:
    cfg = config(root, [{"id": "c1", "plan": "basic"}, {"id": "c2", "plan": "premium", "max_bytes": 2500}])
    expired = await add(db, root, "c1", NOW - 10 * DAY)
    fresh = await add(db, root, "c1", NOW - DAY)
    capped = [await add(db, root, "c2", NOW - (5 - i) * 600) for i in range(5)]  # 5000 bytes, cap 2500
    empty_old_day = root / "c1" / "2024-05-01"
    empty_old_day.mkdir()
    gate = Gate("wall clock stepped by +259200.0s")
    sweeper = Sweeper(cfg, db, set, clock=lambda: NOW, clock_gate=gate)

    for _ in range(2):
        rep = await sweeper.sweep_once()
        assert expired.exists() and fresh.exists() and "age" not in rep.by_reason
        assert empty_old_day.is_dir()  # dated by the clock too
        assert paused("clock_untrusted") == 1.0
    assert [p.exists() for p in capped] == [False, False, False, True, True]  # the cap ignores the clock
    check = await sweeper.check_disk_once()
    assert check.before is not None
    [line] = events(logs, "retention_paused")  # one line per episode, not per sweep
    assert line["reason"] == "clock_untrusted" and line["detail"] == gate.reason and "age" in line["skipped"]
    assert line["log_level"] == "warning"
    assert not events(logs, "retention_resumed")

    gate.reason = None
    rep = await sweeper.sweep_once()
    assert rep.by_reason["age"].count == 1 and not expired.exists() and fresh.exists()
    assert not empty_old_day.exists()
    assert paused("clock_untrusted") == 0.0
    assert len(events(logs, "retention_resumed", reason="clock_untrusted")) == 1
    await sweeper.sweep_once()
    assert len(events(logs, "retention_paused")) == 1 and len(events(logs, "retention_resumed")) == 1


async def test_clock_gate_leaves_the_free_space_floor_running(root: Path, db: Database) -> None:
    cfg = config(root, [{"id": "c1", "plan": "premium"}], storage={"min_free_bytes": HUGE})
    files = [await add(db, root, "c1", NOW - i * 600) for i in range(4)]
    sweeper = Sweeper(cfg, db, set, clock=lambda: NOW, clock_gate=Gate("not synchronised yet"))
    check = await sweeper.check_disk_once()
    assert check.deleted == 4 and not any(p.exists() for p in files)


# --------------------------------------------------------------------------- the storage gate


async def _fill_below_floor(root: Path, db: Database, now: float) -> list[Path]:
    """Old (not expired) premium footage of two cameras until free space is 1 MiB under a 10 % floor."""
    floor = int(read_usage(root).total * 0.10)
    out: list[Path] = []
    t = now - 20 * DAY
    while (size := min(MB, read_usage(root).free - floor + MB)) > 0:
        out.append(await add(db, root, ("old1", "old2")[len(out) % 2], t, size=size))
        t += 600
    return out


async def test_storage_gate_deletes_nothing_at_all(small_fs: Path, db: Database, logs: list[Any]) -> None:
    root = small_fs / "rec"
    root.mkdir()
    now = time.time()
    cfg = config(root, [{"id": "old1", "plan": "premium"}, {"id": "old2", "plan": "premium"},
                        {"id": "exp", "plan": "basic"}, {"id": "cap", "plan": "premium", "max_bytes": 1000}],
                 storage={"min_free_percent": 10, "free_margin_percent": 5}, retention={"batch_size": 20})
    expired = await add(db, root, "exp", now - 10 * DAY)
    over_cap = [await add(db, root, "cap", now - DAY + i) for i in range(2)]
    interrupted = await add(db, root, "old1", now - 25 * DAY, deleting=True)  # a crash left it marked
    empty_old_day = root / "exp" / "2020-01-01"
    empty_old_day.mkdir()
    await _fill_below_floor(root, db, now)
    assert read_usage(root).free < int(read_usage(root).total * 0.10)
    on_disk, in_index = files_under(root), await rows(db)
    gate = Gate("storage volume marker /x/.recorderd/volume.json is missing: is the disk mounted?")

    sweeper = Sweeper(cfg, db, set, storage_gate=gate)
    await sweeper.finish_interrupted()
    await sweeper.sweep_once()
    check = await sweeper.check_disk_once()  # below the floor, index up
    assert check.before is not None and check.deleted == 0
    db.mark_down("test: database away")
    check = await sweeper.check_disk_once()  # the filesystem fallback
    assert check.deleted == 0
    restarted = Sweeper(cfg, db, set, storage_gate=gate)  # database down from the start
    await restarted.sweep_once()
    assert (await restarted.check_disk_once()).deleted == 0

    assert files_under(root) == on_disk and empty_old_day.is_dir()
    assert not (root / ".recorderd" / "protected_paths").exists()  # nothing written there either
    assert paused("storage_missing") == 1.0
    lines = events(logs, "retention_paused", reason="storage_missing")
    assert len(lines) == 2  # one per sweeper (episode), however many checks
    assert set(lines[0]["skipped"]) >= {"age", "cap", "floor", "recovery", "empty_day_dirs"}
    assert not events(logs, "retention_emergency")
    await db.connect()
    assert await rows(db) == in_index

    gate.reason = None
    await sweeper.sweep_once()
    check = await sweeper.check_disk_once()
    assert not expired.exists() and not interrupted.exists() and not empty_old_day.exists()
    assert sum(p.exists() for p in over_cap) == 1
    assert check.deleted > 0 and read_usage(root).free >= int(read_usage(root).total * 0.10)
    assert paused("storage_missing") == 0.0
    assert len(events(logs, "retention_resumed", reason="storage_missing")) == 1


async def test_storage_gate_closing_mid_sweep_stops_at_the_next_batch(root: Path, db: Database) -> None:
    cfg = config(root, [{"id": "c1", "plan": "basic"}])
    expired = [await add(db, root, "c1", NOW - 20 * DAY + i * 600) for i in range(9)]
    # the volume "goes away" once the first batch of three is gone
    sweeper = Sweeper(cfg, db, set, clock=lambda: NOW,
                      storage_gate=lambda: None if expired[0].exists() else "disk gone")
    rep = await sweeper.sweep_once()
    assert rep.deleted == 3 and [p.exists() for p in expired] == [False] * 3 + [True] * 6
    assert {d for _, d in await rows(db)} == {False}  # nothing left marked


async def test_unlinks_check_the_volume_marker_through_their_own_descriptor(root: Path, db: Database) -> None:
    """The gate is polled; between two polls the disk can go. The unlink batch itself checks."""
    cfg = config(root, [{"id": "c1", "plan": "basic"}], storage={"min_free_bytes": HUGE})
    expired = await add(db, root, "c1", NOW - 20 * DAY)
    young = await add(db, root, "c1", NOW - DAY)
    empty_old_day = root / "c1" / "2024-05-01"
    empty_old_day.mkdir()
    sweeper = Sweeper(cfg, db, set, clock=lambda: NOW, volume_marker=MARKER_REL)  # gate open, no marker
    await sweeper.sweep_once()
    assert (await sweeper.check_disk_once()).deleted == 0
    db.mark_down("test")
    assert (await sweeper.check_disk_once()).deleted == 0  # the filesystem fallback too
    assert expired.exists() and young.exists() and empty_old_day.is_dir()
    await db.connect()
    assert {d for _, d in await rows(db)} == {False}

    (root / MARKER_REL).parent.mkdir(exist_ok=True)
    (root / MARKER_REL).write_text("{}")
    await sweeper.sweep_once()
    assert not expired.exists() and not empty_old_day.exists()


def test_unlink_batch_refuses_the_whole_batch_without_the_marker(tmp_path: Path) -> None:
    f = tmp_path / "c1" / "2024-06-01" / "00-00-00.mp4"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    res = unlink_batch(tmp_path, [("c1", str(f))], marker=MARKER_REL)
    assert [(r.outcome, r.detail) for r in res] == [(Outcome.FAILED, MARKER_MISSING)] and f.exists()
    (tmp_path / MARKER_REL).parent.mkdir()
    (tmp_path / MARKER_REL).write_text("{}")
    assert unlink_batch(tmp_path, [("c1", str(f))], marker=MARKER_REL)[0].outcome is Outcome.DELETED


# --------------------------------------------------------------------------- one file, two spellings


@pytest.mark.parametrize("configured", ["symlink", "resolved"])
async def test_floor_fallback_honours_protection_whichever_root_spelling_the_index_used(
        tmp_path: Path, db: Database, configured: str) -> None:
    real = tmp_path / "disk1"
    real.mkdir()
    link = tmp_path / "rec"
    link.symlink_to(real)
    root, indexed_as = (link, real) if configured == "symlink" else (real, link)
    cfg = config(root, [{"id": "c1", "plan": "premium"}], storage={"min_free_bytes": HUGE})
    now = time.time()
    clip = await add(db, indexed_as, "c1", now - 5 * DAY, protected=True)
    others = [await add(db, indexed_as, "c1", now - 4 * DAY + i * 600) for i in range(3)]
    sweeper = Sweeper(cfg, db, set)
    await sweeper.sweep_once()  # learns (and saves) the protected list
    db.mark_down("test: database away")
    check = await sweeper.check_disk_once()
    assert clip.exists(), "a protected file reached through the other root spelling was deleted"
    assert check.deleted == 3 and not any(p.exists() for p in others)

    again = Sweeper(cfg, db, set)  # a restart with the database down: the saved list, same answer
    clip2 = segment_path(root, "c1", now - 3 * DAY)
    clip2.parent.mkdir(parents=True, exist_ok=True)
    clip2.write_bytes(b"y")
    await again.check_disk_once()
    assert clip.exists() and not clip2.exists()


async def test_the_file_being_written_is_recognised_in_either_spelling(tmp_path: Path, db: Database) -> None:
    real = tmp_path / "disk1"
    real.mkdir()
    link = tmp_path / "rec"
    link.symlink_to(real)
    cfg = config(link, [{"id": "c1", "plan": "premium"}], storage={"min_free_bytes": HUGE})
    live = await add(db, real, "c1", time.time() - 60)  # the index spells it resolved
    old = await add(db, real, "c1", time.time() - DAY)
    live_as_supervisor_says = str(link / os.path.relpath(live, real))
    check = await Sweeper(cfg, db, lambda: {live_as_supervisor_says}).check_disk_once()
    assert live.exists() and not old.exists() and check.deleted == 1


# --------------------------------------------------------------------------- the disk reading for /healthz


async def test_last_usage_is_the_disk_checks_reading(root: Path, db: Database) -> None:
    sweeper = Sweeper(config(root, []), db, set)
    assert sweeper.last_usage is None
    t0 = time.monotonic()
    await sweeper.check_disk_once()
    last = sweeper.last_usage
    assert last is not None
    usage, at = last
    assert isinstance(usage, DiskUsage) and usage.total == read_usage(root).total
    assert t0 <= at <= time.monotonic() and sweeper.disk_answer_age() < 5


async def test_a_hung_statvfs_shows_as_disk_unknown_and_never_blocks_the_loop(
        root: Path, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    sweeper = Sweeper(config(root, []), db, set)
    await sweeper.check_disk_once()
    first = sweeper.last_usage
    release = threading.Event()
    real_read = diskguard.read_usage

    def hung(path: Path) -> DiskUsage:  # what statvfs on a dead NFS server does
        release.wait(30)
        return real_read(path)

    monkeypatch.setattr(diskguard, "read_usage", hung)
    task = asyncio.create_task(sweeper.check_disk_once())
    try:
        t0 = time.monotonic()
        for _ in range(50):
            await asyncio.sleep(0.01)  # the loop keeps turning while statvfs hangs
        assert time.monotonic() - t0 < 5
        age = sweeper.disk_answer_age()
        assert age >= 0.5 and sweeper.last_usage == first and not task.done()
        assert first is not None
        snap = HealthSnapshot(now=time.time(), database_up=True, disk_free_bytes=first[0].free,
                              disk_total_bytes=first[0].total, floor_bytes=0, disk_age_seconds=age,
                              disk_stale_seconds=0.4)
        [reason] = health_reasons(snap)
        assert reason.startswith("disk_unknown: storage filesystem did not answer for")
    finally:
        release.set()
        await task
    assert sweeper.disk_answer_age() < 0.5 and sweeper.last_usage != first
