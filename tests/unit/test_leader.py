"""Leader election rules, on fake time against an in-memory Lease API.

The elector reads deadlines from an injected clock and waits on it; here that is a
fake clock that moves only when the elector sleeps (it jumps to the end of each
sleep), so "after how much time" is exact and nothing waits on the wall clock. The fake API
keeps one Lease with a resourceVersion and refuses stale updates with 409, as the
API server does. The real API is exercised in tests/e2e/test_operations.py.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import re
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from router_controller.clock import format_micro_time
from router_controller.kube import ApiError, Conflict, NotFound, Object
from router_controller.leader import LeaderElector
from router_controller.metrics import Metrics
from router_controller.settings import LeaderElection
from tests.unit.fakeclock import FakeClock

SETTINGS = LeaderElection(
    enabled=True, lease_name="lease", lease_duration=15, renew_deadline=10, retry_period=2
)
PATH = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/lease"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class FakeTime(FakeClock):
    """One clock for deadlines and sleeps: sleeping moves it to the sleep's end."""

    def __init__(self) -> None:
        super().__init__(start=0.0)
        self.on_sleep: Callable[[], None] = lambda: None

    async def sleep_until(self, deadline: float) -> None:
        self.set(max(deadline, self.monotonic()))
        self.on_sleep()
        await asyncio.sleep(0)


class FakeLeases:
    """One Lease in memory, with optimistic concurrency like the API server's."""

    def __init__(self, clock: FakeTime) -> None:
        self.clock = clock
        self.lease: Object | None = None
        self.version = 0
        self.failing = False
        self.writes = 0
        self.first_held: dict[str, float] = {}  # holder -> when it first wrote the lease

    def _check(self, method: str) -> None:
        if self.failing:
            raise ApiError(503, "ServiceUnavailable", "down", method, PATH)

    async def get(self, path: str, **params: str) -> Object:
        self._check("GET")
        if self.lease is None:
            raise NotFound(404, "NotFound", "no lease", "GET", path)
        return copy.deepcopy(self.lease)

    async def create(self, path: str, body: Object) -> Object:
        self._check("POST")
        if self.lease is not None:
            raise Conflict(409, "AlreadyExists", "exists", "POST", path)
        return self._store(body)

    async def replace(self, path: str, body: Object) -> Object:
        self._check("PUT")
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "stale", "PUT", path)
        return self._store(body)

    def _store(self, body: Object) -> Object:
        self.version += 1
        self.writes += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.first_held.setdefault(self.lease["spec"]["holderIdentity"], self.clock.monotonic())
        return copy.deepcopy(self.lease)

    def hold(self, holder: str, *, transitions: int = 3) -> None:
        """Someone else holds (or renews) the lease."""
        stamp = format_micro_time(datetime.datetime.now(datetime.UTC))
        self._store(
            {
                "metadata": {"name": "lease", "namespace": "ns"},
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": 15,
                    "acquireTime": "2020-01-01T00:00:00.000000Z",
                    "renewTime": stamp,
                    "leaseTransitions": transitions,
                },
            }
        )

    @property
    def spec(self) -> dict[str, Any]:
        assert self.lease is not None
        return dict(self.lease["spec"])


def elector(api: FakeLeases, clock: FakeTime, identity: str = "me") -> LeaderElector:
    return LeaderElector(
        kube=api,
        settings=SETTINGS,
        namespace="ns",
        identity=identity,
        metrics=Metrics(process=False),
        clock=clock,
    )


async def elected_at(candidate: LeaderElector, api: FakeLeases) -> tuple[asyncio.Task[None], float]:
    """Run the candidate until elected; the time on its clock when it took the lease."""
    task = asyncio.create_task(candidate.run())
    await candidate.elected.wait()
    return task, api.first_held[candidate.identity]


