"""The event-loop lag monitor sees a loop that something blocked."""

from __future__ import annotations

import asyncio
import contextlib
import time

from recorderd import looplag, metrics


def lag_sum_and_count() -> tuple[float, float]:
    samples = {s.name: s.value for m in metrics.LOOP_LAG.collect() for s in m.samples}
    return samples["recorderd_event_loop_lag_seconds_sum"], samples["recorderd_event_loop_lag_seconds_count"]


async def test_a_blocked_loop_shows_as_lag() -> None:
    sum0, count0 = lag_sum_and_count()
    task = asyncio.create_task(looplag.monitor(interval=0.02))
    try:
        await asyncio.sleep(0.01)  # the monitor is inside its sleep now
        time.sleep(0.2)  # a blocking call on the loop
        await asyncio.sleep(0.06)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    total, count = lag_sum_and_count()
    assert count - count0 >= 2
    assert total - sum0 >= 0.15  # the wake-up that waited on the blocking call
