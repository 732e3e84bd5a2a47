"""Exponential backoff with jitter for camera reconnects.

Jitter keeps 100 cameras that dropped together (a switch reboot) from reconnecting in lock-step;
the reset after a run that lasted keeps a camera that blips once a day from waiting a minute.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.2  # +/- fraction of the nominal delay
    stable_after: float = 30.0  # a run at least this long resets the sequence
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def nominal(self, attempt: int | None = None) -> float:
        n = self.attempt if attempt is None else attempt
        return float(min(self.cap, self.base * self.factor ** min(n, 64)))

    def next_delay(self, run_seconds: float | None = None) -> float:
        """Delay before the next start; ``run_seconds`` is how long the run that just ended lasted."""
        if run_seconds is not None and run_seconds >= self.stable_after:
            self.attempt = 0
        delay = self.nominal()
        self.attempt += 1
        spread = delay * self.jitter
        return float(min(self.cap, max(0.0, delay + self.rng.uniform(-spread, spread))))

    def reset(self) -> None:
        self.attempt = 0
