"""Camera URLs carry passwords: everything that leaves the process goes through here first."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@  (password may be empty; stops at '@' that precedes the host)
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s'\"]*):(?P<pw>[^@\s'\"]*)@")
# query-string secrets some cameras use: ?user=admin&password=x, &pwd=x, &token=x
_QUERY_RE = re.compile(r"(?i)([?&](?:password|passwd|pwd|pass|token|auth|key|secret)=)[^&\s'\"]*")


def mask_url(url: str) -> str:
    """``rtsp://admin:secret@host/x`` -> ``rtsp://admin:***@host/x`` (query secrets too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
    masked = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return _QUERY_RE.sub(lambda m: m.group(1) + MASK, masked)


def secrets_of(url: str) -> list[str]:
    """The password (raw and percent-decoded) in a URL, for scrubbing free text."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    out: list[str] = []
    if parts.password:
        out += [parts.password, unquote(parts.password)]
    for m in _QUERY_RE.finditer(url):
        value = url[m.end(1):m.end()]
        if value:
            out += [value, unquote(value)]
    return [s for s in dict.fromkeys(out) if len(s) >= 3]


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Scrub URL credentials and any known secret from free text (FFmpeg stderr, exceptions)."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    text = _QUERY_RE.sub(lambda m: m.group(1) + MASK, text)
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text
