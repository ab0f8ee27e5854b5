"""One tenant's routers cannot starve or blind the probing of another's, on the real plane.

Whoever can write a StaticRoute or a Service in one namespace chooses what the
operator probes, how long a probe may take and what the answer says. These tests
play that tenant with the hostile routers of :mod:`router_controller_dev.hostile`, next to a
well-behaved namespace with a :class:`FakeRouter`, and check what a user of the
other namespace relies on: their StaticRoute's conditions follow their router, and
its probes keep running (``router_controller_probe_total``, read from the session
operator's registry as its /metrics shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
from collections.abc import AsyncIterator

import pytest

from router_controller.api import MAX_TIMEOUT_SECONDS, STATICROUTES
from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube
from router_controller.manager import Manager
from router_controller.metrics import ProbeOutcome
from router_controller.routerstate import MAX_NAMED
from router_controller_dev.fakerouter import FakeRouter, endpointslice, expose, host_address
from router_controller_dev.hostile import HostileRouter, HungRouter, expose_at
from tests.e2e.support import (
    condition,
    create_route,
    get_cm,
    settled,
    staticroute,
    wait_condition,
    wait_for,
)

RESULTS = tuple(ProbeOutcome)


def probes(operator: Manager, namespace: str, name: str) -> float:
    """``router_controller_probe_total`` of one StaticRoute, all results."""
    total = 0.0
    for result in RESULTS:
        value = operator.metrics.registry.get_sample_value(
            "router_controller_probe_total",
            {"namespace": namespace, "staticroute": name, "result": result},
        )
        total += value or 0.0
    return total


@pytest.fixture
async def second_namespace(kube: Kube) -> AsyncIterator[str]:
    name = f"t-b-{datetime.datetime.now(datetime.UTC):%H%M%S%f}"
    await kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    await kube.delete(f"/api/v1/namespaces/{name}")


async def forget_routes(kube: Kube, operator: Manager, *namespaces: str) -> None:
    """Delete the StaticRoutes of ``namespaces`` and wait until the operator dropped them.

    Done before the routers stop, so no probe of this test outlives its router.
    """
    for namespace in namespaces:
        await kube.delete(STATICROUTES.path(namespace))

    def forgotten() -> bool:
        return (
            not any(any(operator.parts.routes.items(ns)) for ns in namespaces)
            and operator.parts.queue.depth == 0
            and operator.parts.queue.unfinished_work_seconds() == 0
        )

    await wait_for(forgotten, timeout=120, what="the operator to drop the test's StaticRoutes")


async def create_many(kube: Kube, namespace: str, names: list[str], **spec: object) -> None:
    for start in range(0, len(names), 10):
        await asyncio.gather(
            *(
                create_route(kube, staticroute(n, namespace, **spec))
                for n in names[start : start + 10]
            )
        )


async def test_hung_routers_in_one_namespace_never_delay_another(
    kube: Kube, operator: Manager, namespace: str, second_namespace: str
) -> None:
    evil, good = namespace, second_namespace
    async with HungRouter() as hung, FakeRouter() as router:
        try:
            await expose_at(kube, evil, "router", [(hung.host, hung.port)])
            longest = {
                "timeoutSeconds": MAX_TIMEOUT_SECONDS,
                "periodSeconds": MAX_TIMEOUT_SECONDS,
            }
            names = [f"hung-{i:03d}" for i in range(100)]
            await create_many(kube, evil, names, routerRef={"name": "router"}, healthCheck=longest)
            held = operator.parts.prober.limits.per_tenant
            await wait_for(
                lambda: hung.open >= held, timeout=120, what=f"{held} probes hung in {evil}"
            )

            await expose(kube, good, "router", [router])
            check = {"periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3}
            await create_route(
                kube, staticroute("r", good, routerRef={"name": "router"}, healthCheck=check)
            )
            cm = await wait_for(lambda: _cm(kube, good, "r-config"), what="the ConfigMap")
            assert router.load_configmap(cm)
            await wait_condition(kube, good, "r", "Ready", "True", timeout=60)
            assert hung.open >= held, f"{evil}'s probes were still hanging"

            await router.refuse()  # the router stops
            window = check["failureThreshold"] * check["periodSeconds"]
            down = await wait_condition(
                kube, good, "r", "RouterHealthy", "False", reason="RouterUnhealthy",
                timeout=window + 5,
            )  # fmt: skip
            message = (condition(down, "RouterHealthy") or {})["message"]
            assert f"{router.address}: cannot connect: Connection refused" in message
            counted = probes(operator, good, "r")
            await wait_for(
                lambda: probes(operator, good, "r") >= counted + 3,
                timeout=window + 5,
                what=f"{good}'s probes going on at their period",
            )
            assert hung.open >= held, f"{evil}'s probes were hanging all along"
        finally:
            await forget_routes(kube, operator, evil, good)


async def _cm(kube: Kube, namespace: str, name: str) -> object:
    with contextlib.suppress(Exception):
        return await get_cm(kube, namespace, name)
    return None


async def test_six_hundred_failing_endpoints_are_summarised_and_the_status_written(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    host = host_address()
    # Ports bound but not listening: every connection is refused, and no other test
    # can start a server on them meanwhile.
    held = []
    try:
        for _ in range(600):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            held.append(sock)
        ports = [int(s.getsockname()[1]) for s in held]
        await expose_at(kube, namespace, "router", [(host, p) for p in ports])
        check = {"periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 1}
        await create_route(
            kube, staticroute("r", namespace, routerRef={"name": "router"}, healthCheck=check)
        )

        async def all_down() -> object:
            route = await kube.get(STATICROUTES.path(namespace, "r"))
            healthy = condition(route, "RouterHealthy") or {}
            if healthy.get("message", "").startswith("600 of 600 endpoint(s) unhealthy"):
                return route
            return None

        route = await wait_for(all_down, timeout=120, what="all 600 endpoints reported down")
        healthy = condition(route, "RouterHealthy") or {}
        assert healthy["reason"] == "RouterUnhealthy"
        message = healthy["message"]
        assert message.endswith(f" and {600 - MAX_NAMED} more"), message
        assert message.count("cannot connect: Connection refused") == MAX_NAMED
        assert len(message) < 2048
        routers = route["status"]["routers"]
        assert len(routers) == 600
        assert {r["message"] for r in routers} == {"cannot connect: Connection refused"}
        assert (condition(route, "Ready") or {})["status"] == "False"
    finally:
        await forget_routes(kube, operator, namespace)
        for sock in held:
            sock.close()


class Listener(HostileRouter):
    """Counts connections and answers nothing: the place a probe must never reach."""

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None


@pytest.mark.parametrize("kind", ["ExternalName", "FQDN"])
async def test_a_router_service_that_names_a_host_is_never_probed(
    kube: Kube, operator: Manager, namespace: str, kind: str
) -> None:
    """An ExternalName Service, or an EndpointSlice of host names, gets a condition, no probe.

    The names point at this machine ("localhost" resolves to the listener here); a
    probe that resolved them would arrive there, or, if the name does not resolve,
    still count as a probe.
    """
    async with Listener(host="127.0.0.1") as target:
        try:
            if kind == "ExternalName":
                svc = {
                    "metadata": {"name": "router", "namespace": namespace},
                    "spec": {
                        "type": "ExternalName",
                        "externalName": "localhost",
                        "ports": [{"name": "http", "port": target.port}],
                    },
                }
                await kube.create(SERVICES.path(namespace), svc)
            else:
                eps = endpointslice(namespace, "router", 0, "localhost.localdomain", target.port)
                eps["addressType"] = "FQDN"
                await kube.create(ENDPOINTSLICES.path(namespace), eps)
                svc = {
                    "metadata": {"name": "router", "namespace": namespace},
                    "spec": {"ports": [{"name": "http", "port": target.port}]},
                }
                await kube.create(SERVICES.path(namespace), svc)
            fast = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}
            await create_route(
                kube, staticroute("r", namespace, routerRef={"name": "router"}, healthCheck=fast)
            )
            route = await wait_condition(
                kube, namespace, "r", "RouterHealthy", "False", reason="UnsupportedRouterService"
            )
            message = (condition(route, "RouterHealthy") or {})["message"]
            assert f"Service {namespace}/router" in message
            assert ("ExternalName (localhost)" if kind == "ExternalName" else "FQDN") in message
            assert "never a DNS name" in message
            ready = condition(route, "Ready") or {}
            assert (ready["status"], ready["reason"]) == ("False", "UnsupportedRouterService")
            assert route["status"]["routers"] == []
            await settled(operator, kube, namespace, "r")
            assert probes(operator, namespace, "r") == 0, "no probe may leave the operator"
            assert target.connections == 0
        finally:
            await forget_routes(kube, operator, namespace)
