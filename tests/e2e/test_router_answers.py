"""Whatever a router answers, the operator's memory stays bounded and the status is written.

A tenant's "router" can answer ``/health`` with tens of MiB, or with a ``status``
string longer than a condition may hold. The operator runs here as its own process
(``python -m router_controller``), as a user runs it, so its resident memory can be
read from ``/proc``; it is the only operator on a control plane of this module's own
(the session operator would probe the same routers and write the same status). What
is checked is what a user sees: the StaticRoute's status, written and short, the
operator's log free of refused (422) status writes, and its peak RSS while it probes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from router_controller.api import STATICROUTES
from router_controller.kube import Kube
from router_controller.routerstate import MAX_ENDPOINT_MESSAGE
from router_controller_dev import envtest, procstat
from router_controller_dev.fakerouter import FakeRouter, expose
from router_controller_dev.hostile import (
    HugeRouter,
    expose_at,
    long_status,
)
from tests.e2e.processes import Spawn, http_status
from tests.e2e.support import (
    admin_kube,
    condition,
    create_route,
    staticroute,
    wait_condition,
    wait_for,
)

pytestmark = pytest.mark.cluster

NS = "answers"


@pytest.fixture(scope="module")
def plane() -> Iterator[envtest.ControlPlane]:
    with envtest.running(crds=True) as started:
        started.kubectl("create", "namespace", NS)
        yield started


@pytest.fixture(scope="module")
async def client(plane: envtest.ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(plane) as kube:
        yield kube


async def test_huge_and_long_answers_leave_memory_bounded_and_the_status_written(
    plane: envtest.ControlPlane, client: Kube, operators: Spawn
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        healthy = await stack.enter_async_context(FakeRouter())
        huge = await stack.enter_async_context(HugeRouter(50 * procstat.MIB))
        chatty = await stack.enter_async_context(long_status(40_000))
        await expose(client, NS, "warm", [healthy])
        await expose_at(client, NS, "hostile", [(huge.host, huge.port), (chatty.host, chatty.port)])

        process = operators(plane.kubeconfig, f"--namespaces={NS}")
        readyz = await process.probe_url("/readyz")
        await wait_for(lambda: _ok(readyz), timeout=60, what="the operator ready")
        assert process.proc is not None
        pid = process.proc.pid

        # Warm up every code path a probe takes, against a well-behaved router.
        check = {"periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 1}
        await create_route(
            client, staticroute("warm", NS, routerRef={"name": "warm"}, healthCheck=check)
        )
        await wait_condition(client, NS, "warm", "RouterHealthy", "True", timeout=60)
        await wait_for(lambda: healthy.requests >= 2, what="a second probe of the warm router")
        baseline = procstat.memory_bytes(pid)["VmRSS"]
        procstat.reset_peak(pid)

        await create_route(
            client, staticroute("r", NS, routerRef={"name": "hostile"}, healthCheck=check)
        )

        # Several rounds of 50 MiB answers, then the memory they cost at the peak.
        await wait_for(lambda: huge.connections >= 4, timeout=60, what="four probes of 50 MiB")
        peak = procstat.memory_bytes(pid)["VmHWM"]
        grown = (peak - baseline) / procstat.MIB
        assert grown <= 20, (
            f"peak RSS {grown:.1f} MiB above the baseline of {baseline / procstat.MIB:.1f}"
        )

        async def both_down() -> dict[str, Any] | None:
            route = await client.get(STATICROUTES.path(NS, "r"))
            routers = (route.get("status") or {}).get("routers") or []
            if len(routers) == 2 and not any(r["healthy"] for r in routers):
                return route
            return None

        route = await wait_for(both_down, timeout=60, what="both hostile endpoints unhealthy")
        by_address = {r["address"]: r["message"] for r in route["status"]["routers"]}
        assert by_address[huge.address].startswith("GET /health answered 200 with a body over 256")
        assert by_address[chatty.address].startswith("GET /health answered 200 with status 'xxx")
        assert all(len(m) <= MAX_ENDPOINT_MESSAGE for m in by_address.values())
        healthy_condition = condition(route, "RouterHealthy") or {}
        assert healthy_condition["reason"] == "RouterUnhealthy"
        assert len(healthy_condition["message"]) < 2048
        assert ": 422 " not in process.output, "a status write was refused"
        assert chatty.answers >= 1


async def _ok(url: str) -> bool:
    return await http_status(url) == 200
