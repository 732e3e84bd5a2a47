"""``recorderd probe``: what a camera sends and what the recorder would make of it, before it records.

A camera is cheapest to fix while the installer still stands next to it. The daemon finds the same
problems, but hours later and one at a time (a wrong password, then G.711 audio, then a keyframe every
60 s that looks like a stall); the probe connects once, for ``--seconds``, the way the daemon does (the
URL in a concat script on an inherited pipe, never in argv; the camera's transport and timeout), and
answers everything together: codecs, resolution, frame rate, keyframe interval and bitrate as measured,
what happens to the audio, the state the camera would be in with ``diagnose``'s hint, and warnings.
The password is never printed: FFmpeg's lines go through ``mask_text``.

The disk-share warning (``--config`` only) splits the filesystem at ``storage.root``, minus the
free-space floor, over the enabled cameras in proportion to their retention days, all taken to record
at the bitrate measured here: proportional because the floor deletes the oldest footage first, so a
30-day camera keeps 30 days only where 7-day cameras keep 7. It then says "cameras like this one need
more than the disk", for this camera. ``max_bytes`` caps the share.

Exit codes: 0 it would record; 3 unauthorized; 4 not_found; 5 unreachable; 6 unsupported; 1 another
FFmpeg error (or no ffprobe); 2 a bad URL or config, or an unknown camera id.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from recorderd.config import Camera, Config, ConfigError, parse_config
from recorderd.diagnose import Diagnosis, diagnose, hint, where
from recorderd.ffmpeg import INPUT_FD, INPUT_PROTOCOLS, MP4_AUDIO_CODECS, input_script
from recorderd.health import disk_floor_bytes
from recorderd.masking import mask_text, secrets_of
from recorderd.process import spawn

EXIT_CODES = {"recording": 0, "error": 1, "bad_config": 2, "unauthorized": 3, "not_found": 4, "unreachable": 5,
              "unsupported": 6}
EPILOG = ("exit codes: 0 it would record; 3 unauthorized; 4 not_found; 5 unreachable; 6 unsupported; "
          "1 another FFmpeg error; 2 bad URL or config, unknown camera")
DEFAULT_SECONDS = 5.0
FFPROBE = os.environ.get("RECORDERD_FFPROBE", "ffprobe")
MARGIN_SECONDS = 10.0  # beyond the camera's timeout and --seconds: stream analysis, process start
DAY = 86400.0
# what the daemon's segment muxer stores (tried with FFmpeg 5.1 and its -tag:v hvc1); VP8 it refuses
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4", "mjpeg"})
_AUDIO_TEXT = {"none": "none", "off": "{codec} -> dropped (audio: off)", "copy": "{codec} -> copied",
               "aac": "{codec} -> transcoded to AAC (audio: {setting})",
               "unsupported": "{codec} -> refused by MP4 (audio: copy)"}
_ENTRIES = ("packet=stream_index,pts_time,dts_time,size,flags:"
            "stream=index,codec_type,codec_name,profile,width,height,avg_frame_rate")


@dataclass(frozen=True, slots=True)
class Packet:
    video: bool
    time: float | None  # stream seconds; None when FFmpeg had no timestamp (often the first packet)
    size: int
    key: bool


# ------------------------------------------------------------------ measuring (pure)

def packets_of(data: dict[str, Any], video_index: int) -> list[Packet]:
    out = []
    for p in data.get("packets", []):
        t = p.get("dts_time", p.get("pts_time"))  # decode order: with B-frames pts jumps back
        out.append(Packet(p.get("stream_index") == video_index, None if t is None else float(t),
                          int(p.get("size", 0)), "K" in p.get("flags", "")))
    return out


def fill_times(times: list[float | None]) -> list[float | None]:
    """Missing timestamps estimated at the median step from the one before (or the first known)."""
    known = [(i, t) for i, t in enumerate(times) if t is not None]
    if len(known) < 2:
        return times
    steps = sorted((b - a) / (j - i) for (i, a), (j, b) in itertools.pairwise(known))
    step, anchor = steps[len(steps) // 2], known[0]
    out: list[float | None] = []
    for i, t in enumerate(times):
        if t is None:
            t = anchor[1] + (i - anchor[0]) * step
        else:
            anchor = (i, t)
        out.append(t)
    return out


def keyframe_interval(key_times: list[float]) -> tuple[float, float] | None:
    """(mean, max) seconds between consecutive keyframes; None with fewer than two."""
    if len(key_times) < 2:
        return None
    gaps = [b - a for a, b in itertools.pairwise(key_times)]
    return sum(gaps) / len(gaps), max(gaps)


def bitrate_kbps(total_bytes: int, first: float, last: float, frame_step: float) -> float | None:
    """kbit/s over the packets' span; the last frame lasts one ``frame_step`` too."""
    span = last - first + frame_step
    return total_bytes * 8 / 1000 / span if span > 0 else None


