"""Saved clips against real footage, real FFmpeg and a real PostgreSQL: create, the plan's limit under
concurrency, rename, delete, crash recovery, the CLI, ``recorderd storage``, and that no sweep, floor,
reconcile or watcher ever touches ``<root>/clips``."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import test_export
from test_export import CAM, Seeded, decodes, fake_ffmpeg, run_cli, streams
from util import camera_doc, make_config, write_config

from recorderd import clips, diskguard, queries, watcher
from recorderd.clips import BadName, BadPeriod, ClipLimit, ClipNotFound, NoFootage, StorageUnavailable, UnknownCamera
from recorderd.config import Config
from recorderd.db import Database
from recorderd.export import CutFailed
from recorderd.layout import CLIPS_DIR, iso
from recorderd.probe import FoundFile, probe_duration
from recorderd.report import cmd_storage
from recorderd.retention import DAY, Sweeper

pytestmark = pytest.mark.integration
# test_export's fixtures: the footage (recorded once per session), a root seeded with it, the quiet CLI
footage = test_export.footage
seeded = test_export.seeded
quiet_cli = test_export.quiet_cli
HUGE = 1 << 50  # a free-space floor no disk reaches


def clip_files(root: Path) -> list[str]:
    d = root / CLIPS_DIR
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.exists() else []


async def clip_rows(db: Database) -> list[dict[str, Any]]:
    async with db.acquire() as conn:
        return [dict(r) for r in await conn.fetch("SELECT id, camera_id, status, path FROM clips ORDER BY id")]


def limited(s: Seeded, max_clips: int | None) -> Config:
    """The seeded config with the camera's plan (basic) allowing ``max_clips``."""
    return make_config(s.root, [camera_doc(CAM, "rtsp://127.0.0.1:1/none", tenant="acme")],
                       database={"dsn": s.dsn}, plans={"basic": {"max_clips": max_clips}})


# --------------------------------------------------------------------------- create, list, get, rename, delete


async def test_create_list_rename_delete(seeded: Seeded, db: Database) -> None:
    s1, _, s3 = seeded.segs[1:4]
    start, end = s1.start + 1.5, s3.start + 1.0
    clip, res = await clips.create_clip(db, seeded.config, CAM, datetime.fromtimestamp(start, UTC),
                                        datetime.fromtimestamp(end, UTC), "  Front door at night ", "token:ops")
    path = seeded.root / CLIPS_DIR / CAM / f"{clip.id}.mp4"
    assert clip.path == str(path) and path.is_file() and clip.size_bytes == path.stat().st_size > 0
    assert clip.name == "Front door at night"  # stripped
    assert clip.start.timestamp() == pytest.approx(res.start) and start - 1.05 <= res.start <= start
    assert clip.end.timestamp() == pytest.approx(res.end) and clip.created_by == "token:ops"
    assert res.files == 3 and res.gaps == ()
    decodes(path)
    assert streams(path) == streams(s1.path)
    doc = clip.to_json()
    assert set(doc) == {"id", "camera_id", "name", "start", "end", "duration_seconds", "size_bytes", "created_at",
                        "created_by"}
    assert doc["start"].endswith("Z") and doc["created_at"].endswith("Z") and str(path) not in json.dumps(doc)
    assert doc["duration_seconds"] == pytest.approx(end - res.start, abs=0.3)
    assert [r["status"] for r in await clip_rows(db)] == ["ready"]

    assert await clips.list(db) == [clip] and await clips.list(db, CAM) == [clip]
    assert await clips.list(db, "other") == []
    async with db.acquire() as conn:
        await conn.fetch(queries.UPSERT_CAMERAS, [CAM], [CAM], ["acme"], ["basic"], [7], [None], [True])
    assert await clips.list(db, tenants=["acme"]) == [clip] and await clips.list(db, tenants=["globex"]) == []
    assert await clips.get(db, clip.id) == clip
    with pytest.raises(ClipNotFound):
        await clips.get(db, clip.id, tenants=[])

    renamed = await clips.rename(db, clip.id, " Porch ")
    assert renamed.name == "Porch" and (await clips.get(db, clip.id)).name == "Porch"
    for bad in ("", "   ", "x" * 201, "a\nb", "bell\x07", "evil\u202etxt.exe"):
        with pytest.raises(BadName):
            await clips.rename(db, clip.id, bad)
    assert clips.check_name("é" * 200) == "é" * 200
    with pytest.raises(ClipNotFound):
        await clips.rename(db, 999_999, "x")

    gone = await clips.delete(db, clip.id, seeded.root)
    assert gone.id == clip.id and not path.exists() and await clip_rows(db) == []
    with pytest.raises(ClipNotFound, match=f"no clip {clip.id}"):
        await clips.get(db, clip.id)
    with pytest.raises(ClipNotFound):
        await clips.delete(db, clip.id, seeded.root)


