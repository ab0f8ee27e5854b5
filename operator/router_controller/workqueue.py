"""The queue of object keys between the watches and the workers, with client-go's rules.

Watch events come in bursts and say nothing the cache does not already know, so the
watches only push the key (namespace, name) of what changed and the workers reconcile
from current state. That only works if the queue in between keeps four promises, the
ones client-go's ``util/workqueue`` keeps for controller-runtime:

- a key waiting to be processed is held once, however often it is added;
- a key is never handed to two workers at once: added while in flight, it is marked
  dirty and handed out again after the worker calls :meth:`WorkQueue.done`;
- failed keys come back after a per-key exponential backoff (5 ms doubling to 1000 s),
  and a reconcile can ask to be re-run later; both are delayed adds, kept in one heap
  served by one timer task that sleeps on an injected
  :class:`~router_controller.clock.SleepingClock` (the event loop's own clock by default);
- shutdown stops new adds, wakes idle workers and waits, up to a deadline, for the
  work already accepted to finish.

This module owns that state and the numbers behind client-go's ``workqueue_*``
metrics. It reports them through a :class:`QueueMetrics` object and leaves the metric
registry, labels and export to the metrics module.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from router_controller.clock import SYSTEM_CLOCK, SleepingClock

K = TypeVar("K", bound=Hashable)

# client-go's ItemExponentialFailureRateLimiter defaults, as controller-runtime uses them.
DEFAULT_BACKOFF_BASE = 0.005
DEFAULT_BACKOFF_CAP = 1000.0


class ShutDown(Exception):
    """The queue is shut down and has no key left to hand out."""


class QueueMetrics(Protocol):
    """Where the queue reports what client-go's workqueue metrics count.

    The two gauges that depend on time passing, unfinished work and the longest
    running processor, are read from :meth:`WorkQueue.unfinished_work_seconds` and
    :meth:`WorkQueue.longest_running_processor_seconds` when the metrics are scraped.
    """

    def add(self) -> None:
        """A key was accepted that was not already waiting (``adds_total``)."""

    def depth(self, n: int) -> None:
        """The number of keys waiting to be processed is now ``n`` (``depth``)."""

    def queue_latency(self, seconds: float) -> None:
        """A key waited this long between its add and a worker taking it."""

    def work_duration(self, seconds: float) -> None:
        """A worker held a key this long between taking it and calling done."""

    def retry(self) -> None:
        """A delayed or rate-limited add was requested (``retries_total``)."""


class NoQueueMetrics:
    """Metrics that go nowhere."""

    def add(self) -> None:
        pass

    def depth(self, n: int) -> None:
        pass

    def queue_latency(self, seconds: float) -> None:
        pass

    def work_duration(self, seconds: float) -> None:
        pass

    def retry(self) -> None:
        pass


class ExponentialBackoff(Generic[K]):
    """Per-key delay of ``base * 2**failures``, capped, until the key is forgotten."""

    def __init__(
        self, *, base: float = DEFAULT_BACKOFF_BASE, cap: float = DEFAULT_BACKOFF_CAP
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self._base = base
        self._cap = cap
        self._failures: dict[K, int] = {}

    def when(self, key: K) -> float:
        """Count one more failure of ``key`` and return how long to wait before retrying."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        # The exponent is clamped so that 2.0**n cannot overflow; the cap wins long before.
        return min(self._base * 2.0 ** min(failures, 1023), self._cap)

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)


