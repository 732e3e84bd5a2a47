"""The HTTP listener's /metrics and /healthz over a real socket (aiohttp), and the pure health verdict
behind /healthz."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from recorderd import __version__, metrics
from recorderd.api.app import HttpServer, parse_listen
from recorderd.health import (
    CHECKS,
    CameraHealth,
    HealthSnapshot,
    check_of,
    disk_floor_bytes,
    health_reasons,
)

GiB = 1024**3

# ---------------------------------------------------------------------------- health_reasons


def snap(**kw: object) -> HealthSnapshot:
    base: dict[str, object] = dict(now=10_000.0, database_up=True, disk_free_bytes=500 * GiB,
                                   disk_total_bytes=1000 * GiB, floor_bytes=100 * GiB, cameras=(),
                                   pending_rows=0)
    base.update(kw)
    return HealthSnapshot(**base)  # type: ignore[arg-type]


def test_healthy_snapshot_has_no_reasons() -> None:
    cams = [CameraHealth("a", "recording", 0.0, 60), CameraHealth("b", "disabled", 0.0, 60),
            CameraHealth("c", "offline", 9_990.0, 60)]  # offline, but only for 10 s
    assert health_reasons(snap(cameras=cams)) == []


def test_database_down() -> None:
    reasons = health_reasons(snap(database_up=False, pending_rows=42))
    assert len(reasons) == 1 and check_of(reasons[0]) == "database_down" and "42 rows" in reasons[0]


def test_disk_below_floor_and_unknown() -> None:
    [r] = health_reasons(snap(disk_free_bytes=99 * GiB))
    assert check_of(r) == "disk_low" and "99.0 GiB" in r and "100.0 GiB" in r and "90.1% used" in r
    assert health_reasons(snap(disk_free_bytes=100 * GiB)) == []  # at the floor is fine
    for kw in ({"disk_free_bytes": None}, {"disk_total_bytes": None}, {"disk_total_bytes": 0}):
        assert [check_of(r) for r in health_reasons(snap(**kw))] == ["disk_unknown"]


def test_disk_floor_is_larger_of_percent_and_bytes() -> None:
    assert disk_floor_bytes(1000 * GiB, 10, 0) == 100 * GiB
    assert disk_floor_bytes(1000 * GiB, 10, 200 * GiB) == 200 * GiB
    assert disk_floor_bytes(1000, 0.5, 0) == 5
    assert disk_floor_bytes(1001, 1, 0) == 11  # rounds up: never a floor below the percentage
    # "free below floor" and "used above 1 - min_free_percent" agree when the percentage rules
    total = 1000 * GiB
    floor = disk_floor_bytes(total, 10, 0)
    assert health_reasons(snap(disk_total_bytes=total, disk_free_bytes=int(total * 0.09), floor_bytes=floor))
    assert not health_reasons(snap(disk_total_bytes=total, disk_free_bytes=int(total * 0.11),
                                   floor_bytes=floor))


def test_camera_not_recording_after_two_segment_lengths() -> None:
    now = 100_000.0
    cams = [
        CameraHealth("zeta", "stalled", now - 121, 60),  # > 2 x 60 s
        CameraHealth("alpha", "unreachable", now - 7201, 3600),
        CameraHealth("beta", "backoff", now - 119, 60),  # not yet
        CameraHealth("gamma", "starting", now - 500, 60),  # stuck starting counts too
        CameraHealth("delta", "disabled", 0.0, 60),
        CameraHealth("eps", "recording", 0.0, 60),
    ]
    reasons = health_reasons(snap(now=now, cameras=cams))
    assert [check_of(r) for r in reasons] == ["camera_not_recording"] * 3
    assert [r.split()[1] for r in reasons] == ["alpha", "gamma", "zeta"]  # sorted by id
    assert "alpha unreachable for 2h00m (limit 2h00m = 2 segments)" in reasons[0]
    assert "zeta stalled for 2m01s" in reasons[2]


def test_index_backlog() -> None:
    assert health_reasons(snap(pending_rows=100_000)) == []  # default limit
    [r] = health_reasons(snap(pending_rows=100_001))
    assert check_of(r) == "index_backlog"
    assert health_reasons(snap(pending_rows=11, pending_limit=10))
    assert health_reasons(snap(pending_rows=10**9, pending_limit=None)) == []


def test_every_reason_uses_a_known_check() -> None:
    reasons = health_reasons(snap(database_up=False, disk_free_bytes=1, pending_rows=10**6,
                                  cameras=[CameraHealth("x", "unreachable", 0.0, 1)]))
    assert {check_of(r) for r in reasons} == {"database_down", "disk_low", "index_backlog",
                                              "camera_not_recording"}
    assert {check_of(r) for r in reasons} <= set(CHECKS)


# ---------------------------------------------------------------------------- HTTP server


class Health:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.fail = False

    def __call__(self) -> list[str]:
        if self.fail:
            raise RuntimeError("boom rtsp://admin:pw@cam")
        return list(self.reasons)


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, Health]]:
    health = Health()
    srv = HttpServer("127.0.0.1:0", health)
    await srv.start()
    try:
        yield srv, health
    finally:
        await srv.close()


async def raw(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes (requests here say ``Connection: close``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


def split(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(port: int, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A real HTTP client (stdlib), run in a thread."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


async def test_metrics_endpoint_serves_parseable_exposition(server: tuple[HttpServer, Health]) -> None:
    srv, _ = server
    metrics.CAMERA_SEGMENT_SECONDS.labels("http-test-cam").set(60)
    metrics.INDEX_LAG.observe(0.2)
    status, headers, body = await asyncio.to_thread(get, srv.port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")  # the text exposition format
    assert int(headers["content-length"]) == len(body)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    build = families["recorderd_build_info"].samples[0]
    assert build.name == "recorderd_build_info" and build.labels["version"] == __version__
    seg = [s for s in families["recorderd_camera_segment_seconds"].samples
           if s.labels.get("camera") == "http-test-cam"]
    assert seg and seg[0].value == 60
    assert families["recorderd_index_lag_seconds"].type == "histogram"
    assert families["recorderd_healthy"].samples[0].value == 1
    metrics.forget_camera("http-test-cam")


async def test_metrics_query_string_and_gzip(server: tuple[HttpServer, Health]) -> None:
    srv, _ = server
    status, headers, body = await asyncio.to_thread(get, srv.port, "/metrics?x=1",
                                                    headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    names = {f.name for f in text_string_to_metric_families(gzip.decompress(body).decode())}
    assert "recorderd_disk_used_ratio" in names


async def test_healthz_ok_then_degraded(server: tuple[HttpServer, Health]) -> None:
    srv, health = server
    status, headers, body = await asyncio.to_thread(get, srv.port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json"

    health.reasons = ["database_down: index database unreachable, 3 rows waiting", "disk_low: x"]
    status, _, body = await asyncio.to_thread(get, srv.port, "/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "degraded", "reasons": health.reasons}
    # the gauges follow the same verdict
    _, _, body = await asyncio.to_thread(get, srv.port, "/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert fams["recorderd_healthy"].samples[0].value == 0
    degraded = {s.labels["check"]: s.value for s in fams["recorderd_health_degraded"].samples}
    assert degraded["database_down"] == 1 and degraded["disk_low"] == 1 and degraded["index_backlog"] == 0


async def test_failing_health_callback_is_degraded_not_a_crash(server: tuple[HttpServer, Health]) -> None:
    srv, health = server
    health.fail = True
    status, _, body = await asyncio.to_thread(get, srv.port, "/healthz")
    assert status == 503
    doc = json.loads(body)
    assert doc["reasons"] == ["health_error: RuntimeError"]  # no exception text (could hold a URL)
    assert (await asyncio.to_thread(get, srv.port, "/metrics"))[0] == 200


async def test_head_has_headers_but_no_body(server: tuple[HttpServer, Health]) -> None:
    srv, _ = server
    resp = await raw(srv.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = split(resp)
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 100
    assert headers["content-type"].startswith("text/plain; version=")  # the text exposition format
    status, _, body = split(await raw(srv.port, b"HEAD /healthz HTTP/1.0\r\n\r\n"))
    assert status == 200 and body == b""


async def test_unknown_paths_and_methods(server: tuple[HttpServer, Health]) -> None:
    srv, _ = server
    assert (await asyncio.to_thread(get, srv.port, "/"))[0] == 404
    assert (await asyncio.to_thread(get, srv.port, "/metricsx"))[0] == 404
    status, headers, _ = await asyncio.to_thread(get, srv.port, "/metrics", "POST")
    assert status == 405 and set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",  # a TLS hello
    b"GET\r\n\r\n",
    b"GET metrics HTTP/1.1\r\n\r\n",
    b"get /metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nno-colon-header\r\n\r\n",
])
async def test_garbage_gets_400(server: tuple[HttpServer, Health], garbage: bytes) -> None:
    srv, _ = server
    status, _, _ = split(await raw(srv.port, garbage))
    assert status == 400
    assert (await asyncio.to_thread(get, srv.port, "/healthz"))[0] == 200


async def test_oversized_head_gets_431(server: tuple[HttpServer, Health]) -> None:
    srv, _ = server
    req = b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    status, _, _ = split(await raw(srv.port, req))
    assert status in (400, 431)


async def test_slow_and_vanishing_clients(server: tuple[HttpServer, Health]) -> None:
    srv, _ = server
    # clients that connect and vanish, with or without half a request
    for data in (b"", b"GET /met", b"GET /metrics HTTP/1.1\r\nHost:"):
        _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(data)
        writer.close()
    # while a slow client is still connected, others are served
    _, idle = await asyncio.open_connection("127.0.0.1", srv.port)
    idle.write(b"GET /metrics HTTP/1.1\r\nHost:")
    assert (await asyncio.to_thread(get, srv.port, "/healthz"))[0] == 200
    idle.close()


async def test_many_concurrent_scrapes(server: tuple[HttpServer, Health]) -> None:
    srv, _ = server
    results = await asyncio.gather(*(raw(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") for _ in range(20)))
    assert all(split(r)[0] == 200 for r in results)


async def test_close_with_open_connections_is_prompt() -> None:
    srv = HttpServer("127.0.0.1:0", lambda: [])
    await srv.start()
    port = srv.port
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    t0 = time.monotonic()
    await srv.close()
    assert time.monotonic() - t0 < 2
    for reader, writer in conns:
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await srv.close()  # idempotent


async def test_address_in_use_raises_oserror() -> None:
    a = HttpServer("127.0.0.1:0", lambda: [])
    await a.start()
    try:
        b = HttpServer(f"127.0.0.1:{a.port}", lambda: [])
        with pytest.raises(OSError):
            await b.start()
    finally:
        await a.close()


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = HttpServer("127.0.0.1:0", lambda: []).port


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:9108") == ("::1", 9108)
    assert parse_listen("*:9108") == (None, 9108)
    assert parse_listen(":9108") == (None, 9108)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("9108", "host:", "host:http", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
