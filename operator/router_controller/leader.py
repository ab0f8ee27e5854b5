"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Only the leader reconciles and probes, so two replicas of the operator (or the Go
original and this one during a migration: same default Lease name) never write at
once. Deadlines are measured on the monotonic clock, never on wall time, and the
Lease's times are written as Kubernetes MicroTime (RFC3339 UTC with microseconds).

- A candidate takes the Lease when it is free or when its holder has not renewed
  it for ``lease_duration`` as observed locally (no trust in other clocks);
  ``leaseTransitions`` counts each change of holder.
- The leader renews every ``retry_period``; if it cannot renew within
  ``renew_deadline`` it has lost the lease: :attr:`lost` is set, and the manager
  stops every write at once and exits non-zero.
- :meth:`release` (on graceful shutdown) empties the holder so a successor takes
  over at once instead of waiting for the lease to expire.

kubernetes-asyncio ships a ``leaderelection`` module, but it measures deadlines on
wall-clock time, never increments ``leaseTransitions`` and writes naive timestamps.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from router_controller.kube import LEASES, ApiError, Conflict, Kube, NotFound, Object
from router_controller.metrics import Metrics
from router_controller.settings import LeaderElection

log = structlog.get_logger("leader")


def micro_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires and keeps one Lease for ``identity``."""

    def __init__(
        self,
        *,
        kube: Kube,
        settings: LeaderElection,
        namespace: str,
        identity: str,
        metrics: Metrics,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._path = LEASES.path(namespace, settings.lease_name)
        self._collection = LEASES.path(namespace)
        self._namespace = namespace
        self.identity = identity
        self._monotonic = monotonic
        self._wall = wall
        self._gauge = metrics.leader.labels(settings.lease_name)
        self._gauge.set(0)
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()
        self._observed: Object | None = None  # the last lease body seen
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0  # monotonic time it last changed

    async def run(self) -> None:
        """Acquire, then renew until the lease is lost (returns) or the task is cancelled."""
        retry = self._settings.retry_period
        while not await self._try_acquire_or_renew():  # noqa: ASYNC110 - polling the Lease is the protocol
            await asyncio.sleep(retry)
        self.elected.set()
        self._gauge.set(1)
        log.info("became leader", lease=self._settings.lease_name, identity=self.identity)
        last_renew = self._monotonic()
        while True:
            await asyncio.sleep(retry)
            if await self._try_acquire_or_renew():
                last_renew = self._monotonic()
                continue
            if self._monotonic() - last_renew >= self._settings.renew_deadline:
                self._gauge.set(0)
                self.lost.set()
                log.error("lost leadership", lease=self._settings.lease_name)
                return

    async def _try_acquire_or_renew(self) -> bool:
        try:
            return await self._attempt()
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("lease update failed", error=str(err))
            return False

    async def _attempt(self) -> bool:
        now_wall = micro_time(self._wall())
        now = self._monotonic()
        try:
            lease = await self._kube.get(self._path)
        except NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self._settings.lease_name, "namespace": self._namespace},
                "spec": self._spec(now_wall, now_wall, 0),
            }
            try:
                created = await self._kube.create(self._collection, body)
            except Conflict:
                return False
            self._observe(created, now)
            return True
        spec = lease.get("spec") or {}
        if spec != self._observed_spec:
            self._observe(lease, now)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self._settings.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held by someone else, and not expired as seen from here
        transitions = int(spec.get("leaseTransitions") or 0)
        acquire = spec.get("acquireTime") or now_wall
        if holder != self.identity:
            transitions += 1
            acquire = now_wall
        lease["spec"] = self._spec(acquire, now_wall, transitions)
        try:
            updated = await self._kube.replace(self._path, lease)
        except Conflict:
            return False
        self._observe(updated, now)
        return True

    def _spec(self, acquire: str, renew: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": round(self._settings.lease_duration),
            "acquireTime": acquire,
            "renewTime": renew,
            "leaseTransitions": transitions,
        }

    def _observe(self, lease: Object, now: float) -> None:
        self._observed = lease
        self._observed_spec = lease.get("spec") or {}
        self._observed_at = now

    async def release(self) -> None:
        """Give the lease up so that a successor need not wait for it to expire."""
        self._gauge.set(0)
        if not self.elected.is_set() or self.lost.is_set() or self._observed is None:
            return
        lease = dict(self._observed)
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        now_wall = micro_time(self._wall())
        spec.update(
            holderIdentity=None, leaseDurationSeconds=1, acquireTime=now_wall, renewTime=now_wall
        )
        lease["spec"] = spec
        try:
            await self._kube.replace(self._path, lease)
            log.info("released leadership", lease=self._settings.lease_name)
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not release the lease", error=str(err))
