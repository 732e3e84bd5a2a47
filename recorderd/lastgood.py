"""The last config that loaded, kept so that a bad edit cannot turn into a dark box at the next boot.

A live edit that fails validation is rejected and the daemon keeps running the old config, but the
bad file stays on disk. After a power cut ``run`` would refuse it (exit 2, which systemd does not
retry) and no camera would record until someone fixed the file. So every config that loads is copied,
byte for byte, to ``<state dir>/last-good-config.yaml`` (mode 0600: camera URLs carry passwords), and
a start with an invalid file runs that copy instead, loudly: a critical log line, a ``/healthz``
reason, ``recorderd_config_fallback`` = 1 and the status file. A first start with a bad file and no
copy still refuses.

The state directory is systemd's ``$STATE_DIRECTORY`` (``StateDirectory=recorderd``:
``/var/lib/recorderd``) or ``recorderd run --state-dir``; it cannot come from the config itself,
which is exactly what may be unreadable. Without one there is no fallback (a foreground test run).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from recorderd.atomicfile import write_atomic
from recorderd.config import Config, ConfigError, parse_text, read_config_text
from recorderd.logging import get_logger

log = get_logger()

FILE_NAME = "last-good-config.yaml"


@dataclass(frozen=True, slots=True)
class Fallback:
    """Why the daemon runs the saved copy: for the log, /healthz and ``recorderd status``."""

    errors: tuple[str, ...]  # what is wrong with the file on disk
    path: str  # the saved copy that runs instead
    saved_at: float  # when it was saved (its mtime)

    def reason(self, config_path: Path) -> str:
        first = self.errors[0] if self.errors else "invalid"
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        saved = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.saved_at))
        return (f"{config_path} is invalid ({first}{more}); running the last good config saved {saved} "
                f"from {self.path}: fix the file (recorderd check-config) and it is picked up live")


def state_dir_from_env() -> Path | None:
    """systemd's ``$STATE_DIRECTORY`` (the first entry when several are listed)."""
    value = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(value) if value else None


class LastGood:
    """``save(text)`` after every load that worked; ``load()`` when the file on disk does not."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / FILE_NAME if state_dir is not None else None
        self._saved: str | None = None
        self._error_logged = False

    def save(self, text: str) -> None:
        """Atomically replace the copy when it changed. Blocking (small file): call in a thread from
        the event loop. A failure is logged once and never raised: recording must not depend on it."""
        if self.path is None or text == self._saved:
            return
        try:
            with contextlib.suppress(OSError):
                if self.path.read_text(encoding="utf-8") == text:
                    self._saved = text
                    return
            write_atomic(self.path, text, mode=0o600, durable=True)  # the point is to survive a power cut
            self._saved = text
            self._error_logged = False
        except OSError as exc:
            if not self._error_logged:
                self._error_logged = True
                log.error("config_save_failed", path=str(self.path), error=exc.strerror or str(exc))

    def load(self) -> tuple[Config, Fallback] | None:
        """The saved config, or None when there is none that loads."""
        if self.path is None:
            return None
        try:
            text = self.path.read_text(encoding="utf-8")
            saved_at = self.path.stat().st_mtime
        except (OSError, UnicodeDecodeError):
            return None
        try:
            config = parse_text(text, str(self.path))
        except ConfigError as exc:  # written by an older version with other rules: not usable
            log.error("config_fallback_failed", path=str(self.path), errors=exc.errors)
            return None
        self._saved = text
        return config, Fallback((), str(self.path), saved_at)


def load_or_fallback(config_path: Path, last_good: LastGood) -> tuple[Config, Fallback | None]:
    """The config on disk (saved as the new last good one), else the saved copy with the reason.
    Raises the file's ``ConfigError`` when there is no usable copy."""
    try:
        config, text = read_config_text(config_path)
    except ConfigError as exc:
        saved = last_good.load()
        if saved is None:
            raise
        config, fb = saved
        return config, Fallback(tuple(exc.errors), fb.path, fb.saved_at)
    last_good.save(text)
    return config, None
