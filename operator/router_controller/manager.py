"""Builds every part of the operator and runs them, in order, until told to stop.

Order of start: HTTP endpoints (so probes answer at once), then leader election;
once elected, the informers, the workers and the probe scheduler. Order of a
graceful stop (SIGTERM): stop watches and probes, let in-flight reconciles finish
within ``--shutdown-timeout``, release the lease, close the HTTP endpoints and the
API session. A lost lease skips all of that: every task is cancelled at once so no
further write can happen, and the process exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from router_controller.api import KIND, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from router_controller.controller import Controller, PrometheusQueueMetrics
from router_controller.events import EventRecorder
from router_controller.health import SERVICE_INDEX, Prober, slice_service
from router_controller.informer import (
    ENDPOINTSLICE_PAGE_SIZE,
    Informer,
    WatchTuning,
    compact,
    trim_endpointslice,
    trim_service,
)
from router_controller.kube import CONFIGMAPS, ENDPOINTSLICES, SERVICES, Kube, Object, RetryPolicy
from router_controller.leader import LeaderElector
from router_controller.metrics import Metrics
from router_controller.reconciler import (
    CONFIGMAP_INDEX,
    OWNER_INDEX,
    STATICROUTES,
    StaticRouteReconciler,
    controller_of,
    owner_uids,
    wanted_configmap,
)
from router_controller.server import Checks, Servers
from router_controller.settings import Settings
from router_controller.workqueue import WorkQueue

CONTROLLER = "staticroute"
# How long Events still buffered at a graceful stop may take to be sent.
EVENT_DRAIN_TIMEOUT = 5.0
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

log = structlog.get_logger("manager")

Key = tuple[str, str]


def identity() -> str:
    """Hostname plus a random suffix, as controller-runtime names lease holders."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def lease_namespace(settings: Settings) -> str:
    if settings.leader_election.lease_namespace:
        return settings.leader_election.lease_namespace
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        return _SA_NAMESPACE.read_text().strip()
    return "default"


