"""Index fixes against the real private PostgreSQL: refused rows stay unknown, header-only files are
removed instead of probed, protected rows and a closed storage gate keep rows, and restamps after a
wall-clock step shift every targeted segment exactly once."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs
from test_indexer import T0, Running, config_for, counter, event, place, rows, sample_mp4
from util import wait_until

from recorderd import indexer as indexer_mod
from recorderd import layout, queries
from recorderd import watcher as watcher_mod
from recorderd.events import SegmentEvent
from recorderd.indexer import Indexer, to_datetime
from recorderd.mp4 import is_header_only
from recorderd.probe import FoundFile, probe_duration

pytestmark = pytest.mark.integration

__all__ = ["sample_mp4"]  # the session fixture, shared with test_indexer


@pytest.fixture(scope="session")
def header_mp4(sample_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a run killed before its first fragment leaves: the sample's ftyp + moov only."""
    data = sample_mp4.read_bytes()
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += size
        if kind == b"moov":
            break
    path = tmp_path_factory.mktemp("header") / "header.mp4"
    path.write_bytes(data[:pos])
    assert is_header_only(path) and not is_header_only(sample_mp4)
    return path


class Probe:
    """The real ffprobe, recording what it was asked to probe."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, path: str) -> float | None:
        self.paths.append(path)
        return await probe_duration(path)


async def execute(dsn: str, sql: str, *args: Any) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.execute(sql, *args))
    finally:
        await conn.close()


# --------------------------------------------------------------------------- refused rows


async def test_rows_refused_one_by_one_are_not_remembered_as_known(
        tmp_path: Path, pg_dsn: str, sample_mp4: Path) -> None:
    """The server refuses one row of a batch: the others are written and known; the refused one is
    not, so reconcile indexes its file once the server accepts it."""
    cfg = config_for(tmp_path, pg_dsn)
    root = cfg.storage.root
    ix = Indexer(cfg, watch=False)
    await ix.database.connect()
    paths = [place(sample_mp4, root, "cam-001", T0 + 2 * i) for i in range(3)]
    bad = paths[1]
    await execute(pg_dsn, """
        CREATE TABLE refuse (path text);
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM refuse WHERE path = NEW.path) THEN RAISE EXCEPTION 'refused by test'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON segments FOR EACH ROW EXECUTE FUNCTION refuse();""")
    await execute(pg_dsn, "INSERT INTO refuse VALUES ($1)", bad)
    try:
        for i, p in enumerate(paths):
            ix.submit(event(root, "cam-001", T0 + 2 * i, T0 + 2 * i + 2, path=p))
        with capture_logs() as logs:
            await ix._write_batch()
        assert [e["path"] for e in logs if e["event"] == "segment_rejected"] == [bad]
        assert {r["path"] for r in await rows(pg_dsn)} == {paths[0], paths[2]}
        assert ix.is_known(paths[0]) and ix.is_known(paths[2])
        assert not ix.is_known(bad) and ix.pending_count == 0
        await execute(pg_dsn, "DROP TRIGGER refuse ON segments")
        stats = await ix.reconciler.run()
    finally:
        await ix.close(2)
        await ix.database.close()
    assert stats.indexed == 1
    got = {r["path"]: r["source"] for r in await rows(pg_dsn)}
    assert got == {paths[0]: "ffmpeg", bad: "reconcile", paths[2]: "ffmpeg"}


# --------------------------------------------------------------------------- header-only files


async def test_header_only_orphans_stay_while_the_storage_volume_is_in_doubt(
        tmp_path: Path, pg_dsn: str, header_mp4: Path) -> None:
    ok = [False]
    cfg = config_for(tmp_path, pg_dsn, cams=("cam-001",))
    ix = Indexer(cfg, watch=False, probe=Probe(), storage_ok=lambda: ok[0])
    await ix.database.connect()
    killed = place(header_mp4, cfg.storage.root, "cam-001", T0, mtime=time.time() - 3600)
    try:
        await ix.reconciler.run()
        kept = os.path.exists(killed)
        ok[0] = True
        await ix.reconciler.run()
    finally:
        await ix.close(2)
        await ix.database.close()
    assert kept and not os.path.exists(killed)


async def test_reconcile_removes_settled_header_only_orphans_without_probing(
        tmp_path: Path, pg_dsn: str, sample_mp4: Path, header_mp4: Path) -> None:
    busy: set[str] = set()
    cfg = config_for(tmp_path, pg_dsn, cams=("cam-001", "cam-002"))
    root = cfg.storage.root
    probe = Probe()
    ix = Indexer(cfg, current_files=lambda: set(busy), watch=False, probe=probe)
    await ix.database.connect()
    now = time.time()
    killed = place(header_mp4, root, "cam-001", T0, mtime=now - 3600)  # settled orphan: goes
    fresh = place(header_mp4, root, "cam-001", T0 + 60, mtime=now)  # may still be written: stays
    live = place(header_mp4, root, "cam-002", T0 + 120, mtime=now - 3600)  # FFmpeg has it open: stays
    busy.add(live)
    indexed = place(header_mp4, root, "cam-002", T0 + 180, mtime=now - 3600)  # the index has a row: stays
    ix.submit(event(root, "cam-002", T0 + 180, T0 + 182, path=indexed))
    await ix._write_batch()
    good = place(sample_mp4, root, "cam-001", T0 + 240)
    empty = layout.segment_path(root, "cam-002", T0 + 300)
    empty.write_bytes(b"")  # unreadable, not header-only: skipped, never deleted
    os.utime(empty, (T0, T0))
    removed_before = counter("recorderd_header_only_files_removed_total")
    try:
        with capture_logs() as logs:
            stats = await ix.reconciler.run()
            again = await ix.reconciler.run()
    finally:
        await ix.close(2)
        await ix.database.close()
    assert not os.path.exists(killed)
    assert all(os.path.exists(p) for p in (fresh, live, indexed, good, str(empty)))
    assert counter("recorderd_header_only_files_removed_total") - removed_before == 1
    assert (stats.header_only_removed, stats.indexed, stats.unreadable) == (1, 1, 1)
    assert (again.header_only_removed, again.indexed) == (0, 0)
    assert probe.paths == [good, str(empty)]  # header-only files are never probed
    assert ix.reconciler.unreadable_count == 1  # the empty file only
    removed = [e for e in logs if e["event"] == "segment_header_only_removed"]
    assert [(e["count"], e["paths"]) for e in removed] == [(1, [killed])]
    assert [e["path"] for e in logs if e["event"] == "segment_unreadable"] == [str(empty)]
    assert {r["path"] for r in await rows(pg_dsn)} == {indexed, good}


async def test_watcher_removes_a_header_only_file_once_settled(
        tmp_path: Path, pg_dsn: str, header_mp4: Path, sample_mp4: Path) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    root = cfg.storage.root
    (root / "cam-001").mkdir(parents=True)
    busy: set[str] = set()
    probe = Probe()
    async with Running(cfg, watch=True, current_files=lambda: set(busy), probe=probe) as ix:
        await wait_until(lambda: ix.reconciler.last is not None, 20)
        await asyncio.sleep(1.0)  # the OS watch is in place
        with capture_logs() as logs:
            killed = layout.segment_path(root, "cam-001", T0)
            killed.parent.mkdir(parents=True)
            shutil.copyfile(header_mp4, killed)
            os.utime(killed, (T0, T0))  # a leftover of a run killed long ago
            open_now = layout.segment_path(root, "cam-001", T0 + 60)
            busy.add(str(open_now))
            shutil.copyfile(header_mp4, open_now)  # FFmpeg just opened it: header, no fragment yet
            good = layout.segment_path(root, "cam-001", T0 + 120)
            shutil.copyfile(sample_mp4, good)
            os.utime(good, (T0 + 122, T0 + 122))
            await wait_until(lambda: not killed.exists(), 30, what="header-only file removed")
            await wait_until(lambda: ix.is_known(str(good)) and ix.pending_count == 0, 20, what="indexed")
    assert open_now.exists()
    assert [r["path"] for r in await rows(pg_dsn)] == [str(good)]
    assert str(killed) not in probe.paths and str(open_now) not in probe.paths
    assert [e["paths"] for e in logs if e["event"] == "segment_header_only_removed"] == [[str(killed)]]
    assert ix.reconciler.unreadable_count == 0


async def test_unreadable_set_is_bounded(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    root = cfg.storage.root
    ix = Indexer(cfg, watch=False)
    await ix.database.connect()
    broken = layout.segment_path(root, "cam-001", T0)
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a video")
    os.utime(broken, (T0, T0))
    try:
        await ix.reconciler.run()
        assert ix.reconciler.unreadable_count == 1
        broken.write_bytes(b"still not a video")  # changed: the old entry is replaced, not added to
        os.utime(broken, (T0 + 1, T0 + 1))
        await ix.reconciler.run()
        assert ix.reconciler.unreadable_count == 1
        broken.unlink()
        await ix.reconciler.run()
        assert ix.reconciler.unreadable_count == 0  # a file that is gone is forgotten
    finally:
        await ix.close(2)
        await ix.database.close()
    monkeypatch.setattr(watcher_mod, "UNREADABLE_MAX", 3)
    for i in range(5):
        ix.reconciler.unreadable(FoundFile(f"/r/cam-00{i % 2}/x{i}.mp4", f"cam-00{i % 2}", T0, T0, 1))
    assert ix.reconciler.unreadable_count == 3


# --------------------------------------------------------------------------- rows of missing files


async def test_reconcile_keeps_protected_rows_of_missing_files(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    root = cfg.storage.root
    (root / "cam-001").mkdir(parents=True)
    ix = Indexer(cfg, watch=False)
    await ix.database.connect()
    gone = [str(layout.segment_path(root, "cam-001", T0 + 10 * i)) for i in range(4)]
    for i, p in enumerate(gone):
        ix.submit(event(root, "cam-001", T0 + 10 * i, T0 + 10 * i + 10, path=p))
    await ix._write_batch()
    await execute(pg_dsn, "UPDATE segments SET protected = true WHERE path = ANY($1::text[])", gone[1:3])
    try:
        with capture_logs() as logs:
            stats = await ix.reconciler.run()
    finally:
        await ix.close(2)
        await ix.database.close()
    got = {r["path"]: r["protected"] for r in await rows(pg_dsn)}
    assert got == {gone[1]: True, gone[2]: True}
    assert stats.missing_deleted == 2 and stats.clips_missing == gone[1:3]
    clips = [e for e in logs if e["event"] == "clip_file_missing"]
    assert [(e["log_level"], e["count"], e["paths"]) for e in clips] == [("error", 2, gone[1:3])]
    # and the statement itself refuses, whatever a caller passes
    assert await execute(pg_dsn, queries.DELETE_MISSING, gone) == "DELETE 0"


async def test_closed_storage_gate_deletes_no_rows_until_it_opens(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexer_mod, "PING_SECONDS", 0.5)
    cfg = config_for(tmp_path, pg_dsn)
    root = cfg.storage.root
    (root / "cam-001").mkdir(parents=True)
    gone = [str(layout.segment_path(root, "cam-001", T0 + 10 * i)) for i in range(3)]
    seed = Indexer(cfg, watch=False)
    await seed.database.connect()
    for i, p in enumerate(gone):
        seed.submit(event(root, "cam-001", T0 + 10 * i, T0 + 10 * i + 10, path=p))
    await seed._write_batch()
    await seed.close(2)
    await seed.database.close()
    gate = [False]
    with capture_logs() as logs:
        async with Running(cfg, storage_ok=lambda: gate[0]) as ix:
            await wait_until(lambda: ix.reconciler.last is not None, 20)
            first = ix.reconciler.last
            assert first is not None and first.deletions_skipped and first.missing_deleted == 0
            await asyncio.sleep(1.5)  # gate still closed: no second pass, nothing deleted
            assert ix.reconciler.last is first and len(await rows(pg_dsn)) == 3
            gate[0] = True
            await wait_until(lambda: ix.reconciler.last is not first, 10, what="reconcile once storage is back")
    assert ix.reconciler.last is not None and ix.reconciler.last.missing_deleted == 3
    assert await rows(pg_dsn) == []
    skipped = [e for e in logs if e["event"] == "reconcile_skipped"]
    assert len(skipped) == 1 and "storage" in skipped[0]["reason"]


# --------------------------------------------------------------------------- restamp


def _run_events(tmp_path: Path, run: str, n: int, start: float, tag: str) -> list[SegmentEvent]:
    bounds = [start]
    for i in range(n):
        bounds.append(bounds[-1] + 2.0 + (i % 3) * 0.0333331)
    return [event(tmp_path, "cam-001", bounds[i], bounds[i + 1], run_id=run, seq=i,
                  path=str(tmp_path / "cam-001" / f"{tag}-{i:03d}.mp4")) for i in range(n)]


def _check_shift(got: dict[str, asyncpg.Record], events: list[SegmentEvent], max_seq: int, delta_us: int) -> None:
    step = timedelta(microseconds=delta_us)
    for ev in events:
        r = got[ev.path]
        moved = step if ev.seq is not None and ev.seq <= max_seq else timedelta(0)
        assert r["start_time"] == to_datetime(ev.start) + moved, (ev.seq, max_seq)
        assert r["end_time"] == to_datetime(ev.end) + moved, (ev.seq, max_seq)
        assert abs(r["duration_seconds"] - ev.duration) < 2e-6


async def test_restamp_shifts_committed_and_pending_rows_exactly_once(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
    a = _run_events(tmp_path, run_a, 12, T0 + 0.123457, "a")
    b = _run_events(tmp_path, run_b, 4, T0 + 0.5, "b")
    delta = -3600.250123
    delta_us = -3_600_250_123
    ix = Indexer(cfg, watch=False)
    await ix.database.connect()
    for ev in a[:5] + b[:2]:
        ix.submit(ev)
    await ix._write_batch()  # committed: a 0-4, b 0-1
    for ev in a[5:] + b[2:]:
        ix.submit(ev)  # pending: a 5-11, b 2-3
    before = counter("recorderd_restamped_segments_total")
    ix.restamp({run_a: 7, str(uuid.uuid4()): 3}, delta)  # a 0-7 move; b and an unknown run do not
    assert ix.restamp_pending and ix.pending_count == 9
    with capture_logs() as logs:
        task = asyncio.create_task(ix.run())
        await wait_until(lambda: ix.pending_count == 0 and not ix.restamp_pending, 10)
        await ix.close(5)
        await task
    got = {r["path"]: r for r in await rows(pg_dsn)}
    assert len(got) == 16
    _check_shift(got, a, 7, delta_us)
    _check_shift(got, b, -1, delta_us)
    ordered = sorted((r for r in got.values() if str(r["run_id"]) == run_a), key=lambda r: r["seq"])
    for x, y in zip(ordered[:7], ordered[1:8], strict=True):
        assert x["end_time"] == y["start_time"]  # tiling holds across the committed/pending boundary
    assert counter("recorderd_restamped_segments_total") - before == 8
    done = [e for e in logs if e["event"] == "segments_restamped"]
    assert [(e["count"], e["committed"], e["pending"]) for e in done] == [(8, 5, 3)]


async def test_restamp_retried_after_an_unseen_commit_shifts_once(tmp_path: Path, pg_dsn: str) -> None:
    """An attempt whose UPDATE committed though the client saw a failure (timeout, connection lost
    after COMMIT) leaves the job queued: the retry must not shift those rows again."""
    cfg = config_for(tmp_path, pg_dsn)
    run = str(uuid.uuid4())
    evs = _run_events(tmp_path, run, 4, T0, "r")
    ix = Indexer(cfg, watch=False)
    await ix.database.connect()
    for ev in evs:
        ix.submit(ev)
    await ix._write_batch()
    ix.restamp({run: 10}, 7.5)
    job = ix._restamps[0]
    # the "first attempt": exactly the writer's statement, committed behind the writer's back
    assert await execute(pg_dsn, queries.RESTAMP_SEGMENTS, [run], [10], 7.5, job.stamp) == "UPDATE 4"
    try:
        assert await ix._apply_restamps()
    finally:
        await ix.close(2)
        await ix.database.close()
    _check_shift({r["path"]: r for r in await rows(pg_dsn)}, evs, 10, 7_500_000)
    assert not ix.restamp_pending


async def test_restamp_queued_while_database_down_applies_when_it_returns(
        tmp_path: Path, pg_cluster: Any, pg_dsn: str) -> None:
    cfg = config_for(tmp_path, pg_dsn)
    run = str(uuid.uuid4())
    evs = _run_events(tmp_path, run, 6, T0, "d")
    async with Running(cfg) as ix:
        for ev in evs[:3]:
            ix.submit(ev)
        await wait_until(lambda: ix.pending_count == 0, 10)
        await asyncio.to_thread(pg_cluster.stop)
        try:
            await wait_until(lambda: not ix.database_up, 15, what="database noticed down")
            for ev in evs[3:]:
                ix.submit(ev)
            ix.restamp({run: 4}, 90.000001)
            await asyncio.sleep(1.0)
            assert ix.restamp_pending and ix.pending_count == 3
        finally:
            await asyncio.to_thread(pg_cluster.start)
        await wait_until(lambda: ix.database_up and ix.pending_count == 0 and not ix.restamp_pending, 40,
                         what="restamp and backlog written")
    _check_shift({r["path"]: r for r in await rows(pg_dsn)}, evs, 4, 90_000_001)
