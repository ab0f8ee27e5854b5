"""The Helm chart in dist/chart: linted, rendered, compared with config/, installed for real.

Helm is built from the Go module pinned in hack/helm (``hack/build-helm.sh``, cached
like the control plane). Rendering needs no cluster: ``helm lint`` and ``helm template``
pass with every option on, and what the chart renders for the CRD, every RBAC object,
the Deployment's container, the metrics Service, the ServiceMonitor, the alert rules,
the NetworkPolicy and the dashboard is what ``kubectl kustomize config/...`` gives, so
the chart and the kustomize tree cannot drift apart.

Then ``helm install`` into a plane of this module's own. No kubelet runs, so no Pod
starts: the operator runs from source as a process with a token of the chart's
ServiceAccount and the chart's Deployment arguments, and makes the sample Ready. With
``namespaces`` set, the chart's rights are Roles in those namespaces only, and the
operator (run with the chart's ``--namespaces``) works with them and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_controller.kube import Kube
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.fakerouter import FakeRouter, standing_in
from tests.e2e.processes import Spawn, http_get
from tests.e2e.support import (
    REPO,
    admin_kube,
    condition,
    create_route,
    get_cm,
    get_route,
    staticroute,
    wait_condition,
    wait_for,
)

CHART = REPO / "dist" / "chart"
RELEASE = "router-controller"
NAMESPACE = "router-controller-system"  # config/default's
SERVICE_ACCOUNT = "router-controller-controller-manager"
CRD = "staticroutes.production-stack.vllm.ai"
IMG_REPOSITORY, IMG_TAG = "example.com/router-controller", "v0.1.0"
# Services get loopback cluster IPs here, so a stand-in router can be a Service's IP.
SERVICE_CIDR = "127.0.103.0/24"
# Fixed cluster IPs below come from the range's lower band, which the API server keeps
# for fixed addresses and hands out automatically only when the rest is used up.
# Helm's cache, config and data folders, kept out of the user's own.
HELM_HOME = Path(tempfile.gettempdir()) / "router-controller-helm"
HELM_DIRS = ("CACHE", "CONFIG", "DATA")
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
EVERYTHING = (
    "prometheus.enable=true",
    "prometheusRule.enable=true",
    "grafanaDashboard.enable=true",
    "networkPolicy.enable=true",
)


@pytest.fixture(scope="module")
def helm() -> str:
    """The helm binary, built once per machine (a cold build takes a few minutes)."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "build-helm.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def run(*argv: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{f"HELM_{k}_HOME": str(HELM_HOME / k.lower()) for k in HELM_DIRS}}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)


def template(helm: str, *sets: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``helm template`` with these --set (and --set-json) values; the objects rendered."""
    argv = [helm, "template", RELEASE, str(CHART), "-n", NAMESPACE]
    for item in sets:
        argv += ["--set", item]
    for key, value in (values or {}).items():
        argv += ["--set-json", f"{key}={json.dumps(value)}"]
    result = run(*argv)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def kustomize(*folders: str) -> list[dict[str, Any]]:
    """These config/ folders with config/default's name prefix and namespace."""
    overlay = Path(REPO / "dist" / f".compare-{uuid.uuid4().hex[:8]}")
    overlay.mkdir(parents=True)
    try:
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": NAMESPACE,
                    "namePrefix": "router-controller-",
                    "resources": [f"../../config/{f}" for f in folders],
                }
            )
        )
        result = subprocess.run(
            ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    finally:
        shutil.rmtree(overlay)


def by_identity(objects: list[dict[str, Any]], *kinds: str) -> dict[tuple[str, str, str], Any]:
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in kinds
    }


