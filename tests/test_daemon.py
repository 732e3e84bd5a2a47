"""The whole daemon as a subprocess: real FFmpeg, real RTSP cameras, real PostgreSQL.

The thirty-second run only waits on the wall clock: its daemon (on a camera and a database of its own)
is started at the module's start and records while the tests above its test run; its test asserts on
what it left. It has stopped before the outage test, the last one, stops PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_cam import TestCam
from util import (
    Background,
    DaemonProc,
    camera_doc,
    disk_segments,
    fetch_segments,
    ffprobe_duration,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration


def start_daemon(daemons: list[DaemonProc], tmp: Path, cameras: list[dict[str, object]], dsn: str | None,
                 **extra: object) -> DaemonProc:
    root = tmp / "rec"
    cfg = write_config(tmp / "cameras.yaml", root, cameras,
                       database={"dsn": dsn} if dsn else {}, **extra)
    d = DaemonProc(cfg, root, tmp / "daemon.log").start()
    daemons.append(d)
    return d


def recording(d: DaemonProc, cam: str) -> bool:
    c = d.camera(cam)
    return bool(c and c["is_recording"])


async def test_sigterm_stops_within_10s_with_last_segment_complete(shared_cam, pg_dsn, tmp_path, daemons) -> None:  # type: ignore[no-untyped-def]
    d = start_daemon(daemons, tmp_path, [camera_doc("cam-a", shared_cam.url),
                                         camera_doc("cam-b", shared_cam.url, segment_seconds=30)], pg_dsn)
    await wait_until(lambda: recording(d, "cam-a") and recording(d, "cam-b"), 40, what="both recording")
    await wait_until(lambda: d.events("segment_indexed") or len(disk_segments(d.root)) > 3, 30)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    rc = d.wait(15)
    took = time.monotonic() - t0
    assert rc == 0, d.log_path.read_text()[-3000:]
    assert took < 10, took
    assert not d.status_path.exists()  # a stopped daemon is reported as not running
    rows = await fetch_segments(pg_dsn)
    by_path = {r["path"]: r for r in rows}
    # every file on disk is complete and indexed from FFmpeg's own list, including the open one at SIGTERM
    assert disk_segments(d.root) == set(by_path)
    long_cam = [r for r in rows if r["camera_id"] == "cam-b"]
    # the 30 s segment open at SIGTERM (a clock boundary may have cut one before it) was closed by
    # FFmpeg itself: listed with exact times, not recovered
    assert long_cam and {r["source"] for r in long_cam} == {"ffmpeg"}
    assert abs(ffprobe_duration(long_cam[-1]["path"]) - long_cam[-1]["duration_seconds"]) < 0.3
    steps = [e["step"] for e in d.events("ffmpeg_stopping")]
    assert steps and set(steps) == {"q"}  # a healthy FFmpeg finishes on 'q', no escalation


async def test_daemon_sigkill_then_restart_indexes_cut_segment_once(testcam_factory, pg_dsn, tmp_path, daemons) -> None:  # type: ignore[no-untyped-def]
    cam = testcam_factory()
    d = start_daemon(daemons, tmp_path, [camera_doc("cam-a", cam.url, segment_seconds=60)], pg_dsn)
    await wait_until(lambda: recording(d, "cam-a"), 40, what="recording")
    # the same file open for 4 s: a minute boundary inside the wait would leave a 1 s file to kill
    first_seen: dict[str, float] = {}

    def open_long_enough() -> str | None:
        cur = (d.camera("cam-a") or {}).get("current_file")
        if not cur:
            return None
        since = first_seen.setdefault(cur, time.monotonic())
        return str(cur) if time.monotonic() - since >= 4 else None

    cut = await wait_until(open_long_enough, 30, what="a file open for 4 s")
    d.signal(signal.SIGKILL)
    d.wait(10)
    await asyncio.sleep(1)
    size = Path(cut).stat().st_size
    await asyncio.sleep(1.5)
    assert Path(cut).stat().st_size == size  # FFmpeg died with the daemon (no orphan recording on)
    assert ffprobe_duration(cut) > 1
    d2 = DaemonProc(d.config_path, d.root, tmp_path / "daemon2.log").start()
    daemons.append(d2)
    await wait_until(lambda: recording(d2, "cam-a"), 40, what="recording after restart")

    async def cut_indexed() -> bool:
        return any(r["path"] == cut for r in await fetch_segments(pg_dsn))

    deadline = time.monotonic() + 30
    while not await cut_indexed():
        assert time.monotonic() < deadline, "cut segment not reconciled"
        await asyncio.sleep(0.5)
    d2.signal(signal.SIGTERM)
    assert d2.wait(15) == 0
    rows = await fetch_segments(pg_dsn)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths))  # nothing duplicated
    assert set(paths) == disk_segments(d.root)
    cut_row = next(r for r in rows if r["path"] == cut)
    assert cut_row["source"] == "reconcile"
    assert abs(cut_row["duration_seconds"] - ffprobe_duration(cut)) < 0.01


def test_run_refuses_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"""
storage: {{root: {tmp_path}/rec}}
cameras:
  - {{id: ok, url: "rtsp://u:topsecret@10.0.0.1/x"}}
  - {{id: "../x", url: "rtsp://10.0.0.2/x"}}
  - {{id: nourl}}
  - {{id: p, url: "rtsp://10.0.0.3/x", plan: gold, segment_seconds: 0}}
