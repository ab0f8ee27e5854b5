"""Probe slots shared fairly between namespaces, and between StaticRoutes within one.

A probe holds a slot for as long as the router takes to answer, up to its
``timeoutSeconds``, and that number is chosen by whoever writes the StaticRoute.
With one first-come-first-served pool, a namespace whose routers accept TCP and never
answer soon holds every slot, and nobody else is probed at all. So slots are handed
out the way API Priority and Fairness shares an API server's seats: every tenant
(namespace) has a cap on the slots it may hold at once, below the total, and ready
work is taken from the tenants in turn, one item each (round robin), so a tenant with
one probe due is served after at most one probe of each other waiting tenant. The
same rule applies one level down, between the groups (StaticRoutes) of one tenant.

The caps are deliberately not work-conserving: a namespace cannot borrow the slots
others leave idle, because a hung probe would keep what it borrowed for its whole
timeout, which is exactly how one tenant starved the rest. The cost is that one
namespace's own probes queue behind its own hung routers; that is the price of the
isolation, and it is paid only by the namespace that has them.

Pure bookkeeping, no I/O and no clock: the prober pushes ready items, pops what may
start now, and releases a slot when a probe ends. Every operation is O(1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Group(Generic[T]):
    key: Hashable
    items: deque[T] = field(default_factory=deque)
    in_flight: int = 0
    waiting: bool = False  # in its tenant's rotation


@dataclass(eq=False)
class _Tenant(Generic[T]):
    name: str
    groups: dict[Hashable, _Group[T]] = field(default_factory=dict)
    rotation: deque[_Group[T]] = field(default_factory=deque)  # groups with work, below cap
    in_flight: int = 0
    waiting: bool = False  # in the global rotation


@dataclass(frozen=True, slots=True)
class Limits:
    """How many slots exist, and how many one tenant and one group may hold at once."""

    total: int
    per_tenant: int
    per_group: int

    @classmethod
    def sharing(cls, total: int) -> Limits:
        """Half the slots per namespace, a quarter per StaticRoute (at least one each).

        Any namespace then always finds at least half the slots beyond one hostile
        namespace's reach, and a StaticRoute at least a quarter beyond one other
        StaticRoute's in its own namespace.
        """
        if total < 1:
            raise ValueError("at least one probe slot is needed")
        per_tenant = max(1, total // 2)
        return cls(total=total, per_tenant=per_tenant, per_group=max(1, per_tenant // 2))


class FairSlots(Generic[T]):
    """Ready items by tenant and group, handed out in turn under the three caps."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._tenants: dict[str, _Tenant[T]] = {}
        self._rotation: deque[_Tenant[T]] = deque()  # tenants with startable work
        self.in_flight = 0
        self.ready = 0

    def in_flight_of(self, tenant: str) -> int:
        found = self._tenants.get(tenant)
        return found.in_flight if found is not None else 0

    def push(self, tenant: str, group: Hashable, item: T) -> None:
        """Queue ``item``, ready to start, under ``tenant`` and ``group``."""
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant(tenant)
        g = t.groups.get(group)
        if g is None:
            g = t.groups[group] = _Group(group)
        g.items.append(item)
        self.ready += 1
        self._offer(t, g)

    def pop(self) -> tuple[str, Hashable, T] | None:
        """The next item that may start now, counted in flight; None when none may."""
        if self.in_flight >= self.limits.total or not self._rotation:
            return None
        t = self._rotation.popleft()
        t.waiting = False
        g = t.rotation.popleft()
        g.waiting = False
        item = g.items.popleft()
        self.ready -= 1
        g.in_flight += 1
        t.in_flight += 1
        self.in_flight += 1
        self._offer(t, g)
        return t.name, g.key, item

    def release(self, tenant: str, group: Hashable) -> None:
        """An item popped for ``tenant`` and ``group`` has finished: free its slot."""
        t = self._tenants[tenant]
        g = t.groups[group]
        g.in_flight -= 1
        t.in_flight -= 1
        self.in_flight -= 1
        self._offer(t, g)

    def _offer(self, t: _Tenant[T], g: _Group[T]) -> None:
        """Put ``g`` and ``t`` back in their rotations if they have startable work."""
        if not g.waiting and g.items and g.in_flight < self.limits.per_group:
            g.waiting = True
            t.rotation.append(g)
        if not g.items and not g.in_flight and not g.waiting:
            del t.groups[g.key]
        if not t.waiting and t.rotation and t.in_flight < self.limits.per_tenant:
            t.waiting = True
            self._rotation.append(t)
        if not t.groups:
            del self._tenants[t.name]
