"""Camera faults against a real FFmpeg and real RTSP cameras: drifting and frozen timestamps, a camera
that resets every connection, a live stall_seconds change, a run killed before its first fragment.

The drifting camera (about 40 s: 20 s of drift before the re-sync, then 5 segments) and the resetting
port (14 s of backoff) only wait on the wall clock: each is recorded in the background from the
module's start (``util.Background``: a thread and event loop of its own, a camera id of its own, since
the metrics are per process) while the tests above their own run; their tests assert on what it
recorded. Both have finished before ``test_a_run_killed_before_its_first_fragment_leaves_no_file``
reads the process-wide count of header-only files removed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_cam import TestCam, free_port
from util import Background, camera_doc, ffprobe_duration, make_config, wait_until

from recorderd import metrics
from recorderd.config import Camera
from recorderd.events import SegmentEvent
from recorderd.probe import probe_duration
from recorderd.supervisor import CameraSupervisor

pytestmark = pytest.mark.integration


class Rig:
    def __init__(self, root: Path, url: str, cam_id: str = "cam-1", **cam: Any) -> None:
        self.events: list[SegmentEvent] = []
        self.closed_at: list[float] = []  # real wall time each event reached the sink
        config = make_config(root, [camera_doc(cam_id, url, **cam)])
        self.camera: Camera = config.cameras[0]
        self.sup = CameraSupervisor(self.camera, root, self._sink, probe=probe_duration)
        self.task: asyncio.Task[None] | None = None

    def _sink(self, ev: SegmentEvent) -> None:
        self.events.append(ev)
        self.closed_at.append(time.time())

    def start(self) -> Rig:
        self.task = asyncio.create_task(self.sup.run())
        return self

    async def stop(self) -> None:
        await self.sup.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(url: str, **cam: Any) -> Rig:
        rig = Rig(tmp_path / "rec", url, **cam)
        made.append(rig)
        return rig.start()

    yield make
    for rig in made:
        if rig.task and not rig.task.done():
            await rig.stop()


async def test_late_first_close_of_a_frozen_camera_is_stamped_when_it_froze(testcam_factory, rigs) -> None:  # type: ignore[no-untyped-def]
    """FFmpeg prints the list line only when -timeout ends it: the segment must not move that late."""
    cam = testcam_factory()
    rig = rigs(cam.url, segment_seconds=30, timeout_seconds=5, stall_seconds=20)
    await wait_until(lambda: rig.sup.state == "recording", 20, what="recording")
    await asyncio.sleep(4.0)
    cam.hang()
    froze = time.time()
    n = len(rig.events)  # a clock boundary may have cut a segment before the freeze
    try:
        await wait_until(lambda: len(rig.events) > n, 25, what="the segment closed by FFmpeg's timeout")
    finally:
        cam.resume()
    ev = rig.events[n]
    assert rig.closed_at[n] - froze > 4.0  # the line really came late
    assert abs(ev.end - froze) < 1.5, (ev.end - froze)  # ... and the segment is where the data is
    assert ev.end - ev.start == pytest.approx(ffprobe_duration(ev.path), abs=0.5)


async def test_live_stall_seconds_change_applies_to_the_running_ffmpeg(testcam_factory, rigs) -> None:  # type: ignore[no-untyped-def]
    cam = testcam_factory()
    rig = rigs(cam.url, stall_seconds=60, timeout_seconds=120)
    await wait_until(lambda: rig.sup.state == "recording", 20, what="recording")
    pid = rig.sup.pid
    rig.sup.update(rig.camera.__class__(**{**_fields(rig.camera), "stall_seconds": 3}))
    cam.hang()
    t0 = time.monotonic()
    try:
        await wait_until(lambda: rig.sup.state == "stalled", 15, what="stalled")
    finally:
        cam.resume()
    assert time.monotonic() - t0 < 6.0  # 3 s and a tick or two, not 60
    assert pid is not None


def _fields(cam: Camera) -> dict[str, Any]:
    return {f: getattr(cam, f) for f in cam.__dataclass_fields__}


async def test_camera_password_is_not_on_ffmpegs_command_line(testcam_factory, rigs) -> None:  # type: ignore[no-untyped-def]
    """Any local user reads a process's argv (ps, systemctl status): the URL reaches FFmpeg by a pipe."""
    cam = testcam_factory(user="viewer", password="Pa55-w0rd-in-argv")
    rig = rigs(cam.url)
    await wait_until(lambda: len(rig.events) >= 1, 30, what="a segment from the password camera")
    pid = rig.sup.pid
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "ffmpeg" in cmdline and "-f concat" in cmdline and "/dev/fd/" in cmdline
    assert "Pa55-w0rd-in-argv" not in cmdline and "viewer" not in cmdline
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"Pa55-w0rd-in-argv" not in environ


