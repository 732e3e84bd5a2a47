"""The daemon and its storage volume: a disk that is not mounted is never recorded onto or swept."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from prometheus_client import REGISTRY, generate_latest
from util import DaemonProc, camera_doc, wait_until, write_config

from recorderd import metrics
from recorderd.db import apply_migrations
from recorderd.ffmpegout import _STDERR_LIMIT
from recorderd.ratelimit import KeyedRateLimiter
from recorderd.supervisor import forget_camera

pytestmark = pytest.mark.integration


async def test_unmounted_storage_holds_cameras_and_keeps_rows(shared_cam, pg_dsn, tmp_path, daemons) -> None:  # type: ignore[no-untyped-def]
    """Index rows under the root, none of their files there, no marker: the disk is not mounted."""
    root = tmp_path / "rec"
    root.mkdir()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await apply_migrations(conn)
        await conn.execute(
            "INSERT INTO segments (camera_id, start_time, end_time, duration_seconds, size_bytes, path, source,"
            " source_rank, protected) SELECT 'cam-1', now() - make_interval(days => 40) + i * interval '1 min',"
            " now() - make_interval(days => 40) + (i + 1) * interval '1 min', 60, 1000,"
            " $1 || '/cam-1/2026-01-01/' || lpad(i::text, 2, '0') || '-00-00.mp4', 'ffmpeg', 3, i = 0"
            " FROM generate_series(0, 29) i", str(root))
    finally:
        await conn.close()
    cfg = write_config(tmp_path / "cameras.yaml", root, [camera_doc("cam-1", shared_cam.url)],
                       database={"dsn": pg_dsn}, retention={"interval_seconds": 1})
    d = DaemonProc(cfg, root, tmp_path / "daemon.log").start()
    daemons.append(d)
    await wait_until(lambda: d.events("storage_missing"), 30, what="storage_missing")
    await wait_until(lambda: (d.camera("cam-1") or {}).get("state") == "storage_missing", 15,
                     what="the camera held")
    await asyncio.sleep(4)  # sweeps every second, reconcile ran at connect
    assert not list(root.glob("cam-1/*/*.mp4")), "recorded onto the filesystem under the mount point"
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM segments") == 30  # 40 days old, files "gone": kept
    finally:
        await conn.close()
    assert not d.events("retention_sweep") and not d.events("segments_missing")


def test_a_removed_camera_leaves_no_series_and_no_rate_limit_bucket() -> None:
    metrics.FFMPEG_RESTARTS.labels("gone-cam", "unreachable").inc()
    metrics.SEGMENTS.labels("gone-cam").inc()
    metrics.set_camera_state("gone-cam", "recording")
    assert isinstance(_STDERR_LIMIT, KeyedRateLimiter)
    _STDERR_LIMIT.check("gone-cam")
    forget_camera("gone-cam")
    text = generate_latest(REGISTRY).decode()
    assert 'camera="gone-cam"' not in text
    assert _STDERR_LIMIT.suppressed("gone-cam") == 0 and "gone-cam" not in _STDERR_LIMIT._buckets
