"""The footage API over real HTTP: one daemon per module recording two tenants' cameras from a real
RTSP camera into a real PostgreSQL, read by a real client (stdlib http.client in a thread).

Every endpoint is checked for tenant isolation (another tenant's camera is 404, like one that does
not exist), for 401 without or with a wrong token, and for what it returns.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from fixtures_cam import TestCam, free_port
from util import DaemonProc, camera_doc, wait_until, write_api_config

pytestmark = pytest.mark.integration

TOKENS = {"t1": "tok-tenant-one-" + "a" * 24, "t2": "tok-tenant-two-" + "b" * 24, "ops": "tok-ops-" + "c" * 32}


class Api:
    def __init__(self, port: int, daemon: DaemonProc, dsn: str, root: Path) -> None:
        self.port, self.daemon, self.dsn, self.root = port, daemon, dsn, root

    def call(self, path: str, token: str | None = "t1", method: str = "GET",
             headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            h = dict(headers or {})
            if token is not None:
                h["Authorization"] = f"Bearer {TOKENS.get(token, token)}"
            if body is not None and not isinstance(body, bytes):
                body = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, path: str, token: str | None = "t1", method: str = "GET", body: Any = None) -> tuple[int, Any]:
        status, _, out = self.call(path, token, method, body=body)
        return status, json.loads(out) if out else None


@pytest.fixture(scope="module")
def api_cams() -> Iterator[tuple[TestCam, ...]]:
    # one camera each: two clients DESCRIBing one gst-rtsp-server mount at the same instant can get a
    # 503 that backs the second off for half a minute
    cams = (TestCam(fps=10, gop=10), TestCam(fps=10, gop=10), TestCam(fps=10, gop=10))
    for cam in cams:
        cam.start(timeout=30)  # once per module: a loaded box is given time
    yield cams
    for cam in cams:
        cam.stop()


@pytest.fixture(scope="module")
def api(api_cams: tuple[TestCam, ...], pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    dsn = pg_cluster.create_database("api_" + uuid.uuid4().hex[:8])
    port = free_port()
    root = tmp / "rec"
    cfg = write_api_config(tmp / "cameras.yaml", root, [
        camera_doc("cam-a", api_cams[0].url, tenant="t1"),
        camera_doc("cam-b", api_cams[1].url, tenant="t2", plan="tiny"),
        camera_doc("cam-off", api_cams[0].url, tenant="t1", enabled=False),
        # longer files: live playback lists the open file's complete 4 s pieces
        camera_doc("cam-live", api_cams[2].url, tenant="t1", segment_seconds=8)],
        dsn=dsn, port=port, tokens=TOKENS, watch_only=("t2",), plans={"tiny": {"retention_days": 7, "max_clips": 2}})
    d = DaemonProc(cfg, root, tmp / "daemon.log").start()
    a = Api(port, d, dsn, root)
    try:
        async def enough() -> bool:
            try:
                conn = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError):
                return False
            try:
                n = await conn.fetchval("SELECT count(*) FROM segments WHERE camera_id = 'cam-a'")
                return bool(n >= 4)
            except asyncpg.UndefinedTableError:
                return False
            finally:
                await conn.close()

        async def ready() -> None:
            deadline = time.monotonic() + 60
            while not await enough():
                assert time.monotonic() < deadline, "cam-a has no 4 indexed segments after 60 s"
                await asyncio.sleep(0.5)
            await wait_until(lambda: a.call("/healthz", None)[0] in (200, 503), 10, what="listener up")

        asyncio.run(ready())
        yield a
    finally:
        d.stop()
    log = d.log_path.read_text()
    for tok in TOKENS.values():
        assert tok not in log  # tokens never appear in logs


def iso_ms(t: float) -> str:
    """Epoch seconds as the API takes them: ISO 8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


async def decoded_frames(api: Api, camera_id: str, query: str, token: str) -> int:
    """Video frames FFmpeg's HLS reader decodes from the camera's playlist over HTTP (media by signed URL)."""
    url = f"http://127.0.0.1:{api.port}/api/v1/cameras/{camera_id}/playlist.m3u8?{query}"
    dec = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-headers", f"Authorization: Bearer {TOKENS[token]}\r\n", "-i", url,
        "-map", "0:v", "-f", "framemd5", "-", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(dec.communicate(), 60)
    assert dec.returncode == 0, err.decode()[-2000:]
    return sum(1 for line in out.decode().splitlines() if line and not line.startswith("#"))


# --------------------------------------------------------------------------- access


