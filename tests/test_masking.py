"""recorderd.masking: nothing that leaves the process may carry a camera password."""

from __future__ import annotations

import pytest

from recorderd.masking import MASK, mask_text, mask_url, secrets_of


@pytest.mark.parametrize(("url", "masked"), [
    ("rtsp://admin:s3cret@10.0.0.5:554/x", "rtsp://admin:***@10.0.0.5:554/x"),
    ("rtsps://viewer:pw123@cam.example.com/live?channel=1", "rtsps://viewer:***@cam.example.com/live?channel=1"),
    ("rtsp://admin:p%40ss%3Aw0rd@10.0.0.5/x", "rtsp://admin:***@10.0.0.5/x"),  # percent-encoded
    ("rtsp://admin:p@ss@10.0.0.5/x", "rtsp://admin:***@10.0.0.5/x"),  # raw '@' in the password
    ("rtsp://admin:p:ss:w@10.0.0.5/x", "rtsp://admin:***@10.0.0.5/x"),  # raw ':' in the password
    ("rtsp://admin:@10.0.0.5/x", "rtsp://admin:***@10.0.0.5/x"),  # empty password
    ("rtsp://:secret@10.0.0.5/x", "rtsp://:***@10.0.0.5/x"),  # no user
    ("rtsp://admin@10.0.0.5/x", "rtsp://admin@10.0.0.5/x"),  # user only: nothing secret
    ("rtsp://10.0.0.5/x", "rtsp://10.0.0.5/x"),
    ("rtsp://admin:s3cret@[fe80::1]:554/x", "rtsp://admin:***@[fe80::1]:554/x"),
    ("rtsp://10.0.0.5/x?user=admin&password=hunter2", "rtsp://10.0.0.5/x?user=admin&password=***"),
    ("rtsp://10.0.0.5/x?password=hunter2&channel=1", "rtsp://10.0.0.5/x?password=***&channel=1"),
    ("http://h/snap.cgi?usr=a&pwd=hunter2", "http://h/snap.cgi?usr=a&pwd=***"),
    ("http://h/live?token=abc.def-ghi&x=1", "http://h/live?token=***&x=1"),
    ("/api/v1/media/7.mp4?exp=1&p=ops&sig=c2lnbmF0dXJl", "/api/v1/media/7.mp4?exp=1&p=ops&sig=***"),
    ("http://h/live?PassWord=Hunter2", "http://h/live?PassWord=***"),
    ("http://h/live?auth=1&key=k&secret=s&pass=p&passwd=q",
     "http://h/live?auth=***&key=***&secret=***&pass=***&passwd=***"),
    ("rtsp://u:pw1@h/x?token=t0k3n", "rtsp://u:***@h/x?token=***"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_keeps_everything_else() -> None:
    url = "rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101?transportmode=unicast#frag"
    assert mask_url(url) == "rtsp://admin:***@10.0.0.5:554/Streaming/Channels/101?transportmode=unicast#frag"


def test_mask_url_is_idempotent() -> None:
    once = mask_url("rtsp://admin:s3cret@h/x?token=abc")
    assert mask_url(once) == once
    assert mask_text(once) == once


@pytest.mark.parametrize("url", ["rtsp://admin:s3cret@[::1/x", "rtsp://admin:s3cret@h:99999/x", "not a url",
                                 ""])
def test_mask_url_never_raises(url: str) -> None:
    assert "s3cret" not in mask_url(url)


@pytest.mark.parametrize(("url", "secret"), [
    ("rtsp://admin:pa/ss@10.0.0.5/x", "pa/ss"),
    ("rtsp://admin:pa#ss@10.0.0.5/x", "pa#ss"),
    ("rtsp://admin:pa?ss@10.0.0.5/x", "pa?ss"),
    ("rtsp://admin:1234/5678@10.0.0.5/x", "1234/5678"),
])
def test_mask_url_unencoded_delimiters_in_password(url: str, secret: str) -> None:
    assert secret not in mask_url(url)


# --------------------------------------------------------------------------- secrets_of


@pytest.mark.parametrize(("url", "secrets"), [
    ("rtsp://admin:s3cret@h/x", ["s3cret"]),
    ("rtsp://admin:p%40ss%3Aw0rd@h/x", ["p%40ss%3Aw0rd", "p@ss:w0rd"]),  # raw and decoded
    ("rtsp://admin:p@ss@h/x", ["p@ss"]),
    ("rtsp://admin:p:ss@h/x", ["p:ss"]),
    ("rtsp://h/x?user=a&password=hunter2", ["hunter2"]),
    ("rtsp://h/x?token=abc%2Fdef", ["abc%2Fdef", "abc/def"]),
    ("rtsp://u:pw1@h/x?token=t0k3n", ["pw1", "t0k3n"]),
    ("rtsp://admin:ab@h/x", []),  # too short to scrub safely from free text
    ("rtsp://admin@h/x", []),
    ("rtsp://h/x", []),
    ("rtsp://admin:s3cret@h:bad/x", ["s3cret"]),
])
def test_secrets_of(url: str, secrets: list[str]) -> None:
    assert secrets_of(url) == secrets


def test_secrets_of_deduplicates() -> None:
    assert secrets_of("rtsp://admin:same@h/x?password=same") == ["same"]


# --------------------------------------------------------------------------- mask_text

FFMPEG_STDERR = """\
ffmpeg version 5.1.4-0+deb12u1 Copyright (c) 2000-2023 the FFmpeg developers
[rtsp @ 0x55d0c8a3f440] method DESCRIBE failed: 401 Unauthorized
rtsp://admin:s3cret@10.0.0.5:554/x: Server returned 401 Unauthorized (authorization failed)
Input #0, rtsp, from 'rtsp://admin:s3cret@10.0.0.5:554/x':
  Metadata:
    title           : Session streamed by "preview"
  Duration: N/A, start: 0.000000, bitrate: N/A
Output #0, segment, to '/srv/rec/cam1/%Y-%m-%d/%H-%M-%S.mp4':
[tcp @ 0x55] Connection to tcp://10.0.0.5:554?timeout=10000000 failed: Connection refused
"""


def test_mask_text_ffmpeg_stderr() -> None:
    out = mask_text(FFMPEG_STDERR)
    assert "s3cret" not in out
    assert "Input #0, rtsp, from 'rtsp://admin:***@10.0.0.5:554/x':" in out
    assert "rtsp://admin:***@10.0.0.5:554/x: Server returned 401 Unauthorized" in out
    # lines without credentials are untouched
    assert "[rtsp @ 0x55d0c8a3f440] method DESCRIBE failed: 401 Unauthorized" in out
    assert "Output #0, segment, to '/srv/rec/cam1/%Y-%m-%d/%H-%M-%S.mp4':" in out
    assert "tcp://10.0.0.5:554?timeout=10000000 failed" in out


@pytest.mark.parametrize(("text", "expected"), [
    ("Input #0, rtsp, from 'rtsp://admin:s3cret@10.0.0.5:554/x':",
     "Input #0, rtsp, from 'rtsp://admin:***@10.0.0.5:554/x':"),
    ('url="rtsp://admin:s3cret@h/x"', 'url="rtsp://admin:***@h/x"'),
    ("a rtsp://u:p1@h/1 and rtsps://v:p2@g/2 end", "a rtsp://u:***@h/1 and rtsps://v:***@g/2 end"),
    ("http://h/x?user=admin&password=hunter2 failed", "http://h/x?user=admin&password=*** failed"),
    ("GET /snap?pwd=hunter2&x=1", "GET /snap?pwd=***&x=1"),
    ("rtsp://admin:p%40ss@h/x", "rtsp://admin:***@h/x"),
    ("rtsp://admin:p:ss@h/x", "rtsp://admin:***@h/x"),
    ("rtsp://admin:@h/x", "rtsp://admin:***@h/x"),
    ("mail me at user@example.com", "mail me at user@example.com"),
    ("time 12:30:45@host", "time 12:30:45@host"),
    ("no secrets here", "no secrets here"),
])
def test_mask_text_patterns(text: str, expected: str) -> None:
    assert mask_text(text) == expected


def test_mask_text_with_known_secrets() -> None:
    url = "rtsp://admin:s3cret@10.0.0.5/x"
    text = "auth failed for password s3cret (length 6); retrying s3cret"
    assert mask_text(text, secrets_of(url)) == "auth failed for password *** (length 6); retrying ***"


def test_mask_text_decoded_secret() -> None:
    url = "rtsp://admin:p%40ss%3Aw0rd@10.0.0.5/x"
    text = "camera said: bad password 'p@ss:w0rd'"
    out = mask_text(text, secrets_of(url))
    assert "p@ss:w0rd" not in out and out == f"camera said: bad password '{MASK}'"


def test_mask_text_longest_secret_first() -> None:
    assert mask_text("abcdef and abc", ["abc", "abcdef"]) == "*** and ***"


def test_mask_text_ignores_empty_secret() -> None:
    assert mask_text("hello", ["", "zzz"]) == "hello"


def test_mask_text_raw_colon_password_with_secrets() -> None:
    url = "rtsp://admin:p:ss:word@10.0.0.5/x"
    line = f"Input #0, rtsp, from '{url}':"
    out = mask_text(line, secrets_of(url))
    assert "p:ss:word" not in out and "ss:word" not in out
    assert out == "Input #0, rtsp, from 'rtsp://admin:***@10.0.0.5/x':"


def test_mask_text_raw_at_password_with_secrets() -> None:
    url = "rtsp://admin:p@ssw0rd@10.0.0.5/x"
    line = f"Input #0, rtsp, from '{url}':"
    out = mask_text(line, secrets_of(url))
    assert "ssw0rd" not in out


def test_mask_text_multiline_each_line() -> None:
    text = "\n".join(f"line {i} rtsp://admin:s3cret{i}@h/x" for i in range(5))
    out = mask_text(text)
    assert "s3cret" not in out and out.count(MASK) == 5 and out.count("\n") == 4
