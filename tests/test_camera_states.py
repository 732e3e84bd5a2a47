"""Cameras as operators meet them: each trouble names itself, is not retried into a lockout, and a
live fix of the YAML brings the camera to ``recording``; H.265 is recorded as ``hvc1``; a G.711
camera's audio decision outlives a restart. Real daemon, real FFmpeg, real GStreamer cameras.

The daemon's troubles and fix, the H.265 camera and the VP8 camera only wait on the wall clock: each
runs in the background from the module's start (``util.Background``: a thread and event loop of its
own; cameras, a database and camera ids of their own, the metrics being per process) while the G.711
and silent-camera tests run; their tests, last in the module, raise what it asserted.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_cam import TestCam, free_port
from util import Background, DaemonProc, SupervisedCamera, camera_doc, ffprobe, wait_until, write_config

from recorderd import metrics
from recorderd.layout import STATE_DIR
from recorderd.streammemory import StreamMemory

pytestmark = pytest.mark.integration


def states(d: DaemonProc) -> dict[str, dict[str, Any]]:
    st = d.status() or {"cameras": []}
    return {c["camera_id"]: c for c in st["cameras"]}


async def test_a_g711_camera_restarted_loses_no_first_seconds(testcam_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cam = testcam_factory(audio="alaw")
    (tmp_path / STATE_DIR).mkdir()  # the volume is mounted (the daemon's marker directory exists)
    # first start ever: FFmpeg is refused G.711 in MP4, the supervisor learns AAC (costs one run)
    async with SupervisedCamera(tmp_path, cam.url, memory=StreamMemory(tmp_path), segment_seconds=2) as first:
        await wait_until(lambda: first.segments(), 40, what="first segment")
        assert first.sup.restarts == 1 and first.sup.last_exit["reason"] == "audio_transcode"  # type: ignore[index]
        lost_first = first.segments()[0].start - first.started
    saved = (tmp_path / STATE_DIR / "streams.json").read_text()
    assert '"audio_mode": "aac"' in saved and "pcm_alaw" in saved
    # the next start (a new daemon: a new memory object reading the file) transcodes from the first run
    async with SupervisedCamera(tmp_path, cam.url, memory=StreamMemory(tmp_path), segment_seconds=2) as second:
        await wait_until(lambda: second.segments(), 40, what="first segment after the restart")
        assert second.sup.restarts == 0
        assert second.sup.snapshot()["stream"] == {"video": "h264", "audio": "pcm_alaw", "audio_mode": "aac"}
        lost_second = second.segments()[0].start - second.started
    streams = {s["codec_type"]: s["codec_name"] for s in ffprobe(second.segments()[0].path)["streams"]}
    assert streams == {"video": "h264", "audio": "aac"}
    print(f"\nfirst footage after start: {lost_first:.2f} s learning G.711, {lost_second:.2f} s remembered")
    # the first footage starts as soon as FFmpeg has analysed the stream, not a failed run later
    assert lost_second < lost_first - 1.0, (lost_first, lost_second)
    assert lost_second < 6.0, lost_second
    os.unlink(tmp_path / STATE_DIR / "streams.json")


async def test_a_camera_that_accepts_and_says_nothing_is_a_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # keep the connection open, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with SupervisedCamera(tmp_path, f"rtsp://127.0.0.1:{port}/stream", timeout_seconds=2,
                                    segment_seconds=2) as s:
            await wait_until(lambda: s.sup.state == "unreachable", 20, what="unreachable")
            snap = s.sup.snapshot()
            assert snap["cause"] == "timeout" and snap["hint"].startswith("the camera does not answer")
    finally:
        for w in held:
            w.close()
        server.close()


# ---------------------------------------------------------------------- the background's bodies


async def each_trouble_names_itself_and_a_live_fix_records(cam: TestCam, pg_dsn: str, tmp_path: Path,
                                                          daemons: list[DaemonProc]) -> None:
    bad_pw = cam.url.replace("right-pw", "wrong-pw")
    bad_path = cam.url.replace("/stream", "/nope")
    stopped = f"rtsp://viewer:right-pw@127.0.0.1:{free_port()}/stream"
    cams = [camera_doc("pw", bad_pw), camera_doc("path", bad_path), camera_doc("gone", stopped)]
    root = tmp_path / "rec"
    cfg = write_config(tmp_path / "cameras.yaml", root, cams, database={"dsn": pg_dsn})
    d = DaemonProc(cfg, root, tmp_path / "daemon.log").start()
    daemons.append(d)
    want = {"pw": ("unauthorized", "auth_failed", "check them in cameras[0].url"),
            "path": ("not_found", "path_not_found", "check the path in cameras[1].url"),
            "gone": ("unreachable", "refused", "nothing listens at the address in cameras[2].url")}
    await wait_until(lambda: all(states(d).get(k, {}).get("state") == v[0] for k, v in want.items()), 40,
                     what="each camera in its trouble state")
    t_first = time.monotonic()
    for cid, (state, cause, hint) in want.items():
        c = states(d)[cid]
        assert (c["state"], c["cause"]) == (state, cause) and hint in c["hint"], c
        assert c["last_exit"]["reason"] == state
    # one log line per episode, with the hint; nothing carries a password
    told = {e["camera"]: e for e in d.events("camera_unavailable")}
    assert set(told) == set(want) and all(told[k]["state"] == want[k][0] for k in want)
    await asyncio.sleep(8)  # the unreachable camera is retried (port probe), the others left alone
    again = d.events("camera_unavailable")
    assert len(again) == 3, again
    assert states(d)["pw"]["restarts"] == 1, "a wrong password was tried again within seconds"
    assert states(d)["gone"]["restarts"] >= 2
    assert next(e for e in d.events("camera_retry_scheduled") if e["camera"] == "pw")["delay"] >= 48
    text = d.log_path.read_text() + d.status_path.read_text()
    assert "right-pw" not in text and "wrong-pw" not in text

    # the operator fixes the three URLs: each records within seconds (no waiting out the backoff)
    doc = yaml.safe_load(cfg.read_text())
    for c in doc["cameras"]:
        c["url"] = cam.url
    cfg.write_text(yaml.safe_dump(doc))
    fixed = time.monotonic()
    await wait_until(lambda: all(states(d).get(k, {}).get("state") == "recording" for k in want), 40,
                     what="all three recording after the fix")
    took = time.monotonic() - fixed
    print(f"\nfrom the YAML fix to all three recording: {took:.1f} s")  # the note's figure (pytest -s)
    assert took < 20, took
    assert time.monotonic() - t_first < 60  # well before the password's 60 s retry would have come
    for cid in want:
        assert states(d)[cid]["hint"] is None and states(d)[cid]["cause"] is None
    assert set(d.events("config_reloaded")[-1]["restarted"]) == set(want)  # a new URL: a new FFmpeg at once


async def h265_camera_records_hvc1_files(cam: TestCam, tmp_path: Path) -> None:
    async with SupervisedCamera(tmp_path, cam.url, cam_id="h265-1", segment_seconds=2) as s:
        await wait_until(lambda: len(s.segments()) >= 2, 40, what="two H.265 segments")
        assert s.sup.snapshot()["stream"]["video"] == "hevc"
    info = ffprobe(s.segments()[1].path)  # a whole 2 s segment (the last one is cut by the stop)
    video = [st for st in info["streams"] if st["codec_type"] == "video"]
    assert [(v["codec_name"], v["codec_tag_string"]) for v in video] == [("hevc", "hvc1")]
    assert float(info["format"]["duration"]) > 1.0


async def unsupported_codec_is_named_and_not_retried_every_second(cam: TestCam, tmp_path: Path) -> None:
    async with SupervisedCamera(tmp_path, cam.url, cam_id="vp8-1", segment_seconds=2) as s:
        await wait_until(lambda: s.sup.state == "unsupported", 30, what="unsupported")
        await asyncio.sleep(4)
        snap = s.sup.snapshot()
        assert snap["cause"] == "codec" and snap["hint"].startswith("vp8 video cannot be stored in MP4")
        assert s.sup.restarts == 1 and s.events == []
        assert metrics.CAMERA_STATE.labels("vp8-1", "unsupported")._value.get() == 1


# ---------------------------------------------------------------------- run in the background


@pytest.fixture(scope="module", autouse=True)
def background(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Background[None]]]:
    """Each of the three started at the module's start, with its own camera (and the daemon its own
    database); cancelled at teardown if a test did not wait for it."""
    if not pg_cluster.is_running:  # a test elsewhere may have left it stopped (like pg_dsn)
        pg_cluster.start()
    db_name = "states_" + uuid.uuid4().hex[:8]
    dsn = pg_cluster.create_database(db_name)
    cams = {"trouble": TestCam(user="viewer", password="right-pw"), "h265": TestCam(codec="h265"),
            "vp8": TestCam(codec="vp8")}
    daemons: list[DaemonProc] = []
    bgs: dict[str, Background[None]] = {}
    try:
        for cam in cams.values():
            cam.start(timeout=30)
        tmp = {name: tmp_path_factory.mktemp(name) for name in cams}
        bgs["trouble"] = Background(lambda: each_trouble_names_itself_and_a_live_fix_records(
            cams["trouble"], dsn, tmp["trouble"], daemons), "daemon with three troubles")
        bgs["h265"] = Background(lambda: h265_camera_records_hvc1_files(cams["h265"], tmp["h265"]), "H.265 camera")
        bgs["vp8"] = Background(lambda: unsupported_codec_is_named_and_not_retried_every_second(
            cams["vp8"], tmp["vp8"]), "VP8 camera")
        yield bgs
    finally:
        for b in bgs.values():
            b.cancel()
        for d in daemons:
            d.stop()
        for cam in cams.values():
            cam.stop()
        pg_cluster.drop_quietly(db_name)


async def test_each_trouble_names_itself_and_a_live_fix_records(background: dict[str, Background[None]]) -> None:
    await background["trouble"].result(180)


async def test_h265_camera_records_hvc1_files(background: dict[str, Background[None]]) -> None:
    await background["h265"].result(120)


async def test_unsupported_codec_is_named_and_not_retried_every_second(
        background: dict[str, Background[None]]) -> None:
    await background["vp8"].result(120)
