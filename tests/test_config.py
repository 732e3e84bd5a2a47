"""recorderd.config: parsing, defaults, key-path errors, secrets, reload diffs."""

from __future__ import annotations

import hashlib
import os
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from recorderd.config import (
    DEFAULT_PLANS,
    Camera,
    Config,
    ConfigError,
    HttpConfig,
    HttpToken,
    diff_cameras,
    is_loopback_listen,
    load_config,
    parse_config,
    parse_text,
)

FULL = textwrap.dedent("""\
    storage:
      root: /srv/recordings/
      min_free_percent: 12.5
      min_free_bytes: 1073741824
      free_margin_percent: 3
      status_file: /run/recorderd/status.json
    plans:
      gold: {retention_days: 60}
      basic: {retention_days: 3}
    defaults:
      segment_seconds: 600
      plan: pro
      audio: aac
      stall_seconds: 20
      timeout_seconds: 5.5
      rtsp_transport: udp
      enabled: true
    cameras:
      - id: front-door
        name: Front door
        url: rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101
        tenant: acme
        plan: gold
      - id: yard_2
        url: rtsp://10.0.0.6/stream
        retention_days: 2
        segment_seconds: 60
        audio: false
        rtsp_transport: tcp
        max_bytes: 500000000
        enabled: false
      - id: Lobby
        url: rtsps://viewer:pw@cam.example.com:322/live
        plan: basic
        audio: copy
        stall_seconds: 7
    database:
      dsn: postgresql://recorder:dbpass@127.0.0.1/recorderd
      pending_max_rows: 1000
      batch_max_rows: 100
    retention:
      interval_seconds: 30
      disk_check_seconds: 1.5
      batch_size: 50
      enabled: false
    metrics:
      listen: 0.0.0.0:9200
    http:
      max_exports: 3
      tokens:
        - name: acme-viewer
          sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08
          tenants: [acme]
    shutdown_seconds: 4
    """)

MINIMAL = "storage: {root: /srv/rec}\n"
TEST_SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")


def cfg(**top: Any) -> dict[str, Any]:
    """A valid config document (as parsed YAML) with ``top`` merged in."""
    doc: dict[str, Any] = {"storage": {"root": "/srv/rec"},
                           "cameras": [{"id": "cam1", "url": "rtsp://10.0.0.1/s"}]}
    doc.update(top)
    return doc


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    assert info.value.source == "test.yaml"
    return info.value.errors


def one_error(data: Any) -> str:
    errs = errors_of(data)
    assert len(errs) == 1, errs
    return errs[0]


def cam_doc(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "cam1", "url": "rtsp://10.0.0.1/s"}
    body.update(fields)
    return cfg(cameras=[body])


# --------------------------------------------------------------------------- a good file


def test_full_file() -> None:
    c = parse_text(FULL, "cameras.yaml")
    assert isinstance(c, Config)
    assert c.source == "cameras.yaml"
    assert c.storage.root == Path("/srv/recordings")  # normalised: no trailing slash
    assert c.storage.min_free_percent == 12.5
    assert c.storage.min_free_bytes == 1 << 30
    assert c.storage.free_margin_percent == 3.0
    assert c.storage.status_file == Path("/run/recorderd/status.json")
    assert c.plans["gold"].retention_days == 60
    assert c.plans["basic"].retention_days == 3  # a built-in plan overridden
    assert c.plans["pro"].retention_days == DEFAULT_PLANS["pro"]
    assert [cam.id for cam in c.cameras] == ["front-door", "yard_2", "Lobby"]

    front, yard, lobby = c.cameras
    assert front == Camera(
        id="front-door", name="Front door", url="rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101",
        tenant="acme", plan="gold", retention_days=60, enabled=True, segment_seconds=600, audio="aac",
        stall_seconds=20.0, timeout_seconds=5.5, rtsp_transport="udp", max_bytes=None,
    )
    assert (front.index, yard.index, lobby.index) == (0, 1, 2)  # hints name cameras[N]
    assert yard.name == "yard_2"  # name defaults to the id
    assert yard.plan == "pro" and yard.retention_days == 2  # own retention wins over the plan's
    assert yard.segment_seconds == 60 and yard.audio == "off" and yard.rtsp_transport == "tcp"
    assert yard.max_bytes == 500_000_000 and yard.enabled is False and yard.tenant is None
    assert lobby.plan == "basic" and lobby.retention_days == 3 and lobby.audio == "copy"
    assert lobby.stall_seconds == 7.0 and isinstance(lobby.stall_seconds, float)
    assert c.enabled_cameras == (front, lobby)
    assert c.camera("yard_2") is yard and c.camera("nope") is None

    assert c.database.dsn == "postgresql://recorder:dbpass@127.0.0.1/recorderd"
    assert c.database.pending_max_rows == 1000 and c.database.batch_max_rows == 100
    assert c.retention.interval_seconds == 30.0 and c.retention.disk_check_seconds == 1.5
    assert c.retention.batch_size == 50 and c.retention.enabled is False
    assert c.metrics.listen == "0.0.0.0:9200"
    assert c.http == HttpConfig(listen="0.0.0.0:9200", max_exports=3, tokens=(HttpToken(
        name="acme-viewer", sha256=TEST_SHA, tenants=frozenset({"acme"}), clips=False),))
    assert c.warnings == ("metrics.listen is deprecated: use http.listen",)
    assert c.plans["gold"].max_clips is None and c.plans["basic"].max_clips == 10
    assert c.shutdown_seconds == 4.0


def test_secrets_not_in_reprs() -> None:
    c = parse_text(FULL)
    text = repr(c) + str(c) + repr(c.cameras) + repr(c.database) + repr(c.http)
    assert "s3cret" not in text and "dbpass" not in text and ":pw@" not in text
    assert TEST_SHA not in text.lower() and "acme-viewer" in text
    assert c.cameras[0].masked_url == "rtsp://admin:***@10.0.0.5:554/Streaming/Channels/101"


def test_minimal_file_defaults() -> None:
    c = parse_text(MINIMAL)
    assert c.cameras == ()
    assert c.storage.root == Path("/srv/rec")
    assert c.storage.min_free_percent == 10.0
    assert c.storage.min_free_bytes == 0
    assert c.storage.free_margin_percent == 2.0
    assert c.storage.status_file == Path("/srv/rec/.recorderd/status.json")
    assert dict(c.plans) == {n: c.plans[n] for n in DEFAULT_PLANS}
    assert {n: p.retention_days for n, p in c.plans.items()} == dict(DEFAULT_PLANS)
    assert c.database.dsn is None
    assert c.database.pending_max_rows == 200_000 and c.database.batch_max_rows == 5_000
    assert c.retention.interval_seconds == 60.0 and c.retention.disk_check_seconds == 2.0
    assert c.retention.batch_size == 500 and c.retention.enabled is True
    assert c.metrics.listen == "127.0.0.1:9108"
    assert c.http == HttpConfig(listen="127.0.0.1:9108", tokens=(), max_exports=2)
    assert c.warnings == ()
    assert {n: p.max_clips for n, p in c.plans.items()} == {"basic": 10, "pro": 50, "premium": None}
    assert c.shutdown_seconds == 8.0


