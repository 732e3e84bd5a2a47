"""scripts/install into a temporary root: the tree it leaves, idempotence, and that it keeps an
operator's files. Builds a real venv (pip install of this checkout), so it takes a few seconds."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install"


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_script_is_executable_bash() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_bad_arguments(tmp_path: Path) -> None:
    proc = run_install(tmp_path, "--frobnicate")
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
    proc = run_install(tmp_path, "--root")
    assert proc.returncode == 2
    proc = run_install(tmp_path, "--help")
    assert proc.returncode == 0 and "--no-systemctl" in proc.stdout


@pytest.mark.timeout(900)
def test_install_into_a_temporary_root_twice(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = run_install(root, "--root", str(root), "--no-systemctl")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    venv = root / "opt/recorderd/venv"
    # the package is installed (not linked to the checkout) and importable with its dependencies
    check = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import recorderd, recorderd.httpserver, recorderd.systemd, uvloop, asyncpg, structlog; "
         "print(recorderd.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(venv))
    # the console script is there and points at the final location, not the staging root
    script = venv / "bin/recorderd"
    assert os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0].startswith("#!/opt/recorderd/venv/bin/python")

    unit = root / "etc/systemd/system/recorderd.service"
    assert unit.read_text() == (REPO / "systemd/recorderd.service").read_text()
    assert mode(unit) == 0o644

    env = root / "etc/recorderd/recorderd.env"
    assert mode(env) == 0o600
    assert "#RECORDERD_DATABASE_URL=postgresql://" in env.read_text()

    cameras = root / "etc/recorderd/cameras.yaml"
    example = REPO / "config/cameras.yaml"
    if example.exists():
        assert cameras.read_text() == example.read_text()
        assert mode(cameras) == 0o640  # camera passwords: not world-readable
    else:
        assert not cameras.exists() and "cameras.yaml not found" in proc.stdout

    recordings = root / "var/lib/recorderd/recordings"
    assert recordings.is_dir() and mode(recordings) == 0o750

    # an operator edits the config and the env file, then upgrades
    cameras.write_text("# operator's cameras\n")
    env.write_text("RECORDERD_DATABASE_URL=postgresql://rec:pw@db/rec\n")
    (recordings / "cam1").mkdir()
    unit.write_text("# stale unit\n")
    proc = run_install(root, "--root", str(root), "--no-systemctl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cameras.read_text() == "# operator's cameras\n"
    assert env.read_text() == "RECORDERD_DATABASE_URL=postgresql://rec:pw@db/rec\n"
    assert (recordings / "cam1").is_dir()
    assert unit.read_text() == (REPO / "systemd/recorderd.service").read_text()  # ours: replaced
    assert script.read_text().splitlines()[0].startswith("#!/opt/recorderd/venv/bin/python")
