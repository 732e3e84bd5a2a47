"""Browser sign-in (recorderd.api.session) and the web page's routes (recorderd.api.page).

The pure cookie logic (``SessionKeeper``, ``load_key``) is tested directly; the rest goes over a real
socket to a real ``HttpServer`` (port 0) with a real client (aiohttp's, with a cookie jar that accepts
cookies for 127.0.0.1, and stdlib ``http.client`` where a path must reach the server unnormalised).
The daemon behind the server is a stub: a real parsed ``Config`` (replaceable, as a reload would) and
an index that answers the camera list with no footage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http.client
import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from util import camera_doc, config_doc
from yarl import URL

from recorderd.api.app import HttpServer
from recorderd.api.auth import ANONYMOUS, Principal
from recorderd.api.session import COOKIE, TTL, SessionKeeper, load_key
from recorderd.config import Config, HttpToken, parse_config


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


OPS_TOKEN = "ops-session-secret-" + "o" * 24
VIEWER_TOKEN = "viewer-session-secret-" + "v" * 20
VIEWER = "city-1.viewer"  # a dot in the name: the cookie is <exp>.<name>.<mac>
TOKENS = (
    HttpToken(name="ops", sha256=sha(OPS_TOKEN), tenants=None, clips=True),
    HttpToken(name=VIEWER, sha256=sha(VIEWER_TOKEN), tenants=frozenset({"t1"}), clips=False),
)
KEY = bytes(range(32))
NOW = 1_700_000_000.0

# --------------------------------------------------------------------------- SessionKeeper (pure)


def test_issued_value_verifies_to_its_tokens_principal() -> None:
    keeper = SessionKeeper(KEY)
    for tok in TOKENS:
        value = keeper.issue(tok.name, tok.sha256, now=NOW)
        assert keeper.principal(value, TOKENS, now=NOW) == Principal.of(tok)
        assert keeper.principal(value, TOKENS, now=NOW + TTL - 1) == Principal.of(tok)  # still inside the week
    viewer = keeper.principal(keeper.issue(VIEWER, TOKENS[1].sha256, now=NOW), TOKENS, now=NOW)
    assert viewer == Principal(VIEWER, frozenset({"t1"}), False)
    # the value carries the expiry and the name, never the token or its digest
    value = keeper.issue("ops", TOKENS[0].sha256, now=NOW)
    assert value.startswith(f"{int(NOW + TTL)}.ops.")
    assert OPS_TOKEN not in value and TOKENS[0].sha256 not in value


def _flip(ch: str) -> str:
    return "B" if ch != "B" else "C"


def test_tampered_values_are_refused() -> None:
    keeper = SessionKeeper(KEY)
    value = keeper.issue("ops", TOKENS[0].sha256, now=NOW)
    exp, name, sig = value.split(".")
    tampered = [
        f"{exp}.{name}.{sig[:-1]}{_flip(sig[-1])}",  # last signature character
        f"{exp}.{name}.{_flip(sig[0])}{sig[1:]}",  # first signature character
        f"{int(exp) + 86400}.{name}.{sig}",  # a longer life
        f"{int(exp) - 1}.{name}.{sig}",
        f"{exp}.{VIEWER}.{sig}",  # another (existing) token's name
        f"{exp}.{name}.{keeper.issue(VIEWER, TOKENS[1].sha256, now=NOW).split('.')[-1]}",  # another's MAC
    ]
    for bad in tampered:
        assert keeper.principal(bad, TOKENS, now=NOW) is None, bad


def test_value_from_another_key_is_refused() -> None:
    value = SessionKeeper(bytes(32)).issue("ops", TOKENS[0].sha256, now=NOW)
    assert SessionKeeper(KEY).principal(value, TOKENS, now=NOW) is None
    assert SessionKeeper(bytes(32)).principal(value, TOKENS, now=NOW) is not None  # the control


def test_expired_value_is_refused() -> None:
    keeper = SessionKeeper(KEY, ttl=60)
    value = keeper.issue("ops", TOKENS[0].sha256, now=NOW)
    assert keeper.principal(value, TOKENS, now=NOW + 60) is not None
    assert keeper.principal(value, TOKENS, now=NOW + 61) is None
    assert keeper.principal(value, TOKENS, now=NOW + 10 * TTL) is None
    # the real clock: a value issued a week ago (default ttl) is dead now
    old = SessionKeeper(KEY).issue("ops", TOKENS[0].sha256, now=NOW - 2 * TTL)
    assert SessionKeeper(KEY).principal(old, TOKENS) is None


def test_unknown_name_and_rotated_or_removed_token_are_refused() -> None:
    keeper = SessionKeeper(KEY)
    ghost = keeper.issue("ghost", sha("whatever"), now=NOW)
    assert keeper.principal(ghost, TOKENS, now=NOW) is None
    value = keeper.issue("ops", TOKENS[0].sha256, now=NOW)
    rotated = (dataclasses.replace(TOKENS[0], sha256=sha("a-new-secret-" + "n" * 20)), TOKENS[1])
    assert keeper.principal(value, rotated, now=NOW) is None
    assert keeper.principal(value, TOKENS[1:], now=NOW) is None  # removed
    # a scope change is not a rotation: the cookie follows the token's current scope
    narrowed = (dataclasses.replace(TOKENS[0], tenants=frozenset({"t2"}), clips=False), TOKENS[1])
    assert keeper.principal(value, narrowed, now=NOW) == Principal("ops", frozenset({"t2"}), False)


def test_no_tokens_configured_is_anonymous_for_well_formed_values_only() -> None:
    keeper = SessionKeeper(KEY)
    for value in (keeper.issue("ops", TOKENS[0].sha256, now=NOW), "1.anyone." + "A" * 43):
        assert keeper.principal(value, (), now=NOW) is ANONYMOUS
    for value in (None, "", "garbage", "1.anyone." + "A" * 42):
        assert keeper.principal(value, (), now=NOW) is None


@pytest.mark.parametrize("value", [
    None, "", "x", "garbage.value.here", "x" * 201, "1" * 150 + ".ops." + "A" * 43,
    "1." + "a" * 65 + "." + "A" * 43,  # a name longer than any token name
    "1234567890123.ops." + "A" * 43,  # a 13-digit expiry
    ".ops." + "A" * 43, "1..", "1.ops.", "1.ops." + "A" * 42, "1.ops." + "A" * 44, "1.ops." + "A" * 42 + "=",
    "1.o ps." + "A" * 43, "1.ops|x." + "A" * 43, "1.öps." + "A" * 43, "-1.ops." + "A" * 43,
])
def test_garbage_and_overlong_values_are_none(value: str | None) -> None:
    assert SessionKeeper(KEY).principal(value, TOKENS, now=NOW) is None


def test_trailing_junk_on_a_good_value_is_refused() -> None:
    keeper = SessionKeeper(KEY)
    value = keeper.issue("ops", TOKENS[0].sha256, now=NOW)
    for bad in (value + "\n", value + "A", " " + value, value + ".x", value.replace(".", ";")):
        assert keeper.principal(bad, TOKENS, now=NOW) is None, bad


def test_repr_hides_the_key_and_short_keys_or_bad_names_are_refused() -> None:
    keeper = SessionKeeper(KEY)
    text = repr(keeper) + str(keeper)
    assert KEY.hex() not in text and repr(KEY) not in text and "_key" not in text
    with pytest.raises(ValueError):
        SessionKeeper(b"short")
    with pytest.raises(ValueError):
        keeper.issue("bad|name", TOKENS[0].sha256)


# --------------------------------------------------------------------------- load_key


def test_load_key_creates_a_0600_file_and_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    key = load_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.hex()
    assert load_key(path) == key
    assert load_key(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["session.key"]  # no temp file left behind


def test_load_key_replaces_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    path.write_text("not hex at all, but long enough to look like a key file of sixty-four chars")
    key = load_key(path)
    assert len(key) == 32 and path.read_text().strip() == key.hex()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key


def test_load_key_unwritable_location_still_gives_a_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = blocker / "session.key"  # a path under a regular file: neither readable nor writable
    first, second = load_key(path), load_key(path)
    assert len(first) == 32 and len(second) == 32
    assert first != second  # nothing was saved: each call is a fresh per-process key
    assert blocker.read_text() == "x"


def test_load_key_none_is_fresh_each_call() -> None:
    keys = {load_key(None) for _ in range(5)}
    assert len(keys) == 5 and all(len(k) == 32 for k in keys)


# --------------------------------------------------------------------------- over HTTP: the stub daemon


def make_config(root: Path, tokens: tuple[dict[str, Any], ...]) -> Config:
    doc = config_doc(root, [camera_doc("gate", "rtsp://127.0.0.1:1/gate", tenant="t1"),
                            camera_doc("shop", "rtsp://127.0.0.1:1/shop", tenant="t2")],
                     http={"tokens": list(tokens)})
    doc.pop("metrics")
    return parse_config(doc)


def token_docs(ops_secret: str | None = OPS_TOKEN) -> tuple[dict[str, Any], ...]:
    ops = () if ops_secret is None else ({"name": "ops", "sha256": sha(ops_secret), "clips": True},)
    return (*ops, {"name": VIEWER, "sha256": sha(VIEWER_TOKEN), "tenants": ["t1"], "clips": False})


class FakeConn:
    async def fetchrow(self, *args: Any, **kw: Any) -> dict[str, Any]:
        return {"days": 0}

    async def fetchval(self, *args: Any, **kw: Any) -> None:
        return None


class FakeDb:
    """Just enough index for the camera list: every camera has no footage yet."""

    def __init__(self) -> None:
        self.acquired: list[str] = []

    @asynccontextmanager
    async def acquire(self, op: str = "query") -> AsyncIterator[FakeConn]:
        self.acquired.append(op)
        yield FakeConn()


class FakeServices:
    def __init__(self, config: Config) -> None:
        self.config = config  # replaced by tests, as a reload replaces the daemon's
        self.db = FakeDb()

    def snapshot(self) -> dict[str, Any]:
        return {"cameras": []}

    def health(self) -> list[str]:
        return []

    def camera_usage(self) -> dict[str, Any]:
        return {}

    async def clips_used(self, conn: Any, camera_id: str) -> int:
        return 0

    def open_file(self, camera_id: str) -> None:
        raise AssertionError("not used by these tests")

    keeper = None  # a single node

    def recorded_by(self, camera_id: str) -> tuple[str | None, str | None]:
        return self.config.node.id, None


class Site:
    def __init__(self, srv: HttpServer, services: FakeServices, root: Path) -> None:
        self.srv, self.services, self.root = srv, services, root
        self.base = f"http://127.0.0.1:{srv.port}"
        self.origin = self.base  # what a browser sends from this host's page

    def url(self, path: str) -> str:
        return self.base + path

    def cookie(self, jar: aiohttp.abc.AbstractCookieJar) -> str | None:
        morsel = jar.filter_cookies(URL(self.base + "/")).get(COOKIE)
        return None if morsel is None or not morsel.value else morsel.value


@asynccontextmanager
async def running(root: Path, sessions: SessionKeeper | None = None) -> AsyncIterator[Site]:
    services = FakeServices(make_config(root, token_docs()))
    srv = HttpServer("127.0.0.1:0", health=lambda: [], services=services, sessions=sessions)
    await srv.start()
    try:
        yield Site(srv, services, root)
    finally:
        await srv.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with running(tmp_path / "rec") as s:
        yield s


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=5)) as c:
        yield c


async def sign_in(client: aiohttp.ClientSession, site: Site, token: str = OPS_TOKEN,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], list[str], str]:
    async with client.post(site.url("/api/v1/session"), json={"token": token}, headers=headers) as r:
        text = await r.text()
        return r.status, json.loads(text), r.headers.getall("Set-Cookie", []), text


async def call(client: aiohttp.ClientSession, site: Site, method: str, path: str,
               **kw: Any) -> tuple[int, dict[str, Any]]:
    async with client.request(method, site.url(path), **kw) as r:
        body = await r.read()
        return r.status, (json.loads(body) if body else {})


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """stdlib client: sends ``path`` exactly as written (aiohttp's client would normalise ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- sign in


async def test_sign_in_sets_a_strict_httponly_cookie(site: Site, client: aiohttp.ClientSession) -> None:
    status, doc, set_cookie, text = await sign_in(client, site, VIEWER_TOKEN)
    assert status == 201
    assert doc["name"] == VIEWER and doc["signed_in"] is True
    assert doc["tenants"] == ["t1"] and doc["clips"] is False
    assert doc["expires_at"].endswith("Z")
    assert len(set_cookie) == 1
    attrs = [a.strip().lower() for a in set_cookie[0].split(";")]
    assert attrs[0].startswith(COOKIE + "=")
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    assert f"max-age={int(TTL)}" in attrs
    # the token (and its digest) appear nowhere in the answer
    for secret in (VIEWER_TOKEN, sha(VIEWER_TOKEN)):
        assert secret not in text and secret not in set_cookie[0]
    value = site.cookie(client.cookie_jar)
    assert value is not None and value.split(".", 1)[1].rsplit(".", 1)[0] == VIEWER


async def test_sign_in_as_ops_names_every_tenant(site: Site, client: aiohttp.ClientSession) -> None:
    status, doc, _, text = await sign_in(client, site, f"  {OPS_TOKEN}  ")  # surrounding blanks are pasted often
    assert status == 201 and doc["name"] == "ops" and doc["tenants"] is None and doc["clips"] is True
    assert OPS_TOKEN not in text


async def test_wrong_token_is_401_without_a_cookie(site: Site, client: aiohttp.ClientSession) -> None:
    for wrong in ("wrong-token-" + "w" * 20, OPS_TOKEN + "x", sha(OPS_TOKEN), VIEWER):
        status, doc, set_cookie, text = await sign_in(client, site, wrong)
        assert status == 401 and doc["error"] == "unauthorized"
        assert set_cookie == [] and wrong not in text
    assert site.cookie(client.cookie_jar) is None


@pytest.mark.parametrize("body", [
    b"", b"{not json", b"null", b"[]", b'"token"', b"{}", b'{"token": null}', b'{"token": 5}',
    b'{"token": ""}', b'{"token": "   "}', b'{"tok": "x"}', b"\xff\xfe\x00", b'{"token": ["a"]}',
])
async def test_malformed_sign_in_is_400(site: Site, client: aiohttp.ClientSession, body: bytes) -> None:
    async with client.post(site.url("/api/v1/session"), data=body,
                           headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "bad_request"
        assert r.headers.getall("Set-Cookie", []) == []


async def test_sign_in_from_another_origin_is_refused(site: Site, client: aiohttp.ClientSession) -> None:
    for origin in ("http://evil.example", f"http://127.0.0.1:{site.srv.port + 1}", "null",
                   f"http://evil.example@127.0.0.1:{site.srv.port}"):
        status, doc, set_cookie, _ = await sign_in(client, site, OPS_TOKEN, headers={"Origin": origin})
        assert status == 403 and doc["error"] == "forbidden", origin
        assert set_cookie == []
    assert site.cookie(client.cookie_jar) is None
    status, doc, set_cookie, _ = await sign_in(client, site, OPS_TOKEN, headers={"Origin": site.origin})
    assert status == 201 and doc["name"] == "ops" and len(set_cookie) == 1
    # a proxy terminating TLS changes the scheme, not the host: still this host's page
    await client.delete(site.url("/api/v1/session"))
    status, _, _, _ = await sign_in(client, site, OPS_TOKEN, headers={"Origin": f"https://127.0.0.1:{site.srv.port}"})
    assert status == 201


# --------------------------------------------------------------------------- using the cookie


async def test_whoami_and_cameras_with_the_cookie(site: Site, client: aiohttp.ClientSession) -> None:
    assert await call(client, site, "GET", "/api/v1/session") == (200, {"name": None, "signed_in": False})
    async with client.get(site.url("/api/v1/session")) as r:
        assert r.headers["Cache-Control"] == "no-store"  # who is signed in is never cached
    assert (await call(client, site, "GET", "/api/v1/cameras"))[0] == 401

    assert (await sign_in(client, site, VIEWER_TOKEN))[0] == 201
    status, doc = await call(client, site, "GET", "/api/v1/session")
    assert status == 200 and doc == {"name": VIEWER, "signed_in": True, "tenants": ["t1"], "clips": False}
    status, doc = await call(client, site, "GET", "/api/v1/cameras")
    assert status == 200
    assert [c["camera_id"] for c in doc["cameras"]] == ["gate"]  # the cookie carries the token's scope
    assert site.services.db.acquired  # the handler really ran

    assert (await sign_in(client, site, OPS_TOKEN))[0] == 201  # signing in again replaces the cookie
    status, doc = await call(client, site, "GET", "/api/v1/cameras")
    assert status == 200 and sorted(c["camera_id"] for c in doc["cameras"]) == ["gate", "shop"]


async def test_no_cookie_or_a_forged_one_is_401(site: Site, client: aiohttp.ClientSession) -> None:
    forged = SessionKeeper(bytes(32)).issue("ops", sha(OPS_TOKEN))
    for headers in ({}, {"Cookie": f"{COOKIE}={forged}"}, {"Cookie": f"{COOKIE}=garbage"}):
        status, doc = await call(client, site, "GET", "/api/v1/cameras", headers=headers)
        assert status == 401 and doc["error"] == "unauthorized"
        assert (await call(client, site, "GET", "/api/v1/session", headers=headers))[1]["signed_in"] is False


async def test_a_bearer_header_is_checked_before_the_cookie(site: Site, client: aiohttp.ClientSession) -> None:
    assert (await sign_in(client, site))[0] == 201
    status, _ = await call(client, site, "GET", "/api/v1/cameras", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, doc = await call(client, site, "GET", "/api/v1/session",
                             headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
    assert status == 200 and doc["name"] == VIEWER


# --------------------------------------------------------------------------- CSRF


CHANGES = [("POST", "/api/v1/clips"), ("PATCH", "/api/v1/clips/1"), ("DELETE", "/api/v1/clips/1")]


@pytest.mark.parametrize(("method", "path"), CHANGES)
async def test_cookie_change_without_this_hosts_origin_is_403(site: Site, client: aiohttp.ClientSession,
                                                              method: str, path: str) -> None:
    assert (await sign_in(client, site))[0] == 201  # ops: may change clips, so a 403 is only about Origin
    for origin in (None, "http://evil.example", "null", f"http://127.0.0.1:{site.srv.port + 1}",
                   f"http://127.0.0.1:{site.srv.port}.evil.example"):
        headers = {} if origin is None else {"Origin": origin}
        status, doc = await call(client, site, method, path, json={}, headers=headers)
        assert status == 403 and doc["error"] == "forbidden", origin
        assert "Origin" in doc["detail"]
    assert site.services.db.acquired == []  # nothing ran


async def test_cookie_change_from_this_host_passes(site: Site, client: aiohttp.ClientSession) -> None:
    assert (await sign_in(client, site))[0] == 201
    status, doc = await call(client, site, "POST", "/api/v1/clips", json={}, headers={"Origin": site.origin})
    assert (status, doc["error"]) == (400, "bad_request")  # past auth: the handler found no camera_id
    assert "camera_id" in doc["detail"]


@pytest.mark.parametrize(("method", "path"), CHANGES)
async def test_bearer_change_needs_no_origin(site: Site, method: str, path: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as plain:  # no cookie at all
        status, doc = await call(plain, site, method, path, json={},
                                 headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert status != 403 and status != 401, doc
    if method == "POST":
        assert (status, doc["error"]) == (400, "bad_request")


async def test_cookie_reads_need_no_origin(site: Site, client: aiohttp.ClientSession) -> None:
    assert (await sign_in(client, site))[0] == 201
    for method in ("GET", "HEAD"):
        async with client.request(method, site.url("/api/v1/cameras")) as r:
            assert r.status == 200


# --------------------------------------------------------------------------- the live config


async def test_rotating_or_removing_a_token_ends_its_sessions(site: Site, client: aiohttp.ClientSession) -> None:
    assert (await sign_in(client, site))[0] == 201
    assert (await call(client, site, "GET", "/api/v1/cameras"))[0] == 200
    original = site.services.config

    new_secret = "ops-rotated-secret-" + "r" * 24
    site.services.config = make_config(site.root, token_docs(new_secret))
    assert (await call(client, site, "GET", "/api/v1/cameras"))[0] == 401
    assert (await call(client, site, "GET", "/api/v1/session"))[1]["signed_in"] is False
    status, _ = await call(client, site, "POST", "/api/v1/clips", json={}, headers={"Origin": site.origin})
    assert status == 401
    # the old secret no longer signs in; the new one does
    assert (await sign_in(client, site, OPS_TOKEN))[0] == 401
    assert (await sign_in(client, site, new_secret))[0] == 201
    assert (await call(client, site, "GET", "/api/v1/cameras"))[0] == 200

    site.services.config = make_config(site.root, token_docs(None))  # ops removed
    assert (await call(client, site, "GET", "/api/v1/cameras"))[0] == 401
    assert (await call(client, site, "GET", "/api/v1/session"))[1]["signed_in"] is False

    site.services.config = original  # the control: the viewer's sessions were never affected
    assert (await sign_in(client, site, VIEWER_TOKEN))[0] == 201
    site.services.config = make_config(site.root, token_docs(None))
    status, doc = await call(client, site, "GET", "/api/v1/session")
    assert status == 200 and doc["name"] == VIEWER


async def test_sessions_survive_a_restart_with_the_saved_key(tmp_path: Path,
                                                            client: aiohttp.ClientSession) -> None:
    key_path = tmp_path / "session.key"
    async with running(tmp_path / "rec", SessionKeeper(load_key(key_path))) as first:
        assert (await sign_in(client, first))[0] == 201
        value = first.cookie(client.cookie_jar)
    assert value is not None
    for keeper, expected in ((SessionKeeper(load_key(key_path)), 200), (SessionKeeper(load_key(None)), 401)):
        async with running(tmp_path / "rec", keeper) as second:
            status, _ = await call(client, second, "GET", "/api/v1/cameras",
                                   headers={"Cookie": f"{COOKIE}={value}"})
            assert status == expected


# --------------------------------------------------------------------------- sign out


async def test_sign_out_clears_the_cookie(site: Site, client: aiohttp.ClientSession) -> None:
    assert (await sign_in(client, site))[0] == 201
    assert site.cookie(client.cookie_jar) is not None
    async with client.delete(site.url("/api/v1/session")) as r:
        assert r.status == 204
        [header] = r.headers.getall("Set-Cookie")
    attrs = [a.strip().lower() for a in header.split(";")]
    assert attrs[0] in (f"{COOKIE}=", f'{COOKIE}=""')
    assert "max-age=0" in attrs or any(a.startswith("expires=") and "1970" in a for a in attrs)
    assert "path=/" in attrs
    assert site.cookie(client.cookie_jar) is None
    assert (await call(client, site, "GET", "/api/v1/session"))[1]["signed_in"] is False
    assert (await call(client, site, "GET", "/api/v1/cameras"))[0] == 401


# --------------------------------------------------------------------------- the page


def assert_page_headers(headers: Any) -> None:
    csp = headers["Content-Security-Policy"]
    directives = {d.strip().split()[0]: d.strip().split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", ["/", "/cameras/anything", "/cameras/gate"])
async def test_page_is_served_with_security_headers(site: Site, client: aiohttp.ClientSession, path: str) -> None:
    async with client.get(site.url(path)) as r:  # no credentials: the page must load to sign in
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert_page_headers(r.headers)
        body = await r.text()
    assert "<html" in body.lower() and "/static/" in body


async def test_static_files(site: Site, client: aiohttp.ClientSession) -> None:
    async with client.get(site.url("/static/app.js")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
        assert_page_headers(r.headers)
        assert (await r.read()) == (Path(__file__).parent.parent / "recorderd/web/app.js").read_bytes()
    async with client.get(site.url("/static/vendor/hls.min.js")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
        assert b"Hls" in await r.read()
    async with client.get(site.url("/static/style.css")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")


async def test_etag_gives_304(site: Site, client: aiohttp.ClientSession) -> None:
    async with client.get(site.url("/static/app.js")) as r:
        etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    async with client.get(site.url("/static/app.js"), headers={"If-None-Match": etag}) as r:
        assert r.status == 304 and await r.read() == b""
        assert r.headers["ETag"] == etag
    async with client.get(site.url("/static/app.js"), headers={"If-None-Match": '"stale"'}) as r:
        assert r.status == 200 and len(await r.read()) > 0
    async with client.get(site.url("/"), headers={"If-None-Match": etag}) as r:  # another file's tag
        assert r.status == 200


@pytest.mark.parametrize("path", [
    "/static/nope.js", "/static/.hidden", "/static/vendor/nope.js", "/static/index", "/static/",
    "/static/../api/app.py", "/static/vendor/../../session.py", "/static/%2e%2e/app.py",
    "/static/vendor/x/../../app.py", "/static/..%2fapi%2fapp.py", "/static/%2e%2e%2fapi%2fsession.py",
    "/static/vendor%2f..%2f..%2fapi%2fpage.py", "/static/..\\api\\app.py", "/static/__init__.py",
    "/static/vendor/../../api/session.py", "/static/%2E%2E/%2E%2E/recorderd/api/app.py",
    "/static/app.js%00.py", "/static/vendor/vendor/hls.min.js",
])
async def test_unknown_and_traversal_names_are_404(site: Site, path: str) -> None:
    status, headers, body = await asyncio.to_thread(raw_get, site.srv.port, path)
    assert status == 404, (path, body[:200])
    assert b"from __future__" not in body and b"import " not in body and b"def " not in body
    if path in ("/static/nope.js", "/static/.hidden"):  # a name the route takes: answered by the page code
        assert headers["x-content-type-options"] == "nosniff" and "script-src 'self'" in headers["content-security-policy"]



async def test_without_tokens_a_change_from_another_sites_page_is_refused(tmp_path: Path) -> None:
    # token-less (loopback only): anyone local may change clips, but not a page of another site that
    # the local user happens to have open (its browser sends that site's Origin)
    async with running(tmp_path / "rec") as site:
        site.services.config = make_config(site.root, ())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as plain:
            status, doc = await call(plain, site, "POST", "/api/v1/clips", json={},
                                     headers={"Origin": "http://evil.example"})
            assert (status, doc["error"]) == (403, "forbidden")
            for headers in ({}, {"Origin": site.origin}):  # curl sends none; this host's page its own
                status, doc = await call(plain, site, "POST", "/api/v1/clips", json={}, headers=headers)
                assert (status, doc["error"]) == (400, "bad_request"), headers


def test_load_key_tightens_a_key_file_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    key = load_key(path)
    path.chmod(0o644)  # restored from a backup, say
    assert load_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
