"""What recording under recorderd costs the box, against the same FFmpeg commands run bare.

Why: the daemon's promise is that supervising, indexing and serving cost next to nothing beside the
recording itself. The honest measure is whole-box CPU: the daemon + its FFmpeg children +
PostgreSQL, against FFmpeg alone running the identical argv (``recorderd.ffmpeg.build_command`` for
the very cameras the daemon's config loader builds, fed their URL through an inherited pipe as
``recorderd.process.spawn`` does). For each camera count N, in one run:

1. bare before: N bare FFmpegs (cwd, day directories and environment as the supervisor gives them,
   stdio on /dev/null, no setpriv) record until every camera has a file, warm up, then their summed
   utime+stime over the window is read from /proc;
2. under recorderd: the real ``recorderd run`` with a fresh database and the same N cameras; once all
   N record and the warm-up is over, the window's CPU is split into the daemon (all its threads),
   its children (FFmpeg; children reaped during the window are counted through the daemon's
   cutime+cstime) and PostgreSQL (the postmaster, its live children and its reaped ones). Then every
   finished segment on disk must have its row in ``segments``;
3. bare after: as 1, so that drift of the box during the run shows as a before/after gap.

One shared test camera (320x240, 10 fps, keyframe 1/s) serves all N clients, so its encoding cost
does not grow with N; it is not counted on either side, but printed, as is the whole box's busy
time (other load on the box shows up there). CPU is in % of ONE core. The issue's targets (ratio
<= 1.05 at 30 cameras, <= 1.02 at 100; 200 report only) are printed beside the figures, never
asserted; the exit status is non-zero only when something broke (a camera never recorded, an FFmpeg
died in the window, a finished segment was not indexed, the daemon exited badly).

    python benchmarks/bench_overhead.py [--cameras 30,100,200] [--seconds 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# bench_cameras also puts tests/ on sys.path for the fixtures
from bench_cameras import CLK_TCK, proc_rss_mib, wait_status, write_config  # noqa: E402
from fixtures_cam import TestCam  # noqa: E402
from fixtures_pg import PgCluster  # noqa: E402

from recorderd import ffmpeg  # noqa: E402
from recorderd.config import Camera, load_config  # noqa: E402
from recorderd.layout import day_names, ffmpeg_pattern  # noqa: E402
from recorderd.process import SPAWNS_PER_SECOND  # noqa: E402

T = TypeVar("T")
SEGMENT_SECONDS = 10  # bench_cameras.write_config's segment length
INDEX_LAG_MAX = 20.0  # seconds a closed segment may take to get its row before it counts as missed


class BenchError(Exception):
    """Something broke: the figures of this camera count are not usable."""


class CameraDied(BenchError):
    """The shared test camera exited: the phase is repeated once with the camera restarted."""


# ---------------------------------------------------------------------- /proc


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    ppid: int
    start: int  # starttime in clock ticks: a recycled pid is a different process
    cpu: float  # utime + stime, seconds, all threads
    reaped: float  # cutime + cstime: children (and their reaped children) waited for

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start


def read_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    f = tail.split()  # f[0] is field 3 (state): utime..cstime are fields 14..17, starttime is 22
    return ProcStat(pid=pid, comm=head.partition("(")[2], ppid=int(f[1]), start=int(f[19]),
                    cpu=(int(f[11]) + int(f[12])) / CLK_TCK, reaped=(int(f[13]) + int(f[14])) / CLK_TCK)


def box_busy_seconds() -> float:
    """CPU seconds the whole box spent not idle (all cores), from the first line of /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait; guest time is already inside user
    return (sum(f[:8]) - idle) / CLK_TCK


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every process's CPU times at one instant, and the box's busy time."""

    at: float
    procs: dict[int, ProcStat]
    box_busy: float


def snapshot() -> Snapshot:
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := read_stat(int(name))) is not None:
            procs[st.pid] = st
    return Snapshot(time.monotonic(), procs, box_busy_seconds())


@dataclass(frozen=True, slots=True)
class TreeCpu:
    """CPU seconds a parent and its direct children used between two snapshots."""

    own: float
    children: float  # live children's deltas (a child born in the window from 0) + reaped ones
    reaped: float  # the part of ``children`` from children that ended in the window
    started: int  # children born in the window
    ended: int  # children gone in the window
    live: int  # children at the end


def tree_cpu(parent: int, a: Snapshot, b: Snapshot) -> TreeCpu:
    pa, pb = a.procs.get(parent), b.procs.get(parent)
    if pa is None or pb is None or pa.start != pb.start:
        raise BenchError(f"process {parent} did not live through the window")
    kids_a = {s.key: s for s in a.procs.values() if s.ppid == parent}
    kids_b = {s.key: s for s in b.procs.values() if s.ppid == parent}
    live = sum(s.cpu - (kids_a[k].cpu if k in kids_a else 0.0) for k, s in kids_b.items())
    gone = [s for k, s in kids_a.items() if k not in kids_b]
    # a child reaped in the window moved its whole life into cutime: take off what it had at the start
    reaped = (pb.reaped - pa.reaped) - sum(s.cpu for s in gone)
    return TreeCpu(own=pb.cpu - pa.cpu, children=live + reaped, reaped=reaped,
                   started=sum(k not in kids_a for k in kids_b), ended=len(gone), live=len(kids_b))


def pct(seconds: float, a: Snapshot, b: Snapshot) -> float:
    """CPU seconds over the window as % of one core."""
    return 100 * seconds / (b.at - a.at)


# ---------------------------------------------------------------------- phases


@dataclass(slots=True)
class Phase:
    """One phase's window, in % of one core."""

    ffmpeg: float
    camera: float  # the shared test camera (not counted in the ratio)
    box: float  # everything on the box
    busiest_others: str  # the other processes that used the most of ``box``
    daemon: float = 0.0
    pg: float = 0.0

    @property
    def total(self) -> float:
        return self.ffmpeg + self.daemon + self.pg

    def tail(self) -> str:
        other = self.box - self.total - self.camera
        return (f"| camera {self.camera:5.2f}%  box {self.box:6.2f}% (other {other:5.2f}%"
                f"{': ' + self.busiest_others if self.busiest_others else ''})")


