"""The footage API under load while recording: playlists, playback start, seeks, clips and exports,
and 50 concurrent viewers, against the real ``recorderd run``.

Why: serving footage must never hurt recording. This runs the real daemon (real PostgreSQL, one real
test camera being recorded in 2 s segments) with a day of footage seeded for two more cameras, one in
1 h files and one in 10 s files, and times the HTTP API as a player and a user would use it, from a
client on the same host (so the figures are the server's time, not a network's):

1. the HLS playlist of the whole day: cold (first request after start: every file's fragments are
   scanned) and warm (fragment indexes cached);
2. playback start: playlist + its first ``EXT-X-MAP`` init range + its first media range, in sequence;
3. seek: a 10-minute playlist starting at a random instant + its first media range, p50/p99;
4. a 10-minute clip (``POST /api/v1/clips``) and a 10-minute export (``GET .../export.mp4``);
5. N viewers, each fetching a playlist and then its init and media ranges one after another (as fast
   as they come, like players filling their buffer) for a while: requests/s, MB/s, fragment latency,
   the daemon's event-loop lag (``recorderd_event_loop_lag_seconds`` from /metrics) and proof that the
   live camera's recording has no hole meanwhile.

The seeded footage is real fragmented MP4 as the recorder writes it (FFmpeg, 320x240, 10 fps, 1 s GOP,
``frag_keyframe+empty_moov+default_base_moof``, timestamps from 0 in every file), indexed by rows in
``segments`` whose times tile the day. Every path is a hard link of one 1 h file or of one 10 s file,
so the disk cost is tiny and the bytes come from the page cache: this measures the server, not the
disk. An extra hour before the day is seeded for the cold playback start, so the day's cold playlist
really scans every one of its files. Figures are measured in one run, printed, never asserted; the
issue's targets are printed beside them.

    python benchmarks/bench_http.py [--hours 24] [--viewers 50] [--seconds 30] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import aiohttp
import asyncpg
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_cam import TestCam, free_port  # noqa: E402
from fixtures_pg import PgCluster  # noqa: E402

from recorderd.events import SOURCE_RANK  # noqa: E402
from recorderd.layout import iso, segment_path  # noqa: E402

T = TypeVar("T")

LIVE = "cam-live"
LIVE_SEGMENT_SECONDS = 2
SEED_1H = "seed-1h"
SEED_10S = "seed-10s"
SHAPES = ((SEED_1H, 3600), (SEED_10S, 10))  # (camera, file seconds)
WINDOW = 600.0  # seek, playback-start, clip and export period: 10 minutes
SEEKS = 50
WARM_REPEATS = 5
GAP_OK = 0.5  # seconds between consecutive live segments that still count as no gap
KBPS = 256
CLK_TCK = os.sysconf("SC_CLK_TCK")
# the targets: (seed, ours) seconds
TARGET_START = (2.0, 0.3)
TARGET_SEEK = (0.5, 0.05)
TARGET_CLIP = (5.0, 1.0)
CLIP_KEYS = frozenset({"id", "camera_id", "name", "start", "end", "size_bytes", "created_at", "url"})
LAG_METRIC = "recorderd_event_loop_lag_seconds"
_MAP_RE = re.compile(r'#EXT-X-MAP:URI="([^"]+)",BYTERANGE="(\d+)@(\d+)"')
_BUCKET_RE = re.compile(LAG_METRIC + r'_bucket\{le="([^"]+)"\} ([0-9.e+-]+)')
_SUM_RE = re.compile(LAG_METRIC + r"_(sum|count) ([0-9.e+-]+)")


class BenchError(Exception):
    """The bench cannot go on (the daemon died, an answer was not what the API promises)."""


# --------------------------------------------------------------------------- small helpers


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1): with 50 samples, p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, the daemon alone


def run(argv: Sequence[str], what: str, timeout: float = 120) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")


async def timed(coro: Awaitable[T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - t0


# --------------------------------------------------------------------------- footage


def make_footage(work: Path) -> tuple[Path, Path]:
    """One 10 s and one 1 h fragmented MP4 like the recorder's files: a 10 s H.264 clip (1 s GOP,
    constant bitrate) encoded once, then stream-copied (looped for the hour)."""
    src, ten, hour = work / "src.mp4", work / "ten.mp4", work / "hour.mp4"
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10",
         "-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "10",
         "-keyint_min", "10", "-sc_threshold", "0", "-b:v", f"{KBPS}k", "-maxrate", f"{KBPS}k",
         "-bufsize", f"{KBPS}k", "-x264-params", "nal-hrd=cbr", "-f", "mp4", str(src)], "encoding the clip")
    frag = ["-c", "copy", "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov+default_base_moof"]
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *frag, str(ten)], "the 10 s file")
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "359", "-i", str(src), *frag, str(hour)],
        "the 1 h file")
    return ten, hour


async def seed(dsn: str, root: Path, camera: str, source: Path, file_seconds: int, start: float,
               end: float) -> int:
    """Hard links of ``source`` in the daemon's layout tiling ``[start, end)``, and their index rows."""
    run_id = uuid.uuid4()
    size = source.stat().st_size
    rows = []
    t = start
    seq = 0
    while t < end:
        path = segment_path(root, camera, t)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, path)
        rows.append((camera, datetime.fromtimestamp(t, UTC), datetime.fromtimestamp(t + file_seconds, UTC),
                     float(file_seconds), size, str(path), run_id, seq, "ffmpeg", SOURCE_RANK["ffmpeg"]))
        t += file_seconds
        seq += 1
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "segments", records=rows,
            columns=["camera_id", "start_time", "end_time", "duration_seconds", "size_bytes", "path", "run_id",
                     "seq", "source", "source_rank"])
    finally:
        await conn.close()
    return len(rows)


