"""What a simulated device's model does between two telemetry messages: counters and latency.

About :data:`RATE_PER_S` inferences a second while a model is served, none without one. Each device
has its own base latency (around :data:`BASE_LATENCY_MS`, fixed by its id) with a little noise per
report; p99 is :data:`P99_OVER_P50` times p50. A *slow* device runs ``slow_factor`` times slower on
any model it got from an update (not on its factory model), and ``error_fraction`` of the inferences
on such a model fail. Counters are cumulative from the simulator's start, like the agent's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RATE_PER_S = 10.0
BASE_LATENCY_MS = 5.0
P99_OVER_P50, MAX_OVER_P50 = 1.6, 2.2
NOISE = 0.02  # relative, per report


@dataclass
class Sample:
    inferences: int
    errors: int
    rate_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class Workload:
    def __init__(self, seed: str, *, slow_factor: float = 1.0, error_fraction: float = 0.0) -> None:
        self._rng = random.Random(seed)
        self.base_ms = BASE_LATENCY_MS * self._rng.uniform(0.9, 1.1)
        self.slow_factor, self.error_fraction = slow_factor, error_fraction
        self.inferences = self.errors = 0
        self._carry = self._error_carry = 0.0
        self._last: float | None = None

    def sample(self, now: float, *, serving: bool, updated: bool) -> Sample:
        """The counters at ``now`` (monotonic seconds); ``updated``: the model came from an update."""
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        if not serving:
            return Sample(self.inferences, self.errors, 0.0, None, None, None)
        self._carry += RATE_PER_S * elapsed
        ran = int(self._carry)
        self._carry -= ran
        self.inferences += ran
        if updated and self.error_fraction > 0:
            self._error_carry += ran * self.error_fraction
            failed = int(self._error_carry)
            self._error_carry -= failed
            self.errors += failed
        p50 = self.base_ms * (self.slow_factor if updated else 1.0) * (1 + self._rng.uniform(-NOISE, NOISE))
        return Sample(self.inferences, self.errors, RATE_PER_S, round(p50, 3), round(p50 * P99_OVER_P50, 3),
                      round(p50 * MAX_OVER_P50, 3))
