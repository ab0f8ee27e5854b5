"""The routers' ConfigMap is never lost, never clobbered, and every failed write is visible.

Observed through the API of a real control plane, with the faults a real cluster has:
a ``configMapName`` changed to a name somebody else's ConfigMap holds; other tools'
finalizers, labels, annotations and keys on our ConfigMap; a ConfigMap marked
``immutable``; creates refused by a ValidatingAdmissionPolicy (built into
kube-apiserver: a real denial, as a webhook's would be, without a webhook server) with
a 422 and with a 403, and by a ResourceQuota. RBAC denials (reason ``Forbidden``) are
covered in test_rbac.py; here every other refusal must say ``ApplyFailed`` with the
API server's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from router_controller.api import STATICROUTES
from router_controller.kube import CONFIGMAPS, ApiError, Conflict, Kube, Object
from router_controller.manager import Manager
from router_controller_dev.envtest import ControlPlane
from tests.e2e.support import (
    condition,
    config_of,
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

pytestmark = pytest.mark.cluster

FINALIZER = "example.com/keep"


def _foreign(namespace: str, name: str) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"dynamic_config.json": '{"somebody": "else"}'},
    }


# -- a changed configMapName -------------------------------------------------------------


async def test_a_new_name_held_by_a_foreign_configmap_keeps_the_old_one(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    await create_route(kube, staticroute("r", namespace, configMapName="mine"))
    await wait_condition(kube, namespace, "r", "Ready", "True")
    mine = await get_cm(kube, namespace, "mine")
    taken = await kube.create(CONFIGMAPS.path(namespace), _foreign(namespace, "taken"))

    await kube.merge_patch(
        STATICROUTES.path(namespace, "r"),
        {"spec": {"configMapName": "taken", "staticModels": "model-a,model-c"}},
    )
    route = await wait_condition(
        kube, namespace, "r", "ConfigMapReady", "False", reason="ConfigMapConflict"
    )
    assert route["status"]["observedGeneration"] == route["metadata"]["generation"]
    await settled(operator, kube, namespace, "r")
    # The routers keep mounting the old ConfigMap, byte for byte what it was.
    kept = await get_cm(kube, namespace, "mine")
    assert kept["metadata"]["uid"] == mine["metadata"]["uid"]
    assert kept["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
    assert kept["data"] == mine["data"]
    assert route["status"]["configMapRef"] == "mine"
    foreign = await get_cm(kube, namespace, "taken")
    assert foreign["metadata"]["resourceVersion"] == taken["metadata"]["resourceVersion"]


async def _watch_configmaps(
    kube: Kube, namespace: str, resource_version: str, seen: list[tuple[str, Object]]
) -> None:
    async for event in kube.watch(
        CONFIGMAPS.path(namespace),
        params={"resourceVersion": resource_version},
        stall_timeout=120,
    ):
        seen.append((str(event["type"]), event["object"]))  # noqa: PERF401 (read while it grows)


@contextlib.asynccontextmanager
async def watching(kube: Kube, namespace: str) -> AsyncIterator[list[tuple[str, Object]]]:
    """The namespace's ConfigMap events, in the order the API server serialised them."""
    listed = await kube.get(CONFIGMAPS.path(namespace))
    seen: list[tuple[str, Object]] = []
    task = asyncio.create_task(
        _watch_configmaps(kube, namespace, listed["metadata"]["resourceVersion"], seen)
    )
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_free_new_name_is_written_before_the_old_one_is_deleted(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    await create_route(kube, staticroute("r", namespace, configMapName="old-name"))
    await wait_condition(kube, namespace, "r", "Ready", "True")
    async with watching(kube, namespace) as seen:
        await kube.merge_patch(
            STATICROUTES.path(namespace, "r"),
            {"spec": {"configMapName": "new-name", "staticModels": "model-a,model-c"}},
        )

        def order() -> list[tuple[str, str]]:
            names = [(kind, obj["metadata"]["name"]) for kind, obj in seen]
            return names if ("DELETED", "old-name") in names else []

        events = await wait_for(order, what="the old ConfigMap deleted")
    first_new = next(
        obj for kind, obj in seen if kind == "ADDED" and obj["metadata"]["name"] == "new-name"
    )
    assert events.index(("ADDED", "new-name")) < events.index(("DELETED", "old-name")), events
    # The new one held the current spec when it appeared.
    assert config_of(first_new)["static_models"] == "model-a,model-c"

    async def current() -> Object | None:
        route = await get_route(kube, namespace, "r")
        status = route.get("status") or {}
        fresh = status.get("observedGeneration") == route["metadata"]["generation"]
        return route if fresh else None

    route = await wait_for(current, what="the status of the new generation")
    assert (condition(route, "Ready") or {}).get("status") == "True"
    assert route["status"]["configMapRef"] == "new-name"
    deleted = await wait_event(kube, namespace, "r", "ConfigMapDeleted")
    assert "old-name" in deleted["message"]


# -- patching only what is ours ----------------------------------------------------------


async def test_other_tools_metadata_and_keys_survive_a_spec_change(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    route = await create_route(kube, staticroute("r", namespace))
    await wait_condition(kube, namespace, "r", "Ready", "True")
    path = CONFIGMAPS.path(namespace, "r-config")
    others = {
        "metadata": {
            "finalizers": [FINALIZER],
            "labels": {"team": "blue"},
            "annotations": {"example.com/note": "kept"},
        },
        "data": {"notes.txt": "not the operator's"},
    }
    await kube.merge_patch(path, others)
    try:
        await kube.merge_patch(
            STATICROUTES.path(namespace, "r"), {"spec": {"staticModels": "model-a,model-c"}}
        )

        async def updated() -> Object | None:
            cm = await get_cm(kube, namespace, "r-config")
            return cm if config_of(cm)["static_models"] == "model-a,model-c" else None

        cm = await wait_for(updated, what="the ConfigMap updated")
        meta = cm["metadata"]
        assert meta["finalizers"] == [FINALIZER]
        assert meta["labels"] == {
            "team": "blue",
            "app.kubernetes.io/managed-by": "router-controller",
        }
        assert meta["annotations"] == {"example.com/note": "kept"}
        assert cm["data"]["notes.txt"] == "not the operator's"
        assert [ref["uid"] for ref in meta["ownerReferences"]] == [route["metadata"]["uid"]]
    finally:
        await kube.merge_patch(path, {"metadata": {"finalizers": None}})


async def test_another_apply_of_our_key_is_told_it_conflicts(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    """Server-side apply records the operator's fields: a second applier learns of it."""
    await create_route(kube, staticroute("r", namespace))
    await wait_condition(kube, namespace, "r", "Ready", "True")
    await kube.merge_patch(  # drift, so that the operator writes with its apply
        CONFIGMAPS.path(namespace, "r-config"), {"data": {"dynamic_config.json": "{}"}}
    )

    async def repaired() -> bool:
        cm = await get_cm(kube, namespace, "r-config")
        return bool(cm["data"]["dynamic_config.json"] != "{}")

    await wait_for(repaired, what="the edited key repaired")
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "r-config", "namespace": namespace},
        "data": {"dynamic_config.json": '{"somebody": "else"}'},
    }
    with pytest.raises(Conflict) as refused:
        await kube.request(
            "PATCH",
            CONFIGMAPS.path(namespace, "r-config"),
            params={"fieldManager": "another-tool"},
            body=body,
            content_type="application/apply-patch+yaml",
        )
    assert "router-controller" in refused.value.message
    assert ".data.dynamic_config.json" in refused.value.message


async def _rest_errors(operator: Manager, code: str) -> float:
    total = 0.0
    for family in operator.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "rest_client_requests_total" and sample.labels["code"] == code:
                total += sample.value
    return total


async def test_an_immutable_configmap_is_reported_not_retried(
    kube: Kube, operator: Manager, namespace: str
) -> None:
    await create_route(kube, staticroute("r", namespace))
    await wait_condition(kube, namespace, "r", "Ready", "True")
    path = CONFIGMAPS.path(namespace, "r-config")
    frozen = await kube.merge_patch(path, {"immutable": True})
    refused_before = await _rest_errors(operator, "422")

    await kube.merge_patch(
        STATICROUTES.path(namespace, "r"), {"spec": {"staticModels": "model-a,model-c"}}
    )
    route = await wait_condition(
        kube, namespace, "r", "ConfigMapReady", "False", reason="ConfigMapImmutable"
    )
    message = condition(route, "ConfigMapReady")["message"]  # type: ignore[index]
    assert f"{namespace}/r-config is marked immutable" in message
    assert "Delete it" in message
    assert (condition(route, "Ready") or {}).get("reason") == "ConfigMapImmutable"
    event = await wait_event(kube, namespace, "r", "ConfigMapImmutable")
    assert event["type"] == "Warning"
    await settled(operator, kube, namespace, "r")
    # Never a write the API server must refuse, and the routers' file is left alone.
    assert await _rest_errors(operator, "422") == refused_before
    kept = await get_cm(kube, namespace, "r-config")
    assert kept["metadata"]["resourceVersion"] == frozen["metadata"]["resourceVersion"]

    # As the message says: delete it, and the operator writes the current spec.
    await kube.delete(path)
    await wait_condition(kube, namespace, "r", "Ready", "True")
    cm = await get_cm(kube, namespace, "r-config")
    assert config_of(cm)["static_models"] == "model-a,model-c"
    assert "immutable" not in cm


# -- writes the API server refuses -------------------------------------------------------


def _apply(plane: ControlPlane, *objects: Object) -> None:
    for obj in objects:
        plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))


