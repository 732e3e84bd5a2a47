"""The compression tier on real files made by the system FFmpeg: re-encode in place, verification, the
source kept on every failure, the CPU budget, and the loop's concurrency, stop and metrics."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from util import ffprobe

from recorderd import compress
from recorderd.compress import (
    Candidate,
    CompressionSettings,
    Compressor,
    CompressResult,
    CpuBudget,
    compress_command,
    compress_file,
    is_temp_name,
    remove_stale_temps,
)
from recorderd.fmp4 import scan

FRAG = "+frag_keyframe+empty_moov+default_base_moof"  # the recording's movflags (recorderd.ffmpeg)
FAST = CompressionSettings(preset="ultrafast", crf=35)  # small and quick: these tests time the logic
FPS = 10


def make_source(out: Path, *, seconds: float = 4, size: str = "320x240", rate: int = FPS, codec: str = "libx264",
                quality: list[str] | None = None, audio: str = "aac", fmt: str = "mp4") -> Path:
    """A recording-like segment: testsrc video with a keyframe a second, a sine as ``audio``, fragmented
    with the recording's movflags (``fmt`` "matroska" makes a file the MP4 muxer's rules do not apply to)."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}"]
    if audio != "none":
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    video = ["-pix_fmt", "yuv420p", "-c:v", codec, "-g", str(rate), "-preset", "ultrafast",
             *(quality if quality is not None else ["-crf", "12"])]
    if codec == "libx265":
        video += ["-x265-params", "log-level=error", "-tag:v", "hvc1"]
    sound = ["-an"] if audio == "none" else ["-c:a", audio]
    container = ["-movflags", FRAG, "-f", "mp4"] if fmt == "mp4" else ["-f", fmt]
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, *video, *sound, "-t", f"{seconds:g}",
                    *container, str(out)], check=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Made once; each test copies what it changes."""
    d = tmp_path_factory.mktemp("sources")
    return {
        "h264": make_source(d / "h264.mp4"),
        "hevc": make_source(d / "hevc.mp4", codec="libx265", quality=["-crf", "30"]),
        # already tiny: a lossless re-encode can only be bigger
        "tiny": make_source(d / "tiny.mp4", size="160x120", quality=["-crf", "51"], audio="none"),
        "small": make_source(d / "small.mp4", seconds=2, size="160x120"),
        # pcm audio in Matroska: FFmpeg refuses to copy it into MP4, after the temp file exists
        "pcm": make_source(d / "pcm.mkv", seconds=2, size="160x120", audio="pcm_s16le", fmt="matroska"),
    }


def segment_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rec" / "cam-1" / "2024-06-01"
    d.mkdir(parents=True)
    return d


def place(src: Path, d: Path, name: str = "12-00-00.mp4") -> Path:
    dst = d / name
    shutil.copyfile(src, dst)
    return dst


def hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- pure


def test_the_command_reencodes_video_copies_audio_and_fragments_like_the_recording() -> None:
    argv = compress_command("ffmpeg", "/r/cam/2024-06-01/12-00-00.mp4", "/r/cam/2024-06-01/.tmp", FAST)
    assert compress.MOVFLAGS == FRAG
    i = argv.index("ffmpeg")
    prefix = argv[:i]
    if shutil.which("nice"):
        assert prefix[1:3] == ["-n", "19"]
    if shutil.which("ionice"):
        assert prefix[prefix.index(shutil.which("ionice") or "") + 1:][:2] == ["-c", "3"]
    body = argv[i:]
    pairs = set(zip(body, body[1:], strict=False))
    for pair in [("-c:v", "libx265"), ("-crf", "35"), ("-preset", "ultrafast"), ("-c:a", "copy"),
                 ("-movflags", FRAG), ("-tag:v", "hvc1"), ("-f", "mp4"), ("-fps_mode", "passthrough"),
                 ("-force_key_frames", "source"), ("-bf", "0")]:
        assert pair in pairs, pair
    assert "-benchmark" in body
    assert body[-1] == "/r/cam/2024-06-01/.tmp"
    x264 = compress_command("ffmpeg", "a", "b", CompressionSettings(codec="libx264"))
    assert "-tag:v" not in x264  # a plain mp4 muxer refuses hvc1 for H.264
    assert ("-c:v", "libx264") in set(zip(x264, x264[1:], strict=False))


def test_settings_refuse_what_ffmpeg_would_choke_on() -> None:
    assert CompressionSettings() == CompressionSettings("libx265", 28, "medium", 1, 0.5)
    for bad in [{"codec": "libvpx"}, {"crf": 52}, {"crf": -1}, {"crf": 2.5}, {"preset": "bogus"},
                {"concurrency": 0}, {"cpu_budget": 0}, {"cpu_budget": float("nan")}, {"timeout_factor": -1}]:
        with pytest.raises(ValueError):
            CompressionSettings(**bad)


def test_benchmark_and_error_lines_are_read() -> None:
    err = ("[mp4 @ 0x1] [error] Could not find tag for codec pcm_s16le in stream #1\n"
           "[error] Error initializing output stream 0:0 --\n"
           "[info] bench: utime=1.250s stime=0.250s rtime=0.900s\n")
    assert compress.parse_cpu(err) == pytest.approx(1.5)
    assert compress.parse_cpu("nothing") is None
    assert compress.error_tail(err).startswith("Could not find tag for codec pcm_s16le")


def test_the_cpu_budget_pauses_so_the_average_stays_within_it() -> None:
    half = CpuBudget(0.5)
    # 10 CPU s in 5 s of wall (two cores busy): 20 s of cycle at half a core -> 15 s pause
    assert half.pause(10, 5) == pytest.approx(15)
    assert 10 / (5 + half.pause(10, 5)) == pytest.approx(0.5)
    # a job that used less than its share: no pause
    assert half.pause(1, 5) == 0
    # n workers share the budget: each must stretch its cycle n times
    assert half.pause(10, 5, concurrency=3) == pytest.approx(55)
    assert 3 * 10 / (5 + half.pause(10, 5, concurrency=3)) == pytest.approx(0.5)
    assert CpuBudget(4).pause(2, 1, concurrency=2) == 0
    assert half.pause(-1, -1) == 0
    with pytest.raises(ValueError):
        CpuBudget(0)


def test_temp_files_are_hidden_from_the_layout_and_swept_after_a_crash(tmp_path: Path) -> None:
    from recorderd.layout import FILE_RE

    d = segment_dir(tmp_path)
    stale = d / ".12-00-00.mp4.ab_12xyz.compress"
    stale.write_bytes(b"x")
    keep = [d / "12-00-00.mp4", d / ".12-00-00.mp4.ab12.part", d / "notes.compress"]
    for p in keep:
        p.write_bytes(b"y")
    assert is_temp_name(stale.name) and not FILE_RE.match(stale.name)
    assert not any(is_temp_name(p.name) for p in keep)
    root = tmp_path / "rec"
    assert remove_stale_temps(root, older_than=3600) == 0  # a young one may belong to a running job
    assert remove_stale_temps(root) == 1
    assert not stale.exists() and all(p.exists() for p in keep)


# --------------------------------------------------------------------------- one file, real FFmpeg


async def test_h264_becomes_a_smaller_hevc_file_with_the_same_fragments(sources: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    d = segment_dir(tmp_path)
    src = place(sources["h264"], d)
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_700_000_000_000_000_000, 1_700_000_001_123_456_789))
    before = src.stat()
    old_index = scan(src)
    assert old_index is not None and old_index.fragments
    original = src.read_bytes()
    with open(src, "rb") as reader:  # a reader of the old file (a playback) keeps reading it whole
        res = await compress_file(src, FAST)
        assert reader.read() == original

    assert res.outcome == "compressed", res
    after = src.stat()
    assert after.st_ino != before.st_ino  # a new file renamed over the old, not rewritten in place
    assert res.old_size == before.st_size == len(original) and res.new_size == after.st_size < before.st_size
    assert res.saved_bytes == before.st_size - after.st_size and res.ratio is not None and res.ratio < 1
    assert (after.st_mode & 0o777, after.st_mtime_ns) == (0o640, before.st_mtime_ns)
    assert res.cpu_seconds > 0 and res.wall_seconds > 0
    assert hidden(d) == []

    info = ffprobe(src)
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert [(s["codec_name"], s["codec_tag_string"]) for s in video] == [("hevc", "hvc1")]
    assert [s["codec_name"] for s in audio] == ["aac"]

    new_index = scan(src)
    assert new_index is not None and new_index.complete
    # the same fragments at the same instants: playlists and the index's times stay exact
    assert [(round(f.start, 4), round(f.duration, 4), f.keyframe) for f in new_index.fragments] == \
        [(round(f.start, 4), round(f.duration, 4), f.keyframe) for f in old_index.fragments]
    assert res.src_duration == pytest.approx(old_index.duration)
    assert res.new_duration == pytest.approx(new_index.duration)
    assert abs(new_index.duration - old_index.duration) <= max(0.1, 1 / FPS)

    again = await compress_file(src, FAST)  # never twice: the tier's own output is marked
    assert (again.outcome, again.cpu_seconds) == ("already", 0)
    assert src.stat().st_ino == after.st_ino


async def test_a_source_already_in_the_target_codec_is_left_alone(sources: dict[str, Path], tmp_path: Path) -> None:
    d = segment_dir(tmp_path)
    src = place(sources["hevc"], d)
    data = src.read_bytes()
    res = await compress_file(src, FAST)
    assert res.outcome == "already" and "hevc" in res.reason
    assert src.read_bytes() == data and hidden(d) == []


async def test_a_bigger_result_keeps_the_source(sources: dict[str, Path], tmp_path: Path) -> None:
    d = segment_dir(tmp_path)
    src = place(sources["tiny"], d)
    data, ino = src.read_bytes(), src.stat().st_ino
    lossless = CompressionSettings(codec="libx264", crf=0, preset="ultrafast", same_codec=True)
    res = await compress_file(src, lossless)
    assert res.outcome == "not_smaller", res
    assert res.new_size >= res.old_size == len(data) and res.saved_bytes == 0
    assert src.read_bytes() == data and src.stat().st_ino == ino and hidden(d) == []


def _garbage(d: Path, sources: dict[str, Path]) -> Path:
    return place_bytes(d, os.urandom(40_000))


def _truncated(d: Path, sources: dict[str, Path]) -> Path:
    # cut inside the third fragment: FFmpeg decodes part of it, the fragment index stops before it
    data = sources["h264"].read_bytes()
    index = scan(sources["h264"])
    assert index is not None
    third = index.fragments[2]
    return place_bytes(d, data[:third.offset + third.length // 2])


def _pcm(d: Path, sources: dict[str, Path]) -> Path:
    return place(sources["pcm"], d)


def place_bytes(d: Path, data: bytes, name: str = "12-00-00.mp4") -> Path:
    p = d / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(("make", "why"), [
    (_garbage, "ffprobe"),
    (_truncated, "duration"),
    (_pcm, "pcm_s16le"),
], ids=["garbage", "truncated", "audio-refused"])
async def test_a_failed_job_leaves_the_source_byte_identical(sources: dict[str, Path], tmp_path: Path,
                                                            make: Callable[[Path, dict[str, Path]], Path],
                                                            why: str) -> None:
    d = segment_dir(tmp_path)
    src = make(d, sources)
    data, ino = src.read_bytes(), src.stat().st_ino
    res = await compress_file(src, FAST)
    assert res.outcome == "failed", res
    assert why in res.reason
    assert src.read_bytes() == data and src.stat().st_ino == ino
    assert hidden(d) == []


async def test_a_missing_source_fails_without_raising(tmp_path: Path) -> None:
    res = await compress_file(tmp_path / "gone.mp4", FAST)
    assert res.outcome == "failed" and "does not exist" in res.reason


# --------------------------------------------------------------------------- the loop


class Store:
    """An in-memory index for the loop's callbacks: what is due, and what ``done`` recorded."""

    def __init__(self, paths: list[Path], due_since: float) -> None:
        self.due = [Candidate(i + 1, str(p), 2.0, due_since - 1, due_since) for i, p in enumerate(paths)]
        self.results: dict[int, CompressResult] = {}
        self.limits: list[int] = []
        self.fail_next = 0

    async def candidates(self, limit: int) -> list[Candidate]:
        self.limits.append(limit)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("database down")
        return [c for c in self.due if c.segment_id not in self.results][:limit]

    async def backlog(self) -> int:
        return sum(1 for c in self.due if c.segment_id not in self.results)

    async def done(self, cand: Candidate, res: CompressResult) -> None:
        self.results[cand.segment_id] = res


