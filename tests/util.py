"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from recorderd.config import Config, parse_config


async def wait_until(pred: Callable[[], Any], timeout: float, step: float = 0.1, what: str = "") -> Any:
    """Poll ``pred`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        await asyncio.sleep(step)


def ffprobe(path: str | Path) -> dict[str, Any]:
    """ffprobe's view of a file: raises if it cannot read it."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type,codec_name",
         "-of", "json", str(path)], capture_output=True, text=True, timeout=30, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def ffprobe_duration(path: str | Path) -> float:
    return float(ffprobe(path)["format"]["duration"])


def camera_doc(cam_id: str, url: str, **extra: Any) -> dict[str, Any]:
    doc = {"id": cam_id, "url": url, "segment_seconds": 2, "stall_seconds": 6, "timeout_seconds": 5}
    doc.update(extra)
    return doc


def config_doc(root: Path, cameras: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"storage": {"root": str(root)}, "cameras": cameras,
                           "metrics": {"listen": None}}
    for key, value in extra.items():
        doc[key] = value
    return doc


def make_config(root: Path, cameras: list[dict[str, Any]], **extra: Any) -> Config:
    return parse_config(config_doc(root, cameras, **extra))


def write_config(path: Path, root: Path, cameras: list[dict[str, Any]], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump(config_doc(root, cameras, **extra)))
    return path