def write_config(path: Path, root: Path, dsn: str, cam_url: str, listen: str, token: str) -> None:
    off = "rtsp://127.0.0.1:9/none"  # the seeded cameras are disabled: nothing is dialled
    cams = [{"id": LIVE, "url": cam_url, "segment_seconds": LIVE_SEGMENT_SECONDS, "stall_seconds": 10,
             "timeout_seconds": 5},
            {"id": SEED_1H, "url": off, "segment_seconds": 3600, "enabled": False},
            {"id": SEED_10S, "url": off, "segment_seconds": 10, "enabled": False}]
    path.write_text(yaml.safe_dump({
        "storage": {"root": str(root), "min_free_percent": 1},
        "database": {"dsn": dsn},
        "http": {"listen": listen, "tokens": [{"name": "bench", "sha256": hashlib.sha256(token.encode()).hexdigest(),
                                               "clips": True}]},
        "cameras": cams}))


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``recorderd run`` as a subprocess, logging JSON lines to a file."""

    def __init__(self, config: Path, root: Path, log: Path) -> None:
        self.config, self.root, self.log = config, root, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "recorderd", "run", "--config", str(self.config),
                                          "--log-format", "json"], stdout=fh, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"recorderd exited with {self.proc.returncode}; see {self.log}")

    def camera(self, camera_id: str) -> dict[str, Any] | None:
        try:
            status = json.loads((self.root / ".recorderd" / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return next((dict(c) for c in status.get("cameras", []) if c.get("camera_id") == camera_id), None)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- the HTTP side


@dataclass(frozen=True, slots=True)
class Media:
    """One media segment of a playlist: its init section and its own byte range (offset, length)."""

    map_url: str
    map_range: tuple[int, int]
    url: str
    range: tuple[int, int]
    duration: float


def parse_playlist(text: str, base: str) -> list[Media]:
    """The media segments of an HLS playlist of the API, URLs resolved against ``base``."""
    out: list[Media] = []
    map_url, map_range = "", (0, 0)
    duration, byterange = 0.0, None
    for line in text.splitlines():
        if line.startswith("#EXT-X-MAP:"):
            m = _MAP_RE.match(line)
            if m is None:
                raise BenchError(f"unexpected EXT-X-MAP line: {line!r}")
            map_url, map_range = urljoin(base, m[1]), (int(m[3]), int(m[2]))
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",", 1)[0])
        elif line.startswith("#EXT-X-BYTERANGE:"):
            length, _, offset = line[17:].partition("@")
            byterange = (int(offset), int(length))
        elif line and not line.startswith("#"):
            if byterange is None:
                raise BenchError("media segment without EXT-X-BYTERANGE")
            out.append(Media(map_url, map_range, urljoin(base, line), byterange, duration))
            byterange = None
    return out


class Api:
    """The bench's client: bearer token on API calls, signed URLs alone for media (like a player)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base = session, base
        self.auth = {"Authorization": f"Bearer {token}"}

    def url(self, path: str) -> str:
        return urljoin(self.base, path)

    async def get(self, path: str) -> tuple[int, bytes]:
        async with self.session.get(self.url(path), headers=self.auth) as r:
            return r.status, await r.read()

    async def playlist(self, camera: str, start: float, end: float) -> tuple[str, list[Media], float]:
        """The playlist of ``[start, end)``, its media segments, and the seconds the request took (to the
        last byte; parsing it here is not counted)."""
        path = f"/api/v1/cameras/{camera}/playlist.m3u8?from={iso(start)}&to={iso(end)}"
        (status, body), seconds = await timed(self.get(path))
        if status != 200:
            raise BenchError(f"playlist: HTTP {status}: {body[:300]!r}")
        text = body.decode()
        return text, parse_playlist(text, self.url(path)), seconds

    async def byte_range(self, url: str, rng: tuple[int, int]) -> int:
        offset, length = rng
        async with self.session.get(url, headers={"Range": f"bytes={offset}-{offset + length - 1}"}) as r:
            body = await r.read()
            if r.status != 206 or len(body) != length:
                raise BenchError(f"range {offset}+{length} of {url}: HTTP {r.status}, {len(body)} bytes")
        return length

    async def lag(self) -> dict[str, float] | None:
        """The loop-lag histogram's cumulative buckets (``le`` -> count) plus ``sum``/``count``; None when the
        daemon does not export it."""
        async with self.session.get(self.url("/metrics")) as r:
            text = await r.text()
        buckets = {le: float(v) for le, v in _BUCKET_RE.findall(text)}
        if not buckets:
            return None
        buckets.update({k: float(v) for k, v in _SUM_RE.findall(text)})
        return buckets


