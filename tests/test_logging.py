"""Log output as journald, a file and a terminal see it; secret masking; the FFmpeg stderr rate limit."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from recorderd import logging as rlog
from recorderd.ratelimit import Decision, KeyedRateLimiter

PASSWORD = "hunter2-S3cret"
URL = f"rtsp://admin:{PASSWORD}@10.0.0.7:554/Streaming/Channels/101"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    if rlog._stdlib_handler is not None:
        logging.getLogger().removeHandler(rlog._stdlib_handler)
        rlog._stdlib_handler = None
    logging.captureWarnings(False)
    structlog.reset_defaults()


def journal_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> io.TextIOWrapper:
    """A file posing as the journal: JOURNAL_STREAM names its device and inode, as systemd does."""
    f = open(tmp_path / "journal.log", "w+", encoding="utf-8")
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    return f


def journal_lines(f: io.TextIOWrapper) -> list[tuple[int, dict[str, Any]]]:
    f.flush()
    f.seek(0)
    out = []
    for line in f.read().splitlines():
        m = re.fullmatch(r"<(\d)>(\{.*\})", line)
        assert m, f"not <N>{{json}}: {line!r}"
        out.append((int(m[1]), json.loads(m[2])))
    return out


def connect(url: str) -> None:
    raise ConnectionError(f"cannot open {url}")


def test_journald_lines_are_prefixed_json_with_priorities(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    f = journal_stream(tmp_path, monkeypatch)
    assert rlog.under_journald(f)
    rlog.configure("debug", stream=f)
    log = rlog.get_logger(component="test")
    log.debug("dbg")
    log.info("segment_indexed", camera="cam1", rows=3)
    log.warning("camera_unavailable", camera="cam1")
    log.error("config_reload_failed", errors=["x"])
    log.critical("core_task_failed")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("unexpected")
    lines = journal_lines(f)
    assert [p for p, _ in lines] == [7, 6, 4, 3, 2, 3]
    events = [d for _, d in lines]
    assert [d["event"] for d in events] == ["dbg", "segment_indexed", "camera_unavailable",
                                            "config_reload_failed", "core_task_failed", "unexpected"]
    assert events[1] == {"event": "segment_indexed", "camera": "cam1", "rows": 3, "component": "test",
                         "level": "info"}  # no timestamp: journald has its own
    assert "ValueError: bad" in events[5]["exception"] and "Traceback" in events[5]["exception"]


def test_level_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = journal_stream(tmp_path, monkeypatch)
    rlog.configure("warning", stream=f)
    rlog.get_logger().info("quiet")
    rlog.get_logger().warning("loud")
    assert [d["event"] for _, d in journal_lines(f)] == ["loud"]


def test_no_secret_reaches_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = journal_stream(tmp_path, monkeypatch)
    rlog.register_secrets([PASSWORD])
    rlog.configure("info", stream=f)
    log = rlog.get_logger()

    class Opaque:
        def __repr__(self) -> str:
            return f"<Opaque {URL}>"

    log.info("nested", camera={"id": "c1", "urls": [URL, (URL, 1)], "deep": {"a": {"b": [{"c": URL}]}}},
             obj=Opaque(), path=Path(f"/tmp/{PASSWORD}"), bare=f"password was {PASSWORD}")
    log.warning(f"event text {URL}")
    try:
        connect("rtsp://admin:hunter2-S3cret@10.0.0.7:554/x")  # literal: shows in the traceback source
    except ConnectionError:
        log.exception("ffmpeg_spawn_failed")
    try:
        try:
            connect(URL)
        except ConnectionError as inner:
            raise RuntimeError(f"retry of {URL} failed") from inner
    except RuntimeError as exc:
        log.error("camera_failed", exc_info=exc, error=exc)
    log.info("stack", stack_info=True, url=URL)
    f.flush()
    text = Path(f.name).read_text()
    assert PASSWORD not in text
    assert "hunter2" not in text
    lines = journal_lines(f)
    nested = lines[0][1]
    assert nested["camera"]["urls"][0] == "rtsp://admin:***@10.0.0.7:554/Streaming/Channels/101"
    assert nested["camera"]["deep"] == {"a": {"b": [{"c": "rtsp://admin:***@10.0.0.7:554/Streaming/Channels/101"}]}}
    assert nested["obj"] == "<Opaque rtsp://admin:***@10.0.0.7:554/Streaming/Channels/101>"
    assert nested["path"] == "/tmp/***" and nested["bare"] == "password was ***"
    exc_text = lines[2][1]["exception"]
    assert "ConnectionError: cannot open rtsp://admin:***@" in exc_text
    assert 'connect("rtsp://admin:***@' in exc_text  # the source line shown in the traceback
    chained = lines[3][1]
    assert "The above exception was the direct cause" in chained["exception"]
    assert chained["error"].startswith("RuntimeError('retry of rtsp://admin:***@")
    assert "stack" in lines[4][1]


def test_pipe_or_file_gets_plain_json_with_timestamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buf = io.StringIO()
    rlog.configure("info", stream=buf)
    rlog.get_logger().warning("w", url=URL)
    [line] = buf.getvalue().splitlines()
    doc = json.loads(line)  # no <N> prefix
    assert doc["level"] == "warning" and "timestamp" in doc and PASSWORD not in line


def test_journal_stream_of_another_file_is_not_journald(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    journal_stream(tmp_path, monkeypatch)  # JOURNAL_STREAM names that file ...
    with open(tmp_path / "other.log", "w+", encoding="utf-8") as other:  # ... but we log here
        assert not rlog.under_journald(other)
        rlog.configure("info", stream=other)
        rlog.get_logger().info("x")
        other.flush()
        json.loads(Path(other.name).read_text())
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not rlog.under_journald(other)


def test_terminal_gets_coloured_readable_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    master, slave = os.openpty()
    tty = open(slave, "w", encoding="utf-8", closefd=True)
    try:
        rlog.configure("info", stream=tty)
        try:
            connect(URL)
        except ConnectionError:
            rlog.get_logger().exception("camera_unavailable", camera="cam1", url=URL)
        tty.flush()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:
            chunks.append(os.read(master, 65536))
        out = b"".join(chunks).decode()
    finally:
        tty.close()
        os.close(master)
    assert "\x1b[" in out  # ANSI colour
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "camera_unavailable" in plain and "camera=cam1" in plain and not plain.lstrip().startswith("{")
    assert "Traceback" in out and PASSWORD not in out and "admin:***@" in out


def test_stdlib_logging_goes_through_the_same_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = journal_stream(tmp_path, monkeypatch)
    rlog.configure("info", stream=f)
    lib = logging.getLogger("asyncpg.pool")
    lib.info("chatty")  # below the level kept for libraries
    lib.warning("connection to %s lost", f"postgresql://rec:{PASSWORD}@db/rec")
    try:
        connect(URL)
    except ConnectionError:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    f.flush()
    assert PASSWORD not in Path(f.name).read_text()
    lines = journal_lines(f)
    assert [(p, d["logger"]) for p, d in lines] == [(4, "asyncpg.pool"), (3, "asyncio"), (4, "py.warnings")]
    assert lines[0][1]["event"] == "connection to postgresql://rec:***@db/rec lost"
    assert "ConnectionError: cannot open rtsp://admin:***@" in lines[1][1]["exception"]


def test_reconfigure_does_not_duplicate_stdlib_output(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    f = journal_stream(tmp_path, monkeypatch)
    rlog.configure("info", stream=f)
    rlog.configure("info", stream=f)
    logging.getLogger("x").warning("once")
    assert len(journal_lines(f)) == 1


def test_mask_value_keeps_json_types() -> None:
    assert rlog.mask_value({"n": 1, "f": 1.5, "b": True, "none": None, "s": URL}) == {
        "n": 1, "f": 1.5, "b": True, "none": None, "s": "rtsp://admin:***@10.0.0.7:554/Streaming/Channels/101"}
    assert rlog.mask_value((1, "a")) == [1, "a"]
    deep: Any = URL
    for _ in range(20):
        deep = [deep]
    assert PASSWORD not in json.dumps(rlog.mask_value(deep))


def test_priority_names() -> None:
    assert [rlog.priority(x) for x in ("critical", "error", "exception", "warning", "warn", "info",
                                       "debug", "whatever")] == [2, 3, 3, 4, 4, 6, 7, 6]


# ---------------------------------------------------------------------------- rate limit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_sustained_rate() -> None:
    clock = Clock()
    rl = KeyedRateLimiter(rate=1.0, burst=20, clock=clock)
    assert all(rl.allow("cam1") for _ in range(20))
    assert [rl.check("cam1") for _ in range(5)] == [Decision(False)] * 5
    assert rl.suppressed("cam1") == 5
    assert rl.allow("cam2")  # keys are independent
    clock.now += 1.0
    assert rl.check("cam1") == Decision(True, suppressed_before=5)  # the summary rides on the next line
    assert rl.check("cam1") == Decision(False)
    clock.now += 0.5
    assert not rl.allow("cam1")
    clock.now += 0.5
    assert rl.check("cam1") == Decision(True, 2)
    # sustained: 100 s of a line every 0.1 s lets ~1 line per second through
    allowed = 0
    for _ in range(1000):
        clock.now += 0.1
        allowed += rl.allow("cam1")
    assert 99 <= allowed <= 101


def test_bucket_refills_only_up_to_burst() -> None:
    clock = Clock()
    rl = KeyedRateLimiter(rate=1.0, burst=3, clock=clock)
    rl.allow("a")
    clock.now += 3600
    assert sum(rl.allow("a") for _ in range(10)) == 3


def test_clock_going_backwards_adds_nothing() -> None:
    clock = Clock()
    rl = KeyedRateLimiter(rate=1.0, burst=1, clock=clock)
    assert rl.allow("a")
    clock.now -= 100
    assert not rl.allow("a")
    clock.now += 0.5
    assert not rl.allow("a")


def test_pop_and_forget() -> None:
    clock = Clock()
    rl = KeyedRateLimiter(rate=1.0, burst=1, clock=clock)
    for key in ("a", "b", "c"):
        for _ in range(4):
            rl.allow(key)
    assert rl.pop_suppressed("a") == 3 and rl.pop_suppressed("a") == 0
    assert rl.pop_suppressed("zzz") == 0
    assert rl.pop_all_suppressed() == {"b": 3, "c": 3}
    assert rl.pop_all_suppressed() == {}
    rl.allow("c")
    assert rl.forget("c") == 1 and rl.forget("c") == 0
    assert len(rl) == 2
    clock.now += 1
    assert rl.check("a") == Decision(True, 0)  # already reported via pop_suppressed


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        KeyedRateLimiter(rate=0)
    with pytest.raises(ValueError):
        KeyedRateLimiter(burst=0)
