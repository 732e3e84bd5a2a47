"""Event-loop lag: how late a periodic timer fires, as a histogram (``recorderd_event_loop_lag_seconds``).

One process runs every camera's supervision, the index, the sweeper and the HTTP API. Anything that
holds the loop (a blocking call that slipped in, a giant response built in one go) delays all of
them; this is the one number that shows it, in production and in ``scripts/bench http``.
"""

from __future__ import annotations

import asyncio

from recorderd import metrics

# seconds between probes. A stall is seen in full when the probe falls due inside it, so one longer
# than this is always seen and a shorter one with a chance of its length over this; a wake-up a second
# keeps the probe itself out of the daemon's idle cost (it was 4 a second, a tenth of that cost)
INTERVAL = 1.0


async def monitor(interval: float = INTERVAL) -> None:
    """Run until cancelled: sleep ``interval``, record how much later than asked the loop woke us."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval)
        metrics.LOOP_LAG.observe(max(0.0, loop.time() - t0 - interval))

