"""``make run``: the operator from source, against a cluster or a local control plane.

A newcomer's first run should show the product working, with or without a cluster:

- when the current kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``) reaches an API
  server, the operator runs against it in the foreground with console logs, as
  kubebuilder's ``make run`` does;
- otherwise (or with ``--local``) this module starts the project's own control
  plane (:mod:`router_controller_dev.envtest`), installs the CRD, applies
  ``config/samples`` to ``default``, and starts the stand-in for the sample's router
  (:func:`router_controller_dev.fakerouter.standing_in`): an HTTP server on a
  loopback address that answers ``GET /health`` as vllm_router does, with the
  ``dynamic_config`` it last read from the ConfigMap the operator wrote (re-read
  periodically, as the real router re-reads its mounted file). A Service without
  selector whose cluster IP is that address makes it reachable the Kubernetes way,
  so the sample's ``routerRef`` resolves and its health is real.

Either way the operator is the real command (``python -m router_controller``), with
metrics on a loopback port over plain HTTP. Ctrl-C stops the operator, then the
stand-in router, then the control plane; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from router_controller.api import default_config_map_name
from router_controller.kube import Kube
from router_controller.metrics import Metrics
from router_controller_dev import envtest, repo
from router_controller_dev.fakerouter import RELOAD_SECONDS, standing_in
from router_controller_dev.processes import die_with_parent

SAMPLE_NAMESPACE = "default"
OPERATOR_STOP_TIMEOUT = 45.0
# The local plane's Service cluster IPs are loopback addresses (see fakerouter.standing_in).
SERVICE_CIDR = "127.0.100.0/24"
# In the range's lower band, which the API server keeps for fixed cluster IPs and
# gives out automatically only when the rest is used up: no other Service takes it.
ROUTER_ADDRESS = "127.0.100.10"


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


# -- is there a cluster? ---------------------------------------------------------------


def kubeconfig_paths() -> list[Path]:
    """The files kubectl would read: ``$KUBECONFIG`` (a path list) or ``~/.kube/config``."""
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return [Path(p) for p in listed] if listed else [Path.home() / ".kube" / "config"]


def reachable_cluster(timeout: float = 5.0) -> tuple[bool, str]:
    """(whether the current kubeconfig reaches an API server, what was found)."""
    present = [p for p in kubeconfig_paths() if p.is_file()]
    if not present:
        return False, "no kubeconfig (" + ", ".join(map(str, kubeconfig_paths())) + ")"
    try:
        result = subprocess.run(
            ["kubectl", "get", "--raw=/api", f"--request-timeout={int(timeout)}s"],
            capture_output=True,
            text=True,
            timeout=timeout * 3,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"the cluster in {present[0]} did not answer within {timeout * 3:.0f}s"
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, f"the cluster in {present[0]} is not reachable: {why}"
    context = subprocess.run(
        ["kubectl", "config", "current-context"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return True, f"context {context or '(none)'} from {present[0]}"


def loopback_port(preferred: int) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return envtest.free_port()
        return preferred


@dataclass(frozen=True)
class OperatorPorts:
    metrics: int
    health: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}/metrics"

    def flags(self) -> list[str]:
        return [
            "--zap-encoder=console",
            f"--metrics-bind-address=127.0.0.1:{self.metrics}",
            "--metrics-secure=false",
            f"--health-probe-bind-address=127.0.0.1:{self.health}",
        ]


def operator_command(
    kubeconfig: Path | None, ports: OperatorPorts, extra: Sequence[str]
) -> list[str]:
    command = [sys.executable, "-m", "router_controller"]
    if kubeconfig is not None:
        command.append(f"--kubeconfig={kubeconfig}")
    return [*command, *ports.flags(), *extra]


# -- the sample ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    router_service: str
    configmap: str


def read_sample() -> Sample:
    """The sample StaticRoute's name, router Service and ConfigMap name."""
    samples = repo.root() / "config" / "samples"
    for path in sorted(samples.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "StaticRoute":
                continue
            spec = doc.get("spec") or {}
            name = doc["metadata"]["name"]
            ref = spec.get("routerRef") or {}
            return Sample(
                name=name,
                router_service=ref.get("name") or "vllm-router",
                configmap=spec.get("configMapName") or default_config_map_name(name),
            )
    raise envtest.ControlPlaneError(f"no StaticRoute in {samples}")


# -- running ---------------------------------------------------------------------------


async def _wait_ready(
    ports: OperatorPorts, operator: asyncio.subprocess.Process, stop: asyncio.Event
) -> bool:
    """Poll the operator's /readyz until it answers 200 (False if it exited or we stop)."""
    url = f"http://127.0.0.1:{ports.health}/readyz"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline and operator.returncode is None and not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.2)
    return False


async def _stop_operator(operator: asyncio.subprocess.Process) -> int:
    if operator.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            operator.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(operator.wait(), OPERATOR_STOP_TIMEOUT)
        except TimeoutError:
            say("the operator did not stop in time; killing it")
            operator.kill()
            await operator.wait()
    return operator.returncode if operator.returncode is not None else 1


