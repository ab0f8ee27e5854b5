"""A :class:`~router_controller.clock.SleepingClock` that moves only when a test moves it.

Monotonic and wall time move together, as on a real machine: the wall clock reads
``wall`` while the monotonic clock reads ``start``, and both advance by what
:meth:`FakeClock.set` or :meth:`FakeClock.advance` add. A task sleeping on it
(:meth:`FakeClock.sleep_until`) wakes once the clock passes its deadline; nothing here
waits on real time, and nothing touches the event loop's own clock, so timeouts that
guard real I/O keep measuring real time.
"""

from __future__ import annotations

import asyncio
import datetime

WALL = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class FakeClock:
    """A clock that stands still until the test sets it; sleepers wake when it passes them."""

    def __init__(self, start: float = 100.0, *, wall: datetime.datetime = WALL) -> None:
        self._start = start
        self._now = start
        self._wall = wall
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    def now(self) -> datetime.datetime:
        return self._wall + datetime.timedelta(seconds=self._now - self._start)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._sleepers.append((deadline, waiter))
        await waiter

    def sleeping_until(self) -> list[float]:
        """Deadlines of the sleeps still pending, earliest first."""
        return sorted(d for d, waiter in self._sleepers if not waiter.done())

    def set(self, now: float) -> None:
        """Move the monotonic clock to ``now`` (and the wall clock with it)."""
        assert now >= self._now, "a monotonic clock does not go back"
        self._now = now
        for deadline, waiter in self._sleepers:
            if deadline <= now and not waiter.done():
                waiter.set_result(None)
        self._sleepers = [(d, w) for d, w in self._sleepers if not w.done()]

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)
