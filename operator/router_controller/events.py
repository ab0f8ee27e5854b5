"""Kubernetes Events about StaticRoutes (``kubectl describe`` shows them).

Events are a courtesy to the user, never a reason to fail a reconcile: a failure to
record one is logged and dropped. The reconciler records them only on transitions
(a ConfigMap written, a condition that flipped), so a steady cluster records none.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from router_controller.conditions import rfc3339
from router_controller.kube import EVENTS, ApiError, Kube, Object

COMPONENT = "router-controller"
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
        try:
            await self._kube.create(EVENTS.path(namespace), event)
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not record event", reason=reason, error=str(err))
