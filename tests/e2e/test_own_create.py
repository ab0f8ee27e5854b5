"""The ADDED event of the operator's own create, arriving before the create's answer.

The watch often delivers a new ConfigMap before the API server's answer to the
create that made it. Handled as any other event, it queued a second reconcile of
the StaticRoute whose reconcile was still making that create, one in seven during a
burst. While a create is in flight (``Informer.creating``) its ADDED event is cached
but not handled; every other event, and every other object's, is handled as always.
"""

from __future__ import annotations

import asyncio
import contextlib

from router_controller.informer import Informer
from router_controller.kube import CONFIGMAPS, Kube, Object
from tests.e2e.support import wait_for


def configmap(namespace: str, name: str) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"k": "1"},
    }


async def test_a_create_in_flight_has_its_added_event_cached_not_handled(
    kube: Kube, namespace: str
) -> None:
    handled: list[tuple[str, str]] = []
    informer = Informer(
        kube=kube,
        resource=CONFIGMAPS,
        namespaces=[namespace],
        handler=lambda kind, obj, _old: handled.append((kind, obj["metadata"]["name"])),
    )
    task = asyncio.create_task(informer.start())
    try:
        await wait_for(informer.synced.is_set, what="the list")
        with informer.creating((namespace, "ours")):
            await kube.create(CONFIGMAPS.path(namespace), configmap(namespace, "ours"))
            # Still "in flight": the watch delivers it before we leave.
            await wait_for(lambda: informer.get(namespace, "ours"), what="the watched create")
        await kube.create(CONFIGMAPS.path(namespace), configmap(namespace, "theirs"))
        await wait_for(lambda: informer.get(namespace, "theirs"), what="another create")
        await kube.merge_patch(CONFIGMAPS.path(namespace, "ours"), {"data": {"k": "2"}})

        def changed() -> bool:
            cached = informer.get(namespace, "ours")
            return cached is not None and cached["data"]["k"] == "2"

        await wait_for(changed, what="the change to our ConfigMap")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ours = [event for event in handled if event[1] in ("ours", "theirs")]  # not kube-root-ca.crt
    assert ours == [("ADDED", "theirs"), ("MODIFIED", "ours")]
