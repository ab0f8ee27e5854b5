"""Router probing: every replica's ``/health``, thresholds, and the config-sync check.

The original controller probed from inside the reconcile, blocking a worker for up
to 30 s per unhealthy router. Here probing is a scheduler of its own: reconcile
workers only *tell* it which endpoints a StaticRoute has (:meth:`Prober.sync`, which
reads caches and returns at once) and read back what it knows. Probes run on one
shared ``aiohttp.ClientSession`` with bounded concurrency, each endpoint every
``periodSeconds`` with ``timeoutSeconds``; ``successThreshold`` / ``failureThreshold``
consecutive results flip an endpoint's state, and only a changed state enqueues the
StaticRoute, so steady probing causes no status writes.

An endpoint is *config-synced* when the ``dynamic_config`` in its ``/health`` answer
holds, for every key our file sets, the same value. Right after a change that is
normally false for a while (kubelet volume sync, then the router's 10 s re-read), so
it is reported as pending, not as an error. The last answer is kept and compared
with the *current* file whenever a report is made, so a changed spec never reports
a router as synced on the strength of an answer to the previous config.

The pure parts (reading an answer, the threshold state machine, building the
report) live in :mod:`router_controller.routerstate`.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp

from router_controller.api import HealthCheck, LabelSelector, StaticRouteSpec
from router_controller.kube import Object
from router_controller.metrics import Metrics
from router_controller.reconciler import RouterReport
from router_controller.routerstate import (
    EndpointState,
    ProbeResult,
    build_report,
    read_health,
    selector_matches,
)

Key = tuple[str, str]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_PORT = 8000


class ObjectCache(Protocol):
    """The reads the prober needs from an informer's cache."""

    def get(self, namespace: str, name: str) -> Object | None: ...

    def items(self, namespace: str | None = None) -> Iterator[Object]: ...

    def by_index(self, index: str, value: str) -> list[Object]: ...


SERVICE_INDEX = "service"  # EndpointSlices by "namespace/service name"


def slice_service(eps: Object) -> list[str]:
    """Indexer: the Service an EndpointSlice belongs to."""
    meta = eps.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace', '')}/{name}"] if name else []


# -- the prober ----------------------------------------------------------------------


@dataclass(eq=False)
class _Endpoint:
    """One probed endpoint of one StaticRoute, as the scheduler tracks it."""

    route: Key
    check: HealthCheck
    state: EndpointState
    changed_at: str | None = None
    due: float = 0.0  # when the next probe is due; older heap entries are stale
    task: asyncio.Task[None] | None = None  # the probe in flight, if any


@dataclass
class _Route:
    ref: Key | None = None
    selector: tuple[str, LabelSelector] | None = None
    services: set[Key] = field(default_factory=set)
    expected: dict[str, Any] | None = None
    problem: tuple[str, str] | None = None  # (reason, message) when no endpoint can be probed


