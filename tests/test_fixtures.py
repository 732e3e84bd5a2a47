"""The test fixtures themselves work: a real PostgreSQL cluster and real RTSP cameras."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fixtures_cam import TestCam, free_port, port_accepts
from fixtures_pg import PgCluster

pytestmark = pytest.mark.integration


def ffprobe(url: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "5000000",
         "-analyzeduration", "1000000", "-probesize", "200000",
         "-show_entries", "stream=codec_type,codec_name,width,height,avg_frame_rate", "-of", "json", url],
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )


def streams(url: str) -> list[dict[str, Any]]:
    proc = ffprobe(url)
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, Any]] = json.loads(proc.stdout)["streams"]
    return result


# --------------------------------------------------------------------------- PostgreSQL


async def test_pg_select_1(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("select 1") == 1
        assert (await conn.fetchval("select current_database()")).startswith("t_")
        assert await conn.fetchval("select count(*) from pg_tables where schemaname = 'public'") == 0
        assert await conn.fetchval("show fsync") == "off"
        assert await conn.fetchval("show max_connections") == "200"
    finally:
        await conn.close()


async def test_pg_each_test_gets_a_fresh_database(pg_cluster: PgCluster, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("create table leftover (x int)")
    finally:
        await conn.close()
    other = pg_cluster.create_database("t_extra_check")
    try:
        conn = await asyncpg.connect(other)
        try:
            assert await conn.fetchval("select to_regclass('leftover')") is None
        finally:
            await conn.close()
    finally:
        pg_cluster.drop_database("t_extra_check")


async def test_pg_unix_socket(pg_cluster: PgCluster, pg_dsn: str) -> None:
    sock = pg_cluster.socket_dir / f".s.PGSQL.{pg_cluster.port}"
    assert sock.exists()
    conn = await asyncpg.connect(host=str(pg_cluster.socket_dir), port=pg_cluster.port, user="postgres",
                                 database="postgres")
    try:
        assert await conn.fetchval("select 2") == 2
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_pg_stop_and_start_on_same_port(pg_cluster: PgCluster, pg_dsn: str, mode: str) -> None:
    port = pg_cluster.port
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("create table t (x int); insert into t values (42)")
    if mode == "immediate":
        # synchronous_commit=off: a crash may lose the last ~200 ms of commits; make them durable
        await conn.execute("checkpoint")
    await conn.close()

    pg_cluster.stop(mode)
    assert not pg_cluster.is_running
    assert not port_accepts(port)
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(pg_dsn, timeout=3)
    pg_cluster.stop(mode)  # stopping a stopped cluster is a no-op

    pg_cluster.start()
    assert pg_cluster.is_running and pg_cluster.port == port
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("select x from t") == 42  # same data dir
    finally:
        await conn.close()
    pg_cluster.start()  # starting a running cluster is a no-op


def test_pg_left_stopped_is_restarted_by_next_fixture_part1(pg_cluster: PgCluster) -> None:
    pg_cluster.stop()


def test_pg_left_stopped_is_restarted_by_next_fixture_part2(pg_cluster: PgCluster, pg_dsn: str) -> None:
    assert pg_cluster.is_running
    assert pg_cluster.psql("select 7").strip() == "7"


def test_pg_start_failure_reports_log() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cluster = PgCluster(port=port)
        try:
            with pytest.raises(RuntimeError) as info:
                cluster.start(timeout=15)
            message = str(info.value)
            assert f"port {port}" in message and "postgres.log" in message
            assert "could not" in message.lower()  # e.g. "could not bind IPv4 address"
            assert not cluster.is_running
        finally:
            cluster.destroy()


def test_pg_runs_unprivileged(pg_cluster: PgCluster) -> None:
    pid = pg_cluster.pid
    assert pid is not None
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid != 0
    assert Path(pg_cluster.data, "postgresql.conf").stat().st_uid == uid


# --------------------------------------------------------------------------- RTSP cameras


def test_shared_cam_plays(shared_cam: TestCam) -> None:
    (video,) = streams(shared_cam.url)
    assert video["codec_type"] == "video" and video["codec_name"] == "h264"
    assert (video["width"], video["height"]) == (320, 240)
    assert video["avg_frame_rate"] == "10/1"


def test_shared_cam_respawns_after_a_gstreamer_abort(shared_cam: TestCam) -> None:
    """gst-rtsp-server can abort with several clients on one shared media: the camera comes back."""
    old_pid = shared_cam.pid
    assert shared_cam.proc is not None
    shared_cam.proc.send_signal(signal.SIGABRT)
    deadline = time.monotonic() + 15
    while not (shared_cam.is_running and shared_cam.pid != old_pid and port_accepts(shared_cam.port)):
        assert time.monotonic() < deadline, "the shared camera was not respawned within 15 s"
        time.sleep(0.05)
    (video,) = streams(shared_cam.url)
    assert video["codec_name"] == "h264"
    assert [r for r in shared_cam.crash_reports if "exited -6" in r and "respawned" in r]
    shared_cam.crash_reports.clear()  # reported here, by this assertion, not as a warning


def test_cam_kill_and_restart_on_same_port(testcam_factory: Callable[..., TestCam]) -> None:
    cam = testcam_factory(fps=5, gop=5)
    port = cam.port
    assert [s["codec_name"] for s in streams(cam.url)] == ["h264"]

    cam.kill()
    assert not cam.is_running and not port_accepts(port)
    proc = ffprobe(cam.url, timeout=10)
    assert proc.returncode != 0

    cam.restart()
    assert cam.is_running and cam.port == port
    assert [s["codec_name"] for s in streams(cam.url)] == ["h264"]


def test_cam_with_auth_and_audio(testcam_factory: Callable[..., TestCam]) -> None:
    cam = testcam_factory(audio="aac", user="admin", password="p@ss:w/rd")
    assert cam.url == f"rtsp://admin:p%40ss%3Aw%2Frd@127.0.0.1:{cam.port}/stream"
    assert sorted(s["codec_name"] for s in streams(cam.url)) == ["aac", "h264"]
    denied = ffprobe(cam.url_without_credentials)
    assert denied.returncode != 0 and "401" in denied.stderr


def test_cam_hang_and_resume(testcam_factory: Callable[..., TestCam]) -> None:
    cam = testcam_factory()
    pid = cam.pid

    def state() -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    cam.hang()
    assert state() == "T" and cam.hung
    assert port_accepts(cam.port)  # the kernel still accepts: a hung camera, not an offline one
    cam.resume()
    assert state() != "T" and not cam.hung


def test_cam_teardown_resumes_and_stops_hung_camera(testcam_factory: Callable[..., TestCam]) -> None:
    cam = testcam_factory()
    cam.hang()
    cam.stop()
    assert not cam.is_running and not port_accepts(cam.port)


def test_cam_start_failure_reports_stderr() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        cam = TestCam(port=blocker.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="cannot listen"):
                cam.start(timeout=10)
        finally:
            cam.stop()


def test_free_port() -> None:
    port = free_port()
    assert 1024 <= port < 65536 and not port_accepts(port)
