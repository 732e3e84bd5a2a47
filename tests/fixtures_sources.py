"""Real servers for the camera sources other than plain RTSP: HLS over HTTP(S), RTMP, RTSPS.

Everything here is served by FFmpeg, GStreamer (``scripts/testcam``) and Python's standard library on
127.0.0.1, from a test camera of its own (``source_cam``, module scope): a long-lived FFmpeg pulling
the session's ``shared_cam`` would die with it if GStreamer aborts (see ``fixtures_cam``), and only
function-scoped users of that camera get it respawned.

Fixtures (registered in conftest.py):

* ``tls_files`` (session): a self-signed certificate for 127.0.0.1 made with ``openssl req -x509``;
  ``.pem`` holds certificate and key (what ``testcam --tls-cert`` reads). FFmpeg does not verify
  server certificates unless asked (``tls_verify``), like most cameras' own certificates need.
* ``source_cam`` (module): a plain RTSP ``TestCam`` the FFmpeg-based servers below pull from.
* ``hls_source`` (module): one FFmpeg pulling ``source_cam`` with ``-c copy`` and writing two live
  HLS playlists (1 s segments, 6 listed, older ones deleted): MPEG-TS segments in ``ts/`` and fMP4
  segments in ``fmp4/``, served by a threaded HTTP server and by an HTTPS one (``tls_files``).
  ``hls_source.url("ts")`` / ``url("fmp4", tls=True)``; any path under ``/private/`` answers 401
  unless the request carries ``HLS_USER``/``HLS_PASSWORD`` (``url(..., auth=True)``).
* ``rtmp_source`` (module): an FFmpeg RTMP server (``-f flv -listen 1``) pulling ``source_cam``.
  It serves exactly one client and then exits, and it plays any app/stream name it is asked for;
  ``rtmp_source.url`` is ``rtmp://127.0.0.1:PORT/live/cam``.
* ``rtsps_cam`` (module): a ``TestCam`` serving RTSPS (``rtsps://``, TLS with ``tls_files``).
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_cam import TestCam, captured_text, free_port, track_process

FFMPEG = os.environ.get("RECORDERD_TEST_FFMPEG", "ffmpeg")
HLS_USER, HLS_PASSWORD = "viewer", "hls-secret"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # PEM certificate
    key: Path  # PEM private key
    pem: Path  # both, certificate first (GStreamer's Gio.TlsCertificate.new_from_pem reads this)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS sources")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    pem = d / "cert+key.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    return TlsFiles(cert, key, pem)


# ---------------------------------------------------------------------- processes


class ServerProcess:
    """A server subprocess (FFmpeg) with its stderr kept in a file for failure messages."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.argv, self.name = argv, name
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, start_new_session=True)
        track_process(self.proc)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def stderr(self) -> str:
        return captured_text(self._stderr).strip()

    def describe(self) -> str:
        state = "running" if self.running else f"exited {self.proc.returncode}"
        return f"{self.name} ({state}); its stderr ends: {self.stderr[-1500:]!r}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stderr.close()


