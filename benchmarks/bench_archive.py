"""The archive tier: upload throughput of the Archiver against a bare upload, the event loop while it
uploads, seeks on archived footage through the daemon's API, and the compression tier's CPU cost.

Everything is real: a SeaweedFS S3 server (``weed mini``, tests/fixtures_s3.S3Server), a private
PostgreSQL (tests/fixtures_pg.PgCluster, fsync off like the tests), FFmpeg-made fragmented MP4 cut
the way the recorder cuts it, and for the seeks the real ``recorderd run`` recording a real RTSP test
camera. Figures are measured in one run, printed, never asserted; the goals are printed beside them.

1. upload throughput: N segments (10 s each, 1280x720 15 fps H.264 at 1.6 Mbit/s, ~2 MB: a static
   scene, a moving object and sensor noise, no B-frames, like a camera) are hard-linked into a storage
   root and indexed (``queries.UPSERT_SEGMENTS``, as the indexer writes them) for a camera whose plan
   archives after an hour; they ended two days ago, so all are due. ``Archiver.pass_once()`` is called
   back to back (as the daemon does while a full batch comes back) until every row is archived and
   every local copy is gone. The same files are also uploaded bare, ``obstore.put_async`` of the bytes
   read in a thread, same concurrency, same server, once before and once after the archiver; the
   ratio is archiver / mean of the two bare runs (goal >= 0.9). Where the difference goes: each
   ``put_file`` of the archiver is timed, and so is the time a pass spends before its first and after
   its last upload; then 20 files go one at a time through the archiver's steps timed apart (scan,
   MD5 pass, read, PUT, HEAD).
2. event-loop lag while uploading: a sampler in the same loop (sleep 10 ms, how late it wakes), over
   the archiver run and over the bare runs, p50/p99/max.
3. seek on archived footage: ``recorderd run`` records one test camera as two cameras (2 s segments),
   ``cam-arch`` archived once 3.6 s old, ``cam-local`` kept local. After ``--seconds`` of recording,
   each seek is a playlist from a random instant of the archived period + a ranged GET of its first
   media segment's bytes (by the signed media URL, like a player), on both cameras at the same
   instant; median/p95.
4. compression: ``compress_file`` on copies of ``--compress`` of the segments of 1., libx265 crf 28
   preset medium (the default) and preset fast: FFmpeg's CPU seconds (encode + verifying decode) per
   hour of footage, and the size ratio new/old.

    python benchmarks/bench_archive.py [--segments 200] [--seconds 30] [--concurrency 2] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import platform
import random
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import obstore
import yaml
from obstore.store import S3Store

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench_http import Api, BenchError, Daemon, ms, pct, run, run_bench, timed  # noqa: E402
from fixtures_cam import TestCam, free_port  # noqa: E402
from fixtures_pg import PgCluster  # noqa: E402
from fixtures_s3 import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server  # noqa: E402

from recorderd import logging as rlog  # noqa: E402
from recorderd import queries  # noqa: E402
from recorderd.archive import BATCH, Archiver  # noqa: E402
from recorderd.compress import CompressionSettings, CompressResult, compress_file  # noqa: E402
from recorderd.config import Config, parse_config  # noqa: E402
from recorderd.db import Database, migrate  # noqa: E402
from recorderd.events import SOURCE_RANK  # noqa: E402
from recorderd.ffmpeg import FRAG_OPTIONS  # noqa: E402
from recorderd.fmp4 import scan  # noqa: E402
from recorderd.layout import segment_path  # noqa: E402
from recorderd.objectstore import REQUEST_TIMEOUT, ObjectStore, expected_etag, load_credentials  # noqa: E402

SEGMENT_SECONDS = 10
SOURCE_SECONDS = 20  # encoded once, then stream-copied in a loop and cut into segments
FPS = 15
KBPS = 1600
# a camera's view: a detailed static background, an object crossing it, light temporal noise
CAMERA_FILTER = (f"testsrc2=s=1280x720:r={FPS},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/{FPS}/TB[bg];"
                 f"color=c=orange:s=160x120:r={FPS}[box];"
                 "[bg][box]overlay=x='mod(t*180\\,1120)':y='300+100*sin(t)',noise=alls=4:allf=t,format=yuv420p")
ARCH_CAMERA = "bench-arch"
LIVE_SEGMENT = 2
SEEK_ARCH, SEEK_LOCAL = "cam-arch", "cam-local"
ARCHIVE_AFTER_HOURS = 0.001  # 3.6 s: the daemon's camera is archived almost at once
LAG_INTERVAL = 0.010
WARMUP_FILES = 10
STEP_FILES = 20
GOAL_RATIO = 0.9


# --------------------------------------------------------------------------- small helpers


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].strip() if out.strip() else "?"


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and the children it waited for (weed mini is one process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class LagSampler:
    """How late a ``LAG_INTERVAL`` sleep wakes up, sampled back to back in the running loop."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop:  # perf_counter: uvloop's loop.time() has 1 ms steps
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            self.samples.append(max(0.0, time.perf_counter() - t0 - LAG_INTERVAL))

    def __enter__(self) -> LagSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        if self._task is not None:
            self._task.cancel()

    def summary(self) -> str:
        s = self.samples
        if not s:
            return "no samples"
        return (f"p50 {ms(pct(s, 0.5))}, p99 {ms(pct(s, 0.99))}, max {ms(max(s))} "
                f"({len(s):,} samples)")