async def test_every_api_path_needs_a_valid_token_but_metrics_and_healthz_do_not(api: Api) -> None:
    paths = ["/api/v1/cameras", "/api/v1/cameras/cam-a", "/api/v1/cameras/cam-a/recordings",
             "/api/v1/cameras/cam-a/days", "/api/v1/cameras/cam-a/timeline?from=2026-01-01&to=2026-01-02",
             "/api/v1/media/1.mp4", "/api/v1/media/live-" + "0" * 32 + ".mp4",
             "/api/v1/cameras/cam-a/playlist.m3u8?from=2026-01-01&to=2026-01-02",
             "/api/v1/cameras/cam-a/export.mp4?from=2026-01-01T00:00Z&to=2026-01-01T00:01Z",
             "/api/v1/clips", "/api/v1/clips/1", "/api/v1/clips/1.mp4", "/api/v1/storage"]
    calls = [("GET", path, None) for path in paths] + [
        ("POST", "/api/v1/clips", {"camera_id": "cam-a", "from": "2026-01-01", "to": "2026-01-01T00:01Z"}),
        ("PATCH", "/api/v1/clips/1", {"name": "x"}), ("DELETE", "/api/v1/clips/1", None)]
    for method, path, payload in calls:
        for token in (None, "wrong-token", ""):
            status, headers, body = await asyncio.to_thread(api.call, path, token, method, None, payload)
            assert status == 401, (path, token, status)
            assert json.loads(body)["error"] == "unauthorized"
            assert headers["www-authenticate"].startswith("Bearer")
    assert (await asyncio.to_thread(api.call, "/metrics", None))[0] == 200
    assert (await asyncio.to_thread(api.call, "/healthz", None))[0] in (200, 503)


async def test_a_tenant_sees_only_its_cameras_and_others_are_404(api: Api) -> None:
    status, doc = await asyncio.to_thread(api.json, "/api/v1/cameras", "t1")
    assert status == 200 and sorted(c["camera_id"] for c in doc["cameras"]) == ["cam-a", "cam-live", "cam-off"]
    status, doc = await asyncio.to_thread(api.json, "/api/v1/cameras", "ops")
    assert sorted(c["camera_id"] for c in doc["cameras"]) == ["cam-a", "cam-b", "cam-live", "cam-off"]
    for suffix in ("", "/recordings", "/days", "/timeline?from=2026-01-01&to=2026-01-02"):
        hidden = await asyncio.to_thread(api.json, f"/api/v1/cameras/cam-b{suffix}", "t1")
        missing = await asyncio.to_thread(api.json, f"/api/v1/cameras/nope{suffix}", "t1")
        assert hidden == missing == (404, {"error": "not_found", "detail": "no such camera"}), suffix
    # another tenant's segment by id: the same 404 as an id that does not exist
    conn = await asyncpg.connect(api.dsn)
    try:
        b_id = await conn.fetchval("SELECT min(id) FROM segments WHERE camera_id = 'cam-b'")
    finally:
        await conn.close()
    assert (await asyncio.to_thread(api.call, f"/api/v1/media/{b_id}.mp4", "t1"))[0] == 404
    assert (await asyncio.to_thread(api.call, f"/api/v1/media/{b_id}.mp4", "t2"))[0] == 200
    assert (await asyncio.to_thread(api.call, "/api/v1/media/999999999.mp4", "t1"))[0] == 404


# --------------------------------------------------------------------------- cameras


async def test_camera_shows_status_plan_days_and_clips(api: Api) -> None:
    status, cam = await asyncio.to_thread(api.json, "/api/v1/cameras/cam-a", "t1")
    assert status == 200
    assert cam["state"] == "recording" and cam["is_recording"] is True
    assert cam["plan"] == "basic" and cam["retention_days"] == 7 and cam["tenant"] == "t1"
    assert cam["days_available"] >= 1 and cam["newest"] and cam["last_segment_end"]
    assert cam["clips_used"] == 0 and cam["clips_limit"] == 10
    assert cam["days_remaining"] is None or 6 < cam["days_remaining"] <= 7
    status, off = await asyncio.to_thread(api.json, "/api/v1/cameras/cam-off", "t1")
    assert off["state"] == "disabled" and off["days_available"] == 0 and off["newest"] is None


