"""The load the benchmark puts on the API, and how it sees the results: watches, not polls.

Every StaticRoute of a run has the same, valid spec (so one stand-in router config
fits all of them); the loader creates them with a fixed number of requests in
flight, as fast as the API server takes them. Results are observed through watch
streams started before the load, each event time-stamped when it arrives: listing
thousands of objects in a loop would itself load the API server being measured,
and would add the polling interval to every figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from router_controller.api import STATICROUTES, StaticRouteSpec
from router_controller.kube import CONFIGMAPS, Conflict, Kube, Object, Resource
from router_controller.routerconfig import render
from router_controller_dev.fakerouter import shown_config

SPEC: dict[str, Any] = {
    "staticBackends": "http://a.example.com:8000,http://10.1.2.3:8000",
    "staticModels": "model-a,model-b",
}
ROUTER_SERVICE = "router"
NAMESPACES = Resource("", "v1", "namespaces")

EventHandler = Callable[[str, Object, float], None]


def config_file(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``dynamic_config.json`` the operator writes for ``spec``, parsed."""
    return dict(render(StaticRouteSpec.model_validate(spec)).content)


def running_config(spec: dict[str, Any]) -> dict[str, Any]:
    """What a router given the ConfigMap rendered from ``spec`` reports in ``/health``."""
    return shown_config(config_file(spec))


def route_name(index: int) -> str:
    return f"sr-{index:05d}"


def staticroute(name: str, namespace: str, *, with_router: bool = False) -> Object:
    spec = dict(SPEC)
    if with_router:
        spec["routerRef"] = {"apiVersion": "v1", "kind": "Service", "name": ROUTER_SERVICE}
    return {
        "apiVersion": "production-stack.vllm.ai/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def create_namespace(kube: Kube, name: str) -> None:
    with contextlib.suppress(Conflict):
        await kube.create(
            NAMESPACES.path(), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )


async def load(
    kube: Kube, namespace: str, names: Iterable[str], *, concurrency: int, with_router: bool
) -> float:
    """Create a StaticRoute per name with ``concurrency`` requests in flight; seconds taken."""
    pending = iter(list(names))
    started = time.monotonic()

    async def creator() -> None:
        for name in pending:
            body = staticroute(name, namespace, with_router=with_router)
            await kube.create(STATICROUTES.path(namespace), body)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(creator())
    return time.monotonic() - started


class Watch:
    """List, then watch one kind in one namespace, handing each event to ``handler``.

    The handler gets (event type, object, arrival time); the listed objects come
    first as ``ADDED``. :meth:`start` returns once the list is in, so anything
    created afterwards is seen.
    """

    def __init__(
        self, kube: Kube, resource: Resource, namespace: str, handler: EventHandler
    ) -> None:
        self._kube = kube
        self._path = resource.path(namespace)
        self._handler = handler
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        version = await self._list()
        self._task = asyncio.create_task(self._watch(version), name=f"watch {self._path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _list(self) -> str:
        token = ""
        while True:
            params = {"limit": "500", **({"continue": token} if token else {})}
            page = await self._kube.get(self._path, **params)
            now = time.monotonic()
            for item in page.get("items") or []:
                self._handler("ADDED", item, now)
            token = page["metadata"].get("continue") or ""
            if not token:
                return str(page["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> None:
        while True:
            params = {
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "3600",
            }
            async for event in self._kube.watch(self._path, params=params, stall_timeout=120):
                now = time.monotonic()
                obj = event["object"]
                version = obj["metadata"].get("resourceVersion") or version
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self._handler(event["type"], obj, now)
                elif event["type"] == "ERROR":
                    raise RuntimeError(f"watch of {self._path} failed: {obj}")


def condition_is(obj: Object, type_: str, status: str = "True") -> bool:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return bool(cond.get("status") == status)
    return False


class ConditionWatch:
    """When each StaticRoute of a namespace was first seen with a condition in a status.

    A condition is named ``"Type"`` (status True) or ``"Type=Status"``.
    """

    def __init__(self, kube: Kube, namespace: str, conditions: Iterable[str]) -> None:
        self._wanted = {c: tuple(c.split("=", 1)) if "=" in c else (c, "True") for c in conditions}
        self.since: dict[str, dict[str, float]] = {c: {} for c in self._wanted}
        self._changed = asyncio.Event()
        self._watch = Watch(kube, STATICROUTES, namespace, self._on_event)

    def _on_event(self, kind: str, obj: Object, now: float) -> None:
        if kind == "DELETED":
            return
        name = obj["metadata"]["name"]
        for wanted, (type_, status) in self._wanted.items():
            if name not in self.since[wanted] and condition_is(obj, type_, status):
                self.since[wanted][name] = now
                self._changed.set()

    async def start(self) -> None:
        await self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()

    async def wait(self, check: Callable[[], bool], *, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from None

    async def wait_count(self, condition: str, count: int, *, timeout: float) -> float:
        """Wait until ``count`` StaticRoutes have had ``condition``; the time of the last."""
        seen = self.since[condition]
        await self.wait(lambda: len(seen) >= count, timeout=timeout, what=f"{count} {condition}")
        return max(seen.values())

    async def wait_name(self, condition: str, name: str, *, timeout: float) -> float:
        seen = self.since[condition]
        await self.wait(lambda: name in seen, timeout=timeout, what=f"{name} {condition}")
        return seen[name]


class ConfigMapWatch:
    """Resolves a future when a ConfigMap's data first contains a marker string."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._expected: dict[str, tuple[str, asyncio.Future[float]]] = {}
        self._watch = Watch(kube, CONFIGMAPS, namespace, self._on_event)

    def _on_event(self, kind: str, obj: Object, now: float) -> None:
        name = obj["metadata"]["name"]
        wanted = self._expected.get(name)
        if wanted is None or kind == "DELETED":
            return
        marker, future = wanted
        if any(marker in value for value in (obj.get("data") or {}).values()):
            del self._expected[name]
            if not future.done():
                future.set_result(now)

    def expect(self, name: str, marker: str) -> Awaitable[float]:
        """A future for the arrival time of ``name`` holding ``marker``; set before writing."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._expected[name] = (marker, future)
        return future

    async def start(self) -> None:
        await self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()
