"""Measurements 1 and 2: convergence of new StaticRoutes, by the operator and by the floor.

Both runs go through the same loader and the same watch: N StaticRoutes are created
as fast as the loader can, and the time is taken from the first create to the
arrival of the last ``ConfigMapReady=True``. The work is done either by the
operator or by the floor client (:mod:`bench.floor`), each a separate process with
the same number of workers; their order alternates between repeats so that a drift
of the machine does not favour one of them.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.harness import CONFIGMAP_READY, Harness, per_object
from bench.workload import ConditionWatch, create_namespace, load, route_name
from router_controller_dev import prom
from router_controller_dev.processes import OperatorProcess, die_with_parent

LOADER_WRITE = "POST staticroutes"


async def converge(
    h: Harness, namespace: str, count: int, cpu: Callable[[], float]
) -> dict[str, Any]:
    """Load ``count`` StaticRoutes and time them to ConfigMapReady; ``cpu``: the CPU
    seconds so far of the process doing the work."""
    await create_namespace(h.kube, namespace)
    watch = ConditionWatch(h.kube, namespace, (CONFIGMAP_READY,))
    await watch.start()
    cpu_before = cpu()
    started = time.monotonic()
    load_seconds = await load(
        h.kube,
        namespace,
        [route_name(i) for i in range(count)],
        concurrency=h.sizes.loader_concurrency,
        with_router=False,
    )
    last = await watch.wait_count(CONFIGMAP_READY, count, timeout=60 + count * 0.2)
    writes_converged = await h.writes()  # what it took to converge, Events sent later excluded
    await watch.stop()
    seconds = last - started
    return {
        "seconds": round(seconds, 3),
        "objects_per_second": round(count / seconds, 1),
        "load_seconds": round(load_seconds, 3),
        "cpu_seconds": cpu() - cpu_before,
        "writes_converged": writes_converged,
    }


async def converge_operator(
    h: Harness, namespace: str, count: int, *, keep: bool = False
) -> tuple[dict[str, Any], OperatorProcess | None]:
    """Convergence by the operator; ``keep`` leaves it running and returns it."""
    writes_before = await h.writes()
    process = await h.start_operator(namespace)
    try:
        run = await converge(h, namespace, count, process.cpu_seconds)
        await process.wait_idle()
        _writes_per_object(run, writes_before, await h.writes(), count)
        # More than one means reconciles the watch events of its own writes caused.
        reconciles, _, _ = await process.queue_state()
        run["reconciles_per_object"] = round(reconciles / count, 3)
    except BaseException:
        await process.close()
        raise
    run["cpu_seconds"] = round(run["cpu_seconds"], 3)
    run["cpu_seconds_per_object"] = round(run["cpu_seconds"] / count, 5)
    if keep:
        return run, process
    await process.close()
    return run, None


async def converge_floor(h: Harness, namespace: str, count: int) -> dict[str, Any]:
    """Convergence by the floor client; its CPU time is its own count, less its start-up."""
    await create_namespace(h.kube, namespace)
    writes_before = await h.writes()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.floor", f"--kubeconfig={h.plane.kubeconfig}",
        f"--namespace={namespace}", f"--workers={h.sizes.workers}", f"--count={count}",
        stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"floor client did not start: {line!r}")
        cpu_at_start = float(line[1])
        # The floor counts its own CPU (below): it may have exited by the time the
        # last ConfigMapReady arrives here.
        run = await converge(h, namespace, count, lambda: 0.0)
        out = (await proc.stdout.read()).decode()
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    done = out.split()
    run["cpu_seconds"] = round(float(done[2]) - cpu_at_start, 3)
    run["cpu_seconds_per_object"] = round(run["cpu_seconds"] / count, 5)
    _writes_per_object(run, writes_before, await h.writes(), count)
    return run


def _writes_per_object(
    run: dict[str, Any], before: Counter[str], after: Counter[str], count: int
) -> None:
    """Writes per StaticRoute until the last one converged, and in all (Events included)."""
    converged = prom.delta(run.pop("writes_converged"), before)
    converged.pop(LOADER_WRITE, None)  # the benchmark's own creates of the StaticRoutes
    run["writes_per_object_converging"] = round(sum(converged.values()) / count, 3)
    run["writes_converging"] = per_object(converged, count)
    run["writes_per_object"] = per_object(prom.delta(after, before), count)


async def convergence(
    h: Harness, count: int, repeats: int, *, keep: bool = False
) -> OperatorProcess | None:
    """Operator and floor runs (alternating which goes first); ``keep``: the last operator."""
    runs: dict[str, list[dict[str, Any]]] = {"operator": [], "floor": []}
    kept: OperatorProcess | None = None
    for rep in range(1, repeats + 1):
        order = ("operator", "floor") if rep % 2 else ("floor", "operator")
        for who in order:
            namespace = f"conv-{who}-{count}-r{rep}"
            h.progress(f"convergence N={count} run {rep}/{repeats}: {who}")
            if who == "floor":
                run = await converge_floor(h, namespace, count)
            else:
                last = keep and rep == repeats
                run, process = await converge_operator(h, namespace, count, keep=last)
                kept = process or kept
            run["namespace"] = namespace
            runs[who].append(run)
            if h.on_first_rate is not None:
                h.on_first_rate(run["objects_per_second"])
                h.on_first_rate = None
            h.progress(
                f"  {who}: {run['seconds']:.2f}s, {run['objects_per_second']:.0f}/s, "
                f"{run['cpu_seconds_per_object'] * 1000:.2f} ms CPU/object, "
                f"{run['writes_per_object_converging']:.2f} writes/object until converged"
            )
    summary: dict[str, Any] = {"runs": runs}
    for who in runs:
        seconds = statistics.median(r["seconds"] for r in runs[who])
        summary[who] = {
            "seconds": round(seconds, 3),
            "objects_per_second": round(count / seconds, 1),
            "cpu_seconds_per_object": round(
                statistics.median(r["cpu_seconds_per_object"] for r in runs[who]), 5
            ),
            "writes_per_object": runs[who][-1]["writes_per_object"],
            "writes_per_object_converging": max(
                r["writes_per_object_converging"] for r in runs[who]
            ),
        }
        if who == "operator":
            summary[who]["reconciles_per_object"] = statistics.median(
                r["reconciles_per_object"] for r in runs[who]
            )
    summary["ratio"] = round(summary["operator"]["seconds"] / summary["floor"]["seconds"], 3)
    h.results.setdefault("convergence", {})[str(count)] = summary
    return kept
