"""fmp4.scan on real fragmented MP4 files made by the system FFmpeg, on growing (cut) copies and on damage."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import pytest
from util import top_boxes

from recorderd.fmp4 import Fragment, FragmentIndex, scan

FRAG = "+frag_keyframe+empty_moov+default_base_moof"
FPS = 10  # and -g 10: one 1 s GOP, so one fragment, per second


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


def _make(out: Path, *args: str, audio: bool = True, seconds: int = 6) -> Path:
    inputs = ["-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    codecs = ["-c:v", "libx264", "-g", str(FPS)] + (["-c:a", "aac"] if audio else ["-an"])
    _ffmpeg(*inputs, *codecs, "-t", str(seconds), *args, "-movflags", FRAG, "-f", "mp4", str(out))
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fmp4")
    return {
        "av": _make(d / "av.mp4"),
        "video": _make(d / "video.mp4", audio=False),
        "flushed": _make(d / "flushed.mp4", "-flush_packets", "1"),
    }


def probe(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ffprobe", "-v", "error", *args, str(path)], capture_output=True, text=True, timeout=60)


def video_keyframes(path: Path) -> int:
    out = probe(path, "-select_streams", "v:0", "-show_entries", "packet=flags", "-of", "csv=p=0").stdout
    return sum("K" in line for line in out.split())


def video_duration(path: Path) -> float:
    out = probe(path, "-select_streams", "v:0", "-show_entries", "stream=duration", "-of", "csv=p=0").stdout
    return float(out.strip())


def decoded_frames(data: bytes) -> tuple[int, str]:
    """(video frames decoded, error output) of an MP4 given as bytes on a pipe (never seekable)."""
    r = subprocess.run(["ffprobe", "-v", "error", "-f", "mp4", "-count_frames", "-select_streams", "v:0",
                        "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", "pipe:0"],
                       input=data, capture_output=True, timeout=60)
    return int(r.stdout.decode().strip() or 0), r.stderr.decode()


def _cut(src: Path, dst: Path, keep: int, append: bytes = b"") -> Path:
    dst.write_bytes(src.read_bytes()[:keep] + append)
    return dst


@pytest.mark.parametrize("name", ["av", "video", "flushed"])
def test_a_real_file_is_indexed_fragment_by_fragment(media: dict[str, Path], name: str) -> None:
    path = media[name]
    data = path.read_bytes()
    index = scan(path)
    assert index is not None
    boxes = top_boxes(data)
    moov = next(b for b in boxes if b[0] == b"moov")
    assert index.init_length == moov[1] + moov[2]
    assert index.timescale == int(probe(path, "-select_streams", "v:0", "-show_entries", "stream=time_base",
                                        "-of", "csv=p=0").stdout.strip().split("/")[1])
    assert index.complete  # FFmpeg closed it: the mfra is there
    assert [b[0] for b in boxes][-1] == b"mfra"
    frags = index.fragments
    # one fragment per GOP, every one starting on a keyframe (frag_keyframe)
    assert len(frags) == video_keyframes(path) == 6
    assert all(f.keyframe for f in frags)
    # the byte ranges tile the file from the end of the init section to the mfra
    assert frags[0].offset == index.init_length
    for a, b in zip(frags, frags[1:], strict=False):
        assert a.offset + a.length == b.offset
        assert b.start == pytest.approx(a.start + a.duration)
    assert index.media_end == frags[-1].offset + frags[-1].length == next(b[1] for b in boxes if b[0] == b"mfra")
    assert frags[0].start == 0.0 and index.base_decode_time == 0
    assert index.duration == pytest.approx(video_duration(path), abs=1 / FPS)
    assert all(f.duration == pytest.approx(1.0, abs=1 / FPS) for f in frags)


def test_each_fragment_after_the_init_section_decodes_alone(media: dict[str, Path]) -> None:
    """What a player does with EXT-X-MAP + one byte range: every fragment is a whole GOP."""
    for name in ("av", "video"):
        data = media[name].read_bytes()
        index = scan(media[name])
        assert index is not None
        init = data[:index.init_length]
        for k, f in enumerate(index.fragments):
            frames, errors = decoded_frames(init + data[f.offset:f.offset + f.length])
            assert errors == "", (name, k, errors)
            assert frames == round(f.duration * FPS), (name, k)


def test_scan_time_of_an_hour_of_one_second_fragments(tmp_path_factory: pytest.TempPathFactory) -> None:
    """3600 fragments (25 fps, audio, B-frames) must index in well under 50 ms: it runs per request."""
    d = tmp_path_factory.mktemp("long")
    clip = d / "clip.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-f", "lavfi", "-i", "sine=sample_rate=48000",
            "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-c:a", "aac", "-t", "10", str(clip))
    long = d / "hour.mp4"  # stream copy of the clip looped: an hour in under a second
    _ffmpeg("-stream_loop", "-1", "-i", str(clip), "-c", "copy", "-t", "3620", "-movflags", FRAG, "-f", "mp4", str(long))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        index = scan(long)
        best = min(best, time.perf_counter() - t)
    assert index is not None and index.complete
    print(f"\nscan of {len(index.fragments)} fragments, {long.stat().st_size / 1e6:.1f} MB: {best * 1000:.1f} ms")
    assert len(index.fragments) >= 3600
    assert index.duration == pytest.approx(video_duration(long), abs=1 / 25)
    assert best < 0.05


def test_a_growing_file_lists_only_complete_fragments(media: dict[str, Path], tmp_path: Path) -> None:
    src = media["av"]
    full = scan(src)
    assert full is not None
    frags = full.fragments
    size = src.stat().st_size
    for keep in [*range(full.init_length, size, 997), *(f.offset for f in frags), *(f.offset + 5 for f in frags),
                 *(f.offset + 600 for f in frags), size - 1]:
        cut = scan(_cut(src, tmp_path / "cut.mp4", keep))
        assert cut is not None, keep
        expected = tuple(f for f in frags if f.offset + f.length <= keep)
        assert cut.fragments == expected, keep
        assert not cut.complete  # no mfra yet
        assert cut.media_end == (expected[-1].offset + expected[-1].length if expected else full.init_length)
    # a file cut inside its header has no index at all; one with just the header has no fragment
    assert scan(_cut(src, tmp_path / "cut.mp4", full.init_length - 1)) is None
    header_only = scan(_cut(src, tmp_path / "cut.mp4", full.init_length))
    assert header_only is not None and header_only.fragments == () and header_only.timescale == full.timescale


def test_incremental_scan_resumes_where_the_last_one_stopped(media: dict[str, Path], tmp_path: Path) -> None:
    src = media["av"]
    data = src.read_bytes()
    full = scan(src)
    assert full is not None
    path = tmp_path / "growing.mp4"
    previous = scan(_cut(src, path, full.fragments[2].offset + 100))
    assert previous is not None and len(previous.fragments) == 2
    for keep in (full.fragments[4].offset + 3, len(data)):
        path.write_bytes(data[:keep])  # FFmpeg appended more
        resumed = scan(path, previous=previous)
        assert resumed == scan(path)
        assert resumed is not None
        previous = resumed
    assert previous == full and previous.complete
    assert scan(path, previous=previous) is previous  # a closed file never changes
    # an index of another file (or of a file that shrank: replaced) is not trusted
    assert scan(media["video"], previous=full) == scan(media["video"])
    assert scan(_cut(src, tmp_path / "short.mp4", full.fragments[1].offset), previous=full) == scan(tmp_path / "short.mp4")


def test_nothing_damaged_or_strange_raises(media: dict[str, Path], tmp_path: Path) -> None:
    src = media["av"]
    full = scan(src)
    assert full is not None
    data = src.read_bytes()
    assert scan(tmp_path / "missing.mp4") is None
    assert scan(_cut(src, tmp_path / "empty.mp4", 0)) is None
    assert scan(_cut(src, tmp_path / "junk.mp4", 0, os.urandom(5000))) is None
    assert scan(tmp_path) is None  # a directory
    link = tmp_path / "link.mp4"
    link.symlink_to(src)
    assert scan(link) is None  # never followed
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    assert scan(fifo) is None  # and never blocks
    plain = tmp_path / "plain.mp4"  # not fragmented: ftyp mdat moov (or moov mdat): nothing to serve by fragment
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=5", "-t", "1", "-c:v", "libx264", str(plain))
    index = scan(plain)
    assert index is None or index.fragments == ()
    # garbage after the third fragment: the first three stand
    third_end = full.fragments[2].offset + full.fragments[2].length
    damaged = scan(_cut(src, tmp_path / "d.mp4", third_end, os.urandom(3000)))
    assert damaged is not None and damaged.fragments == full.fragments[:3]
    # a trun claiming more samples than its box holds: the walk stops before that fragment
    broken = bytearray(data)
    moof = full.fragments[3].offset
    trun = bytes(broken).index(b"trun", moof)
    struct.pack_into(">I", broken, trun + 8, 0x0FFFFFFF)
    (tmp_path / "trun.mp4").write_bytes(bytes(broken))
    index = scan(tmp_path / "trun.mp4")
    assert index is not None and index.fragments == full.fragments[:3]
    # a box claiming a size smaller than its header, right after the moov
    bad = scan(_cut(src, tmp_path / "small.mp4", full.init_length, struct.pack(">I4s", 4, b"moof")))
    assert bad is not None and bad.fragments == ()


def test_box_sizes_64_bit_zero_and_boxes_between_fragments(media: dict[str, Path], tmp_path: Path) -> None:
    src = media["av"]
    full = scan(src)
    assert full is not None
    data = src.read_bytes()
    boxes = top_boxes(data)
    out = bytearray()
    for kind, offset, size in boxes:
        payload = data[offset + 8:offset + size]
        if kind == b"mdat":  # the same box with a 64-bit largesize header, then a free box
            out += struct.pack(">I4sQ", 1, b"mdat", size + 8) + payload + struct.pack(">I4s", 12, b"free") + bytes(4)
        elif kind != b"mfra":
            out += data[offset:offset + size]
    (tmp_path / "large.mp4").write_bytes(bytes(out))
    index = scan(tmp_path / "large.mp4")
    assert index is not None and not index.complete
    assert [(f.length, f.start, f.duration) for f in index.fragments] == [
        (f.length + 8, f.start, f.duration) for f in full.fragments]
    # size 0: the last mdat runs to the end of the file
    last = full.fragments[-1]
    zero = bytearray(data[:last.offset + last.length])
    mdat = bytes(zero).rindex(b"mdat") - 4
    struct.pack_into(">I", zero, mdat, 0)
    (tmp_path / "zero.mp4").write_bytes(bytes(zero))
    index = scan(tmp_path / "zero.mp4")
    assert index is not None and index.fragments == full.fragments


def test_index_types() -> None:
    f = Fragment(offset=10, length=20, start=0.0, duration=1.0, keyframe=True)
    index = FragmentIndex(init_length=10, timescale=1000, track_id=1, base_decode_time=0, fragments=(f,),
                          media_end=30, complete=False)
    assert index.duration == 1.0
    with pytest.raises(AttributeError):
        index.complete = True  # type: ignore[misc]
