"""The daemon as a service: live reload camera by camera, /metrics, /healthz, sd_notify.

The daemon without its database only waits on the wall clock: it runs in the background from the
module's start (``util.Background``: a thread and event loop of its own, a camera of its own) while
the live-reload test runs; its test, last in the module, raises what it asserted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_cam import TestCam, free_port
from prometheus_client.parser import text_string_to_metric_families
from util import Background, DaemonProc, camera_doc, config_doc, fetch_segments, wait_until

pytestmark = pytest.mark.integration


def save_by_rename(path: Path, doc: dict[str, Any] | str) -> None:
    """What vim/most editors do: write a new file, rename it over the old one."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    os.replace(tmp, path)


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    for lab, v in metrics.get(name, []):
        if all(lab.get(k) == want for k, want in labels.items()):
            return v
    return None


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    msgs = _received.setdefault(sock.fileno(), [])
    done = threading.Event()

    def drain() -> None:  # like systemd, read as they come: the queue holds only 10 datagrams here
        while not done.is_set():
            try:
                msgs.append(sock.recv(4096).decode())
            except (TimeoutError, OSError):
                continue

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    yield sock
    done.set()
    reader.join(2)
    _received.pop(sock.fileno(), None)
    sock.close()


_received: dict[int, list[str]] = {}


def notifications(sock: socket.socket) -> list[str]:
    """Every message received on ``sock`` so far (a reader thread collects them as they arrive)."""
    return list(_received.get(sock.fileno(), []))


async def test_live_reload_camera_by_camera(shared_cam, pg_dsn, tmp_path, notify_socket) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    root = tmp_path / "rec"
    cfg_path = tmp_path / "cameras.yaml"
    secret_url = shared_cam.url.replace("rtsp://", "rtsp://viewer:hunter2-pw@")
    cams = [camera_doc("keep", shared_cam.url), camera_doc("resize", shared_cam.url),
            camera_doc("drop", secret_url), camera_doc("meta", shared_cam.url, plan="basic")]
    doc = config_doc(root, cams, database={"dsn": pg_dsn}, metrics={"listen": f"127.0.0.1:{port}"})
    cfg_path.write_text(yaml.safe_dump(doc))
    d = DaemonProc(cfg_path, root, tmp_path / "daemon.log",
                   env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}).start()
    try:
        def all_recording(ids: set[str]) -> bool:
            st = d.status()
            return bool(st) and {c["camera_id"] for c in st["cameras"] if c["is_recording"]} >= ids  # type: ignore[index]

        await wait_until(lambda: all_recording({"keep", "resize", "drop", "meta"}), 45, what="4 cameras")
        await wait_until(lambda: any(m.startswith("READY=1") for m in notifications(notify_socket)) or
                         d.events("daemon_started"), 10)
        pids = {c["camera_id"]: c["pid"] for c in d.status()["cameras"]}  # type: ignore[index]
        await asyncio.sleep(3)

        # one edit: add a camera, remove one, change one's segment length, change one's plan only
        new = [camera_doc("keep", shared_cam.url), camera_doc("resize", shared_cam.url, segment_seconds=4),
               camera_doc("meta", shared_cam.url, plan="premium"), camera_doc("added", shared_cam.url)]
        save_by_rename(cfg_path, config_doc(root, new, database={"dsn": pg_dsn},
                                            metrics={"listen": f"127.0.0.1:{port}"}))
        ev = await wait_until(lambda: d.events("config_reloaded"), 20, what="config_reloaded")
        assert ev[0]["added"] == ["added"] and ev[0]["removed"] == ["drop"]
        assert ev[0]["restarted"] == ["resize"] and ev[0]["updated"] == ["meta"]
        await wait_until(lambda: all_recording({"keep", "resize", "meta", "added"}), 30, what="after reload")
        now = {c["camera_id"]: c["pid"] for c in d.status()["cameras"]}  # type: ignore[index]
        assert "drop" not in now
        assert now["keep"] == pids["keep"] and now["meta"] == pids["meta"]  # untouched: same FFmpeg
        assert now["resize"] != pids["resize"]

        # a bad edit is rejected with its line; the old config keeps running
        save_by_rename(cfg_path, "storage: {root: /x\ncameras: [\n")
        failed = await wait_until(lambda: d.events("config_reload_failed"), 20, what="reload failure")
        assert "line" in str(failed[0]["errors"])
        bad_ids = {"keep": "../evil"}
        bad = config_doc(root, [camera_doc(bad_ids["keep"], shared_cam.url)], database={"dsn": pg_dsn},
                         metrics={"listen": f"127.0.0.1:{port}"})
        save_by_rename(cfg_path, bad)
        await wait_until(lambda: len(d.events("config_reload_failed")) >= 2, 20, what="2nd reload failure")
        assert "cameras[0].id" in str(d.events("config_reload_failed")[1]["errors"])
        await asyncio.sleep(1)
        assert {c["camera_id"]: c["pid"] for c in d.status()["cameras"]} == now  # type: ignore[index]

        m = scrape(port)
        assert value(m, "recorderd_config_reloads_total", result="success") == 1
        assert value(m, "recorderd_config_reloads_total", result="error") == 2
        assert value(m, "recorderd_config_last_reload_successful") == 0
        assert value(m, "recorderd_camera_up", camera="keep") == 1
        assert value(m, "recorderd_camera_state", camera="added", state="recording") == 1
        assert value(m, "recorderd_camera_up", camera="drop") is None  # removed cameras' series go away
        assert (value(m, "recorderd_segments_total", camera="keep") or 0) >= 3
        assert value(m, "recorderd_database_up") == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200

        # SIGHUP reloads too (here: the file is still bad, so it is rejected again)
        d.signal(signal.SIGHUP)
        await wait_until(lambda: len(d.events("config_reload_failed")) >= 3, 20, what="SIGHUP reload")
    finally:
        d.stop()
    assert d.proc is not None and d.proc.returncode == 0
    msgs = "\n".join(notifications(notify_socket))
    assert "READY=1" in msgs and "STOPPING=1" in msgs and "STATUS=" in msgs and "RELOADING=1" in msgs

    rows = await fetch_segments(pg_dsn)
    keep = [r for r in rows if r["camera_id"] == "keep"]
    assert len({r["run_id"] for r in keep}) == 1  # no restart, no gap
    for prev, nxt in zip(keep, keep[1:], strict=False):
        assert abs(nxt["start"] - prev["end"]) < 1e-5
    assert [r for r in rows if r["camera_id"] == "drop"]  # a removed camera's footage and index stay
    assert all(Path(r["path"]).exists() for r in rows if r["camera_id"] == "drop")
    log_text = d.log_path.read_text()
    assert "hunter2-pw" not in log_text and "hunter2-pw" not in str(scrape.__doc__)


