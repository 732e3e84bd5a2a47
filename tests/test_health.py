"""The /healthz verdict for a stale disk reading, a missing storage volume and an untrusted clock (pure)."""

from __future__ import annotations

from recorderd.health import CHECKS, HealthSnapshot, check_of, disk_stale_after, health_reasons

GiB = 1024**3


def snap(**kw: object) -> HealthSnapshot:
    base: dict[str, object] = dict(now=10_000.0, database_up=True, disk_free_bytes=500 * GiB,
                                   disk_total_bytes=1000 * GiB, floor_bytes=100 * GiB)
    base.update(kw)
    return HealthSnapshot(**base)  # type: ignore[arg-type]


def test_a_fresh_reading_is_healthy_and_a_stale_one_is_disk_unknown() -> None:
    assert health_reasons(snap(disk_age_seconds=2.0)) == []
    assert health_reasons(snap(disk_age_seconds=30.0)) == []  # at the limit is fine
    [r] = health_reasons(snap(disk_age_seconds=45.2))
    assert r == "disk_unknown: storage filesystem did not answer for 45s"


def test_a_stale_reading_hides_its_old_numbers() -> None:
    """A hung mount must show as such, not as the "disk_low" of a reading from before it hung."""
    [r] = health_reasons(snap(disk_free_bytes=1, disk_age_seconds=125.0, disk_stale_seconds=6.0))
    assert r == "disk_unknown: storage filesystem did not answer for 2m05s"


def test_no_reading_at_all_is_still_cannot_stat() -> None:
    [r] = health_reasons(snap(disk_free_bytes=None, disk_total_bytes=None, disk_age_seconds=1.0))
    assert r == "disk_unknown: cannot stat the storage filesystem"


def test_disk_stale_after_is_a_few_checks_but_never_under_30s() -> None:
    assert disk_stale_after(2.0) == 30.0
    assert disk_stale_after(20.0) == 60.0


def test_storage_missing_and_clock_untrusted_are_reasons_with_stable_checks() -> None:
    reasons = health_reasons(snap(storage_missing="storage volume marker /r/.recorderd/volume.json is missing",
                                  clock_untrusted="wall clock stepped by +3600.0s"))
    assert reasons == ["storage_missing: storage volume marker /r/.recorderd/volume.json is missing",
                       "clock_untrusted: wall clock stepped by +3600.0s"]
    assert {check_of(r) for r in reasons} <= set(CHECKS)
    assert "storage_missing" in CHECKS and "clock_untrusted" in CHECKS and len(set(CHECKS)) == len(CHECKS)
