"""The filesystem side of retention: free space, safe unlinks, empty day dirs, the index-less scan.

Everything that touches the disk is synchronous and runs in a worker thread, so the event loop never
waits on a disk. Unlinks walk the tree with directory file descriptors opened ``O_NOFOLLOW``: whatever
a row says, nothing but a regular file inside ``<root>/<camera_id>/`` is ever removed and no symlink
is followed, even if the tree changes while we walk it.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import os
import stat
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from recorderd.atomicfile import write_atomic
from recorderd.config import CAMERA_ID_RE, Config, StorageConfig
from recorderd.health import disk_floor_bytes
from recorderd.layout import DAY_RE, FILE_RE, RESERVED_NAMES, STATE_DIR, is_camera_dir_name, parse_segment_path
from recorderd.logging import get_logger
from recorderd.metrics import DISK_FLOOR, DISK_FREE, DISK_TOTAL, DISK_USED_RATIO, STORAGE_READ_ONLY

log = get_logger()

USAGE_LEVELS = (0.80, 0.90, 0.95)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DAY_DIR_GRACE = 3600.0  # a day dir is removable only once its day ended this long ago (FFmpeg mkdir race)


# --------------------------------------------------------------------------- free space


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total: int
    free: int  # f_bavail: what an unprivileged writer (FFmpeg) can still write
    used: int
    read_only: bool = False  # mounted read-only (ext4 remounts so after I/O errors): nothing records

    @property
    def used_ratio(self) -> float:
        """As ``df`` shows it: used / (used + available)."""
        denom = self.used + self.free
        return self.used / denom if denom else 0.0


def read_usage(path: Path) -> DiskUsage:
    st = os.statvfs(path)
    return DiskUsage(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize,
                     used=(st.f_blocks - st.f_bfree) * st.f_frsize, read_only=bool(st.f_flag & os.ST_RDONLY))


def floor_and_target(storage: StorageConfig, total: int) -> tuple[int, int]:
    """(floor, target) in free bytes: below floor we delete until free reaches target.

    Both limits apply, so the larger floor wins; the margin keeps us from deleting one file per check.
    """
    floor = disk_floor_bytes(total, storage.min_free_percent, storage.min_free_bytes)  # as /healthz says
    target = floor + int(total * storage.free_margin_percent / 100)
    return floor, min(target, total)


class UsageLevels:
    """Logs 80/90/95 % used once per upward crossing and once on recovery (1 point hysteresis)."""

    def __init__(self, levels: Sequence[float] = USAGE_LEVELS, hysteresis: float = 0.01) -> None:
        self.levels = tuple(levels)
        self.hysteresis = hysteresis
        self.current = 0  # number of levels crossed

    def observe(self, usage: DiskUsage) -> int:
        ratio = usage.used_ratio
        up = sum(1 for lv in self.levels if ratio >= lv)
        down = sum(1 for lv in self.levels if ratio >= lv - self.hysteresis)
        fields: dict[str, Any] = {"used_ratio": round(ratio, 4), "free_bytes": usage.free}
        if up > self.current:
            self.current = up
            method = log.warning if up == 1 else log.critical
            method("disk_usage_high", threshold=self.levels[up - 1], **fields)
        elif down < self.current:
            self.current = down
            log.info("disk_usage_recovered", threshold=self.levels[down], **fields)  # now below it
        return self.current


# --------------------------------------------------------------------------- what may go


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One segment as the index (or, for the fallback, the path) describes it; ``id`` 0 = no row."""

    id: int
    camera_id: str
    path: str
    start: float
    end: float
    size: int
    protected: bool = False
    object_url: str | None = None  # an object to delete with the row (archived, or an upload begun)
    archived: bool = False  # the bytes are in the object store: no local file to free


def is_deletable(row: SegmentRow, current: Container[str], protected: Container[str] = ()) -> bool:
    """Not protected (flag or saved list) and not a file being written.

    ``current`` and ``protected`` decide how a path is spelled when compared: pass ``PathSet`` and
    ``ProtectedPaths`` so that one file reached through two spellings of the root is one file.
    """
    return not row.protected and os.path.normpath(row.path) not in current and row.path not in protected


