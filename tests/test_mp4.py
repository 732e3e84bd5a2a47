"""mp4.is_header_only on real files made by the system FFmpeg, and on damaged copies of them."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from util import top_boxes

from recorderd.mp4 import MAX_HEADER_BYTES, is_header_only

FRAG = "+frag_keyframe+empty_moov+default_base_moof"


def _ffmpeg(out: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                    *args, "-c:v", "libx264", "-f", "mp4", str(out)], check=True, timeout=60)
    return out


def boxes(path: Path) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the top-level boxes of a well-formed file."""
    return top_boxes(path.read_bytes())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mp4")
    return {
        "fragmented": _ffmpeg(d / "frag.mp4", "-t", "0.5", "-movflags", FRAG),
        "zero_frames": _ffmpeg(d / "zero.mp4", "-frames:v", "0", "-movflags", FRAG),
        "faststart": _ffmpeg(d / "faststart.mp4", "-t", "0.5", "-movflags", "+faststart"),
    }


def _copy(src: Path, dst: Path, keep: int | None = None, append: bytes = b"") -> Path:
    data = src.read_bytes()
    dst.write_bytes((data if keep is None else data[:keep]) + append)
    return dst


def _end_of(path: Path, kind: bytes) -> int:
    box = next(b for b in boxes(path) if b[0] == kind)
    return box[1] + box[2]


def test_a_real_segment_is_not_header_only(media: dict[str, Path]) -> None:
    assert [b[0] for b in boxes(media["fragmented"])][:4] == [b"ftyp", b"moov", b"moof", b"mdat"]
    assert not is_header_only(media["fragmented"])
    assert not is_header_only(media["faststart"])  # ftyp moov mdat: a plain MP4 with media


def test_a_run_killed_before_its_first_fragment_is_header_only(media: dict[str, Path], tmp_path: Path) -> None:
    """What a killed FFmpeg leaves: ftyp + moov and nothing else (~780 bytes)."""
    killed = _copy(media["fragmented"], tmp_path / "killed.mp4", keep=_end_of(media["fragmented"], b"moov"))
    assert [b[0] for b in boxes(killed)] == [b"ftyp", b"moov"] and killed.stat().st_size < 1024
    assert is_header_only(killed)
    # a run with no frame that FFmpeg closed cleanly: ftyp moov mfra (an index of no fragment)
    assert [b[0] for b in boxes(media["zero_frames"])] == [b"ftyp", b"moov", b"mfra"]
    assert is_header_only(media["zero_frames"])
    padded = _copy(killed, tmp_path / "padded.mp4", append=struct.pack(">I4s", 16, b"free") + bytes(8))
    assert is_header_only(padded)


def test_anything_with_data_or_in_doubt_is_not_header_only(media: dict[str, Path], tmp_path: Path) -> None:
    frag = media["fragmented"]
    moov_end = _end_of(frag, b"moov")
    cases = {
        "cut inside moov": _copy(frag, tmp_path / "a.mp4", keep=moov_end - 100),
        "cut inside a box header": _copy(frag, tmp_path / "b.mp4", keep=moov_end + 5),
        "cut inside the first moof": _copy(frag, tmp_path / "c.mp4", keep=moov_end + 40),
        "cut inside the first mdat": _copy(frag, tmp_path / "d.mp4", keep=_end_of(frag, b"moof") + 100),
        "only ftyp": _copy(frag, tmp_path / "e.mp4", keep=_end_of(frag, b"ftyp")),
        "unknown box after moov": _copy(frag, tmp_path / "f.mp4", keep=moov_end,
                                        append=struct.pack(">I4s", 8, b"junk")),
        "box size smaller than its header": _copy(frag, tmp_path / "g.mp4", keep=moov_end,
                                                  append=struct.pack(">I4s", 4, b"free")),
        "box running past the end": _copy(frag, tmp_path / "h.mp4", keep=moov_end,
                                          append=struct.pack(">I4s", 4096, b"free")),
        "garbage": _copy(frag, tmp_path / "i.mp4", keep=0, append=os.urandom(700)),
        "empty": _copy(frag, tmp_path / "j.mp4", keep=0),
    }
    for what, path in cases.items():
        assert not is_header_only(path), what


def test_size_limit_missing_files_and_non_regular_files(media: dict[str, Path], tmp_path: Path) -> None:
    header = media["zero_frames"]
    big = _copy(header, tmp_path / "big.mp4",
                append=struct.pack(">I4s", MAX_HEADER_BYTES, b"free") + bytes(MAX_HEADER_BYTES - 8))
    assert not is_header_only(big)  # well-formed, but larger than a header ever is: read nothing more
    assert not is_header_only(tmp_path / "nope.mp4")
    assert not is_header_only(tmp_path)  # a directory
    link = tmp_path / "link.mp4"
    link.symlink_to(header)
    assert not is_header_only(link)  # never followed
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    assert not is_header_only(fifo)  # and never blocks on one
    largesize = _copy(header, tmp_path / "large.mp4",
                      append=struct.pack(">I4sQ", 1, b"free", 24) + bytes(8))  # 64-bit box size
    assert is_header_only(largesize)
    to_end = _copy(header, tmp_path / "to_end.mp4", append=struct.pack(">I4s", 0, b"skip") + bytes(20))
    assert is_header_only(to_end)  # size 0: the last box runs to the end of the file
