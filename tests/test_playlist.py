"""api.playlist: HLS text from synthetic fragment indexes, and end to end over files made by FFmpeg's segment muxer."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from recorderd.api.playlist import SegmentFile, benchmark, build, date_time
from recorderd.fmp4 import Fragment, FragmentIndex, scan

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
TS = 90_000


def index(durations: list[float], *, keyframes: list[bool] | None = None, base: int = 0, complete: bool = True,
          init: int = 1000, size: int = 1000) -> FragmentIndex:
    frags, offset, t = [], init, 0.0
    for k, d in enumerate(durations):
        frags.append(Fragment(offset, size, t, d, True if keyframes is None else keyframes[k]))
        offset, t = offset + size, t + d
    return FragmentIndex(init_length=init, timescale=TS, track_id=1, base_decode_time=base, fragments=tuple(frags),
                         media_end=offset, complete=complete)


def seg(id: int, start: float, durations: list[float], run: str | None = "r", **kw: object) -> SegmentFile:
    idx = index(durations, **kw)  # type: ignore[arg-type]
    return SegmentFile(id, start, start + idx.duration, run, idx)


def url(i: int) -> str:
    return f"/m/{i}.mp4"


def play(files: list[SegmentFile], start: float = T0 - 100, end: float = T0 + 10_000, *, open_ended: bool = False,
         **kw: object) -> str:
    return build(files, start, end, open_ended=open_ended, url=url, **kw)  # type: ignore[arg-type]


def entries(text: str) -> list[dict[str, str]]:
    """One dict per media segment: its tags (name -> value, "" for bare tags), plus ``uri``."""
    out, tags = [], {}
    for line in text.splitlines():
        if line.startswith("#EXT-X-ENDLIST") or line in ("#EXTM3U",) or line.startswith(
                ("#EXT-X-VERSION", "#EXT-X-TARGET", "#EXT-X-MEDIA-SEQ", "#EXT-X-PLAYLIST", "#EXT-X-INDEP")):
            continue
        if line.startswith("#"):
            name, _, value = line[1:].partition(":")
            tags[name] = value
        else:
            out.append({**tags, "uri": line})
            tags = {}
    return out


def durations(text: str) -> list[float]:
    return [float(e["EXTINF"].rstrip(",")) for e in entries(text)]


def ranges(text: str) -> list[str]:
    return [e["EXT-X-BYTERANGE"] for e in entries(text)]


def test_the_whole_text_of_a_small_playlist() -> None:
    text = play([seg(7, T0, [1.0, 1.0, 0.5])], target=0)
    assert text == "\n".join([
        "#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="/m/7.mp4",BYTERANGE="1000@0"',
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z",
        "#EXTINF:1.000,", "#EXT-X-BYTERANGE:1000@1000", "/m/7.mp4",
        "#EXTINF:1.000,", "#EXT-X-BYTERANGE:1000@2000", "/m/7.mp4",
        "#EXTINF:0.500,", "#EXT-X-BYTERANGE:1000@3000", "/m/7.mp4",
        "#EXT-X-ENDLIST", ""])


def test_the_period_is_covered_by_whole_fragments() -> None:
    f = [seg(1, T0, [1.0] * 10)]
    # from inside fragment 3 to inside fragment 6: 3..6, the first dated at its own start
    text = play(f, T0 + 3.5, T0 + 6.2, target=0)
    assert ranges(text) == ["1000@4000", "1000@5000", "1000@6000", "1000@7000"]
    assert entries(text)[0]["EXT-X-PROGRAM-DATE-TIME"] == "2023-11-14T22:13:23.000Z"
    # exact boundaries: [3, 6) is fragments 3, 4, 5 (the end is exclusive; 2 ends where it starts)
    assert ranges(play(f, T0 + 3, T0 + 6, target=0)) == ["1000@4000", "1000@5000", "1000@6000"]
    assert len(entries(play(f, T0 - 50, T0 + 50, target=0))) == 10
    assert entries(play(f, T0 + 10, T0 + 20)) == [] and entries(play(f, T0 - 20, T0)) == []
    assert ranges(play(f, T0 + 3.5, T0 + 6.2, target=4)) == ["4000@4000"]  # the same bytes, merged


def test_the_first_fragment_backs_up_to_a_keyframe() -> None:
    f = [seg(1, T0, [1.0] * 6, keyframes=[True, False, False, True, False, False])]
    assert ranges(play(f, T0 + 1.5, T0 + 2.5, target=0)) == ["3000@1000"]  # 0..2, one decodable segment
    assert ranges(play(f, T0 + 4.5, T0 + 6, target=0)) == ["3000@4000"]
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in play(f, target=0)


def test_fragments_merge_up_to_the_target() -> None:
    assert durations(play([seg(1, T0, [1.0] * 10)], target=4)) == [4, 4, 2]
    assert ranges(play([seg(1, T0, [1.0] * 10)], target=4)) == ["4000@1000", "4000@5000", "2000@9000"]
    assert durations(play([seg(1, T0, [0.4] * 10)], target=2)) == [2, 2]
    assert durations(play([seg(1, T0, [3.0, 3.0, 3.0])], target=4)) == [3, 3, 3]  # a GOP longer than half
    assert durations(play([seg(1, T0, [1.0] * 5)], target=0)) == [1] * 5
    # a fragment that does not start with a keyframe never starts a segment, whatever the target
    text = play([seg(1, T0, [1.0] * 5, keyframes=[True, False, False, False, True])], target=2)
    assert durations(text) == [4, 1]
    # fragments that are not contiguous in the file (a box between them) are never one byte range
    idx = index([1.0] * 4)
    frags = list(idx.fragments)
    frags[2:] = [f._replace(offset=f.offset + 100) for f in frags[2:]]
    holed = SegmentFile(1, T0, T0 + 4, "r", FragmentIndex(1000, TS, 1, 0, tuple(frags), 5100, True))
    assert ranges(play([holed], target=4)) == ["2000@1000", "2000@3100"]


def test_merging_never_crosses_files() -> None:
    files = [seg(1, T0, [1.0] * 3, base=0), seg(2, T0 + 3, [1.0] * 3, base=3 * TS)]
    text = play(files, target=4)
    assert durations(text) == [3, 3] and [e["uri"] for e in entries(text)] == ["/m/1.mp4", "/m/2.mp4"]


def test_event_vs_vod() -> None:
    files = [seg(1, T0, [1.0] * 10, complete=False)]
    vod = play(files, target=4)
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in vod and vod.endswith("#EXT-X-ENDLIST\n")
    event = play(files, open_ended=True, target=4)
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in event and "#EXT-X-ENDLIST" not in event
    # the growing file's last, short segment waits: the next fragment could still join it
    assert durations(event) == [4, 4]
    assert durations(play([seg(1, T0, [1.0] * 10)], open_ended=True, target=4)) == [4, 4, 2]  # closed: final
    # a file FFmpeg left without its mfra (killed) is final once another follows it
    files = [seg(1, T0, [1.0] * 10, complete=False), seg(2, T0 + 10, [1.0] * 5, complete=False)]
    assert durations(play(files, open_ended=True, target=4)) == [4, 4, 2, 4]
    # nothing held back without merging, or when the period's end cuts the file
    assert durations(play([seg(1, T0, [1.0] * 10, complete=False)], open_ended=True, target=0)) == [1] * 10
    assert durations(play([seg(1, T0, [1.0] * 10, complete=False)], T0, T0 + 5, open_ended=True, target=4)) == [4, 1]


def test_reloads_of_an_event_playlist_only_ever_append() -> None:
    before: list[dict[str, str]] = []
    for n in range(1, 30):
        files = [seg(1, T0, [1.0] * min(n, 12), complete=n > 12)]
        if n > 12:
            files.append(seg(2, T0 + 12, [0.7] * (n - 12), complete=False))
        now = entries(play(files, T0, T0 + 1000, open_ended=True, target=4))
        assert now[:len(before)] == before, n
        before = now


def test_discontinuities() -> None:
    def disc(a: SegmentFile, b: SegmentFile, gap: float = 0.5) -> bool:
        second = entries(play([a, b], target=0, gap=gap))[3]
        return "EXT-X-DISCONTINUITY" in second

    first = seg(1, T0, [1.0] * 3, base=5 * TS)
    # same run, wall clock and decode times both continue: one timeline
    assert not disc(first, seg(2, T0 + 3, [1.0] * 3, base=8 * TS))
    assert not disc(first, seg(2, T0 + 3.3, [1.0] * 3, base=8 * TS))  # within the gap allowance
    # timestamps reset (FFmpeg's -reset_timestamps 1: every new file starts at 0)
    assert disc(first, seg(2, T0 + 3, [1.0] * 3, base=0))
    # another run, or an unknown one
    assert disc(first, seg(2, T0 + 3, [1.0] * 3, base=8 * TS, run="other"))
    assert disc(first, seg(2, T0 + 3, [1.0] * 3, base=8 * TS, run=None))
    # an outage between the files
    assert disc(first, seg(2, T0 + 4, [1.0] * 3, base=8 * TS))
    assert disc(first, seg(2, T0 + 3.3, [1.0] * 3, base=8 * TS), gap=0.2)
    # a new timescale is a new timeline too
    other = seg(2, T0 + 3, [1.0] * 3)
    other = SegmentFile(2, other.start, other.end, "r", FragmentIndex(1000, 1000, 1, 8000, other.index.fragments,
                                                                      other.index.media_end, True))
    assert disc(first, other)
    # never before the first segment of the playlist, even when earlier files are out of the period
    text = play([first, seg(2, T0 + 10, [1.0] * 3)], T0 + 10.5, T0 + 20, target=0)
    assert "DISCONTINUITY" not in text


def test_program_date_time() -> None:
    files = [seg(1, T0 + 0.04, [1.0] * 3), seg(2, T0 + 10.5, [1.0] * 2)]
    text = play(files, target=0)
    dated = [(e["uri"], e.get("EXT-X-PROGRAM-DATE-TIME")) for e in entries(text)]
    assert dated == [("/m/1.mp4", "2023-11-14T22:13:20.040Z"), ("/m/1.mp4", None), ("/m/1.mp4", None),
                     ("/m/2.mp4", "2023-11-14T22:13:30.500Z"), ("/m/2.mp4", None)]
    every = [e["EXT-X-PROGRAM-DATE-TIME"] for e in entries(play(files, target=0, date_every_segment=True))]
    assert every == ["2023-11-14T22:13:20.040Z", "2023-11-14T22:13:21.040Z", "2023-11-14T22:13:22.040Z",
                     "2023-11-14T22:13:30.500Z", "2023-11-14T22:13:31.500Z"]
    assert date_time(T0 + 0.0006) == "2023-11-14T22:13:20.001Z"
    assert date_time(T0 + 59.9996) == "2023-11-14T22:14:20.000Z"  # rounding carries into the seconds


def test_target_duration() -> None:
    def target(text: str) -> int:
        return int(next(line for line in text.splitlines() if line.startswith("#EXT-X-TARGETDURATION:"))[22:])

    assert target(play([seg(1, T0, [1.0] * 8)], target=4)) == 4
    assert target(play([seg(1, T0, [4.0004])], target=4)) == 4  # as written (4.000), not 5
    assert target(play([seg(1, T0, [4.2])], target=4)) == 5
    assert target(play([seg(1, T0, [10.0, 10.0])], target=4)) == 10  # a 10 s GOP cannot be split
    assert target(play([seg(1, T0, [0.3])], target=0)) == 1
    empty = play([], target=4)
    assert target(empty) == 4 and entries(empty) == [] and empty.endswith("#EXT-X-ENDLIST\n")
    assert "#EXT-X-ENDLIST" not in play([], open_ended=True)


def test_independent_segments_only_when_true() -> None:
    text = play([seg(1, T0, [1.0, 1.0]), seg(2, T0 + 2, [1.0, 1.0], keyframes=[False, True])], target=0)
    assert "#EXT-X-INDEPENDENT-SEGMENTS" not in text


def test_urls_are_asked_once_per_file_and_checked() -> None:
    asked: list[int] = []

    def counting(i: int) -> str:
        asked.append(i)
        return f"/m/{i}.mp4?sig=a&exp=1"

    build([seg(1, T0, [1.0] * 20), seg(2, T0 + 20, [1.0] * 20)], T0, T0 + 40, open_ended=False, url=counting)
    assert asked == [1, 2]
    for bad in ('/m/1.mp4"', "/m/1\n#EXT-X-ENDLIST", ""):
        def broken(i: int, bad: str = bad) -> str:
            return bad

        with pytest.raises(ValueError):
            build([seg(1, T0, [1.0])], T0, T0 + 1, open_ended=False, url=broken)


def test_build_cost_of_a_day() -> None:
    for file_seconds in (3600, 10):
        count, size, seconds = benchmark(file_seconds)
        print(f"\n24 h of {file_seconds} s files, 1 s fragments merged to 4 s: {count} segments, "
              f"{size / 1e6:.2f} MB, built in {seconds * 1000:.0f} ms")
        assert count == (21600 if file_seconds == 3600 else 8640 * 3)
        assert seconds < 2


# --------------------------------------------------------------------------- end to end, real files

FPS = 10
SEGMENT_FORMAT_OPTIONS = "movflags=+frag_keyframe+empty_moov+default_base_moof:flush_packets=1"


def _record(directory: Path, prefix: str, seconds: int) -> list[tuple[str, float, float]]:
    """One FFmpeg run through the segment muxer exactly as the recorder does: (name, start, end) per file."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size=160x120:rate={FPS}",
         "-f", "lavfi", "-i", "sine=sample_rate=8000", "-c:v", "libx264", "-g", str(FPS), "-c:a", "aac",
         "-t", str(seconds), "-f", "segment", "-segment_time", "3", "-reset_timestamps", "1",
         "-segment_format", "mp4", "-segment_format_options", SEGMENT_FORMAT_OPTIONS,
         "-segment_list", "pipe:1", "-segment_list_type", "csv", f"{prefix}%d.mp4"],
        cwd=directory, check=True, capture_output=True, text=True, timeout=60).stdout
    return [(name, float(a), float(b)) for name, a, b in csv.reader(out.splitlines())]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SegmentFile], dict[int, str]]:
    """Two runs 20 s apart: run A of 9 s (three 3 s files), run B of 4 s (3 s + 1 s)."""
    d = tmp_path_factory.mktemp("hls")
    files: list[SegmentFile] = []
    names: dict[int, str] = {}
    for run, offset, seconds in (("A", 0.0, 9), ("B", 20.0, 4)):
        for name, a, b in _record(d, run, seconds):
            idx = scan(d / name)
            assert idx is not None and idx.complete
            names[len(files) + 1] = name
            files.append(SegmentFile(len(files) + 1, T0 + offset + a, T0 + offset + b, run, idx))
    return d, files, names


