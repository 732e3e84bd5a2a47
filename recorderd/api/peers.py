"""Footage on another node's disk: any node answers for any camera (recorderd.nodes).

A segment row names the node that wrote it. When that is another node (and the bytes are not in the
object store), the node a viewer talks to asks the other one, at its ``node.url``:

- ``GET /internal/v1/segments/{id}.mp4``: the file's bytes, Range passed through (a seek is one ranged
  request here and one there);
- ``GET /internal/v1/fragments?ids=1,2,3``: the packed fragment maps a playlist needs
  (``archive.pack_fragments``), read from the files there.

The viewer's own credentials never leave the node that checked them (tenant, token, session): a peer
request carries the cluster's node key (made once in the ``cluster`` table, ``recorderd.nodes``) and
names a segment id only, which the answering node resolves through the index to a file inside its own
storage root. So a request never turns into a path, here or there.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from recorderd.api.errors import ApiError, not_found, unavailable
from recorderd.archive import pack_fragments, unpack_fragments
from recorderd.fmp4 import FragmentIndex
from recorderd.logging import get_logger

if TYPE_CHECKING:
    from recorderd.api.app import Services
    from recorderd.api.playback import FragmentCache

log = get_logger(component="api")

PEER_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=3, sock_read=15)
CACHE_MAPS = 20_000  # other nodes' fragment maps kept (a few hundred bytes each)
MAX_IDS = 2000  # fragment maps per peer request (a day of 10 s files is ~8,640: a few requests)
_PASS_HEADERS = ("Range", "If-Range")
_BACK_HEADERS = ("Content-Type", "Content-Range", "Content-Length", "Accept-Ranges", "Last-Modified", "ETag")
_MINE = ("SELECT id, path FROM segments WHERE id = ANY($1::bigint[]) AND NOT deleting"
         " AND object_url IS NULL AND node = current_setting('recorderd.node')")


class Peers:
    """The client side (one pooled HTTP session) and the two internal routes."""

    def __init__(self, services: Services, cache: FragmentCache) -> None:
        self.services = services
        self.cache = cache  # this node's files, for the fragments route
        self._maps: OrderedDict[tuple[int, int], FragmentIndex] = OrderedDict()  # (id, size): other nodes'
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(r"/internal/v1/segments/{segment_id:\d{1,18}}.mp4", self.segment)
        app.router.add_get("/internal/v1/fragments", self.fragments)
        app.on_cleanup.append(self._close)

    # ------------------------------------------------------------------ asking another node

    def _peer(self, node: str) -> tuple[str, dict[str, str]]:
        keeper = self.services.keeper
        url = keeper.peer_url(node) if keeper is not None else None
        if keeper is None or keeper.key is None or not url:
            raise unavailable(f"this recording is on node {node}, which this node cannot reach now")
        return url, {"Authorization": f"Node {keeper.key}"}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=PEER_TIMEOUT, auto_decompress=False)
        return self._session

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def media(self, request: web.Request, node: str, segment_id: int) -> web.StreamResponse:
        """The bytes of a segment on ``node``'s disk, streamed through (status and Range as it answered)."""
        base, headers = self._peer(node)
        headers.update({k: v for k in _PASS_HEADERS if (v := request.headers.get(k)) is not None})
        try:
            async with self._client().request(request.method, f"{base}/internal/v1/segments/{segment_id}.mp4",
                                              headers=headers) as up:
                if up.status == 404:
                    raise not_found("recording")
                if up.status not in (200, 206, 416):
                    raise unavailable(f"node {node} answered {up.status} for this recording")
                resp = web.StreamResponse(status=up.status, headers={
                    k: v for k in _BACK_HEADERS if (v := up.headers.get(k)) is not None})
                resp.headers["Cache-Control"] = "private, max-age=3600"
                await resp.prepare(request)
                async for chunk in up.content.iter_chunked(256 * 1024):
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("peer_failed", node=node, what="media", error=type(exc).__name__)
            raise unavailable(f"node {node}, which holds this recording, did not answer") from None

    async def maps(self, rows: Sequence[Any]) -> dict[int, FragmentIndex]:
        """Fragment maps of segments on other nodes' disks (rows with id, node, size_bytes), cached by
        (id, size): a re-encoded file has another size. A node that does not answer leaves its part out
        of the playlist (a gap the viewer sees), not the whole period."""
        out: dict[int, FragmentIndex] = {}
        missing: dict[str, list[int]] = {}
        for r in rows:
            hit = self._maps.get((r["id"], r["size_bytes"]))
            if hit is not None:
                out[r["id"]] = hit
            else:
                missing.setdefault(r["node"], []).append(r["id"])
        sizes = {r["id"]: r["size_bytes"] for r in rows}
        for node, ids in missing.items():
            try:
                packed = await self.fragment_maps(node, ids)
            except ApiError:
                continue
            for seg_id, data in packed.items():
                index = unpack_fragments(data)
                if index is not None and seg_id in sizes:
                    out[seg_id] = self._maps[(seg_id, sizes[seg_id])] = index
        while len(self._maps) > CACHE_MAPS:
            self._maps.popitem(last=False)
        return out

    async def fragment_maps(self, node: str, ids: list[int]) -> dict[int, bytes]:
        """Packed fragment maps of segments on ``node``'s disk; what it could not read is left out."""
        base, headers = self._peer(node)
        out: dict[int, bytes] = {}
        try:
            for n in range(0, len(ids), MAX_IDS):
                chunk = ",".join(str(i) for i in ids[n:n + MAX_IDS])
                async with self._client().get(f"{base}/internal/v1/fragments", params={"ids": chunk},
                                              headers=headers) as up:
                    if up.status != 200:
                        raise unavailable(f"node {node} answered {up.status} for fragment maps")
                    body: dict[str, str] = await up.json()
                out.update({int(k): base64.b64decode(v) for k, v in body.items()})
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("peer_failed", node=node, what="fragments", error=type(exc).__name__)
            raise unavailable(f"node {node}, which holds part of this period, did not answer") from None
        return out

    # ------------------------------------------------------------------ answering another node

    def _check(self, request: web.Request) -> None:
        keeper = self.services.keeper
        given = request.headers.get("Authorization", "")
        if keeper is None or keeper.key is None or not given.startswith("Node ") or not hmac.compare_digest(
                given[5:].encode(), keeper.key.encode()):
            raise ApiError(401, "unauthorized", "node requests need the cluster's node key")

    async def _mine(self, ids: list[int]) -> list[Any]:
        try:
            async with self.services.db.acquire("api") as conn:
                return list(await conn.fetch(_MINE, ids, timeout=10))
        except Exception as exc:  # DatabaseUnavailable, a timeout: the asking node says so
            raise unavailable(f"the index did not answer ({type(exc).__name__})") from None

    async def segment(self, request: web.Request) -> web.StreamResponse:
        from recorderd.api.cameras import safe_file

        self._check(request)
        rows = await self._mine([int(request.match_info["segment_id"])])
        root = str(self.services.config.storage.root)
        if not rows or not await asyncio.to_thread(safe_file, root, rows[0]["path"]):
            raise not_found("recording")
        return web.FileResponse(rows[0]["path"], headers={"Content-Type": "video/mp4"})

    async def fragments(self, request: web.Request) -> web.Response:
        self._check(request)
        try:
            ids = [int(i) for i in request.query.get("ids", "").split(",") if i][:MAX_IDS]
        except ValueError:
            raise ApiError(400, "bad_request", "ids: comma-separated segment ids") from None
        rows = await self._mine(ids)
        root = str(self.services.config.storage.root)

        def read() -> dict[str, str]:
            out = {}
            for r in rows:
                index = self.cache.lookup(root, r["path"])
                if index is not None and index.fragments:
                    out[str(r["id"])] = base64.b64encode(pack_fragments(index)).decode()
            return out

        return web.json_response(await asyncio.to_thread(read))
