"""Measurements 8 and 9: a big cluster around the StaticRoutes, and many namespaces.

8. *Big cluster*: the operator watching all namespaces, with N StaticRoutes to
   converge, once on an empty cluster and once next to 10,000 unrelated Services and
   10,000 EndpointSlices of 100 endpoints each in other namespaces (as a cluster of
   a few hundred nodes holds). Memory must follow the StaticRoutes, not the cluster:
   the figures are peak RSS and convergence time of both, side by side.
9. *Many namespaces*: the operator started with ``--namespaces`` listing 200
   namespaces (a watch per kind and namespace), 5 StaticRoutes in each: time to
   ready and to converge. Both waits are bounded, so an operator that never gets
   there is reported as such rather than hanging the run.

Each runs on a control plane of its own (with a Service CIDR big enough for the
Services), since the operator under measurement watches all namespaces (8) or
hundreds of them (9), and nothing left by other measurements may be in its way.
The unrelated objects are created with a fixed number of requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.convergence import converge
from bench.harness import CONFIGMAP_READY, Harness, Sizes
from bench.workload import condition_is, create_namespace, route_name, staticroute
from router_controller.api import STATICROUTES
from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube, Object
from router_controller.metrics import Metrics
from router_controller_dev import envtest
from router_controller_dev.procstat import MIB

SERVICE_CIDR = "10.96.0.0/16"  # room for every Service of the big cluster
SCENARIOS = ("big-cluster", "many-namespaces")


@dataclass(frozen=True)
class ScaleSizes:
    services: int = 10_000
    endpointslices: int = 10_000
    endpoints_per_slice: int = 100
    other_namespaces: int = 10
    staticroutes: int = 1000
    namespaces: int = 200
    routes_per_namespace: int = 5
    ready_timeout: float = 180.0
    converge_timeout: float = 300.0


FULL_SCALE = ScaleSizes()
QUICK_SCALE = ScaleSizes(
    services=500,
    endpointslices=500,
    other_namespaces=2,
    staticroutes=100,
    namespaces=20,
    converge_timeout=120.0,
)


# -- the big cluster's unrelated objects ---------------------------------------------------


def _address(n: int) -> str:
    return f"10.{64 + n // 65536}.{n // 256 % 256}.{n % 256}"


def unrelated_service(namespace: str, index: int) -> Object:
    """A ClusterIP Service without selector (no controller makes slices for it)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"svc-{index:05d}",
            "namespace": namespace,
            "labels": {"app": f"app-{index:05d}", "team": "elsewhere"},
            "annotations": {"example.com/owner": "team-elsewhere"},
        },
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }


