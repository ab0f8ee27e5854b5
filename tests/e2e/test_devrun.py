"""``make run`` on a machine without a cluster: the first thing a newcomer sees.

``python -m router_controller_dev.devrun`` runs as a separate process, as ``make run``
starts it, with a HOME and KUBECONFIG that lead to no cluster. It must start a
local control plane, apply the sample, make the sample's router real with its
stand-in, run the operator, print how to reach all of it, and on Ctrl-C stop
every process it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from router_controller.api import StaticRouteSpec
from router_controller.kube import Kube
from router_controller.metrics import Metrics
from router_controller.routerconfig import render
from router_controller_dev import envtest
from tests.e2e.support import REPO, condition, get_cm, wait_condition, wait_for

SAMPLE = REPO / "config" / "samples" / "production-stack_v1alpha1_staticroute.yaml"


@dataclass
class Output:
    """Every line the process printed so far (stdout and stderr together)."""

    lines: list[str] = field(default_factory=list)

    def find(self, prefix: str) -> str | None:
        for line in self.lines:
            if line.strip().startswith(prefix):
                return line.strip()[len(prefix) :]
        return None

    def text(self) -> str:
        return "\n".join(self.lines)


async def _collect(stream: asyncio.StreamReader, out: Output) -> None:
    async for raw in stream:
        out.lines.append(raw.decode(errors="replace").rstrip("\n"))


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """pid -> (start time, command line) of every process below ``root``."""
    parents: dict[int, int] = {}
    info: dict[int, tuple[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        info[int(entry.name)] = (fields[19], cmdline)
    found: dict[int, tuple[str, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = info[pid]
                frontier.append(pid)
    return found


def _still_running(pid: int, started: str) -> bool:
    """The same process (same start time) exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] == started and fields[0] != "Z"


@contextlib.asynccontextmanager
async def devrun(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, Output]]:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "KUBECONFIG": str(home / ".kube" / "config"),  # does not exist: no cluster
        # The binaries the suite already uses; an empty HOME would rebuild them.
        "KUBEBUILDER_ASSETS": str(envtest.find_binaries()),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router_controller_dev.devrun",
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a shell job
    )
    out = Output()
    assert process.stdout is not None
    reader = asyncio.create_task(_collect(process.stdout, out))
    try:
        yield process, out
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        await asyncio.wait_for(reader, 30)


@pytest.mark.parametrize(
    "target",
    ["process group", "process"],
    ids=["ctrl-c-in-a-terminal", "sigint-to-the-process-only"],
)
async def test_make_run_without_a_cluster_shows_the_sample_working(
    tmp_path: Path, target: str
) -> None:
    async with devrun(tmp_path) as (process, out):
        kubeconfig = await wait_for(
            lambda: out.find("export KUBECONFIG=") or process.returncode is not None,
            timeout=300,
            what="the kubeconfig line",
        )
        assert isinstance(kubeconfig, str), out.text()
        assert "kubectl get staticroutes" in out.text()
        assert "kubectl get configmap vllm-router-config -o yaml" in out.text()
        metrics_url = next(
            word for line in out.lines for word in line.split() if word.endswith("/metrics")
        )

        kube = await Kube.connect(kubeconfig=kubeconfig, metrics=Metrics(process=False))
        try:
            route = await wait_condition(
                kube, "default", "staticroute-sample", "Ready", "True", timeout=180
            )
            healthy = condition(route, "RouterHealthy")
            synced = condition(route, "RouterConfigSynced")
            assert healthy is not None
            assert (healthy["status"], healthy["reason"]) == ("True", "RouterHealthy")
            assert synced is not None
            assert (synced["status"], synced["reason"]) == ("True", "ConfigSynced")
            assert [r["healthy"] for r in route["status"]["routers"]] == [True]

            # The ConfigMap holds exactly what the sample renders to, and the
            # stand-in router is serving it (that is what ConfigSynced compared).
            spec = yaml.safe_load(SAMPLE.read_text())["spec"]
            cm = await get_cm(kube, "default", "vllm-router-config")
            expected = render(StaticRouteSpec.model_validate(spec)).data
            assert cm["data"] == {"dynamic_config.json": expected}
        finally:
            await kube.close()

        async with (
            aiohttp.ClientSession() as session,
            session.get(metrics_url, timeout=aiohttp.ClientTimeout(total=10)) as response,
        ):
            assert response.status == 200
            assert "controller_runtime_reconcile_total" in await response.text()

        children = _descendants(process.pid)
        commands = [command for _, command in children.values()]
        for binary in ("etcd", "kube-apiserver", "kube-controller-manager"):
            assert any(f"/{binary} " in command for command in commands), commands
        assert any("-m router_controller " in command for command in commands), commands

        if target == "process group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 120) == 0, out.text()

        await wait_for(
            lambda: (
                not [pid for pid, (started, _) in children.items() if _still_running(pid, started)]
            ),
            timeout=30,
            what="every child process to be gone",
        )
        assert not Path(kubeconfig).parent.exists(), "the control plane's folder is left behind"