def lag_summary(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    """p99, max and mean of the loop lag observed between two /metrics snapshots (bucket deltas: the
    percentiles are bucket upper bounds)."""
    if before is None or after is None:
        return "n/a (no recorderd_event_loop_lag_seconds in /metrics)"
    edges = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after if le not in ("sum", "count"))
    total = edges[-1][1]
    if total <= 0:
        return "no samples"
    p99 = next(le for le, n in edges if n >= 0.99 * total)
    worst = next(le for le, n in edges if n >= total)
    lower = max((le for le, n in edges if n < total), default=0.0)
    mean = (after.get("sum", 0.0) - before.get("sum", 0.0)) / total

    def fmt(x: float) -> str:
        return "> 5 s" if math.isinf(x) else f"<= {x * 1000:g} ms"

    return (f"p99 {fmt(p99)}, max {fmt(worst)} (over {lower * 1000:g} ms), mean {mean * 1000:.2f} ms "
            f"({total:.0f} samples of a 0.25 s timer)")


# --------------------------------------------------------------------------- the measurements


@dataclass
class Setup:
    api: Api
    daemon: Daemon
    dsn: str
    day_start: float  # the seeded day [day_start, day_end); one more hour before it
    day_end: float
    files: dict[str, int]  # seeded files per camera, the day only
    rng: random.Random

    def instant(self, span: float = WINDOW) -> float:
        """A random instant of the day with ``span`` seconds of footage after it, to the millisecond."""
        return round(self.rng.uniform(self.day_start, self.day_end - span), 3)


async def playback_start(s: Setup, camera: str, start: float, end: float) -> tuple[float, float, float, int]:
    """(playlist, init, first media) seconds of opening ``[start, end)``, and the media segment count."""
    _, media, t_list = await s.api.playlist(camera, start, end)
    if not media:
        raise BenchError(f"empty playlist for {camera} {iso(start)}..{iso(end)}")
    first = media[0]
    _, t_init = await timed(s.api.byte_range(first.map_url, first.map_range))
    _, t_media = await timed(s.api.byte_range(first.url, first.range))
    return t_list, t_init, t_media, len(media)


def start_line(label: str, parts: tuple[float, float, float, int]) -> str:
    t_list, t_init, t_media, _ = parts
    total = t_list + t_init + t_media
    return (f"   {label:<44} {ms(total):>10} = playlist {t_list * 1000:.1f} + init {t_init * 1000:.1f} "
            f"+ media {t_media * 1000:.1f}")


