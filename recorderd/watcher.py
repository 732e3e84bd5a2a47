"""Segment files on disk that the index does not know about: found by a full reconcile at every
database connect, and by watching the storage root in between.

Both exist because the completion event is not the only way a file appears: FFmpeg or the daemon may
die between closing a file and indexing it, rows may be dropped from memory during a long outage, and
operators copy or move footage in by hand. Files are the truth; the index converges on them, with
three exceptions that protect footage: a settled file holding only an MP4 header (a run killed before
its first fragment) is deleted instead of probed; a protected row (a clip) is never deleted because
its file is missing; and no row is deleted while the storage gate says the volume is not there.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from recorderd import layout, metrics, mp4, queries
from recorderd.diskguard import Outcome, unlink_batch
from recorderd.inotify import DirWatch, WatchLimit
from recorderd.logging import get_logger
from recorderd.probe import FoundFile

if TYPE_CHECKING:
    from recorderd.config import Config
    from recorderd.db import Database

log = get_logger(component="watcher")

SETTLE_SECONDS = 5.0  # a file untouched this long (and not open by FFmpeg) is finished
PROBE_CHUNK = 256  # reconcile probes and writes orphans in chunks: progress survives an outage
RECHECK_ROUNDS = 60  # files still changing after this many settle periods are left to the watcher
SUSPICIOUS_MIN_ROWS = 100
SUSPICIOUS_MISSING_RATIO = 0.9
UNREADABLE_MAX = 10_000  # unreadable files remembered (so not probed again); beyond it the oldest go
LOGGED_PATHS = 5  # paths named in a summary log line
WATCH_TICK = 2.0  # the watch is read this often: a file waits SETTLE_SECONDS anyway, so no hurry


class IndexSide(Protocol):
    """What reconcile and the watcher need from the Indexer (kept abstract to avoid an import cycle)."""

    @property
    def config(self) -> Config: ...
    @property
    def database(self) -> Database: ...
    def current_files(self) -> set[str]: ...
    def storage_ok(self) -> bool: ...
    def is_known(self, path: str) -> bool: ...
    async def index_found(self, files: list[FoundFile], source: str = ...) -> int: ...


# --------------------------------------------------------------------------- scanning (in threads)


def list_camera_dirs(root: Path) -> list[str]:
    """Camera ids that have a directory under the root (``.recorderd``, ``clips`` and strays ignored)."""
    try:
        with os.scandir(root) as it:
            return sorted(e.name for e in it
                          if layout.is_camera_dir_name(e.name) and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def scan_camera(root: Path, camera_id: str) -> dict[str, FoundFile]:
    """Every layout-conforming segment of one camera: one scandir per day directory, one stat per file."""
    out: dict[str, FoundFile] = {}
    cam_dir = os.path.join(str(root), camera_id)
    try:
        days = [e for e in os.scandir(cam_dir) if e.is_dir(follow_symlinks=False)
                and layout.DAY_RE.match(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return out
    for day in days:
        try:
            entries = list(os.scandir(day.path))
        except OSError:
            continue
        for e in entries:
            if not layout.FILE_RE.match(e.name):
                continue
            found = _found(root, e.path, e)
            if found is not None:
                out[found.path] = found
    return out


def _found(root: Path, path: str, entry: os.DirEntry[str] | None = None) -> FoundFile | None:
    parsed = layout.parse_segment_path(root, path)
    if parsed is None:
        return None
    try:
        st = entry.stat(follow_symlinks=False) if entry is not None else os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FoundFile(path=path, camera_id=parsed[0], path_time=parsed[1], mtime=st.st_mtime, size=st.st_size)


def stat_found(root: Path, paths: list[str]) -> list[FoundFile]:
    return [f for f in (_found(root, p) for p in paths) if f is not None]


# --------------------------------------------------------------------------- reconcile


@dataclass(slots=True)
class ReconcileStats:
    cameras: int = 0
    files: int = 0
    orphans: int = 0
    indexed: int = 0
    missing_deleted: int = 0
    unreadable: int = 0
    skipped_busy: int = 0
    header_only_removed: int = 0
    deletions_skipped: bool = False  # the storage gate was closed: no row was deleted
    seconds: float = 0.0
    missing_by_camera: dict[str, int] = field(default_factory=dict)
    clips_missing: list[str] = field(default_factory=list)  # protected rows whose file is gone (kept)
    fresh: list[FoundFile] = field(default_factory=list)  # too recent to judge: see settle_fresh()


class Reconciler:
    """Storage root vs index: orphan files get probed and indexed, rows of vanished files deleted.

    Per camera: its paths in one query, its directory in one thread walk, then set differences, so
    a root of 100k+ files costs a few seconds, not a query per file.
    """

    def __init__(self, index: IndexSide) -> None:
        self._ix = index
        # camera -> path -> (size, mtime) when found unreadable; pruned at each pass over the camera
        self._unreadable: dict[str, dict[str, tuple[int, float]]] = {}
        self._unreadable_count = 0
        self.header_only_removed = 0  # files, since start
        self.last: ReconcileStats | None = None

    def unreadable(self, found: FoundFile, reason: str | None = None) -> None:
        """Log an unprobeable file once (per size/mtime); it is skipped, never deleted.

        Remembered so that reconcile does not probe it again at every connect, but bounded: entries
        of files that are gone or changed are dropped at the next pass, and at most
        ``UNREADABLE_MAX`` are kept (a dropped one is at worst probed and logged again).
        """
        seen = self._unreadable.setdefault(found.camera_id, {})
        key = (found.size, found.mtime)
        if seen.get(found.path) == key:
            return
        if found.path not in seen:
            self._unreadable_count += 1
        seen[found.path] = key
        fields = {"reason": reason} if reason else {}
        log.warning("segment_unreadable", path=found.path, size=found.size, **fields)
        while self._unreadable_count > UNREADABLE_MAX:
            self._forget_oldest_unreadable()

    def is_unreadable(self, found: FoundFile) -> bool:
        return self._unreadable.get(found.camera_id, {}).get(found.path) == (found.size, found.mtime)

    @property
    def unreadable_count(self) -> int:
        return self._unreadable_count

    def _forget_oldest_unreadable(self) -> None:
        cam = max(self._unreadable, key=lambda c: len(self._unreadable[c]))
        seen = self._unreadable[cam]
        del seen[next(iter(seen))]
        self._unreadable_count -= 1
        if not seen:
            del self._unreadable[cam]

    def _prune_unreadable(self, cam: str, files: dict[str, FoundFile]) -> None:
        """Forget unreadable files of ``cam`` that are gone or have changed since (probe them anew)."""
        seen = self._unreadable.get(cam)
        if not seen:
            return
        for path, key in list(seen.items()):
            f = files.get(path)
            if f is None or (f.size, f.mtime) != key:
                del seen[path]
                self._unreadable_count -= 1
        if not seen:
            del self._unreadable[cam]

    async def remove_header_only(self, files: list[FoundFile], *, remove: bool = True) -> list[FoundFile]:
        """Take files holding only an MP4 header out of ``files``: such a file has no media to index
        (ffprobe gives no duration), so probing it is wasted and remembering it as unreadable grows
        without end. The settled ones (not open by FFmpeg, untouched for ``SETTLE_SECONDS``) are
        deleted when ``remove`` (callers pass False when they could not check that the index has no
        row for them); the others are only skipped. Returns the files left to probe.
        """
        if not files:
            return files
        flags = await asyncio.to_thread(lambda: [mp4.is_header_only(f.path) for f in files])
        rest = [f for f, header_only in zip(files, flags, strict=True) if not header_only]
        if len(rest) == len(files) or not remove:
            return rest
        busy = self._ix.current_files()
        settled_before = time.time() - SETTLE_SECONDS
        doomed = [f for f, header_only in zip(files, flags, strict=True)
                  if header_only and f.path not in busy and f.mtime <= settled_before]
        if not doomed:
            return rest
        results = await asyncio.to_thread(unlink_batch, self._ix.config.storage.root,
                                          [(f.camera_id, f.path) for f in doomed])
        removed: list[str] = []
        for f, result in zip(doomed, results, strict=True):
            if result.outcome == Outcome.DELETED:
                removed.append(f.path)
            elif result.outcome != Outcome.MISSING:
                self.unreadable(f, reason=f"header only; not removed: {result.detail}")
        if removed:
            self.header_only_removed += len(removed)
            metrics.HEADER_ONLY_REMOVED.inc(len(removed))
            log.info("segment_header_only_removed", count=len(removed), paths=removed[:LOGGED_PATHS])
        return rest

    async def run(self) -> ReconcileStats:
        """One full pass; raises ``DatabaseUnavailable`` if the database goes away meanwhile."""
        ix = self._ix
        root = ix.config.storage.root
        stats = ReconcileStats()
        t0 = time.monotonic()
        if not await asyncio.to_thread(os.path.isdir, root):
            log.warning("reconcile_skipped", root=str(root), reason="storage root missing")
            return stats
        self._may_delete(stats)  # a closed storage gate is logged once, up front
        async with ix.database.acquire("reconcile") as conn:
            db_cams = {r[0] for r in await conn.fetch(queries.SEGMENT_CAMERAS)}
        disk_cams = set(await asyncio.to_thread(list_camera_dirs, root))
        for cam in sorted(db_cams | disk_cams):
            await self._camera(root, cam, stats)
        stats.cameras = len(db_cams | disk_cams)
        stats.seconds = round(time.monotonic() - t0, 3)
        self.last = stats
        if stats.clips_missing:
            log.error("clip_file_missing", count=len(stats.clips_missing),
                      paths=stats.clips_missing[:LOGGED_PATHS],
                      reason="protected segments whose file is missing: rows kept")
        log.info("reconcile_done", cameras=stats.cameras, files=stats.files, indexed=stats.indexed,
                 missing=stats.missing_deleted, unreadable=stats.unreadable,
                 header_only=stats.header_only_removed, seconds=stats.seconds)
        return stats

    def _may_delete(self, stats: ReconcileStats) -> bool:
        """The storage gate: while it is closed (volume unmounted?) a missing file proves nothing."""
        if stats.deletions_skipped:
            return False
        try:
            ok = bool(self._ix.storage_ok())
        except Exception as exc:  # a broken gate is a closed gate
            log.error("reconcile_skipped", reason=f"storage check failed: {exc!r}"[:200])
            ok = False
        if not ok:
            stats.deletions_skipped = True
            log.warning("reconcile_skipped", root=str(self._ix.config.storage.root),
                        reason="storage not confirmed (volume unmounted?): rows of missing files kept")
        return ok

    async def settle_fresh(self, fresh: list[FoundFile]) -> int:
        """Files a pass skipped as just modified: index them once they have settled.

        Without this the segment cut by a SIGKILL is only found at the next reconnect, because
        nothing writes it again and the watcher therefore never hears of it.
        """
        ix = self._ix
        waiting = [f.path for f in fresh]
        indexed = 0
        for _ in range(RECHECK_ROUNDS):
            if not waiting:
                break
            await asyncio.sleep(SETTLE_SECONDS)
            found = await asyncio.to_thread(stat_found, ix.config.storage.root, waiting)
            busy = ix.current_files()
            settled_before = time.time() - SETTLE_SECONDS
            live = [f for f in found if f.path not in busy and not ix.is_known(f.path)]
            ready = [f for f in live if f.mtime <= settled_before and not self.is_unreadable(f)]
            waiting = [f.path for f in live if f.mtime > settled_before]
            if ready:
                indexed += await ix.index_found(ready, source="reconcile")
        return indexed

    async def _camera(self, root: Path, cam: str, stats: ReconcileStats) -> None:
        ix = self._ix
        # rows first, files second: a row committed after this query has a file we will see
        async with ix.database.acquire("reconcile") as conn:
            rows = await conn.fetch(queries.CAMERA_PATHS, cam)
        indexed = {r[0] for r in rows}
        files = await asyncio.to_thread(scan_camera, root, cam)
        stats.files += len(files)
        self._prune_unreadable(cam, files)
        busy = ix.current_files()
        settled_before = time.time() - SETTLE_SECONDS
        orphans: list[FoundFile] = []
        for path, found in files.items():
            if path in indexed or ix.is_known(path):
                continue
            if path in busy:
                stats.skipped_busy += 1
            elif found.mtime > settled_before:
                stats.skipped_busy += 1
                stats.fresh.append(found)  # e.g. the file a killed daemon's FFmpeg was writing
            elif self.is_unreadable(found):
                stats.unreadable += 1
            else:
                orphans.append(found)
        stats.orphans += len(orphans)
        removed_before = self.header_only_removed
        for i in range(0, len(orphans), PROBE_CHUNK):
            chunk = orphans[i:i + PROBE_CHUNK]
            queued = await ix.index_found(chunk, source="reconcile")
            stats.indexed += queued
            stats.unreadable += sum(1 for f in chunk if self.is_unreadable(f))
        stats.header_only_removed += self.header_only_removed - removed_before

        prefix = os.path.join(str(root), cam) + os.sep
        live = [r for r in rows if not r[1]]  # rows retention is deleting are its business
        missing = [r[0] for r in live if r[0] not in files and r[0].startswith(prefix)]
        if not missing:
            return
        if len(live) >= SUSPICIOUS_MIN_ROWS and len(missing) >= SUSPICIOUS_MISSING_RATIO * len(live):
            # an unmounted disk looks exactly like this: keep the rows, ask a human
            log.warning("reconcile_suspicious", camera_id=cam, missing=len(missing), rows=len(live),
                        reason="almost every indexed file is missing; is the storage mounted? rows kept")
            return
        if not self._may_delete(stats):
            return
        gone = await asyncio.to_thread(lambda: [p for p in missing if not os.path.lexists(p)])
        protected = {r[0] for r in live if r[2]}
        stats.clips_missing += [p for p in gone if p in protected]
        gone = [p for p in gone if p not in protected]  # DELETE_MISSING checks again, in the row
        if not gone:
            return
        async with ix.database.acquire("reconcile") as conn:
            status = await conn.execute(queries.DELETE_MISSING, gone)
        count = int(status.split()[-1])
        stats.missing_deleted += count
        stats.missing_by_camera[cam] = count
        if count:
            log.warning("segments_missing", camera_id=cam, count=count)


# --------------------------------------------------------------------------- watcher


class Watcher:
    """Indexes segment files that show up in the layout outside the completion-event path.

    It watches directories only, for new names (``inotify.DirWatch``): the root for camera
    directories, each camera directory for day directories, each day directory for files. FFmpeg's
    writes into its open file are invisible to such a watch, so recording pays nothing for it, and
    the watch is read once a tick rather than woken per event. A new file that is open by FFmpeg
    (current_files), pending or recently committed costs one set lookup; anything else is stat'ed
    each tick until it has not changed for ``settle_seconds`` (a copy in progress), then handed on.
    When the kernel drops events (queue overflow) or refuses more watches, ``on_lost`` is called so
    the owner can reconcile the whole root instead.
    """

    def __init__(self, root: Path, *, current_files: Callable[[], set[str]],
                 is_known: Callable[[str], bool],
                 on_settled: Callable[[list[FoundFile]], Awaitable[Any]],
                 on_lost: Callable[[], None] | None = None,
                 settle_seconds: float = SETTLE_SECONDS, tick: float = WATCH_TICK) -> None:
        self.root = root
        self._current_files = current_files
        self._is_known = is_known
        self._on_settled = on_settled
        self._on_lost = on_lost
        self._settle = settle_seconds
        self._tick = tick
        self._candidates: dict[str, float] = {}  # path -> monotonic time it was last seen changing
        self._limit_logged = False
        self.ready = asyncio.Event()  # set once the OS watches are in place (tests wait on it)

    @property
    def watched(self) -> int:
        """Directories watched right now (0 when not running)."""
        return len(self._dw) if self._dw is not None else 0

    _dw: DirWatch | None = None

    async def run(self) -> None:
        """Watch until cancelled; a failing watch is logged and retried."""
        backoff = 5.0
        while True:
            try:
                await self._watch()
                backoff = 5.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("watcher_failed", root=str(self.root), reason=str(exc)[:200])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 300.0)

    async def _watch(self) -> None:
        while not await asyncio.to_thread(os.path.isdir, self.root):  # noqa: ASYNC110 (no event for mkdir)
            await asyncio.sleep(self._settle)
        dw = self._dw = DirWatch()
        try:
            # watches first, then a look: a file made in between is seen by the look
            await asyncio.to_thread(self._add_tree, str(self.root), 0, False)  # files: reconcile's
            self.ready.set()
            while True:
                await asyncio.sleep(self._tick)
                await self._tick_once(dw)
        finally:
            self.ready.clear()
            self._dw = None
            dw.close()

    async def _tick_once(self, dw: DirWatch) -> None:
        entries = dw.read()
        if dw.overflowed:
            dw.overflowed = False
            log.warning("watcher_overflow", root=str(self.root),
                        action="events were lost: re-watching and reconciling the root")
            await asyncio.to_thread(self._add_tree, str(self.root), 0, False)
            self._lost()
        dirs = [(e.path, depth) for e in entries if e.is_dir and (depth := self._depth(e.path)) in (1, 2)]
        files = [e.path for e in entries if not e.is_dir and self._depth(e.path) == 3]
        if dirs:
            for path, depth in dirs:
                files += await asyncio.to_thread(self._add_tree, path, depth, True)
        self._note(files)
        try:
            await self._settle_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("watcher_failed", root=str(self.root), reason=str(exc)[:200])

    def _depth(self, path: str) -> int:
        """1 for a camera directory, 2 for a day directory, 3 for a file in it; 0 for anything else."""
        rel = os.path.relpath(path, self.root).split(os.sep)
        if rel[0] in (".", "..") or not layout.is_camera_dir_name(rel[0]) or len(rel) > 3:
            return 0
        if len(rel) >= 2 and not layout.DAY_RE.match(rel[1]):
            return 0
        if len(rel) == 3 and not layout.FILE_RE.match(rel[2]):
            return 0
        return len(rel)

    def _add_tree(self, top: str, depth: int, collect: bool) -> list[str]:
        """Watch ``top`` (at ``depth``) and the layout directories under it.

        ``collect``: also return the segment files in them (a directory that just appeared: files
        made before its watch was in place are seen here). At start-up and after an overflow the
        files are reconcile's, so day directories are watched without listing them. In a worker
        thread: watches and scans touch the storage, which may hang.
        """
        dw = self._dw
        if dw is None:
            return []
        files: list[str] = []
        try:
            if not dw.add(top) or (depth == 2 and not collect):
                return files
            with os.scandir(top) as it:
                entries = list(it)
        except WatchLimit as exc:
            if not self._limit_logged:
                self._limit_logged = True
                log.error("watcher_failed", root=str(self.root), reason=str(exc),
                          action="directories past the limit are covered by reconcile only")
            return files
        except OSError:
            return files
        for e in entries:
            child = depth + 1
            if self._depth(e.path) != child:
                continue
            if child == 3:
                files.append(e.path)
            elif e.is_dir(follow_symlinks=False):
                files += self._add_tree(e.path, child, collect)
        return files

    def _lost(self) -> None:
        if self._on_lost is not None:
            self._on_lost()

    def _note(self, paths: list[str]) -> None:
        """New names: skip FFmpeg's open files and indexed ones, watch the rest until they settle."""
        if not paths:
            return
        busy = self._current_files()
        now = time.monotonic()
        for path in paths:
            if path in busy or self._is_known(path):
                self._candidates.pop(path, None)
            else:
                self._candidates.setdefault(path, now)

    async def _settle_once(self) -> None:
        now = time.monotonic()
        due = [p for p, t in self._candidates.items() if now - t >= self._settle]
        if not due:
            return
        for p in due:
            del self._candidates[p]
        found = await asyncio.to_thread(stat_found, self.root, due)
        busy = self._current_files()
        settled_before = time.time() - self._settle
        ready: list[FoundFile] = []
        for f in found:
            if f.path in busy or self._is_known(f.path):
                continue
            if f.mtime > settled_before:
                self._candidates[f.path] = time.monotonic()  # still changing: look again later
            else:
                ready.append(f)
        if ready:
            await self._on_settled(ready)
