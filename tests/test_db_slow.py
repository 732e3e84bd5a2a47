"""A slow PostgreSQL is not a down one: timeouts are retried on the same pool, never a reconnect.

Against the real private cluster: a table lock held from another session makes statements time out
exactly as a struggling server does, and a pool of one makes the wait for a connection time out.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from test_indexer import T0, config_for, count, event
from util import wait_until

from recorderd import indexer as indexer_mod
from recorderd.db import Database, DatabaseBusy, DatabaseUnavailable, is_connection_error, migrate
from recorderd.indexer import Indexer

pytestmark = pytest.mark.integration


def timeouts(op: str) -> float:
    return REGISTRY.get_sample_value("recorderd_database_timeouts_total", {"op": op}) or 0.0


class TableLock:
    """``LOCK TABLE segments IN ACCESS EXCLUSIVE MODE`` held by another session until released."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> TableLock:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute("BEGIN")
        await self.conn.execute("LOCK TABLE segments IN ACCESS EXCLUSIVE MODE")
        return self

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.execute("ROLLBACK")
            await self.conn.close()
            self.conn = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


def test_timeouts_are_not_connection_errors() -> None:
    assert not is_connection_error(TimeoutError())
    assert not is_connection_error(asyncpg.exceptions.QueryCanceledError("canceling statement"))
    assert is_connection_error(ConnectionResetError())
    assert is_connection_error(asyncpg.exceptions.AdminShutdownError("terminating connection"))


async def test_statement_timeout_is_busy_and_the_connection_stays_usable(pg_dsn: str) -> None:
    db = Database(pg_dsn, pool_max=1, command_timeout=0.5)
    await db.connect()
    downs: list[int] = []
    db.on_down.append(lambda: downs.append(1))
    pool = db._pool
    async with db.acquire() as conn:
        pid = conn.get_server_pid()
    before = timeouts("test")
    try:
        with capture_logs() as logs:
            async with TableLock(pg_dsn):
                for _ in range(3):
                    t0 = time.monotonic()
                    with pytest.raises(DatabaseBusy):
                        async with db.acquire("test") as conn:
                            await conn.fetchval("SELECT count(*) FROM segments")
                    assert time.monotonic() - t0 < 3  # the timed-out statement was cancelled, not awaited
                    assert db.up and db._pool is pool and not downs
            # the same (only) connection, cancelled three times, serves the next statement
            async with db.acquire("test") as conn:
                assert conn.get_server_pid() == pid
                assert await conn.fetchval("SELECT count(*) FROM segments") == 0
    finally:
        await db.close()
    assert timeouts("test") - before == 3
    events = [e["event"] for e in logs]
    assert events.count("database_slow") == 1 and "database_down" not in events


async def test_server_statement_timeout_is_busy_too(pg_dsn: str) -> None:
    """``statement_timeout`` (QueryCanceledError, an OperatorInterventionError) used to mark it down."""
    db = Database(pg_dsn, pool_max=1)
    await db.connect()
    pool = db._pool
    try:
        with pytest.raises(DatabaseBusy):
            async with db.acquire("test") as conn:
                await conn.execute("SET statement_timeout = '100ms'")
                await conn.execute("SELECT pg_sleep(2)")
        assert db.up and db._pool is pool
        async with db.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "0"  # reset on release
    finally:
        await db.close()


async def test_pool_exhaustion_is_busy_and_spares_the_other_users(pg_dsn: str) -> None:
    db = Database(pg_dsn, pool_max=1, acquire_timeout=0.3)
    await db.connect()
    pool = db._pool
    before = timeouts("second")

    async def long_query() -> int:
        async with db.acquire("first") as conn:
            return int(await conn.fetchval("SELECT 7 FROM pg_sleep(1.2)"))

    try:
        holder = asyncio.create_task(long_query())
        await asyncio.sleep(0.2)
        with pytest.raises(DatabaseBusy):
            async with db.acquire("second"):
                pass
        assert db.up and db._pool is pool
        assert await holder == 7  # its statement was not killed by a pool teardown
        async with db.acquire("second") as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await db.close()
    assert timeouts("second") - before == 1


