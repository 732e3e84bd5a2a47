"""Segment index writer: recording hands finished segments to ``submit`` and never waits on it.

One writer task drains an in-memory queue into PostgreSQL, one round trip per batch, as soon as rows
are there (no timer: a busy box gets big batches, a quiet one gets low lag). While the database is
away rows wait in memory up to ``database.pending_max_rows``; beyond that the oldest are dropped and
a full reconcile is owed, since every file is still on disk. Every (re)connect migrates, mirrors the
cameras from the config, and reconciles the storage root against the index (Reconciler in
watcher.py), so the index converges on what is on disk whatever crashed in between.

A slow database is not a down one: a timeout (``DatabaseBusy``) puts the batch back and the writer
pauses and retries on the same pool, with no reconnect and no new reconcile. Corrections of segment
times after a wall-clock step (``restamp``) go through the same writer, ahead of the next batch, so
each segment is shifted exactly once whether its row was already committed or still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from recorderd import metrics, queries
from recorderd.config import Config
from recorderd.db import Database, DatabaseBusy, DatabaseUnavailable
from recorderd.events import SOURCE_RANK, SegmentEvent
from recorderd.logging import get_logger
from recorderd.probe import FoundFile, probe_duration, start_time
from recorderd.watcher import Reconciler, Watcher

log = get_logger(component="indexer")

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
BUSY_PAUSE_MIN = 0.5  # after a timeout, before retrying on the same pool (doubling)
BUSY_PAUSE_MAX = 10.0
RECONCILE_BUSY_PAUSE = 30.0  # a pass cut short by a timeout is redone this much later, not at once
PING_SECONDS = 10.0
RECENT_MAX = 50_000  # committed paths remembered so the watcher skips them with a set lookup
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
LAG_SOURCES = ("ffmpeg", "recovered")  # rows found on disk have no meaningful "closed at"

CurrentFiles = Callable[[], set[str]]
ProbeFn = Callable[[str], Awaitable[float | None]]


def _no_files() -> set[str]:
    return set()


def _storage_always_ok() -> bool:
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class RestampJob:
    """Shift by ``delta_us`` every segment of each run up to its seq; ``stamp`` marks the rows done."""

    runs: dict[str, int]  # normalised run_id -> highest seq stamped before the clock step
    delta_us: int
    stamp: datetime  # unique per job: written to indexed_at so a retry never shifts a row twice


class Indexer:
    """Owns the database connection state, the pending queue, reconcile and the watcher.

    Call ``submit`` from the event loop thread; run ``await run()`` as a core task; call
    ``update_config`` after a reload and ``await close(timeout)`` at shutdown.
    """

    def __init__(self, config: Config, database: Database | None = None, *,
                 current_files: CurrentFiles | None = None, watch: bool = True,
                 probe: ProbeFn = probe_duration, storage_ok: Callable[[], bool] | None = None) -> None:
        self._config = config
        self.current_files: CurrentFiles = current_files or _no_files
        # False while the storage volume is not known to be there: reconcile then deletes no rows
        self.storage_ok: Callable[[], bool] = storage_ok or _storage_always_ok
        self._owns_database = database is None  # a shared Database is closed by its owner
        self.database = database if database is not None else Database(config.database_dsn(), node=config.node.id)
        self._watch = watch
        self._probe = probe
        self._pending: OrderedDict[str, SegmentEvent] = OrderedDict()
        self._inflight: dict[str, SegmentEvent] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._cameras_dirty = True
        self._reconcile_owed = False
        self._reconcile_when_storage_ok = False  # a pass kept missing rows because of the gate
        self._dropping = False  # inside an episode of dropped rows (logged once)
        self._restamps: deque[RestampJob] = deque()
        self._last_stamp = datetime.fromtimestamp(0, UTC)
        self._busy_pause = BUSY_PAUSE_MIN
        self._reconcile_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._run_uuid_cache: tuple[str, str] | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._close_deadline = 0.0
        self.reconciler = Reconciler(self)
        # test/benchmark hook: called with (events, commit_time) after each committed batch
        self.commit_hook: Callable[[list[SegmentEvent], float], None] | None = None

    # ----------------------------------------------------------------- public API

    @property
    def config(self) -> Config:
        return self._config

    @property
    def pending_count(self) -> int:
        return len(self._pending) + len(self._inflight)

    @property
    def database_up(self) -> bool:
        return self.database.up

    @property
    def restamp_pending(self) -> bool:
        """Corrections queued by ``restamp`` that are not in the index yet (database away or slow)."""
        return bool(self._restamps)

    def restamp(self, runs: Mapping[str, int], delta: float) -> None:
        """After a wall-clock step: every segment of run ``run_id`` with ``seq <= runs[run_id]`` must
        have its start and end shifted by ``delta`` seconds (durations unchanged).

        Never blocks: the job is queued and the writer applies queued jobs in order, once the
        database is up and before its next batch, to committed rows (one UPDATE) and to the rows
        still pending in memory, with no commit in between, so each segment moves exactly once.
        """
        try:
            delta_us = round(delta * 1_000_000)
            clean: dict[str, int] = {}
            for run_id, max_seq in runs.items():
                try:
                    norm = str(uuid.UUID(run_id))
                except (ValueError, TypeError, AttributeError):
                    log.error("segment_rejected", run_id=repr(run_id)[:80], reason="restamp: run_id is not a UUID")
                    continue
                if type(max_seq) is not int or max_seq < 0:
                    log.error("segment_rejected", run_id=norm, reason=f"restamp: bad seq {max_seq!r}"[:120])
                    continue
                clean[norm] = min(max_seq, INT32_MAX)
            if not clean or delta_us == 0:
                return
            stamp = max(datetime.now(UTC), self._last_stamp + timedelta(microseconds=1))
            self._last_stamp = stamp
            self._restamps.append(RestampJob(clean, delta_us, stamp))
            self._wake.set()
        except Exception as exc:  # e.g. a non-finite delta: a programming error must not stop recording
            log.error("segment_rejected", reason=f"restamp: {exc!r}"[:200])

    def submit(self, event: SegmentEvent) -> None:
        """Queue a finished segment. Never blocks, never raises: a bad event is logged and dropped."""
        try:
            ev = self._validate(event)
            if ev is None:
                return
            old = self._pending.get(ev.path)
            if old is not None and SOURCE_RANK[old.source] > SOURCE_RANK[ev.source]:
                return
            self._pending[ev.path] = ev
            limit = self._config.database.pending_max_rows
            while len(self._pending) > limit:
                self._pending.popitem(last=False)
                metrics.INDEX_DROPPED.inc()
                self._reconcile_owed = True
                if not self._dropping:
                    self._dropping = True
                    log.warning("index_rows_dropped", limit=limit, reason="pending queue full")
            metrics.INDEX_PENDING.set(len(self._pending) + len(self._inflight))
            self._wake.set()
        except Exception as exc:  # a programming error must still not stop recording
            log.error("segment_rejected", reason=repr(exc)[:200])

    def update_config(self, config: Config) -> None:
        """After a live reload: the cameras table is re-mirrored by the writer (never blocks)."""
        self._config = config
        self._cameras_dirty = True
        self._wake.set()

    def is_known(self, path: str) -> bool:
        """Pending, being written, or committed lately: the watcher's per-event set lookups."""
        return path in self._pending or path in self._inflight or path in self._recent

    async def run(self) -> None:
        """Connect (with backoff), migrate, write batches, reconcile, watch; until ``close``."""
        if self._running:
            raise RuntimeError("Indexer.run() is already running")
        self._running = True
        self._run_task = asyncio.current_task()
        self._stopped.clear()
        self.database.on_down.append(self._wake.set)
        if self._watch:
            self._watch_task = asyncio.create_task(self._run_watcher(), name="index-watcher")
        try:
            await self._main_loop()
        except asyncio.CancelledError:
            if not self._closing.is_set():
                raise
            task = asyncio.current_task()  # cancelled by close() after its timeout: a clean stop
            if task is not None:
                task.uncancel()
        finally:
            self.database.on_down.remove(self._wake.set)
            await self._cancel_helpers()
            self._running = False
            self._stopped.set()

    async def close(self, timeout: float) -> None:
        """Write what is pending within ``timeout`` seconds, then close connections.

        Rows still pending afterwards are not lost for good: their files are on disk and the next
        start's reconcile indexes them.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        self._close_deadline = deadline
        self._closing.set()
        self._wake.set()
        if self._running:
            try:
                await asyncio.wait_for(asyncio.shield(self._stopped.wait()),
                                       max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                if self._run_task is not None:
                    self._run_task.cancel()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), 2.0)
        else:
            await self._flush(deadline)
        await self._cancel_helpers()
        if self.pending_count:
            log.warning("index_pending_unwritten", count=self.pending_count,
                        reason="shutdown timeout; reconcile at next start indexes them")
        if self._owns_database:
            await self.database.close()

    async def reconcile(self) -> None:
        """Compare the storage root with the index now (normally done at every connect)."""
        await self.reconciler.run()

    # ----------------------------------------------------------------- writer loop

    async def _main_loop(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            if self._closing.is_set():
                await self._flush(self._close_deadline)
                return
            self._wake.clear()
            if not self.database.up:
                if not await self._connect():
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_MIN
            step: Callable[[], Awaitable[bool]] | None = None
            if self._restamps:  # before any batch: see restamp()
                step = self._apply_restamps
            elif self._pending:
                step = self._write_batch
            elif self._cameras_dirty:
                step = self._sync_cameras
            if step is not None:
                try:
                    done = await step()
                except Exception as exc:  # a bug must not end indexing for good; the rows are requeued
                    log.error("index_batch_failed", reason=repr(exc)[:200])
                    done = False
                if done:
                    self._busy_pause = BUSY_PAUSE_MIN
                else:  # slow database: same pool, after a pause (not a reconnect, not a tight loop)
                    await self._sleep(self._busy_pause)
                    self._busy_pause = min(self._busy_pause * 2, BUSY_PAUSE_MAX)
                continue
            if self._reconcile_owed and not self._reconciling:
                self._start_reconcile()
            elif self._reconcile_when_storage_ok and not self._reconciling and self._storage_ok_now():
                self._reconcile_when_storage_ok = False
                self._start_reconcile()  # the storage is back: delete the rows the last pass kept
            try:
                await asyncio.wait_for(self._wake.wait(), PING_SECONDS)
            except TimeoutError:
                await self.database.ping()

    def _storage_ok_now(self) -> bool:
        try:
            return bool(self.storage_ok())
        except Exception:
            return False

    async def _connect(self) -> bool:
        try:
            await self.database.connect()
        except DatabaseUnavailable:
            return False
        self._cameras_dirty = True
        await self._sync_cameras()
        if self.database.up:
            self._start_reconcile()
        return self.database.up

    async def _sleep(self, seconds: float) -> None:
        """Backoff that a shutdown interrupts."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    async def _flush(self, deadline: float) -> None:
        """Shutdown: write pending rows while there is time; at most one reconnect attempt.

        Queued restamps go first, as in the main loop: a pending row is never committed unshifted.
        """
        tried_connect = False
        while (self._pending or self._restamps) and time.monotonic() < deadline:
            if not self.database.up:
                if tried_connect:
                    return
                tried_connect = True
                try:
                    await asyncio.wait_for(self.database.connect(), max(0.1, deadline - time.monotonic()))
                except (DatabaseUnavailable, TimeoutError):
                    return
            step = self._apply_restamps() if self._restamps else self._write_batch()
            try:
                done = await asyncio.wait_for(step, max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                return
            if not done:  # slow: retry while the deadline allows
                await asyncio.sleep(min(BUSY_PAUSE_MIN, max(0.0, deadline - time.monotonic())))

    async def _write_batch(self) -> bool:
        """Write one batch; False when the database was too slow (the batch is back in front)."""
        n = min(len(self._pending), self._config.database.batch_max_rows)
        batch = [self._pending.popitem(last=False)[1] for _ in range(n)]
        for ev in batch:
            self._inflight[ev.path] = ev
        stored: list[SegmentEvent] = []
        written: list[str] = []
        ok = False
        busy = False
        try:
            async with self.database.acquire("write") as conn:
                written = await self._insert(conn, batch)
            stored, ok = batch, True
        except DatabaseBusy:
            busy = True
        except DatabaseUnavailable:
            pass
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # a row the server refuses must not block the queue: isolate it, write the rest
            log.error("index_batch_failed", count=len(batch), reason=str(exc)[:200])
            stored, written, busy = await self._insert_one_by_one(batch)
            ok = True
        finally:
            for ev in batch:
                self._inflight.pop(ev.path, None)
            if not ok:
                self._requeue(batch)
            metrics.INDEX_PENDING.set(self.pending_count)
        if ok:
            self._committed(stored, written)
        return not busy

    async def _insert(self, conn: asyncpg.Connection, batch: list[SegmentEvent]) -> list[str]:
        rows = await conn.fetch(queries.UPSERT_SEGMENTS, *segment_arrays(batch))
        return [r[0] for r in rows]

    async def _insert_one_by_one(self, batch: list[SegmentEvent]) -> tuple[list[SegmentEvent], list[str], bool]:
        """(rows the server accepted, sources written, whether it was too slow to finish).

        Only accepted rows may count as known: a refused one stays unknown so that reconcile and
        the watcher try it again. Once the database is away or slow the rest go back in the queue
        (each row would only wait for its own timeout).
        """
        stored: list[SegmentEvent] = []
        written: list[str] = []
        for i, ev in enumerate(batch):
            try:
                async with self.database.acquire("write") as conn:
                    written += await self._insert(conn, [ev])
                stored.append(ev)
            except DatabaseUnavailable as exc:
                self._requeue(batch[i:])
                return stored, written, isinstance(exc, DatabaseBusy)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("segment_rejected", path=ev.path, reason=str(exc)[:200])
        return stored, written, False

    async def _apply_restamps(self) -> bool:
        """Apply queued restamps in order; False when the database was too slow (job kept).

        A job stays queued until its UPDATE has succeeded; the rows it already shifted in an attempt
        that only looked failed carry its stamp and are skipped by the retry. Pending rows are shifted
        right after the UPDATE returns, in this (the only writing) task, so no batch is committed in
        between and no row is shifted by both.
        """
        while self._restamps:
            job = self._restamps[0]
            updated = 0
            try:
                async with self.database.acquire("restamp") as conn:
                    status = await conn.execute(queries.RESTAMP_SEGMENTS, list(job.runs), list(job.runs.values()),
                                                job.delta_us / 1_000_000, job.stamp)
                    updated = int(status.split()[-1])
            except DatabaseBusy:
                return False
            except DatabaseUnavailable:
                return True  # down: the main loop reconnects, the job waits
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # cannot happen with valid input; retrying a refused statement forever would block indexing
                log.error("index_batch_failed", op="restamp", reason=str(exc)[:200])
            shifted = self._shift_pending(job)
            self._restamps.popleft()
            metrics.RESTAMPED_SEGMENTS.inc(updated + shifted)
            log.info("segments_restamped", runs=job.runs, delta=job.delta_us / 1_000_000,
                     count=updated + shifted, committed=updated, pending=shifted)
        return True

    def _shift_pending(self, job: RestampJob) -> int:
        """Replace the pending events a job covers by shifted copies (events are frozen)."""
        step = timedelta(microseconds=job.delta_us)
        shifted = 0
        for path, ev in list(self._pending.items()):
            if ev.run_id is None or ev.seq is None or ev.seq > job.runs.get(ev.run_id, -1):
                continue
            # in exact microseconds, as the UPDATE shifts committed rows: tiling across the two holds
            self._pending[path] = dataclasses.replace(ev, start=(to_datetime(ev.start) + step).timestamp(),
                                                      end=(to_datetime(ev.end) + step).timestamp())
            shifted += 1
        return shifted

    def _requeue(self, batch: list[SegmentEvent]) -> None:
        """Failed rows go back in front, in order; a newer submit of the same path wins."""
        for ev in reversed(batch):
            newer = self._pending.get(ev.path)
            if newer is not None and SOURCE_RANK[newer.source] >= SOURCE_RANK[ev.source]:
                continue
            self._pending[ev.path] = ev
            self._pending.move_to_end(ev.path, last=False)
        limit = self._config.database.pending_max_rows
        while len(self._pending) > limit:
            self._pending.popitem(last=False)
            metrics.INDEX_DROPPED.inc()
            self._reconcile_owed = True

    def _committed(self, batch: list[SegmentEvent], written_sources: list[str]) -> None:
        """``batch``: the rows the server accepted (written, or kept because it had a better one)."""
        now = time.time()
        lag_max = 0.0
        for ev in batch:
            if ev.source in LAG_SOURCES:
                lag = now - ev.closed_at
                metrics.INDEX_LAG.observe(lag)
                lag_max = max(lag_max, lag)
            self._remember(ev.path)
        for source, count in Counter(written_sources).items():
            metrics.INDEXED_ROWS.labels(source).inc(count)
        if not self._pending and self._dropping:
            self._dropping = False
        log.debug("segment_indexed", count=len(batch), written=len(written_sources),
                  lag=round(lag_max, 4), pending=self.pending_count)
        if self.commit_hook is not None:
            self.commit_hook(batch, now)

    def _remember(self, path: str) -> None:
        self._recent[path] = None
        if len(self._recent) > RECENT_MAX:
            self._recent.popitem(last=False)

    # ----------------------------------------------------------------- cameras, reconcile, watcher

    async def _sync_cameras(self) -> bool:
        """Mirror the config's cameras into the cameras table (and flag those that left it).

        False when the database was too slow (tried again after a pause)."""
        self._cameras_dirty = False
        cams = self._config.cameras
        try:
            async with self.database.acquire("cameras") as conn, conn.transaction():
                await conn.execute(queries.UPSERT_CAMERAS, [c.id for c in cams], [c.name for c in cams],
                                   [c.tenant for c in cams], [c.plan for c in cams],
                                   [c.retention_days for c in cams], [c.max_bytes for c in cams],
                                   [c.enabled for c in cams])
                await conn.execute(queries.MARK_REMOVED_CAMERAS, [c.id for c in cams])
        except DatabaseUnavailable as exc:
            self._cameras_dirty = True
            return not isinstance(exc, DatabaseBusy)
        except asyncpg.PostgresError as exc:
            log.error("cameras_sync_failed", reason=str(exc)[:200])
        return True

    @property
    def _reconciling(self) -> bool:
        return self._reconcile_task is not None and not self._reconcile_task.done()

    def _start_reconcile(self) -> None:
        if self._reconciling or self._closing.is_set():
            self._reconcile_owed = True
            return
        self._reconcile_owed = False
        self._reconcile_task = asyncio.create_task(self._reconcile_guarded(), name="index-reconcile")

    async def _reconcile_guarded(self) -> None:
        try:
            stats = await self.reconciler.run()
            if stats.deletions_skipped:
                self._reconcile_when_storage_ok = True
            if stats.fresh:
                await self.reconciler.settle_fresh(stats.fresh)
        except DatabaseBusy:
            # slow, not down: no reconnect will restart it, and retrying at once only adds load
            await self._sleep(RECONCILE_BUSY_PAUSE)
            self._reconcile_owed = True
            self._wake.set()
        except DatabaseUnavailable:
            self._reconcile_owed = True  # the next connect starts it again anyway
        except Exception as exc:  # a bad file tree or statement: say so, keep recording and indexing
            log.error("reconcile_failed", reason=repr(exc)[:200])

    async def _run_watcher(self) -> None:
        watcher = Watcher(self._config.storage.root, current_files=self.current_files,
                          is_known=self.is_known, on_settled=self.index_found, on_lost=self._start_reconcile)
        await watcher.run()

    async def index_found(self, files: list[FoundFile], source: str = "watch") -> int:
        """Probe files found on disk and index them as ``source`` rows; returns how many.

        Watcher finds go through the pending queue like any event; reconcile writes its chunk
        directly (raising ``DatabaseUnavailable``) so a huge backlog cannot overflow the queue.
        Files the database already has are skipped without probing when it can tell.
        """
        todo = [f for f in files if not self.is_known(f.path)]
        if not todo:
            return 0
        checked = False
        try:
            async with self.database.acquire(source) as conn:
                existing = {r[0] for r in await conn.fetch(queries.EXISTING_PATHS, [f.path for f in todo])}
            todo = [f for f in todo if f.path not in existing]
            checked = True
        except DatabaseUnavailable:
            if source == "reconcile":
                raise
            # a lower-ranked duplicate is harmless: the upsert keeps the better row
        # header-only files are never probed; deleted only if the index surely has no row for them
        # ... and never while the storage volume is in doubt: nothing is deleted on the wrong disk
        todo = await self.reconciler.remove_header_only(todo, remove=checked and self._storage_ok_now())
        results = await asyncio.gather(*(self._probe(f.path) for f in todo))
        now = time.time()
        events: list[SegmentEvent] = []
        for found, duration in zip(todo, results, strict=True):
            if duration is None:
                self.reconciler.unreadable(found)
                continue
            start = start_time(found, duration)
            ev = self._validate(SegmentEvent(
                camera_id=found.camera_id, path=found.path, start=start, end=start + duration,
                size_bytes=found.size, run_id=None, seq=None, source=source, closed_at=now))
            if ev is not None and not self.is_known(ev.path):
                events.append(ev)
        if source != "reconcile":
            for ev in events:
                self.submit(ev)
        elif events:
            async with self.database.acquire(source) as conn:
                written = await self._insert(conn, events)
            self._committed(events, written)
        return len(events)

    async def _cancel_helpers(self) -> None:
        tasks = [t for t in (self._reconcile_task, self._watch_task) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

    # ----------------------------------------------------------------- validation

    def _validate(self, ev: SegmentEvent) -> SegmentEvent | None:
        """Refuse what PostgreSQL would refuse, so one bad event can never poison a batch."""
        reason = None
        if type(ev.path) is not str or not ev.path.startswith("/"):
            reason = "path must be absolute"
        elif type(ev.camera_id) is not str or not ev.camera_id:
            reason = "camera_id missing"
        elif ev.source not in SOURCE_RANK:
            reason = f"unknown source {ev.source!r}"
        elif not (_finite(ev.start) and _finite(ev.end) and _finite(ev.closed_at)):
            reason = "non-finite time"
        elif ev.end < ev.start:
            reason = "end before start"
        elif type(ev.size_bytes) is not int or not 0 <= ev.size_bytes <= INT64_MAX:
            reason = "bad size_bytes"
        elif ev.seq is not None and (type(ev.seq) is not int or not 0 <= ev.seq <= INT32_MAX):
            reason = "bad seq"
        if reason is not None:
            log.error("segment_rejected", path=str(ev.path), reason=reason)
            return None
        if ev.run_id is None:
            return ev
        cached = self._run_uuid_cache
        if cached is not None and cached[0] == ev.run_id:
            norm = cached[1]
        else:
            try:
                norm = str(uuid.UUID(ev.run_id))
            except (ValueError, TypeError, AttributeError):
                log.warning("segment_rejected", path=ev.path, reason="run_id is not a UUID; stored as NULL")
                norm = ""
            self._run_uuid_cache = (ev.run_id, norm)
        if norm == ev.run_id:
            return ev
        return SegmentEvent(ev.camera_id, ev.path, ev.start, ev.end, ev.size_bytes, norm or None, ev.seq,
                            ev.source, ev.closed_at)


def _finite(x: object) -> bool:
    return (type(x) is float or type(x) is int) and math.isfinite(x)


def to_datetime(epoch: float) -> datetime:
    """Same rounding as layout.iso, to the microsecond PostgreSQL keeps."""
    return datetime.fromtimestamp(epoch, UTC)


def segment_arrays(batch: list[SegmentEvent]) -> tuple[list[Any], ...]:
    """Column arrays for queries.UPSERT_SEGMENTS."""
    return (
        [e.camera_id for e in batch],
        [to_datetime(e.start) for e in batch],
        [to_datetime(e.end) for e in batch],
        [round(e.end - e.start, 6) for e in batch],
        [e.size_bytes for e in batch],
        [e.path for e in batch],
        [e.run_id for e in batch],
        [e.seq for e in batch],
        [e.source for e in batch],
        [SOURCE_RANK[e.source] for e in batch],
    )