async def _serve_local(
    plane: envtest.ControlPlane, extra: Sequence[str], reload_seconds: float
) -> int:
    sample = read_sample()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kube = await Kube.connect(kubeconfig=str(plane.kubeconfig), metrics=Metrics(process=False))
    try:
        async with standing_in(
            kube,
            SAMPLE_NAMESPACE,
            service=sample.router_service,
            configmap=sample.configmap,
            address=ROUTER_ADDRESS,
            every=reload_seconds,
            report=lambda message: say(f"stand-in router: {message}"),
        ) as router:
            say(
                f"stand-in router for Service {SAMPLE_NAMESPACE}/{sample.router_service} "
                f"listens on {router.url}"
            )
            return await _run_operator(plane, extra, sample, stop)
    finally:
        await kube.close()


async def _run_operator(
    plane: envtest.ControlPlane, extra: Sequence[str], sample: Sample, stop: asyncio.Event
) -> int:
    """Run the operator until it exits or ``stop`` is set; its exit code."""
    ports = OperatorPorts(metrics=loopback_port(8080), health=loopback_port(8081))
    command = operator_command(plane.kubeconfig, ports, extra)
    say("starting the operator: " + " ".join(command[1:]))
    # Its own process group: a Ctrl-C reaches only this process, which stops the
    # operator (once), then the router and the plane, in that order.
    operator = await asyncio.create_subprocess_exec(
        *command,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=die_with_parent,
    )
    try:
        if await _wait_ready(ports, operator, stop):
            _print_next_steps(plane.kubeconfig, ports, sample)
        exited = asyncio.create_task(operator.wait(), name="operator exit")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if operator.returncode is not None:
            say(f"the operator exited with code {operator.returncode}")
        else:
            say("stopping the operator, the stand-in router and the control plane")
    finally:
        code = await _stop_operator(operator)
    return code


def _print_next_steps(kubeconfig: Path, ports: OperatorPorts, sample: Sample) -> None:
    lines = [
        "",
        "The operator is running against a local control plane. In another terminal:",
        "",
        f"  export KUBECONFIG={kubeconfig}",
        "  kubectl get staticroutes",
        f"  kubectl wait --for=condition=Ready staticroute/{sample.name} --timeout=60s",
        f"  kubectl describe staticroute {sample.name}",
        f"  kubectl get configmap {sample.configmap} -o yaml",
        f"  curl -s {ports.metrics_url} | grep controller_runtime_reconcile_total",
        "",
        f"Try editing the sample (kubectl edit staticroute {sample.name}): the operator",
        "rewrites the ConfigMap and the stand-in router picks it up within 10 s.",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def run_local(extra: Sequence[str], reload_seconds: float) -> int:
    say(
        "starting a local control plane (etcd, kube-apiserver, kube-controller-manager); "
        "the first run builds it from source, 5-20 minutes"
    )
    samples = repo.root() / "config" / "samples"
    with envtest.running(service_cidr=SERVICE_CIDR, crds=True) as plane:
        say(f"control plane ready at {plane.server}")
        applied = plane.kubectl("apply", "-n", SAMPLE_NAMESPACE, "-k", str(samples))
        for line in applied.stdout.splitlines():
            say(f"{line} (namespace {SAMPLE_NAMESPACE})")
        return asyncio.run(_serve_local(plane, extra, reload_seconds))


def run_against_cluster(where: str, extra: Sequence[str]) -> int:
    say(f"running the operator against the current kubeconfig ({where})")
    crd = subprocess.run(
        ["kubectl", "get", "--raw=/apis/production-stack.vllm.ai/v1alpha1"],
        capture_output=True,
        text=True,
        check=False,
    )
    if crd.returncode != 0:
        say("the StaticRoute CRD is not installed in this cluster: run `make install` first")
    ports = OperatorPorts(metrics=loopback_port(8080), health=loopback_port(8081))
    say(f"metrics: {ports.metrics_url}   health: http://127.0.0.1:{ports.health}/readyz")
    command = operator_command(None, ports, extra)
    sys.stdout.flush()
    os.execv(command[0], command)  # noqa: S606 - our own interpreter, no shell


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m router_controller_dev.devrun",
        description="Run the operator from source: against the current kubeconfig's cluster, "
        "or, when there is none, against a local control plane with the sample StaticRoute "
        "and a stand-in router. Other arguments are passed to the operator.",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="start a local control plane even when a cluster is reachable",
    )
    p.add_argument(
        "--router-reload-seconds",
        type=float,
        default=RELOAD_SECONDS,
        help="how often the stand-in router re-reads its ConfigMap (default 10, as vllm_router)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if shutil.which("kubectl") is None:
        say("kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/)")
        return 1
    try:
        if not args.local:
            found, where = reachable_cluster()
            if found:
                return run_against_cluster(where, extra)
            say(f"no cluster: {where}")
        return run_local(extra, args.router_reload_seconds)
    except (envtest.ControlPlaneError, repo.RepoNotFound) as err:
        say(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
