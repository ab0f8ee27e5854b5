"""The StaticRoute controller's watches: which changes reconcile which StaticRoute.

controller-runtime's builder says it as ``For(&StaticRoute{})`` with a predicate,
``Owns(&ConfigMap{})`` and ``Watches(...)`` with mapping functions; here the same
four sources, their caches' shapes, and the functions that turn a watch event into
keys on the work queue:

=================  ===============================================================
source             keys
=================  ===============================================================
StaticRoute        itself, unless only its status changed (our own status write)
ConfigMap (ours)   its controller; on delete also StaticRoutes waiting for its name
Service            StaticRoutes whose routerRef / routerSelector picks it (old and
                   new labels)
EndpointSlice      StaticRoutes whose routers are the slice's Service
probe result       the StaticRoute, at low priority (behind anything a user did)
=================  ===============================================================

Only ConfigMaps with the ``managed-by`` label are cached (a foreign ConfigMap of the
wanted name is found by a create that fails). Services and EndpointSlices are cached
trimmed to the fields the prober reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from router_controller.api import KIND, MANAGED_BY_LABEL, MANAGED_BY_VALUE, STATICROUTES
from router_controller.health import SERVICE_INDEX, slice_service
from router_controller.informer import (
    ENDPOINTSLICE_PAGE_SIZE,
    Informer,
    WatchTuning,
    compact,
    trim_endpointslice,
    trim_service,
)
from router_controller.kube import CONFIGMAPS, ENDPOINTSLICES, SERVICES, Kube, Object
from router_controller.reconcile import Key
from router_controller.reconciler import (
    CONFIGMAP_INDEX,
    OWNER_INDEX,
    controller_of,
    owner_uids,
    wanted_configmap,
)
from router_controller.workqueue import WorkQueue

NAME = "staticroute"  # the controller's name in metrics and logs


class RouterIndex(Protocol):
    """Which StaticRoutes a Service or EndpointSlice backs (the prober knows)."""

    def routes_for(self, obj: Object, *, endpointslice: bool) -> Iterable[Key]: ...


@dataclass(frozen=True, slots=True)
class Caches:
    """The informers the StaticRoute controller reads from."""

    routes: Informer
    configmaps: Informer
    services: Informer
    endpointslices: Informer

    @property
    def all(self) -> tuple[Informer, ...]:
        return (self.routes, self.configmaps, self.services, self.endpointslices)


def caches(*, kube: Kube, namespaces: list[str] | None, tuning: WatchTuning) -> Caches:
    """One informer per source, each shaped (selector, indexers, trimming) for its use."""
    return Caches(
        routes=Informer(
            kube=kube,
            resource=STATICROUTES,
            namespaces=namespaces,
            tuning=tuning,
            indexers={CONFIGMAP_INDEX: wanted_configmap},
            transform=compact,
        ),
        configmaps=Informer(
            kube=kube,
            resource=CONFIGMAPS,
            namespaces=namespaces,
            tuning=tuning,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}",
            indexers={OWNER_INDEX: owner_uids},
            transform=compact,
        ),
        services=Informer(
            kube=kube,
            resource=SERVICES,
            namespaces=namespaces,
            tuning=tuning,
            transform=trim_service,
        ),
        endpointslices=Informer(
            kube=kube,
            resource=ENDPOINTSLICES,
            namespaces=namespaces,
            tuning=tuning,
            indexers={SERVICE_INDEX: slice_service},
            transform=trim_endpointslice,
            page_size=ENDPOINTSLICE_PAGE_SIZE,
        ),
    )


class Watches:
    """Maps every watch event of :class:`Caches` to StaticRoute keys on ``queue``."""

    def __init__(self, *, caches: Caches, queue: WorkQueue[Key], routers: RouterIndex) -> None:
        self._routes = caches.routes
        self._queue = queue
        self._routers = routers
        caches.routes.add_handler(self._on_route)
        caches.configmaps.add_handler(self._on_configmap)
        caches.services.add_handler(self._on_service)
        caches.endpointslices.add_handler(self._on_endpointslice)

    def _on_route(self, kind: str, obj: Object, old: Object | None) -> None:
        meta = obj["metadata"]
        if kind == "MODIFIED" and old is not None and only_status_changed(old, obj):
            return  # our own status write coming back: nothing to reconcile
        self._queue.add((meta["namespace"], meta["name"]))

    def _on_configmap(self, kind: str, obj: Object, _old: Object | None) -> None:
        meta = obj["metadata"]
        owner = controller_of(obj)
        if owner is not None and owner.get("kind") == KIND:
            self._queue.add((meta["namespace"], owner["name"]))
        if kind == "DELETED":  # a StaticRoute refused this name may take it now
            wanted = f"{meta['namespace']}/{meta['name']}"
            for route in self._routes.by_index(CONFIGMAP_INDEX, wanted):
                self._queue.add((meta["namespace"], route["metadata"]["name"]))

    def _on_service(self, _kind: str, obj: Object, old: Object | None) -> None:
        keys = set(self._routers.routes_for(obj, endpointslice=False))
        if old is not None:  # labels may have changed: routes selecting the old labels too
            keys.update(self._routers.routes_for(old, endpointslice=False))
        for key in keys:
            self._queue.add(key)

    def _on_endpointslice(self, _kind: str, obj: Object, _old: Object | None) -> None:
        for key in self._routers.routes_for(obj, endpointslice=True):
            self._queue.add(key)


def recheck(queue: WorkQueue[Key]) -> Callable[[Key], None]:
    """Where probe results go: a router's state changed, so reconcile its StaticRoute,
    behind anything a user changed."""
    return functools.partial(queue.add, low=True)


def only_status_changed(old: Object, new: Object) -> bool:
    """Same spec (generation), labels, annotations and deletion state: a status update.

    controller-runtime's GenerationChangedPredicate, plus metadata a user may edit.
    """
    before, after = old["metadata"], new["metadata"]
    return all(
        before.get(field) == after.get(field)
        for field in ("generation", "labels", "annotations", "deletionTimestamp", "finalizers")
    )
