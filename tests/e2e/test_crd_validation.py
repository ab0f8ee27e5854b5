"""The deploy tree and the StaticRoute CRD, judged by a real kube-apiserver.

Whether a CEL rule compiles, fits the API server's cost budget and says something a
user understands can only be known by sending objects to the API server: these
tests install ``config/crd`` and the sample the way a user does (``kubectl apply
-k``), then create a table of broken StaticRoutes and check each is refused with a
message naming the field, and a few unusual but valid ones are accepted, both by the
API server and by the operator's own rules. Every ``config/`` directory must render,
and the rendered tree must pass a server-side dry run.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_controller import api, routerconfig
from router_controller_dev import repo
from router_controller_dev.envtest import ControlPlane

pytestmark = pytest.mark.cluster

REPO = repo.root()
CONFIG = REPO / "config"
CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
CONFIG_DIRS = ("crd", "rbac", "manager", "default", "prometheus", "network-policy", "samples")

BACKENDS = "http://opt.default.svc.cluster.local:8000,http://phi.default.svc.cluster.local:8000"
MODELS = "facebook/opt-125m,microsoft/Phi-3-mini-4k-instruct"

Object = dict[str, Any]


def _spec(**changes: Any) -> Object:
    """A valid static spec with ``changes`` applied; a value of None removes the field."""
    spec: Object = {"staticBackends": BACKENDS, "staticModels": MODELS}
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def _route(name: str, spec: Object) -> str:
    return json.dumps(
        {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
    )


def _get(plane: ControlPlane, namespace: str, name: str) -> Object:
    out = plane.kubectl("get", f"{api.PLURAL}.{api.GROUP}", name, "-n", namespace, "-o", "json")
    result: Object = json.loads(out.stdout)
    return result


def _documents(text: str) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _kustomize(directory: Path) -> str:
    """Render a kustomization locally; no API server is involved."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return result.stdout