async def test_requests_that_cannot_be_done(seeded: Seeded, db: Database, tmp_path: Path) -> None:
    s1 = seeded.segs[1]
    cfg = seeded.config
    with pytest.raises(UnknownCamera, match="'nope'"):
        await clips.create(db, cfg, "nope", s1.start, s1.end, "x")
    with pytest.raises(BadPeriod, match="must be before"):
        await clips.create(db, cfg, CAM, s1.end, s1.start, "x")
    with pytest.raises(BadPeriod, match="at most 86400 s"):
        await clips.create(db, cfg, CAM, s1.start - 2 * DAY, s1.end, "x")
    with pytest.raises(BadName):
        await clips.create(db, cfg, CAM, s1.start, s1.end, "\x00")
    with pytest.raises(NoFootage, match="no footage of cam-x"):
        await clips.create(db, cfg, CAM, s1.start - 3600, s1.start - 1800, "x")
    failing = fake_ffmpeg(tmp_path, "echo 'boom' >&2\nexit 1")
    with pytest.raises(CutFailed, match="boom"):
        await clips.create(db, cfg, CAM, s1.start, s1.end, "x", ffmpeg_bin=failing)
    assert await clip_rows(db) == [] and clip_files(seeded.root) == []  # no row, no file, no temp file
    (seeded.root / ".recorderd" / "volume.json").unlink()  # the disk is not mounted
    with pytest.raises(StorageUnavailable, match="not mounted"):
        await clips.create(db, cfg, CAM, s1.start, s1.end, "x")
    assert await clip_rows(db) == []


async def test_cancelling_a_create_removes_its_row_and_file(seeded: Seeded, db: Database, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    slow = fake_ffmpeg(tmp_path, f"echo $$ > {pidfile}\nexec sleep 30")
    s1 = seeded.segs[1]
    task = asyncio.create_task(clips.create(db, seeded.config, CAM, s1.start, s1.end, "x", ffmpeg_bin=slow))
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    rows = await clip_rows(db)
    assert [r["status"] for r in rows] == ["pending"] and len(clip_files(seeded.root)) == 1  # reserved, cutting
    assert await clips.list(db) == []  # a reservation is no clip
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await clip_rows(db) == [] and clip_files(seeded.root) == []


# --------------------------------------------------------------------------- the plan's limit


async def test_plan_limit_is_enforced_even_for_concurrent_creates(seeded: Seeded, db: Database) -> None:
    cfg = limited(seeded, 2)
    assert cfg.plans["basic"].max_clips == 2
    s1, s2 = seeded.segs[1:3]
    first = await clips.create(db, cfg, CAM, s1.start, s1.end, "one")
    # two creates at limit - 1, at once: exactly one wins
    results = await asyncio.gather(clips.create(db, cfg, CAM, s2.start, s2.end, "two"),
                                   clips.create(db, cfg, CAM, s2.start, s2.end, "three"), return_exceptions=True)
    won = [r for r in results if isinstance(r, clips.Clip)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], ClipLimit), results
    assert lost[0].plan == "basic" and lost[0].limit == 2 and lost[0].count == 2
    assert "plan 'basic' allows 2" in str(lost[0])
    assert sorted(r["id"] for r in await clip_rows(db)) == sorted([first.id, won[0].id])
    assert clip_files(seeded.root) == sorted(f"{CAM}/{c.id}.mp4" for c in (first, won[0]))
    with pytest.raises(ClipLimit):  # limit + 1
        await clips.create(db, cfg, CAM, s1.start, s1.end, "four")
    await clips.delete(db, first.id, seeded.root)  # a slot is free again
    assert (await clips.create(db, cfg, CAM, s1.start, s1.end, "five")).name == "five"

    with pytest.raises(ClipLimit, match="allows 0"):
        await clips.create(db, limited(seeded, 0), CAM, s1.start, s1.end, "none")
    unlimited = limited(seeded, None)
    for i in range(3):
        await clips.create(db, unlimited, CAM, s1.start, s1.end, f"u{i}")
    assert len(await clips.list(db, CAM)) == 5


# --------------------------------------------------------------------------- crash recovery