async def test_connect_failure_still_marks_down(pg_cluster, pg_dsn: str) -> None:  # type: ignore[no-untyped-def]
    db = Database(pg_dsn)
    await db.connect()
    await asyncio.to_thread(pg_cluster.stop)
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            async with db.acquire() as conn:
                await conn.fetchval("SELECT 1")
        assert not isinstance(info.value, DatabaseBusy) and not db.up
        with pytest.raises(DatabaseUnavailable):
            await db.connect()
        assert not db.up
    finally:
        await asyncio.to_thread(pg_cluster.start)
        await db.close()


async def test_indexer_rides_out_a_locked_table(tmp_path: Path, pg_dsn: str) -> None:
    """Writes time out for seconds: no database_down, no reconnect (pool, migrations, reconcile), the
    writer pauses between attempts, and every row lands once the lock is gone."""
    cfg = config_for(tmp_path, pg_dsn)
    cfg.storage.root.mkdir()
    db = Database(pg_dsn, command_timeout=1.0)
    ix = Indexer(cfg, database=db, watch=False)
    downs: list[int] = []
    db.on_down.append(lambda: downs.append(1))
    task = asyncio.create_task(ix.run())
    try:
        await wait_until(lambda: ix.database_up and ix.reconciler.last is not None, 20, what="connected")
        pool, since, first_reconcile = db._pool, db.since, ix.reconciler.last
        before = timeouts("write")
        with capture_logs() as logs:
            async with TableLock(pg_dsn) as lock:
                for i in range(20):
                    ix.submit(event(tmp_path, "cam-001", T0 + i, T0 + i + 1))
                t_end = time.monotonic() + 4.0
                while time.monotonic() < t_end:
                    assert ix.database_up and not downs
                    assert task.done() is False
                    await asyncio.sleep(0.1)
                assert ix.pending_count == 20
                await lock.release()
            await wait_until(lambda: ix.pending_count == 0, 15, what="rows written after the lock")
        assert await count(pg_dsn) == 20
        n = timeouts("write") - before
        assert 1 <= n <= 4, f"{n} timeouts in 4 s with a 1 s timeout: the writer must pause between tries"
        assert db._pool is pool and db.since == since and not downs
        assert ix.reconciler.last is first_reconcile  # no second reconcile
        events = [e["event"] for e in logs]
        assert events.count("database_slow") == 1
        for gone in ("database_down", "database_up", "migration_applied", "reconcile_done"):
            assert gone not in events, gone
    finally:
        await ix.close(5)
        await asyncio.wait_for(task, 10)
        await db.close()


async def test_reconcile_cut_by_a_timeout_is_redone_later_without_reconnecting(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexer_mod, "RECONCILE_BUSY_PAUSE", 1.0)
    cfg = config_for(tmp_path, pg_dsn)
    cfg.storage.root.mkdir()
    await migrate(pg_dsn)
    db = Database(pg_dsn, command_timeout=0.5)
    ix = Indexer(cfg, database=db, watch=False)
    downs: list[int] = []
    db.on_down.append(lambda: downs.append(1))
    before = timeouts("reconcile")
    try:
        with capture_logs() as logs:
            async with TableLock(pg_dsn) as lock:
                task = asyncio.create_task(ix.run())
                await wait_until(lambda: timeouts("reconcile") > before, 10, what="reconcile timed out")
                await asyncio.sleep(2.5)
                assert ix.database_up and not downs and ix.reconciler.last is None
                tries = timeouts("reconcile") - before
                assert 1 <= tries <= 3, f"{tries} reconcile timeouts in 3 s: retried without a pause"
                await lock.release()
            await wait_until(lambda: ix.reconciler.last is not None, 10, what="reconcile done after the lock")
        events = [e["event"] for e in logs]
        assert "database_down" not in events and events.count("database_up") == 1
        assert events.count("reconcile_done") == 1
    finally:
        await ix.close(5)
        await asyncio.wait_for(task, 10)
        await db.close()