def select_for_floor(rows_oldest_first: Iterable[SegmentRow], need: int, current: Container[str],
                     protected: Container[str], limit: int) -> list[SegmentRow]:
    """Oldest deletable rows (at most ``limit``) until their sizes cover ``need`` bytes.

    Consumes a lazy iterable only as far as needed, so it also drives the filesystem scan.
    """
    chosen: list[SegmentRow] = []
    got = 0
    if need <= 0 or limit <= 0:
        return chosen
    for row in rows_oldest_first:
        if is_deletable(row, current, protected):
            chosen.append(row)
            got += row.size
            if got >= need or len(chosen) >= limit:
                break  # checked after taking: a lazy source loses no candidate
    return chosen


# --------------------------------------------------------------------------- one spelling per file

_LAYOUT_DEPTH = 3  # <root>/<camera>/<day>/<file>: the root is the directory three levels above a file
_MAX_ROOT_SPELLINGS = 64  # distinct root prefixes remembered; a stray row cannot grow this without bound


def root_prefix(path: str) -> str | None:
    """The storage-root part of a normalised segment path (``<root>/<camera>/<day>/<file>``), else None."""
    parts = path.rsplit(os.sep, _LAYOUT_DEPTH)
    return parts[0] if len(parts) == _LAYOUT_DEPTH + 1 and parts[0] else None


