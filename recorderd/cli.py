"""``recorderd`` command line: run the daemon, check a config, query the index."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from recorderd import __version__
from recorderd.config import Config, ConfigError, load_config

EXIT_BAD_CONFIG = 2
DEFAULT_STATE_DIR = Path("/var/lib/recorderd")  # the unit's StateDirectory=
DEFAULT_CONFIG = Path("/etc/recorderd/cameras.yaml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recorderd", description="24/7 camera recorder for NVR boxes")
    p.add_argument("--version", action="version", version=f"recorderd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help: str, positional: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if positional:
            sp.add_argument("config", type=Path, help="path to cameras.yaml")
        else:
            sp.add_argument("--config", "-c", type=Path, default=Path("/etc/recorderd/cameras.yaml"),
                            help="path to cameras.yaml (default: %(default)s)")
        return sp

    with_config("check-config", "validate a config file; exit 0 if good, 2 with every error if not",
                positional=True)
    r = with_config("run", "run the recorder (foreground; systemd runs this)")
    r.add_argument("--ffmpeg", default="ffmpeg", help="FFmpeg binary (default: %(default)s)")
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    r.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    r.add_argument("--state-dir", type=Path, default=None,
                   help="where the last good config is kept (default: $STATE_DIRECTORY, set by systemd)")
    with_config("migrate", "apply database migrations and exit")
    s = with_config("search", "list recorded segments of a camera overlapping a time range")
    s.add_argument("--camera", required=True, help="camera id")
    s.add_argument("--from", dest="from_", metavar="ISO8601", help="range start (UTC unless offset given)")
    s.add_argument("--to", metavar="ISO8601", help="range end (exclusive; a bare date means the end of that day)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    with_config("drain", "hand this node's cameras to the other nodes (make-before-break), then stop it")
    st = with_config("status", "per-camera live state from the running daemon and the index")
    st.add_argument("--json", action="store_true")
    sg = with_config("storage", "footage bytes per camera, tenant and plan, from the index")
    sg.add_argument("--json", action="store_true")
    sg.add_argument("--days", type=int, default=7, metavar="N",
                    help="full UTC days behind the bytes-per-day average (default: %(default)s)")
    sg.add_argument("--camera", metavar="ID", help="only this camera, with its bytes per UTC day")
    ex = with_config("export", "cut a camera's period into one MP4 (stream copy: no re-encoding)")
    ex.add_argument("--camera", required=True, help="camera id")
    ex.add_argument("--from", dest="from_", required=True, metavar="ISO8601", help="period start (UTC unless "
                    "an offset is given); the file starts at the keyframe at or before it")
    ex.add_argument("--to", required=True, metavar="ISO8601", help="period end (a bare date means the end of that day)")
    ex.add_argument("-o", "--output", required=True, type=Path, metavar="FILE", help="MP4 to write (must not exist)")
    ex.add_argument("--ffmpeg", default="ffmpeg", help="FFmpeg binary (default: %(default)s)")

    from recorderd import camprobe

    pr = sub.add_parser("probe", help="connect to a camera for a few seconds and say what it sends and how "
                        "it would record", description="connect to a camera (a URL, or --camera of a config) "
                        "for a few seconds: codecs, resolution, keyframe interval, bitrate, audio handling, "
                        "the state it would be in, and warnings", epilog=camprobe.EPILOG)
    camprobe.add_arguments(pr, DEFAULT_CONFIG)

    cl = sub.add_parser("clip", help="saved clips: create, list, rename, delete",
                        description="saved clips: periods cut into <root>/clips/, kept until deleted")
    clsub = cl.add_subparsers(dest="clip_command", required=True, metavar="ACTION")

    def clip_action(name: str, help: str) -> argparse.ArgumentParser:
        sp = clsub.add_parser(name, help=help, description=help)
        sp.add_argument("--config", "-c", type=Path, default=Path("/etc/recorderd/cameras.yaml"),
                        help="path to cameras.yaml (default: %(default)s)")
        return sp

    cc = clip_action("create", "cut a camera's period into a new clip (counts against the plan's max_clips)")
    cc.add_argument("--camera", required=True, help="camera id")
    cc.add_argument("--from", dest="from_", required=True, metavar="ISO8601", help="clip start")
    cc.add_argument("--to", required=True, metavar="ISO8601", help="clip end (at most 24 h after the start)")
    cc.add_argument("--name", required=True, help="1-200 characters")
    cc.add_argument("--json", action="store_true")
    cc.add_argument("--ffmpeg", default="ffmpeg", help="FFmpeg binary (default: %(default)s)")
    cls = clip_action("list", "list saved clips")
    cls.add_argument("--camera", metavar="ID", help="only this camera's clips")
    cls.add_argument("--json", action="store_true")
    cd = clip_action("delete", "delete a clip and its file")
    cd.add_argument("id", type=int, help="clip id (recorderd clip list)")
    cr = clip_action("rename", "rename a clip")
    cr.add_argument("id", type=int, help="clip id (recorderd clip list)")
    cr.add_argument("name", help="the new name, 1-200 characters")
    return p


def _load(path: Path) -> Config:
    return load_config(path)


def _load_for_query(path: Path) -> Config:
    """A query must work exactly when the daemon runs its last good config because the file is bad:
    then it uses that copy too (read-only), after saying so."""
    try:
        return _load(path)
    except ConfigError as exc:
        from recorderd.lastgood import LastGood, state_dir_from_env

        saved = LastGood(state_dir_from_env() or DEFAULT_STATE_DIR).load()
        if saved is None:
            raise
        _print_config_error(exc)
        print(f"recorderd: warning: using the last good config {saved[1].path} instead", file=sys.stderr)
        return saved[0]


def _print_config_error(exc: ConfigError) -> None:
    print(f"{exc.source or 'config'}: {len(exc.errors)} error(s):", file=sys.stderr)
    for e in exc.errors:
        print(f"  {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from recorderd import logging as rlog

    cmd: str = args.command
    if cmd == "check-config":
        cfg = _load(args.config)
        enabled = len(cfg.enabled_cameras)
        print(f"{args.config}: OK ({len(cfg.cameras)} cameras, {enabled} enabled; "
              f"storage {cfg.storage.root})")
        return 0
    if cmd == "probe":
        from recorderd import camprobe

        return camprobe.main(args, DEFAULT_CONFIG, _load)
    if cmd == "run":
        fmt = {"auto": None, "json": True, "console": False}[args.log_format]
        rlog.configure(args.log_level, json=fmt)
        from recorderd import daemon
        from recorderd.lastgood import state_dir_from_env

        return daemon.run(args.config, ffmpeg_bin=args.ffmpeg, state_dir=args.state_dir or state_dir_from_env())

    rlog.configure("warning", json=False)
    cfg = _load(args.config) if cmd == "migrate" else _load_for_query(args.config)
    if cmd == "drain":
        from recorderd.nodes import cmd_drain

        return cmd_drain(cfg, sys.stdout, sys.stderr)
    from recorderd import report

    out = sys.stdout
    coro: Any
    if cmd == "migrate":
        coro = report.cmd_migrate(cfg, out)
    elif cmd == "search":
        coro = report.cmd_search(cfg, args.camera, args.from_, args.to, args.json, out)
    elif cmd == "status":
        coro = report.cmd_status(cfg, args.json, out)
    elif cmd == "storage":
        coro = report.cmd_storage(cfg, args.json, out, days=args.days, camera=args.camera)
    elif cmd == "export":
        from recorderd.export import cmd_export

        coro = cmd_export(cfg, args.camera, args.from_, args.to, args.output, out, ffmpeg_bin=args.ffmpeg)
    elif cmd == "clip":
        from recorderd import clips

        action: str = args.clip_command
        if action == "create":
            coro = clips.cmd_clip_create(cfg, args.camera, args.from_, args.to, args.name, args.json, out,
                                         ffmpeg_bin=args.ffmpeg)
        elif action == "list":
            coro = clips.cmd_clip_list(cfg, args.camera, args.json, out)
        elif action == "delete":
            coro = clips.cmd_clip_delete(cfg, args.id, out)
        else:
            coro = clips.cmd_clip_rename(cfg, args.id, args.name, out)
    else:  # pragma: no cover - argparse guards this
        raise AssertionError(cmd)
    return int(asyncio.run(coro))
