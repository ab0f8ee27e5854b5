"""Fixtures for operator processes and helper programs, and RBAC from config/rbac.

A test starts processes through the :func:`operators` fixture, which kills whatever is
still running when the test ends; what it sees of each is
:class:`~router_controller_dev.processes.OperatorProcess`: its (JSON) log says which
ports the operator bound (it is started on port 0, so tests never race for a free
port), which identity it campaigns under and when it leads. Everything else the test
checks through the API or the HTTP endpoints.

RBAC helpers run the operator, or a scraper, as a ServiceAccount that holds exactly
the roles rendered from ``config/rbac``, so the tests also prove those manifests.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_controller_dev.envtest import ControlPlane

# Imported by many tests from here; each lives once in the development package.
from router_controller_dev.http_client import http_get as http_get
from router_controller_dev.http_client import http_status as http_status
from router_controller_dev.processes import Children, OperatorProcess, operator_command
from router_controller_dev.prometheus import PROMETHEUS as PROMETHEUS
from router_controller_dev.prometheus import start_prometheus as start_prometheus
from tests.e2e.support import REPO

# Lines that would show a task or a session left behind at exit.
SHUTDOWN_LEAKS = (
    "Task was destroyed but it is pending",
    "Unclosed client session",
    "Unclosed connector",
    "Traceback",
    "ResourceWarning",
    "was never awaited",
)


Spawn = Callable[..., OperatorProcess]
Background = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def operators(tmp_path: Path) -> Iterator[Spawn]:
    """Start operator processes: ``operators(kubeconfig, *flags)``; all killed at teardown."""
    started: list[OperatorProcess] = []

    def spawn(kubeconfig: Path, *flags: str) -> OperatorProcess:
        log = tmp_path / f"operator-{len(started)}.log"
        process = OperatorProcess(operator_command(kubeconfig, *flags), log)
        started.append(process)
        return process.start()

    try:
        yield spawn
    finally:
        for process in started:
            process.kill()


# -- RBAC from config/rbac --------------------------------------------------------------


def rendered_rbac(plane: ControlPlane) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize config/rbac`` renders."""
    text = plane.kubectl("kustomize", str(REPO / "config" / "rbac")).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def apply_roles(plane: ControlPlane, namespace: str) -> None:
    """Apply the ClusterRoles of config/rbac as they are, and its Roles into ``namespace``."""
    for obj in rendered_rbac(plane):
        if obj["kind"] == "Role":
            obj["metadata"]["namespace"] = namespace
        elif obj["kind"] != "ClusterRole":
            continue
        plane.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(obj)
        )


@dataclass
class Grants:
    """ServiceAccounts and bindings made by a test, undone at its end."""

    plane: ControlPlane
    cluster_bindings: list[str] = field(default_factory=list)

    def service_account(self, namespace: str, name: str) -> str:
        self.plane.kubectl("create", "serviceaccount", name, "-n", namespace)
        return name

    def bind_cluster_role(self, namespace: str, account: str, role: str) -> None:
        binding = f"{namespace}-{account}-{role}-{uuid.uuid4().hex[:6]}"
        self.plane.kubectl(
            "create", "clusterrolebinding", binding,
            f"--clusterrole={role}", f"--serviceaccount={namespace}:{account}",
        )  # fmt: skip
        self.cluster_bindings.append(binding)

    def bind_role(self, namespace: str, account: str, role: str) -> None:
        self.plane.kubectl(
            "create", "rolebinding", f"{account}-{role}", "-n", namespace,
            f"--role={role}", f"--serviceaccount={namespace}:{account}",
        )  # fmt: skip

    def kubeconfig(self, namespace: str, account: str, path: Path) -> Path:
        token = self.plane.token_for(account, namespace)
        return self.plane.kubeconfig_for_token(token, path, user=account)

    def undo(self) -> None:
        for binding in self.cluster_bindings:
            self.plane.kubectl("delete", "clusterrolebinding", binding, check=False)


@pytest.fixture
def grants(control_plane: ControlPlane) -> Iterator[Grants]:
    made = Grants(control_plane)
    try:
        yield made
    finally:
        made.undo()


def operator_account(grants: Grants, namespace: str, path: Path, *roles: str) -> Path:
    """A ServiceAccount holding the operator's roles from config/rbac; its kubeconfig.

    ``roles`` are ClusterRoles (``manager-role``, ``metrics-auth-role``); the
    ``leader-election-role`` Role is bound in ``namespace``, where the Lease lives.
    """
    apply_roles(grants.plane, namespace)
    account = grants.service_account(namespace, "controller-manager")
    for role in roles:
        grants.bind_cluster_role(namespace, account, role)
    grants.bind_role(namespace, account, "leader-election-role")
    return grants.kubeconfig(namespace, account, path)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Background]:
    """Start helper programs (``background(name, *argv)``); all stopped at teardown.

    Output goes to ``<tmp_path>/<name>.log``.
    """
    children = Children(tmp_path)
    try:
        yield children.start
    finally:
        children.stop()
