"""Runs one operator's parts in phases, until told to stop or the lease is lost.

Each phase is an async context manager with one way in and one way out; they are
entered in this order and left in the reverse one, as controller-runtime's manager
starts and stops its runnable groups:

=========  ==========================================  ================================
phase      in                                          out (graceful stop, SIGTERM)
=========  ==========================================  ================================
serving    HTTP endpoints (probes answer at once)      close them and the probe session
leading    campaign for the Lease; on when elected     hand the Lease over
caches     every informer lists and watches; on once   stop the watches
           all have listed (a reconcile from a half
           filled cache would take a missing object
           for a deleted one)
working    workers, probes, Events                     stop probes; in-flight reconciles
                                                       finish within --shutdown-timeout;
                                                       buffered Events are sent
=========  ==========================================  ================================

Caches outlive the workers on the way out, so a reconcile that is finishing still
reads a fresh cache; the queue takes no new keys once it drains. Stopped while
standing by or while caches fill, the operator exits 0 having written nothing.

A lost lease skips every graceful step: the task running the phases is cancelled at
once, each phase only cancels what it started (no drain, no Event, no release), so
no write can follow, and the process exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from router_controller.informer import WatchTuning
from router_controller.kube import Kube
from router_controller.metrics import Metrics
from router_controller.settings import Settings
from router_controller.wiring import Parts, build, identity

# How long Events still buffered at a graceful stop may take to be sent.
EVENT_DRAIN_TIMEOUT = 5.0

log = structlog.get_logger("manager")


@dataclass
class Manager:
    """One operator process: its endpoints, election, caches, workers and probes."""

    settings: Settings
    kube: Kube
    metrics: Metrics
    tuning: WatchTuning = field(default_factory=WatchTuning)
    identity: str = field(default_factory=identity)

    def __post_init__(self) -> None:
        self.parts: Parts = build(
            settings=self.settings,
            kube=self.kube,
            metrics=self.metrics,
            tuning=self.tuning,
            identity=self.identity,
        )

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set (exit 0) or the lease is lost (exit 1)."""
        elector = self.parts.elector
        log.info(
            "starting",
            identity=self.identity,
            leader_election=elector.lease if elector is not None else False,
        )
        async with self._serving(), self._leading(stop) as elected:
            if not elected:
                code = 0
            elif elector is None:
                code = await self._lead(stop)
            else:
                code = await _unless_lost(self._lead(stop), elector.lost, self._abandon)
        return code

    async def _lead(self, stop: asyncio.Event) -> int:
        parts = self.parts
        async with self._caches(stop) as synced:
            if not synced:
                return 0
            log.info(
                "starting workers",
                namespaces=list(self.settings.namespaces) or "all",
                workers=self.settings.max_concurrent_reconciles,
                staticroutes=len(parts.routes),
            )
            async with self._working():
                await stop.wait()
                log.info(
                    "shutting down",
                    timeout=self.settings.shutdown_timeout,
                    queued=parts.queue.depth,
                )
        return 0

    def _abandon(self) -> None:
        """The lease is lost: drop what could still be written (the caller cancels the rest)."""
        log.error("leader lease lost: stopping all writes and exiting")
        self.parts.recorder.abandon()

    # -- phases ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        await self.parts.servers.start()
        self.parts.running.set()
        try:
            yield
        finally:
            await self.parts.servers.stop()

    @contextlib.asynccontextmanager
    async def _leading(self, stop: asyncio.Event) -> AsyncIterator[bool]:
        """Yields True once elected (at once without election), False if stopped first."""
        elector = self.parts.elector
        if elector is None:
            yield True
            return
        async with asyncio.TaskGroup() as group:
            campaign = group.create_task(elector.run(), name="leader election")
            try:
                yield await _first_set(stop, elector.elected)
            finally:
                campaign.cancel()
                await asyncio.wait([campaign])
                if not elector.lost.is_set():  # a lost lease is not ours to release
                    # Also if won a moment ago, or still standing by (then a no-op).
                    await asyncio.shield(elector.release())

    @contextlib.asynccontextmanager
    async def _caches(self, stop: asyncio.Event) -> AsyncIterator[bool]:
        """Yields True once every cache has listed, False if stopped first."""
        informers = self.parts.caches.all
        async with asyncio.TaskGroup() as group:
            watches = [
                group.create_task(informer.start(), name=f"informer {informer.resource.plural}")
                for informer in informers
            ]
            try:
                synced = asyncio.Event()
                filling = group.create_task(_all_set([i.synced for i in informers], synced))
                try:
                    yield await _first_set(stop, synced)
                finally:
                    filling.cancel()
            finally:
                for task in watches:
                    task.cancel()

    @contextlib.asynccontextmanager
    async def _working(self) -> AsyncIterator[None]:
        parts = self.parts
        async with asyncio.TaskGroup() as group:
            workers = group.create_task(parts.controller.start(), name="workers")
            probes = group.create_task(parts.prober.start(), name="probes")
            events = group.create_task(parts.recorder.start(), name="events")
            try:
                yield
            except BaseException:  # a lost lease or a failure: no graceful step
                for task in (workers, probes, events):
                    task.cancel()
                raise
            probes.cancel()
            if not await parts.queue.shutdown(self.settings.shutdown_timeout):
                log.warning("in-flight reconciles did not finish in time; cancelling them")
            workers.cancel()
            await asyncio.wait([workers])
            await parts.recorder.drain(timeout=EVENT_DRAIN_TIMEOUT)  # ends the senders


def shutdown_budget(settings: Settings) -> float:
    """The longest a graceful stop takes after SIGTERM, in seconds.

    In-flight reconciles get ``--shutdown-timeout``, buffered Events
    :data:`EVENT_DRAIN_TIMEOUT`, and the Lease release at most the renew deadline, one
    after the other. The Deployment's ``terminationGracePeriodSeconds`` must exceed the
    sum, or the kubelet's SIGKILL lands before the Lease is released and a successor
    waits for it to expire (a unit test holds config/manager/manager.yaml to this).
    """
    election = settings.leader_election
    release = election.renew_deadline if election.enabled else 0.0
    return settings.shutdown_timeout + EVENT_DRAIN_TIMEOUT + release


async def _unless_lost(
    body: Coroutine[Any, Any, int], lost: asyncio.Event, abandon: Callable[[], None]
) -> int:
    """Run ``body``; should ``lost`` be set first, ``abandon`` and cancel it at once: 1."""
    task = asyncio.create_task(body, name="lead")
    losing = asyncio.create_task(lost.wait(), name="wait for lost lease")
    try:
        await asyncio.wait({task, losing}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        losing.cancel()
    if task.done():
        return task.result()
    abandon()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 1


async def _first_set(stop: asyncio.Event, wanted: asyncio.Event) -> bool:
    """Wait for ``wanted`` or ``stop``; True if ``wanted`` came first (or both are set)."""
    if wanted.is_set():
        return True
    waits = {
        asyncio.create_task(wanted.wait(), name="wait for the phase"),
        asyncio.create_task(stop.wait(), name="wait for stop"),
    }
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return wanted.is_set()


async def _all_set(events: list[asyncio.Event], then: asyncio.Event) -> None:
    for event in events:
        await event.wait()
    then.set()
