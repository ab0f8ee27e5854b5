"""What every measurement needs: sizes, the operator process, the API server's counts.

A :class:`Harness` owns one control plane connection, the figures collected so far
and the numbering of operator processes (each logs to a file of its own in the work
folder). Each scenario works in namespaces of its own and runs the operator
restricted to them (``--namespaces``), so objects left by an earlier scenario
neither cost the operator under measurement nor get touched by it. Only one
operator runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workload import ConditionWatch, create_namespace, load, route_name
from router_controller.kube import Kube
from router_controller_dev import prom
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.processes import OperatorProcess, operator_command

CONFIGMAP_READY = "ConfigMapReady"
READY = "Ready"
UNHEALTHY = "RouterHealthy=False"


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; ``--quick`` shrinks them."""

    small: int = 1000  # convergence, update latency, steady state, probing under failure
    large: int = 5000  # convergence, restart
    largest: int = 10000  # memory: the third size, after ``small`` and ``large``
    repeats: int = 3  # convergence at the small size, operator and floor each
    update_samples: int = 200
    update_gap: float = 0.1  # seconds between two spec updates
    steady_seconds: float = 60.0
    new_route_repeats: int = 5
    workers: int = 4  # the operator's --max-concurrent-reconciles and the floor's workers
    loader_concurrency: int = 32


FULL = Sizes()
QUICK = Sizes(
    small=100,
    large=300,
    largest=600,
    repeats=2,
    update_samples=40,
    update_gap=0.05,
    steady_seconds=10.0,
    new_route_repeats=3,
)


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def per_object(writes: dict[str, int], count: int) -> dict[str, float]:
    return {key: round(value / count, 3) for key, value in writes.items()}


class Harness:
    """One control plane, the operator processes run against it, and the figures so far."""

    def __init__(
        self,
        *,
        plane: ControlPlane,
        kube: Kube,
        sizes: Sizes,
        workdir: Path,
        progress: Callable[[str], None],
        results: dict[str, Any],
        on_first_rate: Callable[[float], None],
    ) -> None:
        self.plane = plane
        self.kube = kube
        self.sizes = sizes
        self.workdir = workdir
        self.progress = progress
        self.results = results
        self.on_first_rate: Callable[[float], None] | None = on_first_rate
        self._operators = 0

    # -- plumbing ----------------------------------------------------------------------

    async def writes(self) -> Counter[str]:
        """The API server's write counts so far on the operator's kinds."""
        text = (await asyncio.to_thread(self.plane.get, "/metrics")).decode()
        return prom.writes_by_resource(text)

    async def start_operator(self, *namespaces: str) -> OperatorProcess:
        """An operator process watching ``namespaces``, ready; the caller closes it."""
        self._operators += 1
        process = OperatorProcess(
            operator_command(
                self.plane.kubeconfig,
                "--metrics-bind-address=127.0.0.1:0",
                "--metrics-secure=false",
                f"--namespaces={','.join(namespaces)}",
                f"--max-concurrent-reconciles={self.sizes.workers}",
            ),
            self.workdir / f"operator-{self._operators}.log",
        )
        try:
            process.start()
            await process.wait_ready()
        except BaseException:
            await process.close()
            raise
        return process

    @contextlib.asynccontextmanager
    async def operator(
        self, *namespaces: str, idle_on_exit: bool = True
    ) -> AsyncIterator[OperatorProcess]:
        """An operator process watching ``namespaces``, ready; idle and stopped on exit.

        Waiting for it to go idle before stopping it keeps its last writes out of the
        next measurement.
        """
        process = await self.start_operator(*namespaces)
        try:
            yield process
            if idle_on_exit:
                await process.wait_idle()
        finally:
            await process.close()

    async def populate(
        self, namespace: str, count: int, *, with_router: bool = False, condition: str
    ) -> ConditionWatch:
        """Create ``count`` StaticRoutes and wait for ``condition`` on all (operator running)."""
        await create_namespace(self.kube, namespace)
        watch = ConditionWatch(self.kube, namespace, (CONFIGMAP_READY, READY, UNHEALTHY))
        await watch.start()
        names = [route_name(i) for i in range(count)]
        await load(
            self.kube,
            namespace,
            names,
            concurrency=self.sizes.loader_concurrency,
            with_router=with_router,
        )
        await watch.wait_count(condition, count, timeout=60 + count * 0.2)
        return watch