async def healthz_degraded_when_database_down(cam: TestCam, tmp_path: Path) -> None:
    port = free_port()
    root = tmp_path / "rec"
    cfg_path = tmp_path / "cameras.yaml"
    dead_db = f"postgresql://u:dbpass-xyz@127.0.0.1:{free_port()}/nope"
    doc = config_doc(root, [camera_doc("cam-a", cam.url)], database={"dsn": dead_db},
                     metrics={"listen": f"127.0.0.1:{port}"})
    cfg_path.write_text(yaml.safe_dump(doc))
    d = DaemonProc(cfg_path, root, tmp_path / "daemon.log").start()
    try:
        await wait_until(lambda: (d.camera("cam-a") or {}).get("is_recording"), 45, what="recording without DB")

        def healthz() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        code, body = healthz()
        assert code == 503 and "database" in body
        m = scrape(port)
        assert value(m, "recorderd_database_up") == 0
        await wait_until(lambda: (value(scrape(port), "recorderd_index_pending_rows") or 0) >= 1, 30,
                         what="rows pending while the DB is down")
    finally:
        d.stop()
    assert "dbpass-xyz" not in d.log_path.read_text()


@pytest.fixture(scope="module", autouse=True)
def without_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background[None]]:
    """``healthz_degraded_when_database_down``, started at the module's start on a camera of its own."""
    cam = TestCam(fps=10, gop=10).start(timeout=30)
    tmp = tmp_path_factory.mktemp("healthz")
    bg = Background(lambda: healthz_degraded_when_database_down(cam, tmp), "daemon without its database")
    try:
        yield bg
    finally:
        bg.cancel()
        cam.stop()


async def test_healthz_degraded_when_database_down(without_database: Background[None]) -> None:
    await without_database.result(120)
