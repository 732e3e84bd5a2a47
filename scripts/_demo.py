"""Driver for scripts/demo: PostgreSQL + two test cameras + ``recorderd run``, cleaned up on exit."""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fixtures_cam import TestCam, port_accepts  # noqa: E402
from fixtures_pg import PgCluster  # noqa: E402

DEMO = REPO / "var" / "demo"
PG_PORT = 55432
CAM_PORTS = (8554, 8555)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    ap.add_argument("--segment-seconds", type=int, default=10)
    args = ap.parse_args()
    DEMO.mkdir(parents=True, exist_ok=True)
    os.chmod(DEMO, 0o755)
    for p in (REPO / "var", DEMO):
        os.chmod(p, 0o755)

    pg = PgCluster(DEMO / "pg", port=PG_PORT)
    if not pg.is_running:
        pg.start()
    if "recorderd" not in pg.psql("SELECT datname FROM pg_database"):
        pg.create_database("recorderd")
    dsn = pg.dsn("recorderd")

    cams = []
    for port in CAM_PORTS:
        if port_accepts(port):
            sys.exit(f"port {port} is taken: is another demo running?")
    cams.append(TestCam(port=CAM_PORTS[0], user="admin", password="demo-s3cret", audio="alaw").start())
    cams.append(TestCam(port=CAM_PORTS[1], audio="aac", fps=15, gop=15).start())

    # sign-in tokens for the page and the API, new on every run (only their SHA-256 goes in the config)
    ops_token, viewer_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = [{"name": "ops", "sha256": hashlib.sha256(ops_token.encode()).hexdigest(), "clips": True},
              {"name": "city-1-viewer", "sha256": hashlib.sha256(viewer_token.encode()).hexdigest(),
               "tenants": ["city-1"], "clips": False}]
    root = DEMO / "recordings"
    config = DEMO / "cameras.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"root": str(root), "min_free_percent": 5},
        "database": {"dsn": dsn},
        "defaults": {"segment_seconds": args.segment_seconds, "stall_seconds": 15},
        "http": {"listen": "127.0.0.1:9108", "tokens": tokens},
        "cameras": [
            {"id": "cam-001", "name": "Entrada principal", "url": cams[0].url, "tenant": "city-1", "plan": "pro"},
            {"id": "cam-002", "name": "Parking", "url": cams[1].url, "tenant": "city-1", "plan": "basic"},
        ],
    }, sort_keys=False, allow_unicode=True))
    rd = str(REPO / ".venv" / "bin" / "recorderd")
    print(f"""
recorderd demo
  config      {config}
  footage     {root}
  PostgreSQL  {pg.dsn('recorderd')}
  cameras     {cams[0].url_without_credentials} (password, G.711 audio -> AAC), {cams[1].url}
  page        http://127.0.0.1:9108/  (from another machine: ssh -L 9108:127.0.0.1:9108 this-box)
  sign in     {ops_token}   (ops: every camera, may save clips)
              {viewer_token}   (city-1-viewer: city-1's cameras, watch only)
In another terminal:
  {rd} status  --config {config}
  {rd} search  --config {config} --camera cam-001
  {rd} storage --config {config}
  curl -s 127.0.0.1:9108/metrics | grep ^recorderd_camera ; curl -s 127.0.0.1:9108/healthz
  curl -s -H "Authorization: Bearer {ops_token}" 127.0.0.1:9108/api/v1/cameras
  edit {config} (add a camera, change segment_seconds): it is picked up live
Ctrl-C stops the daemon (each FFmpeg closes its segment cleanly).
""", flush=True)
    daemon = subprocess.Popen([rd, "run", "--config", str(config)])
    try:
        if args.seconds:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(0.5)
            for cmd in (["status"], ["search", "--camera", "cam-001"], ["storage"]):
                print(f"\n$ recorderd {' '.join(cmd)} --config {config}", flush=True)
                subprocess.run([rd, *cmd, "--config", str(config)], check=False)
            daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait()
    except KeyboardInterrupt:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait()
    finally:
        for cam in cams:
            cam.stop()
        pg.stop()
    print(f"daemon exited with {rc}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
