"""structlog set-up: JSON lines with a syslog priority prefix under journald, readable lines on a tty.

Three outputs, chosen from where stderr goes:

* journald (``JOURNAL_STREAM`` names our stderr): ``<N>{json}`` per event; journald strips ``<N>`` and
  stores it as the priority, so ``journalctl -u recorderd -p warning`` works. No timestamp: the journal
  has one.
* a terminal: coloured ``key=value`` lines for people.
* anything else (pipe, file, CI): plain JSON lines with a timestamp, one object per line.

Event names are a small fixed vocabulary (``segment_indexed``, ``camera_unavailable``, ...); details go in
key/value fields. Every value of every event, nested ones, exception text and tracebacks included,
passes through the masking of camera secrets *after* exceptions are rendered to text, just before the
renderer. Records from the standard ``logging`` module (asyncio, asyncpg, warnings) take the same path.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from recorderd.masking import mask_text

_PRIORITY = {"critical": 2, "fatal": 2, "error": 3, "exception": 3, "warning": 4, "warn": 4,
             "notice": 5, "info": 6, "debug": 7}
FOREIGN_LEVEL = logging.WARNING  # stdlib loggers (asyncio, asyncpg) below this are dropped
_MAX_DEPTH = 6
_known_secrets: set[str] = set()
_stdlib_handler: logging.Handler | None = None


def register_secrets(secrets: Iterable[str]) -> None:
    """Passwords of configured cameras, scrubbed from every line even outside a URL."""
    _known_secrets.update(s for s in secrets if s)


def mask_value(value: Any, _depth: int = 0) -> Any:
    """``value`` with every secret masked, recursing into mappings and sequences.

    Strings and JSON scalars keep their type; any other object is rendered (``str`` for paths,
    ``repr`` otherwise) and masked, because its text is what would reach the log anyway.
    """
    if isinstance(value, str):
        return mask_text(value, _known_secrets)
    if value is None or isinstance(value, bool | int | float):
        return value
    if _depth >= _MAX_DEPTH:
        return mask_text(repr(value), _known_secrets)
    if isinstance(value, Mapping):
        return {(mask_value(k, _depth + 1) if isinstance(k, str) else k): mask_value(v, _depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_value(v, _depth + 1) for v in value]
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return mask_text(path if isinstance(path, str) else repr(path), _known_secrets)
    return mask_text(repr(value), _known_secrets)


def _mask_event(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Masks every value; must run after ``format_exc_info`` so tracebacks are text by then."""
    for key, value in list(event_dict.items()):
        event_dict[key] = mask_value(value)
    return event_dict


class _JournalRenderer:
    """``<N>{json}``: systemd-journald reads the ``<N>`` prefix as the syslog priority."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        prio = priority(str(event_dict.get("level", "info")))
        return f"<{prio}>" + str(self._json(logger, name, event_dict))


def priority(level: str) -> int:
    """syslog priority of a structlog level name (unknown levels count as info)."""
    return _PRIORITY.get(level.lower(), 6)


def _add_logger_name(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict.setdefault("logger", record.name)
    return event_dict


def _foreign_stack(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A stdlib record's ``stack_info`` is already text: keep it as ``stack``."""
    stack = event_dict.pop("stack_info", None)
    if isinstance(stack, str):
        event_dict["stack"] = stack
    return event_dict


def under_journald(stream: TextIO = sys.stderr) -> bool:
    """True when ``stream`` is the journal stream systemd set up (``JOURNAL_STREAM=dev:inode``)."""
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False


def configure(level: str = "info", *, json: bool | None = None, stream: TextIO | None = None) -> None:
    """Set up structlog and route stdlib ``logging`` through the same processors and stream.

    ``json`` forces the format (None: JSON unless ``stream`` is a terminal). May be called again, e.g.
    by tests or after a reload changes the level.
    """
    global _stdlib_handler
    out = stream or sys.stderr
    journal = under_journald(out)
    tty = _isatty(out)
    if json is None:
        json = journal or not tty

    renderer: Any
    timestamper: list[Any] = []
    if json:
        # journald timestamps lines itself; elsewhere (files, CI) a time field helps
        if not journal:
            timestamper = [structlog.processors.TimeStamper(fmt="iso", utc=True)]
        renderer = _JournalRenderer() if journal else structlog.processors.JSONRenderer()
    else:
        timestamper = [structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)]
        renderer = structlog.dev.ConsoleRenderer(colors=tty)

    # exceptions become text before masking runs, in every format (the console loses rich tracebacks
    # on purpose: they would print frame locals and strings unmasked)
    tail: list[Any] = [structlog.processors.format_exc_info, _mask_event, renderer]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    *timestamper, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.processors.add_log_level, _add_logger_name, *timestamper],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _foreign_stack, *tail],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    root.setLevel(max(FOREIGN_LEVEL, getattr(logging, level.upper(), logging.INFO)))
    _stdlib_handler = handler
    logging.captureWarnings(True)


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger("recorderd", **initial)
