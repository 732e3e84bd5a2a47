"""Retention sweep throughput, and what it does to index lag while it runs.

    python benchmarks/bench_sweep.py [--dsn DSN] [--segments N] [--cameras C] [--batch-size B]

Creates N expired segments (empty files spread over C cameras and their day directories, rows by
COPY), then runs one ``Sweeper.sweep_once()`` while a real ``Indexer`` receives synthetic segment
events for ``--live-cameras`` cameras with ``--live-segment`` second segments. Prints segments deleted
per second (file and row both) and the index lag (commit - closed_at) p50/p99/max measured during the
sweep, plus the event loop's worst stall. Without ``--dsn`` a private cluster is started
(tests/fixtures_pg.PgCluster). Targets: >= 5,000 segments/s, lag p99 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import asyncpg  # noqa: E402

from recorderd import logging as rlog  # noqa: E402
from recorderd.config import Config, parse_config  # noqa: E402
from recorderd.db import Database, migrate  # noqa: E402
from recorderd.events import SegmentEvent  # noqa: E402
from recorderd.indexer import Indexer  # noqa: E402
from recorderd.layout import segment_path  # noqa: E402
from recorderd.retention import DAY, Q, Sweeper  # noqa: E402

SEGMENT_SECONDS = 60.0


def make_config(root: Path, cameras: int, live: int, batch_size: int) -> Config:
    cams: list[dict[str, Any]] = [{"id": f"old{i:03d}", "url": "rtsp://127.0.0.1:1/x", "plan": "basic"}
                                  for i in range(cameras)]
    cams += [{"id": f"live{i:04d}", "url": "rtsp://127.0.0.1:1/x", "plan": "premium"} for i in range(live)]
    return parse_config({"storage": {"root": str(root), "min_free_percent": 0}, "cameras": cams,
                         "retention": {"batch_size": batch_size}, "metrics": {"listen": None}})


def create_files(root: Path, n: int, cameras: int, now: float) -> list[tuple[Any, ...]]:
    """Empty files, newest 8 days old (basic plan: 7), going back per camera; returns COPY records."""
    per_cam = -(-n // cameras)
    records: list[tuple[Any, ...]] = []
    made_dirs: set[Path] = set()
    newest = now - 8 * DAY
    flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
    for c in range(cameras):
        cam = f"old{c:03d}"
        for k in range(min(per_cam, n - len(records))):
            start = newest - (k + 1) * SEGMENT_SECONDS
            p = segment_path(root, cam, start)
            if p.parent not in made_dirs:
                p.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(p.parent)
            os.close(os.open(p, flags, 0o644))
            records.append((cam, datetime.fromtimestamp(start, UTC),
                            datetime.fromtimestamp(start + SEGMENT_SECONDS, UTC), SEGMENT_SECONDS, 0, str(p),
                            "ffmpeg", 3))
    return records


async def copy_rows(dsn: str, records: list[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "segments", records=records,
            columns=["camera_id", "start_time", "end_time", "duration_seconds", "size_bytes", "path", "source",
                     "source_rank"])
        await conn.execute("ANALYZE segments")
    finally:
        await conn.close()


async def feed(indexer: Indexer, root: Path, live: int, seg: float, stop: asyncio.Event) -> int:
    """Synthetic finished segments: ``live`` cameras, one segment each per ``seg`` seconds, spread evenly."""
    n = 0
    t0 = time.time()
    interval = seg / live
    while not stop.is_set():
        now = time.time()
        due = int((now - t0) / interval)
        while n < due:
            cam = f"live{n % live:04d}"
            start = t0 + (n // live) * seg
            indexer.submit(SegmentEvent(cam, str(segment_path(root, cam, start)), start, start + seg, 1000,
                                        None, None, "ffmpeg", now))
            n += 1
        await asyncio.sleep(0.01)
    return n


async def loop_stall(stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.005)
        out.append(time.monotonic() - t - 0.005)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def bench(args: argparse.Namespace, dsn: str) -> None:
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    cfg = make_config(root, args.cameras, args.live_cameras, args.batch_size)
    await migrate(dsn)
    db = Database(dsn, pool_max=6)
    await db.connect()
    indexer = Indexer(cfg, db, watch=False)
    lags: list[float] = []
    window = {"on": False}

    def hook(events: list[SegmentEvent], commit: float) -> None:
        if window["on"]:
            lags.extend(commit - ev.closed_at for ev in events)

    indexer.commit_hook = hook
    ix_task = asyncio.create_task(indexer.run())  # database already up: no start-up reconcile

    t = time.monotonic()
    records = await asyncio.to_thread(create_files, root, args.segments, args.cameras, now)
    t_files = time.monotonic() - t
    t = time.monotonic()
    await copy_rows(dsn, records)
    t_copy = time.monotonic() - t
    del records
    print(f"setup: {args.segments:,} files in {t_files:.1f}s, rows by COPY in {t_copy:.1f}s "
          f"({args.cameras} cameras, {SEGMENT_SECONDS:.0f}s segments, all expired)")

    stop = asyncio.Event()
    stalls: list[float] = []
    feeder = asyncio.create_task(feed(indexer, root, args.live_cameras, args.live_segment, stop))
    stall_task = asyncio.create_task(loop_stall(stop, stalls))
    await asyncio.sleep(2.0)  # baseline lag, no sweep
    window["on"] = True
    await asyncio.sleep(2.0)
    base = list(lags)
    lags.clear()
    stalls.clear()

    async with db.acquire() as conn:  # the per-sweep survey (storage per camera) is one full scan
        t = time.monotonic()
        await conn.fetch(Q["survey"])
        t_survey = time.monotonic() - t
    sweeper = Sweeper(cfg, db, set)
    t = time.monotonic()
    report = await sweeper.sweep_once()
    dt = time.monotonic() - t
    window["on"] = False
    stop.set()
    fed = await feeder
    await stall_task
    await indexer.close(5)
    await ix_task
    async with db.acquire() as conn:
        left = await conn.fetchval("SELECT count(*) FROM segments WHERE camera_id LIKE 'old%'")
    await db.close()
    files_left = sum(len(files) for top, _, files in os.walk(root) if "/old" in top)

    deleted = report.deleted
    print(f"sweep: {deleted:,} segments deleted (file + row) in {dt:.2f}s = {deleted / dt:,.0f} segments/s "
          f"(batch {args.batch_size}); rows left {left}, backlog files left {files_left}")
    print(f"index lag while sweeping ({len(lags)} rows from {args.live_cameras} cameras / "
          f"{args.live_segment:.0f}s segments, real Indexer): p50 {pct(lags, .5) * 1000:.0f} ms, "
          f"p99 {pct(lags, .99) * 1000:.0f} ms, max {max(lags, default=0) * 1000:.0f} ms; "
          f"without sweep p99 {pct(base, .99) * 1000:.0f} ms")
    print(f"survey query over {args.segments:,} rows (runs once per sweep): {t_survey * 1000:.0f} ms")
    print(f"event loop: worst stall {max(stalls, default=0) * 1000:.1f} ms, "
          f"mean {statistics.fmean(stalls) * 1000 if stalls else 0:.2f} ms; events fed {fed:,}")
    ok = deleted / dt >= 5000 and pct(lags, .99) < 1.0
    print("targets (>= 5,000 segments/s, lag p99 < 1 s): " + ("met" if ok else "NOT met"))
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", help="PostgreSQL to use (an empty database); default: a private cluster")
    p.add_argument("--segments", type=int, default=1_000_000)
    p.add_argument("--cameras", type=int, default=50, help="cameras holding the expired backlog")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--live-cameras", type=int, default=1000)
    p.add_argument("--live-segment", type=float, default=10.0, help="seconds per live segment")
    p.add_argument("--root", help="storage root for the files (default: a temporary directory)")
    args = p.parse_args()
    rlog.configure("warning")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if args.dsn:
        asyncio.run(bench(args, args.dsn))
        return 0
    from fixtures_pg import PgCluster
    with PgCluster() as cluster:
        dsn = cluster.create_database("bench_sweep")
        asyncio.run(bench(args, dsn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