def disk_share(total: int, floor: int, camera: Camera, cameras: tuple[Camera, ...]) -> int:
    """Bytes this camera may fill: (total - floor) split by retention days, capped by its max_bytes."""
    weights = sum(c.retention_days for c in cameras if c.id != camera.id) + camera.retention_days
    share = max(total - floor, 0) * camera.retention_days // weights
    return min(share, camera.max_bytes) if camera.max_bytes is not None else share


def share_days(share_bytes: int, kbps: float) -> float | None:
    """Days of footage ``share_bytes`` holds at ``kbps``."""
    return share_bytes / (kbps * 125 * DAY) if kbps > 0 else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _days(d: float) -> str:
    return f"{d:.1f} days" if d >= 1 else f"{d * 24:.1f} hours"


def _fraction(text: Any) -> float | None:
    try:
        num, _, den = str(text).partition("/")
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value > 0 else None


# ------------------------------------------------------------------ judging (pure)

def _trouble(camera: Camera, data: dict[str, Any] | None, lines: list[str], elapsed: float, timed_out: bool,
             video: dict[str, Any] | None, any_video: bool, acodec: str | None) -> Diagnosis | None:
    """Why it would not record; None when it would."""
    if any_video:
        vcodec = video["codec_name"] if video else None
        if vcodec not in MP4_VIDEO_CODECS:
            return Diagnosis("unsupported", "codec", codec=vcodec)
        if acodec and camera.audio == "copy" and acodec not in MP4_AUDIO_CODECS:
            return Diagnosis("unsupported", "codec", codec=acodec, audio=True)
        return None
    d = diagnose(lines)
    if d.state == "error" and timed_out:
        return Diagnosis("unreachable", "timeout", d.line)
    if d.state == "error" and data is not None:
        if data.get("streams") and video is None:
            return Diagnosis("unsupported", "no_video")
        return Diagnosis("unreachable", "no_media", d.line)
    # FFmpeg 5.1 words an RTSP reply that never came as "Invalid data found": the clock tells them apart
    if d.cause == "not_a_camera" and "invalid data" in d.line.lower() and elapsed >= camera.timeout_seconds:
        return Diagnosis("unreachable", "timeout", d.line)
    return d


def assess(camera: Camera, data: dict[str, Any] | None, lines: list[str], *, seconds: float, elapsed: float,
           timed_out: bool = False, config: Config | None = None, usage: tuple[int, int] | None = None,
           url_only: bool = False) -> dict[str, Any]:
    """The report from ffprobe's JSON (None if it failed), its stderr lines and how long it ran."""
    streams = (data or {}).get("streams", [])
    vs = next((s for s in streams if s.get("codec_type") == "video"), None)
    aus = next((s for s in streams if s.get("codec_type") == "audio"), None)
    vc, ac = (vs or {}).get("codec_name"), (aus or {}).get("codec_name")
    packets = packets_of(data or {}, vs["index"] if vs else -1)
    vpk = [p for p in packets if p.video]
    vtimes = fill_times([p.time for p in vpk])
    known = [t for t in vtimes if t is not None]
    step = (known[-1] - known[0]) / (len(known) - 1) if len(known) >= 2 and known[-1] > known[0] else None
    keys = [t for p, t in zip(vpk, vtimes, strict=True) if p.key and t is not None]
    ki = keyframe_interval(keys)
    all_t = known + [p.time for p in packets if not p.video and p.time is not None]
    kbps = bitrate_kbps(sum(p.size for p in packets), min(all_t), max(all_t), step or 0.0) if all_t else None
    d = _trouble(camera, data, lines, elapsed, timed_out, vs, bool(vpk), ac)

    mode = ("none" if not ac else "off" if camera.audio == "off" else "unsupported" if d and d.audio
            else "copy" if camera.audio != "aac" and ac in MP4_AUDIO_CODECS else "aac")
    key = "the camera" if url_only else where(camera)
    stall = f"stall_seconds ({camera.stall_seconds:g} s)"
    warnings: list[str] = []
    if ki is not None and ki[1] > camera.stall_seconds:
        warnings.append(f"keyframes up to {ki[1]:.1f} s apart, longer than {stall}: the file grows only at "
                        "keyframes, so the recorder would restart the camera as stalled; shorten the camera's "
                        f"keyframe interval (GOP) or raise stall_seconds for {key}")
    elif ki is None and known:
        lower = known[-1] - (keys[-1] if keys else known[0])
        warnings.append(f"fewer than two keyframes in {seconds:g} s: the interval is over {lower:.1f} s "
                        "(probe longer with --seconds)"
                        + (f"; that is longer than {stall}: the recorder would restart the camera as stalled"
                           if lower > camera.stall_seconds else ""))
    if vc == "hevc":
        warnings.append("H.265: Chrome/Edge/Safari with hardware support play it; Firefox does not")
    share: dict[str, Any] | None = None
    if config is not None and usage is not None and kbps:
        nbytes = disk_share(usage[0], usage[1], camera, config.enabled_cameras)
        days = share_days(nbytes, kbps) or 0.0
        share = {"bytes": nbytes, "days": round(days, 2), "retention_days": camera.retention_days,
                 "root": str(config.storage.root)}
        if days < camera.retention_days:
            capped = " (capped by max_bytes)" if nbytes == camera.max_bytes else ""
            warnings.append(f"at {kbps:.0f} kbit/s ({human_bytes(kbps * 125 * DAY)}/day) its disk share of "
                            f"{config.storage.root}, {human_bytes(nbytes)}{capped}, holds {_days(days)}, fewer "
                            f"than its retention of {camera.retention_days} days (plan {camera.plan})")

    text = hint(d, camera) if d else None
    if d and d.state == "error":  # hint() points at the daemon's status; here the line is printed below
        text = "FFmpeg failed for a reason recorderd does not recognise: see what it said"
    if text and url_only:
        text = text.replace(f"{where(camera)}.url", "the URL").replace(where(camera), "the camera")
    state = d.state if d else "recording"
    return {
        "url": camera.masked_url, "camera": None if url_only else camera.id, "seconds": seconds,
        "state": state, "cause": d.cause if d else None, "hint": text,
        "ffmpeg_line": mask_text(d.line, secrets_of(camera.url)) if d and d.line else None,
        "video": None if vs is None else {
            "codec": vc, "profile": vs.get("profile"), "width": vs.get("width"), "height": vs.get("height"),
            "fps": round(1 / step, 2) if step else _fraction(vs.get("avg_frame_rate")),
            "keyframe_interval_s": round(ki[0], 2) if ki else None,
            "keyframe_interval_max_s": round(ki[1], 2) if ki else None},
        "audio": {"codec": ac, "mode": mode, "setting": camera.audio},
        "bitrate_kbps": None if kbps is None else round(kbps, 1),
        "disk_share": share, "warnings": warnings, "exit_code": EXIT_CODES.get(state, 1),
    }


