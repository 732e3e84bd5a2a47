"""``recorderd probe``: one connection through the daemon's concat-on-a-pipe input, a report of what
the camera sends, the state it would be in with its exit code, and warnings; never the password.

Pure helpers are tested with numbers; the command against real test cameras and real ffprobe, each
probe measuring 2 s."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_cam import TestCam, free_port
from util import camera_doc, write_config

from recorderd import camprobe, cli
from recorderd.config import parse_config

integration = pytest.mark.integration

USER, PASSWORD = "admin", "Pr0be&S3cret!"  # percent-encoded in the URL: both spellings must stay hidden
SECRETS = (PASSWORD, "Pr0be%26S3cret%21")
SECONDS = "2"


def camera(**extra: Any) -> Any:
    doc = {"storage": {"root": "/srv/rec"}, "metrics": {"listen": None},
           "cameras": [{"id": "cam", "url": "rtsp://u:pw12345@10.0.0.9/s", **extra},
                       {"id": "other", "url": "rtsp://10.0.0.8/s", "retention_days": 21}]}
    return parse_config(doc).cameras[0]


def ffprobe_json(codec: str = "h264", audio: str | None = "aac", fps: float = 10, gop: int = 5,
                 seconds: float = 2, size: int = 1000) -> dict[str, Any]:
    streams = [{"index": 0, "codec_type": "video", "codec_name": codec, "profile": "Main", "width": 640,
                "height": 480, "avg_frame_rate": f"{fps:g}/1"}]
    if audio:
        streams.append({"index": 1, "codec_type": "audio", "codec_name": audio})
    n = int(seconds * fps)
    packets = [{"stream_index": 0, "dts_time": f"{i / fps:.6f}", "size": str(size),
                "flags": "K_" if i % gop == 0 else "__"} for i in range(n)]
    del packets[0]["dts_time"]  # FFmpeg often has no timestamp for the first RTSP packet
    return {"packets": packets, "streams": streams}


# ------------------------------------------------------------------ pure helpers


def test_keyframe_interval_bitrate_and_missing_timestamps() -> None:
    assert camprobe.keyframe_interval([0.0, 2.0, 4.0, 7.0]) == (pytest.approx(7 / 3), 3.0)
    assert camprobe.keyframe_interval([1.0]) is None
    assert camprobe.fill_times([None, 0.1, 0.2, None, 0.4]) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert camprobe.fill_times([None, 0.5]) == [None, 0.5]  # nothing to measure a step from
    # 10 frames of 1000 bytes, 0.1 s apart: 10 kB in 1 s
    assert camprobe.bitrate_kbps(10_000, 0.0, 0.9, 0.1) == pytest.approx(80.0)
    assert camprobe.bitrate_kbps(10, 1.0, 1.0, 0.0) is None


def test_disk_share_by_retention_days_and_max_bytes() -> None:
    cam = camera(retention_days=7)
    others = parse_config({"storage": {"root": "/r"}, "metrics": {"listen": None}, "cameras": [
        {"id": "cam", "url": "rtsp://h/s", "retention_days": 7},
        {"id": "b", "url": "rtsp://h/s", "retention_days": 21}]}).cameras
    # (1100 - 100) split 7:21 -> 250
    assert camprobe.disk_share(1100, 100, cam, others) == 250
    assert camprobe.disk_share(1100, 100, camera(retention_days=7, max_bytes=100), others) == 100
    assert camprobe.disk_share(50, 100, cam, others) == 0  # floor above the filesystem: no share
    # 1000 kbit/s = 125 kB/s = 10.8 GB/day
    assert camprobe.share_days(10_800_000_000, 1000) == pytest.approx(1.0)
    assert camprobe.share_days(1, 0) is None


def test_assess_recording_fields_and_warnings() -> None:
    r = camprobe.assess(camera(stall_seconds=0.4), ffprobe_json(codec="hevc"), [], seconds=2, elapsed=3)
    assert r["state"] == "recording" and r["exit_code"] == 0 and r["hint"] is None
    v = r["video"]
    assert (v["codec"], v["width"], v["height"], v["fps"]) == ("hevc", 640, 480, 10.0)
    assert v["keyframe_interval_s"] == pytest.approx(0.5) and v["keyframe_interval_max_s"] == pytest.approx(0.5)
    assert r["bitrate_kbps"] == pytest.approx(80.0, rel=0.01)
    assert r["audio"] == {"codec": "aac", "mode": "copy", "setting": "auto"}
    assert r["url"] == "rtsp://u:***@10.0.0.9/s" and r["disk_share"] is None
    assert any("stall_seconds (0.4 s)" in w for w in r["warnings"])
    assert any("Firefox does not" in w for w in r["warnings"])
    text = camprobe.render(r)
    assert "video:" in text and "hevc (Main), 640x480, 10 fps" in text and "keyframes:" in text


def test_assess_audio_modes() -> None:
    def mode(setting: str, codec: str | None) -> tuple[str, str]:
        r = camprobe.assess(camera(audio=setting), ffprobe_json(audio=codec), [], seconds=2, elapsed=3)
        return r["audio"]["mode"], r["state"]

    assert mode("auto", "pcm_alaw") == ("aac", "recording")
    assert mode("auto", "aac") == ("copy", "recording")
    assert mode("aac", "aac") == ("aac", "recording")
    assert mode("off", "pcm_mulaw") == ("off", "recording")
    assert mode("auto", None) == ("none", "recording")
    assert mode("copy", "pcm_alaw") == ("unsupported", "unsupported")
    r = camprobe.assess(camera(audio="copy"), ffprobe_json(audio="pcm_alaw"), [], seconds=2, elapsed=3)
    assert "pcm_alaw audio cannot be copied" in r["hint"] and "cameras[0]" in r["hint"]
    assert "pcm_alaw -> refused by MP4 (audio: copy)" in camprobe.render(r)


def test_assess_troubles_without_video() -> None:
    cam = camera(timeout_seconds=3)
    # FFmpeg 5.1 says "Invalid data found" when an RTSP reply never comes: a timeout when it took that long
    lines = ["[concat @ 0x1] Impossible to open 'rtsp://u:pw12345@10.0.0.9/s'",
             "/dev/fd/3: Invalid data found when processing input"]
    assert camprobe.assess(cam, None, lines, seconds=2, elapsed=3.1)["cause"] == "timeout"
    r = camprobe.assess(cam, None, lines, seconds=2, elapsed=0.2)
    assert (r["state"], r["cause"], r["exit_code"]) == ("unreachable", "not_a_camera", 5)
    assert r["ffmpeg_line"] is not None and "pw12345" not in json.dumps(r)
    assert camprobe.assess(cam, None, ["odd"], seconds=2, elapsed=20, timed_out=True)["cause"] == "timeout"
    r = camprobe.assess(cam, None, ["odd"], seconds=2, elapsed=1)
    assert (r["state"], r["exit_code"], r["ffmpeg_line"]) == ("error", 1, "odd") and "recognise" in r["hint"]
    audio_only = {"packets": [], "streams": [{"index": 0, "codec_type": "audio", "codec_name": "aac"}]}
    assert camprobe.assess(cam, audio_only, [], seconds=2, elapsed=3)["cause"] == "no_video"
    silent = {**ffprobe_json(), "packets": []}
    assert camprobe.assess(cam, silent, [], seconds=2, elapsed=3)["cause"] == "no_media"
    one_key = ffprobe_json(gop=100)
    r = camprobe.assess(camera(stall_seconds=1), one_key, [], seconds=2, elapsed=3)
    assert r["video"]["keyframe_interval_s"] is None
    assert any("fewer than two keyframes in 2 s" in w and "stall_seconds (1 s)" in w for w in r["warnings"])


def test_assess_disk_share_warning() -> None:
    cfg = parse_config({"storage": {"root": "/srv/rec"}, "metrics": {"listen": None}, "cameras": [
        {"id": "cam", "url": "rtsp://h/s", "retention_days": 30}, {"id": "b", "url": "rtsp://h/s"}]})
    # 80 kbit/s = 864 MB/day; a share of 30/37 of 10 GB holds about 9.4 days
    r = camprobe.assess(cfg.cameras[0], ffprobe_json(), [], seconds=2, elapsed=3, config=cfg,
                        usage=(11_000_000_000, 1_000_000_000))
    assert r["disk_share"]["days"] == pytest.approx(9.4, abs=0.1)
    assert any("fewer than its retention of 30 days (plan basic)" in w for w in r["warnings"])
    # ten times the room: 30/37 of 100 GB holds 94 days
    r = camprobe.assess(cfg.cameras[0], ffprobe_json(), [], seconds=2, elapsed=3, config=cfg,
                        usage=(101_000_000_000, 1_000_000_000))
    assert r["disk_share"]["days"] == pytest.approx(93.8, abs=0.1) and r["warnings"] == []


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["probe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "3 unauthorized" in out and "6 unsupported" in out and "--seconds" in out


def test_bad_arguments_and_url_exit_2(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["probe"]) == 2
    assert cli.main(["probe", "ftp://admin:Topsecret1@cam/x"]) == 2
    err = capfd.readouterr().err
    assert "URL: unsupported scheme 'ftp'" in err and "Topsecret1" not in err
    cfg = write_config(tmp_path / "cameras.yaml", tmp_path, [camera_doc("front", "rtsp://127.0.0.1:1/x")])
    assert cli.main(["probe", "--config", str(cfg), "--camera", "back"]) == 2
    assert "no camera 'back' (known: front)" in capfd.readouterr().err
    assert cli.main(["probe", "--config", str(cfg), "--camera", "front", "--seconds", "0"]) == 2


# ------------------------------------------------------------------ real cameras


@pytest.fixture(scope="module")
def cam() -> Iterator[TestCam]:
    """H.264 with AAC behind a password, a keyframe every 0.5 s."""
    c = TestCam(fps=10, gop=5, audio="aac", user=USER, password=PASSWORD)
    c.start(timeout=30)  # once for the module: a loaded box is given time (10 s was once not enough)
    try:
        yield c
    finally:
        c.stop()


def probe(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["probe", "--seconds", SECONDS, *argv])
    out, err = capfd.readouterr()
    for secret in SECRETS:
        assert secret not in out + err
    return code, out + err


def fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


@integration
def test_working_camera(cam: TestCam, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []
    spawn = camprobe.spawn

    async def recording_spawn(argv: list[str], **kw: Any) -> Any:
        argvs.append(argv)
        return await spawn(argv, **kw)

    monkeypatch.setattr(camprobe, "spawn", recording_spawn)
    code, text = probe(capfd, cam.url)
    assert code == 0, text
    f = fields(text)
    assert f["url"] == f"rtsp://{USER}:***@127.0.0.1:{cam.port}/stream"
    assert f["video"].startswith("h264 (") and "320x240, 10 fps" in f["video"]
    assert f["keyframes"] == "every 0.50 s (max 0.50 s)"
    assert f["audio"] == "aac -> copied" and f["state"].startswith("recording")
    assert int(f["bitrate"].split()[0]) > 0
    assert argvs and not any("rtsp" in a and "127.0.0.1" in a for a in argvs[0])  # the URL went by pipe

    monkeypatch.setattr("sys.stdin", io.StringIO(cam.url + "\n"))  # "-": the URL stays out of ps
    code, text = probe(capfd, "-", "--json")
    r = json.loads(text)
    assert code == 0 and r["state"] == "recording" and r["exit_code"] == 0
    assert r["video"]["codec"] == "h264" and (r["video"]["width"], r["video"]["height"]) == (320, 240)
    assert r["video"]["fps"] == pytest.approx(10, abs=0.5)
    assert r["video"]["keyframe_interval_s"] == pytest.approx(0.5, abs=0.05)
    assert r["bitrate_kbps"] > 0 and r["audio"]["mode"] == "copy" and r["disk_share"] is None
    assert r["warnings"] == []


@integration
def test_wrong_password_path_and_closed_port(cam: TestCam, capfd: pytest.CaptureFixture[str]) -> None:
    code, text = probe(capfd, cam.url.replace("Pr0be%26S3cret%21", "Wr0ngPass%21"), "--json")
    r = json.loads(text)
    assert (code, r["state"], r["cause"]) == (3, "unauthorized", "auth_failed")
    assert "check them in the URL" in r["hint"] and "401 Unauthorized" in r["ffmpeg_line"]
    assert "Wr0ngPass" not in text and r["url"] == f"rtsp://{USER}:***@127.0.0.1:{cam.port}/stream"

    code, text = probe(capfd, cam.url.replace("/stream", "/nope"))
    f = fields(text)
    assert code == 4 and f["state"] == "not_found (path_not_found)"
    assert "check the path in the URL" in f["hint"] and "404 Not Found" in f["ffmpeg said"]

    code, text = probe(capfd, f"rtsp://{USER}:Pr0be%26S3cret%21@127.0.0.1:{free_port()}/stream")
    f = fields(text)
    assert code == 5 and f["state"] == "unreachable (refused)" and "Connection refused" in f["ffmpeg said"]


@integration
def test_config_camera_disk_share_and_stall(cam: TestCam, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    # 99 % of the filesystem is the free-space floor, and ten years of retention: the share cannot hold it
    cfg = write_config(tmp_path / "cameras.yaml", tmp_path, [
        camera_doc("front", cam.url, retention_days=3650, stall_seconds=0.3),
        camera_doc("back", "rtsp://127.0.0.1:1/x")], storage={"root": str(tmp_path), "min_free_percent": 99})
    code, text = probe(capfd, "--config", str(cfg), "--camera", "front")
    assert code == 0, text
    f = fields(text)
    assert f["camera"] == "front" and "retention 3650 days" in f["disk share"]
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert any("fewer than its retention of 3650 days (plan basic)" in w for w in warnings), text
    assert any("longer than stall_seconds (0.3 s)" in w and "cameras[0]" in w for w in warnings), text


@integration
def test_h265_alaw_and_vp8(capfd: pytest.CaptureFixture[str], testcam_factory: Any) -> None:
    hevc = testcam_factory(fps=10, gop=5, codec="h265")
    alaw = testcam_factory(fps=10, gop=5, audio="alaw")
    vp8 = testcam_factory(fps=10, gop=5, codec="vp8")

    code, text = probe(capfd, hevc.url, "--json")
    r = json.loads(text)
    assert code == 0 and r["video"]["codec"] == "hevc" and r["audio"]["mode"] == "none"
    assert r["warnings"] == ["H.265: Chrome/Edge/Safari with hardware support play it; Firefox does not"]

    code, text = probe(capfd, alaw.url)
    assert code == 0 and fields(text)["audio"] == "pcm_alaw -> transcoded to AAC (audio: auto)"

    code, text = probe(capfd, vp8.url)
    f = fields(text)
    assert code == 6 and f["state"] == "unsupported (codec)"
    assert f["hint"] == "vp8 video cannot be stored in MP4: set the camera to H.264 or H.265"


@integration
def test_silent_camera_is_a_timeout(tmp_path: Path, capfd: pytest.CaptureFixture[str], testcam_factory: Any,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    silent = testcam_factory(fps=10, gop=5)
    silent.hang()  # accepts TCP (the kernel does), answers nothing
    cfg = write_config(tmp_path / "cameras.yaml", tmp_path, [
        camera_doc("quick", silent.url, timeout_seconds=1), camera_doc("patient", silent.url, timeout_seconds=60)])
    # FFmpeg gives up after the camera's timeout, saying "Invalid data found": the probe calls it a timeout
    code, text = probe(capfd, "--config", str(cfg), "--camera", "quick")
    assert code == 5 and fields(text)["state"] == "unreachable (timeout)", text

    # past the probe's own limit, ffprobe is killed
    procs: list[Any] = []
    spawn = camprobe.spawn

    async def keep(argv: list[str], **kw: Any) -> Any:
        procs.append(await spawn(argv, **kw))
        return procs[-1]

    monkeypatch.setattr(camprobe, "spawn", keep)
    monkeypatch.setattr(camprobe, "limit", lambda camera, seconds: 0.5)
    code, text = probe(capfd, "--config", str(cfg), "--camera", "patient", "--json")
    assert (code, json.loads(text)["cause"]) == (5, "timeout")
    assert procs[0].returncode == -9