def decode(playlist: Path) -> tuple[int, int, str]:
    """(video packets read, video frames decoded, errors) of FFmpeg's HLS demuxer on the playlist."""
    r = subprocess.run(["ffprobe", "-v", "error", "-allowed_extensions", "ALL", "-protocol_whitelist", "file,crypto,data",
                        "-count_packets", "-count_frames", "-select_streams", "v:0",
                        "-show_entries", "stream=nb_read_packets,nb_read_frames", "-of", "csv=p=0", str(playlist)],
                       capture_output=True, text=True, timeout=60)
    counts = [int(x) for x in r.stdout.split()[0].split(",")] if r.stdout.split() else [0, 0]
    frames, packets = counts  # csv columns come in ffprobe's own field order
    return packets, frames, r.stderr + ("" if r.returncode == 0 else f"exit {r.returncode}")


def test_ffmpeg_plays_the_playlist_over_real_files(recording: tuple[Path, list[SegmentFile], dict[int, str]]) -> None:
    d, files, names = recording
    assert len(files) == 5
    text = build(files, T0, T0 + 60, open_ended=False, url=names.__getitem__, target=2)
    (d / "all.m3u8").write_text(text)
    # FFmpeg's mp4 muxer starts every file's decode times at 0, so every file boundary is a
    # discontinuity, in one run as across runs (B is another run, 20 s later)
    assert text.count("#EXT-X-DISCONTINUITY") == 4
    assert text.count("#EXT-X-MAP:") == 5 and text.count("#EXT-X-PROGRAM-DATE-TIME:") == 5
    packets, frames, errors = decode(d / "all.m3u8")
    assert errors == ""
    total = sum(durations(text))
    assert total == pytest.approx(sum(f.index.duration for f in files), abs=0.001)
    assert total == pytest.approx(13, abs=1)
    assert packets == round(total * FPS)  # every byte range read, every frame of the period there
    # FFmpeg's HLS demuxer feeds all files to one mov demuxer, which marks the first fragment after
    # a decode-time reset as "discard" (prev_dts >= dts): it drops one GOP per file boundary. A
    # client limitation (hls.js and Safari restart the timeline at each discontinuity), so: within
    # one GOP per boundary.
    assert round(total * FPS) - 4 * FPS <= frames <= packets


