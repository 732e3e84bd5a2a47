"""Export: one MP4 of a period cut by stream copy from real recorded segments (real camera, real
FFmpeg, real PostgreSQL). The footage is recorded once per session and copied into each test's root."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from fixtures_cam import TestCam
from util import camera_doc, make_config, wait_until, write_config

from recorderd import queries
from recorderd.config import Config
from recorderd.db import Database
from recorderd.events import SegmentEvent
from recorderd.export import CutFailed, NoFootage, SegmentSpan, cut, export_period, segments_for
from recorderd.indexer import segment_arrays
from recorderd.layout import iso
from recorderd.probe import probe_duration
from recorderd.supervisor import CameraSupervisor

pytestmark = pytest.mark.integration

CAM = "cam-x"
GOP = 1.0  # the test camera: 10 fps, a keyframe every 10 frames


# --------------------------------------------------------------------------- footage, recorded once


@dataclass(frozen=True)
class Footage:
    root: Path  # where the recording lives; tests copy it
    events: tuple[SegmentEvent, ...]  # closed segments, oldest first


_RECORDED: dict[str, Footage] = {}


async def _record(root: Path, url: str, closed: int) -> list[SegmentEvent]:
    cfg = make_config(root, [camera_doc(CAM, url)])
    events: list[SegmentEvent] = []
    sup = CameraSupervisor(cfg.cameras[0], root, events.append, probe=probe_duration)
    task = asyncio.create_task(sup.run())
    try:
        await wait_until(lambda: len(events) >= closed, 40, what=f"{closed} closed segments")
    finally:
        await sup.stop()
        await asyncio.wait_for(task, 15)
    return sorted((e for e in events if e.source == "ffmpeg" and e.end - e.start > 0.05), key=lambda e: e.start)


def recorded(factory: pytest.TempPathFactory, cam: TestCam) -> Footage:
    """~8 s of the shared camera in 2 s segments, recorded by the real supervisor (exact wall times);
    once per session, shared by test_export and test_clips."""
    if "footage" not in _RECORDED:
        root = factory.mktemp("footage")
        with ThreadPoolExecutor(1) as pool:  # its own event loop, whatever the caller runs in
            events = pool.submit(asyncio.run, _record(root, cam.url, 4)).result()
        assert len(events) >= 4 and all(e.end - e.start > 1.5 for e in events[1:4]), events
        _RECORDED["footage"] = Footage(root, tuple(events))
    return _RECORDED["footage"]


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory, _shared_cam_process: TestCam) -> Footage:
    if not _shared_cam_process.is_running:
        _shared_cam_process.restart()
    return recorded(tmp_path_factory, _shared_cam_process)


@dataclass(frozen=True)
class Seeded:
    root: Path
    config: Config
    segs: list[SegmentEvent]  # this test's copies, indexed, oldest first
    dsn: str


async def seed(footage: Footage, root: Path, db: Database, dsn: str, **config_extra: Any) -> Seeded:
    """Copy the footage into ``root``, index it, write the volume marker; a config for it."""
    segs = []
    for e in footage.events:
        dest = root / Path(e.path).relative_to(footage.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(e.path, dest)
        segs.append(replace(e, path=str(dest)))
    async with db.acquire() as conn:
        await conn.fetch(queries.UPSERT_SEGMENTS, *segment_arrays(segs))
    (root / ".recorderd").mkdir(exist_ok=True)
    (root / ".recorderd" / "volume.json").write_text('{"uuid": "test"}\n')
    cfg = make_config(root, [camera_doc(CAM, "rtsp://127.0.0.1:1/none", tenant="acme")],
                      database={"dsn": dsn}, **config_extra)
    return Seeded(root, cfg, segs, dsn)


@pytest.fixture
async def seeded(footage: Footage, root: Path, db: Database, pg_dsn: str) -> Seeded:
    return await seed(footage, root, db, pg_dsn)


# --------------------------------------------------------------------------- helpers


def decodes(path: Path) -> None:
    proc = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def streams(path: str | Path) -> list[dict[str, Any]]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,profile,width,height,pix_fmt", "-of", "json", str(path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    found: list[dict[str, Any]] = json.loads(out)["streams"]
    return found


def video_packets(path: str | Path) -> list[tuple[float, int, bool]]:
    """(pts, size, keyframe) of every video packet."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "packet=pts_time,size,flags", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = []
    for line in out.splitlines():
        pts, size, flags = line.split(",")[:3]
        rows.append((float(pts), int(size), "K" in flags))
    return rows


def top_atoms(path: Path) -> list[str]:
    names = []
    with open(path, "rb") as f:
        while len(names) < 10:
            head = f.read(8)
            if len(head) < 8:
                break
            size = int.from_bytes(head[:4], "big")
            names.append(head[4:].decode("latin-1"))
            if size == 1:
                size = int.from_bytes(f.read(8), "big") - 8
            elif size == 0:
                break
            f.seek(size - 8, os.SEEK_CUR)
    return names


