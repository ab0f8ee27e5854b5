"""N worker coroutines: key -> reconcile -> outcome -> queue, metrics and logs.

The fixed outcome table of controller-runtime:

==================  ===========================================  ==================
reconcile returns   queue                                        reconcile_total
==================  ===========================================  ==================
Result()            forget (reset backoff)                       success
requeue=True        add_rate_limited                             requeue
requeue_after=s     forget, add_after(s)                         requeue_after
TerminalError       forget, no retry                             error (+terminal)
any other error     add_rate_limited (5 ms doubling, <= 1000 s)  error
==================  ===========================================  ==================

Every log line of a reconcile carries ``controller``, ``namespace``, ``name`` and
``reconcileID`` (bound with structlog's contextvars).
"""

from __future__ import annotations

import asyncio
import random
import time

import structlog

from router_controller.metrics import Metrics
from router_controller.reconcile import Key, Reconciler, TerminalError
from router_controller.workqueue import ShutDown, WorkQueue

log = structlog.get_logger("controller")


_UUID4_VERSION = 0x4 << 76 | 0x2 << 62  # the version (4) and variant (RFC 4122) bits
_UUID4_KEEP = ~(0xF << 76 | 0x3 << 62) & (1 << 128) - 1


def reconcile_id() -> str:
    """A random version 4 UUID, as controller-runtime gives each reconcile.

    It only correlates one reconcile's log lines, so it comes from :mod:`random`
    rather than the operating system's generator that :func:`uuid.uuid4` asks once
    per call (a system call for every reconcile).
    """
    bits = random.getrandbits(128) & _UUID4_KEEP | _UUID4_VERSION
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class PrometheusQueueMetrics:
    """client-go's workqueue_* metrics for one queue."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._adds = metrics.queue_adds.labels(name, name)
        self._depth = metrics.queue_depth.labels(name, name)
        self._latency = metrics.queue_latency.labels(name, name)
        self._work = metrics.work_duration.labels(name, name)
        self._retries = metrics.queue_retries.labels(name, name)

    def add(self) -> None:
        self._adds.inc()

    def depth(self, n: int) -> None:
        self._depth.set(n)

    def queue_latency(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def work_duration(self, seconds: float) -> None:
        self._work.observe(seconds)

    def retry(self) -> None:
        self._retries.inc()


class Controller:
    """Runs ``workers`` coroutines that reconcile keys from ``queue``."""

    def __init__(
        self,
        *,
        name: str,
        queue: WorkQueue[Key],
        reconciler: Reconciler,
        workers: int,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.queue = queue
        self._reconciler = reconciler
        self._workers = workers
        self._metrics = metrics
        metrics.init_controller(name, workers)
        metrics.unfinished_work.labels(name, name).set_function(queue.unfinished_work_seconds)
        metrics.longest_running.labels(name, name).set_function(
            queue.longest_running_processor_seconds
        )
        self._active = metrics.active_workers.labels(name)
        self._time = metrics.reconcile_time.labels(name)
        self._total = {
            result: metrics.reconcile_total.labels(name, result)
            for result in ("success", "error", "requeue", "requeue_after")
        }
        self._errors = metrics.reconcile_errors.labels(name)
        self._terminal = metrics.terminal_errors.labels(name)

    async def start(self) -> None:
        """Run the workers until the queue is shut down and drained."""
        async with asyncio.TaskGroup() as group:
            for i in range(self._workers):
                group.create_task(self._worker(), name=f"{self.name} worker {i}")

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            self._active.inc()
            try:
                await self._process(key)
            finally:
                self._active.dec()
                self.queue.done(key)

    async def _process(self, key: Key) -> None:
        namespace, name = key
        structlog.contextvars.bind_contextvars(
            controller=self.name, namespace=namespace, name=name, reconcileID=reconcile_id()
        )
        started = time.perf_counter()
        try:
            result = await self._reconciler.reconcile(key)
        except TerminalError as err:
            self.queue.forget(key)
            self._total["error"].inc()
            self._errors.inc()
            self._terminal.inc()
            log.error("reconcile failed, not retrying", error=str(err))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # every other failure is retried with backoff
            self.queue.add_rate_limited(key)
            self._total["error"].inc()
            self._errors.inc()
            log.warning(
                "reconcile failed, will retry",
                error=f"{type(err).__name__}: {err}",
                retries=self.queue.num_requeues(key),
            )
        else:
            if result.requeue:
                self.queue.add_rate_limited(key)
                self._total["requeue"].inc()
                return
            self.queue.forget(key)
            if result.requeue_after is not None:
                self.queue.add_after(key, result.requeue_after)
                self._total["requeue_after"].inc()
            else:
                self._total["success"].inc()
        finally:
            self._time.observe(time.perf_counter() - started)
            structlog.contextvars.clear_contextvars()