""")
    for argv in (["run", "--config", str(cfg)], ["check-config", str(cfg)]):
        res = subprocess.run([sys.executable, "-m", "recorderd", *argv], capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 2, res
        err = res.stderr
        assert "cameras[1].id" in err and "cameras[2].url: is required" in err
        assert "cameras[3].plan: unknown plan 'gold'" in err and "cameras[3].segment_seconds" in err
        assert "topsecret" not in err + res.stdout
    assert not (tmp_path / "rec").exists()  # refused before touching anything


def test_status_and_search_cli_against_live_daemon_never_show_password(testcam_factory, pg_dsn, tmp_path, daemons) -> None:  # type: ignore[no-untyped-def]
    cam = testcam_factory(user="admin", password="pa55-w0rd")
    d = start_daemon(daemons, tmp_path, [camera_doc("cam-a", cam.url)], pg_dsn)
    asyncio.run(wait_until(lambda: recording(d, "cam-a"), 40, what="recording"))
    asyncio.run(wait_until(lambda: d.events("segment_indexed") or
                           any(e.get("event") == "segment_indexed" for e in d.events()), 30))
    time.sleep(2.5)
    res = subprocess.run([sys.executable, "-m", "recorderd", "status", "--config", str(d.config_path), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    cam_st = st["cameras"][0]
    assert cam_st["camera_id"] == "cam-a" and cam_st["state"] == "recording" and cam_st["is_recording"]
    assert cam_st["disk_usage_bytes"] > 0
    res2 = subprocess.run([sys.executable, "-m", "recorderd", "search", "--config", str(d.config_path),
                           "--camera", "cam-a", "--json"], capture_output=True, text=True, timeout=30)
    assert res2.returncode == 0, res2.stderr
    found = json.loads(res2.stdout)
    assert found["total"] == len(found["recordings"]) >= 1
    d.stop()
    everything = d.log_path.read_text() + res.stdout + res.stderr + res2.stdout
    assert "pa55-w0rd" not in everything
    assert "admin:***@" in d.log_path.read_text()


class Thirty:
    """A daemon recording cam-a (a camera of its own) into a database of its own for 30 s."""

    def __init__(self, cam: TestCam, dsn: str, tmp: Path) -> None:
        self.dsn = dsn
        self.daemons: list[DaemonProc] = []
        self.d = start_daemon(self.daemons, tmp, [camera_doc("cam-a", cam.url)], dsn)
        self.run = Background(self._run, "thirty-second daemon")

    async def _run(self) -> int:
        d = self.d
        await wait_until(lambda: recording(d, "cam-a"), 40, what="recording")
        await asyncio.sleep(30)
        d.signal(signal.SIGTERM)
        return d.wait(15)


@pytest.fixture(scope="module", autouse=True)
def thirty(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Thirty]:
    if not pg_cluster.is_running:  # a test elsewhere may have left it stopped (like pg_dsn)
        pg_cluster.start()
    name = "thirty_" + uuid.uuid4().hex[:8]
    dsn = pg_cluster.create_database(name)
    cam = TestCam(fps=10, gop=10).start(timeout=30)  # what shared_cam is, to itself: no other client
    t: Thirty | None = None
    try:
        t = Thirty(cam, dsn, tmp_path_factory.mktemp("thirty"))
        yield t
    finally:
        if t is not None:
            t.run.cancel()
            for d in t.daemons:
                d.stop()
        cam.stop()
        pg_cluster.drop_quietly(name)


async def test_thirty_seconds_every_file_one_row_durations_add_up(thirty: Thirty) -> None:
    d, dsn = thirty.d, thirty.dsn
    assert await thirty.run.result(90) == 0  # recording, 30 s, SIGTERM: exit 0 (begun at the module's start)
    rows = await fetch_segments(dsn, "cam-a")
    files = disk_segments(d.root)
    assert len(rows) == len({r["path"] for r in rows}) == len(files) >= 14
    assert {r["path"] for r in rows} == files
    assert len({r["run_id"] for r in rows}) == 1
    for prev, nxt in zip(rows, rows[1:], strict=False):
        assert nxt["seq"] == prev["seq"] + 1
        assert abs(nxt["start"] - prev["end"]) < 1e-5  # timestamptz keeps microseconds: exact tiling
    total = sum(r["duration_seconds"] for r in rows)
    assert abs(total - (rows[-1]["end"] - rows[0]["start"])) < 1e-3
    for r in rows:
        assert abs(ffprobe_duration(r["path"]) - r["duration_seconds"]) < 0.3, r
        assert r["size_bytes"] == Path(r["path"]).stat().st_size


async def test_postgres_outage_while_recording_loses_no_row(shared_cam, pg_cluster, pg_dsn, tmp_path, daemons) -> None:  # type: ignore[no-untyped-def]
    d = start_daemon(daemons, tmp_path, [camera_doc("cam-a", shared_cam.url)], pg_dsn)
    await wait_until(lambda: recording(d, "cam-a"), 40, what="recording")
    await wait_until(lambda: d.events("database_up"), 20, what="database up")
    pg_cluster.stop()
    try:
        await wait_until(lambda: (d.status() or {}).get("database_up") is False, 20, what="db down seen")
        files_before = len(disk_segments(d.root))
        await asyncio.sleep(20)
        assert len(disk_segments(d.root)) >= files_before + 8  # recording never waited
        assert recording(d, "cam-a")
        assert (d.status() or {}).get("pending_rows", 0) >= 8
    finally:
        pg_cluster.start()
    await wait_until(lambda: (d.status() or {}).get("database_up") and d.status()["pending_rows"] == 0,  # type: ignore[index]
                     60, what="pending rows written")
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    rows = await fetch_segments(pg_dsn)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths))
    assert set(paths) == disk_segments(d.root)
    assert {r["source"] for r in rows} == {"ffmpeg"}