async def step_playback_cold(s: Setup) -> None:
    print(f"1. playback start on a fresh daemon: playlist + its first EXT-X-MAP init range + its first media range, "
          f"in sequence (seed target < {TARGET_START[0]:g} s end to end, ours < {TARGET_START[1] * 1000:g} ms "
          "server side)", flush=True)
    for camera, seconds in SHAPES:
        # in the hour seeded before the day: files no request has scanned yet
        start = round(s.rng.uniform(s.day_start - 3600, s.day_start - WINDOW), 3)
        parts = await playback_start(s, camera, start, start + WINDOW)
        print(start_line(f"{_shape(seconds)}, cold, 10-min window at an instant", parts), flush=True)


async def step_day_playlists(s: Setup) -> None:
    hours = (s.day_end - s.day_start) / 3600
    print(f"2. playlist of {hours:g} h of footage (GET /cameras/{{id}}/playlist.m3u8?from=&to=, "
          "to the last byte)", flush=True)
    lag0 = await s.api.lag()
    for camera, seconds in SHAPES:
        text, media, cold = await s.api.playlist(camera, s.day_start, s.day_end)
        warm = [(await s.api.playlist(camera, s.day_start, s.day_end))[2] for _ in range(WARM_REPEATS)]
        covered = sum(m.duration for m in media)
        print(f"   {_shape(seconds)} ({s.files[camera]:,} files): cold {ms(cold)} (first request: scans every "
              f"file), warm {ms(statistics.median(warm))} (median of {WARM_REPEATS}, fragment indexes cached); "
              f"{len(text.encode()) / 1e6:.2f} MB, {len(media):,} media segments, {covered / 3600:.2f} h",
              flush=True)
    print(f"   daemon event-loop lag over these {2 + 2 * WARM_REPEATS} requests: "
          f"{lag_summary(lag0, await s.api.lag())}", flush=True)
    print("   playback start opening the whole day (target as in 1.):", flush=True)
    for camera, seconds in SHAPES:
        parts = await playback_start(s, camera, s.day_start, s.day_end)
        print(start_line(f"{_shape(seconds)}, warm, {parts[3]:,} segments", parts), flush=True)


async def step_seeks(s: Setup) -> None:
    print(f"3. seek: a 10-min playlist from a random instant + its first media range, {SEEKS} seeks each "
          f"(seed target < {TARGET_SEEK[0] * 1000:g} ms, ours < {TARGET_SEEK[1] * 1000:g} ms)", flush=True)
    for camera, seconds in SHAPES:
        totals, lists = [], []
        for _ in range(SEEKS):
            start = s.instant()
            _, media, t_list = await s.api.playlist(camera, start, start + WINDOW)
            _, t_media = await timed(s.api.byte_range(media[0].url, media[0].range))
            totals.append(t_list + t_media)
            lists.append(t_list)
        print(f"   {_shape(seconds):<12} p50 {ms(pct(totals, 0.5)):>9}, p99 {ms(pct(totals, 0.99)):>9} "
              f"(playlist alone p50 {ms(pct(lists, 0.5))}, p99 {ms(pct(lists, 0.99))})", flush=True)


