"""Why a camera is not recording, read from FFmpeg's own words, with what a person should do about it.

An operator's question is "why does cam 7 not record?", and "offline" answers it badly: a wrong
password, a wrong path and a powered-off camera need three different people (whoever knows the
password, whoever set up the relay, whoever can walk to the camera). FFmpeg says which it is on
stderr; this module turns that into one of four states, a finer ``cause`` for the journal and the
metrics, and a hint that names the config key to fix (``cameras[3].url``).

Pure functions on lines of text: unit-tested without FFmpeg, shared by the supervisor (a run that
never recorded) and ``recorderd probe`` (a run that was asked to look).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recorderd.config import Camera

# states a camera is in when FFmpeg cannot record it; "error" is FFmpeg failing for a reason we do
# not recognise (shown as ``backoff`` with the FFmpeg lines, as before)
TROUBLE_STATES = ("unauthorized", "not_found", "unreachable", "unsupported")

# (state, cause, lower-case phrases), first match wins: an answer from the server (401, 404) is more
# specific than the connection error FFmpeg prints after it
_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("unauthorized", "auth_failed", ("401 unauthorized", "authorization failed", "authentication failed",
                                     "netconnection.connect.rejected")),
    ("unauthorized", "forbidden", ("403 forbidden",)),
    ("not_found", "path_not_found", ("404 not found", "path not found", "streamnotfound", "stream not found",
                                     "454 session not found")),
    ("unreachable", "busy", ("503 service unavailable", "service unavailable", "453 not enough bandwidth")),
    ("unsupported", "no_video", ("matches no streams",)),
    ("unsupported", "codec", ("incompatible with output codec", "codec not currently supported in container",
                              "could not find tag for codec", "unsupported codec", "is not supported in mp4")),
    ("unreachable", "dns", ("name or service not known", "temporary failure in name resolution",
                            "failed to resolve hostname", "no address associated with hostname")),
    ("unreachable", "refused", ("connection refused",)),
    ("unreachable", "no_route", ("no route to host", "network is unreachable", "host is unreachable")),
    ("unreachable", "timeout", ("connection timed out", "operation timed out", "timed out")),
    ("unreachable", "no_media", ("could not find codec parameters",)),
    ("unreachable", "not_a_camera", ("invalid data found when processing input", "server returned",
                                     "http error", "end of file", "tls", "handshake")),
    ("unreachable", "dropped", ("connection reset by peer", "broken pipe", "i/o error", "input/output error",
                                "immediate exit requested")),
)

_INPUT_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)[^:]*: (Video|Audio): ([A-Za-z0-9_]+)")
_TAG_STREAM_RE = re.compile(r"could not find tag for codec (\S+) in stream #(\d+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What FFmpeg's output says is wrong."""

    state: str  # one of TROUBLE_STATES, or "error"
    cause: str  # finer: auth_failed, path_not_found, refused, codec, ...; "unknown" for "error"
    line: str = ""  # the FFmpeg line it was read from (mask it before showing it: it may hold the URL)
    codec: str | None = None  # the codec at fault, for ``unsupported``
    audio: bool = False  # the codec at fault is the audio one


def input_codecs(lines: list[str]) -> dict[str, str]:
    """``{"video": "hevc", "audio": "pcm_alaw"}`` from FFmpeg's input dump (first of each kind)."""
    found: dict[str, str] = {}
    for line in lines:
        m = _INPUT_STREAM_RE.match(line)
        if m:
            found.setdefault(m[2].lower(), m[3].lower())
    return found


def diagnose(lines: list[str], *, lasted: float | None = None, timeout: float | None = None) -> Diagnosis:
    """The trouble a run that never recorded ran into; ``error``/``unknown`` when nothing matches.

    ``lasted``/``timeout``: a camera that accepts TCP and then says nothing makes FFmpeg 5.1 print
    only "Invalid data found" once its socket timeout ends, the same words as a port that answers
    in another protocol at once; the run's length tells a silent camera from a wrong port.
    """
    lowered = [line.lower() for line in lines]
    for state, cause, phrases in _RULES:
        for line, low in zip(lines, lowered, strict=True):
            if any(p in low for p in phrases):
                if (cause == "not_a_camera" and "invalid data found" in low and lasted is not None
                        and timeout is not None and lasted >= 0.9 * timeout):
                    return Diagnosis("unreachable", "timeout", line.strip())
                if state == "unsupported":
                    codec, audio = _codec_at_fault(lines, line)
                    return Diagnosis(state, cause, line.strip(), codec, audio)
                return Diagnosis(state, cause, line.strip())
    return Diagnosis("error", "unknown", lines[-1].strip() if lines else "")


def _codec_at_fault(lines: list[str], line: str) -> tuple[str | None, bool]:
    """The refused codec and whether it is the audio one (our output maps video first, audio second)."""
    m = _TAG_STREAM_RE.search(line)
    if m:
        return m[1].lower(), m[2] != "0"
    if "matches no streams" in line.lower():
        return None, False
    return input_codecs(lines).get("video"), False


def where(camera: Camera) -> str:
    """The config key path of the camera (``cameras[3]``), or its id when the index is unknown."""
    return f"cameras[{camera.index}]" if camera.index >= 0 else f"camera {camera.id}"


def hint(d: Diagnosis, camera: Camera, *, retry: str = "") -> str:
    """One sentence a person can act on. ``retry`` says when the next attempt comes, if it matters."""
    key = where(camera)
    codec = d.codec or "?"
    text = {
        "auth_failed": f"the camera refused the user name or password: check them in {key}.url",
        "forbidden": f"the user in {key}.url may not view this stream: give it viewer rights on the camera",
        "path_not_found": (f"nothing is served at that path: check the path in {key}.url "
                           "(a relay answers this while its camera is away)"),
        "busy": "the camera or relay is busy (too many clients?)",
        "no_video": f"the stream has no video: pick a stream of the camera that has video in {key}.url",
        "codec": (f"{codec} audio cannot be copied into MP4: set audio: auto (or aac, or false) for {key}"
                  if d.audio else f"{codec} video cannot be stored in MP4: set the camera to H.264 or H.265"),
        "dns": f"the host name in {key}.url does not resolve: check it and the box's DNS",
        "refused": (f"nothing listens at the address in {key}.url: check the camera's IP and port, "
                    "and that its RTSP service is on"),
        "no_route": "no route to the camera: check the network (cable, VLAN, firewall) between this box and it",
        "timeout": "the camera does not answer: check its power and network",
        "no_media": "connected, but no video arrived: the camera may be starting up or its stream disabled",
        "not_a_camera": (f"the address in {key}.url answered, but not as a camera stream: check the port "
                         "and scheme (rtsp://, rtsps://, rtmp://, http(s)://)"),
        "dropped": "the connection dropped: the camera may be rebooting or overloaded",
    }.get(d.cause, "FFmpeg failed: see its last lines in recorderd status and the journal")
    return f"{text}; {retry}" if retry else text

