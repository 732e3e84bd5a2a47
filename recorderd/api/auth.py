"""Who a request is: bearer tokens, tenant scopes, and signed media URLs.

Pure logic (no aiohttp): the app's middleware calls it. Tokens are never stored, only their SHA-256
(``recorderd.config.HttpToken``); neither a token nor a signature ever appears in a log line or an
exception message here.

A media URL can be signed so that a ``<video>`` element or ffmpeg, which cannot send an
``Authorization`` header, fetches playlist media: the query carries an expiry, the principal's name and
an HMAC over the exact request path. The key is random per process: URLs die with the process, which
suits short-lived playlists. The signature vouches only for a *name*; the caller re-resolves it with
``Authenticator.by_name`` against the live config, so a token removed from the config (and its scope
changes) take effect on URLs already handed out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from recorderd.config import TOKEN_NAME_RE, HttpToken

__all__ = ["ANONYMOUS", "Authenticator", "Principal", "UrlSigner"]

_SIG_RE: Final = re.compile(r"^[A-Za-z0-9_-]{43}\Z")  # 32 bytes, urlsafe base64 without padding
_EXP_RE: Final = re.compile(r"^[0-9]{1,12}\Z")
_TOKEN_CHARS: Final = frozenset(range(0x21, 0x7F))  # printable ASCII, no space: what config accepts
_MAX_TOKEN_CHARS: Final = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a token's name and what it may see and do."""

    name: str
    tenants: frozenset[str] | None  # None: every tenant
    clips: bool  # may create, rename and delete clips

    def sees(self, tenant: str | None) -> bool:
        """Whether a camera of ``tenant`` is visible. A camera with no tenant is seen only unscoped."""
        if self.tenants is None:
            return True
        return tenant is not None and tenant in self.tenants

    @classmethod
    def of(cls, token: HttpToken) -> Principal:
        return cls(token.name, token.tenants, token.clips)


# Every request when no tokens are configured (the config allows that on loopback only).
ANONYMOUS: Final = Principal("anonymous", None, True)


class Authenticator:
    """Resolve ``Authorization: Bearer <token>`` against the configured tokens (cheap to build)."""

    __slots__ = ("_by_name", "_tokens")

    def __init__(self, tokens: Sequence[HttpToken]) -> None:
        self._tokens = tuple((bytes.fromhex(t.sha256), Principal.of(t)) for t in tokens)
        self._by_name = {p.name: p for _, p in self._tokens}

    @property
    def required(self) -> bool:
        """False when no tokens are configured: every request is ``ANONYMOUS``."""
        return bool(self._tokens)

    def from_header(self, value: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header value; None for missing, malformed or wrong.

        With no tokens configured every caller is ``ANONYMOUS``, header or not.
        """
        if not self._tokens:
            return ANONYMOUS
        if value is None:
            return None
        parts = value.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return None
        token = parts[1]
        if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            return None
        raw = token.encode("ascii")
        if not _TOKEN_CHARS.issuperset(raw):
            return None
        digest = hashlib.sha256(raw).digest()
        # Compare against every configured digest, in constant time, without stopping at a match: the
        # time taken depends only on how many tokens are configured. (A dict lookup by digest would also
        # be safe, since an attacker who learns how much of a digest matched learns nothing about any
        # token without a SHA-256 preimage, but this way there is nothing to argue about.)
        found: Principal | None = None
        for expected, principal in self._tokens:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found

    def by_name(self, name: str) -> Principal | None:
        """The principal a signed URL names, resolved against the current tokens (removed: None)."""
        if not self._tokens:
            return ANONYMOUS if name == ANONYMOUS.name else None
        return self._by_name.get(name)


class UrlSigner:
    """Sign and verify media URLs: ``exp=<unix seconds>&p=<principal>&sig=<HMAC-SHA256>``.

    The MAC covers ``path|exp|name``: ``path`` is the exact request path without the query (aiohttp's
    ``request.path``; sign the same form that will be requested). The encoding is unambiguous because
    the name and the expiry cannot contain ``|``.
    """

    __slots__ = ("_key", "ttl")

    def __init__(self, key: bytes | None = None, ttl: float = 3600) -> None:
        if key is not None and len(key) < 16:
            raise ValueError("signing key must be at least 16 bytes")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._key = key if key is not None else secrets.token_bytes(32)
        self.ttl = float(ttl)

    def __repr__(self) -> str:
        return f"UrlSigner(ttl={self.ttl})"  # never the key

    def _mac(self, path: str, exp: str, name: str) -> str:
        msg = b"recorderd-media-v1\0" + f"{path}|{exp}|{name}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, path: str, principal: Principal, now: float | None = None) -> str:
        """The query string (no leading ``?``) that lets ``principal`` GET ``path`` until ``now + ttl``."""
        if "?" in path or "#" in path:
            raise ValueError("sign the request path only, without a query or fragment")
        if not TOKEN_NAME_RE.match(principal.name):
            raise ValueError("principal name cannot be signed")
        exp = str(int((time.time() if now is None else now) + self.ttl))
        sig = self._mac(path, exp, principal.name)
        return f"exp={exp}&p={quote(principal.name, safe='')}&sig={sig}"

    def verify(self, path: str, query: Mapping[str, str], now: float | None = None) -> str | None:
        """The principal name a valid, unexpired signature for ``path`` carries; otherwise None."""
        exp, name, sig = query.get("exp"), query.get("p"), query.get("sig")
        if not isinstance(exp, str) or not isinstance(name, str) or not isinstance(sig, str):
            return None
        if not _EXP_RE.match(exp) or not TOKEN_NAME_RE.match(name) or not _SIG_RE.match(sig):
            return None
        if "?" in path or "#" in path:
            return None
        if not hmac.compare_digest(sig.encode("ascii"), self._mac(path, exp, name).encode("ascii")):
            return None
        if (time.time() if now is None else now) > int(exp):
            return None
        return name
