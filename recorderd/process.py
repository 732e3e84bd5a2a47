"""Child-process plumbing for FFmpeg: bind it to our life, stop it in escalating steps, probe ports.

Stopping follows watchfiles' ``run.py``: ask politely (``q`` on stdin lets FFmpeg close its open
segment), then SIGTERM, then SIGKILL, each step bounded and logged, because one SIGTERM may not stop
an FFmpeg stuck on a frozen camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from typing import Any


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
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