@dataclass
class Manager:
    """One operator process: its endpoints, election, caches, workers and probes."""

    settings: Settings
    kube: Kube
    metrics: Metrics
    tuning: WatchTuning = field(default_factory=WatchTuning)
    identity: str = field(default_factory=identity)

    def __post_init__(self) -> None:
        namespaces = list(self.settings.namespaces) or None
        self.queue: WorkQueue[Key] = WorkQueue(
            name=CONTROLLER, metrics=PrometheusQueueMetrics(self.metrics, CONTROLLER)
        )
        self.routes = Informer(
            kube=self.kube,
            resource=STATICROUTES,
            namespaces=namespaces,
            handler=self._on_route,
            tuning=self.tuning,
            indexers={CONFIGMAP_INDEX: wanted_configmap},
            transform=compact,
        )
        self.configmaps = Informer(
            kube=self.kube,
            resource=CONFIGMAPS,
            namespaces=namespaces,
            handler=self._on_configmap,
            tuning=self.tuning,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}",
            indexers={OWNER_INDEX: owner_uids},
            transform=compact,
        )
        self.services = Informer(
            kube=self.kube,
            resource=SERVICES,
            namespaces=namespaces,
            handler=self._on_service,
            tuning=self.tuning,
            transform=trim_service,
        )
        self.endpointslices = Informer(
            kube=self.kube,
            resource=ENDPOINTSLICES,
            namespaces=namespaces,
            handler=self._on_endpointslice,
            tuning=self.tuning,
            indexers={SERVICE_INDEX: slice_service},
            transform=trim_endpointslice,
            page_size=ENDPOINTSLICE_PAGE_SIZE,
        )
        self.recorder = EventRecorder(
            kube=self.kube,
            identity=self.identity,
            metrics=self.metrics,
            busy=self._busy,
        )
        self.prober = Prober(
            services=self.services,
            endpointslices=self.endpointslices,
            metrics=self.metrics,
            enqueue=self._recheck,
            concurrency=self.settings.probe_concurrency,
            allow_cross_namespace=self.settings.allow_cross_namespace_router_ref,
            config_not_applied_after=self.settings.config_not_applied_after,
        )
        self.reconciler = StaticRouteReconciler(
            kube=self.kube,
            routes=self.routes,
            configmaps=self.configmaps,
            recorder=self.recorder,
            health=self.prober,
            metrics=self.metrics,
        )
        self.controller = Controller(
            name=CONTROLLER,
            queue=self.queue,
            reconcile=self.reconciler.reconcile,
            workers=self.settings.max_concurrent_reconciles,
            metrics=self.metrics,
        )
        self.elector: LeaderElector | None = None
        if self.settings.leader_election.enabled:
            # A client of its own: the renewal never waits for a connection behind
            # other traffic, nor for the global retry budget; throttled, it retries
            # within its retry period rather than after the server's longer Retry-After.
            election = self.settings.leader_election
            lease_kube = self.kube.client(
                "leader-election",
                connections=2,
                capped=False,
                retry=RetryPolicy(max_wait=election.retry_period),
            )
            self.elector = LeaderElector(
                kube=lease_kube,
                settings=self.settings.leader_election,
                namespace=lease_namespace(self.settings),
                identity=self.identity,
                metrics=self.metrics,
            )
        self.running = asyncio.Event()
        self.servers = Servers(
            settings=self.settings.serving,
            metrics=self.metrics,
            checks=Checks(
                health={"ping": lambda: True, "credentials": self.kube.auth.alive},
                ready={"informers": self._ready, "credentials": self.kube.auth.ready},
            ),
            # Reviews of scrapers' tokens: a pool of their own, so scrapes never wait
            # behind reconcile traffic, nor it behind them.
            kube=self.kube.client("metrics-auth", connections=4),
        )

    # -- event mapping -----------------------------------------------------------------

    def _recheck(self, key: Key) -> None:
        """A probe changed a router's state: reconcile, behind anything a user changed."""
        self.queue.add(key, low=True)

    def _on_route(self, kind: str, obj: Object, old: Object | None) -> None:
        meta = obj["metadata"]
        if kind == "MODIFIED" and old is not None and _only_status_changed(old, obj):
            return  # our own status write coming back: nothing to reconcile
        self.queue.add((meta["namespace"], meta["name"]))

    def _on_configmap(self, kind: str, obj: Object, _old: Object | None) -> None:
        meta = obj["metadata"]
        owner = controller_of(obj)
        if owner is not None and owner.get("kind") == KIND:
            self.queue.add((meta["namespace"], owner["name"]))
        if kind == "DELETED":  # a StaticRoute refused this name may take it now
            wanted = f"{meta['namespace']}/{meta['name']}"
            for route in self.routes.by_index(CONFIGMAP_INDEX, wanted):
                self.queue.add((meta["namespace"], route["metadata"]["name"]))

    def _on_service(self, _kind: str, obj: Object, old: Object | None) -> None:
        keys = set(self.prober.routes_for(obj, endpointslice=False))
        if old is not None:  # labels may have changed: routes selecting the old labels too
            keys.update(self.prober.routes_for(old, endpointslice=False))
        for key in keys:
            self.queue.add(key)

    def _on_endpointslice(self, _kind: str, obj: Object, _old: Object | None) -> None:
        for key in self.prober.routes_for(obj, endpointslice=True):
            self.queue.add(key)

    def _busy(self) -> bool:
        """Reconcile work is waiting or in flight: Events wait behind it."""
        return self.queue.depth > 0 or self.queue.longest_running_processor_seconds() > 0

    def _ready(self) -> bool:
        if self.elector is not None and not self.elector.elected.is_set():
            return self.running.is_set()  # a standby is ready when it is running
        return all(
            i.synced.is_set()
            for i in (self.routes, self.configmaps, self.services, self.endpointslices)
        )

    # -- running -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set (exit 0) or the lease is lost (exit 1)."""
        log.info(
            "starting",
            identity=self.identity,
            leader_election=self.elector.lease if self.elector else False,
        )
        await self.servers.start()
        self.running.set()
        try:
            return await self._run(stop)
        finally:
            await self.servers.stop()
            await self.prober.close()

    async def _run(self, stop: asyncio.Event) -> int:
        async with asyncio.TaskGroup() as group:
            stopping = group.create_task(stop.wait(), name="wait for stop")
            election: asyncio.Task[None] | None = None
            lost: asyncio.Task[bool]
            if self.elector is not None:
                election = group.create_task(self.elector.run(), name="leader election")
                lost = group.create_task(self.elector.lost.wait(), name="wait for lost lease")
                elected = group.create_task(self.elector.elected.wait(), name="wait for election")
                await asyncio.wait({stopping, elected}, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():  # stopped while standing by: nothing was written
                    elected.cancel()
                    lost.cancel()
                    await self._release(self.elector, election)
                    return 0
            else:
                lost = group.create_task(asyncio.Event().wait(), name="no lease to lose")
            informers = (self.routes, self.configmaps, self.services, self.endpointslices)
            watches = [
                group.create_task(informer.start(), name=f"informer {informer.resource.plural}")
                for informer in informers
            ]
            # Like controller-runtime, reconcile only once every cache has listed: a
            # reconcile from a half-filled cache would take a missing ConfigMap or
            # Service for a deleted one, and write a status that is wrong for a moment.
            synced = group.create_task(
                _all_set([i.synced for i in informers]), name="wait for caches"
            )
            await asyncio.wait({stopping, lost, synced}, return_when=asyncio.FIRST_COMPLETED)
            if not synced.done():
                synced.cancel()
                if lost.done():
                    return self._abandon(stopping, *watches)
                for task in watches:
                    task.cancel()
                lost.cancel()
                if self.elector is not None and election is not None:
                    await self._release(self.elector, election)
                return 0
            log.info(
                "starting workers",
                namespaces=list(self.settings.namespaces) or "all",
                workers=self.settings.max_concurrent_reconciles,
                staticroutes=len(self.routes),
            )
            workers = group.create_task(self.controller.start(), name="workers")
            probes = group.create_task(self.prober.start(), name="probes")
            # Not cancelled with the watches on a graceful stop: drain() sends what is left.
            group.create_task(self.recorder.start(), name="events")
            await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
            if lost.done():
                return self._abandon(stopping, *watches, workers, probes)
            log.info(
                "shutting down", timeout=self.settings.shutdown_timeout, queued=self.queue.depth
            )
            for task in (*watches, probes):
                task.cancel()
            # The leader keeps renewing while in-flight reconciles finish; should it
            # lose the lease meanwhile, they are cut short, as on any lost lease.
            drain = group.create_task(
                self.queue.shutdown(self.settings.shutdown_timeout), name="drain the queue"
            )
            await asyncio.wait({drain, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                return self._abandon(drain, workers)
            if not drain.result():
                log.warning("in-flight reconciles did not finish in time; cancelling them")
            workers.cancel()
            await asyncio.wait([workers])
            await self.recorder.drain(timeout=EVENT_DRAIN_TIMEOUT)
            lost.cancel()
            if self.elector is not None and election is not None:
                await self._release(self.elector, election)
        return 0

    def _abandon(self, *tasks: asyncio.Task[Any]) -> int:
        """The lease is lost: cancel every task that could write, at once; exit code 1."""
        log.error("leader lease lost: stopping all writes and exiting")
        for task in tasks:
            task.cancel()
        self.recorder.abandon()
        return 1

    @staticmethod
    async def _release(elector: LeaderElector, election: asyncio.Task[None]) -> None:
        """Stop campaigning, then hand the lease over (also if won a moment ago)."""
        election.cancel()
        await asyncio.wait([election])
        await asyncio.shield(elector.release())


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


def _only_status_changed(old: Object, new: Object) -> bool:
    """Same spec (generation), labels, annotations and deletion state: a status update.

    controller-runtime's GenerationChangedPredicate, plus metadata a user may edit.
    """
    before, after = old["metadata"], new["metadata"]
    return all(
        before.get(field) == after.get(field)
        for field in ("generation", "labels", "annotations", "deletionTimestamp", "finalizers")
    )


async def _all_set(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()
