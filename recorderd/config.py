"""cameras.yaml parsed once into frozen dataclasses.

Every error carries its key path (``cameras[2].url: ...``) so an operator can fix a file without
reading code; all errors are collected, not just the first. A reload builds a new ``Config`` and
diffs it against the running one (see ``diff_cameras``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from recorderd.masking import mask_text, mask_url, secrets_of

CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
AUDIO_MODES = ("auto", "copy", "aac", "off")
DEFAULT_PLANS: Mapping[str, int] = {"basic": 7, "pro": 15, "premium": 30}
# Clips a camera on a built-in plan may keep when the config does not say; None: unlimited.
DEFAULT_MAX_CLIPS: Mapping[str, int | None] = {"basic": 10, "pro": 50, "premium": None}
DEFAULT_LISTEN = "127.0.0.1:9108"
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_SHA256_RE = re.compile(r"^[0-9A-Fa-f]{64}\Z")
TOKEN_FILE_MAX_BYTES = 4096
SHORT_TOKEN_CHARS = 16  # a token_file token shorter than this gets a warning: guessable
# The largest drain budget accepted; systemd/recorderd.service's TimeoutStopSec leaves room for it plus
# the daemon's backstop (tests/test_systemd.py ties the two).
SHUTDOWN_MAX_SECONDS = 60
RESERVED_CAMERA_IDS = frozenset({"clips"})  # directories under the root that are not cameras


class ConfigError(Exception):
    """A config file that cannot run; ``errors`` lists every problem with its key path."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = errors
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid config:\n  " + "\n  ".join(errors))


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    retention_days: int
    max_clips: int | None  # None: unlimited
    archive_after_hours: float | None = None  # None: footage stays on the local disk
    compress_after_days: float | None = None  # None: footage keeps its recorded encoding


