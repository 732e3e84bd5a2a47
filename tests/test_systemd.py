"""sd_notify against a real unix datagram socket, the watchdog task, and the unit file."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorderd import systemd
from recorderd.config import SHUTDOWN_MAX_SECONDS
from recorderd.daemon import SHUTDOWN_BACKSTOP_SECONDS

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "recorderd.service"
JOURNALD = REPO / "systemd" / "journald-recorderd.conf"


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

SYSTEMD = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)), None)


def systemd_parsed(units: dict[str, str], unit: str = "recorderd.service") -> list[str]:
    """``unit`` as systemd itself parsed it: ``systemd --test`` dumps every unit of the initial
    transaction. ``units`` maps paths relative to a unit directory (drop-ins included) to their text;
    that directory goes first in the search path, the system's own units after it. Fails on any
    warning about those files; returns the dump lines of ``unit`` (``Key: value``), or skips."""
    if SYSTEMD is None:
        pytest.skip("systemd not installed (apt-get install systemd)")
    cmd = ["env", "-i", "HOME=/", "PATH=/usr/bin:/bin"]
    if os.geteuid() == 0:  # systemd refuses test mode as root
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv not installed: cannot run systemd --test unprivileged")
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    with tempfile.TemporaryDirectory(prefix="recorderd-units-") as d:
        os.chmod(d, 0o755)
        for rel, text in units.items():
            path = Path(d) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)
            path.write_text(text)
            path.chmod(0o644)
        proc = subprocess.run([*cmd, f"SYSTEMD_UNIT_PATH={d}:", SYSTEMD, "--test", "--system", f"--unit={unit}"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    # what systemd-analyze verify would say about our files: unknown keys, invalid values
    warnings = [line for line in proc.stderr.splitlines() if line.startswith(d)]
    assert not warnings, warnings
    block: list[str] = []
    for line in proc.stdout.splitlines():
        if line.startswith("\t-> Unit "):
            if block:
                break
            if line == f"\t-> Unit {unit}:":
                block.append(line)
        elif block:
            block.append(line.strip())
    assert block, f"{unit} not in the dump:\n{proc.stdout[-3000:]}"
    return block



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
        "RestartSec": "2", "TimeoutStopSec": "75", "KillMode": "mixed", "User": "recorderd",
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


def test_stop_timeout_covers_the_largest_drain_budget() -> None:
    """The daemon exits within shutdown_seconds (at most SHUTDOWN_MAX_SECONDS) + its backstop, then
    kills its FFmpegs and flushes the index: systemd must not SIGKILL it before, or the open
    segments lose their index. 5 s of margin for the kills and the flush."""
    s = unit_settings()
    assert s.get("KillMode") == ["mixed"]
    (timeout,) = s["TimeoutStopSec"]
    assert timeout.isdigit(), f"TimeoutStopSec={timeout}: write plain seconds"
    assert int(timeout) >= SHUTDOWN_MAX_SECONDS + SHUTDOWN_BACKSTOP_SECONDS + 5
    # and it is the stop timeout systemd reads (TimeoutSec= or a later line would override it)
    assert "TimeoutSec" not in s
    parsed = systemd_parsed({"recorderd.service": UNIT.read_text()})
    assert f"TimeoutStopSec: {int(timeout) // 60}min {int(timeout) % 60}s" in parsed, \
        [line for line in parsed if "Timeout" in line]


def test_journald_dropin() -> None:
    """Persistent journal with a size cap; only [Journal] keys journald knows."""
    settings: dict[str, str] = {}
    section = None
    for line in JOURNALD.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        assert section == "[Journal]", line
        key, sep, value = line.partition("=")
        assert sep and key not in settings, line
        settings[key] = value
    assert settings.get("Storage") == "persistent"
    cap = settings.get("SystemMaxUse", "")
    assert re.fullmatch(r"[1-9][0-9]*[MG]", cap), cap
    size = int(cap[:-1]) * (1 << (20 if cap.endswith("M") else 30))
    assert 256 << 20 <= size <= 8 << 30
    assert set(settings) <= {"Storage", "SystemMaxUse", "SystemKeepFree", "SystemMaxFileSize",
                             "MaxRetentionSec", "Compress"}


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


def test_unit_hides_other_users_processes_from_the_service() -> None:
    """ProtectProc=invisible: the daemon and FFmpeg (which parses whatever a camera sends) see only
    the recorderd user's processes. It does not hide FFmpeg's command line from other users."""
    s = unit_settings()
    assert s["User"] == ["recorderd"] and "DynamicUser" not in s
    assert s.get("ProtectProc") == ["invisible"]
    assert s.get("ProcSubset") == ["pid"]
    parsed = systemd_parsed({"recorderd.service": UNIT.read_text()})
    assert "ProtectProc: invisible" in parsed
    assert "ProcSubset: pid" in parsed


def test_proc_restrictions_keep_the_process_metrics() -> None:
    """Mount /proc as the unit has systemd mount it for the service (ProtectProc= -> hidepid=,
    ProcSubset=pid -> subset=pid) and check the daemon's registry still exports process_* metrics:
    prometheus_client reads /proc/stat, which subset=pid hides, and then drops them all."""
    s = unit_settings()
    opts = []
    if s.get("ProtectProc", ["default"])[-1] != "default":
        opts.append("hidepid=" + s["ProtectProc"][-1])
    if s.get("ProcSubset", ["all"])[-1] == "pid":
        opts.append("subset=pid")
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot unshare a mount namespace here (needs root)")
    code = ("import recorderd.metrics, prometheus_client; "
            "print(prometheus_client.generate_latest().decode())")
    script = 'mount -t proc -o "$1" proc /proc || exit 77; exec "$2" -c "$3"'
    proc = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           ",".join(opts) or "defaults", sys.executable, code],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode == 77:
        pytest.skip(f"this kernel cannot mount /proc with {opts}: {proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    assert "\nprocess_resident_memory_bytes " in proc.stdout, (opts, proc.stdout[-2000:])
    assert "\nprocess_start_time_seconds " in proc.stdout


def test_unit_orders_after_the_clock_without_pulling_in_time_sync() -> None:
    """After= time-set.target (clock restored from timesyncd's saved timestamp) and time-sync.target
    (NTP, when a wait unit such as chrony-wait.service is enabled), but never Wants= time-sync.target:
    pulling it in would reach it at once, before any sync, for every unit ordered after it."""
    s = unit_settings()
    after = " ".join(s["After"]).split()
    assert "time-set.target" in after and "time-sync.target" in after
    wants = " ".join(s.get("Wants", [])).split()
    assert "time-sync.target" not in wants and "time-set.target" not in wants
    parsed = systemd_parsed({"recorderd.service": UNIT.read_text()})
    assert "After: time-set.target (origin-file)" in parsed
    assert "After: time-sync.target (origin-file)" in parsed
    assert not [line for line in parsed if line.startswith(("Wants: time-s", "Requires: time-s"))]


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
