"""Scope, steadiness and recovery: namespaces, zero writes, API restarts, 410s and SIGKILL.

Each test here gets a control plane of its own, so that nothing but the operator
under test acts on the objects and the API server's own request counters are
attributable to it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from router_controller.api import STATICROUTES
from router_controller.informer import WatchTuning
from router_controller.kube import Kube
from router_controller_dev import envtest
from tests.e2e.support import (
    REPO,
    admin_kube,
    config_of,
    create_route,
    get_cm,
    operator_command,
    run_operator,
    staticroute,
    try_get_cm,
    wait_for,
)

WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")  # APPLY: server-side apply
OPERATOR_RESOURCES = ("staticroutes", "configmaps", "events")


@pytest.fixture
def plane() -> Iterator[envtest.ControlPlane]:
    with envtest.running(crds=True) as fresh:
        for ns in ("a", "b", "c"):
            fresh.kubectl("create", "namespace", ns)
        yield fresh


@pytest.fixture
async def client(plane: envtest.ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(plane) as kube:
        yield kube


def writes(plane: envtest.ControlPlane) -> int:
    """Writes to the operator's resources, as counted by the API server itself."""
    total = 0.0
    for line in plane.get("/metrics").decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        if any(f'verb="{v}"' in labels for v in WRITE_VERBS) and any(
            f'resource="{r}"' in labels for r in OPERATOR_RESOURCES
        ):
            total += float(value)
    return int(total)


async def all_ready(kube: Kube, namespace: str, count: int) -> bool:
    listed = await kube.get(STATICROUTES.path(namespace))
    ready = 0
    for item in listed["items"]:
        for cond in (item.get("status") or {}).get("conditions") or []:
            if cond["type"] == "Ready" and cond["status"] == "True":
                ready += 1
    return ready == count


async def test_namespaces_flag_limits_scope(plane: envtest.ControlPlane, client: Kube) -> None:
    async with run_operator(plane, namespaces=("a", "b")) as manager:
        for informer in (manager.parts.routes, manager.parts.configmaps):
            names = sorted(t.get_name() for t in informer.tasks if not t.done())
            plural = informer.resource.plural
            assert names == [f"watch {plural} in a", f"watch {plural} in b"]
        for ns in ("a", "b", "c"):
            await create_route(client, staticroute("r", ns))
        for ns in ("a", "b"):
            await wait_for(_cm_exists(client, ns, "r-config"), what=f"ConfigMap in {ns}")
        # c is outside the scope: its StaticRoute is never even seen.
        assert manager.parts.routes.get("c", "r") is None
        assert await try_get_cm(client, "c", "r-config") is None
        route_c = await client.get(STATICROUTES.path("c", "r"))
        assert "status" not in route_c


def _cm_exists(client: Kube, namespace: str, name: str) -> Callable[[], Awaitable[object]]:
    return lambda: try_get_cm(client, namespace, name)


async def test_converged_operator_makes_no_writes(
    plane: envtest.ControlPlane, client: Kube
) -> None:
    async with run_operator(plane) as manager:
        await asyncio.gather(*(create_route(client, staticroute(f"r{i}", "a")) for i in range(200)))
        await wait_for(lambda: all_ready(client, "a", 200), timeout=120, what="200 Ready")
        # The burst's Events go out once the queue is idle, after the statuses.
        await wait_for(
            lambda: manager.parts.recorder.pending == 0 and manager.parts.recorder.idle,
            timeout=60,
            what="the burst's Events sent",
        )
        # Let the last status writes come back through the watch before counting.
        before = writes(plane)
        await wait_for(lambda: writes(plane) == before, what="writes to stop")
        before = writes(plane)
        deadline = asyncio.get_running_loop().time() + 30
        samples = []
        while asyncio.get_running_loop().time() < deadline:
            samples.append(writes(plane) - before)
            await asyncio.sleep(1)  # sampling the counter over the window, not synchronising
        assert samples
        assert max(samples) == 0, f"writes during a steady 30 s: {samples}"


