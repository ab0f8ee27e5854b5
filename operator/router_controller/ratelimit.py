"""One token bucket, the rate limiter client-go and controller-runtime use everywhere.

Three parts of the operator cap a rate without ever waiting for it: the API client's
global budget for retries, the metrics server's reviews of unknown tokens, and the
Event recorder (its per-object spam filter and its trickle while the work queue is
busy). They share this one small class; its clock is injected so that tests move time
by hand. Written here rather than taken from a library because it is a dozen lines and
must never sleep (limiter packages on PyPI wait for a permit, which none of these may).
"""

from __future__ import annotations

from router_controller.clock import SYSTEM_CLOCK, Clock


class TokenBucket:
    """``rate`` permits a second, at most ``burst`` saved up; never waits."""

    def __init__(self, *, rate: float, burst: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock.monotonic()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self) -> bool:
        """Spend one permit if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a permit is there (0 if one is)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self._rate)
