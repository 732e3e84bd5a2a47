"""Retention sweeper: deletes footage by age, per-camera cap and free-space floor, never in the way.

Deletion is crash-safe in three committed steps: mark rows ``deleting``, unlink the files (in a worker
thread, one call per batch), delete the rows; whatever a crash leaves marked is finished on the next
start. The decisions (what goes, in which order) are pure functions below; ``Sweeper`` only feeds
them rows from the index and carries them out. The free-space floor keeps working from the
filesystem alone while the database is down.

Two gates can hold deletions back. The clock gate (a wall clock that just stepped makes everything
look old) refuses age deletions only: the cap and the floor do not read the clock. The storage gate
(the volume marker is missing or not verified yet: the files we see may be on the filesystem under an
unmounted disk) refuses every deletion. Each closed gate is one ``retention_paused`` line per episode
and ``recorderd_retention_paused{reason}`` = 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Container, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NamedTuple, Protocol

import asyncpg

from recorderd.archive import delete_with_objects, note_floor_unarchived
from recorderd.config import DEFAULT_PLANS, Config
from recorderd.db import DatabaseUnavailable, is_connection_error
from recorderd.diskguard import (
    MARKER_MISSING,
    DiskCheck,
    DiskGuard,
    DiskUsage,
    Outcome,
    Pair,
    PathSet,
    ProtectedPaths,
    SegmentRow,
    UnlinkResult,
    is_deletable,
    remove_empty_day_dirs,
    select_for_floor,
    unlink_batch,
)
from recorderd.layout import iso
from recorderd.logging import get_logger
from recorderd.metrics import (
    EARLY_DELETED,
    EARLY_DELETED_BYTES,
    RETENTION_DELETED,
    RETENTION_DELETED_BYTES,
    RETENTION_LAST_SWEEP,
    RETENTION_PAUSED,
    STORAGE_USED,
    SWEEP_DURATION,
    note_segment_end,
)
from recorderd.objectstore import ObjectStore

log = get_logger()
DAY = 86400.0
_TS_MIN = datetime(1900, 1, 1, tzinfo=UTC)
_TS_MAX = datetime(9999, 1, 1, tzinfo=UTC)
_LOG_BUDGET = 50  # refused/failed lines per sweep or check; the rest are counted in the summary


class Database(Protocol):
    """What the sweeper needs of ``recorderd.db.Database``."""

    @property
    def up(self) -> bool: ...

    def acquire(self) -> AbstractAsyncContextManager[Any]: ...


# --------------------------------------------------------------------------- pure selection logic


@dataclass(frozen=True, slots=True)
class Policy:
    camera_id: str
    retention_days: int
    max_bytes: int | None
    tenant: str | None
    source: str  # config | index | default


def default_retention_days(config: Config) -> int:
    """For footage of a camera neither the config nor the cameras table knows: the longest plan.

    Unknown must never mean "deleted earlier than any plan would"; the free-space floor still
    protects the disk.
    """
    return max((p.retention_days for p in config.plans.values()), default=max(DEFAULT_PLANS.values()))


def resolve_policies(config: Config, table: Iterable[Policy], camera_ids: Iterable[str]) -> dict[str, Policy]:
    """Config first (live reload wins), then the cameras table (cameras removed from the config keep
    the retention recorded there), then the default for footage nobody knows."""
    out = {c.id: Policy(c.id, c.retention_days, c.max_bytes, c.tenant, "config") for c in config.cameras}
    for pol in table:
        out.setdefault(pol.camera_id, pol)
    days = default_retention_days(config)
    for cam in camera_ids:
        out.setdefault(cam, Policy(cam, days, None, None, "default"))
    return out


def select_expired(rows: Iterable[SegmentRow], cutoff: float, current: Container[str]) -> list[SegmentRow]:
    """Unprotected, not being written, ended before ``cutoff``; oldest first."""
    chosen = [r for r in rows if r.end < cutoff and is_deletable(r, current)]
    return sorted(chosen, key=lambda r: (r.end, r.start, r.id))


def select_over_cap(rows_oldest_first: Iterable[SegmentRow], total: int, max_bytes: int,
                    current: Container[str]) -> list[SegmentRow]:
    """Oldest deletable rows until the camera's unprotected ``total`` fits in ``max_bytes``."""
    chosen: list[SegmentRow] = []
    for row in rows_oldest_first:
        if total <= max_bytes:
            break
        if is_deletable(row, current):
            chosen.append(row)
            total -= row.size
    return chosen


