"""Index throughput and lag through the real Indexer into a real PostgreSQL.

(a) throughput: N completion events submitted as fast as possible; segments committed per second.
(b) lag: C cameras each cutting S-second segments, completions spread uniformly over time, for a
    while; commit time - closed_at at p50/p99/max.

    python benchmarks/bench_index.py [--dsn DSN] [--events 200000] [--cameras 1000] [--seconds 60]

Without --dsn a private cluster is started with tests/fixtures_pg.PgCluster (fsync off, like the
tests; pass --dsn to measure a production-like server). Targets: >= 10,000 segments/s, p99 < 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from recorderd import logging as rlog
from recorderd.config import Config, parse_config
from recorderd.events import SegmentEvent
from recorderd.indexer import Indexer

TARGET_RATE = 10_000.0
TARGET_P99 = 0.5


def make_config(root: Path, dsn: str, cameras: int, pending_max: int, batch_max: int) -> Config:
    return parse_config({
        "storage": {"root": str(root)},
        "database": {"dsn": dsn, "pending_max_rows": pending_max, "batch_max_rows": batch_max},
        "cameras": [{"id": f"cam-{i:04d}", "url": f"rtsp://127.0.0.1:1/{i}"} for i in range(cameras)],
        "metrics": {"listen": None},
    })


async def started(config: Config) -> tuple[Indexer, asyncio.Task[None]]:
    ix = Indexer(config, watch=False)
    task = asyncio.create_task(ix.run())
    deadline = time.monotonic() + 30
    while not (ix.database_up and ix.reconciler.last is not None):
        if time.monotonic() > deadline:
            raise SystemExit("database did not come up within 30 s")
        await asyncio.sleep(0.05)
    return ix, task


async def bench_throughput(dsn: str, root: Path, events: int, cameras: int, batch_max: int) -> dict[str, float]:
    cfg = make_config(root, dsn, cameras, pending_max=events + 1, batch_max=batch_max)
    ix, task = await started(cfg)
    committed = 0
    batches = 0
    done = asyncio.Event()

    def hook(batch: list[SegmentEvent], _: float) -> None:
        nonlocal committed, batches
        committed += len(batch)
        batches += 1
        if committed >= events:
            done.set()

    ix.commit_hook = hook
    run = str(uuid.uuid4())
    base = 1_700_000_000.0
    t0 = time.perf_counter()
    submit_time = 0.0
    chunk = 1000
    for first in range(0, events, chunk):
        s0 = time.perf_counter()
        for i in range(first, min(first + chunk, events)):
            cam = i % cameras
            start = base + (i // cameras) * 10.0
            ix.submit(SegmentEvent(f"cam-{cam:04d}", f"/bench/tp/cam-{cam:04d}/{i:08d}.mp4", start,
                                   start + 10.0, 1_250_000, run, i // cameras, "ffmpeg", time.time()))
        submit_time += time.perf_counter() - s0
        await asyncio.sleep(0)  # a stream, not one burst: the writer runs while we submit
    await done.wait()
    elapsed = time.perf_counter() - t0
    await ix.close(10)
    await task
    return {"events": events, "seconds": elapsed, "rate": events / elapsed, "batches": batches,
            "submit_us": submit_time / events * 1e6}


async def bench_lag(dsn: str, root: Path, cameras: int, segment_seconds: float, seconds: float,
                    batch_max: int) -> dict[str, float]:
    cfg = make_config(root, dsn, cameras, pending_max=200_000, batch_max=batch_max)
    ix, task = await started(cfg)
    lags: list[float] = []
    batches = 0
    submitted = 0
    generating = True
    drained = asyncio.Event()

    def hook(batch: list[SegmentEvent], commit: float) -> None:
        nonlocal batches
        batches += 1
        lags.extend(commit - e.closed_at for e in batch)
        if not generating and len(lags) >= submitted:
            drained.set()

    ix.commit_hook = hook
    run = [str(uuid.uuid4()) for _ in range(cameras)]
    seq = [0] * cameras
    t_start = time.time()
    # camera i closes a segment at t_start + offset_i + k * segment_seconds: uniform over the period
    offsets = [segment_seconds * i / cameras for i in range(cameras)]
    next_cut = [t_start + o for o in offsets]
    while time.time() - t_start < seconds:
        now = time.time()
        for i in range(cameras):
            if next_cut[i] <= now:
                end = next_cut[i]
                ix.submit(SegmentEvent(f"cam-{i:04d}", f"/bench/lag/cam-{i:04d}/{seq[i]:06d}.mp4",
                                       end - segment_seconds, end, 1_250_000, run[i], seq[i], "ffmpeg",
                                       time.time()))
                seq[i] += 1
                next_cut[i] += segment_seconds
                submitted += 1
        await asyncio.sleep(0.005)
    generating = False
    if len(lags) < submitted:
        await asyncio.wait_for(drained.wait(), 30)
    await ix.close(10)
    await task
    lags.sort()
    q = statistics.quantiles(lags, n=100) if len(lags) >= 2 else [lags[0]] * 99
    return {"segments": submitted, "seconds": seconds, "rate": submitted / seconds, "batches": batches,
            "p50": q[49], "p99": q[98], "max": lags[-1]}


async def main_async(args: argparse.Namespace) -> int:
    cluster: Any = None
    dsn = args.dsn
    if dsn is None:
        from fixtures_pg import PgCluster  # type: ignore[import-not-found]

        cluster = PgCluster()
        cluster.start()
        dsn = cluster.create_database("bench")
        print(f"private PostgreSQL cluster on port {cluster.port} (fsync off)")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
            root = Path(tmp)
            if not args.skip_throughput:
                tp = await bench_throughput(dsn, root, args.events, args.cameras, args.batch_max)
                ok = tp["rate"] >= TARGET_RATE
                print(f"(a) throughput: {tp['events']:.0f} segments committed in {tp['seconds']:.2f} s = "
                      f"{tp['rate']:,.0f} segments/s in {tp['batches']:.0f} batches "
                      f"(submit {tp['submit_us']:.1f} us/event)  target >= {TARGET_RATE:,.0f}/s: "
                      f"{'OK' if ok else 'MISSED'}")
            else:
                ok = True
            lag = await bench_lag(dsn, root, args.cameras, args.segment_seconds, args.seconds, args.batch_max)
            ok_lag = lag["p99"] < TARGET_P99
            print(f"(b) lag: {args.cameras} cameras x {args.segment_seconds:g} s segments for "
                  f"{lag['seconds']:g} s = {lag['rate']:.0f} segments/s, {lag['segments']:.0f} segments in "
                  f"{lag['batches']:.0f} batches; commit - closed_at p50 {lag['p50'] * 1000:.1f} ms, "
                  f"p99 {lag['p99'] * 1000:.1f} ms, max {lag['max'] * 1000:.1f} ms  "
                  f"target p99 < {TARGET_P99 * 1000:.0f} ms: {'OK' if ok_lag else 'MISSED'}")
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0 if (ok and ok_lag) or not args.check else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", help="PostgreSQL DSN (default: start a private cluster)")
    p.add_argument("--events", type=int, default=200_000, help="throughput events (default 200000)")
    p.add_argument("--cameras", type=int, default=1000, help="simulated cameras (default 1000)")
    p.add_argument("--segment-seconds", type=float, default=10.0, help="segment length (default 10)")
    p.add_argument("--seconds", type=float, default=60.0, help="lag run length (default 60)")
    p.add_argument("--batch-max", type=int, default=5000, help="database.batch_max_rows (default 5000)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args()
    rlog.configure("warning", json=False)
    try:
        import uvloop

        return int(uvloop.run(main_async(args)))
    except ImportError:  # pragma: no cover
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