@pytest.mark.parametrize(
    ("duration", "renew", "retry"), [(10, 10, 2), (10, 12, 2), (15, 10, 10), (15, 10, 12)]
)
def test_timings_must_leave_the_leader_time_to_step_down(
    duration: float, renew: float, retry: float
) -> None:
    with pytest.raises(ValidationError, match="retry period < renew deadline < lease duration"):
        LeaderElection(lease_duration=duration, renew_deadline=renew, retry_period=retry)


async def test_first_candidate_creates_the_lease() -> None:
    clock = FakeTime()
    api = FakeLeases(clock)
    task, at = await elected_at(elector(api, clock), api)
    task.cancel()
    assert at == 0
    spec = api.spec
    assert spec["holderIdentity"] == "me"
    assert spec["leaseTransitions"] == 0
    assert spec["leaseDurationSeconds"] == 15
    assert MICRO_TIME.match(spec["acquireTime"])
    assert MICRO_TIME.match(spec["renewTime"])


async def test_a_silent_holder_is_replaced_after_the_lease_duration_on_our_clock() -> None:
    clock = FakeTime()
    api = FakeLeases(clock)
    api.hold("other", transitions=3)
    before = api.spec
    task, at = await elected_at(elector(api, clock), api)
    task.cancel()
    # First seen at 0; expired once 15 s passed on our clock; tried every 2 s.
    assert SETTINGS.lease_duration <= at < SETTINGS.lease_duration + SETTINGS.retry_period
    spec = api.spec
    assert spec["holderIdentity"] == "me"
    assert spec["leaseTransitions"] == 4
    assert spec["acquireTime"] != before["acquireTime"]


async def test_a_renewing_holder_keeps_the_lease() -> None:
    clock = FakeTime()
    api = FakeLeases(clock)
    api.hold("other")
    watched = asyncio.Event()

    def renew() -> None:  # it renews as often as we look, for ten lease durations
        api.hold("other")
        if clock.monotonic() >= 10 * SETTINGS.lease_duration:
            watched.set()

    clock.on_sleep = renew
    candidate = elector(api, clock)
    task = asyncio.create_task(candidate.run())
    await watched.wait()
    assert not candidate.elected.is_set()
    assert api.spec["holderIdentity"] == "other"
    task.cancel()


async def test_leader_that_cannot_renew_steps_down_before_the_lease_expires() -> None:
    clock = FakeTime()
    api = FakeLeases(clock)
    candidate = elector(api, clock)
    task, _ = await elected_at(candidate, api)
    api.failing = True
    failed_from = clock.monotonic()
    await candidate.lost.wait()
    await task  # run() returns once the lease is lost
    assert clock.monotonic() - failed_from < SETTINGS.lease_duration
    assert clock.monotonic() >= SETTINGS.renew_deadline


async def test_leader_whose_lease_was_taken_steps_down_without_taking_it_back() -> None:
    clock = FakeTime()
    api = FakeLeases(clock)
    candidate = elector(api, clock)
    task, _ = await elected_at(candidate, api)
    api.hold("intruder")
    clock.on_sleep = lambda: api.hold("intruder")
    await candidate.lost.wait()
    await task
    assert api.spec["holderIdentity"] == "intruder"
    await candidate.release()  # a lost lease is not ours to release
    assert api.spec["holderIdentity"] == "intruder"


async def test_release_frees_the_lease_for_a_successor() -> None:
    clock = FakeTime()
    api = FakeLeases(clock)
    candidate = elector(api, clock)
    task, _ = await elected_at(candidate, api)
    task.cancel()
    await asyncio.wait([task])
    await candidate.release()
    spec = api.spec
    assert spec["holderIdentity"] == ""
    assert spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 0
    released_at = clock.monotonic()
    successor = elector(api, clock, identity="next")
    task, at = await elected_at(successor, api)
    task.cancel()
    assert at == released_at  # an empty holder is free at once
    assert api.spec["holderIdentity"] == "next"
    assert api.spec["leaseTransitions"] == 1


async def test_release_leaves_someone_elses_lease_alone() -> None:
    clock = FakeTime()
    api = FakeLeases(clock)
    api.hold("other")
    writes = api.writes
    await elector(api, clock).release()
    assert api.writes == writes
