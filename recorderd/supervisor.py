"""One FFmpeg per camera, kept recording whatever the camera does.

A supervisor never raises: an unreachable camera is ``offline`` (a normal state), a crash is a
restart with backoff, a frozen camera is ``stalled`` and killed. FFmpeg exits 0 when a camera
drops, so the exit code alone never means "clean": only a stop we asked for is clean.

Timestamps: within one FFmpeg run segment times come from the segment list (stream seconds), so
consecutive segments tile exactly. The run is anchored to the wall clock when its first segment
closes: the cut happens the moment the first packet of the next segment arrives, so
``anchor = wall_now - end_stream`` places the run within the camera's network latency, without
being fooled by the seconds FFmpeg spends probing the stream before it opens the first file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recorderd import ffmpeg, metrics
from recorderd.backoff import Backoff
from recorderd.config import Camera
from recorderd.events import SegmentEvent
from recorderd.layout import FILE_RE, ffmpeg_pattern, parse_segment_path
from recorderd.logging import get_logger
from recorderd.masking import mask_text, secrets_of
from recorderd.process import port_open, set_pdeathsig, stop_process
from recorderd.ratelimit import KeyedRateLimiter

STDERR_TAIL = 30
PROBE_INTERVAL = 1.0  # TCP probe of an offline camera, so a return is noticed within seconds
STARTUP_GRACE = 15.0  # extra time before the first byte counts as a stall
# FFmpeg stderr forwarded to the journal: a burst of 20 lines, then 1 line/s per camera
_STDERR_LIMIT = KeyedRateLimiter(rate=1.0, burst=20)


@dataclass(slots=True)
class _Run:
    """State of one FFmpeg process."""

    run_id: str
    started: float  # monotonic
    started_wall: float
    proc: asyncio.subprocess.Process | None = None
    opened: dict[str, str] = field(default_factory=dict)  # basename -> absolute path, not yet closed
    anchor: float | None = None  # wall = anchor + stream seconds
    seq: int = 0
    last_end: float | None = None  # stream seconds
    segments: int = 0
    stall_killed: bool = False
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL))
    progress_at: float = 0.0  # monotonic time output last grew
    progress_key: tuple[str, int] | None = None
    clock_offset: float = 0.0  # wall - monotonic at start: a drop means the wall clock stepped back
    clock_stepped: bool = False


class CameraSupervisor:
    def __init__(
        self,
        camera: Camera,
        root: Path,
        sink: Callable[[SegmentEvent], None],
        *,
        ffmpeg_bin: str = "ffmpeg",
        probe: Callable[[str], Any] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.camera = camera
        self.root = root
        self.sink = sink
        self.ffmpeg_bin = ffmpeg_bin
        self.probe = probe
        self.backoff = backoff or Backoff()
        self.log = get_logger(camera=camera.id)
        self.state = "disabled" if not camera.enabled else "starting"
        self.state_since = time.time()
        self.restarts = 0
        self.segments_total = 0
        self.last_segment_end: float | None = None
        self.current_file: str | None = None
        self._secrets = secrets_of(camera.url)
        self._audio_mode = "copy" if camera.audio == "auto" else camera.audio
        self._stopping = asyncio.Event()
        self._run: _Run | None = None
        self._offline_logged = False
        self._last_exit_wall = 0.0
        self._days_ready: set[str] = set()
        self._drift_warned = False
        self._newest_name: float | None = None  # newest file name time (s) this camera has on disk
        self._storage_error_logged = False
        metrics.set_camera_state(camera.id, self.state)

    # ------------------------------------------------------------------ public

    @property
    def pid(self) -> int | None:
        r = self._run
        return r.proc.pid if r and r.proc and r.proc.returncode is None else None

    def update(self, camera: Camera) -> None:
        """Metadata-only change (name, plan, retention): the running FFmpeg is left alone."""
        assert camera.recording_key() == self.camera.recording_key()
        self.camera = camera

    def snapshot(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera.id,
            "name": self.camera.name,
            "tenant": self.camera.tenant,
            "state": self.state,
            "is_recording": self.state == "recording",
            "current_file": self.current_file,
            "last_segment_end": self.last_segment_end,
            "restarts": self.restarts,
            "pid": self.pid,
            "state_since": self.state_since,
            "segment_seconds": self.camera.segment_seconds,
        }

    async def run(self) -> None:
        """Record until ``stop``; never raises (a bug is logged and the camera restarted)."""
        if not self.camera.enabled:
            self._set_state("disabled")
            await self._stopping.wait()
            return
        first = True
        while not self._stopping.is_set():
            try:
                if first:
                    # a restarted daemon must not reuse the second its killed FFmpeg opened a file in
                    await self._sleep(1.0 - (time.time() % 1.0))
                    first = False
                if self._stopping.is_set():
                    break
                await self._record_once()
            except asyncio.CancelledError:
                await self._kill_now()
                raise
            except Exception as exc:  # a supervisor bug must not take the daemon down
                self.log.exception("supervisor_error", error=mask_text(repr(exc), self._secrets))
                await self._kill_now()
                await self._sleep(self.backoff.next_delay())
        self.current_file = None

    async def stop(self, q_wait: float = 4.0, term_wait: float = 2.0) -> None:
        """Ask FFmpeg to finish (``q``) so the open segment is closed cleanly, escalating if it hangs."""
        self._stopping.set()
        run = self._run
        if run is None or run.proc is None or run.proc.returncode is not None:
            return
        await stop_process(run.proc, q_wait, term_wait, why="stop", log=self.log)

    # ------------------------------------------------------------------ one FFmpeg run

    async def _record_once(self) -> None:
        cam = self.camera
        cam_dir = self.root / cam.id
        run = _Run(run_id=str(uuid.uuid4()), started=time.monotonic(), started_wall=time.time())
        try:
            await asyncio.to_thread(self._ensure_days, time.time(), force=True)
            if self._newest_name is None:
                self._newest_name = await asyncio.to_thread(self._scan_newest_name)
        except OSError as exc:  # unwritable or full storage: not a camera problem, not a bug
            if not self._storage_error_logged:
                self._storage_error_logged = True
                self.log.error("storage_error", path=str(cam_dir), error=str(exc))
            self._after_exit(run, rc=None, reason="storage_error")
            await self._wait_before_retry(run, "storage_error")
            return
        self._storage_error_logged = False
        if self._stopping.is_set():
            return
        self._run = run
        if self.state != "offline":  # an offline camera stays offline until it records again
            self._set_state("starting")
        tag = None
        if self._newest_name is not None and time.time() < self._newest_name + 1:
            # the wall clock is behind footage already on disk: plain names would overwrite it
            tag = run.run_id[:8]
            self.log.warning("clock_behind_footage", newest_file_time=self._newest_name,
                             now=time.time(), suffix=tag)
        argv = ffmpeg.build_command(cam, audio_mode=self._audio_mode, ffmpeg=self.ffmpeg_bin,
                                    pattern=ffmpeg_pattern(tag))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cam_dir, env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, preexec_fn=set_pdeathsig,
            )
        except OSError as exc:
            self.log.error("ffmpeg_spawn_failed", error=str(exc), ffmpeg=self.ffmpeg_bin)
            self._after_exit(run, rc=None, reason="spawn_failed")
            await self._wait_before_retry(run, "spawn_failed")
            return
        run.proc = proc
        run.progress_at = time.monotonic()
        run.clock_offset = time.time() - time.monotonic()
        if self._stopping.is_set():  # stop() ran while we were spawning: it saw no process
            await stop_process(proc, 4.0, 2.0, why="stop", log=self.log)
        self.log.info("ffmpeg_started", pid=proc.pid, url=cam.masked_url, run_id=run.run_id,
                      audio=self._audio_mode, segment_seconds=cam.segment_seconds)
        readers = [
            asyncio.create_task(self._read_stdout(run, proc), name=f"{cam.id}:stdout"),
            asyncio.create_task(self._read_stderr(run, proc), name=f"{cam.id}:stderr"),
        ]
        watchdog = asyncio.create_task(self._watch_stall(run, proc), name=f"{cam.id}:stall")
        try:
            rc = await proc.wait()
            await asyncio.wait(readers, timeout=5)
        finally:
            watchdog.cancel()
            for t in readers:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(watchdog, *readers, return_exceptions=True)
        await self._finish_open_segments(run)
        reason = self._exit_reason(run, rc)
        self._after_exit(run, rc, reason)
        if not self._stopping.is_set():
            await self._wait_before_retry(run, reason)

    def _exit_reason(self, run: _Run, rc: int | None) -> str:
        if self._stopping.is_set():
            return "stopped"
        if run.stall_killed:
            return "stall"
        if run.clock_stepped:
            return "clock_step"
        lines = list(run.stderr)
        codec = ffmpeg.audio_refused(lines)
        if codec and self.camera.audio == "auto" and self._audio_mode == "copy":
            self._audio_mode = "aac"
            self.log.info("audio_transcoding", codec=codec, reason="mp4 refuses codec; transcoding to AAC")
            return "audio_transcode"
        if run.segments == 0 and not self._wrote_bytes(run):
            kind = ffmpeg.classify_failure(lines)
            return "offline" if kind == "unreachable" else ("rejected" if kind == "rejected" else "error")
        if rc is not None and rc < 0:
            return "killed"
        return "camera_dropped" if rc == 0 else "error"

    def _wrote_bytes(self, run: _Run) -> bool:
        return run.progress_key is not None and run.progress_key[1] > 0

    def _after_exit(self, run: _Run, rc: int | None, reason: str) -> None:
        self._last_exit_wall = time.time()
        self.current_file = None
        suppressed = _STDERR_LIMIT.pop_suppressed(self.camera.id)
        if suppressed:
            self.log.warning("ffmpeg_output_suppressed", count=suppressed)
        lasted = time.monotonic() - run.started
        tail = [mask_text(line, self._secrets) for line in list(run.stderr)[-8:]]
        if reason == "stopped":
            self.log.info("ffmpeg_stopped", rc=rc, run_seconds=round(lasted, 1), segments=run.segments)
            return
        self.restarts += 1
        metrics.FFMPEG_RESTARTS.labels(self.camera.id, reason).inc()
        if reason == "offline":
            if not self._offline_logged:
                self._offline_logged = True
                self.log.warning("camera_offline", url=self.camera.masked_url, rc=rc, stderr=tail)
            self._set_state("offline")
            return
        level = "warning" if reason in ("camera_dropped", "stall", "audio_transcode", "clock_step") else "error"
        getattr(self.log, level)("ffmpeg_exited", rc=rc, reason=reason, run_seconds=round(lasted, 1),
                                 segments=run.segments, stderr=tail)
        if reason not in ("audio_transcode", "clock_step"):
            self._set_state("backoff")

    async def _wait_before_retry(self, run: _Run, reason: str) -> None:
        lasted = time.monotonic() - run.started
        if reason in ("audio_transcode", "clock_step"):
            delay = 0.0
        else:
            delay = self.backoff.next_delay(lasted if run.segments else 0.0)
        # never reopen a file in the same wall-clock second the last run opened one: same name
        delay = max(delay, (self._last_exit_wall // 1 + 1) - time.time())
        self.log.debug("ffmpeg_restart_scheduled", reason=reason, delay=round(delay, 2))
        if reason == "offline" and ffmpeg.classify_failure(list(run.stderr)) == "unreachable":
            await self._wait_for_camera(delay)
        else:
            await self._sleep(delay)
        if not self._stopping.is_set() and reason != "offline":  # offline retries: logged once
            self.log.info("ffmpeg_restarted", reason=reason, attempt=self.backoff.attempt)

    async def _wait_for_camera(self, delay: float) -> None:
        """Back off, but come back within a second of the camera's port accepting again."""
        addr = ffmpeg.camera_address(self.camera.url)
        deadline = time.monotonic() + delay
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await self._sleep(min(PROBE_INTERVAL, left))
            if addr and await port_open(*addr, timeout=min(1.0, PROBE_INTERVAL)):
                self.log.debug("camera_port_open", host=addr[0], port=addr[1])
                return

    # ------------------------------------------------------------------ FFmpeg output

    async def _read_stdout(self, run: _Run, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # line longer than the buffer: not ours
                continue
            if not raw:
                return
            entry = ffmpeg.parse_list_line(raw.decode("utf-8", "replace"))
            if entry is not None:
                try:
                    self._segment_closed(run, entry, time.time())
                except Exception as exc:  # keep draining: a stuck pipe would stall FFmpeg
                    self.log.exception("segment_close_failed", error=repr(exc), name=entry.name)

    async def _read_stderr(self, run: _Run, proc: asyncio.subprocess.Process) -> None:
        """Drain continuously: a full pipe would block FFmpeg itself."""
        assert proc.stderr is not None
        while True:
            try:
                raw = await proc.stderr.readline()
            except ValueError:
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            run.stderr.append(line)
            try:
                opened = ffmpeg.parse_opening(line)
                if opened is not None:
                    self._segment_opened(run, opened)
                elif ffmpeg.stderr_level(line) and self.state == "recording":
                    self._forward_stderr(line)
                else:
                    self.log.debug("ffmpeg_output", line=mask_text(line, self._secrets))
            except Exception as exc:  # keep draining: a full stderr pipe blocks FFmpeg itself
                self.log.exception("ffmpeg_output_failed", error=repr(exc))

    def _forward_stderr(self, line: str) -> None:
        """Problems FFmpeg reports while recording, rate-limited so a broken camera cannot flood."""
        decision = _STDERR_LIMIT.check(self.camera.id)
        if decision.suppressed_before:
            self.log.warning("ffmpeg_output_suppressed", count=decision.suppressed_before)
        if decision.allowed:
            self.log.warning("ffmpeg_output", line=mask_text(line, self._secrets))
        else:
            metrics.FFMPEG_OUTPUT_SUPPRESSED.labels(self.camera.id).inc()

    def _segment_opened(self, run: _Run, rel: str) -> None:
        path = str(self.root / self.camera.id / rel)
        run.opened[os.path.basename(rel)] = path
        self.current_file = path
        parsed = parse_segment_path(self.root, path)
        if parsed is not None and (self._newest_name is None or parsed[1] > self._newest_name):
            self._newest_name = parsed[1]
        try:
            self._ensure_days(time.time())
        except OSError as exc:  # FFmpeg will fail to open tomorrow's file and be restarted
            self.log.error("storage_error", path=str(self.root / self.camera.id), error=str(exc))

    def _segment_closed(self, run: _Run, entry: ffmpeg.ListEntry, now: float) -> None:
        path = run.opened.pop(entry.name, None)
        if path is None:  # FFmpeg closed a file it never announced: find it by name in today's dirs
            path = self._guess_path(entry.name, now)
        if run.anchor is None:
            run.anchor = now - entry.end
        else:
            self._check_drift(run, entry, now)
        # each segment starts exactly where the previous one of this run ended: FFmpeg's own start
        # can sit a frame off the previous end (a packet's duration overhanging the cut)
        start_stream = entry.start if run.last_end is None else run.last_end
        start = run.anchor + start_stream
        end = max(start, run.anchor + entry.end)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        event = SegmentEvent(camera_id=self.camera.id, path=path, start=start, end=end, size_bytes=size,
                             run_id=run.run_id, seq=run.seq, source="ffmpeg", closed_at=now)
        run.seq += 1
        run.segments += 1
        run.last_end = entry.end
        self._segment_done(event)
        if self.state != "recording":
            self._became_recording()
        if self.current_file == path:
            self.current_file = None

    def _segment_done(self, event: SegmentEvent) -> None:
        self.segments_total += 1
        self.last_segment_end = event.end
        metrics.SEGMENTS.labels(self.camera.id).inc()
        metrics.SEGMENT_BYTES.labels(self.camera.id).inc(event.size_bytes)
        metrics.LAST_SEGMENT_END.labels(self.camera.id).set(event.end)
        try:
            self.sink(event)
        except Exception as exc:  # the index must never stop recording
            self.log.error("segment_sink_failed", error=repr(exc), path=event.path)

    def _became_recording(self) -> None:
        if self._offline_logged:
            self.log.info("camera_online", url=self.camera.masked_url)
        self._offline_logged = False
        self._set_state("recording")

    def _check_drift(self, run: _Run, entry: ffmpeg.ListEntry, now: float) -> None:
        """Camera clocks drift from ours; we keep exact tiling and say so when it gets large."""
        assert run.anchor is not None
        drift = (run.anchor + entry.end) - now
        if abs(drift) > 2.0 and not self._drift_warned:
            self._drift_warned = True
            self.log.warning("clock_drift", drift_seconds=round(drift, 3), run_id=run.run_id)

    def _guess_path(self, name: str, now: float) -> str:
        for epoch in (now, now - 86400):
            day = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")
            candidate = self.root / self.camera.id / day / name
            if candidate.exists():
                return str(candidate)
        return str(self.root / self.camera.id / name)

    async def _finish_open_segments(self, run: _Run) -> None:
        """A file FFmpeg never closed (killed, crashed) is still footage: index what it holds."""
        for path in list(run.opened.values()):
            run.opened.pop(os.path.basename(path), None)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_size == 0:  # header never written (e.g. refused codec): nothing to keep
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            duration = await self.probe(path) if self.probe else None
            if not duration:
                self.log.warning("segment_unreadable", path=path, size=st.st_size)
                continue
            if run.anchor is not None and run.last_end is not None:
                start = run.anchor + run.last_end  # tiles onto the previous segment of this run
            else:
                start = st.st_mtime - duration  # the last fragment hit the disk as its end arrived
            event = SegmentEvent(camera_id=self.camera.id, path=path, start=start, end=start + duration,
                                 size_bytes=st.st_size, run_id=run.run_id, seq=run.seq, source="recovered",
                                 closed_at=time.time())
            run.seq += 1
            run.segments += 1
            self.log.info("segment_recovered", path=path, duration=round(duration, 3))
            self._segment_done(event)

    # ------------------------------------------------------------------ stall detection

    async def _watch_stall(self, run: _Run, proc: asyncio.subprocess.Process) -> None:
        """Output that stops growing means a frozen camera or FFmpeg: kill it and start again."""
        stall = self.camera.stall_seconds
        step = max(0.5, min(5.0, stall / 4))
        while proc.returncode is None:
            # poll fast until bytes flow, so "recording" shows within a second of the first fragment
            await asyncio.sleep(step if run.progress_key and run.progress_key[1] > 0 else min(step, 1.0))
            key = None
            cur = self.current_file
            if cur is not None:
                try:
                    key = (cur, os.stat(cur).st_size)
                except OSError:
                    key = None
            now = time.monotonic()
            if not run.clock_stepped and time.time() - now < run.clock_offset - 1.0:
                # names come from the wall clock: restart so the new run takes unique names
                run.clock_stepped = True
                self.log.warning("clock_stepped_back", seconds=round(run.clock_offset - (time.time() - now), 3))
                await stop_process(proc, 3.0, 2.0, why="clock_step", log=self.log)
                return
            if key is not None and key != run.progress_key:
                run.progress_key = key
                run.progress_at = now
                if self.state != "recording" and key[1] > 0:  # starting, or retrying while offline
                    self._became_recording()
                continue
            limit = stall + (STARTUP_GRACE if run.progress_key is None else 0.0)
            if now - run.progress_at >= limit and not run.stall_killed:
                run.stall_killed = True
                self._set_state("stalled")
                self.log.warning("camera_stalled", seconds=round(now - run.progress_at, 1),
                                 current_file=cur)
                await stop_process(proc, 0.0, 2.0, why="stall", log=self.log)
                return

    # ------------------------------------------------------------------ helpers

    async def _kill_now(self) -> None:
        run = self._run
        if run and run.proc and run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.proc.kill()

    def kill_now(self) -> None:
        """Second signal: no more waiting."""
        self._stopping.set()
        run = self._run
        if run and run.proc and run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.proc.kill()

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.log.debug("camera_state", state=state, previous=self.state)
            self.state = state
            self.state_since = time.time()
        metrics.set_camera_state(self.camera.id, state)

    def _scan_newest_name(self) -> float | None:
        """Newest segment name time on disk for this camera (after a daemon restart: once)."""
        cam_dir = self.root / self.camera.id
        try:
            days = sorted((d for d in os.listdir(cam_dir) if len(d) == 10), reverse=True)
        except OSError:
            return None
        for day in days:
            try:
                names = [n for n in os.listdir(cam_dir / day) if FILE_RE.match(n)]
            except OSError:
                continue
            times = [p[1] for n in names if (p := parse_segment_path(self.root, cam_dir / day / n))]
            if times:
                return max(times)
        return None

    def _ensure_days(self, now: float, force: bool = False) -> None:
        """FFmpeg's strftime names need the day directory to exist: make today's and tomorrow's."""
        for epoch in (now, now + 86400):
            day = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")
            if force or day not in self._days_ready:
                (self.root / self.camera.id / day).mkdir(parents=True, exist_ok=True)
                self._days_ready.add(day)
        if len(self._days_ready) > 8:
            keep = {(datetime.fromtimestamp(now, UTC) + timedelta(days=d)).strftime("%Y-%m-%d")
                    for d in (0, 1)}
            self._days_ready &= keep
