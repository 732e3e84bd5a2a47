"""PostgreSQL access shared by the indexer, the retention sweeper and the CLI.

Recording never waits on the database, so nothing here retries on its own: ``Database`` keeps an
up/down state that one owner (the indexer's run loop) drives with ``connect()`` and backoff, and every
other user gets ``DatabaseUnavailable`` at once while it is down instead of piling up on a dead
server. A slow server is not a dead one: a timeout raises ``DatabaseBusy`` (a ``DatabaseUnavailable``,
so every caller already copes) but leaves the pool and the up state alone, because tearing the pool
down would kill other users' statements and the reconnect (migrations, full reconcile) would only add
load to a server that is already struggling. Schema migrations ship in the package and are applied
under an advisory lock so two daemons starting together cannot race.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from recorderd import metrics
from recorderd.config import default_node_id
from recorderd.logging import get_logger

log = get_logger(component="db")

MIGRATION_RE = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
# pg_advisory_lock key: any constant unique to us ('recorder' in ASCII)
MIGRATION_LOCK_KEY = 0x7265636F72646572
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0
# A slow episode ends after this long without a timeout: ``database_slow`` is logged once per episode.
SLOW_QUIET_SECONDS = 60.0


class DatabaseUnavailable(Exception):
    """The index database cannot be used right now; callers skip or retry later, never crash."""


class DatabaseBusy(DatabaseUnavailable):
    """A statement or the wait for a pooled connection timed out: the server is slow, not gone.

    The database stays up and the pool intact; the caller retries later (after a pause of its own).
    """


def describe_dsn(dsn: str | None) -> str:
    """``host:port/dbname`` of a DSN for messages: never the user's password, in either DSN form."""
    if not dsn:
        return "default (PGHOST/PGPORT or local socket)"
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
            query = dict(parse_qsl(parts.query))
            host = parts.hostname or query.get("host") or "localhost"
            port = parts.port or query.get("port") or 5432
        except ValueError:
            return "<unparsable DSN>"
        db = parts.path.lstrip("/") or query.get("dbname") or "(default db)"
        if host.startswith("/"):  # a unix socket directory (the peer-auth default)
            return f"{host}/.s.PGSQL.{port} ({db})"
        return f"{host}:{port}/{db}"
    kv = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn))
    host, port, db = kv.get("host", "localhost"), kv.get("port", "5432"), kv.get("dbname", "(default db)")
    return f"{host.strip(chr(39))}:{port.strip(chr(39))}/{db.strip(chr(39))}"


def is_timeout(exc: BaseException) -> bool:
    """A statement or pool wait that ran out of time (asyncpg cancels the statement on the server and
    the connection stays usable), or a statement the server cancelled (``statement_timeout``)."""
    return isinstance(exc, TimeoutError | asyncpg.exceptions.QueryCanceledError)


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "the server is gone or refusing", as opposed to a bad statement.

    A timeout is not one (see ``is_timeout``): a slow server must not be treated as a dead one.
    """
    if is_timeout(exc):
        return False
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # the protocol lost track of the connection (seen while the server shuts down mid-query)
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # client-side DataError / config errors are ours, not the server's
        return not isinstance(exc, ValueError)
    return isinstance(exc, OSError | asyncpg.PostgresConnectionError
                      | asyncpg.exceptions.OperatorInterventionError
                      | asyncpg.exceptions.InsufficientResourcesError
                      | asyncpg.exceptions.InvalidAuthorizationSpecificationError
                      | asyncpg.exceptions.InvalidCatalogNameError)


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True, slots=True)
class Migration:
    name: str  # file stem, e.g. "0001_initial"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The numbered ``.sql`` files shipped in ``recorderd/sql/migrations``, in order."""
    root = importlib.resources.files("recorderd.sql.migrations")
    out = [Migration(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8"))
           for p in root.iterdir() if MIGRATION_RE.match(p.name)]
    out.sort(key=lambda m: m.name)
    numbers = [m.name[:4] for m in out]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"duplicate migration numbers: {numbers}")
    return out


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply missing migrations on ``conn``; serialised across processes by a session advisory lock."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name        text PRIMARY KEY,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )""")
        rows = await conn.fetch("SELECT name, checksum FROM schema_migrations")
        done = {r["name"]: r["checksum"] for r in rows}
        applied: list[str] = []
        for m in load_migrations():
            if m.name in done:
                if done[m.name] != m.checksum:
                    log.warning("migration_changed", migration=m.name)
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                                   m.name, m.checksum)
            log.info("migration_applied", migration=m.name)
            applied.append(m.name)
        known = {m.name for m in load_migrations()}
        if unknown := sorted(set(done) - known):
            log.warning("migration_unknown", migrations=unknown)  # a newer recorderd ran here
        return applied
    finally:
        with suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)