async def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_the_loop_compresses_every_candidate_within_its_concurrency(sources: dict[str, Path],
                                                                         tmp_path: Path, logs: list[Any]) -> None:
    d = segment_dir(tmp_path)
    paths = [place(sources["small"], d, f"12-00-{i:02d}.mp4") for i in range(4)]
    paths.append(place_bytes(d, b"not a video", "12-00-10.mp4"))
    paths.append(place(sources["small"], d, "12-00-20.mp4"))  # its job raises
    store = Store(paths, due_since=time.time() - 3600)
    store.fail_next = 1  # the first fetch fails: logged, retried
    running, peak = 0, 0

    async def job(cand: Candidate, settings: CompressionSettings) -> CompressResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            if cand.path.endswith("12-00-20.mp4"):
                await asyncio.sleep(0.05)
                raise RuntimeError("a bug in one job")
            return await compress_file(Path(cand.path), settings)
        finally:
            running -= 1

    settings = CompressionSettings(preset="ultrafast", crf=35, concurrency=2, cpu_budget=64)
    jobs = {o: sample("recorderd_compress_jobs_total", outcome=o) for o in compress.OUTCOMES}
    cpu0, saved0 = sample("recorderd_compress_cpu_seconds_total"), sample("recorderd_compress_saved_bytes_total")
    comp = Compressor(settings, store.candidates, store.done, backlog=store.backlog, job=job,
                      idle_seconds=30, retry_seconds=0.05)
    task = asyncio.create_task(comp.run())
    try:
        await wait_for(lambda: len(store.results) == len(paths), 15, "every candidate done")
    finally:
        started = time.monotonic()
        await comp.stop()
        assert time.monotonic() - started < 2  # the idle wait ends at once
        await asyncio.wait_for(task, 5)

    assert peak == 2
    outcomes = {cid: r.outcome for cid, r in store.results.items()}
    assert outcomes == {1: "compressed", 2: "compressed", 3: "compressed", 4: "compressed", 5: "failed", 6: "failed"}
    assert "RuntimeError: a bug in one job" in store.results[6].reason
    assert min(store.limits) >= 4  # batches of 2 x concurrency at least
    assert hidden(d) == []
    assert all(ffprobe(p)["streams"][0]["codec_name"] == "hevc" for p in paths[:4])

    assert sample("recorderd_compress_jobs_total", outcome="compressed") - jobs["compressed"] == 4
    assert sample("recorderd_compress_jobs_total", outcome="failed") - jobs["failed"] == 2
    assert sample("recorderd_compress_cpu_seconds_total") > cpu0
    saved = sum(r.saved_bytes for r in store.results.values())
    assert saved > 0 and sample("recorderd_compress_saved_bytes_total") - saved0 == saved
    assert sample("recorderd_compress_backlog_segments") == 0  # the last pass found nothing due
    assert sample("recorderd_compress_behind") == 0

    failed = [e for e in logs if e["event"] == "compress_failed"]
    assert [e.get("stage") for e in failed].count("candidates") == 1
    assert {e.get("segment") for e in failed if "segment" in e} == {5, 6}
    done = [e for e in logs if e["event"] == "compress_done"]
    assert len(done) == 4 and all(e["ratio"] < 1 for e in done)


