"""What the day-2 alerts read: footage deleted early by the floor, the last retention sweep, the last
segment's end surviving a restart, a read-only storage filesystem and a camera's last exit.

Real PostgreSQL, real files, a real tmpfs remounted read-only, a real camera address nobody serves.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_cam import free_port
from prometheus_client import REGISTRY
from test_retention_gates import HUGE, add, config

from recorderd.db import Database
from recorderd.health import HealthSnapshot, health_reasons
from recorderd.retention import DAY, Sweeper

pytestmark = pytest.mark.integration
NOW = time.time()


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_the_floor_counts_footage_it_deletes_before_its_plan_ends(root: Path, db: Database) -> None:
    cfg = config(root, [{"id": "early1", "plan": "basic"}], storage={"min_free_bytes": HUGE})
    expired = await add(db, root, "early1", NOW - 9 * DAY, size=1000)  # past its 7 days anyway
    young = [await add(db, root, "early1", NOW - (3 - i) * DAY, size=2000) for i in range(3)]
    before = (sample("recorderd_retention_early_deleted_segments_total", camera="early1") or 0,
              sample("recorderd_retention_early_deleted_bytes_total", camera="early1") or 0)
    sweeper = Sweeper(cfg, db, set)
    check = await sweeper.check_disk_once()
    assert check.deleted == 4 and not expired.exists() and not any(p.exists() for p in young)
    after = (sample("recorderd_retention_early_deleted_segments_total", camera="early1"),
             sample("recorderd_retention_early_deleted_bytes_total", camera="early1"))
    assert after == (before[0] + 3, before[1] + 6000)  # the expired one is not "early"


async def test_a_sweep_that_reached_the_index_is_timestamped_and_seeds_the_last_segment_end(
        root: Path, db: Database) -> None:
    cfg = config(root, [{"id": "seed1", "plan": "basic"}, {"id": "seed2", "plan": "basic"}])
    await add(db, root, "seed1", NOW - 3600)
    await add(db, root, "seed1", NOW - 600)
    await add(db, root, "gone-cam", NOW - 60)  # in the index, no longer configured: no series
    t0 = time.time()
    await Sweeper(cfg, db, set).sweep_once()
    assert (sample("recorderd_retention_last_sweep_timestamp_seconds") or 0) >= t0
    assert sample("recorderd_last_segment_end_timestamp_seconds", camera="seed1") == pytest.approx(NOW - 600, abs=1e-3)
    assert sample("recorderd_last_segment_end_timestamp_seconds", camera="seed2") is None
    assert sample("recorderd_last_segment_end_timestamp_seconds", camera="gone-cam") is None


async def test_a_sweep_without_the_database_is_not_timestamped(root: Path) -> None:
    cfg = config(root, [{"id": "c1"}])
    dead = Database(f"postgresql://127.0.0.1:{free_port()}/x")
    before = sample("recorderd_retention_last_sweep_timestamp_seconds")
    await Sweeper(cfg, dead, set).sweep_once()
    assert sample("recorderd_retention_last_sweep_timestamp_seconds") == before


async def test_a_read_only_storage_filesystem_shows_in_metrics_logs_and_health(
        small_fs: Path, db: Database, logs: list[Any]) -> None:
    cfg = config(small_fs, [{"id": "c1"}])
    sweeper = Sweeper(cfg, db, set)
    await sweeper.check_disk_once()
    assert sample("recorderd_storage_read_only") in (None, 0.0)
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remount.stderr}")
    try:
        await sweeper.check_disk_once()
        assert sample("recorderd_storage_read_only") == 1.0
        usage = sweeper.last_usage
        assert usage is not None and usage[0].read_only
        reasons = health_reasons(HealthSnapshot(now=0, database_up=True, disk_free_bytes=usage[0].free,
                                                disk_total_bytes=usage[0].total, floor_bytes=0,
                                                storage_read_only=usage[0].read_only))
        assert [r.split(":")[0] for r in reasons] == ["storage_read_only"]
        assert [e["log_level"] for e in logs if e["event"] == "storage_read_only"] == ["critical"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], capture_output=True, check=False)
    await sweeper.check_disk_once()
    assert sample("recorderd_storage_read_only") == 0.0
    assert [e["event"] for e in logs if e["event"].startswith("storage_")] == ["storage_read_only",
                                                                             "storage_writable"]
