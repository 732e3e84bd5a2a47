"""recorderd.api.auth: bearer tokens, tenant scopes, signed media URLs."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, parse_qsl

import pytest

from recorderd.api.auth import ANONYMOUS, Authenticator, Principal, UrlSigner
from recorderd.config import HttpToken


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


VIEWER_TOKEN = "viewer-token-0123456789abcdef"
OPS_TOKEN = "ops-Token_with.all+chars/~=="
TOKENS = (
    HttpToken(name="city-1-viewer", sha256=sha(VIEWER_TOKEN), tenants=frozenset({"city-1"}), clips=False),
    HttpToken(name="ops", sha256=sha(OPS_TOKEN), tenants=None, clips=True),
)
VIEWER = Principal("city-1-viewer", frozenset({"city-1"}), False)
OPS = Principal("ops", None, True)


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(TOKENS)


# --------------------------------------------------------------------------- bearer tokens


def test_right_tokens(auth: Authenticator) -> None:
    assert auth.required is True
    assert auth.from_header(f"Bearer {VIEWER_TOKEN}") == VIEWER
    assert auth.from_header(f"Bearer {OPS_TOKEN}") == OPS


@pytest.mark.parametrize("header", [f"bearer {VIEWER_TOKEN}", f"BEARER {VIEWER_TOKEN}",
                                    f"  Bearer   {VIEWER_TOKEN}  ", f"Bearer\t{VIEWER_TOKEN}"])
def test_scheme_is_case_insensitive_and_spacing_lenient(auth: Authenticator, header: str) -> None:
    assert auth.from_header(header) == VIEWER


@pytest.mark.parametrize("header", [
    None, "", "   ", "Bearer", "Bearer ", "Bearer  ", VIEWER_TOKEN, f"Basic {VIEWER_TOKEN}",
    f"Token {VIEWER_TOKEN}", f"Bearer {VIEWER_TOKEN} extra", f"Bearer {VIEWER_TOKEN}x", f"Bearer x{VIEWER_TOKEN}",
    f"Bearer {VIEWER_TOKEN.upper()}", "Bearer wrong", f"Bearer {sha(VIEWER_TOKEN)}",  # the digest is no token
    f"Bearer {VIEWER_TOKEN}\x00", "Bearer tökén", "Bearer \udcff\udcfe", "Bearer " + "a" * 100_000,
    f"Bearer{VIEWER_TOKEN}",
])
def test_missing_malformed_or_wrong(auth: Authenticator, header: str | None) -> None:
    assert auth.from_header(header) is None


def test_token_digest_case_from_config_does_not_matter() -> None:
    upper = HttpToken(name="x", sha256=sha(VIEWER_TOKEN).upper(), tenants=None, clips=False)
    assert Authenticator([upper]).from_header(f"Bearer {VIEWER_TOKEN}") == Principal("x", None, False)


def test_no_tokens_configured_means_anonymous() -> None:
    auth = Authenticator(())
    assert auth.required is False
    assert auth.from_header(None) is ANONYMOUS
    assert auth.from_header("Bearer whatever") is ANONYMOUS
    assert ANONYMOUS == Principal("anonymous", None, True) and ANONYMOUS.sees(None) and ANONYMOUS.sees("t")


def test_by_name(auth: Authenticator) -> None:
    assert auth.by_name("ops") == OPS and auth.by_name("city-1-viewer") == VIEWER
    assert auth.by_name("nobody") is None and auth.by_name("anonymous") is None and auth.by_name("") is None
    assert Authenticator(()).by_name("anonymous") is ANONYMOUS
    assert Authenticator(()).by_name("ops") is None
    # a token removed from the config is gone for by_name too
    assert Authenticator(TOKENS[:1]).by_name("ops") is None


def test_nothing_secret_in_reprs(auth: Authenticator) -> None:
    text = repr(auth) + repr(TOKENS) + repr(auth.from_header(f"Bearer {OPS_TOKEN}"))
    assert OPS_TOKEN not in text and sha(OPS_TOKEN) not in text
    signer = UrlSigner(b"k" * 32)
    assert "kkkk" not in repr(signer)


# --------------------------------------------------------------------------- tenant scoping


@pytest.mark.parametrize(("principal", "tenant", "want"), [
    (OPS, None, True), (OPS, "city-1", True), (OPS, "city-2", True),
    (VIEWER, "city-1", True), (VIEWER, "city-2", False), (VIEWER, None, False), (VIEWER, "", False),
    (VIEWER, "City-1", False),
    (Principal("two", frozenset({"a", "b"}), False), "b", True),
    (Principal("none", frozenset(), False), "a", False),
])
def test_sees(principal: Principal, tenant: str | None, want: bool) -> None:
    assert principal.sees(tenant) is want


def test_principal_is_frozen() -> None:
    with pytest.raises(AttributeError):
        OPS.clips = False  # type: ignore[misc]


# --------------------------------------------------------------------------- signed media URLs

KEY = b"0123456789abcdef0123456789abcdef"
PATH = "/api/v1/media/cam-001/2026/11/19/08/00-00.mp4"
NOW = 1_800_000_000.0


def q(query: str) -> dict[str, str]:
    return dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))


def test_round_trip() -> None:
    signer = UrlSigner(KEY, ttl=600)
    query = signer.sign(PATH, OPS, now=NOW)
    parsed = parse_qs(query, strict_parsing=True)
    assert sorted(parsed) == ["exp", "p", "sig"] and parsed["exp"] == [str(int(NOW + 600))]
    assert parsed["p"] == ["ops"]
    assert signer.verify(PATH, q(query), now=NOW) == "ops"
    assert signer.verify(PATH, q(query), now=NOW + 600) == "ops"  # valid up to and including exp
    assert UrlSigner(KEY, ttl=600).verify(PATH, q(query), now=NOW) == "ops"  # same key: same verdict


def test_default_now_and_key() -> None:
    signer = UrlSigner()
    assert signer.verify(PATH, q(signer.sign(PATH, VIEWER))) == "city-1-viewer"


def test_expired() -> None:
    signer = UrlSigner(KEY, ttl=60)
    query = q(signer.sign(PATH, OPS, now=NOW))
    assert signer.verify(PATH, query, now=NOW + 60) == "ops"
    assert signer.verify(PATH, query, now=NOW + 61) is None
    assert signer.verify(PATH, query, now=NOW + 10**9) is None


def test_another_process_key_rejects() -> None:
    query = q(UrlSigner().sign(PATH, OPS, now=NOW))
    assert UrlSigner().verify(PATH, query, now=NOW) is None
    assert UrlSigner(KEY).verify(PATH, q(UrlSigner(KEY[::-1]).sign(PATH, OPS, now=NOW)), now=NOW) is None


@pytest.mark.parametrize("other", [
    PATH + "x", PATH[:-1], "/api/v1/media/cam-002/2026/11/19/08/00-00.mp4", PATH.upper(), PATH + "/",
    "/api/v1/media/cam-001/2026/11/19/08/00-00.mp4%00", "", PATH + "?exp=1",
])
def test_tampered_path(other: str) -> None:
    signer = UrlSigner(KEY)
    assert signer.verify(other, q(signer.sign(PATH, OPS, now=NOW)), now=NOW) is None


def test_tampered_fields() -> None:
    signer = UrlSigner(KEY)
    good = q(signer.sign(PATH, VIEWER, now=NOW))
    exp = int(good["exp"])
    for change in ({"exp": str(exp + 1)}, {"exp": str(exp - 1)}, {"exp": f"0{exp}"}, {"exp": f"{exp}.0"},
                   {"exp": f" {exp}"}, {"exp": "-1"}, {"exp": ""}, {"exp": "9" * 40},
                   {"p": "ops"}, {"p": "city-1-viewer2"}, {"p": ""}, {"p": "city-1-viewer\n"},
                   {"sig": good["sig"][:-1]}, {"sig": good["sig"] + "A"}, {"sig": ""},
                   {"sig": good["sig"][:-2] + ("AA" if good["sig"][-2:] != "AA" else "BB")},
                   {"sig": good["sig"] + "="}, {"sig": "é" * 43}):
        assert signer.verify(PATH, {**good, **change}, now=NOW) is None, change
    for missing in ("exp", "p", "sig"):
        assert signer.verify(PATH, {k: v for k, v in good.items() if k != missing}, now=NOW) is None
    assert signer.verify(PATH, {}, now=NOW) is None
    assert signer.verify(PATH, good, now=NOW) == "city-1-viewer"  # untouched still verifies


def test_signature_is_bound_to_the_name_not_only_the_path() -> None:
    signer = UrlSigner(KEY)
    ops_sig = q(signer.sign(PATH, OPS, now=NOW))["sig"]
    viewer = q(signer.sign(PATH, VIEWER, now=NOW))
    assert ops_sig != viewer["sig"]
    assert signer.verify(PATH, {**viewer, "sig": ops_sig}, now=NOW) is None


def test_separator_in_path_cannot_forge_another_name() -> None:
    signer = UrlSigner(KEY)
    # path "/a|1|b" signed for exp X, name n must not verify as path "/a", exp ..., etc.
    query = q(signer.sign("/a|9999999999|ops", VIEWER, now=NOW))
    assert signer.verify("/a", {**query, "p": "ops"}, now=NOW) is None


def test_sign_rejects_a_path_with_a_query() -> None:
    with pytest.raises(ValueError, match="without a query"):
        UrlSigner(KEY).sign(PATH + "?x=1", OPS)
    with pytest.raises(ValueError, match="without a query"):
        UrlSigner(KEY).sign(PATH + "#frag", OPS)


def test_sign_anonymous_round_trip() -> None:
    signer = UrlSigner(KEY)
    name = signer.verify(PATH, q(signer.sign(PATH, ANONYMOUS, now=NOW)), now=NOW)
    assert name == "anonymous" and Authenticator(()).by_name(name) is ANONYMOUS


def test_unicode_path_round_trip() -> None:
    signer = UrlSigner(KEY)
    path = "/api/v1/media/câm/\udcff.mp4"  # surrogates (undecodable bytes) must not crash signing
    assert signer.verify(path, q(signer.sign(path, OPS, now=NOW)), now=NOW) == "ops"


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"key": b"short"}, "at least 16 bytes"), ({"ttl": 0}, "ttl must be positive"),
    ({"ttl": -5}, "ttl must be positive"), ({"ttl": float("nan")}, "ttl must be positive"),
])
def test_signer_arguments(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        UrlSigner(**kwargs)  # type: ignore[arg-type]


def test_no_signature_or_token_in_exceptions() -> None:
    signer = UrlSigner(KEY)
    query = signer.sign(PATH, OPS, now=NOW)
    sig = q(query)["sig"]
    try:
        signer.sign(PATH + "?" + query, OPS)
    except ValueError as exc:
        assert sig not in str(exc) and "sig=" not in str(exc)
