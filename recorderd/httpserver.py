"""``/metrics`` and ``/healthz`` over a deliberately tiny HTTP/1.1 server on the daemon's own loop.

No framework: two read-only endpoints do not justify a dependency, and sharing the event loop means a
scrape that succeeds proves the loop is alive. Every connection is answered once and closed
(``Connection: close``), requests are bounded in size and time, and no client behaviour can raise
out of a handler: a broken scraper must never take the recorder down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import Callable
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from recorderd import metrics
from recorderd.health import CHECKS, check_of
from recorderd.logging import get_logger

log = get_logger(component="http")

MAX_HEAD_BYTES: Final = 8192
HEAD_TIMEOUT: Final = 5.0  # a client has this long to send its request line and headers
WRITE_TIMEOUT: Final = 10.0  # and this long to take the response
MAX_CONNECTIONS: Final = 32
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   408: "Request Timeout", 431: "Request Header Fields Too Large",
                   500: "Internal Server Error", 503: "Service Unavailable",
                   505: "HTTP Version Not Supported"}


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``"127.0.0.1:9108"``, ``"[::1]:9108"``, ``"0.0.0.0:9108"``; ``"*:9108"`` or ``":9108"`` bind all."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (None if host in ("", "*") else host), int(port)


class _Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = {"Content-Type": content_type, **(extra or {})}


class MetricsServer:
    """Serve Prometheus metrics and the health verdict on ``listen`` (loopback by default).

    ``health`` returns the current degraded reasons (``recorderd.health.health_reasons`` of a fresh
    snapshot); it is called per request, so it must be cheap and must not block.
    """

    def __init__(self, listen: str, health: Callable[[], list[str]],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._host, self._port = parse_listen(listen)
        self._listen = listen
        self._health = health
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and listen; raises OSError (e.g. address in use) so the daemon can report it."""
        self._server = await asyncio.start_server(self._on_connect, self._host, self._port,
                                                  limit=MAX_HEAD_BYTES, reuse_address=True)
        log.info("metrics_listening", listen=self._listen, port=self.port)

    async def close(self) -> None:
        """Stop listening and drop connections still in flight."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    # ------------------------------------------------------------------ connection handling

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if len(self._conns) > MAX_CONNECTIONS:
                await self._send(writer, "GET", _Response(503, b"too many connections\n", "text/plain"))
            else:
                await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            pass  # close() or loop shutdown; the transport is closed below
        except Exception as exc:  # never let a client bring the daemon down
            log.warning("http_handler_error", error=repr(exc))
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            await self._send(writer, "GET", _Response(408, b"request timeout\n", "text/plain"))
            return
        except asyncio.LimitOverrunError:
            await self._send(writer, "GET", _Response(431, b"request head too large\n", "text/plain"))
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # client went away mid-request
        method, path, headers = _parse_head(head)
        if method is None:
            await self._send(writer, "GET", _Response(400, b"bad request\n", "text/plain"))
            return
        response = self._route(method, path, headers)
        await self._send(writer, method, response)

    def _route(self, method: str, path: str, headers: dict[str, str]) -> _Response:
        path = path.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return _Response(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")
        if method not in ("GET", "HEAD"):
            return _Response(405, b"method not allowed\n", "text/plain", {"Allow": "GET, HEAD"})
        reasons = self._reasons()
        if path == "/healthz":
            if reasons:
                doc: dict[str, object] = {"status": "degraded", "reasons": reasons}
            else:
                doc = {"status": "ok"}
            return _Response(503 if reasons else 200, json.dumps(doc).encode() + b"\n",
                             "application/json", {"Cache-Control": "no-store"})
        body = generate_latest(self._registry)
        extra = {"Cache-Control": "no-store"}
        if "gzip" in headers.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=5)
            extra["Content-Encoding"] = "gzip"
        return _Response(200, body, CONTENT_TYPE_LATEST, extra)

    def _reasons(self) -> list[str]:
        """Current reasons, mirrored into the health gauges so a scrape sees the same verdict."""
        try:
            reasons = [str(r) for r in self._health()]
        except Exception as exc:
            log.warning("health_check_failed", error=repr(exc))
            reasons = [f"health_error: {type(exc).__name__}"]
        failing = {check_of(r) for r in reasons}
        metrics.HEALTHY.set(0 if reasons else 1)
        for check in CHECKS:
            metrics.HEALTH_DEGRADED.labels(check).set(1 if check in failing else 0)
        return reasons

    async def _send(self, writer: asyncio.StreamWriter, method: str, resp: _Response) -> None:
        status_line = f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
        headers = {**resp.headers, "Content-Length": str(len(resp.body)), "Connection": "close"}
        head = status_line + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1"))
        if method != "HEAD":
            writer.write(resp.body)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()  # a reader that does not read is cut off, not waited for


def _parse_head(head: bytes) -> tuple[str | None, str, dict[str, str]]:
    """Request line and headers; ``(None, "", {})`` when it is not HTTP/1.x."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None, "", {}
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None, "", {}
    method, path, _version = parts
    if not method.isalpha() or not method.isupper():
        return None, "", {}
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None, "", {}
        headers[name.strip().lower()] = value.strip()
    return method, path, headers
