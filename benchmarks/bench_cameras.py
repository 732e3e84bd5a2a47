"""The daemon's own cost per camera, and how fast recording resumes when a camera returns.

Runs the real ``recorderd run`` against a real PostgreSQL and ONE shared test camera served to N
clients (so the encoding cost does not grow with N), then reads the daemon's own CPU time and RSS
from /proc (children, i.e. FFmpeg, are not counted). Prints rates measured in this run.

    python benchmarks/bench_cameras.py [--cameras 1,10,50] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fixtures_cam import TestCam  # noqa: E402
from fixtures_pg import PgCluster  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, self only


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(path: Path, root: Path, url: str, n: int, dsn: str) -> None:
    cams = [{"id": f"cam-{i:03d}", "url": url, "segment_seconds": 10, "stall_seconds": 20}
            for i in range(n)]
    path.write_text(yaml.safe_dump({"storage": {"root": str(root), "min_free_percent": 1},
                                    "database": {"dsn": dsn}, "metrics": {"listen": None},
                                    "cameras": cams}))


def wait_status(status: Path, pred: object, timeout: float,
                proc: subprocess.Popen[bytes] | None = None) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"recorderd exited with {proc.returncode}; see its log")
        try:
            data = json.loads(status.read_text())
            if pred(data):  # type: ignore[operator]
                return data  # type: ignore[no-any-return]
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting on {status}")


def events(log: Path, name: str) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if ev.get("event") == name:
            out.append(ev)
    return out


def ts(ev: dict[str, object]) -> float:
    return datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00")).timestamp()


def run_one(n: int, seconds: float, cam: TestCam, pg: PgCluster, work: Path, recovery: bool) -> None:
    root = work / f"rec-{n}"
    cfg = work / f"cameras-{n}.yaml"
    dsn = pg.create_database(f"bench_{n}_{int(time.time())}")
    write_config(cfg, root, cam.url, n, dsn)
    log = work / f"daemon-{n}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([str(REPO / ".venv/bin/recorderd"), "run", "--config", str(cfg),
                                 "--log-format", "json"], stdout=fh, stderr=subprocess.STDOUT)
    status = root / ".recorderd" / "status.json"
    try:
        t_start = time.monotonic()
        wait_status(status, lambda d: sum(c["is_recording"] for c in d["cameras"]) == n, 60 + n, proc)
        all_recording = time.monotonic() - t_start
        time.sleep(5)  # warm-up past start-up work (migrations, first segments)
        c0, w0 = proc_cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, w1 = proc_cpu_seconds(proc.pid), time.monotonic()
        cpu_pct = 100 * (c1 - c0) / (w1 - w0)
        rss = proc_rss_mib(proc.pid)
        segs = len(list(root.glob("*/*/*.mp4")))
        print(f"cameras={n:3d}  daemon CPU {cpu_pct:5.2f}% of one core  ({cpu_pct / n:.3f}% per camera)  "
              f"RSS {rss:6.1f} MiB  all recording after {all_recording:.1f}s  files={segs}", flush=True)
        if recovery:
            cam.kill()
            wait_status(status, lambda d: all(c["state"] == "offline" for c in d["cameras"]), 60)
            time.sleep(3)
            back = time.time()
            cam.restart()
            wait_status(status, lambda d: all(c["state"] == "recording" for c in d["cameras"]), 60)
            online = sorted(ts(e) - back for e in events(log, "camera_online") if ts(e) >= back)
            if online:
                print(f"recovery after the camera returned ({len(online)} cameras): recording state after "
                      f"first {online[0]:.2f}s, median {online[len(online) // 2]:.2f}s, last {online[-1]:.2f}s "
                      "(camera back -> FFmpeg reconnected, probed the stream and opened its file)", flush=True)
            time.sleep(12)  # let the first segment of the new runs close and be indexed
            out = pg.psql("SELECT extract(epoch FROM min(start_time)) FROM segments "
                          f"WHERE start_time > to_timestamp({back - 1}) GROUP BY camera_id", dbname=dsn.rsplit("/", 1)[1])
            firsts = sorted(float(x) - back for x in out.split() if x.strip())
            if firsts:
                print(f"footage gap: first recorded instant after the camera came back: first {firsts[0]:.2f}s, "
                      f"median {firsts[len(firsts) // 2]:.2f}s, last {firsts[-1]:.2f}s "
                      "(FFmpeg keeps the packets it probed, so footage starts before the file opens)", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(30)
        print(f"           SIGTERM -> exit {proc.returncode} in {time.monotonic() - t0:.2f}s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", default="1,10,50")
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    counts = [int(x) for x in args.cameras.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-cameras-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        pg = PgCluster(work / "pg")
        pg.start()
        cam = TestCam(fps=10, gop=10)
        cam.start()
        try:
            print(f"one shared camera (320x240, 10 fps, keyframe 1/s), 10 s segments, {args.seconds:.0f}s "
                  f"window, {os.cpu_count()} cores", flush=True)
            for i, n in enumerate(counts):
                run_one(n, args.seconds, cam, pg, work, recovery=(i == len(counts) - 1))
        finally:
            cam.stop()
            pg.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