def content(obj: dict[str, Any]) -> dict[str, Any]:
    """What an object does: everything but its metadata's labels and annotations."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("labels", "annotations")}
    return {**obj, "metadata": meta}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = found
    return result


def deployment_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    result: dict[str, Any] = deployment
    return result


# -- rendering ---------------------------------------------------------------------------


def test_helm_lint_passes_with_the_defaults_and_with_every_option(helm: str) -> None:
    for sets in (
        (),
        EVERYTHING,
        (*EVERYTHING, "namespaces={team-a,team-b}", "metrics.secure=false"),
    ):
        argv = [helm, "lint", "--strict", str(CHART)]
        for item in sets:
            argv += ["--set", item]
        result = run(*argv)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_the_chart_renders_what_config_holds(helm: str) -> None:
    chart = template(helm, *EVERYTHING)
    config = kustomize("prometheus", "network-policy") + [
        d
        for d in yaml.safe_load_all(
            subprocess.run(
                ["kubectl", "kustomize", str(REPO / "config" / "default")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        if d
    ]

    # The CRD and every RBAC object: the same objects, the same rules and bindings.
    kinds = ("CustomResourceDefinition", *RBAC_KINDS)
    ours, theirs = by_identity(chart, *kinds), by_identity(config, *kinds)
    assert sorted(ours) == sorted(theirs)
    for key, obj in theirs.items():
        assert content(ours[key]) == content(obj), key
    (crd,) = [o for o in chart if o["kind"] == "CustomResourceDefinition"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}

    # The Deployment's container and Pod: same flags, ports, probes, limits, contexts.
    kept = ("args", "ports", "securityContext", "livenessProbe", "readinessProbe",
            "resources", "volumeMounts")  # fmt: skip
    mine, source = container(chart), container(config)
    for field in kept:
        assert mine[field] == source[field], field
    pod, source_pod = (deployment_of(x)["spec"]["template"]["spec"] for x in (chart, config))
    for field in ("securityContext", "serviceAccountName", "terminationGracePeriodSeconds",
                  "volumes"):  # fmt: skip
        assert pod[field] == source_pod[field], field
    assert deployment_of(chart)["spec"]["replicas"] == deployment_of(config)["spec"]["replicas"]

    # The metrics Service, ServiceMonitor, PrometheusRule and NetworkPolicy: same specs;
    # the chart's selectors add the release label to config/'s.
    others = ("Service", "ServiceMonitor", "PrometheusRule", "NetworkPolicy")
    ours, theirs = by_identity(chart, *others), by_identity(config, *others)
    assert sorted(ours) == sorted(theirs)
    for key, obj in theirs.items():
        mine_spec, spec = dict(ours[key]["spec"]), dict(obj["spec"])
        for selector in ("selector", "podSelector"):
            if selector in spec:
                wanted = spec.pop(selector)
                got = mine_spec.pop(selector)
                wanted_labels = wanted.get("matchLabels", wanted)
                got_labels = got.get("matchLabels", got)
                assert wanted_labels.items() <= got_labels.items(), (key, selector)
        assert mine_spec == spec, key

    # The dashboard: config/grafana's JSON, in a ConfigMap with the sidecar's label.
    (dashboard,) = [o for o in chart if o["kind"] == "ConfigMap"]
    (source_cm,) = [
        o for o in yaml.safe_load_all(
            subprocess.run(["kubectl", "kustomize", str(REPO / "config" / "grafana")],
                           capture_output=True, text=True, check=True).stdout
        ) if o
    ]  # fmt: skip
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert source_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v) for k, v in dashboard["data"].items()} == {
        k: json.loads(v) for k, v in source_cm["data"].items()
    }


def test_namespaces_give_roles_in_those_namespaces_and_the_flag(helm: str) -> None:
    scoped = template(helm, "namespaces={team-a,team-b}")
    rbac = by_identity(scoped, *RBAC_KINDS)
    manager = {k for k in rbac if k[2] == "router-controller-manager-role"}
    assert manager == {
        ("Role", "team-a", "router-controller-manager-role"),
        ("Role", "team-b", "router-controller-manager-role"),
    }
    bindings = {k for k in rbac if k[2] == "router-controller-manager-rolebinding"}
    assert bindings == {
        ("RoleBinding", "team-a", "router-controller-manager-rolebinding"),
        ("RoleBinding", "team-b", "router-controller-manager-rolebinding"),
    }
    # What stays cluster-wide cannot be a Role: TokenReview and SubjectAccessReview for
    # secure metrics, the /metrics URL, and the ready-made roles for people.
    cluster = {k[2] for k in rbac if k[0].startswith("Cluster")}
    assert cluster == {
        "router-controller-metrics-auth-role",
        "router-controller-metrics-auth-rolebinding",
        "router-controller-metrics-reader",
        "router-controller-staticroute-admin-role",
        "router-controller-staticroute-editor-role",
        "router-controller-staticroute-viewer-role",
    }
    assert "--namespaces=team-a,team-b" in container(scoped)["args"]

    # Without secure metrics and the ready-made roles, nothing is cluster-wide at all.
    only_roles = template(
        helm, "namespaces={team-a,team-b}", "metrics.secure=false", "rbacHelpers.enable=false"
    )
    assert {k[0] for k in by_identity(only_roles, *RBAC_KINDS)} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
    }
    assert "--metrics-secure=false" in container(only_roles)["args"]


def test_values_reach_the_deployment(helm: str) -> None:
    objects = template(
        helm,
        f"controllerManager.container.image.repository={IMG_REPOSITORY}",
        f"controllerManager.container.image.tag={IMG_TAG}",
        "controllerManager.replicas=3",
        "controllerManager.leaderElection.enable=false",
        "controllerManager.leaderElection.id=my-lease",
        values={
            "controllerManager.container.extraArgs": ["--max-concurrent-reconciles=8"],
            "controllerManager.container.resources": {"limits": {"memory": "1Gi"}},
            "controllerManager.podSecurityContext": {"runAsNonRoot": True, "fsGroup": 2000},
            "controllerManager.nodeSelector": {"kubernetes.io/os": "linux"},
            "controllerManager.tolerations": [{"key": "infra", "operator": "Exists"}],
            "controllerManager.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "In", "values": ["infra"]}
                                ]
                            }
                        ]
                    }
                }
            },
        },
    )
    deployment = deployment_of(objects)
    pod = deployment["spec"]["template"]["spec"]
    main = container(objects)
    assert deployment["spec"]["replicas"] == 3
    assert main["image"] == f"{IMG_REPOSITORY}:{IMG_TAG}"
    # Three replicas elect a leader even though leaderElection.enable is false.
    assert main["args"][:2] == ["--leader-elect", "--leader-election-id=my-lease"]
    assert main["args"][-1] == "--max-concurrent-reconciles=8"
    assert main["resources"]["limits"]["memory"] == "1Gi"
    assert pod["securityContext"]["fsGroup"] == 2000  # merged into config/manager's
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "infra", "operator": "Exists"}]
    assert "nodeAffinity" in pod["affinity"]
    assert ("Role", NAMESPACE, "router-controller-leader-election-role") in by_identity(
        objects, "Role"
    )

    single = template(helm, "controllerManager.leaderElection.enable=false")
    assert "--leader-elect" not in container(single)["args"]
    assert not by_identity(single, "Role"), "no leader election, no Lease rights"


def test_a_bad_namespace_in_values_fails_with_what_to_change(helm: str) -> None:
    result = run(helm, "template", RELEASE, str(CHART), "--set", "namespaces={team-a,Team_B}")
    assert result.returncode != 0
    assert '"Team_B" is not a namespace name' in result.stderr


# -- installed into a real control plane ----------------------------------------------------


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with envtest.running(service_cidr=SERVICE_CIDR) as plane:
        yield plane


@pytest.fixture(scope="module")
async def admin(plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(plane) as kube:
        yield kube


def install(helm: str, plane: ControlPlane, *sets: str) -> list[dict[str, Any]]:
    """``helm install`` (images set, no waiting: no Pod starts); the manifest it applied."""
    argv = [helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
            "--set", f"controllerManager.container.image.repository={IMG_REPOSITORY}",
            "--set", f"controllerManager.container.image.tag={IMG_TAG}"]  # fmt: skip
    for item in sets:
        argv += ["--set", item]
    result = run(*argv, kubeconfig=plane.kubeconfig)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = run(helm, "get", "manifest", RELEASE, "-n", NAMESPACE, kubeconfig=plane.kubeconfig)
    assert manifest.returncode == 0, manifest.stderr
    return [d for d in yaml.safe_load_all(manifest.stdout) if d]


def uninstall(helm: str, plane: ControlPlane) -> None:
    result = run(helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", kubeconfig=plane.kubeconfig)
    assert result.returncode == 0, result.stdout + result.stderr


def assert_created(plane: ControlPlane, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        meta = obj["metadata"]
        where = ["-n", meta["namespace"]] if meta.get("namespace") else []
        found = plane.kubectl("get", obj["kind"], meta["name"], *where, "-o", "json")
        assert json.loads(found.stdout)["metadata"]["labels"]["app.kubernetes.io/instance"] == (
            RELEASE
        )


def operator_args(objects: list[dict[str, Any]], metrics_port: int) -> list[str]:
    """The Deployment's flags, with its listeners moved to loopback."""
    args = [
        a
        for a in container(objects)["args"]
        if not a.startswith(("--metrics-bind-address", "--health-probe-bind-address"))
    ]
    return [
        *args,
        f"--leader-election-namespace={NAMESPACE}",  # in a Pod: its own namespace
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
    ]