async def test_recover_finishes_what_a_crash_left(seeded: Seeded, db: Database) -> None:
    s1 = seeded.segs[1]
    kept = await clips.create(db, seeded.config, CAM, s1.start, s1.end, "kept")
    d = seeded.root / CLIPS_DIR / CAM
    async with db.acquire() as conn:
        async def row(status: str, until: str | None) -> int:
            cid: int = await conn.fetchval("SELECT nextval('clips_id_seq')")
            await conn.execute("INSERT INTO clips (id, camera_id, name, path, status, pending_until) "
                               "VALUES ($1, $2, 'x', $3, $4, now() + $5::text::interval)",
                               cid, CAM, str(d / f"{cid}.mp4"), status, until)
            return cid

        dead_cut = await row("pending", "-1 second")  # the creator died after the rename
        dead_early = await row("pending", "-1 second")  # ... or while FFmpeg wrote the temp file
        half_deleted = await row("deleting", None)  # delete() died after marking
        live = await row("pending", "1 hour")  # someone is cutting it right now
    for name in (f"{dead_cut}.mp4", f".{dead_early}.mp4.abc.part", f"{half_deleted}.mp4", f".{live}.mp4.xyz.part",
                 ".424242.mp4.stray.part"):
        (d / name).write_bytes(b"x")
    (d / "notes.txt").write_text("not ours: left alone")
    assert await clips.recover(db, seeded.root) == 3
    rows = await clip_rows(db)
    assert [(r["id"], r["status"]) for r in rows] == [(kept.id, "ready"), (live, "pending")]
    assert clip_files(seeded.root) == sorted([f"{CAM}/{kept.id}.mp4", f"{CAM}/.{live}.mp4.xyz.part",
                                              f"{CAM}/notes.txt"])
    assert await clips.recover(db, seeded.root) == 0


# --------------------------------------------------------------------------- nothing sweeps clips


class FakeIndex:
    """What reconcile needs of the Indexer; records what it would index."""

    def __init__(self, config: Config, database: Database) -> None:
        self.config = config
        self.database = database
        self.found: list[FoundFile] = []

    def current_files(self) -> set[str]:
        return set()

    def storage_ok(self) -> bool:
        return True

    def is_known(self, path: str) -> bool:
        return False

    async def index_found(self, files: list[FoundFile], source: str = "watch") -> int:
        self.found += files
        return len(files)


async def test_no_sweep_floor_reconcile_or_watcher_touches_clips(seeded: Seeded, db: Database) -> None:
    s1, _, s3 = seeded.segs[1:4]
    clip = await clips.create(db, seeded.config, CAM, s1.start, s3.end, "keep me")
    path = Path(clip.path)
    size = path.stat().st_size
    root = seeded.root
    clip_day = root / CLIPS_DIR / "2000-01-01"  # an old, empty "day dir" under clips: not a camera's
    clip_day.mkdir()
    decoy = root / CLIPS_DIR / "2000-01-02" / "00-00-00.mp4"  # a layout-looking file under clips
    decoy.parent.mkdir()
    decoy.write_bytes(path.read_bytes())

    # the scans never list anything under clips
    assert CLIPS_DIR not in diskguard._camera_names(root) and CLIPS_DIR not in watcher.list_camera_dirs(root)
    assert all(CLIPS_DIR not in r.path for r in diskguard.iter_oldest_files(root))
    assert watcher.scan_camera(root, CLIPS_DIR) == {}  # parse_segment_path refuses the reserved name
    assert diskguard.unlink_batch(root, [(CLIPS_DIR, str(decoy))])[0].outcome is diskguard.Outcome.REFUSED
    w = watcher.Watcher(root, current_files=set, is_known=lambda p: False, on_settled=lambda f: asyncio.sleep(0))
    assert w._depth(str(path)) == 0 and w._depth(str(root / CLIPS_DIR)) == 0  # never watched or noted
    assert w._depth(s1.path) == 3
    ix = FakeIndex(seeded.config, db)
    async with db.acquire() as conn:
        await conn.execute("DELETE FROM segments WHERE path = $1", s3.path)  # one orphan for reconcile to find
    os.utime(s3.path, (time.time() - 60, time.time() - 60))  # settled, not just written
    os.utime(decoy, (time.time() - 60, time.time() - 60))
    stats = await watcher.Reconciler(ix).run()
    assert [f.path for f in ix.found] == [s3.path] and stats.cameras == 1

    # a floor no disk reaches, then age retention (far in the future): every segment goes, the orphan
    # (unindexed: reconcile's fake index kept nothing) through the floor's scan of the files
    cfg = replace(seeded.config, storage=replace(seeded.config.storage, min_free_bytes=HUGE))
    sweeper = Sweeper(cfg, db, set, clock=lambda: time.time() + 400 * DAY)
    check = await sweeper.check_disk_once()
    assert check.free < check.floor and check.sources == ["index", "filesystem"]  # nothing left to delete ...
    assert not any(os.path.exists(e.path) for e in seeded.segs)  # ... because all footage went
    report = await sweeper.sweep_once()
    assert report.refused == 0 and report.dirs_removed >= 1  # the cameras' emptied day dirs
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM segments") == 0
    assert path.is_file() and path.stat().st_size == size and decoy.is_file() and clip_day.is_dir()
    decodes(path)
    assert await clips.get(db, clip.id) == clip
    assert await probe_duration(str(path)) == pytest.approx(clip.end.timestamp() - clip.start.timestamp(), abs=0.3)