async def test_recovers_from_apiserver_restart_and_expired_watch(
    plane: envtest.ControlPlane, client: Kube
) -> None:
    async with run_operator(plane, namespaces=("a",)) as manager:
        for i in range(5):
            await create_route(client, staticroute(f"r{i}", "a"))
        await wait_for(lambda: all_ready(client, "a", 5), what="5 Ready")
        relists_before = manager.parts.routes.relists
        # From here until the next await, the operator's event loop (shared with this
        # test) does not run: it is cut off while the API server restarts, objects
        # change, and etcd is compacted past every resourceVersion it has seen.
        plane.stop_apiserver()
        plane.start_apiserver()
        plane.kubectl(
            "patch", "staticroute", "r0", "-n", "a", "--type=merge",
            "-p", '{"spec": {"staticModels": "changed-a,changed-b"}}',
        )  # fmt: skip
        plane.kubectl("delete", "configmap", "r1-config", "-n", "a")
        plane.kubectl("apply", "-f", "-", input=_route_yaml("late", "a"))
        plane.compact_etcd()

        async def applied() -> bool:
            cm0 = await get_cm(client, "a", "r0-config")
            return (
                config_of(cm0)["static_models"] == "changed-a,changed-b"
                and await try_get_cm(client, "a", "r1-config") is not None
                and await try_get_cm(client, "a", "late-config") is not None
            )

        await wait_for(applied, timeout=90, what="changes made while cut off to be applied")
        assert manager.parts.routes.relists > relists_before, "the expired watch was not re-listed"


def _route_yaml(name: str, namespace: str) -> str:
    return (
        "apiVersion: production-stack.vllm.ai/v1alpha1\nkind: StaticRoute\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        'spec: {staticBackends: "http://x.example.com:8000", staticModels: "m"}\n'
    )


async def test_sigkill_mid_burst_then_restart_converges(
    plane: envtest.ControlPlane, client: Kube, tmp_path: Path
) -> None:
    command = operator_command(plane.kubeconfig, "--namespaces=a")
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    log = (tmp_path / "operator.log").open("wb")
    first = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    second: asyncio.subprocess.Process | None = None
    try:
        await asyncio.gather(*(create_route(client, staticroute(f"r{i}", "a")) for i in range(100)))
        await wait_for(lambda: all_ready(client, "a", 100), timeout=120, what="100 Ready")

        async def update(i: int) -> None:
            await client.merge_patch(
                STATICROUTES.path("a", f"r{i}"), {"spec": {"staticModels": f"v2-{i},v2-{i}b"}}
            )

        await asyncio.gather(*(update(i) for i in range(50)))
        first.send_signal(signal.SIGKILL)
        await asyncio.gather(*(update(i) for i in range(50, 100)))
        assert await asyncio.wait_for(first.wait(), 30) == -signal.SIGKILL
        second = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=log, stderr=subprocess.STDOUT
        )

        async def converged() -> bool:
            for i in range(100):
                cm = await get_cm(client, "a", f"r{i}-config")
                if config_of(cm)["static_models"] != f"v2-{i},v2-{i}b":
                    return False
            return True

        await wait_for(converged, timeout=120, interval=0.5, what="every ConfigMap at v2")
        assert second.returncode is None, "the restarted operator exited"
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        log.close()


class FreezingProxy:
    """A TCP relay to the API server whose open connections can go silent at once.

    A frozen connection stays open but relays nothing more, in either direction:
    the half-dead stream that a NAT or load balancer leaves behind, which TCP alone
    does not notice for a long time. Connections opened afterwards work normally.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.freeze()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        for pump in self._pumps:
            pump.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()


async def test_silent_watch_is_abandoned_and_reopened(
    plane: envtest.ControlPlane, client: Kube, tmp_path: Path
) -> None:
    async with FreezingProxy(plane.apiserver_port) as proxy:
        kubeconfig = tmp_path / "via-proxy"
        plane.write_kubeconfig(
            kubeconfig, token=plane.admin_token, server=f"https://127.0.0.1:{proxy.port}"
        )
        tuning = WatchTuning(stall_timeout=3.0, server_timeout=(600, 600))
        async with run_operator(
            plane, kubeconfig=kubeconfig, tuning=tuning, namespaces=("a",)
        ) as manager:
            await create_route(client, staticroute("r", "a"))
            await wait_for(_cm_exists(client, "a", "r-config"), what="first ConfigMap")
            restarts = manager.parts.routes.restarts
            proxy.freeze()  # every open connection, the watches among them, goes silent
            await create_route(client, staticroute("after", "a"))
            await wait_for(
                _cm_exists(client, "a", "after-config"),
                timeout=90,
                what="a change made after the stall to be applied",
            )
            assert manager.parts.routes.restarts > restarts