# --- installing ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> Object:
    """``kubectl apply -k config/crd`` as ``make install`` does; the CRD once Established."""
    control_plane.kubectl("apply", "-k", str(CONFIG / "crd"))
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}")
    result: Object = json.loads(control_plane.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    return result


def test_crd_is_established_and_structural(crd: Object) -> None:
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert conditions.get("NonStructuralSchema", "False") == "False"
    assert crd["status"]["acceptedNames"]["kind"] == api.KIND


def test_sample_applies_and_reads_back_with_defaults(
    control_plane: ControlPlane, crd: Object, namespace: str
) -> None:
    control_plane.kubectl("apply", "-k", str(CONFIG / "samples"), "-n", namespace)
    sample = _get(control_plane, namespace, "staticroute-sample")
    spec = sample["spec"]
    assert spec["serviceDiscovery"] == "static"
    assert spec["routingLogic"] == "roundrobin"
    assert spec["healthCheck"] == {
        "timeoutSeconds": 5,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert spec["routerRef"] == {"kind": "Service", "apiVersion": "v1", "name": "vllm-router"}
    assert spec["configMapName"] == "vllm-router-config"
    # What the API server stores is what the operator can render for the router.
    rendered = routerconfig.render(api.StaticRouteSpec.model_validate(spec))
    assert rendered.content["static_backends"] == spec["staticBackends"]


def test_server_applies_defaults(control_plane: ControlPlane, crd: Object, namespace: str) -> None:
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", input=_route("minimal", _spec(healthCheck={}))
    )
    spec = _get(control_plane, namespace, "minimal")["spec"]
    assert spec == {
        "serviceDiscovery": "static",
        "routingLogic": "roundrobin",
        "staticBackends": BACKENDS,
        "staticModels": MODELS,
        "healthCheck": {
            "timeoutSeconds": 5,
            "periodSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
    }


# --- what the API server refuses ----------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    id: str
    spec: Object
    fragments: tuple[str, ...] = field(default_factory=tuple)
    name: str = "bad"


INVALID = [
    Invalid(
        "missing-staticBackends",
        _spec(staticBackends=None),
        ("spec.staticBackends: Required value", "staticBackends is required when"),
    ),
    Invalid(
        "missing-staticModels",
        _spec(staticModels=None),
        ("spec.staticModels: Required value", "staticModels is required when"),
    ),
    Invalid(
        "blank-staticBackends",
        _spec(staticBackends="  "),
        ("spec.staticBackends: Required value",),
    ),
    Invalid(
        "unknown-routingLogic",
        _spec(routingLogic="random"),
        ('spec.routingLogic: Unsupported value: "random"', '"roundrobin"'),
    ),
    Invalid(
        "unknown-serviceDiscovery",
        _spec(serviceDiscovery="dns"),
        ('spec.serviceDiscovery: Unsupported value: "dns"',),
    ),
    Invalid(
        "periodSeconds-0",
        _spec(healthCheck={"periodSeconds": 0}),
        ("spec.healthCheck.periodSeconds", "greater than or equal to 1"),
    ),
    Invalid(
        "failureThreshold-negative",
        _spec(healthCheck={"failureThreshold": -1}),
        ("spec.healthCheck.failureThreshold", "greater than or equal to 1"),
    ),
    Invalid(
        "3-backends-2-models",
        _spec(staticBackends=BACKENDS + ",http://third.default.svc.cluster.local:8000"),
        ("spec.staticModels", "same number of comma-separated items"),
    ),
    Invalid(
        "single-label-host",
        _spec(staticBackends="http://my-svc:8000", staticModels="m"),
        ("spec.staticBackends", "URL the router accepts", "host names without a dot"),
    ),
    Invalid(
        "ipv6-backend",
        _spec(staticBackends="http://[::1]:8000", staticModels="m"),
        ("spec.staticBackends", "IPv6 addresses are not accepted"),
    ),
    Invalid(
        "upper-case-scheme",
        _spec(staticBackends="HTTP://a.b.com", staticModels="m"),
        ("spec.staticBackends", "lower-case"),
    ),
    Invalid(
        "ftp-scheme",
        _spec(staticBackends="ftp://a.b.com", staticModels="m"),
        ("spec.staticBackends", "URL the router accepts"),
    ),
    Invalid(
        "no-scheme",
        _spec(staticBackends="a.b.com:8000", staticModels="m"),
        ("spec.staticBackends", "URL the router accepts"),
    ),
    Invalid(
        "empty-backend-item",
        _spec(staticBackends="http://a.b.com,,http://c.d.com", staticModels="m1,m2,m3"),
        ("spec.staticBackends", "staticBackends has an empty item"),
    ),
    Invalid(
        "empty-model-item",
        _spec(staticModels="m1, ,m2"),
        ("spec.staticModels", "staticModels has an empty item"),
    ),
    Invalid(
        "trailing-comma",
        _spec(staticBackends=BACKENDS + ",", staticModels=MODELS + ","),
        ("staticBackends has an empty item", "staticModels has an empty item"),
    ),
    Invalid(
        "session-without-sessionKey",
        _spec(routingLogic="session"),
        ("spec.sessionKey: Required value", "sessionKey is required when routingLogic is session"),
    ),
    Invalid(
        "session-with-blank-sessionKey",
        _spec(routingLogic="session", sessionKey=" "),
        ("spec.sessionKey: Required value",),
    ),
    Invalid(
        "k8s-without-k8sPort",
        {"serviceDiscovery": "k8s"},
        ("spec.k8sPort: Required value", "k8sPort is required when serviceDiscovery is k8s"),
    ),
    Invalid(
        "k8sPort-too-large",
        {"serviceDiscovery": "k8s", "k8sPort": 70000},
        ("spec.k8sPort", "less than or equal to 65535"),
    ),
    Invalid(
        "health-checks-without-types",
        _spec(staticBackendHealthChecks=True),
        ("spec.staticModelTypes: Required value", "staticModelTypes is required when"),
    ),
    Invalid(
        "unknown-model-type",
        _spec(staticModelTypes="chat,video"),
        ("spec.staticModelTypes", "must be one of chat, completion"),
    ),
    Invalid(
        "model-types-count",
        _spec(staticModelTypes="chat"),
        ("spec.staticModelTypes", "one type per model"),
    ),
    Invalid(
        "alias-without-colon",
        _spec(staticAliases="fast"),
        ("spec.staticAliases", "alias:model"),
    ),
    Invalid(
        "alias-with-two-colons",
        _spec(staticAliases="fast:m1:x"),
        ("spec.staticAliases", "alias:model"),
    ),
    Invalid(
        "invalid-configMapName",
        _spec(configMapName="Bad_Name"),
        ("spec.configMapName", "should match"),
    ),
    Invalid(
        "configMapName-too-long",
        _spec(configMapName="a" * 254),
        ("spec.configMapName: Too long",),
    ),
    Invalid(
        "staticBackends-too-long",
        _spec(staticBackends="http://a.example.com," * 400, staticModels="m"),
        ("spec.staticBackends: Too long",),
    ),
    Invalid(
        "backend-check-interval-0",
        _spec(staticBackendHealthCheckInterval=0),
        ("spec.staticBackendHealthCheckInterval", "greater than or equal to 1"),
    ),
    Invalid(
        "unknown-selector-operator",
        _spec(routerSelector={"matchExpressions": [{"key": "app", "operator": "Equals"}]}),
        ("spec.routerSelector.matchExpressions[0].operator: Unsupported value",),
    ),
    Invalid(
        "callbacks-not-exposed",
        _spec(callbacks="my.module.Callbacks"),
        ('unknown field "spec.callbacks"',),
    ),
    # What the router cannot serve from a dynamic config file (routerconfig.py's table).
    Invalid(
        "kvaware",
        _spec(routingLogic="kvaware"),
        ("spec.routingLogic", "kvaware cannot be applied", "without --dynamic-config-json"),
    ),
    Invalid(
        "disaggregated_prefill",
        _spec(
            routingLogic="disaggregated_prefill",
            staticModelLabels="p,d",
            prefillModelLabels="p",
            decodeModelLabels="d",
        ),
        ("spec.routingLogic", "disaggregated_prefill and", "--prefill-model-labels"),
    ),
    Invalid(
        "disaggregated_prefill_orchestrated",
        _spec(routingLogic="disaggregated_prefill_orchestrated"),
        ("spec.routingLogic", "cannot be applied from a dynamic config file"),
    ),
    Invalid(
        "model-labels-fewer-than-models",
        _spec(staticModelLabels="only-one"),
        ("spec.staticModelLabels", "one label per model"),
    ),
    Invalid(
        "k8s-with-staticAliases",
        {"serviceDiscovery": "k8s", "k8sPort": 8000, "staticAliases": "fast:m"},
        ("spec.serviceDiscovery", "ignores staticAliases and staticBackendHealthChecks"),
    ),
    Invalid(
        "k8s-with-staticBackendHealthChecks",
        {
            "serviceDiscovery": "k8s",
            "k8sPort": 8000,
            "staticBackendHealthChecks": True,
            "staticModelTypes": "chat",
        },
        ("spec.serviceDiscovery", "remove them, or use serviceDiscovery static"),
    ),
    Invalid(
        "timeoutSeconds-above-maximum",
        _spec(healthCheck={"timeoutSeconds": 3600, "periodSeconds": 7200}),
        ("spec.healthCheck.timeoutSeconds", "less than or equal to 60"),
    ),
    Invalid(
        "timeoutSeconds-above-periodSeconds",
        _spec(healthCheck={"timeoutSeconds": 30, "periodSeconds": 10}),
        ("spec.healthCheck.timeoutSeconds", "must not exceed healthCheck.periodSeconds"),
    ),
    Invalid(
        "default-timeoutSeconds-above-periodSeconds",
        _spec(healthCheck={"periodSeconds": 2}),
        ("spec.healthCheck.timeoutSeconds", "the default is 5"),
    ),
    Invalid(
        "name-too-long-for-default-configMapName",
        _spec(),
        ("spec.configMapName: Required value", "set spec.configMapName"),
        name="n" * 250,
    ),
    Invalid(
        "routerPort-0",
        _spec(routerPort=0),
        ("spec.routerPort", "port number (1-65535) or a port name"),
    ),
    Invalid(
        "routerPort-bad-name",
        _spec(routerPort="Router_Port"),
        ("spec.routerPort", "port number (1-65535) or a port name"),
    ),
]


@pytest.mark.parametrize("case", INVALID, ids=[case.id for case in INVALID])
def test_invalid_staticroute_is_refused(
    control_plane: ControlPlane, crd: Object, namespace: str, case: Invalid
) -> None:
    result = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", input=_route(case.name, case.spec), check=False
    )
    assert result.returncode != 0, f"accepted: {case.spec}"
    for fragment in case.fragments:
        assert fragment in result.stderr, result.stderr
    # Nothing about a CEL rule being too expensive or failing to run.
    assert "cost" not in result.stderr
    assert "no such key" not in result.stderr


# --- what the API server (and the operator) accepts ---------------------------------

_MANY = 280  # close to the 8192-character limit of the comma-separated fields
VALID: dict[str, Object] = {
    "spaces-around-commas": _spec(
        staticBackends=" http://a.example.com:8000 ,  http://b.example.com:8000 ",
        staticModels=" m1 , m2 ",
    ),
    "ipv4": _spec(staticBackends="http://10.0.0.7:8000", staticModels="m"),
    "localhost": _spec(staticBackends="http://localhost:8000", staticModels="m"),
    "https-with-path": _spec(staticBackends="https://api.example.com/v1/x", staticModels="m"),
    "upper-case-host": _spec(staticBackends="http://Router.Example.COM", staticModels="m"),
    "underscore-host": _spec(
        staticBackends="http://my_svc.ns.svc.cluster.local:8000", staticModels="m"
    ),
    "session": _spec(routingLogic="session", sessionKey="x-user-id"),
    "k8s": {"serviceDiscovery": "k8s", "k8sPort": 8000, "k8sLabelSelector": "app=vllm"},
    "everything": _spec(
        routingLogic="prefixaware",
        staticAliases="fast:facebook/opt-125m, phi : microsoft/Phi-3-mini-4k-instruct",
        staticModelLabels="small,large",
        staticModelTypes="chat, completion",
        staticBackendHealthChecks=True,
        staticBackendHealthCheckInterval=30,
        staticBackendHealthCheckTimeoutSeconds=5,
        prefillModelLabels="small",
        decodeModelLabels="large",
        configMapName="router.config-1",
        routerRef={"kind": "Service", "apiVersion": "v1", "name": "r", "namespace": "x"},
        routerSelector={
            "matchLabels": {"app": "vllm-router"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
        },
        healthCheck={"timeoutSeconds": 1, "periodSeconds": 1},
    ),
    "many-backends": _spec(
        staticBackends=",".join(f"http://b{i:03}.example.com:8000" for i in range(_MANY)),
        staticModels=",".join(f"org/model-{i:03}" for i in range(_MANY)),
    ),
    "k8s-with-namespace": {"serviceDiscovery": "k8s", "k8sPort": 8000, "k8sNamespace": "models"},
    "model-labels": _spec(staticModelLabels=" small , large "),
    "many-aliases": _spec(
        staticBackends=",".join(f"http://b{i:03}.example.com:8000" for i in range(_MANY)),
        staticModels=",".join(f"org/model-{i:03}" for i in range(_MANY)),
        staticAliases=",".join(f"a{i:03}:org/model-{i:03}" for i in range(_MANY)),
    ),
    "router-port-name": _spec(routerPort="router-sport"),
    "router-port-number": _spec(routerPort=8000),
    "longest-timeout": _spec(healthCheck={"timeoutSeconds": 60, "periodSeconds": 60}),
}


@pytest.mark.parametrize("name", list(VALID))
def test_valid_staticroute_is_accepted(
    control_plane: ControlPlane, crd: Object, namespace: str, name: str
) -> None:
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=_route(name, VALID[name]))
    stored = _get(control_plane, namespace, name)["spec"]
    # The operator parses what the API server stored and renders it for the router.
    routerconfig.render(api.StaticRouteSpec.model_validate(stored), namespace=namespace)


def test_a_long_name_is_accepted_with_configmapname(
    control_plane: ControlPlane, crd: Object, namespace: str
) -> None:
    name = "n" * 250
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", input=_route(name, _spec(configMapName="short"))
    )
    stored = _get(control_plane, namespace, name)
    assert stored["spec"]["configMapName"] == "short"
    spec = api.StaticRouteSpec.model_validate(stored["spec"])
    routerconfig.check_config_map_name(name, spec)  # the operator accepts it too


