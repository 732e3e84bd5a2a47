"""Saved clips: a period of one camera cut into ``<root>/clips/<camera_id>/<id>.mp4``, kept until a user
deletes it. Retention, caps and the free-space floor never touch them (their scans skip ``clips``).

Creating one is crash-safe in three committed steps, like retention's deletions:

1. *reserve*: under a per-camera advisory lock, count the camera's clips against its plan's
   ``max_clips`` and insert a ``pending`` row (which counts from then on, so two concurrent creates at
   the limit cannot both pass) with a deadline, ``pending_until``;
2. *cut*: ``export.cut`` writes a temp file beside ``<id>.mp4``, fsyncs it and renames it into place;
3. *finish*: the row becomes ``ready`` with the real period and size.

Only ``ready`` rows are clips: ``list``, ``get``, ``rename`` and ``delete`` never see the others. A
failed or cancelled create removes its file and row at once; a crash leaves a ``pending`` row (and
maybe a file or a temp file) that ``recover`` removes once its deadline has passed: file first, then
row, so what is left is never a row without its file. Deleting marks the row ``deleting``, unlinks the
file, drops the row; ``recover`` finishes what a crash interrupted. So after any crash and a
``recover`` there is either a ready row and its complete file, or neither.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import getpass
import json
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from recorderd import layout, queries
from recorderd.archive import store_for
from recorderd.config import CAMERA_ID_RE, Config
from recorderd.db import Database, DatabaseUnavailable
from recorderd.export import (
    CUT_TIMEOUT,
    EXIT_OK,
    EXIT_USAGE,
    NO_SCHEMA,
    BadPeriod,
    CutFailed,
    CutResult,
    ExportError,
    NoFootage,
    check_period,
    cli_connect,
    cli_fail,
    cli_period,
    connection,
    cut,
    describe,
    segments_for,
)
from recorderd.logging import get_logger

__all__ = ["MAX_CLIP_SECONDS", "NAME_MAX", "BadName", "BadPeriod", "Clip", "ClipError", "ClipLimit",
           "ClipNotFound", "CutFailed", "NoFootage", "StorageUnavailable", "UnknownCamera", "check_name",
           "clip_path", "create", "create_clip", "delete", "get", "list", "recover", "rename"]

log = get_logger(component="clips")

MAX_CLIP_SECONDS = 86400.0  # a clip covers at most 24 h
NAME_MAX = 200
PENDING_MARGIN = 120.0  # beyond the cut's timeout: probe, fsync and the finishing update
VOLUME_MARKER = f"{layout.STATE_DIR}/volume.json"  # recorderd.volume.MARKER_REL: the disk is mounted
_TEMP_RE = re.compile(r"^\.([0-9]+)\.mp4\..*\.part\Z")
_BIDI = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
_DB_TROUBLE = (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class ClipError(ExportError):
    """A clip request that cannot be done; the message is one line for the user."""


class ClipNotFound(ClipError):
    def __init__(self, clip_id: int) -> None:
        self.clip_id = clip_id
        super().__init__(f"no clip {clip_id}")


class ClipLimit(ClipError):
    def __init__(self, camera_id: str, plan: str, limit: int, count: int) -> None:
        self.camera_id, self.plan, self.limit, self.count = camera_id, plan, limit, count
        super().__init__(f"camera {camera_id} has {count} clip{'s' if count != 1 else ''}: its plan {plan!r} "
                         f"allows {limit}; delete one first")


class BadName(ClipError, ValueError):
    """The name is empty, longer than ``NAME_MAX`` or holds control characters."""


class UnknownCamera(ClipError):
    def __init__(self, camera_id: str) -> None:
        self.camera_id = camera_id
        super().__init__(f"unknown camera {camera_id!r}")


class StorageUnavailable(ClipError):
    """The storage volume is not there (unmounted?): a clip would land on the wrong disk."""


@dataclass(frozen=True, slots=True)
class Clip:
    id: int
    camera_id: str
    name: str
    start: datetime  # wall time of the first frame (a keyframe at or before the start asked for)
    end: datetime
    size_bytes: int
    created_at: datetime
    path: str  # <root>/clips/<camera_id>/<id>.mp4; never in the JSON
    created_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "camera_id": self.camera_id, "name": self.name,
                "start": _iso(self.start), "end": _iso(self.end),
                "duration_seconds": round((self.end - self.start).total_seconds(), 3),
                "size_bytes": self.size_bytes, "created_at": _iso(self.created_at), "created_by": self.created_by}


def _iso(dt: datetime) -> str:
    return layout.iso(dt.timestamp())


def _clip(r: Any) -> Clip:
    return Clip(id=r["id"], camera_id=r["camera_id"], name=r["name"], start=r["start_time"], end=r["end_time"],
                size_bytes=r["size_bytes"] or 0, created_at=r["created_at"], path=r["path"],
                created_by=r["created_by"])


def check_name(name: object) -> str:
    """The name stripped, or ``BadName``: 1-200 characters, no control characters (nor line
    separators or bidi overrides that make a name display as something else)."""
    if not isinstance(name, str):
        raise BadName("the name must be text")
    n = name.strip()
    if not n:
        raise BadName("the name must not be empty")
    if len(n) > NAME_MAX:
        raise BadName(f"the name is {len(n)} characters long; at most {NAME_MAX}")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI for ch in n):
        raise BadName("the name must not contain control characters")
    return n


def clip_path(root: Path, camera_id: str, clip_id: int) -> Path:
    return layout.clips_dir(root, camera_id) / f"{clip_id}.mp4"


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --------------------------------------------------------------------------- create


async def create(db: Database | asyncpg.Connection, config: Config, camera_id: str, start: datetime | float,
                 end: datetime | float, name: str, created_by: str | None = None, *, ffmpeg_bin: str = "ffmpeg",
                 timeout: float = CUT_TIMEOUT) -> Clip:
    """Cut [start, end) of ``camera_id`` into a new clip. See ``create_clip``."""
    clip, _ = await create_clip(db, config, camera_id, start, end, name, created_by, ffmpeg_bin=ffmpeg_bin,
                                timeout=timeout)
    return clip


async def create_clip(db: Database | asyncpg.Connection, config: Config, camera_id: str,
                      start: datetime | float, end: datetime | float, name: str, created_by: str | None = None, *,
                      ffmpeg_bin: str = "ffmpeg", timeout: float = CUT_TIMEOUT) -> tuple[Clip, CutResult]:
    """A new clip and how its cut went (``CutResult.gaps``: parts of the period without footage).

    Raises ``BadName``, ``UnknownCamera`` (not in the config), ``BadPeriod``, ``ClipLimit``,
    ``NoFootage``, ``StorageUnavailable``, ``CutFailed``, ``DatabaseUnavailable``. Cancelling it kills
    FFmpeg and removes the file and the row.
    """
    name = check_name(name)
    cam = config.camera(camera_id)
    if cam is None:
        raise UnknownCamera(camera_id)
    s, e = check_period(start, end, MAX_CLIP_SECONDS)
    plan = config.plans.get(cam.plan)
    limit = plan.max_clips if plan is not None else None
    root = config.storage.root
    by = created_by[:NAME_MAX] if created_by else None
    await recover(db, root, camera_id=camera_id, temps=False)  # dead reservations hold no slot

    async with connection(db, "clips") as conn:
        if limit is not None:  # early and cheap; checked again under the lock
            count = await conn.fetchval(queries.CLIP_COUNT, camera_id)
            if count >= limit:
                raise ClipLimit(camera_id, cam.plan, limit, count)
        files = await segments_for(conn, camera_id, s, e)
    if not files:
        raise NoFootage(f"no footage of {camera_id} between {layout.iso(s)} and {layout.iso(e)}")
    directory = await asyncio.to_thread(_ensure_dir, root, camera_id)

    async with connection(db, "clips") as conn, conn.transaction():
        await conn.execute(queries.CLIP_LOCK, camera_id)  # until commit: count + insert are one step
        if limit is not None:
            count = await conn.fetchval(queries.CLIP_COUNT, camera_id)
            if count >= limit:
                raise ClipLimit(camera_id, cam.plan, limit, count)
        row = await conn.fetchrow(queries.CLIP_RESERVE, camera_id, name, str(directory), by,
                                  float(timeout + PENDING_MARGIN))
    clip_id: int = row["id"]
    try:
        result = await cut(files, s, e, Path(row["path"]), root=root, ffmpeg_bin=ffmpeg_bin, timeout=timeout,
                           max_seconds=MAX_CLIP_SECONDS, store=store_for(config))
        async with connection(db, "clips") as conn:
            rec = await conn.fetchrow(queries.CLIP_FINISH, clip_id, _dt(result.start), _dt(result.end),
                                      result.size_bytes)
        if rec is None:
            raise CutFailed("the clip's reservation ran out while it was cut")
    except BaseException:
        await asyncio.shield(_abandon(db, root, camera_id, clip_id))
        raise
    clip = _clip(rec)
    log.info("clip_created", clip_id=clip.id, camera_id=camera_id, start=_iso(clip.start), end=_iso(clip.end),
             size_bytes=clip.size_bytes, files=result.files, gaps=len(result.gaps), created_by=by)
    return clip, result


def _ensure_dir(root: Path, camera_id: str) -> Path:
    """``<root>/clips/<camera_id>``, created if needed; never the root itself, never through a symlink."""
    if not CAMERA_ID_RE.match(camera_id):
        raise UnknownCamera(camera_id)
    try:
        os.stat(root / VOLUME_MARKER)
    except OSError:
        raise StorageUnavailable(f"storage {root} is not mounted (no {VOLUME_MARKER}): "
                                 "a clip would land on the wrong disk") from None
    d = layout.clips_dir(root, camera_id)
    for p in (d.parent, d):
        try:
            os.mkdir(p, 0o750)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageUnavailable(f"cannot create {p}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(os.lstat(p).st_mode):
            raise StorageUnavailable(f"{p} is not a directory (a symlink?)")
    return d


async def _abandon(db: Database | asyncpg.Connection, root: Path, camera_id: str, clip_id: int) -> None:
    """Undo a reservation whose cut failed: mark it, remove its files, drop the row. Left to
    ``recover`` when the database or the disk does not answer; untouched if it finished after all."""
    try:
        async with connection(db, "clips") as conn:
            mine = await conn.fetchval(queries.CLIP_ABANDON, clip_id)
        if mine is None:
            return  # ready (the finishing update went through after all) or already gone
        await asyncio.to_thread(_unlink_files, root, camera_id, clip_id)
        async with connection(db, "clips") as conn:
            await conn.execute(queries.CLIP_DROP, [clip_id])
    except _DB_TROUBLE as exc:
        log.warning("clip_cleanup_deferred", clip_id=clip_id, camera_id=camera_id, error=str(exc)[:200])


# --------------------------------------------------------------------------- files


def _unlink_files(root: Path, camera_id: str, clip_id: int, *, final: bool = True) -> None:
    """Remove ``<id>.mp4`` (unless not ``final``) and its temp files from ``<root>/clips/<camera_id>/``,
    walking with directory fds opened ``O_NOFOLLOW``: nothing but a regular file in that directory goes.
    Raises ``OSError`` except for files already gone. Blocking."""
    if not CAMERA_ID_RE.match(camera_id):
        raise OSError(errno.EINVAL, f"unsafe camera id {camera_id!r}")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        root_fd = os.open(root, flags)  # the root may be a symlink (the operator's)
    except FileNotFoundError:
        return
    fds = [root_fd]
    try:
        for part in (layout.CLIPS_DIR, camera_id):
            try:
                fds.append(os.open(part, flags | os.O_NOFOLLOW, dir_fd=fds[-1]))
            except FileNotFoundError:
                return
        d = fds[-1]
        name = f"{clip_id}.mp4"
        temps = [n for n in os.listdir(d) if n.startswith(f".{name}.") and n.endswith(".part")]
        for n in [name, *temps] if final else temps:
            try:
                st = os.lstat(n, dir_fd=d)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EPERM, f"not a regular file: {n}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(n, dir_fd=d)
    finally:
        for fd in fds:
            os.close(fd)


def _temp_files(root: Path) -> builtins.list[tuple[str, int, str]]:
    """(camera_id, clip id, name) of every temp file under ``<root>/clips``. Blocking."""
    out: builtins.list[tuple[str, int, str]] = []
    top = layout.clips_dir(root)
    try:
        cams = [e.name for e in os.scandir(top) if e.is_dir(follow_symlinks=False) and CAMERA_ID_RE.match(e.name)]
    except OSError:
        return out
    for cam in cams:
        try:
            names = os.listdir(top / cam)
        except OSError:
            continue
        out += [(cam, int(m[1]), n) for n in names if (m := _TEMP_RE.match(n))]
    return out


# --------------------------------------------------------------------------- recovery


async def recover(db: Database | asyncpg.Connection, root: Path, *, camera_id: str | None = None,
                  temps: bool = True) -> int:
    """Finish what a crash or a failed cleanup left: reservations past their deadline and interrupted
    deletions lose their files, then their rows. With ``temps``, also temp files of no live
    reservation. Returns the number of rows removed. The daemon runs it at start (and ``create`` for
    its camera); database trouble is left for the next call."""
    done: builtins.list[int] = []
    try:
        async with connection(db, "clips") as conn:
            await conn.execute(queries.CLIP_CLAIM_STALE, camera_id)
            rows = await conn.fetch(queries.CLIP_DELETING, camera_id)
        for r in rows:
            try:
                await asyncio.to_thread(_unlink_files, root, r["camera_id"], r["id"])
                done.append(r["id"])
            except OSError as exc:
                log.error("clip_cleanup_failed", clip_id=r["id"], camera_id=r["camera_id"], error=str(exc)[:200])
        if done:
            async with connection(db, "clips") as conn:
                await conn.execute(queries.CLIP_DROP, done)
            log.info("clips_recovered", count=len(done), ids=done[:20])
        if temps:
            found = await asyncio.to_thread(_temp_files, root)  # files first: a newer temp has a row already
            if found:
                async with connection(db, "clips") as conn:
                    live = {r[0] for r in await conn.fetch(queries.CLIP_PENDING_IDS)}
                for cam, cid in sorted({(cam, cid) for cam, cid, _ in found if cid not in live}):
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(_unlink_files, root, cam, cid, final=False)
    except asyncpg.UndefinedTableError:
        return 0  # no clips table yet: nothing to recover
    except _DB_TROUBLE as exc:
        log.warning("clip_recovery_deferred", error=str(exc)[:200])
    return len(done)


# --------------------------------------------------------------------------- list, get, rename, delete


async def list(db: Database | asyncpg.Connection, camera_id: str | None = None,
               tenants: Collection[str] | None = None) -> builtins.list[Clip]:
    """Ready clips, oldest first; of one camera, and/or of cameras of the given tenants (by the cameras
    table: a camera without a tenant is in none)."""
    async with connection(db, "clips") as conn:
        rows = await conn.fetch(queries.CLIP_LIST, camera_id, None if tenants is None else builtins.list(tenants))
    return [_clip(r) for r in rows]


async def get(db: Database | asyncpg.Connection, clip_id: int, *, tenants: Collection[str] | None = None) -> Clip:
    """One ready clip, or ``ClipNotFound`` (also when its camera is not of ``tenants``)."""
    async with connection(db, "clips") as conn:
        r = await conn.fetchrow(queries.CLIP_GET, clip_id, None if tenants is None else builtins.list(tenants))
    if r is None:
        raise ClipNotFound(clip_id)
    return _clip(r)


async def rename(db: Database | asyncpg.Connection, clip_id: int, name: str, *,
                 tenants: Collection[str] | None = None) -> Clip:
    name = check_name(name)
    async with connection(db, "clips") as conn:
        r = await conn.fetchrow(queries.CLIP_RENAME, clip_id, name,
                                None if tenants is None else builtins.list(tenants))
    if r is None:
        raise ClipNotFound(clip_id)
    return _clip(r)


async def delete(db: Database | asyncpg.Connection, clip_id: int, root: Path, *,
                 tenants: Collection[str] | None = None) -> Clip:
    """Mark, unlink the file, drop the row; returns the clip as it was. ``ClipNotFound`` if there is
    no ready clip ``clip_id``. An unlink error puts the clip back and raises ``ClipError``."""
    async with connection(db, "clips") as conn:
        r = await conn.fetchrow(queries.CLIP_MARK_DELETE, clip_id, None if tenants is None else builtins.list(tenants))
    if r is None:
        raise ClipNotFound(clip_id)
    clip = _clip(r)
    try:
        await asyncio.to_thread(_unlink_files, root, clip.camera_id, clip.id)
    except OSError as exc:
        async with connection(db, "clips") as conn:
            await conn.execute(queries.CLIP_UNMARK, clip_id)
        raise ClipError(f"cannot delete the file of clip {clip_id}: {exc.strerror or exc}") from None
    async with connection(db, "clips") as conn:
        await conn.execute(queries.CLIP_DROP, [clip_id])
    log.info("clip_deleted", clip_id=clip_id, camera_id=clip.camera_id, size_bytes=clip.size_bytes)
    return clip


# --------------------------------------------------------------------------- command line


async def _cli(config: Config, err: TextIO, body: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    """Connect, run ``body``, map domain errors to one line and an exit code (1: not found, limit,
    no footage, database; 2: bad request)."""
    conn = await cli_connect(config, err)
    if isinstance(conn, int):
        return conn
    try:
        return await body(conn)
    except (BadName, BadPeriod) as exc:
        return cli_fail(err, str(exc), EXIT_USAGE)
    except ExportError as exc:
        return cli_fail(err, str(exc))
    except asyncpg.UndefinedTableError:
        return cli_fail(err, NO_SCHEMA)
    except DatabaseUnavailable as exc:
        return cli_fail(err, str(exc))
    finally:
        await conn.close()


def _cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry, no LOGNAME (a bare container)
        return "cli"


async def cmd_clip_create(config: Config, camera_id: str, from_s: str, to_s: str, name: str, as_json: bool,
                          out: TextIO, err: TextIO | None = None, *, ffmpeg_bin: str = "ffmpeg",
                          created_by: str | None = None) -> int:
    err = err or sys.stderr
    period = cli_period(from_s, to_s, err, MAX_CLIP_SECONDS)
    if isinstance(period, int):
        return period
    try:
        check_name(name)
    except BadName as exc:
        return cli_fail(err, str(exc), EXIT_USAGE)
    by = created_by or _cli_user()

    async def body(conn: asyncpg.Connection) -> int:
        clip, result = await create_clip(conn, config, camera_id, period[0], period[1], name, by,
                                         ffmpeg_bin=ffmpeg_bin)
        if as_json:
            json.dump({**clip.to_json(), "cut": result.to_json()}, out, indent=2)
            out.write("\n")
        else:
            out.write(f"clip {clip.id} created for {clip.camera_id}: {clip.name}\n  " + "\n  ".join(describe(result))
                      + "\n")
        return EXIT_OK

    return await _cli(config, err, body)


async def cmd_clip_list(config: Config, camera_id: str | None, as_json: bool, out: TextIO,
                        err: TextIO | None = None) -> int:
    from recorderd.report import human_bytes, human_duration, render_table

    err = err or sys.stderr

    async def body(conn: asyncpg.Connection) -> int:
        if camera_id is not None and config.camera(camera_id) is None:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM clips WHERE camera_id = $1)", camera_id):
                known = ", ".join(c.id for c in config.cameras) or "none configured"
                return cli_fail(err, f"unknown camera {camera_id!r} (configured: {known})")
        found = await list(conn, camera_id)
        if as_json:
            json.dump({"clips": [c.to_json() for c in found], "total": len(found)}, out, indent=2)
            out.write("\n")
            return EXIT_OK
        if found:
            out.write(render_table(
                ["ID", "CAMERA", "START (UTC)", "LENGTH", "SIZE", "CREATED (UTC)", "BY", "NAME"],
                [[str(c.id), c.camera_id, _iso(c.start)[:19].replace("T", " "),
                  human_duration((c.end - c.start).total_seconds()), human_bytes(c.size_bytes),
                  _iso(c.created_at)[:19].replace("T", " "), c.created_by or "-", c.name] for c in found],
                right={0, 3, 4}))
        total = sum(c.size_bytes for c in found)
        out.write(f"{len(found)} clip{'s' if len(found) != 1 else ''}"
                  + (f" of {camera_id}" if camera_id else "") + f", {human_bytes(total)}\n")
        return EXIT_OK

    return await _cli(config, err, body)


async def cmd_clip_delete(config: Config, clip_id: int, out: TextIO, err: TextIO | None = None) -> int:
    err = err or sys.stderr

    async def body(conn: asyncpg.Connection) -> int:
        clip = await delete(conn, clip_id, config.storage.root)
        out.write(f"deleted clip {clip.id} of {clip.camera_id}: {clip.name}\n")
        return EXIT_OK

    return await _cli(config, err, body)


async def cmd_clip_rename(config: Config, clip_id: int, name: str, out: TextIO, err: TextIO | None = None) -> int:
    err = err or sys.stderr

    async def body(conn: asyncpg.Connection) -> int:
        clip = await rename(conn, clip_id, name)
        out.write(f"clip {clip.id} of {clip.camera_id} is now: {clip.name}\n")
        return EXIT_OK

    return await _cli(config, err, body)
