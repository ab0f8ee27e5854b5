"""Services and EndpointSlices are cached trimmed, and routers are still found and probed.

The Service and EndpointSlice caches hold only the fields the prober reads (the
informer's ``transform``), so that the operator's memory does not grow with every
annotation, managed field and endpoint detail of a big cluster. These tests show,
on the real plane, that listed and watched objects both go through the transform,
and that a router behind a trimmed Service and EndpointSlice is probed as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from router_controller.informer import Informer, PackedEndpoints, trim_service
from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube, Object
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.fakerouter import FakeRouter, endpointslice, service
from tests.e2e.support import (
    create_route,
    get_cm,
    run_operator,
    staticroute,
    wait_condition,
    wait_for,
)

FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 1}
NOISE = {"example.com/notes": "n" * 2000}


def noisy_service(namespace: str, name: str, port: int) -> Object:
    body = service(namespace, name, port, labels={"app": "router"})
    body["metadata"]["annotations"] = dict(NOISE)
    return body


async def test_listed_and_watched_objects_are_transformed(kube: Kube, namespace: str) -> None:
    await kube.create(SERVICES.path(namespace), noisy_service(namespace, "listed", 8000))
    transformed: list[str] = []
    handled: list[tuple[str, Object]] = []

    def transform(obj: Object) -> Object:
        transformed.append(obj["metadata"]["name"])
        assert "annotations" in obj["metadata"], "the transform sees the object as sent"
        return trim_service(obj)

    informer = Informer(
        kube=kube,
        resource=SERVICES,
        namespaces=[namespace],
        handler=lambda kind, obj, _old: handled.append((kind, obj)),
        transform=transform,
    )
    task = asyncio.create_task(informer.start())
    try:
        await wait_for(informer.synced.is_set, what="the list")
        await kube.create(SERVICES.path(namespace), noisy_service(namespace, "watched", 8000))
        await wait_for(lambda: informer.get(namespace, "watched"), what="the watched Service")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert transformed == ["listed", "watched"]
    for name in ("listed", "watched"):
        cached = informer.get(namespace, name)
        assert cached is not None
        assert set(cached) == {"metadata", "spec"}
        assert "annotations" not in cached["metadata"]
        assert cached["metadata"]["labels"] == {"app": "router"}
        assert cached["spec"]["ports"][0]["name"] == "http"
    assert [(kind, obj["metadata"]["name"]) for kind, obj in handled] == [
        ("ADDED", "listed"),
        ("ADDED", "watched"),
    ]
    assert all("annotations" not in obj["metadata"] for _, obj in handled)


def noisy_slice(namespace: str, router: FakeRouter) -> Object:
    body = endpointslice(namespace, "router", 0, router.host, router.port)
    body["metadata"]["annotations"] = dict(NOISE)
    endpoint: dict[str, Any] = body["endpoints"][0]
    endpoint.update(
        nodeName="node-1",
        zone="zone-a",
        targetRef={"kind": "Pod", "namespace": namespace, "name": "router-0"},
        conditions={"ready": True, "serving": True, "terminating": False},
    )
    # A second endpoint that is not ready: never probed.
    body["endpoints"].append({"addresses": ["192.0.2.10"], "conditions": {"ready": False}})
    return body


async def test_a_router_is_probed_through_the_trimmed_caches(
    control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    async with FakeRouter() as router, run_operator(
        control_plane, namespaces=(namespace,)
    ) as manager:  # fmt: skip
        await kube.create(ENDPOINTSLICES.path(namespace), noisy_slice(namespace, router))
        await kube.create(SERVICES.path(namespace), noisy_service(namespace, "router", 8000))
        await create_route(
            kube, staticroute("r", namespace, routerRef={"name": "router"}, healthCheck=FAST)
        )
        cm = await wait_for(lambda: get_cm(kube, namespace, "r-config"), what="r-config")
        assert router.load_configmap(cm)
        ready = await wait_condition(kube, namespace, "r", "Ready", "True", timeout=60)
        assert [entry["address"] for entry in ready["status"]["routers"]] == [router.address]
        assert router.requests >= 1

        svc = manager.parts.services.get(namespace, "router")
        assert svc is not None
        assert set(svc) == {"metadata", "spec"}
        assert "annotations" not in svc["metadata"]
        [eps] = manager.parts.endpointslices.items(namespace)
        assert set(eps) == {"metadata", "addressType", "endpoints", "ports"}
        assert isinstance(eps["endpoints"], PackedEndpoints)
        assert list(eps["endpoints"]) == [
            {
                "addresses": [router.host],
                "conditions": {"ready": True, "serving": True, "terminating": False},
            },
            {"addresses": ["192.0.2.10"], "conditions": {"ready": False}},
        ]
        await kube.delete(
            f"/apis/production-stack.vllm.ai/v1alpha1/namespaces/{namespace}/staticroutes/r"
        )
