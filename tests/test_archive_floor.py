"""The free-space floor with an archive that is behind (the store away): the floor still holds, it never
picks archived rows (they free nothing here), and each unarchived segment it deletes is logged so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from fixtures_storage import FS_SIZE, MB
from prometheus_client import REGISTRY
from test_diskfloor import Writer, prefill, run_floor

from recorderd.config import Config, parse_config
from recorderd.db import Database
from recorderd.diskguard import read_usage
from recorderd.retention import Sweeper

pytestmark = pytest.mark.integration


def make_config(root: Path) -> Config:
    return parse_config({
        "storage": {"root": str(root), "min_free_percent": 10, "free_margin_percent": 5},
        "cameras": [{"id": c, "url": "rtsp://127.0.0.1:1/x", "plan": p}
                    for c, p in (("old1", "arch"), ("old2", "premium"), ("live", "arch"))],
        "plans": {"arch": {"retention_days": 30, "archive_after_hours": 1}},
        "archive": {"url": "s3://recordings/box", "endpoint": "http://127.0.0.1:1"},
        "retention": {"disk_check_seconds": 0.05, "interval_seconds": 3600, "batch_size": 20},
        "metrics": {"listen": None},
    })


def unarchived_deleted() -> float:
    return REGISTRY.get_sample_value("recorderd_archive_unarchived_deleted_total") or 0.0


async def test_floor_holds_while_the_archive_is_behind_and_logs_each_unarchived_deletion(
        small_fs: Path, db: Database) -> None:
    root = small_fs / "rec"
    root.mkdir()
    cfg = make_config(root)
    files, protected = await prefill(root, db, leave_free=2 * MB)
    # the two oldest unprotected rows were archived (their local copies are left in place here, to show
    # that the index side of the floor never picks an archived row)
    archived = files[3:5]
    async with db.acquire() as conn:
        await conn.execute("UPDATE segments SET object_url = 's3://recordings/box/' || id, archived_at = now()"
                           " WHERE path = ANY($1::text[])", [str(p) for p in archived])
    writer = Writer(root, "live", rate=16 * MB, seconds=4)
    sweeper = Sweeper(cfg, db, writer.current_files, objects=lambda: None)  # the store is away
    before = unarchived_deleted()
    with structlog.testing.capture_logs() as logs:
        await run_floor(sweeper, writer, db)
    assert writer.enospc == 0 and writer.min_free > 0  # the floor held
    assert read_usage(root).free >= int(FS_SIZE * 0.10) - 8 * MB
    assert all(p.exists() for p in protected)
    async with db.acquire() as conn:
        kept = {r["path"] for r in await conn.fetch("SELECT path FROM segments WHERE object_url IS NOT NULL")}
    assert kept == {str(p) for p in archived}  # archived rows are not the floor's to delete
    gone = [p for p in files if not p.exists() and p not in archived]
    assert gone
    noted: list[dict[str, Any]] = [e for e in logs if e["event"] == "retention_deleted_unarchived"]
    # each deletion of footage its plan would have archived is logged as such; old2's plan does not archive
    assert {e["path"] for e in noted} == {str(p) for p in gone if p.parts[-3] == "old1"} | {
        e["path"] for e in noted if "/live/" in e["path"]}
    assert noted and all(e["log_level"] == "warning" and e["camera"] in ("old1", "live") for e in noted)
    assert unarchived_deleted() - before == len(noted)