def can_i(plane: ControlPlane, *args: str) -> bool:
    as_user = f"--as=system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
    result = plane.kubectl("auth", "can-i", *args, as_user, check=False)
    return result.stdout.strip() == "yes"


def stand_in_router(
    kube: Kube, namespace: str, address: str
) -> AbstractAsyncContextManager[FakeRouter]:
    return standing_in(
        kube,
        namespace,
        service="vllm-router",
        configmap="vllm-router-config",
        address=address,
        every=1.0,
    )


@pytest.mark.cluster
async def test_helm_install_and_the_chart_service_account_makes_the_sample_ready(
    helm: str, plane: ControlPlane, admin: Kube, operators: Spawn, tmp_path: Path
) -> None:
    objects = install(helm, plane)
    try:
        assert_created(plane, objects)
        plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD}")
        namespace = "helm-sample"
        plane.kubectl("create", "namespace", namespace)
        token = plane.token_for(SERVICE_ACCOUNT, NAMESPACE)
        kubeconfig = plane.kubeconfig_for_token(token, tmp_path / "kubeconfig", SERVICE_ACCOUNT)
        metrics_port = envtest.free_port()
        async with stand_in_router(admin, namespace, "127.0.103.10"):
            plane.kubectl("apply", "-n", namespace, "-k", str(REPO / "config" / "samples"))
            process = operators(kubeconfig, *operator_args(objects, metrics_port))
            route = await wait_condition(
                admin, namespace, "staticroute-sample", "Ready", "True", timeout=120
            )
            for type_ in ("ConfigMapReady", "RouterHealthy", "RouterConfigSynced"):
                assert (condition(route, type_) or {}).get("status") == "True", route["status"]
            cm = await get_cm(admin, namespace, "vllm-router-config")
            assert cm["metadata"]["ownerReferences"][0]["uid"] == route["metadata"]["uid"]

            # The chart's metrics-reader and metrics-auth roles let a bound scraper in.
            plane.kubectl("create", "serviceaccount", "scraper", "-n", NAMESPACE)
            plane.kubectl(
                "create", "clusterrolebinding", "helm-scraper",
                "--clusterrole=router-controller-metrics-reader",
                f"--serviceaccount={NAMESPACE}:scraper",
            )  # fmt: skip
            url = f"https://127.0.0.1:{metrics_port}/metrics"
            status, text = await http_get(url, token=plane.token_for("scraper", NAMESPACE))
            assert status == 200, text
            assert "router_controller_staticroute_condition{" in text
            assert (await http_get(url, token=token))[0] == 403
            assert not process.forbidden(), process.output
    finally:
        uninstall(helm, plane)
    gone = plane.kubectl("get", "clusterrole", "router-controller-manager-role", check=False)
    assert "NotFound" in gone.stderr
    # crd.keep: the CRD, and every StaticRoute with it, outlives the release.
    plane.kubectl("get", "crd", CRD)


