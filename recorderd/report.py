"""What an operator asks the index: ``search``, ``status``, ``storage`` and ``migrate`` for the CLI.

Each ``cmd_*`` prints to ``out`` (a table, or JSON with ``--json``), writes problems to ``err`` and
returns the exit code: 0 ok, 2 a usage/database problem the message explains, 3 daemon not running.
Messages name the database as host:port/db, never with its password.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from recorderd import layout, queries
from recorderd.config import Config
from recorderd.db import DatabaseUnavailable, connect, migrate
from recorderd.diskguard import DiskUsage, floor_and_target, read_usage
from recorderd.masking import mask_text, secrets_of
from recorderd.statusfile import read_status

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
GAP_TOLERANCE = 0.1  # seconds between consecutive segments reported as a gap
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """A recording as search shows it; ``path`` is where its bytes are: the local file, or the
    ``s3://bucket/key`` URL of an archived one."""

    recording_id: int
    camera_id: str
    start: datetime
    end: datetime
    duration_seconds: float
    size_bytes: int
    path: str
    source: str
    run_id: str | None
    seq: int | None
    node: str | None = None  # the node whose disk holds it (or that archived it)
    mine: bool = True  # on this node's disk, or in the store: readable here

    def to_json(self) -> dict[str, Any]:
        return {"recording_id": self.recording_id, "camera_id": self.camera_id,
                "start": iso(self.start), "end": iso(self.end),
                "duration_seconds": self.duration_seconds, "size_bytes": self.size_bytes,
                "path": self.path, "node": self.node}


def archive_line(a: dict[str, Any]) -> str:
    """``archive s3://b/p: up; backlog 12 segments (40.0 MB), oldest waiting 2.1 h``."""
    state = ("NOT USABLE (credentials?)" if not a.get("usable") else
             {True: "up", False: "DOWN (uploads retried)", None: "not asked yet"}[a.get("up")])
    oldest = float(a.get("oldest_seconds") or 0)
    wait = f", oldest waiting {oldest / 3600:.1f} h" if oldest else ""
    return (f"archive {a.get('url')}: {state}; backlog {a.get('backlog_segments', 0)} segments "
            f"({human_bytes(int(a.get('backlog_bytes') or 0))}){wait}")


def iso(dt: datetime | float | None) -> str | None:
    if dt is None:
        return None
    return layout.iso(dt.timestamp() if isinstance(dt, datetime) else dt)


def parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """ISO 8601 with ``Z``, an offset, or naive (= UTC); a bare date is its midnight, or with
    ``end_of_day`` the next midnight, so ``--from D --to D`` means the whole day D."""
    s = text.strip()
    if _DATE_ONLY.match(s):
        d = date.fromisoformat(s)
        midnight = datetime(d.year, d.month, d.day, tzinfo=UTC)
        return midnight + timedelta(days=1) if end_of_day else midnight
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


async def search_conn(conn: asyncpg.Connection, camera_id: str, start: datetime | None,
                      end: datetime | None) -> list[SegmentRow]:
    """Segments overlapping [start, end) (touching a boundary is not overlapping), oldest first."""
    lo = start if start is not None else datetime(1, 1, 1, tzinfo=UTC)
    hi = end if end is not None else datetime(9999, 12, 31, tzinfo=UTC)
    rows = await conn.fetch(queries.SEARCH, camera_id, lo, hi)
    return [SegmentRow(recording_id=r["id"], camera_id=r["camera_id"], start=r["start_time"],
                       end=r["end_time"], duration_seconds=r["duration_seconds"],
                       size_bytes=r["size_bytes"], path=r["object_url"] or r["path"], source=r["source"],
                       run_id=str(r["run_id"]) if r["run_id"] is not None else None, seq=r["seq"],
                       node=r["node"], mine=bool(r["mine"]) or r["object_url"] is not None)
            for r in rows]


async def search(dsn: str | None, camera_id: str, start: datetime | None,
                 end: datetime | None) -> list[SegmentRow]:
    conn = await connect(dsn)
    try:
        return await search_conn(conn, camera_id, start, end)
    finally:
        await conn.close()


async def unknown_camera(conn: asyncpg.Connection, config: Config, camera_id: str) -> str | None:
    """Why ``camera_id`` names no camera (neither configured nor in the index), or None."""
    if config.camera(camera_id) is not None or await conn.fetchval(queries.CAMERA_HAS_SEGMENTS, camera_id):
        return None
    known = ", ".join(c.id for c in config.cameras) or "none configured"
    return f"unknown camera {camera_id!r} (configured: {known})"


def find_gaps(rows: list[SegmentRow]) -> list[tuple[datetime, datetime]]:
    """Holes between consecutive segments (by end so far, so overlaps do not hide or fake one)."""
    gaps: list[tuple[datetime, datetime]] = []
    covered: datetime | None = None
    for r in rows:
        if covered is not None and (r.start - covered).total_seconds() > GAP_TOLERANCE:
            gaps.append((covered, r.start))
        covered = r.end if covered is None else max(covered, r.end)
    return gaps


