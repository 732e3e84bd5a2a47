"""``diagnose``: FFmpeg's stderr (lines as FFmpeg 5.1 prints them, via our concat input) to a state,
a cause and a hint that names the config key to fix."""

from __future__ import annotations

import dataclasses

import pytest

from recorderd.config import parse_text
from recorderd.diagnose import Diagnosis, diagnose, hint, input_codecs

CONCAT = "[concat @ 0x55e3706619c0] Impossible to open 'rtsp://u:s3cret@10.0.0.9:554/stream'"

CASES = [
    (["[rtsp @ 0x1] method DESCRIBE failed: 401 Unauthorized", CONCAT,
      "/dev/fd/3: Server returned 401 Unauthorized (authorization failed)"], "unauthorized", "auth_failed"),
    (["[rtsp @ 0x1] method DESCRIBE failed: 403 Forbidden", CONCAT, "/dev/fd/3: Server returned 403 Forbidden "
      "(access denied)"], "unauthorized", "forbidden"),
    (["[rtsp @ 0x1] method DESCRIBE failed: 404 Not Found", CONCAT, "/dev/fd/3: Server returned 404 Not Found"],
     "not_found", "path_not_found"),
    (["[http @ 0x1] HTTP error 404 Not Found", "/dev/fd/3: Server returned 404 Not Found"], "not_found",
     "path_not_found"),
    (["[rtsp @ 0x1] method DESCRIBE failed: 503 Service Unavailable", CONCAT,
      "/dev/fd/3: Server returned 5XX Server Error reply"], "unreachable", "busy"),
    (["[tcp @ 0x1] Connection to tcp://127.0.0.1:18555?timeout=3000000 failed: Connection refused", CONCAT,
      "/dev/fd/3: Connection refused"], "unreachable", "refused"),
    (["[tcp @ 0x1] Failed to resolve hostname nosuch.invalid: Name or service not known", CONCAT,
      "/dev/fd/3: Input/output error"], "unreachable", "dns"),
    (["[tcp @ 0x1] Connection to tcp://10.0.0.9:554?timeout=3000000 failed: No route to host"], "unreachable",
     "no_route"),
    (["[tcp @ 0x1] Connection to tcp://10.0.0.9:554?timeout=3000000 failed: Connection timed out"],
     "unreachable", "timeout"),
    ([CONCAT, "/dev/fd/3: Invalid data found when processing input"], "unreachable", "not_a_camera"),
    (["  Stream #0:0: Video: vp8, yuv420p(tv, bt470bg/unknown/unknown), 320x240, 10 fps, 10 tbr, 90k tbn",
      "[mp4 @ 0x1] Tag hvc1 incompatible with output codec id '139' ([0][0][0][0])",
      "Could not write header for output file #0 (incorrect codec parameters ?): Invalid argument"],
     "unsupported", "codec"),
    (["Stream map '0:v:0' matches no streams."], "unsupported", "no_video"),
    # other sources (issue 13), as FFmpeg 5.1 printed them against the servers of test_sources.py
    (["[https @ 0x1] HTTP error 404 File not found",
      "[concat @ 0x2] Impossible to open 'https://127.0.0.1:45429/ts/nothere.m3u8'",
      "/dev/fd/15: Server returned 404 Not Found"], "not_found", "path_not_found"),
    (["[http @ 0x1] HTTP error 401 Unauthorized", "[concat @ 0x2] Impossible to open 'http://v:***@h/x.m3u8'",
      "/dev/fd/15: Server returned 401 Unauthorized (authorization failed)"], "unauthorized", "auth_failed"),
    (["[tcp @ 0x1] Connection to tcp://127.0.0.1:47647?tcp_nodelay=0 failed: Connection refused",
      "[rtmp @ 0x2] Cannot open connection tcp://127.0.0.1:47647?tcp_nodelay=0",
      "[concat @ 0x3] Impossible to open 'rtmp://127.0.0.1:47647/live/cam'", "/dev/fd/15: Connection refused"],
     "unreachable", "refused"),
    (["[rtmp @ 0x1] Cannot read RTMP handshake response",  # accepts, never answers
      "[concat @ 0x2] Impossible to open 'rtmp://127.0.0.1:28090/live/cam'", "/dev/fd/3: Connection timed out"],
     "unreachable", "timeout"),
    # nginx-rtmp (idle_streams off) answers play with NetStream.Play.StreamNotFound, description
    # "Live stream not found"; FFmpeg's rtmpproto prints the description (the code when there is none)
    (["[rtmp @ 0x1] Server error: Live stream not found", "/dev/fd/3: Operation not permitted"],
     "not_found", "path_not_found"),
    (["[rtmp @ 0x1] Server error: NetStream.Play.StreamNotFound", "/dev/fd/3: Operation not permitted"],
     "not_found", "path_not_found"),
    (["[tls @ 0x1] An unexpected TLS packet was received.",  # rtsps:// or https:// at a plain port
      "[concat @ 0x2] Impossible to open 'rtsps://127.0.0.1:33009/stream'", "/dev/fd/15: Input/output error"],
     "unreachable", "not_a_camera"),
    (["[file @ 0x1] Protocol 'file' not on whitelist 'rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https'!",
      "[hls @ 0x2] Error when loading first segment 'file:///srv/rec/cam-2/2026-01-01/00-00-00.mp4'",
      "[concat @ 0x3] Impossible to open 'http://relay/cam/live.m3u8'",
      "/dev/fd/15: Invalid data found when processing input"], "unreachable", "not_a_camera"),
    (["something odd happened"], "error", "unknown"),
    ([], "error", "unknown"),
]


