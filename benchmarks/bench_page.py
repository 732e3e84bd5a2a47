"""The web page in a real browser: time from opening a camera to its first frame, and from a click on
the day bar to the frame at that instant, median and p95 over N tries each.

Why: these are the two waits a viewer feels. This runs the real daemon (real PostgreSQL, one real test
camera recording in 2 s segments) with a day of footage seeded for two more cameras, one in 1 h files
and one in 10 s files (the same seeding as ``bench_http``: real fragmented MP4, hard links, bytes from
the page cache), and drives Debian's chromium headless with Playwright, as ``tests/test_page.py`` does.

1. open: from a double click on the camera's tile in the grid to ``loadeddata`` on the video (the
   first frame decoded): the camera's document, its days and timeline, the day's HLS playlist, hls.js
   fetching the init section and the first media range, and the decoder's first frame.
2. seek: a click on the day bar (zoomed to the footage) at a random recorded instant, until the frame
   on screen is within 1 s of that instant and the video is no longer seeking.

Figures are measured in one run, printed, never asserted; the issue's seed targets are printed beside.

    python benchmarks/bench_page.py [--hours 24] [--tries 20] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from bench_http import (
    LIVE,
    LIVE_SEGMENT_SECONDS,
    SEED_1H,
    SEED_10S,
    SHAPES,
    Api,
    BenchError,
    Daemon,
    make_footage,
    pct,
    run,
    run_bench,
    seed,
    wait_ready,
    write_config,
)
from fixtures_cam import TestCam, free_port
from fixtures_pg import PgCluster

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGET_OPEN = 2.0  # seed: playing within 2 s
TARGET_SEEK = 0.5  # seed: the frame at the clicked instant within 0.5 s


async def wait_js(page: Any, expr: str, timeout: float, what: str) -> Any:
    """Poll an expression (the page's CSP refuses wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(expr)
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.005)


def line(label: str, values: list[float], target: float) -> str:
    return (f"{label:<34} median {statistics.median(values) * 1000:6.0f} ms   p95 {pct(values, 95) * 1000:6.0f} ms   "
            f"max {max(values) * 1000:6.0f} ms   (n={len(values)}; seed target {target:g} s)")


async def open_times(page: Any, base: str, camera: str, tries: int) -> list[float]:
    out = []
    for _ in range(tries):
        await page.goto(base + "/")
        await page.wait_for_selector(f'.tile[data-camera-id="{camera}"]')
        t0 = time.monotonic()
        await page.dblclick(f'.tile[data-camera-id="{camera}"]')
        await wait_js(page, "document.querySelector('#video')?.dataset.frame === '1'", 30, f"{camera}'s first frame")
        out.append(time.monotonic() - t0)
    return out


async def seek_times(page: Any, base: str, camera: str, tries: int, rng: random.Random) -> list[float]:
    await page.goto(base + f"/cameras/{camera}")
    await page.wait_for_selector("#video[data-ready='1']")
    await page.click("#zoom-fit")
    runs = await page.eval_on_selector_all("#daybar .run", "els => els.map(e => [Number(e.dataset.start),"
                                           " Number(e.dataset.end)])")
    runs = [r for r in runs if r[1] - r[0] > 10_000]
    if not runs:
        raise BenchError(f"{camera} has no recorded run to seek in")
    await page.locator("#daybar").scroll_into_view_if_needed()
    box = await page.locator("#daybar .track").bounding_box()
    view = await page.eval_on_selector("#daybar", "e => [Number(e.dataset.viewStart), Number(e.dataset.viewEnd)]")
    out = []
    for _ in range(tries):
        a, b = rng.choice(runs)
        target = rng.uniform(a + 2000, b - 5000)
        x = round(box["x"] + (target - view[0]) / (view[1] - view[0]) * box["width"])
        instant = view[0] + (x - box["x"]) / box["width"] * (view[1] - view[0])
        t0 = time.monotonic()
        await page.mouse.click(x, box["y"] + box["height"] / 2)
        await wait_js(page, f"(() => {{ const c = Number(document.querySelector('#clock').dataset.epochMs);"
                            f" const v = document.querySelector('#video');"
                            f" return Math.abs(c - {instant}) < 1000 && v.readyState >= 2 && !v.seeking; }})()",
                      15, f"the frame at the clicked instant on {camera}")
        out.append(time.monotonic() - t0)
    return out


async def bench(args: argparse.Namespace, work: Path, pg: PgCluster, cam: TestCam) -> None:
    from playwright.async_api import async_playwright

    root = work / "recordings"
    root.mkdir()
    ten, hour = make_footage(work)
    dsn = pg.create_database("bench_page")
    token = secrets.token_urlsafe(32)
    port = free_port()
    config = work / "cameras.yaml"
    write_config(config, root, dsn, cam.url, f"127.0.0.1:{port}", token)
    run([sys.executable, "-m", "recorderd", "migrate", "--config", str(config)], "recorderd migrate")
    # the seeded day ends now, so the page opens it as today (its default day) with the live camera's
    day_end = math.floor(time.time() / 10) * 10
    for (camera, seconds), source in zip(SHAPES, (hour, ten), strict=True):
        await seed(dsn, root, camera, source, seconds, day_end - args.hours * 3600, day_end)
    print(f"seeded {args.hours} h of footage ending now: {SEED_1H} in 1 h files, {SEED_10S} in 10 s files",
          flush=True)
    daemon = Daemon(config, root, work / "daemon.log")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        api = Api(session, f"http://127.0.0.1:{port}", token)
        daemon.start()
        try:
            ready = await wait_ready(daemon, api)
            print(f"recorderd run up in {ready:.1f} s; {LIVE} recording {LIVE_SEGMENT_SECONDS} s segments", flush=True)
            await asyncio.sleep(12)  # some live footage to open and seek in
            async with async_playwright() as pw:
                t0 = time.monotonic()
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                print(f"chromium {browser.version} headless up in {time.monotonic() - t0:.2f} s", flush=True)
                ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
                page = await ctx.new_page()
                base = f"http://127.0.0.1:{port}"
                await page.goto(base + "/")
                await page.fill("#token", token)
                await page.click("#signin-form button[type=submit]")
                await page.wait_for_selector("#grid .tile")
                rng = random.Random(args.seed)
                for camera, shape in ((LIVE, "live, 2 s files"), (SEED_1H, f"{args.hours} h of 1 h files"),
                                      (SEED_10S, f"{args.hours} h of 10 s files")):
                    opens = await open_times(page, base, camera, args.tries)
                    print(line(f"open -> first frame ({shape})", opens, TARGET_OPEN), flush=True)
                for camera, shape in ((SEED_1H, "1 h files"), (SEED_10S, "10 s files"), (LIVE, "live, 2 s files")):
                    seeks = await seek_times(page, base, camera, args.tries, rng)
                    print(line(f"bar click -> frame ({shape})", seeks, TARGET_SEEK), flush=True)
                await browser.close()
            daemon.check()
        finally:
            daemon.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=int, default=24, help="hours of seeded footage per shape (default 24)")
    ap.add_argument("--tries", type=int, default=20, help="tries per figure (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the instants (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon log, config, footage)")
    args = ap.parse_args()
    if not os.path.exists(CHROMIUM):
        print(f"error: {CHROMIUM} is missing (apt-get install chromium; scripts/bench installs it)", file=sys.stderr)
        return 1
    return run_bench("bench-page-", "recorderd page bench", args, bench)

if __name__ == "__main__":
    raise SystemExit(main())
