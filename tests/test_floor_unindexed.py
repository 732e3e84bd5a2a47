"""A database that never comes up must not fill the disk.

With no index database ever reached for a storage root there can be no clip and no protected row, so
the free-space floor deletes the oldest files first, as it would with the database up. Once a
protected list has been saved (the database was reached once) or the volume is known, the old rules
hold: nothing is deleted blind. Real files on a real 64 MiB filesystem, a database nobody listens for.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_cam import free_port
from fixtures_storage import MB
from prometheus_client import REGISTRY
from test_diskfloor import prefill
from util import DaemonProc, camera_doc, config_doc, wait_until

from recorderd.config import parse_config
from recorderd.db import Database
from recorderd.diskguard import STATE_DIR, floor_and_target, read_usage
from recorderd.retention import Sweeper
from recorderd.volume import MARKER_REL, StorageVolume

pytestmark = pytest.mark.integration


def dead_dsn() -> str:
    return f"postgresql://u:never-up-pw@127.0.0.1:{free_port()}/none"


def deleted(reason: str = "disk") -> float:
    return REGISTRY.get_sample_value("recorderd_retention_deleted_segments_total", {"reason": reason}) or 0.0


async def sweeper_on(root: Path) -> tuple[Sweeper, StorageVolume]:
    cfg = parse_config({"storage": {"root": str(root), "min_free_percent": 10},
                        "cameras": [{"id": c, "url": "rtsp://127.0.0.1:1/x"} for c in ("old1", "old2")],
                        "retention": {"batch_size": 4}, "metrics": {"listen": None}})
    db = Database(dead_dsn())  # never connected: up is False, as on a box whose PostgreSQL never started
    volume = StorageVolume(root, db)
    assert await volume.check_once() == "unverified"
    sweeper = Sweeper(cfg, db, set, storage_gate=volume.reason, volume_marker=MARKER_REL,
                      index_never_reached=volume.index_never_reached)
    return sweeper, volume


async def test_no_database_ever_the_floor_deletes_oldest_first(small_fs: Path, logs: list[Any]) -> None:
    root = small_fs / "rec"
    root.mkdir()
    files, _ = await prefill(root, None, leave_free=-6 * MB)  # 6 MiB below the floor
    sweeper, volume = await sweeper_on(root)
    assert volume.index_never_reached()
    before = deleted()
    await sweeper.check_disk_once()
    floor, target = floor_and_target(sweeper.config.storage, read_usage(root).total)
    assert read_usage(root).free >= target
    gone = [f for f in files if not f.exists()]
    assert gone and gone == files[:len(gone)]  # the oldest, in order, and nothing newer
    assert deleted() - before == len(gone)
    (ev,) = [e for e in logs if e.get("outcome") == "unindexed"]
    assert ev["log_level"] == "critical" and "no index database" in ev["reason"]
    assert not (root / STATE_DIR / "volume.json").exists()  # nothing claims the volume is verified


async def test_a_saved_protected_list_means_the_database_was_reached_so_nothing_goes_blind(
        small_fs: Path, logs: list[Any]) -> None:
    root = small_fs / "rec"
    root.mkdir()
    (root / STATE_DIR).mkdir()
    (root / STATE_DIR / "protected_paths").write_text("")
    files, _ = await prefill(root, None, leave_free=-6 * MB)
    sweeper, volume = await sweeper_on(root)
    await sweeper.check_disk_once()
    assert all(f.exists() for f in files)
    assert any(e["event"] == "retention_paused" for e in logs)


async def test_a_volume_the_index_has_answered_for_is_not_unindexed(small_fs: Path, pg_dsn: str) -> None:
    db = Database(pg_dsn)
    await db.connect()
    try:
        volume = StorageVolume(small_fs, db)
        assert await volume.check_once() == "ok"  # first start: marker written
        assert not volume.index_never_reached()
    finally:
        await db.close()
    assert not StorageVolume(small_fs, Database(dead_dsn())).index_never_reached()  # not checked yet


async def test_the_daemon_without_its_database_keeps_the_disk_above_the_floor(  # type: ignore[no-untyped-def]
        small_fs, shared_cam, tmp_path, daemons) -> None:
    root = small_fs / "rec"
    root.mkdir()
    files, _ = await prefill(root, None, leave_free=-6 * MB)
    cfg_path = tmp_path / "cameras.yaml"
    cfg_path.write_text(yaml.safe_dump(config_doc(
        root, [camera_doc("live", shared_cam.url, audio="off")], database={"dsn": dead_dsn()},
        storage={"root": str(root), "min_free_percent": 10}, retention={"disk_check_seconds": 0.5})))
    d = DaemonProc(cfg_path, root, tmp_path / "daemon.log").start()
    daemons.append(d)
    floor = int(read_usage(root).total * 0.10)
    await wait_until(lambda: read_usage(root).free >= floor, 30, what="free space back above the floor")
    await wait_until(lambda: (d.camera("live") or {}).get("is_recording"), 40, what="recording")
    gone = [f for f in files if not f.exists()]
    assert gone == files[:len(gone)]
    assert d.events("retention_emergency")
    t_end = time.monotonic() + 4  # and it stays there while the camera keeps writing
    while time.monotonic() < t_end:
        assert read_usage(root).free >= floor - 2 * MB
        time.sleep(0.2)
    assert "never-up-pw" not in d.log_path.read_text()
    assert os.path.exists(d.status_path)
