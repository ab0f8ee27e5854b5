"""The ConfigMap and status contract, observed through the API of a real control plane."""

from __future__ import annotations

import datetime
import json

from router_controller.api import STATICROUTES
from router_controller.kube import CONFIGMAPS, Kube
from router_controller.manager import Manager
from tests.e2e.support import (
    condition,
    create_route,
    get_cm,
    get_route,
    settled,
    staticroute,
    try_get_cm,
    wait_condition,
    wait_event,
    wait_for,
)

EXPECTED_BYTES = (
    "{\n"
    '  "routing_logic": "roundrobin",\n'
    '  "service_discovery": "static",\n'
    '  "static_backends": "http://a.example.com:8000,http://10.1.2.3:8000",\n'
    '  "static_models": "model-a,model-b"\n'
    "}\n"
)


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


async def _next_second(after: str) -> bool:
    return datetime.datetime.now(datetime.UTC) >= _parse(after) + datetime.timedelta(seconds=1)


async def test_create_writes_configmap_and_status(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    route = await create_route(
        kube,
        staticroute(
            "r1", namespace,
            staticBackends=" http://a.example.com:8000 , http://10.1.2.3:8000",
            staticModels="model-a , model-b ",
        ),
    )  # fmt: skip
    ready = await wait_condition(kube, namespace, "r1", "Ready", "True")
    cm = await get_cm(kube, namespace, "r1-config")
    assert cm["data"] == {"dynamic_config.json": EXPECTED_BYTES}
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "router-controller"
    assert cm["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "production-stack.vllm.ai/v1alpha1",
            "kind": "StaticRoute",
            "name": "r1",
            "uid": route["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    status = ready["status"]
    assert status["configMapRef"] == "r1-config"
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    assert _parse(status["lastAppliedTime"]) <= datetime.datetime.now(datetime.UTC)
    cm_ready = condition(ready, "ConfigMapReady")
    assert cm_ready is not None
    assert cm_ready["status"] == "True"
    assert cm_ready["observedGeneration"] == ready["metadata"]["generation"]
    assert "routers" not in status
    event = await wait_event(kube, namespace, "r1", "ConfigMapCreated")  # sent behind the writes
    assert event["type"] == "Normal"


async def test_spec_update_rewrites_and_label_update_does_not(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    await create_route(kube, staticroute("r2", namespace))
    first = (await wait_condition(kube, namespace, "r2", "Ready", "True"))["status"]
    await wait_for(lambda: _next_second(first["lastAppliedTime"]), what="the clock to move on")
    path = STATICROUTES.path(namespace, "r2")
    await kube.merge_patch(path, {"spec": {"staticModels": "model-a,model-c"}})

    async def rewritten() -> bool:
        cm = await get_cm(kube, namespace, "r2-config")
        return bool(
            json.loads(cm["data"]["dynamic_config.json"])["static_models"] == "model-a,model-c"
        )

    await wait_for(rewritten, what="ConfigMap rewritten")
    updated = await wait_for(
        lambda: _status_moved(kube, namespace, "r2", first["lastAppliedTime"]),
        what="lastAppliedTime to move",
    )
    assert updated["status"]["observedGeneration"] == 2
    cm_before = await get_cm(kube, namespace, "r2-config")
    status_before = updated["status"]

    await kube.merge_patch(path, {"metadata": {"labels": {"team": "blue"}}})
    await settled(operator, kube, namespace, "r2")
    cm_after = await get_cm(kube, namespace, "r2-config")
    assert cm_after["metadata"]["resourceVersion"] == cm_before["metadata"]["resourceVersion"]
    after = await get_route(kube, namespace, "r2")
    assert after["status"] == status_before


async def _status_moved(kube: Kube, namespace: str, name: str, before: str) -> dict[str, object]:
    """The StaticRoute once lastAppliedTime moved past ``before`` (else a falsy-free dict)."""
    route = await get_route(kube, namespace, name)
    status = route.get("status") or {}
    if status.get("lastAppliedTime", before) > before and status.get("observedGeneration") == 2:
        return route
    return {}


async def test_drift_is_repaired(kube: Kube, operator: Manager, namespace: str) -> None:
    await create_route(kube, staticroute("r3", namespace))
    await wait_condition(kube, namespace, "r3", "Ready", "True")
    path = CONFIGMAPS.path(namespace, "r3-config")
    await kube.merge_patch(path, {"data": {"dynamic_config.json": "{}", "extra": "x"}})

    async def restored(data: dict[str, str]) -> bool:
        cm = await get_cm(kube, namespace, "r3-config")
        return bool(cm["data"] == data)

    # Our key is repaired; a key somebody else added is theirs, and left alone.
    repaired = {"dynamic_config.json": EXPECTED_BYTES, "extra": "x"}
    await wait_for(lambda: restored(repaired), what="edited ConfigMap restored")
    await kube.delete(path)
    await wait_for(
        lambda: restored({"dynamic_config.json": EXPECTED_BYTES}),
        what="deleted ConfigMap recreated",
    )


async def test_foreign_configmap_is_never_touched(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "shared", "namespace": namespace},
        "data": {"dynamic_config.json": '{"mine": true}'},
    }
    made = await kube.create(CONFIGMAPS.path(namespace), foreign)
    await create_route(kube, staticroute("r4", namespace, configMapName="shared"))
    route = await wait_condition(
        kube, namespace, "r4", "ConfigMapReady", "False", reason="ConfigMapConflict"
    )
    message = condition(route, "ConfigMapReady")["message"]  # type: ignore[index]
    assert f"{namespace}/shared" in message
    assert "configMapName" in message
    ready = condition(route, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    after = await get_cm(kube, namespace, "shared")
    assert after["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]
    assert after["data"] == foreign["data"]
    assert "ownerReferences" not in after["metadata"]
    event = await wait_event(kube, namespace, "r4", "ConfigMapConflict")
    assert event["type"] == "Warning"
    assert f"{namespace}/shared" in event["message"]


async def test_second_staticroute_on_same_configmap_conflicts(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    first = await create_route(kube, staticroute("first", namespace, configMapName="one"))
    await wait_condition(kube, namespace, "first", "Ready", "True")
    await create_route(kube, staticroute("second", namespace, configMapName="one",
                                         staticModels="x,y"))  # fmt: skip
    route = await wait_condition(
        kube, namespace, "second", "ConfigMapReady", "False", reason="ConfigMapConflict"
    )
    assert "StaticRoute first" in condition(route, "ConfigMapReady")["message"]  # type: ignore[index]
    cm = await get_cm(kube, namespace, "one")
    assert cm["metadata"]["ownerReferences"][0]["uid"] == first["metadata"]["uid"]
    assert json.loads(cm["data"]["dynamic_config.json"])["static_models"] == "model-a,model-b"

    # Once the first StaticRoute and (by garbage collection) its ConfigMap are gone,
    # the name is free and the second one takes it, without waiting for a re-check.
    await kube.delete(STATICROUTES.path(namespace, "first"))
    await wait_condition(kube, namespace, "second", "Ready", "True", timeout=120)
    cm = await get_cm(kube, namespace, "one")
    assert json.loads(cm["data"]["dynamic_config.json"])["static_models"] == "x,y"


async def test_renaming_configmap_deletes_the_old_one(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    await create_route(kube, staticroute("r5", namespace, configMapName="old-name"))
    await wait_condition(kube, namespace, "r5", "Ready", "True")
    await kube.merge_patch(
        STATICROUTES.path(namespace, "r5"), {"spec": {"configMapName": "new-name"}}
    )
    await wait_for(lambda: try_get_cm(kube, namespace, "new-name"), what="new ConfigMap")

    async def old_gone() -> bool:
        return await try_get_cm(kube, namespace, "old-name") is None

    await wait_for(old_gone, what="old ConfigMap deleted")
    route = await wait_for(
        lambda: _ref_is(kube, namespace, "r5", "new-name"), what="configMapRef updated"
    )
    assert route


async def _ref_is(kube: Kube, namespace: str, name: str, ref: str) -> bool:
    route = await get_route(kube, namespace, name)
    return bool((route.get("status") or {}).get("configMapRef") == ref)


async def test_deleting_staticroute_garbage_collects_configmap(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    await create_route(kube, staticroute("r6", namespace))
    await wait_condition(kube, namespace, "r6", "Ready", "True")
    await kube.delete(STATICROUTES.path(namespace, "r6"))

    async def collected() -> bool:
        return await try_get_cm(kube, namespace, "r6-config") is None

    await wait_for(collected, timeout=120, what="ConfigMap garbage-collected")


async def test_a_deleted_staticroute_leaves_no_condition_series(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    """A StaticRoute without routers has no probe state, yet its condition series go
    with it: label sets stay bounded however many StaticRoutes come and go."""

    def ready_series() -> float | None:
        return operator.metrics.registry.get_sample_value(
            "router_controller_staticroute_condition",
            {"namespace": namespace, "staticroute": "r7", "type": "Ready", "status": "True"},
        )

    await create_route(kube, staticroute("r7", namespace))
    await wait_condition(kube, namespace, "r7", "Ready", "True")
    await wait_for(lambda: ready_series() == 1.0, what="Ready series exported")
    await kube.delete(STATICROUTES.path(namespace, "r7"))
    await wait_for(lambda: ready_series() is None, what="condition series dropped")
