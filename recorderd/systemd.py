"""sd_notify(3) in a few lines: readiness, status text, stopping, and the watchdog keep-alive.

Our own implementation instead of a dependency: the protocol is one datagram to ``$NOTIFY_SOCKET``.
Everything is a no-op (returns False) when the daemon is not started by systemd with
``Type=notify``, so the same code runs from a terminal or in tests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from recorderd.logging import get_logger

log = get_logger(component="systemd")


def notify(message: str) -> bool:
    """Send one notification (``"READY=1"``, ``"STATUS=..."``, newline-separated assignments).

    Returns True if it was sent. Failures are logged, never raised: a lost status line must not stop
    recording.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace socket
        target = "\0" + address[1:]
    elif address[0] == "/":
        target = address
    else:  # e.g. vsock:..., which a recorder never runs under
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # bounded: a full socket queue must not hang the event loop
            sock.settimeout(1.0)
            sock.connect(target)
            sock.sendall(message.encode("utf-8", "replace"))
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc), message=message.split("\n", 1)[0])
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Startup is finished: ``systemctl start`` returns and dependent units start."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def status(text: str) -> bool:
    """Free-form text shown by ``systemctl status`` (e.g. "recording 12/12 cameras")."""
    return notify(f"STATUS={_one_line(text)}")


def reloading() -> bool:
    """A reload started; send ``ready()`` when it is applied (or was rejected)."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    """Shutdown started: systemd shows 'deactivating' instead of treating the exit as a crash."""
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds of ``WatchdogSec=`` if systemd expects pings from this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # the variables were inherited: the watchdog belongs to our parent
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


async def watchdog_task(interval: float | None = None) -> None:
    """Ping the watchdog at half its interval, from the event loop itself, until cancelled.

    Because the ping is sent by a coroutine, a blocked or starved loop stops the pings and systemd
    kills and restarts the process (``Restart=on-failure``). ``interval`` defaults to
    ``watchdog_interval()``; with no watchdog configured this returns at once.
    """
    if interval is None:
        interval = watchdog_interval()
    if interval is None or interval <= 0:
        return
    period = interval / 2
    while True:
        watchdog_ping()
        await asyncio.sleep(period)


def _one_line(text: str) -> str:
    return " ".join(text.split())