class RootSpellings:
    """Maps every spelling of the storage root to its resolved form, so that one file has one name.

    The index stores paths as they were written (through a symlinked root, with the resolved path,
    under an older ``storage.root`` spelling), the filesystem scan and the supervisors spell them with
    the configured root. Comparing raw strings let a protected file reached through the other spelling
    look deletable. Only root prefixes are resolved (once each, by ``learn`` in a worker thread: a hung
    mount must not freeze the loop); nothing below the root is ever followed, so a symlinked camera or
    day directory cannot make a protected file look like another one. ``canon`` itself never touches
    the disk: a prefix not learned yet is compared as written.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.normpath(root)
        self._resolved: dict[str, str] = {}

    def unknown(self, paths: Iterable[str]) -> bool:
        """True when ``learn(paths)`` has something to resolve (cheap: lets callers skip the thread hop)."""
        if self.root not in self._resolved:
            return True
        if len(self._resolved) >= _MAX_ROOT_SPELLINGS:
            return False
        return any((h := root_prefix(os.path.normpath(p))) is not None and h not in self._resolved for p in paths)

    def learn(self, paths: Iterable[str] = ()) -> None:
        """Resolve the configured root and the root prefix of each path not seen before. Blocking."""
        heads = [self.root, *(h for p in paths if (h := root_prefix(os.path.normpath(p))) is not None)]
        for head in heads:
            if head not in self._resolved and (head == self.root or len(self._resolved) < _MAX_ROOT_SPELLINGS):
                self._resolved[head] = os.path.realpath(head)

    def canon(self, path: str) -> str:
        """``path`` normalised, its root prefix replaced by the resolved root when it is a known spelling."""
        p = os.path.normpath(path)
        head = root_prefix(p)
        real = self._resolved.get(head) if head is not None else None
        if head is None or real is None or real == head:
            return p
        return real + p[len(head):]


class PathSet:
    """A set of paths compared by canonical spelling (``RootSpellings.canon``): the files being written."""

    __slots__ = ("_canon", "_paths")

    def __init__(self, paths: Iterable[str], canon: Callable[[str], str]) -> None:
        self._canon = canon
        self._paths = frozenset(canon(p) for p in paths)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._canon(path) in self._paths

    def __len__(self) -> int:
        return len(self._paths)


# --------------------------------------------------------------------------- safe unlink


class Outcome(StrEnum):
    DELETED = "deleted"
    MISSING = "missing"  # already gone: the row can go
    REFUSED = "refused"  # not a regular file inside the camera dir: file left alone
    FAILED = "failed"  # an I/O or permission error: try again later


@dataclass(frozen=True, slots=True)
class UnlinkResult:
    outcome: Outcome
    freed: int = 0  # allocated bytes released (0 when other hard links remain)
    detail: str = ""


# detail of every result of a batch refused because the storage volume marker is not under the root
MARKER_MISSING = "storage volume marker missing under the root"


class _Refused(Exception):
    pass


def _relative_parts(roots: Sequence[tuple[str, ...]], camera_id: str, path: str) -> tuple[str, ...]:
    """The parts of ``path`` below the root; raise _Refused unless it lies inside the camera dir."""
    if not CAMERA_ID_RE.match(camera_id):
        raise _Refused("unsafe camera id")
    if camera_id in RESERVED_NAMES:  # <root>/clips holds saved clips: never footage to delete
        raise _Refused("reserved directory")
    if "\x00" in path or not os.path.isabs(path):
        raise _Refused("not an absolute path")
    parts = Path(path).parts
    for root in roots:
        if parts[: len(root)] == root:
            rest = parts[len(root):]
            break
    else:
        raise _Refused("outside the storage root")
    if len(rest) < 2 or rest[0] != camera_id:
        raise _Refused("outside the camera directory")
    if any(p in (".", "..") for p in rest):
        raise _Refused("relative component in path")
    return rest


class _Dirs:
    """Directory fds below the root, opened O_NOFOLLOW and cached for one batch."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # root may be a link
        self.fds: dict[tuple[str, ...], int] = {(): self.root_fd}

    def open(self, rel: tuple[str, ...]) -> int:
        fd = self.fds.get(rel)
        if fd is None:
            parent = self.open(rel[:-1])
            try:
                fd = os.open(rel[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _Refused(f"symlink in path: {'/'.join(rel)}") from None
                if exc.errno == errno.ENOTDIR:
                    raise _Refused(f"not a directory: {'/'.join(rel)}") from None
                raise
            self.fds[rel] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


def _roots(root: Path) -> list[tuple[str, ...]]:
    """The root as configured and as resolved, so rows written either way are recognised."""
    out = [Path(os.path.normpath(root)).parts]
    real = Path(os.path.realpath(root)).parts
    if real != out[0]:
        out.append(real)
    return out


def _marker_missing(dirs: _Dirs, marker: str | None) -> bool:
    """True unless ``marker`` (relative to the root) exists under the root fd the batch will use.

    Checked through that same descriptor, so the unlinks that follow go to the volume that holds the
    marker even if the disk was unmounted since the storage gate last looked.
    """
    if marker is None:
        return False
    try:
        os.stat(marker, dir_fd=dirs.root_fd, follow_symlinks=False)
    except OSError:
        return True
    return False


def unlink_batch(root: Path, items: Sequence[tuple[str, str]], *, marker: str | None = None) -> list[UnlinkResult]:
    """Unlink each ``(camera_id, path)``; one result per item, in order. Never raises on a bad file.

    With ``marker`` (a path relative to the root) nothing is unlinked unless it exists: every result
    is then FAILED with ``MARKER_MISSING``.
    """
    if not items:
        return []
    try:
        dirs = _Dirs(root)
    except OSError as exc:
        return [UnlinkResult(Outcome.FAILED, 0, f"storage root: {exc.strerror}")] * len(items)
    roots = _roots(root)
    try:
        if _marker_missing(dirs, marker):
            return [UnlinkResult(Outcome.FAILED, 0, MARKER_MISSING)] * len(items)
        return [_unlink_one(dirs, roots, cam, path) for cam, path in items]
    finally:
        dirs.close()


def _unlink_one(dirs: _Dirs, roots: Sequence[tuple[str, ...]], camera_id: str, path: str) -> UnlinkResult:
    try:
        rest = _relative_parts(roots, camera_id, path)
        fd = dirs.open(rest[:-1])
        st = os.lstat(rest[-1], dir_fd=fd)
        if stat.S_ISLNK(st.st_mode):
            raise _Refused("symlink")
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("not a regular file")
        os.unlink(rest[-1], dir_fd=fd)  # unlink never follows a link, even if one was swapped in
    except _Refused as exc:
        return UnlinkResult(Outcome.REFUSED, 0, str(exc))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return UnlinkResult(Outcome.MISSING)
        return UnlinkResult(Outcome.FAILED, 0, exc.strerror or str(exc))
    return UnlinkResult(Outcome.DELETED, st.st_blocks * 512 if st.st_nlink <= 1 else 0)


# --------------------------------------------------------------------------- day directories


def removable_days(names: Iterable[str], now: float, grace: float = DAY_DIR_GRACE) -> list[str]:
    """Day dir names strictly before the day of ``now - grace`` (UTC): never today's or a future one."""
    cutoff = datetime.fromtimestamp(now - grace, UTC).strftime("%Y-%m-%d")
    return sorted(n for n in names if DAY_RE.match(n) and n < cutoff)


def remove_empty_day_dirs(root: Path, now: float, *, marker: str | None = None) -> int:
    """rmdir old, empty, real day directories of every camera; returns how many went.

    With ``marker`` (relative to the root) nothing is removed unless it exists, as in ``unlink_batch``.
    """
    removed = 0
    try:
        dirs = _Dirs(root)
    except OSError:
        return 0
    try:
        if _marker_missing(dirs, marker):
            return 0
        for cam in _camera_names(root):
            try:
                cam_fd = dirs.open((cam,))
                names = [e.name for e in os.scandir(cam_fd) if e.is_dir(follow_symlinks=False)]
            except (OSError, _Refused):
                continue
            for day in removable_days(names, now):
                try:
                    os.rmdir(day, dir_fd=cam_fd)  # fails on a non-empty dir: atomic emptiness check
                    removed += 1
                except OSError:
                    pass
    finally:
        dirs.close()
    return removed


def _camera_names(root: Path) -> list[str]:
    """Camera directories under the root: never ``.recorderd`` or ``clips`` (saved clips are not footage)."""
    try:
        with os.scandir(root) as it:
            return sorted(e.name for e in it
                          if is_camera_dir_name(e.name) and e.is_dir(follow_symlinks=False))
    except OSError:
        return []


# --------------------------------------------------------------------------- index-less scan


def iter_oldest_files(root: Path) -> Iterator[SegmentRow]:
    """Every segment file under ``root`` by the time in its path, oldest first across cameras.

    Lazy: only the day directories it reaches are listed, and a file is only stat'ed when reached.
    Symlinked dirs are skipped here and would be refused by ``unlink_batch`` anyway.
    """
    return heapq.merge(*(_camera_files(root, cam) for cam in _camera_names(root)),
                       key=lambda r: (r.start, r.path))


def _camera_files(root: Path, camera_id: str) -> Iterator[SegmentRow]:
    cam_dir = root / camera_id
    try:
        with os.scandir(cam_dir) as it:
            days = sorted(e.name for e in it if DAY_RE.match(e.name) and e.is_dir(follow_symlinks=False))
    except OSError:
        return
    for day in days:
        try:
            with os.scandir(cam_dir / day) as it:
                names = sorted(e.name for e in it if FILE_RE.match(e.name)
                               and e.is_file(follow_symlinks=False))
        except OSError:
            continue
        for name in names:
            path = str(cam_dir / day / name)
            parsed = parse_segment_path(root, path)
            if parsed is not None:
                try:
                    size = os.lstat(path).st_size
                except OSError:
                    continue
                yield SegmentRow(0, camera_id, path, parsed[1], parsed[1], size)


def take_and_unlink(rows: Iterator[SegmentRow], root: Path, need: int, current: Container[str],
                    protected: Container[str], limit: int, *,
                    marker: str | None = None) -> list[tuple[SegmentRow, UnlinkResult]]:
    """One filesystem-fallback batch, in one worker-thread call: choose from the scan, unlink."""
    chosen = select_for_floor(rows, need, current, protected, limit)
    results = unlink_batch(root, [(r.camera_id, r.path) for r in chosen], marker=marker)
    return list(zip(chosen, results, strict=True))


# --------------------------------------------------------------------------- the floor

Pair = tuple[SegmentRow, UnlinkResult]


@dataclass(slots=True)
class DiskCheck:
    before: DiskUsage | None
    floor: int = 0
    target: int = 0
    free: int = 0  # after deletions: max(statvfs, before + freed), since some filesystems free lazily
    deleted: int = 0
    bytes: int = 0
    sources: list[str] = field(default_factory=list)  # index and/or filesystem


class FloorHost(Protocol):
    """The index side of the floor (the Sweeper); its coroutines swallow database trouble."""

    @property
    def config(self) -> Config: ...
    @property
    def protected(self) -> ProtectedPaths: ...
    @property
    def volume_marker(self) -> str | None: ...
    def current(self) -> Container[str]: ...
    def deletion_paused(self) -> bool: ...
    def account(self, pairs: Sequence[Pair], reason: str) -> None: ...
    async def floor_from_index(self, guard: DiskGuard, check: DiskCheck) -> None: ...
    async def refresh_protected(self) -> None: ...
    async def floor_unindexed(self) -> bool: ...
    async def forget_paths(self, paths: list[str]) -> None: ...


class DiskGuard:
    """Free-space floor: below it, delete the oldest unprotected footage until floor + margin.

    The index goes first (it knows protection and sizes); files it does not know, or all files while
    the database is down, come from the path-ordered scan, honouring the saved protected list.
    """

    def __init__(self, host: FloorHost) -> None:
        self.host = host
        self.levels = UsageLevels()
        self._stuck_logged = False
        self._root_error_logged = False
        # The last statvfs that worked and when (monotonic): /metrics and /healthz read this instead of
        # calling statvfs on the event loop, where a hung mount would freeze everything.
        self.last: tuple[DiskUsage, float] | None = None
        self._read_only = False
        self._unindexed_logged = False
        self.answered_at = time.monotonic()  # statvfs last returned (a value or an error), or creation

    async def _usage(self) -> DiskUsage | None:
        try:
            usage = await asyncio.to_thread(read_usage, self.host.config.storage.root)
        except OSError as exc:
            self.last, self.answered_at = None, time.monotonic()
            if not self._root_error_logged:
                self._root_error_logged = True
                log.error("retention_error", path=str(self.host.config.storage.root), error=exc.strerror or str(exc))
            return None
        self.answered_at = time.monotonic()
        self.last = (usage, self.answered_at)
        self._root_error_logged = False
        DISK_FREE.set(usage.free)
        DISK_USED_RATIO.set(usage.used_ratio)
        DISK_TOTAL.set(usage.total)
        DISK_FLOOR.set(floor_and_target(self.host.config.storage, usage.total)[0])
        if usage.read_only != self._read_only:
            self._read_only = usage.read_only
            STORAGE_READ_ONLY.set(1 if usage.read_only else 0)
            if usage.read_only:
                log.critical("storage_read_only", root=str(self.host.config.storage.root),
                             hint="the filesystem was remounted read-only (I/O errors?): check dmesg and fsck it")
            else:
                log.info("storage_writable", root=str(self.host.config.storage.root))
        return usage

    async def check(self) -> DiskCheck:
        usage = await self._usage()
        if usage is None:
            return DiskCheck(before=None)
        self.levels.observe(usage)
        floor, target = floor_and_target(self.host.config.storage, usage.total)
        check = DiskCheck(before=usage, floor=floor, target=target, free=usage.free)
        paused = self.host.deletion_paused()  # asked every check: the pause metric and log stay current
        if usage.free >= floor:
            self._stuck_logged = False
            return check
        if paused:
            if await self.host.floor_unindexed():
                await self._from_files(check, unindexed=True)
                await self._usage()
            return check  # else the files we see may be on the wrong filesystem: never delete them
        self._unindexed_logged = False
        await self.host.floor_from_index(self, check)
        if check.free < target:
            await self._from_files(check)
        await self._usage()
        if self.host.deletion_paused():
            return check
        if check.free < floor and not self._stuck_logged:
            self._stuck_logged = True
            log.critical("retention_emergency", outcome="floor_not_restored", free=check.free, floor=floor,
                         reason="nothing left that may be deleted (protected, being written, or not footage)")
        return check

    async def _from_files(self, check: DiskCheck, *, unindexed: bool = False) -> None:
        """The oldest files by path time across cameras.

        ``unindexed``: no index database has ever been reached for this root (see
        ``StorageVolume.index_never_reached``), so nothing can be protected and there is no marker to
        check each batch against; the host is asked again before every batch instead."""
        host = self.host
        protected: Container[str] = host.protected
        marker = host.volume_marker
        if unindexed:
            protected, marker = frozenset(), None
            if not self._unindexed_logged:
                self._unindexed_logged = True
                log.critical("retention_emergency", outcome="unindexed", free=check.free, floor=check.floor,
                             reason="no index database reached yet: deleting the oldest files first "
                                    "(nothing can be protected before the database is reached)")
        else:
            await host.refresh_protected()
        if not unindexed and not await asyncio.to_thread(host.protected.load):
            if not self._stuck_logged:
                self._stuck_logged = True
                log.critical("retention_emergency", outcome="refused", free=check.free, floor=check.floor,
                             reason="database down and no saved list of protected footage")
            return
        root = host.config.storage.root
        rows = iter_oldest_files(root)
        while check.free < check.target:
            if host.deletion_paused() and not (unindexed and await host.floor_unindexed()):
                return
            pairs = await asyncio.to_thread(take_and_unlink, rows, root, check.target - check.free,
                                            host.current(), protected, host.config.retention.batch_size,
                                            marker=marker)
            if any(res.detail == MARKER_MISSING for _, res in pairs):
                return  # the volume went away under us: nothing was unlinked
            if not pairs:
                return
            host.account(pairs, "disk")
            await self.note_batch(check, pairs, "filesystem")
            gone = [r.path for r, res in pairs if res.outcome in (Outcome.DELETED, Outcome.MISSING)]
            if gone:
                await host.forget_paths(gone)

    async def note_batch(self, check: DiskCheck, pairs: Sequence[Pair], source: str) -> None:
        """Count one emergency batch, re-read free space, and log it as the emergency it is."""
        deleted = [(r, res) for r, res in pairs if res.outcome is Outcome.DELETED]
        if source not in check.sources:
            check.sources.append(source)
        if not deleted:
            return
        free_before = check.free
        nbytes = sum(r.size for r, _ in deleted)
        check.deleted += len(deleted)
        check.bytes += nbytes
        usage = await self._usage()
        check.free = max(usage.free if usage else 0, free_before + sum(res.freed for _, res in deleted))
        log.error("retention_emergency", reason="free space below floor", source=source, count=len(deleted),
                  bytes=nbytes, cameras=sorted({r.camera_id for r, _ in deleted}), oldest=deleted[0][0].path,
                  newest=deleted[-1][0].path, free_before=free_before, free_after=check.free,
                  floor=check.floor, target=check.target)


# --------------------------------------------------------------------------- protected paths


class ProtectedPaths:
    """Paths the index marks protected, in memory and in ``<root>/.recorderd/protected_paths``.

    The index is the only place protection is recorded; this copy lets the free-space floor honour
    it while the database is down, even right after a restart. Paths are held and compared in their
    canonical spelling (``RootSpellings``): the scan spells files with the configured root, the index
    with whatever root spelling wrote them.
    """

    def __init__(self, root: Path) -> None:
        self.file = root / STATE_DIR / "protected_paths"
        self.roots = RootSpellings(root)
        self.paths: frozenset[str] = frozenset()
        self.known = False
        self._saved: frozenset[str] | None = None  # what the file holds, as far as we know
        self._logged = False

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.roots.canon(path) in self.paths

    def replace(self, paths: Iterable[str], *, save: bool = True) -> None:
        """New set from the index (swapped in one assignment); the file is rewritten atomically when it
        changed. Blocking (resolves root spellings): call in a worker thread. ``save=False`` while the
        storage volume is not verified: the file would land on whatever is mounted there. A failed
        write is logged once and retried next time, never raised."""
        paths = list(paths)
        self.roots.learn(paths)
        new = frozenset(self.roots.canon(p) for p in paths)
        self.paths, self.known = new, True
        if not save:
            return
        if new != self._saved or not self.file.exists():
            try:
                self.file.parent.mkdir(exist_ok=True)  # never the root itself: it may be unmounted
                write_atomic(self.file, "".join(p + "\n" for p in sorted(new)))
                self._saved = new
                self._logged = False
            except OSError as exc:
                if not self._logged:
                    self._logged = True
                    log.error("retention_error", path=str(self.file), error=exc.strerror or str(exc))

    def load(self) -> bool:
        """Read the saved copy if nothing fresher is known; True when the set is known afterwards.
        Blocking: call in a worker thread."""
        if self.known:
            return True
        try:
            text = self.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return False
        lines = [line for line in text.splitlines() if line]
        self.roots.learn(lines)
        self.paths, self.known = frozenset(self.roots.canon(p) for p in lines), True
        self._saved = self.paths
        return True