def test_ffmpeg_plays_a_cut_period(recording: tuple[Path, list[SegmentFile], dict[int, str]]) -> None:
    d, files, names = recording
    start, end = T0 + 1.5, T0 + 7.5
    text = build(files, start, end, open_ended=False, url=names.__getitem__, target=4)
    (d / "cut.m3u8").write_text(text)
    packets, frames, errors = decode(d / "cut.m3u8")
    assert errors == ""
    total = sum(durations(text))
    assert packets == round(total * FPS)
    assert frames >= packets - 2 * FPS  # two file boundaries (see above)
    # the whole period is there, plus at most a GOP either side
    assert end - start <= total <= end - start + 2
    assert entries(text)[0]["EXT-X-PROGRAM-DATE-TIME"] == date_time(T0 + 1.0)  # the fragment holding the start


def test_ffmpeg_decodes_every_frame_within_one_file(recording: tuple[Path, list[SegmentFile], dict[int, str]]) -> None:
    """Without a file boundary nothing is dropped: the byte ranges and the merging are exact."""
    d, files, names = recording
    one = files[1]
    for target in (0, 2, 4):
        text = build(files, one.start + 0.5, one.start + one.index.duration, open_ended=False,
                     url=names.__getitem__, target=target)
        (d / "one.m3u8").write_text(text)
        packets, frames, errors = decode(d / "one.m3u8")
        assert errors == ""
        assert frames == packets == round(sum(durations(text)) * FPS) == round(one.index.duration * FPS)
