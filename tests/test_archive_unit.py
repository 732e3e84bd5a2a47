"""The archive tier's pure parts: config, keys, fragment maps, the upload pacer, credentials, ETags,
Range parsing, the status line."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import HTTPException

from recorderd.api.errors import ApiError
from recorderd.api.objects import byte_range
from recorderd.archive import UploadPacer, cutoffs, object_key_for, pack_fragments, unpack_fragments
from recorderd.config import ConfigError, parse_config
from recorderd.fmp4 import Fragment, FragmentIndex
from recorderd.objectstore import ArchiveError, ObjectStore, expected_etag, load_credentials
from recorderd.report import archive_line


def cfg(**extra: Any) -> Any:
    return parse_config({"storage": {"root": "/srv/rec"}, "cameras": [
        {"id": "a", "url": "rtsp://h/s", "plan": "pro"}, {"id": "b", "url": "rtsp://h/s"}], **extra})


def errors(**extra: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        cfg(**extra)
    return e.value.errors


# --------------------------------------------------------------------------- config


def test_archive_config_takes_the_keys_of_the_issue() -> None:
    c = cfg(archive={"url": "s3://recordings/box-1", "endpoint": "http://127.0.0.1:8333/", "region": "eu-west-1"},
            plans={"pro": {"retention_days": 15, "archive_after_hours": 1.5, "compress_after_days": 0.5}})
    assert c.archive.bucket == "recordings" and c.archive.prefix == "box-1"
    assert c.archive.endpoint == "http://127.0.0.1:8333" and c.archive.region == "eu-west-1"
    assert c.archive.upload_limit_mbps is None and c.archive.concurrency == 2 and c.archive.clips is False
    assert c.plans["pro"].archive_after_hours == 1.5 and c.plans["pro"].compress_after_days == 0.5
    assert c.plans["basic"].archive_after_hours is None  # omitted: stays local
    assert cfg().archive is None


@pytest.mark.parametrize(("archive", "needle"), [
    ({"url": "http://recordings/x"}, "archive.url: must look like s3://bucket/prefix"),
    ({"url": "s3://"}, "archive.url: must look like s3://bucket/prefix"),
    ({}, "archive.url: is required"),
    ({"url": "s3://b", "endpoint": "ftp://x"}, "archive.endpoint: must be an http(s)://host[:port] URL"),
    ({"url": "s3://b", "endpoint": "http://key:secret@host"}, "without credentials"),
    ({"url": "s3://b", "upload_limit_mbps": 0}, "archive.upload_limit_mbps: must be positive"),
    ({"url": "s3://b", "concurrency": 0}, "archive.concurrency: must be positive"),
    ({"url": "s3://b", "bucket": "x"}, "archive.bucket"),
])
def test_archive_config_errors_name_their_key(archive: dict[str, Any], needle: str) -> None:
    errs = errors(archive=archive)
    assert any(needle in e for e in errs), errs
    assert not any("secret" in e for e in errs)  # an endpoint with credentials is not echoed whole


@pytest.mark.parametrize(("plan", "needle"), [
    ({"retention_days": 7, "archive_after_hours": 0}, "plans.pro.archive_after_hours: must be positive"),
    ({"retention_days": 7, "archive_after_hours": "1h"}, "plans.pro.archive_after_hours: must be a number"),
    ({"retention_days": 7, "compress_after_days": -1}, "plans.pro.compress_after_days: must be positive"),
])
def test_plan_tier_errors(plan: dict[str, Any], needle: str) -> None:
    assert any(needle in e for e in errors(plans={"pro": plan}))


def test_compression_config_defaults_and_errors() -> None:
    c = cfg()
    assert (c.compression.codec, c.compression.crf, c.compression.preset) == ("libx265", 28, "medium")
    assert any("compression.codec: must be one of libx265, libx264" in e for e in errors(compression={"codec": "vp9"}))
    assert any("compression.crf: must be at most 51" in e for e in errors(compression={"crf": 60}))
    assert any("compression.preset: must be one of" in e for e in errors(compression={"preset": "turbo"}))


def test_cutoffs_only_for_cameras_whose_plan_archives() -> None:
    c = cfg(plans={"pro": {"retention_days": 15, "archive_after_hours": 2}})
    ids, cuts = cutoffs(c, 1_000_000.0)
    assert ids == ["a"] and cuts[0].timestamp() == 1_000_000.0 - 7200


# --------------------------------------------------------------------------- keys and maps


def test_object_keys_mirror_the_layout_and_refuse_anything_else() -> None:
    root = Path("/srv/rec")
    assert object_key_for(root, "/srv/rec/cam-1/2026-11-22/06-10-00.mp4") == "cam-1/2026-11-22/06-10-00.mp4"
    # clustered: the node's id first, so two nodes' files of one second never share a key
    assert object_key_for(root, "/srv/rec/cam-1/2026-11-22/06-10-00.mp4", "box-2") == \
        "box-2/cam-1/2026-11-22/06-10-00.mp4"
    for bad in ("/srv/rec/../etc/passwd", "/srv/other/cam-1/2026-11-22/06-10-00.mp4",
                "/srv/rec/cam-1/2026-11-22/notes.txt", "/srv/rec/clips/cam-1/3.mp4"):
        assert object_key_for(root, bad) is None, bad


def test_fragment_map_round_trips_compactly() -> None:
    frags = tuple(Fragment(1000 + i * 5000, 5000, i * 1.0, 1.0, i % 2 == 0) for i in range(600))
    idx = FragmentIndex(1000, 90000, 1, 123456, frags, 1000 + 600 * 5000, True)
    packed = pack_fragments(idx)
    assert unpack_fragments(packed) == idx
    assert len(packed) < 8 * len(frags)  # an hour of 1 s fragments: a few KB in the row
    assert unpack_fragments(b"not zlib") is None


def test_store_urls_and_keys() -> None:
    c = cfg(archive={"url": "s3://recordings/box-1"})
    store = ObjectStore(c.archive, None)
    assert store.url("a/b/c.mp4") == "s3://recordings/box-1/a/b/c.mp4"
    assert store.key_of("s3://recordings/box-1/a/b/c.mp4") == "a/b/c.mp4"
    assert store.key_of("s3://recordings/box-2/a/b/c.mp4") is None  # another prefix: not ours
    assert store.key_of("s3://recordings/box-1/a/../c.mp4") is None


# --------------------------------------------------------------------------- pacing


def test_pacer_keeps_the_average_rate_and_lets_an_idle_link_go_at_once() -> None:
    now = [0.0]
    p = UploadPacer(8.0, clock=lambda: now[0])  # 8 Mbit/s = 1 MB/s
    assert p.reserve(1_000_000) == 0.0  # the first file goes now
    assert p.reserve(1_000_000) == pytest.approx(1.0)  # the next waits for the first's second
    assert p.reserve(500_000) == pytest.approx(2.0)
    now[0] = 10.0  # idle for a while: no debt is carried
    assert p.reserve(1_000_000) == 0.0
    assert UploadPacer(None).reserve(10**9) == 0.0


# --------------------------------------------------------------------------- credentials and checksums


def test_credentials_from_the_environment_win_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "creds"
    f.write_text("[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n")
    c = cfg(archive={"url": "s3://b", "credentials_file": str(f)})
    got = load_credentials(c.archive, {})
    assert got is not None and (got.access_key_id, got.secret_access_key) == ("FILEKEY", "filesecret")
    env = load_credentials(c.archive, {"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret"})
    assert env is not None and env.access_key_id == "ENVKEY"
    f.write_text("AWS_ACCESS_KEY_ID='K2'\nexport AWS_SECRET_ACCESS_KEY=\"s2\"\n")
    got = load_credentials(c.archive, {})
    assert got is not None and (got.access_key_id, got.secret_access_key) == ("K2", "s2")
    assert load_credentials(cfg(archive={"url": "s3://b"}).archive, {}) is None
    missing = cfg(archive={"url": "s3://b", "credentials_file": str(tmp_path / "nope")})
    with pytest.raises(ArchiveError, match="credentials_file"):
        load_credentials(missing.archive, {})


def test_expected_etag_single_and_multipart(tmp_path: Path) -> None:
    small = tmp_path / "s"
    small.write_bytes(b"x" * 1000)
    assert expected_etag(small) == (1000, hashlib.md5(b"x" * 1000).hexdigest())
    big = tmp_path / "b"
    data = bytes(range(256)) * 100
    big.write_bytes(data)
    parts = [hashlib.md5(data[i:i + 10_000]).digest() for i in range(0, len(data), 10_000)]
    assert expected_etag(big, part=10_000) == (len(data), hashlib.md5(b"".join(parts)).hexdigest() + "-3")


# --------------------------------------------------------------------------- ranges and status


@pytest.mark.parametrize(("header", "want"), [
    (None, None), ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)), ("bytes=-10", (990, 1000)),
    ("bytes=900-5000", (900, 1000)),
])
def test_byte_range(header: str | None, want: tuple[int, int] | None) -> None:
    req = make_mocked_request("GET", "/", headers={"Range": header} if header else {})
    assert byte_range(req, 1000) == want


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2", "bytes=x-y"])
def test_unsatisfiable_range_is_416_with_the_size(header: str) -> None:
    req = make_mocked_request("GET", "/", headers={"Range": header})
    with pytest.raises((ApiError, HTTPException)) as e:
        byte_range(req, 1000)
    assert getattr(e.value, "status", None) == 416


def test_status_line() -> None:
    line = archive_line({"url": "s3://b/p", "usable": True, "up": False, "backlog_segments": 12,
                         "backlog_bytes": 40_000_000, "oldest_seconds": 7560})
    assert line.startswith("archive s3://b/p: DOWN (uploads retried); backlog 12 segments (")
    assert line.endswith("oldest waiting 2.1 h")
    assert "NOT USABLE" in archive_line({"url": "s3://b", "usable": False})