def busiest_others(a: Snapshot, b: Snapshot, measured: set[int], count: int = 3) -> str:
    """The processes outside the measurement that used >= 0.5% of a core in the window.

    "other" also holds the kernel's own time (softirq for the loopback RTSP traffic, kworkers) and
    processes that began and ended within the window, which no snapshot sees.
    """
    used = []
    for pid, sb in b.procs.items():
        sa = a.procs.get(pid)
        if pid in measured or (sa is not None and sa.start != sb.start):
            continue
        share = pct(sb.cpu - (sa.cpu if sa is not None else 0.0), a, b)
        if share >= 0.5:
            used.append((share, f"{sb.comm}[{pid}] {share:.1f}%"))
    return ", ".join(text for _, text in sorted(used, reverse=True)[:count])


@dataclass(slots=True)
class DaemonRun:
    phase: Phase
    children: TreeCpu
    rss_mib: float
    shutdown: str
    all_recording_s: float
    indexed: int
    finished: int
    index_wait_s: float


def camera_alive(cam: TestCam, what: str) -> None:
    if not cam.is_running:
        raise CameraDied(f"the test camera exited during {what}: {cam.stderr[-300:]!r}")


def bare_audio_mode(camera: Camera) -> str:
    """What the supervisor starts with: "auto" records as copy until FFmpeg refuses the codec."""
    return "copy" if camera.audio == "auto" else camera.audio


def start_bare(cameras: Sequence[Camera], root: Path) -> list[subprocess.Popen[bytes]]:
    """One FFmpeg per camera with the daemon's argv, cwd, day dirs and environment, paced like it."""
    procs = []
    for camera in cameras:
        procs.append(start_one(camera, root))
        time.sleep(1 / SPAWNS_PER_SECOND)
    return procs


def start_one(camera: Camera, root: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
    cam_dir = root / camera.id
    for day in day_names(time.time()):
        (cam_dir / day).mkdir(parents=True, exist_ok=True)
    argv = ffmpeg.build_command(camera, audio_mode=bare_audio_mode(camera), ffmpeg="ffmpeg",
                                pattern=ffmpeg_pattern(None), via_pipe=True)
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, ffmpeg.input_script(camera))
    finally:
        os.close(wfd)
    try:
        return subprocess.Popen(
            [a.replace(ffmpeg.INPUT_FD, str(rfd)) for a in argv], cwd=cam_dir, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(rfd,), start_new_session=True)
    finally:
        os.close(rfd)