class WorkQueue(Generic[K]):
    """A FIFO of keys: deduplicated, exclusive per key, with delayed and rate-limited adds.

    Every method except :meth:`get` and :meth:`shutdown` is synchronous and must be
    called from the event loop that runs the workers.
    """

    def __init__(
        self,
        *,
        name: str = "workqueue",
        clock: SleepingClock = SYSTEM_CLOCK,
        metrics: QueueMetrics | None = None,
        backoff: ExponentialBackoff[K] | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self._metrics: QueueMetrics = metrics if metrics is not None else NoQueueMetrics()
        self._backoff: ExponentialBackoff[K] = (
            backoff if backoff is not None else ExponentialBackoff()
        )
        # Keys ready to hand out, in order. Each is also in _dirty.
        self._ready: deque[K] = deque()
        # A second lane for low-priority keys (e.g. re-checks after a router probe
        # changed state), handed out only when _ready is empty, so that a burst of them
        # never delays a key a user just changed; _low holds the keys waiting there.
        self._ready_low: deque[K] = deque()
        self._low: set[K] = set()
        # Keys that need processing, with the time they were added: those in _ready
        # plus those added again while in flight.
        self._dirty: dict[K, float] = {}
        # Keys held by a worker, with the time the worker took them.
        self._in_flight: dict[K, float] = {}
        self._getters: deque[asyncio.Future[None]] = deque()
        # Delayed adds: a heap of (due, sequence, key); _due holds each key's earliest
        # due time, and heap entries that disagree with it are stale and skipped.
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._sequence = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._timer_sleeping_until = float("-inf")
        self._shutting_down = False
        self._drained = asyncio.Event()

    def __len__(self) -> int:
        return self.depth

    @property
    def depth(self) -> int:
        """Keys waiting to be processed, including those re-added while in flight."""
        return len(self._dirty)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, key: K, *, low: bool = False) -> None:
        """Queue ``key`` unless it is already waiting; ignored once shutting down.

        ``low`` puts it in the low-priority lane; a normal add of a key waiting there
        moves it to the normal lane.
        """
        if self._shutting_down:
            return
        if key in self._dirty:
            if not low and key in self._low:
                self._low.discard(key)
                if key not in self._in_flight:
                    self._ready_low.remove(key)
                    self._ready.append(key)
            return
        self._dirty[key] = self._clock.monotonic()
        self._metrics.add()
        self._metrics.depth(len(self._dirty))
        if low:
            self._low.add(key)
        if key in self._in_flight:
            return  # done() hands it out again
        (self._ready_low if low else self._ready).append(key)
        self._wake_getter()

    async def get(self) -> K:
        """Wait for the next key and mark it in flight until :meth:`done`.

        Raises :class:`ShutDown` once the queue is shutting down and nothing is ready.
        """
        while not self._ready and not self._ready_low:
            if self._shutting_down:
                raise ShutDown
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._getters:
                    self._getters.remove(waiter)
                elif self._ready or self._ready_low:
                    self._wake_getter()  # we were woken for a key; pass it on
                raise
        if self._ready:
            key = self._ready.popleft()
        else:
            key = self._ready_low.popleft()
            self._low.discard(key)
        added = self._dirty.pop(key)
        now = self._clock.monotonic()
        self._in_flight[key] = now
        self._metrics.depth(len(self._dirty))
        self._metrics.queue_latency(now - added)
        return key

    def done(self, key: K) -> None:
        """Release ``key``; if it was added while in flight it is handed out again."""
        started = self._in_flight.pop(key, None)
        if started is None:
            raise ValueError(f"done() for a key that is not in flight: {key!r}")
        self._metrics.work_duration(self._clock.monotonic() - started)
        if key in self._dirty:
            (self._ready_low if key in self._low else self._ready).append(key)
            self._wake_getter()
        self._check_drained()

    def add_after(self, key: K, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending due time wins."""
        if self._shutting_down:
            return
        self._metrics.retry()
        if delay <= 0:
            self.add(key)
            return
        due = self._clock.monotonic() + delay
        pending = self._due.get(key)
        if pending is not None and pending <= due:
            return
        self._due[key] = due
        heapq.heappush(self._delayed, (due, next(self._sequence), key))
        if self._timer is None or self._timer.done():
            self._start_timer()
        elif due < self._timer_sleeping_until:
            self._timer.cancel()
            self._start_timer()

    def add_rate_limited(self, key: K) -> None:
        """Add ``key`` after its backoff, which doubles with each call until forgotten."""
        if self._shutting_down:
            return
        self.add_after(key, self._backoff.when(key))

    def forget(self, key: K) -> None:
        """Reset the backoff of ``key``, typically after it was processed successfully."""
        self._backoff.forget(key)

    def num_requeues(self, key: K) -> int:
        return self._backoff.num_requeues(key)

    def unfinished_work_seconds(self) -> float:
        """Seconds of work in flight and not yet done, summed over the keys held."""
        now = self._clock.monotonic()
        return sum(now - started for started in self._in_flight.values())

    def longest_running_processor_seconds(self) -> float:
        """How long the key held longest has been in flight; 0 if none is."""
        if not self._in_flight:
            return 0.0
        return self._clock.monotonic() - min(self._in_flight.values())

    async def shutdown(self, drain_timeout: float) -> bool:
        """Stop accepting adds and wait for the accepted work to be done.

        Delayed adds are dropped. Keys already ready are still handed out, and keys
        re-added while in flight are handed out after their ``done``, so workers keep
        going until :meth:`get` raises :class:`ShutDown`. Returns True when nothing
        is left in flight or ready, False if ``drain_timeout`` seconds passed first.
        """
        if not self._shutting_down:
            self._shutting_down = True
            self._delayed.clear()
            self._due.clear()
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
                await asyncio.wait([timer])
            while self._getters:
                waiter = self._getters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
            self._check_drained()
        if self._drained.is_set():
            return True
        drained = asyncio.create_task(self._drained.wait(), name=f"{self.name}-drained")
        deadline = asyncio.create_task(
            self._clock.sleep_until(self._clock.monotonic() + drain_timeout),
            name=f"{self.name}-drain-deadline",
        )
        try:
            await asyncio.wait([drained, deadline], return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
            deadline.cancel()
        return self._drained.is_set()

    def _wake_getter(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _check_drained(self) -> None:
        if self._shutting_down and not self._in_flight and not self._ready and not self._ready_low:
            self._drained.set()

    def _start_timer(self) -> None:
        self._timer_sleeping_until = float("-inf")  # the new task reads the heap first
        self._timer = asyncio.get_running_loop().create_task(
            self._run_timer(), name=f"{self.name}-delayed-adds"
        )

    async def _run_timer(self) -> None:
        """Move delayed keys to the queue as they fall due; end when none is left."""
        while self._delayed:
            due, _, key = self._delayed[0]
            if due > self._clock.monotonic():
                self._timer_sleeping_until = due
                await self._clock.sleep_until(due)
                continue
            heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self.add(key)
        if self._timer is asyncio.current_task():
            self._timer = None
