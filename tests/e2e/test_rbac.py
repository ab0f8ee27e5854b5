"""config/rbac proven on a real API server, and the deploy make targets with it.

A plane of this module's own gets what a user runs: ``make install`` / ``make
uninstall``, then ``make deploy IMG=...`` (config/default: the CRD, the RBAC, the
Deployment; no Pod starts, there is no kubelet). The operator then runs from source
as a separate process with a kubeconfig holding nothing but a token minted for the
Deployment's ServiceAccount, and does its whole job: the sample becomes Ready, the
ConfigMap is written, events are recorded, the Lease is held and released.

Then least privilege: for every verb of every rule of the manager ClusterRole and of
the leader-election Role, the operator runs with a copy of the roles missing just
that verb, through a scenario that needs every permission (a ConfigMap conflict, a
create, an event, drift repair, a rename, lease renewals). Each removal must show:
the operator's log names the resource and the verb it was refused, a condition says
so where the operator can still write one, and the operator neither crashes nor
retries in a hot loop. A verb whose removal shows nothing would not be needed, and
fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router_controller.api import API_VERSION, KIND, PLURAL, STATICROUTES
from router_controller.kube import CONFIGMAPS, LEASES, Kube, NotFound, Object
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.fakerouter import FakeRouter, standing_in
from router_controller_dev.processes import OperatorProcess
from tests.e2e.support import (
    REPO,
    admin_kube,
    condition,
    events_for,
    get_cm,
    operator_command,
    wait_condition,
    wait_for,
)

pytestmark = pytest.mark.cluster

IMG = "example.com/router-controller:v0.1.0"
NAMESPACE = "router-controller-system"
SERVICE_ACCOUNT = "router-controller-controller-manager"
LEASE_NAME = "27bc728d.vllm.ai"
CRD = f"{PLURAL}.production-stack.vllm.ai"
# Services get loopback cluster IPs here, so a stand-in router can be a Service's IP.
SERVICE_CIDR = "127.0.101.0/24"
# In the range's lower band, which the API server keeps for fixed cluster IPs and
# gives out automatically only when the rest is used up: no other Service takes it.
ROUTER_ADDRESS = "127.0.101.10"

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


def _rules(file: str) -> list[dict[str, Any]]:
    doc = next(d for d in yaml.safe_load_all((REPO / "config" / "rbac" / file).read_text()) if d)
    rules: list[dict[str, Any]] = doc["rules"]
    return rules


def _triples(rules: list[dict[str, Any]]) -> list[Triple]:
    return [
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def _regroup(triples: list[Triple]) -> list[dict[str, Any]]:
    """Rules again, one per (apiGroup, resource)."""
    verbs: dict[tuple[str, str], list[str]] = {}
    for group, resource, verb in triples:
        verbs.setdefault((group, resource), []).append(verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": found}
        for (group, resource), found in verbs.items()
    ]


MANAGER = _triples(_rules("role.yaml"))
LEADER = _triples(_rules("leader_election_role.yaml"))
CASES = [("manager", t) for t in MANAGER] + [("leader-election", t) for t in LEADER]


def make(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """A make target of this repository, against ``plane`` as the current kubeconfig."""
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def apply(plane: ControlPlane, *objects: Object) -> None:
    plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": list(objects)}))  # fmt: skip


# -- the operator as a process ---------------------------------------------------------


@contextlib.asynccontextmanager
async def operator(kubeconfig: Path, log: Path, *args: str) -> AsyncIterator[OperatorProcess]:
    running = OperatorProcess(operator_command(kubeconfig, *args), log).start()
    try:
        yield running
    finally:
        await running.close()


def service_account_kubeconfig(plane: ControlPlane, name: str, path: Path) -> Path:
    return plane.kubeconfig_for_token(plane.token_for(name, NAMESPACE), path, user=name)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with envtest.running(service_cidr=SERVICE_CIDR) as plane:
        yield plane


@pytest.fixture(scope="module")
async def admin(plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(plane) as kube:
        yield kube


@pytest.fixture(scope="module")
def deployed(plane: ControlPlane) -> ControlPlane:
    result = make(plane, "deploy", f"IMG={IMG}")
    assert result.returncode == 0, result.stdout + result.stderr
    plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD}")
    return plane


# -- the make targets ------------------------------------------------------------------


def test_install_and_uninstall_the_crd(plane: ControlPlane) -> None:
    installed = make(plane, "install")
    assert installed.returncode == 0, installed.stderr
    plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD}")
    removed = make(plane, "uninstall")
    assert removed.returncode == 0, removed.stderr
    plane.kubectl("wait", "--for=delete", f"crd/{CRD}", "--timeout=60s")
    again = make(plane, "uninstall")
    assert again.returncode != 0, "without ignore-not-found=true a second uninstall fails"
    assert make(plane, "uninstall", "ignore-not-found=true").returncode == 0


def test_deploy_sets_the_image(deployed: ControlPlane) -> None:
    deployment = json.loads(
        deployed.kubectl(
            "get", "deployment", "router-controller-controller-manager", "-n", NAMESPACE,
            "-o", "json",
        ).stdout
    )  # fmt: skip
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMG
    assert container["args"][0] == "--leader-elect"
    assert (REPO / "config" / "manager" / "kustomization.yaml").read_text().count(IMG) == 0


def test_build_installer_writes_one_file_the_server_accepts(deployed: ControlPlane) -> None:
    result = make(deployed, "build-installer", f"IMG={IMG}")
    assert result.returncode == 0, result.stderr
    installer = REPO / "dist" / "install.yaml"
    objects = [d for d in yaml.safe_load_all(installer.read_text()) if d]
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "Namespace", "ClusterRole", "Role", "Deployment"} <= kinds
    images = [
        c["image"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    assert images == [IMG]
    dry_run = deployed.kubectl("apply", "--dry-run=server", "-f", str(installer))
    assert "(server dry run)" in dry_run.stdout


# -- the manager's ServiceAccount is enough --------------------------------------------


def stand_in_router(kube: Kube, namespace: str) -> AbstractAsyncContextManager[FakeRouter]:
    return standing_in(
        kube,
        namespace,
        service="vllm-router",
        configmap="vllm-router-config",
        address=ROUTER_ADDRESS,
        every=1.0,
    )


async def _scrape(url: str, token: str | None) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the operator's self-signed certificate
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, ssl=context, timeout=aiohttp.ClientTimeout(total=20))
        as response,
    ):  # fmt: skip
        return response.status


async def test_the_manager_service_account_is_enough(
    deployed: ControlPlane, admin: Kube, tmp_path: Path
) -> None:
    plane = deployed
    namespace = "rbac-sample"
    plane.kubectl("create", "namespace", namespace)
    kubeconfig = service_account_kubeconfig(plane, SERVICE_ACCOUNT, tmp_path / "kubeconfig")
    manifest = yaml.safe_load_all((REPO / "config" / "manager" / "manager.yaml").read_text())
    deployment = next(d for d in manifest if d and d["kind"] == "Deployment")
    args = [  # the Deployment's own flags, bound to loopback
        a
        for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if not a.startswith(("--metrics-bind-address", "--health-probe-bind-address"))
    ]
    metrics_port = envtest.free_port()

    async with stand_in_router(admin, namespace):
        plane.kubectl("apply", "-n", namespace, "-k", str(REPO / "config" / "samples"))
        async with operator(
            kubeconfig,
            tmp_path / "operator.log",
            *args,
            f"--leader-election-namespace={NAMESPACE}",  # in a Pod: its own namespace
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        ) as running:
            route = await wait_condition(
                admin, namespace, "staticroute-sample", "Ready", "True", timeout=120
            )
            for type_ in ("ConfigMapReady", "RouterHealthy", "RouterConfigSynced"):
                found = condition(route, type_)
                assert found is not None
                assert found["status"] == "True", found
            cm = await get_cm(admin, namespace, "vllm-router-config")
            assert cm["metadata"]["ownerReferences"][0]["uid"] == route["metadata"]["uid"]

            async def created_event() -> bool:
                events = await events_for(admin, namespace, "staticroute-sample")
                return any(e["reason"] == "ConfigMapCreated" for e in events)

            await wait_for(created_event, what="a ConfigMapCreated event")
            lease = await admin.get(LEASES.path(NAMESPACE, LEASE_NAME))
            holder = lease["spec"]["holderIdentity"]
            assert holder

            # Metrics: authenticated by TokenReview, authorized by SubjectAccessReview.
            url = f"https://127.0.0.1:{metrics_port}/metrics"
            plane.kubectl("create", "serviceaccount", "scraper", "-n", NAMESPACE)
            plane.kubectl(
                "create", "clusterrolebinding", "scraper-metrics",
                "--clusterrole=router-controller-metrics-reader",
                f"--serviceaccount={NAMESPACE}:scraper",
            )  # fmt: skip
            assert await _scrape(url, None) == 401
            assert await _scrape(url, plane.token_for(SERVICE_ACCOUNT, NAMESPACE)) == 403
            assert await _scrape(url, plane.token_for("scraper", NAMESPACE)) == 200

            assert not running.forbidden(), running.output
            running.signal(signal.SIGTERM)
            assert await running.exit_code(timeout=60) == 0, running.output

    released = await admin.get(LEASES.path(NAMESPACE, LEASE_NAME))
    assert not released["spec"].get("holderIdentity"), "the Lease is released on SIGTERM"


# -- least privilege -------------------------------------------------------------------


def _route(name: str, namespace: str, **spec: Any) -> Object:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "staticBackends": "http://a.example.com:8000,http://b.example.com:8000",
            "staticModels": "model-a,model-b",
            **spec,
        },
    }


async def _exists(kube: Kube, path: str) -> bool:
    try:
        await kube.get(path)
    except NotFound:
        return False
    return True


async def _scenario(kube: Kube, namespace: str, lease: str, seen: Any) -> str | None:
    """Walk through everything the operator does; stop at the first refusal seen.

    Returns the step during which the refusal showed, or None when every step
    succeeded (the permission was not needed).
    """

    async def until(what: str, check: Any, timeout: float = 60) -> bool:
        async def probe() -> bool:
            return bool(seen()) or bool(await check())

        await wait_for(probe, timeout=timeout, what=what)
        return bool(seen())

    async def conflict_reported() -> bool:
        route = await kube.get(STATICROUTES.path(namespace, "conflicting"))
        found = condition(route, "ConfigMapReady")
        return found is not None and found["reason"] == "ConfigMapConflict"

    async def owned_config() -> bool:
        try:
            cm = await kube.get(CONFIGMAPS.path(namespace, "sample-config"))
        except NotFound:
            return False
        return "dynamic_config.json" in (cm.get("data") or {})

    async def created_event() -> bool:
        return any(
            e["reason"] == "ConfigMapCreated" for e in await events_for(kube, namespace, "sample")
        )

    async def repaired() -> bool:
        cm = await kube.get(CONFIGMAPS.path(namespace, "sample-config"))
        return "edited" not in cm["data"]["dynamic_config.json"]

    async def renamed() -> bool:
        return await _exists(kube, CONFIGMAPS.path(namespace, "renamed")) and not await _exists(
            kube, CONFIGMAPS.path(namespace, "sample-config")
        )

    async def renewed() -> bool:
        try:
            found = await kube.get(LEASES.path(NAMESPACE, lease))
        except NotFound:
            return False
        spec = found["spec"]
        return bool(spec.get("holderIdentity")) and spec.get("renewTime") != spec.get("acquireTime")

    # A ConfigMap somebody else made, under the name a StaticRoute asks for.
    await kube.create(
        CONFIGMAPS.path(namespace),
        {"metadata": {"name": "taken", "namespace": namespace}, "data": {"x": "y"}},
    )
    await kube.create(
        STATICROUTES.path(namespace), _route("conflicting", namespace, configMapName="taken")
    )
    if await until("the conflict reported", conflict_reported):
        return "conflict"
    await kube.create(STATICROUTES.path(namespace), _route("sample", namespace))
    if await until("the ConfigMap written", owned_config):
        return "create"
    if await until("a ConfigMapCreated event", created_event):
        return "event"
    await kube.merge_patch(
        CONFIGMAPS.path(namespace, "sample-config"),
        {"data": {"dynamic_config.json": '{"edited": true}'}},
    )
    if await until("the edited ConfigMap repaired", repaired):
        return "drift"
    await kube.merge_patch(
        STATICROUTES.path(namespace, "sample"), {"spec": {"configMapName": "renamed"}}
    )
    if await until("the old ConfigMap deleted after a rename", renamed):
        return "rename"
    if await until("the Lease renewed", renewed):
        return "lease"
    return None


@pytest.mark.parametrize(
    ("role", "removed"), CASES, ids=[f"{role}:{t[1]}:{t[2]}" for role, t in CASES]
)
async def test_every_permission_is_needed_and_its_absence_is_reported(
    deployed: ControlPlane, admin: Kube, tmp_path: Path, role: str, removed: Triple
) -> None:
    plane = deployed
    group, resource, verb = removed
    name = f"lp-{resource.replace('/', '-')}-{verb}"[:50]
    manager = [t for t in MANAGER if not (role == "manager" and t == removed)]
    leader = [t for t in LEADER if not (role == "leader-election" and t == removed)]
    apply(
        plane,
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": _regroup(manager)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": NAMESPACE}, "rules": _regroup(leader)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
    )  # fmt: skip
    plane.kubectl("create", "namespace", name)
    kubeconfig = service_account_kubeconfig(plane, name, tmp_path / "kubeconfig")
    try:
        async with operator(
            kubeconfig,
            tmp_path / "operator.log",
            f"--namespaces={name}",
            "--leader-elect",
            f"--leader-election-namespace={NAMESPACE}",
            f"--leader-election-id={name}",
        ) as running:
            step = await _scenario(admin, name, name, lambda: running.refused(resource, verb))
            assert step is not None, (
                f"without {verb} on {resource} (group {group or 'core'!r}) the operator did "
                f"everything it does: the {role} role does not need that verb\n{running.output}"
            )
            refusals = running.refused(resource, verb)
            first = refusals[0][0]

            if resource == "configmaps" and verb in ("create", "get", "patch", "delete"):
                # It could still write status: the StaticRoute says what is missing.
                async def forbidden_condition() -> bool:
                    listed = await admin.get(STATICROUTES.path(name))
                    return any(
                        (condition(r, "ConfigMapReady") or {}).get("reason") == "Forbidden"
                        and f"cannot {verb} resource" in condition(r, "ConfigMapReady")["message"]  # type: ignore[index]
                        for r in listed["items"]
                    )

                await wait_for(forbidden_condition, what="ConfigMapReady=False reason Forbidden")

            # Neither a crash nor a hot loop: still running (a leader that cannot
            # renew its Lease exits on purpose, saying so), retrying with backoff.
            assert "Traceback" not in running.output, running.output
            code = running.proc.poll() if running.proc is not None else None
            if (resource, verb) == ("leases", "update"):
                assert code in (None, 1), running.output
            else:
                assert code is None, running.output
            elapsed = time.monotonic() - first
            count = len(running.refused(resource, verb))
            assert count <= 20 + 20 * elapsed, (
                f"{count} refusals in {elapsed:.1f}s: retrying without backoff"
            )
    finally:
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
        for kind in ("clusterrolebinding", "clusterrole"):
            plane.kubectl("delete", kind, name, check=False)
        for kind in ("rolebinding", "role", "serviceaccount"):
            plane.kubectl("delete", kind, name, "-n", NAMESPACE, check=False)


# -- and away again --------------------------------------------------------------------


def test_undeploy_removes_what_deploy_created(deployed: ControlPlane) -> None:
    result = make(deployed, "undeploy", f"IMG={IMG}")
    assert result.returncode == 0, result.stderr
    for kind, name in (
        ("clusterrole", "router-controller-manager-role"),
        ("clusterrolebinding", "router-controller-manager-rolebinding"),
        ("crd", CRD),
    ):
        gone = deployed.kubectl("get", kind, name, check=False)
        assert gone.returncode != 0, (kind, name)
        assert "NotFound" in gone.stderr, (kind, name)
    namespace = deployed.kubectl("get", "namespace", NAMESPACE, "-o", "json", check=False)
    assert namespace.returncode != 0 or json.loads(namespace.stdout)["status"]["phase"] == (
        "Terminating"
    )