def wait_bare_files(procs: list[subprocess.Popen[bytes]], cameras: Sequence[Camera], root: Path,
                    cam: TestCam, timeout: float) -> float:
    """Seconds until every camera directory holds a non-empty segment file.

    An FFmpeg that exits before recording is started again (at most 5 times), as the daemon would:
    the test camera answers 503 to some of 200 DESCRIBEs arriving together."""
    t0 = time.monotonic()
    waiting = {c.id for c in cameras}
    retries = {c.id: 0 for c in cameras}
    while waiting:
        camera_alive(cam, "the bare start")
        dead = [(i, c.id, p.returncode) for i, (c, p) in enumerate(zip(cameras, procs, strict=True))
                if p.poll() is not None]
        if any(retries[cid] >= 5 for _i, cid, _rc in dead):
            raise BenchError(f"bare FFmpeg exited before recording: {dead[:5]} ({len(dead)} in all)")
        for i, cid, _rc in dead:
            retries[cid] += 1
            procs[i] = start_one(cameras[i], root)
            time.sleep(1 / SPAWNS_PER_SECOND)
        waiting = {cid for cid in waiting
                   if not any(f.stat().st_size > 0 for f in (root / cid).glob("*/*.mp4"))}
        if waiting and time.monotonic() - t0 > timeout:
            raise BenchError(f"{len(waiting)} bare FFmpegs wrote no file in {timeout:.0f}s, "
                             f"e.g. {sorted(waiting)[:3]}")
        time.sleep(0.5)
    return time.monotonic() - t0