async def test_wrong_password_through_the_pipe_is_unauthorized_not_unreachable(testcam_factory, rigs) -> None:  # type: ignore[no-untyped-def]
    cam = testcam_factory(user="viewer", password="right")
    rig = rigs(cam.url.replace(":right@", ":wrong@"))
    await wait_until(lambda: rig.sup.restarts >= 1, 20, what="the first failed run")
    assert rig.sup.state == "unauthorized" and rig.sup.snapshot()["cause"] == "auth_failed"
    assert metrics.FFMPEG_RESTARTS.labels("cam-1", "unauthorized")._value.get() >= 1


async def test_a_crash_after_good_work_restarts_at_once_whatever_the_backoff(shared_cam, rigs) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of a healthy camera's FFmpeg: recording again within 2 s even though earlier faults had
    raised the backoff to 8 s, and the file it was cutting is recovered, not lost."""
    rig = rigs(shared_cam.url, segment_seconds=4)
    await wait_until(lambda: rig.sup.state == "recording" and len(rig.events) >= 1, 30,
                     what="a segment recorded")

    def cutting() -> bool:  # killed mid-segment, with fragments in the file (not only its header)
        path = rig.sup.current_file
        return path is not None and os.path.exists(path) and os.path.getsize(path) > 12_000

    await wait_until(cutting, 10, what="a file with fragments")
    rig.sup._restart.backoff.attempt = 3  # what faults earlier in the minute leave: next delay 8 s
    pid, old_file = rig.sup.pid, rig.sup.current_file
    assert pid is not None and old_file is not None
    t0, killed_at = time.monotonic(), time.time()
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: rig.sup.pid not in (None, pid), 10, what="a new FFmpeg")
    started = time.monotonic() - t0
    await wait_until(lambda: rig.sup.current_file not in (None, old_file), 10, what="a new file")
    opened = time.monotonic() - t0
    await wait_until(lambda: any(e.start > killed_at for e in rig.events), 20, what="a new segment")
    first = next(e for e in rig.events if e.start > killed_at)
    print(f"SIGKILL -> FFmpeg started {started:.2f}s, file open {opened:.2f}s, "
          f"footage again {first.start - killed_at:.2f}s after the kill; {first}")
    assert started < 2.0 and first.start - killed_at < 2.0, (started, first.start - killed_at)
    assert rig.sup._restart.backoff.attempt == 0  # a camera that failed again now would start at 1 s
    assert rig.sup.last_exit is not None and rig.sup.last_exit["reason"] == "killed"
    await wait_until(lambda: any(e.path == old_file and e.source == "recovered" for e in rig.events), 15,
                     what="the cut file indexed")


# ---------------------------------------------------------------------- recorded in the background

DRIFT_ID = "drift-1"


@dataclass
class Drift:
    events: list[SegmentEvent]  # every segment up to the 5th after the re-sync
    closed_at: list[float]  # real wall time each of them reached the sink
    n_before: int  # segments before the re-sync


@pytest.fixture(scope="module", autouse=True)
def drifting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background[Drift]]:
    """Stream time at 0.7 x wall time (a camera sending fewer frames than it declares), recorded from
    the module's start until 5 segments after the re-sync."""
    cam = TestCam(ts_scale=0.7).start(timeout=30)
    root = tmp_path_factory.mktemp("drift") / "rec"

    async def record() -> Drift:
        rig = Rig(root, cam.url, cam_id=DRIFT_ID).start()
        try:
            await wait_until(lambda: rig.sup.wallclock_timestamps, 40, what="a re-sync to arrival timestamps")
            n_before = len(rig.events)
            await wait_until(lambda: len(rig.events) >= n_before + 5, 30, what="5 segments after the re-sync")
            return Drift(list(rig.events), list(rig.closed_at), n_before)
        finally:
            await rig.stop()

    bg = Background(record, "drifting camera")
    try:
        yield bg
    finally:
        bg.cancel()
        cam.stop()


