"""Many namespaces and bursts of traffic do not cost the leader its Lease.

With one connection pool for everything, each watched namespace's four watches held
four of its 64 connections for good: at 16 namespaces no request was left for writes
or for the Lease renewal, and with ``--leader-elect`` the process lost its lease and
exited. Here the operator runs as a process (as a Deployment runs it) watching 200
namespaces, then all of them, and a bursts of unrelated writes hit the API server
while a watcher records every version of the Lease: its holder and
``leaseTransitions`` must never change while the test runs, and the process must
never exit. The module has a control plane of its own, so no other operator
reconciles its StaticRoutes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from router_controller.api import STATICROUTES
from router_controller.kube import EVENTS, Kube
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from tests.e2e.leases import (
    assert_held_throughout,
    election_flags,
    gather_limited,
    leading,
    watching_lease,
)
from tests.e2e.processes import Spawn
from tests.e2e.support import admin_kube, create_route, staticroute, wait_condition, wait_for

NAMESPACES = 200
BURST = 1000


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with envtest.running(crds=True) as plane:
        yield plane


@pytest.fixture(scope="module")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


@pytest.fixture(scope="module")
async def namespaces(kube: Kube) -> list[str]:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i:03d}" for i in range(NAMESPACES)]
    await gather_limited(
        (
            kube.create(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )
            for name in names
        ),
        limit=20,
    )
    return names


def event(namespace: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"burst-{i}", "namespace": namespace},
        "involvedObject": {"kind": "ConfigMap", "name": f"x-{i}", "namespace": namespace},
        "reason": "Burst",
        "message": "unrelated traffic",
        "type": "Normal",
    }


async def test_200_namespaces_and_bursts_never_cost_the_lease(
    control_plane: ControlPlane, kube: Kube, namespaces: list[str], operators: Spawn
) -> None:
    first, last = namespaces[0], namespaces[-1]
    lease = f"lease-{uuid.uuid4().hex[:8]}"
    async with watching_lease(kube, first, lease) as watcher:
        process = operators(
            control_plane.kubeconfig,
            *election_flags(first, lease),
            f"--namespaces={','.join(namespaces)}",
        )
        identity = await leading(process)
        await process.logged("starting workers", timeout=120)
        for namespace in (first, last):
            await create_route(kube, staticroute("r", namespace))
        for namespace in (first, last):
            await wait_condition(kube, namespace, "r", "Ready", "True", timeout=60)
        assert_held_throughout(watcher, identity, process)

        # Unrelated load on the API server: Events the operator never reads ...
        await gather_limited(
            (kube.create(EVENTS.path(last), event(last, i)) for i in range(BURST)), limit=50
        )
        # ... and StaticRoutes it must all reconcile, spread over every namespace.
        routes = [(namespaces[i % NAMESPACES], f"burst-{i}") for i in range(BURST)]
        await gather_limited(
            (create_route(kube, staticroute(name, ns)) for ns, name in routes), limit=50
        )

        async def converged() -> bool:
            pending = 0
            for ns in (first, last):
                listed = await kube.get(STATICROUTES.path(ns))
                for item in listed.get("items", []):
                    conditions = (item.get("status") or {}).get("conditions") or []
                    pending += not any(
                        c["type"] == "Ready" and c["status"] == "True" for c in conditions
                    )
            return pending == 0

        await wait_for(converged, timeout=180, interval=0.5, what="the burst's StaticRoutes")
        for ns, name in (routes[0], routes[-1]):
            await wait_condition(kube, ns, name, "Ready", "True", timeout=120)
        renewals_before = len(watcher.renewals)
        await wait_for(
            lambda: len(watcher.renewals) > renewals_before + 1, what="two more renewals"
        )
        assert_held_throughout(watcher, identity, process)


async def test_all_namespaces_among_200(
    control_plane: ControlPlane, kube: Kube, namespaces: list[str], operators: Spawn
) -> None:
    first, last = namespaces[0], namespaces[-1]
    lease = f"lease-{uuid.uuid4().hex[:8]}"
    async with watching_lease(kube, first, lease) as watcher:
        process = operators(control_plane.kubeconfig, *election_flags(first, lease))
        identity = await leading(process)
        for namespace in (first, last):
            await create_route(kube, staticroute("all", namespace))
        for namespace in (first, last):
            await wait_condition(kube, namespace, "all", "Ready", "True", timeout=60)
        assert_held_throughout(watcher, identity, process)
