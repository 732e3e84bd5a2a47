"""Child-process plumbing for FFmpeg: bind it to our life, stop it in escalating steps, probe ports.

Spawning never runs Python in the child: a ``preexec_fn`` makes every spawn a full ``fork()`` of the
daemon on the event loop thread (about 15 ms at 300 MB RSS), while without one CPython uses
``vfork``/``posix_spawn``. The parent-death signal is set by util-linux's ``setpriv --pdeathsig KILL``,
which execs FFmpeg with the signal in place (it survives ``execve``). Mass starts (daemon start, a
switch coming back with hundreds of cameras) are paced by ``SpawnPacer`` so they spread over a few
seconds instead of one burst.

Stopping follows watchfiles' ``run.py``: ask politely (``q`` on stdin lets FFmpeg close its open
segment), then SIGTERM, then SIGKILL, each step bounded and logged, because one SIGTERM may not stop
an FFmpeg stuck on a frozen camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPAWNS_PER_SECOND = 50.0
_SETPRIV: list[str | None] = []  # resolved once: [path or None]


def _setpriv() -> str | None:
    if not _SETPRIV:
        _SETPRIV.append(shutil.which("setpriv"))
    return _SETPRIV[0]


def pdeathsig_argv(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` behind ``setpriv --pdeathsig KILL`` when it exists; (argv, True) if wrapped."""
    tool = _setpriv()
    if tool is None:
        return argv, False
    return [tool, "--pdeathsig", "KILL", "--", *argv], True


async def spawn(argv: list[str], *, cwd: Path, env: Mapping[str, str], input_data: bytes | None = None,
                fd_placeholder: str = "{input_fd}") -> asyncio.subprocess.Process:
    """Start a child bound to our life, with pipes for stdin/stdout/stderr, in its own session.

    ``input_data`` (a few hundred bytes) is readable by the child alone, from an inherited pipe whose
    fd number replaces ``fd_placeholder`` in ``argv``: how a camera URL reaches FFmpeg unseen.
    """
    extra: dict[str, Any] = {}
    rfd = -1
    if input_data is not None:
        if len(input_data) > 32768:  # must fit the pipe buffer: written before the child reads
            raise OSError("input script too large for a pipe")
        rfd, wfd = os.pipe()
        try:
            os.write(wfd, input_data)
        finally:
            os.close(wfd)
        argv = [a.replace(fd_placeholder, str(rfd)) for a in argv]
        extra["pass_fds"] = (rfd,)
    wrapped, ok = pdeathsig_argv(argv)
    if not ok:
        extra["preexec_fn"] = set_pdeathsig  # no setpriv: a slow fork, but never an orphan FFmpeg
    try:
        return await asyncio.create_subprocess_exec(
            *wrapped, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, **extra)
    finally:
        if rfd >= 0:
            os.close(rfd)


class SpawnPacer:
    """At most ``per_second`` spawns a second across all cameras; callers wait their turn."""

    def __init__(self, per_second: float = SPAWNS_PER_SECOND) -> None:
        self.interval = 1.0 / per_second
        self._next = 0.0

    async def turn(self) -> None:
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


def set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """FFmpeg dies with us (SIGKILL of the daemon), instead of recording on unsupervised."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


async def stop_process(proc: asyncio.subprocess.Process, q_wait: float, term_wait: float, *, why: str,
                       log: Any) -> None:
    """``q`` on stdin, then SIGTERM, then SIGKILL, each step logged and bounded."""
    steps: list[tuple[str, float]] = []
    if q_wait > 0:
        steps.append(("q", q_wait))
    steps += [("SIGTERM", term_wait), ("SIGKILL", 5.0)]
    for step, wait in steps:
        if proc.returncode is not None:
            return
        try:
            if step == "q":
                if proc.stdin is not None and not proc.stdin.is_closing():
                    proc.stdin.write(b"q")
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(proc.stdin.drain(), 1.0)
            elif step == "SIGTERM":
                proc.send_signal(signal.SIGTERM)
            else:
                proc.kill()
        except (ProcessLookupError, BrokenPipeError, ConnectionResetError):
            return
        log.info("ffmpeg_stopping", step=step, why=why, pid=proc.pid, wait=wait)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
            return
        except TimeoutError:
            continue


async def port_open(host: str, port: int, timeout: float) -> bool:
    """Whether something listens on host:port.

    A reset counts as open: a peer that accepts and resets at once can have its RST land before a
    busy loop reads the connect result, and calling that port closed would let the supervisor treat
    the next probe as "the camera came back" and skip its backoff.
    """
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (ConnectionResetError, ConnectionAbortedError):
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
