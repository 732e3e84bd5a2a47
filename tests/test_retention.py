"""Retention against a real PostgreSQL and real files: backdated segments, an injectable clock."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from recorderd.config import Config, parse_config
from recorderd.db import Database
from recorderd.layout import segment_path
from recorderd.retention import DAY, Sweeper

pytestmark = pytest.mark.integration

NOW = datetime(2024, 6, 15, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One small valid mp4, made once, copied for every segment."""
    out = tmp_path_factory.mktemp("sample") / "s.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5", "-t", "1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(out)],
                   check=True, timeout=60)
    return out.read_bytes()


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Footage:
    """Backdated segments: a real file in the layout plus its row."""

    def __init__(self, root: Path, db: Database, sample: bytes) -> None:
        self.root, self.db, self.sample = root, db, sample

    async def add(self, cam: str, end: float, *, duration: float = 60.0, size: int | None = None,
                  protected: bool = False, deleting: bool = False, path: Path | None = None,
                  write: bool = True) -> Path:
        start = end - duration
        p = path or segment_path(self.root, cam, start)
        data = self.sample if size is None else (self.sample * (size // len(self.sample) + 1))[:size]
        if write:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        async with self.db.acquire() as conn:
            await conn.execute(
                "INSERT INTO segments (camera_id, start_time, end_time, duration_seconds, size_bytes, path,"
                " source, source_rank, protected, deleting) VALUES ($1,$2,$3,$4,$5,$6,'ffmpeg',3,$7,$8)",
                cam, _dt(start), _dt(end), duration, len(data), str(p), protected, deleting)
        return p

    async def paths(self) -> set[str]:
        async with self.db.acquire() as conn:
            return {r["path"] for r in await conn.fetch("SELECT path FROM segments")}


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def make_config(root: Path, cameras: list[dict[str, Any]], **extra: Any) -> Config:
    doc: dict[str, Any] = {"storage": {"root": str(root), "min_free_percent": 0},
                           "cameras": [{"url": "rtsp://127.0.0.1:1/x", **c} for c in cameras],
                           "metrics": {"listen": None}, "retention": {"batch_size": 3}}
    doc.update(extra)
    return parse_config(doc)


@pytest.fixture
def footage(root: Path, db: Database, sample_mp4: bytes) -> Footage:
    return Footage(root, db, sample_mp4)


def counter(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


# --------------------------------------------------------------------------- age


async def test_segments_go_exactly_when_expired_and_protected_stay(root: Path, db: Database, footage: Footage,
                                                                   logs: list[Any]) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}])
    cutoff = NOW - 7 * DAY
    old = await footage.add("c1", cutoff - 1)
    older = await footage.add("c1", cutoff - 3600)
    edge = await footage.add("c1", cutoff + 1)
    prot = await footage.add("c1", cutoff - 20 * DAY, protected=True)
    fresh = await footage.add("c1", NOW - 60)
    clock = Clock()
    sweeper = Sweeper(cfg, db, set, clock=clock)
    before = counter("recorderd_retention_deleted_segments_total", "age")

    rep = await sweeper.sweep_once()
    assert rep.deleted == 2 and rep.by_reason["age"].count == 2
    assert not old.exists() and not older.exists()
    assert edge.exists() and prot.exists() and fresh.exists()
    assert await footage.paths() == {str(edge), str(prot), str(fresh)}
    assert counter("recorderd_retention_deleted_segments_total", "age") == before + 2

    clock.t += 2  # now the edge segment's end is 1 s past the retention
    rep = await sweeper.sweep_once()
    assert rep.deleted == 1 and not edge.exists()
    assert await footage.paths() == {str(prot), str(fresh)}
    sweeps = [e for e in logs if e["event"] == "retention_sweep"]
    assert [(e["reason"], e["count"]) for e in sweeps] == [("age", 2), ("age", 1)]
    assert sweeps[0]["oldest"].startswith("2024-06-08") and sweeps[0]["bytes"] == 2 * len(footage.sample)