def test_many_backends_stay_within_the_size_limit() -> None:
    assert 8000 < len(VALID["many-backends"]["staticBackends"]) <= 8192


# --- status subresource and printer columns -----------------------------------------


def test_status_subresource_and_columns(
    control_plane: ControlPlane, crd: Object, namespace: str
) -> None:
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=_route("st", _spec()))
    resource = f"{api.PLURAL}.{api.GROUP}"
    condition: Object = {
        "type": "Ready",
        "status": "True",
        "reason": "RoutersSynced",
        "message": "1 of 1 routers run the configuration",
        "observedGeneration": 1,
        "lastTransitionTime": "2025-01-02T03:04:05Z",
    }
    status: Object = {
        "configMapRef": "st-config",
        "lastAppliedTime": "2025-01-02T03:04:05Z",
        "observedGeneration": 1,
        "conditions": [condition],
        "routers": [{"address": "10.0.0.1:8000", "healthy": True, "configSynced": True}],
    }
    patch = json.dumps({"status": status})
    control_plane.kubectl(
        "patch",
        resource,
        "st",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    )
    stored = _get(control_plane, namespace, "st")["status"]
    api.StaticRouteStatus.model_validate(stored)
    assert stored["routers"] == [
        {"address": "10.0.0.1:8000", "healthy": True, "configSynced": True, "message": ""}
    ]

    table = control_plane.kubectl("get", api.PLURAL, "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "ROUTING", "CONFIGMAP", "READY", "HEALTHY", "SYNCED", "AGE"]
    assert table[1].split()[:4] == ["st", "roundrobin", "st-config", "True"]
    control_plane.kubectl(
        "wait", "--for=condition=Ready", f"{resource}/st", "-n", namespace, "--timeout=10s"
    )

    bad = json.dumps({"status": {"conditions": [{**condition, "status": "Maybe"}]}})
    result = control_plane.kubectl(
        "patch",
        resource,
        "st",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        bad,
        check=False,
    )
    assert result.returncode != 0
    assert 'status.conditions[0].status: Unsupported value: "Maybe"' in result.stderr


# --- the deploy tree ----------------------------------------------------------------


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_config_directory_renders(directory: str) -> None:
    assert _documents(_kustomize(CONFIG / directory))


def test_default_overlay_namespaces_and_prefixes_everything() -> None:
    objects = _documents(_kustomize(CONFIG / "default"))
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    assert f"CustomResourceDefinition/{CRD_NAME}" in kinds
    assert "Namespace/router-controller-system" in kinds
    assert "Deployment/router-controller-controller-manager" in kinds
    assert "Service/router-controller-controller-manager-metrics-service" in kinds
    assert "ClusterRole/router-controller-manager-role" in kinds
    for obj in objects:
        if obj["kind"] in {"Namespace", "CustomResourceDefinition"}:
            continue
        assert obj["metadata"]["name"].startswith("router-controller-"), obj["metadata"]
        if not obj["kind"].startswith("Cluster"):
            assert obj["metadata"]["namespace"] == "router-controller-system", obj["metadata"]
        for subject in obj.get("subjects", []):
            assert subject == {
                "kind": "ServiceAccount",
                "name": "router-controller-controller-manager",
                "namespace": "router-controller-system",
            }


def _rules(role: Object) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [""])
        for resource in rule.get("resources", rule.get("nonResourceURLs", []))
        for verb in rule["verbs"]
    }


