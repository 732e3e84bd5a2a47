"""One camera supervisor against a real RTSP camera and real FFmpeg, 2 s segments.

The killed camera, the hung camera and the two audio cameras only wait on the wall clock: each runs
in the background from the module's start (``util.Background``: a thread and event loop of its own,
a camera and camera id of its own) while the other tests run; their tests, last in the module, raise
what it asserted.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fixtures_cam import TestCam
from util import Background, camera_doc, ffprobe, ffprobe_duration, make_config, wait_until

from recorderd.events import SegmentEvent
from recorderd.layout import parse_segment_path
from recorderd.probe import probe_duration
from recorderd.supervisor import CameraSupervisor

pytestmark = pytest.mark.integration


class Rig:
    """A supervisor running in the test's loop, with every event it emitted and every state seen."""

    def __init__(self, root: Path, url: str, cam_id: str = "cam-1", **cam: Any) -> None:
        self.root = root
        self.events: list[SegmentEvent] = []
        self.states: list[tuple[float, str]] = []
        config = make_config(root, [camera_doc(cam_id, url, **cam)])
        self.sup = CameraSupervisor(config.cameras[0], root, self.events.append, probe=probe_duration)
        self.task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.sup.run())
        self._watch = asyncio.create_task(self._track())

    async def _track(self) -> None:
        last = None
        while True:
            if self.sup.state != last:
                last = self.sup.state
                self.states.append((time.monotonic(), last))
            await asyncio.sleep(0.05)

    async def stop(self) -> float:
        t0 = time.monotonic()
        await self.sup.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)
        if self._watch:
            self._watch.cancel()
        return time.monotonic() - t0

    def ffmpeg_events(self) -> list[SegmentEvent]:
        return [e for e in self.events if e.source == "ffmpeg"]


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(url: str, **cam: Any) -> Rig:
        rig = Rig(tmp_path / "rec", url, **cam)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        if rig.task and not rig.task.done():
            await rig.stop()