@pytest.fixture(scope="module")
def resetting_port() -> Iterator[tuple[int, list[float]]]:
    """A 'camera' that accepts TCP and closes at once, counting connections (RTSP ones and probes)."""
    port = free_port()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    srv.settimeout(0.2)
    seen: list[float] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            seen.append(time.monotonic())
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # RST

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield port, seen
    stop.set()
    th.join(2)
    srv.close()


@pytest.fixture(scope="module", autouse=True)
def resetting_restarts(resetting_port: tuple[int, list[float]],
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background[int]]:
    """The FFmpegs started in the first 14 s against ``resetting_port``, from the module's start."""
    port, _seen = resetting_port
    root = tmp_path_factory.mktemp("resetting") / "rec"

    async def count() -> int:
        rig = Rig(root, f"rtsp://127.0.0.1:{port}/stream", cam_id="resetting-1").start()
        try:
            await asyncio.sleep(14)
            return int(rig.sup.restarts)
        finally:
            await rig.stop()

    bg = Background(count, "resetting port")
    try:
        yield bg
    finally:
        bg.cancel()


async def test_a_port_that_accepts_then_resets_does_not_skip_backoff(resetting_restarts: Background[int]) -> None:
    restarts = await resetting_restarts.result(30)
    # backoff 1, 2, 4, 8 s (+-20 %): about 4 FFmpegs in 14 s; skipping it would be one a second
    assert 2 <= restarts <= 5, restarts


async def test_drifting_camera_is_resynced_and_indexed_without_a_gap(drifting: Background[Drift]) -> None:
    """Stream time at 0.7 x wall time (a camera sending fewer frames than it declares)."""
    run = await drifting.result(80)
    evs, closed_at, n_before = run.events, run.closed_at, run.n_before
    # never a gap where footage exists: consecutive segments of a run tile; between runs, the restart
    for a, b in zip(evs, evs[1:], strict=False):
        if a.run_id == b.run_id:
            assert b.start == a.end
        else:
            # the restart: RTSP set-up and the first keyframe; 6.7 s seen on a loaded 2-core CI run
            # (issue 12 is about making a restart after good work fast)
            assert 0 <= b.start - a.end < 8.0
    # after the re-sync stream time is arrival time: index ends sit where the segments really closed
    for ev, seen in list(zip(evs, closed_at, strict=True))[n_before + 1:]:
        assert abs(ev.end - seen) < 1.0, (ev, seen)
    # and the files play at the speed they were recorded at
    last = evs[-2]
    assert ffprobe_duration(last.path) == pytest.approx(last.end - last.start, abs=0.6)
    assert metrics.CAMERA_RESYNCS.labels(DRIFT_ID, "timestamps_drift")._value.get() >= 1


async def test_a_run_killed_before_its_first_fragment_leaves_no_file(testcam_factory, rigs) -> None:  # type: ignore[no-untyped-def]
    cam = testcam_factory(fps=10, gop=200)  # first fragment only after 20 s
    before = metrics.HEADER_ONLY_REMOVED._value.get()
    rig = rigs(cam.url, stall_seconds=60)
    await wait_until(lambda: rig.sup.current_file and os.path.exists(rig.sup.current_file), 20,
                     what="the first file opened")
    path = rig.sup.current_file
    assert path is not None
    await asyncio.sleep(1.0)
    assert 0 < os.path.getsize(path) < 4096  # the header is written, no fragment yet
    pid = rig.sup.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not os.path.exists(path), 10, what="the header-only file removed")
    assert metrics.HEADER_ONLY_REMOVED._value.get() == before + 1
    assert not rig.events  # nothing indexed for it
