import asyncio
import dataclasses
import random
from pathlib import Path

from recorderd.backoff import Backoff
from recorderd.config import parse_text
from recorderd.layout import STATE_DIR
from recorderd.restarts import Exit, RestartPolicy
from recorderd.streammemory import StreamMemory


def test_grows_exponentially_to_cap_without_jitter() -> None:
    b = Backoff(base=1, factor=2, cap=60, jitter=0)
    assert [b.next_delay() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_stays_within_bounds_and_varies() -> None:
    b = Backoff(jitter=0.2, rng=random.Random(7))
    delays = []
    for _ in range(200):
        b.attempt = 3  # nominal 8 s
        delays.append(b.next_delay())
    assert all(6.4 <= d <= 9.6 for d in delays)
    assert len({round(d, 3) for d in delays}) > 50  # not lock-step


def test_cap_holds_with_jitter() -> None:
    b = Backoff(cap=60, jitter=0.2, rng=random.Random(1))
    b.attempt = 50
    delays = [b.next_delay() for _ in range(100)]
    assert all(48 <= d <= 60 for d in delays)


def test_long_run_resets_sequence_short_run_does_not() -> None:
    b = Backoff(jitter=0, stable_after=30)
    for _ in range(5):
        b.next_delay()
    assert b.next_delay(run_seconds=5) == 32  # flapping camera keeps backing off
    assert b.next_delay(run_seconds=3600) == 1  # ran for an hour: start over
    assert b.next_delay() == 2


def test_huge_attempt_count_does_not_overflow() -> None:
    b = Backoff(jitter=0)
    b.attempt = 10_000
    assert b.next_delay() == 60


# --------------------------------------------------------------------------- per-cause pace (restarts)


def _exit(reason: str, **kw: object) -> Exit:
    return Exit(reason=reason, lasted=2.0, recorded=False, segments=0, **kw)  # type: ignore[arg-type]


def test_a_wrong_password_is_retried_in_minutes_not_seconds() -> None:
    policy = RestartPolicy("rtsp://10.0.0.9/s", asyncio.Event(), backoff=Backoff(rng=random.Random(1)))
    delays = [policy.delay(_exit("unauthorized")) for _ in range(8)]
    assert 48 <= delays[0] <= 72 and delays[:6] == sorted(delays[:6])  # a lockout needs a few tries a minute
    assert max(delays) <= 1800 and delays[-1] >= 1440
    # the default sequence was not advanced by the password's: an unreachable spell starts at 1 s
    assert policy.delay(_exit("unreachable", unreachable=True)) <= 1.2
    assert 48 <= policy.delay(_exit("unsupported")) <= 72


def test_a_busy_server_is_asked_again_within_seconds() -> None:
    policy = RestartPolicy("rtsp://10.0.0.9/s", asyncio.Event(), backoff=Backoff(rng=random.Random(2)))
    delays = [policy.delay(_exit("unreachable", unreachable=True, busy=True)) for _ in range(10)]
    assert delays[0] <= 1.2 and max(delays) <= 10 * 1.2


def test_a_good_run_resets_every_cause() -> None:
    policy = RestartPolicy("rtsp://10.0.0.9/s", asyncio.Event(), backoff=Backoff(rng=random.Random(3)))
    for _ in range(3):
        policy.delay(_exit("unauthorized"))
    assert policy.delay(Exit(reason="camera_dropped", lasted=60.0, recorded=True, segments=5)) == 0.0
    assert policy.delay(_exit("unauthorized")) <= 72


# --------------------------------------------------------------------------- the remembered audio decision


def test_stream_memory_keeps_the_audio_decision_per_camera_and_url(tmp_path: Path) -> None:
    (tmp_path / STATE_DIR).mkdir()
    cfg = parse_text(f"storage: {{root: {tmp_path}}}\ncameras:\n"
                     "  - {id: a, url: 'rtsp://u:pw@10.0.0.1/s'}\n  - {id: b, url: 'rtsp://10.0.0.2/s', audio: aac}\n")
    a, b = cfg.cameras
    mem = StreamMemory(tmp_path)
    assert mem.audio_mode(a) is None
    assert mem.remember(a, "aac", "pcm_alaw")
    text = (tmp_path / STATE_DIR / "streams.json").read_text()
    assert "pcm_alaw" in text and "pw" not in text.replace('"pcm_alaw"', "")  # the masked URL only
    fresh = StreamMemory(tmp_path)  # a restarted daemon
    assert fresh.audio_mode(a) == "aac"
    assert fresh.audio_mode(b) is None  # an explicit audio setting is never overridden
    assert fresh.audio_mode(dataclasses.replace(a, url="rtsp://u:pw@10.0.0.7/s")) is None  # another camera
    assert fresh.audio_mode(dataclasses.replace(a, url="rtsp://u:new-pw@10.0.0.1/s")) == "aac"  # new password


def test_stream_memory_never_creates_state_on_an_unmounted_volume(tmp_path: Path) -> None:
    cam = parse_text(f"storage: {{root: {tmp_path}}}\ncameras: [{{id: a, url: 'rtsp://10.0.0.1/s'}}]\n").cameras[0]
    mem = StreamMemory(tmp_path)
    assert mem.remember(cam, "aac", "pcm_mulaw") is False and not (tmp_path / STATE_DIR).exists()
    assert mem.audio_mode(cam) == "aac"  # still known for this daemon's life
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / "streams.json").write_text("{not json")
    assert StreamMemory(tmp_path).audio_mode(cam) is None  # unreadable: learn again, never refuse
