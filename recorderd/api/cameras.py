"""Cameras and their footage: list, one camera, recordings (paged), days with footage, the timeline,
and the media bytes of one segment file.

Visibility comes first in every handler: a camera outside the caller's tenants is "no such camera",
exactly like one that does not exist. Paths never come from the request: a segment is named by its
index id, its path comes from the index and is served only if it resolves, without symlinks, to a
regular file inside the storage root.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
import time
import zoneinfo
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from recorderd.api.errors import ApiError, bad_request, not_found, unavailable
from recorderd.api.objects import serve_object
from recorderd.config import Camera
from recorderd.db import DatabaseUnavailable
from recorderd.layout import iso
from recorderd.mp4 import open_regular
from recorderd.report import parse_time

if TYPE_CHECKING:
    from recorderd.api.app import Services
    from recorderd.api.auth import UrlSigner
    from recorderd.api.peers import Peers

DAY = 86400.0
MAX_PAGE = 1000
API_QUERIES = 3  # concurrent API queries: the rest of the pool stays free for the indexer and sweeper
QUERY_TIMEOUT = 10.0
RUN_GAP = 1.0  # seconds between two segments that the timeline still draws as one run

_DAYS_SQL = """
SELECT (start_time AT TIME ZONE $2)::date AS day, sum(duration_seconds) AS seconds,
       min(start_time) AS first, max(end_time) AS last, count(*) AS segments
FROM segments WHERE camera_id = $1 AND NOT deleting GROUP BY 1 ORDER BY 1"""
# one index probe per day with footage (a loose index scan), not a scan of every segment
_DAY_COUNT_SQL = """
WITH RECURSIVE d(day) AS (
    SELECT (SELECT date_trunc('day', min(start_time) AT TIME ZONE 'UTC')
            FROM segments WHERE camera_id = $1 AND NOT deleting)
    UNION ALL
    SELECT (SELECT date_trunc('day', min(start_time) AT TIME ZONE 'UTC') FROM segments
            WHERE camera_id = $1 AND NOT deleting AND start_time >= (d.day + interval '1 day') AT TIME ZONE 'UTC')
    FROM d WHERE d.day IS NOT NULL)
SELECT count(day) AS days, min(day) AS first_day FROM d"""
_NEWEST_SQL = """
SELECT end_time FROM segments WHERE camera_id = $1 AND NOT deleting ORDER BY start_time DESC LIMIT 1"""
_PAGE_SQL = """
SELECT id, start_time, end_time, duration_seconds, size_bytes, run_id FROM segments
WHERE camera_id = $1 AND NOT deleting AND end_time > $2 AND start_time < $3
  AND (start_time, id) > ($4, $5)
ORDER BY start_time, id LIMIT $6"""
_SPANS_SQL = """
SELECT start_time, end_time FROM segments
WHERE camera_id = $1 AND NOT deleting AND end_time > $2 AND start_time < $3
  AND start_time >= $2 - make_interval(secs => 1 + coalesce(
        (SELECT max(duration_seconds) FROM segments WHERE camera_id = $1), 0))
