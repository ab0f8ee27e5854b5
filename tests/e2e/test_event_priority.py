"""Events go out behind the writes that converge StaticRoutes, and none is lost.

A burst of new StaticRoutes makes one ``ConfigMapCreated`` Event each. Those Events
wait while the work queue is busy, so a StaticRoute a user changes during the burst
gets its ConfigMap written before the Event backlog is sent; once the queue is idle
every Event arrives.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from router_controller.envtest import ControlPlane
from router_controller.kube import Kube
from router_controller.reconciler import STATICROUTES
from tests.e2e.support import (
    config_of,
    create_route,
    run_operator,
    staticroute,
    try_get_cm,
    wait_for,
)

pytestmark = pytest.mark.cluster

BURST = 1000


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
    control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    async with run_operator(
        control_plane, namespaces=(namespace,), max_concurrent_reconciles=1
    ) as manager:
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
        assert sent_by_then < BURST // 2, (sent_by_then, manager.recorder.pending)

        # ...and once the queue is idle, every Event of the burst arrives.
        async def all_sent() -> int:
            count = await created_events(kube, namespace)
            return count if count == BURST + 1 else 0

        await wait_for(all_sent, timeout=120, interval=0.5, what="every ConfigMapCreated event")
        assert manager.recorder.pending == 0
        dropped = manager.metrics.registry.get_sample_value(
            "router_controller_events_dropped_total", {"reason": "buffer_full"}
        )
        assert not dropped
