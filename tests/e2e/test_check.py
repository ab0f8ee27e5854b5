"""The offline check and render next to the real API server and the real operator.

One table, two judges: every case of the CRD validation table in test_crd_validation.py
goes to the API server (a server-side dry run, so nothing is stored) and to
``router-controller check``, and both must say the same. ``render`` must print the bytes
the operator writes into the ConfigMap. And ``kubectl get sr`` shows router health and
sync next to Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router_controller import api
from router_controller.check import check_main
from router_controller.kube import Kube
from router_controller.manager import Manager
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.fakerouter import FakeRouter, expose
from tests.e2e.support import create_route, staticroute, try_get_cm, wait_condition, wait_for
from tests.e2e.test_crd_validation import INVALID, VALID, _route

pytestmark = pytest.mark.cluster

CASES = [(case.id, case.name, case.spec) for case in INVALID] + [
    (name, name, spec) for name, spec in VALID.items()
]
FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 1}


def check(text: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = check_main(["-f", "-", *args], stdin=io.StringIO(text), stdout=out, stderr=out)
    return code, out.getvalue()


_FIELD = r"((?:spec|metadata)(?:\.\w+|\[[^\]]*\])*)"
_SERVER_FIELDS = re.compile(rf'(?:^|\* |invalid: ){_FIELD}: |unknown field "{_FIELD}"', re.M)
_CHECK_FIELDS = re.compile(rf"StaticRoute [^:]*: {_FIELD}[: ]")


def _agree(case_id: str, server: subprocess.CompletedProcess[str], code: int, said: str) -> None:
    """The same verdict, and every field the API server names is named by the check too."""
    assert code in (0, 1), said
    answer = server.stderr or server.stdout
    assert (code == 0) == (server.returncode == 0), (
        f"{case_id}: the API server said {answer!r}; check said {said!r}"
    )
    named = {a or b for a, b in _SERVER_FIELDS.findall(server.stderr)}
    assert named <= set(_CHECK_FIELDS.findall(said)), (
        f"{case_id}: the API server named {sorted(named)} in {answer!r}; check said {said!r}"
    )


@pytest.fixture(scope="module")
def dry_run_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize(("case_id", "name", "spec"), CASES, ids=[c[0] for c in CASES])
def test_check_and_the_api_server_agree(
    control_plane: ControlPlane,
    dry_run_namespace: str,
    case_id: str,
    name: str,
    spec: dict[str, Any],
) -> None:
    text = _route(name, spec)
    server = control_plane.kubectl(
        "create", "--dry-run=server", "-n", dry_run_namespace, "-f", "-", input=text, check=False
    )
    _agree(case_id, server, *check(text, "-n", dry_run_namespace))


def _with_meta(**meta: object) -> str:
    obj = json.loads(_route("m", VALID["ipv4"]))
    obj["metadata"].update(meta)
    return json.dumps(obj)


# ObjectMeta is not in the CRD's schema: the check has rules of its own for it.
META_CASES = {
    "labels": _with_meta(labels={"app": "router", "example.com/tier": "a"}),
    "label-value-with-space": _with_meta(labels={"app": "has space"}),
    "label-key-bad": _with_meta(labels={"bad key!": "x"}),
    "label-value-long": _with_meta(labels={"app": "x" * 64}),
    "label-value-number": _with_meta(labels={"replicas": 3}),
    "annotation-key-bad": _with_meta(annotations={"/a": "x"}),
    "annotations-too-large": _with_meta(annotations={"a": "x" * (256 * 1024)}),
    "unknown-metadata-field": _with_meta(lables={"app": "x"}),
    "upper-case-name": _with_meta(name="Router"),
    "generate-name": _with_meta(name=None, generateName="router-"),
}


@pytest.mark.parametrize("case_id", list(META_CASES))
def test_check_and_the_api_server_agree_on_metadata(
    control_plane: ControlPlane, dry_run_namespace: str, case_id: str
) -> None:
    text = META_CASES[case_id]
    server = control_plane.kubectl(
        "create", "--dry-run=server", "-n", dry_run_namespace, "-f", "-", input=text, check=False
    )
    _agree(case_id, server, *check(text, "-n", dry_run_namespace))


_EVERYTHING = {k: v for k, v in VALID["everything"].items() if not k.startswith("router")}
RENDERED = {
    # Trimmed items, aliases, labels, types, health checks, a configMapName, non-ASCII.
    "everything": {
        **_EVERYTHING,
        "staticBackends": " http://a.example.com:8000 , http://10.0.0.7:8000 ",
        "staticModels": "modèle-a , model-b",
        "staticAliases": "fast:modèle-a, b : model-b",
    },
    # k8s discovery without k8sNamespace: the file names the StaticRoute's namespace.
    "k8s": {**VALID["k8s"], "staticBackends": None, "staticModels": None},
}


@pytest.mark.parametrize("case", list(RENDERED))
async def test_render_prints_the_bytes_the_operator_writes(
    kube: Kube, operator: Manager, namespace: str, tmp_path: Path, case: str
) -> None:
    spec = RENDERED[case]
    route = staticroute("rendered", namespace, **spec)
    path = tmp_path / "route.yaml"
    path.write_text(json.dumps(route), encoding="utf-8")
    await create_route(kube, route)
    cm_name = spec.get("configMapName") or "rendered-config"
    cm = await wait_for(lambda: try_get_cm(kube, namespace, cm_name), what="the ConfigMap")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router_controller", "render", "-f", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    assert stdout == cm["data"][api.CONFIG_KEY].encode("utf-8")
    if case == "k8s":
        assert json.loads(stdout)["k8s_namespace"] == namespace


async def test_kubectl_get_sr_shows_health_and_sync_next_to_ready(
    control_plane: ControlPlane, kube: Kube, operator: Manager, namespace: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        router = await stack.enter_async_context(FakeRouter())
        await expose(kube, namespace, "router", [router])
        await create_route(
            kube, staticroute("r", namespace, routerRef={"name": "router"}, healthCheck=FAST)
        )
        # Healthy, but still running its old file: not synced, not Ready.
        await wait_condition(kube, namespace, "r", "RouterConfigSynced", "False")
        rows = control_plane.kubectl("get", "sr", "-n", namespace).stdout.splitlines()
        assert rows[0].split() == [
            "NAME", "ROUTING", "CONFIGMAP", "READY", "HEALTHY", "SYNCED", "AGE"
        ]  # fmt: skip
        assert rows[1].split()[:6] == ["r", "roundrobin", "r-config", "False", "True", "False"]

        cm = await wait_for(lambda: try_get_cm(kube, namespace, "r-config"), what="r-config")
        assert router.load_configmap(cm)
        ready = await wait_condition(kube, namespace, "r", "Ready", "True")
        rows = control_plane.kubectl("get", "sr", "-n", namespace).stdout.splitlines()
        assert rows[1].split()[:6] == ["r", "roundrobin", "r-config", "True", "True", "True"]

        # The Ready message with -o wide; the vllm category lists StaticRoutes.
        wide = control_plane.kubectl("get", "sr", "r", "-n", namespace, "-o", "wide").stdout
        header, row = wide.splitlines()
        assert "MESSAGE" in header.split()
        message = next(c for c in ready["status"]["conditions"] if c["type"] == "Ready")["message"]
        assert message in row
        listed = control_plane.kubectl("get", "vllm", "-n", namespace, "-o", "name").stdout
        assert listed.split() == [f"{api.KIND.lower()}.{api.GROUP}/r"]
        await kube.delete(f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}/r")
