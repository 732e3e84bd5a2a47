"""scripts/install into a temporary root: the tree it leaves, first install versus upgrade (the new
code checks the installed config before anything is replaced), that it keeps an operator's files;
the shipped example config and its peer-auth DSN; the operator wrapper deploy/bin/recorderd.

install builds a real venv (pip install of this checkout, a few seconds per run): one first install
is shared by every test that only reads it (``first_install``); tests that change a tree work on a
copy of it (``copy_tree``). The first install over a bad config runs in the background from the
module's start (``bad_config_install``), beside the shared one. Nothing here touches the real system:
no systemctl, no users, no apt.
"""

from __future__ import annotations

import getpass
import importlib.machinery
import importlib.util
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from fixtures_pg import PgCluster
from test_systemd import systemd_parsed
from util import Background

from recorderd import db
from recorderd.config import load_config
from recorderd.masking import mask_text, mask_url

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install"
EXAMPLE = REPO / "config" / "cameras.yaml"
WRAPPER = REPO / "deploy" / "bin" / "recorderd"
JOURNALD = REPO / "systemd" / "journald-recorderd.conf"
PEER_DSN = "postgresql:///recorderd?host=/run/postgresql"


def run_install(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "--root", str(root), "--no-systemctl", *args], capture_output=True,
                          text=True, timeout=600,
                          env={**(os.environ if env is None else env), "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


_first: list[tuple[Path, subprocess.CompletedProcess[str]]] = []


def first_install(factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One first install per session (the tests of test_uninstall.py use it too); read it only."""
    if not _first:
        root = factory.mktemp("installed") / "root"
        proc = run_install(root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _first.append((root, proc))
    return _first[0]


def copy_tree(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=120)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    return first_install(tmp_path_factory)


def dropin_settings(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------------------- the script itself


def test_scripts_are_executable_and_shellcheck_clean() -> None:
    for script in (SCRIPT, REPO / "scripts" / "uninstall"):
        assert os.access(script, os.X_OK), script
        assert script.read_text().startswith("#!/usr/bin/env bash\n")
        if shutil.which("shellcheck"):
            proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout
    assert os.access(WRAPPER, os.X_OK)
    assert WRAPPER.read_text().startswith("#!/usr/bin/python3 -I\n")


def test_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
    proc = subprocess.run([str(SCRIPT), "--root"], capture_output=True, text=True)
    assert proc.returncode == 2
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--root DIR", "--no-systemctl", "--no-start", "--help"):
        assert option in proc.stdout
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- a first install


def test_first_install_leaves_a_complete_tree_and_starts_nothing(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    root, proc = installed
    venv = root / "opt/recorderd/venv"
    # the package is installed (not linked to the checkout) and importable with its dependencies
    check = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import recorderd, recorderd.api.app, recorderd.systemd, uvloop, aiohttp, asyncpg, structlog; "
         "print(recorderd.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(venv))
    # the console script is there and points at the final location, not the staging venv
    script = venv / "bin/recorderd"
    assert os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == "#!/opt/recorderd/venv/bin/python"
    leftovers = subprocess.run(["grep", "-rlF", "venv.new", str(venv / "bin"), str(venv / "pyvenv.cfg")],
                               capture_output=True, text=True)
    assert leftovers.stdout == ""
    assert not (root / "opt/recorderd/venv.new").exists() and not (root / "opt/recorderd/venv.old").exists()

    unit = root / "etc/systemd/system/recorderd.service"
    assert unit.read_text() == (REPO / "systemd/recorderd.service").read_text()
    assert mode(unit) == 0o644

    env = root / "etc/recorderd/recorderd.env"
    assert mode(env) == 0o600
    text = env.read_text()
    assert f"#RECORDERD_DATABASE_URL={PEER_DSN}\n" in text
    assert "#RECORDERD_DATABASE_URL=postgresql://recorderd:CHANGE-ME@" in text
    assert "systemctl restart recorderd" in text
    assert all(line.startswith("#") for line in text.splitlines() if line.strip())  # sets nothing

    cameras = root / "etc/recorderd/cameras.yaml"
    assert cameras.read_text() == EXAMPLE.read_text()
    assert mode(cameras) == 0o640  # camera passwords: not world-readable

    recordings = root / "var/lib/recorderd/recordings"
    assert recordings.is_dir() and mode(recordings) == 0o750

    # the example's storage.root is the default one: no ReadWritePaths= needed
    dropin = root / "etc/systemd/system/recorderd.service.d/storage.conf"
    assert dropin_settings(dropin) == ["[Unit]", "RequiresMountsFor=/var/lib/recorderd/recordings"]
    assert mode(dropin) == 0o644

    journald = root / "etc/systemd/journald.conf.d/recorderd.conf"
    assert journald.read_text() == JOURNALD.read_text() and mode(journald) == 0o644

    wrapper = root / "usr/local/bin/recorderd"
    assert mode(wrapper) == 0o755
    assert wrapper.read_text().split("\n", 1)[1] == WRAPPER.read_text().split("\n", 1)[1]
    assert re.fullmatch(r"#!/\S*python3?[.0-9]* -I", wrapper.read_text().split("\n", 1)[0])

    # the example cameras are all disabled: nothing was (or would be) started
    assert "check-config: OK (2 cameras, 0 enabled;" in proc.stdout
    assert "no camera is enabled" in proc.stdout and "systemctl enable --now recorderd" in proc.stdout
    assert "sudo -u postgres createdb -O recorderd recorderd" in proc.stdout
    assert "systemctl restart systemd-journald" in proc.stdout


def test_shipped_example_disables_its_cameras_and_uses_a_peer_dsn() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.cameras and cfg.enabled_cameras == ()
    assert cfg.database.dsn == PEER_DSN
    # a URL without credentials: nothing to mask, and masking leaves it intact
    assert mask_url(PEER_DSN) == PEER_DSN and mask_text(f"dsn={PEER_DSN} x") == f"dsn={PEER_DSN} x"
    doc = yaml.safe_load(EXAMPLE.read_text())
    assert all(cam.get("enabled") is False for cam in doc["cameras"])  # each says so itself
    assert "enabled: true" in EXAMPLE.read_text()  # ... and the comment says what to do


async def test_the_peer_dsn_reaches_postgresql_over_its_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped DSN as is, with only host= pointing at a private cluster's socket directory
    (PGPORT for its port), under peer authentication: the role is the OS user, no password."""
    os_user = pwd.getpwuid(os.geteuid()).pw_name
    for var in ("PGHOST", "PGHOSTADDR", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGDATABASE", "PGSERVICE",
                "PGSSLMODE", "RECORDERD_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", os_user)  # asyncpg's default user (getpass.getuser)
    monkeypatch.setenv("LOGNAME", os_user)
    with PgCluster() as cluster:
        cluster.psql(f'CREATE ROLE "{os_user}" LOGIN')
        cluster.psql(f'CREATE DATABASE recorderd OWNER "{os_user}"')
        hba = cluster.data / "pg_hba.conf"
        hba.write_text("local all all peer\nhost all all 127.0.0.1/32 trust\n")
        hba.chmod(0o644)
        cluster.psql("SELECT pg_reload_conf()")
        monkeypatch.setenv("PGPORT", str(cluster.port))
        dsn = PEER_DSN.replace("host=/run/postgresql", f"host={cluster.socket_dir}")
        assert dsn != PEER_DSN

        assert getpass.getuser() == os_user
        conn = await db.connect(dsn)
        try:
            who = await conn.fetchrow("SELECT current_user AS u, current_database() AS d, "
                                      "inet_server_addr() AS addr")
        finally:
            await conn.close()
        assert (who["u"], who["d"], who["addr"]) == (os_user, "recorderd", None)  # None: a unix socket
        assert await db.migrate(dsn)  # the role owns the database: it can create the index

        # peer is really in force: another role over the same socket is refused
        other = dsn.replace("postgresql:///", "postgresql://postgres@/")
        with pytest.raises(db.DatabaseUnavailable, match=r"(?i)peer authentication failed"):
            await db.connect(other)


# ---------------------------------------------------------------------------- upgrades


def test_upgrade_keeps_operator_files_and_replaces_the_code(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    root = copy_tree(installed[0], tmp_path / "root")
    venv = root / "opt/recorderd/venv"
    (venv / "old-code").write_text("")
    cameras = root / "etc/recorderd/cameras.yaml"
    env = root / "etc/recorderd/recorderd.env"
    journald = root / "etc/systemd/journald.conf.d/recorderd.conf"
    unit = root / "etc/systemd/system/recorderd.service"
    recordings = root / "var/lib/recorderd/recordings"
    operator_cfg = ("# operator's cameras\nstorage: {root: /var/lib/recorderd/recordings}\n"
                    "cameras:\n  - {id: gate, url: 'rtsp://u:secret@10.1.2.3/s'}\n")
    cameras.write_text(operator_cfg)
    env.write_text("RECORDERD_DATABASE_URL=postgresql://rec:pw@db/rec\n")
    journald.write_text("[Journal]\nStorage=persistent\nSystemMaxUse=500M\n")
    (recordings / "gate").mkdir()
    unit.write_text("# stale unit\n")

    proc = run_install(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "secret" not in proc.stdout + proc.stderr
    assert cameras.read_text() == operator_cfg
    assert env.read_text() == "RECORDERD_DATABASE_URL=postgresql://rec:pw@db/rec\n"
    assert journald.read_text() == "[Journal]\nStorage=persistent\nSystemMaxUse=500M\n"
    assert (recordings / "gate").is_dir()
    assert unit.read_text() == (REPO / "systemd/recorderd.service").read_text()  # ours: replaced
    assert not (venv / "old-code").exists()  # a new venv
    assert (venv / "bin/recorderd").read_text().splitlines()[0] == "#!/opt/recorderd/venv/bin/python"
    assert not (root / "opt/recorderd/venv.new").exists() and not (root / "opt/recorderd/venv.old").exists()
    # one camera enabled and the config good: a real install would enable and start it
    assert "check-config: OK (1 cameras, 1 enabled;" in proc.stdout
    assert "config ready (1 camera(s) enabled): systemctl enable --now recorderd" in proc.stdout
    assert "next steps" not in proc.stdout


def test_upgrade_refused_by_the_new_code_changes_nothing(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """The new code checks the installed config before anything is replaced: a config it refuses
    leaves the old venv, unit and drop-in in place (a real box keeps recording with the old code)."""
    root = copy_tree(installed[0], tmp_path / "root")
    venv = root / "opt/recorderd/venv"
    (venv / "old-code").write_text("")
    unit = root / "etc/systemd/system/recorderd.service"
    unit.write_text("# old unit\n")
    dropin = root / "etc/systemd/system/recorderd.service.d/storage.conf"
    before = dropin.read_text()
    wrapper = root / "usr/local/bin/recorderd"
    wrapper.write_text("#!/bin/sh\n# recorderd for operators: old\n")
    cameras = root / "etc/recorderd/cameras.yaml"
    cameras.write_text("storage: {root: /srv/nvr}\ncameras:\n  - {id: gate, url: 'rtsp://u:secret@h/s', plan: gold}\n")

    proc = run_install(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cameras[0].plan: unknown plan 'gold'" in proc.stderr
    assert "nothing was changed" in proc.stdout
    assert "secret" not in proc.stdout + proc.stderr
    assert (venv / "old-code").exists()
    assert unit.read_text() == "# old unit\n"
    assert dropin.read_text() == before
    assert wrapper.read_text() == "#!/bin/sh\n# recorderd for operators: old\n"
    assert not (root / "opt/recorderd/venv.new").exists()


@pytest.fixture(scope="module", autouse=True)
def bad_config_install(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background[tuple[Path, subprocess.CompletedProcess[str]]]]:
    """A config provisioned before the first install that does not load, and the install run over it,
    started at the module's start (in a thread: pip leaves the box's second core mostly idle)."""
    root = tmp_path_factory.mktemp("bad-config") / "root"
    (root / "etc/recorderd").mkdir(parents=True)
    (root / "etc/recorderd/cameras.yaml").write_text("storage: {}\ncameras: []\n")
    env = dict(os.environ)  # the environment of now, whatever a test changes meanwhile

    async def install() -> tuple[Path, subprocess.CompletedProcess[str]]:
        return root, run_install(root, env=env)

    bg = Background(install, "install over a bad config")
    try:
        yield bg
    finally:
        bg.cancel()


@pytest.mark.timeout(900)
def test_first_install_with_a_bad_config_installs_but_fails(
        bad_config_install: Background[tuple[Path, subprocess.CompletedProcess[str]]]) -> None:
    """A config provisioned before the first install that does not load: there is no old version
    to protect, so the code is installed; nothing is enabled and install exits 1."""
    root, proc = bad_config_install.wait(800)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "storage.root" in proc.stderr and "will not be enabled or started" in proc.stdout
    assert "next steps" in proc.stdout
    assert os.access(root / "opt/recorderd/venv/bin/recorderd", os.X_OK)
    assert (root / "etc/systemd/system/recorderd.service").is_file()
    # the drop-in needs storage.root: not written
    assert not (root / "etc/systemd/system/recorderd.service.d/storage.conf").exists()


@pytest.mark.timeout(900)
def test_storage_dropin_follows_storage_root(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """storage.conf is rewritten from storage.root on every run, escaped so that systemd reads back
    the very path (space, %, quote, backslash), and makes the disk's mount unit a requirement."""
    root = copy_tree(installed[0], tmp_path / "root")
    cameras = root / "etc/recorderd/cameras.yaml"
    dropin = root / "etc/systemd/system/recorderd.service.d/storage.conf"
    storage = '/srv/nvr disk/rec "a" 100%\\b'
    cameras.write_text(
        "storage:\n"
        f"  root: {json.dumps(storage)}\n"
        "  status_file: /run/recorderd/status.json\n"
        "cameras:\n"
        "  - {id: cam-1, url: 'rtsp://u:secret@10.0.0.5/s'}\n")
    proc = run_install(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "secret" not in proc.stdout + proc.stderr
    escaped = '/srv/nvr\\ disk/rec\\ \\"a\\"\\ 100%%\\\\b'
    assert dropin_settings(dropin) == [
        "[Unit]", f"RequiresMountsFor={escaped}",
        "[Service]", f"ReadWritePaths={escaped} -/run/recorderd",
    ]

    odd_dropin = dropin.read_text()

    # no escape can carry a control character: refused, the previous drop-in stays
    cameras.write_text('storage: {root: "/srv/a\\nb"}\ncameras: []\n')
    proc = run_install(root)
    assert proc.returncode == 0 and "control character" in proc.stderr, proc.stdout + proc.stderr
    assert dropin.read_text() == odd_dropin

    # back under /var/lib/recorderd: only RequiresMountsFor=, the unit already has ReadWritePaths=
    cameras.write_text("storage: {root: /var/lib/recorderd/recordings/}\ncameras: []\n")
    assert run_install(root).returncode == 0
    assert dropin_settings(dropin) == ["[Unit]", "RequiresMountsFor=/var/lib/recorderd/recordings"]

    # what systemd makes of the odd path's drop-in, next to the unit as installed and the disk's
    # mount unit (last: it skips without systemd)
    mount = "srv-nvr\\x20disk.mount"  # systemd-escape --path --suffix=mount '/srv/nvr disk'
    parsed = systemd_parsed({
        "recorderd.service": (root / "etc/systemd/system/recorderd.service").read_text(),
        "recorderd.service.d/storage.conf": odd_dropin,
        mount: "[Mount]\nWhat=/dev/disk/by-label/nvr\nWhere=/srv/nvr disk\n",
    })
    assert f"RequiresMountsFor: {storage} (origin-file)" in parsed
    assert f"ReadWritePaths: /var/lib/recorderd {storage} -/run/recorderd" in parsed
    assert f"Requires: {mount} (origin-path)" in parsed and f"After: {mount} (origin-path)" in parsed


# ---------------------------------------------------------------------------- the wrapper


def wrapper_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("recorderd_wrapper", str(WRAPPER))
    spec = importlib.util.spec_from_loader("recorderd_wrapper", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def parse_env(text: str) -> dict[str, str]:
    variables, _ = wrapper_module().parse_env(text)
    return dict(variables)


@pytest.mark.parametrize(("text", "expected"), [
    ("A=1\n", {"A": "1"}),
    ("A=1", {"A": "1"}),  # no final newline
    ("# comment\n; comment\n\n   \nA=1\n", {"A": "1"}),
    ("  A = spaced value  \n", {"A": "spaced value"}),
    ("A=x # not a comment\n", {"A": "x # not a comment"}),
    ('A="quoted # value"\n', {"A": "quoted # value"}),
    ("A='single $HOME \\n'\n", {"A": "single $HOME \\n"}),  # literal, no expansion
    ('A="a\\"b\\\\c\\$d\\`e\\q"\n', {"A": 'a"b\\c$d`e\\q'}),  # only " \ $ ` are escapes
    ('A="two\nlines"\n', {"A": "two\nlines"}),
    ("A=con\\\ntinued\n", {"A": "continued"}),
    ('A="x" y\n', {"A": "xy"}),
    ("A=a=b=c\n", {"A": "a=b=c"}),
    ("A=\nB=\n", {"A": "", "B": ""}),
    ("A=1\nA=2\n", {"A": "2"}),  # the last one wins
    ("export A=1\nB C=2\n1X=3\nno equals sign\n", {}),  # systemd ignores them all
    ("A=x\r\nB=y\r\n", {"A": "x", "B": "y"}),
    ("A=ünïcode\n", {"A": "ünïcode"}),
    ("RECORDERD_DATABASE_URL=postgresql://rec:p%40ss@db:5432/rec?sslmode=require\n",
     {"RECORDERD_DATABASE_URL": "postgresql://rec:p%40ss@db:5432/rec?sslmode=require"}),
])
def test_wrapper_reads_the_env_file_as_systemd_does(text: str, expected: dict[str, str]) -> None:
    assert parse_env(text) == expected


def test_wrapper_names_what_it_ignores() -> None:
    _, ignored = wrapper_module().parse_env("export A=1\nB=2\nC D=3\n")
    assert ignored == ["export A", "C D"]


SAMPLE_ENV = """\
# the service environment
T_PLAIN=plain value
T_SPACED = around  \t
T_DQ="double # not a comment" tail
T_SQ='single \\ "quoted"'
T_ESC="a\\"b\\\\c\\`d\\q"
T_MULTI="line one
line two"
T_CONT=con\\
tinued
T_EQ=x=y
T_DUP=first
T_DUP=second
T_UTF=ünï
; another comment
export T_EXPORTED=1
T BAD=1
"""


def test_wrapper_parser_agrees_with_systemd() -> None:
    """systemd's own parser (the environment.d generator shares it with EnvironmentFile=) on the
    same file: every variable and value agree. No $ in the sample: the generator expands it."""
    generator = next((p for p in ("/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator",
                                  "/lib/systemd/user-environment-generators/30-systemd-environment-d-generator")
                      if os.access(p, os.X_OK)), None)
    if generator is None:
        pytest.skip("systemd's environment.d generator is not installed")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "environment.d").mkdir()
        (Path(d) / "environment.d/50-sample.conf").write_text(SAMPLE_ENV)
        proc = subprocess.run(["env", "-i", f"XDG_CONFIG_HOME={d}", generator], capture_output=True,
                              text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr

    def unescape(value: str) -> str:  # the generator prints C escapes inside double quotes
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), value[1:-1])
        return value

    theirs = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    theirs = {k: unescape(v) for k, v in theirs.items() if k.startswith("T_")}
    ours = parse_env(SAMPLE_ENV)
    assert ours == theirs
    assert ours["T_DUP"] == "second" and "T_EXPORTED" not in ours and ours["T_MULTI"] == "line one\nline two"


@pytest.fixture
def wrapper_dir() -> Iterator[Path]:
    """A world-readable directory holding a copy of the wrapper and a fake recorderd that prints
    who it runs as, with what, as JSON (nobody must reach both)."""
    d = Path(tempfile.mkdtemp(prefix="recorderd-wrapper-"))
    try:
        d.chmod(0o755)
        shutil.copy(WRAPPER, d / "wrapper")
        (d / "wrapper").chmod(0o755)
        fake = d / "fake-recorderd"
        fake.write_text(
            "#!/usr/bin/python3\nimport json, os, sys\n"
            "nnp = [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs:')]\n"
            "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'env': dict(os.environ),\n"
            "                  'args': sys.argv[1:], 'nnp': nnp[0] if nnp else None}))\n")
        fake.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_wrapper(d: Path, *args: str, user: str, as_user: str | None = None,
                env_text: str | None = SAMPLE_ENV) -> subprocess.CompletedProcess[str]:
    env_file = d / "recorderd.env"
    if env_text is None:
        env_file.unlink(missing_ok=True)
    else:
        env_file.write_text(env_text)
        env_file.chmod(0o600)
    env = {"PATH": "/usr/bin:/bin", "RECORDERD_WRAPPER_ENV_FILE": str(env_file),
           "RECORDERD_WRAPPER_BIN": str(d / "fake-recorderd"), "RECORDERD_WRAPPER_USER": user,
           "PGHOST": "caller-shell", "PGPASSWORD": "leak", "TERM": "xterm-test", "LC_TIME": "C.UTF-8",
           "HOME": "/root"}
    cmd = [str(d / "wrapper"), *args]
    if as_user is not None:
        cmd = ["setpriv", f"--reuid={as_user}", f"--regid={pwd.getpwnam(as_user).pw_gid}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges: needs root")


@needs_root
def test_wrapper_runs_the_command_as_the_service_user_with_the_env_file(wrapper_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    proc = run_wrapper(wrapper_dir, "search", "--camera", "cam 1", "--json", user="nobody")
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert (out["uid"], out["gid"], out["nnp"]) == (nobody.pw_uid, nobody.pw_gid, "1")
    assert out["args"] == ["search", "--camera", "cam 1", "--json"]
    env = out["env"]
    assert {k: v for k, v in env.items() if k.startswith("T_")} == parse_env(SAMPLE_ENV)
    # a clean, service-like environment: the caller's PG* settings and HOME do not leak in
    assert "PGHOST" not in env and "PGPASSWORD" not in env
    assert not [k for k in env if k.startswith("RECORDERD_WRAPPER")]
    assert env["USER"] == env["LOGNAME"] == "nobody" and env["HOME"] == nobody.pw_dir
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["TERM"] == "xterm-test" and env["LC_TIME"] == "C.UTF-8"  # display settings pass
    # the lines systemd ignores are named
    assert "'export T_EXPORTED'" in proc.stderr and "'T BAD'" in proc.stderr

    # no env file: optional, as in the unit
    proc = run_wrapper(wrapper_dir, "status", user="nobody", env_text=None)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert not [k for k in json.loads(proc.stdout)["env"] if k.startswith("T_")]


@needs_root
def test_wrapper_as_the_service_user_itself(wrapper_dir: Path) -> None:
    # root standing for the service user: no privileges to drop, the env file applies
    proc = run_wrapper(wrapper_dir, "status", user="root")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["uid"] == 0 and out["env"]["T_PLAIN"] == "plain value" and out["env"]["USER"] == "root"
    # nobody as the service user: the root-only env file cannot be read; said, and run without it
    proc = run_wrapper(wrapper_dir, "status", user="nobody", as_user="nobody")
    assert proc.returncode == 0, proc.stderr
    assert "cannot read" in proc.stderr and "root only" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["uid"] == pwd.getpwnam("nobody").pw_uid and "T_PLAIN" not in out["env"]


@needs_root
def test_wrapper_refuses_other_users_and_run(wrapper_dir: Path) -> None:
    proc = run_wrapper(wrapper_dir, "status", user="root", as_user="nobody")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "run this as root" in proc.stderr and "not as nobody" in proc.stderr

    proc = run_wrapper(wrapper_dir, "run", "--config", "/etc/recorderd/cameras.yaml", user="nobody")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "systemctl start recorderd" in proc.stderr and "journalctl -u recorderd" in proc.stderr

    proc = run_wrapper(wrapper_dir, "status", user="no-such-user-here")
    assert proc.returncode == 1 and "no user 'no-such-user-here'" in proc.stderr

    (wrapper_dir / "fake-recorderd").unlink()
    proc = run_wrapper(wrapper_dir, "status", user="nobody")
    assert proc.returncode == 1 and "is not installed" in proc.stderr


def test_wrapper_installed_runs_the_installed_recorderd(
        installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The installed wrapper, pointed at the staged venv, runs the real CLI (as the current user)."""
    root = installed[0]
    me = pwd.getpwuid(os.geteuid()).pw_name
    env = {"PATH": "/usr/bin:/bin", "RECORDERD_WRAPPER_USER": me,
           "RECORDERD_WRAPPER_ENV_FILE": str(root / "etc/recorderd/recorderd.env"),
           # the staged console script names /opt/recorderd/venv/bin/python: run the module instead
           "RECORDERD_WRAPPER_BIN": str(root / "opt/recorderd/venv/bin/python")}
    proc = subprocess.run([sys.executable, "-I", str(root / "usr/local/bin/recorderd"), "-I", "-m", "recorderd",
                           "check-config", str(root / "etc/recorderd/cameras.yaml")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "OK (2 cameras, 0 enabled;" in proc.stdout