# --------------------------------------------------------------------------- footage


def make_segments(work: Path, n: int) -> list[Path]:
    """``n`` fragmented MP4 segments as the recorder cuts them (segment muxer, its movflags, timestamps
    from 0 in every file), from one camera-like source encoded once and stream-copied in a loop."""
    src, out = work / "camera.mp4", work / "segments"
    out.mkdir()
    gop = str(FPS)
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-filter_complex", CAMERA_FILTER, "-t", str(SOURCE_SECONDS),
         "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
         "-b:v", f"{KBPS}k", "-maxrate", f"{KBPS}k", "-bufsize", f"{2 * KBPS}k", "-f", "mp4", str(src)],
        "encoding the camera-like source")
    loops = math.ceil(n * SEGMENT_SECONDS / SOURCE_SECONDS)
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(src), "-c", "copy",
         "-t", str(n * SEGMENT_SECONDS), "-f", "segment", "-segment_time", str(SEGMENT_SECONDS),
         "-reset_timestamps", "1", "-segment_format", "mp4", "-segment_format_options", FRAG_OPTIONS,
         str(out / "%05d.mp4")], "cutting the segments", timeout=300)
    files = sorted(out.glob("*.mp4"))[:n]
    if len(files) < n:
        raise BenchError(f"FFmpeg cut {len(files)} segments, not {n}")
    for f in files:
        idx = scan(f)
        if idx is None or not idx.fragments:
            raise BenchError(f"{f} has no fragment map (fmp4.scan): the archiver would refuse it")
    return files


async def seed_rows(dsn: str, root: Path, files: Sequence[Path], first_start: float) -> None:
    """Hard links of ``files`` in the storage layout, and their rows as the indexer writes them."""
    run_id = uuid.uuid4()
    cams, starts, ends, durs, sizes, paths, runs, seqs, sources, ranks = ([] for _ in range(10))
    for seq, f in enumerate(files):
        t = first_start + seq * SEGMENT_SECONDS
        p = segment_path(root, ARCH_CAMERA, t)
        p.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, p)
        cams.append(ARCH_CAMERA)
        starts.append(datetime.fromtimestamp(t, UTC))
        ends.append(datetime.fromtimestamp(t + SEGMENT_SECONDS, UTC))
        durs.append(float(SEGMENT_SECONDS))
        sizes.append(f.stat().st_size)
        paths.append(str(p))
        runs.append(run_id)
        seqs.append(seq)
        sources.append("ffmpeg")
        ranks.append(SOURCE_RANK["ffmpeg"])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetch(queries.UPSERT_SEGMENTS, cams, starts, ends, durs, sizes, paths, runs, seqs, sources, ranks)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- 1 + 2: upload throughput, lag