# --------------------------------------------------------------------------- commands


async def cmd_search(config: Config, camera_id: str, from_s: str | None, to_s: str | None,
                     as_json: bool, out: TextIO, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    try:
        start = parse_time(from_s) if from_s else None
    except ValueError:
        return _fail(err, f"invalid --from {from_s!r}: expected ISO 8601 such as 2026-11-21T10:00:00Z, "
                          "2026-11-21T11:00+01:00 or 2026-11-21")
    try:
        end = parse_time(to_s, end_of_day=True) if to_s else None
    except ValueError:
        return _fail(err, f"invalid --to {to_s!r}: expected ISO 8601 such as 2026-11-21T11:00:00Z, "
                          "2026-11-21T12:00+01:00 or 2026-11-21")
    if start is not None and end is not None and start >= end:
        return _fail(err, f"--from {from_s} ({iso(start)}) must be before --to {to_s} ({iso(end)}, "
                          "exclusive; a bare date means the end of that day)")
    try:
        conn = await connect(config.database_dsn(), node=config.node.id)
    except DatabaseUnavailable as exc:
        return _fail(err, str(exc))
    try:
        rows = await search_conn(conn, camera_id, start, end)
        unknown = await unknown_camera(conn, config, camera_id) if not rows else None
        if unknown:
            return _fail(err, unknown)
    except asyncpg.UndefinedTableError:
        return _fail(err, "the index has no schema yet: run `recorderd migrate` (or start the daemon)")
    finally:
        await conn.close()
    if as_json:
        json.dump({"recordings": [r.to_json() for r in rows], "total": len(rows)}, out, indent=2)
        out.write("\n")
        return EXIT_OK
    table = [[str(r.recording_id), iso(r.start) or "", iso(r.end) or "", f"{r.duration_seconds:.3f}",
              human_bytes(r.size_bytes), r.path] for r in rows]
    if table:
        out.write(render_table(["ID", "START (UTC)", "END (UTC)", "SECONDS", "SIZE", "PATH"], table,
                               right={0, 3, 4}))
    gaps = find_gaps(rows)
    total = sum(r.duration_seconds for r in rows)
    missing = sum((b - a).total_seconds() for a, b in gaps)
    out.write(f"{len(rows)} recording{'s' if len(rows) != 1 else ''} for {camera_id}, "
              f"{human_duration(total)} in total, {len(gaps)} gap{'s' if len(gaps) != 1 else ''}"
              + (f" ({human_duration(missing)} missing)" if gaps else "") + "\n")
    for a, b in gaps[:20]:
        out.write(f"  gap {iso(a)} .. {iso(b)} ({human_duration((b - a).total_seconds())})\n")
    if len(gaps) > 20:
        out.write(f"  ... and {len(gaps) - 20} more\n")
    return EXIT_OK


async def _camera_totals(config: Config) -> dict[str, dict[str, Any]]:
    conn = await connect(config.database_dsn(), node=config.node.id)
    try:
        rows = await conn.fetch(queries.CAMERA_TOTALS)
    except asyncpg.UndefinedTableError:
        raise DatabaseUnavailable("the index has no schema yet: run `recorderd migrate`") from None
    finally:
        await conn.close()
    return {r["camera_id"]: dict(r.items()) for r in rows}


async def cmd_status(config: Config, as_json: bool, out: TextIO, err: TextIO | None = None, *,
                     now: float | None = None) -> int:
    err = err or sys.stderr
    now = time.time() if now is None else now
    live, why = read_status(config.storage.status_file, now)
    running = not why
    db_error = ""
    try:
        totals: dict[str, dict[str, Any]] | None = await _camera_totals(config)
    except DatabaseUnavailable as exc:
        totals, db_error = None, str(exc)
    live_cams = {c.get("camera_id"): c for c in (live or {}).get("cameras", [])} if running else {}
    node = ((live or {}).get("node") or {}) if running else {}
    elsewhere = node.get("elsewhere") or {}  # clustered: cameras other nodes record (recorderd.nodes)
    ids = [c.id for c in config.cameras] + [cid for cid in live_cams if config.camera(cid) is None]
    secrets = [s for c in config.cameras for s in secrets_of(c.url)]
    cameras: list[dict[str, Any]] = []
    exits: dict[str, dict[str, Any]] = {}  # camera id -> its last exit as the daemon wrote it (epochs)
    since: dict[str, float] = {}
    unreported: set[str] = set()  # an older daemon: its status file has no last_exit at all
    for cid in ids:
        cam = config.camera(cid)
        lc = live_cams.get(cid)
        idx = (totals or {}).get(cid)
        last = lc.get("last_segment_end") if lc else None
        if last is None and idx is not None and idx["newest"] is not None:
            last = idx["newest"].timestamp()
        if lc is not None:
            state, recording, current, restarts = (lc.get("state"), bool(lc.get("is_recording")),
                                                   lc.get("current_file"), lc.get("restarts"))
            le = _last_exit(lc.get("last_exit"), secrets)  # absent in a status file of an older daemon
            if le is not None:
                exits[cid] = le
            elif "last_exit" not in lc:
                unreported.add(cid)
            if isinstance(lc.get("state_since"), int | float):
                since[cid] = float(lc["state_since"])
            cause, hint = lc.get("cause"), lc.get("hint")
            stream = lc.get("stream") if isinstance(lc.get("stream"), dict) else None
        elif cid in elsewhere:  # the holder's state as it last renewed its lease
            state = elsewhere[cid].get("state") or "unknown"
            recording, current, restarts, le = state == "recording", None, None, None
            cause = hint = stream = None
        else:
            state = "not-running" if not running else ("disabled" if cam and not cam.enabled else "unknown")
            if running and node.get("clustered") and cam and cam.enabled:
                state = "unassigned"  # no node holds its lease now
            recording, current, restarts, le = False, None, None, None
            cause = hint = stream = None
        cameras.append({
            "camera_id": cid,
            "node": node.get("id") if lc is not None else (elsewhere.get(cid) or {}).get("node"),
            "state": state, "is_recording": recording, "current_file": current,
            "cause": str(cause) if cause else None,
            "hint": mask_text(str(hint), secrets) if hint else None,  # why, and what to fix
            "stream": stream,  # codecs from FFmpeg's input dump, and the audio mode in force
            "last_segment_end": iso(last), "restarts": restarts,
            "disk_usage_bytes": (idx["bytes"] if idx else 0) if totals is not None else None,
            "retention_days": cam.retention_days if cam else None,
            "last_exit": None if le is None else {**le, "at": iso(le["at"])},
        })
    fallback = _config_fallback((live or {}).get("config_fallback"), secrets) if running else None
    daemon = {"running": running, "pid": (live or {}).get("pid") if running else None,
              "started_at": iso((live or {}).get("started_at")) if running else None,
              "database_up": (live or {}).get("database_up") if running else totals is not None,
              "pending_rows": (live or {}).get("pending_rows") if running else None,
              "archive": (live or {}).get("archive") if running else None,
              "node": {k: v for k, v in node.items() if k != "elsewhere"} or None,
              "config_fallback": None if fallback is None else {**fallback, "saved_at": iso(fallback["saved_at"])}}
    if not running:
        err.write(f"recorderd is not running: {why}\n")
    if db_error:
        err.write(f"recorderd: warning: disk usage unknown: {db_error}\n")
    if as_json:
        if fallback is not None:
            err.write(f"recorderd: WARNING: LAST GOOD CONFIG IN USE: {fallback['reason']}\n")
        json.dump({"daemon": daemon, "cameras": cameras}, out, indent=2)
        out.write("\n")
        return EXIT_OK if running else EXIT_NOT_RUNNING
    if fallback is not None:
        out.write(f"WARNING: LAST GOOD CONFIG IN USE: {fallback['reason']}\n")
        for e in fallback["errors"][:5]:
            out.write(f"  {e}\n")
        if len(fallback["errors"]) > 5:
            out.write(f"  ... and {len(fallback['errors']) - 5} more (recorderd check-config)\n")
    if running:
        out.write(f"recorderd running, pid {daemon['pid']}, since {daemon['started_at']}; database "
                  f"{'up' if daemon['database_up'] else 'DOWN'}; {daemon['pending_rows']} rows pending\n")
        arch = daemon["archive"]
        if isinstance(arch, dict):
            out.write(archive_line(arch) + "\n")
        if node.get("clustered"):
            peers = node.get("nodes") or []
            out.write(f"node {node.get('id')}{' (DRAINING)' if node.get('draining') else ''}: "
                      f"{len(node.get('held') or [])} cameras here; "
                      + ", ".join(f"{p['id']} {p['cameras']}{'' if p['alive'] else ' (dead)'}"
                                  f"{' (draining)' if p['draining'] else ''}" for p in peers)
                      + ("" if node.get("leases_up") else "; LEASES UNREACHABLE (recording what it held)") + "\n")
    root = str(config.storage.root) + "/"
    out.write(render_table(
        ["CAMERA", "NODE", "STATE", "REC", "LAST SEGMENT END (UTC)", "RESTARTS", "DISK", "RETENTION", "LAST EXIT",
         "CURRENT FILE"],
        [[c["camera_id"], c["node"] or "-", str(c["state"]), "yes" if c["is_recording"] else "no",
          c["last_segment_end"] or "-", "-" if c["restarts"] is None else str(c["restarts"]),
          "?" if c["disk_usage_bytes"] is None else human_bytes(c["disk_usage_bytes"]),
          "-" if c["retention_days"] is None else f"{c['retention_days']}d",
          last_exit_text(exits.get(c["camera_id"]), now),
          (c["current_file"] or "-").removeprefix(root)] for c in cameras],
        right={5, 6, 7}))
    if running:
        _why_not_recording(out, [c for c in cameras if not c["is_recording"] and c["state"] != "disabled"
                                 and c["node"] in (None, node.get("id"))],
                           exits, since, unreported, now)
    return EXIT_OK if running else EXIT_NOT_RUNNING


NOT_RECORDING_SHOWN = 20  # cameras explained under the status table; --json has every one
STDERR_LINE_MAX = 160


def _why_not_recording(out: TextIO, cams: list[dict[str, Any]], exits: dict[str, dict[str, Any]],
                       since: dict[str, float], unreported: set[str], now: float) -> None:
    """Under the table, one paragraph per camera that is not recording: its state, how long, and
    its last FFmpeg exit with the (masked) stderr tail."""
    if not cams:
        return
    out.write(f"\nnot recording: {len(cams)} camera{'s' if len(cams) != 1 else ''}\n")
    for c in cams[:NOT_RECORDING_SHOWN]:
        cid = c["camera_id"]
        head = f"  {cid}: {c['state']}"
        if cid in since:
            head += f" for {human_age(now - since[cid])}"
        le = exits.get(cid)
        fix = f"      -> {c['hint']}\n" if c.get("hint") else ""
        if le is None:
            out.write(head + ("\n" if cid in unreported else "; no FFmpeg exit since the daemon started\n") + fix)
            continue
        when = f" at {iso_short(le['at'])} ({human_age(now - le['at'])} ago)" if le["at"] is not None else ""
        out.write(f"{head}; last exit {last_exit_text(le, None)}{when} after {human_duration(le['run_seconds'])}, "
                  f"{le['segments']} segment{'s' if le['segments'] != 1 else ''}\n")
        out.write(fix)
        for line in le["stderr"]:
            out.write(f"      | {_clip(line, STDERR_LINE_MAX)}\n")
    if len(cams) > NOT_RECORDING_SHOWN:
        out.write(f"  ... and {len(cams) - NOT_RECORDING_SHOWN} more (recorderd status --json)\n")


def _last_exit(raw: Any, secrets: list[str]) -> dict[str, Any] | None:
    """The daemon's ``last_exit`` of a camera, checked field by field (None for an old status file).
    The daemon masked the stderr lines; the camera passwords of this config are masked again anyway."""
    if not isinstance(raw, dict):
        return None
    at = raw.get("at")
    rc = raw.get("rc")
    run = raw.get("run_seconds")
    segs = raw.get("segments")
    tail = raw.get("stderr")
    lines: list[Any] = tail if isinstance(tail, list) else []
    return {"reason": str(raw.get("reason") or "unknown"),
            "rc": rc if isinstance(rc, int) and not isinstance(rc, bool) else None,
            "at": float(at) if isinstance(at, int | float) else None,
            "run_seconds": float(run) if isinstance(run, int | float) else 0.0,
            "segments": segs if isinstance(segs, int) else 0,
            "stderr": [mask_text(str(line), secrets) for line in lines[-3:]]}


def _config_fallback(raw: Any, secrets: list[str]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    saved = raw.get("saved_at")
    errs = raw.get("errors")
    errors: list[Any] = errs if isinstance(errs, list) else []
    return {"reason": mask_text(str(raw.get("reason") or "the config file is invalid"), secrets),
            "errors": [mask_text(str(e), secrets) for e in errors],
            "path": str(raw.get("path") or ""),
            "saved_at": float(saved) if isinstance(saved, int | float) else None}


def last_exit_text(le: dict[str, Any] | None, now: float | None) -> str:
    """``unreachable rc=1 5m ago`` for the status table (no age without ``now``); ``-`` when FFmpeg has not
    exited on its own."""
    if le is None:
        return "-"
    rc = f" rc={le['rc']}" if le["rc"] is not None else ""
    return f"{le['reason']}{rc} {human_age(now - le['at'])} ago" if now is not None and le["at"] is not None \
        else f"{le['reason']}{rc}"


# --------------------------------------------------------------------------- storage: rates and capacity

DAY_SECONDS = 86400
STORAGE_DAYS_DEFAULT = 7  # full UTC days behind the bytes-per-day average
STORAGE_DAYS_MAX = 366
SHORT_SHOWN = 10  # cameras named in the "retention does not fit" warning


@dataclass(frozen=True, slots=True)
class DayBytes:
    """One camera's footage that started on one UTC day."""

    day: date
    segments: int
    bytes: int
    seconds: float  # recorded seconds (sum of segment durations)


@dataclass(frozen=True, slots=True)
class Rate:
    """A camera's bytes per day of recording and what it rests on."""

    bytes_per_day: float | None
    basis: str | None  # "full_days", "today" (no full day with footage in the window yet) or None
    days: int  # full days with footage that went into it
    seconds: float  # recorded seconds behind it
    bytes: int

    @property
    def coverage(self) -> float | None:
        """Recorded share of the basis days (1.0 = recorded around the clock)."""
        return self.seconds / (self.days * DAY_SECONDS) if self.basis == "full_days" and self.days else None


def daily_rate(days: Mapping[date, DayBytes], today: date, window: int) -> Rate:
    """Bytes per day of recording over the last ``window`` full UTC days before ``today``.

    Bytes over recorded seconds, times 86400: a day the camera was added, offline for hours or
    stopped counts for the hours it did record, so the figure is what 24 hours of recording take (a
    camera that is often offline takes less than that). Today's partial day is left out unless there
    is no full day with footage yet; then it is the only basis (``basis == "today"``).
    """
    full = [d for i in range(1, window + 1) if (d := days.get(today - timedelta(days=i))) and d.seconds > 0]
    secs, nbytes = sum(d.seconds for d in full), sum(d.bytes for d in full)
    if secs > 0:
        return Rate(nbytes / secs * DAY_SECONDS, "full_days", len(full), secs, nbytes)
    t = days.get(today)
    if t is not None and t.seconds > 0:
        return Rate(t.bytes / t.seconds * DAY_SECONDS, "today", 0, t.seconds, t.bytes)
    return Rate(None, None, 0, 0.0, 0)


def plan_days(retention_days: int, max_bytes: int | None, bytes_per_day: float) -> float:
    """Days of footage a camera keeps when the disk has room: its retention, or less under max_bytes."""
    if max_bytes is not None and bytes_per_day > 0:
        return min(float(retention_days), max_bytes / bytes_per_day)
    return float(retention_days)


def floor_horizon(room: float, demands: Sequence[tuple[float, float]]) -> float | None:
    """The age in days down to which the free-space floor keeps footage, or None when every plan fits.

    ``demands`` is (bytes per day, plan days) per recording camera; ``room`` the bytes footage may
    take before free space reaches the floor. The floor deletes the oldest footage first, whatever the
    camera, so at steady state every camera keeps ``min(plan days, H)`` days where
    ``sum(rate * min(days, H)) == room``: the cameras with the longest plans lose footage first.
    """
    live = [(r, d) for r, d in demands if r > 0]
    if sum(r * d for r, d in live) <= room:
        return None
    left, rate = max(room, 0.0), sum(r for r, _ in live)
    for r, d in sorted(live, key=lambda rd: rd[1]):
        if d * rate <= left:  # this plan fits under the level the others would reach: kept whole
            left -= r * d
            rate -= r
        else:
            return left / rate
    return None  # pragma: no cover - only by rounding


def days_that_fit(room: float, bytes_per_day: float) -> float | None:
    """Room for footage / bytes per day of all cameras: the days that fit if every camera kept all."""
    return max(room, 0.0) / bytes_per_day if bytes_per_day > 0 else None


async def cmd_storage(config: Config, as_json: bool, out: TextIO, err: TextIO | None = None, *,
                      days: int = STORAGE_DAYS_DEFAULT, camera: str | None = None, now: float | None = None,
                      usage: Callable[[Path], DiskUsage] = read_usage) -> int:
    """Bytes per camera, tenant and plan from the index; bytes per UTC day over the last ``days`` full
    days; and how many days of footage the storage filesystem holds above the free-space floor.

    ``camera`` narrows the camera table to one camera and adds its per-day table (``--json`` always
    has every day of the window); the capacity figures are always for the whole filesystem.
    """
    err = err or sys.stderr
    if not 1 <= days <= STORAGE_DAYS_MAX:
        return _fail(err, f"--days must be 1..{STORAGE_DAYS_MAX}, got {days}")
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, UTC).date()
    since = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=days)
    try:
        conn = await connect(config.database_dsn(), node=config.node.id)
    except DatabaseUnavailable as exc:
        return _fail(err, str(exc))
    try:
        totals = {r["camera_id"]: dict(r.items()) for r in await conn.fetch(queries.CAMERA_TOTALS)}
        ids = [c.id for c in config.cameras] + sorted(set(totals) - {c.id for c in config.cameras})
        per_day: dict[str, dict[date, DayBytes]] = defaultdict(dict)
        clip_totals = await _clip_totals(conn)
        ids += sorted(set(clip_totals) - set(ids))  # clips outlive their camera's footage and config
        for r in await conn.fetch(queries.DAILY_BYTES, ids, since):
            per_day[r["camera_id"]][r["day"]] = DayBytes(r["day"], int(r["segments"]), int(r["bytes"]),
                                                         float(r["seconds"]))
    except asyncpg.UndefinedTableError:
        return _fail(err, "the index has no schema yet: run `recorderd migrate` (or start the daemon)")
    finally:
        await conn.close()
    if camera is not None and camera not in ids:
        known = ", ".join(c.id for c in config.cameras) or "none configured"
        return _fail(err, f"unknown camera {camera!r} (configured: {known})")

    window = [today - timedelta(days=i) for i in range(days, -1, -1)]  # oldest first, today last
    cams: list[dict[str, Any]] = []
    rates: dict[str, Rate] = {}
    for cid in ids:
        cam, idx, mine = config.camera(cid), totals.get(cid, {}), per_day[cid]
        rate = rates[cid] = daily_rate(mine, today, days)
        cov = rate.coverage
        cams.append({"camera_id": cid,
                     "tenant": cam.tenant if cam else idx.get("tenant"),
                     "plan": cam.plan if cam else idx.get("plan"),
                     "in_config": cam is not None, "enabled": cam.enabled if cam else False,
                     "segments": int(idx.get("segments", 0)), "bytes": int(idx.get("bytes", 0)),
                     "protected_bytes": int(idx.get("protected_bytes", 0)),
                     "clips": clip_totals.get(cid, (0, 0))[0], "clip_bytes": clip_totals.get(cid, (0, 0))[1],
                     "oldest": iso(idx.get("oldest")), "newest": iso(idx.get("newest")),
                     "retention_days": cam.retention_days if cam else None,
                     "max_bytes": cam.max_bytes if cam else None,
                     "days": [_day_json(mine.get(d) or DayBytes(d, 0, 0, 0.0), today) for d in window],
                     "today_bytes": mine[today].bytes if today in mine else 0,
                     "bytes_per_day": None if rate.bytes_per_day is None else round(rate.bytes_per_day),
                     "rate_basis": rate.basis, "rate_days": rate.days,
                     "rate_recorded_seconds": round(rate.seconds, 3),
                     "coverage": None if cov is None else round(cov, 4),
                     # what the capacity sums: cameras that record (configured, enabled) and have a rate
                     "counted": cam is not None and cam.enabled and rate.bytes_per_day is not None,
                     "plan_days": None, "keeps_days": None, "short": False, "capped": False})

    capacity = await _capacity(config, cams, rates, usage)
    horizon: float | None = capacity.get("horizon_days")
    short = set(capacity.get("short_cameras", ()))
    for c in cams:
        if c["counted"]:
            pd = plan_days(c["retention_days"], c["max_bytes"], rates[c["camera_id"]].bytes_per_day or 0.0)
            c["plan_days"] = round(pd, 2)
            c["capped"] = pd < c["retention_days"]
            c["short"] = c["camera_id"] in short
            c["keeps_days"] = round(pd if horizon is None else min(pd, horizon), 2)

    def group(key: str) -> list[dict[str, Any]]:
        acc: dict[str | None, dict[str, Any]] = defaultdict(
            lambda: {"segments": 0, "bytes": 0, "cameras": 0, "bytes_per_day": 0, "clips": 0, "clip_bytes": 0})
        for c in cams:
            g = acc[c[key]]
            g["segments"] += c["segments"]
            g["bytes"] += c["bytes"]
            g["clips"] += c["clips"]
            g["clip_bytes"] += c["clip_bytes"]
            g["cameras"] += 1
            g["bytes_per_day"] += c["bytes_per_day"] if c["counted"] else 0
        return [{key: k, **v} for k, v in sorted(acc.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))]

    tenants, plans = group("tenant"), group("plan")
    total = {"segments": sum(c["segments"] for c in cams), "bytes": sum(c["bytes"] for c in cams)}
    clip_total = {"clips": sum(c["clips"] for c in cams), "clip_bytes": sum(c["clip_bytes"] for c in cams)}
    shown = [c for c in cams if camera is None or c["camera_id"] == camera]
    if as_json:
        result = {"cameras": shown, "tenants": tenants, "plans": plans, "total": total, "clip_total": clip_total,
                  "window": {"days": days, "from": iso(since), "today": today.isoformat(),
                             "day_boundary": "UTC midnight; a segment counts to the day it starts on",
                             "bytes_per_day": "bytes / recorded seconds over the full days with footage, "
                                              "times 86400 (today's partial day only while there is no full day)"},
                  "capacity": capacity}
        json.dump(result, out, indent=2)
        out.write("\n")
        return EXIT_OK
    out.write(render_table(
        ["CAMERA", "TENANT", "PLAN", "SIZE", "CLIPS", "OLDEST (UTC)", "TODAY", "PER DAY", "BASIS", "RETENTION",
         "KEEPS"],
        [[c["camera_id"] + ("" if c["in_config"] else " (removed)")
          + (" (disabled)" if c["in_config"] and not c["enabled"] else ""),
          c["tenant"] or "-", c["plan"] or "-", human_bytes(c["bytes"]), _clips_text(c),
          (c["oldest"] or "-")[:16].replace("T", " "), human_bytes(c["today_bytes"]),
          "-" if c["bytes_per_day"] is None else human_bytes(c["bytes_per_day"]), _basis_text(rates[c["camera_id"]]),
          "-" if c["retention_days"] is None else f"{c['retention_days']}d", _keeps_text(c)] for c in shown],
        right={3, 4, 6, 7, 9, 10}))
    if camera is not None:
        out.write(f"\n{camera} per UTC day (a segment counts to the day it starts on):\n" + render_table(
            ["DAY (UTC)", "SEGMENTS", "BYTES", "SIZE", "RECORDED"],
            [[d["day"] + ("" if d["full_day"] else " (today)"), str(d["segments"]), str(d["bytes"]),
              human_bytes(d["bytes"]), f"{d['recorded_seconds'] / 3600:.1f}h"] for d in shown[0]["days"]],
            right={1, 2, 3, 4}))
    else:
        for key, groups in (("tenant", tenants), ("plan", plans)):
            out.write("\n" + render_table(
                [key.upper(), "CAMERAS", "SEGMENTS", "SIZE", "PER DAY", "CLIPS"],
                [[g[key] or "-", str(g["cameras"]), str(g["segments"]), human_bytes(g["bytes"]),
                  human_bytes(g["bytes_per_day"]), _clips_text(g)] for g in groups], right={1, 2, 3, 4, 5}))
    out.write(f"\ntotal: {total['segments']} segments, {human_bytes(total['bytes'])}"
              + (f"; {clip_total['clips']} clip{'s' if clip_total['clips'] != 1 else ''}, "
                 f"{human_bytes(clip_total['clip_bytes'])} (kept until deleted)" if clip_total["clips"] else "")
              + "\n"
              f"PER DAY = bytes / recorded seconds x 86400 over the last {days} full UTC days with footage;\n"
              "BASIS = how many such days (and the share of them recorded, when below 95 %)\n")
    _write_capacity(out, capacity, cams, days)
    return EXIT_OK


