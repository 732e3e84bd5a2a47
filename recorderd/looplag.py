"""Event-loop lag: how late a periodic timer fires, as a histogram (``recorderd_event_loop_lag_seconds``).

One process runs every camera's supervision, the index, the sweeper and the HTTP API. Anything that
holds the loop (a blocking call that slipped in, a giant response built in one go) delays all of
them; this is the one number that shows it, in production and in ``scripts/bench http``.
"""

from __future__ import annotations

import asyncio

from recorderd import metrics

INTERVAL = 0.25  # seconds between probes: cheap (4 wake-ups a second), fine enough to see a 10 ms stall


async def monitor(interval: float = INTERVAL) -> None:
    """Run until cancelled: sleep ``interval``, record how much later than asked the loop woke us."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval)
        metrics.LOOP_LAG.observe(max(0.0, loop.time() - t0 - interval))

