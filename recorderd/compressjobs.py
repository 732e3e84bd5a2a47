"""The compression tier's side of the index: which segments are due (their plan's
``compress_after_days``), and what a finished job changes (size and ``compressed_at``; never the
times). The re-encoding itself is ``recorderd.compress``; this module only feeds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from recorderd import queries
from recorderd.archive import due_cutoffs
from recorderd.compress import Candidate, CompressionSettings, Compressor, CompressResult
from recorderd.config import CompressionConfig, Config
from recorderd.db import Database

DAY = 86400.0


def settings_of(cfg: CompressionConfig) -> CompressionSettings:
    return CompressionSettings(codec=cfg.codec, crf=cfg.crf, preset=cfg.preset, concurrency=cfg.concurrency,
                               cpu_budget=cfg.cpu_budget)


def compress_cutoffs(config: Config, now: float) -> tuple[list[str], list[datetime]]:
    """Per camera whose plan compresses: footage ending before its cutoff is due."""
    return due_cutoffs(config, now, lambda p: None if p.compress_after_days is None else p.compress_after_days * DAY)


class CompressionJobs:
    """Builds the ``Compressor`` over the index; ``config`` is read at every query, so a reload that
    adds or removes ``compress_after_days`` takes effect on the next batch."""

    def __init__(self, config: Callable[[], Config], db: Database, *, ffmpeg_bin: str = "ffmpeg",
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._db = db
        self._clock = clock
        self.compressor = Compressor(settings_of(config().compression), self.candidates, self.done,
                                     backlog=self.backlog, ffmpeg_bin=ffmpeg_bin,
                                     idle_seconds=config().compression.interval_seconds)

    async def candidates(self, limit: int) -> list[Candidate]:
        ids, cuts = compress_cutoffs(self._config(), self._clock())
        if not ids or not self._db.up:
            return []
        async with self._db.acquire("compress") as conn:
            rows = await conn.fetch(queries.COMPRESS_CANDIDATES, ids, cuts, limit)
        now = self._clock()
        return [Candidate(r["id"], r["path"], float(r["duration_seconds"]), r["end_time"].timestamp(),
                          r["end_time"].timestamp() + (now - r["cutoff"].timestamp())) for r in rows]

    async def backlog(self) -> int:
        ids, cuts = compress_cutoffs(self._config(), self._clock())
        if not ids or not self._db.up:
            return 0
        async with self._db.acquire("compress") as conn:
            return int(await conn.fetchval(queries.COMPRESS_BACKLOG, ids, cuts))

    async def done(self, cand: Candidate, res: CompressResult) -> None:
        if res.outcome == "compressed":
            size = res.new_size
        elif res.outcome in ("already", "not_smaller"):
            size = res.old_size  # also mends a size a crash kept from being written
        else:
            return  # failed: the loop skips it for this run; the next start tries once more
        async with self._db.acquire("compress") as conn:
            await conn.execute(queries.COMPRESS_DONE, cand.segment_id, size)

    def update_config(self, config: Config) -> None:
        self.compressor.update_settings(settings_of(config.compression))
        self.compressor.idle_seconds = config.compression.interval_seconds
