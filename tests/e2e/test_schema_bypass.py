"""A StaticRoute that got past the schema (an older, looser CRD) never reaches the router.

This module runs its own control plane whose CRD accepts any spec, as a cluster
with an outdated CRD would; the operator must then catch everything the router
would reject, say so on the status, and leave the last good ConfigMap alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_controller.api import STATICROUTES, default_config_map_name
from router_controller.kube import Kube
from router_controller.manager import Manager
from router_controller_dev import envtest
from tests.e2e.support import (
    REPO,
    admin_kube,
    condition,
    create_route,
    get_cm,
    run_operator,
    staticroute,
    wait_condition,
    wait_event,
)


def _loose_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(
        (REPO / "config/crd/bases/production-stack.vllm.ai_staticroutes.yaml").read_text()
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema.pop("x-kubernetes-validations", None)  # the root rules, as an older CRD had none
    return crd


@pytest.fixture(scope="module")
def loose_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[envtest.ControlPlane]:
    with envtest.running() as plane:
        path: Path = tmp_path_factory.mktemp("crd") / "crd.json"
        path.write_text(json.dumps(_loose_crd()))
        plane.kubectl("apply", "-f", str(path))
        plane.kubectl(
            "wait", "--for=condition=Established", "crd/staticroutes.production-stack.vllm.ai"
        )
        plane.kubectl("create", "namespace", "loose")
        yield plane


@pytest.fixture(scope="module")
async def loose_kube(loose_plane: envtest.ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(loose_plane) as client:
        yield client


@pytest.fixture(scope="module")
async def loose_operator(loose_plane: envtest.ControlPlane) -> AsyncIterator[Manager]:
    async with run_operator(loose_plane) as manager:
        yield manager


@pytest.mark.parametrize(
    ("name", "spec", "fragment"),
    [
        ("count", {"staticModels": "only-one"}, "has 2 URLs but spec.staticModels has 1"),
        ("shortname", {"staticBackends": "http://my-svc:8000,http://b.example.com"},
         "drops host names without a dot"),
        ("types", {"staticModelTypes": "chat"}, "one type per model"),
        ("logic", {"routingLogic": "fastest"}, "spec.routingLogic: Input should be"),
        ("unknown", {"callbacks": "evil.module"}, "spec.callbacks: Extra inputs are not permitted"),
        ("session", {"routingLogic": "session"}, "spec.sessionKey is required"),
        # What the router cannot serve from a file, though it would report it in /health.
        ("kvaware", {"routingLogic": "kvaware"}, "kvaware cannot be applied from a dynamic"),
        ("disagg", {"routingLogic": "disaggregated_prefill", "staticModelLabels": "p,d",
                    "prefillModelLabels": "p", "decodeModelLabels": "d"},
         "disaggregated_prefill cannot be applied from a dynamic"),
        ("labels", {"staticModelLabels": "only-one"}, "give one label per model"),
        ("alias", {"staticAliases": "fast:model-a,big:model-z"},
         "'big:model-z' points at 'model-z', which is not in spec.staticModels"),
        ("k8salias", {"serviceDiscovery": "k8s", "k8sPort": 8000, "staticAliases": "a:model-a"},
         "spec.staticAliases has no effect with serviceDiscovery k8s"),
    ],
)  # fmt: skip
async def test_invalid_spec_keeps_last_good_configmap(
    loose_kube: Kube, loose_operator: Manager, name: str, spec: dict[str, Any], fragment: str
) -> None:
    await create_route(loose_kube, staticroute(name, "loose"))
    await wait_condition(loose_kube, "loose", name, "Ready", "True")
    good = await get_cm(loose_kube, "loose", default_config_map_name(name))
    await loose_kube.merge_patch(STATICROUTES.path("loose", name), {"spec": spec})
    route = await wait_condition(loose_kube, "loose", name, "Ready", "False", reason="InvalidSpec")
    cm_ready = condition(route, "ConfigMapReady")
    assert cm_ready is not None
    assert cm_ready["reason"] == "InvalidSpec"
    assert fragment in cm_ready["message"]
    assert route["status"]["observedGeneration"] == route["metadata"]["generation"]
    after = await get_cm(loose_kube, "loose", default_config_map_name(name))
    assert after["metadata"]["resourceVersion"] == good["metadata"]["resourceVersion"]
    assert after["data"] == good["data"]
    event = await wait_event(loose_kube, "loose", name, "InvalidSpec")
    assert event["type"] == "Warning"
    assert fragment in event["message"]


async def test_a_name_too_long_for_the_default_configmap_is_invalid_spec(
    loose_kube: Kube, loose_operator: Manager
) -> None:
    name = "n" * 250  # "<name>-config" would be 257 characters: no ConfigMap may have it
    await create_route(loose_kube, staticroute(name, "loose"))
    route = await wait_condition(loose_kube, "loose", name, "Ready", "False", reason="InvalidSpec")
    cm_ready = condition(route, "ConfigMapReady")
    assert cm_ready is not None
    assert cm_ready["reason"] == "InvalidSpec"
    assert "set spec.configMapName" in cm_ready["message"]
    event = await wait_event(loose_kube, "loose", name, "InvalidSpec")
    assert "set spec.configMapName" in event["message"]


async def test_k8s_discovery_is_written_with_the_staticroutes_namespace(
    loose_kube: Kube, loose_operator: Manager
) -> None:
    """The companion value: without it the router's reload watches namespace=None."""
    route = staticroute(
        "k8s", "loose", serviceDiscovery="k8s", k8sPort=8000, staticBackends=None, staticModels=None
    )
    await create_route(loose_kube, route)
    await wait_condition(loose_kube, "loose", "k8s", "Ready", "True")
    cm = await get_cm(loose_kube, "loose", "k8s-config")
    assert json.loads(cm["data"]["dynamic_config.json"]) == {
        "k8s_namespace": "loose",
        "k8s_port": 8000,
        "routing_logic": "roundrobin",
        "service_discovery": "k8s",
    }
