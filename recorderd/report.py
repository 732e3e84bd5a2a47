"""What an operator asks the index: ``search``, ``status``, ``storage`` and ``migrate`` for the CLI.

Each ``cmd_*`` prints to ``out`` (a table, or JSON with ``--json``), writes problems to ``err`` and
returns the exit code: 0 ok, 2 a usage/database problem the message explains, 3 daemon not running.
Messages name the database as host:port/db, never with its password.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO

import asyncpg

from recorderd import layout, queries
from recorderd.config import Config
from recorderd.db import DatabaseUnavailable, connect, migrate
from recorderd.statusfile import read_status

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
GAP_TOLERANCE = 0.1  # seconds between consecutive segments reported as a gap
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class SegmentRow:
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

    def to_json(self) -> dict[str, Any]:
        return {"recording_id": self.recording_id, "camera_id": self.camera_id,
                "start": iso(self.start), "end": iso(self.end),
                "duration_seconds": self.duration_seconds, "size_bytes": self.size_bytes,
                "path": self.path}


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
                       size_bytes=r["size_bytes"], path=r["path"], source=r["source"],
                       run_id=str(r["run_id"]) if r["run_id"] is not None else None, seq=r["seq"])
            for r in rows]


async def search(dsn: str | None, camera_id: str, start: datetime | None,
                 end: datetime | None) -> list[SegmentRow]:
    conn = await connect(dsn)
    try:
        return await search_conn(conn, camera_id, start, end)
    finally:
        await conn.close()


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
        conn = await connect(config.database_dsn())
    except DatabaseUnavailable as exc:
        return _fail(err, str(exc))
    try:
        rows = await search_conn(conn, camera_id, start, end)
        if not rows and config.camera(camera_id) is None:
            if not await conn.fetchval(queries.CAMERA_HAS_SEGMENTS, camera_id):
                known = ", ".join(c.id for c in config.cameras) or "none configured"
                return _fail(err, f"unknown camera {camera_id!r} (configured: {known})")
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
    conn = await connect(config.database_dsn())
    try:
        rows = await conn.fetch(queries.CAMERA_TOTALS)
    except asyncpg.UndefinedTableError:
        raise DatabaseUnavailable("the index has no schema yet: run `recorderd migrate`") from None
    finally:
        await conn.close()
    return {r["camera_id"]: dict(r.items()) for r in rows}


async def cmd_status(config: Config, as_json: bool, out: TextIO, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    live, why = read_status(config.storage.status_file)
    running = not why
    db_error = ""
    try:
        totals: dict[str, dict[str, Any]] | None = await _camera_totals(config)
    except DatabaseUnavailable as exc:
        totals, db_error = None, str(exc)
    live_cams = {c.get("camera_id"): c for c in (live or {}).get("cameras", [])} if running else {}
    ids = [c.id for c in config.cameras] + [cid for cid in live_cams if config.camera(cid) is None]
    cameras: list[dict[str, Any]] = []
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
        else:
            state = "not-running" if not running else ("disabled" if cam and not cam.enabled else "unknown")
            recording, current, restarts = False, None, None
        cameras.append({
            "camera_id": cid, "state": state, "is_recording": recording, "current_file": current,
            "last_segment_end": iso(last), "restarts": restarts,
            "disk_usage_bytes": (idx["bytes"] if idx else 0) if totals is not None else None,
            "retention_days": cam.retention_days if cam else None,
        })
    daemon = {"running": running, "pid": (live or {}).get("pid") if running else None,
              "started_at": iso((live or {}).get("started_at")) if running else None,
              "database_up": (live or {}).get("database_up") if running else totals is not None,
              "pending_rows": (live or {}).get("pending_rows") if running else None}
    if not running:
        err.write(f"recorderd is not running: {why}\n")
    if db_error:
        err.write(f"recorderd: warning: disk usage unknown: {db_error}\n")
    if as_json:
        json.dump({"daemon": daemon, "cameras": cameras}, out, indent=2)
        out.write("\n")
    else:
        if running:
            out.write(f"recorderd running, pid {daemon['pid']}, since {daemon['started_at']}; database "
                      f"{'up' if daemon['database_up'] else 'DOWN'}; {daemon['pending_rows']} rows pending\n")
        root = str(config.storage.root) + "/"
        out.write(render_table(
            ["CAMERA", "STATE", "REC", "LAST SEGMENT END (UTC)", "RESTARTS", "DISK", "RETENTION",
             "CURRENT FILE"],
            [[c["camera_id"], str(c["state"]), "yes" if c["is_recording"] else "no",
              c["last_segment_end"] or "-", "-" if c["restarts"] is None else str(c["restarts"]),
              "?" if c["disk_usage_bytes"] is None else human_bytes(c["disk_usage_bytes"]),
              "-" if c["retention_days"] is None else f"{c['retention_days']}d",
              (c["current_file"] or "-").removeprefix(root)] for c in cameras],
            right={4, 5, 6}))
    return EXIT_OK if running else EXIT_NOT_RUNNING


async def cmd_storage(config: Config, as_json: bool, out: TextIO, err: TextIO | None = None) -> int:
    """Bytes and segment counts per camera, tenant and plan, from the index."""
    err = err or sys.stderr
    try:
        totals = await _camera_totals(config)
    except DatabaseUnavailable as exc:
        return _fail(err, str(exc))
    ids = [c.id for c in config.cameras] + sorted(set(totals) - {c.id for c in config.cameras})
    cams: list[dict[str, Any]] = []
    for cid in ids:
        cam, idx = config.camera(cid), totals.get(cid, {})
        cams.append({"camera_id": cid,
                     "tenant": cam.tenant if cam else idx.get("tenant"),
                     "plan": cam.plan if cam else idx.get("plan"),
                     "in_config": cam is not None,
                     "segments": int(idx.get("segments", 0)), "bytes": int(idx.get("bytes", 0)),
                     "oldest": iso(idx.get("oldest")), "newest": iso(idx.get("newest"))})

    def group(key: str) -> list[dict[str, Any]]:
        acc: dict[str | None, dict[str, Any]] = defaultdict(lambda: {"segments": 0, "bytes": 0, "cameras": 0})
        for c in cams:
            g = acc[c[key]]
            g["segments"] += c["segments"]
            g["bytes"] += c["bytes"]
            g["cameras"] += 1
        return [{key: k, **v} for k, v in sorted(acc.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))]

    tenants, plans = group("tenant"), group("plan")
    total = {"segments": sum(c["segments"] for c in cams), "bytes": sum(c["bytes"] for c in cams)}
    result = {"cameras": cams, "tenants": tenants, "plans": plans, "total": total}
    if as_json:
        json.dump(result, out, indent=2)
        out.write("\n")
        return EXIT_OK
    out.write(render_table(
        ["CAMERA", "TENANT", "PLAN", "SEGMENTS", "BYTES", "SIZE", "OLDEST (UTC)", "NEWEST (UTC)"],
        [[c["camera_id"] + ("" if c["in_config"] else " (removed)"), c["tenant"] or "-", c["plan"] or "-",
          str(c["segments"]), str(c["bytes"]), human_bytes(c["bytes"]), c["oldest"] or "-",
          c["newest"] or "-"] for c in cams], right={3, 4, 5}))
    for key, groups in (("tenant", tenants), ("plan", plans)):
        out.write("\n" + render_table(
            [key.upper(), "CAMERAS", "SEGMENTS", "BYTES", "SIZE"],
            [[g[key] or "-", str(g["cameras"]), str(g["segments"]), str(g["bytes"]),
              human_bytes(g["bytes"])] for g in groups], right={1, 2, 3, 4}))
    out.write(f"\ntotal: {total['segments']} segments, {human_bytes(total['bytes'])}\n")
    return EXIT_OK


async def cmd_migrate(config: Config, out: TextIO, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    try:
        applied = await migrate(config.database_dsn())
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


def human_duration(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{seconds:.1f}s")