def stop_bare(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def bare_phase(cameras: Sequence[Camera], root: Path, cam: TestCam, args: argparse.Namespace) -> Phase:
    procs = start_bare(cameras, root)
    try:
        wait_bare_files(procs, cameras, root, cam, 60 + len(cameras))
        time.sleep(args.warmup)
        a = snapshot()
        time.sleep(args.seconds)
        b = snapshot()
        camera_alive(cam, "the bare window")
    finally:
        stop_bare(procs)
        shutil.rmtree(root, ignore_errors=True)
    used = 0.0
    for p in procs:
        sa, sb = a.procs.get(p.pid), b.procs.get(p.pid)
        if sa is None or sb is None or sa.start != sb.start:
            raise BenchError(f"bare FFmpeg {p.pid} did not live through the window (exit {p.returncode})")
        used += sb.cpu - sa.cpu
    measured = {p.pid for p in procs} | {cam.pid or 0}
    return Phase(ffmpeg=pct(used, a, b), camera=camera_pct(cam, a, b), box=pct(b.box_busy - a.box_busy, a, b),
                 busiest_others=busiest_others(a, b, measured))


def camera_pct(cam: TestCam, a: Snapshot, b: Snapshot) -> float:
    pid = cam.pid
    sa, sb = (a.procs.get(pid), b.procs.get(pid)) if pid is not None else (None, None)
    return pct(sb.cpu - sa.cpu, a, b) if sa is not None and sb is not None else float("nan")


def index_check(root: Path, pg: PgCluster, dbname: str) -> tuple[int, int, float]:
    """(indexed, finished, seconds waited): every closed segment on disk must get its row.

    The newest file of each camera is still being written and is left out; a file that closed a
    moment ago gets up to ``INDEX_LAG_MAX`` seconds to be indexed.
    """
    finished: set[str] = set()
    for cam_dir in root.glob("cam-*"):
        files = sorted(cam_dir.glob("*/*.mp4"), key=lambda f: (f.parent.name, f.name))
        finished.update(str(f.relative_to(root)) for f in files[:-1])
    t0 = time.monotonic()
    while True:
        rows = pg.psql("SELECT path FROM segments", dbname=dbname).split()
        indexed = finished & {"/".join(Path(r).parts[-3:]) for r in rows}
        waited = time.monotonic() - t0
        if len(indexed) == len(finished) or waited > INDEX_LAG_MAX:
            return len(indexed), len(finished), waited
        time.sleep(0.5)


def start_daemon(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as fh:
        return subprocess.Popen([str(REPO / ".venv/bin/recorderd"), "run", "--config", str(cfg),
                                 "--log-format", "json"], stdout=fh, stderr=subprocess.STDOUT)


def stop_daemon(proc: subprocess.Popen[bytes], problems: list[str], n: int) -> str:
    """SIGTERM; what happened, for the report."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        problems.append(f"N={n}: recorderd ignored SIGTERM for 60s (killed)")
        return "SIGTERM ignored for 60s, killed"
    if proc.returncode != 0:
        problems.append(f"N={n}: recorderd exited {proc.returncode} on SIGTERM")
    return f"SIGTERM -> exit {proc.returncode} in {time.monotonic() - t0:.2f}s"


def measure_daemon(proc: subprocess.Popen[bytes], pg: PgCluster, cam: TestCam,
                   args: argparse.Namespace) -> tuple[Phase, TreeCpu, float]:
    pg_pid = pg.pid
    if pg_pid is None:
        raise BenchError("PostgreSQL is not running")
    time.sleep(args.warmup)
    a = snapshot()
    time.sleep(args.seconds)
    b = snapshot()
    camera_alive(cam, "the window under recorderd")
    if proc.poll() is not None:
        raise BenchError(f"recorderd exited {proc.returncode} during the window")
    rss = proc_rss_mib(proc.pid)
    d, p = tree_cpu(proc.pid, a, b), tree_cpu(pg_pid, a, b)
    measured = {proc.pid, pg_pid, cam.pid or 0} | {
        s.pid for snap in (a, b) for s in snap.procs.values() if s.ppid in (proc.pid, pg_pid)}
    phase = Phase(ffmpeg=pct(d.children, a, b), daemon=pct(d.own, a, b), pg=pct(p.own + p.children, a, b),
                  camera=camera_pct(cam, a, b), box=pct(b.box_busy - a.box_busy, a, b),
                  busiest_others=busiest_others(a, b, measured))
    return phase, d, rss


def daemon_phase(n: int, cfg: Path, root: Path, work: Path, cam: TestCam, pg: PgCluster,
                 args: argparse.Namespace, problems: list[str]) -> DaemonRun:
    dbname = f"overhead_{n}_{int(time.time())}"
    write_config(cfg, root, cam.url, n, pg.create_database(dbname))
    proc = start_daemon(cfg, work / f"daemon-{n}.log")
    try:
        t0 = time.monotonic()
        try:
            wait_status(root / ".recorderd" / "status.json",
                        lambda d: sum(c["is_recording"] for c in d["cameras"]) == n, 60 + n, proc)
        except SystemExit as exc:  # wait_status's way of giving up
            camera_alive(cam, "the daemon's start")
            raise BenchError(f"not all {n} cameras recording under recorderd: {exc}") from None
        all_recording = time.monotonic() - t0
        phase, kids, rss = measure_daemon(proc, pg, cam, args)
        indexed, finished, waited = index_check(root, pg, dbname)
    finally:
        shutdown = stop_daemon(proc, problems, n)
        shutil.rmtree(root, ignore_errors=True)
        pg.drop_database(dbname)
    return DaemonRun(phase, kids, rss, shutdown, all_recording, indexed, finished, waited)


def retry_on_camera_death(cam: TestCam, what: str, fn: Callable[[], T]) -> T:
    """A crash of the test camera (not of what is measured) costs one repeat of the phase."""
    try:
        return fn()
    except CameraDied as exc:
        print(f"{what}: {exc}; restarting the camera and repeating the phase", flush=True)
        cam.restart(timeout=30)
        return fn()


# ---------------------------------------------------------------------- report


def target(n: int) -> float | None:
    if n <= 30:
        return 1.05
    if n <= 100:
        return 1.02
    return None


def print_bare(n: int, when: str, ph: Phase) -> None:
    print(f"N={n:<3d} bare {when:<6s}      FFmpeg {ph.ffmpeg:7.2f}%  {ph.tail()}", flush=True)


def print_daemon(n: int, r: DaemonRun, problems: list[str]) -> None:
    ph, k = r.phase, r.children
    print(f"N={n:<3d} under recorderd  total  {ph.total:7.2f}% = FFmpeg {ph.ffmpeg:.2f}% + daemon {ph.daemon:.2f}%"
          f" + PostgreSQL {ph.pg:.2f}%  {ph.tail()}", flush=True)
    print(f"N={n:<3d}                  daemon RSS {r.rss_mib:.1f} MiB; all {n} recording after "
          f"{r.all_recording_s:.1f}s; children at the end {k.live}, started/ended in the window "
          f"{k.started}/{k.ended} (reaped CPU {k.reaped:.2f}s); {r.shutdown}", flush=True)
    missed = r.finished - r.indexed
    print(f"N={n:<3d}                  indexed {r.indexed} of {r.finished} finished segments"
          + (f" after {r.index_wait_s:.1f}s" if r.index_wait_s >= 0.5 else "")
          + (f"  MISSED {missed}" if missed else ""), flush=True)
    if missed:
        problems.append(f"N={n}: {missed} of {r.finished} finished segments not indexed after "
                        f"{INDEX_LAG_MAX:.0f}s")
    if k.live != n or k.started or k.ended:
        problems.append(f"N={n}: {k.live} children at the end of the window, {k.started} started and "
                        f"{k.ended} ended in it (expected {n}, 0, 0)")
    if r.finished < n:  # warm-up + window hold at least one closed file per camera
        problems.append(f"N={n}: only {r.finished} finished segments on disk for {n} cameras")


def print_summary(n: int, before: Phase, r: DaemonRun, after: Phase) -> None:
    bare = (before.ffmpeg + after.ffmpeg) / 2
    ratio = r.phase.total / bare
    t = target(n)
    verdict = "report only" if t is None else f"target <= {t:.2f}: {'met' if ratio <= t else 'MISSED'}"
    drift = 100 * abs(before.ffmpeg - after.ffmpeg) / bare
    print(f"N={n:<3d} SUMMARY  bare {bare:.2f}% (before {before.ffmpeg:.2f}, after {after.ffmpeg:.2f}: "
          f"{drift:.1f}% apart)  "
          f"under recorderd {r.phase.total:.2f}%  ratio {ratio:.3f} ({verdict})  "
          f"FFmpeg under daemon/bare {r.phase.ffmpeg / bare:.3f}  daemon {r.phase.daemon:.2f}%  "
          f"PostgreSQL {r.phase.pg:.2f}%  daemon RSS {r.rss_mib:.1f} MiB", flush=True)


def run_one(n: int, work: Path, cam: TestCam, pg: PgCluster, args: argparse.Namespace,
            problems: list[str]) -> None:
    t0 = time.monotonic()
    cfg = work / f"cameras-{n}.yaml"
    root = work / f"rec-{n}"
    write_config(cfg, root, cam.url, n, pg.dsn("unused"))  # the daemon phase rewrites its dsn only
    cameras = load_config(cfg).cameras
    bare_root = work / f"bare-{n}"
    before = retry_on_camera_death(cam, f"N={n} bare before", lambda: bare_phase(cameras, bare_root, cam, args))
    print_bare(n, "before", before)
    run = retry_on_camera_death(cam, f"N={n} under recorderd",
                                lambda: daemon_phase(n, cfg, root, work, cam, pg, args, problems))
    print_daemon(n, run, problems)
    after = retry_on_camera_death(cam, f"N={n} bare after", lambda: bare_phase(cameras, bare_root, cam, args))
    print_bare(n, "after", after)
    print_summary(n, before, run, after)
    print(f"N={n:<3d} took {time.monotonic() - t0:.0f}s", flush=True)


def ffmpeg_version() -> str:
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False).stdout
        return out.split()[2]
    except (OSError, IndexError):
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", default="30,100,200")
    ap.add_argument("--seconds", type=float, default=60, help="window; a multiple of the 10 s segment")
    ap.add_argument("--warmup", type=float, default=10)
    args = ap.parse_args()
    counts = [int(x) for x in args.cameras.split(",")]
    if args.seconds % SEGMENT_SECONDS:
        print(f"note: --seconds {args.seconds:g} is not a multiple of the {SEGMENT_SECONDS} s segment: "
              "windows may hold different numbers of file changes", file=sys.stderr)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        pg = PgCluster(work / "pg")
        pg.start()
        cam = TestCam(fps=10, gop=10)
        cam.start(timeout=30)
        try:
            print(f"{os.cpu_count()} cores, kernel {os.uname().release}, ffmpeg {ffmpeg_version()}; one shared "
                  f"camera (320x240, 10 fps, keyframe 1/s), {SEGMENT_SECONDS} s segments; warm-up "
                  f"{args.warmup:g}s, window {args.seconds:g}s; CPU in % of ONE core", flush=True)
            for n in counts:
                try:
                    run_one(n, work, cam, pg, args, problems)
                except BenchError as exc:
                    problems.append(f"N={n}: {exc}")
                    print(f"N={n:<3d} FAILED: {exc}", flush=True)
                    if not cam.is_running:
                        cam.restart(timeout=30)
        finally:
            cam.stop()
            pg.destroy()
    for p in problems:
        print(f"problem: {p}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