@dataclass
class Upload:
    label: str
    seconds: float
    nbytes: int
    count: int
    cpu: float  # this process (every thread), seconds
    weed_cpu: float
    lag: LagSampler
    extra: str = ""

    def line(self) -> str:
        return (f"   {self.label:<28} {self.nbytes / self.seconds / 1e6:7.1f} MB/s, {self.count / self.seconds:6.1f} "
                f"segments/s ({self.count} in {self.seconds:.2f} s); CPU: this process {self.cpu:.2f} s "
                f"({self.cpu / self.nbytes * 1e9:.2f} s/GB), weed {self.weed_cpu:.2f} s{self.extra}")


def archive_config(root: Path, s3: S3Server, concurrency: int) -> Config:
    return parse_config({
        "storage": {"root": str(root), "min_free_percent": 0},
        "plans": {"arch": {"retention_days": 30, "archive_after_hours": 1}},
        "cameras": [{"id": ARCH_CAMERA, "url": "rtsp://127.0.0.1:9/none", "plan": "arch", "enabled": False}],
        "archive": {"url": f"s3://{BUCKET}/archiver", "endpoint": s3.endpoint, "region": "us-east-1",
                    "concurrency": concurrency},
        "metrics": {"listen": None}})


def bare_store(s3: S3Server, prefix: str) -> S3Store:
    """The same client ObjectStore builds (path-style, plain http, same timeouts), no verification."""
    return S3Store(BUCKET, prefix=prefix, endpoint=s3.endpoint, region="us-east-1", virtual_hosted_style_request=False,
                   access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                   client_options={"timeout": REQUEST_TIMEOUT, "connect_timeout": "5s", "allow_http": True})


async def bare_upload(label: str, s3: S3Server, files: Sequence[Path], concurrency: int, prefix: str) -> Upload:
    store = bare_store(s3, prefix)
    sem = asyncio.Semaphore(concurrency)

    each: list[float] = []

    async def one(i: int, path: Path) -> int:
        async with sem:
            t0 = time.perf_counter()
            data = await asyncio.to_thread(path.read_bytes)
            await obstore.put_async(store, f"{i:05d}.mp4", data)
            each.append(time.perf_counter() - t0)
            return len(data)

    assert s3.proc is not None
    w0, c0 = proc_cpu_seconds(s3.proc.pid), time.process_time()
    with LagSampler() as lag:
        t0 = time.perf_counter()
        sizes = await asyncio.gather(*(one(i, f) for i, f in enumerate(files)))
        elapsed = time.perf_counter() - t0
    return Upload(label, elapsed, sum(sizes), len(files), time.process_time() - c0,
                  proc_cpu_seconds(s3.proc.pid) - w0, lag, f"; read + PUT {ms(statistics.median(each))} median")


async def step_breakdown(s3: S3Server, files: Sequence[Path]) -> None:
    """One file at a time, the archiver's steps for one segment timed apart (medians): what a slot of
    ``archive.concurrency`` spends per file besides the PUT a bare upload also does."""
    store = bare_store(s3, "steps")
    steps: dict[str, list[float]] = {k: [] for k in ("fmp4.scan", "MD5 pass (expected_etag)", "read_bytes",
                                                     "PUT", "HEAD")}
    for i, f in enumerate(files):
        _, t = await timed(asyncio.to_thread(scan, f))
        steps["fmp4.scan"].append(t)
        _, t = await timed(asyncio.to_thread(expected_etag, f))
        steps["MD5 pass (expected_etag)"].append(t)
        data, t = await timed(asyncio.to_thread(f.read_bytes))
        steps["read_bytes"].append(t)
        _, t = await timed(obstore.put_async(store, f"{i:05d}.mp4", data))
        steps["PUT"].append(t)
        _, t = await timed(obstore.head_async(store, f"{i:05d}.mp4"))
        steps["HEAD"].append(t)
    med = {k: statistics.median(v) for k, v in steps.items()}
    bare = med["read_bytes"] + med["PUT"]
    print(f"   per segment, one at a time, medians of {len(files)}: " + ", ".join(f"{k} {ms(v)}" for k, v in med.items())
          + f"; archiver {ms(sum(med.values()))} vs bare {ms(bare)} = {bare / sum(med.values()):.2f}", flush=True)


