"""FFmpeg spawning: no Python in the child (no fork of the daemon), bound to our life, paced."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from recorderd import process
from recorderd.process import SpawnPacer, spawn


async def test_spawn_passes_no_preexec_fn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    real = asyncio.create_subprocess_exec

    async def spy(*argv: str, **kw: Any) -> asyncio.subprocess.Process:
        seen.update(kw, argv=argv)
        return await real(*argv, **kw)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    proc = await spawn(["true"], cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert await proc.wait() == 0
    assert "preexec_fn" not in seen  # CPython falls back to fork() + Python code in the child with one
    assert seen["argv"][1:4] == ("--pdeathsig", "KILL", "--")


def test_child_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    """A daemon killed with SIGKILL takes its FFmpegs with it (no camera recorded twice)."""
    pidfile = tmp_path / "child.pid"
    code = f"""
import asyncio, pathlib
from recorderd.process import spawn
async def main():
    p = await spawn(["sleep", "60"], cwd=pathlib.Path("{tmp_path}"), env={{"PATH": "/usr/bin:/bin"}})
    pathlib.Path("{pidfile}").write_text(str(p.pid))
    await asyncio.sleep(60)
asyncio.run(main())
"""
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "child never started"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait(5)
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "child outlived its SIGKILLed parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            state = next(line for line in fh if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie is dead, merely not reaped by this sandbox's init


async def test_mass_start_is_spread_out() -> None:
    pacer = SpawnPacer(per_second=50)
    t0 = time.monotonic()
    times: list[float] = []

    async def one() -> None:
        await pacer.turn()
        times.append(time.monotonic() - t0)

    await asyncio.gather(*(one() for _ in range(40)))
    times.sort()
    assert times[-1] >= 39 / 50 - 0.05  # 40 starts over about 0.8 s, not at once
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.015


def test_setpriv_missing_falls_back_to_preexec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_SETPRIV", [None])
    argv, wrapped = process.pdeathsig_argv(["ffmpeg", "-i", "x"])
    assert argv == ["ffmpeg", "-i", "x"] and not wrapped


async def test_port_open_counts_a_reset_as_open_and_a_refusal_as_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A camera that accepts and resets: on a busy loop the RST arrives before the connect result is
    # read. Calling that "closed" made the next probe look like the camera coming back (CI flake).
    async def reset(*_a: object, **_k: object) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(asyncio, "open_connection", reset)
    assert await process.port_open("127.0.0.1", 9, timeout=1.0) is True
    monkeypatch.undo()
    with socket.socket() as s:  # a port nobody listens on: refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await process.port_open("127.0.0.1", port, timeout=1.0) is False
