"""The daemon's one HTTP listener (aiohttp on the daemon's own loop): ``/metrics``, ``/healthz`` and
the footage API under ``/api/v1/``.

Serving must never hurt recording: handlers only await (database queries, file checks in worker
threads, sendfile for bytes), exports are bounded, and no client behaviour can raise out of a handler.
``/metrics`` and ``/healthz`` stay open; everything under ``/api/`` needs a token once tokens are
configured (a media URL may carry a short-lived signature instead, for players that cannot send
headers). A scope that does not cover a camera answers exactly like a camera that does not exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from recorderd import metrics
from recorderd.api.auth import ANONYMOUS, Authenticator, Principal, UrlSigner
from recorderd.api.errors import ApiError, json_error
from recorderd.api.session import COOKIE, SessionKeeper, load_key, same_origin
from recorderd.config import Config
from recorderd.db import Database
from recorderd.events import OpenFile
from recorderd.health import CHECKS, check_of
from recorderd.logging import get_logger
from recorderd.nodes import LeaseKeeper
from recorderd.objectstore import ObjectStore
from recorderd.retention import CameraUsage

log = get_logger(component="http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_HEADER_BYTES = 8190
# paths a signed URL may open instead of a token: files a <video> element, ffmpeg or a download link
# fetch without headers (segment media, a clip's file)
_SIGNABLE = re.compile(r"^/api/v1/(media/[^/]+\.mp4|clips/[0-9]{1,18}\.mp4)\Z")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SESSION_PATH = "/api/v1/session"  # signing in and out needs no credentials


class Services(Protocol):
    """What the API needs of the daemon (``recorderd.daemon.Daemon`` is one)."""

    @property
    def config(self) -> Config: ...
    @property
    def db(self) -> Database: ...
    def snapshot(self) -> dict[str, Any]: ...
    def health(self) -> list[str]: ...
    def camera_usage(self) -> Mapping[str, CameraUsage]: ...
    async def clips_used(self, conn: Any, camera_id: str) -> int: ...
    def open_file(self, camera_id: str) -> OpenFile | None: ...
    @property
    def archive_store(self) -> ObjectStore | None: ...
    @property
    def keeper(self) -> LeaseKeeper | None: ...  # None: a single node
    def recorded_by(self, camera_id: str) -> tuple[str | None, str | None]: ...


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``"127.0.0.1:9108"``, ``"[::1]:9108"``, ``"0.0.0.0:9108"``; ``"*:9108"`` or ``":9108"`` bind all."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (None if host in ("", "*") else host), int(port)


def principal_of(request: web.Request) -> Principal:
    p: Principal = request["principal"]
    return p


class HttpServer:
    """Bind ``listen`` and serve until ``close()``. ``health`` returns the current degraded reasons; it
    is called per request, so it must be cheap and must not block. ``services`` (the daemon) enables
    the API; without it only ``/metrics`` and ``/healthz`` are served."""

    def __init__(self, listen: str, health: Callable[[], list[str]], *, services: Services | None = None,
                 registry: CollectorRegistry = REGISTRY, signer: UrlSigner | None = None,
                 sessions: SessionKeeper | None = None) -> None:
        self._host, self._port = parse_listen(listen)
        self._listen = listen
        self._health = health
        self._registry = registry
        self.services = services
        self.signer = signer or UrlSigner()
        self.sessions = sessions or SessionKeeper(load_key(None))
        self._exposition = make_aiohttp_handler(registry)  # prometheus-client's own (gzip, OpenMetrics)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.app = self._build()

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        server = self._site._server if self._site is not None else None
        sockets = getattr(server, "sockets", None)
        if not sockets:
            raise RuntimeError("server not started")
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and listen; raises OSError (e.g. address in use) so the daemon can report it."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0,
                               max_line_size=MAX_HEADER_BYTES, max_field_size=MAX_HEADER_BYTES)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        log.info("http_listening", listen=self._listen, port=self.port,
                 api=self.services is not None)

    async def close(self) -> None:
        """Stop listening; requests still in flight get a short grace, then are dropped."""
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ the app

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=64 * 1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        if self.services is not None:
            from recorderd.api import cameras, clips, exports, page, playback, session, storage
            from recorderd.api.peers import Peers
            from recorderd.api.playback import FragmentCache

            services = self.services
            peers = Peers(services, FragmentCache())
            peers.add_routes(app)
            page.add_routes(app)
            session.add_routes(app, services, self.sessions)
            storage.add_routes(app, services)
            slots = exports.CutSlots(lambda: services.config.http.max_exports)
            cameras.add_routes(app, services, self.signer, peers)
            playback.add_routes(app, services, self.signer, peers)
            exports.add_routes(app, services, self.signer, slots)
            clips.add_routes(app, services, self.signer, slots)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if not request.path.startswith("/api/") or exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
            return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers)
        except (ConnectionResetError, TimeoutError):
            raise
        except Exception as exc:  # never let a client bring the daemon down, never show internals
            log.error("http_handler_error", path=request.path, error=type(exc).__name__)
            return json_error(500, "internal", "internal error (logged as http_handler_error)")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/") or self.services is None:
            return await handler(request)
        if request.path == _SESSION_PATH and request.method in ("POST", "DELETE"):
            return await handler(request)
        tokens = self.services.config.http.tokens  # the live config: reloads apply at once
        auth = Authenticator(tokens)
        principal: Principal | None
        if not auth.required:  # loopback only, but a page on another site can still post to it
            principal = ANONYMOUS
            if request.method not in _SAFE_METHODS and "Origin" in request.headers and not same_origin(request):
                raise ApiError(403, "forbidden", "a change from another site's page is refused (Origin)")
        elif request.headers.get("Authorization"):
            principal = auth.from_header(request.headers.get("Authorization"))
        elif (session := self.sessions.principal(request.cookies.get(COOKIE), tokens)) is not None:
            principal = session  # the page's session: a change must come from this host's page
            if request.method not in _SAFE_METHODS and not same_origin(request):
                raise ApiError(403, "forbidden", "a change made with a session cookie must come from this "
                                                 "host's page (Origin)")
        else:  # a signed URL (only the routes that serve a file's bytes accept one)
            name = self.signer.verify(request.path, request.query) if (
                request.method in ("GET", "HEAD") and _SIGNABLE.match(request.path)) else None
            principal = auth.by_name(name) if name is not None else None
        if principal is None and request.path == _SESSION_PATH:
            request["principal"] = None  # "who am I?" answers "nobody" rather than failing: the page asks
            return await handler(request)
        if principal is None:
            raise ApiError(401, "unauthorized", "a valid token is required (Authorization: Bearer <token>)",
                           {"WWW-Authenticate": 'Bearer realm="recorderd"'})
        request["principal"] = principal
        return await handler(request)

    # ------------------------------------------------------------------ /metrics, /healthz

    def _reasons(self) -> list[str]:
        """Current reasons, mirrored into the health gauges so a scrape sees the same verdict."""
        try:
            reasons = [str(r) for r in self._health()]
        except Exception as exc:
            log.warning("health_check_failed", error=repr(exc))
            reasons = [f"health_error: {type(exc).__name__}"]
        failing = {check_of(r) for r in reasons}
        metrics.HEALTHY.set(0 if reasons else 1)
        for check in CHECKS:
            metrics.HEALTH_DEGRADED.labels(check).set(1 if check in failing else 0)
        return reasons

    async def _healthz(self, request: web.Request) -> web.Response:
        reasons = self._reasons()
        doc: dict[str, object] = {"status": "degraded", "reasons": reasons} if reasons else {"status": "ok"}
        return web.Response(status=503 if reasons else 200, body=json.dumps(doc).encode() + b"\n",
                            content_type="application/json", headers={"Cache-Control": "no-store"})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self._reasons()  # the health gauges in this very scrape match /healthz
        response = await self._exposition(request)
        response.headers["Cache-Control"] = "no-store"
        return response
