"""The compression tier: footage older than a plan's ``compress_after_days`` re-encoded smaller, in place.

Cameras send what they send (often H.264 at a generous bitrate); a week later nobody needs that
quality, and H.265 at a moderate CRF needs far fewer bytes for what is left. Re-encoding costs CPU the
recorders must never miss, so every job runs at the lowest priority (``nice 19``, ``ionice`` idle),
``concurrency`` jobs at most, and ``CpuBudget`` pauses after each job keep the tier's average CPU use
within ``cpu_budget`` cores. A box that cannot keep up says so (``recorderd_compress_behind``) instead
of falling behind silently.

One file, ``compress_file``:

1. the source is probed: a video already in the target codec, or written by this tier (our marker in
   the ``comment`` tag), is left alone ("already");
2. FFmpeg writes the new file beside the source under a hidden temp name, ``.<name>.<random>.compress``
   (``is_temp_name``, ``remove_stale_temps`` after a crash), that no scan
   of segment files takes for footage: ``layout.FILE_RE`` (the watcher, reconcile, retention's
   index-less scan, the floor) only matches ``HH-MM-SS[_tag].mp4``;
3. a new file that is not smaller is dropped at once ("not_smaller");
4. a smaller one is verified: ``fmp4.scan`` indexes its fragments (what playback serves from), its
   video is the asked codec, starts where the source's starts and lasts as long within ``max(0.1 s,
   one frame)``, and FFmpeg decodes its first and last second without an error;
5. then fsync, ``os.replace`` over the source (atomic: a reader sees the old file or the new, whole;
   one that opened the old file reads it to its end), fsync of the directory. Any failure removes the
   temp file and leaves the source untouched.

Exact times: the index keeps a segment's start and end, so the new file must play the same frames
at the same instants. ``-fps_mode passthrough`` with ``-enc_time_base -1`` keeps every frame's
timestamp as it was (no frame dropped, duplicated or rounded to a nominal rate), ``-force_key_frames
source`` with forced IDR frames keeps the keyframes, so the fragments, where they were, and ``-bf 0``
keeps the video from starting late: with ``empty_moov`` FFmpeg's fragmented MP4 writes no edit list,
so a B-frame delay would shift the video by two or three frames against its index time and its audio.

The loop, ``Compressor``, knows nothing of the database: it is handed a ``candidates`` callback (due
segments, oldest due first) and a ``done`` callback called with every outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorderd import metrics
from recorderd.config import COMPRESSION_PRESETS
from recorderd.ffmpeg import FRAG_OPTIONS
from recorderd.fmp4 import FragmentIndex, scan
from recorderd.layout import DAY_RE, is_camera_dir_name
from recorderd.logging import get_logger
from recorderd.probe import FFPROBE
from recorderd.process import pdeathsig_argv

__all__ = ["CODECS", "OUTCOMES", "PRESETS", "Candidate", "CompressResult", "CompressionSettings", "Compressor",
           "CpuBudget", "compress_command", "compress_file", "is_temp_name", "remove_stale_temps"]

log = get_logger(component="compress")

# encoder -> the codec_name ffprobe reports for its output
CODECS = {"libx265": "hevc", "libx264": "h264"}
PRESETS = COMPRESSION_PRESETS
OUTCOMES = ("compressed", "already", "not_smaller", "failed")
# the recording's own movflags (``ffmpeg.FRAG_OPTIONS``), so the new file is indexed like the old
MOVFLAGS = dict(kv.split("=", 1) for kv in FRAG_OPTIONS.split(":"))["movflags"]
MARKER = "recorderd-compress"  # starts the ``comment`` tag of every file this tier wrote
TEMP_SUFFIX = ".compress"
_TEMP_RE = re.compile(r"^\.[0-9]{2}-[0-9]{2}-[0-9]{2}(?:_[a-z0-9]{1,16})?\.mp4\.[A-Za-z0-9_]+\.compress\Z")
MIN_JOB_TIMEOUT = 600.0  # a job's FFmpeg is killed after max(this, timeout_factor x source duration)
PROBE_TIMEOUT = 60.0  # ffprobe and the verifying decode
TERM_WAIT = 3.0  # SIGTERM, then this long, then SIGKILL
DURATION_SLACK = 0.1  # seconds: the duration check allows max(this, one frame)
VERIFY_SECONDS = 1.0  # decoded at each end of the new file
FAILURES_BEFORE_BACKOFF = 3  # consecutive failures before the loop slows down (a broken encoder)
FAILURE_BACKOFF_CAP = 3600.0
_BENCH_RE = re.compile(r"bench: utime=([0-9.]+)s stime=([0-9.]+)s")
_ERROR_RE = re.compile(r"\[(?:error|fatal|panic)\] ?(.*)")


# --------------------------------------------------------------------------- settings and results


@dataclass(frozen=True, slots=True)
class CompressionSettings:
    """The ``compression:`` block of the config: what to encode to, and how much of the box it may use.

    ``cpu_budget`` is the average number of cores the tier may use (0.5: half a core over time, however
    many threads one FFmpeg runs in bursts). ``same_codec`` re-encodes a source already in the target
    codec (libx264 over H.264 cameras, to lower the bitrate); files this tier wrote are never
    re-encoded. A job's FFmpeg is killed after ``max(MIN_JOB_TIMEOUT, timeout_factor x duration)``.
    ``behind_seconds``: how long the oldest due segment may wait before the tier reports itself behind.
    """

    codec: str = "libx265"
    crf: int = 28
    preset: str = "medium"
    concurrency: int = 1
    cpu_budget: float = 0.5
    same_codec: bool = False
    timeout_factor: float = 10.0
    behind_seconds: float = 86400.0

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"compression codec must be one of {', '.join(CODECS)}, not {self.codec!r}")
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise ValueError(f"compression crf must be an integer from 0 to 51, not {self.crf!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"compression preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"compression concurrency must be a positive integer, not {self.concurrency!r}")
        for name in ("cpu_budget", "timeout_factor", "behind_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"compression {name} must be a positive number, not {value!r}")

    @property
    def target_codec(self) -> str:
        """The codec name ffprobe reports for what ``codec`` writes (``hevc``, ``h264``)."""
        return CODECS[self.codec]

    @property
    def marker(self) -> str:
        return f"{MARKER} {self.codec} crf={self.crf} preset={self.preset}"


@dataclass(frozen=True, slots=True)
class CompressResult:
    """What one job did.

    ``outcome``: "compressed" (the source was replaced), "already" (left alone: already in the
    target codec or written by this tier), "not_smaller" (the new file was not smaller: source kept),
    "failed" (source kept; ``reason`` says why). ``old_size`` is the source's size when the job
    started; ``new_size`` the encoded file's (0 when there was none): the file on disk now has
    ``new_size`` bytes only when compressed. ``cpu_seconds`` is FFmpeg's own user + system time
    (``-benchmark``: the encode and the verifying decode), or the encode's wall time when FFmpeg
    did not say (killed). Durations are seconds of video (the fragment index's when there is one).
    """

    outcome: str
    reason: str
    old_size: int
    new_size: int
    src_duration: float | None
    new_duration: float | None
    cpu_seconds: float
    wall_seconds: float

    @property
    def saved_bytes(self) -> int:
        return self.old_size - self.new_size if self.outcome == "compressed" else 0

    @property
    def ratio(self) -> float | None:
        """new / old size (0.4: the new file takes 40 % of the space), when there is a new file."""
        return round(self.new_size / self.old_size, 4) if self.old_size > 0 and self.new_size > 0 else None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A due segment as the ``candidates`` callback gives it (times are epoch seconds).

    ``due_since``: when it became due (its end + the plan's ``compress_after_days``), for the
    backlog's age and the "behind" verdict.
    """

    segment_id: int
    path: str
    duration: float
    end_time: float
    due_since: float


# --------------------------------------------------------------------------- command lines (pure)


_PRIORITY: list[list[str]] = []  # resolved once: the nice/ionice prefix


def low_priority_prefix() -> list[str]:
    """``nice -n 19 ionice -c 3 -t`` with whichever of the two exist (``-t``: run anyway when the idle
    I/O class is refused, as in some containers)."""
    if not _PRIORITY:
        prefix: list[str] = []
        if (nice := shutil.which("nice")) is not None:
            prefix += [nice, "-n", "19"]
        if (ionice := shutil.which("ionice")) is not None:
            prefix += [ionice, "-c", "3", "-t"]
        _PRIORITY.append(prefix)
    return list(_PRIORITY[0])


def compress_command(ffmpeg_bin: str, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                     settings: CompressionSettings) -> list[str]:
    """argv re-encoding ``src``'s video into ``dst`` (fragmented MP4), its first audio track copied.

    ``-loglevel level+info`` tags each line with its level (errors are told from chatter) and keeps
    the ``-benchmark`` line FFmpeg prints at exit: its own user and system time, the job's exact CPU
    cost (``RUSAGE_CHILDREN`` would mix in the camera FFmpegs). See the module docstring for the
    timestamp options. H.265 is tagged ``hvc1``, as the recording tags it, for the players that need it.
    """
    argv = [*low_priority_prefix(), ffmpeg_bin, "-nostdin", "-hide_banner", "-nostats",
            "-loglevel", "level+info", "-benchmark", "-y", "-i", os.fspath(src),
            "-map", "0:v:0", "-map", "0:a:0?",
            "-c:v", settings.codec, "-crf", str(settings.crf), "-preset", settings.preset,
            "-bf", "0", "-force_key_frames", "source", "-forced-idr", "1",
            "-fps_mode", "passthrough", "-enc_time_base:v", "-1"]
    if settings.codec == "libx265":
        argv += ["-x265-params", "log-level=error", "-tag:v", "hvc1"]
    argv += ["-c:a", "copy", "-metadata", f"comment={settings.marker}",
             "-movflags", MOVFLAGS, "-f", "mp4", os.fspath(dst)]
    return argv


def verify_command(ffmpeg_bin: str, path: str | os.PathLike[str], duration: float) -> list[str]:
    """argv decoding the first and the last ``VERIFY_SECONDS`` of ``path``'s video; exits non-zero on
    the first decoding error (``-xerror``). Cheap whatever the file's length: the second input seeks."""
    tail = max(0.0, duration - VERIFY_SECONDS)
    return [*low_priority_prefix(), ffmpeg_bin, "-nostdin", "-hide_banner", "-nostats",
            "-loglevel", "level+info", "-benchmark", "-xerror",
            "-t", f"{VERIFY_SECONDS:g}", "-i", os.fspath(path), "-ss", f"{tail:.3f}", "-i", os.fspath(path),
            "-map", "0:v:0", "-map", "1:v:0", "-f", "null", "-"]


def parse_cpu(stderr: str) -> float | None:
    """utime + stime of FFmpeg's ``-benchmark`` line, seconds; None without one."""
    found = _BENCH_RE.findall(stderr)
    if not found:
        return None
    utime, stime = found[-1]
    return float(utime) + float(stime)


def error_tail(stderr: str, limit: int = 300) -> str:
    """The first error FFmpeg printed (an ``[error]`` line of ``level+info``: the cause, where the later
    ones are its consequences, "Error initializing output stream"), else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [m[1] for ln in lines if (m := _ERROR_RE.search(ln)) and m[1]]
    text = errors[0] if errors else (lines[-1] if lines else "no error output")
    return text[:limit]


# --------------------------------------------------------------------------- temp files


def is_temp_name(name: str) -> bool:
    """A job's temp file: ``.<segment name>.<random>.compress`` beside the segment.

    Hidden, and not ``HH-MM-SS[_tag].mp4``: the watcher, reconcile and the floor's index-less scan
    only take names matching ``layout.FILE_RE``, so a temp file is never indexed nor deleted as footage.
    """
    return bool(_TEMP_RE.match(name))


def remove_stale_temps(root: Path, older_than: float = 0.0, now: float | None = None) -> int:
    """Remove the temp files of jobs a crash interrupted, under ``<root>/<camera>/<day>/``; returns how many.

    Blocking: run it in a thread at start-up, before the first job (a temp file is only ever written
    by a running job of this daemon: FFmpeg dies with it). ``older_than`` seconds (by mtime) spares
    files of jobs that may be running. A temp file left behind would keep its day directory from
    being removed when empty.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        with os.scandir(root) as it:  # camera dirs only: never clips/ or .recorderd/
            cams = [e.name for e in it if e.is_dir(follow_symlinks=False) and is_camera_dir_name(e.name)]
    except OSError:
        return 0
    for cam in cams:
        try:
            with os.scandir(root / cam) as it:
                days = [e.path for e in it if e.is_dir(follow_symlinks=False) and DAY_RE.match(e.name)]
        except OSError:
            continue
        for day in days:
            try:
                with os.scandir(day) as it:
                    entries = [e for e in it if is_temp_name(e.name)]
            except OSError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= older_than:
                        os.unlink(e.path)
                        removed += 1
                except OSError:
                    continue
    return removed


# --------------------------------------------------------------------------- one file


class _Failed(Exception):
    """A job step that failed: the message is the result's ``reason``."""


@dataclass(frozen=True, slots=True)
class _Media:
    """What ffprobe says about a file's video."""

    codec: str
    start: float | None
    duration: float | None
    frame: float | None  # seconds per frame, when the rate is known
    marked: bool  # the comment tag says this tier wrote it


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _frame_seconds(stream: dict[str, Any]) -> float | None:
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = str(stream.get(key, "")).partition("/")
        rate = _number(num)
        per = _number(den) if den else 1.0
        if rate and per and 0 < rate / per <= 1000:
            return per / rate
    return None


async def _run(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``argv`` (bound to our life), return (exit code, stderr); code None when it was killed on
    timeout. Cancelled, the process is stopped (SIGTERM, wait, SIGKILL) before the cancellation goes on."""
    code, _, err = await _run_output(argv, timeout)
    return code, err.decode(errors="replace")


async def _run_output(argv: list[str], timeout: float) -> tuple[int | None, bytes, bytes]:
    """``_run`` that also returns stdout (ffprobe's JSON)."""
    wrapped, _ = pdeathsig_argv(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *wrapped, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise _Failed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _stop_process(proc)
        return None, b"", f"did not finish within {timeout:g} s".encode()
    except BaseException:
        await asyncio.shield(_stop_process(proc))
        raise
    return proc.returncode, out, err


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, up to ``TERM_WAIT`` for it to exit, then SIGKILL; reaped either way."""
    for step in ("term", "kill"):
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if step == "term":
                proc.terminate()
            else:
                proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), TERM_WAIT if step == "term" else 5.0)


async def _probe(ffprobe_bin: str, path: str) -> _Media:
    argv = [ffprobe_bin, "-v", "error", "-select_streams", "v:0",
            "-show_entries", "stream=codec_name,start_time,duration,avg_frame_rate,r_frame_rate"
            ":format=duration:format_tags=comment", "-of", "json", path]
    code_or_none, out, err = await _run_output(argv, PROBE_TIMEOUT)
    if code_or_none is None:
        raise _Failed(f"ffprobe did not answer within {PROBE_TIMEOUT:g} s")
    code = code_or_none
    try:
        data = json.loads(out or b"{}")
    except ValueError:
        data = {}
    streams = data.get("streams") or []
    if code != 0 or not streams:
        why = err.decode(errors="replace").strip().splitlines()
        raise _Failed(f"ffprobe finds no video: {why[-1][:200] if why else f'exit {code}'}")
    stream = streams[0]
    fmt = data.get("format") or {}
    comment = str((fmt.get("tags") or {}).get("comment", ""))
    duration = _number(stream.get("duration"))
    if duration is None:
        duration = _number(fmt.get("duration"))
    return _Media(codec=str(stream.get("codec_name", "")), start=_number(stream.get("start_time")),
                  duration=duration, frame=_frame_seconds(stream), marked=comment.startswith(MARKER))


def _video_seconds(index: FragmentIndex | None) -> float | None:
    return index.duration if index is not None and index.fragments else None


def _make_temp(src: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=TEMP_SUFFIX, dir=src.parent)
    os.close(fd)
    return tmp


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _swap(tmp: str, src: Path, before: os.stat_result) -> None:
    """Give ``tmp`` the source's mode, owner and times, fsync it, rename it over ``src`` (unless the
    source changed or went meanwhile: retention may have deleted it), fsync the directory.

    The mtime is kept because reconcile reads a found file's exact start from it (``probe.start_time``).
    """
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchmod(fd, stat.S_IMODE(before.st_mode))
        if (before.st_uid, before.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(PermissionError):
                os.fchown(fd, before.st_uid, before.st_gid)
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        now = os.lstat(src)
    except FileNotFoundError:
        raise _Failed("the source was removed meanwhile") from None
    if _identity(now) != _identity(before):
        raise _Failed("the source changed meanwhile")
    os.replace(tmp, src)
    # from here the new file is the segment: a directory that cannot be synced makes the rename less
    # durable, not undone, so it is no failure
    with contextlib.suppress(OSError):
        dfd = os.open(src.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


async def _finish(tmp: str, src: Path, before: os.stat_result) -> None:
    """``_swap`` in a thread, waited for even when cancelled meanwhile: a thread cannot be stopped,
    and the caller must know whether the rename happened before it cleans up."""
    job = asyncio.ensure_future(asyncio.to_thread(_swap, tmp, src, before))
    try:
        await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await job
        raise


async def compress_file(src: Path, settings: CompressionSettings, *, ffmpeg_bin: str = "ffmpeg",
                        ffprobe_bin: str = FFPROBE) -> CompressResult:
    """Re-encode ``src`` per ``settings`` and replace it when the result is verified and smaller.

    Never raises for a bad file, a failing FFmpeg or a vanished source: the result says "failed" and
    the source is as it was. Cancelled, FFmpeg is stopped and the temp file removed (the source is
    either untouched or, if the rename had already happened, the complete new file).
    """
    started = time.monotonic()
    cpu = 0.0
    old_size = new_size = 0
    src_duration: float | None = None
    new_duration: float | None = None
    tmp: str | None = None

    def result(outcome: str, reason: str = "") -> CompressResult:
        return CompressResult(outcome, reason, old_size, new_size, src_duration, new_duration, round(cpu, 3),
                              round(time.monotonic() - started, 3))

    try:
        try:
            before = await asyncio.to_thread(os.lstat, src)
        except FileNotFoundError:
            raise _Failed("the source does not exist") from None
        if not stat.S_ISREG(before.st_mode):
            raise _Failed("the source is not a regular file")
        old_size = before.st_size
        media = await _probe(ffprobe_bin, str(src))
        src_index = await asyncio.to_thread(scan, src)
        src_duration = _video_seconds(src_index) or media.duration
        if media.marked:
            return result("already", "written by the compression tier")
        if media.codec == settings.target_codec and not settings.same_codec:
            return result("already", f"already {media.codec}")
        if not src_duration:
            raise _Failed("the source has no video to compress")

        tmp = await asyncio.to_thread(_make_temp, src)
        timeout = max(MIN_JOB_TIMEOUT, settings.timeout_factor * src_duration)
        enc_started = time.monotonic()
        code, err = await _run(compress_command(ffmpeg_bin, src, tmp, settings), timeout)
        spent = parse_cpu(err)
        cpu += spent if spent is not None else time.monotonic() - enc_started
        if code is None:
            raise _Failed(f"FFmpeg {err}")
        if code != 0:
            raise _Failed(f"FFmpeg exited {code}: {error_tail(err)}")

        new_size = (await asyncio.to_thread(os.stat, tmp)).st_size
        if new_size >= old_size:  # before the verification: no decode spent on a file we will not keep
            return result("not_smaller", f"{new_size} bytes, the source {old_size}")
        new_index = await asyncio.to_thread(scan, tmp)
        if new_index is None or not new_index.fragments:
            raise _Failed("the new file has no fragment index")
        new_media = await _probe(ffprobe_bin, tmp)
        if new_media.codec != settings.target_codec:
            raise _Failed(f"the new file's video is {new_media.codec or 'unknown'}, not {settings.target_codec}")
        new_duration = _video_seconds(new_index) if _video_seconds(src_index) else new_media.duration
        slack = max(DURATION_SLACK, media.frame or 0.0)
        if new_duration is None or abs(new_duration - src_duration) > slack:
            got = "unknown" if new_duration is None else f"{new_duration:.3f} s"
            raise _Failed(f"the new file's duration, {got}, differs from the source's {src_duration:.3f} s")
        if media.start is not None and new_media.start is not None and abs(new_media.start - media.start) > slack:
            raise _Failed(f"video starts at {new_media.start:.3f} s, the source's at {media.start:.3f} s")
        code, err = await _run(verify_command(ffmpeg_bin, tmp, new_duration), PROBE_TIMEOUT)
        cpu += parse_cpu(err) or 0.0
        if code != 0:
            raise _Failed(f"the new file does not decode: {error_tail(err) if code is not None else err}")

        await _finish(tmp, src, before)
        tmp = None  # renamed: nothing to clean up
        return result("compressed")
    except _Failed as exc:
        return result("failed", str(exc))
    except OSError as exc:  # the storage: a full disk, an I/O error, permissions
        return result("failed", exc.strerror or str(exc) or type(exc).__name__)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# --------------------------------------------------------------------------- the CPU budget


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """The pause after a job that keeps the tier's average CPU use within ``cores``.

    Each of ``n`` workers alternates a job (``c`` CPU seconds in ``w`` wall seconds) and a pause ``p``;
    the workers together use ``n * c / (w + p)`` cores on average. Keeping that at ``cores`` or below
    gives ``p = n * c / cores - w`` (never negative: a job that used less than its share runs the next at
    once). Pure arithmetic, so the bound holds whatever a job's thread count or length.
    """

    cores: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cores) and self.cores > 0):
            raise ValueError(f"cpu budget must be a positive number of cores, not {self.cores!r}")

    def pause(self, cpu_seconds: float, wall_seconds: float, concurrency: int = 1) -> float:
        """Seconds to wait before this worker's next job."""
        cpu = max(0.0, cpu_seconds)
        wall = max(0.0, wall_seconds)
        return max(0.0, max(1, concurrency) * cpu / self.cores - wall)


# --------------------------------------------------------------------------- the loop


CandidatesFn = Callable[[int], Awaitable[list[Candidate]]]
DoneFn = Callable[[Candidate, CompressResult], Awaitable[None]]
BacklogFn = Callable[[], Awaitable[int]]
JobFn = Callable[[Candidate, CompressionSettings], Awaitable[CompressResult]]


class Compressor:
    """The long-running tier: due segments in batches, ``settings.concurrency`` jobs at once.

    ``candidates(limit)`` returns up to ``limit`` due segments, oldest due first; it must leave out
    those already done (whatever their outcome, or a file that fails would be retried for ever). The
    loop calls ``done(candidate, result)`` for every job it finishes, any outcome (an exception in
    a job becomes a "failed" result). ``backlog()``, optional, counts every due segment for the
    backlog gauge (without it the gauge shows the batch: a lower bound). ``job`` replaces
    ``compress_file`` (the default) for one candidate; tests wrap it.

    The tier is "behind" (``recorderd_compress_behind`` 1, ``compress_behind`` logged once) while its
    oldest due segment has waited more than ``settings.behind_seconds``: a box whose encodes are
    slower than its cameras record sees that age grow without bound, and the rule needs no history.

    ``run()`` until ``stop()`` (or cancellation): a job in progress is stopped (FFmpeg SIGTERM, then
    SIGKILL), its temp file removed and its ``done`` not called (the segment stays due).
    """

    def __init__(self, settings: CompressionSettings, candidates: CandidatesFn, done: DoneFn, *,
                 backlog: BacklogFn | None = None, ffmpeg_bin: str = "ffmpeg", ffprobe_bin: str = FFPROBE,
                 batch_size: int | None = None, idle_seconds: float = 300.0, retry_seconds: float = 60.0,
                 job: JobFn | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.budget = CpuBudget(settings.cpu_budget)
        self._candidates = candidates
        self._done = done
        self._backlog = backlog
        self._ffmpeg = ffmpeg_bin
        self._ffprobe = ffprobe_bin
        self.batch_size = batch_size or max(4, 2 * settings.concurrency)
        self.idle_seconds = idle_seconds
        self.retry_seconds = retry_seconds
        self._job = job or self._compress
        self._clock = clock
        self._stopping = asyncio.Event()
        self._workers: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[Any] | None = None  # the task running ``run()``
        self._running: dict[int, str] = {}  # segment id -> path, while its job runs
        self._skip: dict[int, None] = {}  # ids this run gave up on (failed / not smaller), oldest first
        self._failures = 0  # consecutive failed jobs
        self._behind = False
        self._fetch_failing = False
        for outcome in OUTCOMES:
            metrics.COMPRESS_JOBS.labels(outcome)  # at 0 from the start: increase() sees the first

    def busy_paths(self) -> frozenset[str]:
        """Paths being re-encoded now: retention and the archiver should leave them alone meanwhile."""
        return frozenset(self._running.values())

    def update_settings(self, settings: CompressionSettings) -> None:
        """Live reload: the next job uses them (concurrency from the next batch)."""
        self.settings = settings
        self.budget = CpuBudget(settings.cpu_budget)

    async def stop(self) -> None:
        """Stop handing out jobs, stop the running ones, return once ``run()`` has returned.

        A ``run()`` still waiting on a callback after ``TERM_WAIT`` seconds is cancelled.
        """
        self._stopping.set()
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        runner = self._task
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            await asyncio.wait({runner}, timeout=TERM_WAIT)
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    async def run(self) -> None:
        """Batches until ``stop()``; an empty one (or only ids this run gave up on) waits ``idle_seconds``,
        a failing callback ``retry_seconds``."""
        self._task = asyncio.current_task()
        try:
            while not self._stopping.is_set():
                batch = await self._fetch()
                if batch is None:
                    await self._sleep(self.retry_seconds)
                    continue
                todo = [c for c in batch if c.segment_id not in self._skip and c.segment_id not in self._running]
                if not todo:
                    await self._sleep(self.idle_seconds)
                    continue
                await self._run_batch(todo)
        finally:
            workers = list(self._workers)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._task = None

    async def _fetch(self) -> list[Candidate] | None:
        """One batch, and the backlog metrics from it; None when the callbacks failed (logged once)."""
        try:
            # ask past the ids this run skips, should the callback still return them
            batch = await self._candidates(self.batch_size + min(len(self._skip), 1000))
            count = await self._backlog() if self._backlog is not None else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._fetch_failing:
                self._fetch_failing = True
                log.warning("compress_failed", stage="candidates", reason=f"{type(exc).__name__}: {exc}"[:300],
                            action=f"retried every {self.retry_seconds:g} s")
            return None
        self._fetch_failing = False
        self._publish(batch, count)
        return batch

    def _publish(self, batch: list[Candidate], count: int | None) -> None:
        now = self._clock()
        oldest = max((now - c.due_since for c in batch), default=0.0)
        oldest = max(0.0, oldest)
        metrics.COMPRESS_BACKLOG.set(count if count is not None else len(batch))
        metrics.COMPRESS_OLDEST_SECONDS.set(round(oldest, 3))
        behind = oldest > self.settings.behind_seconds
        metrics.COMPRESS_BEHIND.set(1 if behind else 0)
        if behind and not self._behind:
            log.warning("compress_behind", oldest_due_seconds=round(oldest), backlog=count,
                        behind_after=self.settings.behind_seconds, concurrency=self.settings.concurrency,
                        cpu_budget=self.settings.cpu_budget,
                        action="raise compression.cpu_budget or concurrency, or a faster preset")
        elif self._behind and not behind:
            log.info("compress_behind", cleared=True, oldest_due_seconds=round(oldest), backlog=count)
        self._behind = behind

    async def _run_batch(self, todo: list[Candidate]) -> None:
        queue = deque(todo)
        n = min(self.settings.concurrency, len(todo))
        workers = [asyncio.create_task(self._worker(queue), name=f"compress-{i}") for i in range(n)]
        self._workers.update(workers)
        try:
            # a worker cancelled by stop() ends the batch, not run(); run()'s own cancellation goes on
            outcomes = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            self._workers.difference_update(workers)
        for exc in outcomes:
            if isinstance(exc, Exception):  # a bug in the loop itself: jobs' own errors never get here
                log.error("compress_failed", stage="loop", reason=f"{type(exc).__name__}: {exc}"[:300])

    async def _worker(self, queue: deque[Candidate]) -> None:
        while queue and not self._stopping.is_set():
            cand = queue.popleft()
            self._running[cand.segment_id] = cand.path
            try:
                res = await self._one(cand)
            finally:
                self._running.pop(cand.segment_id, None)
            await self._after(cand, res)
            pause = self.budget.pause(res.cpu_seconds, res.wall_seconds, self.settings.concurrency)
            if self._failures >= FAILURES_BEFORE_BACKOFF:
                pause = max(pause, min(FAILURE_BACKOFF_CAP,
                                       30.0 * 2 ** (self._failures - FAILURES_BEFORE_BACKOFF)))
            if pause > 0:
                await self._sleep(pause)

    async def _compress(self, cand: Candidate, settings: CompressionSettings) -> CompressResult:
        return await compress_file(Path(cand.path), settings, ffmpeg_bin=self._ffmpeg, ffprobe_bin=self._ffprobe)

    async def _one(self, cand: Candidate) -> CompressResult:
        """The job, an exception in it turned into a "failed" result."""
        started = time.monotonic()
        try:
            return await self._job(cand, self.settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return CompressResult("failed", f"{type(exc).__name__}: {exc}"[:300], 0, 0, None, None, 0.0,
                                  round(time.monotonic() - started, 3))

    async def _after(self, cand: Candidate, res: CompressResult) -> None:
        """Metrics, the log line, the ``done`` callback of one finished job."""
        outcome = res.outcome if res.outcome in OUTCOMES else "failed"
        metrics.COMPRESS_JOBS.labels(outcome).inc()
        metrics.COMPRESS_CPU_SECONDS.inc(max(0.0, res.cpu_seconds))
        if res.saved_bytes > 0:
            metrics.COMPRESS_SAVED_BYTES.inc(res.saved_bytes)
        if outcome == "failed":
            self._failures += 1
            log.warning("compress_failed", segment=cand.segment_id, path=cand.path, reason=res.reason,
                        cpu=res.cpu_seconds, wall=res.wall_seconds, consecutive=self._failures)
        else:
            self._failures = 0
            log.debug("compress_done", segment=cand.segment_id, path=cand.path, outcome=outcome,
                      reason=res.reason or None, old_size=res.old_size, new_size=res.new_size, ratio=res.ratio,
                      cpu=res.cpu_seconds, wall=res.wall_seconds)
        if outcome in ("failed", "not_smaller"):
            self._skip[cand.segment_id] = None
            while len(self._skip) > 100_000:
                del self._skip[next(iter(self._skip))]
        try:
            await self._done(cand, res)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("compress_failed", stage="done", segment=cand.segment_id, path=cand.path,
                        outcome=outcome, reason=f"{type(exc).__name__}: {exc}"[:300])

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until ``stop()``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