def spans(segs: list[SegmentEvent]) -> list[SegmentSpan]:
    return [SegmentSpan(e.path, e.start, e.end, e.size_bytes) for e in segs]


def leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".part"))


# --------------------------------------------------------------------------- cut


async def test_cut_spans_several_files_by_stream_copy_from_the_keyframe_before(seeded: Seeded, db: Database,
                                                                             tmp_path: Path) -> None:
    s1, s2, s3 = seeded.segs[1:4]
    start, end = s1.start + 1.5, s3.start + 1.2  # mid-GOP in the first file, inside the third
    async with db.acquire() as conn:
        files = await segments_for(conn, CAM, start, end)
    assert [f.path for f in files] == [s1.path, s2.path, s3.path]
    assert (files[0].start, files[0].end) == pytest.approx((s1.start, s1.end), abs=1e-5)

    out = tmp_path / "out.mp4"
    res = await cut(files, start, end, out, root=seeded.root)
    assert res.path == out and res.files == 3 and res.gaps == () and res.skipped == () and res.complete
    assert start - GOP - 0.02 <= res.start <= start + 1e-3  # the keyframe at or before the start
    assert res.start == pytest.approx(s1.start + 1.0, abs=0.1)  # this camera: one a second
    assert end - GOP <= res.end <= end + 0.3
    assert res.duration == pytest.approx(end - res.start, abs=0.3)
    assert res.size_bytes == out.stat().st_size > 0
    decodes(out)
    assert streams(out) == streams(s1.path)  # same codec, profile, size: nothing re-encoded
    # the very packets of the source, from its keyframe on
    src = [p for p in video_packets(s1.path) if p[0] >= 1.0 - 0.02]
    got = video_packets(out)
    assert got[0][2] and [size for _, size, _ in got[:len(src)]] == [size for _, size, _ in src]
    atoms = top_atoms(out)
    assert atoms.index("moov") < atoms.index("mdat")  # +faststart: playable while downloading
    assert leftovers(tmp_path) == []
    assert res.to_json()["gaps"] == [] and "path" not in res.to_json()


async def test_a_gap_in_the_footage_is_skipped_and_reported(seeded: Seeded, db: Database, tmp_path: Path) -> None:
    s1, s2, s3 = seeded.segs[1:4]
    async with db.acquire() as conn:  # the camera was offline for s2: no row, no file
        await conn.execute("DELETE FROM segments WHERE path = $1", s2.path)
    os.unlink(s2.path)
    out = tmp_path / "gap.mp4"
    res = await export_period(db, CAM, s1.start, s3.end, out, root=seeded.root)
    assert res.files == 2 and len(res.gaps) == 1 and res.skipped == ()
    (a, b), = res.gaps
    assert (a, b) == pytest.approx((s2.start, s2.end), abs=0.02)
    assert res.duration == pytest.approx((s1.end - s1.start) + (s3.end - s3.start), abs=0.3)
    assert res.start == pytest.approx(s1.start, abs=0.02) and res.end == pytest.approx(s3.end, abs=0.3)
    decodes(out)
    assert res.to_json()["gaps"] == [{"start": iso(a), "end": iso(b)}]


async def test_rows_outside_the_root_or_through_symlinks_are_skipped(seeded: Seeded, tmp_path: Path) -> None:
    s1, s2 = seeded.segs[1:3]
    day = Path(s1.path).parent
    link = day / "23-59-58.mp4"
    link.symlink_to(s2.path)  # a symlink in the layout, pointing at real footage
    day_link = day.parent / "2000-01-01"
    day_link.symlink_to(day)  # a symlinked day directory
    outside = tmp_path / "outside" / CAM / day.name / Path(s1.path).name
    outside.parent.mkdir(parents=True)
    shutil.copyfile(s1.path, outside)
    state = seeded.root / ".recorderd" / "00-00-00.mp4"
    shutil.copyfile(s1.path, state)
    fifo = day / "23-59-59.mp4"
    os.mkfifo(fifo)
    bad = {str(link): "symlink in path", str(day_link / Path(s1.path).name): "symlink in path",
           str(outside): "outside the storage root", str(state): "not a segment file of the layout",
           str(day.parent / ".." / CAM / day.name / Path(s1.path).name): "not a normalised path",
           str(fifo): "not a regular file"}
    rows = [SegmentSpan(p, s1.start, s1.end) for p in bad] + [SegmentSpan(s2.path, s2.start, s2.end)]
    out = tmp_path / "safe.mp4"
    res = await cut(rows, s1.start, s2.end, out, root=seeded.root)
    assert res.files == 1 and dict(res.skipped) == bad
    assert res.gaps == (pytest.approx((s1.start, s2.start), abs=1e-6),)
    assert res.duration == pytest.approx(s2.end - s2.start, abs=0.3)
    with pytest.raises(NoFootage, match="6 file"):
        await cut(rows[:-1], s1.start, s1.end, tmp_path / "none.mp4", root=seeded.root)
    assert not (tmp_path / "none.mp4").exists() and leftovers(tmp_path) == []


