"""Kubernetes Events about StaticRoutes (``kubectl describe`` shows them), sent at low priority.

Events are a courtesy to the user, never a reason to fail or slow a reconcile. Like
client-go's event broadcaster, :meth:`EventRecorder.record` only puts the Event into a
bounded buffer and returns; sender tasks (:meth:`EventRecorder.start`) create it later.
Two rules keep Events from competing with the writes that converge StaticRoutes:

- **Low priority.** While the reconcile work queue is busy (``busy()``: keys waiting or
  in flight), Events wait; once it is idle they are sent at once by :data:`SENDERS`
  concurrent senders. So that a queue that never goes idle cannot hold them back for
  ever, an Event that has waited :data:`BUSY_MAX_WAIT` seconds goes out anyway, as a
  small token bucket allows (:data:`BUSY_RATE` per second, burst :data:`BUSY_BURST`).
  During a burst of new StaticRoutes a user sees the ConfigMaps and statuses first,
  and ``kubectl describe`` shows the Events a few seconds later; otherwise they
  appear at once.
- **Correlation**, as client-go's ``EventCorrelator`` does: an Event identical to one
  still waiting (same object, type, reason and message) only raises its ``count``; one
  identical to an Event already sent is a patch of that Event's ``count`` and
  ``lastTimestamp`` instead of a new object; and a per-object token bucket (client-go's
  spam filter: burst 25, one more every 5 minutes) drops a flood of Events about one
  StaticRoute. The buffer holds at most :data:`MAX_BUFFER` Events; what does not fit,
  and what the spam filter drops, is counted in
  ``router_controller_events_dropped_total{reason}``.

On a graceful stop :meth:`drain` sends what is left (ignoring the priority rule) within
a timeout; on a lost lease :meth:`abandon` drops it, since no write may follow.

Written here rather than taken from a library: kubernetes-asyncio has no broadcaster,
and the whole of it is a buffer and token buckets (:mod:`router_controller.ratelimit`)
over two API calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog

from router_controller.clock import SYSTEM_CLOCK, Clock, format_time
from router_controller.kube import EVENTS, ApiError, NotFound, Object
from router_controller.metrics import Metrics
from router_controller.ratelimit import TokenBucket

COMPONENT = "router-controller"
MAX_BUFFER = 5000  # Events waiting to be sent; more are dropped (and counted)
SENDERS = 4  # concurrent Event creates while the work queue is idle
BUSY_MAX_WAIT = 60.0  # seconds an Event waits for an idle work queue, at most
BUSY_RATE = 2.0  # Events per second that have waited that long, while the queue is busy
BUSY_BURST = 5.0
IDLE_RECHECK = 0.25  # seconds between looks at whether a busy work queue went idle
SPAM_BURST = 25.0  # client-go's defaultSpamBurst
SPAM_RATE = 1 / 300  # client-go's defaultSpamQPS: one Event per object every 5 minutes
MAX_SERIES = 4096  # Events already sent that a repeat may still be folded into
MAX_MESSAGE = 1024  # client-go's maxEventMessageLength is 1 KiB too

log = structlog.get_logger("events")

# (namespace, involved object uid, type, reason, message)
SeriesKey = tuple[str, str, str, str, str]


class EventApi(Protocol):
    """The two calls the recorder makes (a :class:`~router_controller.kube.Kube`)."""

    async def create(self, path: str, body: Object) -> Object: ...

    async def merge_patch(self, path: str, body: Object) -> Object: ...


@dataclass
class _Pending:
    involved: dict[str, Any]
    count: int
    first: str
    last: str
    queued_at: float  # on the recorder's monotonic clock


@dataclass
class _Sent:
    name: str
    count: int
    first: str


@dataclass
class _Buffer:
    pending: OrderedDict[SeriesKey, _Pending] = field(default_factory=OrderedDict)
    sent: OrderedDict[SeriesKey, _Sent] = field(default_factory=OrderedDict)
    spam: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)


class EventRecorder:
    """Buffers core/v1 Events for objects and sends them behind the reconcile writes."""

    def __init__(
        self,
        *,
        kube: EventApi,
        identity: str,
        metrics: Metrics,
        busy: Callable[[], bool] = lambda: False,
        clock: Clock = SYSTEM_CLOCK,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self._kube = kube
        self._identity = identity
        self._metrics = metrics
        self._busy = busy
        self._clock = clock
        self._max_buffer = max_buffer
        self._buffer = _Buffer()
        self._busy_bucket = TokenBucket(rate=BUSY_RATE, burst=BUSY_BURST, clock=clock)
        self._wake = asyncio.Event()  # something to send, or the queue may have gone idle
        self._empty = asyncio.Event()  # nothing waiting and nothing in flight
        self._empty.set()
        self._draining = False
        self._in_flight = 0
        self._senders: list[asyncio.Task[None]] = []
        # Read when scraped, not set on every record() and send (two per Event).
        metrics.events_pending.set_function(lambda: len(self._buffer.pending))
        self._second: datetime.datetime | None = None  # the wall-clock second of _stamp
        self._stamp = ""

    @property
    def pending(self) -> int:
        """Events waiting to be sent."""
        return len(self._buffer.pending)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being sent."""
        return self._empty.is_set()

    async def record(self, obj: Object, type_: str, reason: str, message: str) -> None:
        """Queue an Event about ``obj``; returns at once (the send happens later)."""
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default")
        uid = str(meta.get("uid") or meta["name"])
        message = message[:MAX_MESSAGE]
        key: SeriesKey = (namespace, uid, type_, reason, message)
        stamp = self._timestamp()
        buffer = self._buffer
        waiting = buffer.pending.get(key)
        if waiting is not None:  # the same Event is still waiting: fold this one in
            waiting.count += 1
            waiting.last = stamp
            return
        if not self._allow(namespace, uid):
            self._dropped("spam")
            log.debug("event dropped by the per-object spam filter", reason=reason)
            return
        if len(buffer.pending) >= self._max_buffer:
            self._dropped("buffer_full")
            log.warning("event buffer full, dropping an event", reason=reason)
            return
        involved = {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        buffer.pending[key] = _Pending(involved, 1, stamp, stamp, self._clock.monotonic())
        self._empty.clear()
        if len(buffer.pending) == 1:
            # Only an empty buffer has senders waiting for a record(): with Events
            # already waiting, each sender is sending or looks again within
            # IDLE_RECHECK. Waking all of them for every Event of a burst cost four
            # wake-ups per StaticRoute while the reconciles that converge it ran.
            self._wake.set()

    def _timestamp(self) -> str:
        """Now as an Event's timestamp (whole seconds), formatted once per second."""
        second = self._clock.now().replace(microsecond=0)
        if second != self._second:
            self._second, self._stamp = second, format_time(second)
        return self._stamp

    def _allow(self, namespace: str, uid: str) -> bool:
        spam = self._buffer.spam
        bucket = spam.get(uid)
        if bucket is None:
            bucket = spam[uid] = TokenBucket(rate=SPAM_RATE, burst=SPAM_BURST, clock=self._clock)
            if len(spam) > MAX_SERIES:
                spam.popitem(last=False)
        else:
            spam.move_to_end(uid)
        return bucket.take()

    def _dropped(self, reason: str) -> None:
        self._metrics.events_dropped.labels(reason).inc()

    # -- sending -------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the senders until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._senders = [
                group.create_task(self._sender(), name=f"event sender {n}") for n in range(SENDERS)
            ]

    async def _sender(self) -> None:
        while True:
            delay = self._next_delay()
            if delay is not None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay if delay > 0 else None):
                        await self._wake.wait()
                continue
            await self._send_next()

    async def _send_next(self) -> None:
        key, item = self._buffer.pending.popitem(last=False)
        self._in_flight += 1
        try:
            await self._send(key, item)
        finally:
            self._in_flight -= 1
            if not self._buffer.pending and not self._in_flight:
                self._empty.set()

    def _next_delay(self) -> float | None:
        """None: send one now; 0: wait for a record(); > 0: wait that long, then look again."""
        pending = self._buffer.pending
        if not pending:
            return 0.0
        if self._draining or not self._busy():
            return None
        waited = self._clock.monotonic() - next(iter(pending.values())).queued_at
        if waited < BUSY_MAX_WAIT:
            return min(IDLE_RECHECK, BUSY_MAX_WAIT - waited)
        if self._busy_bucket.take():
            return None
        return min(IDLE_RECHECK, max(self._busy_bucket.wait_time(), 0.01))

    async def _send(self, key: SeriesKey, item: _Pending) -> None:
        namespace, _, type_, reason, message = key
        sent = self._buffer.sent.get(key)
        try:
            if sent is not None:
                try:
                    count = sent.count + item.count
                    await self._kube.merge_patch(
                        EVENTS.path(namespace, sent.name),
                        {"count": count, "lastTimestamp": item.last},
                    )
                    sent.count = count
                    self._buffer.sent.move_to_end(key)
                    return
                except NotFound:  # expired (Events live an hour): start a new one
                    del self._buffer.sent[key]
            name = f"{item.involved['name']}.{secrets.token_hex(8)}"
            await self._kube.create(
                EVENTS.path(namespace),
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": item.involved,
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "source": {"component": COMPONENT},
                    "reportingComponent": COMPONENT,
                    "reportingInstance": self._identity,
                    "firstTimestamp": item.first,
                    "lastTimestamp": item.last,
                    "count": item.count,
                },
            )
            self._buffer.sent[key] = _Sent(name, item.count, item.first)
            if len(self._buffer.sent) > MAX_SERIES:
                self._buffer.sent.popitem(last=False)
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            self._dropped("send_failed")
            log.warning("could not record event", reason=reason, error=str(err))

    async def drain(self, timeout: float) -> None:
        """Send what is waiting, busy or not (graceful stop); drop what is left at ``timeout``."""
        self._draining = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if not any(not task.done() for task in self._senders):  # none running
                    while self._buffer.pending:
                        await self._send_next()
                await self._empty.wait()
        self.abandon()

    def abandon(self) -> None:
        """Drop every Event not sent yet and stop the senders (the lease is lost: no writes)."""
        left = len(self._buffer.pending)
        if left:
            self._metrics.events_dropped.labels("shutdown").inc(left)
            self._buffer.pending.clear()
        self._empty.set()
        for task in self._senders:
            task.cancel()