def test_camera_defaults() -> None:
    cam = parse_config(cfg()).cameras[0]
    assert cam.name == "cam1"
    assert cam.plan == "basic" and cam.retention_days == DEFAULT_PLANS["basic"]
    assert cam.segment_seconds == 3600 and cam.audio == "auto"
    assert cam.stall_seconds == 30.0 and cam.timeout_seconds == 10.0
    assert cam.rtsp_transport == "tcp" and cam.enabled is True
    assert cam.tenant is None and cam.max_bytes is None


@pytest.mark.parametrize(("doc_cams", "plans", "defaults", "want_plan", "want_days"), [
    ({}, None, None, "basic", 7),
    ({"plan": "premium"}, None, None, "premium", 30),
    ({"plan": "premium", "retention_days": 3}, None, None, "premium", 3),
    ({}, None, {"plan": "pro"}, "pro", 15),
    ({"retention_days": 90}, None, {"plan": "pro"}, "pro", 90),
    ({"plan": "gold"}, {"gold": {"retention_days": 365}}, None, "gold", 365),
    ({}, {"gold": {"retention_days": 365}}, {"plan": "gold"}, "gold", 365),
    ({}, {"basic": {"retention_days": 1}}, None, "basic", 1),
])
def test_plan_resolution(doc_cams: dict[str, Any], plans: dict[str, Any] | None,
                         defaults: dict[str, Any] | None, want_plan: str, want_days: int) -> None:
    doc = cam_doc(**doc_cams)
    if plans is not None:
        doc["plans"] = plans
    if defaults is not None:
        doc["defaults"] = defaults
    cam = parse_config(doc).cameras[0]
    assert (cam.plan, cam.retention_days) == (want_plan, want_days)


def test_defaults_apply_and_camera_overrides() -> None:
    doc = cfg(defaults={"segment_seconds": 300, "audio": "copy", "enabled": False},
              cameras=[{"id": "a", "url": "rtsp://h/a"},
                       {"id": "b", "url": "rtsp://h/b", "segment_seconds": 60, "audio": "aac",
                        "enabled": True}])
    a, b = parse_config(doc).cameras
    assert (a.segment_seconds, a.audio, a.enabled) == (300, "copy", False)
    assert (b.segment_seconds, b.audio, b.enabled) == (60, "aac", True)


@pytest.mark.parametrize(("value", "want"), [
    (True, "auto"), (False, "off"), ("auto", "auto"), ("copy", "copy"), ("aac", "aac"), ("off", "off"),
])
def test_audio_values(value: Any, want: str) -> None:
    assert parse_config(cam_doc(audio=value)).cameras[0].audio == want


def test_yaml_off_means_audio_off() -> None:
    text = MINIMAL + "cameras:\n  - id: c\n    url: rtsp://h/x\n    audio: off\n"
    assert parse_text(text).cameras[0].audio == "off"


@pytest.mark.parametrize("listen", [None, False, ""])
def test_metrics_can_be_disabled(listen: Any) -> None:
    assert parse_config(cfg(metrics={"listen": listen})).metrics.listen is None


@pytest.mark.parametrize("url", [
    "rtsp://10.0.0.5/x", "rtsps://cam.local:322/live", "rtsp://[::1]:8554/stream", "http://h/mjpeg",
    "https://h/x.m3u8", "rtmp://h/app/key", "srt://h:9000", "udp://239.0.0.1:1234", "file:///tmp/x.mp4",
    "rtsp://admin:p%40ss@h/x",
])
def test_accepted_urls(url: str) -> None:
    assert parse_config(cam_doc(url=url)).cameras[0].url == url


def test_empty_sections_are_fine() -> None:
    c = parse_text(MINIMAL + "cameras:\nplans:\ndefaults:\ndatabase:\nretention:\nmetrics:\n")
    assert c.cameras == () and c.metrics.listen == "127.0.0.1:9108"


# --------------------------------------------------------------------------- errors with key paths


@pytest.mark.parametrize(("doc", "path"), [
    (cfg(bogus=1), "bogus"),
    (cfg(storage={"root": "/x", "rot": 1}), "storage.rot"),
    (cfg(plans={"gold": {"retention_days": 3, "price": 9}}), "plans.gold.price"),
    (cfg(defaults={"segment_second": 60}), "defaults.segment_second"),
    (cfg(defaults={"url": "rtsp://h/x"}), "defaults.url"),  # per-camera only
    (cfg(defaults={"id": "x"}), "defaults.id"),
    (cam_doc(uri="rtsp://h/x"), "cameras[0].uri"),
    (cfg(database={"url": "postgresql://x"}), "database.url"),
    (cfg(retention={"intervall_seconds": 1}), "retention.intervall_seconds"),
    (cfg(metrics={"port": 9100}), "metrics.port"),
])
def test_unknown_keys(doc: dict[str, Any], path: str) -> None:
    err = one_error(doc)
    assert err.startswith(f"{path}: unknown key"), err
    assert "allowed:" in err


def test_unknown_key_in_second_camera_has_its_index() -> None:
    doc = cfg(cameras=[{"id": "a", "url": "rtsp://h/a"}, {"id": "b", "url": "rtsp://h/b", "colour": 1}])
    assert one_error(doc).startswith("cameras[1].colour: unknown key")


def test_duplicate_ids() -> None:
    doc = cfg(cameras=[{"id": "a", "url": "rtsp://h/1"}, {"id": "b", "url": "rtsp://h/2"},
                       {"id": "a", "url": "rtsp://h/3"}])
    err = one_error(doc)
    assert err.startswith("cameras[2].id: duplicate id 'a'") and "cameras[0]" in err


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", ".hidden", "..", "a b", "x" * 65, "caf\u00e9", 5, None,
                                    "a\\b", "a.b"])
def test_unsafe_ids(bad_id: Any) -> None:
    err = one_error(cam_doc(id=bad_id))
    assert err.startswith("cameras[0].id: ") and "not a safe id" in err


