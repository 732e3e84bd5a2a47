"""Playback: ``GET /api/v1/cameras/{id}/playlist.m3u8?from=&to=``, an HLS playlist over the recorded
files themselves (byte ranges at fragment boundaries: no re-encode, no temporary remux).

Each file's fragment index is read once (``recorderd.fmp4.scan`` in a worker thread) and kept while
the file's size and mtime stay the same, so a seek or a reload of a long period costs one query and
no file reads. The media URLs are the signed per-file URLs of ``/api/v1/media/<id>.mp4``.

A period that reaches now also lists the file FFmpeg is writing, up to its last complete fragment
(``build`` holds back a last media segment that could still grow). That file has no index row yet, so
its URL is ``/api/v1/media/live-<key>.mp4``: a random key the server maps to the path (nothing in the
URL is a path), kept after the file closes so the URLs a player already holds stay the same on the
next reload. Its start is exact when the run already closed a file (files of a run tile); for a run's
first file it is estimated from the file's last write minus the media it holds (off by at most the
fragment being written, one GOP), and becomes the index's exact time once the file closes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web

from recorderd.api.cameras import QUERY_TIMEOUT, CameraApi, period, safe_file
from recorderd.api.errors import bad_request, not_found
from recorderd.api.playlist import SegmentFile, build
from recorderd.archive import unpack_fragments
from recorderd.fmp4 import FragmentIndex, scan

if TYPE_CHECKING:
    from recorderd.api.app import Services
    from recorderd.api.auth import Principal, UrlSigner
    from recorderd.api.peers import Peers
    from recorderd.events import OpenFile

MAX_PERIOD = 7 * 86400.0  # one playlist covers at most a week
CACHE_FILES = 20_000  # fragment indexes kept (a few KB each for 1 h files)
LIVE_KEYS = 4096  # live-file keys kept: a few per camera outlive their file's close
UNINDEXED_SECONDS = 120.0  # a closed file listed before it was indexed is listed so for this long

_FILES_SQL = """
SELECT id, start_time, end_time, run_id, path, object_url, fragments, node, size_bytes FROM segments
WHERE camera_id = $1 AND NOT deleting AND end_time > $2 AND start_time < $3
  AND start_time >= $2 - make_interval(secs => 1 + coalesce(
        (SELECT max(duration_seconds) FROM segments WHERE camera_id = $1), 0))