def fake_ffmpeg(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-ffmpeg"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_timeout_and_cancel_kill_ffmpeg_and_leave_nothing(seeded: Seeded, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    slow = fake_ffmpeg(tmp_path, f"echo $$ > {pidfile}\nexec sleep 30")
    outdir = tmp_path / "out"
    outdir.mkdir()
    s1 = seeded.segs[1]
    with pytest.raises(CutFailed, match=r"did not finish within 0\.5 s"):
        await cut(spans(seeded.segs), s1.start, s1.end, outdir / "a.mp4", root=seeded.root, ffmpeg_bin=slow,
                  timeout=0.5)
    assert dead(int(pidfile.read_text())) and os.listdir(outdir) == []
    pidfile.unlink()

    task = asyncio.create_task(cut(spans(seeded.segs), s1.start, s1.end, outdir / "b.mp4", root=seeded.root,
                                   ffmpeg_bin=slow))
    await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="the fake FFmpeg")
    pid = int(pidfile.read_text())
    assert not dead(pid) and len(os.listdir(outdir)) == 1  # its temp file
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dead(pid) and os.listdir(outdir) == []


async def test_ffmpeg_failure_is_one_clear_error(seeded: Seeded, tmp_path: Path) -> None:
    failing = fake_ffmpeg(tmp_path, "echo 'first line' >&2\necho 'boom: Invalid data' >&2\nexit 3")
    s1 = seeded.segs[1]
    with pytest.raises(CutFailed) as info:
        await cut(spans(seeded.segs), s1.start, s1.end, tmp_path / "x.mp4", root=seeded.root, ffmpeg_bin=failing)
    assert "exited 3" in str(info.value) and "boom: Invalid data" in str(info.value)
    assert not (tmp_path / "x.mp4").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- recorderd export


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """``recorderd.cli.main`` without reconfiguring global logging (other tests capture it)."""
    import recorderd.logging
    from recorderd import cli

    monkeypatch.setattr(recorderd.logging, "configure", lambda *a, **k: None)
    return cli.main


async def run_cli(main: Callable[[list[str]], int], *argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))  # the CLI runs its own event loop


async def test_cli_export(seeded: Seeded, tmp_path: Path, quiet_cli: Callable[[list[str]], int],
                          capfd: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path / "cameras.yaml", seeded.root, [camera_doc(CAM, "rtsp://127.0.0.1:1/x")],
                            database={"dsn": seeded.dsn})
    s1, _, s3 = seeded.segs[1:4]
    out = tmp_path / "cli.mp4"
    base = ["export", "--config", str(cfg_path), "--camera", CAM]
    period = ["--from", iso(s1.start + 0.5), "--to", iso(s3.end - 0.5)]
    assert await run_cli(quiet_cli, *base, *period, "-o", str(out)) == 0, capfd.readouterr().err
    printed = capfd.readouterr().out
    assert printed.startswith(f"{out}: ") and "from 3 segment files" in printed
    decodes(out)
    assert await probe_duration(str(out)) == pytest.approx(s3.end - 0.5 - s1.start, abs=0.4)

    cases = [
        (["-o", str(out)], 2, "exists"),
        (["-o", str(seeded.root / "x.mp4")], 2, "outside the storage root"),
        (["-o", str(tmp_path / "nodir" / "x.mp4")], 2, "is not a directory"),
    ]
    for extra, rc, message in cases:
        assert await run_cli(quiet_cli, *base, *period, *extra) == rc
        err = capfd.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("recorderd: error: "), err
    new = ["-o", str(tmp_path / "n.mp4")]
    for argv, rc, message in [
        ([*base, "--from", iso(s3.end), "--to", iso(s1.start), *new], 2, "must be before"),
        ([*base, "--from", "yesterday", "--to", iso(s1.start), *new], 2, "invalid --from"),
        ([*base, "--from", "2020-01-01", "--to", "2020-01-03", *new], 2, "at most 86400 s"),
        ([*base, "--from", "2020-01-01T00:00:00Z", "--to", "2020-01-01T01:00:00Z", *new], 1, "no footage of cam-x"),
        (["export", "--config", str(cfg_path), "--camera", "nope", *period, *new], 1, "unknown camera 'nope'"),
    ]:
        assert await run_cli(quiet_cli, *argv) == rc
        err = capfd.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "n.mp4").exists()

    down = write_config(tmp_path / "down.yaml", seeded.root, [camera_doc(CAM, "rtsp://127.0.0.1:1/x")],
                        database={"dsn": "postgresql://postgres@127.0.0.1:1/nope"})
    assert await run_cli(quiet_cli, "export", "--config", str(down), "--camera", CAM, *period, *new) == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/nope" in capfd.readouterr().err