@contextlib.contextmanager
def deny_policy(
    plane: ControlPlane, namespace: str, configmap: str, message: str, reason: str | None
) -> Iterator[Callable[[], None]]:
    """A ValidatingAdmissionPolicy refusing ConfigMap ``configmap`` in ``namespace``.

    ``reason`` None answers 422 Invalid (the API's default), "Forbidden" a 403.
    """
    name = f"deny-{namespace}"
    validation: dict[str, Any] = {
        "expression": f"object.metadata.name != '{configmap}'",
        "message": message,
    }
    if reason:
        validation["reason"] = reason
    _apply(
        plane,
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["configmaps"],
                        }
                    ]
                },
                "validations": [validation],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    )

    def remove() -> None:
        plane.kubectl("delete", "validatingadmissionpolicybinding", name, check=False)
        plane.kubectl("delete", "validatingadmissionpolicy", name, check=False)

    try:
        yield remove
    finally:
        remove()


async def refused(kube: Kube, namespace: str, name: str, fragment: str) -> ApiError | None:
    """A server-side dry run creating ConfigMap ``name``: its error, once it says ``fragment``."""
    try:
        await kube.request(
            "POST",
            CONFIGMAPS.path(namespace),
            params={"dryRun": "All"},
            body=_foreign(namespace, name),
        )
    except ApiError as err:
        return err if fragment in err.message else None
    return None


