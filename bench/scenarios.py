"""Measurements 3 to 7: update latency, steady state, restarts, memory, probing under failure.

Scenarios reuse what earlier ones converged where that is the point (a restart or a
memory figure with N StaticRoutes already in place), so the order in
:meth:`Bench.run_all` matters.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench import convergence
from bench.harness import CONFIGMAP_READY, READY, UNHEALTHY, Harness, percentile
from bench.workload import (
    SPEC,
    ConditionWatch,
    ConfigMapWatch,
    config_file,
    create_namespace,
    route_name,
    staticroute,
)
from router_controller.api import STATICROUTES, default_config_map_name
from router_controller_dev import prom
from router_controller_dev.fakerouter import FakeRouter, expose, host_address
from router_controller_dev.hostile import HungRouter, expose_at
from router_controller_dev.processes import OperatorProcess
from router_controller_dev.procstat import MIB
from router_controller_dev.waiting import wait_for


class Bench(Harness):
    """Every measurement, in an order where each finds what it needs in place."""

    # -- 5 and 6: restart, memory ----------------------------------------------------------

    async def restart(self, process: OperatorProcess, count: int) -> None:
        """SIGKILL a converged operator and start it again; time to ready and to drained."""
        self.progress(f"restart with N={count} converged")
        await process.wait_idle()
        before = await self.writes()
        process.kill()
        process.start()
        try:
            ready = await process.wait_ready()
            idle_at = await process.wait_idle(stable=2.0)
            writes = prom.delta(await self.writes(), before)
            memory = process.memory()
            reconciles, _, _ = await process.queue_state()
        finally:
            await process.close()
        self.results["restart"] = {
            "n": count,
            "ready_seconds": round(ready, 3),
            "drained_seconds": round(idle_at - process.started_at, 3),
            "reconciles": int(reconciles),
            "writes": writes,
            "writes_total": sum(writes.values()),
        }
        self._memory(count, memory, writes, "the restart above")

    def _memory(self, count: int, memory: dict[str, int], writes: dict[str, int], how: str) -> None:
        self.results.setdefault("memory", {})[str(count)] = {
            "peak_rss_mib": round(memory["VmHWM"] / MIB, 1),
            "rss_mib": round(memory["VmRSS"] / MIB, 1),
            "writes_at_start": writes,
            "measured_in": how,
        }
        self.progress(f"  peak RSS with {count} StaticRoutes: {memory['VmHWM'] / MIB:.1f} MiB")

    async def memory_fresh(self, count: int, *namespaces: str) -> None:
        """Peak RSS of a fresh operator that lists ``count`` converged StaticRoutes."""
        self.progress(f"memory with {count} StaticRoutes in cache")
        before = await self.writes()
        async with self.operator(*namespaces) as process:
            await process.wait_idle(stable=2.0)
            memory = process.memory()
        self._memory(count, memory, prom.delta(await self.writes(), before), "a fresh start")

    # -- 3: update latency -----------------------------------------------------------------

    async def update_latency(self, namespace: str, count: int) -> None:
        """Spaced single-spec updates: spec write -> ConfigMap carries it (seen by a watch)."""
        samples = self.sizes.update_samples
        self.progress(f"update latency: {samples} updates with N={count} converged")
        before = await self.writes()
        async with self.operator(namespace) as process:
            await process.wait_idle(stable=2.0)
            memory = process.memory()
            self._memory(count, memory, prom.delta(await self.writes(), before), "a fresh start")
            watch = ConfigMapWatch(self.kube, namespace)
            await watch.start()
            latencies = []
            try:
                for k in range(samples):
                    name = route_name((k * 7919) % count)
                    marker = f"model-update-{k}"
                    arrived = watch.expect(default_config_map_name(name), marker)
                    started = time.monotonic()
                    await self.kube.merge_patch(
                        STATICROUTES.path(namespace, name),
                        {"spec": {"staticModels": f"model-a,{marker}"}},
                    )
                    latencies.append(await asyncio.wait_for(arrived, 30) - started)
                    await asyncio.sleep(self.sizes.update_gap)
            finally:
                await watch.stop()
        ms = [s * 1000 for s in latencies]
        self.results["update_latency"] = {
            "n": count,
            "samples": samples,
            "p50_ms": round(percentile(ms, 50), 1),
            "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(max(ms), 1),
        }

    # -- 4 and 7: steady state, new StaticRoutes with healthy or hanging routers --------

    async def _new_routes(
        self, watch: ConditionWatch, namespace: str, prefix: str = "new"
    ) -> list[float]:
        """Seconds from create to ConfigMapReady of new StaticRoutes, one at a time."""
        out = []
        for i in range(self.sizes.new_route_repeats):
            name = f"{prefix}-{i}"
            started = time.monotonic()
            await self.kube.create(
                STATICROUTES.path(namespace), staticroute(name, namespace, with_router=True)
            )
            out.append(await watch.wait_name(CONFIGMAP_READY, name, timeout=120) - started)
            await asyncio.sleep(1.0)
        return out

    async def steady_state(self, count: int) -> list[float]:
        """Healthy synced routers: 60 s of writes and CPU; then new-route times (baseline)."""
        namespace = "steady"
        router = FakeRouter(host=host_address(), backlog=1024)
        await router.start()
        if not router.load(config_file(SPEC)):
            raise RuntimeError(
                f"the stand-in router refuses the benchmark's file: {router.load_errors}"
            )
        try:
            await create_namespace(self.kube, namespace)
            await expose(self.kube, namespace, "router", [router])
            async with self.operator(namespace) as process:
                self.progress(f"steady state: {count} StaticRoutes with healthy routers")
                started = time.monotonic()
                watch = await self.populate(namespace, count, with_router=True, condition=READY)
                converged = time.monotonic() - started
                await process.wait_idle(stable=2.0)
                seconds = self.sizes.steady_seconds
                self.progress(f"  all Ready in {converged:.1f}s; measuring {seconds:.0f}s")
                before, cpu_before, probes_before = (
                    await self.writes(),
                    process.cpu_seconds(),
                    router.requests,
                )
                await asyncio.sleep(seconds)
                writes = prom.delta(await self.writes(), before)
                cpu = process.cpu_seconds() - cpu_before
                probes = router.requests - probes_before
                self.results["steady_state"] = {
                    "n": count,
                    "seconds": seconds,
                    "ready_seconds": round(converged, 2),
                    "writes": writes,
                    "writes_total": sum(writes.values()),
                    "cpu_seconds": round(cpu, 3),
                    "cpu_percent_of_a_core": round(100 * cpu / seconds, 1),
                    "probes_per_second": round(probes / seconds, 1),
                }
                self.progress("  new StaticRoutes next to healthy routers")
                baseline = await self._new_routes(watch, namespace)
                await watch.stop()
                await self.restart_with_routers(process, count)
        finally:
            await router.stop()
        return baseline

    async def restart_with_routers(self, process: OperatorProcess, count: int) -> None:
        """SIGKILL and restart next to healthy routers; writes over a few probe periods.

        With routers, a restart also has to carry on from the status it finds: probing
        starts from scratch, and anything that reports "not probed yet" in between is
        a status write, and another when the probes come back.
        """
        window = 25.0  # two and a half default probe periods
        self.progress(f"restart with N={count} converged, healthy routers ({window:.0f}s)")
        await process.wait_idle()
        before = await self.writes()
        process.kill()
        process.start()
        ready = await process.wait_ready()
        await asyncio.sleep(max(0.0, window - ready))
        writes = prom.delta(await self.writes(), before)
        self.results["restart_with_routers"] = {
            "n": count,
            "ready_seconds": round(ready, 3),
            "window_seconds": window,
            "writes": writes,
            "writes_total": sum(writes.values()),
        }

    async def probing_under_failure(self, count: int, baseline: list[float]) -> None:
        """New StaticRoutes while every router hangs, in two phases.

        First while every probe slot is held by a hung request (right after the
        StaticRoutes converged), then while endpoints cross their failure threshold and
        the operator writes RouterHealthy=False for one StaticRoute after another.
        """
        namespace = "hanging"
        router = HungRouter(host=host_address())
        await router.start()
        phases: dict[str, list[float]] = {}
        try:
            await create_namespace(self.kube, namespace)
            await expose_at(self.kube, namespace, "router", [(router.host, router.port)])
            # Probes keep failing, and flipping endpoints, for as long as it runs.
            async with self.operator(namespace, idle_on_exit=False) as process:
                self.progress(f"probing under failure: {count} StaticRoutes whose routers hang")
                watch = await self.populate(
                    namespace, count, with_router=True, condition=CONFIGMAP_READY
                )
                await process.wait_idle(stable=1.0)
                await wait_for(
                    lambda: router.connections >= min(count, 64),
                    timeout=30,
                    what="every probe slot held by the hanging router",
                )
                self.progress("  new StaticRoutes while every probe slot hangs")
                phases["probe_slots_hung"] = await self._new_routes(watch, namespace, "hung")
                self.progress("  waiting for endpoints to cross the failure threshold")
                await watch.wait_count(UNHEALTHY, 1, timeout=600)
                self.progress("  new StaticRoutes while RouterHealthy=False is being written")
                phases["turning_unhealthy"] = await self._new_routes(watch, namespace, "flip")
                unhealthy = len(watch.since[UNHEALTHY])
                await watch.stop()
                hung = router.connections
        finally:
            await router.stop()
        healthy_median = statistics.median(baseline)
        worst = max(phases, key=lambda p: statistics.median(phases[p]))
        hanging_median = statistics.median(phases[worst])
        self.results["probing_under_failure"] = {
            "n": count,
            "healthy_routers_seconds": [round(s, 3) for s in baseline],
            **{f"{p}_seconds": [round(s, 3) for s in v] for p, v in phases.items()},
            "healthy_median_ms": round(healthy_median * 1000, 1),
            **{f"{p}_median_ms": round(statistics.median(v) * 1000, 1) for p, v in phases.items()},
            "worst_phase": worst,
            "hanging_median_ms": round(hanging_median * 1000, 1),
            "change_percent": round(100 * (hanging_median / healthy_median - 1), 1),
            "hung_probe_connections": hung,
            "unhealthy_when_done": unhealthy,
        }

    # -- all of it -----------------------------------------------------------------------

    async def run_all(self, only: frozenset[str] | None = None) -> None:
        """Every scenario in order, or those named in ``only`` (see :data:`SCENARIOS`).

        Run alone, a scenario makes the StaticRoutes it needs itself (``update`` and
        ``memory`` otherwise reuse what ``convergence`` left; ``restart`` needs it).
        """
        s = self.sizes

        def wanted(name: str) -> bool:
            return only is None or name in only

        self.progress("warm-up: the API server's first StaticRoutes, not measured")
        async with self.operator("warm-up"):
            await self.populate("warm-up", min(s.small, 200), condition=CONFIGMAP_READY)
        small_ns, large_ns = f"conv-operator-{s.small}-r1", f"conv-operator-{s.large}-r1"
        if wanted("convergence") or wanted("restart"):
            await convergence.convergence(self, s.small, s.repeats)
            large = await convergence.convergence(self, s.large, 1, keep=wanted("restart"))
            if large is not None:
                await self.restart(large, s.large)
        elif wanted("update") or wanted("memory"):
            async with self.operator(small_ns, large_ns):
                await self.populate(small_ns, s.small, condition=CONFIGMAP_READY)
                await self.populate(large_ns, s.large, condition=CONFIGMAP_READY)
        if wanted("update"):
            await self.update_latency(small_ns, s.small)
        if wanted("memory"):
            extra = s.largest - s.small - s.large
            if extra > 0:
                self.progress(f"memory: {extra} more StaticRoutes for the largest cache")
                async with self.operator("memory-extra"):
                    await self.populate("memory-extra", extra, condition=CONFIGMAP_READY)
            if not wanted("update"):  # the 1,000 figure otherwise comes from update_latency
                await self.memory_fresh(s.small, small_ns)
            if not wanted("restart"):  # the 5,000 figure otherwise comes from the restart
                await self.memory_fresh(s.large, large_ns)
            await self.memory_fresh(s.largest, small_ns, large_ns, "memory-extra")
        if wanted("steady") or wanted("probing"):
            baseline = await self.steady_state(s.small)
            if wanted("probing"):
                await self.probing_under_failure(s.small, baseline)


# What ``make bench ARGS="--only NAME,..."`` can select.
SCENARIOS = ("convergence", "restart", "update", "memory", "steady", "probing")
