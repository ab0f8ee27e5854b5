"""Kubernetes Events about StaticRoutes (``kubectl describe`` shows them).

Events are a courtesy to the user, never a reason to fail or slow a reconcile: like
client-go's broadcaster, :meth:`EventRecorder.record` hands the Event to a background
task and returns, so a worker is free for the next key while it is sent; a failure to
send is logged and dropped. The reconciler records them only on transitions (a
ConfigMap written, a condition that flipped), so a steady cluster records none.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from router_controller.conditions import rfc3339
from router_controller.kube import EVENTS, ApiError, Kube, Object

COMPONENT = "router-controller"
MAX_PENDING = 1000  # Events in flight at once; beyond that they are dropped (and logged)
log = structlog.get_logger("events")


class EventRecorder:
    """Creates core/v1 Events for objects."""

    def __init__(
        self,
        *,
        kube: Kube,
        identity: str,
        now: Callable[[], datetime.datetime],
    ) -> None:
        self._kube = kube
        self._identity = identity
        self._now = now
        self._pending: set[asyncio.Task[None]] = set()

    async def record(self, obj: Object, type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default")
        stamp = rfc3339(self._now())
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{secrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._identity,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        if len(self._pending) >= MAX_PENDING:
            log.warning("too many events in flight, dropping one", reason=reason)
            return
        task = asyncio.create_task(self._send(namespace, event), name=f"event {reason}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, namespace: str, event: dict[str, Any]) -> None:
        try:
            await self._kube.create(EVENTS.path(namespace), event)
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not record event", reason=event["reason"], error=str(err))

    async def drain(self, timeout: float) -> None:
        """Let the Events in flight be sent (graceful stop), cancelling what is left."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
        self.abandon()

    def abandon(self) -> None:
        """Cancel every Event in flight (the lease is lost: no more writes)."""
        for task in list(self._pending):
            task.cancel()
