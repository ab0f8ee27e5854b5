"""The test control plane itself: versions, RBAC on, and a working garbage collector."""

from __future__ import annotations

import json
from pathlib import Path

from router_controller.kube import CONFIGMAPS, Kube, NotFound
from router_controller_dev import envtest
from tests.e2e.support import wait_for


def test_versions_are_the_pinned_ones(control_plane: envtest.ControlPlane) -> None:
    found = envtest.versions(control_plane.binaries)
    assert "v1.37.2" in found["kube-apiserver"]
    assert "v1.37.2" in found["kube-controller-manager"]
    assert "3.6." in found["etcd"]
    version = json.loads(control_plane.get("/version"))
    assert version["gitVersion"] == "v1.37.2"


def test_rbac_is_enforced(
    control_plane: envtest.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = control_plane.token_for("nobody", namespace)
    config = control_plane.kubeconfig_for_token(token, tmp_path / "kubeconfig")
    denied = control_plane.kubectl(
        f"--kubeconfig={config}", "get", "configmaps", "-n", namespace, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()


async def test_garbage_collector_removes_orphans(kube: Kube, namespace: str) -> None:
    owner = await kube.create(
        CONFIGMAPS.path(namespace),
        {"metadata": {"name": "owner", "namespace": namespace}, "data": {}},
    )
    await kube.create(
        CONFIGMAPS.path(namespace),
        {
            "metadata": {
                "name": "dependent",
                "namespace": namespace,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                     "uid": owner["metadata"]["uid"]}
                ],
            },
            "data": {},
        },
    )  # fmt: skip
    await kube.delete(CONFIGMAPS.path(namespace, "owner"))

    async def gone() -> bool:
        try:
            await kube.get(CONFIGMAPS.path(namespace, "dependent"))
        except NotFound:
            return True
        return False

    await wait_for(gone, timeout=120, what="the dependent ConfigMap to be collected")
