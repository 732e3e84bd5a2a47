"""Sources other than RTSP record like RTSP, with the same states (issue 13).

HLS over HTTP (MPEG-TS segments) and HTTPS (fMP4 segments), RTMP and RTSPS, each served here by
FFmpeg or GStreamer (``fixtures_sources``); one CameraSupervisor per test with 2 s segments, as in
test_recording. Each source records segments that ffprobe reads as H.264 MP4, and each kind of
failure FFmpeg meets at such a source names its state, cause and hint.

The four recordings only wait on the wall clock (three closed segments each): they are recorded at
once (``recordings``: each in a thread and event loop of its own, under a camera id of its own),
started by the first of their tests; each test asserts on its own source's recording.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fixtures_cam import TestCam, free_port
from util import Background, SupervisedCamera, wait_until

if TYPE_CHECKING:  # at run time pytest imports it as a plugin (conftest.py), asserts rewritten
    from fixtures_sources import HlsSource, RtmpServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[Callable[..., SupervisedCamera]]:
    made: list[SupervisedCamera] = []

    def make(url: str, **cam: Any) -> SupervisedCamera:
        rec = SupervisedCamera(tmp_path / f"rec{len(made)}", url, **cam)
        made.append(rec)
        return rec.start()

    yield make
    for rec in made:
        if rec.task is not None and not rec.task.done():
            await rec.stop()


def probe_file(path: str) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "format=format_name,duration:stream=codec_type,codec_name", "-of", "json", path],
                         capture_output=True, text=True, timeout=30, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


async def assert_records(rec: SupervisedCamera, describe: Callable[[], str] = str) -> None:
    """Recording, then at least two full 2 s segments after the first; every file H.264 in MP4."""
    try:
        await wait_until(lambda: rec.sup.state == "recording", 30, what="state recording")
        await wait_until(lambda: len(rec.segments()) >= 3, 30, what="three closed segments")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; state {rec.sup.state}, {rec.sup.snapshot().get('last_exit')}; "
                             f"{describe()}") from None
    assert rec.sup.state == "recording"
    full = len(rec.segments())  # the segment open now is cut short by the stop
    await rec.stop()
    evs = rec.segments()
    assert len({e.run_id for e in evs}) == 1, "one FFmpeg run, no restarts"
    assert [e.seq for e in evs] == list(range(len(evs)))
    for prev, nxt in zip(evs, evs[1:], strict=False):
        assert nxt.start == prev.end  # tiles exactly within a run
    for i, e in enumerate(evs):
        info = probe_file(e.path)
        assert "mp4" in info["format"]["format_name"], (e.path, info)
        assert [s["codec_name"] for s in info["streams"]] == ["h264"], (e.path, info)  # stream copy
        assert abs(float(info["format"]["duration"]) - e.duration) < 0.3, (e, info)
        if i == 0:  # holds what FFmpeg read while probing (a live HLS playlist starts 3 segments back)
            assert 0.5 < e.duration < 15, e
        elif i < full:
            # cut at the first keyframe (1/s) after each 2 s boundary of the wall clock; data from
            # HLS and RTMP arrives in bursts, so a cut can land a keyframe early or late
            assert 0.9 <= e.duration <= 3.2, e
    assert abs(evs[-1].end - time.time()) < 8  # anchored to the wall clock, however bursty the source


async def assert_trouble(rec: SupervisedCamera, state: str, cause: str, *, hint_has: str = "") -> dict[str, Any]:
    await wait_until(lambda: rec.sup.state == state, 20,
                     what=f"state {state} (now {rec.sup.state}, {rec.sup.snapshot().get('last_exit')})")
    snap = rec.sup.snapshot()
    assert snap["cause"] == cause, snap
    assert snap["hint"] and hint_has in snap["hint"], snap
    assert rec.segments() == [] and rec.task is not None and not rec.task.done()
    return snap


# ---------------------------------------------------------------------- recording


@pytest.fixture(scope="module")
def recordings(hls_source: HlsSource, rtmp_source: RtmpServer, rtsps_cam: TestCam,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Background[None]]]:
    """``assert_records`` of each source, all four started now, each in the background."""
    root = tmp_path_factory.mktemp("records")

    def job(cam_id: str, url: str, describe: Callable[[], str],
            before: Callable[[], None] = lambda: None) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            before()
            rec = SupervisedCamera(root / cam_id, url, cam_id=cam_id).start()
            try:
                await assert_records(rec, describe)
            finally:
                if rec.task is not None and not rec.task.done():
                    await rec.stop()
        return run

    jobs = {
        "hls-http": job("hls-http", hls_source.url("ts"), hls_source.writer.describe, hls_source.check),
        # fMP4 segments this time; a self-signed certificate, which FFmpeg does not verify by default
        "hls-https": job("hls-https", hls_source.url("fmp4", tls=True), hls_source.writer.describe,
                         hls_source.check),
        "rtmp": job("rtmp", rtmp_source.url, rtmp_source.describe),
        "rtsps": job("rtsps", rtsps_cam.url, lambda: rtsps_cam.stderr[-1500:]),
    }
    bgs = {name: Background(make, f"recording of {name}") for name, make in jobs.items()}
    try:
        yield bgs
    finally:
        for bg in bgs.values():
            bg.cancel()


async def test_hls_over_http_records(recordings: dict[str, Background[None]]) -> None:
    await recordings["hls-http"].result(120)


async def test_hls_over_https_records(recordings: dict[str, Background[None]]) -> None:
    await recordings["hls-https"].result(120)


async def test_rtmp_records(recordings: dict[str, Background[None]]) -> None:
    await recordings["rtmp"].result(120)


async def test_rtsps_records(rtsps_cam: TestCam, recordings: dict[str, Background[None]]) -> None:
    assert rtsps_cam.url.startswith("rtsps://")
    await recordings["rtsps"].result(120)


# ---------------------------------------------------------------------- what goes wrong


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_hls_missing_playlist_is_not_found(hls_source: HlsSource, recorder: Callable[..., SupervisedCamera],
                                                 tls: bool) -> None:
    # FFmpeg: "[http @ …] HTTP error 404 File not found", "/dev/fd/N: Server returned 404 Not Found"
    rec = recorder(hls_source.url("ts", tls=tls, path="nothere.m3u8"))
    await assert_trouble(rec, "not_found", "path_not_found", hint_has="cameras[0].url")


async def test_hls_without_password_is_unauthorized(hls_source: HlsSource,
                                                    recorder: Callable[..., SupervisedCamera]) -> None:
    url = hls_source.url("ts", auth=True).replace("viewer:hls-secret@", "viewer:wrong@")
    snap = await assert_trouble(recorder(url), "unauthorized", "auth_failed")
    assert "wrong" not in json.dumps(snap, default=str)  # the password never reaches the status


async def test_hls_https_url_at_the_http_port_is_not_a_camera(hls_source: HlsSource,
                                                              recorder: Callable[..., SupervisedCamera]) -> None:
    # FFmpeg (GnuTLS) gets an HTTP 400 page for its ClientHello: "[tls @ …] An unexpected TLS packet
    # was received.", "/dev/fd/N: Input/output error" → the address answered, not as the scheme says
    port = hls_source.http.server_address[1]
    rec = recorder(f"https://127.0.0.1:{port}/ts/live.m3u8")
    await assert_trouble(rec, "unreachable", "not_a_camera", hint_has="scheme")


async def test_hls_playlist_cannot_make_ffmpeg_read_local_files(hls_source: HlsSource, tmp_path: Path,
                                                                recorder: Callable[..., SupervisedCamera]) -> None:
    # a segment of "another camera" on our disk, named by a playlist from the network
    segment = next((hls_source.root / "ts").glob("*.ts"))
    target = tmp_path / "other-camera.ts"
    target.write_bytes(segment.read_bytes())
    rec = recorder(hls_source.playlist_naming(target))
    # FFmpeg: "[file @ …] Protocol 'file' not on whitelist 'rtsp,…'!", "[hls @ …] Error when loading
    # first segment 'file:///…'", "/dev/fd/N: Invalid data found when processing input"
    await assert_trouble(rec, "unreachable", "not_a_camera")
    assert not list(rec.root.glob("cam-1/*/*.mp4"))


async def test_rtmp_closed_port_is_unreachable(recorder: Callable[..., SupervisedCamera]) -> None:
    # FFmpeg: "[tcp @ …] Connection to tcp://127.0.0.1:P?tcp_nodelay=0 failed: Connection refused",
    # "[rtmp @ …] Cannot open connection tcp://127.0.0.1:P?tcp_nodelay=0", "/dev/fd/N: Connection refused"
    rec = recorder(f"rtmp://127.0.0.1:{free_port()}/live/cam")
    await assert_trouble(rec, "unreachable", "refused")


async def test_rtsps_closed_port_is_unreachable(recorder: Callable[..., SupervisedCamera]) -> None:
    # FFmpeg: "[tcp @ …] Connection to tcp://127.0.0.1:P?timeout=5000000 failed: Connection refused"
    rec = recorder(f"rtsps://127.0.0.1:{free_port()}/stream")
    await assert_trouble(rec, "unreachable", "refused")


async def test_rtsps_wrong_path_is_not_found(rtsps_cam: TestCam, recorder: Callable[..., SupervisedCamera]) -> None:
    # FFmpeg: "[rtsp @ …] method DESCRIBE failed: 404 Not Found" (over TLS)
    rec = recorder(f"rtsps://127.0.0.1:{rtsps_cam.port}/nothere")
    await assert_trouble(rec, "not_found", "path_not_found")


@pytest.mark.parametrize("scheme", ["rtsp", "rtsps"])
async def test_rtsp_and_rtsps_mixed_up_is_not_a_camera(rtsps_cam: TestCam, source_cam: TestCam,
                                                       recorder: Callable[..., SupervisedCamera], scheme: str) -> None:
    # rtsp:// at the TLS port: "/dev/fd/N: Invalid data found when processing input";
    # rtsps:// at a plain RTSP port: "[tls @ …] An unexpected TLS packet was received."
    port = rtsps_cam.port if scheme == "rtsp" else source_cam.port
    rec = recorder(f"{scheme}://127.0.0.1:{port}/stream")
    await assert_trouble(rec, "unreachable", "not_a_camera", hint_has="scheme")