async def left_to_archive(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM segments WHERE camera_id = $1 AND (object_url IS NULL OR upload_url IS NOT NULL)",
            ARCH_CAMERA))
    finally:
        await conn.close()


async def archiver_upload(cfg: Config, dsn: str, s3: S3Server, files: Sequence[Path]) -> Upload:
    assert cfg.archive is not None
    db = Database(dsn, pool_max=4)
    await db.connect()
    store = ObjectStore(cfg.archive, load_credentials(cfg.archive, s3.env()))
    archiver = Archiver(cfg, db, store)
    # when each upload (put_file: MD5 pass, read, PUT, HEAD) ran, to tell it from the rest of a pass
    puts: list[tuple[float, float]] = []
    put_file = store.put_file

    async def timed_put(key: str, path: str) -> tuple[int, str]:
        t0 = time.perf_counter()
        try:
            return await put_file(key, path)
        finally:
            puts.append((t0, time.perf_counter()))

    store.put_file = timed_put  # type: ignore[method-assign]
    pass_spans: list[tuple[float, float]] = []
    total = await left_to_archive(dsn)
    busy = 0.0
    passes = 0
    assert s3.proc is not None
    w0, c0 = proc_cpu_seconds(s3.proc.pid), time.process_time()
    try:
        with LagSampler() as lag:
            left = total
            while left:
                t0 = time.perf_counter()
                await archiver.pass_once()
                pass_spans.append((t0, time.perf_counter()))
                busy += time.perf_counter() - t0  # the count below is the bench's, not timed
                passes += 1
                before, left = left, await left_to_archive(dsn)
                if left >= before:
                    raise BenchError(f"an archiver pass made no progress ({left} of {total} segments left); "
                                     "see the archive_failed lines above")
    finally:
        cpu, weed = time.process_time() - c0, proc_cpu_seconds(s3.proc.pid) - w0
        await db.close()
    still_local = sum(1 for p in (cfg.storage.root / ARCH_CAMERA).rglob("*.mp4"))
    if still_local:
        raise BenchError(f"{still_local} local copies left after the archiver drained the backlog")
    nbytes = sum(f.stat().st_size for f in files)
    lead = tail = 0.0  # per pass: from its start to its first upload, from its last upload to its end
    for p0, p1 in pass_spans:
        inside = [(a, b) for a, b in puts if p0 <= a <= p1]
        if inside:
            lead += min(a for a, _ in inside) - p0
            tail += p1 - max(b for _, b in inside)
    slots = sum(b - a for a, b in puts) / (busy - lead - tail) if busy > lead + tail else float("nan")
    return Upload("Archiver.pass_once()", busy, nbytes, total, cpu, weed, lag,
                  f"; {passes} passes of <= {BATCH}: {ms(lead)} before the first upload and {ms(tail)} after "
                  f"the last (queries, intent, scan, switch, unlink), put_file {ms(statistics.median(b - a for a, b in puts))}"
                  f" median, {slots:.2f} uploads in flight on average in between")