async def test_premium_to_basic_loses_exactly_what_is_older_than_7_days(root: Path, db: Database,
                                                                         footage: Footage) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "premium"}], retention={"batch_size": 4})
    files = {d: await footage.add("c1", NOW - d * DAY + 600) for d in range(1, 41)}
    sweeper = Sweeper(cfg, db, set, clock=Clock())
    rep = await sweeper.sweep_once()
    assert rep.deleted == 10 and {d for d, p in files.items() if not p.exists()} == set(range(31, 41))

    sweeper.update_config(make_config(root, [{"id": "c1", "plan": "basic"}], retention={"batch_size": 4}))
    rep = await sweeper.sweep_once()
    assert rep.deleted == 23
    assert {d for d, p in files.items() if p.exists()} == set(range(1, 8))
    assert len(await footage.paths()) == 7


async def test_retention_disabled_deletes_nothing_by_age(root: Path, db: Database, footage: Footage) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}], retention={"enabled": False})
    expired = await footage.add("c1", NOW - 30 * DAY)
    rep = await Sweeper(cfg, db, set, clock=Clock()).sweep_once()
    assert rep.deleted == 0 and expired.exists()


# --------------------------------------------------------------------------- cap


async def test_max_bytes_cap_deletes_oldest_first(root: Path, db: Database, footage: Footage) -> None:
    size = 1000
    cfg = make_config(root, [{"id": "c1", "plan": "premium", "max_bytes": 3500}])
    files = [await footage.add("c1", NOW - (10 - i) * 600, size=size) for i in range(8)]
    prot = await footage.add("c1", NOW - DAY, size=size, protected=True)  # oldest, but protected
    other = await footage.add("c2", NOW - DAY, size=size * 10)  # another camera's bytes do not count
    rep = await Sweeper(cfg, db, set, clock=Clock()).sweep_once()
    assert rep.by_reason["cap"].count == 5 and rep.by_reason["cap"].bytes == 5 * size
    assert [p.exists() for p in files] == [False] * 5 + [True] * 3
    assert prot.exists() and other.exists()
    assert REGISTRY.get_sample_value("recorderd_storage_used_bytes", {"camera": "c1"}) == 4 * size


# --------------------------------------------------------------------------- crash safety


async def test_crash_between_steps_is_finished_on_next_start(root: Path, db: Database, footage: Footage,
                                                              logs: list[Any]) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "premium"}])
    unlinked = await footage.add("c1", NOW - 40 * DAY, deleting=True)
    unlinked.unlink()  # the crash came after this unlink
    still_there = await footage.add("c1", NOW - 39 * DAY, deleting=True)
    marked_young = await footage.add("c1", NOW - 2 * DAY, deleting=True)  # marked: the decision stands
    protected_since = await footage.add("c1", NOW - 38 * DAY, deleting=True, protected=True)
    untouched = await footage.add("c1", NOW - DAY)
    rep = await Sweeper(cfg, db, set, clock=Clock()).finish_interrupted()
    assert rep.by_reason["recovery"].count == 2 and rep.missing == 1
    assert not still_there.exists() and not marked_young.exists()
    assert protected_since.exists() and untouched.exists()
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT path, deleting FROM segments ORDER BY path")
    assert {(r["path"], r["deleting"]) for r in rows} == {(str(protected_since), False), (str(untouched), False)}
    assert any(e["event"] == "retention_recovered" for e in logs)


async def test_run_finishes_interrupted_deletions_first(root: Path, db: Database, footage: Footage) -> None:
    import asyncio
    cfg = make_config(root, [{"id": "c1", "plan": "premium"}], retention={"interval_seconds": 30})
    left = await footage.add("c1", NOW - DAY, deleting=True)
    expired = await footage.add("c1", NOW - 31 * DAY)
    task = asyncio.create_task(Sweeper(cfg, db, set, clock=Clock()).run())
    try:
        for _ in range(100):
            if not left.exists() and not expired.exists():
                break
            await asyncio.sleep(0.05)
        assert not left.exists() and not expired.exists()
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- path safety