def session_settings(node: str | None) -> dict[str, str]:
    """Every recorderd connection names its node: rows it writes default to it, and the statements about
    its own disk select ``node = current_setting('recorderd.node')`` (sql/migrations/0005_nodes.sql)."""
    return {"application_name": "recorderd", "recorderd.node": node or default_node_id()}


async def connect(dsn: str | None, timeout: float = CONNECT_TIMEOUT, *,
                  node: str | None = None) -> asyncpg.Connection:
    """One plain connection (CLI, migrate); ``DatabaseUnavailable`` names host:port, not the password."""
    try:
        return await asyncpg.connect(dsn, timeout=timeout, command_timeout=COMMAND_TIMEOUT,
                                     server_settings=session_settings(node))
    except Exception as exc:
        if is_connection_error(exc) or is_timeout(exc) or isinstance(exc, asyncpg.PostgresError | ValueError):
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {_reason(exc)}") from None
        raise


async def migrate(dsn: str | None, *, node: str | None = None) -> list[str]:
    """``recorderd migrate``: apply pending migrations, return the names applied (empty if none)."""
    conn = await connect(dsn, node=node)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# --------------------------------------------------------------------------- shared pool


class Database:
    """An asyncpg pool plus an up/down state, shared by the indexer and the retention sweeper.

    The indexer owns reconnection (``connect()`` with backoff); everybody else uses ``acquire()``,
    which fails fast with ``DatabaseUnavailable`` while the server is away and marks it down when a
    statement dies on a broken connection, so the owner notices and reconnects. A timeout raises
    ``DatabaseBusy`` instead and changes nothing else.
    """

    def __init__(self, dsn: str | None, *, pool_max: int = 4, run_migrations: bool = True,
                 command_timeout: float = COMMAND_TIMEOUT, acquire_timeout: float = CONNECT_TIMEOUT,
                 node: str | None = None) -> None:
        self._dsn = dsn
        self.node = node or default_node_id()
        self._pool_max = pool_max
        self._run_migrations = run_migrations
        self._command_timeout = command_timeout
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._slow_since: float | None = None  # monotonic start of the current slow episode
        self._last_timeout = 0.0
        self._timeouts = 0  # in the current episode
        self._up = False
        self._logged: bool | None = None  # last state logged; None before the first
        self._up_event = asyncio.Event()
        self._down_event = asyncio.Event()
        self._down_event.set()
        self._connect_lock = asyncio.Lock()
        self.since = time.time()
        self.on_down: list[Callable[[], None]] = []  # e.g. wake the indexer so it reconnects
        metrics.DATABASE_UP.set(0)

    @property
    def up(self) -> bool:
        return self._up

    @property
    def where(self) -> str:
        """``host:port/db`` for log lines and messages (no credentials)."""
        return describe_dsn(self._dsn)

    async def connect(self) -> list[str]:
        """(Re)create the pool and apply migrations; mark up. Raises ``DatabaseUnavailable``."""
        async with self._connect_lock:
            if self._up and self._pool is not None:
                return []
            self._drop_pool()
            try:
                pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._pool_max, timeout=CONNECT_TIMEOUT,
                    command_timeout=self._command_timeout, max_inactive_connection_lifetime=300,
                    server_settings=session_settings(self.node))
            except Exception as exc:
                self._set_down(_reason(exc))
                raise DatabaseUnavailable(f"cannot connect to {self.where}: {_reason(exc)}") from None
            applied: list[str] = []
            try:
                if self._run_migrations:
                    async with pool.acquire() as conn:
                        applied = await apply_migrations(conn)
            except Exception as exc:
                pool.terminate()
                level = "warning" if is_connection_error(exc) or is_timeout(exc) else "error"
                self._set_down(_reason(exc), level=level)
                raise DatabaseUnavailable(f"migrations failed on {self.where}: {_reason(exc)}") from None
            self._pool = pool
            self._set_up()
            return applied

    def mark_down(self, reason: str) -> None:
        """A user saw the connection die: drop the pool so the owner reconnects from scratch."""
        self._drop_pool()
        self._set_down(reason)

    async def ping(self) -> bool:
        """Cheap liveness check while idle, so ``up`` does not lie when nothing is written."""
        try:
            async with self.acquire("ping") as conn:
                await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
            return True
        except DatabaseUnavailable:
            return False

    @property
    def slow(self) -> bool:
        """Inside a slow episode: a timeout less than ``SLOW_QUIET_SECONDS`` ago."""
        return self._slow_since is not None and time.monotonic() - self._last_timeout < SLOW_QUIET_SECONDS

    @asynccontextmanager
    async def acquire(self, op: str = "query") -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; ``DatabaseUnavailable`` when down or when the connection breaks.

        A timeout, waiting for a connection or inside the body, raises ``DatabaseBusy`` (counted per
        ``op``) and leaves the database up: asyncpg has already asked the server to cancel the timed-out
        statement, and the release below waits for that, so the connection goes back to the pool
        usable. Statement errors that are not about the connection (constraint, syntax) propagate
        unchanged.
        """
        pool = self._pool
        if not self._up or pool is None:
            raise DatabaseUnavailable(f"database {self.where} is down")
        try:
            conn = await pool.acquire(timeout=self._acquire_timeout)
        except Exception as exc:
            if is_timeout(exc):
                self._timed_out(op, "no free connection: " + _reason(exc))
                raise DatabaseBusy(f"database {self.where} is busy: no connection within "
                                   f"{self._acquire_timeout:g} s") from None
            if not is_connection_error(exc):
                raise
            self.mark_down(_reason(exc))
            raise DatabaseUnavailable(f"database {self.where} is down: {_reason(exc)}") from None
        try:
            yield conn
            self._answered()
        except Exception as exc:
            if is_timeout(exc):
                self._timed_out(op, _reason(exc))
                raise DatabaseBusy(f"database {self.where} is busy: {op} timed out") from None
            if is_connection_error(exc):
                conn.terminate()  # never hand a half-broken connection to the next user
                self.mark_down(_reason(exc))
                raise DatabaseUnavailable(f"database {self.where} is down: {_reason(exc)}") from None
            raise
        finally:
            with suppress(Exception):
                await pool.release(conn, timeout=CONNECT_TIMEOUT)

    async def wait_up(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._up_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_down(self) -> None:
        await self._down_event.wait()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._up = False
        self._up_event.clear()
        self._down_event.set()
        metrics.DATABASE_UP.set(0)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except Exception:
                pool.terminate()

    def terminate(self) -> None:
        """Shutdown out of time: drop every connection without waiting on the server."""
        self._drop_pool()
        self._up = False
        metrics.DATABASE_UP.set(0)

    # ----------------------------------------------------------------- state

    def _timed_out(self, op: str, reason: str) -> None:
        metrics.DATABASE_TIMEOUTS.labels(op).inc()
        now = time.monotonic()
        if not self.slow:
            self._slow_since = now
            self._timeouts = 0
            log.warning("database_slow", database=self.where, op=op, reason=reason)
        self._last_timeout = now
        self._timeouts += 1

    def _answered(self) -> None:
        """A body finished in time: end a slow episode once it has been quiet long enough (the warning
        is once per episode; the end is only a debug line)."""
        if self._slow_since is not None and not self.slow:
            log.debug("database_slow", database=self.where, over=True, timeouts=self._timeouts,
                     seconds=round(self._last_timeout - self._slow_since, 1))
            self._slow_since = None

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with suppress(Exception):
                pool.terminate()

    def _set_up(self) -> None:
        self._up = True
        self.since = time.time()
        self._down_event.clear()
        self._up_event.set()
        metrics.DATABASE_UP.set(1)
        if self._logged is not True:
            log.info("database_up", database=self.where)
            self._logged = True

    def _set_down(self, reason: str, level: str = "warning") -> None:
        if self._up:
            self.since = time.time()
        self._up = False
        self._up_event.clear()
        self._down_event.set()
        metrics.DATABASE_UP.set(0)
        for callback in list(self.on_down):
            callback()
        if self._logged is not False:
            getattr(log, level)("database_down", database=self.where, reason=reason)
            self._logged = False
        else:
            log.debug("database_retry_failed", database=self.where, reason=reason)
