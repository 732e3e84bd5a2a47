"""Pure parts of the export/clip HTTP layer: the cut slots, attachment names, error mapping."""

from __future__ import annotations

import pytest

from recorderd import clips, export, metrics
from recorderd.api.errors import ApiError
from recorderd.api.exports import CutSlots, attachment, domain_error
from recorderd.db import DatabaseUnavailable


def busy_count(kind: str) -> float:
    return metrics.API_CUTS.labels(kind, "busy")._value.get()


def test_cut_slots_refuse_past_the_live_limit_with_retry_after() -> None:
    limit = [2]
    slots = CutSlots(lambda: limit[0])
    before = busy_count("export")
    with slots.take("export"), slots.take("clip"):
        assert slots.busy == 2
        with pytest.raises(ApiError) as info, slots.take("export"):
            pass
        assert info.value.status == 429 and info.value.headers["Retry-After"] == "5"
        assert "http.max_exports is 2" in info.value.detail
        limit[0] = 3  # a reload raised it: the next one fits at once
        with slots.take("export"):
            assert slots.busy == 3
    assert slots.busy == 0 and busy_count("export") == before + 1


def test_a_slot_is_given_back_when_the_cut_fails() -> None:
    slots = CutSlots(lambda: 1)
    with pytest.raises(RuntimeError), slots.take("clip"):
        raise RuntimeError("ffmpeg died")
    with slots.take("clip"):
        assert slots.busy == 1


@pytest.mark.parametrize(("name", "fallback", "encoded"), [
    ("cam-1_20261121T100000Z_20261121T101000Z.mp4", "cam-1_20261121T100000Z_20261121T101000Z.mp4",
     "cam-1_20261121T100000Z_20261121T101000Z.mp4"),
    ("Gate, évening.mp4", "Gate_evening.mp4", "Gate%2C%20%C3%A9vening.mp4"),
    ('a"b\\c/../d.mp4', "a_b_c_.._d.mp4", "a%22b%5Cc%2F..%2Fd.mp4"),
    ("門.mp4", "mp4", "%E9%96%80.mp4"),
])
def test_attachment_names_are_safe_in_both_forms(name: str, fallback: str, encoded: str) -> None:
    value = attachment(name)
    assert value == f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    assert "\r" not in value and "\n" not in value


@pytest.mark.parametrize(("exc", "status", "error"), [
    (clips.BadName("the name must not be empty"), 400, "bad_request"),
    (export.BadPeriod("start must be before end"), 400, "bad_request"),
    (clips.UnknownCamera("x"), 404, "not_found"),
    (clips.ClipNotFound(3), 404, "not_found"),
    (clips.ClipLimit("cam", "basic", 10, 10), 409, "clip_limit"),
    (export.NoFootage("no footage between ..."), 422, "no_footage"),
    (clips.StorageUnavailable("storage /srv/rec is not mounted"), 503, "storage_unavailable"),
    (DatabaseUnavailable("index database unreachable"), 503, "index_unavailable"),
    (export.CutFailed("cannot write in /srv/rec/clips/cam: No space left"), 500, "cut_failed"),
])
def test_domain_errors_map_to_statuses_without_paths(exc: Exception, status: int, error: str) -> None:
    api = domain_error(exc)
    assert (api.status, api.error) == (status, error)
    assert "/srv/rec" not in api.detail