def _expand(group: str, resources: str, verbs: str) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources.split() for v in verbs.split()}


def test_manager_role_grants_exactly_what_the_operator_uses() -> None:
    roles = {o["metadata"]["name"]: o for o in _documents(_kustomize(CONFIG / "rbac"))}
    assert roles["manager-role"]["kind"] == "ClusterRole"
    # tests/e2e/test_rbac.py shows each of these verbs is needed.
    assert _rules(roles["manager-role"]) == (
        _expand(api.GROUP, "staticroutes", "list watch")
        | _expand(api.GROUP, "staticroutes/status", "patch")
        | _expand("", "configmaps", "get list watch create patch delete")
        | _expand("", "services", "list watch")
        | _expand("discovery.k8s.io", "endpointslices", "list watch")
        | _expand("", "events", "create")
    )
    assert _rules(roles["leader-election-role"]) == _expand(
        "coordination.k8s.io", "leases", "get create update"
    )
    assert _rules(roles["metrics-auth-role"]) == (
        _expand("authentication.k8s.io", "tokenreviews", "create")
        | _expand("authorization.k8s.io", "subjectaccessreviews", "create")
    )
    assert roles["metrics-reader"]["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert _rules(roles["staticroute-viewer-role"]) == (
        _expand(api.GROUP, "staticroutes", "get list watch")
        | _expand(api.GROUP, "staticroutes/status", "get")
    )


def test_rendered_tree_passes_server_dry_run(
    control_plane: ControlPlane, crd: Object, namespace: str, tmp_path: Path
) -> None:
    """CRD, RBAC, Deployment, Service and NetworkPolicy, as the API server would take them.

    An overlay moves everything into the test's namespace (the namespace transformer
    renames the Namespace object too), so the dry run needs nothing that is not there.
    """
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    bases = [os.path.relpath(CONFIG / d, overlay) for d in ("default", "network-policy")]
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"namespace": namespace, "resources": bases}), encoding="utf-8"
    )
    rendered = _kustomize(overlay)
    kinds = {o["kind"] for o in _documents(rendered)}
    assert {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Deployment",
        "Service",
        "NetworkPolicy",
    } <= kinds
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "(server dry run)" in result.stdout