async def step_clips(s: Setup) -> None:
    print(f"4. 10 minutes cut by stream copy (clip: seed target < {TARGET_CLIP[0]:g} s, ours < "
          f"{TARGET_CLIP[1]:g} s)", flush=True)
    for camera, seconds in SHAPES:
        start = s.instant()
        doc = {"camera_id": camera, "from": iso(start), "to": iso(start + WINDOW),
               "name": f"bench {_shape(seconds)}"}
        t0 = time.perf_counter()
        async with s.api.session.post(s.api.url("/api/v1/clips"), json=doc, headers=s.api.auth) as r:
            body = await r.read()
            status = r.status
        elapsed = time.perf_counter() - t0
        label = f"   POST /api/v1/clips, {_shape(seconds):<10}"
        if status in (404, 405):
            print(f"{label} not available (HTTP {status}: {_error(body)})", flush=True)
        elif status != 201:
            print(f"{label} HTTP {status} after {ms(elapsed)}: {_error(body)}", flush=True)
        else:
            clip = json.loads(body)
            missing = sorted(CLIP_KEYS - clip.keys())
            print(f"{label} {ms(elapsed):>10}  201, clip {clip.get('id')}: {clip.get('start')} .. {clip.get('end')}, "
                  f"{(clip.get('size_bytes') or 0) / 1e6:.2f} MB"
                  + (f" (MISSING keys: {', '.join(missing)})" if missing else ""), flush=True)
    for camera, seconds in SHAPES:
        start = s.instant()
        path = f"/api/v1/cameras/{camera}/export.mp4?from={iso(start)}&to={iso(start + WINDOW)}"
        label = f"   GET .../export.mp4, {_shape(seconds):<10}"
        t0 = time.perf_counter()
        first_byte = 0.0
        size = 0
        async with s.api.session.get(s.api.url(path), headers=s.api.auth,
                                     timeout=aiohttp.ClientTimeout(total=300)) as r:
            status = r.status
            disposition = r.headers.get("Content-Disposition", "")
            if status == 200:
                async for chunk in r.content.iter_any():
                    if not size:
                        first_byte = time.perf_counter() - t0
                    size += len(chunk)
            else:
                body = await r.read()
        elapsed = time.perf_counter() - t0
        if status in (404, 405):
            print(f"{label} not available (HTTP {status}: {_error(body)})", flush=True)
        elif status != 200:
            print(f"{label} HTTP {status} after {ms(elapsed)}: {_error(body)}", flush=True)
        else:
            kind = "attachment" if disposition.startswith("attachment") else f"Content-Disposition {disposition!r}"
            print(f"{label} {ms(elapsed):>10}  200 {kind}, {size / 1e6:.2f} MB, first byte after "
                  f"{ms(first_byte)}", flush=True)


@dataclass
class ViewerStats:
    requests: int = 0
    bytes: int = 0
    errors: int = 0
    playlists: list[float] = field(default_factory=list)
    fragments: list[float] = field(default_factory=list)
    first_error: str = ""


async def viewer(s: Setup, n: int, deadline: float, stats: ViewerStats) -> None:
    """A player: a 10-min playlist from a random instant, then its init (when it changes) and media ranges
    one after another as fast as they come; again with a new instant until ``deadline``."""
    camera = SHAPES[n % len(SHAPES)][0]
    while time.monotonic() < deadline:
        start = s.instant()
        try:
            _, media, t = await s.api.playlist(camera, start, start + WINDOW)
            stats.requests += 1
            stats.playlists.append(t)
            current_map = None
            for m in media:
                if time.monotonic() >= deadline:
                    return
                # (never "stats.bytes += await ...": that reads the counter before the await and
                # loses what the other viewers added meanwhile)
                if (m.map_url, m.map_range) != current_map:
                    got = await s.api.byte_range(m.map_url, m.map_range)
                    stats.bytes += got
                    stats.requests += 1
                    current_map = (m.map_url, m.map_range)
                got, t = await timed(s.api.byte_range(m.url, m.range))
                stats.bytes += got
                stats.requests += 1
                stats.fragments.append(t)
        except (BenchError, aiohttp.ClientError, TimeoutError) as exc:
            stats.errors += 1
            stats.first_error = stats.first_error or f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.1)


async def live_segments(s: Setup, lo: float, hi: float) -> list[tuple[float, float, str]]:
    conn = await asyncpg.connect(s.dsn)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM start_time)::float8 AS s, extract(epoch FROM end_time)::float8 AS e,"
            " run_id::text AS r FROM segments WHERE camera_id = $1 AND end_time > to_timestamp($2)"
            " AND start_time < to_timestamp($3) ORDER BY start_time", LIVE, lo, hi)
    finally:
        await conn.close()
    return [(float(r["s"]), float(r["e"]), str(r["r"])) for r in rows]