async def _refused_then_healed(
    kube: Kube, namespace: str, fragment: str, status: int, heal: Callable[[], None]
) -> None:
    """The operator's create is refused: ApplyFailed with the API's message, then it heals."""
    probe = await wait_for(
        lambda: refused(kube, namespace, "blocked-config", fragment),
        what="the refusal in force",
    )
    assert probe.status == status
    await create_route(kube, staticroute("blocked", namespace))
    route = await wait_condition(
        kube, namespace, "blocked", "ConfigMapReady", "False", reason="ApplyFailed"
    )
    message = condition(route, "ConfigMapReady")["message"]  # type: ignore[index]
    assert message.startswith(f"could not create ConfigMap {namespace}/blocked-config")
    assert f"(HTTP {status})" in message
    assert probe.message in message  # the API server's own words
    ready = condition(route, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    event = await wait_event(kube, namespace, "blocked", "ApplyFailed")
    assert event["type"] == "Warning"
    assert fragment in event["message"]
    assert await try_get_cm(kube, namespace, "blocked-config") is None

    heal()  # retried with backoff: the write goes through once the refusal is gone
    await wait_condition(kube, namespace, "blocked", "Ready", "True", timeout=120)
    assert await try_get_cm(kube, namespace, "blocked-config") is not None


async def test_a_create_refused_with_422_by_an_admission_policy_is_apply_failed(
    control_plane: ControlPlane, kube: Kube, operator: Manager, namespace: str
) -> None:
    text = "ConfigMaps named blocked-config are refused by the cluster's policy"
    with deny_policy(control_plane, namespace, "blocked-config", text, None) as remove:
        await _refused_then_healed(kube, namespace, text, 422, remove)


async def test_a_create_denied_with_403_by_an_admission_policy_is_not_called_rbac(
    control_plane: ControlPlane, kube: Kube, operator: Manager, namespace: str
) -> None:
    text = "ConfigMaps named blocked-config are forbidden by the cluster's policy"
    with deny_policy(control_plane, namespace, "blocked-config", text, "Forbidden") as remove:
        await _refused_then_healed(kube, namespace, text, 403, remove)


async def test_a_create_over_quota_is_not_called_rbac(
    control_plane: ControlPlane, kube: Kube, operator: Manager, namespace: str
) -> None:
    # No quota controller runs on the test plane, so the test writes the usage the
    # admission plugin checks against: the namespace is at its limit of one ConfigMap.
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "configmaps", "namespace": namespace},
        "spec": {"hard": {"count/configmaps": "1"}},
    }
    _apply(control_plane, quota)
    control_plane.kubectl(
        "patch", "resourcequota", "configmaps", "-n", namespace, "--subresource=status",
        "--type=merge", "-p",
        json.dumps({"status": {"hard": {"count/configmaps": "1"},
                               "used": {"count/configmaps": "1"}}}),
    )  # fmt: skip

    def remove() -> None:
        control_plane.kubectl("delete", "resourcequota", "configmaps", "-n", namespace)

    await _refused_then_healed(kube, namespace, "exceeded quota", 403, remove)


