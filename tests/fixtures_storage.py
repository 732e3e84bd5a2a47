"""Storage fixtures shared by the retention, floor and volume tests.

* ``db`` (function): a connected ``Database`` on a fresh private database (migrations applied).
* ``root`` (function): an empty storage root under the test's tmp dir.
* ``logs`` (function): structlog events captured while the test runs.
* ``small_fs`` (function): a 64 MiB filesystem of its own (tmpfs, else a loop-mounted ext4 image), so
  "below the free-space floor" is real; skipped where neither can be mounted.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from recorderd.db import Database

MB = 1024 * 1024
FS_SIZE = 64 * MB


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    database = Database(pg_dsn)
    await database.connect()  # applies the migrations
    yield database
    await database.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rec"
    r.mkdir()
    return r


@pytest.fixture
def logs() -> Iterator[list[Any]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def _run(cmd: list[str]) -> str | None:
    """None on success, else why not."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cmd[0]}: {exc}"
    return None if proc.returncode == 0 else f"{cmd[0]}: {proc.stderr.strip()}"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    err = _run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mnt)])
    if err is not None:
        img = tmp_path / "fs.img"
        with open(img, "wb") as f:
            f.truncate(FS_SIZE)
        for cmd in (["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], ["mount", "-o", "loop", str(img), str(mnt)]):
            err2 = _run(cmd)
            if err2 is not None:
                pytest.skip(f"cannot mount a small filesystem: tmpfs ({err}); loop ext4 ({err2})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
