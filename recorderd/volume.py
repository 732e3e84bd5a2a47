"""The storage volume: one daemon per root, and never recording into or deleting from the wrong disk.

Both live in ``<root>/.recorderd/``:

* ``daemon.lock``: an exclusive ``flock`` held for the daemon's whole life, the holder's PID inside.
  Two daemons writing one root would cut each other's segments and delete each other's footage; the
  kernel drops the lock when the holder dies, however it dies, so a stale file never blocks a restart.
* ``volume.json``: a marker (a uuid and its creation time) written at the first start. When the
  storage disk is not mounted the root is an empty directory on the filesystem underneath: recording
  there fills the system disk and sweeping there finds nothing (or the wrong things). The marker tells
  the two apart. Without one, the index decides: no footage indexed under the root is a first start;
  footage indexed and some of the newest files present is an upgrade from a version without markers;
  footage indexed but none of it there is a missing disk. Once this process has seen the marker, its
  disappearance means the disk went away under us.

Every filesystem call runs in a worker thread: a hung mount must not freeze the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import asyncpg

from recorderd.atomicfile import write_atomic
from recorderd.db import DatabaseUnavailable, is_connection_error
from recorderd.layout import STATE_DIR, iso
from recorderd.logging import get_logger
from recorderd.metrics import STORAGE_MISSING
from recorderd.queries import MINE

log = get_logger()

LOCK_NAME = "daemon.lock"
MARKER_NAME = "volume.json"
MARKER_REL = f"{STATE_DIR}/{MARKER_NAME}"  # relative to the root: ``Sweeper(volume_marker=MARKER_REL)``
CHECK_INTERVAL = 5.0  # marker re-check period while running
REQUERY_SECONDS = 60.0  # while missing by the index's word: ask the index again this often (stat every check)
SAMPLE_ROWS = 50  # newest indexed files looked for on disk
DB_TIMEOUT = 30.0  # per query; a one-off full scan of the segments table on a marker-less start

# Both spellings of the root: rows may have been written through a symlinked root or its target.
# Archived rows (object_url set) have no local file to look for; another node's rows are on its disk.
_COUNT_SQL = ("SELECT count(*) FROM segments WHERE (starts_with(path, $1) OR starts_with(path, $2))"
              f" AND object_url IS NULL AND {MINE}")
_SAMPLE_SQL = ("SELECT path FROM segments WHERE (starts_with(path, $1) OR starts_with(path, $2))"
               f" AND object_url IS NULL AND {MINE} ORDER BY end_time DESC LIMIT $3")
_DB_ERRORS = (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError,
              asyncpg.exceptions.InternalClientError, OSError, TimeoutError)


# --------------------------------------------------------------------------- one daemon per root


class RootLocked(Exception):
    """Another process holds ``<root>/.recorderd/daemon.lock``."""

    def __init__(self, root: Path, pid: int | None) -> None:
        self.root = root
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another recorderd ({who}) is recording into {root}")


class RootLock:
    """Exclusive, non-blocking ``flock`` on ``<root>/.recorderd/daemon.lock``: ``acquire()`` at start
    (raises ``RootLocked`` at once naming the holder), ``release()`` at exit or let the process die.

    Blocking calls: use before the event loop starts, or in a worker thread.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / STATE_DIR / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: an FFmpeg child must not inherit the lock and keep it after the daemon died
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RootLocked(self.root, pid) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock is what counts; the PID is only for the other daemon's message
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # drops the flock

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None  # empty: the holder is between flock and writing its PID
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the decision


class VolumeState(StrEnum):
    OK = "ok"
    UNVERIFIED = "unverified"  # no marker and the index cannot be asked: deletion waits, recording goes on
    MISSING = "missing"  # recording and deletion paused


@dataclass(frozen=True, slots=True)
class Evidence:
    marker_present: bool
    marker_seen: bool  # this process read or wrote the marker before
    indexed: int | None  # segment rows under the root; None: the index cannot be asked
    sample_on_disk: bool  # at least one of the newest indexed files under the root exists
    previous: VolumeState


@dataclass(frozen=True, slots=True)
class Decision:
    state: VolumeState
    write_marker: bool
    why: str  # marker_present | marker_gone | first_start | upgrade | no_files | index_unreachable
    #           (StorageVolume adds marker_unwritable: the evidence said ok but the marker could not be written)