@dataclass(frozen=True, slots=True)
class Camera:
    id: str
    name: str
    url: str = field(repr=False)
    tenant: str | None
    plan: str
    retention_days: int
    enabled: bool
    segment_seconds: int
    audio: str
    stall_seconds: float
    timeout_seconds: float
    rtsp_transport: str
    max_bytes: int | None
    # position in the file's ``cameras`` list, for hints that name the key to fix; not compared, so a
    # reordered file is not a changed camera (the daemon hands every kept camera its new object)
    index: int = field(default=-1, compare=False)

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def recording_key(self) -> tuple[object, ...]:
        """Fields whose change needs the camera's FFmpeg restarted (retention/plan do not)."""
        return (self.url, self.segment_seconds, self.audio, self.timeout_seconds,
                self.rtsp_transport, self.enabled)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    root: Path
    min_free_percent: float
    min_free_bytes: int
    free_margin_percent: float
    status_file: Path


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    dsn: str | None = field(repr=False)
    pending_max_rows: int
    batch_max_rows: int


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    interval_seconds: float
    disk_check_seconds: float
    batch_size: int
    enabled: bool


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Deprecated section: ``listen`` always equals ``Config.http.listen`` (the one listener)."""

    listen: str | None  # "host:port"; None disables the listener


@dataclass(frozen=True, slots=True)
class HttpToken:
    """An API token: only the SHA-256 of the secret is kept (a ``token_file`` is hashed at load)."""

    name: str
    sha256: str = field(repr=False)  # 64 lowercase hex digits
    tenants: frozenset[str] | None  # None: every tenant
    clips: bool  # may create, rename and delete clips


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str | None  # "host:port"; None disables the listener
    tokens: tuple[HttpToken, ...]  # empty: no authentication (allowed on loopback only)
    max_exports: int  # concurrent exports/clip extractions; past it the API answers 429


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """``archive:``: where aged footage goes. Credentials are not here (environment or
    ``credentials_file``, read by ``recorderd.objectstore``), so a Config never holds them."""

    url: str  # s3://bucket/prefix
    bucket: str
    prefix: str  # no leading or trailing "/"; may be empty
    endpoint: str | None  # None: AWS
    region: str
    credentials_file: Path | None
    upload_limit_mbps: float | None  # megabits per second, averaged per file; None: no limit
    concurrency: int  # uploads at once
    clips: bool  # archive saved clips' footage too (protected segments); they are never deleted
    interval_seconds: float = 30.0  # how often to look for due footage when none was waiting


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """``compression:``: how plans with ``compress_after_days`` re-encode (recorderd.compress)."""

    codec: str
    crf: int
    preset: str
    concurrency: int
    cpu_budget: float  # average cores the tier may use
    interval_seconds: float = 60.0  # how often to look for due footage when none was waiting


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """``node:``: this box among several sharing one index (recorderd.nodes). ``id`` and ``url`` may come
    from ``RECORDERD_NODE_ID``/``RECORDERD_NODE_URL`` so every box can read the same cameras.yaml.

    With a ``url`` the node is *clustered*: it records only the cameras it holds a lease on. Without one
    it records every camera in the file, as a single box always did (and never waits on the database).
    """

    id: str
    url: str | None = None  # http(s)://host:port of this node's API, as the other nodes reach it
    max_cameras: int | None = None  # None: an even share, however many that is
    lease_seconds: float = 8.0  # a holder that stops renewing loses its cameras after this long
    drain_seconds: float = 120.0  # a drain gives up handing over after this long, then stops anyway

    @property
    def clustered(self) -> bool:
        return self.url is not None

    @property
    def renew_seconds(self) -> float:
        """The lease is renewed, and the cluster looked at, this often: fencing takes at most this long."""
        return self.lease_seconds / 4


def default_node_id() -> str:
    return socket.gethostname().split(".")[0] or "recorderd"


@dataclass(frozen=True, slots=True)
class Config:
    storage: StorageConfig
    plans: Mapping[str, Plan]
    cameras: tuple[Camera, ...]
    database: DatabaseConfig
    retention: RetentionConfig
    metrics: MetricsConfig
    http: HttpConfig
    shutdown_seconds: float
    source: str = ""
    archive: ArchiveConfig | None = None
    compression: CompressionConfig = CompressionConfig("libx265", 28, "medium", 1, 0.5)
    node: NodeConfig = field(default_factory=lambda: NodeConfig(default_node_id()))
    warnings: tuple[str, ...] = ()  # valid but worth telling the operator (deprecated keys, weak tokens)

    def camera(self, camera_id: str) -> Camera | None:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        return None

    @property
    def enabled_cameras(self) -> tuple[Camera, ...]:
        return tuple(c for c in self.cameras if c.enabled)

    def database_dsn(self, environ: Mapping[str, str] | None = None) -> str | None:
        """``RECORDERD_DATABASE_URL`` wins over the YAML so the password need not sit in the file."""
        env = os.environ if environ is None else environ
        return env.get("RECORDERD_DATABASE_URL") or self.database.dsn


@dataclass(frozen=True, slots=True)
class CameraDiff:
    added: tuple[Camera, ...]
    removed: tuple[Camera, ...]
    restarted: tuple[Camera, ...]  # recording settings changed: new FFmpeg
    updated: tuple[Camera, ...]  # only metadata (name, tenant, plan, retention...) changed
    unchanged: tuple[Camera, ...]


def diff_cameras(old: Config, new: Config) -> CameraDiff:
    old_by_id = {c.id: c for c in old.cameras}
    new_by_id = {c.id: c for c in new.cameras}
    added, removed, restarted, updated, unchanged = [], [], [], [], []
    for cam in new.cameras:
        prev = old_by_id.get(cam.id)
        if prev is None:
            added.append(cam)
        elif prev == cam:
            unchanged.append(cam)
        elif prev.recording_key() != cam.recording_key():
            restarted.append(cam)
        else:
            updated.append(cam)
    removed = [c for c in old.cameras if c.id not in new_by_id]
    return CameraDiff(tuple(added), tuple(removed), tuple(restarted), tuple(updated), tuple(unchanged))


# --------------------------------------------------------------------------- parsing


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{path}: {msg}")


def _mapping(value: Any, path: str, errs: _Errors, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errs.add(path, f"must be a mapping, got {_kind(value)}")
        return {}
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            errs.add(f"{path}.{key}" if path else str(key),
                     f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return {k: v for k, v in value.items() if isinstance(k, str) and k in allowed}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _number(value: Any, path: str, errs: _Errors, *, integer: bool, minimum: float | None = None,
            positive: bool = False, maximum: float | None = None) -> Any:
    ok_types: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not isinstance(value, int | float):
        errs.add(path, f"must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        errs.add(path, f"must be a finite number, got {value}")
        return None
    if positive and value <= 0:
        errs.add(path, f"must be positive, got {value}")
        return None
    if minimum is not None and value < minimum:
        errs.add(path, f"must be at least {minimum}, got {value}")
        return None
    if maximum is not None and value > maximum:
        shown = value if len(str(value)) < 30 else f"{str(value)[:12]}... ({len(str(value))} digits)"
        errs.add(path, f"must be at most {maximum}, got {shown}")
        return None
    return value


def _string(value: Any, path: str, errs: _Errors, *, nonempty: bool = True) -> str | None:
    if not isinstance(value, str):
        errs.add(path, f"must be a string, got {_kind(value)}")
        return None
    if nonempty and not value.strip():
        errs.add(path, "must not be empty")
        return None
    return value


def _bool(value: Any, path: str, errs: _Errors) -> bool | None:
    if not isinstance(value, bool):
        errs.add(path, f"must be true or false, got {_kind(value)}")
        return None
    return value


def _check_url(url: str, path: str, errs: _Errors) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a non-numeric port
    except ValueError as exc:
        errs.add(path, f"is not a valid URL ({mask_text(str(exc), secrets_of(url))}): {mask_url(url)}")
        return
    if parts.scheme not in ("rtsp", "rtsps", "rtmp", "http", "https", "srt", "udp", "file"):
        errs.add(path, f"unsupported scheme {parts.scheme!r} (expected rtsp://...): {mask_url(url)}")
    elif parts.scheme != "file" and not parts.hostname:
        errs.add(path, f"has no host: {mask_url(url)}")


_TOP = {"storage", "defaults", "plans", "cameras", "database", "retention", "metrics", "http",
        "shutdown_seconds", "archive", "compression", "node"}
_ARCHIVE = {"url", "endpoint", "region", "credentials_file", "upload_limit_mbps", "concurrency", "clips",
            "interval_seconds"}
_COMPRESSION = {"codec", "crf", "preset", "concurrency", "cpu_budget", "interval_seconds"}
_NODE = {"id", "url", "max_cameras", "lease_seconds", "drain_seconds"}
NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
COMPRESSION_CODECS = ("libx265", "libx264")
# the presets x264 and x265 share (placebo left out: it buys nothing for surveillance footage)
COMPRESSION_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                       "veryslow")
_STORAGE = {"root", "min_free_percent", "min_free_bytes", "free_margin_percent", "status_file"}
_CAMERA_SETTINGS = {"segment_seconds", "plan", "audio", "stall_seconds", "timeout_seconds",
                    "rtsp_transport", "enabled"}
_CAMERA = _CAMERA_SETTINGS | {"id", "name", "url", "tenant", "retention_days", "max_bytes"}
_DATABASE = {"dsn", "pending_max_rows", "batch_max_rows"}
_RETENTION = {"interval_seconds", "disk_check_seconds", "batch_size", "enabled"}
_METRICS = {"listen"}
_HTTP = {"listen", "max_exports", "tokens"}
_TOKEN = {"name", "sha256", "token_file", "tenants", "clips"}
_PLAN = {"retention_days", "max_clips", "archive_after_hours", "compress_after_days"}

_DEFAULTS: dict[str, Any] = {
    "segment_seconds": 3600,
    "plan": "basic",
    "audio": "auto",
    "stall_seconds": 30,
    "timeout_seconds": 10,
    "rtsp_transport": "tcp",
    "enabled": True,
}


def _audio(value: Any, path: str, errs: _Errors) -> str | None:
    if value is False:
        return "off"
    if value is True:
        return "auto"
    if isinstance(value, str) and value in AUDIO_MODES:
        return value
    errs.add(path, f"must be one of auto, copy, aac, false; got {value!r}")
    return None


def _camera_setting(key: str, value: Any, path: str, errs: _Errors,
                    plans: Mapping[str, Plan] | None) -> Any:
    if key == "segment_seconds":
        return _number(value, path, errs, integer=True, positive=True, maximum=86400)
    if key in ("stall_seconds", "timeout_seconds"):
        return _number(value, path, errs, integer=False, positive=True, maximum=3600)
    if key == "plan":
        name = _string(value, path, errs)
        if name is not None and plans is not None and name not in plans:
            errs.add(path, f"unknown plan {name!r} (known: {', '.join(sorted(plans))})")
            return None
        return name
    if key == "audio":
        return _audio(value, path, errs)
    if key == "rtsp_transport":
        if value not in ("tcp", "udp"):
            errs.add(path, f"must be tcp or udp, got {value!r}")
            return None
        return value
    if key == "enabled":
        return _bool(value, path, errs)
    raise AssertionError(key)


_UNSET: Any = object()


def _listen(value: Any, path: str, errs: _Errors) -> Any:
    """``host:port``, or None (``null``/``false``/empty: no listener); ``_UNSET`` after an error."""
    if value in (None, False, ""):
        return None
    s = _string(value, path, errs)
    if s is None:
        return _UNSET
    _host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        errs.add(path, f"must be host:port, got {s!r}")
        return _UNSET
    return s


def is_loopback_listen(listen: str) -> bool:
    """True when ``host:port`` binds only this machine: 127.0.0.0/8, ::1 or ``localhost``.

    ``*:port``, ``:port``, ``0.0.0.0``, ``[::]``, any other address and any other host name are not:
    a name may resolve to anything.
    """
    host = listen.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _read_token_file(value: Any, path: str, errs: _Errors, warnings: list[str]) -> str | None:
    """The SHA-256 (hex) of the token a file holds. Errors name the path, never the content."""
    name = _string(value, path, errs)
    if name is None:
        return None
    if not os.path.isabs(name):
        errs.add(path, f"must be an absolute path, got {name!r}")
        return None
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):  # a FIFO or a device would block or never end
            errs.add(path, f"{name!r} is not a regular file")
            return None
        with open(name, "rb") as f:
            raw = f.read(TOKEN_FILE_MAX_BYTES + 1)
    except OSError as exc:
        errs.add(path, f"cannot read {name!r}: {exc.strerror or type(exc).__name__}")
        return None
    if len(raw) > TOKEN_FILE_MAX_BYTES:
        errs.add(path, f"{name!r} is larger than {TOKEN_FILE_MAX_BYTES} bytes: it should hold one token")
        return None
    token = raw.strip()
    if not token:
        errs.add(path, f"{name!r} is empty")
        return None
    # what a client can send after "Bearer ": printable ASCII, no spaces
    if any(not 0x21 <= b <= 0x7E for b in token):
        errs.add(path, f"{name!r} must hold one token of printable ASCII characters without spaces")
        return None
    if len(token) < SHORT_TOKEN_CHARS:
        warnings.append(f"{path}: the token in {name!r} is shorter than {SHORT_TOKEN_CHARS} characters: "
                        "easy to guess (try: openssl rand -base64 32)")
    return hashlib.sha256(token).hexdigest()


def _parse_token(body: Any, p: str, errs: _Errors, warnings: list[str]) -> HttpToken | None:
    t = _mapping(body, p, errs, _TOKEN)
    if not isinstance(body, dict):
        return None
    before = len(errs.items)
    name = None
    if "name" not in t:
        errs.add(f"{p}.name", "is required")
    else:
        name = t["name"]
        if not isinstance(name, str) or not TOKEN_NAME_RE.match(name):
            errs.add(f"{p}.name", f"{name!r} is not a valid token name: use 1-64 of A-Z a-z 0-9 _ . -")
            name = None
    digest = None
    if "sha256" in t and "token_file" in t:
        errs.add(p, "give sha256 or token_file, not both")
    elif "sha256" in t:
        # never echo the value: someone may have pasted the token itself here
        h = _string(t["sha256"], f"{p}.sha256", errs)
        if h is not None:
            if _SHA256_RE.match(h):
                digest = h.lower()
            else:
                errs.add(f"{p}.sha256", f"must be the SHA-256 of the token as 64 hex digits, got {len(h)} "
                         "characters (not shown); e.g. printf %s \"$TOKEN\" | sha256sum")
    elif "token_file" in t:
        digest = _read_token_file(t["token_file"], f"{p}.token_file", errs, warnings)
    else:
        errs.add(p, "needs sha256 (the token's SHA-256) or token_file (a file holding the token)")
    tenants: frozenset[str] | None = None
    if t.get("tenants") is not None:
        raw = t["tenants"]
        if not isinstance(raw, list):
            errs.add(f"{p}.tenants", f"must be a list of tenants, got {_kind(raw)}")
        elif not raw:
            errs.add(f"{p}.tenants", "is empty: the token would see nothing (omit it for every tenant)")
        else:
            items = [_string(v, f"{p}.tenants[{j}]", errs) for j, v in enumerate(raw)]
            tenants = frozenset(v for v in items if v is not None)
    clips = _bool(t.get("clips", False), f"{p}.clips", errs)
    if len(errs.items) != before or name is None or digest is None or clips is None:
        return None
    return HttpToken(name=name, sha256=digest, tenants=tenants, clips=clips)


def _parse_http(top: Mapping[str, Any], errs: _Errors, warnings: list[str],
                cameras: list[Camera]) -> HttpConfig:
    mt = _mapping(top.get("metrics"), "metrics", errs, _METRICS)
    ht = _mapping(top.get("http"), "http", errs, _HTTP)

    listen: Any = DEFAULT_LISTEN
    listen_key = "http.listen"
    http_listen = _listen(ht["listen"], "http.listen", errs) if "listen" in ht else _UNSET
    if "listen" in mt:
        warnings.append("metrics.listen is deprecated: use http.listen")
        metrics_listen = _listen(mt["listen"], "metrics.listen", errs)
        if "listen" not in ht:
            listen, listen_key = metrics_listen, "metrics.listen"
        elif http_listen is not _UNSET and metrics_listen is not _UNSET and metrics_listen != http_listen:
            errs.add("metrics.listen", f"is deprecated and differs from http.listen ({metrics_listen!r} vs "
                     f"{http_listen!r}): remove metrics.listen")
    if "listen" in ht:
        listen = http_listen

    max_exports = _number(ht.get("max_exports", 2), "http.max_exports", errs, integer=True, positive=True,
                          maximum=64)

    raw_tokens = ht.get("tokens")
    entries: list[Any] = []
    tokens_given = False  # entries were meant, valid or not: no second error about a public listener
    if isinstance(raw_tokens, list):
        entries, tokens_given = raw_tokens, bool(raw_tokens)
    elif raw_tokens is not None:
        errs.add("http.tokens", f"must be a list, got {_kind(raw_tokens)}")
        tokens_given = True
    tokens: list[HttpToken] = []
    by_name: dict[str, int] = {}
    by_digest: dict[str, int] = {}
    for i, body in enumerate(entries):
        p = f"http.tokens[{i}]"
        tok = _parse_token(body, p, errs, warnings)
        if tok is None:
            continue
        if tok.name in by_name:
            errs.add(f"{p}.name", f"duplicate token name {tok.name!r} (also http.tokens[{by_name[tok.name]}])")
            continue
        if tok.sha256 in by_digest:  # the value stays out of the message
            errs.add(p, f"the same token as http.tokens[{by_digest[tok.sha256]}]: give each client its own")
            continue
        by_name[tok.name] = by_digest[tok.sha256] = i
        tokens.append(tok)
    known_tenants = {c.tenant for c in cameras if c.tenant is not None}
    for tok in tokens:
        for tenant in sorted(tok.tenants or ()):
            if tenant not in known_tenants:
                warnings.append(f"http.tokens[{by_name[tok.name]}].tenants: {tenant!r} is no camera's tenant "
                                "(yet): the token sees none of its footage")

    if isinstance(listen, str) and not tokens_given and not is_loopback_listen(listen):
        errs.add(listen_key, f"{listen!r} is reachable from other hosts and no http.tokens are configured: "
                 "footage would be public; add a token or listen on 127.0.0.1")
    return HttpConfig(listen=listen if isinstance(listen, str) else None, tokens=tuple(tokens),
                      max_exports=max_exports if max_exports is not None else 2)


def parse_config(data: Any, source: str = "", environ: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raise ``ConfigError`` listing every problem."""
    errs = _Errors()
    top = _mapping(data, "", errs, _TOP)
    if data is None:
        errs.add("(file)", "is empty")

    # plans first: cameras refer to them
    plans: dict[str, Plan] = {n: Plan(n, d, DEFAULT_MAX_CLIPS[n]) for n, d in DEFAULT_PLANS.items()}
    raw_plans = top.get("plans")
    if raw_plans is not None:
        if not isinstance(raw_plans, dict):
            errs.add("plans", f"must be a mapping, got {_kind(raw_plans)}")
        else:
            for name, body in raw_plans.items():
                p = f"plans.{name}"
                if not isinstance(name, str) or not CAMERA_ID_RE.match(name):  # \Z: no trailing newline
                    errs.add(p, "plan names use letters, digits, '_' and '-'")
                    continue
                b = _mapping(body, p, errs, _PLAN)
                before = len(errs.items)
                if "retention_days" in b:
                    days = _number(b["retention_days"], f"{p}.retention_days", errs, integer=True,
                                   positive=True, maximum=36500)
                elif name in DEFAULT_PLANS:  # a built-in plan may change only its max_clips
                    days = DEFAULT_PLANS[name]
                else:
                    errs.add(f"{p}.retention_days", "is required")
                    continue
                max_clips: int | None = DEFAULT_MAX_CLIPS.get(name)  # a custom plan: unlimited
                if "max_clips" in b:
                    max_clips = None if b["max_clips"] is None else _number(
                        b["max_clips"], f"{p}.max_clips", errs, integer=True, minimum=0, maximum=1_000_000)
                tiers = [None if b.get(k) is None else _number(b[k], f"{p}.{k}", errs, integer=False,
                                                               positive=True, maximum=36500 * 24)
                         for k in ("archive_after_hours", "compress_after_days")]
                if len(errs.items) == before:
                    plans[name] = Plan(name, days, max_clips, *(None if t is None else float(t) for t in tiers))

    # storage
    st = _mapping(top.get("storage"), "storage", errs, _STORAGE)
    root: Path | None = None
    if "root" not in st:
        errs.add("storage.root", "is required")
    else:
        r = _string(st["root"], "storage.root", errs)
        if r is not None:
            if not os.path.isabs(r):
                errs.add("storage.root", f"must be an absolute path, got {r!r}")
            else:
                root = Path(os.path.normpath(r))
    min_free_percent = _number(st.get("min_free_percent", 10), "storage.min_free_percent", errs,
                               integer=False, minimum=0)
    if min_free_percent is not None and min_free_percent >= 100:
        errs.add("storage.min_free_percent", f"must be below 100, got {min_free_percent}")
    min_free_bytes = _number(st.get("min_free_bytes", 0), "storage.min_free_bytes", errs,
                             integer=True, minimum=0)
    margin = _number(st.get("free_margin_percent", 2), "storage.free_margin_percent", errs,
                     integer=False, minimum=0)
    status_file: Path | None = None
    if "status_file" in st:
        s = _string(st["status_file"], "storage.status_file", errs)
        if s is not None:
            status_file = Path(s)
    elif root is not None:
        status_file = root / ".recorderd" / "status.json"

    # defaults
    defaults = dict(_DEFAULTS)
    dflt = _mapping(top.get("defaults"), "defaults", errs, _CAMERA_SETTINGS)
    for key, value in dflt.items():
        v = _camera_setting(key, value, f"defaults.{key}", errs, plans)
        if v is not None:
            defaults[key] = v
    if defaults["plan"] not in plans:
        errs.add("defaults.plan", f"unknown plan {defaults['plan']!r}")

    # cameras
    cameras: list[Camera] = []
    raw_cams = top.get("cameras", [])
    if raw_cams is None:
        raw_cams = []
    if not isinstance(raw_cams, list):
        errs.add("cameras", f"must be a list, got {_kind(raw_cams)}")
        raw_cams = []
    seen: dict[str, int] = {}
    for i, body in enumerate(raw_cams):
        p = f"cameras[{i}]"
        c = _mapping(body, p, errs, _CAMERA)
        if not isinstance(body, dict):
            continue
        before = len(errs.items)
        cam_id = None
        if "id" not in c:
            errs.add(f"{p}.id", "is required")
        else:
            cam_id = c["id"]
            if not isinstance(cam_id, str) or not CAMERA_ID_RE.match(cam_id):
                errs.add(f"{p}.id", f"{cam_id!r} is not a safe id: use 1-64 of A-Z a-z 0-9 _ - "
                         "(it names a directory)")
                cam_id = None
            elif cam_id in RESERVED_CAMERA_IDS:
                errs.add(f"{p}.id", f"{cam_id!r} is reserved: <root>/{cam_id}/ holds saved clips")
                cam_id = None
            elif cam_id in seen:
                errs.add(f"{p}.id", f"duplicate id {cam_id!r} (also cameras[{seen[cam_id]}])")
            else:
                seen[cam_id] = i
        url = None
        if "url" not in c:
            errs.add(f"{p}.url", "is required")
        else:
            url = _string(c["url"], f"{p}.url", errs)
            if url is not None:
                _check_url(url, f"{p}.url", errs)
        name = _string(c.get("name", cam_id or ""), f"{p}.name", errs, nonempty=False)
        tenant = None
        if c.get("tenant") is not None:
            tenant = _string(c["tenant"], f"{p}.tenant", errs)
        settings = dict(defaults)
        for key in _CAMERA_SETTINGS:
            if key in c:
                v = _camera_setting(key, c[key], f"{p}.{key}", errs, plans)
                if v is not None:
                    settings[key] = v
        retention_days = None
        if "retention_days" in c:
            retention_days = _number(c["retention_days"], f"{p}.retention_days", errs,
                                     integer=True, positive=True, maximum=36500)
        max_bytes = None
        if c.get("max_bytes") is not None:
            max_bytes = _number(c["max_bytes"], f"{p}.max_bytes", errs, integer=True, positive=True)
        if len(errs.items) != before or cam_id is None or url is None:
            continue
        plan = plans.get(settings["plan"])
        if plan is None:
            continue
        cameras.append(Camera(
            id=cam_id, name=name or cam_id, url=url, tenant=tenant, plan=plan.name,
            retention_days=retention_days or plan.retention_days, enabled=settings["enabled"],
            segment_seconds=settings["segment_seconds"], audio=settings["audio"],
            stall_seconds=float(settings["stall_seconds"]), timeout_seconds=float(settings["timeout_seconds"]),
            rtsp_transport=settings["rtsp_transport"], max_bytes=max_bytes, index=i,
        ))

    # database
    db = _mapping(top.get("database"), "database", errs, _DATABASE)
    dsn = None
    if db.get("dsn") is not None:
        dsn = _string(db["dsn"], "database.dsn", errs)
    pending_max = _number(db.get("pending_max_rows", 200_000), "database.pending_max_rows", errs,
                          integer=True, positive=True)
    batch_max = _number(db.get("batch_max_rows", 5_000), "database.batch_max_rows", errs,
                        integer=True, positive=True)

    # retention
    rt = _mapping(top.get("retention"), "retention", errs, _RETENTION)
    interval = _number(rt.get("interval_seconds", 60), "retention.interval_seconds", errs,
                       integer=False, positive=True, maximum=86400)
    disk_check = _number(rt.get("disk_check_seconds", 2), "retention.disk_check_seconds", errs,
                         integer=False, positive=True, maximum=3600)
    batch_size = _number(rt.get("batch_size", 500), "retention.batch_size", errs, integer=True, positive=True)
    rt_enabled = _bool(rt.get("enabled", True), "retention.enabled", errs)

    # http (and the deprecated metrics.listen: one listener serves /metrics, /healthz and the API)
    warnings: list[str] = []
    http = _parse_http(top, errs, warnings, cameras)

    archive = _parse_archive(top.get("archive"), errs)
    compression = _parse_compression(top.get("compression"), errs)
    node = _parse_node(top.get("node"), errs, os.environ if environ is None else environ)

    shutdown = _number(top.get("shutdown_seconds", 8), "shutdown_seconds", errs, integer=False, positive=True,
                       maximum=SHUTDOWN_MAX_SECONDS)

    if errs.items:
        raise ConfigError(errs.items, source)
    assert root is not None and status_file is not None
    return Config(
        storage=StorageConfig(root=root, min_free_percent=float(min_free_percent),
                              min_free_bytes=int(min_free_bytes), free_margin_percent=float(margin),
                              status_file=status_file),
        plans=plans,
        cameras=tuple(cameras),
        database=DatabaseConfig(dsn=dsn, pending_max_rows=pending_max, batch_max_rows=batch_max),
        retention=RetentionConfig(interval_seconds=float(interval), disk_check_seconds=float(disk_check),
                                  batch_size=batch_size, enabled=bool(rt_enabled)),
        metrics=MetricsConfig(listen=http.listen),
        http=http,
        shutdown_seconds=float(shutdown),
        source=source,
        warnings=tuple(warnings),
        archive=archive,
        compression=compression,
        node=node,
    )


