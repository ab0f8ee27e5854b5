"""Router health and config sync, observed on the real plane.

Routers are :class:`FakeRouter` HTTP servers on this machine behind a selector-less
Service plus EndpointSlices, as no kubelet runs here. A test "mounts" the ConfigMap
into a router by loading the file the operator wrote. What is asserted is what a
user sees: the StaticRoute's conditions and ``routers`` list, its Events, the
ConfigMap, the requests each router received, and the API server's own request
counts. Probe counts come from the operator's ``router_controller_probe_total``
metric (what its /metrics shows), read from its registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from router_controller.api import STATICROUTES, StaticRouteSpec, default_config_map_name
from router_controller.health import SERVICE_INDEX, Prober, slice_service
from router_controller.informer import Informer
from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube, Object
from router_controller.manager import Manager
from router_controller.metrics import Metrics
from router_controller.routerconfig import render
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.fakerouter import FakeRouter, expose
from tests.e2e.support import (
    condition,
    config_of,
    create_route,
    events_for,
    get_cm,
    get_route,
    run_operator,
    settled,
    staticroute,
    try_get_cm,
    wait_condition,
    wait_for,
)

FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 1}
# What the default staticroute() renders to (pinned byte for byte in test_reconcile).
DEFAULT_CONFIG = {
    "routing_logic": "roundrobin",
    "service_discovery": "static",
    "static_backends": "http://a.example.com:8000,http://10.1.2.3:8000",
    "static_models": "model-a,model-b",
}


class Routers:
    """The fake routers of one test."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack

    async def start(self) -> FakeRouter:
        return await self._stack.enter_async_context(FakeRouter())


@pytest.fixture
async def routers(kube: Kube, operator: Manager, namespace: str) -> AsyncIterator[Routers]:
    """Fake routers, stopped only after the test's StaticRoutes are gone.

    Deleting the StaticRoutes first means no probe outlives its router: the
    operator stops probing them, so later tests see no status writes or events
    from this one.
    """
    async with contextlib.AsyncExitStack() as stack:
        yield Routers(stack)
        await kube.delete(STATICROUTES.path(namespace))

        def forgotten() -> bool:
            return (
                not any(operator.parts.routes.items(namespace))
                and operator.parts.queue.depth == 0
                and operator.parts.queue.unfinished_work_seconds() == 0
            )

        await wait_for(forgotten, timeout=60, what=f"the operator to drop {namespace}'s routes")


@pytest.fixture
async def other_namespace(kube: Kube) -> AsyncIterator[str]:
    name = f"t-other-{datetime.datetime.now(datetime.UTC):%H%M%S%f}"
    await kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    await kube.delete(f"/api/v1/namespaces/{name}")


def probes(operator: Manager, namespace: str, name: str, result: str) -> float:
    """``router_controller_probe_total`` of one StaticRoute and result."""
    value = operator.metrics.registry.get_sample_value(
        "router_controller_probe_total",
        {"namespace": namespace, "staticroute": name, "result": result},
    )
    return value or 0.0


def cond_of(route: Object, type_: str) -> dict[str, Any]:
    found = condition(route, type_)
    assert found is not None, f"{type_} missing from {route.get('status')}"
    return found


async def reasons(kube: Kube, namespace: str, name: str) -> list[tuple[str, str, str]]:
    events = await events_for(kube, namespace, name)
    events.sort(key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))
    return [(e["type"], e["reason"], e["message"]) for e in events]


async def occurrences(kube: Kube, namespace: str, name: str, type_: str, reason: str) -> int:
    """How often an Event was recorded: repeats may be one Event with a ``count``."""
    return sum(
        int(e.get("count") or 1)
        for e in await events_for(kube, namespace, name)
        if (e["type"], e["reason"]) == (type_, reason)
    )


async def wait_cm(kube: Kube, namespace: str, name: str) -> Object:
    cm: Object = await wait_for(lambda: try_get_cm(kube, namespace, name), what=f"ConfigMap {name}")
    return cm


