"""The floor: the operator's API work for new StaticRoutes, done with no operator logic.

For every StaticRoute that appears in a namespace this client makes the least work
that converges it, in the operator's order and with bodies of the same shape —
create the ConfigMap (owner reference, label, ``dynamic_config.json``), then
merge-patch the status subresource with the same conditions — with the same number
of workers as the operator's reconcile concurrency. It records no Event: Events are
not part of converging (the operator sends them behind the convergence writes), so
the floor is two writes per StaticRoute. It keeps no cache, validates nothing,
renders nothing but a fixed template and ignores every event but ``ADDED``. The
time it takes is what the API server and this machine allow; the operator's
convergence time is reported as a ratio to it.

It runs as its own process, like the operator, so that neither competes with the
load generator's event loop: ``python -m bench.floor --kubeconfig K --namespace NS
--workers 4 --count N``. It prints ``ready CPU_SECONDS`` once it watches, then ``done
COUNT CPU_SECONDS`` and exits when it has handled ``--count`` StaticRoutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from router_controller.api import STATICROUTES, default_config_map_name
from router_controller.kube import CONFIGMAPS, Kube, Object
from router_controller.metrics import Metrics

API_VERSION = "production-stack.vllm.ai/v1alpha1"
LABEL = {"app.kubernetes.io/managed-by": "router-controller"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _configmap(route: Object) -> Object:
    meta, spec = route["metadata"], route.get("spec") or {}
    data = {
        "routing_logic": spec.get("routingLogic", "roundrobin"),
        "service_discovery": spec.get("serviceDiscovery", "static"),
        "static_backends": spec.get("staticBackends"),
        "static_models": spec.get("staticModels"),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": default_config_map_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": LABEL,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "StaticRoute",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"dynamic_config.json": json.dumps(data, sort_keys=True, indent=2) + "\n"},
    }


def _status(route: Object) -> Object:
    meta = route["metadata"]
    generation, stamp = meta.get("generation"), _now()
    message = f"ConfigMap {default_config_map_name(meta['name'])} holds the current spec"
    conditions: list[dict[str, Any]] = [
        {
            "type": type_,
            "status": "True",
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": stamp,
        }
        for type_, reason in (("ConfigMapReady", "ConfigMapApplied"), ("Ready", "Ready"))
    ]
    return {
        "metadata": {"resourceVersion": meta["resourceVersion"]},
        "status": {
            "configMapRef": default_config_map_name(meta["name"]),
            "lastAppliedTime": stamp,
            "observedGeneration": generation,
            "conditions": conditions,
        },
    }


async def _handle(kube: Kube, route: Object) -> None:
    meta = route["metadata"]
    namespace = meta["namespace"]
    await kube.create(CONFIGMAPS.path(namespace), _configmap(route))
    await kube.merge_patch(STATICROUTES.path(namespace, meta["name"], "status"), _status(route))


async def run(kubeconfig: str, namespace: str, workers: int, count: int) -> int:
    kube = await Kube.connect(
        kubeconfig=kubeconfig, metrics=Metrics(process=False), user_agent="bench-floor"
    )
    queue: asyncio.Queue[Object] = asyncio.Queue()
    done = 0
    finished = asyncio.Event()

    async def worker() -> None:
        nonlocal done
        while True:
            route = await queue.get()
            await _handle(kube, route)
            done += 1
            if done >= count:
                finished.set()

    async def watch(version: str) -> None:
        params = {"resourceVersion": version, "allowWatchBookmarks": "true"}
        async for event in kube.watch(
            STATICROUTES.path(namespace), params=params, stall_timeout=120
        ):
            if event["type"] == "ADDED":
                queue.put_nowait(event["object"])

    try:
        listed = await kube.get(STATICROUTES.path(namespace))
        for item in listed.get("items") or []:
            queue.put_nowait(item)
        print(f"ready {time.process_time():.3f}", flush=True)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(worker()) for _ in range(workers)]
            tasks.append(group.create_task(watch(listed["metadata"]["resourceVersion"])))
            await finished.wait()
            for task in tasks:
                task.cancel()
    finally:
        await kube.close()
    print(f"done {done} {time.process_time():.3f}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    return asyncio.run(run(args.kubeconfig, args.namespace, args.workers, args.count))


if __name__ == "__main__":
    raise SystemExit(main())