@pytest.mark.cluster
async def test_with_namespaces_the_operator_works_with_namespaced_roles_only(
    helm: str, plane: ControlPlane, admin: Kube, operators: Spawn, tmp_path: Path
) -> None:
    watched, other, outside = "helm-team-a", "helm-team-b", "helm-outside"
    for name in (watched, other, outside):
        plane.kubectl("create", "namespace", name)
    objects = install(helm, plane, f"namespaces={{{watched},{other}}}")
    try:
        assert_created(plane, objects)
        missing = plane.kubectl("get", "clusterrole", "router-controller-manager-role", check=False)
        assert "NotFound" in missing.stderr
        for name in (watched, other):
            plane.kubectl("get", "role", "router-controller-manager-role", "-n", name)
        assert can_i(plane, "list", "staticroutes", "-n", watched)
        assert not can_i(plane, "list", "staticroutes", "--all-namespaces")
        assert not can_i(plane, "create", "configmaps", "-n", outside)

        token = plane.token_for(SERVICE_ACCOUNT, NAMESPACE)
        kubeconfig = plane.kubeconfig_for_token(token, tmp_path / "kubeconfig", SERVICE_ACCOUNT)
        args = operator_args(objects, envtest.free_port())
        assert f"--namespaces={watched},{other}" in args
        async with stand_in_router(admin, watched, "127.0.103.11"):
            plane.kubectl("apply", "-n", watched, "-k", str(REPO / "config" / "samples"))
            await create_route(admin, staticroute("not-watched", outside))
            process = operators(kubeconfig, *args)
            await wait_condition(admin, watched, "staticroute-sample", "Ready", "True", timeout=120)
            await create_route(admin, staticroute("second", other))
            await wait_condition(admin, other, "second", "Ready", "True", timeout=60)
            # Outside the namespaces nothing is read or written, and nothing was refused.
            assert not (await get_route(admin, outside, "not-watched")).get("status")
            assert not process.forbidden(), process.output
            assert process.running

            async def ready_probe() -> bool:
                return (await http_get(await process.probe_url("/readyz")))[0] == 200

            await wait_for(ready_probe, what="the operator ready with namespaced roles")
    finally:
        uninstall(helm, plane)
