"""Day-2 questions from the CLI: why is a camera not recording (``status``), how many days fit (``storage``)."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_search import insert
from util import make_config

from recorderd import queries
from recorderd.config import Config
from recorderd.db import migrate
from recorderd.diskguard import DiskUsage
from recorderd.events import SegmentEvent
from recorderd.report import (
    DayBytes,
    cmd_status,
    cmd_storage,
    daily_rate,
    days_that_fit,
    floor_horizon,
    human_age,
    last_exit_text,
    plan_days,
)
from recorderd.statusfile import write_status

H = 3600.0
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()  # "today" is 2026-11-20 in these tests


def at(day: int, hour: float = 0.0) -> float:
    """2026-11-<day> <hour>:00 UTC as epoch seconds."""
    return datetime(2026, 11, day, tzinfo=UTC).timestamp() + hour * H


async def run_cmd(coro_fn: Any, *args: Any, **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await coro_fn(*args, out, err, **kw)
    return rc, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- pure arithmetic


def test_daily_rate_uses_recorded_seconds_of_full_days_only() -> None:
    today = date(2026, 11, 20)
    d = {date(2026, 11, 19): DayBytes(date(2026, 11, 19), 12, 36_000, 12 * H),  # added at noon
         date(2026, 11, 18): DayBytes(date(2026, 11, 18), 24, 72_000, 24 * H),
         date(2026, 11, 10): DayBytes(date(2026, 11, 10), 1, 10**9, H),  # outside a 7-day window
         today: DayBytes(today, 1, 10**9, H)}  # today's partial day: not part of the average
    r = daily_rate(d, today, 7)
    assert (r.basis, r.days, r.bytes, r.seconds) == ("full_days", 2, 108_000, 36 * H)
    assert r.bytes_per_day == pytest.approx(72_000) and r.coverage == pytest.approx(0.75)
    only_today = daily_rate({today: DayBytes(today, 2, 1000, 2 * H)}, today, 7)
    assert (only_today.basis, only_today.bytes_per_day, only_today.coverage) == ("today", 12_000, None)
    assert daily_rate({}, today, 7).bytes_per_day is None and daily_rate({}, today, 7).basis is None


def test_floor_horizon_cuts_the_longest_plans_first() -> None:
    # 1 B/day each, plans 7, 15 and 30 days: 52 B needed, 40 B of room
    h = floor_horizon(40, [(1, 30), (1, 7), (1, 15)])
    assert h == pytest.approx(18)  # 7 + 15 + min(30, 18) == 40
    assert floor_horizon(52, [(1, 30), (1, 7), (1, 15)]) is None  # everything fits exactly
    assert floor_horizon(30, [(1, 30), (1, 7), (1, 15)]) == pytest.approx(11.5)  # 7 + 11.5 + 11.5
    assert floor_horizon(18, [(1, 30), (1, 7), (1, 15)]) == pytest.approx(6)  # all three cut to 6
    assert floor_horizon(40, [(2, 7), (1, 30)]) == pytest.approx(26)  # 2 * 7 + 26 == 40
    assert floor_horizon(-5, [(1, 7)]) == 0.0  # already below the floor
    assert floor_horizon(0, [(0, 30)]) is None  # a camera that records nothing needs nothing


def test_plan_days_and_days_that_fit_match_the_runbook() -> None:
    per_cam = 4e6 / 8 * 86400  # 4 Mbit/s for a day
    assert per_cam * 100 == pytest.approx(4.32e12)
    total = 40e12
    assert days_that_fit(total - 0.10 * total, 100 * per_cam) == pytest.approx(36e12 / 4.32e12)  # 8.33
    assert days_that_fit(total - 200e9, 100 * per_cam) == pytest.approx(39.8e12 / 4.32e12)  # 9.21
    assert days_that_fit(1e12, 0) is None and days_that_fit(-1, 1) == 0
    assert plan_days(30, None, 1000) == 30 and plan_days(30, 10_000, 1000) == 10
    assert plan_days(7, 10**9, 1000) == 7 and plan_days(7, 1, 0) == 7


def test_ages_and_last_exit_text() -> None:
    assert [human_age(s) for s in (-3, 42, 300.9, 3600, 3 * H + 600, 86400, 2 * 86400 + 4 * H)] == [
        "0s", "42s", "5m", "1h", "3h10m", "1d", "2d4h"]
    le = {"reason": "unreachable", "rc": 1, "at": 1000.0}
    assert last_exit_text(le, 1300.0) == "unreachable rc=1 5m ago"
    assert last_exit_text({**le, "reason": "storage_error", "rc": None}, 1000.0) == "storage_error 0s ago"
    assert last_exit_text(None, 0) == "-" and last_exit_text({**le, "at": None}, 1300.0) == "unreachable rc=1"
    assert human_age(59.9) == "59s" and human_age(60) == "1m" and human_age(3599) == "59m"
    assert human_age(86399) == "23h59m" and human_age(timedelta(days=3).total_seconds()) == "3d"


# --------------------------------------------------------------------------- storage, real PostgreSQL


def seg(cam: str, start: float, seconds: float, size: int, name: str | None = None) -> SegmentEvent:
    tag = name or datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d/%H-%M-%S")
    return SegmentEvent(cam, f"/data/{cam}/{tag}.mp4", start, start + seconds, size, None, None, "ffmpeg",
                        time.time())


def footage() -> list[SegmentEvent]:
    ev: list[SegmentEvent] = []
    # cam-001: 1000 B per hour around the clock for 17, 18, 19 Nov; the last one of the 19th runs
    # 23:00 .. 00:30 (crosses midnight: it counts to the 19th); today 10 hours at 2000 B
    for day in (17, 18, 19):
        ev += [seg("cam-001", at(day, h), H, 1000) for h in range(23 if day == 19 else 24)]
    ev.append(seg("cam-001", at(19, 23), 1.5 * H, 1500))
    ev += [seg("cam-001", at(20, 0.5 + h), H, 2000) for h in range(10)]
    ev.append(seg("cam-001", at(10), H, 50_000))  # before the window: in the total, not in the rate
    # cam-002: added on the 19th at noon, 3000 B per hour
    ev += [seg("cam-002", at(19, 12 + h), H, 3000) for h in range(12)]
    ev += [seg("cam-002", at(20, h), H, 3000) for h in range(6)]
    # cam-003: first footage today, 500 B per hour
    ev += [seg("cam-003", at(20, h), H, 500) for h in range(2)]
    # cam-009: removed from the config; its footage counts on the disk, not in the rate
    ev.append(seg("cam-009", at(18), H, 5000))
    return ev


CLIP = seg("cam-001", at(9), H, 10_000, name="clip")  # protected: never deleted, so never room


async def insert_footage(dsn: str) -> None:
    await insert(dsn, [*footage(), CLIP])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE segments SET protected = true WHERE path = $1", CLIP.path)
    finally:
        await conn.close()


def storage_config(root: Path, dsn: str, **storage: Any) -> Config:
    return make_config(root, [
        {"id": "cam-001", "url": "rtsp://10.0.0.1/s", "tenant": "acme", "plan": "pro"},  # 15 days
        {"id": "cam-002", "url": "rtsp://10.0.0.2/s", "tenant": "acme"},  # basic: 7 days
        {"id": "cam-003", "url": "rtsp://10.0.0.3/s", "tenant": "globex", "plan": "premium",
         "max_bytes": 120_000},  # 30 days, but 120 kB at 12 kB/day is 10 days
        {"id": "cam-004", "url": "rtsp://10.0.0.4/s", "enabled": False},
    ], database={"dsn": dsn}, storage={"root": str(root), **storage})


# room = footage 212 500 - protected 10 000 + free 797 500 - floor 200 000 (10 % of 2 000 000) = 800 000
USAGE = DiskUsage(total=2_000_000, free=797_500, used=1_202_500)


@pytest.mark.integration
async def test_storage_bytes_per_day_average_and_days_that_fit(tmp_path: Path, pg_dsn: str) -> None:
    await insert_footage(pg_dsn)
    cfg = storage_config(tmp_path, pg_dsn)
    rc, out, err = await run_cmd(cmd_storage, cfg, True, days=3, now=NOW, usage=lambda _p: USAGE)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["window"]["days"] == 3 and doc["window"]["from"] == "2026-11-17T00:00:00.000000Z"
    cams = {c["camera_id"]: c for c in doc["cameras"]}
    assert list(cams) == ["cam-001", "cam-002", "cam-003", "cam-004", "cam-009"]
    c1 = cams["cam-001"]
    assert [(d["day"], d["bytes"], d["full_day"]) for d in c1["days"]] == [
        ("2026-11-17", 24_000, True), ("2026-11-18", 24_000, True), ("2026-11-19", 24_500, True),
        ("2026-11-20", 20_000, False)]
    assert c1["days"][2]["recorded_seconds"] == 23 * H + 1.5 * H and c1["days"][2]["segments"] == 24
    assert c1["today_bytes"] == 20_000 and c1["bytes"] == 72_500 + 20_000 + 50_000 + 10_000
    assert c1["protected_bytes"] == 10_000
    assert (c1["bytes_per_day"], c1["rate_basis"], c1["rate_days"]) == (24_000, "full_days", 3)
    assert c1["coverage"] == pytest.approx((72 * H + 0.5 * H) / (3 * 86400), abs=1e-4)
    c2 = cams["cam-002"]
    assert (c2["bytes_per_day"], c2["rate_days"], c2["coverage"]) == (72_000, 1, 0.5)
    c3 = cams["cam-003"]
    assert (c3["bytes_per_day"], c3["rate_basis"], c3["plan_days"], c3["capped"]) == (12_000, "today", 10, True)
    assert cams["cam-004"]["bytes_per_day"] is None and cams["cam-004"]["counted"] is False
    assert cams["cam-009"]["counted"] is False and cams["cam-009"]["days"][1]["bytes"] == 5000

    cap = doc["capacity"]
    assert (cap["total_bytes"], cap["free_bytes"], cap["floor_bytes"]) == (2_000_000, 797_500, 200_000)
    assert cap["floor_from"] == "min_free_percent" and cap["target_free_bytes"] == 240_000  # + 2 % margin
    assert (cap["footage_bytes"], cap["protected_bytes"], cap["room_bytes"]) == (212_500, 10_000, 800_000)
    assert (cap["bytes_per_day"], cap["cameras_counted"]) == (108_000, 3)  # 24 000 + 72 000 + 12 000
    assert cap["days_fit"] == round(800_000 / 108_000, 2)  # 7.41
    assert cap["plans_need_bytes"] == 24_000 * 15 + 72_000 * 7 + 12_000 * 10  # 984 000 > 800 000
    # cam-002 (7 days) keeps all 7: 504 000; the other 296 000 hold 296 000 / 36 000 = 8.22 days
    assert cap["horizon_days"] == round(296_000 / 36_000, 2) and cap["short_cameras"] == ["cam-001", "cam-003"]
    assert (c1["short"], c1["keeps_days"], c2["short"], c2["keeps_days"]) == (True, 8.22, False, 7)
    assert cap["cameras_without_rate"] == [] and cap["error"] is None  # cam-004 is disabled
    assert {t["tenant"]: t["bytes_per_day"] for t in doc["tenants"]} == {"acme": 96_000, "globex": 12_000,
                                                                         None: 0}

    rc, out, _ = await run_cmd(cmd_storage, cfg, False, days=3, now=NOW, usage=lambda _p: USAGE)
    assert rc == 0
    row1 = next(line for line in out.splitlines() if line.startswith("cam-001 "))
    assert "23.4 KiB" in row1 and "3d" in row1 and "15d" in row1 and "8.2d FLOOR" in row1
    row2 = next(line for line in out.splitlines() if line.startswith("cam-002 "))
    assert "1d 50%" in row2 and row2.rstrip().endswith("7d")
    assert "today 2.0h" in out and "cam-004 (disabled)" in out and "cam-009 (removed)" in out
    assert "days that fit" in out and "7.4" in out
    assert "WARNING: retention needs" in out and "older than about 8.2 days" in out
    assert "cam-001 (15d), cam-003 (30d)" in out


@pytest.mark.integration
async def test_storage_per_day_table_of_one_camera_and_errors(tmp_path: Path, pg_dsn: str) -> None:
    await insert_footage(pg_dsn)
    cfg = storage_config(tmp_path, pg_dsn)
    rc, out, err = await run_cmd(cmd_storage, cfg, False, days=3, camera="cam-001", now=NOW,
                                 usage=lambda _p: USAGE)
    assert rc == 0, err
    assert "cam-002" not in out.split("capacity of")[0]  # the table is narrowed to cam-001 ...
    assert "days that fit" in out  # ... the capacity stays the filesystem's
    day = next(line for line in out.splitlines() if line.startswith("2026-11-19"))
    assert day.split() == ["2026-11-19", "24", "24500", "23.9", "KiB", "24.5h"]
    assert any(line.startswith("2026-11-20 (today)") for line in out.splitlines())
    rc, out, _ = await run_cmd(cmd_storage, cfg, True, days=3, camera="cam-001", now=NOW, usage=lambda _p: USAGE)
    assert [c["camera_id"] for c in json.loads(out)["cameras"]] == ["cam-001"]

    rc, _, err = await run_cmd(cmd_storage, cfg, False, camera="cam-404")
    assert rc == 2 and "unknown camera 'cam-404'" in err
    rc, _, err = await run_cmd(cmd_storage, cfg, False, days=0)
    assert rc == 2 and "--days must be" in err

    def gone(path: Path) -> DiskUsage:
        raise FileNotFoundError(2, "No such file or directory", str(path))

    rc, out, _ = await run_cmd(cmd_storage, cfg, True, now=NOW, usage=gone)
    cap = json.loads(out)["capacity"]
    assert rc == 0 and "cannot read the filesystem" in cap["error"] and "days_fit" not in cap
    rc, out, _ = await run_cmd(cmd_storage, cfg, False, now=NOW, usage=gone)
    assert "cannot read the filesystem" in out


@pytest.mark.integration
async def test_storage_days_that_fit_from_a_real_statvfs(tmp_path: Path, pg_dsn: str) -> None:
    """No injection: the filesystem of the test's own directory, checked against os.statvfs."""
    now = time.time()
    today = datetime.fromtimestamp(now, UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp()
    # 2 full days of 10 MB per hour = 240 MB per day
    await insert(pg_dsn, [seg("cam-001", midnight - 86400 * d + h * H, H, 10_000_000) for d in (1, 2)
                          for h in range(24)])
    cfg = storage_config(tmp_path, pg_dsn, min_free_bytes=1 << 20, min_free_percent=0)
    rc, out, err = await run_cmd(cmd_storage, cfg, True, now=now)
    assert rc == 0, err
    cap = json.loads(out)["capacity"]
    st = os.statvfs(tmp_path)
    assert cap["total_bytes"] == st.f_blocks * st.f_frsize and cap["floor_bytes"] == 1 << 20
    assert cap["floor_from"] == "min_free_bytes"
    assert abs(cap["free_bytes"] - st.f_bavail * st.f_frsize) < 64 << 20  # others may write meanwhile
    assert cap["footage_bytes"] == 480_000_000 and cap["bytes_per_day"] == 240_000_000
    room = 480_000_000 + cap["free_bytes"] - (1 << 20)
    assert cap["room_bytes"] == room and cap["days_fit"] == round(room / 240_000_000, 2)
    assert cap["plans_need_bytes"] == 240_000_000 * 15
    assert (cap["horizon_days"] is None) == (room >= 240_000_000 * 15)


@pytest.mark.integration
async def test_daily_bytes_plan_is_one_bounded_range_scan_per_camera(pg_dsn: str) -> None:
    base = at(1)
    await insert(pg_dsn, [seg(f"cam-{c:03d}", base + i * 600, 600, 1000) for c in range(3) for i in range(3000)])
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("ANALYZE segments")
        sql = (queries.DAILY_BYTES.replace("$1", "ARRAY['cam-000','cam-001','cam-002']")
               .replace("$2", f"'{datetime.fromtimestamp(base + 3000 * 600 - 86400, UTC)}'::timestamptz"))
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))
        rows = await conn.fetch(queries.DAILY_BYTES, ["cam-000", "cam-404"],
                                datetime.fromtimestamp(at(20), UTC))
    finally:
        await conn.close()
    assert "segments_camera_start" in plan, plan
    cond = next(line for line in plan.splitlines() if "Index Cond" in line)
    assert "camera_id = c.id" in cond and "start_time >=" in cond, plan
    # 3000 ten-minute segments from 1 Nov 00:00 end on 21 Nov 20:00: the 20th has 144, the 21st 120
    assert [(r["day"], r["segments"], r["bytes"]) for r in rows] == [
        (date(2026, 11, 20), 144, 144_000), (date(2026, 11, 21), 120, 120_000)]
    assert rows[0]["seconds"] == 86400