def _clips_text(c: Mapping[str, Any]) -> str:
    return f"{c['clips']} ({human_bytes(c['clip_bytes'])})" if c["clips"] else "-"


async def _clip_totals(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """camera -> (ready clips, their bytes); empty before the clips migration ran (an old daemon)."""
    try:
        rows = await conn.fetch(queries.CLIP_TOTALS)
    except asyncpg.UndefinedTableError:
        return {}
    return {r["camera_id"]: (int(r["clips"]), int(r["clip_bytes"])) for r in rows}


def _day_json(d: DayBytes, today: date) -> dict[str, Any]:
    return {"day": d.day.isoformat(), "full_day": d.day != today, "segments": d.segments, "bytes": d.bytes,
            "recorded_seconds": round(d.seconds, 3)}


async def _capacity(config: Config, cams: list[dict[str, Any]], rates: Mapping[str, Rate],
                    usage: Callable[[Path], DiskUsage]) -> dict[str, Any]:
    """The filesystem of the storage root against what the cameras record per day."""
    st = config.storage
    counted = [c for c in cams if c["counted"]]
    rate_of = {c["camera_id"]: rates[c["camera_id"]].bytes_per_day or 0.0 for c in counted}
    per_day = sum(rate_of.values())
    cap: dict[str, Any] = {
        "path": str(st.root), "bytes_per_day": round(per_day), "cameras_counted": len(counted),
        "cameras_without_rate": [c["camera_id"] for c in cams
                                 if c["in_config"] and c["enabled"] and c["bytes_per_day"] is None]}
    try:
        u = await asyncio.to_thread(usage, st.root)
    except OSError as exc:
        cap["error"] = f"cannot read the filesystem of {st.root}: {exc.strerror or exc}"
        return cap
    floor, target = floor_and_target(st, u.total)
    footage = sum(c["bytes"] for c in cams)
    protected = sum(c["protected_bytes"] for c in cams)  # never deleted, so never room
    clip_bytes = sum(c["clip_bytes"] for c in cams)  # saved clips: in used space, never deleted by a sweep
    # = total - floor - protected - (other files + blocks reserved for root)
    room = footage - protected + u.free - floor
    demands = {cid: (r, plan_days(c["retention_days"], c["max_bytes"], r))
               for c in counted for cid, r in [(c["camera_id"], rate_of[c["camera_id"]])]}
    horizon = floor_horizon(room, list(demands.values()))
    fit = days_that_fit(room, per_day)
    cap.update({
        "total_bytes": u.total, "free_bytes": u.free, "used_bytes": u.used, "read_only": u.read_only,
        "floor_bytes": floor, "target_free_bytes": target,
        "floor_from": ("min_free_bytes" if st.min_free_bytes >= math.ceil(u.total * st.min_free_percent / 100.0)
                       else "min_free_percent"),
        "min_free_percent": st.min_free_percent, "min_free_bytes": st.min_free_bytes,
        "footage_bytes": footage, "protected_bytes": protected, "clip_bytes": clip_bytes,
        "other_bytes": max(u.total - u.free - footage - clip_bytes, 0),
        "room_bytes": max(room, 0),
        "days_fit": None if fit is None else round(fit, 2),
        "plans_need_bytes": round(sum(r * d for r, d in demands.values())),
        "horizon_days": None if horizon is None else round(horizon, 2),
        "short_cameras": [cid for cid, (_, d) in demands.items() if horizon is not None and d > horizon],
        "error": None,
    })
    return cap


def _write_capacity(out: TextIO, cap: dict[str, Any], cams: list[dict[str, Any]], days: int) -> None:
    out.write(f"\ncapacity of {cap['path']}:\n")
    if cap.get("error"):
        out.write(f"  {cap['error']}\n")
        return
    hb = human_bytes
    what = (f"{cap['min_free_percent']:g} % of the filesystem (storage.min_free_percent)"
            if cap["floor_from"] == "min_free_percent" else "storage.min_free_bytes")
    n = cap["cameras_counted"]
    rows = [
        ["filesystem", hb(cap["total_bytes"]), f"{hb(cap['free_bytes'])} free"
         + (", MOUNTED READ-ONLY: nothing records" if cap["read_only"] else "")],
        ["free-space floor", hb(cap["floor_bytes"]), what],
        ["footage (index)", hb(cap["footage_bytes"]),
         f"{hb(cap['protected_bytes'])} of it protected; other files, root-reserved blocks {hb(cap['other_bytes'])}"],
        ["saved clips", hb(cap["clip_bytes"]), "never deleted by retention or the floor"],
        ["room for footage", hb(cap["room_bytes"]), "footage - protected + free - floor"],
        ["recorded per day", hb(cap["bytes_per_day"]),
         f"{n} enabled camera{'s' if n != 1 else ''}, last {days} full UTC days"],
        ["days that fit", "-" if cap["days_fit"] is None else f"{cap['days_fit']:.1f}", "room / recorded per day"],
        ["retention needs", hb(cap["plans_need_bytes"]), "per day x retention days (or max_bytes) per camera"],
    ]
    out.write("".join("  " + line for line in render_table(["", "", ""], rows, right={1}).splitlines(True)[1:]))
    if cap["horizon_days"] is not None:
        short = [c for c in cams if c["camera_id"] in set(cap["short_cameras"])]
        names = ", ".join(f"{c['camera_id']} ({c['retention_days']}d)" for c in short[:SHORT_SHOWN])
        more = f" and {len(short) - SHORT_SHOWN} more" if len(short) > SHORT_SHOWN else ""
        out.write(f"WARNING: retention needs {hb(cap['plans_need_bytes'])}, there is room for "
                  f"{hb(cap['room_bytes'])}: the free-space floor will delete footage older than about "
                  f"{cap['horizon_days']:.1f} days before its retention ends on {len(short)} camera"
                  f"{'s' if len(short) != 1 else ''}: {names}{more}\n")
    missing = cap["cameras_without_rate"]
    if missing:
        out.write(f"note: not counted, no footage in the last {days} days: {', '.join(missing[:SHORT_SHOWN])}"
                  f"{f' and {len(missing) - SHORT_SHOWN} more' if len(missing) > SHORT_SHOWN else ''}\n")


def _basis_text(rate: Rate) -> str:
    if rate.basis == "full_days":
        cov = rate.coverage or 0.0
        return f"{rate.days}d" + (f" {min(cov, 1.0):.0%}" if cov < 0.95 else "")
    if rate.basis == "today":
        return f"today {rate.seconds / 3600:.1f}h"
    return "-"


def _keeps_text(c: dict[str, Any]) -> str:
    if c["keeps_days"] is None:
        return "-"
    if c["short"]:
        return f"{c['keeps_days']:.1f}d FLOOR"
    if c["capped"]:
        return f"{c['keeps_days']:.1f}d CAP"
    return f"{c['retention_days']}d"


async def cmd_migrate(config: Config, out: TextIO, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    try:
        applied = await migrate(config.database_dsn(), node=config.node.id)
    except DatabaseUnavailable as exc:
        return _fail(err, str(exc))
    out.write(f"applied: {', '.join(applied)}\n" if applied else "schema is up to date\n")
    return EXIT_OK


# --------------------------------------------------------------------------- formatting


def _fail(err: TextIO, message: str) -> int:
    err.write(f"recorderd: error: {message}\n")
    return EXIT_USAGE


def render_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip() + "\n"

    return line(headers) + "".join(line(r) for r in rows)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def human_age(seconds: float) -> str:
    """A coarse age: ``42s``, ``5m``, ``3h10m``, ``2d4h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


def iso_short(epoch: float | None) -> str:
    """``2026-11-18T11:06:40Z``: to the second, for prose lines (``--json`` keeps microseconds)."""
    if epoch is None:
        return "?"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def human_duration(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{seconds:.1f}s")
