"""The archive tier: finished segments older than their plan's ``archive_after_hours`` move from the
local disk to S3-compatible object storage, and stay searchable and playable there.

One segment moves in four committed steps, each safe to interrupt (kill -9 anywhere, restart, and
every segment is in exactly one place, or briefly two, never none, and indexed once):

1. **intent**: ``upload_url`` is set on the row. From here on retention deletes that object with the
   row, so an object a crash left behind is never orphaned.
2. **upload and verify**: PUT, then the server's size and digest (ETag) must equal the local file's
   (``recorderd.objectstore``). A retry overwrites the same key.
3. **switch**: ``object_url`` (and the fragment map read from the local file) set in one UPDATE that
   skips a row retention marked meanwhile; readers use the object from now on. The row's ``path``
   keeps the local path: it stays the identity, so a local file a crash left is still this row.
4. **unlink** the local file (checked under the storage root, never through a symlink), then clear
   ``upload_url``. Switched rows with ``upload_url`` still set are finished at start and every pass.

The object store down or slow never touches recording or local retention: the archiver backs off
(1 s doubling to 30 s), the backlog shows in ``/metrics`` (``recorderd_archive_backlog_*``) and the
free-space floor deletes unarchived footage if it must (``retention`` logs each such deletion).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from recorderd import metrics, queries
from recorderd.backoff import Backoff
from recorderd.config import ArchiveConfig, Config, Plan
from recorderd.db import Database, DatabaseUnavailable
from recorderd.diskguard import Outcome, unlink_batch
from recorderd.fmp4 import Fragment, FragmentIndex, scan
from recorderd.layout import parse_segment_path
from recorderd.logging import get_logger
from recorderd.objectstore import ArchiveError, ObjectStore, VerifyError

log = get_logger()
BATCH = 64  # segments per pass (one intent and one switch UPDATE each)
HOUR = 3600.0
BACKLOG_EVERY = 10.0  # seconds between backlog counts while batches follow each other
_DB_ERRORS = (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


# --------------------------------------------------------------------------- pure helpers


def object_key_for(root: Path, path: str, node: str | None = None) -> str | None:
    """``<camera>/<day>/<file>``: the segment's path under the root (the archive mirrors the layout,
    so a key names its camera and time and one upload's retry hits the same key). None when the path
    is not a segment of the layout under ``root``.

    A clustered node puts its id first (``<node>/<camera>/...``): two nodes recording one camera during
    a handover may open a file in the same second, and one must never overwrite the other's object."""
    if parse_segment_path(root, path) is None:
        return None
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join([node, *parts] if node else parts)


def pack_fragments(index: FragmentIndex) -> bytes:
    """The fragment map, compact (zlib'd JSON arrays): a few hundred bytes for a 10 s file."""
    body = [index.init_length, index.timescale, index.track_id, index.base_decode_time, index.media_end,
            [[f.offset, f.length, round(f.start, 6), round(f.duration, 6), int(f.keyframe)]
             for f in index.fragments]]
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)


def unpack_fragments(data: bytes) -> FragmentIndex | None:
    try:
        init, timescale, track, base, media_end, frags = json.loads(zlib.decompress(data))
        return FragmentIndex(int(init), int(timescale), int(track), int(base),
                             tuple(Fragment(int(o), int(n), float(s), float(d), bool(k)) for o, n, s, d, k in frags),
                             int(media_end), True)
    except (ValueError, TypeError, zlib.error):
        return None


