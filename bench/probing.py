"""Probe scheduling at scale: CPU and lateness with 10,000 router endpoints, hung ones or not.

The operator probes every (StaticRoute, endpoint) pair every ``periodSeconds``; the
figure that matters to a user is how late those probes start (a late probe is a
router failure noticed late), and how much CPU keeping the schedule costs. Both are
measured here on the operator run as its own process:

1. **healthy only**: N StaticRoutes, each pointing at a Service with R ready
   endpoints (R router ports of a stand-in router that answers like vllm_router),
   ``periodSeconds: 10``: N x R probes every 10 s. Once all are Ready, a window of
   ``window`` seconds gives the operator's CPU share of one core (``utime + stime``
   from ``/proc``) and the lateness of the probes that started in it;
2. **with hung endpoints**: the same, while another namespace holds StaticRoutes whose
   endpoints accept TCP and never answer, probed with the largest timeout their
   period allows. The healthy namespace's lateness must not move.

Lateness is what the operator itself records, ``router_controller_probe_lateness_seconds``
(actual start minus scheduled start, per namespace): the difference of two scrapes
at the window's ends, its p99 estimated as Prometheus's ``histogram_quantile`` does
(linear within a bucket), and the share of probes that started within a second,
which is exact (a bucket bound). Routers share ports between StaticRoutes (S
Services, each with R ports), so a full run needs S x R listening sockets in the
benchmark process, not N x R; each (StaticRoute, endpoint) pair is still probed on
its own schedule, which is what the operator pays for.

Run alone with ``python -m bench.probing [--quick]``, or as part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import CONFIGMAP_READY, READY, UNHEALTHY, Harness
from bench.harness import QUICK as HARNESS_QUICK
from bench.workload import SPEC, ConditionWatch, create_namespace, route_name, running_config
from router_controller.api import STATICROUTES
from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube, Object
from router_controller.metrics import Metrics
from router_controller_dev import envtest, prom
from router_controller_dev.fakerouter import endpointslice, host_address
from router_controller_dev.hostile import HungRouter
from router_controller_dev.processes import OperatorProcess

SCENARIOS = ("probe-scheduling",)  # what ``make bench ARGS="--only NAME"`` selects
LATENESS = "router_controller_probe_lateness_seconds"
DURATION = "router_controller_probe_duration_seconds"
HEALTHY_NS = "probe-healthy"
HUNG_NS = "probe-hung"
PERIOD = 10
# Seconds between looks at the operator's queue while waiting for it to go idle. Each
# look is a scrape of its /metrics, which at 1,000 StaticRoutes is 3.4 MB of text and
# about 0.3 s of the operator's event loop; looking every 0.1 s (the default) kept it
# busy scraping through the whole Event burst that follows the Ready StaticRoutes, so
# its probes fell up to 30 s behind, and the healthy-only window opened on that backlog.
IDLE_POLL = 5.0


@dataclass(frozen=True)
class ProbeSizes:
    routes: int = 1000  # StaticRoutes in the healthy namespace
    replicas: int = 10  # endpoints per router Service
    services: int = 100  # router Services (the routes share them, round robin)
    hung_routes: int = 100
    hung_services: int = 1
    window: float = 60.0  # seconds measured in each phase
    concurrency: int = 32  # API requests in flight while loading

    @property
    def endpoints(self) -> int:
        return self.routes * self.replicas

    @property
    def hung_endpoints(self) -> int:
        return self.hung_routes * self.replicas


FULL = ProbeSizes()
QUICK = ProbeSizes(routes=100, services=10, hung_routes=10, window=20.0)


class _Answer(asyncio.Protocol):
    """One connection: read the request head, write the canned answer, close."""

    def __init__(self, router: ManyPortRouter) -> None:
        self._router = router
        self._seen = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._seen += data
        if b"\r\n\r\n" in self._seen and self._transport is not None:
            self._router.requests += 1
            self._transport.write(self._router.answer)
            self._transport.close()


class ManyPortRouter:
    """``GET /health`` -> 200 with a fixed ``dynamic_config``, on ``count`` ports at once.

    A bare asyncio protocol writing one canned HTTP/1.1 answer (what vllm_router's
    uvicorn sends, ``Content-Length`` and ``Connection: close``), so that serving 1,000
    probes a second costs the benchmark process little and the figures are the
    operator's, not the stand-in's.
    """

    def __init__(self, config: dict[str, Any], address: str, count: int) -> None:
        self.address = address
        self.count = count
        body = json.dumps({"status": "healthy", "dynamic_config": config}).encode()
        self.answer = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self._servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self.requests = 0

    async def start(self) -> list[int]:
        loop = asyncio.get_running_loop()
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, 0))
            self.ports.append(int(sock.getsockname()[1]))
            server = await loop.create_server(lambda: _Answer(self), sock=sock, backlog=256)
            self._servers.append(server)
        return self.ports

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()


async def bounded(jobs: list[Callable[[], Awaitable[Any]]], concurrency: int) -> None:
    """Run ``jobs`` with at most ``concurrency`` of them at once."""
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


def _service(namespace: str, name: str) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": 8000}]},
    }


def _route(namespace: str, index: int, service: str, check: dict[str, int]) -> Object:
    return {
        "apiVersion": "production-stack.vllm.ai/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {"name": route_name(index), "namespace": namespace},
        "spec": {**SPEC, "routerRef": {"name": service}, "healthCheck": check},
    }


async def expose_all(
    kube: Kube, namespace: str, address: str, ports: list[int], replicas: int, concurrency: int
) -> list[str]:
    """One Service per ``replicas`` ports, each port an EndpointSlice; the Service names."""
    names = [f"router-{s:03d}" for s in range(len(ports) // replicas)]
    jobs: list[Callable[[], Awaitable[Any]]] = []
    for s, name in enumerate(names):
        for r in range(replicas):
            body = endpointslice(namespace, name, r, address, ports[s * replicas + r])
            jobs.append(functools.partial(kube.create, ENDPOINTSLICES.path(namespace), body))
    await bounded(jobs, concurrency)
    services: list[Callable[[], Awaitable[Any]]] = [
        functools.partial(kube.create, SERVICES.path(namespace), _service(namespace, name))
        for name in names
    ]
    await bounded(services, concurrency)
    return names


async def create_routes(
    kube: Kube,
    namespace: str,
    count: int,
    services: list[str],
    check: dict[str, int],
    concurrency: int,
) -> None:
    bodies = [_route(namespace, i, services[i % len(services)], check) for i in range(count)]
    jobs: list[Callable[[], Awaitable[Any]]] = [
        functools.partial(kube.create, STATICROUTES.path(namespace), b) for b in bodies
    ]
    await bounded(jobs, concurrency)


# -- reading the lateness histogram ------------------------------------------------------

Buckets = dict[float, float]  # upper bound -> cumulative count


def lateness_buckets(text: str, namespace: str) -> Buckets:
    out: Buckets = {}
    for _, labels, value in prom.samples(text, (f"{LATENESS}_bucket",)):
        if labels.get("namespace") == namespace:
            out[float(labels["le"])] = value
    return out


def quantile(q: float, before: Buckets, after: Buckets) -> float:
    """``histogram_quantile(q, after - before)``: linear within the bucket it falls in."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bound: that bound, as Prometheus does
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def _duration_buckets(before: str, after: str, namespace: str) -> tuple[Buckets, Buckets]:
    """``router_controller_probe_duration_seconds`` of a namespace, summed over its routes."""
    out: list[Buckets] = []
    for text in (before, after):
        buckets: Buckets = {}
        for _, labels, value in prom.samples(text, (f"{DURATION}_bucket",)):
            if labels.get("namespace") == namespace:
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
        out.append(buckets)
    return out[0], out[1]