async def step_upload(args: argparse.Namespace, work: Path, pg: PgCluster, s3: S3Server) -> list[Path]:
    t = time.monotonic()
    files = await asyncio.to_thread(make_segments, work, args.segments)
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    print(f"setup: {len(files)} segments made in {time.monotonic() - t:.1f} s: {SEGMENT_SECONDS} s each, 1280x720 "
          f"{FPS} fps H.264 {KBPS} kbit/s, no B-frames, fMP4 ({FRAG_OPTIONS}); {mb(min(sizes))} .. {mb(max(sizes))}, "
          f"{mb(total)} in all; bytes from the page cache (hard links of {SOURCE_SECONDS} s of distinct footage)",
          flush=True)
    root = work / "archive-root"
    dsn = pg.create_database("bench_archive")
    cfg = archive_config(root, s3, args.concurrency)
    await migrate(dsn)
    first = math.floor(time.time() / 3600) * 3600 - 2 * 86400  # two days ago: all due after 1 h
    await seed_rows(dsn, root, files, first)
    print(f"1. upload to weed (S3 on loopback), concurrency {args.concurrency} (archive.concurrency), "
          f"{len(files)} files, {mb(total)}; goal archiver >= {GOAL_RATIO:g} x bare", flush=True)
    idle = LagSampler()
    with idle:
        await asyncio.sleep(1.0)
    # weed allocates its volumes on the first writes: not part of any figure
    await bare_upload("warm-up", s3, files[:WARMUP_FILES], args.concurrency, "warm-up")
    bare1 = await bare_upload("bare put_async (before)", s3, files, args.concurrency, "bare-1")
    print(bare1.line(), flush=True)
    arch = await archiver_upload(cfg, dsn, s3, files)
    print(arch.line(), flush=True)
    bare2 = await bare_upload("bare put_async (after)", s3, files, args.concurrency, "bare-2")
    print(bare2.line(), flush=True)
    bare_rate = statistics.fmean([bare1.nbytes / bare1.seconds, bare2.nbytes / bare2.seconds])
    ratio = arch.nbytes / arch.seconds / bare_rate
    print(f"   ratio archiver / bare = {ratio:.2f} (goal >= {GOAL_RATIO:g}: {'met' if ratio >= GOAL_RATIO else 'NOT met'})",
          flush=True)
    await step_breakdown(s3, files[:STEP_FILES])
    print(f"2. event-loop lag in this process (a {LAG_INTERVAL * 1000:g} ms sleep, how late it wakes):", flush=True)
    print(f"   idle, before                 {idle.summary()}", flush=True)
    print(f"   during the archiver          {arch.lag.summary()}", flush=True)
    print(f"   during the bare uploads      {bare1.lag.summary()} / {bare2.lag.summary()}", flush=True)
    return files


# --------------------------------------------------------------------------- 3: seeks


def seek_config(path: Path, root: Path, dsn: str, cam_url: str, listen: str, token: str, s3: S3Server,
                credentials: Path) -> None:
    credentials.write_text(f"aws_access_key_id={ACCESS_KEY}\naws_secret_access_key={SECRET_KEY}\n")
    credentials.chmod(0o600)
    cams = [{"id": cid, "url": cam_url, "segment_seconds": LIVE_SEGMENT, "stall_seconds": 10, "timeout_seconds": 5,
             "plan": plan} for cid, plan in ((SEEK_ARCH, "arch"), (SEEK_LOCAL, "local"))]
    path.write_text(yaml.safe_dump({
        "storage": {"root": str(root), "min_free_percent": 1},
        "database": {"dsn": dsn},
        "http": {"listen": listen, "tokens": [{"name": "bench", "sha256": hashlib.sha256(token.encode()).hexdigest(),
                                               "clips": True}]},
        "plans": {"arch": {"retention_days": 7, "archive_after_hours": ARCHIVE_AFTER_HOURS},
                  "local": {"retention_days": 7}},
        "archive": {"url": f"s3://{BUCKET}/daemon", "endpoint": s3.endpoint, "region": "us-east-1",
                    "interval_seconds": 1, "credentials_file": str(credentials)},
        "cameras": cams}))


async def segment_rows(dsn: str, camera: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM start_time)::float8 AS s, extract(epoch FROM end_time)::float8 AS e,"
            " object_url IS NOT NULL AND upload_url IS NULL AS archived,"
            " extract(epoch FROM archived_at - end_time)::float8 AS delay"
            " FROM segments WHERE camera_id = $1 ORDER BY start_time", camera)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):  # still migrating
        return []
    finally:
        await conn.close()
    return [dict(r) for r in rows]


@dataclass
class Seeks:
    total: list[float] = field(default_factory=list)
    playlist: list[float] = field(default_factory=list)
    media: list[float] = field(default_factory=list)

    def line(self, label: str) -> str:
        return (f"   {label:<26} median {ms(statistics.median(self.total)):>9}, p95 {ms(pct(self.total, 0.95)):>9} "
                f"(playlist median {ms(statistics.median(self.playlist))}, p95 {ms(pct(self.playlist, 0.95))}; "
                f"media range median {ms(statistics.median(self.media))}, p95 {ms(pct(self.media, 0.95))})")


