"""The archive tier end to end: a real daemon recording a real RTSP camera into a real S3 server
(SeaweedFS), with a real PostgreSQL.

One daemon per module records ``cam-a`` (2 s files, archived once 3.6 s old); its tests run in file
order and the object store outage comes last. The crash tests use daemons of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from fixtures_cam import TestCam, free_port
from fixtures_s3 import BUCKET, SECRET_KEY, S3Server
from test_api import TOKENS, Api, decoded_frames, iso_ms
from util import DaemonProc, camera_doc, config_doc, wait_until, write_api_config

from recorderd.config import parse_config
from recorderd.fmp4 import scan
from recorderd.objectstore import ObjectStore, load_credentials

PREFIX = "box-1"
ARCHIVE_AFTER_HOURS = 0.001  # 3.6 s


def archive_doc(s3: S3Server, prefix: str = PREFIX, **extra: Any) -> dict[str, Any]:
    return {"url": f"s3://{BUCKET}/{prefix}", "endpoint": s3.endpoint, "region": "us-east-1",
            "interval_seconds": 1, **extra}


def store_of(s3: S3Server, prefix: str = PREFIX) -> ObjectStore:
    cfg = parse_config({"storage": {"root": "/tmp/unused"}, "cameras": [], "archive": archive_doc(s3, prefix)})
    assert cfg.archive is not None
    return ObjectStore(cfg.archive, load_credentials(cfg.archive, s3.env()))


async def rows(dsn: str, camera_id: str = "cam-a") -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(
            "SELECT id, path, object_url, upload_url, size_bytes, start_time, end_time, fragments IS NOT NULL AS mapped"
            " FROM segments WHERE camera_id = $1 ORDER BY start_time", camera_id)]
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):  # the daemon is migrating
        return []
    finally:
        await conn.close()


def metric(api: Api, name: str) -> float:
    _, _, body = api.call("/metrics", None)
    m = re.search(rf"^{name} ([0-9.e+-]+)$", body.decode(), re.M)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


@pytest.fixture(scope="module")
def cam() -> Iterator[TestCam]:
    c = TestCam(fps=10, gop=10).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def arch(cam: TestCam, s3: S3Server, pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("archive")
    dsn = pg_cluster.create_database("arch_" + uuid.uuid4().hex[:8])
    port = free_port()
    root = tmp / "rec"
    cfg = write_api_config(tmp / "cameras.yaml", root, [camera_doc("cam-a", cam.url, tenant="t1", plan="arch")],
                           dsn=dsn, port=port, tokens=TOKENS, archive=archive_doc(s3),
                           plans={"arch": {"retention_days": 7, "archive_after_hours": ARCHIVE_AFTER_HOURS}},
                           retention={"interval_seconds": 1})
    d = DaemonProc(cfg, root, tmp / "daemon.log", env=s3.env()).start()
    a = Api(port, d, dsn, root)
    try:
        asyncio.run(wait_until_archived(dsn, 3, 90))
        yield a
    finally:
        d.stop()
    log = d.log_path.read_text()
    assert SECRET_KEY not in log  # the S3 secret never reaches the journal
    for tok in TOKENS.values():
        assert tok not in log


async def wait_until_archived(dsn: str, n: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rs = await rows(dsn)
        done = [r for r in rs if r["object_url"] is not None and r["upload_url"] is None]
        if len(done) >= n:
            return rs
        assert time.monotonic() < deadline, f"{len(done)} of {n} segments archived after {timeout}s: {rs[-3:]}"
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- archive and play back


async def test_segments_move_to_the_object_store_verified_and_leave_the_disk(arch: Api, s3: S3Server) -> None:
    store = store_of(s3)
    rs = await rows(arch.dsn)
    archived = [r for r in rs if r["object_url"] is not None and r["upload_url"] is None]
    assert archived
    for r in archived:
        key = store.key_of(r["object_url"])
        assert r["object_url"] == f"s3://{BUCKET}/{PREFIX}/{key}"
        assert key == os.path.relpath(r["path"], arch.root)  # the archive mirrors the layout
        assert not os.path.exists(r["path"])  # only once verified and switched is the local copy gone
        assert await store.exists(key) == r["size_bytes"]
        assert r["mapped"]  # the fragment map came along: playlists need no request to the store
    newest = rs[-1]
    assert newest["object_url"] is None and os.path.exists(newest["path"])  # recent footage stays local
    assert len({r["start_time"] for r in rs}) == len(rs)  # indexed once
    assert metric(arch, "recorderd_archive_uploaded_segments_total") >= len(archived)
    assert metric(arch, "recorderd_archive_up") == 1
    assert metric(arch, "recorderd_archive_configured") == 1
    metric(arch, "recorderd_archive_backlog_segments")
    out = subprocess.run([sys.executable, "-m", "recorderd", "status", "--config", str(arch.daemon.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert f"archive s3://{BUCKET}/{PREFIX}: up; backlog " in out.stdout, out.stdout + out.stderr
    st = json.loads(subprocess.run([sys.executable, "-m", "recorderd", "status", "--json", "--config",
                                    str(arch.daemon.config_path)], capture_output=True, text=True,
                                   timeout=60).stdout)
    assert st["daemon"]["archive"]["url"] == f"s3://{BUCKET}/{PREFIX}" and st["daemon"]["archive"]["up"] is True


async def test_search_shows_an_archived_recording_at_its_s3_url(arch: Api, tmp_path: Path) -> None:
    rs = await rows(arch.dsn)
    first = next(r for r in rs if r["object_url"] is not None)
    out = subprocess.run([sys.executable, "-m", "recorderd", "search", "--config", str(arch.daemon.config_path),
                          "--camera", "cam-a", "--json"], capture_output=True, text=True, timeout=60, check=True)
    found = {s["recording_id"]: s for s in json.loads(out.stdout)["recordings"]}
    assert found[first["id"]]["path"] == first["object_url"]
    assert found[rs[-1]["id"]]["path"] == rs[-1]["path"]


async def test_archived_footage_plays_through_the_playlist_and_seeks_by_range(arch: Api, s3: S3Server) -> None:
    rs = await rows(arch.dsn)
    archived = [r for r in rs if r["object_url"] is not None and r["upload_url"] is None]
    a, b = archived[0]["start_time"].timestamp(), archived[-1]["end_time"].timestamp()
    frames = await decoded_frames(arch, "cam-a", f"from={iso_ms(a)}&to={iso_ms(b)}", "t1")
    # 10 fps; FFmpeg's HLS reader drops up to one GOP (1 s) at each file boundary, as on local files
    assert (b - a) * 10 - 10 * len(archived) - 2 <= frames <= (b - a) * 10 + 2, (frames, b - a)

    # the media URL of an archived segment: Range is one ranged GET, byte for byte the object's
    seg = archived[-1]
    _, _, text = arch.call(f"/api/v1/cameras/cam-a/playlist.m3u8?from={iso_ms(seg['start_time'].timestamp())}"
                           f"&to={iso_ms(seg['end_time'].timestamp())}")
    media = next(line for line in text.decode().splitlines() if line.startswith(f"/api/v1/media/{seg['id']}.mp4?"))
    store = store_of(s3)
    key = store.key_of(seg["object_url"])
    assert key is not None
    whole = await store.get_range(key, 0, seg["size_bytes"])
    status, headers, body = await asyncio.to_thread(arch.call, media, None, "GET", {"Range": "bytes=100-1099"})
    assert status == 206 and body == whole[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{seg['size_bytes']}"
    status, _, body = await asyncio.to_thread(arch.call, media, None, "GET", {"Range": "bytes=-50"})
    assert status == 206 and body == whole[-50:]
    status, _, body = await asyncio.to_thread(arch.call, media, None)
    assert status == 200 and body == whole
    status, headers, body = await asyncio.to_thread(arch.call, media, None, "HEAD")
    assert status == 200 and headers["content-length"] == str(seg["size_bytes"]) and body == b""
    status, headers, _ = await asyncio.to_thread(arch.call, media, None, "GET",
                                                 {"Range": f"bytes={seg['size_bytes']}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{seg['size_bytes']}"
    assert s3.endpoint not in text.decode()  # clients talk to the box only
    # archived bytes are as private as local ones: no signature and no token, a wrong token, another tenant
    bare = media.split("?")[0]
    assert (await asyncio.to_thread(arch.call, bare, None))[0] == 401
    assert (await asyncio.to_thread(arch.call, bare, "not-a-token"))[0] == 401
    assert (await asyncio.to_thread(arch.call, bare, "t2"))[0] == 404
    assert (await asyncio.to_thread(arch.call, bare, "t1"))[0] == 200


async def test_export_and_days_cover_archived_footage(arch: Api, tmp_path: Path) -> None:
    rs = await rows(arch.dsn)
    archived = [r for r in rs if r["object_url"] is not None and r["upload_url"] is None]
    a, b = archived[0]["start_time"].timestamp() + 0.5, archived[-1]["end_time"].timestamp()
    out = tmp_path / "cut.mp4"
    res = subprocess.run([sys.executable, "-m", "recorderd", "export", "--config", str(arch.daemon.config_path),
                          "--camera", "cam-a", "--from", iso_ms(a), "--to", iso_ms(b), "-o", str(out)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **_env(arch)})
    assert res.returncode == 0, res.stderr[-2000:]
    from util import ffprobe_duration

    assert ffprobe_duration(out) == pytest.approx(b - a, abs=1.5)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".stage-")]  # staging removed
    status, days = await asyncio.to_thread(arch.json, "/api/v1/cameras/cam-a/days")
    assert status == 200 and sum(d["segments"] for d in days["days"]) >= len(rs)


def _env(arch: Api) -> dict[str, str]:
    return dict(arch.daemon.env or {})


async def test_retention_deletes_expired_archived_objects_with_their_rows(arch: Api, s3: S3Server) -> None:
    rs = await rows(arch.dsn)
    old = [r for r in rs if r["object_url"] is not None and r["upload_url"] is None][:2]
    store = store_of(s3)
    keys = [store.key_of(r["object_url"]) for r in old]
    conn = await asyncpg.connect(arch.dsn)
    try:  # eight days old: past the plan's seven
        await conn.execute("UPDATE segments SET start_time = start_time - interval '8 days', "
                           "end_time = end_time - interval '8 days' WHERE id = ANY($1::bigint[])",
                           [r["id"] for r in old])
    finally:
        await conn.close()

    async def gone() -> bool:
        ids = {r["id"] for r in await rows(arch.dsn)}
        return not ids & {r["id"] for r in old}

    deadline = time.monotonic() + 30
    while not await gone():
        assert time.monotonic() < deadline, "expired archived rows still indexed after 30 s"
        await asyncio.sleep(0.5)
    for key in keys:
        assert key is not None and await store.exists(key) is None
    assert metric(arch, "recorderd_archive_deleted_objects_total") >= 2


# --------------------------------------------------------------------------- the store away (last: it stops it)


async def test_store_away_for_30s_recording_goes_on_backlog_grows_then_drains(arch: Api, s3: S3Server) -> None:
    before = len(await rows(arch.dsn))
    s3.stop()
    try:
        t0 = time.monotonic()
        peak = 0.0
        while time.monotonic() - t0 < 30:
            await asyncio.sleep(2)
            peak = max(peak, metric(arch, "recorderd_archive_backlog_segments"))
        assert metric(arch, "recorderd_archive_up") == 0
        assert metric(arch, "recorderd_archive_backlog_oldest_seconds") > 10
        during = await rows(arch.dsn)
        assert len(during) >= before + 10  # 30 s of 2 s files: recording never waited on the store
        assert peak >= 5
    finally:
        s3.start()
    await wait_until(lambda: metric(arch, "recorderd_archive_backlog_segments") <= 1, 90, step=1,
                     what="the backlog to drain")
    log = arch.daemon.log_path.read_text()
    assert '"archive_unavailable"' in log and '"archive_available"' in log
    rs = await rows(arch.dsn)
    for r in rs:  # every segment in exactly one place
        assert (r["object_url"] is None) == os.path.exists(r["path"]), r


# --------------------------------------------------------------------------- crashes


def crash_config(tmp: Path, cam: TestCam, s3: S3Server, dsn: str, prefix: str, **archive: Any) -> Path:
    doc = config_doc(tmp / "rec", [camera_doc("cam-a", cam.url, plan="arch")], database={"dsn": dsn},
                     archive=archive_doc(s3, prefix, **archive),
                     plans={"arch": {"retention_days": 7, "archive_after_hours": 0.0003}})  # 1 s
    path = tmp / "cameras.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def check_one_place(dsn: str, root: Path, store: ObjectStore, *, settled: bool) -> list[dict[str, Any]]:
    """Every indexed segment is on disk or in the store (both only while a step is unfinished), indexed
    once; with ``settled``, exactly one place and no object without its row."""
    rs = await rows(dsn)
    assert len({r["path"] for r in rs}) == len(rs) == len({r["start_time"] for r in rs})
    objects = set(await store.list_keys("cam-a"))
    for r in rs:
        local = os.path.exists(r["path"])
        key = os.path.relpath(r["path"], root).replace(os.sep, "/")
        in_store = key in objects
        assert local or in_store, f"segment {r['path']} is nowhere"
        if r["object_url"] is not None:
            assert in_store, f"{r['path']} switched to an object that is not there"
        if settled:
            assert local != in_store or (r["object_url"] is None and not in_store), r
    if settled:
        indexed = {os.path.relpath(r["path"], root).replace(os.sep, "/") for r in rs}
        assert objects <= indexed, f"objects without a row: {sorted(objects - indexed)[:5]}"
        # a local file no row names yet (one a kill cut short; the next start's reconcile indexes it) is
        # footage still here, and must not be in the store too
        on_disk = {str(p) for p in (root / "cam-a").rglob("*.mp4")}
        unindexed = on_disk - {r["path"] for r in rs}
        assert not {os.path.relpath(p, root) for p in unindexed} & objects
    return rs


async def test_kill_9_during_uploads_loses_nothing_and_indexes_once(cam: TestCam, s3: S3Server, pg_cluster: Any,
                                                                    tmp_path: Path) -> None:
    dsn = pg_cluster.create_database("crash_" + uuid.uuid4().hex[:8])
    prefix = "crash-" + uuid.uuid4().hex[:6]
    # 0.1 Mbit/s: slower than the camera records, so a backlog builds and some upload is always waiting
    cfg = crash_config(tmp_path, cam, s3, dsn, prefix, upload_limit_mbps=0.1, concurrency=1)
    root = tmp_path / "rec"
    store = store_of(s3, prefix)
    kills = 0
    for n in range(2):  # mid-upload: of the first segment, then after one made it
        d = DaemonProc(cfg, root, tmp_path / "daemon.log", env=s3.env()).start()
        try:
            deadline = time.monotonic() + 60
            while not await uploading(dsn, n):
                assert time.monotonic() < deadline, "no upload in progress within 60 s"
                await asyncio.sleep(0.05)
            assert d.proc is not None
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(10)
            kills += 1
        finally:
            d.stop()
        await check_one_place(dsn, root, store, settled=False)
    # a crash between the switch and the unlink: the row points at the object, the local copy is back
    rs = await rows(dsn)
    done = next(r for r in rs if r["object_url"] is not None and r["upload_url"] is None)
    key = store.key_of(done["object_url"])
    assert key is not None
    await store.download(key, done["path"])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE segments SET upload_url = object_url WHERE id = $1", done["id"])
    finally:
        await conn.close()
    d = DaemonProc(cfg, root, tmp_path / "daemon.log", env=s3.env()).start()
    try:
        await wait_until(lambda: not os.path.exists(done["path"]), 30, what="the leftover local copy removed")
        await wait_until_archived_n(dsn, sum(r["object_url"] is not None for r in rs) + 1, 60)
        d.stop()  # SIGTERM: a clean drain
    finally:
        d.stop()
    assert kills == 2
    final = await check_one_place(dsn, root, store, settled=True)
    assert sum(1 for r in final if r["path"] == done["path"]) == 1


async def uploading(dsn: str, n: int) -> bool:
    """An upload in progress (intent set, not switched), after ``n`` segments made it."""
    rs = await rows(dsn)
    return (any(r["upload_url"] is not None and r["object_url"] is None for r in rs)
            and sum(r["object_url"] is not None for r in rs) >= n)


async def wait_until_archived_n(dsn: str, n: int, timeout: float) -> None:
    await wait_until_archived(dsn, n, timeout)


# --------------------------------------------------------------------------- the compression tier


async def test_compression_tier_reencodes_aged_footage_in_place_keeping_its_times(
        cam: TestCam, pg_cluster: Any, tmp_path: Path) -> None:
    dsn = pg_cluster.create_database("cmp_" + uuid.uuid4().hex[:8])
    doc = config_doc(tmp_path / "rec", [camera_doc("cam-a", cam.url, plan="small")], database={"dsn": dsn},
                     plans={"small": {"retention_days": 7, "compress_after_days": 0.00003}},  # 2.6 s
                     compression={"codec": "libx265", "crf": 35, "preset": "ultrafast", "cpu_budget": 1,
                                  "interval_seconds": 1})
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    before: dict[str, tuple[float, float, int]] = {}
    d = DaemonProc(cfg, tmp_path / "rec", tmp_path / "daemon.log").start()
    try:
        async def compressed() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(dsn)
            try:
                for r in await conn.fetch("SELECT path, start_time, end_time, size_bytes FROM segments"):
                    before.setdefault(r["path"], (r["start_time"].timestamp(), r["end_time"].timestamp(),
                                                  r["size_bytes"]))
                return list(await conn.fetch(
                    "SELECT path, start_time, end_time, size_bytes FROM segments WHERE compressed_at IS NOT NULL"))
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
                return []
            finally:
                await conn.close()

        deadline = time.monotonic() + 90
        while len(done := await compressed()) < 2:
            assert time.monotonic() < deadline, "no two segments compressed within 90 s"
            await asyncio.sleep(0.5)
    finally:
        d.stop()
    from util import ffprobe

    for r in done:
        probe = ffprobe(r["path"])
        video = next(s for s in probe["streams"] if s["codec_type"] == "video")
        assert video["codec_name"] == "hevc" and video["codec_tag_string"] == "hvc1"
        assert os.path.getsize(r["path"]) == r["size_bytes"] < before[r["path"]][2]  # smaller, index told
        # the index's times are the recording's: never moved by the re-encode
        assert (r["start_time"].timestamp(), r["end_time"].timestamp()) == before[r["path"]][:2]
        assert float(probe["format"]["duration"]) == pytest.approx(r["end_time"].timestamp()
                                                                   - r["start_time"].timestamp(), abs=0.25)
        idx = scan(r["path"])
        assert idx is not None and idx.fragments  # playback's fragment index still reads it
    assert not list((tmp_path / "rec").rglob("*.compress"))  # no temp file left beside the footage