@pytest.mark.parametrize("good_id", ["a", "A-b_9", "x" * 64, "-", "123"])
def test_safe_ids(good_id: str) -> None:
    assert parse_config(cam_doc(id=good_id)).cameras[0].id == good_id


def test_id_with_trailing_newline_is_rejected() -> None:
    errors_of(cam_doc(id="cam\n"))


def test_missing_id_and_url() -> None:
    errs = errors_of(cfg(cameras=[{"name": "x"}]))
    assert sorted(errs) == ["cameras[0].id: is required", "cameras[0].url: is required"]


@pytest.mark.parametrize(("url", "needle"), [
    ("ftp://h/x", "unsupported scheme 'ftp'"),
    ("10.0.0.5/stream", "unsupported scheme ''"),
    ("rtsp:///stream", "has no host"),
    ("rtsp://h:99999/x", "not a valid URL"),
    ("rtsp://h:abc/x", "not a valid URL"),
    ("", "must not be empty"),
    (123, "must be a string, got an integer"),
])
def test_bad_urls(url: Any, needle: str) -> None:
    err = one_error(cam_doc(url=url))
    assert err.startswith("cameras[0].url: ") and needle in err, err


def test_unknown_plan() -> None:
    err = one_error(cam_doc(plan="platinum"))
    assert err.startswith("cameras[0].plan: unknown plan 'platinum'") and "basic" in err


def test_unknown_default_plan() -> None:
    errs = errors_of(cfg(defaults={"plan": "platinum"}))
    assert errs and all(e.startswith("defaults.plan: unknown plan 'platinum'") for e in errs), errs


@pytest.mark.parametrize("value", [0, -60])
def test_non_positive_segment_length(value: int) -> None:
    err = one_error(cam_doc(segment_seconds=value))
    assert err == f"cameras[0].segment_seconds: must be positive, got {value}"
    err = one_error(cfg(defaults={"segment_seconds": value}))
    assert err.startswith("defaults.segment_seconds: must be positive")


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("segment_seconds", "60", "must be an integer, got a string"),
    ("segment_seconds", 1.5, "must be an integer, got a number"),
    ("segment_seconds", True, "must be an integer, got a boolean"),
    ("segment_seconds", None, "must be an integer, got nothing"),
    ("stall_seconds", "10s", "must be a number, got a string"),
    ("stall_seconds", 0, "must be positive"),
    ("timeout_seconds", [1], "must be a number, got a list"),
    ("retention_days", 0, "must be positive"),
    ("retention_days", 1.5, "must be an integer"),
    ("max_bytes", -1, "must be positive"),
    ("max_bytes", "1G", "must be an integer, got a string"),
    ("enabled", "yes please", "must be true or false, got a string"),
    ("audio", "mp3", "must be one of auto, copy, aac, false"),
    ("rtsp_transport", "http", "must be tcp or udp"),
    ("tenant", 5, "must be a string, got an integer"),
    ("name", {"a": 1}, "must be a string, got a mapping"),
    ("plan", 7, "must be a string"),
])
def test_wrong_types_in_camera(field: str, value: Any, needle: str) -> None:
    err = one_error(cam_doc(**{field: value}))
    assert err.startswith(f"cameras[0].{field}: ") and needle in err, err


@pytest.mark.parametrize(("doc", "path", "needle"), [
    (cfg(storage={}), "storage.root", "is required"),
    (cfg(storage={"root": "rel/dir"}), "storage.root", "must be an absolute path"),
    (cfg(storage={"root": 5}), "storage.root", "must be a string"),
    (cfg(storage={"root": "/x", "min_free_percent": 100}), "storage.min_free_percent", "below 100"),
    (cfg(storage={"root": "/x", "min_free_percent": -1}), "storage.min_free_percent", "at least 0"),
    (cfg(storage={"root": "/x", "min_free_bytes": 1.5}), "storage.min_free_bytes", "must be an integer"),
    (cfg(storage={"root": "/x", "free_margin_percent": "2%"}), "storage.free_margin_percent",
     "must be a number"),
    (cfg(storage="/srv/rec"), "storage", "must be a mapping, got a string"),
    (cfg(plans=["gold"]), "plans", "must be a mapping, got a list"),
    (cfg(plans={"gold": {}}), "plans.gold.retention_days", "is required"),
    (cfg(plans={"gold": {"retention_days": 0}}), "plans.gold.retention_days", "must be positive"),
    (cfg(plans={"gold": 30}), "plans.gold", "must be a mapping, got an integer"),
    (cfg(plans={"../x": {"retention_days": 1}}), "plans.../x", "plan names use"),
    (cfg(defaults=[1]), "defaults", "must be a mapping, got a list"),
    (cfg(defaults={"enabled": "no"}), "defaults.enabled", "must be true or false"),
    (cfg(cameras={"id": "a"}), "cameras", "must be a list, got a mapping"),
    (cfg(cameras=["rtsp://h/x"]), "cameras[0]", "must be a mapping, got a string"),
    (cfg(database={"dsn": 5}), "database.dsn", "must be a string"),
    (cfg(database={"pending_max_rows": 0}), "database.pending_max_rows", "must be positive"),
    (cfg(database={"batch_max_rows": "many"}), "database.batch_max_rows", "must be an integer"),
    (cfg(retention={"interval_seconds": 0}), "retention.interval_seconds", "must be positive"),
    (cfg(retention={"disk_check_seconds": -1}), "retention.disk_check_seconds", "must be positive"),
    (cfg(retention={"batch_size": 2.5}), "retention.batch_size", "must be an integer"),
    (cfg(retention={"enabled": 1}), "retention.enabled", "must be true or false, got an integer"),
    (cfg(metrics={"listen": "9108"}), "metrics.listen", "must be host:port"),
    (cfg(metrics={"listen": "h:0"}), "metrics.listen", "must be host:port"),
    (cfg(metrics={"listen": "h:70000"}), "metrics.listen", "must be host:port"),
    (cfg(metrics={"listen": 9108}), "metrics.listen", "must be a string"),
    (cfg(shutdown_seconds=0), "shutdown_seconds", "must be positive"),
    (cfg(shutdown_seconds="8"), "shutdown_seconds", "must be a number"),
])
def test_errors_have_key_paths(doc: dict[str, Any], path: str, needle: str) -> None:
    errs = errors_of(doc)
    assert any(e.startswith(f"{path}: ") and needle in e for e in errs), errs


def test_empty_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_text("", "cameras.yaml")
    assert any(e.startswith("(file): is empty") for e in info.value.errors)
    assert str(info.value).startswith("cameras.yaml: invalid config:")