def decide(e: Evidence) -> Decision:
    """What the volume is, from what we can see; pure so every case is tested.

    An unreachable index never turns ``missing`` back into ``unverified``: without new evidence the
    disk is still missing, and ``unverified`` would let cameras write underneath again.
    """
    if e.marker_present:
        return Decision(VolumeState.OK, False, "marker_present")
    if e.marker_seen:
        return Decision(VolumeState.MISSING, False, "marker_gone")
    if e.indexed is None:
        keep = e.previous is VolumeState.MISSING
        return Decision(VolumeState.MISSING if keep else VolumeState.UNVERIFIED, False, "index_unreachable")
    if e.indexed == 0:
        return Decision(VolumeState.OK, True, "first_start")
    if e.sample_on_disk:
        return Decision(VolumeState.OK, True, "upgrade")
    return Decision(VolumeState.MISSING, False, "no_files")


# --------------------------------------------------------------------------- filesystem (worker threads)


@dataclass(frozen=True, slots=True)
class MarkerRead:
    present: bool
    uuid: str | None = None
    error: str = ""  # why it is not there (ENOENT, EIO, ...)


def read_marker(path: Path) -> MarkerRead:
    """The marker as it is now. Present means "a regular file is there": a marker we cannot parse is
    still ours (only a recorderd writes it), so it is not worth pausing the cameras over."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        return MarkerRead(False, None, "is a directory")
    except OSError as exc:
        return MarkerRead(False, None, exc.strerror or str(exc))
    except UnicodeDecodeError:
        return MarkerRead(True)
    try:
        data = json.loads(text)
        vid = data.get("uuid") if isinstance(data, dict) else None
    except ValueError:
        vid = None
    return MarkerRead(True, vid if isinstance(vid, str) else None)


def write_marker(path: Path, root: Path, now: float) -> str:
    """Write a new marker durably (temp file, fsync, rename, fsync the directory); returns its uuid.

    Creates ``.recorderd`` but never the root itself: a missing mount point must stay missing.
    """
    path.parent.mkdir(exist_ok=True)
    vid = str(uuid.uuid4())
    write_atomic(path, json.dumps({"uuid": vid, "created_at": iso(now), "root": str(root)}) + "\n",
                 durable=True)
    return vid


def any_exists(paths: Sequence[str]) -> bool:
    return any(os.path.lexists(p) for p in paths)


def root_prefixes(root: Path) -> tuple[str, str]:
    """``<root>/`` as configured and as resolved (the same twice when the root is no symlink)."""
    plain = os.path.normpath(root)
    return plain.rstrip("/") + "/", os.path.realpath(plain).rstrip("/") + "/"


# --------------------------------------------------------------------------- the running check


class VolumeDatabase(Protocol):
    """What the volume check needs of ``recorderd.db.Database``."""

    @property
    def up(self) -> bool: ...

    async def wait_up(self, timeout: float | None = None) -> bool: ...

    def acquire(self) -> AbstractAsyncContextManager[Any]: ...


class StorageVolume:
    """Whether ``root`` is the disk the index knows: ``await run()`` as a long-lived task.

    ``state`` is ``ok`` (the marker is there: ``Sweeper(volume_marker=MARKER_REL)`` relies on it),
    ``unverified`` (before the first check, no marker while the database is unreachable, or a marker
    that cannot be written) or ``missing``. ``reason()`` is None when ``ok``, else a sentence for the sweeper's
    storage gate and /healthz. ``on_change(state)`` is called on the event loop at every change of
    state (the first possible call is ``unverified`` -> ``ok`` or ``missing``); the daemon holds its
    cameras on ``missing`` and releases them otherwise.
    """

    def __init__(self, root: Path, db: VolumeDatabase, *, on_change: Callable[[str], None] | None = None,
                 interval: float = CHECK_INTERVAL, requery_seconds: float = REQUERY_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.marker = root / STATE_DIR / MARKER_NAME
        self.on_change = on_change
        self.interval = interval
        self.requery_seconds = requery_seconds
        self._db = db
        self._clock = clock
        self._state = VolumeState.UNVERIFIED
        self._reason: str | None = f"storage volume marker {self.marker} not checked yet"
        self._seen = False
        self._why = ""  # the last decision's ``why``
        self.uuid: str | None = None
        self._indexed: int | None = None  # the index's last answer, kept while it cannot be asked
        self._sample: list[str] = []
        self._queried_at: float | None = None
        self._logged_errors: set[str] = set()
        STORAGE_MISSING.set(0)

    @property
    def state(self) -> str:
        return self._state.value

    def is_ok(self) -> bool:
        """The storage gate as a yes/no (for the reconciler's ``storage_ok``)."""
        return self._state is VolumeState.OK

    def reason(self) -> str | None:
        """None when ``ok``; else why recording or deletion must wait (the sweeper's ``storage_gate``)."""
        return None if self._state is VolumeState.OK else self._reason

    def index_never_reached(self) -> bool:
        """Unverified only because no index database has answered yet, and no marker was ever seen: a
        first start whose database is not up (or a disk that is not mounted, where everything under the
        root is what this process recorded there). No clip or protected row can exist for such footage,
        so the free-space floor may delete it oldest-first rather than let the disk fill."""
        return (self._state is VolumeState.UNVERIFIED and not self._seen and self._indexed is None
                and self._why == "index_unreachable")

    async def run(self) -> None:
        """Check now, then every ``interval``; while unverified, also as soon as the database is back."""
        while True:
            await self.check_once()
            if self._state is VolumeState.UNVERIFIED and not self._db.up:
                await self._db.wait_up(self.interval)
            else:
                await asyncio.sleep(self.interval)

    async def check_once(self) -> str:
        """One look at the marker (and, without one, at the index); returns the new state."""
        found = await asyncio.to_thread(read_marker, self.marker)
        indexed: int | None = None
        sample_found = False
        if not found.present and not self._seen:
            indexed, sample_found = await self._ask_index()
        d = decide(Evidence(found.present, self._seen, indexed, sample_found, self._state))
        if found.present:
            self._seen, self.uuid = True, found.uuid
        write_error = ""
        if d.write_marker:
            try:
                self.uuid = await asyncio.to_thread(write_marker, self.marker, self.root, self._clock())
                self._seen = True
                self._logged_errors.discard("write")
            except OSError as exc:  # ok means "marker there": without it stay unverified, retry next check
                write_error = exc.strerror or str(exc)
                self._log_error_once("write", path=str(self.marker), error=write_error)
                d = Decision(VolumeState.UNVERIFIED, False, "marker_unwritable")
        self._apply(d, indexed, found, write_error)
        return self.state

    async def _ask_index(self) -> tuple[int | None, bool]:
        """(rows under the root, any of the newest on disk); the last answer while the index is away."""
        now = time.monotonic()
        due = self._queried_at is None or now - self._queried_at >= self.requery_seconds
        if due and self._db.up:
            try:
                a, b = await asyncio.to_thread(root_prefixes, self.root)
                async with self._db.acquire() as conn:
                    n = int(await conn.fetchval(_COUNT_SQL, a, b, timeout=DB_TIMEOUT))
                    sample = [r["path"] for r in await conn.fetch(_SAMPLE_SQL, a, b, SAMPLE_ROWS,
                                                                   timeout=DB_TIMEOUT)] if n else []
                self._indexed, self._sample, self._queried_at = n, sample, now
                self._logged_errors.discard("db")
            except _DB_ERRORS as exc:
                if isinstance(exc, asyncpg.PostgresError) and not is_connection_error(exc):
                    self._log_error_once("db", error=type(exc).__name__, detail=str(exc)[:200])
        if self._indexed is None:
            return None, False
        if not self._sample:
            return self._indexed, False
        return self._indexed, await asyncio.to_thread(any_exists, list(self._sample))

    def _apply(self, d: Decision, indexed: int | None, found: MarkerRead, write_error: str = "") -> None:
        prev = self._state
        self._state = d.state
        self._why = d.why
        if d.state is VolumeState.MISSING:
            if d.why == "marker_gone":
                self._reason = (f"storage volume marker {self.marker} disappeared ({found.error}): is the disk "
                                f"still mounted at {self.root}? recording and deletion paused until it is back")
            elif d.why == "no_files":
                self._reason = (f"storage volume marker {self.marker} is missing but the index has {indexed} "
                                f"segments under {self.root} and none of the newest {len(self._sample)} is "
                                "there: is the disk mounted? recording and deletion paused")
            # index_unreachable while missing: the last reason stands
        elif d.why == "marker_unwritable":
            self._reason = (f"storage volume marker {self.marker} cannot be written ({write_error}): "
                            "deletion paused until it can")
        elif d.state is VolumeState.UNVERIFIED:
            self._reason = (f"storage volume marker {self.marker} is missing and the index database cannot be "
                            "asked whether footage should be there: deletion paused until it can")
        else:
            self._reason = None
        STORAGE_MISSING.set(1 if d.state is VolumeState.MISSING else 0)
        if d.state is prev:
            return
        if d.state is VolumeState.MISSING:
            log.critical("storage_missing", reason=self._reason, marker=str(self.marker), root=str(self.root),
                         indexed=indexed)
        elif d.state is VolumeState.OK:
            log.info("storage_verified", marker=str(self.marker), root=str(self.root), uuid=self.uuid, how=d.why)
        if self.on_change is not None:
            self.on_change(d.state.value)

    def _log_error_once(self, key: str, **fields: Any) -> None:
        if key not in self._logged_errors:
            self._logged_errors.add(key)
            log.error("storage_error", component="volume", **fields)