async def test_symlinks_are_not_followed_and_targets_survive(root: Path, tmp_path: Path, db: Database,
                                                             footage: Footage, logs: list[Any]) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}, {"id": "c2", "plan": "premium"}])
    outside = tmp_path / "outside"
    (outside / "day").mkdir(parents=True)
    secret = outside / "secret.mp4"
    secret.write_bytes(b"evidence")
    (outside / "day" / "00-00-00.mp4").write_bytes(b"evidence too")
    day = root / "c1" / "2024-05-01"
    day.mkdir(parents=True)
    (day / "00-00-00.mp4").symlink_to(secret)
    (root / "c1" / "2024-05-02").symlink_to(outside / "day")
    c2_file = await footage.add("c2", NOW - DAY)  # young footage of another camera
    c2_loose = c2_file.parent / "00-00-00.mp4"  # and a file of it that has no row of its own
    c2_loose.write_bytes(b"c2")
    old = NOW - 40 * DAY
    bad = [day / "00-00-00.mp4", root / "c1" / "2024-05-02" / "00-00-00.mp4", c2_loose, secret,
           Path(f"{root}/c1/../c2/{c2_file.parent.name}/{c2_file.name}")]
    for p in bad:
        await footage.add("c1", old, path=p, write=False)
    good = await footage.add("c1", old)
    sweeper = Sweeper(cfg, db, set, clock=Clock())

    rep = await sweeper.sweep_once()
    assert rep.deleted == 1 and rep.refused == len(bad) and not good.exists()
    assert secret.read_bytes() == b"evidence" and (outside / "day" / "00-00-00.mp4").exists()
    assert c2_file.exists() and c2_loose.exists() and (day / "00-00-00.mp4").is_symlink()
    assert await footage.paths() == {str(c2_file)}  # refused rows dropped, files left in place
    refused = [e for e in logs if e["event"] == "retention_refused"]
    assert len(refused) == len(bad) and all(e["log_level"] == "error" for e in refused)

    await footage.add("c1", old, path=bad[0], write=False)  # the same bad row comes back
    rep = await sweeper.sweep_once()
    assert rep.refused == 1
    assert len([e for e in logs if e["event"] == "retention_refused"]) == len(bad)  # once per path


async def test_the_file_being_written_is_never_deleted(root: Path, db: Database, footage: Footage) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic", "max_bytes": 1}])
    live = await footage.add("c1", NOW - 30 * DAY)  # absurd but possible: an old row for the live path
    others = [await footage.add("c1", NOW - (30 - i) * DAY) for i in range(1, 5)]
    rep = await Sweeper(cfg, db, lambda: {str(live)}, clock=Clock()).sweep_once()
    assert live.exists() and not any(p.exists() for p in others)
    assert rep.deleted == 4


async def test_empty_day_dirs_removed_never_today_or_future(root: Path, db: Database, footage: Footage) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}])
    expired = await footage.add("c1", NOW - 10 * DAY)
    for d in ("2024-06-15", "2024-06-16", "2024-06-01"):
        (root / "c1" / d).mkdir(parents=True, exist_ok=True)
    kept = await footage.add("c1", NOW - 3 * DAY)
    rep = await Sweeper(cfg, db, set, clock=Clock()).sweep_once()
    assert rep.deleted == 1 and not expired.parent.exists()
    assert sorted(os.listdir(root / "c1")) == sorted({kept.parent.name, "2024-06-15", "2024-06-16"})


# --------------------------------------------------------------------------- cameras not in the config


async def test_removed_and_unknown_cameras(root: Path, db: Database, footage: Footage) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}])
    async with db.acquire() as conn:
        await conn.execute("INSERT INTO cameras (id, name, plan, retention_days, in_config) "
                           "VALUES ('gone', 'gone', 'x', 3, false)")
    gone_old, gone_new = await footage.add("gone", NOW - 4 * DAY), await footage.add("gone", NOW - 2 * DAY)
    ghost_old, ghost_new = await footage.add("ghost", NOW - 31 * DAY), await footage.add("ghost", NOW - 29 * DAY)
    await Sweeper(cfg, db, set, clock=Clock()).sweep_once()
    assert not gone_old.exists() and gone_new.exists()
    assert not ghost_old.exists() and ghost_new.exists()  # unknown: the longest plan (30 days)


