"""Camera URLs carry passwords: everything that leaves the process goes through here first."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
# scheme://user:password@  (password may be empty; stops at '@' that precedes the host)
# greedy up to the token's last '@': FFmpeg splits user info there, so a raw '@' may be in a password
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s'\"]*):(?P<pw>[^\s'\"]*)@")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?(.*)$", re.DOTALL)
# query-string secrets some cameras use: ?user=admin&password=x, &pwd=x, &token=x
_QUERY_RE = re.compile(r"(?i)([?&](?:password|passwd|pwd|pass|token|auth|key|secret|sig|signature)=)[^&\s'\"]*")


def _split_userinfo(url: str) -> tuple[str, str, str | None, str]:
    """(scheme://, user, password or None, rest) split at the LAST '@', as FFmpeg does.

    Deliberately looser than ``urlsplit``: a password with a raw '/', '?', '#' or '@' (invalid, but
    cameras and FFmpeg accept it) must still be found and masked.
    """
    m = _SCHEME_RE.match(url)
    assert m is not None
    prefix, rest = m.group(1) or "", m.group(2)
    at = rest.rfind("@")
    if at == -1:
        return prefix, "", None, rest
    userinfo, tail = rest[:at], rest[at + 1:]
    user, colon, password = userinfo.partition(":")
    return prefix, user, (password if colon else None), tail


def mask_url(url: str) -> str:
    """``rtsp://admin:secret@host/x`` -> ``rtsp://admin:***@host/x`` (query secrets too)."""
    prefix, user, password, tail = _split_userinfo(url)
    if password is not None:
        masked = f"{prefix}{user}:{MASK}@{tail}"
    elif user:
        masked = f"{prefix}{user}@{tail}"
    else:
        masked = url
    return _QUERY_RE.sub(lambda m: m.group(1) + MASK, masked)


def secrets_of(url: str) -> list[str]:
    """The password (raw and percent-decoded) in a URL, for scrubbing free text."""
    out: list[str] = []
    _, _, password, _ = _split_userinfo(url)
    if password:
        out += [password, unquote(password)]
    for m in _QUERY_RE.finditer(url):
        value = url[m.end(1):m.end()]
        if value:
            out += [value, unquote(value)]
    return [s for s in dict.fromkeys(out) if len(s) >= 3]


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Scrub URL credentials and any known secret from free text (FFmpeg stderr, exceptions)."""
    # known secrets first: once the pattern has cut a password in two, the rest no longer matches
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    text = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    return _QUERY_RE.sub(lambda m: m.group(1) + MASK, text)