def _wait(pred: Any, timeout: float, what: str, proc: ServerProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and not proc.running:
            raise RuntimeError(f"{what}: {proc.describe()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}"
                               + (f": {proc.describe()}" if proc else ""))
        time.sleep(0.05)


def listening(port: int) -> bool:
    """A socket listens on 127.0.0.1:port, found without connecting to it (an RTMP server started
    with ``-listen 1`` serves the first connection only: a probing connect would use it up)."""
    want_local = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == want_local and fields[3] == "0A":  # TCP_LISTEN
                    return True
    except OSError:
        pass
    return False


# probe the RTSP input only as far as its SDP: the servers are ready in about a second, not five
_FAST_INPUT = ["-analyzeduration", "0", "-probesize", "32", "-rtsp_transport", "tcp"]


@pytest.fixture(scope="module")
def source_cam() -> Iterator[TestCam]:
    cam = TestCam(fps=10, gop=10)  # a keyframe a second: 1 s HLS segments
    cam.start(timeout=30)  # once per module: a loaded box is given time
    try:
        yield cam
    finally:
        cam.stop()


# ---------------------------------------------------------------------- HLS over HTTP(S)


class _HlsHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as FFmpeg's HLS demuxer asks for (http_persistent)

    def do_GET(self) -> None:
        if self.path.startswith("/private/"):
            expected = "Basic " + base64.b64encode(f"{HLS_USER}:{HLS_PASSWORD}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="hls"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.path = self.path[len("/private"):]
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs in the connection's own thread: a client that stalls in it (or
        # speaks plain HTTP to the HTTPS port) cannot hold up the accept loop
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


def _serve(directory: Path, tls: ssl.SSLContext | None) -> tuple[_HttpServer, threading.Thread]:
    handler = functools.partial(_HlsHandler, directory=str(directory))
    server = _HttpServer(("127.0.0.1", 0), handler)
    server.tls = tls
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="hls-https" if tls else "hls-http", daemon=True)
    thread.start()
    return server, thread


class HlsSource:
    """Live HLS (TS and fMP4 segments) written by FFmpeg and served over HTTP and HTTPS."""

    KINDS = ("ts", "fmp4")

    def __init__(self, upstream: str, root: Path, tls: TlsFiles) -> None:
        self.root = root
        argv = [FFMPEG, "-hide_banner", "-nostats", "-loglevel", "warning", *_FAST_INPUT, "-i", upstream]
        for kind in self.KINDS:
            (root / kind).mkdir(parents=True, exist_ok=True)
            argv += ["-map", "0:v:0", "-c", "copy", "-f", "hls", "-hls_time", "1", "-hls_list_size", "6",
                     "-hls_flags", "delete_segments"]
            if kind == "fmp4":
                argv += ["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4"]
            argv.append(str(root / kind / "live.m3u8"))
        self.writer = ServerProcess(argv, "the HLS writer (FFmpeg)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls.cert, tls.key)
        self.http, self._http_thread = _serve(root, None)
        self.https, self._https_thread = _serve(root, ctx)

    def wait_ready(self, timeout: float = 15) -> HlsSource:
        _wait(lambda: all(self._segments(kind) >= 2 for kind in self.KINDS), timeout,
              "two segments in each HLS playlist", self.writer)
        return self

    def _segments(self, kind: str) -> int:
        try:
            return (self.root / kind / "live.m3u8").read_text().count("#EXTINF")
        except OSError:
            return 0

    def url(self, kind: str = "ts", *, tls: bool = False, path: str = "live.m3u8", auth: bool = False) -> str:
        """``http(s)://127.0.0.1:PORT/<kind>/<path>``; ``auth`` puts it under /private/ with the password."""
        server = self.https if tls else self.http
        port = server.server_address[1]
        scheme = "https" if tls else "http"
        if auth:
            return f"{scheme}://{HLS_USER}:{HLS_PASSWORD}@127.0.0.1:{port}/private/{kind}/{path}"
        return f"{scheme}://127.0.0.1:{port}/{kind}/{path}"

    def playlist_naming(self, target: Path) -> str:
        """URL of a playlist whose segments are ``file://<target>``: a relay trying to read our disk."""
        (self.root / "local").mkdir(exist_ok=True)
        entries = "".join(f"#EXTINF:1.0,\nfile://{target}\n" for _ in range(3))
        (self.root / "local" / "live.m3u8").write_text(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
            + entries + "#EXT-X-ENDLIST\n")
        return self.url("local")

    def check(self) -> None:
        """Fail with the writer's stderr if it is not writing any more."""
        if not self.writer.running:
            raise AssertionError(self.writer.describe())

    def stop(self) -> None:
        for server, thread in ((self.http, self._http_thread), (self.https, self._https_thread)):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self.writer.stop()


@pytest.fixture(scope="module")
def hls_source(source_cam: TestCam, tls_files: TlsFiles,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[HlsSource]:
    hls = HlsSource(source_cam.url, tmp_path_factory.mktemp("hls"), tls_files)
    try:
        yield hls.wait_ready()
    finally:
        hls.stop()


# ---------------------------------------------------------------------- RTMP


class RtmpServer:
    """``ffmpeg -i <camera> -c copy -f flv -listen 1 rtmp://127.0.0.1:PORT/live/cam``.

    One client per process: FFmpeg's listen mode accepts one connection and exits when it ends, so
    a recorder that reconnects needs ``restart()``. It answers whatever app/stream name the client
    plays (it only logs "App field don't match up" on its side), so it cannot play a relay that
    says "no such stream".
    """

    def __init__(self, upstream: str, app: str = "live", stream: str = "cam") -> None:
        self.upstream, self.app, self.stream = upstream, app, stream
        self.port = free_port()
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/{self.app}/{self.stream}"

    def start(self, timeout: float = 15) -> RtmpServer:
        for attempt in range(3):
            self.server = ServerProcess(
                [FFMPEG, "-hide_banner", "-nostats", "-loglevel", "info", *_FAST_INPUT, "-i", self.upstream,
                 "-map", "0:v:0", "-c", "copy", "-f", "flv", "-listen", "1", self.url],
                "the RTMP server (FFmpeg)")
            try:
                _wait(lambda: listening(self.port), timeout, f"RTMP listening on port {self.port}", self.server)
                return self
            except RuntimeError:
                err = self.server.stderr
                self.server.stop()
                if attempt == 2 or "Address already in use" not in err:
                    raise
                self.port = free_port()  # someone took the free port first
        return self

    def restart(self) -> RtmpServer:
        self.stop()
        return self.start()

    def describe(self) -> str:
        return self.server.describe() if self.server else "the RTMP server (not started)"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="module")
def rtmp_source(source_cam: TestCam) -> Iterator[RtmpServer]:
    """For one client in the module (the server exits after it)."""
    server = RtmpServer(source_cam.url)
    try:
        yield server.start()
    finally:
        server.stop()


# ---------------------------------------------------------------------- RTSPS


@pytest.fixture(scope="module")
def rtsps_cam(tls_files: TlsFiles) -> Iterator[TestCam]:
    cam = TestCam(fps=10, gop=10, tls_cert=tls_files.pem)
    cam.start(timeout=30)
    try:
        yield cam
    finally:
        cam.stop()
