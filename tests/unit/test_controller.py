"""The controller's outcome table, with a real work queue and a reconcile that we script."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from router_controller.controller import Controller, reconcile_id
from router_controller.metrics import Metrics
from router_controller.reconcile import Key, Result, TerminalError
from router_controller.workqueue import WorkQueue
from tests.unit.fakeclock import FakeClock


class Script:
    """A reconcile whose outcome per key is set by the test; records every call."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[Result | Exception]] = {}
        self.calls: list[str] = []
        self.called = asyncio.Event()

    async def reconcile(self, key: Key) -> Result:
        _, name = key
        self.calls.append(name)
        self.called.set()
        todo = self.outcomes.get(name) or [Result()]
        outcome = todo.pop(0) if len(todo) > 1 else todo[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


@pytest.fixture
async def harness() -> AsyncIterator[tuple[Controller, Script, FakeClock, Metrics]]:
    clock = FakeClock()
    queue: WorkQueue[Key] = WorkQueue(name="staticroute", clock=clock)
    script = Script()
    metrics = Metrics(registry=CollectorRegistry(), process=False)
    controller = Controller(
        name="staticroute", queue=queue, reconciler=script, workers=2, metrics=metrics
    )
    task = asyncio.create_task(controller.start())
    yield controller, script, clock, metrics
    await queue.shutdown(drain_timeout=1)
    await asyncio.wait_for(task, 5)


async def settle(controller: Controller) -> None:
    for _ in range(50):
        await asyncio.sleep(0)
        if controller.queue.depth == 0 and controller.queue.unfinished_work_seconds() == 0:
            return


async def test_metrics_start_at_zero_for_every_result() -> None:
    metrics = Metrics(registry=CollectorRegistry(), process=False)
    Controller(name="c", queue=WorkQueue(), reconciler=Script(), workers=3, metrics=metrics)
    for result in ("success", "error", "requeue", "requeue_after"):
        sample = metrics.registry.get_sample_value(
            "controller_runtime_reconcile_total", {"controller": "c", "result": result}
        )
        assert sample == 0.0
    assert value(metrics, "controller_runtime_max_concurrent_reconciles", controller="c") == 3


async def test_success_forgets_backoff(
    harness: tuple[Controller, Script, FakeClock, Metrics],
) -> None:
    controller, script, _, metrics = harness
    controller.queue.add(("ns", "ok"))
    await settle(controller)
    assert script.calls == ["ok"]
    assert controller.queue.num_requeues(("ns", "ok")) == 0
    assert value(metrics, "controller_runtime_reconcile_total", controller="staticroute",
                 result="success") == 1  # fmt: skip


async def test_error_is_retried_with_backoff(
    harness: tuple[Controller, Script, FakeClock, Metrics],
) -> None:
    controller, script, clock, metrics = harness
    script.outcomes["bad"] = [RuntimeError("boom"), RuntimeError("boom"), Result()]
    controller.queue.add(("ns", "bad"))
    await settle(controller)
    assert script.calls == ["bad"]
    assert controller.queue.num_requeues(("ns", "bad")) == 1
    clock.advance(0.004)  # backoff is 5 ms: not yet
    await settle(controller)
    assert script.calls == ["bad"]
    clock.advance(0.002)
    await settle(controller)
    assert script.calls == ["bad", "bad"]
    clock.advance(0.011)  # second failure waits 10 ms
    await settle(controller)
    assert script.calls == ["bad", "bad", "bad"]
    assert controller.queue.num_requeues(("ns", "bad")) == 0  # success forgot it
    labels = {"controller": "staticroute"}
    assert value(metrics, "controller_runtime_reconcile_errors_total", **labels) == 2
    assert value(metrics, "controller_runtime_reconcile_total", result="error", **labels) == 2


async def test_terminal_error_is_not_retried(
    harness: tuple[Controller, Script, FakeClock, Metrics],
) -> None:
    controller, script, clock, metrics = harness
    script.outcomes["fatal"] = [TerminalError("cannot work")]
    controller.queue.add(("ns", "fatal"))
    await settle(controller)
    clock.advance(2000)
    await settle(controller)
    assert script.calls == ["fatal"]
    assert value(metrics, "controller_runtime_terminal_reconcile_errors_total",
                 controller="staticroute") == 1  # fmt: skip


async def test_requeue_after_comes_back_after_the_delay(
    harness: tuple[Controller, Script, FakeClock, Metrics],
) -> None:
    controller, script, clock, metrics = harness
    script.outcomes["later"] = [Result(requeue_after=60), Result()]
    controller.queue.add(("ns", "later"))
    await settle(controller)
    clock.advance(59)
    await settle(controller)
    assert script.calls == ["later"]
    clock.advance(1)
    await settle(controller)
    assert script.calls == ["later", "later"]
    assert value(metrics, "controller_runtime_reconcile_total", controller="staticroute",
                 result="requeue_after") == 1  # fmt: skip


async def test_requeue_uses_the_rate_limiter(
    harness: tuple[Controller, Script, FakeClock, Metrics],
) -> None:
    controller, script, clock, metrics = harness
    script.outcomes["stale"] = [Result(requeue=True), Result()]
    controller.queue.add(("ns", "stale"))
    await settle(controller)
    assert controller.queue.num_requeues(("ns", "stale")) == 1
    clock.advance(0.005)
    await settle(controller)
    assert script.calls == ["stale", "stale"]
    assert value(metrics, "controller_runtime_reconcile_total", controller="staticroute",
                 result="requeue") == 1  # fmt: skip


def test_every_reconcile_id_is_a_new_random_version_4_uuid() -> None:
    ids = [reconcile_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