def render(r: dict[str, Any]) -> str:
    """The report as aligned ``key: value`` lines."""
    rows = [("url", r["url"])] + ([("camera", r["camera"])] if r["camera"] else [])
    v, a = r["video"], r["audio"]
    if v:
        rows.append(("video", v["codec"] + (f" ({v['profile']})" if v["profile"] else "")
                     + (f", {v['width']}x{v['height']}" if v["width"] else "")
                     + (f", {v['fps']:g} fps" if v["fps"] else "")))
        if v["keyframe_interval_s"] is not None:
            rows.append(("keyframes", f"every {v['keyframe_interval_s']:.2f} s "
                         f"(max {v['keyframe_interval_max_s']:.2f} s)"))
        rows.append(("audio", _AUDIO_TEXT[a["mode"]].format(**a)))
    if r["bitrate_kbps"] is not None:
        rows.append(("bitrate", f"{r['bitrate_kbps']:.0f} kbit/s ({human_bytes(r['bitrate_kbps'] * 125 * DAY)}/day)"))
    if r["disk_share"]:
        s = r["disk_share"]
        rows.append(("disk share", f"{human_bytes(s['bytes'])} of {s['root']}: {_days(s['days'])} at this bitrate "
                     f"(retention {s['retention_days']} days)"))
    rows.append(("state", r["state"] + (f" ({r['cause']})" if r["cause"] else ": video arrives, MP4 stores it")))
    rows += [(k, r[f]) for k, f in (("hint", "hint"), ("ffmpeg said", "ffmpeg_line")) if r[f]]
    rows += [("warning", w) for w in r["warnings"]]
    width = max(len(k) for k, _ in rows) + 2
    return "".join(f"{k + ':':<{width}}{val}\n" for k, val in rows)


# ------------------------------------------------------------------ running

def limit(camera: Camera, seconds: float) -> float:
    return camera.timeout_seconds + seconds + MARGIN_SECONDS


