"""One FFmpeg per camera, kept recording whatever the camera does.

A supervisor never raises: a camera FFmpeg cannot record is in the state that names why
(``unauthorized``, ``not_found``, ``unreachable``, ``unsupported``: ``diagnose``), a crash is a
restart (at once after good work, with backoff for a camera that keeps failing: ``restarts``), a
frozen camera is ``stalled`` and killed. FFmpeg exits 0 when a camera
drops, so the exit code alone never means "clean": only a stop we asked for is clean.

Times: ``stamps.RunTimeline`` turns the segment list's stream seconds into wall times (anchored on
the monotonic clock, tiled exactly, stamped by arrival when the camera's timestamps drift); the
shared ``clock.WallClock`` tells of wall-clock steps. Growth of the file being written (stall
detection, the late first close) comes from the shared ``progress.ProgressPoller``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorderd import cutfile, diagnose, ffmpeg, ffmpegout, metrics
from recorderd.backoff import Backoff
from recorderd.clock import Step, WallClock
from recorderd.config import Camera
from recorderd.events import OpenFile, SegmentEvent
from recorderd.layout import day_names, ffmpeg_pattern, find_segment, newest_name_time, parse_segment_path
from recorderd.logging import get_logger
from recorderd.masking import mask_text, secrets_of
from recorderd.process import SpawnPacer, spawn, stop_process
from recorderd.progress import ProgressPoller
from recorderd.restarts import IMMEDIATE, Exit, RestartPolicy
from recorderd.stamps import PERSISTENT, RunTimeline, Stamp
from recorderd.streammemory import StreamMemory

STDERR_TAIL = 30
STARTUP_GRACE = 15.0  # extra time before the first byte counts as a stall


def forget_camera(camera_id: str) -> None:
    """A camera removed from the config leaves no metric series and no rate-limit bucket behind."""
    metrics.forget_camera(camera_id)
    ffmpegout.forget(camera_id)


@dataclass(slots=True)
class _Run:
    """State of one FFmpeg process."""

    run_id: str
    started: float  # monotonic
    proc: asyncio.subprocess.Process | None = None
    opened: dict[str, str] = field(default_factory=dict)  # basename -> absolute path, not yet closed
    timeline: RunTimeline = field(default_factory=RunTimeline)
    seq: int = 0
    segments: int = 0
    stop_why: str | None = None  # set when we stopped it: stall, clock_step, resync, hold
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL))
    stopper: asyncio.Task[None] | None = None
    diagnosis: diagnose.Diagnosis | None = None  # why it never recorded


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
        clock: WallClock | None = None,
        progress: ProgressPoller | None = None,
        pacer: SpawnPacer | None = None,
        memory: StreamMemory | None = None,
    ) -> None:
        self.camera = camera
        self.root = root
        self.sink = sink
        self.ffmpeg_bin = ffmpeg_bin
        self.probe = probe
        self._own_clock = clock is None  # standalone (tests): run our own clock and poller tasks
        self.clock = clock or WallClock()
        self._own_poller = progress is None
        self.poller = progress or ProgressPoller()
        self.pacer = pacer or SpawnPacer()
        self._fp = self.poller.track(camera.id)
        self.log = get_logger(camera=camera.id)
        self.state = "disabled" if not camera.enabled else "starting"
        self.state_since = time.time()
        self.restarts = 0
        self.segments_total = 0
        self.last_segment_end: float | None = None
        self.current_file: str | None = None
        self.wallclock_timestamps = False  # set by a re-sync: the camera's own timestamps drifted
        self._secrets = secrets_of(camera.url)
        self._audio_mode = "copy" if camera.audio == "auto" else camera.audio
        self._memory = memory
        self._remembered = memory is None  # the memory is read once, off the loop, before the first run
        self.stream: dict[str, str] = {}  # codecs of the camera's stream, from FFmpeg's input dump
        self._trouble: tuple[str, str] | None = None  # (state, cause) logged for this episode
        self._hint: str | None = None
        self._stopping = asyncio.Event()
        self._restart = RestartPolicy(camera.url, self._stopping, backoff=backoff, log=self.log)
        self._held: str | None = None
        self._released = asyncio.Event()
        self._released.set()
        self._run: _Run | None = None
        self._last_exit_wall = 0.0
        # the last FFmpeg exit that was not our own stop: "why is this camera not recording?"
        self.last_exit: dict[str, Any] | None = None
        self._days_ready: set[str] = set()
        self._ready_day = -1  # the UTC day number _days_ready was made for: one compare per file opened
        self._newest_name: float | None = None  # newest file name time (s) this camera has on disk
        self._storage_error_logged = False
        self._tasks: set[asyncio.Task[Any]] = set()
        metrics.set_camera_state(camera.id, self.state)

    # ------------------------------------------------------------------ public

    @property
    def pid(self) -> int | None:
        r = self._run
        return r.proc.pid if r and r.proc and r.proc.returncode is None else None

    def update(self, camera: Camera) -> None:
        """Change that needs no restart (name, plan, retention, stall_seconds): applied live."""
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
            "cause": self._trouble[1] if self._trouble and self.state in diagnose.TROUBLE_STATES else None,
            "hint": self._hint if self.state in diagnose.TROUBLE_STATES else None,
            "stream": dict(self.stream, audio_mode=self._audio_mode) if self.stream else None,
            "segment_seconds": self.camera.segment_seconds,
            "timestamps": "arrival" if self.wallclock_timestamps else "camera",
            "last_exit": self.last_exit,
        }

    def open_file(self) -> OpenFile | None:
        """The file FFmpeg is writing now, if any (live playback reads it up to its last fragment)."""
        run, path = self._run, self.current_file
        if run is None or path is None or path not in run.opened.values():
            return None
        return OpenFile(self.camera.id, path, run.run_id, run.timeline.last_end_wall)

    async def run(self) -> None:
        """Record until ``stop``; never raises (a bug is logged and the camera restarted)."""
        if not self.camera.enabled:
            self._set_state("disabled")
            await self._stopping.wait()
            return
        own = []
        if self._own_poller:
            own.append(asyncio.create_task(self.poller.run(), name=f"{self.camera.id}:progress"))
        if self._own_clock:
            own.append(asyncio.create_task(self.clock.run(), name=f"{self.camera.id}:clock"))
        self.clock.listeners.append(self._on_clock_step)
        self._fp.on_tick = self._on_tick
        try:
            await self._loop()
        finally:
            self.clock.listeners.remove(self._on_clock_step)
            self._fp.on_tick = None
            self.poller.untrack(self.camera.id)
            for t in own:
                t.cancel()
            self.current_file = None

    async def _loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                if self._held is not None:
                    await self._wait_released()
                    continue
                if first:
                    # a restarted daemon must not reuse the second its killed FFmpeg opened a file in
                    await self._sleep(1.0 - (time.time() % 1.0))
                    first = False
                if self._stopping.is_set():
                    break
                await self._record_once()
            except asyncio.CancelledError:
                self.kill_now(stopping=False)
                raise
            except Exception as exc:  # a supervisor bug must not take the daemon down
                self.log.exception("supervisor_error", error=mask_text(repr(exc), self._secrets))
                self.kill_now(stopping=False)
                await self._sleep(self._restart.backoff.next_delay())

    async def stop(self, q_wait: float = 4.0, term_wait: float = 2.0) -> None:
        """Ask FFmpeg to finish (``q``) so the open segment is closed cleanly, escalating if it hangs."""
        self._stopping.set()
        run = self._run
        if run is None or run.proc is None or run.proc.returncode is not None:
            return
        await stop_process(run.proc, q_wait, term_wait, why="stop", log=self.log)

    def hold(self, state: str, reason: str) -> None:
        """Stop recording until ``release`` (the storage volume is missing: never write underneath)."""
        if self._held == state:
            return
        self._held = state
        self._released.clear()
        self._set_state(state)
        self.log.warning("camera_held", state=state, reason=reason)
        run = self._run
        if run is not None:
            self._stop_run(run, 4.0, "hold")

    def release(self) -> None:
        if self._held is None:
            return
        self.log.info("camera_released", state=self._held)
        self._held = None
        self._set_state("starting")
        self._released.set()

    def kill_now(self, stopping: bool = True) -> None:
        """Second signal (or a bug): no more waiting."""
        if stopping:
            self._stopping.set()
        run = self._run
        if run and run.proc and run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.proc.kill()

    # ------------------------------------------------------------------ one FFmpeg run

    async def _record_once(self) -> None:
        cam = self.camera
        cam_dir = self.root / cam.id
        run = _Run(run_id=str(uuid.uuid4()), started=time.monotonic())
        try:
            await asyncio.to_thread(self._ensure_days, time.time(), True)
            if self._newest_name is None:
                self._newest_name = await asyncio.to_thread(newest_name_time, self.root, cam.id)
            if not self._remembered and self._memory is not None:
                self._remembered = True
                mode = await asyncio.to_thread(self._memory.audio_mode, cam)
                if mode is not None:
                    self._audio_mode = mode
        except OSError as exc:  # unwritable or full storage: not a camera problem, not a bug
            if not self._storage_error_logged:
                self._storage_error_logged = True
                self.log.error("storage_error", path=str(cam_dir), error=str(exc))
            self._after_exit(run, rc=None, reason="storage_error")
            await self._wait_before_retry(run, "storage_error", recorded=False)
            return
        self._storage_error_logged = False
        await self.pacer.turn()  # a mass start spreads over a few seconds
        if self._stopping.is_set() or self._held is not None:
            return
        self._run = run
        if self.state not in diagnose.TROUBLE_STATES:  # a camera in trouble stays so until it records
            self._set_state("starting")
        tag = None
        if self._newest_name is not None and time.time() < self._newest_name + 1:
            # the wall clock is behind footage already on disk: plain names would overwrite it
            tag = run.run_id[:8]
            self.log.warning("clock_behind_footage", newest_file_time=self._newest_name,
                             now=time.time(), suffix=tag)
        argv = ffmpeg.build_command(cam, audio_mode=self._audio_mode, ffmpeg=self.ffmpeg_bin,
                                    pattern=ffmpeg_pattern(tag), wallclock=self.wallclock_timestamps,
                                    via_pipe=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
        # a preload the operator gave the daemon (libfaketime in the clock tests, a debugging
        # allocator) applies to its FFmpegs too; nothing else of our environment reaches them
        env.update({k: v for k, v in os.environ.items() if k == "LD_PRELOAD" or k.startswith("FAKETIME")})
        try:
            proc = await spawn(argv, cwd=cam_dir, env=env, input_data=ffmpeg.input_script(cam),
                               fd_placeholder=ffmpeg.INPUT_FD)
        except OSError as exc:
            self.log.error("ffmpeg_spawn_failed", error=str(exc), ffmpeg=self.ffmpeg_bin)
            self._after_exit(run, rc=None, reason="spawn_failed")
            await self._wait_before_retry(run, "spawn_failed", recorded=False)
            return
        run.proc = proc
        self._fp.reset(time.monotonic())
        if self._stopping.is_set():  # stop() ran while we were spawning: it saw no process
            await stop_process(proc, 4.0, 2.0, why="stop", log=self.log)
        elif self._held is not None:
            self._stop_run(run, 4.0, "hold")
        self.log.info("ffmpeg_started", pid=proc.pid, url=cam.masked_url, run_id=run.run_id,
                      audio=self._audio_mode, segment_seconds=cam.segment_seconds,
                      timestamps="arrival" if self.wallclock_timestamps else "camera")
        readers = [
            asyncio.create_task(ffmpegout.drain(proc.stdout, lambda line: self._on_list_line(run, line), self.log,
                                                "segment_close_failed"), name=f"{cam.id}:stdout"),
            asyncio.create_task(ffmpegout.drain(proc.stderr, lambda line: self._on_stderr_line(run, line), self.log,
                                                "ffmpeg_output_failed"), name=f"{cam.id}:stderr"),
        ]
        try:
            rc = await proc.wait()
            await asyncio.wait(readers, timeout=5)
        finally:
            for t in readers:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*readers, return_exceptions=True)
        wrote = self._fp.wrote_bytes
        recorded = self.state == "recording"
        self._fp.path = None
        cut = list(run.opened.values())
        run.opened.clear()
        restarting = not self._stopping.is_set() and self._held is None
        if restarting and cut:
            # the cut file is probed while the next FFmpeg starts: a probe waits its turn behind a
            # reconcile's, and recording must not wait on that
            self._spawn_task(self._finish_open_segments(run, cut))
        else:
            await self._finish_open_segments(run, cut)
        reason = self._exit_reason(run, rc, wrote)
        self._after_exit(run, rc, reason)
        if restarting:
            await self._wait_before_retry(run, reason, recorded=recorded and (wrote or run.segments > 0))

    def _stop_run(self, run: _Run, q_wait: float, why: str) -> None:
        """Stop this run's FFmpeg in the background (from a callback), once."""
        proc = run.proc
        if proc is None or proc.returncode is not None or run.stopper is not None:
            return
        run.stop_why = why
        run.stopper = self._spawn_task(stop_process(proc, q_wait, 2.0, why=why, log=self.log))

    def _exit_reason(self, run: _Run, rc: int | None, wrote: bool) -> str:
        if self._stopping.is_set() or run.stop_why == "hold":
            return "stopped"
        if run.stop_why is not None:
            return run.stop_why
        lines = list(run.stderr)
        codec = ffmpeg.audio_refused(lines)
        if codec and self.camera.audio == "auto" and self._audio_mode == "copy":
            self._audio_mode = "aac"
            self.log.info("audio_transcoding", codec=codec, reason="mp4 refuses codec; transcoding to AAC")
            self._remember_audio(codec)
            return "audio_transcode"
        if run.segments == 0 and not wrote:
            run.diagnosis = diagnose.diagnose(lines, lasted=time.monotonic() - run.started,
                                              timeout=self.camera.timeout_seconds)
            return run.diagnosis.state
        if rc is not None and rc < 0:
            return "killed"
        return "camera_dropped" if rc == 0 else "error"

    def _after_exit(self, run: _Run, rc: int | None, reason: str) -> None:
        self._last_exit_wall = time.time()
        self.current_file = None
        suppressed = ffmpegout.pop_suppressed(self.camera.id)
        if suppressed:
            self.log.warning("ffmpeg_output_suppressed", count=suppressed)
        lasted = time.monotonic() - run.started
        tail = [mask_text(line, self._secrets) for line in list(run.stderr)[-8:]]
        if reason == "stopped":
            self.log.info("ffmpeg_stopped", rc=rc, run_seconds=round(lasted, 1), segments=run.segments)
            return
        self.restarts += 1
        self.last_exit = {"reason": reason, "rc": rc, "at": self._last_exit_wall,
                          "run_seconds": round(lasted, 1), "segments": run.segments,
                          "stderr": tail[-3:]}
        metrics.FFMPEG_RESTARTS.labels(self.camera.id, reason).inc()
        d = run.diagnosis
        if d is not None and d.state in diagnose.TROUBLE_STATES:
            self._in_trouble(d, rc, tail)
            return
        level = "warning" if reason in ("camera_dropped", "stall", *IMMEDIATE) else "error"
        getattr(self.log, level)("ffmpeg_exited", rc=rc, reason=reason, run_seconds=round(lasted, 1),
                                 segments=run.segments, stderr=tail)
        if reason not in IMMEDIATE:
            self._set_state("backoff")

    def _in_trouble(self, d: diagnose.Diagnosis, rc: int | None, tail: list[str]) -> None:
        """A camera FFmpeg cannot record: its state says why; logged once per episode (and per cause)."""
        self._hint = diagnose.hint(d, self.camera)
        if self.last_exit is not None:
            self.last_exit.update(cause=d.cause, hint=self._hint)
        if self._trouble != (d.state, d.cause):
            self._trouble = (d.state, d.cause)
            self.log.warning("camera_unavailable", state=d.state, cause=d.cause, hint=self._hint,
                             url=self.camera.masked_url, rc=rc,
                             ffmpeg=mask_text(d.line, self._secrets)[:300], stderr=tail)
        self._set_state(d.state)

    async def _wait_before_retry(self, run: _Run, reason: str, *, recorded: bool) -> None:
        d = run.diagnosis
        ended = Exit(reason=reason, lasted=time.monotonic() - run.started, recorded=recorded,
                     segments=run.segments, unreachable=reason == "unreachable",
                     busy=d is not None and d.cause == "busy")
        delay = max(self._restart.delay(ended), self._restart.name_wait(self._newest_name, self._last_exit_wall))
        self.log.debug("ffmpeg_restart_scheduled", reason=reason, delay=round(delay, 2))
        if d is not None and reason in diagnose.TROUBLE_STATES and delay >= 30:
            self.log.info("camera_retry_scheduled", state=reason, cause=d.cause, delay=round(delay))
        await self._restart.wait(delay, ended)
        if not self._stopping.is_set() and reason not in diagnose.TROUBLE_STATES:  # those are logged once
            self.log.info("ffmpeg_restarted", reason=reason, attempt=self._restart.backoff.attempt,
                          waited=round(delay, 2))

    # ------------------------------------------------------------------ FFmpeg output

    def _on_list_line(self, run: _Run, line: str) -> None:
        """stdout: the segment list, one closed segment per line."""
        entry = ffmpeg.parse_list_line(line)
        if entry is not None:
            self._segment_closed(run, entry, self.clock.mono())

    def _on_stderr_line(self, run: _Run, line: str) -> None:
        """stderr: a segment opened, a problem worth the journal while recording, or chatter."""
        run.stderr.append(line)
        opened = ffmpeg.parse_opening(line)
        if opened is not None:
            self._segment_opened(run, opened)
        elif ffmpeg.stderr_level(line) and self.state == "recording":
            ffmpegout.forward(self.camera.id, line, self.log, self._secrets)
        else:
            self.log.debug("ffmpeg_output", line=mask_text(line, self._secrets))

    def _segment_opened(self, run: _Run, rel: str) -> None:
        path = str(self.root / self.camera.id / rel)
        run.opened[os.path.basename(rel)] = path
        self.current_file = path
        self._fp.path = path
        parsed = parse_segment_path(self.root, path)
        if parsed is not None and (self._newest_name is None or parsed[1] > self._newest_name):
            self._newest_name = parsed[1]
        now = time.time()
        if now // 86400 != self._ready_day and any(day not in self._days_ready for day in day_names(now)):
            self._spawn_task(self._ensure_days_soon(time.time()))

    def _segment_closed(self, run: _Run, entry: ffmpeg.ListEntry, mono_now: float) -> None:
        path = run.opened.pop(entry.name, None)
        offset = self.clock.offset()  # a step is noticed (and told) before this segment is stamped
        if path is None:  # FFmpeg closed a file it never announced: find it by name
            path = find_segment(self.root, self.camera.id, entry.name, mono_now + offset)
        growth = self._last_growth(path, offset)
        stamp = run.timeline.close(entry.start, entry.end, mono_now=mono_now, offset=offset, last_growth=growth,
                                   growth_gap=self._fp.max_gap)
        if stamp.by_arrival or stamp.recovered:
            self._drift(run, stamp)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        self._emit(run, path, stamp.start, stamp.end, size, "ffmpeg", mono_now + offset)
        if self.state != "recording" and self._held is None:
            self._became_recording()
        if self.current_file == path:
            self.current_file = None

    def _last_growth(self, path: str, offset: float) -> float | None:
        """Monotonic time ``path`` last grew: when a tick saw it, refined by its mtime when that agrees
        (a clock step between the write and now would otherwise move it by the step)."""
        fp = self._fp
        if fp.seen_path != path or fp.size <= 0:
            return None
        seen = fp.grew_mono
        if fp.grew_wall is not None:
            by_mtime = fp.grew_wall - offset
            if seen - self.poller.tick - 0.5 <= by_mtime <= seen + 0.05:
                return by_mtime
        return seen

    def _emit(self, run: _Run, path: str, start: float, end: float, size: int, source: str,
              closed_at: float) -> None:
        event = SegmentEvent(camera_id=self.camera.id, path=path, start=start, end=end, size_bytes=size,
                             run_id=run.run_id, seq=run.seq, source=source, closed_at=closed_at)
        run.seq += 1
        run.segments += 1
        self.segments_total += 1
        self.last_segment_end = max(event.end, self.last_segment_end or event.end)  # a cut file may come late
        metrics.SEGMENTS.labels(self.camera.id).inc()
        metrics.SEGMENT_BYTES.labels(self.camera.id).inc(event.size_bytes)
        metrics.note_segment_end(self.camera.id, event.end)
        try:
            self.sink(event)
        except Exception as exc:  # the index must never stop recording
            self.log.error("segment_sink_failed", error=repr(exc), path=event.path)

    def _drift(self, run: _Run, stamp: Stamp) -> None:
        """Stream time parted from wall time: say so once an episode; restart if it is the camera."""
        if stamp.episode_started:
            metrics.CAMERA_RESYNCS.labels(self.camera.id, "timestamps_drift").inc()
            self.log.warning("timestamps_drift", lag_seconds=round(stamp.lag, 3), run_id=run.run_id,
                             action="segments stamped by arrival time until the stream runs true; no gap")
        elif stamp.recovered:
            self.log.info("timestamps_recovered", run_id=run.run_id, action="run re-anchored")
        if (stamp.by_arrival and stamp.episode_seconds >= PERSISTENT and not self.wallclock_timestamps
                and run.stop_why is None):
            self.wallclock_timestamps = True
            metrics.CAMERA_RESYNCS.labels(self.camera.id, "arrival_timestamps").inc()
            self.log.warning("camera_resync", reason="timestamps_drift",
                             seconds=round(stamp.episode_seconds, 1), run_id=run.run_id,
                             action="restarting FFmpeg with arrival-time timestamps so files play at "
                                    "the speed they were recorded at")
            self._stop_run(run, 3.0, "resync")

    def _became_recording(self) -> None:
        if self._trouble is not None:
            self.log.info("camera_online", url=self.camera.masked_url, after=self._trouble[0])
        self._trouble = self._hint = None
        self._set_state("recording")
        run = self._run
        if run is not None:
            self.stream = diagnose.input_codecs(list(run.stderr))
            audio = self.stream.get("audio")
            if self.camera.audio == "auto" and self._memory is not None:
                # a camera whose audio became MP4-friendly goes back to copy at its next start
                self._remember_audio(audio if audio and audio not in ffmpeg.MP4_AUDIO_CODECS else None,
                                     codec=audio)

    def _remember_audio(self, refused: str | None, codec: str | None = None) -> None:
        """Keep the audio decision for the next daemon start (``streammemory``), off the loop."""
        if self._memory is not None and self.camera.audio == "auto":
            mode = "aac" if refused else "copy"
            self._spawn_task(asyncio.to_thread(self._memory.remember, self.camera, mode, refused or codec))

    async def _finish_open_segments(self, run: _Run, paths: list[str]) -> None:
        """A file FFmpeg never closed (killed, crashed) is still footage: index what it holds."""
        for path in paths:
            got = await cutfile.recover(path, run.timeline, self.clock.offset, self.probe, self.log)
            if got is not None:
                self._emit(run, got.path, got.start, got.end, got.size, "recovered", time.time())

    # ------------------------------------------------------------------ ticks and clock steps

    def _on_tick(self, now: float) -> None:
        """Every poller tick: bytes flowing means recording; output not growing means stalled."""
        run = self._run
        if run is None or run.proc is None or run.proc.returncode is not None or run.stop_why:
            return
        fp = self._fp
        if fp.wrote_bytes and self.state != "recording" and self._held is None:
            self._became_recording()  # starting, or retrying while in trouble
        limit = self.camera.stall_seconds + (0.0 if fp.wrote_bytes else STARTUP_GRACE)
        if now - fp.grew_mono >= limit:
            self._set_state("stalled")
            self.log.warning("camera_stalled", seconds=round(now - fp.grew_mono, 1),
                             current_file=self.current_file)
            self._stop_run(run, 0.0, "stall")

    def _on_clock_step(self, step: Step) -> None:
        run = self._run
        if step.delta < 0:
            # names come from the wall clock: this run would reopen names it already wrote
            if run is not None:
                self._stop_run(run, 3.0, "clock_step")
            return
        # forward: keep recording; FFmpeg needs the new day's directory at its next cut
        self._days_ready.clear()
        self._ready_day = -1
        self._spawn_task(self._ensure_days_soon(step.wall_after))

    # ------------------------------------------------------------------ helpers

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _ensure_days_soon(self, now: float) -> None:
        try:
            await asyncio.to_thread(self._ensure_days, now)
        except OSError as exc:  # FFmpeg will fail to open the next file and be restarted
            self.log.error("storage_error", path=str(self.root / self.camera.id), error=str(exc))

    def _ensure_days(self, now: float, force: bool = False) -> None:
        """FFmpeg's strftime names need the day directory to exist: make today's and tomorrow's."""
        names = day_names(now)
        for day in names:
            if force or day not in self._days_ready:
                (self.root / self.camera.id / day).mkdir(parents=True, exist_ok=True)
        self._days_ready = set(names)
        self._ready_day = int(now // 86400)

    async def _sleep(self, seconds: float) -> None:
        await self._restart.sleep(seconds)

    async def _wait_released(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        rel = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait([stop, rel], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            rel.cancel()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.log.debug("camera_state", state=state, previous=self.state)
            self.state = state
            self.state_since = time.time()
        metrics.set_camera_state(self.camera.id, state)