def unrelated_slice(namespace: str, index: int, endpoints: int) -> Object:
    """An EndpointSlice as the EndpointSlice controller writes one: endpoints of Pods."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{index:05d}-abcde",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": f"svc-{index:05d}",
                "endpointslice.kubernetes.io/managed-by": "bench.router-controller",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [_address(index * endpoints + j)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"node-{(index + j) % 300:03d}",
                "zone": f"zone-{j % 3}",
                "targetRef": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": f"svc-{index:05d}-{j:03d}-7d9f8c6b5-x2x9q",
                    "uid": f"00000000-0000-4000-8000-{index:06d}{j:06d}",
                },
            }
            for j in range(endpoints)
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


async def create_all(kube: Kube, bodies: list[tuple[str, Object]], *, concurrency: int) -> float:
    """POST every (path, body) with ``concurrency`` requests in flight; seconds taken."""
    pending = iter(bodies)
    started = time.monotonic()

    async def creator() -> None:
        for path, body in pending:
            await kube.create(path, body)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(creator())
    return time.monotonic() - started


async def populate_cluster(h: Harness, s: ScaleSizes) -> dict[str, Any]:
    namespaces = [f"elsewhere-{i}" for i in range(s.other_namespaces)]
    for ns in namespaces:
        await create_namespace(h.kube, ns)
    home = [namespaces[i % len(namespaces)] for i in range(max(s.services, s.endpointslices))]
    services = [(SERVICES.path(home[i]), unrelated_service(home[i], i)) for i in range(s.services)]
    h.progress(f"  creating {s.services} unrelated Services")
    services_seconds = await create_all(h.kube, services, concurrency=h.sizes.loader_concurrency)
    del services
    h.progress(f"  creating {s.endpointslices} EndpointSlices of {s.endpoints_per_slice} endpoints")
    started = time.monotonic()
    batch = 500  # bodies of 25 KB each: build them a batch at a time
    for first in range(0, s.endpointslices, batch):
        slices = [
            (ENDPOINTSLICES.path(home[i]), unrelated_slice(home[i], i, s.endpoints_per_slice))
            for i in range(first, min(first + batch, s.endpointslices))
        ]
        await create_all(h.kube, slices, concurrency=h.sizes.loader_concurrency)
    return {
        "services": s.services,
        "endpointslices": s.endpointslices,
        "endpoints_per_slice": s.endpoints_per_slice,
        "namespaces": s.other_namespaces,
        "services_load_seconds": round(services_seconds, 1),
        "endpointslices_load_seconds": round(time.monotonic() - started, 1),
    }


async def converge_all_namespaces(
    h: Harness, s: ScaleSizes, label: str, namespace: str
) -> dict[str, Any]:
    """Operator on all namespaces; time to ready, N StaticRoutes to converge, peak RSS."""
    async with h.operator() as process:
        ready = time.monotonic() - process.started_at
        h.progress(f"  {label}: ready in {ready:.1f}s; converging {s.staticroutes} StaticRoutes")
        run = await converge(h, namespace, s.staticroutes, process.cpu_seconds)
        await process.wait_idle(stable=2.0)
        memory = process.memory()
    out = {
        "ready_seconds": round(ready, 2),
        "converge_seconds": run["seconds"],
        "objects_per_second": run["objects_per_second"],
        "peak_rss_mib": round(memory["VmHWM"] / MIB, 1),
        "rss_mib": round(memory["VmRSS"] / MIB, 1),
    }
    h.progress(
        f"  {label}: converged in {out['converge_seconds']:.2f}s, "
        f"peak RSS {out['peak_rss_mib']:.1f} MiB"
    )
    return out


# -- many namespaces ------------------------------------------------------------------------


class ClusterConditionWatch:
    """When each StaticRoute, in any namespace, was first seen with a condition True."""

    def __init__(self, kube: Kube, condition: str) -> None:
        self._kube = kube
        self._condition = condition
        self.since: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def _see(self, obj: Object) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if key not in self.since and condition_is(obj, self._condition):
            self.since[key] = time.monotonic()

    async def start(self) -> None:
        token, version = "", ""
        while True:
            params = {"limit": "500", **({"continue": token} if token else {})}
            page = await self._kube.get(STATICROUTES.path(), **params)
            for item in page.get("items") or []:
                self._see(item)
            token = page["metadata"].get("continue") or ""
            if not token:
                version = str(page["metadata"]["resourceVersion"])
                break
        self._task = asyncio.create_task(self._watch(version), name="watch all staticroutes")

    async def _watch(self, version: str) -> None:
        while True:
            params = {"resourceVersion": version, "allowWatchBookmarks": "true"}
            async for event in self._kube.watch(
                STATICROUTES.path(), params=params, stall_timeout=120
            ):
                obj = event["object"]
                version = obj["metadata"].get("resourceVersion") or version
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._see(obj)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_count(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.since) < count:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


async def many_namespaces(h: Harness, s: ScaleSizes) -> dict[str, Any]:
    namespaces = [f"ns-{i:03d}" for i in range(s.namespaces)]
    count = s.namespaces * s.routes_per_namespace
    h.progress(f"many namespaces: {s.namespaces} namespaces x {s.routes_per_namespace}")
    for ns in namespaces:
        await create_namespace(h.kube, ns)
    out: dict[str, Any] = {"namespaces": s.namespaces, "staticroutes": count}
    watch = ClusterConditionWatch(h.kube, CONFIGMAP_READY)
    await watch.start()
    try:
        process = await h.start_operator(*namespaces)
    except (TimeoutError, RuntimeError) as err:
        await watch.stop()
        out.update(converged=False, problem=f"operator not ready: {err}")
        h.progress(f"  {out['problem']}")
        return out
    try:
        out["ready_seconds"] = round(time.monotonic() - process.started_at, 2)
        bodies = [
            (STATICROUTES.path(ns), staticroute(route_name(i), ns))
            for i in range(s.routes_per_namespace)
            for ns in namespaces
        ]
        started = time.monotonic()
        await create_all(h.kube, bodies, concurrency=h.sizes.loader_concurrency)
        done = await watch.wait_count(count, s.converge_timeout)
        seen = len(watch.since)
        out["converged"] = done
        out["configmap_ready"] = seen
        if done:
            out["converge_seconds"] = round(max(watch.since.values()) - started, 2)
            out["objects_per_second"] = round(count / out["converge_seconds"], 1)
            h.progress(f"  converged in {out['converge_seconds']:.2f}s")
        else:
            alive = process.proc is not None and process.proc.poll() is None
            out["problem"] = (
                f"only {seen} of {count} ConfigMapReady after {s.converge_timeout:.0f}s"
                + (
                    ""
                    if alive
                    else f"; the operator exited ({process.proc and process.proc.poll()})"
                )
            )
            h.progress(f"  NOT CONVERGED: {out['problem']}")
        if process.proc is not None and process.proc.poll() is None:
            out["peak_rss_mib"] = round(process.memory()["VmHWM"] / MIB, 1)
    finally:
        await watch.stop()
        await process.close()
    return out


# -- running and reporting ------------------------------------------------------------------


def _harness(
    plane: envtest.ControlPlane, kube: Kube, sizes: Sizes, workdir: Path, results: dict[str, Any],
    progress: Callable[[str], None],
) -> Harness:  # fmt: skip
    return Harness(
        plane=plane,
        kube=kube,
        sizes=sizes,
        workdir=workdir,
        progress=progress,
        results=results,
        on_first_rate=lambda _rate: None,
    )


async def _on_plane(
    plane: envtest.ControlPlane,
    sizes: Sizes,
    workdir: Path,
    results: dict[str, Any],
    progress: Callable[[str], None],
    body: Callable[[Harness], Any],
) -> Any:
    kube = await Kube.connect(
        kubeconfig=str(plane.kubeconfig), metrics=Metrics(process=False), user_agent="bench"
    )
    try:
        return await body(_harness(plane, kube, sizes, workdir, results, progress))
    finally:
        await kube.close()


def run(
    sizes: Sizes,
    workdir: Path,
    results: dict[str, Any],
    progress: Callable[[str], None],
    *,
    quick: bool,
    only: frozenset[str] | None = None,
) -> None:
    """Both measurements (or those in ``only``), on fresh control planes; fills ``results``."""
    s = QUICK_SCALE if quick else FULL_SCALE
    if only is None or "big-cluster" in only:
        _big_cluster(sizes, workdir, results, progress, s)
    if only is None or "many-namespaces" in only:
        with envtest.running(crds=True) as plane:

            async def namespaces(h: Harness) -> None:
                results["many_namespaces"] = await many_namespaces(h, s)

            asyncio.run(_on_plane(plane, sizes, workdir, results, progress, namespaces))


def _big_cluster(
    sizes: Sizes,
    workdir: Path,
    results: dict[str, Any],
    progress: Callable[[str], None],
    s: ScaleSizes,
) -> None:
    """An empty and a big cluster side by side; convergence runs alternate between them.

    The order empty, big, big, empty cancels a steady drift of the machine's load; each
    cluster's second run also finds the first run's StaticRoutes, so both are alike.
    Peak RSS is the first run's of each (nothing but the cluster itself in the cache).
    """
    big: dict[str, Any] = {"staticroutes": s.staticroutes}
    results["big_cluster"] = big
    progress("big cluster: an empty and a big cluster side by side, operator on all namespaces")
    with (
        envtest.running(service_cidr=SERVICE_CIDR, crds=True) as empty_plane,
        envtest.running(service_cidr=SERVICE_CIDR, crds=True) as big_plane,
    ):
        asyncio.run(_compare(empty_plane, big_plane, sizes, workdir, results, progress, s))
    for label in ("empty", "big"):
        runs = big[f"{label}_runs"]
        big[label] = {
            **runs[0],
            "converge_seconds": round(statistics.mean(r["converge_seconds"] for r in runs), 3),
        }
    big["converge_ratio"] = round(
        big["big"]["converge_seconds"] / big["empty"]["converge_seconds"], 3
    )


async def _compare(
    empty_plane: envtest.ControlPlane,
    big_plane: envtest.ControlPlane,
    sizes: Sizes,
    workdir: Path,
    results: dict[str, Any],
    progress: Callable[[str], None],
    s: ScaleSizes,
) -> None:
    big = results["big_cluster"]
    async with contextlib.AsyncExitStack() as stack:
        harness: dict[str, Harness] = {}
        for label, plane in (("empty", empty_plane), ("big", big_plane)):
            kube = await Kube.connect(
                kubeconfig=str(plane.kubeconfig), metrics=Metrics(process=False), user_agent="bench"
            )
            stack.push_async_callback(kube.close)
            harness[label] = _harness(plane, kube, sizes, workdir, results, progress)
        big["cluster"] = await populate_cluster(harness["big"], s)
        for n, label in enumerate(("empty", "big", "big", "empty")):
            run = await converge_all_namespaces(harness[label], s, label, f"routes-{n}")
            big.setdefault(f"{label}_runs", []).append(run)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    big = results.get("big_cluster") or {}
    if "big" in big:
        peak = big["big"]["peak_rss_mib"]
        out.append(
            {
                "name": "big cluster peak RSS (MiB)",
                "target": "< 150",
                "value": peak,
                "met": peak < 150,
            }
        )
    if "converge_ratio" in big:
        ratio = big["converge_ratio"]
        out.append(
            {
                "name": "big cluster convergence / empty",
                "target": "<= 1.25",
                "value": ratio,
                "met": ratio <= 1.25,
            }
        )
    many = results.get("many_namespaces") or {}
    if many:
        out.append(
            {
                "name": "many namespaces converged",
                "target": "all",
                "value": many.get("configmap_ready", 0),
                "met": bool(many.get("converged")),
            }
        )
    return out  # fmt: skip


def render(results: dict[str, Any]) -> str:
    """Rows for measurements 8 and 9, below the main table."""
    met = {t["name"]: t["met"] for t in targets(results)}

    def verdict(name: str) -> str:
        return "" if name not in met else ("ok" if met[name] else "MISSED")

    lines = []
    big = results.get("big_cluster") or {}
    for label in ("empty", "big"):
        if label not in big:
            continue
        b = big[label]
        around = "nothing else"
        if label == "big" and "cluster" in big:
            c = big["cluster"]
            around = (
                f"{c['services']} Services, {c['endpointslices']} EndpointSlices x "
                f"{c['endpoints_per_slice']} endpoints"
            )
        lines.append(
            f"8 big cluster, {big['staticroutes']} StaticRoutes next to {around}: "
            f"ready {b['ready_seconds']:.1f} s, converged {b['converge_seconds']:.2f} s, "
            f"peak RSS {b['peak_rss_mib']:.1f} MiB (now {b['rss_mib']:.1f})"
            + (f"  [< 150 MiB: {verdict('big cluster peak RSS (MiB)')}]" if label == "big" else "")
        )
    if "converge_ratio" in big:
        lines.append(
            f"8 big cluster convergence / empty cluster's: {big['converge_ratio']:.2f}  "
            f"[<= 1.25: {verdict('big cluster convergence / empty')}]"
        )
    many = results.get("many_namespaces") or {}
    if many:
        per = many["staticroutes"] // many["namespaces"]
        head = f"9 many namespaces, {many['namespaces']} x {per}"
        if many.get("converged"):
            lines.append(
                f"{head}: ready {many['ready_seconds']:.1f} s, converged "
                f"{many['converge_seconds']:.2f} s ({many['objects_per_second']:.0f} obj/s), "
                f"peak RSS {many.get('peak_rss_mib', 0):.1f} MiB"
            )
        else:
            lines.append(f"{head}: NOT CONVERGED: {many.get('problem')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.cluster_scale [--quick]``: only measurements 8 and 9."""
    import argparse
    import json
    import tempfile

    from bench.harness import FULL, QUICK
    from bench.run import Progress

    parser = argparse.ArgumentParser(prog="python -m bench.cluster_scale")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=SCENARIOS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    only = frozenset([args.only]) if args.only else None
    try:
        run(
            QUICK if args.quick else FULL, workdir, results, Progress(), quick=args.quick, only=only
        )
    finally:
        print(json.dumps(results, indent=2))
        print(render(results))
        print(f"operator logs in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
