"""structlog set-up: JSON lines with a syslog priority prefix under journald, readable lines on a tty.

Event names are a small fixed vocabulary (``segment_indexed``, ``camera_offline``, ...); details go in
key/value fields. Every rendered line passes through the masking of camera secrets.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from recorderd.masking import mask_text

_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_known_secrets: set[str] = set()


def register_secrets(secrets: list[str]) -> None:
    """Passwords of configured cameras, scrubbed from every line even outside a URL."""
    _known_secrets.update(s for s in secrets if s)


def _mask_event(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = mask_text(value, _known_secrets)
        elif isinstance(value, list | tuple) and value and isinstance(value[0], str):
            event_dict[key] = [mask_text(v, _known_secrets) if isinstance(v, str) else v for v in value]
    return event_dict


class _JournalRenderer:
    """``<N>{json}``: systemd-journald reads the ``<N>`` prefix as the syslog priority."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        prio = _PRIORITY.get(str(event_dict.get("level", "info")), 6)
        return f"<{prio}>" + str(self._json(logger, name, event_dict))


def under_journald(stream: TextIO = sys.stderr) -> bool:
    """True when our stderr is the journal stream systemd set up (``JOURNAL_STREAM=dev:inode``)."""
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def configure(level: str = "info", *, json: bool | None = None, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    if json is None:
        json = under_journald(out) or not out.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _mask_event,
    ]
    if json:
        # journald timestamps lines itself; elsewhere (files, CI) a time field helps
        if not under_journald(out):
            processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        processors += [structlog.processors.format_exc_info, _JournalRenderer()]
    else:
        processors += [structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
                       structlog.dev.ConsoleRenderer(colors=out.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger("recorderd", **initial)