async def test_recordings_are_paged_with_a_cursor_and_signed_urls(api: Api) -> None:
    status, first = await asyncio.to_thread(api.json, "/api/v1/cameras/cam-a/recordings?limit=2", "t1")
    assert status == 200 and len(first["recordings"]) == 2 and first["next_cursor"]
    r0 = first["recordings"][0]
    assert set(r0) == {"recording_id", "camera_id", "start", "end", "duration_seconds", "size_bytes", "url"}
    status, second = await asyncio.to_thread(
        api.json, f"/api/v1/cameras/cam-a/recordings?limit=2&cursor={first['next_cursor']}", "t1")
    ids = [r["recording_id"] for r in first["recordings"] + second["recordings"]]
    assert len(set(ids)) == 4 and second["recordings"][0]["start"] >= first["recordings"][1]["start"]
    # the signed URL needs no header, and only for that very path
    status, headers, body = await asyncio.to_thread(api.call, r0["url"], None)
    assert status == 200 and headers["content-type"] == "video/mp4" and len(body) == r0["size_bytes"]
    assert body[4:8] == b"ftyp"
    other = r0["url"].replace(f"/{r0['recording_id']}.mp4", f"/{ids[1]}.mp4")
    assert (await asyncio.to_thread(api.call, other, None))[0] == 401
    tampered = r0["url"][:-2] + ("AA" if not r0["url"].endswith("AA") else "BB")
    assert (await asyncio.to_thread(api.call, tampered, None))[0] == 401


