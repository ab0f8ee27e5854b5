"""A real API server throttles the operator (API Priority and Fairness): it keeps up.

The module runs a control plane of its own with Priority and Fairness on and the
server's concurrency sized (``--max-requests-inflight`` + ``--max-mutating-requests-
inflight`` = 200, the total of the built-in priority levels' shares being 245) so
that a priority level of ``nominalConcurrencyShares: 1`` that neither lends nor
borrows gets exactly one seat. A FlowSchema sends every request of the operator's
ServiceAccount there, with a queue of two: requests beyond that are answered 429 with
``Retry-After``, as on a busy production cluster.

While 1,000 StaticRoutes are created, every one must converge, the Lease (on the
same throttled flow) must never change hands, the operator's own
``rest_client_requests_total{code="429"}`` must show it was throttled, and its
retries must stay within the global retry budget.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router_controller.api import STATICROUTES
from router_controller.kube import Kube, RetryPolicy
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.processes import OperatorProcess
from tests.e2e.leases import (
    assert_held_throughout,
    election_flags,
    gather_limited,
    leading,
    watching_lease,
)
from tests.e2e.processes import Grants, Spawn, http_get, operator_account
from tests.e2e.support import admin_kube, create_route, staticroute, wait_for

ROUTES = 1000
LEVEL = "router-controller-throttled"


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    flags = (
        "--enable-priority-and-fairness=true",
        "--max-requests-inflight=150",
        "--max-mutating-requests-inflight=50",
    )
    with envtest.running(apiserver_flags=flags, crds=True) as plane:
        yield plane


@pytest.fixture(scope="module")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


def throttle(plane: ControlPlane, namespace: str, account: str) -> None:
    """One seat and a queue of two for everything ``account`` asks."""
    level = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": LEVEL},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 1,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {
                    "type": "Queue",
                    "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 2},
                },
            },
        },
    }
    schema = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": LEVEL},
        "spec": {
            "priorityLevelConfiguration": {"name": LEVEL},
            "matchingPrecedence": 50,  # before every built-in schema but exempt and probes
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }
    for obj in (level, schema):
        plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))


def seats(plane: ControlPlane) -> float:
    """The seats the API server gave the throttled level (its own metric)."""
    text = plane.get("/metrics").decode()
    for family in text_string_to_metric_families(text):
        if family.name == "apiserver_flowcontrol_nominal_limit_seats":
            for sample in family.samples:
                if sample.labels.get("priority_level") == LEVEL:
                    return sample.value
    return 0.0


async def operator_metrics(process: OperatorProcess) -> dict[str, float]:
    """rest_client_* sums: requests by code, and retries."""
    status, text = await http_get(await process.metrics_url())
    assert status == 200, text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rest_client_requests_total":
                code = sample.labels["code"]
                sums[code] = sums.get(code, 0.0) + sample.value
            elif sample.name == "rest_client_request_retries_total":
                sums["retries"] = sums.get("retries", 0.0) + sample.value
    return sums


async def test_throttled_operator_converges_and_keeps_its_lease(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    grants: Grants,
    operators: Spawn,
    tmp_path: Path,
) -> None:
    kubeconfig = operator_account(
        grants, namespace, tmp_path / "kubeconfig", "manager-role", "metrics-auth-role"
    )
    throttle(control_plane, namespace, "controller-manager")
    await wait_for(lambda: seats(control_plane) == 1, what="one seat for the throttled level")
    lease = f"lease-{uuid.uuid4().hex[:8]}"
    policy = RetryPolicy()
    async with watching_lease(kube, namespace, lease) as watcher:
        started = time.monotonic()
        process = operators(
            kubeconfig,
            # The production timings (15 s, 10 s, 2 s): the point is a throttled
            # flow, not a short deadline on a 2-core machine busy creating objects.
            *election_flags(namespace, lease, duration=15, renew=10, retry=2),
            f"--namespaces={namespace}",
            "--metrics-bind-address=127.0.0.1:0",
            "--metrics-secure=false",
        )
        identity = await leading(process)
        await gather_limited(
            (create_route(kube, staticroute(f"r-{i}", namespace)) for i in range(ROUTES)),
            limit=10,
        )

        async def converged() -> bool:
            assert process.running, f"the operator exited:\n{process.output[-3000:]}"
            listed = await kube.get(STATICROUTES.path(namespace))
            items = listed.get("items", [])
            ready = sum(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (item.get("status") or {}).get("conditions") or []
                )
                for item in items
            )
            return len(items) == ROUTES and ready == ROUTES

        await wait_for(converged, timeout=600, interval=1.0, what="every StaticRoute Ready")
        sums = await operator_metrics(process)
        elapsed = time.monotonic() - started
        assert_held_throughout(watcher, identity, process)
    assert sums.get("429", 0) > 0, f"the operator was never throttled: {sums}"
    retries = sums.get("retries", 0)
    assert retries > 0, sums
    # The global budget: ``burst`` at once, then ``rate`` a second, for the whole process
    # (the Lease's own retries are outside it, at most one a second for its requests).
    assert retries <= policy.burst + (policy.rate + 1) * elapsed, (retries, elapsed, sums)
