"""A bad edit must not become a dark box at the next boot: the last config that loaded runs instead.

Unit tests for ``recorderd.lastgood``, then the real daemon: started once with a good file (which is
saved), restarted after a bad edit (it records with the saved copy and says so in the log, /healthz,
/metrics and the status file), and a fix picked up live ends the fallback.
"""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures_cam import free_port
from test_service import save_by_rename, scrape, value
from util import DaemonProc, camera_doc, config_doc, wait_until

from recorderd.config import ConfigError
from recorderd.lastgood import FILE_NAME, LastGood, load_or_fallback, state_dir_from_env

GOOD = "storage: {root: /tmp/rec}\ncameras:\n  - {id: cam-a, url: 'rtsp://u:pw-good@10.0.0.5/s'}\n"
BAD = "storage: {root: /tmp/rec}\ncameras:\n  - {id: cam-a, url: 'rtsp://u:pw-bad@10.0.0.5/s', plan: gold}\n"


# --------------------------------------------------------------------------- unit


def test_a_config_that_loads_is_saved_byte_for_byte_and_private(tmp_path: Path) -> None:
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(GOOD)
    lg = LastGood(tmp_path)
    config, fallback = load_or_fallback(cfg, lg)
    assert fallback is None and config.camera("cam-a") is not None
    saved = tmp_path / FILE_NAME
    assert saved.read_text() == GOOD
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # camera passwords
    mtime = saved.stat().st_mtime_ns
    os.utime(saved, ns=(mtime - 10**9, mtime - 10**9))
    load_or_fallback(cfg, LastGood(tmp_path))  # unchanged: not rewritten
    assert saved.stat().st_mtime_ns == mtime - 10**9


def test_an_invalid_file_runs_the_saved_copy_with_every_error(tmp_path: Path) -> None:
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(GOOD)
    load_or_fallback(cfg, LastGood(tmp_path))
    cfg.write_text(BAD)
    config, fallback = load_or_fallback(cfg, LastGood(tmp_path))
    assert fallback is not None
    assert config.camera("cam-a") is not None and config.camera("cam-a").plan == "basic"  # type: ignore[union-attr]
    assert any("plan" in e for e in fallback.errors)
    reason = fallback.reason(cfg)
    assert str(cfg) in reason and "last good" in reason and FILE_NAME in reason
    assert "pw-bad" not in reason and "pw-good" not in reason
    assert (tmp_path / FILE_NAME).read_text() == GOOD  # the bad file never replaces the copy


def test_no_copy_or_no_state_dir_still_refuses(tmp_path: Path) -> None:
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text("cameras: [")
    with pytest.raises(ConfigError):
        load_or_fallback(cfg, LastGood(tmp_path))
    with pytest.raises(ConfigError):
        load_or_fallback(cfg, LastGood(None))
    (tmp_path / FILE_NAME).write_text("not: [valid")  # a copy that does not load is no copy
    with pytest.raises(ConfigError):
        load_or_fallback(cfg, LastGood(tmp_path))


def test_an_unwritable_state_dir_costs_nothing_but_a_log_line(tmp_path: Path) -> None:
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(GOOD)
    config, fallback = load_or_fallback(cfg, LastGood(tmp_path / "missing"))
    assert fallback is None and config.cameras


def test_state_dir_comes_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/recorderd:/var/lib/other")
    assert state_dir_from_env() == Path("/var/lib/recorderd")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert state_dir_from_env() is None