async def step_viewers(s: Setup, viewers: int, seconds: float) -> None:
    print(f"5. {viewers} concurrent viewers for {seconds:g} s (each: a 10-min playlist at a random instant, then its "
          f"init and media ranges back to back; half on each shape; media by signed URL, no header)", flush=True)
    live_before = s.daemon.camera(LIVE) or {}
    lag0 = await s.api.lag()
    stats = ViewerStats()
    cpu0, own0 = proc_cpu_seconds(s.daemon.pid), time.process_time()
    wall0, t0 = time.time(), time.monotonic()
    deadline = t0 + seconds
    await asyncio.gather(*(viewer(s, n, deadline, stats) for n in range(viewers)))
    elapsed = time.monotonic() - t0
    wall1 = time.time()
    cpu = (proc_cpu_seconds(s.daemon.pid) - cpu0) / elapsed
    own = (time.process_time() - own0) / elapsed
    lag1 = await s.api.lag()
    s.daemon.check()
    frags = stats.fragments
    print(f"   {stats.requests / elapsed:,.0f} requests/s ({stats.requests:,} in {elapsed:.1f} s: "
          f"{len(stats.playlists):,} playlists, {len(frags):,} media ranges, the rest init ranges), "
          f"{stats.bytes / elapsed / 1e6:.1f} MB/s, {stats.errors} errors"
          + (f" (first: {stats.first_error})" if stats.errors else ""), flush=True)
    if frags:
        print(f"   media range latency p50 {ms(pct(frags, 0.5))}, p99 {ms(pct(frags, 0.99))}, max "
              f"{ms(max(frags))}; playlist p50 {ms(pct(stats.playlists, 0.5))}, p99 "
              f"{ms(pct(stats.playlists, 0.99))}", flush=True)
    print(f"   daemon event-loop lag: {lag_summary(lag0, lag1)}", flush=True)
    print(f"   daemon CPU {cpu * 100:.0f}% of one core; this client {own * 100:.0f}% of one core "
          f"(same {os.cpu_count()}-core host)", flush=True)

    # the live camera over the run: wait for the segment that closes after it to be indexed
    wait_until = time.monotonic() + 4 * LIVE_SEGMENT_SECONDS + 15
    segs = await live_segments(s, wall0, wall1)
    while (not segs or segs[-1][1] < wall1) and time.monotonic() < wait_until:
        await asyncio.sleep(0.5)
        segs = await live_segments(s, wall0, wall1)
    live_after = s.daemon.camera(LIVE) or {}
    if not segs:
        print(f"   recording: NO segment of {LIVE} indexed over the run", flush=True)
        return
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(segs)]
    worst = max(gaps, default=0.0)
    holes = sum(1 for g in gaps if g > GAP_OK)
    head, tail = segs[0][0] - wall0, wall1 - segs[-1][1]
    covered = head <= GAP_OK and tail <= GAP_OK
    expected = (wall1 - wall0) / LIVE_SEGMENT_SECONDS
    restarts = (live_after.get("restarts") or 0) - (live_before.get("restarts") or 0)
    verdict = "nothing lost" if covered and not holes and restarts == 0 else "FOOTAGE LOST"
    print(f"   recording meanwhile ({LIVE}, {LIVE_SEGMENT_SECONDS} s segments, from the index): {len(segs)} "
          f"segments overlap the {wall1 - wall0:.1f} s run (expected {expected:.1f} + the ones cut at its edges), "
          f"{len({r for _, _, r in segs})} FFmpeg run(s), {restarts} restarts;", flush=True)
    print(f"   largest gap between consecutive segments {worst * 1000:.0f} ms, {holes} gaps > {GAP_OK * 1000:.0f} ms, "
          f"footage from {_around(-head, 'before')} the run's start to {_around(-tail, 'after')} its end -> {verdict}",
          flush=True)


def _around(seconds: float, word: str) -> str:
    """``1.20 s before`` / ``0.30 s after`` (``word`` is the direction of a positive value)."""
    other = {"before": "after", "after": "before"}[word]
    return f"{abs(seconds):.2f} s {word if seconds >= 0 else other}"


def _shape(file_seconds: int) -> str:
    return "1 h files" if file_seconds == 3600 else f"{file_seconds} s files"


