"""Archived footage's bytes, served by the box: a client's Range becomes one ranged GET on the object
store (clients never talk to the store, never see its URL or credentials).

The size is the index's (the archiver verified the object has exactly those bytes), so a HEAD or a
Range needs no request to the store; only the bytes asked for are fetched.
"""

from __future__ import annotations

from aiohttp import web

from recorderd import metrics
from recorderd.api.errors import ApiError
from recorderd.logging import get_logger
from recorderd.objectstore import ArchiveError, ObjectStore

log = get_logger()
_HEADERS = {"Cache-Control": "private, max-age=3600", "Content-Type": "video/mp4", "Accept-Ranges": "bytes"}


def byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """[start, end) asked for by the Range header; None: the whole object. Raises 416 when it cannot
    be satisfied."""
    try:
        rng = request.http_range
    except ValueError:
        raise _unsatisfiable(size) from None
    start, stop = rng.start, rng.stop
    if start is None and stop is None:
        return None
    if start is not None and start < 0:  # a suffix: the last -start bytes
        start, stop = max(0, size + start), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or stop <= start:
        raise _unsatisfiable(size)
    return start, stop


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, "range_not_satisfiable", f"the recording has {size} bytes",
                    {"Content-Range": f"bytes */{size}"})


async def serve_object(request: web.Request, store: ObjectStore | None, url: str, size: int) -> web.StreamResponse:
    key = store.key_of(url) if store is not None else None
    if store is None or key is None:
        log.warning("archive_failed", step="read", url=url, error="not in the configured archive")
        raise _unavailable("this recording is archived and its archive is not configured")
    span = byte_range(request, size)
    start, stop = span if span is not None else (0, size)
    headers = dict(_HEADERS)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    if request.method == "HEAD":
        headers["Content-Length"] = str(stop - start)
        return web.Response(status=status, headers=headers)
    try:
        if span is not None or size <= 4 * 1024 * 1024:
            body = await store.get_range(key, start, stop)
            return web.Response(status=status, body=body, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = size
        await resp.prepare(request)
        async for chunk in store.stream(key):
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    except ArchiveError as exc:
        metrics.ARCHIVE_FAILURES.labels("read").inc()
        log.warning("archive_failed", step="read", key=key, error=str(exc))
        raise _unavailable("the archive did not answer; try again shortly") from None


def _unavailable(detail: str) -> ApiError:
    return ApiError(503, "archive_unavailable", detail, {"Retry-After": "5"})