# --------------------------------------------------------------------------- the daemon


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.integration
async def test_reboot_after_a_bad_edit_records_with_the_last_good_config(  # type: ignore[no-untyped-def]
        shared_cam, pg_dsn, tmp_path, daemons) -> None:
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    root = tmp_path / "rec"
    cfg_path = tmp_path / "cameras.yaml"
    good = config_doc(root, [camera_doc("cam-a", shared_cam.url)], database={"dsn": pg_dsn},
                      metrics={"listen": f"127.0.0.1:{port}"})
    cfg_path.write_text(yaml.safe_dump(good))
    env = {"STATE_DIRECTORY": str(state)}

    d = DaemonProc(cfg_path, root, tmp_path / "first.log", env=env).start()
    daemons.append(d)
    await wait_until(lambda: (d.camera("cam-a") or {}).get("is_recording"), 40, what="recording")
    assert (state / FILE_NAME).read_text() == cfg_path.read_text()
    d.stop()

    # a rejected live edit left on disk, then a power cut
    bad = yaml.safe_dump(good).replace("segment_seconds: 2", "segment_seconds: two")
    cfg_path.write_text(bad)
    d = DaemonProc(cfg_path, root, tmp_path / "second.log", env=env).start()
    daemons.append(d)
    await wait_until(lambda: (d.camera("cam-a") or {}).get("is_recording"), 40,
                     what="recording with the last good config")
    (ev,) = d.events("config_fallback")
    assert ev["level"] == "critical" and any("segment_seconds" in e for e in ev["errors"])
    code, body = healthz(port)
    assert code == 503 and "config_fallback" in body and "last good" in body
    m = scrape(port)
    assert value(m, "recorderd_config_fallback") == 1
    assert value(m, "recorderd_config_last_reload_successful") == 0
    status = d.status()
    assert status is not None and status["config_fallback"]["path"] == str(state / FILE_NAME)
    assert (state / FILE_NAME).read_text() != bad

    # the operator fixes the file (and adds a camera): picked up live, the fallback ends
    fixed = config_doc(root, [camera_doc("cam-a", shared_cam.url), camera_doc("cam-b", shared_cam.url)],
                       database={"dsn": pg_dsn}, metrics={"listen": f"127.0.0.1:{port}"})
    save_by_rename(cfg_path, fixed)
    await wait_until(lambda: any(e.get("fallback_ended") for e in d.events("config_reloaded")), 20,
                     what="the fix reloaded")
    await wait_until(lambda: (d.camera("cam-b") or {}).get("is_recording"), 40, what="cam-b recording")
    assert value(scrape(port), "recorderd_config_fallback") == 0
    await wait_until(lambda: "config_fallback" not in healthz(port)[1], 10, what="healthz without fallback")
    assert (d.status() or {}).get("config_fallback") is None
    assert (state / FILE_NAME).read_text() == cfg_path.read_text()


@pytest.mark.integration
def test_a_first_start_with_a_bad_file_and_no_copy_still_refuses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg_path = tmp_path / "cameras.yaml"
    cfg_path.write_text("cameras: [")
    d = DaemonProc(cfg_path, tmp_path / "rec", tmp_path / "d.log", env={"STATE_DIRECTORY": str(state)}).start()
    assert d.wait(30) == 2
    assert not (state / FILE_NAME).exists()


def test_queries_use_the_saved_copy_when_the_file_is_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`recorderd status` must work exactly when the daemon runs on its last good config."""
    from recorderd import cli

    monkeypatch.setattr("recorderd.logging.configure", lambda *a, **k: None)  # keep other tests' logging
    cfg = tmp_path / "cameras.yaml"
    root = tmp_path / "rec"
    cfg.write_text(GOOD.replace("/tmp/rec", str(root)) + f"database: {{dsn: 'postgresql://127.0.0.1:{free_port()}/x'}}\n")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    load_or_fallback(cfg, LastGood(tmp_path))
    cfg.write_text("cameras: [")
    assert cli.main(["status", "--config", str(cfg)]) == 3  # ran: "not running", not "bad config"
    err = capsys.readouterr().err
    assert "YAML syntax error" in err and f"using the last good config {tmp_path / FILE_NAME}" in err
    (tmp_path / FILE_NAME).unlink()
    assert cli.main(["status", "--config", str(cfg)]) == 2