def share_within(bound: float, before: Buckets, after: Buckets) -> float:
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    within = after.get(bound, 0.0) - before.get(bound, 0.0)
    return within / total if total else float("nan")


# -- the scenario ---------------------------------------------------------------------


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread (the event loop) was ready to run but had no CPU.

    The second field of ``/proc/PID/schedstat``: time spent waiting on a run queue
    while other processes held the cores. A probe due then starts late however well
    the operator schedules it, so this is reported next to the lateness.
    """
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


async def _window(
    process: OperatorProcess, seconds: float, namespaces: tuple[str, ...]
) -> dict[str, Any]:
    """CPU and per-namespace lateness over ``seconds`` of steady probing."""
    before_text = await process.metrics()
    cpu_before, own_before = process.cpu_seconds(), time.process_time()
    wait_before = runqueue_wait(process.pid)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    after_text = await process.metrics()
    cpu, own = process.cpu_seconds() - cpu_before, time.process_time() - own_before
    waited = runqueue_wait(process.pid) - wait_before
    elapsed = time.monotonic() - started
    figures: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "cpu_percent_of_a_core": round(100 * cpu / elapsed, 1),
        "runqueue_wait_percent": round(100 * waited / elapsed, 1),
        # The stand-in routers run in this process: if it is saturated, so are they.
        "benchmark_process_cpu_percent": round(100 * own / elapsed, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    for namespace in namespaces:
        before = lateness_buckets(before_text, namespace)
        after = lateness_buckets(after_text, namespace)
        probes = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
        durations = _duration_buckets(before_text, after_text, namespace)
        figures[namespace] = {
            "probes": int(probes),
            "probe_duration_p50_ms": round(1000 * quantile(0.5, *durations), 1),
            "probes_per_second": round(probes / elapsed, 1),
            "lateness_p50_ms": round(1000 * quantile(0.5, before, after), 1),
            "lateness_p99_ms": round(1000 * quantile(0.99, before, after), 1),
            "started_within_1s_percent": round(100 * share_within(1.0, before, after), 2),
        }
    return figures


@contextlib.asynccontextmanager
async def _routers(
    address: str, healthy_ports: int, hung_ports: int
) -> AsyncIterator[tuple[ManyPortRouter, list[HungRouter]]]:
    healthy = ManyPortRouter(running_config(SPEC), address, healthy_ports)
    hung = [HungRouter(host=address) for _ in range(hung_ports)]
    try:
        await healthy.start()
        for router in hung:
            await router.start()
        yield healthy, hung
    finally:
        await healthy.stop()
        for router in hung:
            await router.stop()


async def measure(h: Harness, sizes: ProbeSizes) -> None:
    """Both phases; figures go to ``h.results["probe_scheduling"]``."""
    address = host_address()
    healthy_ports = sizes.services * sizes.replicas
    hung_ports = sizes.hung_services * sizes.replicas
    results: dict[str, Any] = {"sizes": asdict(sizes), "period_seconds": PERIOD}
    h.results["probe_scheduling"] = results
    async with _routers(address, healthy_ports, hung_ports) as (healthy, hung):
        for namespace in (HEALTHY_NS, HUNG_NS):
            await create_namespace(h.kube, namespace)
        h.progress(
            f"probe scheduling: {sizes.endpoints} healthy endpoints "
            f"({sizes.routes} StaticRoutes x {sizes.replicas}) at periodSeconds {PERIOD}"
        )
        services = await expose_all(
            h.kube, HEALTHY_NS, address, healthy.ports, sizes.replicas, sizes.concurrency
        )
        hung_ports_list = [r.port for r in hung]
        hung_services = await expose_all(
            h.kube, HUNG_NS, address, hung_ports_list, sizes.replicas, sizes.concurrency
        )
        async with h.operator(HEALTHY_NS, HUNG_NS, idle_on_exit=False) as process:
            watch = ConditionWatch(h.kube, HEALTHY_NS, (CONFIGMAP_READY, READY, UNHEALTHY))
            await watch.start()
            started = time.monotonic()
            check = {"periodSeconds": PERIOD, "timeoutSeconds": 5}
            await create_routes(
                h.kube, HEALTHY_NS, sizes.routes, services, check, sizes.concurrency
            )
            await watch.wait_count(READY, sizes.routes, timeout=120 + sizes.routes * 0.2)
            results["ready_seconds"] = round(time.monotonic() - started, 1)
            await watch.stop()
            await process.wait_idle(stable=2.0, interval=IDLE_POLL)
            h.progress(f"  all Ready in {results['ready_seconds']}s; measuring {sizes.window:.0f}s")
            requests = healthy.requests
            results["healthy_only"] = await _window(process, sizes.window, (HEALTHY_NS,))
            results["healthy_only"]["router_requests_per_second"] = round(
                (healthy.requests - requests) / sizes.window, 1
            )

            h.progress(
                f"  adding {sizes.hung_endpoints} hung endpoints in {HUNG_NS} "
                f"({sizes.hung_routes} StaticRoutes, timeoutSeconds {PERIOD})"
            )
            hung_watch = ConditionWatch(h.kube, HUNG_NS, (CONFIGMAP_READY,))
            await hung_watch.start()
            hung_check = {"periodSeconds": PERIOD, "timeoutSeconds": PERIOD}
            await create_routes(
                h.kube, HUNG_NS, sizes.hung_routes, hung_services, hung_check, sizes.concurrency
            )
            await hung_watch.wait_count(CONFIGMAP_READY, sizes.hung_routes, timeout=300)
            await hung_watch.stop()
            await asyncio.sleep(PERIOD)  # let the hung probes fill what they may hold
            requests = healthy.requests
            results["with_hung"] = await _window(process, sizes.window, (HEALTHY_NS, HUNG_NS))
            results["with_hung"]["router_requests_per_second"] = round(
                (healthy.requests - requests) / sizes.window, 1
            )
            results["with_hung"]["hung_connections_open"] = sum(
                r.connections for r in hung
            )  # accepted so far
    for line in render(h.results).splitlines():
        h.progress(line)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Lateness p99 of the healthy endpoints below one second, in both phases."""
    probing = results.get("probe_scheduling") or {}
    out = []
    for phase in ("healthy_only", "with_hung"):
        if phase in probing:
            p99 = probing[phase][HEALTHY_NS]["lateness_p99_ms"]
            out.append(
                {
                    "name": f"probe lateness p99 (ms), {phase.replace('_', ' ')}",
                    "target": "< 1000",
                    "value": p99,
                    "met": p99 < 1000,
                }
            )
    return out


