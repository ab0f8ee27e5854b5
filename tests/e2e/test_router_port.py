"""Which port of a router Service is probed, the Kubernetes way, on the real plane.

``spec.routerPort`` names a Service port by name or number, as a Service's
``targetPort`` is written; without it the operator takes the port named ``http``,
``https`` or ``router-sport`` (production-stack's chart), else the Service's only
port, else 8000. On endpoints it probes the EndpointSlice port of the same name (the
EndpointSlice controller names slice ports after the Service's); on the cluster-IP
fallback, the Service's own ``port``.

The cluster-IP fallback needs a router listening on a Service's cluster IP, so this
module runs its own control plane with a loopback Service CIDR (and its own
operator in the test's event loop, watching all of it). Routers are
:class:`FakeRouter` servers; what is checked is what a user sees: the StaticRoute
Ready with the right ``status.routers`` address, and no connection at all on the
ports that must not be probed (a listener stands on each).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from router_controller.api import STATICROUTES
from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube, Object
from router_controller.manager import Manager
from router_controller_dev import envtest
from router_controller_dev.fakerouter import FakeRouter, host_address
from router_controller_dev.hostile import HostileRouter
from tests.e2e.support import (
    admin_kube,
    condition,
    create_route,
    get_cm,
    run_operator,
    staticroute,
    wait_condition,
    wait_for,
)

pytestmark = pytest.mark.cluster

NS = "ports"
RELEASE = "vllm"
# The labels production-stack's chart puts on its router Service (chart.routerStandardLabels
# plus routerSpec.labels at their defaults), and uses as its selector.
CHART_LABELS = {
    "app.kubernetes.io/name": "router",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "router",
    "app.kubernetes.io/part-of": "vllm-stack",
    "app.kubernetes.io/managed-by": "helm",
    "environment": "router",
    "release": "router",
}
FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}


class Listener(HostileRouter):
    """Stands on a port that must never be probed, and counts who connects."""

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None


@pytest.fixture(scope="module")
def plane() -> Iterator[envtest.ControlPlane]:
    with envtest.running(service_cidr="127.0.100.0/24", crds=True) as started:
        started.kubectl("create", "namespace", NS)
        yield started


@pytest.fixture(scope="module")
async def client(plane: envtest.ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(plane) as kube:
        yield kube


@pytest.fixture(scope="module")
async def manager(plane: envtest.ControlPlane) -> AsyncIterator[Manager]:
    async with run_operator(plane) as running:
        yield running


@pytest.fixture
async def stack(client: Kube, manager: Manager) -> AsyncIterator[contextlib.AsyncExitStack]:
    """Servers for one test; its StaticRoutes, Services and slices deleted before they stop."""
    async with contextlib.AsyncExitStack() as exits:
        yield exits
        await client.delete(STATICROUTES.path(NS))
        await wait_for(
            lambda: not any(manager.parts.routes.items(NS)) and manager.parts.queue.depth == 0,
            what="the operator to drop the test's StaticRoutes",
        )
        await client.delete(ENDPOINTSLICES.path(NS))
        for svc in (await client.get(SERVICES.path(NS))).get("items", []):
            await client.delete(SERVICES.path(NS, svc["metadata"]["name"]))


def _service(name: str, ports: list[dict[str, Any]], **extra: Any) -> Object:
    metadata = {"name": name, "namespace": NS, **extra.pop("metadata", {})}
    spec = {"ports": ports, **extra}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def _slice(service: str, address: str, ports: dict[str, int], **labels: str) -> Object:
    """An EndpointSlice as the EndpointSlice controller writes it for ``service``."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x7k2p",
            "namespace": NS,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                **labels,
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
            }
        ],
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports.items()],
    }


async def _ready_on(client: Kube, name: str, router: FakeRouter, **spec: Any) -> Object:
    """Create a StaticRoute, load its ConfigMap into ``router``, wait for Ready."""
    await create_route(client, staticroute(name, NS, healthCheck=FAST, **spec))
    cm = await wait_for(lambda: _cm(client, f"{name}-config"), what=f"{name}'s ConfigMap")
    assert router.load_configmap(cm)
    route: Object = await wait_condition(client, NS, name, "Ready", "True", timeout=60)
    return route


async def _cm(client: Kube, name: str) -> Object | None:
    with contextlib.suppress(Exception):
        return await get_cm(client, NS, name)
    return None


def _addresses(route: Object) -> list[str]:
    return [r["address"] for r in route["status"]["routers"]]


