"""Playback: ``GET /api/v1/cameras/{id}/playlist.m3u8?from=&to=``, an HLS playlist over the recorded
files themselves (byte ranges at fragment boundaries: no re-encode, no temporary remux).

Each file's fragment index is read once (``recorderd.fmp4.scan`` in a worker thread) and kept while
the file's size and mtime stay the same, so a seek or a reload of a long period costs one query and
no file reads. The media URLs are the signed per-file URLs of ``/api/v1/media/<id>.mp4``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from aiohttp import web

from recorderd.api.cameras import QUERY_TIMEOUT, CameraApi, period, safe_file
from recorderd.api.playlist import SegmentFile, build
from recorderd.fmp4 import FragmentIndex, scan

if TYPE_CHECKING:
    from recorderd.api.app import Services
    from recorderd.api.auth import UrlSigner

MAX_PERIOD = 7 * 86400.0  # one playlist covers at most a week
CACHE_FILES = 20_000  # fragment indexes kept (a few KB each for 1 h files)

_FILES_SQL = """
SELECT id, start_time, end_time, run_id, path FROM segments
WHERE camera_id = $1 AND NOT deleting AND end_time > $2 AND start_time < $3
  AND start_time >= $2 - make_interval(secs => 1 + coalesce(
        (SELECT max(duration_seconds) FROM segments WHERE camera_id = $1), 0))
ORDER BY start_time"""


def add_routes(app: web.Application, services: Services, signer: UrlSigner) -> None:
    api = PlaybackApi(services, signer)
    app.router.add_get("/api/v1/cameras/{camera_id}/playlist.m3u8", api.playlist)


class FragmentCache:
    """Fragment indexes by path, valid while (size, mtime) match; least recently used go first."""

    def __init__(self, limit: int = CACHE_FILES) -> None:
        self.limit = limit
        self._items: OrderedDict[str, tuple[int, int, FragmentIndex]] = OrderedDict()

    def lookup(self, root: str, path: str) -> FragmentIndex | None:
        """Blocking (stat, maybe a scan): call in a worker thread."""
        if not safe_file(root, path):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        hit = self._items.get(path)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            self._items.move_to_end(path)
            return hit[2]
        index = scan(path, previous=hit[2] if hit is not None else None)
        if index is None:
            return None
        self._items[path] = (st.st_size, st.st_mtime_ns, index)
        self._items.move_to_end(path)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return index


class PlaybackApi(CameraApi):
    def __init__(self, services: Services, signer: UrlSigner) -> None:
        super().__init__(services, signer)
        self.cache = FragmentCache()

    async def playlist(self, request: web.Request) -> web.Response:
        from recorderd.api.app import principal_of

        cam = self.camera(request)
        start, end = period(request, required=True)
        if (end - start).total_seconds() > MAX_PERIOD:
            from recorderd.api.errors import bad_request

            raise bad_request("to", f"a playlist covers at most {MAX_PERIOD / 86400:g} days")
        async with self.conn() as conn:
            rows = await conn.fetch(_FILES_SQL, cam.id, start, end, timeout=QUERY_TIMEOUT)
        root = str(self.services.config.storage.root)

        def indexes() -> list[FragmentIndex | None]:
            return [self.cache.lookup(root, r["path"]) for r in rows]

        found = await asyncio.to_thread(indexes)
        files = [SegmentFile(r["id"], r["start_time"].timestamp(), r["end_time"].timestamp(),
                             str(r["run_id"]) if r["run_id"] is not None else None, idx)
                 for r, idx in zip(rows, found, strict=True) if idx is not None and idx.fragments]
        principal = principal_of(request)
        open_ended = end.timestamp() > time.time()
        text = build(files, start.timestamp(), end.timestamp(), open_ended=open_ended,
                     url=lambda seg_id: self.media_url(seg_id, principal))
        return web.Response(text=text, content_type="application/vnd.apple.mpegurl",
                            headers={"Cache-Control": "no-store"})
