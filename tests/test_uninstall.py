"""scripts/uninstall on a copy of a tree made by scripts/install --root: what goes, what stays, and
that footage is only ever deleted when asked, and then only where recorderd wrote it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_install import copy_tree, first_install

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "uninstall"


def run_uninstall(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def tree(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A fresh copy of an installed tree, with some footage and an operator's own drop-in."""
    root = copy_tree(first_install(tmp_path_factory)[0], tmp_path / "root")
    footage = root / "var/lib/recorderd/recordings/cam-001/2026-11-21"
    footage.mkdir(parents=True)
    (footage / "10-00-00.mp4").write_bytes(b"\0" * 1000)
    (root / "var/lib/recorderd/recordings/.recorderd").mkdir()
    (root / "var/lib/recorderd/last-good-config.yaml").write_text("cameras: []\n")
    (root / "etc/systemd/system/recorderd.service.d/override.conf").write_text("[Service]\nNice=-5\n")
    return root


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def test_arguments() -> None:
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--root DIR", "--no-systemctl", "--purge", "--delete-recordings"):
        assert option in proc.stdout
    proc = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
    proc = subprocess.run([str(SCRIPT), "--delete-recordings"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--purge" in proc.stderr


def test_uninstall_removes_the_code_and_keeps_config_and_footage(tree: Path) -> None:
    proc = run_uninstall(tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert files(tree) == {
        "etc/recorderd/cameras.yaml", "etc/recorderd/recorderd.env",
        "etc/systemd/journald.conf.d/recorderd.conf",
        "etc/systemd/system/recorderd.service.d/override.conf",
        "var/lib/recorderd/last-good-config.yaml",
        "var/lib/recorderd/recordings/cam-001/2026-11-21/10-00-00.mp4",
    }
    assert not (tree / "opt/recorderd").exists()
    assert "recordings are kept in /var/lib/recorderd/recordings" in proc.stdout
    assert "kept your drop-ins" in proc.stdout
    assert "dropdb recorderd" in proc.stdout
    assert run_uninstall(tree).returncode == 0  # twice is fine


def test_purge_keeps_the_recordings(tree: Path) -> None:
    (tree / "etc/recorderd/cameras.yaml").write_text("storage: {root: /var/lib/recorderd/recordings}\ncameras: []\n")
    proc = run_uninstall(tree, "--purge")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert files(tree) == {"var/lib/recorderd/recordings/cam-001/2026-11-21/10-00-00.mp4"}
    assert (tree / "var/lib/recorderd/recordings/.recorderd").is_dir()  # the volume marker goes with it
    assert not (tree / "etc/recorderd").exists() and not (tree / "etc/systemd/journald.conf.d").exists()
    assert "recordings are kept in /var/lib/recorderd/recordings" in proc.stdout


def test_purge_leaves_an_edited_journald_dropin_that_is_not_ours(tree: Path) -> None:
    journald = tree / "etc/systemd/journald.conf.d/recorderd.conf"
    journald.write_text("[Journal]\nSystemMaxUse=1G\n")
    assert run_uninstall(tree, "--purge").returncode == 0
    assert journald.read_text() == "[Journal]\nSystemMaxUse=1G\n"


def test_delete_recordings(tree: Path) -> None:
    proc = run_uninstall(tree, "--purge", "--delete-recordings")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tree / "var/lib/recorderd").exists()
    assert files(tree) == set()


def test_delete_recordings_only_where_recorderd_wrote(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A storage.root elsewhere is emptied only if it holds recorderd's .recorderd/ directory."""
    other = tree / "srv/data"
    (other / "cam-001").mkdir(parents=True)
    (other / "cam-001/a.mp4").write_bytes(b"x")
    (other / "precious.txt").write_text("not footage")
    (tree / "etc/recorderd/cameras.yaml").write_text("storage: {root: /srv/data}\ncameras: []\n")
    proc = run_uninstall(tree, "--purge", "--delete-recordings")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not deleting /srv/data" in proc.stdout
    assert (other / "precious.txt").exists() and (other / "cam-001/a.mp4").exists()

    (other / ".recorderd").mkdir()
    (tree / "etc/recorderd").mkdir(parents=True)  # purged above: uninstall again with a config
    (tree / "opt/recorderd").mkdir(parents=True)
    copy_tree(first_install(tmp_path_factory)[0] / "opt/recorderd/venv", tree / "opt/recorderd/venv")
    (tree / "etc/recorderd/cameras.yaml").write_text("storage: {root: /srv/data}\ncameras: []\n")
    proc = run_uninstall(tree, "--purge", "--delete-recordings")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deleting the recordings in /srv/data" in proc.stdout
    assert not other.exists()
