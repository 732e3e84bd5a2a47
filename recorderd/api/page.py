"""The web page: ``/`` (the camera grid) and ``/cameras/<id>`` (one camera) serve the same
``index.html``; its scripts, styles and the vendored hls.js are at ``/static/<name>``.

The files ship inside the package (``recorderd/web/``) and are read once into memory: a request only
ever looks a name up in that table, so no request turns into a filesystem path, and an NVR box with no
internet serves everything itself. Responses carry a strict Content-Security-Policy (nothing from
other origins, no inline script), ``nosniff``, no framing and no ``Referer`` (a signed media URL must
not travel to another site).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

__all__ = ["SECURITY_HEADERS", "StaticFiles", "add_routes"]

_NAME_RE: Final = re.compile(r"^(vendor/)?[A-Za-z0-9][A-Za-z0-9._-]{0,80}\Z")
_TYPES: Final = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".LICENSE": "text/plain; charset=utf-8",
    "VERSIONS": "text/plain; charset=utf-8",
}
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
              "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: Final = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


class StaticFiles:
    """Every page file, read once from the package; looked up by exact name only."""

    def __init__(self, package: str = "recorderd", folder: str = "web") -> None:
        self.assets: dict[str, Asset] = {}
        root = resources.files(package).joinpath(folder)
        for sub in ("", "vendor/"):
            base = root.joinpath(sub) if sub else root
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                name = sub + entry.name
                kind = next((t for ext, t in _TYPES.items() if entry.name.endswith(ext)), None)
                if entry.is_file() and kind is not None and _NAME_RE.match(name):
                    body = entry.read_bytes()
                    self.assets[name] = Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    def response(self, request: web.Request, name: str) -> web.Response:
        asset = self.assets.get(name)
        if asset is None:
            raise web.HTTPNotFound(text="no such file\n", headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def add_routes(app: web.Application) -> None:
    files = StaticFiles()

    async def index(request: web.Request) -> web.Response:
        return files.response(request, "index.html")

    async def static(request: web.Request) -> web.Response:
        return files.response(request, request.match_info["name"])

    app.router.add_get("/", index)
    app.router.add_get("/cameras/{camera_id:[^/]{1,64}}", index)  # bookmarkable; the page asks the API
    app.router.add_get("/static/{name:(vendor/)?[^/]{1,81}}", static)