async def synced_route(
    kube: Kube, namespace: str, name: str, routers: list[FakeRouter], **spec: Any
) -> Object:
    """Create a StaticRoute, mount its ConfigMap into ``routers``, wait for Ready."""
    await create_route(kube, staticroute(name, namespace, **spec))
    cm = await wait_cm(kube, namespace, default_config_map_name(name))
    for router in routers:
        assert router.load_configmap(cm), "the router rejected the operator's file"
    return await wait_condition(kube, namespace, name, "Ready", "True", timeout=60)


async def test_healthy_router_serving_the_config_makes_the_route_ready(
    kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    router = await routers.start()
    await expose(kube, namespace, "router", [router])
    await create_route(
        kube, staticroute("r", namespace, routerRef={"name": "router"}, healthCheck=FAST)
    )
    cm = await wait_cm(kube, namespace, "r-config")

    # Until the router has re-read its file it runs its startup config: pending.
    pending = await wait_condition(
        kube, namespace, "r", "RouterConfigSynced", "False", reason="ConfigSyncPending"
    )
    message = cond_of(pending, "RouterConfigSynced")["message"]
    assert router.address in message
    assert "re-reads its file" in message
    assert cond_of(pending, "RouterHealthy")["status"] == "True"
    assert cond_of(pending, "Ready")["status"] == "False"

    assert router.load_configmap(cm)
    ready = await wait_condition(kube, namespace, "r", "Ready", "True")
    assert cond_of(ready, "RouterHealthy")["status"] == "True"
    assert cond_of(ready, "RouterConfigSynced")["status"] == "True"
    assert cond_of(ready, "ConfigMapReady")["status"] == "True"
    [entry] = ready["status"]["routers"]
    stamp = entry.pop("lastProbeTime")
    assert datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    assert entry == {
        "address": router.address,
        "healthy": True,
        "configSynced": True,
        "message": "healthy, serving the current config",
    }
    assert router.requests >= 1
    await wait_for(
        _has_event(kube, namespace, "r", ("Normal", "RouterHealthy", "1 endpoint(s) healthy")),
        what="a RouterHealthy event",
    )
    events = await reasons(kube, namespace, "r")
    assert ("Normal", "RouterConfigSynced", "1 healthy endpoint(s) serve the current config") in (
        events
    )


async def test_a_changed_spec_is_not_synced_until_the_router_loads_it(
    kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    """The last answer is compared with the new file at once, not at the next probe."""
    router = await routers.start()
    assert router.load(DEFAULT_CONFIG)
    await expose(kube, namespace, "router", [router])
    hourly = {**FAST, "periodSeconds": 3600}
    await create_route(
        kube, staticroute("r", namespace, routerRef={"name": "router"}, healthCheck=hourly)
    )
    await wait_condition(kube, namespace, "r", "Ready", "True")
    probed = router.requests

    path = STATICROUTES.path(namespace, "r")
    await kube.merge_patch(path, {"spec": {"staticModels": "model-a,model-c"}})

    async def generation_2() -> Object | None:
        route = await get_route(kube, namespace, "r")
        return route if route.get("status", {}).get("observedGeneration") == 2 else None

    route = await wait_for(generation_2, what="status of generation 2")
    synced = cond_of(route, "RouterConfigSynced")
    assert (synced["status"], synced["reason"]) == ("False", "ConfigSyncPending")
    assert "static_models" in synced["message"]
    assert cond_of(route, "Ready")["status"] == "False"
    assert router.requests == probed, "no probe ran: the old answer was re-judged"

    # The router picks the file up; a shorter period applies at once, not in an hour.
    assert router.load_configmap(await get_cm(kube, namespace, "r-config"))
    await kube.merge_patch(path, {"spec": {"healthCheck": FAST}})
    await wait_condition(kube, namespace, "r", "Ready", "True")


async def _break(router: FakeRouter, how: str) -> None:
    if how == "refused":
        await router.refuse()
    else:
        router.set_mode("error" if how == "503" else "hang")


async def _mend(router: FakeRouter, how: str) -> None:
    if how == "refused":
        await router.accept()
    router.set_mode("healthy")


FAILURES = {
    "503": "GET /health answered 503 Service Unavailable",
    "hang": "GET /health timed out after 1s",
    "refused": "cannot connect: Connection refused",
}


@pytest.mark.parametrize("how", list(FAILURES))
async def test_a_failing_router_turns_unhealthy_after_failure_threshold_and_recovers(
    kube: Kube, operator: Manager, namespace: str, routers: Routers, how: str
) -> None:
    router = await routers.start()
    await expose(kube, namespace, "router", [router])
    # Two seconds between probes leaves time to look at the status between them.
    check = {"periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3, "successThreshold": 2}
    await synced_route(
        kube, namespace, "r", [router], routerRef={"name": "router"}, healthCheck=check
    )

    await _break(router, how)
    await wait_for(
        lambda: probes(operator, namespace, "r", "unhealthy") >= 1, what="a first failed probe"
    )
    await settled(operator, kube, namespace, "r")
    after_one = await get_route(kube, namespace, "r")
    failed = probes(operator, namespace, "r", "unhealthy")
    assert failed < 3, "the status was read too late to tell what one failure did"
    assert cond_of(after_one, "RouterHealthy")["status"] == "True"
    assert cond_of(after_one, "Ready")["status"] == "True"

    down = await wait_condition(
        kube, namespace, "r", "RouterHealthy", "False", reason="RouterUnhealthy"
    )
    assert probes(operator, namespace, "r", "unhealthy") >= 3
    message = cond_of(down, "RouterHealthy")["message"]
    assert f"{router.address}: {FAILURES[how]}" in message
    assert cond_of(down, "Ready")["status"] == "False"
    [entry] = down["status"]["routers"]
    assert (entry["healthy"], entry["message"]) == (False, FAILURES[how])
    # The Event is recorded just after the status is written: wait for it.
    await wait_for(
        _has_event(kube, namespace, "r", ("Warning", "RouterUnhealthy", message)),
        what="a RouterUnhealthy event",
    )

    healthy_before = probes(operator, namespace, "r", "healthy")
    await _mend(router, how)
    await wait_for(
        lambda: probes(operator, namespace, "r", "healthy") >= healthy_before + 1,
        what="a first successful probe",
    )
    await settled(operator, kube, namespace, "r")
    after_one = await get_route(kube, namespace, "r")
    succeeded = probes(operator, namespace, "r", "healthy") - healthy_before
    assert succeeded < 2, "the status was read too late to tell what one success did"
    assert cond_of(after_one, "RouterHealthy")["status"] == "False"

    await wait_condition(kube, namespace, "r", "Ready", "True")
    assert probes(operator, namespace, "r", "healthy") - healthy_before >= 2

    async def healthy_twice() -> bool:
        return await occurrences(kube, namespace, "r", "Normal", "RouterHealthy") == 2

    await wait_for(healthy_twice, what="RouterHealthy events: healthy at first, then again")
    assert await occurrences(kube, namespace, "r", "Warning", "RouterUnhealthy") == 1


async def test_one_stale_replica_of_three_is_named(
    kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    replicas = [await routers.start() for _ in range(3)]
    await expose(kube, namespace, "router", replicas)
    ready = await synced_route(
        kube, namespace, "r", replicas, routerRef={"name": "router"}, healthCheck=FAST
    )
    assert {r["address"] for r in ready["status"]["routers"]} == {r.address for r in replicas}

    old_cm = await get_cm(kube, namespace, "r-config")
    await kube.merge_patch(
        STATICROUTES.path(namespace, "r"), {"spec": {"staticModels": "model-a,model-c"}}
    )

    async def rewritten() -> Object | None:
        cm = await get_cm(kube, namespace, "r-config")
        return cm if config_of(cm)["static_models"] == "model-a,model-c" else None

    new_cm = await wait_for(rewritten, what="the ConfigMap rewritten")
    fresh, stale = replicas[:2], replicas[2]
    for router in fresh:
        assert router.load_configmap(new_cm)
    assert stale.load_configmap(old_cm)

    async def only_stale_named() -> Object | None:
        route = await get_route(kube, namespace, "r")
        synced = condition(route, "RouterConfigSynced") or {}
        text = synced.get("message", "")
        if synced.get("reason") == "ConfigSyncPending" and not any(
            r.address in text for r in fresh
        ):
            return route
        return None

    route = await wait_for(only_stale_named, what="RouterConfigSynced naming the stale replica")
    synced = cond_of(route, "RouterConfigSynced")
    assert synced["status"] == "False"
    assert (
        f"{stale.address}: healthy, but serves another config (static_models differ)"
        in (synced["message"])
    )
    assert cond_of(route, "RouterHealthy")["message"] == "3 endpoint(s) healthy"
    by_address = {r["address"]: r["configSynced"] for r in route["status"]["routers"]}
    assert by_address == {fresh[0].address: True, fresh[1].address: True, stale.address: False}

    assert stale.load_configmap(new_cm)
    synced_again = await wait_condition(kube, namespace, "r", "RouterConfigSynced", "True")
    assert cond_of(synced_again, "Ready")["status"] == "True"


async def test_an_answer_without_json_or_dynamic_config_is_explained(
    kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    router = await routers.start()
    router.set_mode("not-json")
    await expose(kube, namespace, "router", [router])
    await create_route(
        kube, staticroute("r", namespace, routerRef={"name": "router"}, healthCheck=FAST)
    )
    down = await wait_condition(
        kube, namespace, "r", "RouterHealthy", "False", reason="RouterUnhealthy"
    )
    assert (
        f"{router.address}: GET /health answered 200 but its body is not JSON"
        in cond_of(down, "RouterHealthy")["message"]
    )

    router.set_mode("no-dynamic-config")
    missing = await wait_condition(
        kube, namespace, "r", "RouterConfigSynced", "False", reason="NoDynamicConfig"
    )
    message = cond_of(missing, "RouterConfigSynced")["message"]
    assert router.address in message
    assert "--dynamic-config-json" in message
    assert cond_of(missing, "RouterHealthy")["status"] == "True"

    # Probing went on through all of it: a proper answer makes the route Ready.
    assert router.load_configmap(await get_cm(kube, namespace, "r-config"))
    router.set_mode("healthy")
    await wait_condition(kube, namespace, "r", "Ready", "True")


async def test_router_selector_probes_every_matching_service_including_new_ones(
    kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    first, second, unrelated, later = [await routers.start() for _ in range(4)]
    labels = {"app": "vllm-router"}
    await expose(kube, namespace, "router-a", [first], labels=labels)
    await expose(kube, namespace, "router-b", [second], labels=labels)
    await expose(kube, namespace, "unrelated", [unrelated], labels={"app": "something-else"})
    await create_route(
        kube,
        staticroute("r", namespace, routerSelector={"matchLabels": labels}, healthCheck=FAST),
    )

    async def healthy_with(expected: list[FakeRouter]) -> Object | None:
        route = await get_route(kube, namespace, "r")
        listed = {r["address"] for r in (route.get("status") or {}).get("routers") or []}
        healthy = (condition(route, "RouterHealthy") or {}).get("status") == "True"
        return route if healthy and listed == {r.address for r in expected} else None

    await wait_for(lambda: healthy_with([first, second]), what="both Services probed")
    assert first.requests > 0
    assert second.requests > 0

    await expose(kube, namespace, "router-c", [later], labels=labels)
    route = await wait_for(
        lambda: healthy_with([first, second, later]), what="the new Service probed"
    )
    assert cond_of(route, "RouterHealthy")["message"] == "3 endpoint(s) healthy"
    assert later.requests > 0
    assert unrelated.requests == 0


async def test_a_missing_router_service_is_reported_and_the_configmap_still_written(
    kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    await create_route(
        kube, staticroute("r", namespace, routerRef={"name": "absent"}, healthCheck=FAST)
    )
    route = await wait_condition(
        kube, namespace, "r", "RouterHealthy", "False", reason="RouterNotFound"
    )
    assert (
        cond_of(route, "RouterHealthy")["message"]
        == f"Service {namespace}/absent (spec.routerRef) not found"
    )
    assert cond_of(route, "ConfigMapReady")["status"] == "True"
    ready = cond_of(route, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RouterNotFound")
    assert config_of(await get_cm(kube, namespace, "r-config")) == DEFAULT_CONFIG

    async def not_found_event() -> bool:
        return "RouterNotFound" in [e[1] for e in await reasons(kube, namespace, "r")]

    await wait_for(not_found_event, what="a RouterNotFound event")

    # The Service appearing later is noticed through the Services watch.
    router = await routers.start()
    assert router.load(DEFAULT_CONFIG)
    await expose(kube, namespace, "absent", [router])
    await wait_condition(kube, namespace, "r", "Ready", "True")


async def test_a_router_ref_to_another_namespace_is_refused(
    kube: Kube,
    operator: Manager,
    namespace: str,
    other_namespace: str,
    routers: Routers,
) -> None:
    router = await routers.start()
    await expose(kube, other_namespace, "router", [router])
    await create_route(
        kube,
        staticroute(
            "r",
            namespace,
            routerRef={"name": "router", "namespace": other_namespace},
            healthCheck=FAST,
        ),
    )
    route = await wait_condition(
        kube, namespace, "r", "RouterHealthy", "False", reason="CrossNamespaceRouterRef"
    )
    message = cond_of(route, "RouterHealthy")["message"]
    assert other_namespace in message
    assert "--allow-cross-namespace-router-ref" in message
    assert cond_of(route, "ConfigMapReady")["status"] == "True"
    await settled(operator, kube, namespace, "r")
    assert router.requests == 0, "a refused reference must not be probed"


async def test_the_flag_allows_a_router_ref_to_another_namespace(
    kube: Kube, namespace: str, other_namespace: str
) -> None:
    """The flag's positive case, on the Prober over real informers of this plane.

    A second operator with the flag cannot run next to the session operator (which
    watches every namespace and would fight it over the same status), so this
    drives the Prober as the reconciler does: ``sync`` until the report settles.
    """
    async with FakeRouter() as router:
        await expose(kube, other_namespace, "router", [router])
        informers = [
            Informer(kube=kube, resource=SERVICES, namespaces=[other_namespace], handler=_ignore),
            Informer(
                kube=kube,
                resource=ENDPOINTSLICES,
                namespaces=[other_namespace],
                handler=_ignore,
                indexers={SERVICE_INDEX: slice_service},
            ),
        ]
        prober = Prober(
            services=informers[0],
            endpointslices=informers[1],
            metrics=Metrics(process=False),
            enqueue=lambda _key: None,
            concurrency=4,
            allow_cross_namespace=True,
        )
        spec = StaticRouteSpec.model_validate(
            {
                **staticroute("r", namespace)["spec"],
                "routerRef": {"name": "router", "namespace": other_namespace},
                "healthCheck": FAST,
            }
        )
        expected = render(spec).content
        assert router.load(expected)
        route: Object = {"metadata": {"namespace": namespace, "name": "r", "generation": 1}}
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(i.start()) for i in informers]
            tasks.append(group.create_task(prober.start()))
            try:

                def ready() -> bool:
                    report = prober.sync(route, spec, expected)
                    return report is not None and report.ready

                await wait_for(ready, what="the other namespace's router probed and synced")
                report = prober.sync(route, spec, expected)
                assert report is not None
                assert [r.address for r in report.routers] == [router.address]
            finally:
                for task in tasks:
                    task.cancel()
        assert router.requests >= 1


def _ignore(_kind: str, _obj: Object, _old: Object | None) -> None:
    return None


async def test_hung_routers_never_hold_up_a_reconcile(
    kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    router = await routers.start()
    router.set_mode("hang")
    await expose(kube, namespace, "router", [router])
    # Probes that hang for the longest timeout allowed: each stays outstanding a minute.
    check = {**FAST, "timeoutSeconds": 60, "periodSeconds": 60}
    names = [f"hung-{i:03d}" for i in range(100)]
    for start in range(0, len(names), 10):
        await asyncio.gather(
            *(
                create_route(
                    kube, staticroute(n, namespace, routerRef={"name": "router"}, healthCheck=check)
                )
                for n in names[start : start + 10]
            )
        )
    # As many as one namespace may hold at once (the rest is kept for other namespaces).
    outstanding = min(len(names), operator.parts.prober.limits.per_tenant)
    await wait_for(
        lambda: router.hanging >= outstanding, timeout=120, what=f"{outstanding} hung probes"
    )

    await create_route(
        kube, staticroute("newcomer", namespace, routerRef={"name": "router"}, healthCheck=check)
    )
    route = await wait_condition(kube, namespace, "newcomer", "ConfigMapReady", "True", timeout=60)
    assert router.hanging >= outstanding, "the hung probes were still outstanding"
    assert config_of(await get_cm(kube, namespace, "newcomer-config")) == DEFAULT_CONFIG
    assert cond_of(route, "RouterHealthy")["status"] == "Unknown"

    def workers_idle() -> bool:
        active = operator.metrics.registry.get_sample_value(
            "controller_runtime_active_workers", {"controller": "staticroute"}
        )
        return (
            active == 0
            and operator.parts.queue.depth == 0
            and operator.parts.queue.unfinished_work_seconds() == 0
        )

    await wait_for(workers_idle, timeout=60, what="every reconcile done")
    assert router.hanging >= outstanding, "no worker waits on a probe"


async def test_steady_probing_writes_no_status(
    control_plane: ControlPlane,
    kube: Kube,
    operator: Manager,
    namespace: str,
    routers: Routers,
) -> None:
    """Fifteen probes of each replica at a 1 s period (the issue's 60 s, shortened)."""
    window = 15
    replicas = [await routers.start() for _ in range(2)]
    await expose(kube, namespace, "router", replicas)
    ready = await synced_route(
        kube, namespace, "r", replicas, routerRef={"name": "router"}, healthCheck=FAST
    )
    await settled(operator, kube, namespace, "r")
    ready = await get_route(kube, namespace, "r")
    patches = await asyncio.to_thread(
        control_plane.request_count, "PATCH", "staticroutes", "status"
    )
    events = len(await events_for(kube, namespace, "r"))
    seen = [r.requests for r in replicas]

    await wait_for(
        lambda: all(r.requests >= s + window for r, s in zip(replicas, seen, strict=True)),
        timeout=window * 4,
        what=f"{window} more probes of each replica",
    )
    after = await get_route(kube, namespace, "r")
    assert after["metadata"]["resourceVersion"] == ready["metadata"]["resourceVersion"]
    assert after["status"] == ready["status"]
    assert len(await events_for(kube, namespace, "r")) == events
    assert (
        await asyncio.to_thread(control_plane.request_count, "PATCH", "staticroutes", "status")
        == patches
    ), "status was written while nothing changed"


def _has_event(
    kube: Kube, namespace: str, name: str, event: tuple[str, str, str]
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return event in await reasons(kube, namespace, name)

    return probe


async def test_restarted_operator_resumes_router_state_without_writes(
    control_plane: ControlPlane, kube: Kube, operator: Manager, namespace: str, routers: Routers
) -> None:
    """An operator starting next to healthy, synced routers writes no status.

    It starts from what the status already says about each endpoint instead of
    "not probed yet", so the first probes confirm it rather than flip it twice.
    """
    router = await routers.start()
    await expose(kube, namespace, "router", [router])
    ready = await synced_route(
        kube, namespace, "r", [router], routerRef={"name": "router"}, healthCheck=FAST
    )
    await settled(operator, kube, namespace, "r")
    version = (await get_route(kube, namespace, "r"))["metadata"]["resourceVersion"]
    patches = control_plane.request_count("PATCH", "staticroutes", "status")
    assert ready["status"]["routers"][0]["healthy"] is True
    # A fresh Manager (new caches, new prober) for the same objects, as after a restart.
    async with run_operator(control_plane, namespaces=(namespace,)) as second:
        probed = router.requests
        await wait_for(lambda: router.requests >= probed + 3, what="the new operator's probes")
        await settled(second, kube, namespace, "r")
    assert (await get_route(kube, namespace, "r"))["metadata"]["resourceVersion"] == version
    assert control_plane.request_count("PATCH", "staticroutes", "status") == patches
