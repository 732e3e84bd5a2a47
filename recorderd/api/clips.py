"""Clips over HTTP: ``POST /api/v1/clips``, ``GET /api/v1/clips[?camera_id=]``, ``GET``, ``PATCH`` (rename)
and ``DELETE /api/v1/clips/{id}``, and the file at ``GET /api/v1/clips/{id}.mp4``.

The work is ``recorderd.clips`` (the same code as ``recorderd clip``): this module checks who may
do what and maps the answers. A clip of a camera outside the caller's tenants is "no such clip", like
one that does not exist; changing clips needs a token with ``clips: true`` (``403`` otherwise, but
only for clips the caller can see). A clip's JSON carries a signed ``url`` for its file, so a browser
can download it with a plain link.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from recorderd import clips, export, layout, metrics
from recorderd.api.cameras import CameraApi, safe_file
from recorderd.api.errors import ApiError, bad_request, not_found
from recorderd.api.exports import CutSlots, attachment, domain_error
from recorderd.db import DatabaseUnavailable
from recorderd.report import parse_time

if TYPE_CHECKING:
    from recorderd.api.app import Services
    from recorderd.api.auth import Principal, UrlSigner

CLIP_ID = "{clip_id:[0-9]{1,18}}"


def add_routes(app: web.Application, services: Services, signer: UrlSigner, slots: CutSlots) -> None:
    api = ClipApi(services, signer, slots)
    r = app.router
    r.add_post("/api/v1/clips", api.create)
    r.add_get("/api/v1/clips", api.list_clips)
    r.add_get(f"/api/v1/clips/{CLIP_ID}", api.get_clip)
    r.add_patch(f"/api/v1/clips/{CLIP_ID}", api.rename)
    r.add_delete(f"/api/v1/clips/{CLIP_ID}", api.delete)
    r.add_get(f"/api/v1/clips/{CLIP_ID}.mp4", api.download)


def clip_file_path(clip_id: int) -> str:
    """The request path of a clip's file (signed URLs cover exactly this)."""
    return f"/api/v1/clips/{clip_id}.mp4"