ORDER BY start_time"""
_SEGMENT_SQL = "SELECT camera_id, path, object_url, size_bytes, node FROM segments WHERE id = $1 AND NOT deleting"


def add_routes(app: web.Application, services: Services, signer: UrlSigner, peers: Peers) -> None:
    api = CameraApi(services, signer, peers)
    r = app.router
    r.add_get("/api/v1/cameras", api.list_cameras)
    r.add_get("/api/v1/cameras/{camera_id}", api.get_camera)
    r.add_get("/api/v1/cameras/{camera_id}/recordings", api.recordings)
    r.add_get("/api/v1/cameras/{camera_id}/days", api.days)
    r.add_get("/api/v1/cameras/{camera_id}/timeline", api.timeline)
    r.add_get("/api/v1/media/{segment_id:[0-9]{1,18}}.mp4", api.media)


class CameraApi:
    def __init__(self, services: Services, signer: UrlSigner, peers: Peers | None = None) -> None:
        self.services = services
        self.signer = signer
        self.peers = peers
        self._queries = asyncio.Semaphore(API_QUERIES)

    # ------------------------------------------------------------------ helpers

    def camera(self, request: web.Request) -> Camera:
        """The path's camera if the caller may see it; else 404 (the same for both)."""
        from recorderd.api.app import principal_of

        cam = self.services.config.camera(request.match_info["camera_id"])
        if cam is None or not principal_of(request).sees(cam.tenant):
            raise not_found("camera")
        return cam

    def visible(self, request: web.Request) -> list[Camera]:
        from recorderd.api.app import principal_of

        p = principal_of(request)
        return [c for c in self.services.config.cameras if p.sees(c.tenant)]

    @asynccontextmanager
    async def conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one request; the index being away is a 503 with the reason."""
        db = self.services.db
        async with self._queries:
            try:
                async with db.acquire("api") as conn:
                    yield conn
            except DatabaseUnavailable:
                raise unavailable() from None
            except (asyncpg.PostgresError, TimeoutError) as exc:
                raise unavailable(f"an index query failed ({type(exc).__name__}); recording goes on") from None

    def live(self) -> dict[str, dict[str, Any]]:
        return {c["camera_id"]: c for c in self.services.snapshot().get("cameras", [])}

    async def describe(self, conn: asyncpg.Connection, cam: Camera, live: dict[str, Any] | None,
                       now: float) -> dict[str, Any]:
        """What ``recorderd status --json`` shows for the camera, plus plan, days and clips."""
        usage = self.services.camera_usage().get(cam.id)
        days = await conn.fetchrow(_DAY_COUNT_SQL, cam.id, timeout=QUERY_TIMEOUT)
        newest = await conn.fetchval(_NEWEST_SQL, cam.id, timeout=QUERY_TIMEOUT)
        oldest = usage.oldest if usage is not None else None
        plan = self.services.config.plans.get(cam.plan)
        clips_limit = getattr(plan, "max_clips", None)
        last_exit = (live or {}).get("last_exit")
        expires = oldest + cam.retention_days * DAY if oldest is not None else None
        node, state = self.services.recorded_by(cam.id)
        if live is None and state is not None:  # recorded by another node: the state it last reported
            live = {"state": state, "is_recording": state == "recording"}
        return {
            "camera_id": cam.id, "name": cam.name, "tenant": cam.tenant, "plan": cam.plan,
            "enabled": cam.enabled, "retention_days": cam.retention_days,
            "node": node,  # the node that records it (None: none does now)
            "state": (live or {}).get("state", "disabled" if not cam.enabled else "unknown"),
            "is_recording": bool((live or {}).get("is_recording")),
            "state_since": iso((live or {})["state_since"]) if (live or {}).get("state_since") else None,
            # why it does not record (recorderd.diagnose), and what to fix
            "cause": (live or {}).get("cause"), "hint": (live or {}).get("hint"),
            "last_segment_end": iso(newest.timestamp()) if newest is not None else None,
            "restarts": (live or {}).get("restarts"),
            "last_exit": None if not last_exit else {
                "reason": last_exit.get("reason"), "rc": last_exit.get("rc"),
                "at": iso(last_exit["at"]) if last_exit.get("at") else None},
            "disk_usage_bytes": usage.bytes if usage is not None else None,
            "oldest": iso(oldest) if oldest is not None else None,
            "newest": iso(newest.timestamp()) if newest is not None else None,
            "days_available": int(days["days"]) if days is not None else 0,
            "oldest_expires_at": iso(expires) if expires is not None else None,
            "days_remaining": round(max(0.0, (expires - now) / DAY), 2) if expires is not None else None,
            "clips_used": await self.services.clips_used(conn, cam.id),
            "clips_limit": clips_limit,
        }

    # ------------------------------------------------------------------ handlers

    async def list_cameras(self, request: web.Request) -> web.Response:
        cams, live, now = self.visible(request), self.live(), time.time()
        async with self.conn() as conn:
            out = [await self.describe(conn, c, live.get(c.id), now) for c in cams]
        return web.json_response({"cameras": out})

    async def get_camera(self, request: web.Request) -> web.Response:
        cam = self.camera(request)
        async with self.conn() as conn:
            return web.json_response(await self.describe(conn, cam, self.live().get(cam.id), time.time()))

    async def recordings(self, request: web.Request) -> web.Response:
        cam = self.camera(request)
        start, end = period(request, required=False)
        limit = int_param(request, "limit", 100, 1, MAX_PAGE)
        after = decode_cursor(request.query.get("cursor"))
        async with self.conn() as conn:
            rows = await conn.fetch(_PAGE_SQL, cam.id, start, end, after[0], after[1], limit + 1,
                                    timeout=QUERY_TIMEOUT)
        more = len(rows) > limit
        rows = rows[:limit]
        from recorderd.api.app import principal_of

        principal = principal_of(request)
        out = [{"recording_id": r["id"], "camera_id": cam.id, "start": iso(r["start_time"].timestamp()),
                "end": iso(r["end_time"].timestamp()), "duration_seconds": r["duration_seconds"],
                "size_bytes": r["size_bytes"], "url": self.media_url(r["id"], principal)} for r in rows]
        cursor = encode_cursor(rows[-1]["start_time"], rows[-1]["id"]) if more and rows else None
        return web.json_response({"recordings": out, "next_cursor": cursor})

    def media_url(self, segment_id: int, principal: Any) -> str:
        path = f"/api/v1/media/{segment_id}.mp4"
        return f"{path}?{self.signer.sign(path, principal)}"

    async def days(self, request: web.Request) -> web.Response:
        cam = self.camera(request)
        tz = time_zone(request)
        async with self.conn() as conn:
            rows = await conn.fetch(_DAYS_SQL, cam.id, tz, timeout=QUERY_TIMEOUT)
        keep = cam.retention_days * DAY
        days = [{"date": r["day"].isoformat(), "seconds_recorded": round(float(r["seconds"]), 3),
                 "segments": r["segments"], "first": iso(r["first"].timestamp()),
                 "last": iso(r["last"].timestamp()),
                 # the day's oldest footage goes first; the whole day is gone once its last has aged
                 "expires_from": iso(r["first"].timestamp() + keep),
                 "expires_at": iso(r["last"].timestamp() + keep)} for r in rows]
        return web.json_response({"camera_id": cam.id, "retention_days": cam.retention_days,
                                  "time_zone": tz, "days": days})

    async def timeline(self, request: web.Request) -> web.Response:
        cam = self.camera(request)
        start, end = period(request, required=True)
        async with self.conn() as conn:
            rows = await conn.fetch(_SPANS_SQL, cam.id, start, end, timeout=QUERY_TIMEOUT)
        runs = merge_runs([(max(r["start_time"], start).timestamp(), min(r["end_time"], end).timestamp())
                           for r in rows], RUN_GAP)
        lo, hi = start.timestamp(), end.timestamp()
        gaps, cursor = [], lo
        for a, b in runs:
            if a > cursor:
                gaps.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < hi:
            gaps.append((cursor, min(hi, time.time()) if hi > time.time() else hi))
        return web.json_response({
            "camera_id": cam.id, "from": iso(lo), "to": iso(hi),
            "recorded_seconds": round(sum(b - a for a, b in runs), 3),
            "runs": [{"start": iso(a), "end": iso(b)} for a, b in runs],
            "gaps": [{"start": iso(a), "end": iso(b)} for a, b in gaps if b > a]})

    async def media(self, request: web.Request) -> web.StreamResponse:
        """One segment's bytes: a local file by sendfile (Range, HEAD and If-Range by aiohttp's
        FileResponse), an archived one from the object store (``recorderd.api.objects``)."""
        from recorderd.api.app import principal_of

        seg_id = int(request.match_info["segment_id"])
        async with self.conn() as conn:
            row = await conn.fetchrow(_SEGMENT_SQL, seg_id, timeout=QUERY_TIMEOUT)
        cam = self.services.config.camera(row["camera_id"]) if row is not None else None
        if row is None or cam is None or not principal_of(request).sees(cam.tenant):
            raise not_found("recording")
        if row["object_url"] is not None:  # archived: one ranged GET per request
            return await serve_object(request, self.services.archive_store, row["object_url"], row["size_bytes"])
        if row["node"] != self.services.config.node.id:  # on another node's disk: it serves, this node relays
            if self.peers is None:
                raise unavailable(f"this recording is on node {row['node']}")
            return await self.peers.media(request, row["node"], seg_id)
        root = str(self.services.config.storage.root)
        if not await asyncio.to_thread(safe_file, root, row["path"]):
            raise not_found("recording")
        return web.FileResponse(row["path"], headers={"Cache-Control": "private, max-age=3600",
                                                      "Content-Type": "video/mp4"})


# --------------------------------------------------------------------------- pure helpers


def period(request: web.Request, *, required: bool) -> tuple[datetime, datetime]:
    """``from``/``to`` as UTC datetimes; a bare date for ``to`` is the end of that day."""
    out: list[datetime] = []
    for name, default, end_of_day in (("from", datetime(1970, 1, 1, tzinfo=UTC), False),
                                      ("to", datetime(9999, 1, 1, tzinfo=UTC), True)):
        text = request.query.get(name)
        if text is None or not text.strip():
            if required:
                raise bad_request(name, "is required (ISO 8601, e.g. 2026-11-21T10:00:00Z)")
            out.append(default)
            continue
        try:
            out.append(parse_time(text, end_of_day=end_of_day))
        except (ValueError, OverflowError):
            raise bad_request(name, "is not an ISO 8601 time (e.g. 2026-11-21T10:00:00Z)") from None
    if out[0] >= out[1]:
        raise bad_request("to", "must be after from")
    return out[0], out[1]


def time_zone(request: web.Request) -> str:
    """``tz``: an IANA zone name (the browser's own) that days are counted in; UTC by default.

    Only names in the system's zone list pass, so the text never reaches a file lookup or the query
    as anything but a known zone name."""
    name = request.query.get("tz", "UTC")
    if name != "UTC" and name not in _zones():
        raise bad_request("tz", "is not a known IANA time zone (e.g. Europe/Berlin)")
    return name


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(name, "must be an integer") from None
    if not lo <= value <= hi:
        raise bad_request(name, f"must be between {lo} and {hi}")
    return value


def encode_cursor(start: datetime, row_id: int) -> str:
    raw = f"{start.timestamp():.6f}:{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[datetime, int]:
    if not text:
        return datetime(1, 1, 1, tzinfo=UTC), 0
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        ts, _, rid = raw.partition(":")
        return datetime.fromtimestamp(float(ts), UTC), int(rid)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
        raise bad_request("cursor", "is not a cursor this API gave out") from None


def merge_runs(spans: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """Sorted (start, end) spans merged where the next starts within ``gap`` of the covered end."""
    runs: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if runs and a - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], max(runs[-1][1], b))
        else:
            runs.append((a, b))
    return runs


def safe_file(root: str, path: str) -> bool:
    """``path`` names a regular file inside ``root`` with no symlink anywhere on the way. Blocking:
    call in a worker thread (a hung mount must not freeze the loop)."""
    try:
        # the index may spell the root as configured (itself perhaps a symlink) or resolved
        real_root = os.path.realpath(root)
        for prefix in (os.path.abspath(root), real_root):
            if path.startswith(prefix + os.sep):
                rel = path[len(prefix) + 1:]
                break
        else:
            return False
        if not rel or ".." in rel.split(os.sep) or os.path.realpath(path) != os.path.join(real_root, rel):
            return False
    except (OSError, ValueError):
        return False
    opened = open_regular(path)
    if opened is None:
        return False
    os.close(opened[0])
    return True


__all__ = ["ApiError", "add_routes", "merge_runs", "safe_file"]
