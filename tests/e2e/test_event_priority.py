"""Converging takes two writes per StaticRoute; Events go out behind them, none lost.

A burst of new StaticRoutes makes one ``ConfigMapCreated`` Event each. Those Events
wait while the work queue is busy, so a StaticRoute a user changes during the burst
gets its ConfigMap written before the Event backlog is sent; once the queue is idle
every Event arrives. The plane is the module's own, so that no other operator (the
session's watches every namespace) writes or records anything in it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from router_controller.api import STATICROUTES
from router_controller.kube import Kube
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from tests.e2e.support import (
    admin_kube,
    config_of,
    create_route,
    run_operator,
    staticroute,
    try_get_cm,
    wait_for,
)

pytestmark = pytest.mark.cluster

BURST = 1000


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with envtest.running(crds=True) as fresh:
        yield fresh


@pytest.fixture(scope="module")
async def client(plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(plane) as kube:
        yield kube


@pytest.fixture
def ns(plane: ControlPlane, request: pytest.FixtureRequest) -> str:
    name = str(request.node.name).replace("_", "-")[5:40].strip("-")
    plane.kubectl("create", "namespace", name)
    return name


async def gather_limited(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


async def created_events(kube: Kube, namespace: str) -> int:
    listed = await kube.get(
        f"/api/v1/namespaces/{namespace}/events", fieldSelector="reason=ConfigMapCreated"
    )
    return len(listed.get("items") or [])


async def test_a_user_change_is_written_before_the_event_backlog_and_every_event_arrives(
    plane: ControlPlane, client: Kube, ns: str
) -> None:
    kube, namespace = client, ns
    async with run_operator(plane, namespaces=(namespace,), max_concurrent_reconciles=1) as manager:
        await create_route(kube, staticroute("changed", namespace))
        await wait_for(
            lambda: try_get_cm(kube, namespace, "changed-config"), what="the first ConfigMap"
        )
        await gather_limited(
            [
                functools.partial(create_route, kube, staticroute(f"burst-{n:04d}", namespace))
                for n in range(BURST)
            ],
            limit=32,
        )
        # The user changes a StaticRoute while the burst is being worked off.
        await kube.merge_patch(
            STATICROUTES.path(namespace, "changed"),
            {"spec": {"staticModels": "model-a,model-c"}},
        )

        async def updated() -> bool:
            cm = await try_get_cm(kube, namespace, "changed-config")
            return cm is not None and config_of(cm)["static_models"] == "model-a,model-c"

        await wait_for(updated, timeout=120, what="the changed StaticRoute's ConfigMap")
        sent_by_then = await created_events(kube, namespace)
        # Its ConfigMap came before the backlog of the burst's Events...
        assert sent_by_then < BURST // 2, (sent_by_then, manager.parts.recorder.pending)

        # ...and once the queue is idle, every Event of the burst arrives.
        async def all_sent() -> int:
            count = await created_events(kube, namespace)
            return count if count == BURST + 1 else 0

        await wait_for(all_sent, timeout=120, interval=0.5, what="every ConfigMapCreated event")
        assert manager.parts.recorder.pending == 0
        dropped = manager.metrics.registry.get_sample_value(
            "router_controller_events_dropped_total", {"reason": "buffer_full"}
        )
        assert not dropped


def converging_writes(plane: ControlPlane) -> dict[str, int]:
    return {
        "configmap creates": plane.request_count("POST", "configmaps"),
        "configmap updates": plane.request_count("APPLY", "configmaps")
        + plane.request_count("PATCH", "configmaps")
        + plane.request_count("PUT", "configmaps"),
        "status patches": plane.request_count("PATCH", "staticroutes", "status"),
    }


async def test_a_burst_converges_with_one_configmap_create_and_one_status_patch_each(
    plane: ControlPlane, client: Kube, ns: str
) -> None:
    count = 300
    before = await asyncio.to_thread(converging_writes, plane)
    async with run_operator(plane, namespaces=(ns,)) as manager:
        await gather_limited(
            [
                functools.partial(create_route, client, staticroute(f"r-{n:03d}", ns))
                for n in range(count)
            ],
            limit=32,
        )

        async def converged() -> bool:
            listed = await client.get(STATICROUTES.path(ns))
            return (
                sum(1 for r in listed["items"] if (r.get("status") or {}).get("configMapRef"))
                == count
            )

        await wait_for(converged, timeout=120, interval=0.2, what=f"{count} converged")
        await wait_for(
            lambda: manager.parts.queue.depth == 0 and manager.parts.recorder.idle,
            what="operator idle",
        )
        after = await asyncio.to_thread(converging_writes, plane)
    # Exactly what converging needs: no status patch from a stale copy (a 409), no
    # ConfigMap update, nothing twice.
    assert {k: after[k] - before[k] for k in after} == {
        "configmap creates": count,
        "configmap updates": 0,
        "status patches": count,
    }