# --------------------------------------------------------------------------- recorderd storage and the CLI


async def test_storage_counts_clips(seeded: Seeded, db: Database) -> None:
    s1 = seeded.segs[1]
    made = [await clips.create(db, seeded.config, CAM, s1.start, s1.end, f"c{i}") for i in range(2)]
    out, err = io.StringIO(), io.StringIO()
    assert await cmd_storage(seeded.config, True, out, err) == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    nbytes = sum(c.size_bytes for c in made)
    [cam] = doc["cameras"]
    assert (cam["clips"], cam["clip_bytes"]) == (2, nbytes)
    assert [(t["tenant"], t["clips"], t["clip_bytes"]) for t in doc["tenants"]] == [("acme", 2, nbytes)]
    assert [(p["plan"], p["clips"]) for p in doc["plans"]] == [("basic", 2)]
    assert doc["clip_total"] == {"clips": 2, "clip_bytes": nbytes} and doc["capacity"]["clip_bytes"] == nbytes
    out = io.StringIO()
    assert await cmd_storage(seeded.config, False, out, err) == 0
    text = out.getvalue()
    assert "CLIPS" in text.splitlines()[0] and "2 (" in next(ln for ln in text.splitlines() if ln.startswith(CAM))
    assert "; 2 clips, " in text and "saved clips" in text


def json_doc(out: str) -> Any:
    """The JSON document the CLI printed (with logging left unconfigured, log lines precede it)."""
    return json.loads(out[out.index("{\n"):])


async def test_cli_clip_create_list_rename_delete(seeded: Seeded, db: Database, tmp_path: Path,
                                                  quiet_cli: Callable[[list[str]], int],
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path / "cameras.yaml", seeded.root,
                            [camera_doc(CAM, "rtsp://127.0.0.1:1/x", tenant="acme")], database={"dsn": seeded.dsn},
                            plans={"basic": {"max_clips": 1}})
    c = ["--config", str(cfg_path)]
    s1 = seeded.segs[1]
    period = ["--from", iso(s1.start), "--to", iso(s1.end)]
    assert await run_cli(quiet_cli, "clip", "create", *c, "--camera", CAM, *period, "--name", "Door",
                         "--json") == 0, capfd.readouterr().err
    made = json_doc(capfd.readouterr().out)
    assert made["name"] == "Door" and made["cut"]["files"] == 1 and made["created_by"].startswith("cli")
    assert (seeded.root / CLIPS_DIR / CAM / f"{made['id']}.mp4").is_file()

    assert await run_cli(quiet_cli, "clip", "create", *c, "--camera", CAM, *period, "--name", "Again") == 1
    err = capfd.readouterr().err
    assert err.startswith("recorderd: error: camera cam-x has 1 clip: its plan 'basic' allows 1") and err.count("\n") == 1

    assert await run_cli(quiet_cli, "clip", "list", *c) == 0
    text = capfd.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["ID", "CAMERA", "START"] and "Door" in text and "1 clip," in text
    assert await run_cli(quiet_cli, "clip", "list", *c, "--camera", CAM, "--json") == 0
    listed = json_doc(capfd.readouterr().out)
    assert listed["total"] == 1 and listed["clips"][0]["id"] == made["id"]
    assert await run_cli(quiet_cli, "clip", "list", *c, "--camera", "nope") == 1
    assert "unknown camera 'nope'" in capfd.readouterr().err

    assert await run_cli(quiet_cli, "clip", "rename", *c, str(made["id"]), "Back door") == 0
    assert "is now: Back door" in capfd.readouterr().out
    assert await run_cli(quiet_cli, "clip", "rename", *c, str(made["id"]), " ") == 2
    assert "must not be empty" in capfd.readouterr().err

    for argv, rc, message in [
        (["create", *c, "--camera", CAM, "--from", iso(s1.end), "--to", iso(s1.start), "--name", "x"], 2,
         "must be before"),
        (["create", *c, "--camera", CAM, *period, "--name", ""], 2, "must not be empty"),
        (["create", *c, "--camera", "nope", *period, "--name", "x"], 1, "unknown camera 'nope'"),
        (["delete", *c, "999999"], 1, "no clip 999999"),
    ]:
        assert await run_cli(quiet_cli, "clip", *argv) == rc
        err = capfd.readouterr().err
        assert message in err and err.count("\n") == 1, err

    assert await run_cli(quiet_cli, "clip", "delete", *c, str(made["id"])) == 0
    assert f"deleted clip {made['id']}" in capfd.readouterr().out
    assert clip_files(seeded.root) == [] and await clip_rows(db) == []