class Prober:
    """Schedules probes of every router endpoint; serves their state to the reconciler."""

    def __init__(
        self,
        *,
        services: ObjectCache,
        endpointslices: ObjectCache,
        metrics: Metrics,
        enqueue: Callable[[Key], None],
        concurrency: int,
        allow_cross_namespace: bool,
        session: aiohttp.ClientSession | None = None,
        now: Callable[[], str] | None = None,
    ) -> None:
        self._services = services
        self._slices = endpointslices
        self._metrics = metrics
        self._enqueue = enqueue
        self._allow_cross_namespace = allow_cross_namespace
        self._limit = asyncio.Semaphore(concurrency)
        self._session = session
        self._own_session = session is None
        self._now = now or (lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._routes: dict[Key, _Route] = {}
        # Reverse indexes, so a Service or EndpointSlice event finds its StaticRoutes
        # without scanning them all: by Service, and (for selectors) by namespace.
        self._by_service: dict[Key, set[Key]] = {}
        self._selecting: dict[str, set[Key]] = {}
        # StaticRoute -> address -> endpoint
        self._endpoints: dict[Key, dict[str, _Endpoint]] = {}
        # (due, sequence, endpoint); an entry whose endpoint was dropped is skipped
        self._heap: list[tuple[float, int, _Endpoint]] = []
        self._sequence = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the reconciler and the informers call ------------------------------------

    def routes_for(self, obj: Object, *, endpointslice: bool) -> list[Key]:
        """StaticRoutes whose routers include this Service (or this EndpointSlice's)."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "")
        if endpointslice:
            name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
            labels = self._service_labels(namespace, name)
        else:
            name = meta.get("name", "")
            labels = meta.get("labels") or {}
        service = (namespace, name)
        keys = set(self._by_service.get(service, ()))
        for key in self._selecting.get(namespace, ()):
            route = self._routes[key]
            if route.selector is not None and selector_matches(route.selector[1], labels):
                keys.add(key)
        return sorted(keys)

    def _index(self, key: Key, route: _Route | None) -> None:
        """File ``key`` under the Services and namespace ``route`` looks at (None: unfile)."""
        old = self._routes.pop(key, None)
        if old is not None:
            for service in {old.ref, *old.services} - {None}:
                _discard(self._by_service, service, key)
            if old.selector is not None:
                _discard(self._selecting, old.selector[0], key)
        if route is None:
            return
        self._routes[key] = route
        for service in {route.ref, *route.services} - {None}:
            self._by_service.setdefault(service, set()).add(key)  # type: ignore[arg-type]
        if route.selector is not None:
            self._selecting.setdefault(route.selector[0], set()).add(key)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._index(key, None)
        for endpoint in self._endpoints.pop(key, {}).values():
            self._drop(endpoint)
        self._metrics.forget_staticroute(namespace, name)

    def sync(
        self, route: Object, spec: StaticRouteSpec, expected: dict[str, Any] | None
    ) -> RouterReport | None:
        """Point the probes at this StaticRoute's routers; report what they know so far."""
        meta = route["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        if spec.router_ref is None and spec.router_selector is None:
            self.forget(*key)
            return None
        state = _Route(expected=expected)
        addresses: list[str] = []
        if spec.router_ref is not None:
            ref_ns = spec.router_ref.namespace or key[0]
            state.ref = (ref_ns, spec.router_ref.name or "")
            kind = spec.router_ref.kind or "Service"
            if kind != "Service":
                state.problem = (
                    "InvalidRouterRef",
                    f"spec.routerRef.kind is {kind}; it must be Service",
                )
            elif ref_ns != key[0] and not self._allow_cross_namespace:
                state.problem = (
                    "CrossNamespaceRouterRef",
                    f"spec.routerRef points to namespace {ref_ns}; a router can only mount a "
                    f"ConfigMap from its own namespace ({key[0]}). Remove "
                    "spec.routerRef.namespace, or start the operator with "
                    "--allow-cross-namespace-router-ref",
                )
            else:
                found = self._addresses(state.ref)
                if found is None:
                    state.problem = (
                        "RouterNotFound",
                        f"Service {ref_ns}/{state.ref[1]} (spec.routerRef) not found",
                    )
                else:
                    state.services.add(state.ref)
                    addresses.extend(found)
        if spec.router_selector is not None:
            # Registered even when routerRef has a problem, so that a matching Service
            # created later still brings this StaticRoute back.
            state.selector = (key[0], spec.router_selector)
            matched = [
                svc
                for svc in self._services.items(key[0])
                if selector_matches(spec.router_selector, svc["metadata"].get("labels") or {})
            ]
            for svc in matched:
                service = (key[0], svc["metadata"]["name"])
                state.services.add(service)
                addresses.extend(self._addresses(service) or [])
            if not matched and spec.router_ref is None:
                state.problem = (
                    "RouterNotFound",
                    f"no Service in namespace {key[0]} matches spec.routerSelector",
                )
        if state.problem is None and not addresses:
            state.problem = ("NoEndpoints", "the router Service has no ready endpoints")
        self._index(key, state)
        self._set_endpoints(
            key,
            sorted(set(addresses)) if state.problem is None else [],
            spec.health_check or HealthCheck(),
            _resumable(route),
        )
        return self._report(key, meta.get("generation"))

    # -- endpoint resolution -----------------------------------------------------------

    def _service_labels(self, namespace: str, name: str) -> dict[str, str]:
        svc = self._services.get(namespace, name)
        return dict((svc or {}).get("metadata", {}).get("labels") or {})

    def _addresses(self, service: Key) -> list[str] | None:
        """``scheme://host:port`` of each ready endpoint; None when the Service is missing."""
        svc = self._services.get(*service)
        if svc is None:
            return None
        ports = (svc.get("spec") or {}).get("ports") or []
        named = next((p for p in ports if p.get("name") in ("http", "https")), None)
        port_name = named.get("name") if named else None
        scheme = "https" if port_name == "https" else "http"
        found: list[str] = []
        saw_slice = False
        # A Service may have several EndpointSlices, each with its own port list.
        for eps in self._slices.by_index(SERVICE_INDEX, f"{service[0]}/{service[1]}"):
            saw_slice = True
            port = DEFAULT_PORT
            for p in eps.get("ports") or []:
                if port_name is not None and p.get("name") == port_name and p.get("port"):
                    port = int(p["port"])
            for endpoint in eps.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                for ip in endpoint.get("addresses") or []:
                    host = f"[{ip}]" if ":" in ip else ip
                    found.append(f"{scheme}://{host}:{port}")
        if saw_slice:
            return found
        port = int(named["port"]) if named and named.get("port") else DEFAULT_PORT
        cluster_ip = (svc.get("spec") or {}).get("clusterIP")
        host = (
            cluster_ip if cluster_ip and cluster_ip != "None" else f"{service[1]}.{service[0]}.svc"
        )
        return [f"{scheme}://{host}:{port}"]

    def _set_endpoints(
        self,
        key: Key,
        addresses: list[str],
        check: HealthCheck,
        previous: dict[str, dict[str, Any]],
    ) -> None:
        current = self._endpoints.setdefault(key, {})
        for address in [a for a in current if a not in addresses]:
            self._drop(current.pop(address))
        for address in addresses:
            endpoint = current.get(address)
            if endpoint is None:
                entry = previous.get(address)
                state = (
                    EndpointState.resume(address, entry)
                    if entry is not None
                    else EndpointState(address)
                )
                endpoint = _Endpoint(
                    route=key,
                    check=check,
                    state=state,
                    changed_at=entry.get("lastProbeTime") if entry else None,
                )
                current[address] = endpoint
                self._schedule(endpoint, 0.0)
            elif endpoint.check != check:
                endpoint.check = check
                if endpoint.task is None:  # a new period applies now, not after the old one
                    self._schedule(endpoint, 0.0)
        if not current:
            del self._endpoints[key]

    def _drop(self, endpoint: _Endpoint) -> None:
        """Stop probing an endpoint; a probe in flight is abandoned, freeing its slot."""
        if endpoint.task is not None:
            endpoint.task.cancel()
            endpoint.task = None

    def _tracked(self, endpoint: _Endpoint) -> bool:
        return self._endpoints.get(endpoint.route, {}).get(endpoint.state.address) is endpoint

    # -- the report --------------------------------------------------------------------

    def _report(self, key: Key, generation: int | None) -> RouterReport:
        route = self._routes[key]
        endpoints = self._endpoints.get(key, {})
        views = [
            replace(
                endpoints[a].state.view(route.expected), last_probe_time=endpoints[a].changed_at
            )
            for a in sorted(endpoints)
        ]
        self._metrics.routers_unhealthy.labels(*key).set(
            sum(1 for v in views if v.healthy is False)
        )
        return build_report(
            views,
            problem=route.problem,
            has_config=route.expected is not None,
            generation=generation,
        )

    # -- the scheduler -----------------------------------------------------------------

    def _schedule(self, endpoint: _Endpoint, delay: float) -> None:
        self._sequence += 1
        endpoint.due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._heap, (endpoint.due, self._sequence, endpoint))
        self._wake.set()

    async def start(self) -> None:
        """Run probes as they fall due, until cancelled."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=False, force_close=True),
            )
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                now = loop.time()
                while self._heap and self._heap[0][0] <= now:
                    due, _, endpoint = heapq.heappop(self._heap)
                    if (
                        not self._tracked(endpoint)
                        or endpoint.due != due
                        or endpoint.task is not None
                    ):
                        continue
                    task = asyncio.create_task(
                        self._probe(endpoint), name=f"probe {endpoint.state.address}"
                    )
                    endpoint.task = task
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                timeout = self._heap[0][0] - now if self._heap else None
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _probe(self, endpoint: _Endpoint) -> None:
        loop = asyncio.get_running_loop()
        check = endpoint.check
        started = loop.time()
        async with self._limit:
            result = await self._get_health(endpoint.state.address, check.timeout_seconds)
        endpoint.task = None
        if not self._tracked(endpoint):
            return  # removed while probing
        key = endpoint.route
        self._metrics.probe_duration.labels(*key).observe(loop.time() - started)
        route = self._routes.get(key)
        expected = route.expected if route is not None else None
        before = endpoint.state.view(expected)
        endpoint.state.observe(result, check)
        after = endpoint.state.view(expected)
        outcome = (
            "unhealthy" if not result.ok else ("stale" if after.synced is False else "healthy")
        )
        self._metrics.probe_total.labels(*key, outcome).inc()
        if after != before:
            endpoint.changed_at = self._now()
            self._enqueue(key)
        self._schedule(endpoint, max(0.0, started + endpoint.check.period_seconds - loop.time()))

    async def _get_health(self, address: str, timeout: float) -> ProbeResult:
        if self._session is None:
            raise RuntimeError("Prober.start() has not run")
        try:
            async with self._session.get(
                f"{address}/health",
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return read_health(resp.status, resp.reason or "", body)
        except TimeoutError:
            return ProbeResult(False, f"GET /health timed out after {timeout:g}s")
        except aiohttp.ClientConnectorError as err:
            return ProbeResult(False, f"cannot connect: {_describe(err.os_error)}")
        except Exception as err:  # whatever went wrong is this probe's failure, not the prober's
            return ProbeResult(False, f"GET /health failed: {type(err).__name__}: {err}")


def _describe(err: OSError) -> str:
    """The reason a connection failed, e.g. "Connection refused" (not asyncio's wording)."""
    if isinstance(err.errno, int) and err.errno > 0:
        return os.strerror(err.errno)
    return err.strerror or str(err) or type(err).__name__


def _discard(table: dict[Any, set[Key]], value: Any, key: Key) -> None:
    bucket = table.get(value)
    if bucket is not None:
        bucket.discard(key)
        if not bucket:
            del table[value]


def _resumable(route: Object) -> dict[str, dict[str, Any]]:
    """``status.routers`` by address, when the status describes the current spec."""
    status = route.get("status") or {}
    if status.get("observedGeneration") != route["metadata"].get("generation"):
        return {}
    return {
        entry["address"]: entry
        for entry in status.get("routers") or []
        if isinstance(entry, dict) and entry.get("address")
    }