ORDER BY start_time"""


def add_routes(app: web.Application, services: Services, signer: UrlSigner, peers: Peers) -> None:
    api = PlaybackApi(services, signer, peers)
    app.router.add_get("/api/v1/cameras/{camera_id}/playlist.m3u8", api.playlist)
    app.router.add_get("/api/v1/media/live-{key:[0-9a-f]{32}}.mp4", api.live_media)


class LiveFile(NamedTuple):
    key: str
    camera_id: str
    path: str
    run_id: str
    start: float  # as last listed
    seen: float  # monotonic time it was last listed as not indexed


class Unindexed(NamedTuple):
    """A file to list before the index holds it: being written, or closed a moment ago."""

    path: str
    run_id: str
    start: float | None  # None: to be estimated from the file (a run's first file, being written)
    writing: bool


class LiveKeys:
    """Files listed while not indexed yet (being written, or closed a moment ago): their URL keys,
    and what was listed for them, so the next playlist shows the same file the same way."""

    def __init__(self, limit: int = LIVE_KEYS) -> None:
        self.limit = limit
        self._by_path: OrderedDict[str, LiveFile] = OrderedDict()
        self._by_key: dict[str, LiveFile] = {}

    def remember(self, camera_id: str, path: str, run_id: str, start: float) -> str:
        old = self._by_path.get(path)
        key = old.key if old is not None else secrets.token_hex(16)
        f = LiveFile(key, camera_id, path, run_id, start, time.monotonic())
        self._by_path[path] = self._by_key[key] = f
        self._by_path.move_to_end(path)
        while len(self._by_path) > self.limit:
            _, gone = self._by_path.popitem(last=False)
            self._by_key.pop(gone.key, None)
        return key

    def known(self, path: str) -> str | None:
        f = self._by_path.get(path)
        return f.key if f is not None else None

    def file(self, key: str) -> LiveFile | None:
        return self._by_key.get(key)

    def unindexed(self, camera_id: str, indexed: set[str], within: float = UNINDEXED_SECONDS) -> list[LiveFile]:
        """Files of ``camera_id`` listed lately that the index still does not hold, oldest first."""
        horizon = time.monotonic() - within
        return sorted((f for f in self._by_path.values()
                       if f.seen >= horizon and f.camera_id == camera_id and f.path not in indexed),
                      key=lambda f: f.start)

    def get(self, path: str) -> LiveFile | None:
        return self._by_path.get(path)


class FragmentCache:
    """Fragment indexes by path, valid while the file is the same inode with the same size and mtime;
    least recently used go first.

    A path is checked (``safe_file``: inside the root, no symlink) when it is first scanned or its
    file changed; a hit is the very inode that was checked, so a day of 10 s files costs one ``stat``
    each on a reload, not a ``realpath`` and an ``open``.
    """

    def __init__(self, limit: int = CACHE_FILES) -> None:
        self.limit = limit
        self._items: OrderedDict[str, tuple[tuple[int, int, int, int], FragmentIndex]] = OrderedDict()
        self._archived: OrderedDict[int, FragmentIndex] = OrderedDict()

    def archived(self, segment_id: int, packed: bytes | None) -> FragmentIndex | None:
        """An archived segment's map, stored with its row at upload (no request to the store)."""
        hit = self._archived.get(segment_id)
        if hit is not None:
            self._archived.move_to_end(segment_id)
            return hit
        index = unpack_fragments(packed) if packed is not None else None
        if index is not None:
            self._archived[segment_id] = index
            while len(self._archived) > self.limit:
                self._archived.popitem(last=False)
        return index

    def lookup(self, root: str, path: str) -> FragmentIndex | None:
        """Blocking (stat, maybe a check and a scan): call in a worker thread."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._items.get(path)
        if hit is not None and hit[0] == key:
            self._items.move_to_end(path)
            return hit[1]
        if not safe_file(root, path):
            return None
        same_file = hit is not None and hit[0][:2] == key[:2]
        index = scan(path, previous=hit[1] if same_file and hit is not None else None)
        if index is None:
            return None
        self._items[path] = (key, index)
        self._items.move_to_end(path)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return index


class PlaybackApi(CameraApi):
    def __init__(self, services: Services, signer: UrlSigner, peers: Peers) -> None:
        super().__init__(services, signer, peers)
        self.cache = FragmentCache()
        self.live_keys = LiveKeys()

    async def playlist(self, request: web.Request) -> web.Response:
        from recorderd.api.app import principal_of

        cam = self.camera(request)
        start, end = period(request, required=True)
        if (end - start).total_seconds() > MAX_PERIOD:
            raise bad_request("to", f"a playlist covers at most {MAX_PERIOD / 86400:g} days")
        open_ended = end.timestamp() > time.time()
        writing = self.services.open_file(cam.id) if open_ended else None
        async with self.conn() as conn:
            rows = await conn.fetch(_FILES_SQL, cam.id, start, end, timeout=QUERY_TIMEOUT)
        root = str(self.services.config.storage.root)
        me = self.services.config.node.id
        unindexed = self._unindexed(cam.id, {r["path"] for r in rows if r["node"] == me},
                                    writing) if open_ended else []
        assert self.peers is not None
        remote = await self.peers.maps([r for r in rows if r["object_url"] is None and r["node"] != me])

        def indexes() -> tuple[list[FragmentIndex | None], list[tuple[FragmentIndex, float] | None]]:
            return ([self.cache.archived(r["id"], r["fragments"]) if r["object_url"] is not None
                     else remote.get(r["id"]) if r["node"] != me
                     else self.cache.lookup(root, r["path"]) for r in rows],
                    [self._with_mtime(root, u.path) for u in unindexed])

        found, extra = await asyncio.to_thread(indexes)
        files = [SegmentFile(r["id"], r["start_time"].timestamp(), r["end_time"].timestamp(),
                             str(r["run_id"]) if r["run_id"] is not None else None, idx)
                 for r, idx in zip(rows, found, strict=True) if idx is not None and idx.fragments]
        principal = principal_of(request)
        urls: dict[int, str] = {}
        for r in rows:  # a file first listed before it was indexed keeps its URL
            key = self.live_keys.known(r["path"]) if r["node"] == me else None
            if key is not None:
                urls[r["id"]] = self._live_url(key, principal)
        for n, (u, live) in enumerate(zip(unindexed, extra, strict=True)):
            if live is None:
                continue
            index, mtime = live
            begin = u.start if u.start is not None else mtime - index.duration
            if files and begin < files[-1].end:
                if not u.writing:
                    continue  # listed before, but the index now covers its time: stale
                begin = files[-1].end  # an estimate never overlaps what is indexed
            files.append(SegmentFile(-1 - n, begin, begin + index.duration, u.run_id, index))
            urls[-1 - n] = self._live_url(self.live_keys.remember(cam.id, u.path, u.run_id, begin), principal)
        # a day of 10 s files is ~26,000 media segments: tens of ms of string work, off the loop
        text = await asyncio.to_thread(build, files, start.timestamp(), end.timestamp(), open_ended=open_ended,
                                       url=lambda seg_id: urls.get(seg_id) or self.media_url(seg_id, principal))
        return web.Response(text=text, content_type="application/vnd.apple.mpegurl",
                            headers={"Cache-Control": "no-store"})

    def _unindexed(self, camera_id: str, indexed: set[str], writing: OpenFile | None) -> list[Unindexed]:
        """Files to list that the index does not hold yet, oldest first: those listed so that closed a
        moment ago, then the one being written (its start, once estimated, stays as listed)."""
        out = [Unindexed(f.path, f.run_id, f.start, False) for f in self.live_keys.unindexed(camera_id, indexed)
               if writing is None or f.path != writing.path]
        if writing is not None and writing.path not in indexed:
            listed = self.live_keys.get(writing.path)
            start = writing.start if writing.start is not None else listed.start if listed is not None else None
            out.append(Unindexed(writing.path, writing.run_id, start, True))
        return out

    def _with_mtime(self, root: str, path: str) -> tuple[FragmentIndex, float] | None:
        """Blocking: the file's fragment index and mtime, or None when it has no fragment (or is gone)."""
        index = self.cache.lookup(root, path)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        return (index, mtime) if index is not None and index.fragments else None

    def _live_url(self, key: str, principal: Principal) -> str:
        path = f"/api/v1/media/live-{key}.mp4"
        return f"{path}?{self.signer.sign(path, principal)}"

    async def live_media(self, request: web.Request) -> web.StreamResponse:
        """A file listed while it was being written: its bytes so far (complete fragments never change)."""
        from recorderd.api.app import principal_of

        found = self.live_keys.file(request.match_info["key"])
        cam = self.services.config.camera(found.camera_id) if found is not None else None
        if found is None or cam is None or not principal_of(request).sees(cam.tenant):
            raise not_found("recording")
        if not await asyncio.to_thread(safe_file, str(self.services.config.storage.root), found.path):
            raise not_found("recording")
        return web.FileResponse(found.path, headers={"Cache-Control": "no-cache", "Content-Type": "video/mp4"})
