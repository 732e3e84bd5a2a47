"""scripts/install into a temporary root: the tree it leaves, idempotence, and that it keeps an
operator's files. Builds a real venv (pip install of this checkout), so it takes a few seconds."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_systemd import systemd_parsed

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

    dropin = root / "etc/systemd/system/recorderd.service.d/storage.conf"
    if example.exists():  # the example's storage.root is the default one: no ReadWritePaths= needed
        assert dropin_settings(dropin) == ["[Unit]", "RequiresMountsFor=/var/lib/recorderd/recordings"]
        assert mode(dropin) == 0o644

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
    # the operator's config does not load (no storage.root): the drop-in stays as it was
    assert "storage.root" in proc.stderr and "storage.conf left as it was" in proc.stdout
    if example.exists():
        assert dropin_settings(dropin) == ["[Unit]", "RequiresMountsFor=/var/lib/recorderd/recordings"]


def dropin_settings(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.timeout(900)
def test_storage_dropin_follows_storage_root(tmp_path: Path) -> None:
    """storage.conf is rewritten from storage.root on every run, escaped so that systemd reads back
    the very path (space, %, quote, backslash), and makes the disk's mount unit a requirement."""
    root = tmp_path / "root"
    assert run_install(root, "--root", str(root), "--no-systemctl").returncode == 0
    cameras = root / "etc/recorderd/cameras.yaml"
    dropin = root / "etc/systemd/system/recorderd.service.d/storage.conf"
    storage = '/srv/nvr disk/rec "a" 100%\\b'
    cameras.write_text(
        "storage:\n"
        f"  root: {json.dumps(storage)}\n"
        "  status_file: /run/recorderd/status.json\n"
        "cameras:\n"
        "  - {id: cam-1, url: 'rtsp://u:secret@10.0.0.5/s'}\n")
    proc = run_install(root, "--root", str(root), "--no-systemctl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "secret" not in proc.stdout + proc.stderr
    escaped = '/srv/nvr\\ disk/rec\\ \\"a\\"\\ 100%%\\\\b'
    assert dropin_settings(dropin) == [
        "[Unit]", f"RequiresMountsFor={escaped}",
        "[Service]", f"ReadWritePaths={escaped} -/run/recorderd",
    ]

    odd_dropin = dropin.read_text()

    # no escape can carry a control character: refused, the previous drop-in stays
    cameras.write_text('storage: {root: "/srv/a\\nb"}\ncameras: []\n')
    proc = run_install(root, "--root", str(root), "--no-systemctl")
    assert proc.returncode == 0 and "control character" in proc.stderr, proc.stdout + proc.stderr
    assert dropin.read_text() == odd_dropin

    # back under /var/lib/recorderd: only RequiresMountsFor=, the unit already has ReadWritePaths=
    cameras.write_text("storage: {root: /var/lib/recorderd/recordings/}\ncameras: []\n")
    assert run_install(root, "--root", str(root), "--no-systemctl").returncode == 0
    assert dropin_settings(dropin) == ["[Unit]", "RequiresMountsFor=/var/lib/recorderd/recordings"]

    # what systemd makes of the odd path's drop-in, next to the unit as installed and the disk's
    # mount unit (last: it skips without systemd)
    mount = "srv-nvr\\x20disk.mount"  # systemd-escape --path --suffix=mount '/srv/nvr disk'
    parsed = systemd_parsed({
        "recorderd.service": (root / "etc/systemd/system/recorderd.service").read_text(),
        "recorderd.service.d/storage.conf": odd_dropin,
        mount: "[Mount]\nWhat=/dev/disk/by-label/nvr\nWhere=/srv/nvr disk\n",
    })
    assert f"RequiresMountsFor: {storage} (origin-file)" in parsed
    assert f"ReadWritePaths: /var/lib/recorderd {storage} -/run/recorderd" in parsed
    assert f"Requires: {mount} (origin-path)" in parsed and f"After: {mount} (origin-path)" in parsed
