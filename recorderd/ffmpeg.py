"""FFmpeg command line and the two streams it talks back on.

stdout carries the segment list (``name,start,end`` per closed segment, stream seconds); stderr
carries ``Opening '<file>' for writing`` the moment a segment is opened, plus the errors that tell
what is wrong with a camera (read by ``diagnose``). Everything here is pure so it is unit-tested without FFmpeg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from recorderd.config import Camera
from recorderd.layout import FFMPEG_PATTERN

# Codecs the MP4 muxer accepts as-is; anything else (G.711 from most IP cameras) needs AAC.
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"})

FRAG_OPTIONS = "movflags=+frag_keyframe+empty_moov+default_base_moof:flush_packets=1"


INPUT_FD = "{input_fd}"  # replaced by the fd number of the pipe carrying the input script
# what the camera input, and everything it opens in turn, may use: config only admits
# rtsp/rtsps/http/https/rtmp camera URLs. RTSPS and HTTPS run over tls; an HLS playlist's segments
# are opened with the playlist's whitelist (crypto for AES-128 segments); rtmps for completeness.
# Never ``file``: a playlist from the network could then name local files (other cameras' footage)
# and FFmpeg would read them into this camera's recording.
CAMERA_PROTOCOLS = "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https,httpproxy,crypto,rtmp,rtmps"
# what the one-entry concat script may open: the script itself (file, a /dev/fd path), and the
# camera's protocols (the script's ``option protocol_whitelist`` narrows the camera input to those)
INPUT_PROTOCOLS = "file," + CAMERA_PROTOCOLS


def input_options(camera: Camera) -> list[tuple[str, str]]:
    """Demuxer/protocol options of the camera input: protocol whitelist, I/O timeout, RTSP transport.

    The timeout bounds connecting and every read, in microseconds: ``timeout`` for RTSP(S) (its
    socket timeout), ``rw_timeout`` for HTTP(S) (the HLS demuxer passes it on to the playlist
    reloads and segment requests) and RTMP, whose own ``timeout`` would make FFmpeg *listen* for a
    connection instead. RTSPS always carries the media on its TLS connection, whatever
    ``rtsp_transport`` says.
    """
    scheme = urlsplit(camera.url).scheme
    micros = str(int(camera.timeout_seconds * 1_000_000))
    options = [("protocol_whitelist", CAMERA_PROTOCOLS)]
    if scheme in ("rtsp", "rtsps"):
        return [*options, ("rtsp_transport", camera.rtsp_transport), ("timeout", micros)]
    if scheme in ("http", "https", "rtmp"):
        return [*options, ("rw_timeout", micros)]
    return options


def input_script(camera: Camera) -> bytes:
    """The camera URL as a one-entry ffconcat script, so it never appears on FFmpeg's command line.

    Every local user can read a process's argv (``ps``, ``systemctl status``); a pipe inherited by
    FFmpeg cannot be read by anyone else. The concat demuxer opens the URL with the input options
    (``option`` lines), among them the protocol whitelist that keeps ``file`` from the camera.
    """
    quoted = "'" + camera.url.replace("'", "'\\''") + "'"
    lines = ["ffconcat version 1.0", f"file {quoted}"]
    lines += [f"option {key} {value}" for key, value in input_options(camera)]
    return ("\n".join(lines) + "\n").encode()


def build_command(camera: Camera, *, audio_mode: str | None = None, ffmpeg: str = "ffmpeg",
                  pattern: str = FFMPEG_PATTERN, wallclock: bool = False, via_pipe: bool = False) -> list[str]:
    """argv for one camera; run it with cwd = the camera directory and TZ=UTC.

    ``audio_mode`` overrides ``camera.audio`` ("auto" starts as copy; the supervisor switches to
    "aac" when FFmpeg says the container refuses the codec). ``wallclock`` stamps packets with their
    arrival time instead of the camera's timestamps, for a camera whose timestamps froze or drifted
    (files then play at the speed they were recorded at). ``via_pipe``: the input is ``input_script``
    read from the fd that replaces ``INPUT_FD`` (the daemon's way: no password in argv).
    """
    audio = audio_mode or camera.audio
    argv = [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "info", "-y"]
    if wallclock:
        argv += ["-use_wallclock_as_timestamps", "1"]
    if via_pipe:
        # /dev/fd/N, not pipe:N: FFmpeg ignores 'q' on stdin when any input is a pipe: URL
        argv += ["-f", "concat", "-safe", "0", "-protocol_whitelist", INPUT_PROTOCOLS,
                 "-i", f"/dev/fd/{INPUT_FD}"]
    else:
        for key, value in input_options(camera):
            argv += [f"-{key}", value]
        argv += ["-i", camera.url]
    argv += ["-map", "0:v:0"]
    if audio == "off":
        argv += ["-an"]
    else:
        argv += ["-map", "0:a:0?"]
    # H.265 as "hvc1" (parameter sets in the sample entry), the tag Safari and most HEVC-capable
    # players require. Through the segment muxer (only there: a plain -f mp4 refuses hvc1 for H.264),
    # FFmpeg 5.1's MP4 muxer keeps avc1 for H.264, so the tag is safe whatever the camera sends
    argv += ["-c:v", "copy", "-tag:v", "hvc1"]
    if audio in ("auto", "copy"):
        argv += ["-c:a", "copy"]
    elif audio == "aac":
        argv += ["-c:a", "aac", "-b:a", "64k"]
    argv += [
        "-f", "segment",
        "-segment_time", str(camera.segment_seconds),
        "-segment_atclocktime", "1",
        "-strftime", "1",
        "-reset_timestamps", "1",
        "-segment_format", "mp4",
        "-segment_format_options", FRAG_OPTIONS,
        "-segment_list", "pipe:1",
        "-segment_list_type", "csv",
        pattern,
    ]
    return argv


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One closed segment from the CSV segment list (times in stream seconds)."""

    name: str
    start: float
    end: float


def parse_list_line(line: str) -> ListEntry | None:
    """``12-00-00.mp4,0.000000,2.000000`` -> ListEntry; None for anything else.

    The CSV writer quotes names containing commas or quotes; ours never do, but a quoted name is
    still understood.
    """
    line = line.strip()
    if not line:
        return None
    try:
        name_part, start_s, end_s = line.rsplit(",", 2)
        start, end = float(start_s), float(end_s)
    except ValueError:
        return None
    if name_part.startswith('"') and name_part.endswith('"') and len(name_part) >= 2:
        name_part = name_part[1:-1].replace('""', '"')
    if not name_part or end < start:
        return None
    return ListEntry(name_part, start, end)


_OPENING_RE = re.compile(r"^\[segment @ [^\]]+\] Opening '(?P<path>.+)' for writing\s*$")


def parse_opening(line: str) -> str | None:
    """The path of a segment FFmpeg just opened (relative to its cwd), else None."""
    m = _OPENING_RE.match(line.strip())
    if not m or m["path"].startswith("pipe:"):
        return None
    return m["path"]


_AUDIO_REFUSED_RE = re.compile(r"could not find tag for codec (\S+) in stream #(\d+)", re.IGNORECASE)


def audio_refused(lines: list[str]) -> str | None:
    """The audio codec the MP4 muxer refused (e.g. ``pcm_alaw``), if that is why FFmpeg stopped."""
    for line in lines:
        m = _AUDIO_REFUSED_RE.search(line)
        if m and m[1].lower() not in MP4_AUDIO_CODECS:
            return m[1]
    return None


_NOISE = ("timestamps are unset in a packet", "non-monotonous dts", "too many bits",
          "qavg:", "past duration", "rtp: missed", "max delay reached")
_IMPORTANT = ("error", "failed", "invalid", "refused", "timed out", "unauthorized", "not found",
              "could not", "unable", "corrupt", "missing", "broken")


def stderr_level(line: str) -> str | None:
    """Log level a stderr line deserves: ``warning`` for problems, None for routine chatter."""
    low = line.lower()
    if any(n in low for n in _NOISE):
        return None
    if any(w in low for w in _IMPORTANT):
        return "warning"
    return None


def camera_address(url: str) -> tuple[str, int] | None:
    """host and port to probe with a bare TCP connect while a camera is offline."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    default = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}.get(parts.scheme)
    port = port or default
    return (host, port) if port else None
