import random

from recorderd.backoff import Backoff


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