def expiring_notice(oldest_start: float, retention_days: int, now: float) -> tuple[str, float] | None:
    """(day, expires_at) when the oldest day's footage is all gone within a day, else None.

    A day has expired once its last minute is older than the retention: (day + 1) + retention.
    """
    day_start = datetime.fromtimestamp(oldest_start, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    expires_at = day_start.timestamp() + DAY + retention_days * DAY
    if now >= expires_at - DAY:
        return day_start.strftime("%Y-%m-%d"), expires_at
    return None


# --------------------------------------------------------------------------- reports


@dataclass(slots=True)
class ReasonStats:
    count: int = 0
    bytes: int = 0
    oldest: float | None = None  # start of the oldest segment removed
    newest: float | None = None


@dataclass(slots=True)
class SweepReport:
    by_reason: dict[str, ReasonStats] = field(default_factory=dict)
    missing: int = 0  # file already gone: row removed
    refused: int = 0  # path failed the safety checks: row removed, file left
    failed: int = 0  # unlink error: row kept for the next sweep
    dirs_removed: int = 0
    db_up: bool = True
    duration: float = 0.0

    @property
    def deleted(self) -> int:
        return sum(s.count for s in self.by_reason.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.by_reason.values())

    def add(self, reason: str, row: SegmentRow) -> None:
        s = self.by_reason.setdefault(reason, ReasonStats())
        s.count += 1
        s.bytes += row.size
        s.oldest = row.start if s.oldest is None else min(s.oldest, row.start)
        s.newest = row.start if s.newest is None else max(s.newest, row.start)


# --------------------------------------------------------------------------- SQL

def load_queries(text: str) -> dict[str, str]:
    """``-- name: x`` blocks of a .sql file; comment lines are dropped."""
    blocks = re.split(r"^--\s*name:\s*(\w+)[ \t]*$", text, flags=re.M)
    return {name: "\n".join(ln for ln in body.splitlines() if not ln.lstrip().startswith("--")).strip()
            for name, body in zip(blocks[1::2], blocks[2::2], strict=True)}


Q = load_queries(resources.files("recorderd.sql").joinpath("retention.sql").read_text(encoding="utf-8"))


def _row(rec: Any) -> SegmentRow:
    return SegmentRow(rec["id"], rec["camera_id"], rec["path"], rec["start_time"].timestamp(),
                      rec["end_time"].timestamp(), rec["size_bytes"], rec["protected"], rec["object_url"],
                      rec["archived"])


# database trouble: logged, never fatal (statement errors included: the floor must keep running)
DB_ERRORS = (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError,
             asyncpg.exceptions.InternalClientError, OSError, TimeoutError)
FLOOR_DB_TIMEOUT = 5.0  # the floor would rather scan the disk than wait on a hung database


# --------------------------------------------------------------------------- gates

Gate = Callable[[], "str | None"]  # None: fine; else why deletions must wait (for the log and /healthz)
CLOCK_UNTRUSTED = "clock_untrusted"
STORAGE_MISSING = "storage_missing"
_CLOCK_SKIPS = ("age", "empty_day_dirs", "expiry_notices")  # what reads the wall clock
_STORAGE_SKIPS = ("age", "cap", "floor", "recovery", "empty_day_dirs")  # every deletion


def _always_fine() -> str | None:
    return None


class CameraUsage(NamedTuple):
    bytes: int
    oldest: float | None  # epoch seconds of the oldest deletable footage


class RetentionPaused(Exception):
    """The storage gate closed in the middle of a sweep: stop deleting now."""


class PauseEpisode:
    """One gate's state as operators see it: the ``recorderd_retention_paused{reason}`` gauge, one
    ``retention_paused`` line when an episode starts and one ``retention_resumed`` when it ends (a gate
    asked every two seconds must not log every two seconds)."""

    def __init__(self, key: str, gate: Gate, skipped: Sequence[str]) -> None:
        self.key = key
        self.gate = gate
        self.skipped = list(skipped)
        self.reason: str | None = None
        self._since = 0.0
        RETENTION_PAUSED.labels(key).set(0)

    def check(self) -> bool:
        """Ask the gate; True while it is closed. A gate that raises counts as closed."""
        try:
            reason = self.gate()
        except Exception as exc:  # a broken gate must fail closed, not kill the sweeper
            reason = f"gate failed: {exc!r}"
        if reason is not None and self.reason is None:
            self._since = time.monotonic()
            RETENTION_PAUSED.labels(self.key).set(1)
            log.warning("retention_paused", reason=self.key, detail=reason, skipped=self.skipped)
        elif reason is None and self.reason is not None:
            RETENTION_PAUSED.labels(self.key).set(0)
            log.info("retention_resumed", reason=self.key, paused_seconds=round(time.monotonic() - self._since, 1))
        self.reason = reason
        return reason is not None


# --------------------------------------------------------------------------- the sweeper


class Sweeper:
    """The daemon's retention task: ``await run()``; ``update_config()`` on reload.

    ``clock_gate`` / ``storage_gate`` return None while deleting is fine, else a reason (see the module
    docstring). ``volume_marker`` (a path relative to the root, e.g. ``.recorderd/volume.json``) makes
    every unlink batch check, through the very directory descriptor it unlinks with, that the marker
    is there: the gate is polled, the disk can go between two polls.
    """

    def __init__(self, config: Config, db: Database, current_files: Callable[[], set[str]],
                 clock: Callable[[], float] = time.time, *, clock_gate: Gate = _always_fine,
                 storage_gate: Gate = _always_fine, volume_marker: str | None = None,
                 index_never_reached: Callable[[], bool] | None = None,
                 objects: Callable[[], ObjectStore | None] = lambda: None) -> None:
        self._config = config
        self._db = db
        self._current_files = current_files
        self._clock = clock
        self._clock_pause = PauseEpisode(CLOCK_UNTRUSTED, clock_gate, _CLOCK_SKIPS)
        self._storage_pause = PauseEpisode(STORAGE_MISSING, storage_gate, _STORAGE_SKIPS)
        self._volume_marker = volume_marker
        self._index_never_reached = index_never_reached
        self._objects = objects  # the archive's store: archived rows go with their objects
        self._protected = ProtectedPaths(config.storage.root)
        self._inflight: set[int] = set()  # marked by a batch in progress: not "interrupted"
        self._announced: dict[str, str] = {}  # camera -> oldest day announced as expiring
        self._logged_paths: set[str] = set()
        self._log_budget = _LOG_BUDGET
        self._db_trouble_logged = False
        self._usage_cameras: set[str] = set()
        # per camera: footage bytes and oldest deletable start, from the last survey (the API reads it
        # instead of summing millions of rows per request)
        self.camera_usage: dict[str, CameraUsage] = {}
        self._wake = asyncio.Event()
        self._guard = DiskGuard(self)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def volume_marker(self) -> str | None:
        return self._volume_marker

    @property
    def last_usage(self) -> tuple[DiskUsage, float] | None:
        """The storage filesystem's last statvfs that worked and its ``time.monotonic()``; None before the
        first or after a failed one. Read by /metrics and /healthz, which must never statvfs themselves."""
        return self._guard.last

    def disk_answer_age(self, now: float | None = None) -> float:
        """Seconds (monotonic) since statvfs last answered, with a value or an error; counted from the
        sweeper's creation until the first. Grows without bound while the mount hangs."""
        return (time.monotonic() if now is None else now) - self._guard.answered_at

    def deletion_paused(self) -> bool:
        """True while the storage gate is closed (asks it, updates the pause metric and log)."""
        return self._storage_pause.check()

    def update_config(self, config: Config) -> None:
        """Live reload: the next sweep (started now) uses the new plans, caps and floor."""
        if config.storage.root != self._config.storage.root:
            self._protected = ProtectedPaths(config.storage.root)
        self._config = config
        self._wake.set()

    # ---- daemon loop

    async def run(self) -> None:
        """Check the disk every few seconds from the start; finish interrupted deletions, then sweep every
        interval. The disk loop does not wait for the database: it feeds /healthz and defends the floor."""
        tasks = [asyncio.create_task(self._disk_loop(), name="retention-disk"),
                 asyncio.create_task(self._sweep_loop(), name="retention-sweep")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # only a programming error gets here
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        await self.finish_interrupted()
        while True:
            self._wake.clear()
            await self.sweep_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self._config.retention.interval_seconds)
            except TimeoutError:
                pass

    async def _disk_loop(self) -> None:
        while True:
            await self.check_disk_once()
            await asyncio.sleep(self._config.retention.disk_check_seconds)

    # ---- database helpers

    async def _fetch(self, sql: str, *args: Any, limit_s: float | None = None) -> list[Any]:
        async with self._db.acquire() as conn:
            return list(await conn.fetch(sql, *args, timeout=limit_s))

    async def _execute(self, sql: str, *args: Any) -> None:
        async with self._db.acquire() as conn:
            await conn.execute(sql, *args)

    def _db_trouble(self, exc: BaseException | None) -> None:
        if isinstance(exc, asyncpg.PostgresError) and not is_connection_error(exc):
            log.error("retention_db_error", error=type(exc).__name__, sqlstate=exc.sqlstate, detail=str(exc))
        elif not self._db_trouble_logged:
            self._db_trouble_logged = True
            # the indexer already logs database_down at warning; at start-up this is only a wait
            log.info("retention_db_unavailable", error=type(exc).__name__ if exc else "database down",
                        detail=str(exc) if exc else "")

    def current(self) -> PathSet:
        """The files being written, compared in canonical spelling (see ``RootSpellings``)."""
        return PathSet(self._current_files(), self._protected.roots.canon)

    async def _learn(self, rows: Sequence[SegmentRow]) -> None:
        """Resolve root spellings the rows use that we have not seen (a thread hop only when needed)."""
        paths = [r.path for r in rows]
        if self._protected.roots.unknown(paths):
            await asyncio.to_thread(self._protected.roots.learn, paths)

    # ---- crash recovery

    async def finish_interrupted(self) -> SweepReport:
        """Finish rows a crash left marked ``deleting``: unlink if still there, then drop the row."""
        report = SweepReport()
        if self.deletion_paused():
            return report  # every sweep tries again
        if not self._db.up:
            report.db_up = False
            return report
        try:
            await self._finish(report)
        except RetentionPaused:
            pass
        except DB_ERRORS as exc:
            report.db_up = False
            self._db_trouble(exc)
        stats = report.by_reason.get("recovery")
        if stats or report.missing:
            log.info("retention_recovered", count=stats.count if stats else 0,
                     bytes=stats.bytes if stats else 0, missing=report.missing, refused=report.refused,
                     failed=report.failed)
        return report

    async def _finish(self, report: SweepReport) -> None:
        after = 0
        while True:
            recs = await self._fetch(Q["interrupted"], after, list(self._inflight), self._config.retention.batch_size)
            if not recs:
                return
            after = recs[-1]["id"]
            rows = [_row(r) for r in recs]
            await self._learn(rows)
            current = self.current()
            keep = {r.id for r in rows if not is_deletable(r, current)}  # protected since, or being written
            if keep:
                await self._execute(Q["unmark"], list(keep))
            await self._delete([r for r in rows if r.id not in keep], "recovery", report, marked=True)

    # ---- deleting one batch

    async def _delete(self, rows: Sequence[SegmentRow], reason: str, report: SweepReport, *,
                      marked: bool = False) -> list[Pair]:
        """Mark, unlink (one thread call), delete rows. Returns what happened to each marked row."""
        if not rows:
            return []
        if self.deletion_paused():
            raise RetentionPaused  # asked per batch: a long sweep stops as soon as the volume goes
        if not marked:  # re-checks "not protected" atomically: a clip protected meanwhile is skipped
            rows = [_row(r) for r in await self._fetch(Q["mark"], [r.id for r in rows])]
        ids = {r.id for r in rows}
        self._inflight |= ids
        try:
            root = self._config.storage.root
            results = await asyncio.to_thread(unlink_batch, root, [(r.camera_id, r.path) for r in rows],
                                              marker=self._volume_marker)
            if any(res.detail == MARKER_MISSING for res in results):  # nothing was unlinked
                if not marked:  # a crash's marks stay: that decision is finished once the volume is back
                    await self._execute(Q["unmark"], list(ids))
                raise RetentionPaused
            pairs = await delete_with_objects(self._objects(), list(zip(rows, results, strict=True)))
            self._account(pairs, reason, report)
            done = [r.id for r, res in pairs if res.outcome is not Outcome.FAILED]
            retry = [r.id for r, res in pairs if res.outcome is Outcome.FAILED]
            if done:
                await self._execute(Q["delete"], done)
            if retry:
                await self._execute(Q["unmark"], retry)
        finally:
            self._inflight -= ids
        return pairs

    def _account(self, pairs: Sequence[Pair], reason: str, report: SweepReport) -> None:
        count = nbytes = 0
        for row, res in pairs:
            if res.outcome is Outcome.DELETED:
                report.add(reason, row)
                count += 1
                nbytes += row.size
            elif res.outcome is Outcome.MISSING:
                report.missing += 1
            elif res.outcome is Outcome.REFUSED:
                report.refused += 1
                self._log_path("retention_refused", row, res, "row dropped, file left in place")
            else:
                report.failed += 1
                self._log_path("retention_unlink_failed", row, res, "kept for the next sweep")
        if count:
            RETENTION_DELETED.labels(reason).inc(count)
            RETENTION_DELETED_BYTES.labels(reason).inc(nbytes)
        if count and reason == "disk":
            self._count_early([row for row, res in pairs if res.outcome is Outcome.DELETED])
            note_floor_unarchived(self._config, [row for row, res in pairs if res.outcome is Outcome.DELETED])

    def _count_early(self, rows: Sequence[SegmentRow]) -> None:
        """Floor deletions of footage its plan still promised: the disk is too small for the plans
        (``recorderd_retention_early_deleted_*``; ``recorderd storage`` shows the days that fit)."""
        now = self._clock()
        for row in rows:
            cam = self._config.camera(row.camera_id)
            if cam is not None and row.end > now - cam.retention_days * DAY:
                EARLY_DELETED.labels(row.camera_id).inc()
                EARLY_DELETED_BYTES.labels(row.camera_id).inc(row.size)

    def _log_path(self, event: str, row: SegmentRow, res: UnlinkResult, action: str) -> None:
        if row.path in self._logged_paths or self._log_budget <= 0:
            return
        self._log_budget -= 1
        if len(self._logged_paths) > 100_000:
            self._logged_paths.clear()
        self._logged_paths.add(row.path)
        log.error(event, camera=row.camera_id, path=row.path, reason=res.detail, action=action)

    # ---- the periodic sweep

    async def sweep_once(self) -> SweepReport:
        """One pass: finish leftovers, age and cap per camera, survey, empty day dirs. Never raises on
        database trouble or a bad file. With the storage gate closed only the survey runs (metrics);
        with the clock gate closed everything but age deletions and the clock-dated day dirs runs."""
        t0 = time.monotonic()
        cfg = self._config
        report = SweepReport()
        now = self._clock()
        self._log_budget = _LOG_BUDGET
        storage_paused = self.deletion_paused()
        clock_paused = self._clock_pause.check()
        if not self._db.up:
            report.db_up = False
            self._db_trouble(None)
        else:
            try:
                if not storage_paused:
                    await self._finish(report)
                table = [Policy(r["id"], r["retention_days"], r["max_bytes"], r["tenant"], "index")
                         for r in await self._fetch(Q["camera_table"])]
                cams = [r["camera_id"] for r in await self._fetch(Q["cameras_with_footage"])]
                policies = resolve_policies(cfg, table, cams)
                # no root (disk not mounted): every unlink would fail; the disk check logs it
                if (cfg.retention.enabled and not storage_paused
                        and await asyncio.to_thread(os.path.isdir, cfg.storage.root)):
                    if not clock_paused:
                        for pol in policies.values():
                            await self._sweep_age(pol, now, report)
                    for pol in policies.values():
                        if pol.max_bytes is not None:
                            await self._sweep_cap(pol, pol.max_bytes, report)
                await self._survey(policies, now, announce=cfg.retention.enabled and not clock_paused,
                                   save=not storage_paused)
                self._db_trouble_logged = False
                RETENTION_LAST_SWEEP.set(time.time())
            except RetentionPaused:
                storage_paused = True
            except DB_ERRORS as exc:
                report.db_up = False
                self._db_trouble(exc)
        if not storage_paused and not clock_paused and not self.deletion_paused():
            report.dirs_removed = await asyncio.to_thread(remove_empty_day_dirs, cfg.storage.root, now,
                                                          marker=self._volume_marker)
        report.duration = time.monotonic() - t0
        SWEEP_DURATION.observe(report.duration)
        for reason, s in report.by_reason.items():
            log.info("retention_sweep", reason=reason, count=s.count, bytes=s.bytes,
                     oldest=iso(s.oldest) if s.oldest is not None else None,
                     newest=iso(s.newest) if s.newest is not None else None,
                     missing=report.missing, refused=report.refused, failed=report.failed,
                     duration=round(report.duration, 3))
        return report

    async def _sweep_age(self, pol: Policy, now: float, report: SweepReport) -> None:
        cutoff = now - pol.retention_days * DAY
        async for rows, current in self._batches(pol.camera_id, datetime.fromtimestamp(cutoff, UTC)):
            await self._delete(select_expired(rows, cutoff, current), "age", report)

    async def _sweep_cap(self, pol: Policy, max_bytes: int, report: SweepReport) -> None:
        total: int = (await self._fetch(Q["camera_total"], pol.camera_id))[0][0]
        async for rows, current in self._batches(pol.camera_id, _TS_MAX):
            if total <= max_bytes:
                return
            local = [r for r in rows if not r.archived]  # the cap bounds this disk's share
            chosen = select_over_cap(local, total, max_bytes, current)
            pairs = await self._delete(chosen, "cap", report)
            failed = {r.id for r, res in pairs if res.outcome is Outcome.FAILED}
            total -= sum(r.size for r in chosen if r.id not in failed)  # also those protected meanwhile

    async def _batches(self, camera_id: str, cutoff: datetime) -> AsyncIterator[tuple[list[SegmentRow],
                                                                                      PathSet]]:
        """Oldest-first rows of one camera ending before ``cutoff``, keyset paged (rows skipped on purpose
        are read once), with the files being written right now; yields to the loop between batches."""
        batch = self._config.retention.batch_size
        key: tuple[datetime, int] = (_TS_MIN, 0)
        while True:
            recs = await self._fetch(Q["oldest_of_camera"], camera_id, cutoff, key[0], key[1], batch)
            if not recs:
                return
            key = (recs[-1]["start_time"], recs[-1]["id"])
            rows = [_row(r) for r in recs]
            await self._learn(rows)
            yield rows, self.current()
            await asyncio.sleep(0)
            if len(recs) < batch:
                return

    async def _survey(self, policies: Mapping[str, Policy], now: float, *, announce: bool, save: bool = True) -> None:
        """Storage per camera, the protected-paths copy and expiry notices, from one scan of the index.
        ``save=False``: the copy is kept in memory only (the volume is not verified)."""
        recs = await self._fetch(Q["survey"])
        protected: list[str] = []
        seen: set[str] = set()
        for r in recs:
            cam = r["camera_id"]
            seen.add(cam)
            STORAGE_USED.labels(cam).set(r["used"])
            if r["newest"] is not None and self._config.camera(cam) is not None:
                note_segment_end(cam, r["newest"].timestamp())  # "down since" survives a restart
            protected.extend(r["protected"] or ())
            pol = policies.get(cam)
            if announce and pol is not None and r["oldest"] is not None:
                notice = expiring_notice(r["oldest"].timestamp(), pol.retention_days, now)
                if notice is not None and self._announced.get(cam) != notice[0]:
                    self._announced[cam] = notice[0]
                    log.info("recordings_expiring", camera=cam, tenant=pol.tenant, day=notice[0],
                             expires_at=iso(notice[1]))
        for cam in self._usage_cameras - seen:
            STORAGE_USED.labels(cam).set(0)
        self._usage_cameras = seen
        self.camera_usage = {r["camera_id"]: CameraUsage(int(r["used"]), r["oldest"].timestamp()
                                                         if r["oldest"] is not None else None) for r in recs}
        await asyncio.to_thread(lambda: self._protected.replace(protected, save=save))

    # ---- the index side of the free-space floor (see diskguard.DiskGuard)

    async def check_disk_once(self) -> DiskCheck:
        """statvfs; below the floor delete the oldest unprotected footage until floor + margin (not while
        the storage gate is closed)."""
        self._log_budget = _LOG_BUDGET
        self._clock_pause.check()  # keeps its gauge current between sweeps; the floor ignores the clock
        return await self._guard.check()

    @property
    def protected(self) -> ProtectedPaths:
        return self._protected

    def account(self, pairs: Sequence[Pair], reason: str) -> None:
        self._account(pairs, reason, SweepReport())

    async def floor_from_index(self, guard: DiskGuard, check: DiskCheck) -> None:
        """Oldest unprotected indexed footage across cameras, batch by batch, until the target."""
        key: tuple[datetime, int] = (_TS_MIN, 0)
        batch = self._config.retention.batch_size
        try:
            while check.free < check.target and self._db.up:
                recs = await self._fetch(Q["oldest_all"], key[0], key[1], batch, limit_s=FLOOR_DB_TIMEOUT)
                if not recs:
                    return
                key = (recs[-1]["end_time"], recs[-1]["id"])
                rows = [_row(r) for r in recs]
                await self._learn(rows)
                chosen = select_for_floor(rows, check.target - check.free, self.current(), self._protected, batch)
                pairs = await self._delete(chosen, "disk", SweepReport())
                await guard.note_batch(check, pairs, "index")
                if pairs and not any(res.outcome is Outcome.DELETED for _, res in pairs):
                    return  # the index's oldest files are not on this disk (gone, unmounted): scan instead
        except RetentionPaused:
            return
        except DB_ERRORS as exc:
            self._db_trouble(exc)

    async def refresh_protected(self) -> None:
        if self._db.up:
            try:
                paths = [r["path"] for r in await self._fetch(Q["protected_paths"], limit_s=FLOOR_DB_TIMEOUT)]
                save = not self._storage_pause.reason
                await asyncio.to_thread(lambda: self._protected.replace(paths, save=save))
            except DB_ERRORS as exc:
                self._db_trouble(exc)

    async def floor_unindexed(self) -> bool:
        """The floor may delete oldest-first with nothing protected: no index database was ever reached
        for this root (the volume says so) and no protected list was ever saved under it."""
        if self._index_never_reached is None or not self._index_never_reached():
            return False
        return not await asyncio.to_thread(self._protected.file.exists)

    async def forget_paths(self, paths: list[str]) -> None:
        """Rows of files the filesystem fallback removed; else the indexer's reconcile drops them."""
        if self._db.up:
            try:
                await self._execute(Q["delete_paths"], paths)
            except DB_ERRORS as exc:
                self._db_trouble(exc)
