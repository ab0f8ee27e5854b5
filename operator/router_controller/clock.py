"""The operator's one source of time, and the one way it writes and reads timestamps.

Two kinds of time are read, and they must not be mixed up:

- **monotonic** seconds, for every duration and deadline (token buckets, caches with a
  time to live, the Lease's renew deadline, the work queue's delayed adds). It never
  jumps when the wall clock is set. :class:`SystemClock` reads :func:`time.monotonic`,
  which is exactly the clock asyncio's default event loop runs on
  (``BaseEventLoop.time()`` returns ``time.monotonic()``), so a deadline read here and
  an ``asyncio.sleep``/``asyncio.timeout``/``loop.call_at`` the loop schedules agree;
- **wall** time, an aware UTC :class:`~datetime.datetime`, for what is written into
  Kubernetes objects (``lastTransitionTime``, ``lastAppliedTime``, ``lastProbeTime``,
  Event timestamps, the Lease's ``acquireTime``/``renewTime``) and for expiry times
  other parties give us (exec credentials).

Every class that reads time takes a keyword-only ``clock`` (default
:data:`SYSTEM_CLOCK`), as client-go passes a ``clock.Clock``; tests hand in a fake that
moves only when the test moves it. A class that also *waits* (the work queue's timer,
the Lease elector's retry loop) takes a :class:`SleepingClock`, so that a fake clock
wakes it as its time passes; waits that guard real I/O (a request's timeout) stay on
the event loop, as they must measure real time.

Kubernetes writes two precisions of RFC 3339 (``metav1.Time``: whole seconds;
``metav1.MicroTime``: microseconds), always in UTC with ``Z``; :func:`format_time` and
:func:`format_micro_time` write them, :func:`parse_time` reads either (and any other
RFC 3339 offset). Log lines keep their own encoders (:mod:`router_controller.logs`):
they follow zap's encodings of a nanosecond timestamp, not the API's types.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds for durations; aware UTC wall time for timestamps."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime.datetime: ...


class SleepingClock(Clock, Protocol):
    """A :class:`Clock` that can also be waited on."""

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`monotonic` has reached ``deadline`` (at once if it has)."""


class SystemClock:
    """The machine's clocks; its monotonic time is the default event loop's time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))


SYSTEM_CLOCK = SystemClock()


def _utc(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already (never local time)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def format_time(moment: datetime.datetime) -> str:
    """``metav1.Time``'s wire form: RFC 3339 in UTC, whole seconds, ``Z``."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime.datetime) -> str:
    """``metav1.MicroTime``'s wire form: RFC 3339 in UTC with six fractional digits, ``Z``."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    """An RFC 3339 time (either precision, any offset) as aware UTC; None if it is not one.

    A time without an offset is taken to be UTC.
    """
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return _utc(moment)