# --------------------------------------------------------------------------- visibility


async def test_recordings_expiring_announced_once(root: Path, db: Database, footage: Footage,
                                                  logs: list[Any]) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic", "tenant": "acme"}])
    await footage.add("c1", datetime(2024, 6, 8, 14, tzinfo=UTC).timestamp())  # all gone 2024-06-16 00:00
    clock = Clock(datetime(2024, 6, 14, 23, 0, tzinfo=UTC).timestamp())
    sweeper = Sweeper(cfg, db, set, clock=clock)
    await sweeper.sweep_once()
    assert not [e for e in logs if e["event"] == "recordings_expiring"]  # more than a day left
    clock.t = datetime(2024, 6, 15, 0, 0, 1, tzinfo=UTC).timestamp()
    await sweeper.sweep_once()
    await sweeper.sweep_once()
    exp = [e for e in logs if e["event"] == "recordings_expiring"]
    assert len(exp) == 1
    assert (exp[0]["camera"], exp[0]["tenant"], exp[0]["day"]) == ("c1", "acme", "2024-06-08")
    assert exp[0]["expires_at"].startswith("2024-06-16T00:00:00")


# --------------------------------------------------------------------------- database trouble


async def test_database_down_never_raises(root: Path, db: Database, footage: Footage,
                                          logs: list[Any]) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}])
    expired = await footage.add("c1", NOW - 10 * DAY)
    sweeper = Sweeper(cfg, db, set, clock=Clock())
    db.mark_down("test")
    rep = await sweeper.sweep_once()
    assert not rep.db_up and expired.exists()
    assert (await sweeper.finish_interrupted()).db_up is False
    check = await sweeper.check_disk_once()
    assert check.before is not None and check.deleted == 0
    assert [e["event"] for e in logs].count("retention_db_unavailable") == 1


async def test_statement_error_is_logged_not_raised(root: Path, db: Database, footage: Footage,
                                                    logs: list[Any]) -> None:
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}])
    async with db.acquire() as conn:
        await conn.execute("ALTER TABLE segments RENAME COLUMN deleting TO deleting_x")
    rep = await Sweeper(cfg, db, set, clock=Clock()).sweep_once()
    assert not rep.db_up
    assert any(e["event"] == "retention_db_error" and e["log_level"] == "error" for e in logs)


async def test_missing_storage_root_leaves_the_index_alone(tmp_path: Path, db: Database, footage: Footage,
                                                            logs: list[Any]) -> None:
    gone = tmp_path / "unmounted"
    cfg = make_config(gone, [{"id": "c1", "plan": "basic"}])
    await footage.add("c1", NOW - 30 * DAY, path=gone / "c1" / "2024-05-16" / "12-00-00.mp4", write=False)
    sweeper = Sweeper(cfg, db, set, clock=Clock())
    rep = await sweeper.sweep_once()
    check = await sweeper.check_disk_once()
    assert rep.deleted == rep.failed == rep.missing == 0 and check.before is None
    assert len(await footage.paths()) == 1
    assert {e["event"] for e in logs if e["log_level"] == "error"} == {"retention_error"}


async def test_unlink_failure_keeps_the_row_for_later(root: Path, db: Database, footage: Footage) -> None:
    if os.geteuid() == 0 and shutil.which("chattr") is None:
        pytest.skip("needs chattr to make a file undeletable as root")
    cfg = make_config(root, [{"id": "c1", "plan": "basic"}])
    stuck = await footage.add("c1", NOW - 10 * DAY)
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False).returncode != 0:
        pytest.skip("filesystem does not support the immutable attribute")
    try:
        rep = await Sweeper(cfg, db, set, clock=Clock()).sweep_once()
        assert rep.failed == 1 and stuck.exists()
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT deleting FROM segments WHERE path = $1", str(stuck)) is False
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=False)