def test_document_not_a_mapping() -> None:
    errs = errors_of(["a", "b"])
    assert any("must be a mapping, got a list" in e for e in errs), errs


def test_all_errors_collected_in_one_exception() -> None:
    doc = {
        "storage": {"root": "relative", "junk": 1},
        "plans": {"gold": {"retention_days": -1}},
        "defaults": {"segment_seconds": 0},
        "cameras": [
            {"id": "../x", "url": "rtsp://h/1"},
            {"id": "ok", "url": "ftp://h/2", "plan": "nope"},
            {"id": "ok", "url": "rtsp://h/3", "segment_seconds": -5},
            {"url": "rtsp://h/4"},
        ],
        "retention": {"batch_size": 0},
        "metrics": {"listen": "nope"},
        "shutdown_seconds": -1,
        "extra": True,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "f.yaml")
    paths = {e.split(": ", 1)[0] for e in info.value.errors}
    assert paths >= {
        "storage.root", "storage.junk", "plans.gold.retention_days", "defaults.segment_seconds",
        "cameras[0].id", "cameras[1].url", "cameras[1].plan", "cameras[2].id",
        "cameras[2].segment_seconds", "cameras[3].id", "retention.batch_size", "metrics.listen",
        "shutdown_seconds", "extra",
    }, info.value.errors
    message = str(info.value)
    assert message.startswith("f.yaml: invalid config:\n")
    for e in info.value.errors:
        assert f"\n  {e}" in message


def test_yaml_syntax_error_mentions_line() -> None:
    text = "storage:\n  root: /srv/rec\ncameras:\n  - id: a\n    url: [unclosed\n\nmetrics: {listen: x}\n"
    with pytest.raises(ConfigError) as info:
        parse_text(text, "cams.yaml")
    (err,) = info.value.errors
    assert err.startswith("YAML syntax error at line ")
    assert info.value.source == "cams.yaml"
    line = int(err.split("line ", 1)[1].split(",", 1)[0])
    assert 5 <= line <= 8


def test_yaml_syntax_error_exact_line() -> None:
    text = "storage:\n  root: /srv/rec\n bad: indent\n"
    with pytest.raises(ConfigError) as info:
        parse_text(text)
    assert "line 3" in info.value.errors[0]


def test_tab_indentation_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_text("storage:\n\troot: /x\n")
    assert "line 2" in info.value.errors[0]


# --------------------------------------------------------------------------- passwords never in errors

PASSWORD = "Sup3r-Secret-Pw"


@pytest.mark.parametrize("url", [
    f"ftp://admin:{PASSWORD}@h/x",  # bad scheme
    f"rtsp://admin:{PASSWORD}@h:99999/x",  # bad port
    f"rtsp://admin:{PASSWORD}@h:abc/x",  # non-numeric port
    f"rtsp://admin:{PASSWORD}@/x",  # no host
    f"rtsp://h/x?user=admin&password={PASSWORD}",  # query-string secret, other error below
])
def test_no_password_in_errors(url: str) -> None:
    doc = cam_doc(url=url, segment_seconds=0)
    doc["cameras"].append({"id": "cam1", "url": url})  # duplicate id
    doc["cameras"].append({"id": "../bad", "url": url, "bogus": 1})
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "f.yaml")
    assert PASSWORD not in str(info.value)
    assert all(PASSWORD not in e for e in info.value.errors)


def test_no_password_in_errors_from_yaml_text() -> None:
    text = MINIMAL + f"cameras:\n  - id: a\n    url: ftp://admin:{PASSWORD}@h/x\n    bogus: 1\n"
    with pytest.raises(ConfigError) as info:
        parse_text(text)
    assert PASSWORD not in str(info.value) and "ftp://admin:***@h/x" in str(info.value)