def _error(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return f"{doc.get('error')}: {doc.get('detail')}"
    except ValueError:
        return body[:200].decode(errors="replace")


# --------------------------------------------------------------------------- main


async def wait_ready(daemon: Daemon, api: Api, timeout: float = 90) -> float:
    """Seconds until the API answers and the live camera records."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        daemon.check()
        cam = daemon.camera(LIVE)
        if cam and cam.get("is_recording"):
            try:
                status, _ = await api.get(f"/api/v1/cameras/{LIVE}")
                if status == 200:
                    return time.monotonic() - t0
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.2)
    raise BenchError(f"the daemon was not recording {LIVE} with its API up after {timeout:.0f} s; see {daemon.log}")


async def bench(args: argparse.Namespace, work: Path, pg: PgCluster, cam: TestCam) -> None:
    t_setup = time.monotonic()
    root = work / "recordings"
    root.mkdir()
    ten, hour = make_footage(work)
    dsn = pg.create_database("bench_http")
    token = secrets.token_urlsafe(32)
    port = free_port()
    config = work / "cameras.yaml"
    write_config(config, root, dsn, cam.url, f"127.0.0.1:{port}", token)
    run([sys.executable, "-m", "recorderd", "migrate", "--config", str(config)], "recorderd migrate")
    day_end = math.floor(time.time() / 3600) * 3600 - 3600  # whole hours, ending an hour ago
    day_start = day_end - args.hours * 3600
    files: dict[str, int] = {}
    for (camera, seconds), source in zip(SHAPES, (hour, ten), strict=True):
        # an extra hour before the day: the cold playback start reads files the day's playlist has not
        await seed(dsn, root, camera, source, seconds, day_start - 3600, day_end)
        files[camera] = int(args.hours * 3600 // seconds)
    seeded = time.monotonic() - t_setup
    print(f"seeded {args.hours:g} h (+1 h) of footage per shape in {seeded:.1f} s: {SEED_1H} {files[SEED_1H]:,} "
          f"files of 1 h ({hour.stat().st_size / 1e6:.1f} MB each), {SEED_10S} {files[SEED_10S]:,} files of 10 s "
          f"({ten.stat().st_size / 1e3:.0f} KB each); 320x240, 10 fps, 1 s GOP, {KBPS} kbit/s; every path a hard "
          f"link of one file (bytes from the page cache)", flush=True)

    daemon = Daemon(config, root, work / "daemon.log")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        api = Api(session, f"http://127.0.0.1:{port}", token)
        daemon.start()
        try:
            ready = await wait_ready(daemon, api)
            print(f"recorderd run up: {LIVE} recording ({LIVE_SEGMENT_SECONDS} s segments) and the API answering "
                  f"{ready:.1f} s after start", flush=True)
            s = Setup(api, daemon, dsn, float(day_start), float(day_end), files, random.Random(args.seed))
            await step_playback_cold(s)  # first: a fresh daemon has nothing cached
            await step_day_playlists(s)
            await step_seeks(s)
            await step_clips(s)
            await step_viewers(s, args.viewers, args.seconds)
            daemon.check()
        finally:
            t0 = time.monotonic()
            daemon.stop()
            if daemon.proc is not None:
                print(f"SIGTERM -> recorderd exit {daemon.proc.returncode} in {time.monotonic() - t0:.1f} s",
                      flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=int, default=24, help="hours of footage per shape (default 24, at most 167)")
    ap.add_argument("--viewers", type=int, default=50, help="concurrent viewers (default 50)")
    ap.add_argument("--seconds", type=float, default=30, help="viewer run length (default 30)")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the instants (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon log, config, footage)")
    args = ap.parse_args()
    if not 1 <= args.hours <= 167:
        ap.error("--hours must be 1..167 (a playlist covers at most a week, and one more hour is seeded)")
    return run_bench("bench-http-", "recorderd HTTP API bench", args, bench)


def run_bench(prefix: str, title: str, args: argparse.Namespace,
              body: Callable[[argparse.Namespace, Path, PgCluster, TestCam], Awaitable[None]]) -> int:
    """A work dir, a private PostgreSQL and one test camera around ``body`` (uvloop if installed);
    everything is torn down after, the work dir kept with ``args.keep``. Shared with bench_page."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)  # the test PostgreSQL runs unprivileged when we are root
    print(f"{title}: {os.cpu_count()} cores, work dir {work}", flush=True)
    pg = PgCluster(work / "pg")
    cam = TestCam(fps=10, gop=10)
    try:
        pg.start()
        cam.start()
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            asyncio.run(body(args, work, pg, cam))
        else:
            uvloop.run(body(args, work, pg, cam))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        cam.stop()
        pg.destroy()
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