async def test_stop_kills_a_running_job_and_removes_its_temp_file(tmp_path: Path) -> None:
    d = segment_dir(tmp_path)
    src = make_source(d / "12-00-00.mp4", seconds=6, size="640x480", rate=25)
    data = src.read_bytes()
    store = Store([src], due_since=time.time() - 60)
    slow = CompressionSettings(preset="veryslow", crf=20)  # seconds of work: still running when stopped
    comp = Compressor(slow, store.candidates, store.done)
    task = asyncio.create_task(comp.run())

    def writing() -> bool:  # FFmpeg has written its header into the temp file
        return any(p.stat().st_size > 0 for p in d.iterdir() if p.name.startswith("."))

    await wait_for(writing, 10, "the job's FFmpeg writing its temp file")
    assert comp.busy_paths() == {str(src)}
    started = time.monotonic()
    await comp.stop()
    assert time.monotonic() - started < compress.TERM_WAIT + 2
    await asyncio.wait_for(task, 5)

    assert hidden(d) == [] and src.read_bytes() == data
    assert store.results == {}  # interrupted: still due, done is not called
    assert comp.busy_paths() == frozenset()
    for pid in filter(str.isdigit, os.listdir("/proc")):  # no FFmpeg left behind
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(src).encode() not in cmdline


