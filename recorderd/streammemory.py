"""What a camera's stream taught us, kept across daemon restarts: today, whether its audio needs AAC.

``audio: auto`` copies audio the MP4 container accepts and transcodes the rest (G.711 from most IP
cameras) to AAC. FFmpeg only says "MP4 cannot take pcm_alaw" after it has connected and analysed
the stream, so learning it costs the first seconds of footage: acceptable once per camera, not after
every daemon start. The decision is kept in ``<root>/.recorderd/streams.json``, next to the footage
it is about, keyed by camera id and the camera's URL without credentials (another camera at that id
starts over; a changed password does not). A camera whose audio later turns MP4-friendly (its
settings changed to AAC) is told by FFmpeg's input dump and goes back to copy at its next start.

Best effort by design: a missing or unreadable file means "learn again", never a refusal to record;
the file is written only where ``.recorderd`` already exists (a storage volume that is not mounted
must stay untouched).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from recorderd.atomicfile import write_atomic
from recorderd.config import Camera
from recorderd.layout import STATE_DIR
from recorderd.logging import get_logger

log = get_logger(component="streams")

FILE_NAME = "streams.json"


class StreamMemory:
    """``audio_mode(camera)`` before a start; ``remember(camera, mode, codec)`` when FFmpeg taught us."""

    def __init__(self, root: Path) -> None:
        self.path = root / STATE_DIR / FILE_NAME
        self._data: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()  # supervisors call in from worker threads

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            try:
                raw = json.loads(self.path.read_text())
                self._data = {k: v for k, v in raw.get("cameras", {}).items() if isinstance(v, dict)}
            except FileNotFoundError:
                self._data = {}
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("stream_memory_unreadable", path=str(self.path), error=str(exc)[:200])
                self._data = {}
        return self._data

    def audio_mode(self, camera: Camera) -> str | None:
        """The remembered mode (``copy`` or ``aac``) for an ``audio: auto`` camera, else None."""
        if camera.audio != "auto":
            return None
        with self._lock:
            entry = self._load().get(camera.id)
        if not entry or entry.get("url") != camera.masked_url:
            return None
        mode = entry.get("audio_mode")
        return mode if mode in ("copy", "aac") else None

    def remember(self, camera: Camera, audio_mode: str, audio_codec: str | None) -> bool:
        """Keep the decision (blocking file write: call from a thread). False if it could not be kept."""
        entry = {"url": camera.masked_url, "audio_mode": audio_mode, "audio_codec": audio_codec}
        with self._lock:
            data = self._load()
            if data.get(camera.id) == entry:
                return True
            data[camera.id] = entry
            body = json.dumps({"version": 1, "cameras": data}, indent=1, sort_keys=True)
        if not self.path.parent.is_dir():
            return False
        try:
            write_atomic(self.path, body, mode=0o644, durable=True)
        except OSError as exc:
            log.warning("stream_memory_unwritable", path=str(self.path), error=str(exc)[:200])
            return False
        return True

    def forget(self, camera_id: str) -> None:
        """A camera removed from the config (file written at the next ``remember``)."""
        with self._lock:
            self._load().pop(camera_id, None)
