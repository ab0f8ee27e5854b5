"""The Event recorder: low priority behind reconcile work, correlation, spam filter, bounds."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest

from router_controller import events
from router_controller.events import EventRecorder
from router_controller.kube import NotFound, Object
from router_controller.metrics import Metrics
from tests.e2e.support import wait_for
from tests.unit.fakeclock import FakeClock

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)


class FakeEvents:
    """Records the calls an :class:`EventRecorder` makes; can fail a patch with 404."""

    def __init__(self) -> None:
        self.created: list[Object] = []
        self.patched: list[tuple[str, Object]] = []
        self.expired: set[str] = set()

    async def create(self, path: str, body: Object) -> Object:
        self.created.append(body)
        return body

    async def merge_patch(self, path: str, body: Object) -> Object:
        name = path.rsplit("/", 1)[-1]
        if name in self.expired:
            raise NotFound(404, "NotFound", "gone", "PATCH", path)
        self.patched.append((name, body))
        return body


def route(name: str = "r1", uid: str = "uid-1") -> Object:
    return {
        "apiVersion": "production-stack.vllm.ai/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "7"},
    }


def dropped(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "router_controller_events_dropped_total", {"reason": reason}
    )
    return value or 0.0


class Harness:
    def __init__(self, **kwargs: int) -> None:
        self.api = FakeEvents()
        self.clock = FakeClock(1000.0, wall=NOW)
        self.metrics = Metrics(process=False)
        self.busy = False
        self.recorder = EventRecorder(
            kube=self.api,
            identity="me",
            metrics=self.metrics,
            busy=lambda: self.busy,
            clock=self.clock,
            **kwargs,
        )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    task = asyncio.create_task(h.recorder.start())
    yield h
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_event_is_sent_at_once_when_the_queue_is_idle(harness: Harness) -> None:
    await harness.recorder.record(route(), "Normal", "ConfigMapCreated", "created ConfigMap x")
    await wait_for(lambda: harness.api.created, what="the event")
    event = harness.api.created[0]
    assert event["reason"] == "ConfigMapCreated"
    assert event["type"] == "Normal"
    assert event["count"] == 1
    assert event["involvedObject"]["uid"] == "uid-1"
    assert event["reportingInstance"] == "me"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-12-01T12:00:00Z"


async def test_identical_events_are_folded_into_a_count(harness: Harness) -> None:
    harness.busy = True  # nothing goes out while busy
    for _ in range(3):
        await harness.recorder.record(route(), "Warning", "InvalidSpec", "bad")
    assert harness.recorder.pending >= 1
    harness.busy = False
    await wait_for(lambda: harness.recorder.pending == 0, what="the buffer to drain")
    await wait_for(
        lambda: [e for e in harness.api.created if e["reason"] == "InvalidSpec"], what="event"
    )
    invalid = [e for e in harness.api.created if e["reason"] == "InvalidSpec"]
    assert len(invalid) == 1
    assert invalid[0]["count"] == 3
    # The same Event once more, after it was sent: a patch of its count, no new object.
    await harness.recorder.record(route(), "Warning", "InvalidSpec", "bad")
    await wait_for(lambda: harness.api.patched, what="the patch")
    name, body = harness.api.patched[0]
    assert name == invalid[0]["metadata"]["name"]
    assert body["count"] == 4
    assert len([e for e in harness.api.created if e["reason"] == "InvalidSpec"]) == 1


async def test_a_repeat_of_an_expired_event_creates_a_new_one(harness: Harness) -> None:
    await harness.recorder.record(route(), "Warning", "InvalidSpec", "bad")
    await wait_for(lambda: harness.api.created, what="the event")
    harness.api.expired.add(harness.api.created[0]["metadata"]["name"])
    await harness.recorder.record(route(), "Warning", "InvalidSpec", "bad")
    await wait_for(lambda: len(harness.api.created) == 2, what="a second event")
    assert harness.api.created[1]["count"] == 1


async def test_a_busy_queue_holds_events_back_until_it_is_idle(harness: Harness) -> None:
    harness.busy = True
    for n in range(50):
        await harness.recorder.record(route(f"r{n}", f"u{n}"), "Normal", "ConfigMapCreated", "c")
    harness.clock.advance(events.BUSY_MAX_WAIT - 1)
    # An observation window, not a synchronisation: the senders look at the buffer
    # every IDLE_RECHECK seconds, and none of them may send in two of those looks.
    await asyncio.sleep(2 * events.IDLE_RECHECK)
    assert harness.api.created == []  # none has waited long enough yet
    harness.clock.advance(1)
    # The clock stands still now, so the busy bucket gives its burst and no more.
    await wait_for(
        lambda: len(harness.api.created) == int(events.BUSY_BURST), what="the busy burst"
    )
    assert harness.recorder.pending == 50 - int(events.BUSY_BURST)
    harness.clock.advance(1.0)  # one second of busy time: BUSY_RATE more
    await wait_for(
        lambda: len(harness.api.created) == int(events.BUSY_BURST + events.BUSY_RATE),
        what="the busy rate",
    )
    harness.busy = False
    await wait_for(lambda: len(harness.api.created) == 50, what="every event once idle")
    assert {e["involvedObject"]["name"] for e in harness.api.created} == {
        f"r{n}" for n in range(50)
    }


async def test_the_spam_filter_limits_events_per_object(harness: Harness) -> None:
    for n in range(30):
        await harness.recorder.record(route(), "Warning", "Flapping", f"message {n}")
    await wait_for(lambda: len(harness.api.created) == 25, what="25 events")
    assert dropped(harness.metrics, "spam") == 5
    harness.clock.advance(300)  # one more token after five minutes
    await harness.recorder.record(route(), "Warning", "Flapping", "later")
    await wait_for(lambda: len(harness.api.created) == 26, what="the refilled one")


async def test_a_full_buffer_drops_and_counts() -> None:
    h = Harness(max_buffer=10)  # no senders running: everything stays in the buffer
    for n in range(15):
        await h.recorder.record(route(f"r{n}", f"u{n}"), "Normal", "ConfigMapCreated", "c")
    assert h.recorder.pending == 10
    assert dropped(h.metrics, "buffer_full") == 5
    h.recorder.abandon()
    assert h.recorder.pending == 0
    assert dropped(h.metrics, "shutdown") == 10
    assert h.api.created == []


async def test_drain_sends_everything_even_while_busy() -> None:
    h = Harness()
    task = asyncio.create_task(h.recorder.start())
    try:
        h.busy = True
        for n in range(40):
            await h.recorder.record(route(f"r{n}", f"u{n}"), "Normal", "ConfigMapCreated", "c")
        await h.recorder.drain(timeout=10)
        assert len(h.api.created) == 40
        assert dropped(h.metrics, "shutdown") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_events_recorded_during_a_burst_do_not_wake_the_senders_each_time() -> None:
    """During a burst every reconcile records an Event; the senders, which wait behind
    the busy queue anyway, are not woken for each one (they cost the event loop four
    wake-ups per StaticRoute, competing with the reconciles that converge it)."""
    looks = 0

    def busy() -> bool:
        nonlocal looks
        looks += 1
        return True

    recorder = EventRecorder(
        kube=FakeEvents(), identity="me", metrics=Metrics(process=False), busy=busy
    )
    task = asyncio.create_task(recorder.start())
    try:
        await asyncio.sleep(0)
        for i in range(200):
            await recorder.record(route(f"r{i}", f"uid-{i}"), "Normal", "ConfigMapCreated", "x")
            await asyncio.sleep(0)  # let woken senders run, as a reconcile's awaits do
        assert recorder.pending == 200
        assert looks < 50, f"the senders looked at the busy queue {looks} times for 200 Events"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
