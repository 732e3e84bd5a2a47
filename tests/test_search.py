"""search / status / storage as the operator sees them, against a real PostgreSQL."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from util import make_config

from recorderd import queries, report
from recorderd.config import Config, default_node_id
from recorderd.db import migrate
from recorderd.events import SegmentEvent
from recorderd.indexer import segment_arrays
from recorderd.report import cmd_search, cmd_status, cmd_storage, parse_time, search
from recorderd.statusfile import write_status

pytestmark = pytest.mark.integration

T = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def seg(cam: str, start: float, end: float, name: str, size: int = 100) -> SegmentEvent:
    return SegmentEvent(cam, f"/data/{cam}/{name}.mp4", start, end, size, None, None, "ffmpeg", time.time())


A = seg("cam-001", T, T + 10, "a")
B = seg("cam-001", T + 10, T + 20, "b")
C = seg("cam-001", T + 20, T + 30, "c")
D = seg("cam-001", T + 1000, T + 4600, "d-long")  # one hour: starts long before a query inside it
OTHER = seg("cam-002", T, T + 30, "other")


async def insert(dsn: str, events: list[SegmentEvent]) -> None:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetch(queries.UPSERT_SEGMENTS, *segment_arrays(events))
    finally:
        await conn.close()


def dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def config(tmp_path: Path, dsn: str) -> Config:
    return make_config(tmp_path, [
        {"id": "cam-001", "url": "rtsp://u:camsecret@10.0.0.1/s", "tenant": "acme", "plan": "pro"},
        {"id": "cam-002", "url": "rtsp://10.0.0.2/s", "tenant": "acme"},
        {"id": "cam-003", "url": "rtsp://10.0.0.3/s", "tenant": "globex", "plan": "premium"},
    ], database={"dsn": dsn})


async def run_cmd(coro_fn: Any, *args: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await coro_fn(*args, out, err)
    return rc, out.getvalue(), err.getvalue()


async def test_search_returns_exactly_the_overlapping_segments_in_order(pg_dsn: str) -> None:
    await insert(pg_dsn, [C, OTHER, A, D, B])

    async def names(lo: float | None, hi: float | None) -> list[str]:
        rows = await search(pg_dsn, "cam-001", dt(lo) if lo is not None else None,
                            dt(hi) if hi is not None else None)
        return [os.path.basename(r.path) for r in rows]

    assert await names(T + 10, T + 20) == ["b.mp4"]  # a ends / c starts exactly on the bounds
    assert await names(T + 9.999999, T + 20.000001) == ["a.mp4", "b.mp4", "c.mp4"]
    assert await names(T + 30, T + 1000) == []  # touching on both sides
    assert await names(None, T + 10) == ["a.mp4"]
    assert await names(T + 25, None) == ["c.mp4", "d-long.mp4"]
    assert await names(None, None) == ["a.mp4", "b.mp4", "c.mp4", "d-long.mp4"]
    assert await names(T + 4000, T + 4100) == ["d-long.mp4"]  # inside one long segment
    rows = await search(pg_dsn, "cam-001", dt(T + 10), dt(T + 20))
    assert rows[0].start == dt(T + 10) and rows[0].end == dt(T + 20) and rows[0].duration_seconds == 10.0


async def test_search_plan_is_bounded_on_the_camera_start_index(pg_dsn: str) -> None:
    await insert(pg_dsn, [seg("cam-001", T + 10 * i, T + 10 * i + 10, f"s{i}") for i in range(2000)])
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("ANALYZE segments")
        sql = (queries.SEARCH.replace("$1", "'cam-001'")
               .replace("$2", f"'{dt(T + 5000)}'::timestamptz")
               .replace("$3", f"'{dt(T + 5100)}'::timestamptz"))
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))
    finally:
        await conn.close()
    assert "segments_camera_start" in plan, plan
    cond = next(line for line in plan.splitlines() if "Index Cond" in line and "start_time" in line)
    assert "start_time >=" in cond and "start_time <" in cond, plan  # both ends bound the scan


async def test_cmd_search_json_shape(tmp_path: Path, pg_dsn: str) -> None:
    await insert(pg_dsn, [A, B, C, OTHER])
    rc, out, err = await run_cmd(cmd_search, config(tmp_path, pg_dsn), "cam-001",
                                 "2026-11-18T11:06:45Z", "2026-11-18T12:06:55+01:00", True)
    assert rc == 0, err
    doc = json.loads(out)
    assert set(doc) == {"recordings", "total"} and doc["total"] == 2
    first = doc["recordings"][0]
    assert set(first) == {"recording_id", "camera_id", "start", "end", "duration_seconds", "size_bytes",
                          "path", "node"}
    assert first["camera_id"] == "cam-001" and isinstance(first["recording_id"], int)
    assert (first["start"], first["end"]) == ("2026-11-18T11:06:40.000000Z", "2026-11-18T11:06:50.000000Z")
    assert (first["duration_seconds"], first["size_bytes"], first["path"]) == (10.0, 100, A.path)
    assert first["node"] == default_node_id()  # the rows name the node that wrote them
    assert doc["recordings"][1]["path"] == B.path


async def test_cmd_search_table_reports_count_duration_and_gaps(tmp_path: Path, pg_dsn: str) -> None:
    await insert(pg_dsn, [A, C, D])  # b is missing: one gap of 10 s, another before d
    rc, out, _ = await run_cmd(cmd_search, config(tmp_path, pg_dsn), "cam-001", "2026-11-18", None, False)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "START", "(UTC)"]
    assert A.path in lines[1] and C.path in lines[2] and D.path in lines[3]
    assert "3 recordings for cam-001, 1h00m20s in total, 2 gaps" in out
    assert "gap 2026-11-18T11:06:50.000000Z .. 2026-11-18T11:07:00.000000Z (10.0s)" in out


async def test_cmd_search_errors(tmp_path: Path, pg_dsn: str) -> None:
    await insert(pg_dsn, [A])
    cfg = config(tmp_path, pg_dsn)
    rc, out, err = await run_cmd(cmd_search, cfg, "cam-001", "yesterday", None, False)
    assert rc == 2 and "invalid --from 'yesterday'" in err and not out
    rc, _, err = await run_cmd(cmd_search, cfg, "cam-001", "2026-11-18T12:00Z", "2026-11-18T11:00Z", False)
    assert rc == 2 and "must be before --to" in err
    rc, _, err = await run_cmd(cmd_search, cfg, "cam-001", "2026-11-18T12:00Z", "2026-11-18T12:00Z", False)
    assert rc == 2 and "must be before --to" in err
    rc, _, err = await run_cmd(cmd_search, cfg, "cam-404", None, None, False)
    assert rc == 2 and "unknown camera 'cam-404'" in err
    rc, out, _ = await run_cmd(cmd_search, cfg, "cam-003", None, None, True)  # configured, no footage
    assert rc == 0 and json.loads(out) == {"recordings": [], "total": 0}
    bad = make_config(tmp_path, [{"id": "cam-001", "url": "rtsp://h/x"}],
                      database={"dsn": "postgresql://rec:Sup3rS3cret@127.0.0.1:1/nvr"})
    rc, out, err = await run_cmd(cmd_search, bad, "cam-001", None, None, False)
    assert rc == 2 and "127.0.0.1:1" in err and "Sup3rS3cret" not in err + out


def test_parse_time_forms() -> None:
    utc10 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert parse_time("2026-11-21T10:00:00Z") == utc10
    assert parse_time("2026-11-21T11:00:00+01:00") == utc10
    assert parse_time("2026-11-21T10:00") == utc10  # naive = UTC
    assert parse_time("2026-11-21 10:00:00.000000") == utc10
    assert parse_time("2026-11-21") == datetime(2026, 11, 21, tzinfo=UTC)
    assert parse_time("2026-11-21", end_of_day=True) == datetime(2026, 11, 21, tzinfo=UTC) + timedelta(days=1)
    for bad in ("21/11/2026", "2026-13-01", "", "10:00"):
        with pytest.raises(ValueError):
            parse_time(bad)


async def test_status_without_daemon_says_so_and_exits_3(tmp_path: Path, pg_dsn: str) -> None:
    await insert(pg_dsn, [A, B, OTHER])
    cfg = config(tmp_path, pg_dsn)
    rc, out, err = await run_cmd(cmd_status, cfg, True)
    assert rc == 3 and "recorderd is not running: " in err
    doc = json.loads(out)
    assert doc["daemon"]["running"] is False
    cams = {c["camera_id"]: c for c in doc["cameras"]}
    assert list(cams) == ["cam-001", "cam-002", "cam-003"]
    assert set(cams["cam-001"]) == {"camera_id", "state", "is_recording", "current_file", "last_segment_end",
                                    "restarts", "disk_usage_bytes", "retention_days", "last_exit", "cause", "hint",
                                    "stream", "node"}
    assert cams["cam-001"]["last_exit"] is None and doc["daemon"]["config_fallback"] is None
    assert cams["cam-001"]["hint"] is cams["cam-001"]["cause"] is cams["cam-001"]["stream"] is None
    assert cams["cam-001"]["state"] == "not-running" and cams["cam-001"]["is_recording"] is False
    assert cams["cam-001"]["disk_usage_bytes"] == 200
    assert cams["cam-001"]["last_segment_end"] == "2026-11-18T11:07:00.000000Z"
    assert cams["cam-001"]["retention_days"] == 15 and cams["cam-003"]["disk_usage_bytes"] == 0
    rc, out, err = await run_cmd(cmd_status, cfg, False)
    assert rc == 3 and "not-running" in out and "recorderd is not running" in err


def live_status(cfg: Config, **over: Any) -> None:
    now = time.time()
    payload = {"pid": os.getpid(), "written_at": now, "started_at": now - 60, "version": "0.1.0",
               "database_up": True, "pending_rows": 7, "cameras": [
                   {"camera_id": "cam-001", "name": "cam-001", "tenant": "acme", "state": "recording",
                    "is_recording": True,
                    "current_file": str(cfg.storage.root / "cam-001/2026-11-21/10-00-00.mp4"),
                    "last_segment_end": now - 5, "restarts": 2, "pid": 4242, "state_since": now - 50},
                   {"camera_id": "cam-002", "name": "cam-002", "tenant": "acme", "state": "unreachable",
                    "is_recording": False, "current_file": None, "last_segment_end": None, "restarts": 9,
                    "pid": None, "state_since": now - 10}]}
    payload.update(over)
    write_status(cfg.storage.status_file, payload)


async def test_status_with_live_daemon(tmp_path: Path, pg_dsn: str) -> None:
    await insert(pg_dsn, [A, B, OTHER])
    cfg = config(tmp_path, pg_dsn)
    live_status(cfg)
    rc, out, err = await run_cmd(cmd_status, cfg, True)
    assert rc == 0 and not err
    doc = json.loads(out)
    assert doc["daemon"]["running"] is True and doc["daemon"]["pid"] == os.getpid()
    assert doc["daemon"]["pending_rows"] == 7 and doc["daemon"]["database_up"] is True
    cams = {c["camera_id"]: c for c in doc["cameras"]}
    assert cams["cam-001"]["state"] == "recording" and cams["cam-001"]["restarts"] == 2
    assert cams["cam-001"]["current_file"].endswith("10-00-00.mp4")
    assert cams["cam-002"]["last_segment_end"] == "2026-11-18T11:07:10.000000Z"  # from the index
    rc, out, _ = await run_cmd(cmd_status, cfg, False)
    assert rc == 0 and "recorderd running, pid" in out and "cam-001/2026-11-21/10-00-00.mp4" in out

    live_status(cfg, written_at=time.time() - 60)  # a hung or killed daemon
    rc, _, err = await run_cmd(cmd_status, cfg, True)
    assert rc == 3 and "recorderd is not running" in err


async def test_status_database_unreachable_but_daemon_running(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, [{"id": "cam-001", "url": "rtsp://h/x"}],
                      database={"dsn": "postgresql://rec:Sup3rS3cret@127.0.0.1:1/nvr"})
    live_status(cfg, database_up=False)
    rc, out, err = await run_cmd(cmd_status, cfg, True)
    assert rc == 0 and "127.0.0.1:1" in err and "Sup3rS3cret" not in err + out
    cam = json.loads(out)["cameras"][0]
    assert cam["disk_usage_bytes"] is None and cam["state"] == "recording"
    rc, out, _ = await run_cmd(cmd_status, cfg, False)
    assert rc == 0 and " ?" in out


async def test_storage_totals_per_camera_tenant_and_plan(tmp_path: Path, pg_dsn: str) -> None:
    await insert(pg_dsn, [A, B, OTHER, seg("cam-009", T, T + 5, "gone-cam", size=1000)])
    rc, out, err = await run_cmd(cmd_storage, config(tmp_path, pg_dsn), True)
    assert rc == 0, err
    doc = json.loads(out)
    cams = {c["camera_id"]: c for c in doc["cameras"]}
    assert (cams["cam-001"]["segments"], cams["cam-001"]["bytes"]) == (2, 200)
    assert cams["cam-009"]["in_config"] is False and cams["cam-003"]["bytes"] == 0
    assert {t["tenant"]: t["bytes"] for t in doc["tenants"]} == {"acme": 300, "globex": 0, None: 1000}
    assert {p["plan"]: p["segments"] for p in doc["plans"]} == {"pro": 2, "basic": 1, "premium": 0, None: 1}
    assert doc["total"] == {"segments": 4, "bytes": 1300}
    rc, out, _ = await run_cmd(cmd_storage, config(tmp_path, pg_dsn), False)
    assert rc == 0 and "cam-009 (removed)" in out and "total: 4 segments" in out
    assert report.human_bytes(1300) == "1.3 KiB"