class ClipApi(CameraApi):
    def __init__(self, services: Services, signer: UrlSigner, slots: CutSlots) -> None:
        super().__init__(services, signer)
        self.slots = slots

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _principal(request: web.Request) -> Principal:
        from recorderd.api.app import principal_of

        return principal_of(request)

    def _tenants(self, request: web.Request) -> list[str] | None:
        tenants = self._principal(request).tenants
        return None if tenants is None else sorted(tenants)

    def _may_change(self, request: web.Request) -> None:
        if not self._principal(request).clips:
            raise ApiError(403, "forbidden", "this token may not create, rename or delete clips "
                                             "(http.tokens[].clips is false)")

    def _json(self, request: web.Request, clip: clips.Clip) -> dict[str, Any]:
        doc = clip.to_json()
        path = clip_file_path(clip.id)
        doc["url"] = f"{path}?{self.signer.sign(path, self._principal(request))}"
        return doc

    async def _call(self, coro: Any) -> Any:
        """Run a ``recorderd.clips`` call; its errors become API errors."""
        try:
            return await coro
        except (export.ExportError, DatabaseUnavailable) as exc:
            raise domain_error(exc) from None

    @staticmethod
    def _clip_id(request: web.Request) -> int:
        return int(request.match_info["clip_id"])

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            doc = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request("body", "is not JSON") from None
        if not isinstance(doc, dict):
            raise bad_request("body", "must be a JSON object")
        return doc

    # ------------------------------------------------------------------ handlers

    async def create(self, request: web.Request) -> web.Response:
        doc = await self._body(request)
        camera_id = doc.get("camera_id")
        if not isinstance(camera_id, str) or not camera_id:
            raise bad_request("camera_id", "is required (a camera id)")
        cam = self.services.config.camera(camera_id)
        if cam is None or not self._principal(request).sees(cam.tenant):
            raise not_found("camera")
        self._may_change(request)
        start, end = _period(doc)
        name = doc.get("name")
        if name is None:
            name = f"{cam.name or cam.id} {layout.iso(start.timestamp())}"
        with self.slots.take("clip"):
            try:
                clip, result = await clips.create_clip(
                    self.services.db, self.services.config, cam.id, start, end, name,
                    created_by=self._principal(request).name)
            except (export.ExportError, DatabaseUnavailable) as exc:
                metrics.API_CUTS.labels("clip", "error").inc()
                raise domain_error(exc) from None
        metrics.API_CUTS.labels("clip", "ok").inc()
        out = self._json(request, clip)
        out["gaps"] = result.to_json()["gaps"]
        return web.json_response(out, status=201, headers={"Location": f"/api/v1/clips/{clip.id}"})

    async def list_clips(self, request: web.Request) -> web.Response:
        camera_id = request.query.get("camera_id")
        found = await self._call(clips.list(self.services.db, camera_id, self._tenants(request)))
        if camera_id is not None and not found:
            # clips of a camera since removed from the config are still listed (they are never swept);
            # an empty answer for a camera that is not the caller's would tell it exists
            cam = self.services.config.camera(camera_id)
            if cam is None or not self._principal(request).sees(cam.tenant):
                raise not_found("camera")
        return web.json_response({"clips": [self._json(request, c) for c in found]})

    async def get_clip(self, request: web.Request) -> web.Response:
        clip = await self._call(clips.get(self.services.db, self._clip_id(request), tenants=self._tenants(request)))
        return web.json_response(self._json(request, clip))

    async def rename(self, request: web.Request) -> web.Response:
        clip_id = self._clip_id(request)
        # visibility first: a clip the caller cannot see is 404 whatever the token may do
        await self._call(clips.get(self.services.db, clip_id, tenants=self._tenants(request)))
        self._may_change(request)
        doc = await self._body(request)
        if "name" not in doc:
            raise bad_request("name", "is required")
        clip = await self._call(clips.rename(self.services.db, clip_id, doc["name"],
                                             tenants=self._tenants(request)))
        return web.json_response(self._json(request, clip))

    async def delete(self, request: web.Request) -> web.Response:
        clip_id = self._clip_id(request)
        await self._call(clips.get(self.services.db, clip_id, tenants=self._tenants(request)))
        self._may_change(request)
        await self._call(clips.delete(self.services.db, clip_id, self.services.config.storage.root,
                                      tenants=self._tenants(request)))
        return web.Response(status=204)

    async def download(self, request: web.Request) -> web.StreamResponse:
        """The clip's file (sendfile; Range, HEAD and If-Range by aiohttp's FileResponse)."""
        clip = await self._call(clips.get(self.services.db, self._clip_id(request), tenants=self._tenants(request)))
        root = str(self.services.config.storage.root)
        if not await asyncio.to_thread(safe_file, root, clip.path):
            raise not_found("clip file")
        name = f"{clip.name}.mp4" if not clip.name.lower().endswith(".mp4") else clip.name
        return web.FileResponse(clip.path, headers={
            "Content-Type": "video/mp4", "Content-Disposition": attachment(name),
            "Cache-Control": "private, max-age=3600"})


def _period(doc: dict[str, Any]) -> tuple[datetime, datetime]:
    """``from``/``to`` of a JSON body as UTC datetimes; 400 naming the parameter otherwise."""
    out: list[datetime] = []
    for key in ("from", "to"):
        text = doc.get(key)
        if not isinstance(text, str) or not text.strip():
            raise bad_request(key, "is required (ISO 8601, e.g. 2026-11-21T10:00:00Z)")
        try:
            out.append(parse_time(text, end_of_day=key == "to"))
        except (ValueError, OverflowError):
            raise bad_request(key, "is not an ISO 8601 time (e.g. 2026-11-21T10:00:00Z)") from None
    if out[0] >= out[1]:
        raise bad_request("to", "must be after from")
    if (out[1] - out[0]).total_seconds() > clips.MAX_CLIP_SECONDS:
        raise bad_request("to", f"a clip covers at most {clips.MAX_CLIP_SECONDS / 3600:g} h")
    return out[0], out[1]