def _parse_archive(value: Any, errs: _Errors) -> ArchiveConfig | None:
    if value is None:
        return None
    a = _mapping(value, "archive", errs, _ARCHIVE)
    before = len(errs.items)
    url = _string(a["url"], "archive.url", errs) if "url" in a else None
    if "url" not in a:
        errs.add("archive.url", "is required")
    bucket = prefix = ""
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            errs.add("archive.url", f"must look like s3://bucket/prefix, got {mask_url(url)!r}")
        else:
            bucket, prefix = parts.netloc, parts.path.strip("/")
    endpoint = None
    if a.get("endpoint") is not None:
        endpoint = _string(a["endpoint"], "archive.endpoint", errs)
        if endpoint is not None and (urlsplit(endpoint).scheme not in ("http", "https")
                                     or not urlsplit(endpoint).hostname or "@" in endpoint):
            errs.add("archive.endpoint", f"must be an http(s)://host[:port] URL without credentials, "
                                         f"got {mask_url(endpoint)!r}")
    region = _string(a.get("region", "us-east-1"), "archive.region", errs)
    cred = a.get("credentials_file")
    cred_path = _string(cred, "archive.credentials_file", errs) if cred is not None else None
    limit = a.get("upload_limit_mbps")
    limit = None if limit is None else _number(limit, "archive.upload_limit_mbps", errs, integer=False,
                                               positive=True)
    conc = _number(a.get("concurrency", 2), "archive.concurrency", errs, integer=True, positive=True, maximum=64)
    clips = _bool(a.get("clips", False), "archive.clips", errs)
    interval = _number(a.get("interval_seconds", 30), "archive.interval_seconds", errs, integer=False,
                       positive=True, maximum=86400)
    if len(errs.items) != before or url is None or region is None:
        return None
    return ArchiveConfig(url=url, bucket=bucket, prefix=prefix, endpoint=endpoint and endpoint.rstrip("/"),
                         region=region, credentials_file=Path(cred_path) if cred_path else None,
                         upload_limit_mbps=None if limit is None else float(limit), concurrency=int(conc),
                         clips=bool(clips), interval_seconds=float(interval))


