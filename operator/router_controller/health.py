"""Router probing: every replica's ``/health``, thresholds, and the config-sync check.

The original controller probed from inside the reconcile, blocking a worker for up
to 30 s per unhealthy router. Here probing runs apart: reconcile workers only *tell*
the prober which endpoints a StaticRoute has (:meth:`Prober.sync`, which reads caches
and returns at once) and read back what it knows. ``successThreshold`` /
``failureThreshold`` consecutive results flip an endpoint's state, and only a changed
state enqueues the StaticRoute, so steady probing causes no status writes.

One operator probes for every namespace, and everything about a probe is chosen by
whoever writes a StaticRoute or a Service, so probing is built not to let one tenant
starve, blind or exhaust it for the others:

- **Scheduling.** Each (StaticRoute, endpoint) is a key in a :class:`WorkQueue`: its
  delayed adds are the timer (next probe ``periodSeconds`` after the last one
  started), its dedup and one-key-in-flight rule mean an endpoint never has two
  probes at once. A key that falls due goes into :class:`FairSlots`, which hands out
  the ``--probe-concurrency`` slots in turn between namespaces and, within one,
  between StaticRoutes, each under a cap (half the slots per namespace, a quarter per
  StaticRoute), so routers that accept and never answer only delay their own
  namespace. ``timeoutSeconds`` is capped (:data:`MAX_TIMEOUT_SECONDS`, and at most
  ``periodSeconds``) by the CRD and the API model, so no probe holds a slot longer.
  How late each probe starts is exported as
  ``router_controller_probe_lateness_seconds{namespace}``.
- **Ticking.** An endpoint's probes fall due on a fixed beat, ``periodSeconds``
  apart from its first one (:func:`next_due`), as the kubelet's prober worker runs
  on a ticker: a probe that starts late does not move the ones after it, and ticks
  missed by more than a period are dropped, not made up in a burst. Timing each
  probe from the *start* of the last one instead makes every stall of the event loop
  (a burst of status writes, a scrape) bunch the probes it delayed into one wave
  that comes back together every period, to queue behind itself again.
- **Spreading.** Endpoints keep the phase of their first probe for ever, so if 10,000
  of them are learned at once (a restart or a new leader resumes every endpoint from
  the status; a bulk create) and all start now, every later period opens with the
  same burst, which queues behind the slots and the CPU for seconds. So a first probe
  that comes in a burst (resumed, or beyond ``--probe-concurrency`` first probes in
  one second) starts at a random point within its period, as the kubelet does for
  the probes it starts in its first period; a few new endpoints are still probed at
  once, so a new StaticRoute does not wait a period to turn Ready.
- **HTTP.** One connection per probe, closed after the answer, made and read by
  :mod:`router_controller.probehttp` (why not aiohttp's client: there). Keep-alive
  was weighed and left out: vllm_router runs uvicorn with its default 5 s keep-alive
  timeout, shorter than the default ``periodSeconds`` (10 s), so a kept connection
  would nearly always be closed by the router before the next probe and reuse would
  save nothing, while every idle kept connection costs a descriptor on both sides
  (10,000 endpoints: thousands held). A probe costs about half a millisecond of CPU,
  most of it the event loop's connect, transport and close; the request bytes of
  each endpoint are built once.
- **Reading.** At most :data:`~router_controller.routerstate.MAX_HEALTH_BODY` bytes of
  an answer are read (a longer one fails the probe), without decompression, and
  every text a router sends is clipped before it reaches a status (see
  :mod:`router_controller.routerstate`).
- **Targets.** Only what the Service really routes to is probed: the IPv4/IPv6
  addresses of its EndpointSlices, or else its cluster IP. An ExternalName Service or
  host-name (FQDN) endpoints would make the operator resolve and probe whatever
  name a tenant picked, in any namespace, so they get ``UnsupportedRouterService``
  instead of a probe. The caches are read only for the fields the trimmed informers
  keep (Service ``spec.type/clusterIP/externalName/ports``; EndpointSlice
  ``addressType/endpoints[].addresses/conditions/ports``).

An endpoint is *config-synced* when the ``dynamic_config`` in its ``/health`` answer
holds, for every key our file sets, the same value. Right after a change that is
normally false for a while (kubelet volume sync, then the router's 10 s re-read), so
it is reported as pending, not as an error -- until the window of
:data:`~router_controller.routerstate.CONFIG_NOT_APPLIED_AFTER` (derived there from
the kubelet's and the router's documented intervals) is over: then it is
``ConfigNotApplied``, seen at the first probe after the window. The last answer is kept and compared
with the *current* file whenever a report is made, so a changed spec never reports
a router as synced on the strength of an answer to the previous config.

The pure parts (reading an answer, the threshold state machine, building the
report) live in :mod:`router_controller.routerstate`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from router_controller.api import MAX_TIMEOUT_SECONDS, HealthCheck, LabelSelector, StaticRouteSpec
from router_controller.clock import SYSTEM_CLOCK, Clock, SleepingClock, format_time
from router_controller.fairshare import FairSlots, Limits
from router_controller.kube import Object
from router_controller.metrics import Metrics, ProbeOutcome
from router_controller.probehttp import ConnectFailed, ExchangeFailed, Target, get, request
from router_controller.reconcile import Key
from router_controller.routerstate import (
    CONFIG_NOT_APPLIED_AFTER,
    MAX_HEALTH_BODY,
    EndpointState,
    ProbeResult,
    RouterReport,
    build_report,
    clip,
    posix_time,
    read_health,
    selector_matches,
    too_long,
)
from router_controller.workqueue import ShutDown, WorkQueue

ProbeKey = tuple[str, str, str]  # namespace, StaticRoute, endpoint address
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_PORT = 8000
UNSUPPORTED = "UnsupportedRouterService"
# What a probe asks for: no compression (a small gzip body can inflate to gigabytes).
_HEADERS = (("Accept-Encoding", "identity"), ("User-Agent", "router-controller"))


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

    key: ProbeKey
    check: HealthCheck
    state: EndpointState
    target: Target
    request: bytes  # GET /health to the target, built once
    changed_at: str | None = None
    viewed_at: float | None = None  # when the last probe's result was judged (POSIX seconds)
    due: float = 0.0  # when the next probe should start (the schedule clock's monotonic time)
    task: asyncio.Task[None] | None = None  # the probe in flight, if any

    @property
    def route(self) -> Key:
        return self.key[0], self.key[1]


@dataclass
class _Route:
    ref: Key | None = None
    selector: tuple[str, LabelSelector] | None = None
    services: set[Key] = field(default_factory=set)
    expected: dict[str, Any] | None = None
    problem: tuple[str, str] | None = None  # (reason, message) when no endpoint can be probed
    applied_at: float | None = None  # status.lastAppliedTime: when the file last changed


@dataclass(frozen=True, slots=True)
class _Resolved:
    """What a Service routes to: probe addresses, or why it cannot be probed."""

    addresses: list[str]
    unsupported: str | None = None  # why it cannot be probed
    reason: str = UNSUPPORTED


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
        clock: Clock = SYSTEM_CLOCK,
        schedule: SleepingClock = SYSTEM_CLOCK,
        config_not_applied_after: float = CONFIG_NOT_APPLIED_AFTER,
    ) -> None:
        self._services = services
        self._slices = endpointslices
        self._metrics = metrics
        self._enqueue = enqueue
        self._allow_cross_namespace = allow_cross_namespace
        self.limits = Limits.sharing(concurrency)
        self._slots: FairSlots[_Endpoint] = FairSlots(self.limits)
        # The schedule: due times are deadlines of the probe queue's timer, so they are
        # read from the same monotonic clock as the queue waits on.
        self._schedule = schedule
        self._queue: WorkQueue[ProbeKey] = WorkQueue(name="probes", clock=self._schedule)
        self._clock = clock  # wall time only (status stamps)
        self._not_applied_after = config_not_applied_after
        self._routes: dict[Key, _Route] = {}
        # Reverse indexes, so a Service or EndpointSlice event finds its StaticRoutes
        # without scanning them all: by Service, and (for selectors) by namespace.
        self._by_service: dict[Key, set[Key]] = {}
        self._selecting: dict[str, set[Key]] = {}
        # StaticRoute -> address -> endpoint
        self._endpoints: dict[Key, dict[str, _Endpoint]] = {}
        # StaticRoutes with routers: what forget() has to undo (index, probes, series).
        self._series: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._random = random.Random()  # noqa: S311 -- spreads start times, guards nothing
        # First probes started at once in the current second: (second, count).
        self._immediate: tuple[int, int] = (0, 0)

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
        if key not in self._series:
            return  # never had routers (most reconciles of a StaticRoute without any)
        self._series.discard(key)
        self._index(key, None)
        for endpoint in self._endpoints.pop(key, {}).values():
            self._drop(endpoint)
        self._metrics.forget_probes(namespace, name)

    def sync(
        self, route: Object, spec: StaticRouteSpec, expected: dict[str, Any] | None
    ) -> RouterReport | None:
        """Point the probes at this StaticRoute's routers; report what they know so far."""
        meta = route["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        if spec.router_ref is None and spec.router_selector is None:
            self.forget(*key)
            return None
        self._series.add(key)
        applied_at = posix_time((route.get("status") or {}).get("lastAppliedTime"))
        state = _Route(expected=expected, applied_at=applied_at)
        addresses: list[str] = []
        if spec.router_ref is not None:
            ref_ns = spec.router_ref.namespace or key[0]
            state.ref = (ref_ns, spec.router_ref.name or "")
            kind = spec.router_ref.kind or "Service"
            if kind != "Service":
                state.problem = (
                    "InvalidRouterRef",
                    f"spec.routerRef.kind is {clip(kind)}; it must be Service",
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
                found = self._resolve(state.ref, spec.router_port)
                if found is None:
                    state.problem = (
                        "RouterNotFound",
                        f"Service {ref_ns}/{state.ref[1]} (spec.routerRef) not found",
                    )
                else:
                    state.services.add(state.ref)
                    if found.unsupported is not None:
                        state.problem = (found.reason, f"{found.unsupported} (spec.routerRef)")
                    addresses.extend(found.addresses)
        if spec.router_selector is not None:
            # Registered even when routerRef has a problem, so that a matching Service
            # created later still brings this StaticRoute back.
            state.selector = (key[0], spec.router_selector)
            matched = [
                svc
                for svc in self._services.items(key[0])
                if selector_matches(spec.router_selector, svc["metadata"].get("labels") or {})
            ]
            for svc in sorted(matched, key=lambda s: str(s["metadata"]["name"])):
                service = (key[0], svc["metadata"]["name"])
                state.services.add(service)
                found = self._resolve(service, spec.router_port)
                if found is None:
                    continue
                if found.unsupported is not None and state.problem is None:
                    state.problem = (found.reason, f"{found.unsupported} (spec.routerSelector)")
                addresses.extend(found.addresses)
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

    def _resolve(self, service: Key, router_port: int | str | None) -> _Resolved | None:
        """``scheme://ip:port`` of each ready endpoint; None when the Service is missing."""
        svc = self._services.get(*service)
        if svc is None:
            return None
        spec = svc.get("spec") or {}
        name = f"{service[0]}/{service[1]}"
        if spec.get("type") == "ExternalName":
            return _Resolved(
                [],
                f"Service {name} is of type ExternalName ({clip(str(spec.get('externalName')))})"
                ": only the IP addresses a Service routes to are probed (its EndpointSlices "
                "or its cluster IP), never a DNS name. Point the StaticRoute at the router's "
                "own ClusterIP Service",
            )
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        chosen = _service_port(ports, router_port)
        if isinstance(chosen, str):
            return _Resolved([], f"Service {name}: {chosen}", reason="RouterPortNotFound")
        port_name = None if chosen is None else str(chosen.get("name") or "")
        scheme = "https" if port_name == "https" else "http"
        found: list[str] = []
        saw_ip_slice = False
        host_names = portless = 0
        # A Service may have several EndpointSlices, each with its own port list.
        for eps in self._slices.by_index(SERVICE_INDEX, name):
            family = {"IPv4": 4, "IPv6": 6}.get(str(eps.get("addressType")))
            endpoints = eps.get("endpoints") or []
            if family is None:  # FQDN: names a tenant chose, resolved anywhere
                host_names += len(endpoints)
                continue
            saw_ip_slice = True
            port = DEFAULT_PORT
            if port_name is not None:  # the slice's port of the same name, as kube-proxy maps
                numbers = [
                    int(p["port"])
                    for p in eps.get("ports") or []
                    if (p.get("name") or "") == port_name and p.get("port")
                ]
                if not numbers:
                    portless += 1  # this slice does not carry the router's port
                    continue
                port = numbers[0]
            for endpoint in endpoints:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                for address in endpoint.get("addresses") or []:
                    ip = _ip(address, family)
                    if ip is not None:
                        found.append(f"{scheme}://{ip}:{port}")
        if saw_ip_slice and not found and portless:
            return _Resolved(
                [],
                f"Service {name}: none of its EndpointSlices has a port named "
                f"{port_name!r}, the Service port probed; set spec.routerPort to the router's "
                "port",
                reason="RouterPortNotFound",
            )
        if saw_ip_slice:
            return _Resolved(found)
        if host_names:
            return _Resolved(
                [],
                f"Service {name} has only host-name endpoints (EndpointSlice addressType "
                "FQDN): only IP addresses are probed, never a DNS name. List the router "
                "Pods' IP addresses (addressType IPv4 or IPv6), or give the Service a "
                "selector",
            )
        # No EndpointSlice: the cluster IP, on the Service's own port (not its targetPort).
        port = int(chosen["port"]) if chosen is not None and chosen.get("port") else DEFAULT_PORT
        cluster_ip = _ip(str(spec.get("clusterIP") or ""), None)
        return _Resolved([f"{scheme}://{cluster_ip}:{port}"] if cluster_ip else [])

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
        now = self._schedule.monotonic()
        for address in addresses:
            endpoint = current.get(address)
            if endpoint is None:
                entry = previous.get(address)
                state = (
                    EndpointState.resume(address, entry)
                    if entry is not None
                    else EndpointState(address)
                )
                target = Target.parse(address)
                endpoint = _Endpoint(
                    key=(*key, address),
                    check=check,
                    state=state,
                    target=target,
                    request=request(target, "/health", _HEADERS),
                    changed_at=entry.get("lastProbeTime") if entry else None,
                    due=self._first_due(now, check.period_seconds, resumed=entry is not None),
                )
                current[address] = endpoint
                self._queue.add(endpoint.key)
            elif endpoint.check != check:
                endpoint.check = check
                if endpoint.task is None:  # a new period applies now, not after the old one
                    endpoint.due = self._first_due(now, check.period_seconds, resumed=False)
                    self._queue.add(endpoint.key)
        if not current:
            del self._endpoints[key]

    def _first_due(self, now: float, period: float, *, resumed: bool) -> float:
        """When a new (or re-timed) endpoint's first probe should start.

        At once, unless it comes in a burst: an endpoint whose state was resumed from
        the status (an operator restart or a new leader learns every endpoint at once),
        or one beyond a slots' worth of first probes in the same second. Those start
        at a random point within their period instead, so that their probes do not
        all fall due together again in every later period.
        """
        if resumed:
            return now + self._random.random() * period
        second = int(now)
        seen = self._immediate[1] if self._immediate[0] == second else 0
        if seen >= self.limits.total:
            return now + self._random.random() * period
        self._immediate = (second, seen + 1)
        return now

    def _drop(self, endpoint: _Endpoint) -> None:
        """Stop probing an endpoint; a probe in flight is abandoned, freeing its slot.

        Its key may still wait in the queue or for a slot; it is dropped when it
        comes out, as no tracked endpoint answers to it any more.
        """
        if endpoint.task is not None:
            endpoint.task.cancel()

    def _lookup(self, key: ProbeKey) -> _Endpoint | None:
        return self._endpoints.get((key[0], key[1]), {}).get(key[2])

    def _tracked(self, endpoint: _Endpoint) -> bool:
        return self._lookup(endpoint.key) is endpoint

    # -- the report --------------------------------------------------------------------

    def _report(self, key: Key, generation: int | None) -> RouterReport:
        route = self._routes[key]
        endpoints = self._endpoints.get(key, {})
        now = posix_time(format_time(self._clock.now()))  # whole seconds, as stamps are
        views = [
            replace(
                endpoints[a].state.view(
                    route.expected,
                    now=now,
                    applied_at=route.applied_at,
                    window=self._not_applied_after,
                ),
                last_probe_time=endpoints[a].changed_at,
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

    async def start(self) -> None:
        """Run probes as they fall due, until cancelled."""
        try:
            while True:
                try:
                    key = await self._queue.get()
                except ShutDown:
                    return
                self._admit(key)
        finally:
            self._stopping = True
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._queue.shutdown(0)

    def _admit(self, key: ProbeKey) -> None:
        """A key came out of the queue: wait for a fair slot, or for its due time."""
        endpoint = self._lookup(key)
        if endpoint is None or endpoint.task is not None:
            self._queue.done(key)  # dropped, or re-added for a probe already running
            return
        early = endpoint.due - self._schedule.monotonic()
        if early > 0.001:  # an older, earlier due time: wait for the current one
            self._queue.done(key)
            self._queue.add_after(key, early)
            return
        self._slots.push(key[0], key[1], endpoint)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start every probe the fair slots allow now."""
        while not self._stopping and (picked := self._slots.pop()) is not None:
            namespace, group, endpoint = picked
            if not self._tracked(endpoint):  # dropped while it waited for a slot
                self._slots.release(namespace, group)
                self._queue.done(endpoint.key)
                continue
            task = asyncio.create_task(
                self._probe(endpoint), name=f"probe {endpoint.state.address}"
            )
            endpoint.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe(self, endpoint: _Endpoint) -> None:
        check = endpoint.check
        key = endpoint.route
        started = self._schedule.monotonic()
        self._metrics.probe_lateness.labels(key[0]).observe(max(0.0, started - endpoint.due))
        try:
            timeout = min(check.timeout_seconds, check.period_seconds, MAX_TIMEOUT_SECONDS)
            result = await _get_health(endpoint, timeout)
        finally:
            endpoint.task = None
            self._slots.release(key[0], key[1])
            self._queue.done(endpoint.key)
            self._dispatch()
        if not self._tracked(endpoint):
            return  # removed while probing
        self._metrics.probe_duration.labels(*key).observe(self._schedule.monotonic() - started)
        route = self._routes.get(key)
        expected = route.expected if route is not None else None
        stamp = format_time(self._clock.now())
        now = posix_time(stamp)
        applied_at = route.applied_at if route is not None else None
        window = self._not_applied_after
        # Before: as judged at the previous probe, so a window that lapsed since is a change.
        before = endpoint.state.view(
            expected, now=endpoint.viewed_at or now, applied_at=applied_at, window=window
        )
        endpoint.state.observe(result, check, now=now)
        after = endpoint.state.view(expected, now=now, applied_at=applied_at, window=window)
        endpoint.viewed_at = now
        outcome = (
            ProbeOutcome.UNHEALTHY
            if not result.ok
            else (ProbeOutcome.STALE if after.synced is False else ProbeOutcome.HEALTHY)
        )
        self._metrics.probe_total.labels(*key, outcome).inc()
        if after != before:
            endpoint.changed_at = stamp
            self._enqueue(key)
        endpoint.due = next_due(endpoint.due, started, endpoint.check.period_seconds)
        self._queue.add_after(endpoint.key, max(0.0, endpoint.due - self._schedule.monotonic()))


async def _get_health(endpoint: _Endpoint, timeout: float) -> ProbeResult:
    try:
        answer = await get(
            endpoint.target, endpoint.request, timeout=timeout, limit=MAX_HEALTH_BODY
        )
    except TimeoutError:
        return ProbeResult(False, f"GET /health timed out after {timeout:g}s")
    except ConnectFailed as err:
        return ProbeResult(False, f"cannot connect: {_describe(err.os_error)}")
    except ExchangeFailed as err:
        return ProbeResult(False, clip(f"GET /health failed: {err}"))
    except Exception as err:  # whatever went wrong is this probe's failure, not the prober's
        return ProbeResult(False, clip(f"GET /health failed: {type(err).__name__}: {err}"))
    if answer.too_long:
        return too_long(answer.status)
    return read_health(answer.status, answer.reason, answer.body)


def next_due(due: float, started: float, period: float) -> float:
    """When the probe after one due at ``due`` that started at ``started`` is due.

    The first tick of the endpoint's beat (``due`` plus whole periods) after the start:
    a late start keeps the beat, and the ticks it missed altogether are skipped.
    """
    missed = math.floor((started - due) / period) if started > due else 0
    return due + (missed + 1) * period


ROUTER_PORT_NAMES = ("http", "https", "router-sport")  # router-sport: production-stack's chart


def _service_port(
    ports: list[dict[str, Any]], wanted: int | str | None
) -> dict[str, Any] | str | None:
    """The Service port to probe; None for the old default (8000); a message if missing.

    ``wanted`` is ``spec.routerPort``: a port name, or a Service port number. Without
    it: the port named http, https or router-sport, else the only port, else None.
    """
    if wanted is None:
        for name in ROUTER_PORT_NAMES:
            for port in ports:
                if port.get("name") == name:
                    return port
        return ports[0] if len(ports) == 1 else None
    if isinstance(wanted, str) and wanted.isdigit():
        wanted = int(wanted)
    key = "port" if isinstance(wanted, int) else "name"
    for port in ports:
        if port.get(key) == wanted:
            return port
    listed = ", ".join(
        f"{p.get('name')} ({p.get('port')})" if p.get("name") else str(p.get("port")) for p in ports
    )
    return (
        f"spec.routerPort {wanted} is not one of its ports ({clip(listed) or 'none'}): "
        "name a Service port by its name or its port number"
    )


def _ip(text: str, family: int | None) -> str | None:
    """``text`` as a URL host if it is an IP address (of ``family``, if given), else None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if family is not None and ip.version != family:
        return None
    return f"[{ip}]" if ip.version == 6 else str(ip)


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
