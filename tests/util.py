"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from recorderd.config import Config, parse_config
from recorderd.events import SegmentEvent
from recorderd.probe import probe_duration
from recorderd.streammemory import StreamMemory
from recorderd.supervisor import CameraSupervisor


async def wait_until(pred: Callable[[], Any], timeout: float, step: float = 0.1, what: str = "") -> Any:
    """Poll ``pred`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        await asyncio.sleep(step)


T = TypeVar("T")


class Background(Generic[T]):
    """A coroutine run to completion from now on, in a thread with an event loop of its own.

    For the slow recordings that only wait on the wall clock: a module-scoped fixture starts one at the
    module's start, the module's other tests run meanwhile, and the test that owns it awaits
    ``result()`` and asserts on what it returns (an exception raised in the coroutine, a failed assert
    included, is raised there with its traceback). Its own loop and thread: nothing a test does in its
    loop (or blocking it) can delay the recording's timing. ``cancel()`` (fixture teardown) cancels it
    if it still runs and joins the thread.
    """

    def __init__(self, make: Callable[[], Coroutine[Any, Any, T]], name: str) -> None:
        self.name = name
        self._future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[T] | None = None
        self._thread = threading.Thread(target=self._run, args=(make,), name=f"background-{name}", daemon=True)
        self._thread.start()

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._task = loop.create_task(make())
            result = loop.run_until_complete(self._task)
        except BaseException as exc:
            self._future.set_exception(exc)
        else:
            self._future.set_result(result)
        finally:
            try:  # what asyncio.run does after its main task
                leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in leftovers:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def done(self) -> bool:
        return self._future.done()

    async def result(self, timeout: float) -> T:
        """What the coroutine returned (waiting up to ``timeout`` s more for it), or its exception."""
        await wait_until(self._future.done, timeout, what=f"the background {self.name}")
        return self._future.result()

    def wait(self, timeout: float) -> T:
        """``result()`` for a test without an event loop."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for the background {self.name}") from None

    def cancel(self) -> None:
        if not self._future.done():
            def cancel_task() -> None:
                if self._task is not None:
                    self._task.cancel()

            try:
                self._loop.call_soon_threadsafe(cancel_task)
            except RuntimeError:  # the loop closed meanwhile: it has finished
                pass
        self._thread.join(60)


def ffprobe(path: str | Path) -> dict[str, Any]:
    """ffprobe's view of a file: raises if it cannot read it."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type,codec_name,codec_tag_string",
         "-of", "json", str(path)], capture_output=True, text=True, timeout=30, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def ffprobe_duration(path: str | Path) -> float:
    return float(ffprobe(path)["format"]["duration"])


def camera_doc(cam_id: str, url: str, **extra: Any) -> dict[str, Any]:
    doc = {"id": cam_id, "url": url, "segment_seconds": 2, "stall_seconds": 6, "timeout_seconds": 5}
    doc.update(extra)
    return doc


def config_doc(root: Path, cameras: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"storage": {"root": str(root)}, "cameras": cameras,
                           "metrics": {"listen": None}}
    for key, value in extra.items():
        doc[key] = value
    return doc


def write_api_config(path: Path, root: Path, cameras: list[dict[str, Any]], *, dsn: str, port: int,
                     tokens: dict[str, str], watch_only: tuple[str, ...] = (), **extra: Any) -> Path:
    """A daemon config with the API on 127.0.0.1:``port``: each token named by its key, scoped to the
    tenant of the same name (``ops`` sees every tenant), allowed to change clips unless ``watch_only``."""
    docs = [{"name": name, "sha256": hashlib.sha256(secret.encode()).hexdigest(),
             **({"tenants": [name]} if name != "ops" else {}), "clips": name not in watch_only}
            for name, secret in tokens.items()]
    doc = config_doc(root, cameras, database={"dsn": dsn},
                     http={"listen": f"127.0.0.1:{port}", "tokens": docs}, **extra)
    doc.pop("metrics")
    path.write_text(yaml.safe_dump(doc))
    return path


def make_config(root: Path, cameras: list[dict[str, Any]], **extra: Any) -> Config:
    return parse_config(config_doc(root, cameras, **extra))


def write_config(path: Path, root: Path, cameras: list[dict[str, Any]], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump(config_doc(root, cameras, **extra)))
    return path


REPO = Path(__file__).resolve().parent.parent


class DaemonProc:
    """``recorderd run`` as a real subprocess, logging JSON lines to a file we can parse."""

    def __init__(self, config_path: Path, root: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.root = root
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProc:
        import os
        import sys

        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env.update(self.env or {})
        fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recorderd", "run", "--config", str(self.config_path),
             "--log-format", "json", "--log-level", "debug"],
            stdout=fh, stderr=subprocess.STDOUT, env=env)
        fh.close()
        return self

    @property
    def status_path(self) -> Path:
        return self.root / ".recorderd" / "status.json"

    def status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text())
            return data
        except (OSError, ValueError):
            return None

    def camera(self, cam_id: str) -> dict[str, Any] | None:
        st = self.status()
        if not st:
            return None
        for c in st["cameras"]:
            if c["camera_id"] == cam_id:
                return dict(c)
        return None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line[line.index("{"):])
            except ValueError:
                continue
            if name is None or ev.get("event") == name:
                out.append(ev)
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        import signal as _signal

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(_signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def fetch_segments(dsn: str, camera_id: str | None = None) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT camera_id, path, source, run_id::text AS run_id, seq, size_bytes, duration_seconds,"
            " extract(epoch FROM start_time)::float8 AS start, extract(epoch FROM end_time)::float8 AS end"
            " FROM segments WHERE $1::text IS NULL OR camera_id = $1 ORDER BY camera_id, start_time",
            camera_id)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


def disk_segments(root: Path) -> set[str]:
    return {str(p) for p in root.glob("*/*/*.mp4")}


def top_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the top-level boxes of a well-formed MP4 file's bytes."""
    import struct

    out, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, pos, size))
        pos += size
    return out


class SupervisedCamera:
    """One ``CameraSupervisor`` (``cam_id``, "cam-1" unless told) in the running loop and every segment
    event it emitted; ``start()``/``stop()``, or ``async with``. Give each of the supervisors that run
    at the same time an id of its own: the metrics are per process, labelled by camera id."""

    def __init__(self, root: Path, url: str, *, memory: StreamMemory | None = None, cam_id: str = "cam-1",
                 **cam: Any) -> None:
        self.root = root
        self.cam_id = cam_id
        self.events: list[SegmentEvent] = []
        config = make_config(root, [camera_doc(cam_id, url, **cam)])
        self.sup = CameraSupervisor(config.cameras[0], root, self.events.append, probe=probe_duration,
                                    memory=memory)
        self.task: asyncio.Task[None] | None = None
        self.started = 0.0  # wall time of start()

    def start(self) -> SupervisedCamera:
        self.started = time.time()
        self.task = asyncio.create_task(self.sup.run())
        return self

    async def stop(self) -> None:
        await self.sup.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)

    async def __aenter__(self) -> SupervisedCamera:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def segments(self) -> list[SegmentEvent]:
        return [e for e in self.events if e.source == "ffmpeg"]