def _parse_node(value: Any, errs: _Errors, environ: Mapping[str, str]) -> NodeConfig:
    """The environment wins over the file: one cameras.yaml, a different node on every box."""
    n = _mapping(value, "node", errs, _NODE) if value is not None else {}
    node_id: Any = environ.get("RECORDERD_NODE_ID") or n.get("id") or default_node_id()
    where = "RECORDERD_NODE_ID" if environ.get("RECORDERD_NODE_ID") else "node.id"
    if not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
        errs.add(where, f"must be 1-63 letters, digits, '_', '.' or '-', got {node_id!r}")
        node_id = default_node_id()
    url: Any = environ.get("RECORDERD_NODE_URL") or n.get("url")
    where = "RECORDERD_NODE_URL" if environ.get("RECORDERD_NODE_URL") else "node.url"
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        try:
            port = parts.port if parts is not None else None  # ValueError: not a port number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or "@" in url \
                or parts.query or parts.fragment or any(ch.isspace() for ch in url) or port == 0:
            errs.add(where, f"must be the node's http(s)://host:port API address, got {mask_url(str(url))!r}")
            url = None
        else:
            url = url.rstrip("/")
    cap = n.get("max_cameras")
    cap = None if cap is None else _number(cap, "node.max_cameras", errs, integer=True, minimum=0,
                                           maximum=100_000)
    lease = _number(n.get("lease_seconds", 8), "node.lease_seconds", errs, integer=False, minimum=2, maximum=300)
    drain = _number(n.get("drain_seconds", 120), "node.drain_seconds", errs, integer=False, positive=True,
                    maximum=3600)
    return NodeConfig(id=node_id, url=url, max_cameras=None if cap is None else int(cap),
                      lease_seconds=float(lease if lease is not None else 8),
                      drain_seconds=float(drain if drain is not None else 120))


