"""Browser sign-in: an API token exchanged for an HttpOnly, SameSite=Strict session cookie.

``POST /api/v1/session {"token": ...}`` checks the token like a bearer header and answers with the
cookie; ``GET /api/v1/session`` says who the cookie (or header) is; ``DELETE`` signs out. The page's
JavaScript never holds the token after sign-in, and the cookie is useless to script (HttpOnly) and
is not sent by other sites (SameSite=Strict). State changes made with the cookie must also carry an
``Origin`` of this host, so a page elsewhere cannot drive them even in a browser that ignores
SameSite.

The cookie is ``<expiry>.<token name>.<HMAC>``; the MAC covers the name, the expiry and the token's
SHA-256, so it is checked against the live config: a token removed *or given a new secret* ends its
sessions at once. The key sits in the daemon's state directory (0600), so sessions survive a daemon
restart; if it cannot be read or written, a per-process key is used and sessions end with the process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from aiohttp import web

from recorderd.api.auth import ANONYMOUS, Authenticator, Principal
from recorderd.api.errors import ApiError, bad_request
from recorderd.atomicfile import write_atomic
from recorderd.config import TOKEN_NAME_RE, HttpToken
from recorderd.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from recorderd.api.app import Services

__all__ = ["COOKIE", "SessionKeeper", "add_routes", "load_key", "same_origin"]

log = get_logger(component="http")

COOKIE: Final = "recorderd_session"
TTL: Final = 7 * 86400.0  # a week: an NVR page left open on a wall screen stays signed in
_KEY_BYTES: Final = 32
_VALUE_RE: Final = re.compile(r"^([0-9]{1,12})\.([A-Za-z0-9_.-]{1,64})\.([A-Za-z0-9_-]{43})\Z")


def load_key(path: Path | None) -> bytes:
    """The session key from ``path`` (made on first use, mode 0600); a fresh one if that fails."""
    if path is not None:
        try:
            raw = path.read_bytes()
            if len(raw) >= _KEY_BYTES * 2:
                key = bytes.fromhex(raw[: _KEY_BYTES * 2].decode("ascii"))
                if path.stat().st_mode & 0o077:  # restored from a backup, say: readable by others
                    path.chmod(0o600)
                return key
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        key = secrets.token_bytes(_KEY_BYTES)
        try:
            write_atomic(path, key.hex() + "\n", mode=0o600, durable=True)
            return key
        except OSError as exc:
            log.warning("session_key_unsaved", path=str(path), error=type(exc).__name__,
                        effect="browser sessions end when the daemon restarts")
            return key
    return secrets.token_bytes(_KEY_BYTES)


class SessionKeeper:
    """Issue and check session cookie values (pure: no aiohttp, no clock unless not given)."""

    __slots__ = ("_key", "ttl")

    def __init__(self, key: bytes, ttl: float = TTL) -> None:
        if len(key) < 16:
            raise ValueError("session key must be at least 16 bytes")
        self._key = key
        self.ttl = float(ttl)

    def __repr__(self) -> str:
        return f"SessionKeeper(ttl={self.ttl})"  # never the key

    def _mac(self, exp: str, name: str, digest: str) -> str:
        msg = f"recorderd-session-v1\0{exp}|{name}|{digest}".encode("ascii")
        return base64.urlsafe_b64encode(hmac.new(self._key, msg, hashlib.sha256).digest()).rstrip(b"=").decode()

    def issue(self, name: str, digest: str, now: float | None = None) -> str:
        if not TOKEN_NAME_RE.match(name):
            raise ValueError("token name cannot be put in a session")
        exp = str(int((time.time() if now is None else now) + self.ttl))
        return f"{exp}.{name}.{self._mac(exp, name, digest)}"

    def principal(self, value: str | None, tokens: Sequence[HttpToken], now: float | None = None) -> Principal | None:
        """Who a cookie value stands for under the current tokens; None if bad, expired or revoked."""
        if not value or len(value) > 200:
            return None
        m = _VALUE_RE.match(value)
        if m is None:
            return None
        exp, name, sig = m.groups()
        if not tokens:  # no tokens configured: everyone is anonymous anyway
            return ANONYMOUS
        token = next((t for t in tokens if t.name == name), None)
        if token is None:
            return None
        if not hmac.compare_digest(sig.encode("ascii"), self._mac(exp, name, token.sha256).encode("ascii")):
            return None
        if (time.time() if now is None else now) > int(exp):
            return None
        return Principal.of(token)


def same_origin(request: web.Request) -> bool:
    """``Origin`` names this host (scheme aside: a TLS proxy in front changes it, not the host)."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


def add_routes(app: web.Application, services: Services, keeper: SessionKeeper) -> None:
    api = SessionApi(services, keeper)
    app.router.add_get("/api/v1/session", api.whoami)
    app.router.add_post("/api/v1/session", api.sign_in)
    app.router.add_delete("/api/v1/session", api.sign_out)


class SessionApi:
    def __init__(self, services: Services, keeper: SessionKeeper) -> None:
        self.services = services
        self.keeper = keeper

    async def sign_in(self, request: web.Request) -> web.Response:
        # a page elsewhere must not sign a visitor in as someone else (login CSRF)
        if request.headers.get("Origin") is not None and not same_origin(request):
            raise ApiError(403, "forbidden", "sign-in from another site is refused")
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise bad_request("body", "must be JSON {\"token\": \"...\"}") from None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise bad_request("token", "is required")
        tokens = self.services.config.http.tokens
        principal = Authenticator(tokens).from_header(f"Bearer {token.strip()}")
        if principal is None:
            log.info("http_sign_in", outcome="refused", peer=request.remote)
            raise ApiError(401, "unauthorized", "that token is not valid")
        digest = next((t.sha256 for t in tokens if t.name == principal.name), "")
        value = self.keeper.issue(principal.name, digest)
        log.info("http_sign_in", outcome="ok", token=principal.name, peer=request.remote)
        resp = web.json_response(describe(principal, time.time() + self.keeper.ttl), status=201)
        resp.set_cookie(COOKIE, value, max_age=int(self.keeper.ttl), path="/", httponly=True,
                        samesite="Strict", secure=request.secure)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def whoami(self, request: web.Request) -> web.Response:
        principal: Principal | None = request.get("principal")
        resp = web.json_response(describe(principal, None) if principal is not None else
                                 {"name": None, "signed_in": False})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def sign_out(self, request: web.Request) -> web.Response:
        resp = web.Response(status=204)
        resp.del_cookie(COOKIE, path="/", samesite="Strict")
        return resp


def describe(p: Principal, expires: float | None) -> dict[str, object]:
    out: dict[str, object] = {"name": p.name, "signed_in": True,
                              "tenants": None if p.tenants is None else sorted(p.tenants), "clips": p.clips}
    if expires is not None:
        out["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    return out

