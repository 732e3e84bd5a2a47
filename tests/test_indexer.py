"""The Indexer against a real PostgreSQL: batching, idempotence, outages, reconcile, watcher."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from util import make_config, wait_until

from recorderd import layout
from recorderd.config import Config
from recorderd.events import SegmentEvent
from recorderd.indexer import Indexer

pytestmark = pytest.mark.integration

T0 = 1_795_000_000.0  # 2026-11-18T...Z, whole second


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 s fragmented MP4, made once per session and copied by the tests."""
    path = tmp_path_factory.mktemp("media") / "sample.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                    "-t", "2", "-c:v", "libx264", "-movflags", "+frag_keyframe+empty_moov+default_base_moof",
                    str(path)], check=True, timeout=60)
    return path


def config_for(tmp: Path, dsn: str, cams: tuple[str, ...] = ("cam-001",), **database: Any) -> Config:
    """Storage root ``tmp/root``: synthetic events use paths under ``tmp`` itself, outside the root,
    so a reconcile never mistakes their (non-existent) files for deleted footage."""
    return make_config(tmp / "root", [{"id": c, "url": f"rtsp://user:pw@127.0.0.1:1/{c}"} for c in cams],
                       database={"dsn": dsn, **database})


def event(root: Path, cam: str, start: float, end: float, *, source: str = "ffmpeg",
          run_id: str | None = None, seq: int | None = None, size: int = 1000,
          path: str | None = None) -> SegmentEvent:
    p = path or str(layout.segment_path(root, cam, start))
    return SegmentEvent(cam, p, start, end, size, run_id, seq, source, time.time())


def place(sample: Path, root: Path, cam: str, start: float, mtime: float | None = None) -> str:
    """Copy the sample to the layout path for ``start``; mtime defaults to start + 2 s (its end)."""
    dest = layout.segment_path(root, cam, start)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample, dest)
    m = start + 2.0 if mtime is None else mtime
    os.utime(dest, (m, m))
    return str(dest)


async def rows(dsn: str, cam: str | None = None) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(
            "SELECT * FROM segments WHERE $1::text IS NULL OR camera_id = $1 ORDER BY start_time, path", cam))
    finally:
        await conn.close()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Running:
    """An Indexer running as a task, closed at the end of the test."""

    def __init__(self, config: Config, **kw: Any) -> None:
        kw.setdefault("watch", False)
        self.ix = Indexer(config, **kw)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Indexer:
        self.task = asyncio.create_task(self.ix.run())
        await wait_until(lambda: self.ix.database_up, 20, what="database up")
        return self.ix

    async def __aexit__(self, *exc: object) -> None:
        await self.ix.close(5)
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)  # run() returns cleanly, never raises


async def count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM segments"))
    finally:
        await conn.close()