async def test_media_range_requests_return_exactly_those_bytes(api: Api) -> None:
    _, page = await asyncio.to_thread(api.json, "/api/v1/cameras/cam-a/recordings?limit=1", "t1")
    rec = page["recordings"][0]
    path = f"/api/v1/media/{rec['recording_id']}.mp4"
    _, _, whole = await asyncio.to_thread(api.call, path, "t1")
    status, headers, part = await asyncio.to_thread(api.call, path, "t1", "GET", {"Range": "bytes=100-1099"})
    assert status == 206 and part == whole[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{len(whole)}"
    status, headers, tail = await asyncio.to_thread(api.call, path, "t1", "GET", {"Range": "bytes=-50"})
    assert status == 206 and tail == whole[-50:]
    status, headers, body = await asyncio.to_thread(api.call, path, "t1", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(whole)
    assert headers.get("accept-ranges") == "bytes"
    status, _, _ = await asyncio.to_thread(api.call, path, "t1", "GET", {"Range": f"bytes={len(whole) + 10}-"})
    assert status == 416


async def test_days_and_timeline(api: Api) -> None:
    status, doc = await asyncio.to_thread(api.json, "/api/v1/cameras/cam-a/days", "t1")
    assert status == 200 and doc["retention_days"] == 7
    today = time.strftime("%Y-%m-%d", time.gmtime())
    day = [d for d in doc["days"] if d["date"] == today] or doc["days"][-1:]
    assert day and day[0]["seconds_recorded"] > 4 and day[0]["expires_at"] > day[0]["last"]
    lo = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    hi = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    status, tl = await asyncio.to_thread(api.json, f"/api/v1/cameras/cam-a/timeline?from={lo}&to={hi}", "t1")
    assert status == 200 and tl["runs"] and tl["recorded_seconds"] > 4
    assert tl["gaps"] and tl["gaps"][0]["start"] == tl["from"]  # nothing recorded an hour ago
    for gap, run in zip(tl["gaps"], tl["runs"], strict=False):
        assert gap["end"] <= run["start"]


async def test_days_are_counted_in_the_viewers_time_zone(api: Api) -> None:
    # the page asks in the browser's zone so its day bar runs from local midnight to midnight
    for tz in ("Pacific/Kiritimati", "Pacific/Honolulu"):  # UTC+14 and UTC-10: never both the UTC date
        status, doc = await asyncio.to_thread(api.json, f"/api/v1/cameras/cam-a/days?tz={tz}", "t1")
        assert status == 200 and doc["time_zone"] == tz
        first = datetime.fromisoformat(doc["days"][0]["first"].replace("Z", "+00:00"))
        assert doc["days"][0]["date"] == first.astimezone(ZoneInfo(tz)).date().isoformat()
    for bad in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime", "UTC%00"):
        status, doc = await asyncio.to_thread(api.json, f"/api/v1/cameras/cam-a/days?tz={quote(bad)}", "t1")
        assert status == 400 and doc["detail"].startswith("tz:"), (bad, doc)


@pytest.mark.parametrize(("query", "param"), [
    ("from=yesterday&to=2026-01-02", "from"), ("from=2026-01-02&to=2026-01-01", "to"),
    ("to=2026-01-02", "from"), ("from=2026-01-01T00:00:00Z&to=2026-13-01", "to")])
async def test_a_bad_period_is_a_400_naming_the_parameter(api: Api, query: str, param: str) -> None:
    status, doc = await asyncio.to_thread(api.json, f"/api/v1/cameras/cam-a/timeline?{query}", "t1")
    assert status == 400 and doc["error"] == "bad_request" and doc["detail"].startswith(param + ":")


async def test_bad_paging_parameters(api: Api) -> None:
    for q in ("limit=0", "limit=x", "limit=100000", "cursor=%%%", "cursor=bm90LWEtY3Vyc29y"):
        status, doc = await asyncio.to_thread(api.json, f"/api/v1/cameras/cam-a/recordings?{q}", "t1")
        assert status == 400 and doc["error"] == "bad_request", q


# --------------------------------------------------------------------------- path tricks


async def test_path_tricks_reach_nothing(api: Api, tmp_path: Path) -> None:
    for path in ("/api/v1/media/..%2F..%2Fetc%2Fpasswd", "/api/v1/media/%2e%2e/x.mp4",
                 "/api/v1/media/1.mp4/../../../etc/passwd", "/api/v1/cameras/..%2Fcam-b",
                 "/api/v1/cameras/" + quote("../cam-b", safe="")):
        status, _, body = await asyncio.to_thread(api.call, path, "ops")
        assert status == 404, path
        assert b"root:" not in body
    # a segment row whose file became a symlink to a file outside the root is never served
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not footage")
    conn = await asyncpg.connect(api.dsn)
    try:
        row = await conn.fetchrow("SELECT id, path FROM segments WHERE camera_id = 'cam-a' ORDER BY id LIMIT 1")
        link = Path(row["path"]).with_name("00-00-00.mp4")
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(secret, link)
        link_id = await conn.fetchval(
            "INSERT INTO segments (camera_id, start_time, end_time, duration_seconds, size_bytes, path, source,"
            " source_rank) VALUES ('cam-a', '2000-01-01', '2000-01-01 00:00:02', 2, 11, $1, 'watch', 0) RETURNING id",
            str(link))
    finally:
        await conn.close()
    status, _, body = await asyncio.to_thread(api.call, f"/api/v1/media/{link_id}.mp4", "ops")
    assert status == 404 and b"not footage" not in body


# --------------------------------------------------------------------------- playback


async def test_ffmpeg_plays_the_hls_playlist_over_http(api: Api) -> None:
    """A real client (FFmpeg's HLS reader) fetches the playlist with the token, then every media byte
    range by its signed URL, and decodes the whole period."""
    conn = await asyncpg.connect(api.dsn)
    try:
        rows = await conn.fetch("SELECT extract(epoch FROM start_time) AS s, extract(epoch FROM end_time) AS e"
                                " FROM segments WHERE camera_id = 'cam-a' AND start_time > now() - interval '1 hour'"
                                " ORDER BY start_time LIMIT 4")  # not the symlink row of the path test
    finally:
        await conn.close()
    lo, hi = float(rows[0]["s"]), float(rows[-1]["e"])
    q = f"from={iso_ms(lo)}&to={iso_ms(hi)}"
    status, headers, body = await asyncio.to_thread(api.call, f"/api/v1/cameras/cam-a/playlist.m3u8?{q}", "t1")
    assert status == 200 and headers["content-type"].startswith("application/vnd.apple.mpegurl"), body
    text = body.decode()
    assert text.startswith("#EXTM3U") and "#EXT-X-MAP:" in text and "#EXT-X-ENDLIST" in text
    assert "#EXT-X-PROGRAM-DATE-TIME:" in text and "#EXT-X-BYTERANGE:" in text
    frames = await decoded_frames(api, "cam-a", q, "t1")
    # 10 fps; FFmpeg's HLS reader drops up to one GOP (1 s) at each file boundary (tfdt restarts)
    assert (hi - lo) * 10 - 10 * len(rows) - 2 <= frames <= (hi - lo) * 10 + 2, (frames, hi - lo)
    # another tenant's camera is no playlist either
    hidden = await asyncio.to_thread(api.json, f"/api/v1/cameras/cam-b/playlist.m3u8?{q}", "t1")
    assert hidden[0] == 404
    bad = await asyncio.to_thread(api.json, "/api/v1/cameras/cam-a/playlist.m3u8?from=2026-01-02&to=2026-01-01", "t1")
    assert bad[0] == 400 and bad[1]["detail"].startswith("to:")


# --------------------------------------------------------------------------- clips and exports


async def recent_period(camera_id: str, dsn: str, segments: int = 3) -> tuple[str, str, float, float]:
    """``from``/``to`` (ISO) over the camera's last few closed segments, and the same as epoch seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT extract(epoch FROM start_time)::float8 AS s, extract(epoch FROM end_time)::float8"
                                " AS e FROM segments WHERE camera_id = $1 AND start_time > now() - interval '1 hour'"
                                " ORDER BY start_time DESC LIMIT $2", camera_id, segments)
    finally:
        await conn.close()
    lo, hi = float(rows[-1]["s"]) + 0.5, float(rows[0]["e"]) - 0.2
    return iso_ms(lo), iso_ms(hi), lo, hi


async def media_seconds(data: bytes, tmp_path: Path, name: str) -> float:
    """Decode the whole file (FFmpeg) and return its duration (ffprobe): playable, and how long."""
    f = tmp_path / name
    f.write_bytes(data)
    dec = await asyncio.create_subprocess_exec("ffmpeg", "-v", "error", "-i", str(f), "-f", "null", "-",
                                               stderr=asyncio.subprocess.PIPE)
    _, err = await dec.communicate()
    assert dec.returncode == 0 and not err, err.decode()[-1000:]
    probe = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(f),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await probe.communicate()
    return float(out)


async def test_clip_create_list_download_rename_delete(api: Api, tmp_path: Path) -> None:
    lo_s, hi_s, lo, hi = await recent_period("cam-a", api.dsn)
    status, headers, body = await asyncio.to_thread(
        api.call, "/api/v1/clips", "t1", "POST", body={"camera_id": "cam-a", "from": lo_s, "to": hi_s,
                                                       "name": "Gate, évening"})
    assert status == 201, body
    clip = json.loads(body)
    assert headers["location"] == f"/api/v1/clips/{clip['id']}"
    assert {"id", "camera_id", "name", "start", "end", "size_bytes", "created_at", "url", "gaps"} <= set(clip)
    assert clip["camera_id"] == "cam-a" and clip["name"] == "Gate, évening" and clip["created_by"] == "t1"
    assert "path" not in clip and str(api.root) not in body.decode()
    # it starts at the keyframe at or before `from` (1 s GOP) and covers the period
    start = parse_iso(clip["start"])
    assert lo - 1.2 <= start <= lo + 0.01 and parse_iso(clip["end"]) >= hi - 0.3

    status, listed = await asyncio.to_thread(api.json, "/api/v1/clips", "t1")
    assert status == 200 and [c["id"] for c in listed["clips"]] == [clip["id"]]
    assert (await asyncio.to_thread(api.json, "/api/v1/clips?camera_id=cam-a", "t1"))[1]["clips"][0]["id"] == clip["id"]
    assert (await asyncio.to_thread(api.json, f"/api/v1/clips/{clip['id']}", "t1")) == (200, {**clip_without(clip)})

    # the file: by token, by its signed URL without one, with Range; playable and as long as the period
    status, headers, data = await asyncio.to_thread(api.call, f"/api/v1/clips/{clip['id']}.mp4", "t1")
    assert status == 200 and len(data) == clip["size_bytes"] and headers["content-type"] == "video/mp4"
    assert headers["content-disposition"].startswith('attachment; filename="Gate_evening.mp4";')
    assert "filename*=UTF-8''Gate%2C%20%C3%A9vening.mp4" in headers["content-disposition"]
    assert (await asyncio.to_thread(api.call, clip["url"], None))[2] == data
    status, headers, part = await asyncio.to_thread(api.call, clip["url"], None, "GET", {"Range": "bytes=10-99"})
    assert status == 206 and part == data[10:100]
    duration = await media_seconds(data, tmp_path, "clip.mp4")
    assert duration == pytest.approx(parse_iso(clip["end"]) - start, abs=0.25)
    assert duration >= hi - lo - 0.3

    # counted against the plan, shown on the camera
    assert (await asyncio.to_thread(api.json, "/api/v1/cameras/cam-a", "t1"))[1]["clips_used"] == 1

    status, renamed = await asyncio.to_thread(api.json, f"/api/v1/clips/{clip['id']}", "t1", "PATCH",
                                              {"name": "  renamed  "})
    assert status == 200 and renamed["name"] == "renamed"
    status, err = await asyncio.to_thread(api.json, f"/api/v1/clips/{clip['id']}", "t1", "PATCH", {"name": "a\nb"})
    assert status == 400 and err["detail"].startswith("name:")

    # another tenant: every clip endpoint is the same 404 as a clip that does not exist
    missing = (404, {"error": "not_found", "detail": "no such clip"})
    for method, suffix, body in (("GET", "", None), ("PATCH", "", {"name": "x"}), ("DELETE", "", None),
                                 ("GET", ".mp4", None)):
        assert await asyncio.to_thread(api.json, f"/api/v1/clips/{clip['id']}{suffix}", "t2", method, body) == missing
        assert await asyncio.to_thread(api.json, f"/api/v1/clips/999999{suffix}", "t1", method, body) == missing
    assert (await asyncio.to_thread(api.json, "/api/v1/clips", "t2"))[1] == {"clips": []}
    assert (await asyncio.to_thread(api.json, "/api/v1/clips?camera_id=cam-a", "t2"))[0] == 404
    assert (await asyncio.to_thread(api.json, "/api/v1/clips", "t2", "POST",
                                    {"camera_id": "cam-a", "from": lo_s, "to": hi_s}))[0] == 404
    # its own camera, but a token without clips: true
    status, err = await asyncio.to_thread(api.json, "/api/v1/clips", "t2", "POST",
                                          {"camera_id": "cam-b", "from": lo_s, "to": hi_s, "name": "x"})
    assert status == 403 and err["error"] == "forbidden"
    for token in (None, "wrong"):
        assert (await asyncio.to_thread(api.json, f"/api/v1/clips/{clip['id']}", token))[0] == 401

    status, _, _ = await asyncio.to_thread(api.call, f"/api/v1/clips/{clip['id']}", "t1", "DELETE")
    assert status == 204
    assert await asyncio.to_thread(api.json, f"/api/v1/clips/{clip['id']}", "t1") == missing
    assert not list((api.root / "clips" / "cam-a").glob("*.mp4"))
    assert (await asyncio.to_thread(api.call, clip["url"], None))[0] == 404


def parse_iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def clip_without(clip: dict[str, Any]) -> dict[str, Any]:
    """A clip as GET shows it: the create answer without its cut report (the URL is signed anew)."""
    return {k: v for k, v in clip.items() if k != "gaps"}


async def test_clip_requests_that_cannot_be_done(api: Api) -> None:
    lo_s, hi_s, _, _ = await recent_period("cam-b", api.dsn)
    post = "/api/v1/clips"
    for body, code, detail in (
            (b"{not json", 400, "body:"), ([1, 2], 400, "body:"), ({"from": lo_s, "to": hi_s}, 400, "camera_id:"),
            ({"camera_id": "cam-b", "to": hi_s}, 400, "from:"), ({"camera_id": "cam-b", "from": lo_s}, 400, "to:"),
            ({"camera_id": "cam-b", "from": hi_s, "to": lo_s}, 400, "to:"),
            ({"camera_id": "cam-b", "from": "2026-01-01", "to": "2026-01-03"}, 400, "to:"),
            ({"camera_id": "cam-b", "from": lo_s, "to": hi_s, "name": ""}, 400, "name:"),
            ({"camera_id": "nope", "from": lo_s, "to": hi_s}, 404, "no such camera"),
            ({"camera_id": "cam-b", "from": "2000-01-01T00:00:00Z", "to": "2000-01-01T00:01:00Z"}, 422, "")):
        status, _, out = await asyncio.to_thread(api.call, post, "ops", "POST", body=body)
        doc = json.loads(out)
        assert status == code and doc["detail"].startswith(detail), (body, status, doc)
    # the plan's limit (tiny: 2): the third is a 409 naming it, and nothing is left behind
    made = []
    for n in range(2):
        status, clip = await asyncio.to_thread(api.json, post, "ops", "POST",
                                               {"camera_id": "cam-b", "from": lo_s, "to": hi_s, "name": f"c{n}"})
        assert status == 201, clip
        made.append(clip["id"])
    status, err = await asyncio.to_thread(api.json, post, "ops", "POST",
                                          {"camera_id": "cam-b", "from": lo_s, "to": hi_s, "name": "c2"})
    assert status == 409 and err["error"] == "clip_limit" and "'tiny' allows 2" in err["detail"]
    assert len(list((api.root / "clips" / "cam-b").glob("*.mp4"))) == 2
    for clip_id in made:
        assert (await asyncio.to_thread(api.call, f"/api/v1/clips/{clip_id}", "ops", "DELETE"))[0] == 204


async def test_export_is_an_attachment_of_the_period(api: Api, tmp_path: Path) -> None:
    lo_s, hi_s, lo, hi = await recent_period("cam-a", api.dsn)
    path = f"/api/v1/cameras/cam-a/export.mp4?from={lo_s}&to={hi_s}"
    status, headers, data = await asyncio.to_thread(api.call, path, "t1")
    assert status == 200 and headers["content-type"] == "video/mp4", data[:300]
    assert headers["content-disposition"].startswith('attachment; filename="cam-a_')
    assert int(headers["content-length"]) == len(data) and data[4:8] == b"ftyp"
    start = parse_iso(headers["x-footage-start"])
    assert lo - 1.2 <= start <= lo + 0.01
    assert await media_seconds(data, tmp_path, "export.mp4") >= hi - lo - 0.3
    # nothing is left on disk once it was sent
    assert not [p for p in (api.root / ".recorderd" / "exports").iterdir()]
    hidden = await asyncio.to_thread(api.json, path.replace("cam-a", "cam-b"), "t1")
    assert hidden == (404, {"error": "not_found", "detail": "no such camera"})
    status, err = await asyncio.to_thread(api.json, "/api/v1/cameras/cam-a/export.mp4?from=2026-01-01&to=2026-01-03")
    assert status == 400 and err["detail"].startswith("to:")
    status, err = await asyncio.to_thread(
        api.json, "/api/v1/cameras/cam-a/export.mp4?from=2000-01-01T00:00:00Z&to=2000-01-01T00:01:00Z")
    assert status == 422 and err["error"] == "no_footage"


# --------------------------------------------------------------------------- live playback


def live_entries(text: str) -> list[tuple[str, float, str, str]]:
    """(PROGRAM-DATE-TIME of the file, EXTINF, BYTERANGE, URL) of each media segment of a live file."""
    out, pdt, extinf, byterange = [], "", 0.0, ""
    for line in text.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = line.split(":", 1)[1]
        elif line.startswith("#EXTINF:"):
            extinf = float(line[8:].rstrip(","))
        elif line.startswith("#EXT-X-BYTERANGE:"):
            byterange = line.split(":", 1)[1]
        elif line and not line.startswith("#") and "/media/live-" in line:
            out.append((pdt, extinf, byterange, line))
    return out


async def test_a_playlist_reaching_now_lists_the_file_being_written(api: Api, tmp_path: Path) -> None:
    q = f"from={iso_ms(time.time() - 120)}&to={iso_ms(time.time() + 3600)}"
    path = f"/api/v1/cameras/cam-live/playlist.m3u8?{q}"

    def live_now() -> tuple[str, list[tuple[str, float, str, str]]] | None:
        status, _, body = api.call(path, "t1")
        assert status == 200, body
        text = body.decode()
        entries = live_entries(text)
        return (text, entries) if entries else None

    text, entries = await wait_until(lambda: live_now(), 30, step=0.3, what="a live-file entry")
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text
    pdt, extinf, byterange, url = entries[0]
    assert extinf >= 4 - 0.01  # only full pieces: one that could still grow is held back
    # the media bytes (signed URL, no header): the init section + the piece decode at 10 fps
    map_line = next(line for line in text.splitlines() if line.startswith("#EXT-X-MAP:") and "/media/live-" in line)
    init_len = int(map_line.split('BYTERANGE="')[1].split("@")[0])
    length, offset = (int(x) for x in byterange.split("@"))
    st, _, init = await asyncio.to_thread(api.call, url, None, "GET", {"Range": f"bytes=0-{init_len - 1}"})
    st2, _, piece = await asyncio.to_thread(api.call, url, None, "GET",
                                            {"Range": f"bytes={offset}-{offset + length - 1}"})
    assert st == st2 == 206 and len(piece) == length and piece[4:8] == b"moof"
    f = tmp_path / "live.mp4"
    f.write_bytes(init + piece)
    dec = await asyncio.create_subprocess_exec("ffmpeg", "-v", "error", "-i", str(f), "-map", "0:v", "-f",
                                               "framemd5", "-", stdout=asyncio.subprocess.PIPE)
    out, _ = await dec.communicate()
    frames = sum(1 for line in out.decode().splitlines() if line and not line.startswith("#"))
    assert dec.returncode == 0 and abs(frames - extinf * 10) <= 1, (frames, extinf)
    # another tenant cannot open it, even with the key
    key_path = url.split("?")[0]
    assert (await asyncio.to_thread(api.call, key_path, "t2"))[0] == 404

    # once the file is closed and indexed, the playlist keeps the very same URL for it, and the start
    # it showed while live was right within a GOP
    live_key = key_path.rsplit("/", 1)[1]

    def closed() -> list[str] | None:
        status, _, body = api.call(path, "t1")
        lines = body.decode().splitlines()
        for i, line in enumerate(lines):
            if live_key in line and line.startswith("#EXT-X-MAP:"):
                # the file is indexed when the next file is listed after it
                later = [x for x in lines[i + 1:] if x.startswith("#EXT-X-MAP:")]
                return lines[i:] if later else None
        raise AssertionError(f"the live file's URL vanished from the playlist: {body.decode()[-1500:]}")

    after = await wait_until(closed, 30, step=0.5, what="the live file to close and be indexed")
    pdt_after = next(x for x in after if x.startswith("#EXT-X-PROGRAM-DATE-TIME:")).split(":", 1)[1]
    assert abs(parse_iso(pdt_after) - parse_iso(pdt)) <= 1.1, (pdt, pdt_after)


# --------------------------------------------------------------------------- an outage inside the period


async def test_a_period_spanning_a_camera_outage_plays_across_the_gap(api: Api, api_cams: tuple[TestCam, ...]) -> None:
    cam = api_cams[1]  # cam-b's camera (tenant t2)

    async def rows() -> list[Any]:
        conn = await asyncpg.connect(api.dsn)
        try:
            return list(await conn.fetch(
                "SELECT extract(epoch FROM start_time)::float8 AS s, extract(epoch FROM end_time)::float8 AS e,"
                " run_id FROM segments WHERE camera_id = 'cam-b' AND start_time > now() - interval '1 hour'"
                " ORDER BY start_time"))
        finally:
            await conn.close()

    before = await rows()
    await asyncio.to_thread(cam.kill)
    t_down = time.time()
    await asyncio.sleep(3)
    await asyncio.to_thread(cam.restart)

    async def two_after() -> bool:
        return len([r for r in await rows() if r["s"] > t_down + 2]) >= 2

    deadline = time.monotonic() + 60
    while not await two_after():
        assert time.monotonic() < deadline, "cam-b did not record again within 60 s of its camera's return"
        await asyncio.sleep(0.5)
    spans = [r for r in await rows() if r["s"] >= before[-2]["s"]]
    gap = max(b["s"] - a["e"] for a, b in zip(spans, spans[1:], strict=False))
    assert gap >= 2.5  # the outage is in the period
    lo, hi = spans[0]["s"], spans[-1]["e"]
    q = f"from={iso_ms(lo)}&to={iso_ms(hi)}"
    status, _, body = await asyncio.to_thread(api.call, f"/api/v1/cameras/cam-b/playlist.m3u8?{q}", "t2")
    assert status == 200
    text = body.decode()
    assert "#EXT-X-DISCONTINUITY" in text and "#EXT-X-ENDLIST" in text
    dates = [parse_iso(line.split(":", 1)[1]) for line in text.splitlines()
             if line.startswith("#EXT-X-PROGRAM-DATE-TIME:")]
    assert max(b - a for a, b in zip(dates, dates[1:], strict=False)) >= gap  # wall clock jumps the hole
    frames = await decoded_frames(api, "cam-b", q, "t2")
    recorded = sum(r["e"] - r["s"] for r in spans)
    # all the footage on both sides of the gap plays (less FFmpeg's one GOP per file boundary), and
    # no more than was recorded: the hole is skipped, not filled
    assert recorded * 10 - 10 * len(spans) - 2 <= frames <= recorded * 10 + 2, (frames, recorded, gap)


# --------------------------------------------------------------------------- the index away (keep last: it stops PostgreSQL)


async def test_with_the_index_down_the_api_answers_503_and_recording_goes_on(api: Api, pg_cluster: Any) -> None:
    lo_s, hi_s, _, _ = await recent_period("cam-a", api.dsn)

    def last_end() -> float:
        st = api.daemon.status() or {}
        return max([c["last_segment_end"] or 0.0 for c in st.get("cameras", []) if c["camera_id"] == "cam-a"] or [0])

    pg_cluster.stop("immediate")
    try:
        recorded_before = last_end()
        for method, path, body in (
                ("GET", "/api/v1/cameras", None), ("GET", "/api/v1/cameras/cam-a", None),
                ("GET", "/api/v1/cameras/cam-a/recordings", None), ("GET", "/api/v1/cameras/cam-a/days", None),
                ("GET", f"/api/v1/cameras/cam-a/timeline?from={lo_s}&to={hi_s}", None),
                ("GET", f"/api/v1/cameras/cam-a/playlist.m3u8?from={lo_s}&to={hi_s}", None),
                ("GET", f"/api/v1/cameras/cam-a/export.mp4?from={lo_s}&to={hi_s}", None),
                ("GET", "/api/v1/clips", None), ("GET", "/api/v1/clips/1", None), ("GET", "/api/v1/media/1.mp4", None),
                ("POST", "/api/v1/clips", {"camera_id": "cam-a", "from": lo_s, "to": hi_s, "name": "x"})):
            status, headers, out = await asyncio.to_thread(api.call, path, "t1", method, None, body)
            doc = json.loads(out)
            assert status == 503 and doc["error"] == "index_unavailable", (path, status, doc)
            assert headers["retry-after"] and doc["detail"], path
            assert api.dsn.split("@")[-1] not in doc["detail"]  # no DSN in an answer
        # access is still checked first: no token is a 401, another tenant's camera a 404
        assert (await asyncio.to_thread(api.call, "/api/v1/cameras", None))[0] == 401
        assert (await asyncio.to_thread(api.call, "/api/v1/cameras/cam-b", "t1"))[0] == 404
        # recording never waits on the index
        await wait_until(lambda: last_end() >= recorded_before + 4, 20, what="segments while the index is down")
    finally:
        pg_cluster.start()
    await wait_until(lambda: api.call("/api/v1/cameras", "t1")[0] == 200, 30, step=0.5, what="the API back")