def test_no_password_in_yaml_syntax_error() -> None:
    text = MINIMAL + f"cameras:\n  - id: a\n    url: 'rtsp://admin:{PASSWORD}@h/x\n"  # unclosed quote
    with pytest.raises(ConfigError) as info:
        parse_text(text)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(("url", "secret"), [
    ("rtsp://admin:pa/ss-Sup3r@h/x", "ss-Sup3r"),
    ("rtsp://admin:pa#ss-Sup3r@h/x", "ss-Sup3r"),
    ("rtsp://admin:pa?ss-Sup3r@h/x", "ss-Sup3r"),
    ("admin:Sup3r-Secret@10.0.0.5:554/x", "Sup3r-Secret"),  # operator forgot rtsp://
])
def test_no_password_in_errors_unusual_urls(url: str, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(cam_doc(url=url))
    assert secret not in str(info.value)


@pytest.mark.parametrize("doc", [
    cfg(storage={"root": "/x", "min_free_percent": float("nan")}),
    cfg(defaults={"stall_seconds": float("nan")}),
    cfg(shutdown_seconds=float("nan")),
])
def test_nan_rejected(doc: dict[str, Any]) -> None:
    errors_of(doc)


# --------------------------------------------------------------------------- database DSN


def test_env_dsn_wins_over_file() -> None:
    c = parse_config(cfg(database={"dsn": "postgresql://file/db"}))
    assert c.database_dsn({}) == "postgresql://file/db"
    assert c.database_dsn({"RECORDERD_DATABASE_URL": "postgresql://env/db"}) == "postgresql://env/db"
    assert c.database_dsn({"RECORDERD_DATABASE_URL": ""}) == "postgresql://file/db"


def test_env_dsn_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    c = parse_config(cfg())
    monkeypatch.delenv("RECORDERD_DATABASE_URL", raising=False)
    assert c.database_dsn() is None
    monkeypatch.setenv("RECORDERD_DATABASE_URL", "postgresql://env/db")
    assert c.database_dsn() == "postgresql://env/db"


# --------------------------------------------------------------------------- files


def test_load_config(tmp_path: Path) -> None:
    p = tmp_path / "cameras.yaml"
    p.write_text(FULL, encoding="utf-8")
    c = load_config(p)
    assert c.source == str(p) and len(c.cameras) == 3
    assert load_config(str(p)).cameras == c.cameras


def test_load_config_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.source == str(p)
    assert "cannot read config file" in info.value.errors[0]


def test_load_config_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"storage: {root: /caf\xe9}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "not UTF-8" in info.value.errors[0]


def test_load_config_error_names_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(MINIMAL + "cameras:\n  - id: a\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}: invalid config:")
    assert info.value.errors == ["cameras[0].url: is required"]


def test_shipped_example_config_parses() -> None:
    repo = Path(__file__).resolve().parent.parent
    examples = sorted((repo / "config").glob("*.y*ml")) + sorted((repo / "config").glob("*.example"))
    examples = [p for p in examples if isinstance(yaml.safe_load(p.read_text()), dict)]
    if not examples:
        pytest.skip("no example config shipped yet")
    for p in examples:
        load_config(p)


# --------------------------------------------------------------------------- reload diffs


def _config(*cams: dict[str, Any], **top: Any) -> Config:
    return parse_config(cfg(cameras=list(cams), **top))


BASE = {"id": "a", "url": "rtsp://h/a", "name": "A"}


@pytest.mark.parametrize(("change", "bucket"), [
    ({}, "unchanged"),
    ({"url": "rtsp://h/a2"}, "restarted"),
    ({"url": "rtsp://user:newpw@h/a"}, "restarted"),
    ({"segment_seconds": 60}, "restarted"),
    ({"audio": "off"}, "restarted"),
    ({"timeout_seconds": 3}, "restarted"),
    ({"rtsp_transport": "udp"}, "restarted"),
    ({"enabled": False}, "restarted"),
    ({"name": "Renamed"}, "updated"),
    ({"plan": "premium"}, "updated"),
    ({"retention_days": 99}, "updated"),
    ({"tenant": "acme"}, "updated"),
    ({"max_bytes": 1000}, "updated"),
    ({"stall_seconds": 5}, "updated"),
])
def test_diff_single_camera(change: dict[str, Any], bucket: str) -> None:
    old = _config(BASE)
    new = _config({**BASE, **change})
    d = diff_cameras(old, new)
    buckets = {"added": d.added, "removed": d.removed, "restarted": d.restarted, "updated": d.updated,
               "unchanged": d.unchanged}
    assert buckets.pop(bucket) == (new.cameras[0],)
    assert all(v == () for v in buckets.values()), buckets


def test_diff_plan_change_through_plans_section_is_update() -> None:
    old = _config({**BASE, "plan": "gold"}, plans={"gold": {"retention_days": 30}})
    new = _config({**BASE, "plan": "gold"}, plans={"gold": {"retention_days": 60}})
    d = diff_cameras(old, new)
    assert d.updated == new.cameras and not d.restarted and not d.unchanged


def test_diff_defaults_change_restarts_cameras_using_them() -> None:
    cams: list[dict[str, Any]] = [{"id": "a", "url": "rtsp://h/a"},
                                  {"id": "b", "url": "rtsp://h/b", "segment_seconds": 60}]
    old = _config(*cams)
    new = _config(*cams, defaults={"segment_seconds": 900})
    d = diff_cameras(old, new)
    assert [c.id for c in d.restarted] == ["a"] and [c.id for c in d.unchanged] == ["b"]


def test_diff_mixed() -> None:
    old = _config({"id": "keep", "url": "rtsp://h/k"}, {"id": "gone", "url": "rtsp://h/g"},
                  {"id": "move", "url": "rtsp://h/m"}, {"id": "meta", "url": "rtsp://h/x", "name": "old"})
    new = _config({"id": "meta", "url": "rtsp://h/x", "name": "new"}, {"id": "keep", "url": "rtsp://h/k"},
                  {"id": "move", "url": "rtsp://h/m", "audio": "aac"}, {"id": "fresh", "url": "rtsp://h/f"},
                  {"id": "fresh2", "url": "rtsp://h/f2"})
    d = diff_cameras(old, new)
    kinds = ("added", "removed", "restarted", "updated", "unchanged")
    ids = {k: [c.id for c in getattr(d, k)] for k in kinds}
    assert ids == {"added": ["fresh", "fresh2"], "removed": ["gone"], "restarted": ["move"],
                   "updated": ["meta"], "unchanged": ["keep"]}
    # the diff hands out the NEW camera objects (except for removed ones)
    assert d.updated[0] is new.camera("meta") and d.removed[0] is old.camera("gone")


def test_diff_empty_to_empty_and_all_removed() -> None:
    empty = parse_text(MINIMAL)
    assert diff_cameras(empty, empty) == diff_cameras(empty, empty)
    d = diff_cameras(empty, empty)
    assert (d.added, d.removed, d.restarted, d.updated, d.unchanged) == ((), (), (), (), ())
    full = parse_text(FULL)
    d = diff_cameras(full, empty)
    assert d.removed == full.cameras and not d.added
    d = diff_cameras(empty, full)
    assert d.added == full.cameras and not d.removed


def test_recording_key_ignores_metadata() -> None:
    cam = parse_config(cfg()).cameras[0]
    meta = replace(cam, name="x", tenant="t", plan="pro", retention_days=1, max_bytes=5, stall_seconds=1.0)
    assert meta.recording_key() == cam.recording_key()
    assert replace(cam, url="rtsp://other/x").recording_key() != cam.recording_key()


def test_config_objects_are_frozen() -> None:
    c = parse_config(cfg())
    with pytest.raises(AttributeError):
        c.cameras[0].url = "rtsp://evil/x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.storage.root = Path("/")  # type: ignore[misc]


def test_huge_integer_is_a_config_error_not_a_crash() -> None:
    from recorderd.config import ConfigError, parse_text

    with pytest.raises(ConfigError) as err:
        parse_text("storage: {root: /r}\nretention: {interval_seconds: " + "9" * 400 + "}\n"
                   "cameras: [{id: a, url: 'rtsp://h/x', segment_seconds: " + "9" * 400 + "}]\n")
    errors = err.value.errors
    assert any(e.startswith("retention.interval_seconds: must be at most 86400") for e in errors), errors
    assert any(e.startswith("cameras[0].segment_seconds: must be at most 86400") for e in errors), errors
    assert all(len(e) < 200 for e in errors)  # a 400-digit number is not echoed whole


# --------------------------------------------------------------------------- plans: max_clips


@pytest.mark.parametrize(("plans", "want"), [
    (None, {"basic": 10, "pro": 50, "premium": None}),
    ({"basic": {"retention_days": 3}}, {"basic": 10, "pro": 50, "premium": None}),  # keeps built-in max
    ({"basic": {"retention_days": 7, "max_clips": 20}}, {"basic": 20, "pro": 50, "premium": None}),
    ({"pro": {"retention_days": 15, "max_clips": None}}, {"basic": 10, "pro": None, "premium": None}),
    ({"premium": {"retention_days": 30, "max_clips": 0}}, {"basic": 10, "pro": 50, "premium": 0}),
    ({"gold": {"retention_days": 60}}, {"basic": 10, "pro": 50, "premium": None, "gold": None}),
    ({"gold": {"retention_days": 60, "max_clips": 5}}, {"basic": 10, "pro": 50, "premium": None, "gold": 5}),
])
def test_plan_max_clips(plans: dict[str, Any] | None, want: dict[str, int | None]) -> None:
    doc = cfg() if plans is None else cfg(plans=plans)
    assert {n: p.max_clips for n, p in parse_config(doc).plans.items()} == want


def test_builtin_plan_may_set_only_max_clips() -> None:
    plans = parse_config(cfg(plans={"pro": {"max_clips": 99}})).plans
    assert (plans["pro"].retention_days, plans["pro"].max_clips) == (DEFAULT_PLANS["pro"], 99)
    assert one_error(cfg(plans={"gold": {"max_clips": 3}})) == "plans.gold.retention_days: is required"


def test_plan_max_clips_from_yaml_text() -> None:
    c = parse_text(MINIMAL + textwrap.dedent("""\
        plans:
          basic:   {retention_days: 7, max_clips: 10}
          pro:     {retention_days: 15, max_clips: 50}
          premium: {retention_days: 30}
        """))
    assert [(p.name, p.retention_days, p.max_clips) for p in c.plans.values()] == [
        ("basic", 7, 10), ("pro", 15, 50), ("premium", 30, None)]


@pytest.mark.parametrize(("value", "needle"), [
    (-1, "must be at least 0"), ("ten", "must be an integer"), (1.5, "must be an integer"),
    (True, "must be an integer"), (10**7, "must be at most"),
])
def test_plan_max_clips_errors(value: Any, needle: str) -> None:
    err = one_error(cfg(plans={"gold": {"retention_days": 3, "max_clips": value}}))
    assert err.startswith("plans.gold.max_clips: ") and needle in err, err


# --------------------------------------------------------------------------- http: listen


def http_doc(**http: Any) -> dict[str, Any]:
    return cfg(http=http)


def token(name: Any = "ops", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "sha256": TEST_SHA}
    body.update(fields)
    return body


@pytest.mark.parametrize("listen", ["127.0.0.1:9200", "127.3.2.1:1", "[::1]:9108", "::1:9108",
                                    "localhost:9108", "LocalHost:9108", "[::ffff:127.0.0.1]:9108"])
def test_http_listen_loopback_needs_no_token(listen: str) -> None:
    c = parse_config(http_doc(listen=listen))
    assert c.http.listen == listen and c.metrics.listen == listen and c.http.tokens == ()
    assert c.warnings == ()


@pytest.mark.parametrize("listen", [None, False, ""])
def test_http_listen_can_be_disabled(listen: Any) -> None:
    c = parse_config(http_doc(listen=listen))
    assert c.http.listen is None and c.metrics.listen is None and c.warnings == ()


def test_empty_http_section_is_fine() -> None:
    c = parse_text(MINIMAL + "http:\n")
    assert c.http == HttpConfig(listen="127.0.0.1:9108", tokens=(), max_exports=2)
    c = parse_text(MINIMAL + "http:\n  tokens:\n")
    assert c.http.tokens == ()


@pytest.mark.parametrize(("value", "needle"), [
    ("9108", "must be host:port"), ("h:0", "must be host:port"), ("h:70000", "must be host:port"),
    ("127.0.0.1:", "must be host:port"), (9108, "must be a string"), (["a"], "must be a string"),
])
def test_http_listen_errors(value: Any, needle: str) -> None:
    err = one_error(http_doc(listen=value))
    assert err.startswith("http.listen: ") and needle in err, err


NON_LOOPBACK = ["0.0.0.0:9108", "*:9108", ":9108", "[::]:9108", "::9108", "10.0.0.5:9108", "[fe80::1]:9108",
                "nvr.example.com:9108", "localhost.example.com:9108", "127.0.0.1.nip.io:80", "127.1:9108",
                "[::ffff:10.0.0.1]:9108"]


@pytest.mark.parametrize("listen", NON_LOOPBACK)
def test_non_loopback_listen_without_tokens_is_refused(listen: str) -> None:
    err = one_error(http_doc(listen=listen))
    assert err == (f"http.listen: {listen!r} is reachable from other hosts and no http.tokens are configured: "
                   "footage would be public; add a token or listen on 127.0.0.1")


@pytest.mark.parametrize("listen", NON_LOOPBACK)
def test_non_loopback_listen_with_a_token_is_fine(listen: str) -> None:
    c = parse_config(http_doc(listen=listen, tokens=[token()]))
    assert c.http.listen == listen and [t.name for t in c.http.tokens] == ["ops"]


def test_non_loopback_refusal_through_deprecated_metrics_listen_names_that_key() -> None:
    err = one_error(cfg(metrics={"listen": "0.0.0.0:9108"}))
    assert err.startswith("metrics.listen: '0.0.0.0:9108' is reachable from other hosts and no http.tokens")
    c = parse_config(cfg(metrics={"listen": "0.0.0.0:9108"}, http={"tokens": [token()]}))
    assert c.http.listen == c.metrics.listen == "0.0.0.0:9108"


def test_broken_tokens_do_not_add_a_public_listener_error() -> None:
    errs = errors_of(http_doc(listen="0.0.0.0:9108", tokens=[{"name": "ops"}]))
    assert errs == ["http.tokens[0]: needs sha256 (the token's SHA-256) or token_file (a file holding the token)"]
    errs = errors_of(http_doc(listen="0.0.0.0:9108", tokens="abc"))
    assert errs == ["http.tokens: must be a list, got a string"]


@pytest.mark.parametrize(("listen", "want"), [
    ("127.0.0.1:1", True), ("127.255.255.254:1", True), ("[::1]:1", True), ("::1:1", True),
    ("localhost:1", True), ("[::ffff:127.0.0.1]:1", True),
    ("0.0.0.0:1", False), ("*:1", False), (":1", False), ("[::]:1", False), ("128.0.0.1:1", False),
    ("192.168.1.2:1", False), ("host:1", False), ("[::2]:1", False),
])
def test_is_loopback_listen(listen: str, want: bool) -> None:
    assert is_loopback_listen(listen) is want


# --------------------------------------------------------------------------- http: deprecated metrics.listen

DEPRECATED = "metrics.listen is deprecated: use http.listen"


@pytest.mark.parametrize(("metrics", "want"), [
    ("127.0.0.1:9200", "127.0.0.1:9200"), (None, None), (False, None), ("", None),
])
def test_metrics_listen_still_works_with_a_warning(metrics: Any, want: str | None) -> None:
    c = parse_config(cfg(metrics={"listen": metrics}))
    assert c.http.listen == want and c.metrics.listen == want
    assert c.warnings == (DEPRECATED,)


def test_metrics_section_without_listen_warns_nothing() -> None:
    c = parse_config(cfg(metrics={}))
    assert c.warnings == () and c.http.listen == "127.0.0.1:9108"


@pytest.mark.parametrize(("metrics", "http"), [
    ("127.0.0.1:9200", "127.0.0.1:9200"), (None, None), (None, False), ("", None),
])
def test_metrics_listen_equal_to_http_listen_only_warns(metrics: Any, http: Any) -> None:
    c = parse_config(cfg(metrics={"listen": metrics}, http={"listen": http}))
    assert c.http.listen == c.metrics.listen == (http or None)
    assert c.warnings == (DEPRECATED,)


@pytest.mark.parametrize(("metrics", "http"), [
    ("127.0.0.1:9200", "127.0.0.1:9300"), (None, "127.0.0.1:9300"), ("127.0.0.1:9200", None),
])
def test_metrics_listen_differing_from_http_listen_is_an_error(metrics: Any, http: Any) -> None:
    err = one_error(cfg(metrics={"listen": metrics}, http={"listen": http}))
    assert err == (f"metrics.listen: is deprecated and differs from http.listen ({metrics or None!r} vs "
                   f"{http!r}): remove metrics.listen")


def test_metrics_listen_given_http_section_without_listen_uses_metrics() -> None:
    c = parse_config(cfg(metrics={"listen": "127.0.0.1:9200"}, http={"max_exports": 4}))
    assert c.http.listen == "127.0.0.1:9200" and c.http.max_exports == 4 and c.warnings == (DEPRECATED,)


def test_bad_metrics_listen_is_reported_once_under_its_own_key() -> None:
    assert one_error(cfg(metrics={"listen": "nope"})) == "metrics.listen: must be host:port, got 'nope'"
    assert one_error(cfg(metrics={"listen": "nope"}, http={"listen": "127.0.0.1:1"})) == (
        "metrics.listen: must be host:port, got 'nope'")


# --------------------------------------------------------------------------- http: max_exports


def test_max_exports() -> None:
    assert parse_config(cfg()).http.max_exports == 2
    assert parse_config(http_doc(max_exports=1)).http.max_exports == 1
    assert parse_config(http_doc(max_exports=64)).http.max_exports == 64


@pytest.mark.parametrize(("value", "needle"), [
    (0, "must be positive"), (-1, "must be positive"), (65, "must be at most 64"), ("2", "must be an integer"),
    (2.5, "must be an integer"), (None, "must be an integer"),
])
def test_max_exports_errors(value: Any, needle: str) -> None:
    err = one_error(http_doc(max_exports=value))
    assert err.startswith("http.max_exports: ") and needle in err, err


# --------------------------------------------------------------------------- http: tokens


def test_tokens_parsed() -> None:
    upper = TEST_SHA.upper()
    other = "a" * 64
    c = parse_config(http_doc(tokens=[
        token("city-1-viewer", sha256=upper, tenants=["city-1"]),
        token("ops.admin_2", sha256=other, clips=True, tenants=None),
        token("two", sha256="b" * 64, tenants=["t1", "t2", "t1"], clips=False),
    ]))
    assert c.http.tokens == (
        HttpToken(name="city-1-viewer", sha256=TEST_SHA, tenants=frozenset({"city-1"}), clips=False),
        HttpToken(name="ops.admin_2", sha256=other, tenants=None, clips=True),
        HttpToken(name="two", sha256="b" * 64, tenants=frozenset({"t1", "t2"}), clips=False),
    )
    assert TEST_SHA not in repr(c.http) and other not in repr(c.http)


def test_tokens_from_yaml_text_issue_example(tmp_path: Path) -> None:
    (tmp_path / "ops").write_text("  s3cr3t-0ps-token-value-long-enough\n\n", encoding="utf-8")
    c = parse_text(MINIMAL + textwrap.dedent(f"""\
        cameras:
          - {{id: c1, url: 'rtsp://h/1', tenant: city-1}}
        http:
          listen: 0.0.0.0:9108
          max_exports: 2
          tokens:
            - name: city-1-viewer
              sha256: {TEST_SHA}
              tenants: [city-1]
              clips: true
            - name: ops
              token_file: {tmp_path / "ops"}
        """))
    viewer, ops = c.http.tokens
    assert (viewer.name, viewer.tenants, viewer.clips) == ("city-1-viewer", frozenset({"city-1"}), True)
    assert ops.name == "ops" and ops.tenants is None and ops.clips is False
    assert ops.sha256 == hashlib.sha256(b"s3cr3t-0ps-token-value-long-enough").hexdigest()
    assert c.warnings == ()
    assert "s3cr3t" not in repr(c)


def test_token_file_is_hashed_not_kept(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_bytes(b"\t test-token-0123456789 \r\n")
    c = parse_config(http_doc(tokens=[{"name": "ops", "token_file": str(f)}]))
    (tok,) = c.http.tokens
    assert tok.sha256 == hashlib.sha256(b"test-token-0123456789").hexdigest()
    assert "test-token" not in repr(c) and "test-token" not in str(c.http)


def test_short_token_file_warns(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text("abc\n")
    c = parse_config(http_doc(tokens=[{"name": "ops", "token_file": str(f)}]))
    assert c.http.tokens[0].sha256 == hashlib.sha256(b"abc").hexdigest()
    (warning,) = c.warnings
    assert warning.startswith("http.tokens[0].token_file: ") and "shorter than 16 characters" in warning
    assert "abc" not in warning.replace(str(f), "")


def test_token_tenant_matching_no_camera_warns() -> None:
    doc = cfg(cameras=[{"id": "c", "url": "rtsp://h/c", "tenant": "city-1"}],
              http={"tokens": [token("a", tenants=["city-1"]), token("b", sha256="b" * 64, tenants=["city1"])]})
    c = parse_config(doc)
    assert c.warnings == ("http.tokens[1].tenants: 'city1' is no camera's tenant (yet): the token sees none "
                          "of its footage",)


@pytest.mark.parametrize(("tok", "path", "needle"), [
    ({"sha256": TEST_SHA}, "http.tokens[0].name", "is required"),
    (token(""), "http.tokens[0].name", "not a valid token name"),
    (token("has space"), "http.tokens[0].name", "not a valid token name"),
    (token("a/b"), "http.tokens[0].name", "not a valid token name"),
    (token("x" * 65), "http.tokens[0].name", "not a valid token name"),
    (token("ok\n"), "http.tokens[0].name", "not a valid token name"),
    (token(5), "http.tokens[0].name", "not a valid token name"),
    ({"name": "ops"}, "http.tokens[0]", "needs sha256 (the token's SHA-256) or token_file"),
    (token(token_file="/x"), "http.tokens[0]", "give sha256 or token_file, not both"),
    (token(sha256=TEST_SHA[:-1]), "http.tokens[0].sha256", "64 hex digits, got 63 characters"),
    (token(sha256=TEST_SHA + "0"), "http.tokens[0].sha256", "64 hex digits, got 65 characters"),
    (token(sha256="g" * 64), "http.tokens[0].sha256", "64 hex digits, got 64 characters"),
    (token(sha256=123), "http.tokens[0].sha256", "must be a string, got an integer"),
    (token(sha256=""), "http.tokens[0].sha256", "must not be empty"),
    (token(tenants="city-1"), "http.tokens[0].tenants", "must be a list of tenants, got a string"),
    (token(tenants=[]), "http.tokens[0].tenants", "is empty: the token would see nothing"),
    (token(tenants=["a", 3]), "http.tokens[0].tenants[1]", "must be a string"),
    (token(tenants=["a", " "]), "http.tokens[0].tenants[1]", "must not be empty"),
    (token(clips="yes"), "http.tokens[0].clips", "must be true or false"),
    (token(clips=1), "http.tokens[0].clips", "must be true or false"),
    (token(token="abc"), "http.tokens[0].token", "unknown key"),
    ("ops", "http.tokens[0]", "must be a mapping, got a string"),
    (token(sha256=None, token_file=None), "http.tokens[0]", "give sha256 or token_file, not both"),
])
def test_token_errors(tok: Any, path: str, needle: str) -> None:
    err = one_error(http_doc(tokens=[tok]))
    assert err.startswith(f"{path}: ") and needle in err, err


def test_sha256_value_is_never_echoed() -> None:
    pasted = "my-actual-secret-token-pasted-by-mistake"
    err = one_error(http_doc(tokens=[token(sha256=pasted)]))
    assert pasted not in err and "40 characters (not shown)" in err


def test_duplicate_token_names_and_digests() -> None:
    errs = errors_of(http_doc(tokens=[token("a"), token("a", sha256="b" * 64), token("c", sha256=TEST_SHA.upper()),
                                      token("d", sha256="d" * 64)]))
    assert errs == ["http.tokens[1].name: duplicate token name 'a' (also http.tokens[0])",
                    "http.tokens[2]: the same token as http.tokens[0]: give each client its own"]
    assert not any(TEST_SHA in e.lower() for e in errs)


def test_duplicate_digest_between_sha256_and_token_file(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text("test\n")
    errs = errors_of(http_doc(tokens=[token("a"), {"name": "b", "token_file": str(f)}]))
    assert errs == ["http.tokens[1]: the same token as http.tokens[0]: give each client its own"]


def test_tokens_must_be_a_list() -> None:
    assert one_error(http_doc(tokens={"name": "ops"})) == "http.tokens: must be a list, got a mapping"


def test_unknown_http_key() -> None:
    err = one_error(http_doc(port=80))
    assert err == "http.port: unknown key (allowed: listen, max_exports, tokens)"


def test_all_token_errors_collected() -> None:
    errs = errors_of(http_doc(listen="h:0", max_exports=0, tokens=[{"name": "a b"}, token(clips="x")]))
    assert [e.split(":")[0] for e in errs] == ["http.listen", "http.max_exports", "http.tokens[0].name",
                                              "http.tokens[0]", "http.tokens[1].clips"]


# --------------------------------------------------------------------------- http: token_file problems

SECRET_CONTENT = "Sup3r-secret-token-content-1234"


@pytest.mark.parametrize(("content", "needle"), [
    (b"", "is empty"),
    (b"  \n\t\n", "is empty"),
    (SECRET_CONTENT.encode() + b" second-word", "printable ASCII characters without spaces"),
    (SECRET_CONTENT.encode() + b"\x00", "printable ASCII characters without spaces"),
    ("Sup3r-sécret-token".encode(), "printable ASCII characters without spaces"),
    (b"\xff\xfe" + SECRET_CONTENT.encode(), "printable ASCII characters without spaces"),
    (SECRET_CONTENT.encode() * 200, "is larger than 4096 bytes"),
])
def test_token_file_bad_content(tmp_path: Path, content: bytes, needle: str) -> None:
    f = tmp_path / "tok"
    f.write_bytes(content)
    err = one_error(http_doc(tokens=[{"name": "ops", "token_file": str(f)}]))
    assert err.startswith(f"http.tokens[0].token_file: {str(f)!r} ") and needle in err, err
    assert "Sup3r" not in err and "second-word" not in err


def test_token_file_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    err = one_error(http_doc(tokens=[{"name": "ops", "token_file": str(missing)}]))
    assert err == f"http.tokens[0].token_file: cannot read {str(missing)!r}: No such file or directory"
    err = one_error(http_doc(tokens=[{"name": "ops", "token_file": str(tmp_path)}]))
    assert err == f"http.tokens[0].token_file: {str(tmp_path)!r} is not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_token_file_permission_denied(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text(SECRET_CONTENT)
    f.chmod(0)
    err = one_error(http_doc(tokens=[{"name": "ops", "token_file": str(f)}]))
    assert err == f"http.tokens[0].token_file: cannot read {str(f)!r}: Permission denied"


def test_token_file_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    err = one_error(http_doc(tokens=[{"name": "ops", "token_file": str(fifo)}]))
    assert err == f"http.tokens[0].token_file: {str(fifo)!r} is not a regular file"


@pytest.mark.parametrize(("value", "needle"), [
    ("relative/tok", "must be an absolute path, got 'relative/tok'"),
    ("", "must not be empty"),
    (7, "must be a string, got an integer"),
])
def test_token_file_path_errors(value: Any, needle: str) -> None:
    err = one_error(http_doc(tokens=[{"name": "ops", "token_file": value}]))
    assert err.startswith("http.tokens[0].token_file: ") and needle in err, err


def test_token_file_symlink_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("linked-token-0123456789\n")
    link = tmp_path / "link"
    link.symlink_to(real)
    (tok,) = parse_config(http_doc(tokens=[{"name": "ops", "token_file": str(link)}])).http.tokens
    assert tok.sha256 == hashlib.sha256(b"linked-token-0123456789").hexdigest()


def test_the_clips_directory_is_not_a_camera_id() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"storage": {"root": "/r"}, "cameras": [{"id": "clips", "url": "rtsp://h/x"}]})
    assert any(e.startswith("cameras[0].id:") and "reserved" in e for e in exc.value.errors)
