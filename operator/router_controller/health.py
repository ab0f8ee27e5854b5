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
it is reported as pending, not as an error.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from router_controller import conditions as cond
from router_controller.api import HealthCheck, LabelSelector, StaticRouteSpec
from router_controller.informer import Informer
from router_controller.kube import Object
from router_controller.metrics import Metrics
from router_controller.reconciler import RouterReport
from router_controller.routerconfig import config_mismatches

Key = tuple[str, str]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_PORT = 8000


def selector_matches(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    for k, v in (selector.match_labels or {}).items():
        if labels.get(k) != v:
            return False
    for req in selector.match_expressions or []:
        has = req.key in labels
        values = req.values or []
        if req.operator == "In" and not (has and labels[req.key] in values):
            return False
        if req.operator == "NotIn" and has and labels[req.key] in values:
            return False
        if req.operator == "Exists" and not has:
            return False
        if req.operator == "DoesNotExist" and has:
            return False
    return True


@dataclass
class _Endpoint:
    """What is known of one router endpoint (one replica's address)."""

    route: Key
    address: str  # scheme://host:port
    check: HealthCheck
    healthy: bool | None = None
    synced: bool | None = None
    successes: int = 0
    failures: int = 0
    message: str = "not probed yet"
    changed_at: str | None = None
    generation: int = 0  # bumped when removed or re-added, to drop stale heap entries


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
        services: Informer,
        endpointslices: Informer,
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
        self._endpoints: dict[tuple[Key, str], _Endpoint] = {}
        self._heap: list[tuple[float, int, Key, str, int]] = []
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
        keys = []
        for key, route in self._routes.items():
            if (
                route.ref == service
                or service in route.services
                or (
                    route.selector is not None
                    and route.selector[0] == namespace
                    and selector_matches(route.selector[1], labels)
                )
            ):
                keys.append(key)
        return keys

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._routes.pop(key, None)
        for ep_key in [k for k in self._endpoints if k[0] == key]:
            self._endpoints.pop(ep_key).generation += 1
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
        if spec.router_selector is not None and state.problem is None:
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
                    "no Service in this namespace matches spec.routerSelector",
                )
        if state.problem is None and not addresses:
            state.problem = ("NoEndpoints", "the router Service has no ready endpoints")
        self._routes[key] = state
        self._set_endpoints(
            key,
            sorted(set(addresses)) if state.problem is None else [],
            spec.health_check or HealthCheck(),
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
        for eps in self._slices.items(service[0]):
            labels = eps["metadata"].get("labels") or {}
            if labels.get(SERVICE_NAME_LABEL) != service[1]:
                continue
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

    def _set_endpoints(self, key: Key, addresses: list[str], check: HealthCheck) -> None:
        wanted = set(addresses)
        for ep_key in [k for k in self._endpoints if k[0] == key and k[1] not in wanted]:
            self._endpoints.pop(ep_key).generation += 1
        for address in addresses:
            endpoint = self._endpoints.get((key, address))
            if endpoint is None:
                endpoint = _Endpoint(route=key, address=address, check=check)
                self._endpoints[(key, address)] = endpoint
                self._schedule(endpoint, 0.0)
            elif endpoint.check != check:
                endpoint.check = check

    # -- the report --------------------------------------------------------------------

    def _report(self, key: Key, generation: int | None) -> RouterReport:
        route = self._routes[key]
        endpoints = [e for (k, _), e in sorted(self._endpoints.items()) if k == key]
        unhealthy = [e for e in endpoints if e.healthy is False]
        self._metrics.routers_unhealthy.labels(*key).set(len(unhealthy))
        if route.problem is not None:
            reason, message = route.problem
            return RouterReport(
                conditions=[
                    cond.condition(cond.ROUTER_HEALTHY, False, reason, message, generation),
                    cond.condition(cond.ROUTER_CONFIG_SYNCED, None, reason, message, generation),
                ],
                routers=[],
                ready=False,
            )
        if unhealthy:
            healthy = cond.condition(
                cond.ROUTER_HEALTHY,
                False,
                "RouterUnhealthy",
                "; ".join(f"{e.address}: {e.message}" for e in unhealthy),
                generation,
            )
        elif any(e.healthy is None for e in endpoints):
            healthy = cond.condition(
                cond.ROUTER_HEALTHY,
                None,
                "Probing",
                f"waiting for the first probes of {len(endpoints)} endpoint(s)",
                generation,
            )
        else:
            healthy = cond.condition(
                cond.ROUTER_HEALTHY,
                True,
                "RouterHealthy",
                f"{len(endpoints)} endpoint(s) healthy",
                generation,
            )
        live = [e for e in endpoints if e.healthy]
        stale = [e for e in live if e.synced is False]
        if route.expected is None:
            synced = cond.condition(
                cond.ROUTER_CONFIG_SYNCED,
                None,
                "NoConfig",
                "no ConfigMap of ours to compare with",
                generation,
            )
        elif stale:
            synced = cond.condition(
                cond.ROUTER_CONFIG_SYNCED,
                False,
                "ConfigSyncPending",
                "; ".join(f"{e.address}: {e.message}" for e in stale)
                + " (a router re-reads its file about every 10 s after the kubelet updates "
                "the mounted ConfigMap)",
                generation,
            )
        elif not live or any(e.synced is None for e in live):
            synced = cond.condition(
                cond.ROUTER_CONFIG_SYNCED,
                None,
                "Probing",
                "no healthy endpoint has answered yet",
                generation,
            )
        else:
            synced = cond.condition(
                cond.ROUTER_CONFIG_SYNCED,
                True,
                "ConfigSynced",
                f"{len(live)} endpoint(s) serve the current config",
                generation,
            )
        routers = [
            {
                "address": e.address,
                "healthy": bool(e.healthy),
                "configSynced": bool(e.synced),
                "message": e.message,
                **({"lastProbeTime": e.changed_at} if e.changed_at else {}),
            }
            for e in endpoints
        ]
        ready = healthy["status"] == "True" and synced["status"] == "True"
        return RouterReport(conditions=[healthy, synced], routers=routers, ready=ready)

    # -- the scheduler -----------------------------------------------------------------

    def _schedule(self, endpoint: _Endpoint, delay: float) -> None:
        self._sequence += 1
        due = asyncio.get_running_loop().time() + delay
        heapq.heappush(
            self._heap,
            (due, self._sequence, endpoint.route, endpoint.address, endpoint.generation),
        )
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
                    _, _, route, address, generation = heapq.heappop(self._heap)
                    endpoint = self._endpoints.get((route, address))
                    if endpoint is None or endpoint.generation != generation:
                        continue
                    task = asyncio.create_task(self._probe(endpoint), name=f"probe {address}")
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
        check = endpoint.check
        started = asyncio.get_running_loop().time()
        async with self._limit:
            ok, synced, message = await self._get_health(endpoint, check.timeout_seconds)
        if self._endpoints.get((endpoint.route, endpoint.address)) is not endpoint:
            return  # removed while probing
        self._metrics.probe_duration.labels(*endpoint.route).observe(
            asyncio.get_running_loop().time() - started
        )
        result = "healthy" if ok and synced is not False else ("stale" if ok else "unhealthy")
        self._metrics.probe_total.labels(*endpoint.route, result).inc()
        before = (endpoint.healthy, endpoint.synced, endpoint.message)
        if ok:
            endpoint.successes += 1
            endpoint.failures = 0
            if endpoint.successes >= check.success_threshold:
                endpoint.healthy = True
            if endpoint.healthy is not False:
                endpoint.synced, endpoint.message = synced, message
        else:
            endpoint.failures += 1
            endpoint.successes = 0
            if endpoint.failures >= check.failure_threshold:
                endpoint.healthy = False
            if endpoint.healthy is not True:  # a healthy endpoint keeps its state below threshold
                endpoint.message = message
        if (endpoint.healthy, endpoint.synced, endpoint.message) != before:
            endpoint.changed_at = self._now()
            self._enqueue(endpoint.route)
        self._schedule(
            endpoint, max(0.0, started + check.period_seconds - asyncio.get_running_loop().time())
        )

    async def _get_health(
        self, endpoint: _Endpoint, timeout: float
    ) -> tuple[bool, bool | None, str]:
        """(answered healthy, config synced or None when unknown, what happened)."""
        assert self._session is not None
        url = f"{endpoint.address}/health"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    return False, None, f"GET /health answered {resp.status} {resp.reason}"
        except TimeoutError:
            return False, None, f"GET /health timed out after {timeout}s"
        except aiohttp.ClientConnectorError as err:
            return False, None, f"cannot connect: {err.os_error.strerror or err}"
        except aiohttp.ClientError as err:
            return False, None, f"GET /health failed: {type(err).__name__}: {err}"
        try:
            answer = json.loads(body)
        except ValueError:
            return False, None, "GET /health answered 200 but not with JSON"
        if not isinstance(answer, dict):
            return False, None, "GET /health answered 200 but not with a JSON object"
        route = self._routes.get(endpoint.route)
        expected = route.expected if route else None
        if expected is None:
            return True, None, "healthy"
        if "dynamic_config" not in answer or not isinstance(answer["dynamic_config"], dict):
            return (
                True,
                False,
                (
                    "healthy, but /health has no dynamic_config: is the router started with "
                    "--dynamic-config-json?"
                ),
            )
        different = config_mismatches(expected, answer["dynamic_config"])
        if different:
            return True, False, f"serves an older config ({', '.join(different)} differ)"
        return True, True, "healthy, serving the current config"
