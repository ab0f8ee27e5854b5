"""Helpers for end-to-end tests: StaticRoute builders, waiting on them, a running operator.

Nothing here sleeps to synchronise: :func:`~router_controller_dev.waiting.wait_for`
polls a condition until a deadline and fails with the last value it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from router_controller.api import STATICROUTES
from router_controller.informer import WatchTuning
from router_controller.kube import CONFIGMAPS, Kube, NotFound, Object
from router_controller.manager import Manager
from router_controller.metrics import Metrics
from router_controller.settings import Serving, Settings
from router_controller_dev import repo
from router_controller_dev.envtest import ControlPlane

# Used by many tests from here; each lives once in the development package.
from router_controller_dev.processes import operator_command as operator_command
from router_controller_dev.waiting import wait_for as wait_for

REPO = repo.root()


@contextlib.asynccontextmanager
async def admin_kube(plane: ControlPlane) -> AsyncIterator[Kube]:
    """An API client with the plane's admin credentials, closed when the block ends."""
    client = await Kube.connect(kubeconfig=str(plane.kubeconfig), metrics=Metrics(process=False))
    try:
        yield client
    finally:
        await client.close()


def staticroute(name: str, namespace: str, **spec: Any) -> Object:
    body: dict[str, Any] = {
        "staticBackends": "http://a.example.com:8000,http://10.1.2.3:8000",
        "staticModels": "model-a,model-b",
    }
    body.update(spec)
    return {
        "apiVersion": "production-stack.vllm.ai/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


async def create_route(kube: Kube, route: Object) -> Object:
    return await kube.create(STATICROUTES.path(route["metadata"]["namespace"]), route)


async def get_route(kube: Kube, namespace: str, name: str) -> Object:
    return await kube.get(STATICROUTES.path(namespace, name))


async def get_cm(kube: Kube, namespace: str, name: str) -> Object:
    return await kube.get(CONFIGMAPS.path(namespace, name))


async def try_get_cm(kube: Kube, namespace: str, name: str) -> Object | None:
    try:
        return await get_cm(kube, namespace, name)
    except NotFound:
        return None


def condition(route: Object, type_: str) -> dict[str, Any] | None:
    for cond in (route.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


async def wait_condition(
    kube: Kube, namespace: str, name: str, type_: str, status: str, *, reason: str | None = None,
    timeout: float = 30.0,
) -> Object:  # fmt: skip
    """Wait until the StaticRoute's condition has ``status`` (and ``reason``); return it."""

    async def probe() -> Object | None:
        route = await get_route(kube, namespace, name)
        cond = condition(route, type_)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return route
        return None

    found: Object = await wait_for(
        probe, timeout=timeout, what=f"{name} {type_}={status} {reason or ''}"
    )
    return found


async def events_for(kube: Kube, namespace: str, name: str) -> list[Object]:
    listed = await kube.get(
        f"/api/v1/namespaces/{namespace}/events",
        fieldSelector=f"involvedObject.name={name}",
    )
    return list(listed.get("items", []))


async def wait_event(kube: Kube, namespace: str, name: str, reason: str) -> Object:
    """Wait for an Event with ``reason`` about the object (Events follow the status write)."""

    async def probe() -> Object | None:
        for event in await events_for(kube, namespace, name):
            if event.get("reason") == reason:
                return event
        return None

    found: Object = await wait_for(probe, what=f"a {reason} event for {name}")
    return found


async def settled(manager: Manager, kube: Kube, namespace: str, name: str) -> None:
    """Wait until the operator has seen the StaticRoute's current version and is idle.

    Idle includes the Events it recorded meanwhile: they are sent behind the writes.
    """
    current = (await get_route(kube, namespace, name))["metadata"]["resourceVersion"]

    def idle() -> bool:
        cached = manager.parts.routes.get(namespace, name)
        seen = cached is not None and cached["metadata"]["resourceVersion"] == current
        queue = manager.parts.queue
        work_done = queue.depth == 0 and queue.unfinished_work_seconds() == 0
        return seen and work_done and manager.parts.recorder.idle  # Events follow the writes

    await wait_for(idle, what=f"operator idle after {namespace}/{name}@{current}")


def operator_settings(plane: ControlPlane, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "kubeconfig": str(plane.kubeconfig),
        "serving": Serving(metrics_bind_address="0", health_probe_bind_address="127.0.0.1:0"),
    }
    base.update(overrides)
    return Settings(**base)


@contextlib.asynccontextmanager
async def run_operator(
    plane: ControlPlane,
    *,
    kubeconfig: Path | None = None,
    tuning: WatchTuning | None = None,
    **overrides: Any,
) -> AsyncIterator[Manager]:
    """Run a Manager in this event loop until the block ends (then stop it gracefully)."""
    settings = operator_settings(plane, **overrides)
    if kubeconfig is not None:
        settings = settings.model_copy(update={"kubeconfig": str(kubeconfig)})
    metrics = Metrics(process=False)
    kube = await Kube.connect(kubeconfig=settings.kubeconfig, metrics=metrics)
    manager = Manager(settings=settings, kube=kube, metrics=metrics, tuning=tuning or WatchTuning())
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop), name="operator under test")
    try:
        await wait_for(lambda: manager.parts.ready() or task.done(), what="operator ready")
        if task.done():
            task.result()
        yield manager
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 60)
        finally:
            await kube.close()


def config_of(cm: Object) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cm["data"]["dynamic_config.json"])
    return data