def _parse_compression(value: Any, errs: _Errors) -> CompressionConfig:
    c = _mapping(value, "compression", errs, _COMPRESSION) if value is not None else {}
    codec = _string(c.get("codec", "libx265"), "compression.codec", errs)
    if codec is not None and codec not in COMPRESSION_CODECS:
        errs.add("compression.codec", f"must be one of {', '.join(COMPRESSION_CODECS)}, got {codec!r}")
    crf = _number(c.get("crf", 28), "compression.crf", errs, integer=True, minimum=0, maximum=51)
    preset = _string(c.get("preset", "medium"), "compression.preset", errs)
    if preset is not None and preset not in COMPRESSION_PRESETS:
        errs.add("compression.preset", f"must be one of {', '.join(COMPRESSION_PRESETS)}, got {preset!r}")
    conc = _number(c.get("concurrency", 1), "compression.concurrency", errs, integer=True, positive=True,
                   maximum=64)
    budget = _number(c.get("cpu_budget", 0.5), "compression.cpu_budget", errs, integer=False, positive=True,
                     maximum=1024)
    interval = _number(c.get("interval_seconds", 60), "compression.interval_seconds", errs, integer=False,
                       positive=True, maximum=86400)
    if None in (codec, crf, preset, conc, budget, interval):
        return CompressionConfig("libx265", 28, "medium", 1, 0.5)
    return CompressionConfig(str(codec), int(crf), str(preset), int(conc), float(budget), float(interval))


def parse_text(text: str, source: str = "<string>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        detail = f"{context}; {problem}" if context else problem
        raise ConfigError([f"YAML syntax error at {where}: {detail}"], source) from None
    return parse_config(data, source)


def load_config(path: str | os.PathLike[str]) -> Config:
    return read_config_text(path)[0]


def read_config_text(path: str | os.PathLike[str]) -> tuple[Config, str]:
    """The config and the exact text it came from (one read: what is saved is what was validated)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc.strerror}"], str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc}"], str(p)) from None
    return parse_text(text, str(p)), text