async def measure(camera: Camera, seconds: float, ffprobe: str) -> tuple[dict[str, Any] | None, list[str], float]:
    """One ffprobe connection for ``seconds``: (its JSON or None, stderr lines, seconds it ran)."""
    argv = [ffprobe, "-hide_banner", "-v", "info", "-f", "concat", "-safe", "0",
            "-protocol_whitelist", INPUT_PROTOCOLS, "-read_intervals", f"%+{seconds:g}",
            "-show_entries", _ENTRIES, "-of", "json", "-i", f"/dev/fd/{INPUT_FD}"]
    t0 = time.monotonic()
    proc = await spawn(argv, cwd=Path("/"), env=os.environ, input_data=input_script(camera), fd_placeholder=INPUT_FD)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.close()
    out, err = bytearray(), bytearray()

    async def pump(stream: asyncio.StreamReader, buf: bytearray) -> None:
        while chunk := await stream.read(65536):
            buf += chunk

    tasks = [asyncio.ensure_future(c) for c in (pump(proc.stdout, out), pump(proc.stderr, err), proc.wait())]
    try:
        await asyncio.wait(tasks, timeout=limit(camera, seconds))
    finally:  # a timeout, Ctrl-C (cancellation) or an error: no ffprobe left behind
        if proc.returncode is None:
            proc.kill()
        await asyncio.gather(*tasks, return_exceptions=True)  # the pipes close with it
    data: dict[str, Any] | None = None
    if proc.returncode == 0:
        try:
            data = json.loads(out)
        except ValueError:
            data = None
    return data, err.decode(errors="replace").splitlines(), time.monotonic() - t0


def url_camera(url: str) -> Camera:
    """A camera with the built-in defaults, validated like one in cameras.yaml (errors name ``URL``)."""
    doc = {"storage": {"root": "/"}, "http": {"listen": None}, "cameras": [{"id": "probe", "url": url}]}
    try:
        return replace(parse_config(doc, "recorderd probe").cameras[0], index=-1)
    except ConfigError as exc:
        raise ConfigError([e.replace("cameras[0].url", "URL") for e in exc.errors], exc.source) from None


def usage_of(config: Config) -> tuple[int, int] | None:
    """(filesystem bytes, free-space floor) at the storage root, or None if it cannot be read."""
    try:
        st = os.statvfs(config.storage.root)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    return total, disk_floor_bytes(total, config.storage.min_free_percent, config.storage.min_free_bytes)


def run(camera: Camera, *, seconds: float, as_json: bool, out: TextIO, err: TextIO, ffprobe: str = FFPROBE,
        config: Config | None = None) -> int:
    """Probe, print the report, return the exit code."""
    if shutil.which(ffprobe) is None:
        print(f"recorderd probe: {ffprobe} not found (install FFmpeg, or give --ffprobe)", file=err)
        return EXIT_CODES["error"]
    try:
        data, lines, elapsed = asyncio.run(measure(camera, seconds, ffprobe))
    except OSError as exc:
        print(f"recorderd probe: cannot run {ffprobe}: {mask_text(str(exc), secrets_of(camera.url))}", file=err)
        return EXIT_CODES["error"]
    usage = usage_of(config) if config is not None else None
    report = assess(camera, data, lines, seconds=seconds, elapsed=elapsed, timed_out=elapsed >= limit(camera, seconds),
                    config=config, usage=usage, url_only=config is None)
    if config is not None and usage is None and report["bitrate_kbps"]:
        report["warnings"].append(f"cannot read the filesystem of {config.storage.root}: no disk-share estimate")
    out.write(json.dumps(report, indent=2) + "\n" if as_json else render(report))
    return int(report["exit_code"])


# ------------------------------------------------------------------ command line

def add_arguments(p: argparse.ArgumentParser, default_config: Path) -> None:
    p.add_argument("url", nargs="?", metavar="URL",
                   help="camera URL; - reads it from stdin (on the command line, ps shows its password)")
    p.add_argument("--config", "-c", type=Path, default=None,
                   help=f"with --camera: path to cameras.yaml (default: {default_config})")
    p.add_argument("--camera", metavar="ID", help="probe this camera of the config, with its settings")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, metavar="S",
                   help="how long to measure (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--ffprobe", default=FFPROBE, help="ffprobe binary (default: %(default)s)")


def main(args: argparse.Namespace, default_config: Path, load: Callable[[Path], Config]) -> int:
    """``recorderd probe``: check the arguments, find the camera, probe it."""
    if (args.url is None) == (args.camera is None) or (args.url is not None and args.config is not None):
        print("recorderd probe: give a URL, or --camera ID (and --config PATH)", file=sys.stderr)
        return EXIT_CODES["bad_config"]
    if not 0 < args.seconds <= 600:
        print("recorderd probe: --seconds must be above 0 and at most 600", file=sys.stderr)
        return EXIT_CODES["bad_config"]
    config: Config | None = None
    if args.camera is not None:
        path = args.config or default_config
        config = load(path)
        camera = config.camera(args.camera)
        if camera is None:
            known = ", ".join(c.id for c in config.cameras) or "none"
            print(f"{path}: no camera {args.camera!r} (known: {known})", file=sys.stderr)
            return EXIT_CODES["bad_config"]
    else:
        camera = url_camera(sys.stdin.readline().strip() if args.url == "-" else args.url)
    return run(camera, seconds=args.seconds, as_json=args.json, out=sys.stdout, err=sys.stderr,
               ffprobe=args.ffprobe, config=config)
