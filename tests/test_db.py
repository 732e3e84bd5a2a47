"""Schema migrations and the shared Database object, against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from recorderd.db import Database, DatabaseUnavailable, describe_dsn, load_migrations, migrate

pytestmark = pytest.mark.integration

# What the code (queries.py, indexer, retention) relies on: column -> (data_type, nullable)
EXPECTED_SEGMENTS = {
    "id": ("bigint", "NO"),
    "camera_id": ("text", "NO"),
    "start_time": ("timestamp with time zone", "NO"),
    "end_time": ("timestamp with time zone", "NO"),
    "duration_seconds": ("double precision", "NO"),
    "size_bytes": ("bigint", "NO"),
    "path": ("text", "NO"),
    "run_id": ("uuid", "YES"),
    "seq": ("integer", "YES"),
    "source": ("text", "NO"),
    "source_rank": ("smallint", "NO"),
    "protected": ("boolean", "NO"),
    "deleting": ("boolean", "NO"),
    "indexed_at": ("timestamp with time zone", "NO"),
    "object_url": ("text", "YES"),
    "archived_at": ("timestamp with time zone", "YES"),
    "fragments": ("bytea", "YES"),
    "compressed_at": ("timestamp with time zone", "YES"),
    "upload_url": ("text", "YES"),
    "node": ("text", "NO"),
}
EXPECTED_CAMERAS = {
    "id": ("text", "NO"),
    "name": ("text", "NO"),
    "tenant": ("text", "YES"),
    "plan": ("text", "NO"),
    "retention_days": ("integer", "NO"),
    "max_bytes": ("bigint", "YES"),
    "enabled": ("boolean", "NO"),
    "in_config": ("boolean", "NO"),
    "updated_at": ("timestamp with time zone", "NO"),
}
EXPECTED_SEGMENT_INDEXES = {
    "segments_pkey": "(id)",
    "segments_node_path": "(node, path)",
    "segments_node_camera": "(node, camera_id, start_time)",
    "segments_camera_start": "(camera_id, start_time)",
    "segments_camera_duration": "(camera_id, duration_seconds)",
    "segments_sweep": "(end_time) WHERE (NOT protected)",
    "segments_deleting": "(camera_id) WHERE deleting",
    "segments_local_end": "(end_time) WHERE ((object_url IS NULL) AND (NOT deleting))",
    "segments_unsettled": "(id) WHERE (upload_url IS NOT NULL)",
}


async def _columns(conn: asyncpg.Connection, table: str) -> dict[str, tuple[str, str]]:
    rows = await conn.fetch("SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name = $1", table)
    return {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in rows}


async def test_migrations_give_expected_schema(pg_dsn: str) -> None:
    names = [m.name for m in load_migrations()]
    assert names[0] == "0001_initial" and names == sorted(names)
    assert await migrate(pg_dsn) == names
    assert await migrate(pg_dsn) == []  # idempotent
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await _columns(conn, "segments") == EXPECTED_SEGMENTS
        assert await _columns(conn, "cameras") == EXPECTED_CAMERAS
        idx = {r["indexname"]: r["indexdef"] for r in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'segments'")}
        assert set(idx) == set(EXPECTED_SEGMENT_INDEXES)
        for name, tail in EXPECTED_SEGMENT_INDEXES.items():
            assert idx[name].endswith(tail), idx[name]
        assert "UNIQUE" in idx["segments_node_path"]
        applied = [r[0] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        assert applied == names
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(pg_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(pg_dsn) for _ in range(4)))
    names = [m.name for m in load_migrations()]
    assert sorted(results, key=len, reverse=True) == [names, [], [], []]
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(names)
    finally:
        await conn.close()


async def test_unreachable_database_message_has_no_password() -> None:
    dsn = "postgresql://rec:s3cretpw@127.0.0.1:1/nvr"
    with pytest.raises(DatabaseUnavailable) as info:
        await migrate(dsn)
    assert "127.0.0.1:1/nvr" in str(info.value)
    assert "s3cretpw" not in str(info.value)
    db = Database(dsn)
    with pytest.raises(DatabaseUnavailable) as info2:
        await db.connect()
    assert "s3cretpw" not in str(info2.value) and not db.up
    with pytest.raises(DatabaseUnavailable):
        async with db.acquire():
            pass


def test_describe_dsn_forms() -> None:
    assert describe_dsn("postgresql://u:pw@db.example:6543/rec") == "db.example:6543/rec"
    assert describe_dsn("postgres://u@host/x") == "host:5432/x"
    kv = describe_dsn("host=10.0.0.5 port=5433 dbname=rec user=u password=hunter22")
    assert kv == "10.0.0.5:5433/rec" and "hunter22" not in kv
    assert "PGHOST" in describe_dsn(None)
    # the shipped peer-auth default names the socket it tried, not a TCP port nobody configured
    assert describe_dsn("postgresql:///recorderd?host=/run/postgresql") == "/run/postgresql/.s.PGSQL.5432 (recorderd)"
    assert describe_dsn("postgresql://u:pw@/rec?host=/tmp&port=5433") == "/tmp/.s.PGSQL.5433 (rec)"


async def test_database_goes_down_and_comes_back(pg_cluster, pg_dsn: str) -> None:  # type: ignore[no-untyped-def]
    db = Database(pg_dsn)
    woken: list[int] = []
    db.on_down.append(lambda: woken.append(1))
    assert await db.connect()  # applied the migrations
    assert db.up
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM segments") == 0
    await asyncio.to_thread(pg_cluster.stop)
    try:
        with pytest.raises(DatabaseUnavailable):
            async with db.acquire() as conn:
                await conn.fetchval("SELECT 1")
        assert not db.up and woken
        with pytest.raises(DatabaseUnavailable):  # fails fast while down
            async with db.acquire():
                pass
        with pytest.raises(DatabaseUnavailable):
            await db.connect()
    finally:
        await asyncio.to_thread(pg_cluster.start)
    assert await db.connect() == []
    assert db.up and await db.ping()
    await db.close()
    assert not db.up