async def seek(api: Api, camera: str, start: float, end: float, out: Seeks) -> int:
    _, media, t_list = await api.playlist(camera, start, end)
    if not media:
        raise BenchError(f"empty playlist for {camera} from {start:.3f} to {end:.3f}")
    length, t_media = await timed(api.byte_range(media[0].url, media[0].range))
    out.total.append(t_list + t_media)
    out.playlist.append(t_list)
    out.media.append(t_media)
    return length


async def step_seeks(args: argparse.Namespace, work: Path, pg: PgCluster, cam: TestCam, s3: S3Server) -> None:
    root = work / "recordings"
    root.mkdir()
    dsn = pg.create_database("bench_archive_seek")
    token = secrets.token_urlsafe(32)
    port = free_port()
    config = work / "cameras.yaml"
    seek_config(config, root, dsn, cam.url, f"127.0.0.1:{port}", token, s3, work / "s3-credentials")
    daemon = Daemon(config, root, work / "daemon.log")
    print(f"3. seek: recorderd run recording the test camera (320x240, 10 fps, 1 s GOP) as {SEEK_ARCH} (archived "
          f"once {ARCHIVE_AFTER_HOURS * 3600:g} s old, archive.interval_seconds 1) and {SEEK_LOCAL} (local), "
          f"{LIVE_SEGMENT} s segments, for {args.seconds:g} s; then {args.seeks} seeks per camera at the same "
          "random instants = a playlist from the instant to the archived period's end + a ranged GET of its "
          "first media segment (signed URL, like a player)", flush=True)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        api = Api(session, f"http://127.0.0.1:{port}", token)
        daemon.start()
        try:
            t0 = time.monotonic()
            while True:
                daemon.check()
                if all((daemon.camera(c) or {}).get("is_recording") for c in (SEEK_ARCH, SEEK_LOCAL)):
                    break
                if time.monotonic() - t0 > 90:
                    raise BenchError(f"the daemon was not recording both cameras after 90 s; see {daemon.log}")
                await asyncio.sleep(0.2)
            rec0 = time.monotonic()
            while True:
                daemon.check()
                arch = [r for r in await segment_rows(dsn, SEEK_ARCH) if r["archived"]]
                if time.monotonic() - rec0 >= args.seconds and len(arch) >= 5:
                    break
                if time.monotonic() - rec0 > args.seconds + 90:
                    raise BenchError(f"{len(arch)} segments archived after {args.seconds + 90:g} s of recording; "
                                     f"see {daemon.log}")
                await asyncio.sleep(0.5)
            local = [r for r in await segment_rows(dsn, SEEK_LOCAL) if not r["archived"]]
            a, b = arch[0]["s"], arch[-1]["e"]
            contiguous = sum(r["e"] - r["s"] for r in arch)
            delays = sorted(r["delay"] - ARCHIVE_AFTER_HOURS * 3600 for r in arch)
            print(f"   after {time.monotonic() - rec0:.0f} s: {len(arch)} {SEEK_ARCH} segments archived "
                  f"({contiguous:.0f} s of footage over {b - a:.0f} s; archived {ms(statistics.median(delays))} "
                  f"(median) after due), {len(local)} {SEEK_LOCAL} segments local", flush=True)
            rng = random.Random(args.seed)
            res = {SEEK_ARCH: Seeks(), SEEK_LOCAL: Seeks()}
            for i in range(args.seeks):
                start = round(rng.uniform(a, b - 1.0), 3)
                order = (SEEK_ARCH, SEEK_LOCAL) if i % 2 == 0 else (SEEK_LOCAL, SEEK_ARCH)
                for camera in order:
                    await seek(api, camera, start, b, res[camera])
            daemon.check()
            print(res[SEEK_ARCH].line(f"{SEEK_ARCH} (from weed)"), flush=True)
            print(res[SEEK_LOCAL].line(f"{SEEK_LOCAL} (local disk)"), flush=True)
            ratio = statistics.median(res[SEEK_ARCH].total) / statistics.median(res[SEEK_LOCAL].total)
            print(f"   archived / local seek, medians: {ratio:.1f} x", flush=True)
        finally:
            daemon.stop()