@pytest.mark.parametrize(("lines", "state", "cause"), CASES)
def test_each_failure_names_its_state_and_cause(lines: list[str], state: str, cause: str) -> None:
    d = diagnose(lines)
    assert (d.state, d.cause) == (state, cause)
    assert (d.line in lines) if lines else d.line == ""


def test_the_server_answer_wins_over_the_connection_error_printed_after_it() -> None:
    # MediaMTX: the path's publisher is away, FFmpeg then also prints an I/O error
    d = diagnose(["[rtsp @ 0x1] method DESCRIBE failed: 404 Not Found", "/dev/fd/3: Input/output error"])
    assert (d.state, d.cause) == ("not_found", "path_not_found")


def test_a_silent_camera_is_a_timeout_not_a_wrong_port() -> None:
    lines = [CONCAT, "/dev/fd/3: Invalid data found when processing input"]
    assert diagnose(lines, lasted=0.2, timeout=10).cause == "not_a_camera"  # answered at once, not RTSP
    assert (diagnose(lines, lasted=10.1, timeout=10).state, diagnose(lines, lasted=10.1, timeout=10).cause) == (
        "unreachable", "timeout")  # accepted TCP, then said nothing until FFmpeg's socket timeout


def test_a_refused_codec_says_which_and_whether_it_is_audio() -> None:
    vp8 = diagnose(["  Stream #0:0: Video: vp8, yuv420p, 320x240", "[mp4 @ 0x1] Tag hvc1 incompatible with "
                    "output codec id '139' ([0][0][0][0])"])
    assert (vp8.codec, vp8.audio) == ("vp8", False)
    alaw = diagnose(["[mp4 @ 0x1] Could not find tag for codec pcm_alaw in stream #1, codec not currently "
                     "supported in container"])
    assert (alaw.state, alaw.codec, alaw.audio) == ("unsupported", "pcm_alaw", True)


def test_input_codecs_reads_the_input_dump() -> None:
    lines = ["Input #0, concat, from '/dev/fd/3':", "  Duration: N/A, start: 0.000000, bitrate: N/A",
             "  Stream #0:0: Video: hevc (Main), yuv420p(tv), 320x240, 10 fps, 10 tbr, 90k tbn",
             "  Stream #0:1: Audio: pcm_alaw, 8000 Hz, mono, s16, 64 kb/s",
             "  Stream #0:0 -> #0:0 (copy)"]
    assert input_codecs(lines) == {"video": "hevc", "audio": "pcm_alaw"}


CONFIG = """
storage: {root: /tmp/x}
cameras:
  - {id: a, url: "rtsp://10.0.0.8/s"}
  - {id: b, url: "rtsp://admin:s3cret@10.0.0.9/s"}
"""


def test_hints_name_the_key_to_fix_and_never_the_password() -> None:
    cam = parse_text(CONFIG).cameras[1]
    for _lines, state, cause in CASES:
        text = hint(Diagnosis(state, cause, codec="vp8"), cam, retry="next try in 60s")
        assert text.endswith("; next try in 60s") and "s3cret" not in text
    assert "check them in cameras[1].url" in hint(Diagnosis("unauthorized", "auth_failed"), cam)
    assert "check the path in cameras[1].url" in hint(Diagnosis("not_found", "path_not_found"), cam)
    assert "set audio: auto" in hint(Diagnosis("unsupported", "codec", codec="pcm_alaw", audio=True), cam)
    assert "vp8 video cannot be stored in MP4" in hint(Diagnosis("unsupported", "codec", codec="vp8"), cam)
    assert "camera b" in hint(Diagnosis("not_found", "path_not_found"), dataclasses.replace(cam, index=-1))