def render(results: dict[str, Any]) -> str:
    """The probe figures as lines of text ('' when the scenario did not run)."""
    probing = results.get("probe_scheduling") or {}
    if "healthy_only" not in probing:
        return ""
    sizes = probing["sizes"]
    endpoints = sizes["routes"] * sizes["replicas"]
    hung = sizes["hung_routes"] * sizes["replicas"]
    lines = [f"probe scheduling ({endpoints} healthy endpoints, periodSeconds {PERIOD}):"]

    def line(label: str, phase: dict[str, Any]) -> str:
        ns = phase[HEALTHY_NS]
        ok = ns["lateness_p99_ms"] < 1000
        return (
            f"  {label:<28} CPU {phase['cpu_percent_of_a_core']:5.1f}% of a core, "
            f"{ns['probes_per_second']:7.1f} probes/s, lateness p50 {ns['lateness_p50_ms']:.1f} ms"
            f", p99 {ns['lateness_p99_ms']:.1f} ms (target < 1000 ms: "
            f"{'ok' if ok else 'MISSED'}), {ns['started_within_1s_percent']:.2f}% within 1 s"
            f" (load average {phase['load_average']}, waited for a CPU"
            f" {phase.get('runqueue_wait_percent', float('nan')):.1f}% of the time)"
        )

    lines.append(line("healthy only", probing["healthy_only"]))
    if "with_hung" in probing:
        lines.append(line(f"with {hung} hung elsewhere", probing["with_hung"]))
        own = probing["with_hung"][HUNG_NS]
        lines.append(
            f"  {'(the hung namespace itself)':<28} {own['probes_per_second']:.1f} probes/s, "
            f"lateness p99 {own['lateness_p99_ms']:.0f} ms: its own routers only delay it"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """This scenario alone, on a control plane of its own."""
    from bench.run import Progress  # bench.run imports this module

    parser = argparse.ArgumentParser(prog="python -m bench.probing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 endpoints, 20 s windows")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results: dict[str, Any] = {}

    async def run(plane: envtest.ControlPlane) -> None:
        kube = await Kube.connect(
            kubeconfig=str(plane.kubeconfig), metrics=Metrics(process=False), user_agent="bench"
        )
        try:
            harness = Harness(
                plane=plane,
                kube=kube,
                sizes=HARNESS_QUICK,
                workdir=Path(tempfile.mkdtemp(prefix="bench-probing-")),
                progress=Progress(),
                results=results,
                on_first_rate=lambda _rate: None,
            )
            await measure(harness, sizes)
        finally:
            await kube.close()

    with envtest.running(crds=True) as plane:
        asyncio.run(run(plane))
    print(render(results))
    print(json.dumps(results["probe_scheduling"], indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
