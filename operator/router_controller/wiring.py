"""Builds one operator's object graph from its settings; runs nothing.

Everything is constructed here, in dependency order, and handed over as
:class:`Parts`: :mod:`router_controller.manager` runs them, tests reach into them.
Keeping construction apart from the lifecycle means each part gets its
collaborators as keyword arguments and nothing builds what it uses.

The API clients: requests share the process's pool; the Lease gets a client of its
own (two connections, outside the retry budget and the in-flight limit, retrying
within its retry period), so a renewal never waits behind reconcile traffic; the
metrics endpoint's TokenReviews get one too, so scrapes and reconciles never wait
for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router_controller import staticroute
from router_controller.controller import Controller, PrometheusQueueMetrics
from router_controller.events import EventRecorder
from router_controller.health import Prober
from router_controller.informer import Informer, WatchTuning
from router_controller.kube import Kube, RetryPolicy
from router_controller.leader import LeaderElector
from router_controller.metrics import Metrics
from router_controller.reconcile import Key
from router_controller.reconciler import StaticRouteReconciler
from router_controller.server import Checks, Servers
from router_controller.settings import Settings
from router_controller.workqueue import WorkQueue

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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


@dataclass(frozen=True, slots=True)
class Parts:
    """Every long-lived part of one operator process."""

    settings: Settings
    caches: staticroute.Caches
    queue: WorkQueue[Key]
    watches: staticroute.Watches
    recorder: EventRecorder
    prober: Prober
    reconciler: StaticRouteReconciler
    controller: Controller
    elector: LeaderElector | None
    servers: Servers
    running: asyncio.Event  # set once the endpoints serve: a standby is then ready
    ready: Callable[[], bool]  # /readyz's informers check

    @property
    def routes(self) -> Informer:
        return self.caches.routes

    @property
    def configmaps(self) -> Informer:
        return self.caches.configmaps

    @property
    def services(self) -> Informer:
        return self.caches.services

    @property
    def endpointslices(self) -> Informer:
        return self.caches.endpointslices


def build(
    *, settings: Settings, kube: Kube, metrics: Metrics, tuning: WatchTuning, identity: str
) -> Parts:
    """The operator for ``settings``, wired and idle."""
    queue: WorkQueue[Key] = WorkQueue(
        name=staticroute.NAME, metrics=PrometheusQueueMetrics(metrics, staticroute.NAME)
    )
    caches = staticroute.caches(
        kube=kube, namespaces=list(settings.namespaces) or None, tuning=tuning
    )
    recorder = EventRecorder(kube=kube, identity=identity, metrics=metrics, busy=_busy(queue))
    prober = Prober(
        services=caches.services,
        endpointslices=caches.endpointslices,
        metrics=metrics,
        enqueue=staticroute.recheck(queue),
        concurrency=settings.probe_concurrency,
        allow_cross_namespace=settings.allow_cross_namespace_router_ref,
        config_not_applied_after=settings.config_not_applied_after,
    )
    watches = staticroute.Watches(caches=caches, queue=queue, routers=prober)
    reconciler = StaticRouteReconciler(
        kube=kube,
        routes=caches.routes,
        configmaps=caches.configmaps,
        recorder=recorder,
        health=prober,
        metrics=metrics,
    )
    controller = Controller(
        name=staticroute.NAME,
        queue=queue,
        reconciler=reconciler,
        workers=settings.max_concurrent_reconciles,
        metrics=metrics,
    )
    elector = None
    if settings.leader_election.enabled:
        election = settings.leader_election
        elector = LeaderElector(
            kube=kube.client(
                "leader-election",
                connections=2,
                capped=False,
                retry=RetryPolicy(max_wait=election.retry_period),
            ),
            settings=election,
            namespace=lease_namespace(settings),
            identity=identity,
            metrics=metrics,
        )
    running = asyncio.Event()
    ready = _ready(elector, running, caches)
    servers = Servers(
        settings=settings.serving,
        metrics=metrics,
        checks=Checks(
            health={"ping": lambda: True, "credentials": kube.auth.alive},
            ready={
                "informers": ready,
                "credentials": kube.auth.ready,
            },
        ),
        kube=kube.client("metrics-auth", connections=4),
    )
    return Parts(
        settings=settings,
        caches=caches,
        queue=queue,
        watches=watches,
        recorder=recorder,
        prober=prober,
        reconciler=reconciler,
        controller=controller,
        elector=elector,
        servers=servers,
        running=running,
        ready=ready,
    )


def _busy(queue: WorkQueue[Key]) -> Callable[[], bool]:
    """Reconcile work is waiting or in flight: Events wait behind it."""
    return lambda: queue.depth > 0 or queue.longest_running_processor_seconds() > 0


def _ready(
    elector: LeaderElector | None, running: asyncio.Event, caches: staticroute.Caches
) -> Callable[[], bool]:
    """``/readyz``: a standby once it serves; a leader once every cache has listed."""

    def ready() -> bool:
        if elector is not None and not elector.elected.is_set():
            return running.is_set()
        return all(i.synced.is_set() for i in caches.all)

    return ready
