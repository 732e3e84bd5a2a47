"""sd_notify against a real unix datagram socket, the watchdog task, and the unit file."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorderd import systemd

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "recorderd.service"


class NotifySocket:
    """What systemd would be: a datagram socket collecting (arrival time, message)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def messages(self, wait: float = 1.0, count: int = 1) -> list[str]:
        deadline = time.monotonic() + wait
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return [m for _, m in self.received]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    ns = NotifySocket(sock)
    yield ns
    ns.close()


def test_notify_without_systemd_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready("x") is False and systemd.stopping() is False and systemd.status("x") is False


def test_notify_to_a_missing_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nope.sock"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False


def test_ready_status_stopping_reloading(notify_socket: NotifySocket) -> None:
    assert systemd.ready("recording 2/2 cameras")
    assert systemd.status("line one\nline two")
    assert systemd.reloading()
    assert systemd.stopping()
    msgs = notify_socket.messages(count=4)
    assert msgs[0] == "READY=1\nSTATUS=recording 2/2 cameras"
    assert msgs[1] == "STATUS=line one line two"  # a newline would start a new assignment
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", msgs[2])
    usec = int(msgs[2].rsplit("=", 1)[1])
    assert abs(usec / 1e6 - time.monotonic()) < 5
    assert msgs[3] == "STOPPING=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"recorderd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    ns = NotifySocket(sock)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert ns.messages() == ["READY=1"]
    finally:
        ns.close()


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", "x")
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "abc", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert systemd.watchdog_interval() is None


async def test_watchdog_task_without_watchdog_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(systemd.watchdog_task(), 1)
    await asyncio.wait_for(systemd.watchdog_task(0), 1)


async def test_watchdog_pings_at_half_interval_and_stop_when_loop_is_stuck(
        notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    task = asyncio.create_task(systemd.watchdog_task())
    await asyncio.sleep(0.45)
    before_block = len(notify_socket.messages(wait=0.2, count=4))
    assert before_block >= 4
    blocked_at = time.monotonic()
    time.sleep(0.6)
    unblocked_at = time.monotonic()
    await asyncio.sleep(0.25)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    times = [t for t, _ in notify_socket.received]
    assert all(m == "WATCHDOG=1" for _, m in notify_socket.received)
    # nothing arrived while blocked (allow for the datagram in flight when it started)
    assert not [t for t in times if blocked_at + 0.05 < t < unblocked_at - 0.01]
    assert any(t >= unblocked_at for t in times)  # pings resume with the loop
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) > 0.5 and sorted(gaps)[len(gaps) // 2] < 0.2


# ---------------------------------------------------------------------------- the unit file


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_unit_has_the_required_settings() -> None:
    s = unit_settings()
    expect = {
        "Type": "notify", "NotifyAccess": "main",
        "ExecStart": "/opt/recorderd/venv/bin/recorderd run --config /etc/recorderd/cameras.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID", "WatchdogSec": "30", "Restart": "on-failure",
        "RestartSec": "2", "TimeoutStopSec": "20", "KillMode": "mixed", "User": "recorderd",
        "Group": "recorderd", "EnvironmentFile": "-/etc/recorderd/recorderd.env",
        "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/recorderd", "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "ProtectHome": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK", "LockPersonality": "yes",
        "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "", "StateDirectory": "recorderd", "LimitNOFILE": "65536",
        "WantedBy": "multi-user.target",
    }
    for key, value in expect.items():
        assert s.get(key) == [value], key
    assert "Nice" not in s and "IOSchedulingClass" not in s
    # the daemon drains in ~10 s (shutdown_seconds): systemd must wait longer than that
    assert int(s["TimeoutStopSec"][0]) > 10


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    # verify insists that ExecStart= exists; the venv is not installed here, so point it at a real
    # binary and keep every other line as shipped
    text = UNIT.read_text()
    assert text.count("ExecStart=/opt/recorderd/venv/bin/recorderd ") == 1
    copy = tmp_path / "recorderd.service"
    copy.write_text(text.replace("ExecStart=/opt/recorderd/venv/bin/recorderd ", "ExecStart=/bin/true "))
    proc = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "recorderd.service" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """Guards the test above: a typo must show up in verify's output."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    bad = tmp_path / "recorderd.service"
    bad.write_text(UNIT.read_text().replace("/opt/recorderd/venv/bin/recorderd ", "/bin/true ")
                   .replace("KillMode=mixed", "KillMode=mxied"))
    proc = subprocess.run([tool, "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60)
    assert "kill mode" in (proc.stdout + proc.stderr).lower()
