"""Real RTSP test cameras: ``scripts/testcam`` (gst-rtsp-server under the system python3).

``TestCam`` starts one camera process on a free port and can take it offline (``kill``), bring it
back on the same port (``restart``), or hang it (``hang``/``resume``, SIGSTOP/SIGCONT).

Fixtures:

* ``testcam_factory`` (function): ``testcam_factory(fps=5, audio="aac", user="u", password="p",
  codec="h265", tls_cert="cam.pem")`` (codec h264, h265 or vp8: one the MP4 container refuses;
  tls_cert: a PEM file with a certificate and its key, for an RTSPS camera at ``rtsps://``)
  returns a started ``TestCam``; everything it made is stopped at teardown.
* ``shared_cam``: one default camera (10 fps, keyframe every 10 frames = 1/s) per session, for
  tests that only need "a camera that works"; respawned on its port, with a warning, if it dies
  (before or during a test). Do not kill or hang it; use the factory for that.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTCAM = REPO / "scripts" / "testcam"
# the camera needs python3-gi: Debian's python, not the venv's
TESTCAM_PYTHON = os.environ.get("RECORDERD_TESTCAM_PYTHON", "/usr/bin/python3")

# every camera process ever spawned and not yet reaped: killed at interpreter exit, whatever happened
_procs: set[subprocess.Popen[bytes]] = set()
_procs_lock = threading.Lock()  # tests drive cameras from worker threads too (asyncio.to_thread)


def track_process(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` at interpreter exit if nobody reaped it (other fixtures' servers use this too)."""
    with _procs_lock:
        _procs.difference_update([p for p in _procs if p.returncode is not None])  # reaped ones
        _procs.add(proc)


def captured_text(f: Any) -> str:
    """All a child wrote so far to the temp file holding its output ("" if it is closed or gone)."""
    if f is None:
        return ""
    try:
        f.seek(0)
        data: bytes = f.read()
        return data.decode(errors="replace")
    except (OSError, ValueError):
        return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class TestCam:
    """One ``scripts/testcam`` process serving ``rtsp://127.0.0.1:PORT/stream`` (``rtsps://`` with ``tls_cert``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, port: int | None = None, fps: int = 10, gop: int = 10, audio: str = "none",
                 user: str | None = None, password: str | None = None, path: str = "/stream",
                 width: int = 320, height: int = 240, bitrate: int = 256, pattern: str = "ball",
                 ts_scale: float = 1.0, codec: str = "h264", tls_cert: str | os.PathLike[str] | None = None) -> None:
        if audio not in ("none", "aac", "alaw"):
            raise ValueError(f"audio must be none, aac or alaw, got {audio!r}")
        if codec not in ("h264", "h265", "vp8"):
            raise ValueError(f"codec must be h264, h265 or vp8, got {codec!r}")
        self.codec = codec
        self.tls_cert = str(tls_cert) if tls_cert is not None else None  # PEM: certificate + key
        self.scheme = "rtsps" if self.tls_cert else "rtsp"
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.fps, self.gop, self.audio = fps, gop, audio
        self.user, self.password = user, password
        self.path = path if path.startswith("/") else "/" + path
        self.width, self.height, self.bitrate, self.pattern = width, height, bitrate, pattern
        self.ts_scale = ts_scale  # stream time runs at this multiple of wall time
        self.proc: subprocess.Popen[bytes] | None = None
        self.hung = False
        self.start_seconds = 0.0
        self.crash_reports: list[str] = []  # the shared_cam fixture's respawns, warned at teardown
        self._stderr: Any = None
        self._stdout: Any = None

    # ------------------------------------------------------------------ URLs

    @property
    def url(self) -> str:
        """The URL a recorder uses (with credentials when the camera requires them)."""
        cred = ""
        if self.user:
            cred = quote(self.user, safe="") + ":" + quote(self.password or "", safe="") + "@"
        return f"{self.scheme}://{cred}127.0.0.1:{self.port}{self.path}"

    @property
    def url_without_credentials(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{self.path}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def _argv(self) -> list[str]:
        argv = [TESTCAM_PYTHON, str(TESTCAM), "--port", str(self.port), "--path", self.path,
                "--fps", str(self.fps), "--gop", str(self.gop), "--audio", self.audio,
                "--width", str(self.width), "--height", str(self.height),
                "--bitrate", str(self.bitrate), "--pattern", self.pattern, "--codec", self.codec]
        if self.user:
            argv += ["--user", self.user, "--password", self.password or ""]
        if self.ts_scale != 1.0:
            argv += ["--ts-scale", str(self.ts_scale)]
        if self.tls_cert:
            argv += ["--tls-cert", self.tls_cert]
        return argv

    def _stderr_text(self) -> str:
        return captured_text(self._stderr).strip()

    def _stdout_text(self) -> str:
        return captured_text(self._stdout)

    def _spawn_and_wait(self, timeout: float) -> tuple[bool, str]:
        """Spawn; wait until it says it listens and the port accepts. ``(ok, error text)``."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
        for f in (self._stderr, self._stdout):
            if f is not None:
                f.close()
        self._stderr = tempfile.TemporaryFile()
        self._stdout = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self._argv(), stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr,
            env=env, start_new_session=True,
        )
        track_process(self.proc)
        self.hung = False
        ready_line = f"testcam: {self.scheme}://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"testcam exited {self.proc.returncode}: {self._stderr_text()}"
            # the line is printed after the server socket is bound: port_accepts alone could be
            # fooled by another process listening on the same port
            if ready_line in self._stdout_text() and port_accepts(self.port):
                return True, ""
            time.sleep(0.05)
        state = self._proc_state()  # R running, S sleeping, D in I/O, T stopped, Z exited, ? gone
        self._terminate()
        return False, (f"testcam did not listen on 127.0.0.1:{self.port} within {timeout:.0f}s "
                       f"(process {self.pid} state {state}): {self._stderr_text()}")

    def start(self, timeout: float = 10) -> TestCam:
        """Spawn the camera and wait until its TCP port accepts connections."""
        if self.is_running:
            return self
        t0 = time.monotonic()
        # a free port can be taken by someone else before the camera binds it: on a first start
        # without a fixed port, try another one
        attempts = 1 if self._fixed_port else 3
        err = ""
        for attempt in range(attempts):
            ok, err = self._spawn_and_wait(timeout)
            if ok:
                self.start_seconds = time.monotonic() - t0
                self._fixed_port = True  # from now on: same port (restart semantics)
                return self
            if "cannot listen" in err and attempt + 1 < attempts:
                self.port = free_port()
                continue
            break
        raise RuntimeError(err)

    def restart(self, timeout: float = 10) -> TestCam:
        """Start again on the same port (killing the current process first if there is one)."""
        if self.is_running:
            self.kill()
        deadline = time.monotonic() + timeout
        err = ""
        while True:  # the old socket may linger briefly: retry a bind failure on the same port
            ok, err = self._spawn_and_wait(max(1.0, deadline - time.monotonic()))
            if ok:
                return self
            if "cannot listen" not in err or time.monotonic() >= deadline:
                raise RuntimeError(err)
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL and reap: the camera vanishes mid-stream (no RTSP TEARDOWN)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.kill()  # SIGKILL also ends a stopped process
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.hung = False

    def _proc_state(self) -> str:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return "?"

    def _wait_state(self, stopped: bool, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self._proc_state() in ("T", "t")) == stopped:
                return
            time.sleep(0.005)

    def hang(self) -> None:
        """SIGSTOP (returns once stopped): TCP connections stay open, nothing more arrives."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("testcam is not running")
        self.proc.send_signal(signal.SIGSTOP)
        self.hung = True
        self._wait_state(stopped=True)

    def resume(self) -> None:
        """SIGCONT (returns once running again)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self._wait_state(stopped=False)
        self.hung = False

    def _terminate(self, grace: float = 5) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.hung = False

    def stop(self) -> None:
        """SIGTERM (after SIGCONT if hung), SIGKILL after 5 s."""
        self._terminate()
        for f in (self._stderr, self._stdout):
            if f is not None:
                f.close()
        self._stderr = self._stdout = None

    @property
    def stderr(self) -> str:
        return self._stderr_text()

    def __enter__(self) -> TestCam:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TestCam({self.url_without_credentials}, pid={self.pid}, running={self.is_running})"


