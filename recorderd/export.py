"""One MP4 of a period, cut from the segment files the index lists, by stream copy.

Footage is one fragmented MP4 per segment with exact wall-clock start and end in the index. A period is
cut with FFmpeg's concat demuxer: a script names each file with ``inpoint``/``outpoint`` in the file's
own time (wall time minus the file's start), so nothing is re-encoded and the cost is reading and
writing the bytes once (twice with ``+faststart``). The output starts at the keyframe at or before
the start asked for (stream copy cannot start anywhere else) and ends at the end asked for.

A hole in the footage (the camera was offline) is skipped: the file is shorter and ``CutResult.gaps``
says where. Paths come only from the index and each must lie inside the storage root, in the segment
layout, without a symlink anywhere below the root; any other is skipped and reported in
``CutResult.skipped``. The output is written to a temp name beside ``dest`` and renamed over it only
once FFmpeg succeeded and the file was synced, so ``dest`` is never half a file. Cancelling the caller
or running out of time kills FFmpeg and removes the temp file.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import asyncpg

from recorderd import layout, probe
from recorderd.db import Database
from recorderd.objectstore import ArchiveError, ObjectStore
from recorderd.process import pdeathsig_argv

if TYPE_CHECKING:
    from recorderd.config import Config

MAX_PERIOD_SECONDS = 86400.0  # one export or clip covers at most a day
CUT_TIMEOUT = 1800.0  # a day of 8 Mbit/s footage is ~86 GB: minutes of copying on a slow disk
GAP_TOLERANCE = 0.1  # seconds without footage that count as a gap (as in ``recorderd search``)
MIN_PIECE = 0.01  # a piece of a file shorter than this is left out
KEYFRAME_LOOKBACK = 60.0  # seconds before an in point searched for its keyframe
STDERR_TAIL = 5  # FFmpeg stderr lines kept for the error message


class ExportError(Exception):
    """An export or clip request that cannot be done; the message is one line for the user."""


class BadPeriod(ExportError, ValueError):
    """start is not before end, a time is not finite, or the period is too long."""


class NoFootage(ExportError):
    """The index has no usable footage of the camera in the period."""


class CutFailed(ExportError):
    """FFmpeg failed, timed out, or wrote something unreadable; nothing was left at ``dest``."""


@dataclass(frozen=True, slots=True)
class SegmentSpan:
    """One segment file as the index describes it (wall-clock epoch seconds)."""

    path: str
    start: float
    end: float
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class CutResult:
    path: Path
    start: float  # wall time of the first frame: the keyframe at or before the start asked for
    end: float  # start + duration + the gaps inside
    duration: float  # seconds of media in the file (ffprobe)
    size_bytes: int
    files: int  # segment files it was cut from
    gaps: tuple[tuple[float, float], ...]  # parts of the period asked for without footage (wall time)
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of index rows refused: not read

    @property
    def complete(self) -> bool:
        return not self.gaps and not self.skipped

    def to_json(self) -> dict[str, Any]:
        """What a client may see: no paths of footage files."""
        return {"start": layout.iso(self.start), "end": layout.iso(self.end),
                "duration_seconds": round(self.duration, 3), "size_bytes": self.size_bytes, "files": self.files,
                "gaps": [{"start": layout.iso(a), "end": layout.iso(b)} for a, b in self.gaps],
                "skipped_files": len(self.skipped)}


@dataclass(frozen=True, slots=True)
class _Piece:
    path: str  # checked, canonical (resolved root)
    span: SegmentSpan
    inpoint: float | None  # file time
    outpoint: float


def epoch(t: datetime | float) -> float:
    """Epoch seconds of a datetime (naive = UTC) or a number."""
    if isinstance(t, datetime):
        return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()
    return float(t)


def check_period(start: datetime | float, end: datetime | float,
                 max_seconds: float = MAX_PERIOD_SECONDS) -> tuple[float, float]:
    """(start, end) as epoch seconds, or ``BadPeriod``."""
    try:
        s, e = epoch(start), epoch(end)
    except (TypeError, ValueError, OverflowError):
        raise BadPeriod("start and end must be times") from None
    if not (math.isfinite(s) and math.isfinite(e)):
        raise BadPeriod("start and end must be finite times")
    if s >= e:
        raise BadPeriod(f"start {layout.iso(s)} must be before end {layout.iso(e)}")
    if e - s > max_seconds:
        raise BadPeriod(f"the period is {e - s:.0f} s long; at most {max_seconds:.0f} s "
                        f"({max_seconds / 3600:g} h) may be cut at once")
    return s, e


async def segments_for(conn: asyncpg.Connection, camera_id: str, start: datetime | float,
                       end: datetime | float) -> list[SegmentSpan]:
    """Segments of ``camera_id`` overlapping [start, end) from the index, oldest first."""
    from recorderd.report import search_conn  # report imports much; only needed here

    rows = await search_conn(conn, camera_id, datetime.fromtimestamp(epoch(start), UTC),
                             datetime.fromtimestamp(epoch(end), UTC))
    # footage on another node's disk is named so, never as a path here (where a file may bear its name)
    return [SegmentSpan(r.path if r.mine else f"{OTHER_NODE}{r.node}/{r.recording_id}", r.start.timestamp(),
                        r.end.timestamp(), r.size_bytes) for r in rows]


# --------------------------------------------------------------------------- which files may be read


def check_segment_path(root: Path, path: str) -> str:
    """The path to read, with the storage root resolved; raise ``ValueError`` with the reason when
    ``path`` is not a regular file in the segment layout under ``root`` reached without a symlink.

    The root itself may be a symlink (an operator's choice, spelled either way in the index); below it
    ``os.path.realpath`` must not change anything and the file must open with ``O_NOFOLLOW``.
    Blocking: run in a thread.
    """
    if any(c in path for c in "\x00\n\r") or not os.path.isabs(path):
        raise ValueError("not an absolute path")
    norm = os.path.normpath(path)
    if norm != path:
        raise ValueError("not a normalised path")
    real_root = os.path.realpath(root)
    rel: str | None = None
    for base in dict.fromkeys((os.path.normpath(root), real_root)):
        if norm.startswith(base.rstrip(os.sep) + os.sep):
            rel = norm[len(base.rstrip(os.sep)) + 1:]
            break
    if rel is None:
        raise ValueError("outside the storage root")
    canon = os.path.join(real_root, rel)
    if layout.parse_segment_path(Path(real_root), canon) is None:
        raise ValueError("not a segment file of the layout")
    if os.path.realpath(canon) != canon:
        raise ValueError("symlink in path")
    try:
        fd = os.open(canon, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
    finally:
        os.close(fd)
    return canon


def plan_pieces(files: Sequence[SegmentSpan], usable: dict[str, str], start: float, end: float
                ) -> tuple[list[_Piece], list[tuple[float, float]]]:
    """What to read of which file, in order, and the gaps of [start, end) nothing covers.

    ``usable`` maps an index path to the path to read (files not in it were refused). Overlapping
    files (a recovered duplicate) are read from where the previous one ended.
    """
    pieces: list[_Piece] = []
    gaps: list[tuple[float, float]] = []
    covered = start
    for f in sorted(files, key=lambda s: (s.start, s.end)):
        real = usable.get(f.path)
        if real is None:
            continue
        lo, hi = max(covered, f.start), min(end, f.end)
        if hi - lo < MIN_PIECE:
            continue
        if lo - covered > GAP_TOLERANCE:
            gaps.append((covered, lo))
        inpoint = lo - f.start if lo - f.start > 1e-3 else None
        # always: the index's end, not the file's own duration, places the next file. A file's
        # duration as the demuxer sees it runs to its last audio packet, a few tens of ms past the
        # video, and over 300 two-second files that added 7 s of drift (and overlapping audio).
        outpoint = hi - f.start
        pieces.append(_Piece(real, f, inpoint, outpoint))
        covered = hi
    if end - covered > GAP_TOLERANCE:
        gaps.append((covered, end))
    return pieces, gaps


def concat_script(pieces: Sequence[_Piece]) -> bytes:
    """An ffconcat script; ``file:`` keeps the path from being read as a URL or relative to the pipe."""
    lines = ["ffconcat version 1.0"]
    for p in pieces:
        lines.append("file '" + ("file:" + p.path).replace("'", "'\\''") + "'")
        if p.inpoint is not None:
            lines.append(f"inpoint {p.inpoint:.6f}")
        lines.append(f"outpoint {p.outpoint:.6f}")
    return ("\n".join(lines) + "\n").encode()


def cut_command(ffmpeg_bin: str, output: str) -> list[str]:
    return [ffmpeg_bin, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "concat", "-safe", "0", "-protocol_whitelist", "file,pipe", "-i", "pipe:0",
            "-map", "0", "-c", "copy", "-movflags", "+faststart", "-avoid_negative_ts", "make_zero",
            "-f", "mp4", "-y", output]


# --------------------------------------------------------------------------- the cut

OTHER_NODE = "node://"  # a span whose file is on another node's disk (recorderd.nodes)


async def cut(files: Sequence[SegmentSpan], start: datetime | float, end: datetime | float, dest: Path, *,
              root: Path, ffmpeg_bin: str = "ffmpeg", ffprobe_bin: str | None = None,
              timeout: float = CUT_TIMEOUT, max_seconds: float = MAX_PERIOD_SECONDS,
              store: ObjectStore | None = None) -> CutResult:
    """Cut [start, end) out of ``files`` (index rows of one camera) into ``dest``.

    Archived files (an ``s3://`` path) are fetched from ``store`` into a hidden directory beside
    ``dest`` first, and removed with it: FFmpeg reads local files only, and only the box talks to the
    object store.

    Raises ``BadPeriod``, ``NoFootage`` (nothing usable overlaps the period) or ``CutFailed``; on any
    error or cancellation FFmpeg is killed and nothing is left at ``dest`` or beside it.
    """
    s, e = check_period(start, end, max_seconds)
    usable: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []

    def check_all() -> None:
        for f in files:
            if f.path in usable or f.path.startswith("s3://"):
                continue
            if f.end <= s or f.start >= e:
                continue
            if f.path.startswith(OTHER_NODE):
                node = f.path.removeprefix(OTHER_NODE).split("/")[0]
                skipped.append((f.path, f"on node {node}'s disk: cut it there, or once it is archived"))
                continue
            try:
                usable[f.path] = check_segment_path(root, f.path)
            except ValueError as exc:
                skipped.append((f.path, str(exc)))

    await asyncio.to_thread(check_all)
    stage = await _stage([f for f in files if f.path.startswith("s3://") and f.end > s and f.start < e],
                         store, dest.parent, usable, skipped)
    try:
        return await _cut_usable(files, usable, skipped, s, e, dest, ffmpeg_bin, ffprobe_bin, timeout)
    finally:
        if stage is not None:
            await asyncio.to_thread(shutil.rmtree, stage, True)


async def _stage(archived: Sequence[SegmentSpan], store: ObjectStore | None, parent: Path,
                 usable: dict[str, str], skipped: list[tuple[str, str]]) -> str | None:
    """Download archived spans into a new hidden directory under ``parent``; returns it (or None)."""
    if not archived:
        return None
    if store is None:
        skipped.extend((f.path, "archived, and no archive is configured") for f in archived)
        return None
    try:
        stage = await asyncio.to_thread(tempfile.mkdtemp, prefix=".stage-", dir=parent)
    except OSError as exc:
        raise CutFailed(f"cannot write in {parent}: {exc.strerror or exc}") from None
    for n, f in enumerate(archived):
        key = store.key_of(f.path)
        if key is None:
            skipped.append((f.path, "archived under another archive.url"))
            continue
        local = os.path.join(stage, f"{n:06d}.mp4")
        try:
            await store.download(key, local)
        except ArchiveError as exc:
            skipped.append((f.path, f"archive: {exc}"))
            continue
        usable[f.path] = local
    return stage


async def _cut_usable(files: Sequence[SegmentSpan], usable: dict[str, str], skipped: list[tuple[str, str]],
                      s: float, e: float, dest: Path, ffmpeg_bin: str, ffprobe_bin: str | None,
                      timeout: float) -> CutResult:
    pieces, gaps = plan_pieces(files, usable, s, e)
    if not pieces:
        why = f" ({len(skipped)} file(s) refused: {skipped[0][1]})" if skipped else ""
        raise NoFootage(f"no footage between {layout.iso(s)} and {layout.iso(e)}{why}")
    first = pieces[0]
    real_start = first.span.start
    if first.inpoint is not None:
        key = await keyframe_before(first.path, first.inpoint, ffprobe_bin or probe.FFPROBE)
        real_start = first.span.start + (key if key is not None else first.inpoint)

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise CutFailed(f"cannot write in {dest.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        await _run_ffmpeg(cut_command(ffmpeg_bin, tmp), concat_script(pieces), timeout)
        duration = await probe.probe_duration(tmp)
        if duration is None:
            raise CutFailed("FFmpeg wrote a file ffprobe cannot read")
        size = await _finish_file(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    inner = sum(b - a for a, b in gaps if a > s and b < e)
    return CutResult(path=dest, start=real_start, end=real_start + duration + inner, duration=duration,
                     size_bytes=size, files=len(pieces), gaps=tuple(gaps), skipped=tuple(skipped))


async def _finish_file(tmp: str, dest: Path) -> int:
    """``_sync_and_rename`` in a thread, waited for even when the caller is cancelled meanwhile: a
    thread cannot be stopped, and a rename landing after the caller cleaned up would leave a file
    nobody knows about (a clip's row already dropped). Cancelled, the complete file stays at ``dest``."""
    job = asyncio.ensure_future(asyncio.to_thread(_sync_and_rename, tmp, dest))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await job
        raise


def _sync_and_rename(tmp: str, dest: Path) -> int:
    """fsync the finished file, rename it to ``dest``, fsync the directory: durable before anyone
    records it (a clip row says "ready" only after this). Returns its size."""
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return size


async def _run_ffmpeg(argv: list[str], script: bytes, timeout: float) -> None:
    """Run FFmpeg with the script on stdin; kill it on timeout or cancellation."""
    wrapped, _ = pdeathsig_argv(argv)  # never an orphan FFmpeg writing on if we die
    try:
        proc = await asyncio.create_subprocess_exec(
            *wrapped, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise CutFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(script), timeout)
    except TimeoutError:
        await _kill(proc)
        raise CutFailed(f"FFmpeg did not finish within {timeout:g} s") from None
    except BaseException:
        await _kill(proc)
        raise
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        tail = "; ".join(lines[-STDERR_TAIL:]) or "no error output"
        raise CutFailed(f"FFmpeg exited {proc.returncode}: {tail}"[:1000])


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL (FFmpeg leaves nothing worth keeping) and reap it, briefly."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError, ProcessLookupError):
        await asyncio.wait_for(proc.wait(), 5)


async def keyframe_before(path: str, at: float, ffprobe_bin: str = probe.FFPROBE,
                          timeout: float = probe.PROBE_TIMEOUT) -> float | None:
    """Time (in the file) of the last video keyframe at or before ``at``: where a stream copy that
    starts at ``at`` really starts. Reads packet headers only, from ``KEYFRAME_LOOKBACK`` before."""
    argv = [ffprobe_bin, "-v", "error", "-select_streams", "v:0",
            "-read_intervals", f"{max(0.0, at - KEYFRAME_LOOKBACK):.6f}%{at + 1e-3:.6f}",
            "-show_entries", "packet=pts_time,flags", "-of", "csv=p=0", path]
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _kill(proc)
        return None
    except BaseException:
        await _kill(proc)
        raise
    best: float | None = None
    for line in out.decode(errors="replace").splitlines():
        pts, _, flags = line.partition(",")
        try:
            t = float(pts)
        except ValueError:
            continue
        if "K" in flags and t <= at + 1e-6 and (best is None or t > best):
            best = t
    return best


@contextlib.asynccontextmanager
async def connection(db: Database | asyncpg.Connection, op: str = "export") -> AsyncIterator[asyncpg.Connection]:
    """A connection for a few statements: from the daemon's pool (released between steps, never held
    while FFmpeg runs) or the caller's own (the CLI's)."""
    if isinstance(db, Database):
        async with db.acquire(op) as conn:
            yield conn
    else:
        yield db


async def export_period(db: Database | asyncpg.Connection, camera_id: str, start: datetime | float,
                        end: datetime | float, dest: Path, *, root: Path, ffmpeg_bin: str = "ffmpeg",
                        timeout: float = CUT_TIMEOUT, store: ObjectStore | None = None) -> CutResult:
    """``segments_for`` + ``cut``: the whole export of one camera's period (the database is only used
    for the index query, before FFmpeg starts). ``NoFootage`` when the index has nothing."""
    s, e = check_period(start, end)
    async with connection(db) as conn:
        files = await segments_for(conn, camera_id, s, e)
    if not files:
        raise NoFootage(f"no footage of {camera_id} between {layout.iso(s)} and {layout.iso(e)}")
    return await cut(files, s, e, dest, root=root, ffmpeg_bin=ffmpeg_bin, timeout=timeout, store=store)


# --------------------------------------------------------------------------- command line

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2  # usage: bad arguments; fail: not found, limits, database down


def cli_fail(err: TextIO, message: str, code: int = EXIT_FAIL) -> int:
    err.write(f"recorderd: error: {message}\n")
    return code


def cli_period(from_s: str, to_s: str, err: TextIO, max_seconds: float = MAX_PERIOD_SECONDS
               ) -> tuple[float, float] | int:
    """``--from``/``--to`` as ``recorderd search`` reads them (a bare ``--to`` date is the end of that
    day), checked; else the exit code after the message."""
    from recorderd.report import parse_time

    try:
        start = parse_time(from_s)
    except ValueError:
        return cli_fail(err, f"invalid --from {from_s!r}: expected ISO 8601 such as 2026-11-21T10:00:00Z",
                        EXIT_USAGE)
    try:
        end = parse_time(to_s, end_of_day=True)
    except ValueError:
        return cli_fail(err, f"invalid --to {to_s!r}: expected ISO 8601 such as 2026-11-21T10:05:00Z", EXIT_USAGE)
    try:
        return check_period(start, end, max_seconds)
    except BadPeriod as exc:
        return cli_fail(err, f"{exc} (--from {from_s}, --to {to_s})", EXIT_USAGE)


async def cli_connect(config: Config, err: TextIO) -> asyncpg.Connection | int:
    from recorderd.db import DatabaseUnavailable, connect

    try:
        return await connect(config.database_dsn(), node=config.node.id)
    except DatabaseUnavailable as exc:
        return cli_fail(err, str(exc))


NO_SCHEMA = "the index has no clips table yet: run `recorderd migrate` (or start the daemon)"


def describe(result: CutResult) -> list[str]:
    """Lines about what an export or clip covers, its gaps and the files refused."""
    from recorderd.report import human_bytes, human_duration

    lines = [f"{human_bytes(result.size_bytes)}, {layout.iso(result.start)} .. {layout.iso(result.end)} "
             f"({human_duration(result.duration)}) from {result.files} segment file{'s' if result.files != 1 else ''}"]
    if result.gaps:
        missing = sum(b - a for a, b in result.gaps)
        lines.append(f"{len(result.gaps)} gap{'s' if len(result.gaps) != 1 else ''} without footage "
                     f"({human_duration(missing)} missing):")
        lines += [f"  gap {layout.iso(a)} .. {layout.iso(b)} ({human_duration(b - a)})" for a, b in result.gaps[:20]]
    for path, why in result.skipped[:20]:
        lines.append(f"  skipped {path}: {why}")
    return lines


def _output_problem(output: Path, root: Path) -> tuple[Path, str | None]:
    """``-o`` made absolute, and why it cannot be written: it exists (never overwritten), its directory
    does not, or it is in the storage root (where a file could pass for footage or a clip)."""
    dest = Path(os.path.abspath(output))
    if os.path.lexists(dest):
        return dest, f"{output} exists: remove it or choose another -o"
    if not dest.parent.is_dir():
        return dest, f"{dest.parent} is not a directory"
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(dest.parent), real_root]) == real_root:
        return dest, f"write exports outside the storage root {root}"
    return dest, None


async def cmd_export(config: Config, camera_id: str, from_s: str, to_s: str, output: Path, out: TextIO,
                     err: TextIO | None = None, *, ffmpeg_bin: str = "ffmpeg") -> int:
    """``recorderd export``: one MP4 of a camera's period, written to ``output`` (never over a file)."""
    import sys

    err = err or sys.stderr
    period = cli_period(from_s, to_s, err)
    if isinstance(period, int):
        return period
    s, e = period
    dest, problem = _output_problem(output, config.storage.root)
    if problem:
        return cli_fail(err, problem, EXIT_USAGE)
    conn = await cli_connect(config, err)
    if isinstance(conn, int):
        return conn
    try:
        files = await segments_for(conn, camera_id, s, e)
        from recorderd.report import unknown_camera

        unknown = await unknown_camera(conn, config, camera_id) if not files else None
        if unknown:
            return cli_fail(err, unknown)
    except asyncpg.UndefinedTableError:
        return cli_fail(err, "the index has no schema yet: run `recorderd migrate` (or start the daemon)")
    finally:
        await conn.close()
    try:
        if not files:
            raise NoFootage(f"no footage of {camera_id} between {layout.iso(s)} and {layout.iso(e)}")
        from recorderd.archive import store_for

        result = await cut(files, s, e, dest, root=config.storage.root, ffmpeg_bin=ffmpeg_bin,
                           store=store_for(config))
    except ExportError as exc:
        return cli_fail(err, str(exc))
    out.write(f"{output}: " + "\n".join(describe(result)) + "\n")
    return EXIT_OK