async def test_behind_is_reported_once_per_episode(logs: list[Any]) -> None:
    now = time.time()
    store = Store([Path("/nowhere/12-00-00.mp4")], due_since=now - 2 * 86400)

    async def job(cand: Candidate, settings: CompressionSettings) -> CompressResult:
        return CompressResult("failed", "cannot", 0, 0, None, None, 0.0, 0.0)

    async def keep_due(cand: Candidate, res: CompressResult) -> None:
        pass  # the segment stays due: the loop skips it itself, its age keeps the tier behind

    comp = Compressor(CompressionSettings(), store.candidates, keep_due, job=job, idle_seconds=0.01)
    task = asyncio.create_task(comp.run())
    try:
        await wait_for(lambda: len(store.limits) >= 5, 5, "several passes")
        assert sample("recorderd_compress_behind") == 1
        assert sample("recorderd_compress_backlog_oldest_seconds") >= 2 * 86400
        assert sample("recorderd_compress_backlog_segments") == 1  # no backlog callback: the batch
        store.due = []
        passes = len(store.limits)
        await wait_for(lambda: len(store.limits) >= passes + 2, 5, "passes after catching up")
        assert sample("recorderd_compress_behind") == 0
        assert sample("recorderd_compress_backlog_oldest_seconds") == 0
    finally:
        await comp.stop()
        await asyncio.wait_for(task, 5)
    behind = [e for e in logs if e["event"] == "compress_behind"]
    assert [(e["log_level"], e.get("cleared", False)) for e in behind] == [("warning", False), ("info", True)]
    assert next(e for e in logs if e["event"] == "compress_failed")["consecutive"] == 1
