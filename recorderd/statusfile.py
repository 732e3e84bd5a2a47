"""The daemon's live state as a small JSON file, for ``recorderd status`` in another process.

Written atomically (temp file + rename) every couple of seconds; a reader trusts it only while the
pid is alive and the file is fresh, so a killed daemon is reported as not running.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from recorderd.atomicfile import write_atomic

FRESH_SECONDS = 15.0


def write_status(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload, separators=(",", ":")), mode=0o644)


def remove_status(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def read_status(path: Path, now: float | None = None) -> tuple[dict[str, Any] | None, str]:
    """(payload, "") when a live daemon wrote it, else (None or stale payload, why not running)."""
    now = time.time() if now is None else now
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no status file at {path}"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    pid = data.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return data, f"pid {pid} from {path} is not running"
    age = now - float(data.get("written_at", 0))
    if age > FRESH_SECONDS:
        return data, f"status file {path} is {age:.0f}s old (daemon hung?)"
    return data, ""


def pid_alive(pid: int) -> bool:
    """The process runs: it exists and has not exited (a zombie its parent has yet to reap has; systemd
    reaps at once, a shell or a test may not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