def _kill_all() -> None:
    with _procs_lock:
        procs = list(_procs)
    for proc in procs:
        try:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        except Exception:
            pass


atexit.register(_kill_all)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # a SIGTERMed pytest would otherwise die without teardown or atexit, leaving cameras and the
    # PostgreSQL cluster running: treat it like Ctrl-C so that fixtures clean up
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def testcam_factory() -> Iterator[Callable[..., TestCam]]:
    made: list[TestCam] = []

    def make(**opts: Any) -> TestCam:
        cam = TestCam(**opts)
        made.append(cam)
        return cam.start()

    yield make
    for cam in made:
        try:
            cam.stop()
        except Exception:
            cam.kill()


@pytest.fixture(scope="session")
def _shared_cam_process() -> Iterator[TestCam]:
    cam = TestCam(fps=10, gop=10)
    cam.start(timeout=30)  # once per session: a loaded box is given time
    try:
        yield cam
    finally:
        cam.stop()


def _died(cam: TestCam) -> str:
    code = cam.proc.returncode if cam.proc is not None else None
    return f"the shared test camera exited {code}; its stderr ends: {cam.stderr[-1500:]!r}"


class _Respawner(threading.Thread):
    """Brings the shared camera back on its port within ~0.2 s if GStreamer aborts mid-test.

    gst-rtsp-server 1.22 can abort in ``gst_rtsp_media_get_rates`` (``g_assert (FALSE)`` on a
    stream that is complete but has no segment yet) when several clients PLAY one shared media at
    once. That is a bug of the test camera, not of the recorder; a real camera that reboots comes
    back too, so the test goes on against a camera that answers again and the crash is reported.
    """

    def __init__(self, cam: TestCam) -> None:
        super().__init__(name="shared-cam-respawner", daemon=True)
        self.cam = cam
        self.reports = cam.crash_reports
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            proc = self.cam.proc
            if proc is None or proc.poll() is None:
                continue
            self.reports.append(_died(self.cam) + " (respawned during this test)")
            try:
                self.cam.restart()
            except RuntimeError as exc:  # reported; the test fails on its own if it needed it
                self.reports.append(f"the shared test camera could not be respawned: {exc}")
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


@pytest.fixture
def shared_cam(_shared_cam_process: TestCam) -> Iterator[TestCam]:
    """The session camera, kept answering on its port for the whole test.

    A GStreamer crash is reported (a warning with the camera's stderr), not hidden, and the camera
    is respawned on the same port (``_Respawner``) so one crash of the test camera cannot starve
    the test, or any later test, of a camera.
    """
    cam = _shared_cam_process
    if not cam.is_running:
        warnings.warn(_died(cam) + " (restarted)", stacklevel=1)
        cam.restart()
    cam.crash_reports.clear()
    respawner = _Respawner(cam)
    respawner.start()
    try:
        yield cam
    finally:
        respawner.stop()
        for report in cam.crash_reports:
            warnings.warn(report, stacklevel=1)
        cam.crash_reports.clear()
