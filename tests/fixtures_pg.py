"""A real, private PostgreSQL cluster for tests.

``PgCluster`` runs ``initdb`` + ``pg_ctl`` in a temporary directory, listening on 127.0.0.1 on a
free port (and on a unix socket inside the data directory), with ``trust`` auth and durability
switched off for speed. PostgreSQL refuses to run as root, so when the tests run as root the
server runs as the unprivileged system user ``recorderd-test`` (created on first use).

Fixtures:

* ``pg_cluster`` (session): started once; a test may ``stop()``/``start()`` it (outage tests):
  ``pg_dsn`` restarts it if a previous test left it stopped.
* ``pg_dsn`` (function): DSN of a fresh, empty database ``t_<n>``, dropped afterwards.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from recorderd.config import default_node_id
from recorderd.statusfile import pid_alive

TEST_USER = "recorderd-test"
SUPERUSER = "postgres"

_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
    "log_connections": "off",
    "log_disconnections": "off",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "dynamic_shared_memory_type": "posix",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (same as fixtures_cam.free_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bin() -> Path:
    """``$RECORDERD_PG_BIN`` or the newest ``/usr/lib/postgresql/*/bin`` holding ``initdb``."""
    env = os.environ.get("RECORDERD_PG_BIN")
    if env:
        p = Path(env)
        if not (p / "initdb").exists():
            raise RuntimeError(f"RECORDERD_PG_BIN={env} has no initdb")
        return p

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/bin", path)
        return tuple(int(x) for x in m[1].split(".")) if m else (0,)

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL found: install postgresql-15 (scripts/test does) "
                       "or set RECORDERD_PG_BIN")


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    try:  # a concurrent run may have created it first: the lookup decides
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"cannot create user {name}: {proc.stderr.strip()}") from None


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in itertools.chain(dirnames, filenames):
            os.lchown(os.path.join(dirpath, n), uid, gid)


class PgCluster:
    """A private PostgreSQL cluster; ``stop()`` then ``start()`` keeps its port and data."""

    def __init__(self, base_dir: str | os.PathLike[str] | None = None, *, port: int | None = None,
                 pg_bin: str | os.PathLike[str] | None = None) -> None:
        self.bin = Path(pg_bin) if pg_bin is not None else find_pg_bin()
        self._own_base = base_dir is None
        self.base = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="recorderd-pg-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.data = self.base / "data"
        self.log_file = self.data / "postgres.log"
        self.port = port if port is not None else free_port()
        self._fixed_port = port is not None
        self.host = "127.0.0.1"
        self.user = SUPERUSER
        self._as: tuple[int, int, str] | None = None  # (uid, gid, name) to run the server as
        if os.geteuid() == 0:
            pw = _ensure_user(TEST_USER)
            self._as = (pw.pw_uid, pw.pw_gid, pw.pw_name)
        self._initialized = (self.data / "PG_VERSION").exists()
        self._destroyed = False
        self.init_seconds = 0.0
        self.start_seconds = 0.0
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ plumbing

    @property
    def socket_dir(self) -> Path:
        return self.data

    def _cmd(self, args: Sequence[str]) -> list[str]:
        if self._as is None:
            return list(args)
        return ["runuser", "-u", self._as[2], "--", *args]

    def _run(self, args: Sequence[str], *, timeout: float = 60,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LC_ALL="C", LANG="C", TZ="UTC")
        env.pop("PGDATA", None)
        proc = subprocess.run(self._cmd(args), capture_output=True, text=True, timeout=timeout,
                              cwd=self.base, env=env, check=False, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _write_conf(self) -> None:
        settings = dict(_SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.socket_dir}'")
        conf = self.data / "postgresql.conf"
        body = conf.read_text()
        marker = "\n# --- recorderd tests ---\n"
        body = body.split(marker)[0] + marker + "".join(f"{k} = {v}\n" for k, v in settings.items())
        conf.write_text(body)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n"
        )

    def _initdb(self) -> None:
        t0 = time.monotonic()
        if self._as is not None:
            _chown_tree(self.base, self._as[0], self._as[1])
            if self._run(["test", "-w", str(self.base)], check=False).returncode != 0:
                raise RuntimeError(f"{self.base} is not reachable for user {self._as[2]} (the server cannot "
                                   "run as root): use a base_dir whose parents are world-searchable")
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                   "--no-sync", "--encoding=UTF8", "--locale=C"], timeout=120)
        self._write_conf()
        if self._as is not None:
            _chown_tree(self.base, self._as[0], self._as[1])
        self._initialized = True
        self.init_seconds = time.monotonic() - t0

    # ------------------------------------------------------------------ API

    def start(self, timeout: float = 30) -> None:
        """Start (initdb on first use). Stop-then-start reuses the same port and data dir."""
        if self._destroyed:
            raise RuntimeError("cluster was destroyed")
        if self.is_running:
            return
        if not self._initialized:
            self._initdb()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            t0 = time.monotonic()
            proc = self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file),
                              "-w", "-t", str(int(timeout)), "start"], timeout=timeout + 10, check=False)
            if proc.returncode == 0 and self.is_running:
                self.start_seconds = time.monotonic() - t0
                self._fixed_port = True  # from now on a restart must come back on this port
                return
            tail = self._log_tail()
            port_taken = "could not bind" in tail or "Address already in use" in tail
            if port_taken and attempt + 1 < attempts:
                # the free port was grabbed by someone else before we bound it: take another
                self.port = free_port()
                self._write_conf()
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start (port {self.port}, data {self.data}):\n"
                f"{proc.stdout}{proc.stderr}\n--- tail of {self.log_file} ---\n{tail}"
            )

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """``pg_ctl stop -m fast|smart|immediate``; a no-op when not running.

        ``immediate`` is a crash: with ``synchronous_commit=off`` the last ~200 ms of commits may be
        lost (run ``CHECKPOINT`` first if a test needs them).
        """
        if mode not in ("fast", "smart", "immediate"):
            raise ValueError(f"bad stop mode {mode!r}")
        if not self.is_running:
            return
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)),
                   "stop"], timeout=timeout + 10)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    @property
    def is_running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        if not pid_alive(pid):  # gone, or a zombie
            return False
        try:  # a recycled pid is not our postmaster
            return "postgres" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return True

    def dsn(self, dbname: str = "postgres") -> str:
        # raw test connections name the default node, as every recorderd connection does
        # (db.session_settings): rows they insert are the local daemon's
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}?recorderd.node={default_node_id()}"

    def psql(self, sql: str, dbname: str = "postgres", timeout: float = 30) -> str:
        """Run SQL with the ``psql`` binary (client side: runs as the current user); return stdout."""
        psql = self.bin / "psql"
        exe = str(psql) if psql.exists() else (shutil.which("psql") or "psql")
        env = dict(os.environ, PGCONNECT_TIMEOUT="10")
        for k in ("PGPASSWORD", "PGSERVICE", "PGOPTIONS"):
            env.pop(k, None)
        proc = subprocess.run(
            [exe, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
             "-U", self.user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, timeout=timeout, env=env, check=False, stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsafe database name {name!r}")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsafe database name {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_quietly(self, name: str) -> None:
        """Teardown: drop a test's database, restarting the cluster first if a test left it stopped;
        never raises (a leftover database only costs disk in the private cluster)."""
        try:
            if not self.is_running:
                self.start()
            self.drop_database(name)
        except Exception:
            pass

    def destroy(self) -> None:
        if self._destroyed:
            return
        try:
            if self.is_running:
                self.stop("immediate")
        finally:
            self._destroyed = True
            shutil.rmtree(self.base if self._own_base else self.data, ignore_errors=True)

    def _atexit(self) -> None:
        try:
            self.destroy()
        except Exception:
            pass

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"PgCluster(port={self.port}, data={self.data}, running={self.is_running})"


# ---------------------------------------------------------------------- fixtures

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh empty database on the shared cluster (restarted first if a test left it stopped)."""
    if not pg_cluster.is_running:
        pg_cluster.start()
    name = f"t_{next(_db_counter)}"
    dsn = pg_cluster.create_database(name)
    yield dsn
    pg_cluster.drop_quietly(name)
