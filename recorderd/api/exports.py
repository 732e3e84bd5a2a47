"""Export: ``GET /api/v1/cameras/{id}/export.mp4?from=&to=``, one MP4 of a period as an attachment.

The period is cut by stream copy (``recorderd.export``: it starts at the keyframe at or before
``from``) into a temporary file under ``<root>/.recorderd/exports/``, served with sendfile and removed
once sent. A temporary file rather than a pipe because an MP4 that players can seek in from the start
needs its index written first (``+faststart``), which needs a seekable output; on the footage disk
because a day of footage can be tens of GB, too much for a tmpfs.

Cutting costs disk bandwidth that recording also needs, so cuts (exports and clip creations alike)
share ``CutSlots``: ``http.max_exports`` at a time, and one more is answered ``429`` with
``Retry-After`` at once instead of queueing behind them. This module also maps the export and clip
errors of ``recorderd.export``/``recorderd.clips`` to API errors, for both resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from recorderd import clips, export, layout, metrics
from recorderd.api.cameras import CameraApi, period
from recorderd.api.errors import ApiError, bad_request, not_found, unavailable
from recorderd.db import DatabaseUnavailable
from recorderd.logging import get_logger

if TYPE_CHECKING:
    from recorderd.api.app import Services
    from recorderd.api.auth import UrlSigner

log = get_logger(component="http")

EXPORTS_DIR = f"{layout.STATE_DIR}/exports"  # under the storage root
RETRY_AFTER = 5  # seconds a client told 429 waits


def add_routes(app: web.Application, services: Services, signer: UrlSigner, slots: CutSlots) -> None:
    api = ExportApi(services, signer, slots)
    app.router.add_get("/api/v1/cameras/{camera_id}/export.mp4", api.export)
    app.on_startup.append(api.remove_stale)


class CutSlots:
    """How many cuts (exports, clip creations) run at once; the limit is read live from the config."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.busy = 0

    @contextlib.contextmanager
    def take(self, kind: str) -> Iterator[None]:
        """A slot for the block, or ``429`` at once when all are taken."""
        limit = self._limit()
        if self.busy >= limit:
            metrics.API_CUTS.labels(kind, "busy").inc()
            raise ApiError(429, "too_many_cuts",
                           f"{self.busy} exports or clip cuts are running (http.max_exports is {limit}); "
                           f"retry in {RETRY_AFTER} s", {"Retry-After": str(RETRY_AFTER)})
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


def domain_error(exc: Exception) -> ApiError:
    """The API answer for an export or clip error. Details that could carry a path are logged, not sent."""
    if isinstance(exc, clips.BadName):
        return bad_request("name", str(exc))
    if isinstance(exc, export.BadPeriod):
        return bad_request("to", str(exc))
    if isinstance(exc, clips.UnknownCamera):
        return not_found("camera")
    if isinstance(exc, clips.ClipNotFound):
        return not_found("clip")
    if isinstance(exc, clips.ClipLimit):
        return ApiError(409, "clip_limit", str(exc))
    if isinstance(exc, export.NoFootage):
        return ApiError(422, "no_footage", "the index has no footage of this camera in the period")
    if isinstance(exc, clips.StorageUnavailable):
        log.error("http_storage_unavailable", error=str(exc))
        return ApiError(503, "storage_unavailable", "the storage volume is not available (see the daemon log)",
                        {"Retry-After": "30"})
    if isinstance(exc, DatabaseUnavailable):
        return unavailable()
    log.error("http_cut_failed", error=str(exc), kind=type(exc).__name__)
    return ApiError(500, "cut_failed", "the footage could not be cut (logged as http_cut_failed)")


def attachment(filename: str) -> str:
    """A ``Content-Disposition`` that every browser saves under ``filename`` (RFC 6266 / 5987)."""
    folded = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()  # é -> e
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", folded).strip("._") or "footage.mp4"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def compact(epoch_seconds: float) -> str:
    """``20261121T100000Z``: a time for a file name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_seconds))


class ExportApi(CameraApi):
    def __init__(self, services: Services, signer: UrlSigner, slots: CutSlots) -> None:
        super().__init__(services, signer)
        self.slots = slots

    def _dir(self) -> Path:
        return self.services.config.storage.root / EXPORTS_DIR

    async def remove_stale(self, _app: web.Application) -> None:
        """Exports a crash left behind are never going to be sent: remove them at start."""
        def clean() -> int:
            n = 0
            with contextlib.suppress(OSError), os.scandir(self._dir()) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                            n += 1
            return n

        removed = await asyncio.to_thread(clean)
        if removed:
            log.info("exports_stale_removed", files=removed)

    async def export(self, request: web.Request) -> web.StreamResponse:
        cam = self.camera(request)
        start, end = period(request, required=True)
        if (end - start).total_seconds() > export.MAX_PERIOD_SECONDS:
            raise bad_request("to", f"an export covers at most {export.MAX_PERIOD_SECONDS / 3600:g} h")
        root = self.services.config.storage.root
        with self.slots.take("export"):
            directory = self._dir()
            try:
                await asyncio.to_thread(_make_dir, root, directory)
            except clips.StorageUnavailable as exc:
                metrics.API_CUTS.labels("export", "error").inc()
                raise domain_error(exc) from None
            dest = directory / f"{cam.id}-{uuid.uuid4().hex}.mp4"
            clock = time.monotonic()
            try:
                async with self.conn() as conn:
                    files = await export.segments_for(conn, cam.id, start, end)
                if not files:
                    raise export.NoFootage("no footage")
                result = await export.cut(files, start, end, dest, root=root,
                                          store=self.services.archive_store)
            except ApiError:
                metrics.API_CUTS.labels("export", "error").inc()
                raise
            except (export.ExportError, DatabaseUnavailable) as exc:
                metrics.API_CUTS.labels("export", "error").inc()
                raise domain_error(exc) from None
            try:
                name = f"{cam.id}_{compact(result.start)}_{compact(result.end)}.mp4"
                response = web.FileResponse(dest, headers={
                    "Content-Type": "video/mp4", "Content-Disposition": attachment(name),
                    "Cache-Control": "no-store",
                    # what the file holds, for programs: the real start (a keyframe) and the holes
                    "X-Footage-Start": layout.iso(result.start), "X-Footage-End": layout.iso(result.end),
                    "X-Footage-Gaps": str(len(result.gaps))})
                await response.prepare(request)
                await response.write_eof()
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(dest)
        metrics.API_CUTS.labels("export", "ok").inc()
        log.info("export_served", camera_id=cam.id, start=layout.iso(result.start), end=layout.iso(result.end),
                 size_bytes=result.size_bytes, gaps=len(result.gaps),
                 seconds=round(time.monotonic() - clock, 3))
        return response


def _make_dir(root: Path, directory: Path) -> None:
    """``<root>/.recorderd/exports``, only on the mounted volume, never through a symlink (exports are
    unlinked by name). Raises ``clips.StorageUnavailable``."""
    try:
        os.stat(root / clips.VOLUME_MARKER)
    except OSError:
        raise clips.StorageUnavailable(f"storage {root} is not mounted (no {clips.VOLUME_MARKER})") from None
    for p in (directory.parent, directory):
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(p, 0o750)
            ok = not os.path.islink(p) and p.is_dir()
        except OSError as exc:
            raise clips.StorageUnavailable(f"cannot create {p}: {exc.strerror or exc}") from None
        if not ok:
            raise clips.StorageUnavailable(f"{p} is not a directory (a symlink?)")
