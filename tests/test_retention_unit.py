"""Retention decisions without a database: what goes, in which order, and the filesystem guards."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import structlog

from recorderd.config import StorageConfig, parse_config
from recorderd.diskguard import (
    DiskUsage,
    Outcome,
    ProtectedPaths,
    SegmentRow,
    UsageLevels,
    floor_and_target,
    iter_oldest_files,
    removable_days,
    remove_empty_day_dirs,
    select_for_floor,
    take_and_unlink,
    unlink_batch,
)
from recorderd.retention import (
    DAY,
    Policy,
    Q,
    default_retention_days,
    expiring_notice,
    load_queries,
    resolve_policies,
    select_expired,
    select_over_cap,
)

NOW = datetime(2024, 6, 15, 12, 0, 0, tzinfo=UTC).timestamp()
NONE: frozenset[str] = frozenset()


def row(i: int, end: float, size: int = 100, *, cam: str = "c1", protected: bool = False,
        path: str | None = None) -> SegmentRow:
    return SegmentRow(i, cam, path or f"/r/{cam}/{i}.mp4", end - 60, end, size, protected)


def config(**extra: object) -> object:
    doc: dict[str, object] = {"storage": {"root": "/srv/rec"}, "cameras": [
        {"id": "c1", "url": "rtsp://h/1", "plan": "premium", "tenant": "acme"},
        {"id": "c2", "url": "rtsp://h/2", "retention_days": 3, "max_bytes": 1000},
    ]}
    doc.update(extra)
    return parse_config(doc)


# --------------------------------------------------------------------------- selection


def test_select_expired_boundary_order_and_exclusions() -> None:
    cutoff = NOW - 7 * DAY
    rows = [row(1, cutoff - 1), row(2, cutoff), row(3, cutoff + 1), row(4, cutoff - 500),
            row(5, cutoff - 900, protected=True), row(6, cutoff - 100, path="/r/c1/cur.mp4")]
    got = select_expired(rows, cutoff, frozenset({"/r/c1/cur.mp4"}))
    assert [r.id for r in got] == [4, 1]  # strictly older than the cutoff, oldest first


def test_select_over_cap_oldest_first_skips_protected_and_current() -> None:
    rows = [row(i, NOW - (10 - i) * 60, 100, protected=(i == 1)) for i in range(1, 9)]
    rows[2] = row(3, rows[2].end, 100, path="/live.mp4")
    # unprotected total of the 8 rows (row 1 protected is not counted by the caller's query)
    got = select_over_cap(rows, total=700, max_bytes=350, current=frozenset({"/live.mp4"}))
    assert [r.id for r in got] == [2, 4, 5, 6]  # 700 -> 300 <= 350; 1 protected, 3 being written
    assert select_over_cap(rows, total=300, max_bytes=350, current=NONE) == []


def test_select_for_floor_takes_until_need_and_loses_nothing_from_a_lazy_source() -> None:
    rows = iter([row(i, NOW + i, 100) for i in range(10)])
    first = select_for_floor(rows, need=250, current=NONE, protected=(), limit=100)
    assert [r.id for r in first] == [0, 1, 2]
    second = select_for_floor(rows, need=100, current=NONE, protected=(), limit=100)
    assert [r.id for r in second] == [3]  # nothing consumed and dropped in between
    third = select_for_floor(rows, need=10**9, current=NONE, protected=(), limit=2)
    assert [r.id for r in third] == [4, 5]
    assert select_for_floor(iter([row(1, NOW)]), need=0, current=NONE, protected=(), limit=5) == []


def test_select_for_floor_honours_protected_list_and_flag() -> None:
    rows = [row(1, NOW, path="/a"), row(2, NOW + 1, protected=True), row(3, NOW + 2, path="/c")]
    got = select_for_floor(rows, need=10**6, current=NONE, protected=frozenset({"/a"}), limit=10)
    assert [r.id for r in got] == [3]


def test_resolve_policies_config_then_table_then_default() -> None:
    cfg = config()
    table = [Policy("c1", 99, None, None, "index"), Policy("gone", 3, 500, "t", "index")]
    pols = resolve_policies(cfg, table, ["c1", "gone", "ghost"])  # type: ignore[arg-type]
    assert (pols["c1"].retention_days, pols["c1"].tenant, pols["c1"].source) == (30, "acme", "config")
    assert (pols["c2"].retention_days, pols["c2"].max_bytes) == (3, 1000)
    assert (pols["gone"].retention_days, pols["gone"].max_bytes, pols["gone"].source) == (3, 500, "index")
    assert (pols["ghost"].retention_days, pols["ghost"].source) == (30, "default")  # longest plan


def test_default_retention_is_the_longest_configured_plan() -> None:
    assert default_retention_days(config(plans={"vault": {"retention_days": 90}})) == 90  # type: ignore[arg-type]


def test_expiring_notice_one_day_before_the_day_is_gone() -> None:
    oldest = datetime(2024, 6, 1, 8, 30, tzinfo=UTC).timestamp()
    gone_at = datetime(2024, 6, 9, tzinfo=UTC).timestamp()  # (June 1 + 1 day) + 7 days
    assert expiring_notice(oldest, 7, gone_at - DAY - 1) is None
    assert expiring_notice(oldest, 7, gone_at - DAY) == ("2024-06-01", gone_at)
    assert expiring_notice(oldest, 7, gone_at + 5) == ("2024-06-01", gone_at)


# --------------------------------------------------------------------------- free space


def storage(pct: float = 10, min_bytes: int = 0, margin: float = 2) -> StorageConfig:
    return StorageConfig(root=Path("/x"), min_free_percent=pct, min_free_bytes=min_bytes,
                         free_margin_percent=margin, status_file=Path("/x/s"))


def test_floor_and_target_larger_floor_wins_plus_margin() -> None:
    assert floor_and_target(storage(10, 0, 2), 1000) == (100, 120)
    assert floor_and_target(storage(10, 500, 2), 1000) == (500, 520)
    assert floor_and_target(storage(0, 0, 0), 1000) == (0, 0)
    assert floor_and_target(storage(50, 2000, 10), 1000)[1] == 1000  # never beyond the disk


def test_usage_levels_log_once_per_crossing_and_on_recovery() -> None:
    lv = UsageLevels()

    def at(ratio: float) -> None:
        lv.observe(DiskUsage(total=1000, free=int(1000 * (1 - ratio)), used=int(1000 * ratio)))

    with structlog.testing.capture_logs() as logs:
        for r in (0.5, 0.81, 0.85, 0.805, 0.96, 0.97, 0.93, 0.70):
            at(r)
    got = [(e["event"], e["log_level"], e.get("threshold")) for e in logs]
    assert got == [("disk_usage_high", "warning", 0.80), ("disk_usage_high", "critical", 0.95),
                   ("disk_usage_recovered", "info", 0.95), ("disk_usage_recovered", "info", 0.80)]


# --------------------------------------------------------------------------- filesystem guards


def _touch(p: Path, data: bytes = b"x" * 10) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_unlink_batch_refuses_everything_but_regular_files_in_the_camera_dir(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    secret = _touch(outside / "secret.mp4")
    _touch(outside / "day" / "00-00-00.mp4")
    ok = _touch(root / "c1" / "2024-06-01" / "00-00-00.mp4")
    other_cam = _touch(root / "c2" / "2024-06-01" / "00-00-00.mp4")
    link = root / "c1" / "2024-06-01" / "01-00-00.mp4"
    link.symlink_to(secret)
    (root / "c1" / "2024-06-02").symlink_to(outside / "day")
    (root / "c3").symlink_to(outside)
    (root / "c1" / "2024-06-03" / "dir.mp4").mkdir(parents=True)
    items = [("c1", str(ok)), ("c1", str(link)), ("c1", str(root / "c1" / "2024-06-02" / "00-00-00.mp4")),
             ("c1", str(other_cam)), ("c1", str(root / "c1" / ".." / "c2" / "2024-06-01" / "00-00-00.mp4")),
             ("c1", str(secret)), ("c3", str(root / "c3" / "secret.mp4")),
             ("c1", str(root / "c1" / "2024-06-03" / "dir.mp4")), ("c1", "relative/x.mp4"),
             ("c1", str(root / "c1" / "2024-06-01" / "gone.mp4")), ("../x", str(root / "../x/y.mp4"))]
    got = [r.outcome for r in unlink_batch(root, items)]
    assert got == [Outcome.DELETED, Outcome.REFUSED, Outcome.REFUSED, Outcome.REFUSED, Outcome.REFUSED,
                   Outcome.REFUSED, Outcome.REFUSED, Outcome.REFUSED, Outcome.REFUSED, Outcome.MISSING,
                   Outcome.REFUSED]
    assert not ok.exists() and secret.exists() and other_cam.exists()
    assert (outside / "day" / "00-00-00.mp4").exists() and link.is_symlink()


def test_unlink_batch_accepts_rows_written_under_the_resolved_root(tmp_path: Path) -> None:
    real = tmp_path / "disk1"
    f = _touch(real / "c1" / "2024-06-01" / "00-00-00.mp4")
    (tmp_path / "rec").symlink_to(real)  # storage.root is a link to the disk: that is allowed
    assert unlink_batch(tmp_path / "rec", [("c1", str(f))])[0].outcome is Outcome.DELETED


def test_unlink_batch_reports_a_missing_root_as_failed(tmp_path: Path) -> None:
    res = unlink_batch(tmp_path / "nope", [("c1", str(tmp_path / "nope/c1/d/x.mp4"))])
    assert res[0].outcome is Outcome.FAILED


def test_removable_days_never_today_or_future() -> None:
    names = ["2024-06-13", "2024-06-14", "2024-06-15", "2024-06-16", "junk", ".recorderd"]
    assert removable_days(names, NOW) == ["2024-06-13", "2024-06-14"]
    just_after_midnight = datetime(2024, 6, 15, 0, 10, tzinfo=UTC).timestamp()
    assert removable_days(names, just_after_midnight) == ["2024-06-13"]  # yesterday: grace hour


def test_remove_empty_day_dirs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("2024-06-01", "2024-06-15", "2024-06-16"):
        (root / "c1" / d).mkdir(parents=True)
    full = _touch(root / "c1" / "2024-06-02" / "00-00-00.mp4")
    (tmp_path / "elsewhere" / "empty").mkdir(parents=True)
    (root / "c1" / "2024-06-03").symlink_to(tmp_path / "elsewhere" / "empty")
    assert remove_empty_day_dirs(root, NOW) == 1
    assert sorted(os.listdir(root / "c1")) == ["2024-06-02", "2024-06-03", "2024-06-15", "2024-06-16"]
    assert full.exists() and (tmp_path / "elsewhere" / "empty").is_dir()


def test_iter_oldest_files_merges_cameras_by_path_time(tmp_path: Path) -> None:
    root = tmp_path
    for p in ("a/2024-06-02/00-00-00.mp4", "a/2024-06-01/12-00-00.mp4", "b/2024-06-01/06-00-00.mp4",
              "b/2024-06-03/00-00-00.mp4", "b/2024-06-01/notes.txt", ".recorderd/x/00-00-00.mp4"):
        _touch(root / p)
    (root / "b" / "2024-06-01" / "07-00-00.mp4").symlink_to(root / "a" / "2024-06-02" / "00-00-00.mp4")
    got = [os.path.relpath(r.path, root) for r in iter_oldest_files(root)]
    assert got == ["b/2024-06-01/06-00-00.mp4", "a/2024-06-01/12-00-00.mp4", "a/2024-06-02/00-00-00.mp4",
                   "b/2024-06-03/00-00-00.mp4"]


def test_take_and_unlink_skips_current_and_protected(tmp_path: Path) -> None:
    paths = [_touch(tmp_path / "c1" / "2024-06-01" / f"0{i}-00-00.mp4", b"x" * 100) for i in range(4)]
    rows = iter_oldest_files(tmp_path)
    pairs = take_and_unlink(rows, tmp_path, 150, frozenset({str(paths[0])}), frozenset({str(paths[1])}), 10)
    assert [os.path.basename(r.path) for r, _ in pairs] == ["02-00-00.mp4", "03-00-00.mp4"]
    assert paths[0].exists() and paths[1].exists() and not paths[2].exists() and not paths[3].exists()


def test_protected_paths_survive_a_restart(tmp_path: Path) -> None:
    p = ProtectedPaths(tmp_path)
    assert not p.load()
    p.replace(["/a", "/b"])
    q = ProtectedPaths(tmp_path)
    assert q.load() and "/a" in q and "/c" not in q


def test_protected_paths_write_failure_is_logged_once_not_raised(tmp_path: Path) -> None:
    (tmp_path / ".recorderd").write_text("not a directory")
    p = ProtectedPaths(tmp_path)
    with structlog.testing.capture_logs() as logs:
        p.replace(["/a"])
        p.replace(["/a", "/b"])
    assert p.known and "/b" in p
    assert [e["event"] for e in logs] == ["retention_error"]


def test_named_queries_load() -> None:
    assert {"mark", "delete", "interrupted", "survey", "oldest_all"} <= set(Q)
    assert load_queries("-- name: a\n-- c\nSELECT 1\n-- name: b\nSELECT 2\n") == {"a": "SELECT 1", "b": "SELECT 2"}