async def test_a_new_name_whose_create_is_refused_keeps_the_old_configmap(
    control_plane: ControlPlane, kube: Kube, operator: Manager, namespace: str
) -> None:
    await create_route(kube, staticroute("r", namespace, configMapName="mine"))
    await wait_condition(kube, namespace, "r", "Ready", "True")
    mine = await get_cm(kube, namespace, "mine")
    text = "ConfigMaps named blocked-config are refused by the cluster's policy"
    with deny_policy(control_plane, namespace, "blocked-config", text, None):
        await wait_for(
            lambda: refused(kube, namespace, "blocked-config", text), what="the policy in force"
        )
        await kube.merge_patch(
            STATICROUTES.path(namespace, "r"), {"spec": {"configMapName": "blocked-config"}}
        )
        route = await wait_condition(
            kube, namespace, "r", "ConfigMapReady", "False", reason="ApplyFailed"
        )
        assert text in condition(route, "ConfigMapReady")["message"]  # type: ignore[index]
        kept = await get_cm(kube, namespace, "mine")
        assert kept["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
        assert kept["data"] == mine["data"]
    # Once the policy is gone the retry writes the new one, and only then the old goes.
    await wait_condition(kube, namespace, "r", "Ready", "True", timeout=120)

    async def old_gone() -> bool:
        return await try_get_cm(kube, namespace, "mine") is None

    await wait_for(old_gone, what="the old ConfigMap deleted")
    assert await try_get_cm(kube, namespace, "blocked-config") is not None