class UploadPacer:
    """Keeps uploads to ``mbps`` on average: each file is given its slot (size / rate) after the
    previous ones' and waits for it. A file itself goes at link speed (the S3 client sends a whole
    part at once), so the limit holds over a few files, which is what keeps the camera uplink usable.
    """

    def __init__(self, mbps: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = None if mbps is None else mbps * 1e6 / 8  # bytes per second
        self._clock = clock
        self._next = 0.0

    def reserve(self, nbytes: int) -> float:
        """Seconds to wait before sending ``nbytes``; books their slot."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        start = max(now, self._next)
        self._next = start + nbytes / self.rate
        return start - now

    async def wait(self, nbytes: int) -> None:
        delay = self.reserve(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)


def due_cutoffs(config: Config, now: float, after: Callable[[Plan], float | None]) -> tuple[list[str], list[datetime]]:
    """Per camera whose plan has the tier (``after(plan)``: seconds, or None): footage ending before
    its cutoff is due. Cameras removed from the config have no plan here: their footage stays as it is."""
    ids: list[str] = []
    cuts: list[datetime] = []
    for cam in config.cameras:
        plan = config.plans.get(cam.plan)
        seconds = after(plan) if plan is not None else None
        if seconds is not None:
            ids.append(cam.id)
            cuts.append(datetime.fromtimestamp(now - seconds, UTC))
    return ids, cuts


def cutoffs(config: Config, now: float) -> tuple[list[str], list[datetime]]:
    """The archive's: ``archive_after_hours``."""
    return due_cutoffs(config, now, lambda p: None if p.archive_after_hours is None else p.archive_after_hours * HOUR)


@dataclass(slots=True)
class Item:
    id: int
    camera_id: str
    path: str
    size: int
    key: str
    fragments: bytes | None = None
    error: str | None = None


# --------------------------------------------------------------------------- the archiver


class Archiver:
    """Moves due segments to the object store, batch by batch; see the module docstring."""

    def __init__(self, config: Config, db: Database, store: ObjectStore | None, *,
                 storage_ok: Callable[[], bool] = lambda: True, marker: Callable[[], str | None] = lambda: None,
                 busy: Callable[[], set[str]] = set, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._db = db
        self.store = store
        self._storage_ok = storage_ok
        self._marker = marker
        self._busy = busy  # files being re-encoded (or written): not now
        self._clock = clock
        self._pacer = UploadPacer(config.archive.upload_limit_mbps if config.archive else None)
        self._backoff = Backoff(base=1.0, cap=30.0, stable_after=0.0)
        self._down_since: float | None = None
        self._wake = asyncio.Event()
        self.passes = 0
        self.backlog: tuple[int, int, float] = (0, 0, 0.0)  # segments, bytes, oldest age (s)
        self.up: bool | None = None  # None: not asked yet
        self._backlog_at = float("-inf")  # monotonic time of the last backlog count

    def update_config(self, config: Config, store: ObjectStore | None) -> None:
        self._config = config
        self.store = store
        self._pacer.rate = None if config.archive is None or config.archive.upload_limit_mbps is None \
            else config.archive.upload_limit_mbps * 1e6 / 8
        self._wake.set()

    async def run(self) -> None:
        while True:
            delay = self._idle()
            try:
                delay = await self.pass_once()
            except _DB_ERRORS as exc:  # the indexer reconnects; try again in a while
                log.warning("archive_failed", step="index", error=f"{type(exc).__name__}: {exc}"[:300])
            except Exception:  # a bug here must not take the recorder down: logged, retried
                log.exception("archive_failed", step="pass")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def _idle(self) -> float:
        return self._config.archive.interval_seconds if self._config.archive is not None else 60.0

    def kick(self) -> None:
        """Run a pass now (tests, a reload)."""
        self._wake.set()

    async def pass_once(self) -> float:
        """Finish switched rows, then archive one batch; returns the pause before the next pass."""
        self.passes += 1
        metrics.ARCHIVE_CONFIGURED.set(0 if self._config.archive is None else 1)
        if self._config.archive is not None and self.store is None:  # credentials unreadable: logged at build
            metrics.ARCHIVE_FAILURES.labels("setup").inc()
            self._store_down("the archive could not be set up (credentials?)")
            return self._idle()
        if self.store is None or self._config.archive is None or not self._db.up or not self._storage_ok():
            return self._idle()
        await self.settle()
        ids, cuts = cutoffs(self._config, self._clock())
        if not ids:
            self._publish_backlog(0, 0, None)
            return self._idle()
        clips = self._config.archive.clips
        async with self._db.acquire("archive") as conn:
            rows = await conn.fetch(queries.ARCHIVE_CANDIDATES, ids, cuts, clips, BATCH)
        done = await self._archive(rows) if rows else 0
        if not rows:
            await self._check_store()
        now = time.monotonic()
        if not rows or now - self._backlog_at >= BACKLOG_EVERY:  # a count over the whole backlog:
            self._backlog_at = now                                # not after every batch of a long drain
            async with self._db.acquire("archive") as conn:
                b = await conn.fetchrow(queries.ARCHIVE_BACKLOG, ids, cuts, clips)
            self._publish_backlog(b["segments"], b["bytes"], b["oldest"])
        if rows and done == 0:  # the store refused the whole batch: back off
            return self._backoff.next_delay()
        return 0.0 if len(rows) == BATCH else self._idle()

    def _publish_backlog(self, segments: int, nbytes: int, oldest: datetime | None) -> None:
        age = max(0.0, self._clock() - oldest.timestamp()) if oldest else 0.0
        self.backlog = (segments, nbytes, age)
        metrics.ARCHIVE_BACKLOG_SEGMENTS.set(segments)
        metrics.ARCHIVE_BACKLOG_BYTES.set(nbytes)
        metrics.ARCHIVE_OLDEST_SECONDS.set(age)

    def snapshot(self) -> dict[str, Any] | None:
        """For ``recorderd status``: where footage goes and how far behind it is."""
        if self._config.archive is None:
            return None
        return {"url": self._config.archive.url, "usable": self.store is not None, "up": self.up,
                "backlog_segments": self.backlog[0], "backlog_bytes": self.backlog[1],
                "oldest_seconds": round(self.backlog[2], 1)}

    async def _archive(self, rows: Sequence[Any]) -> int:
        root = self._config.storage.root
        items: list[Item] = []
        busy = self._busy()
        for r in rows:
            if r["path"] in busy:
                continue
            node = self._config.node
            key = object_key_for(root, r["path"], node.id if node.clustered else None)
            if key is None:  # not a file of the layout: never read, never uploaded
                log.warning("archive_failed", step="read", camera=r["camera_id"], path=r["path"],
                            error="not a segment path under the storage root")
                metrics.ARCHIVE_FAILURES.labels("read").inc()
                continue
            items.append(Item(r["id"], r["camera_id"], r["path"], r["size_bytes"], key))
        if not items:
            return 0
        assert self.store is not None and self._config.archive is not None
        async with self._db.acquire("archive") as conn:  # 1. intent
            await conn.execute(queries.ARCHIVE_INTENT, [i.id for i in items], [self.store.url(i.key) for i in items])
        sem = asyncio.Semaphore(self._config.archive.concurrency)

        async def one(item: Item) -> None:
            async with sem:
                await self._upload(item)

        await asyncio.gather(*(one(i) for i in items))  # 2. upload and verify
        ok = [i for i in items if i.error is None and i.fragments is not None]
        if not ok:
            return 0
        async with self._db.acquire("archive") as conn:  # 3. switch
            switched = {r["id"] for r in await conn.fetch(
                queries.ARCHIVE_SWITCH, [i.id for i in ok], [self.store.url(i.key) for i in ok],
                [i.fragments for i in ok])}
        lost = [i for i in ok if i.id not in switched]  # retention took them meanwhile
        if lost:
            await self._delete_objects([i.key for i in lost])
        moved = [i for i in ok if i.id in switched]
        metrics.ARCHIVE_UPLOADED.inc(len(moved))
        metrics.ARCHIVE_UPLOADED_BYTES.inc(sum(i.size for i in moved))
        await self._unlink(moved)  # 4. the local copies
        if moved:
            log.info("archive_uploaded", count=len(moved), bytes=sum(i.size for i in moved),
                     cameras=sorted({i.camera_id for i in moved}))
        return len(moved)

    async def _upload(self, item: Item) -> None:
        assert self.store is not None
        index = await asyncio.to_thread(scan, item.path)
        if index is None or not index.fragments:
            item.error = "no fragment map (file missing or unreadable)"
            metrics.ARCHIVE_FAILURES.labels("read").inc()
            if await asyncio.to_thread(os.path.exists, item.path):
                log.warning("archive_failed", step="read", camera=item.camera_id, path=item.path, error=item.error)
            return
        await self._pacer.wait(item.size)
        try:
            await self.store.put_file(item.key, item.path)
        except VerifyError as exc:
            item.error = str(exc)
            metrics.ARCHIVE_FAILURES.labels("verify").inc()
            log.warning("archive_failed", step="verify", camera=item.camera_id, key=item.key, error=item.error)
            return
        except (ArchiveError, OSError) as exc:
            item.error = str(exc)
            metrics.ARCHIVE_FAILURES.labels("upload").inc()
            self._store_down(item.error)
            return
        self._store_up()
        item.fragments = pack_fragments(index)

    async def _check_store(self) -> None:
        """With nothing to upload, one HEAD of a key that is never written keeps ``recorderd_archive_up``
        true to the store's state (a 404 is an answer)."""
        assert self.store is not None
        try:
            await self.store.exists(".recorderd-probe")
        except ArchiveError as exc:
            metrics.ARCHIVE_FAILURES.labels("probe").inc()
            self._store_down(str(exc))
        else:
            self._store_up()

    def _store_down(self, error: str) -> None:
        self.up = False
        metrics.ARCHIVE_UP.set(0)
        if self._down_since is None:
            self._down_since = self._clock()
            log.warning("archive_unavailable", error=error, action="recording goes on; uploads retried")

    def _store_up(self) -> None:
        self.up = True
        metrics.ARCHIVE_UP.set(1)
        self._backoff.reset()
        if self._down_since is not None:
            log.info("archive_available", down_seconds=round(self._clock() - self._down_since, 1))
            self._down_since = None

    async def _delete_objects(self, keys: list[str]) -> None:
        assert self.store is not None
        try:
            await self.store.delete_many(keys)
        except ArchiveError as exc:  # retention deletes them with their rows (upload_url)
            metrics.ARCHIVE_FAILURES.labels("delete").inc()
            log.warning("archive_failed", step="delete", count=len(keys), error=str(exc))

    async def _unlink(self, items: Sequence[Item]) -> None:
        if not items:
            return
        results = await asyncio.to_thread(unlink_batch, self._config.storage.root,
                                          [(i.camera_id, i.path) for i in items], marker=self._marker())
        gone = [i.id for i, res in zip(items, results, strict=True)
                if res.outcome in (Outcome.DELETED, Outcome.MISSING)]
        for i, res in zip(items, results, strict=True):
            if res.outcome not in (Outcome.DELETED, Outcome.MISSING):
                metrics.ARCHIVE_FAILURES.labels("unlink").inc()
                log.warning("archive_failed", step="unlink", camera=i.camera_id, path=i.path, error=res.detail)
        if gone:
            async with self._db.acquire("archive") as conn:
                await conn.execute(queries.ARCHIVE_SETTLED, gone)

    async def settle(self) -> int:
        """Remove the local copies of switched rows a crash left (steps 3 done, 4 not)."""
        after, count = 0, 0
        while True:
            async with self._db.acquire("archive") as conn:
                rows = await conn.fetch(queries.ARCHIVE_UNSETTLED, after, BATCH)
            if not rows:
                return count
            after = rows[-1]["id"]
            await self._unlink([Item(r["id"], r["camera_id"], r["path"], 0, "") for r in rows])
            count += len(rows)


# --------------------------------------------------------------------------- retention's side


async def delete_with_objects(store: ObjectStore | None, pairs: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Retention's batch after its unlinks: delete the objects of the rows that have one (batched),
    and give each archived row the outcome of its object, not of its (long gone) local file. A row
    whose object could not be deleted becomes FAILED: retention keeps it for the next sweep, so no
    object is ever left without its row."""
    from recorderd.diskguard import UnlinkResult

    keyed = [(row, res) for row, res in pairs if row.object_url and res.outcome is not Outcome.FAILED]
    if not keyed:
        return list(pairs)
    error: str | None = None
    keys = [store.key_of(row.object_url) for row, _ in keyed] if store is not None else []
    if store is None:
        error = "archived footage but no archive configured (archive: removed?): kept"
    elif None in keys:
        error = f"archived under another archive.url than {store.url('')}: kept"
    else:
        try:
            await store.delete_many([k for k in keys if k is not None])
        except ArchiveError as exc:
            error = str(exc)
    if error is not None:
        metrics.ARCHIVE_FAILURES.labels("delete").inc()
        log.warning("archive_failed", step="delete", count=len(keyed), error=error, action="kept for the next sweep")
    else:
        metrics.ARCHIVE_DELETED.inc(len(keyed))
    out: list[tuple[Any, Any]] = []
    for row, res in pairs:
        if row.object_url and res.outcome is not Outcome.FAILED:
            if error is not None:
                res = UnlinkResult(Outcome.FAILED, 0, "object store: " + error[:200])
            elif row.archived:
                res = UnlinkResult(Outcome.DELETED, 0, "")  # frees no local disk
        out.append((row, res))
    return out


def note_floor_unarchived(config: Config, rows: Sequence[Any]) -> None:
    """The free-space floor deleted footage its plan would have archived: each one is logged as such
    (the box is too small for its backlog, or the object store has been away too long)."""
    for row in rows:
        cam = config.camera(row.camera_id)
        plan = config.plans.get(cam.plan) if cam is not None else None
        if plan is None or plan.archive_after_hours is None or row.archived:
            continue
        metrics.ARCHIVE_UNARCHIVED_DELETED.inc()
        log.warning("retention_deleted_unarchived", camera=row.camera_id, path=row.path, bytes=row.size,
                    start=datetime.fromtimestamp(row.start, UTC).isoformat(),
                    reason="free-space floor; not archived yet")


def build_store(config: Config, environ: dict[str, str] | None = None) -> ObjectStore | None:
    """The configured store, or None (no ``archive:``, or its credentials cannot be read: logged,
    and footage stays local until a reload fixes it)."""
    from recorderd.objectstore import load_credentials

    if config.archive is None:
        return None
    try:
        return ObjectStore(config.archive, load_credentials(config.archive, environ))
    except (ArchiveError, ValueError, OSError) as exc:
        log.error("archive_unavailable", error=str(exc)[:300], action="footage stays on the local disk")
        return None
    except Exception as exc:  # obstore's configuration errors
        log.error("archive_unavailable", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                  action="footage stays on the local disk")
        return None


_stores: dict[ArchiveConfig, ObjectStore | None] = {}


def store_for(config: Config) -> ObjectStore | None:
    """One store per archive config in this process (the CLI and clips, which have no daemon)."""
    if config.archive is None:
        return None
    if config.archive not in _stores:
        _stores[config.archive] = build_store(config)
    return _stores[config.archive]
