from dataclasses import replace

import pytest

from recorderd import ffmpeg
from recorderd.config import parse_text

CFG = """
storage: {root: /srv/rec}
cameras:
  - {id: cam-1, url: "rtsp://admin:s3cret@10.0.0.5:554/stream1", segment_seconds: 2, timeout_seconds: 5}
  - {id: cam-2, url: "rtsp://10.0.0.6/x", audio: false, rtsp_transport: udp}
  - {id: cam-3, url: "rtsp://10.0.0.7/x", audio: aac}
"""


@pytest.fixture(scope="module")
def cams():  # type: ignore[no-untyped-def]
    return parse_text(CFG).cameras


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_command_stream_copies_and_segments_on_the_clock(cams) -> None:  # type: ignore[no-untyped-def]
    argv = ffmpeg.build_command(cams[0])
    assert _opt(argv, "-c:v") == "copy"
    assert _opt(argv, "-tag:v") == "hvc1"  # H.265 plays in browsers; H.264 keeps avc1 (the muxer's rule)
    assert _opt(argv, "-c:a") == "copy"  # audio: auto starts by copying
    assert _opt(argv, "-timeout") == "5000000"  # microseconds: bounds a frozen camera
    assert _opt(argv, "-rtsp_transport") == "tcp"
    assert _opt(argv, "-segment_time") == "2"
    assert _opt(argv, "-segment_atclocktime") == "1"
    assert _opt(argv, "-segment_list") == "pipe:1"
    assert "flush_packets=1" in _opt(argv, "-segment_format_options")
    assert "frag_keyframe" in _opt(argv, "-segment_format_options")
    assert argv[-1] == "%Y-%m-%d/%H-%M-%S.mp4"
    assert "-nostdin" not in argv  # 'q' on stdin is how we stop it cleanly


def test_command_audio_modes(cams) -> None:  # type: ignore[no-untyped-def]
    off = ffmpeg.build_command(cams[1])
    assert "-an" in off and "0:a:0?" not in off
    assert _opt(off, "-rtsp_transport") == "udp"
    aac = ffmpeg.build_command(cams[2])
    assert _opt(aac, "-c:a") == "aac"
    forced = ffmpeg.build_command(cams[0], audio_mode="aac")
    assert _opt(forced, "-c:a") == "aac"


def test_command_for_non_rtsp_has_no_rtsp_options(cams) -> None:  # type: ignore[no-untyped-def]
    cam = replace(cams[0], url="http://10.0.0.9/video.mjpg")
    argv = ffmpeg.build_command(cam)
    assert "-rtsp_transport" not in argv and "-rw_timeout" in argv


@pytest.mark.parametrize(("line", "expected"), [
    ("12-24-36.mp4,4.134668,6.134668\n", ffmpeg.ListEntry("12-24-36.mp4", 4.134668, 6.134668)),
    ('"we,ird.mp4",0.0,2.5', ffmpeg.ListEntry("we,ird.mp4", 0.0, 2.5)),
    ("", None),
    ("garbage", None),
    ("a.mp4,3,2", None),  # end before start
    ("a.mp4,x,2", None),
])
def test_parse_list_line(line: str, expected: ffmpeg.ListEntry | None) -> None:
    assert ffmpeg.parse_list_line(line) == expected


def test_consecutive_list_lines_tile() -> None:
    lines = ["a.mp4,0.000000,4.134668", "b.mp4,4.134668,6.134668", "c.mp4,6.134668,8.134668"]
    entries = [ffmpeg.parse_list_line(x) for x in lines]
    assert all(e is not None for e in entries)
    for prev, nxt in zip(entries, entries[1:], strict=False):
        assert prev is not None and nxt is not None and prev.end == nxt.start


def test_parse_opening() -> None:
    assert ffmpeg.parse_opening("[segment @ 0x55b1d73b2080] Opening '2026-11-21/12-24-35.mp4' for writing") \
        == "2026-11-21/12-24-35.mp4"
    assert ffmpeg.parse_opening("[segment @ 0x55a2f7665300] Opening 'pipe:1' for writing") is None
    assert ffmpeg.parse_opening("Input #0, rtsp, from 'rtsp://x'") is None


def test_audio_refused() -> None:
    line = ("[mp4 @ 0x1] Could not find tag for codec pcm_alaw in stream #1, "
            "codec not currently supported in container")
    assert ffmpeg.audio_refused([line]) == "pcm_alaw"
    assert ffmpeg.audio_refused(["all fine"]) is None


def test_camera_address_defaults() -> None:
    assert ffmpeg.camera_address("rtsp://u:p@cam.local/x") == ("cam.local", 554)
    assert ffmpeg.camera_address("rtsp://10.0.0.5:8554/x") == ("10.0.0.5", 8554)
    assert ffmpeg.camera_address("file:///tmp/x") is None


@pytest.mark.parametrize(("url", "timeout_option", "needs"), [
    ("rtsp://10.0.0.5/stream", "timeout", {"rtsp", "rtp", "udp", "tcp"}),
    ("rtsps://10.0.0.5:322/stream", "timeout", {"rtsps", "tls", "tcp"}),
    ("http://relay:8888/cam/index.m3u8", "rw_timeout", {"http", "tcp", "crypto"}),  # crypto: AES-128 HLS
    ("https://relay:8443/cam/index.m3u8", "rw_timeout", {"https", "tls", "tcp", "crypto", "httpproxy"}),
    ("rtmp://relay/live/cam", "rw_timeout", {"rtmp", "tcp"}),  # rtmp's own -timeout means *listen*
])
def test_input_options_per_source(cams, url: str, timeout_option: str, needs: set[str]) -> None:  # type: ignore[no-untyped-def]
    cam = replace(cams[0], url=url)
    opts = dict(ffmpeg.input_options(cam))
    assert opts.pop(timeout_option) == "5000000"  # timeout_seconds: 5, in microseconds
    assert ("rtsp_transport" in opts) == url.startswith("rtsp")
    whitelist = opts.pop("protocol_whitelist").split(",")
    assert needs <= set(whitelist) and "file" not in whitelist
    assert set(opts) <= {"rtsp_transport"}
    # the concat script may open itself (file) and what the camera needs, no more
    assert set(ffmpeg.INPUT_PROTOCOLS.split(",")) == {"file", *whitelist}


def test_input_script_keeps_url_out_of_argv_and_local_files_out_of_the_camera(cams) -> None:  # type: ignore[no-untyped-def]
    cam = replace(cams[0], url="https://viewer:pw@relay:8443/cam/index.m3u8")
    script = ffmpeg.input_script(cam).decode().splitlines()
    assert script[:2] == ["ffconcat version 1.0", "file 'https://viewer:pw@relay:8443/cam/index.m3u8'"]
    # an HLS playlist's segments are opened with the camera input's whitelist: without it, a
    # playlist could name file:///srv/... and FFmpeg would record another camera's footage
    assert f"option protocol_whitelist {ffmpeg.CAMERA_PROTOCOLS}" in script
    assert "option rw_timeout 5000000" in script
    argv = ffmpeg.build_command(cam, via_pipe=True)
    assert not any("relay" in a or "viewer" in a for a in argv)
    assert _opt(argv, "-protocol_whitelist") == ffmpeg.INPUT_PROTOCOLS
