"""The whole daemon under libfaketime: the wall clock steps while it records (monotonic time stays real).

A box that boots 3 days behind with a 2-day plan, then NTP steps it forward (past true time, here +1 h),
then back to true time. Nothing recorded may be deleted for looking old, and every segment's indexed
times must end up within a second of when it was really recorded.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg
import pytest
from util import DaemonProc, camera_doc, disk_segments, fetch_segments, wait_until, write_config

pytestmark = pytest.mark.integration

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
DAY = 86400.0


class Seen:
    """The real time (this test is not under faketime) each row was first seen in the index."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.first: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []

    async def poll(self) -> list[dict[str, Any]]:
        try:
            self.rows = await fetch_segments(self.dsn, "cam-1")
        except asyncpg.UndefinedTableError:  # the daemon has not migrated yet
            return []
        now = time.time()
        for r in self.rows:
            self.first.setdefault(r["path"], now)
        return self.rows

    async def watch(self, until: float) -> None:
        while time.monotonic() < until:
            await self.poll()
            await asyncio.sleep(0.25)


def real_steps(events: list[dict[str, Any]]) -> list[str]:
    """The steps the test made. libfaketime (FAKETIME_NO_CACHE re-reads its file on every call) now and
    then hands out real time for one read: a step there and straight back, milliseconds apart, that
    cancels exactly. Those pairs are the fake clock's, not the test's."""
    out: list[dict[str, Any]] = []
    for e in events:
        if out and abs(out[-1]["seconds"] + e["seconds"]) < 1 and out[-1]["direction"] != e["direction"]:
            out.pop()
        else:
            out.append(e)
    return [e["direction"] for e in out]


@pytest.mark.skipif(not os.path.exists(FAKETIME), reason="libfaketime missing (scripts/test installs faketime)")
async def test_forward_and_backward_steps_lose_nothing_and_times_end_up_true(  # type: ignore[no-untyped-def]
        testcam_factory, pg_dsn, tmp_path, daemons) -> None:
    shared_cam = testcam_factory()  # its own camera: a client under faketime must not touch others
    fake = tmp_path / "faketime"
    fake.write_text("-3d\n")
    root = tmp_path / "rec"
    cfg = write_config(tmp_path / "cameras.yaml", root,
                       [camera_doc("cam-1", shared_cam.url, plan="short")],
                       database={"dsn": pg_dsn}, plans={"short": {"retention_days": 2}},
                       retention={"interval_seconds": 1})
    env = {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": str(fake), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    d = DaemonProc(cfg, root, tmp_path / "daemon.log", env=env).start()
    daemons.append(d)
    seen = Seen(pg_dsn)

    async def rows_at_least(n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(await seen.poll()) < n:
            assert time.monotonic() < deadline, f"fewer than {n} rows after {timeout}s"
            await asyncio.sleep(0.25)

    await rows_at_least(4, 40)
    assert all(abs(r["end"] - (seen.first[r["path"]] - 3 * DAY)) < 2 for r in seen.rows)  # booted behind

    fake.write_text("+1h\n")  # NTP steps it forward: 3 days and an hour
    n = len(seen.rows)
    await rows_at_least(n + 3, 30)
    await wait_until(lambda: d.events("segments_restamped"), 15, what="the forward re-stamp")
    fake.write_text("+0\n")  # and back an hour, to true time
    n = len(seen.rows)
    await rows_at_least(n + 3, 30)
    await wait_until(lambda: len(d.events("segments_restamped")) >= 2, 15, what="the backward re-stamp")
    await seen.watch(time.monotonic() + 4)  # sweeps run every second meanwhile

    await seen.poll()
    stop_began = time.time()
    d.stop()  # closes and indexes the segment being written
    stop_ended = time.time()
    steps = real_steps(d.events("clock_stepped"))
    assert steps == ["forward", "backward"], steps
    rows = await seen.poll()
    assert not d.events("retention_sweep"), "the sweeper deleted footage"
    assert {r["path"] for r in rows} == disk_segments(root)  # every file kept, every file indexed
    for r in rows:
        if seen.first[r["path"]] >= stop_ended:  # closed by the stop, seen only afterwards
            assert stop_began - 1.0 < r["end"] < stop_ended + 1.0, (r, stop_began, stop_ended)
        else:
            assert abs(r["end"] - seen.first[r["path"]]) < 1.0, (r, seen.first[r["path"]])
    ordered = sorted(rows, key=lambda r: r["start"])
    for a, b in zip(ordered, ordered[1:], strict=False):
        # no overlap after re-stamping (2 us: PostgreSQL keeps microseconds, re-stamps shift by whole
        # ones, and the next segment's start comes from the new offset: they may round 1 us apart)
        assert b["start"] >= a["end"] - 2e-6
    assert d.events("clock_untrusted")  # age deletion was refused while the re-stamp was pending
    assert shared_cam.is_running, shared_cam._stderr_text()[-2000:]