async def test_segments_appear_on_schedule_and_are_readable(shared_cam, rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(shared_cam.url)
    await rig.start()
    await wait_until(lambda: len(rig.ffmpeg_events()) >= 4, 30, what="4 closed segments")
    assert rig.sup.state == "recording"
    elapsed = await rig.stop()
    assert elapsed < 10

    evs = rig.ffmpeg_events()
    assert len({e.run_id for e in evs}) == 1
    assert [e.seq for e in evs] == list(range(len(evs)))
    for prev, nxt in zip(evs, evs[1:], strict=False):
        assert nxt.start == prev.end  # tiles exactly within a run
    for e in evs:
        # layout: <root>/cam-1/<YYYY-MM-DD>/<HH-MM-SS>.mp4 with the UTC time the file was opened
        parsed = parse_segment_path(rig.root, e.path)
        assert parsed is not None and parsed[0] == "cam-1", e.path
        if e.seq == 0:  # opened after FFmpeg probed the stream; holds the packets it probed
            assert -8 < e.start - parsed[1] < 1.5, (e.path, e.start)
        else:
            assert abs(parsed[1] - e.start) < 1.5, (e.path, e.start)
        assert os.path.getsize(e.path) == e.size_bytes > 0
        info = ffprobe(e.path)
        assert [s["codec_name"] for s in info["streams"]] == ["h264"]  # stream copy, never re-encoded
    # after the first (which holds FFmpeg's probing), segments are cut at the first keyframe (1/s
    # here) after each 2 s wall-clock boundary, and named by that boundary's second
    for e in evs[1:-1]:
        assert abs(e.duration - 2.0) < 0.25, e
        named = parse_segment_path(rig.root, e.path)
        assert named is not None and int(named[1]) % 2 == 0, e.path
        assert -0.5 < e.start - named[1] < 1.5, (e.path, datetime.fromtimestamp(e.start, UTC))
        assert abs(ffprobe_duration(e.path) - e.duration) < 0.3
    # the run is anchored to the wall clock: the last segment ended about when we stopped
    assert abs(evs[-1].end - time.time()) < 5


async def test_killed_ffmpeg_is_restarted_and_cut_segment_is_readable(testcam_factory, rig_factory) -> None:  # type: ignore[no-untyped-def]
    cam = testcam_factory()
    rig = rig_factory(cam.url, segment_seconds=3600)  # the kill lands mid-segment
    await rig.start()
    await wait_until(lambda: rig.sup.state == "recording", 30, what="recording")

    def file_age() -> float:
        parsed = parse_segment_path(rig.root, rig.sup.current_file or "")
        return time.time() - parsed[1] if parsed else 0.0

    await wait_until(lambda: file_age() >= 3, 30, what="3 s in the open segment")  # (even across an hour)
    pid = rig.sup.pid
    assert pid is not None
    cut_file = rig.sup.current_file
    os.kill(pid, signal.SIGKILL)
    recovered = await wait_until(lambda: [e for e in rig.events if e.source == "recovered"], 30,
                                 what="the cut segment indexed")
    assert recovered[0].path == cut_file
    assert ffprobe_duration(cut_file) > 1.0  # fragments written before the kill are playable
    assert abs(recovered[0].duration - ffprobe_duration(cut_file)) < 0.01
    await wait_until(lambda: rig.sup.pid not in (None, pid) and rig.sup.state == "recording", 30,
                     what="a new FFmpeg recording")
    assert rig.sup.restarts == 1
    last = rig.sup.snapshot()["last_exit"]
    assert last["reason"] == "killed" and last["rc"] == -signal.SIGKILL


async def test_unreachable_camera_is_a_state_not_a_crash(rig_factory) -> None:  # type: ignore[no-untyped-def]
    from fixtures_cam import free_port

    rig = rig_factory(f"rtsp://admin:pw-123@127.0.0.1:{free_port()}/stream")
    await rig.start()
    await wait_until(lambda: rig.sup.state == "unreachable", 20, what="unreachable")
    await asyncio.sleep(2.5)
    assert rig.sup.state == "unreachable" and not rig.task.done()  # type: ignore[union-attr]
    assert rig.events == []
    snap = rig.sup.snapshot()  # what `recorderd status` shows: why, when, and what to do
    last = snap["last_exit"]
    assert last["reason"] == "unreachable" and time.time() - 20 < last["at"] <= time.time()
    assert last["segments"] == 0 and "pw-123" not in repr(snap)
    assert snap["cause"] == "refused" and last["cause"] == "refused"
    assert snap["hint"].startswith("nothing listens at the address in cameras[0].url")


async def test_clock_behind_footage_never_overwrites(shared_cam, rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(shared_cam.url)
    # footage "from the future": what a wall clock stepped back (RTC ahead at boot) leaves behind
    future = time.time() + 120
    day = rig.root / "cam-1" / datetime.fromtimestamp(future, UTC).strftime("%Y-%m-%d")
    day.mkdir(parents=True)
    planted = day / datetime.fromtimestamp(future, UTC).strftime("%H-%M-%S.mp4")
    planted.write_bytes(b"earlier footage")
    await rig.start()
    await wait_until(lambda: len(rig.ffmpeg_events()) >= 2, 30, what="segments")
    await rig.stop()
    assert planted.read_bytes() == b"earlier footage"
    for e in rig.ffmpeg_events():
        parsed = parse_segment_path(rig.root, e.path)  # still our layout, with a run tag
        assert parsed is not None and "_" in os.path.basename(e.path), e.path


async def test_stop_right_after_start_leaves_no_ffmpeg(shared_cam, rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(shared_cam.url)
    await rig.start()
    await asyncio.sleep(0.95)  # lands around the spawn (the first start waits for the next second)
    took = await rig.stop()
    assert took < 8
    assert rig.sup.pid is None


async def test_unwritable_storage_is_a_logged_backoff_not_a_crash(shared_cam, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "rec"
    root.mkdir()
    (root / "cam-1").write_text("not a directory")  # mkdir of the day directory fails
    events: list[SegmentEvent] = []
    config = make_config(root, [camera_doc("cam-1", shared_cam.url)])
    sup = CameraSupervisor(config.cameras[0], root, events.append, probe=probe_duration)
    task = asyncio.create_task(sup.run())
    await wait_until(lambda: sup.restarts >= 2, 20, what="retries with backoff")
    assert sup.state == "backoff" and not task.done() and events == []
    await sup.stop()
    await asyncio.wait_for(task, 10)


# ---------------------------------------------------------------------- the background's bodies


async def killed_camera_goes_unreachable_and_recording_resumes(cam: TestCam,
                                                               rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(cam.url, cam_id="killed-cam")
    await rig.start()
    await wait_until(lambda: rig.ffmpeg_events(), 30, what="first segment")
    cam.kill()
    await wait_until(lambda: rig.sup.state == "unreachable", 30, what="unreachable state")
    await asyncio.sleep(3)  # stays unreachable, retrying
    assert rig.sup.state == "unreachable" and rig.sup.snapshot()["cause"] in ("refused", "dropped")
    runs_before = {e.run_id for e in rig.events}
    back = time.monotonic()
    cam.restart()
    await wait_until(lambda: rig.sup.state == "recording", 30, what="recording again")
    recovered_in = time.monotonic() - back
    await wait_until(lambda: {e.run_id for e in rig.ffmpeg_events()} - runs_before, 30, what="new run segments")
    assert recovered_in < 10, recovered_in
    new_run = [e for e in rig.ffmpeg_events() if e.run_id not in runs_before]
    old_last = max(e.end for e in rig.events if e.run_id in runs_before)
    assert new_run[0].start > old_last  # the outage is a visible gap, not an overlap
    assert rig.sup.restarts >= 2


async def hung_camera_is_detected_and_recovered(cam: TestCam, rig_factory: Callable[..., Rig]) -> None:
    # only the stall check can notice
    rig = rig_factory(cam.url, cam_id="hung-cam", stall_seconds=4, timeout_seconds=60)
    await rig.start()
    await wait_until(lambda: rig.sup.state == "recording", 30, what="recording")
    cam.hang()
    try:
        await wait_until(lambda: any(s == "stalled" for _, s in rig.states), 30, what="stalled state")
    finally:
        cam.resume()
    n = len(rig.ffmpeg_events())
    await wait_until(lambda: len(rig.ffmpeg_events()) >= n + 2, 60, what="segments after SIGCONT")
    assert rig.sup.state == "recording"


async def audio_copied_or_transcoded(cam: TestCam, rig_factory: Callable[..., Rig], *, codec: str) -> None:
    rig = rig_factory(cam.url, cam_id=f"audio-{cam.audio}")
    await rig.start()
    await wait_until(lambda: len(rig.ffmpeg_events()) >= 2, 40, what="segments with audio")
    await rig.stop()
    streams = {s["codec_type"]: s["codec_name"] for s in ffprobe(rig.ffmpeg_events()[-1].path)["streams"]}
    assert streams == {"video": "h264", "audio": codec}


# ---------------------------------------------------------------------- run in the background

AUDIO = [("aac", "aac"), ("alaw", "aac")]  # (the camera's audio, what the files hold)


def rig_job(root: Path,
            body: Callable[[Callable[..., Rig]], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
    """``body(rig_factory)`` with rigs under ``root``, each stopped afterwards (as ``rig_factory`` does)."""
    async def run() -> None:
        rigs: list[Rig] = []

        def make(url: str, **cam: Any) -> Rig:
            rig = Rig(root, url, **cam)
            rigs.append(rig)
            return rig

        try:
            await body(make)
        finally:
            for rig in rigs:
                if rig.task and not rig.task.done():
                    await rig.stop()
    return run


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Background[None]]]:
    """Each started at the module's start with a camera of its own; cancelled at teardown if a test
    did not wait for it."""
    cams = {"killed": TestCam(), "hung": TestCam(), **{f"audio-{a}": TestCam(audio=a) for a, _ in AUDIO}}
    bgs: dict[str, Background[None]] = {}
    try:
        for cam in cams.values():
            cam.start(timeout=30)
        root = {name: tmp_path_factory.mktemp(name) / "rec" for name in cams}
        bgs["killed"] = Background(rig_job(root["killed"], lambda rigs: (
            killed_camera_goes_unreachable_and_recording_resumes(cams["killed"], rigs))), "killed camera")
        bgs["hung"] = Background(rig_job(root["hung"], lambda rigs: (
            hung_camera_is_detected_and_recovered(cams["hung"], rigs))), "hung camera")
        for audio, codec in AUDIO:
            name = f"audio-{audio}"
            bgs[name] = Background(rig_job(root[name], functools.partial(audio_copied_or_transcoded, cams[name],
                                                                         codec=codec)), f"{audio} camera")
        yield bgs
    finally:
        for b in bgs.values():
            b.cancel()
        for cam in cams.values():
            cam.stop()


async def test_killed_camera_goes_unreachable_and_recording_resumes(background: dict[str, Background[None]]) -> None:
    await background["killed"].result(180)


async def test_hung_camera_is_detected_and_recovered(background: dict[str, Background[None]]) -> None:
    await background["hung"].result(180)


@pytest.mark.parametrize(("audio", "codec"), AUDIO)
async def test_audio_copied_or_transcoded(background: dict[str, Background[None]], audio: str, codec: str) -> None:
    await background[f"audio-{audio}"].result(120)
