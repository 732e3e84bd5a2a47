"""The composition root: builds the parts, runs them as named tasks, reloads, drains on a signal.

Signal handlers only set events. Cameras start before the database is reached: recording never
waits on it (a clustered node records what its leases give it: ``recorderd.nodes``). If a core task
(indexer, sweeper) dies the daemon stops its cameras cleanly and exits non-zero so systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from recorderd import __version__, looplag, metrics, systemd
from recorderd.api.app import HttpServer
from recorderd.api.session import SessionKeeper, load_key
from recorderd.archive import Archiver, build_store
from recorderd.clock import RunLedger, WallClock
from recorderd.compress import remove_stale_temps
from recorderd.compressjobs import CompressionJobs
from recorderd.config import Camera, Config, ConfigError, diff_cameras, read_config_text
from recorderd.configwatch import ConfigWatcher
from recorderd.db import Database
from recorderd.events import OpenFile
from recorderd.health import CameraHealth, HealthSnapshot, disk_floor_bytes, disk_stale_after, health_reasons
from recorderd.indexer import Indexer
from recorderd.lastgood import Fallback, LastGood, load_or_fallback
from recorderd.logging import get_logger, register_secrets
from recorderd.masking import secrets_of
from recorderd.nodes import LeaseKeeper
from recorderd.probe import probe_duration
from recorderd.process import SpawnPacer
from recorderd.progress import ProgressPoller
from recorderd.retention import CameraUsage, Sweeper
from recorderd.statusfile import remove_status, write_status
from recorderd.streammemory import StreamMemory
from recorderd.supervisor import CameraSupervisor, forget_camera
from recorderd.volume import MARKER_REL, RootLock, RootLocked, StorageVolume

log = get_logger()
STATUS_INTERVAL = 2.0  # the status is looked at this often, and written when a state changed ...
STATUS_REFRESH = 6.0  # ... or when it is this old (readers trust it for statusfile.FRESH_SECONDS)
# the whole stop ends within shutdown_seconds + this, whatever hangs (then FFmpegs are killed)
SHUTDOWN_BACKSTOP_SECONDS = 1.5
STORAGE_GRACE = 5.0  # seconds cameras wait at start for a verdict on a storage root without a marker


class Daemon:
    def __init__(self, config: Config, config_path: Path, *, ffmpeg_bin: str = "ffmpeg",
                 last_good: LastGood | None = None, fallback: Fallback | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.ffmpeg_bin = ffmpeg_bin
        self.last_good = last_good or LastGood(None)
        self.fallback = fallback  # running the saved copy because the file on disk is invalid
        self.started_at = time.time()
        self.supervisors: dict[str, CameraSupervisor] = {}
        self.camera_tasks: dict[str, asyncio.Task[None]] = {}
        self.core_tasks: list[asyncio.Task[Any]] = []
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self.drain_event = asyncio.Event()
        self.signals_seen = 0
        self.exit_code = 0
        # 3 connections for the API at most (recorderd.api.cameras.API_QUERIES): the indexer and the
        # sweeper always find one free
        self.db = Database(config.database_dsn(), pool_max=7, node=config.node.id)  # +1: lease renewals
        self.clock = WallClock()
        self.poller = ProgressPoller()
        self.pacer = SpawnPacer()
        self.streams = StreamMemory(config.storage.root)  # audio decisions kept across restarts
        self._volume_known = asyncio.Event()  # the volume check reached a verdict (ok or missing)
        self.volume = StorageVolume(config.storage.root, self.db, on_change=self._on_volume)
        self.indexer = Indexer(config, self.db, current_files=self.current_files,
                               storage_ok=lambda: self.volume.state == "ok")
        # every segment passes the ledger, so a clock step can name exactly what it re-stamps
        self.ledger = RunLedger(self.indexer.submit, self.indexer.restamp)
        self.clock.listeners.append(self.ledger.on_step)
        self.clock.restamp_pending = lambda: self.indexer.restamp_pending
        self.archive_store = build_store(config)
        self.sweeper = Sweeper(config, self.db, self.current_files, clock_gate=self.clock.reason,
                               storage_gate=self.volume.reason, volume_marker=MARKER_REL,
                               index_never_reached=self.volume.index_never_reached,
                               objects=lambda: self.archive_store)
        self.archiver = Archiver(config, self.db, self.archive_store, marker=lambda: MARKER_REL,
                                 storage_ok=lambda: self.volume.state == "ok", busy=self.current_files)
        self.compression = CompressionJobs(lambda: self.config, self.db, ffmpeg_bin=ffmpeg_bin)
        self.keeper = LeaseKeeper(config.node, self.db, cameras=lambda: [c.id for c in self.config.enabled_cameras],
                                  states=lambda: {c: s.state for c, s in self.supervisors.items()},
                                  on_change=self._leases_changed) if config.node.clustered else None
        self._lease_sync: asyncio.Task[None] | None = None
        self._lease_again = False
        self.http: HttpServer | None = None
        self._once: asyncio.Task[None] | None = None  # one-off start-up work (not a core task)

    # ------------------------------------------------------------------ cameras

    def current_files(self) -> set[str]:
        """Files nothing may delete or move now: being written, or being re-encoded."""
        return {s.current_file for s in self.supervisors.values() if s.current_file} | set(
            self.compression.compressor.busy_paths())

    def open_file(self, camera_id: str) -> OpenFile | None:
        sup = self.supervisors.get(camera_id)
        return sup.open_file() if sup is not None else None

    def records(self, cam: Camera) -> bool:
        """Whether this node records ``cam``: every camera of the file, or (clustered) those it holds."""
        return self.keeper is None or (cam.enabled and cam.id in self.keeper.wanted())

    def _leases_changed(self) -> None:
        if self._lease_sync is not None and not self._lease_sync.done():
            self._lease_again = True  # one more pass once the running one ends
            return
        self._lease_sync = asyncio.create_task(self._sync_cameras(), name="lease-sync")

    async def _sync_cameras(self) -> None:
        """Start the cameras the leases give this node; stop those another node holds now."""
        while True:
            self._lease_again = False
            gone = [cid for cid, sup in self.supervisors.items() if not self.records(sup.camera)]
            if gone:
                await asyncio.gather(*(self._stop_camera(cid, min(6.0, self.config.shutdown_seconds))
                                       for cid in gone))
                for cid in gone:
                    if cid not in self.supervisors:
                        forget_camera(cid)  # /metrics tells of the cameras this node records
            for cam in self.config.cameras:
                if cam.id not in self.supervisors and self.records(cam):
                    self._start_camera(cam)
            if not self._lease_again or self.stop_event.is_set():
                return

    def _start_camera(self, cam: Camera) -> None:
        if self.stop_event.is_set() or not self.records(cam):
            return
        sup = CameraSupervisor(cam, self.config.storage.root, self.ledger.submit,
                               ffmpeg_bin=self.ffmpeg_bin, probe=probe_duration, clock=self.clock,
                               progress=self.poller, pacer=self.pacer, memory=self.streams)
        if self.volume.state == "missing":
            sup.hold("storage_missing", self.volume.reason() or "storage volume missing")
        self.supervisors[cam.id] = sup
        metrics.set_camera_segment_seconds(cam.id, cam.segment_seconds if cam.enabled else None)
        self.camera_tasks[cam.id] = asyncio.create_task(sup.run(), name=f"camera:{cam.id}")

    async def _stop_camera(self, camera_id: str, budget: float) -> None:
        sup = self.supervisors.pop(camera_id, None)
        task = self.camera_tasks.pop(camera_id, None)
        if sup is None:
            return
        await sup.stop(q_wait=budget * 0.5, term_wait=budget * 0.25)
        if task is not None:
            try:
                await asyncio.wait_for(task, budget * 0.15 + 1)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ------------------------------------------------------------------ reload

    async def reload(self, trigger: str) -> bool:
        """Validate the new file whole; on any error keep running the old one."""
        if self.stop_event.is_set():
            return False
        try:
            new, text = await asyncio.to_thread(read_config_text, self.config_path)
        except Exception as exc:  # ConfigError, or anything unexpected: never worth the cameras
            errors = exc.errors if isinstance(exc, ConfigError) else [f"unexpected error: {exc!r}"]
            metrics.CONFIG_RELOADS.labels("error").inc()
            metrics.CONFIG_LAST_RELOAD_OK.set(0)
            log.error("config_reload_failed", trigger=trigger, path=str(self.config_path), errors=errors)
            return False
        if self.stop_event.is_set():
            return False
        old = self.config
        for key, label in ((old.storage.root != new.storage.root, "storage.root"),
                           (old.database_dsn() != new.database_dsn(), "database.dsn"),
                           (old.http.listen != new.http.listen, "http.listen"),
                           (old.node.id != new.node.id, "node.id"), (old.node.url != new.node.url, "node.url")):
            if key:
                log.warning("config_needs_restart", key=label, note="kept the running value until restart")
        new = _keep_fixed(new, old)
        register_secrets([s for c in new.cameras for s in secrets_of(c.url)])
        diff = diff_cameras(old, new)
        self.config = new
        budget = min(6.0, new.shutdown_seconds)
        await asyncio.gather(*(self._stop_camera(c.id, budget) for c in diff.removed + diff.restarted))
        for cam in diff.removed:
            forget_camera(cam.id)
            self.streams.forget(cam.id)
        if self.stop_event.is_set():  # shutdown began while we stopped cameras: start nothing
            return False
        for cam in diff.added + diff.restarted:
            self._start_camera(cam)
        for cam in diff.updated + diff.unchanged:  # unchanged may still have moved in the file (hints)
            sup = self.supervisors.get(cam.id)
            if sup is not None:
                sup.update(cam)
        self.indexer.update_config(new)
        self.sweeper.update_config(new)
        if new.archive != old.archive:
            self.archive_store = build_store(new)
        self.archiver.update_config(new, self.archive_store)
        self.compression.update_config(new)
        if self.keeper is not None:
            self.keeper.update_config(new.node)
        metrics.CONFIG_RELOADS.labels("success").inc()
        metrics.CONFIG_LAST_RELOAD_OK.set(1)
        fallback_ended = self.fallback is not None
        self.fallback = None
        metrics.CONFIG_FALLBACK.set(0)
        log.info("config_reloaded", trigger=trigger, added=[c.id for c in diff.added],
                 removed=[c.id for c in diff.removed], restarted=[c.id for c in diff.restarted],
                 updated=[c.id for c in diff.updated], unchanged=len(diff.unchanged),
                 **({"fallback_ended": True} if fallback_ended else {}))
        await asyncio.to_thread(self.last_good.save, text)
        return True

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_event.wait()
            self.reload_event.clear()
            systemd.reloading()
            try:
                await self.reload("change")
            except Exception as exc:  # a reload bug must not stop the cameras
                log.exception("config_reload_failed", errors=[f"unexpected error: {exc!r}"])
            systemd.notify("READY=1\nSTATUS=" + self.summary())

    # ------------------------------------------------------------------ status, health

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "written_at": time.time(),
            "started_at": self.started_at,
            "version": __version__,
            "database_up": self.db.up,
            "pending_rows": self.indexer.pending_count,
            "config_fallback": None if self.fallback is None else {
                "reason": self.fallback.reason(self.config_path), "errors": list(self.fallback.errors),
                "path": self.fallback.path, "saved_at": self.fallback.saved_at},
            "cameras": [s.snapshot() for s in self.supervisors.values()],
            "archive": self.archiver.snapshot(),
            "node": self.keeper.snapshot() if self.keeper is not None else {
                "id": self.config.node.id, "url": None, "clustered": False, "draining": False},
        }

    def recorded_by(self, camera_id: str) -> tuple[str | None, str | None]:
        """(node, state): this node with its supervisor's state, or the node a lease names and the state it
        last reported; (None, None) for a clustered camera nobody records now."""
        sup = self.supervisors.get(camera_id)
        if sup is not None:
            return self.config.node.id, sup.state
        if self.keeper is None:
            return self.config.node.id, None
        return self.keeper.recorded_by(camera_id)

    def camera_usage(self) -> Mapping[str, CameraUsage]:
        """Footage bytes and oldest footage per camera from the sweeper's last survey (for the API)."""
        return self.sweeper.camera_usage

    async def clips_used(self, conn: asyncpg.Connection, camera_id: str) -> int:
        try:
            return int(await conn.fetchval("SELECT count(*) FROM clips WHERE camera_id = $1", camera_id))
        except asyncpg.UndefinedTableError:  # an index from before clips
            return 0

    def summary(self) -> str:
        states = [s.state for s in self.supervisors.values()]
        rec = states.count("recording")
        return (f"{rec}/{len(states)} cameras recording; database {'up' if self.db.up else 'DOWN'}; "
                f"{self.indexer.pending_count} rows pending")

    async def _volume_grace(self) -> None:
        """No marker yet (a first start, or a disk that is not mounted): give the index a few seconds
        to tell which before any FFmpeg writes there. With the marker in place this costs nothing; if
        the database does not answer in time, recording starts anyway (unverified, nothing deleted)."""
        if self.volume.state == "unverified":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._volume_known.wait(), STORAGE_GRACE)

    def _on_volume(self, state: str) -> None:
        """The storage volume went missing (or came back): never record onto the disk underneath."""
        if state != "unverified":
            self._volume_known.set()
        for sup in self.supervisors.values():
            if state == "missing":
                sup.hold("storage_missing", self.volume.reason() or "storage volume missing")
            else:
                sup.release()

    def health(self) -> list[str]:
        """From readings the background tasks already took: a request never touches the disk."""
        st = self.config.storage
        usage = self.sweeper.last_usage
        total, free = (usage[0].total, usage[0].free) if usage else (None, None)
        snap = HealthSnapshot(
            database_up=self.db.up, disk_free_bytes=free, disk_total_bytes=total,
            floor_bytes=disk_floor_bytes(total or 0, st.min_free_percent, st.min_free_bytes),
            cameras=[CameraHealth(s.camera.id, s.state, s.state_since, s.camera.segment_seconds)
                     for s in self.supervisors.values()],
            pending_rows=self.indexer.pending_count, now=time.time(),
            pending_limit=self.config.database.pending_max_rows // 2,
            disk_age_seconds=self.sweeper.disk_answer_age(),
            disk_stale_seconds=disk_stale_after(self.config.retention.disk_check_seconds),
            storage_missing=self.volume.reason(),
            clock_untrusted=self.clock.reason(),
            config_fallback=self.fallback.reason(self.config_path) if self.fallback else None,
            storage_read_only=bool(usage and usage[0].read_only))
        return health_reasons(snap)

    async def _status_loop(self) -> None:
        path = self.config.storage.status_file
        last_summary = ""
        written: tuple[object, float] | None = None  # (states, monotonic time) of the last write
        while True:
            states = (self.db.up, self.fallback is None, self.indexer.pending_count,
                      [(s.camera.id, s.state, s.pid) for s in self.supervisors.values()])
            if written is None or written[0] != states or time.monotonic() - written[1] >= STATUS_REFRESH:
                try:
                    await asyncio.to_thread(write_status, path, self.snapshot())
                    written = (states, time.monotonic())
                except OSError as exc:
                    log.warning("status_write_failed", path=str(path), error=str(exc))
            summary = self.summary()
            if summary != last_summary:
                systemd.status(summary)
                last_summary = summary
            await asyncio.sleep(STATUS_INTERVAL)

    # ------------------------------------------------------------------ lifecycle

    async def _drain(self) -> None:
        """SIGUSR1 (``recorderd drain``): hand every camera over make-before-break, then stop."""
        await self.drain_event.wait()
        keeper = self.keeper
        if keeper is None:
            log.warning("drain_standalone", note="no other node to hand cameras to: stopping now")
            self.stop_event.set()
            await asyncio.Event().wait()
            return
        keeper.drain()
        await keeper.drained(self.config.node.drain_seconds)  # handed over or not: the node stops
        self.stop_event.set()
        await asyncio.Event().wait()  # a core task that ended would read as a failure; the stop cancels it

    def _on_signal(self, signame: str) -> None:
        self.signals_seen += 1
        if self.signals_seen == 1:
            log.info("shutdown_requested", signal=signame)
            self.stop_event.set()
        else:
            log.warning("shutdown_forced", signal=signame)
            for sup in self.supervisors.values():
                sup.kill_now()
            os._exit(130)

    async def _recover_clips(self) -> None:
        """Once the index is up: finish clip creations and deletions a crash interrupted."""
        from recorderd import clips

        await self.db.wait_up()
        with contextlib.suppress(Exception):  # logged by recover; retried by the next create
            await clips.recover(self.db, self.config.storage.root)

    async def _compress(self) -> None:
        """The compression tier, after removing the temp files a crash left beside segments."""
        await asyncio.to_thread(remove_stale_temps, self.config.storage.root)
        await self.compression.compressor.run()

    def _core(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.core_tasks.append(asyncio.create_task(coro, name=name))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.reload_event.set)
        loop.add_signal_handler(signal.SIGUSR1, self.drain_event.set)
        cfg = self.config
        cfg.storage.root.mkdir(parents=True, exist_ok=True)
        metrics.BUILD_INFO.info({"version": __version__})
        metrics.INDEX_PENDING_MAX.set(cfg.database.pending_max_rows)
        metrics.CONFIG_FALLBACK.set(1 if self.fallback else 0)
        if self.fallback:  # the operator's last edit is not in force: the same as a rejected reload
            metrics.CONFIG_LAST_RELOAD_OK.set(0)
        self._core(self.clock.run(), "clock")
        self._core(self.poller.run(), "progress")
        self._core(looplag.monitor(), "loop-lag")
        self._core(self.volume.run(), "volume")
        self._core(self.indexer.run(), "indexer")
        self._once = asyncio.create_task(self._recover_clips(), name="clips-recover")
        await self._volume_grace()
        for cam in cfg.cameras:  # a disabled camera gets an idle supervisor: status shows it
            self._start_camera(cam)  # clustered: none yet, the leases say which
        if self.keeper is not None:
            self._core(self.keeper.run(), "leases")
        self._core(self._drain(), "drain")
        self._core(self.sweeper.run(), "sweeper")
        self._core(self.archiver.run(), "archiver")
        self._core(self._compress(), "compress")
        self._core(self._status_loop(), "status")
        self._core(self._reload_loop(), "reload")
        self._core(ConfigWatcher(self.config_path, self.reload_event.set).run(), "config-watch")
        for warning in cfg.warnings:
            log.warning("config_warning", detail=warning)
        if cfg.http.listen:
            # browser sessions outlive a restart via a key in the state dir, never on an unmounted disk
            key_file = cfg.storage.status_file.parent / "session.key" if self.volume.state == "ok" else None
            key = await asyncio.to_thread(load_key, key_file)
            self.http = HttpServer(cfg.http.listen, self.health, services=self, sessions=SessionKeeper(key))
            try:
                await self.http.start()
            except OSError as exc:
                log.error("http_listen_failed", listen=cfg.http.listen, error=str(exc))
                self.http = None
        interval = systemd.watchdog_interval()
        if interval:
            self._core(systemd.watchdog_task(interval), "watchdog")
        log.info("daemon_started", version=__version__, cameras=len(cfg.enabled_cameras),
                 root=str(cfg.storage.root), config=str(self.config_path))
        systemd.ready(self.summary())

        stop = asyncio.create_task(self.stop_event.wait(), name="stop-event")
        done, _ = await asyncio.wait([stop, *self.core_tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stop:
                self.exit_code = 1
                failure = task.exception() if not task.cancelled() else None
                log.critical("core_task_failed", task=task.get_name(), error=repr(failure))
        stop.cancel()
        try:  # backstop: the daemon exits within shutdown_seconds + 2 whatever hangs
            await asyncio.wait_for(self.shutdown(), self.config.shutdown_seconds + SHUTDOWN_BACKSTOP_SECONDS)
        except TimeoutError:
            log.error("shutdown_timeout", seconds=self.config.shutdown_seconds + SHUTDOWN_BACKSTOP_SECONDS)
            for sup in self.supervisors.values():
                sup.kill_now()
            remove_status(self.config.storage.status_file)
        return self.exit_code

    async def shutdown(self) -> None:
        """Drain within ``shutdown_seconds``: cameras close their open segment, then the index flushes.

        One deadline covers every step; what is still waiting on a hung server at the end is dropped
        (the files are on disk: the next start's reconcile indexes them).
        """
        systemd.stopping()
        self.stop_event.set()
        budget = self.config.shutdown_seconds
        deadline = time.monotonic() + budget
        for task in self.core_tasks:  # reload/watch/leases first: nothing may start cameras now
            if task.get_name() in ("reload", "config-watch", "leases"):
                task.cancel()
        if self._lease_sync is not None:
            self._lease_sync.cancel()
        if self.keeper is not None:  # the others take the cameras now, not when the leases expire
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.keeper.release(), min(2.0, budget * 0.2))
        await asyncio.gather(*(self._stop_camera(cid, budget * 0.7) for cid in list(self.supervisors)))
        left = deadline - time.monotonic()
        try:
            await asyncio.wait_for(self.indexer.close(max(0.2, left - 1.0)), max(0.5, left))
        except Exception as exc:
            log.error("indexer_close_failed", error=repr(exc), pending=self.indexer.pending_count)
        once = [self._once] if self._once is not None else []
        for task in [*once, *self.core_tasks]:
            task.cancel()
        await asyncio.gather(*once, *self.core_tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        try:
            await asyncio.wait_for(self.db.close(), max(0.2, deadline + 1.0 - time.monotonic()))
        except Exception:
            self.db.terminate()
        remove_status(self.config.storage.status_file)
        log.info("daemon_stopped", exit_code=self.exit_code,
                 seconds=round(budget - (deadline - time.monotonic()), 2))


def _keep_fixed(new: Config, old: Config) -> Config:
    """Settings bound at start (storage root, database, listener) keep their running values."""
    from dataclasses import replace

    storage = replace(new.storage, root=old.storage.root, status_file=old.storage.status_file)
    # the listener stays; its tokens, and everything the API reads, follow the new config at once
    return replace(new, storage=storage, database=replace(new.database, dsn=old.database.dsn),
                   metrics=old.metrics, http=replace(new.http, listen=old.http.listen),
                   node=replace(new.node, id=old.node.id, url=old.node.url))


def run(config_path: Path, *, ffmpeg_bin: str = "ffmpeg", state_dir: Path | None = None) -> int:
    last_good = LastGood(state_dir)
    # a bad file runs the last good copy; with none, ConfigError propagates: refuse to start
    config, fallback = load_or_fallback(config_path, last_good)
    if fallback is not None:
        log.critical("config_fallback", config=str(config_path), errors=list(fallback.errors),
                     running=fallback.path, saved_at=fallback.saved_at)
        print(f"recorderd: {fallback.reason(config_path)}", file=sys.stderr)
    register_secrets([s for c in config.cameras for s in secrets_of(c.url)])
    lock = RootLock(config.storage.root)
    try:  # two daemons on one root would truncate each other's files and sweep twice
        lock.acquire()
    except RootLocked as exc:
        log.error("daemon_already_running", pid=exc.pid, root=str(config.storage.root), error=str(exc))
        print(f"recorderd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        log.error("storage_error", path=str(config.storage.root), error=str(exc))
        print(f"recorderd: cannot lock the storage root {config.storage.root}: {exc}", file=sys.stderr)
        return 1
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    async def main() -> int:
        return await Daemon(config, config_path, ffmpeg_bin=ffmpeg_bin, last_good=last_good,
                            fallback=fallback).run()

    try:
        return int(runner(main()))
    finally:
        lock.release()
