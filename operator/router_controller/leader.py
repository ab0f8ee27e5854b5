"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Only the leader reconciles and probes, so two replicas of the operator (or the Go
original and this one during a migration: same default Lease name) never write at
once. Deadlines are measured on the monotonic clock, never on wall time, and the
Lease's times are written as Kubernetes MicroTime (RFC3339 UTC with microseconds);
both, and the waits between attempts, come from one injected
:class:`~router_controller.clock.SleepingClock`.

- A candidate takes the Lease when it is free or when its holder has not renewed
  it for ``leaseDurationSeconds`` as observed locally: the candidate trusts no other
  clock, it only times how long the Lease has stayed unchanged. ``leaseTransitions``
  counts each change of holder.
- The leader renews every ``retry_period``. Each attempt is cut off at the renew
  deadline, counted from the start of the last successful renewal (the latest moment
  the API server can have stamped it), so a hung request cannot keep a leader past
  the moment a candidate may take over. When the deadline passes the lease is lost:
  :attr:`lost` is set, and the manager stops every write at once and exits non-zero.
- :meth:`release` (on graceful shutdown) empties the holder and shortens the lease
  to one second, as client-go does, so a successor takes over at once instead of
  waiting for the lease to expire.

kubernetes-asyncio ships a ``leaderelection`` module, but it measures deadlines on
wall-clock time, never increments ``leaseTransitions`` and writes naive timestamps.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Protocol

import aiohttp
import structlog

from router_controller.clock import SYSTEM_CLOCK, SleepingClock, format_micro_time
from router_controller.kube import LEASES, ApiError, Conflict, NotFound, Object
from router_controller.metrics import Metrics
from router_controller.settings import LeaderElection

log = structlog.get_logger("leader")

_FAILURES = (ApiError, aiohttp.ClientError, TimeoutError)


class LeaseApi(Protocol):
    """The three calls election makes (:class:`~router_controller.kube.Kube` has them)."""

    async def get(self, path: str, **params: str) -> Object: ...

    async def create(self, path: str, body: Object) -> Object: ...

    async def replace(self, path: str, body: Object) -> Object: ...


class LeaderElector:
    """Acquires and keeps one Lease for ``identity``."""

    def __init__(
        self,
        *,
        kube: LeaseApi,
        settings: LeaderElection,
        namespace: str,
        identity: str,
        metrics: Metrics,
        clock: SleepingClock = SYSTEM_CLOCK,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._path = LEASES.path(namespace, settings.lease_name)
        self._collection = LEASES.path(namespace)
        self._namespace = namespace
        self.identity = identity
        self._clock = clock
        self._gauge = metrics.leader.labels(settings.lease_name)
        self._gauge.set(0)
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()
        self._observed_spec: dict[str, Any] | None = None  # the last lease spec seen
        self._observed_at = 0.0  # monotonic time it was first seen

    @property
    def lease(self) -> str:
        return f"{self._namespace}/{self._settings.lease_name}"

    async def run(self) -> None:
        """Acquire, then renew until the lease is lost (returns) or the task is cancelled."""
        retry = self._settings.retry_period
        log.info("waiting for leadership", lease=self.lease, identity=self.identity)
        while True:
            started = self._clock.monotonic()
            # An attempt to acquire may take as long as a renewal may.
            if await self._try_acquire_or_renew(started + self._settings.renew_deadline):
                break
            await self._clock.sleep_until(self._clock.monotonic() + retry)
        self.elected.set()
        self._gauge.set(1)
        log.info("became leader", lease=self.lease, identity=self.identity)
        deadline = started + self._settings.renew_deadline
        while True:
            await self._clock.sleep_until(self._clock.monotonic() + retry)
            started = self._clock.monotonic()
            if started < deadline and await self._try_acquire_or_renew(deadline):
                deadline = started + self._settings.renew_deadline
                continue
            if self._clock.monotonic() >= deadline:
                self._gauge.set(0)
                self.lost.set()
                log.error("lost leadership", lease=self.lease, identity=self.identity)
                return

    async def _try_acquire_or_renew(self, deadline: float) -> bool:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                return await self._attempt()
        except _FAILURES as err:
            log.warning("lease update failed", lease=self.lease, error=str(err) or repr(err))
            return False

    async def _attempt(self) -> bool:
        now_wall = format_micro_time(self._clock.now())
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
                return False  # another candidate created it first
            self._observe(created)
            return True
        spec = lease.get("spec") or {}
        self._observe(lease)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self._settings.lease_duration)
        expired = self._clock.monotonic() >= self._observed_at + duration
        if holder and holder != self.identity and not expired:
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
            return False  # changed since our read: someone else renewed or took it
        self._observe(updated)
        return True

    def _spec(self, acquire: str, renew: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, math.ceil(self._settings.lease_duration)),
            "acquireTime": acquire,
            "renewTime": renew,
            "leaseTransitions": transitions,
        }

    def _observe(self, lease: Object) -> None:
        """Remember when the lease spec last changed, on our own monotonic clock."""
        spec = lease.get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = self._clock.monotonic()

    async def release(self) -> None:
        """Give the lease up so that a successor need not wait for it to expire.

        Call it only after every write has stopped. Reads the lease afresh, so an
        election attempt cancelled half-way (its update applied, its answer lost) is
        released too; a lease held by someone else is left alone.
        """
        self._gauge.set(0)
        if self.lost.is_set():
            return
        try:
            async with asyncio.timeout(self._settings.renew_deadline):
                lease = await self._kube.get(self._path)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.identity:
                    return
                now_wall = format_micro_time(self._clock.now())
                lease["spec"] = {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "acquireTime": now_wall,
                    "renewTime": now_wall,
                    "leaseTransitions": int(spec.get("leaseTransitions") or 0),
                }
                await self._kube.replace(self._path, lease)
        except NotFound:
            return
        except _FAILURES as err:
            log.warning(
                "could not release the lease", lease=self.lease, error=str(err) or repr(err)
            )
            return
        log.info("released leadership", lease=self.lease, identity=self.identity)