# --------------------------------------------------------------------------- status


def status_config(root: Path, dsn: str) -> Config:
    return make_config(root, [
        {"id": "cam-001", "url": "rtsp://u:camsecret@10.0.0.1/s", "tenant": "acme", "plan": "pro"},
        {"id": "cam-002", "url": "rtsp://10.0.0.2/s", "tenant": "acme"},
        {"id": "cam-003", "url": "rtsp://10.0.0.3/s", "enabled": False},
    ], database={"dsn": dsn})


def write_live(cfg: Config, now: float, *, new_shape: bool) -> None:
    cams: list[dict[str, Any]] = [
        {"camera_id": "cam-001", "state": "unreachable", "is_recording": False, "current_file": None,
         "last_segment_end": now - 900, "restarts": 4, "state_since": now - 600},
        {"camera_id": "cam-002", "state": "recording", "is_recording": True,
         "current_file": str(cfg.storage.root / "cam-002/2026-11-20/11-59-00.mp4"),
         "last_segment_end": now - 3, "restarts": 1, "state_since": now - 7200},
        {"camera_id": "cam-003", "state": "disabled", "is_recording": False, "current_file": None,
         "last_segment_end": None, "restarts": 0},
    ]
    payload: dict[str, Any] = {"pid": os.getpid(), "written_at": now, "started_at": now - 86400,
                               "database_up": True, "pending_rows": 0, "cameras": cams}
    if new_shape:
        cams[0]["cause"] = "refused"
        cams[0]["hint"] = ("nothing listens at the address in cameras[0].url: check the camera's IP and port "
                           "(rtsp://u:camsecret@10.0.0.1/s)")  # masked again by status, whatever a daemon wrote
        cams[1]["stream"] = {"video": "hevc", "audio": "pcm_alaw", "audio_mode": "aac"}
        cams[0]["last_exit"] = {
            "reason": "unreachable", "rc": 1, "at": now - 300, "run_seconds": 5.0, "segments": 0,
            "stderr": ["[rtsp @ 0x5581] method DESCRIBE failed: 503 Service Unavailable",
                       "rtsp://u:***@10.0.0.1/s: Connection refused",
                       "leaked rtsp://u:camsecret@10.0.0.1/s"]}  # an older daemon that did not mask
        cams[1]["last_exit"] = {"reason": "camera_dropped", "rc": 0, "at": now - 7300, "run_seconds": 86000.4,
                                "segments": 1433, "stderr": []}
        cams[2]["last_exit"] = None
        payload["config_fallback"] = {
            "reason": "/etc/recorderd/cameras.yaml is invalid (cameras[2].url: is required); running the last "
                      "good config saved 2026-11-19T08:00:00Z from /var/lib/recorderd/last-good-config.yaml",
            "errors": ["cameras[2].url: is required"], "path": "/var/lib/recorderd/last-good-config.yaml",
            "saved_at": datetime(2026, 11, 19, 8, tzinfo=UTC).timestamp()}
    write_status(cfg.storage.status_file, payload)


