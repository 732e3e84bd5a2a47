"""Notice edits of cameras.yaml, including editors that save by writing a new file and renaming.

Watching the file itself would lose track after a rename-save (the watched inode is gone), so the
parent directory is watched and events are filtered to the config's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch

from recorderd.logging import get_logger

log = get_logger()


class ConfigWatcher:
    def __init__(self, path: Path, on_change: Callable[[], None], debounce_ms: int = 500) -> None:
        self.path = path.resolve()
        self.on_change = on_change
        self.debounce_ms = debounce_ms

    def _is_ours(self, _change: object, changed: str) -> bool:
        return Path(changed).name == self.path.name

    async def run(self) -> None:
        """Never ends on its own; a watch failure is logged and retried (SIGHUP still works)."""
        while True:
            try:
                async for _changes in awatch(self.path.parent, watch_filter=self._is_ours,
                                             debounce=self.debounce_ms, recursive=False):
                    log.info("config_changed", path=str(self.path))
                    self.on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("config_watch_failed", path=str(self.path), error=repr(exc))
            await asyncio.sleep(5)
