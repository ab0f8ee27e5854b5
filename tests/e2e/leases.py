"""Watching a leader's Lease from the outside, for tests that must prove it was never lost.

A :class:`LeaseWatcher` reads the Lease in a loop and records every distinct
(holder, leaseTransitions) it shows; :func:`assert_held_throughout` then says that one
process held it from its election to now, and is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router_controller.kube import LEASES, Kube, NotFound
from router_controller_dev.processes import OperatorProcess

T = TypeVar("T")

# Short enough that a renewal stuck for a few seconds loses the lease.
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 8.0, 6.0, 1.0


def election_flags(
    namespace: str,
    lease: str,
    *,
    duration: float = LEASE_DURATION,
    renew: float = RENEW_DEADLINE,
    retry: float = RETRY_PERIOD,
) -> tuple[str, ...]:
    return (
        "--leader-elect",
        f"--leader-election-namespace={namespace}",
        f"--leader-election-id={lease}",
        f"--leader-elect-lease-duration={duration:g}s",
        f"--leader-elect-renew-deadline={renew:g}s",
        f"--leader-elect-retry-period={retry:g}s",
    )


async def gather_limited(calls: Iterable[Awaitable[T]], *, limit: int) -> list[T]:
    """Await ``calls`` with at most ``limit`` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


@dataclass
class LeaseWatcher:
    """Records every (holder, leaseTransitions) the Lease shows, and its renewals."""

    kube: Kube
    namespace: str
    name: str
    seen: list[tuple[str, int]] = field(default_factory=list)
    renewals: set[str] = field(default_factory=set)

    async def run(self) -> None:
        while True:
            try:
                lease = await self.kube.get(LEASES.path(self.namespace, self.name))
            except NotFound:
                spec: dict[str, Any] = {}
            else:
                spec = lease.get("spec") or {}
            state = (str(spec.get("holderIdentity") or ""), int(spec.get("leaseTransitions") or 0))
            if not self.seen or self.seen[-1] != state:
                self.seen.append(state)
            if spec.get("renewTime"):
                self.renewals.add(str(spec["renewTime"]))
            await asyncio.sleep(0.1)  # the sampling interval, not a synchronisation


@contextlib.asynccontextmanager
async def watching_lease(kube: Kube, namespace: str, name: str) -> AsyncIterator[LeaseWatcher]:
    watcher = LeaseWatcher(kube, namespace, name)
    task = asyncio.create_task(watcher.run(), name="lease watcher")
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def leading(process: OperatorProcess) -> str:
    """The process's identity, once it logged that it leads."""
    identity = await process.identity()
    await process.logged("became leader", timeout=120)
    return identity


def assert_held_throughout(watcher: LeaseWatcher, identity: str, process: OperatorProcess) -> None:
    """One holder and one transition count since the election; the process still runs."""
    held = [state for state in watcher.seen if state[0]]
    assert held, "the Lease was never seen held"
    assert watcher.seen[-len(held) :] == held, f"the Lease was let go: {watcher.seen}"
    assert len(set(held)) == 1, f"the Lease changed hands: {watcher.seen}"
    assert held[0][0] == identity
    assert process.running, f"the operator exited:\n{process.output[-4000:]}"
    assert process.find("lost leadership") is None, "the operator logged a lost lease"