async def test_resubmit_is_idempotent_and_best_source_wins(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    async with Running(cfg) as ix:
        ix.submit(event(tmp_path, "cam-001", T0, T0 + 9.5, source="watch", size=1))
        await wait_until(lambda: ix.pending_count == 0, 10)
        ix.submit(event(tmp_path, "cam-001", T0 + 0.25, T0 + 10.25, source="ffmpeg", size=3,
                        run_id=str(uuid.uuid4()), seq=0))
        ix.submit(event(tmp_path, "cam-001", T0, T0 + 9, source="reconcile", size=2))  # same batch, worse
        await wait_until(lambda: ix.pending_count == 0, 10)
        ix.submit(event(tmp_path, "cam-001", T0, T0 + 9, source="recovered", size=4))  # later, still worse
        ix.submit(event(tmp_path, "cam-001", T0 + 0.25, T0 + 10.25, source="ffmpeg", size=3))  # same again
        await wait_until(lambda: ix.pending_count == 0, 10)
    got = await rows(pg_dsn)
    assert len(got) == 1
    r = got[0]
    assert (r["source"], r["source_rank"], r["size_bytes"], r["seq"]) == ("ffmpeg", 3, 3, 0)
    assert r["start_time"] == datetime.fromtimestamp(T0 + 0.25, UTC)
    assert r["duration_seconds"] == 10.0


async def test_tiling_preserved_to_the_microsecond(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    run = str(uuid.uuid4())
    bounds = [T0 + 0.123457]
    for i in range(200):
        bounds.append(bounds[-1] + 2.0 + (i % 7) * 0.0333331 + 1e-7 * i)
    async with Running(cfg) as ix:
        for i in range(200):
            ix.submit(event(tmp_path, "cam-001", bounds[i], bounds[i + 1], run_id=run, seq=i,
                            path=str(tmp_path / "cam-001" / f"s{i:04d}.mp4")))
        await wait_until(lambda: ix.pending_count == 0, 10)
    got = await rows(pg_dsn)
    assert [r["seq"] for r in got] == list(range(200))
    for a, b in itertools.pairwise(got):
        assert a["end_time"] == b["start_time"]  # no gap, no overlap: exactly the same microsecond
    for i, r in enumerate(got):
        assert r["start_time"] == datetime.fromtimestamp(bounds[i], UTC)
        assert layout.iso(bounds[i]) == layout.iso(r["start_time"].timestamp())
        assert str(r["run_id"]) == run


async def test_database_outage_loses_nothing_and_submit_never_blocks(
        tmp_path: Path, pg_cluster: Any, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn, cams=("cam-001", "cam-002"))
    worst = 0.0
    n = 0

    def submit_some(ix: Indexer, k: int) -> None:
        nonlocal worst, n
        for _ in range(k):
            cam = "cam-001" if n % 2 else "cam-002"
            t0 = time.perf_counter()
            ix.submit(event(tmp_path, cam, T0 + n, T0 + n + 1, path=str(tmp_path / cam / f"{n:06d}.mp4")))
            worst = max(worst, time.perf_counter() - t0)
            n += 1

    with capture_logs() as logs:
        async with Running(cfg) as ix:
            submit_some(ix, 50)
            await wait_until(lambda: ix.pending_count == 0, 10)
            stop = asyncio.create_task(asyncio.to_thread(pg_cluster.stop))
            while not stop.done():  # keep recording while PostgreSQL goes away
                submit_some(ix, 20)
                await asyncio.sleep(0.02)
            await stop
            for _ in range(20):
                submit_some(ix, 20)
                await asyncio.sleep(0.05)
            await wait_until(lambda: not ix.database_up, 15, what="database noticed down")
            assert ix.pending_count > 0
            await asyncio.to_thread(pg_cluster.start)
            submit_some(ix, 50)
            await wait_until(lambda: ix.database_up and ix.pending_count == 0, 40, what="backlog written")
    assert worst < 0.005, f"submit took {worst * 1000:.2f} ms"
    got = await rows(pg_dsn)
    assert len(got) == n
    assert len({r["path"] for r in got}) == n
    events = [e["event"] for e in logs]
    assert events.count("database_down") == 1 and events.count("database_up") == 2


async def test_pending_bound_drops_oldest_and_reconcile_refinds_them(
        tmp_path: Path, pg_dsn: str, sample_mp4: Path) -> None:
    cfg = config_for(tmp_path, pg_dsn, pending_max_rows=4)
    root = cfg.storage.root
    ix = Indexer(cfg, watch=False)  # not connected yet: exactly like a database down at start
    dropped_before = counter("recorderd_index_dropped_rows_total")
    starts = [T0 + 2 * i for i in range(10)]
    for s in starts:
        place(sample_mp4, root, "cam-001", s)
        ix.submit(event(root, "cam-001", s, s + 2.0))
    assert ix.pending_count == 4
    assert counter("recorderd_index_dropped_rows_total") - dropped_before == 6
    task = asyncio.create_task(ix.run())
    await wait_until(lambda: ix.database_up and ix.pending_count == 0, 20)
    await wait_until(lambda: ix.reconciler.last is not None, 30, what="reconcile done")
    await ix.close(5)
    await task
    got = await rows(pg_dsn)
    assert [r["start_time"].timestamp() for r in got] == starts  # every file exactly once
    assert [r["source"] for r in got] == ["reconcile"] * 6 + ["ffmpeg"] * 4
    assert all(abs(r["duration_seconds"] - 2.0) < 0.01 for r in got)


async def test_reconcile_orphans_missing_busy_and_unreadable(
        tmp_path: Path, pg_dsn: str, sample_mp4: Path) -> None:
    busy: set[str] = set()
    cfg = config_for(tmp_path, pg_dsn, cams=("cam-001", "cam-002"))
    root = cfg.storage.root
    ix = Indexer(cfg, current_files=lambda: set(busy), watch=False)
    await ix.database.connect()
    now = time.time()
    exact = place(sample_mp4, root, "cam-001", T0, mtime=T0 + 2.4)  # mtime - 2 s = T0 + 0.4: plausible
    far = place(sample_mp4, root, "cam-001", T0 + 60, mtime=now - 3600)  # copied later: use path time
    busy_file = place(sample_mp4, root, "cam-002", T0 + 120)
    busy.add(busy_file)
    fresh = place(sample_mp4, root, "cam-002", T0 + 180, mtime=now)  # still being written?
    empty = layout.segment_path(root, "cam-002", T0 + 240)
    empty.write_bytes(b"")
    os.utime(empty, (T0, T0))
    stray = root / "cam-001" / "notes.mp4"
    stray.write_bytes(b"x")
    (root / ".recorderd").mkdir()
    shutil.copyfile(sample_mp4, root / ".recorderd" / "x.mp4")
    gone = [str(root / "cam-002" / "2026-01-01" / f"00-00-0{i}.mp4") for i in range(3)]
    elsewhere = "/elsewhere/cam-002/2026-01-01/00-00-00.mp4"  # not under this root: left alone
    for i, p in enumerate([*gone, elsewhere]):
        ix.submit(event(root, "cam-002", T0 - 100 + i, T0 - 99 + i, path=p))
    kept = place(sample_mp4, root, "cam-002", T0 + 300)
    ix.submit(event(root, "cam-002", T0 + 300, T0 + 302, path=kept))
    await ix._write_batch()
    with capture_logs() as logs:
        stats = await ix.reconciler.run()
        again = await ix.reconciler.run()  # unreadable is logged once, nothing left to do
    await ix.close(2)
    await ix.database.close()

    got = {r["path"]: r for r in await rows(pg_dsn)}
    assert got[exact]["source"] == "reconcile"
    assert got[exact]["start_time"] == datetime.fromtimestamp(T0 + 0.4, UTC)
    assert abs(got[exact]["duration_seconds"] - 2.0) < 0.01
    assert got[far]["start_time"] == datetime.fromtimestamp(T0 + 60, UTC)
    assert busy_file not in got and fresh not in got and str(empty) not in got and str(stray) not in got
    assert not any(".recorderd" in p for p in got)
    assert not set(gone) & set(got)
    assert elsewhere in got and got[kept]["source"] == "ffmpeg"
    assert empty.exists()  # unreadable files are skipped, never deleted
    assert (stats.indexed, stats.missing_deleted, stats.unreadable) == (2, 3, 1)
    assert stats.missing_by_camera == {"cam-002": 3}
    assert (again.indexed, again.missing_deleted) == (0, 0)
    missing_logs = [e for e in logs if e["event"] == "segments_missing"]
    assert [(e["camera_id"], e["count"]) for e in missing_logs] == [("cam-002", 3)]
    assert [e["event"] for e in logs].count("segment_unreadable") == 1


async def test_file_cut_by_a_kill_is_indexed_once_it_settles(
        tmp_path: Path, pg_dsn: str, sample_mp4: Path) -> None:
    """Restart right after a SIGKILL: the cut file is too fresh for the first pass, and nothing
    will write it again (so no watcher event): reconcile must come back for it."""
    cfg = config_for(tmp_path, pg_dsn)
    cut = place(sample_mp4, cfg.storage.root, "cam-001", T0, mtime=time.time() - 1)
    async with Running(cfg) as ix:
        await wait_until(lambda: ix.reconciler.last is not None, 20)
        assert ix.reconciler.last is not None and [f.path for f in ix.reconciler.last.fresh] == [cut]
        deadline = time.monotonic() + 20
        got: list[asyncpg.Record] = []
        while time.monotonic() < deadline and not got:
            await asyncio.sleep(0.5)
            got = await rows(pg_dsn)
    assert [(r["path"], r["source"]) for r in got] == [(cut, "reconcile")]


async def test_reconcile_keeps_rows_when_storage_looks_unmounted(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    root = cfg.storage.root
    ix = Indexer(cfg, watch=False)
    await ix.database.connect()
    for i in range(120):
        ix.submit(event(root, "cam-001", T0 + 10 * i, T0 + 10 * i + 10))
    await ix._write_batch()
    (root / "cam-001").mkdir(parents=True)
    with capture_logs() as logs:
        stats = await ix.reconciler.run()
    await ix.database.close()
    assert stats.missing_deleted == 0 and len(await rows(pg_dsn)) == 120
    assert any(e["event"] == "reconcile_suspicious" for e in logs)


async def test_watcher_indexes_files_moved_or_copied_in(
        tmp_path: Path, pg_dsn: str, sample_mp4: Path) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    root = cfg.storage.root
    root.mkdir()
    busy: set[str] = set()
    async with Running(cfg, watch=True, current_files=lambda: set(busy)) as ix:
        await wait_until(lambda: ix.reconciler.last is not None, 20)
        (root / "cam-001").mkdir()
        await asyncio.sleep(1.0)  # the OS watch is in place
        outside = tmp_path / "incoming.mp4"
        shutil.copyfile(sample_mp4, outside)
        os.utime(outside, (T0 + 2.3, T0 + 2.3))
        moved = layout.segment_path(root, "cam-001", T0)
        moved.parent.mkdir(parents=True)
        os.rename(outside, moved)  # an operator's mv: shows up as "added"
        copied = layout.segment_path(root, "cam-001", T0 + 3600)
        shutil.copyfile(sample_mp4, copied)  # fresh mtime: start comes from the path
        other_day = layout.segment_path(root, "cam-001", T0 + 2 * 86400)
        staging = tmp_path / "staging" / other_day.parent.name
        staging.mkdir(parents=True)
        in_dir = staging / other_day.name
        shutil.copyfile(sample_mp4, in_dir)
        os.rename(staging, root / "cam-001" / staging.name)  # a whole day directory moved in
        live = layout.segment_path(root, "cam-001", T0 + 9000)
        busy.add(str(live))
        shutil.copyfile(sample_mp4, live)  # open by "FFmpeg": must be left alone
        want = {str(moved), str(copied), str(root / "cam-001" / staging.name / in_dir.name)}

        async def indexed() -> set[str]:
            return {r["path"] for r in await rows(pg_dsn)}

        deadline = time.monotonic() + 30
        got: set[str] = set()
        while time.monotonic() < deadline and not want <= got:
            await asyncio.sleep(0.5)
            got = await indexed()
        assert want <= got, f"watcher indexed {got}"
    by_path = {r["path"]: r for r in await rows(pg_dsn)}
    assert str(live) not in by_path
    assert {by_path[p]["source"] for p in want} == {"watch"}
    assert by_path[str(moved)]["start_time"] == datetime.fromtimestamp(T0 + 0.3, UTC)
    assert by_path[str(copied)]["start_time"] == datetime.fromtimestamp(T0 + 3600, UTC)


async def test_cameras_mirror_config_and_reload(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn, cams=("cam-001", "cam-002"))
    async with Running(cfg) as ix:
        await wait_until(lambda: not ix._cameras_dirty, 10)
        new = make_config(tmp_path / "root",
                          [{"id": "cam-002", "url": "rtsp://h/2", "tenant": "acme", "plan": "pro"},
                           {"id": "cam-003", "url": "rtsp://h/3", "enabled": False}],
                          database={"dsn": pg_dsn})
        ix.update_config(new)

        async def table() -> dict[str, asyncpg.Record]:
            conn = await asyncpg.connect(pg_dsn)
            try:
                return {r["id"]: r for r in await conn.fetch("SELECT * FROM cameras")}
            finally:
                await conn.close()

        deadline = time.monotonic() + 10
        cams = await table()
        while time.monotonic() < deadline and "cam-003" not in cams:
            await asyncio.sleep(0.1)
            cams = await table()
    assert set(cams) == {"cam-001", "cam-002", "cam-003"}
    assert cams["cam-001"]["in_config"] is False
    assert (cams["cam-002"]["tenant"], cams["cam-002"]["plan"], cams["cam-002"]["retention_days"]) == \
        ("acme", "pro", 15)
    assert cams["cam-003"]["enabled"] is False and cams["cam-003"]["in_config"] is True


async def test_bad_events_are_rejected_without_raising(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    bad: list[Callable[[], SegmentEvent]] = [
        lambda: event(tmp_path, "cam-001", T0 + 5, T0),  # ends before it starts
        lambda: event(tmp_path, "cam-001", float("nan"), T0, path=str(tmp_path / "nan.mp4")),
        lambda: event(tmp_path, "cam-001", T0, T0 + 1, source="magic"),
        lambda: event(tmp_path, "cam-001", T0, T0 + 1, path="relative.mp4"),
        lambda: event(tmp_path, "cam-001", T0, T0 + 1, seq=2**40),
    ]
    async with Running(cfg) as ix:
        for make in bad:
            ix.submit(make())
        assert ix.pending_count == 0
        ix.submit(event(tmp_path, "cam-001", T0, T0 + 1, run_id="not-a-uuid"))  # kept, run_id dropped
        await wait_until(lambda: ix.pending_count == 0, 10)
    got = await rows(pg_dsn)
    assert len(got) == 1 and got[0]["run_id"] is None


async def test_close_with_database_down_returns_in_time(tmp_path: Path) -> None:
    cfg = config_for(tmp_path, "postgresql://u:pw@127.0.0.1:1/none")
    ix = Indexer(cfg, watch=False)
    task = asyncio.create_task(ix.run())
    ix.submit(event(tmp_path, "cam-001", T0, T0 + 1))
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await ix.close(1.0)
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - t0 < 3.0
    assert ix.pending_count == 1 and not ix.database_up
