"""The operator as a separate process, as a user runs it, and what a test sees of it.

A test starts processes through the :func:`operators` fixture, which kills whatever is
still running when the test ends. Each process writes its (JSON) log to a file that
the test reads: the log says which ports the operator bound (it is started on port 0,
so tests never race for a free port), which identity it campaigns under and when it
leads. Everything else the test checks through the API or the HTTP endpoints.

RBAC helpers run the operator, or a scraper, as a ServiceAccount that holds exactly
the roles rendered from ``config/rbac``, so the tests also prove those manifests.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import yaml

from router_controller.envtest import ControlPlane, free_port
from tests.e2e.support import REPO, operator_command, wait_for

# Lines that would show a task or a session left behind at exit.
SHUTDOWN_LEAKS = (
    "Task was destroyed but it is pending",
    "Unclosed client session",
    "Unclosed connector",
    "Traceback",
    "ResourceWarning",
    "was never awaited",
)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test run


@dataclass
class OperatorProcess:
    """One ``python -m router_controller`` process and its log file."""

    command: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _seen: list[dict[str, Any]] = field(default_factory=list)
    _read: int = 0

    def start(self) -> OperatorProcess:
        env = {**os.environ, "PYTHONWARNINGS": "always::ResourceWarning"}
        env.pop("WATCH_NAMESPACES", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (other lines are skipped)."""
        with self.log_path.open("rb") as log:
            log.seek(self._read)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._read += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._seen.append(record)
        return list(self._seen)

    def find(self, event: str) -> dict[str, Any] | None:
        for record in self.records():
            if record.get("event") == event:
                return record
        return None

    async def logged(self, event: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the first log record with this event; fail early if the process died."""

        def probe() -> dict[str, Any] | None:
            found = self.find(event)
            if found is None and not self.running:
                raise AssertionError(f"operator exited before logging {event!r}:\n{self.output}")
            return found

        record: dict[str, Any] = await wait_for(probe, timeout=timeout, what=f"log {event!r}")
        return record

    async def serving(self) -> dict[str, Any]:
        return await self.logged("serving")

    async def identity(self) -> str:
        return str((await self.logged("starting"))["identity"])

    async def probe_url(self, path: str) -> str:
        return f"http://127.0.0.1:{(await self.serving())['probe_port']}{path}"

    async def metrics_url(self) -> str:
        record = await self.serving()
        scheme = "https" if record["metrics_secure"] else "http"
        return f"{scheme}://127.0.0.1:{record['metrics_port']}/metrics"

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self, *, timeout: float) -> int:
        """Wait for the process to exit on its own; its exit code (-N for signal N)."""
        await wait_for(lambda: not self.running, timeout=timeout, what="the operator to exit")
        assert self.proc is not None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)


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
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *argv: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- HTTP -------------------------------------------------------------------------------


async def http_get(url: str, *, token: str | None = None) -> tuple[int, str]:
    """GET ``url`` (self-signed HTTPS accepted) with an optional bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url, headers=headers, ssl=False, timeout=aiohttp.ClientTimeout(total=30)
        ) as response,
    ):
        return response.status, await response.text()


async def http_status(url: str, *, token: str | None = None) -> int:
    try:
        return (await http_get(url, token=token))[0]
    except (aiohttp.ClientError, TimeoutError):
        return 0


# -- Prometheus -------------------------------------------------------------------------

PROMETHEUS = shutil.which("prometheus")


@dataclass
class Prometheus:
    """A real Prometheus (Debian's ``prometheus``) scraping one target; its query API."""

    api: str

    async def query(self, promql: str) -> list[dict[str, Any]]:
        status, text = await http_get(f"{self.api}/api/v1/query?{urlencode({'query': promql})}")
        assert status == 200, text
        body = json.loads(text)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


async def start_prometheus(
    background: Background,
    folder: Path,
    *,
    job: str,
    target: str,
    token: str,
    interval: str = "1s",
) -> Prometheus:
    """Scrape ``https://<target>/metrics`` with a bearer token; return once it is ready."""
    assert PROMETHEUS is not None
    token_file = folder / "prometheus-token"
    token_file.write_text(token)
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scheme": "https",
                "tls_config": {"insecure_skip_verify": True},
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    process = background(
        "prometheus",
        PROMETHEUS,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    )

    async def ready() -> bool:
        if process.poll() is not None:
            output = (folder / "prometheus.log").read_text(errors="replace")
            raise AssertionError(f"prometheus exited:\n{output}")
        return await http_status(f"{api}/-/ready") == 200

    await wait_for(ready, timeout=120, what="prometheus ready")
    return Prometheus(api)