async def test_the_production_stack_chart_router_service(
    client: Kube, stack: contextlib.AsyncExitStack
) -> None:
    """``<release>-router-service``: router-sport 80 -> containerPort, lmcache-port 9000.

    The slice carries the container ports, as the EndpointSlice controller resolves
    them from the router Pod: the chart's ``containerPort`` (8000 by default; here the
    port the test's router got) for router-sport, and the lmcache port.
    """
    router = await stack.enter_async_context(FakeRouter())
    lmcache = await stack.enter_async_context(Listener())
    service = f"{RELEASE}-router-service"
    await client.create(
        ENDPOINTSLICES.path(NS),
        _slice(service, router.host, {"router-sport": router.port, "lmcache-port": lmcache.port}),
    )
    ports = [
        {"name": "router-sport", "port": 80, "targetPort": router.port, "protocol": "TCP"},
        {"name": "lmcache-port", "port": 9000, "targetPort": "lmcache-port", "protocol": "TCP"},
    ]
    await client.create(
        SERVICES.path(NS),
        _service(
            service, ports, type="ClusterIP", selector=CHART_LABELS,
            metadata={"labels": CHART_LABELS},
        ),
    )  # fmt: skip

    by_ref = await _ready_on(client, "by-ref", router, routerRef={"name": service})
    assert _addresses(by_ref) == [router.address]
    selector = {
        "matchLabels": {
            "app.kubernetes.io/component": "router",
            "app.kubernetes.io/instance": RELEASE,
        }
    }
    by_labels = await _ready_on(client, "by-labels", router, routerSelector=selector)
    assert _addresses(by_labels) == [router.address]
    assert lmcache.connections == 0, "the lmcache port was probed"


async def test_router_port_by_name_and_by_number(
    client: Kube, stack: contextlib.AsyncExitStack
) -> None:
    router = await stack.enter_async_context(FakeRouter())
    metrics = await stack.enter_async_context(Listener())
    ports = [{"name": "metrics", "port": 9090}, {"name": "api", "port": 8080}]
    await client.create(
        ENDPOINTSLICES.path(NS),
        _slice("multi", router.host, {"metrics": metrics.port, "api": router.port}),
    )
    await client.create(SERVICES.path(NS), _service("multi", ports))

    by_name = await _ready_on(
        client, "by-name", router, routerRef={"name": "multi"}, routerPort="api"
    )
    assert _addresses(by_name) == [router.address]
    by_number = await _ready_on(
        client, "by-number", router, routerRef={"name": "multi"}, routerPort=8080
    )
    assert _addresses(by_number) == [router.address]
    assert metrics.connections == 0, "the other port was probed"

    await create_route(
        client,
        staticroute("wrong", NS, routerRef={"name": "multi"}, routerPort="web", healthCheck=FAST),
    )
    wrong = await wait_condition(
        client, NS, "wrong", "RouterHealthy", "False", reason="RouterPortNotFound"
    )
    message = (condition(wrong, "RouterHealthy") or {})["message"]
    assert f"Service {NS}/multi: spec.routerPort web is not one of its ports" in message
    assert "metrics (9090), api (8080)" in message  # fmt: skip


async def test_a_single_port_service_with_another_name(
    client: Kube, stack: contextlib.AsyncExitStack
) -> None:
    router = await stack.enter_async_context(FakeRouter())
    await client.create(
        ENDPOINTSLICES.path(NS), _slice("single", router.host, {"web": router.port})
    )
    await client.create(SERVICES.path(NS), _service("single", [{"name": "web", "port": 80}]))
    route = await _ready_on(client, "single", router, routerRef={"name": "single"})
    assert _addresses(route) == [router.address]


async def test_the_cluster_ip_fallback_uses_the_service_port(
    client: Kube, stack: contextlib.AsyncExitStack
) -> None:
    """No EndpointSlice: the cluster IP, on the Service ``port``, not its targetPort."""
    ports = [
        {"name": "router-sport", "port": 1, "targetPort": 8000},
        {"name": "lmcache-port", "port": 2, "targetPort": 9000},
    ]
    created = await client.create(SERVICES.path(NS), _service("fallback", ports))
    cluster_ip = created["spec"]["clusterIP"]
    assert cluster_ip.startswith("127.0.100."), cluster_ip
    # The routers bind the cluster IP itself (loopback), on ports the Service then names.
    router = await stack.enter_async_context(FakeRouter(host=cluster_ip))
    lmcache = await stack.enter_async_context(Listener(host=cluster_ip))
    target = await stack.enter_async_context(Listener(host=cluster_ip))
    ports[0].update(port=router.port, targetPort=target.port)
    ports[1].update(port=lmcache.port)
    await client.merge_patch(SERVICES.path(NS, "fallback"), {"spec": {"ports": ports}})

    route = await _ready_on(client, "fallback", router, routerRef={"name": "fallback"})
    assert _addresses(route) == [f"http://{cluster_ip}:{router.port}"]
    assert lmcache.connections == 0, "the lmcache port was probed"
    assert target.connections == 0, "the targetPort was probed on the cluster IP"
    assert host_address() not in str(route["status"])