# --------------------------------------------------------------------------- 4: compression


async def step_compress(args: argparse.Namespace, work: Path, files: Sequence[Path]) -> None:
    todo = list(files[:args.compress])
    settings = [CompressionSettings(), CompressionSettings(preset="fast")]
    print(f"4. compression: compress_file on copies of {len(todo)} of the segments of 1. ({SEGMENT_SECONDS} s, "
          f"1280x720 {FPS} fps H.264 {KBPS} kbit/s), one after another; FFmpeg's own CPU (encode + verifying "
          "decode, -benchmark)", flush=True)
    out = work / "compress"
    out.mkdir()
    for s in settings:
        results: list[CompressResult] = []
        for f in todo:
            dst = out / f"{s.preset}-{f.name}"
            shutil.copyfile(f, dst)
            results.append(await compress_file(dst, s))
        outcomes = ", ".join(f"{n} {o}" for o, n in sorted(
            {o: sum(r.outcome == o for r in results) for o in {r.outcome for r in results}}.items()))
        bad = [r.reason for r in results if r.outcome != "compressed"]
        footage = sum(r.src_duration or 0.0 for r in results)
        cpu = sum(r.cpu_seconds for r in results)
        wall = sum(r.wall_seconds for r in results)
        old = sum(r.old_size for r in results)
        new = sum(r.new_size for r in results)
        per_hour = cpu / footage * 3600 if footage else float("nan")
        print(f"   {s.codec} crf {s.crf} preset {s.preset:<7} {per_hour:7,.0f} CPU s per hour of footage "
              f"({per_hour / 3600:.2f} cores per camera to keep up; {cpu:.1f} CPU s, {wall:.1f} s wall for "
              f"{footage:.0f} s), size new/old {new / old if old else float('nan'):.3f} "
              f"({mb(old)} -> {mb(new)}); {outcomes}" + (f" (first: {bad[0]})" if bad else ""), flush=True)


# --------------------------------------------------------------------------- main


async def bench(args: argparse.Namespace, work: Path, pg: PgCluster, cam: TestCam) -> None:
    rlog.configure("warning", json=False)  # the in-process archiver's warnings, if any
    print(f"command: {shlex.join([sys.executable, *sys.argv])}", flush=True)
    print(f"machine: nproc {nproc()}, {cpu_model()}, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, obstore {obstore.__version__}, "
          f"weed {tool_version([str(Path(sys.executable).with_name('weed')), 'version'])}, "
          f"{tool_version(['ffmpeg', '-version'])}", flush=True)
    s3 = S3Server(work / "s3")
    t = time.monotonic()
    s3.start()
    print(f"weed mini (SeaweedFS S3) up on {s3.endpoint} in {time.monotonic() - t:.1f} s; PostgreSQL on port "
          f"{pg.port} (fsync off)", flush=True)
    try:
        files = await step_upload(args, work, pg, s3)
        await step_seeks(args, work, pg, cam, s3)
        await step_compress(args, work, files)
    finally:
        s3.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=200, help="segments uploaded (default 200, ~2 MB each)")
    ap.add_argument("--seconds", type=float, default=30, help="recording before the seeks (default 30)")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="uploads at once, archiver and bare (default 2, archive.concurrency's default)")
    ap.add_argument("--seeks", type=int, default=50, help="seeks per camera (default 50)")
    ap.add_argument("--compress", type=int, default=2, help="segments compressed per setting (default 2)")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the seek instants (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config, segments)")
    args = ap.parse_args()
    if args.segments < 1 or args.seeks < 1 or args.compress < 1 or not 1 <= args.concurrency <= 64:
        ap.error("--segments, --seeks, --compress must be >= 1 and --concurrency 1..64")
    return run_bench("bench-archive-", "recorderd archive tier bench", args, bench)


if __name__ == "__main__":
    raise SystemExit(main())