@pytest.mark.integration
async def test_status_shows_last_exit_and_config_fallback(tmp_path: Path, pg_dsn: str) -> None:
    await migrate(pg_dsn)
    cfg = status_config(tmp_path, pg_dsn)
    now = time.time()
    write_live(cfg, now, new_shape=True)
    rc, out, err = await run_cmd(cmd_status, cfg, True, now=now)
    assert rc == 0
    assert "WARNING: LAST GOOD CONFIG IN USE: /etc/recorderd/cameras.yaml is invalid" in err  # --json users too
    doc = json.loads(out)
    fb = doc["daemon"]["config_fallback"]
    assert fb["saved_at"] == "2026-11-19T08:00:00.000000Z" and fb["errors"] == ["cameras[2].url: is required"]
    assert fb["path"] == "/var/lib/recorderd/last-good-config.yaml"
    cams = {c["camera_id"]: c for c in doc["cameras"]}
    le = cams["cam-001"]["last_exit"]
    assert (le["reason"], le["rc"], le["run_seconds"], le["segments"]) == ("unreachable", 1, 5.0, 0)
    assert cams["cam-001"]["cause"] == "refused" and "cameras[0].url" in cams["cam-001"]["hint"]
    assert cams["cam-002"]["stream"] == {"video": "hevc", "audio": "pcm_alaw", "audio_mode": "aac"}
    assert cams["cam-002"]["hint"] is None
    assert le["at"].endswith("Z") and le["at"] == datetime.fromtimestamp(now - 300, UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")
    assert len(le["stderr"]) == 3 and "camsecret" not in out and "rtsp://u:***@10.0.0.1/s" in le["stderr"][2]
    assert cams["cam-002"]["last_exit"]["reason"] == "camera_dropped" and cams["cam-003"]["last_exit"] is None

    rc, out, _ = await run_cmd(cmd_status, cfg, False, now=now)
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("WARNING: LAST GOOD CONFIG IN USE: /etc/recorderd/cameras.yaml is invalid")
    assert "saved 2026-11-19T08:00:00Z" in lines[0] and lines[1] == "  cameras[2].url: is required"
    header = next(line for line in lines if line.startswith("CAMERA"))
    assert "LAST EXIT" in header
    assert "unreachable rc=1 5m ago" in next(line for line in lines if line.startswith("cam-001"))
    assert "camera_dropped rc=0 2h01m ago" in next(line for line in lines if line.startswith("cam-002"))
    assert "not recording: 1 camera" in out  # cam-003 is disabled: not a question
    assert ("cam-001: unreachable for 10m; last exit unreachable rc=1 at " in out
            and "(5m ago) after 5.0s, 0 segments" in out)
    assert "      -> nothing listens at the address in cameras[0].url: check the camera's IP and port" in out
    assert "      | [rtsp @ 0x5581] method DESCRIBE failed: 503 Service Unavailable" in out
    assert "camsecret" not in out


@pytest.mark.integration
async def test_status_reads_an_old_status_file(tmp_path: Path, pg_dsn: str) -> None:
    await migrate(pg_dsn)
    cfg = status_config(tmp_path, pg_dsn)
    now = time.time()
    write_live(cfg, now, new_shape=False)  # a daemon from before last_exit / config_fallback
    rc, out, err = await run_cmd(cmd_status, cfg, True, now=now)
    assert rc == 0 and not err
    doc = json.loads(out)
    assert doc["daemon"]["config_fallback"] is None
    assert all(c["last_exit"] is None for c in doc["cameras"])
    rc, out, _ = await run_cmd(cmd_status, cfg, False, now=now)
    assert rc == 0 and not out.startswith("WARNING") and "LAST EXIT" in out
    assert "  cam-001: unreachable for 10m\n" in out  # an old daemon does not say why

    status = json.loads(cfg.storage.status_file.read_text())  # junk in the new keys is not fatal
    status["cameras"][0]["last_exit"] = "unreachable"
    status["cameras"][1]["last_exit"] = {"reason": "stall", "rc": "?", "stderr": "not a list"}
    status["cameras"][2]["last_exit"] = None  # a new daemon: no exit yet
    status["config_fallback"] = ["?"]
    write_status(cfg.storage.status_file, status)
    rc, out, _ = await run_cmd(cmd_status, cfg, True, now=now)
    cams = json.loads(out)["cameras"]
    assert rc == 0 and cams[0]["last_exit"] is None and cams[2]["last_exit"] is None
    assert cams[1]["last_exit"] == {"reason": "stall", "rc": None, "at": None, "run_seconds": 0.0, "segments": 0,
                                    "stderr": []}
    rc, out, _ = await run_cmd(cmd_status, cfg, False, now=now)
    assert rc == 0 and "  cam-002  " not in out.split("not recording")[1]  # recording: not explained
    assert " stall " in next(line for line in out.splitlines() if line.startswith("cam-002"))
