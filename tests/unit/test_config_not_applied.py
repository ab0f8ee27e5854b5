"""A healthy router that keeps serving another config: pending, then ``ConfigNotApplied``.

The state machine and the report are pure and take the time as an argument, so the
window is tested here at its documented length, second by second; the Prober is
driven with a clock the test sets and a :class:`FakeRouter` that ignores reloads.
The same on the real plane, with Events, is in ``tests/e2e/test_config_not_applied.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from router_controller import conditions as cond
from router_controller.api import Condition, HealthCheck
from router_controller.health import Prober
from router_controller.metrics import Metrics
from router_controller.reconciler import _transition_events
from router_controller.routerconfig import render
from router_controller.routerstate import (
    CONFIG_NOT_APPLIED_AFTER,
    NOT_APPLIED_HINT,
    EndpointState,
    ProbeResult,
    build_report,
    duration,
    posix_time,
)
from router_controller.settings import Settings
from router_controller_dev.fakerouter import FakeRouter, endpointslice, service
from tests.e2e.support import wait_for
from tests.unit.fakeclock import FakeClock
from tests.unit.test_health import KEY, LOCAL, NS, ROUTE, Cache, conditions_of, route_spec

ADDRESS = "http://10.0.0.1:8000"
EXPECTED = {"routing_logic": "roundrobin", "static_models": "b"}
OLD = ProbeResult(True, config={"routing_logic": "roundrobin", "static_models": "a"})
NEW = ProbeResult(True, config=dict(EXPECTED))
CHECK = HealthCheck(success_threshold=1, failure_threshold=1)
T0 = 1_000_000.0
WINDOW = CONFIG_NOT_APPLIED_AFTER


def test_the_window_is_derived_from_the_documented_intervals() -> None:
    # kubelet --sync-frequency 1m + ConfigMap cache TTL 1m + three 10 s router re-reads.
    assert WINDOW == 60 + 60 + 3 * 10
    assert Settings().config_not_applied_after == WINDOW
    assert duration(WINDOW) == "2m30s"
    assert duration(3) == "3s"
    assert posix_time("2026-01-01T00:00:10Z") == 1767225610.0
    assert posix_time("not a time") is None
    assert posix_time(None) is None


def test_serving_another_config_is_pending_then_not_applied() -> None:
    state = EndpointState(ADDRESS)
    state.observe(OLD, CHECK, now=T0)
    pending = state.view(EXPECTED, now=T0 + WINDOW - 1, applied_at=T0)
    assert (pending.synced, pending.not_applied) == (False, False)
    assert pending.message == "healthy, but serves another config (static_models differ)"

    lapsed = state.view(EXPECTED, now=T0 + WINDOW, applied_at=T0)
    assert (lapsed.healthy, lapsed.synced, lapsed.not_applied) == (True, False, True)
    assert lapsed.message == (
        "healthy, but has not applied the current config within 2m30s of the change "
        "(static_models differ)"
    )
    # Steady: a later probe of the same config gives the same view (no status write).
    state.observe(OLD, CHECK, now=T0 + WINDOW + 10)
    assert state.view(EXPECTED, now=T0 + WINDOW + 10, applied_at=T0) == lapsed

    # It clears as soon as the router serves the file.
    state.observe(NEW, CHECK, now=T0 + WINDOW + 20)
    synced = state.view(EXPECTED, now=T0 + WINDOW + 20, applied_at=T0)
    assert (synced.synced, synced.not_applied) == (True, False)


def test_the_window_starts_at_the_later_of_the_change_and_the_first_sight() -> None:
    # A router serving the old config for an hour: the window opens with the change.
    state = EndpointState(ADDRESS)
    state.observe(OLD, CHECK, now=T0 - 3600)
    assert not state.view(EXPECTED, now=T0 + WINDOW - 1, applied_at=T0).not_applied
    assert state.view(EXPECTED, now=T0 + WINDOW, applied_at=T0).not_applied

    # A replica first seen long after the change gets a window of its own.
    late = EndpointState(ADDRESS)
    late.observe(OLD, CHECK, now=T0 + 1000)
    assert not late.view(EXPECTED, now=T0 + 1000 + WINDOW - 1, applied_at=T0).not_applied
    assert late.view(EXPECTED, now=T0 + 1000 + WINDOW, applied_at=T0).not_applied

    # A router that moves to yet another config re-read something: a new window.
    other = ProbeResult(True, config={"routing_logic": "session", "static_models": "a"})
    late.observe(other, CHECK, now=T0 + 2000)
    assert not late.view(EXPECTED, now=T0 + 2000 + WINDOW - 1, applied_at=T0).not_applied

    # Without a clock (or before any answer) nothing is ever "not applied".
    assert not state.view(EXPECTED, applied_at=T0).not_applied
    assert not EndpointState(ADDRESS).view(EXPECTED, now=T0 + 10 * WINDOW).not_applied


def test_a_router_that_goes_down_and_comes_back_starts_a_new_window() -> None:
    state = EndpointState(ADDRESS)
    state.observe(OLD, CHECK, now=T0)
    state.observe(ProbeResult(False, "cannot connect"), CHECK, now=T0 + 10)
    state.observe(OLD, CHECK, now=T0 + WINDOW)
    assert not state.view(EXPECTED, now=T0 + WINDOW, applied_at=T0).not_applied


def test_a_restart_resumes_a_lapsed_window_instead_of_opening_another() -> None:
    before = EndpointState(ADDRESS)
    before.observe(OLD, CHECK, now=T0)
    lapsed = before.view(EXPECTED, now=T0 + WINDOW, applied_at=T0)
    entry = {
        "address": ADDRESS,
        "healthy": True,
        "configSynced": False,
        "message": lapsed.message,
        "lastProbeTime": "1970-01-12T13:48:10Z",
    }
    resumed = EndpointState.resume(ADDRESS, entry)
    assert resumed.view(EXPECTED).not_applied, "shown as the status says until the first probe"
    # The first probe of the new run, right after it started: still not applied.
    restart = T0 + WINDOW + 5
    resumed.observe(OLD, CHECK, now=restart)
    assert resumed.view(EXPECTED, now=restart, applied_at=T0) == lapsed

    # A new file (lastAppliedTime moves) opens a new window for it.
    assert not resumed.view(EXPECTED, now=restart + 1, applied_at=restart).not_applied


def test_a_restart_resumes_a_pending_window_from_the_entrys_probe_time() -> None:
    entry = {
        "address": ADDRESS,
        "healthy": True,
        "configSynced": False,
        "message": "healthy, but serves another config (static_models differ)",
        "lastProbeTime": "2026-01-01T00:00:00Z",
    }
    first_seen = posix_time("2026-01-01T00:00:00Z")
    assert first_seen is not None
    state = EndpointState.resume(ADDRESS, entry)
    state.observe(OLD, CHECK, now=first_seen + WINDOW - 10)
    assert not state.view(EXPECTED, now=first_seen + WINDOW - 10).not_applied
    assert state.view(EXPECTED, now=first_seen + WINDOW).not_applied


def test_the_report_says_which_keys_differ_and_where_to_look() -> None:
    lapsed_state = EndpointState(ADDRESS)
    lapsed_state.observe(OLD, CHECK, now=T0)
    pending_state = EndpointState("http://10.0.0.2:8000")
    pending_state.observe(OLD, CHECK, now=T0 + WINDOW)
    views = [
        s.view(EXPECTED, now=T0 + WINDOW, applied_at=T0) for s in (lapsed_state, pending_state)
    ]
    report = build_report(views, problem=None, has_config=True, generation=3)
    synced = report.conditions[1]
    assert (synced.type, synced.status, synced.reason) == (
        cond.ROUTER_CONFIG_SYNCED,
        "False",
        "ConfigNotApplied",
    )
    assert ADDRESS in synced.message
    assert "static_models differ" in synced.message
    assert "http://10.0.0.2:8000" not in synced.message, "still within its window"
    assert "DynamicConfigWatcher: Error loading config file" in synced.message
    assert "--dynamic-config-json" in synced.message
    assert synced.message.endswith(NOT_APPLIED_HINT)
    assert not report.ready

    pending_only = build_report(views[1:], problem=None, has_config=True, generation=3)
    assert pending_only.conditions[1].reason == "ConfigSyncPending"


def _synced(status: bool, reason: str) -> list[Condition]:
    return [cond.condition(cond.ROUTER_CONFIG_SYNCED, status, reason, f"{reason} message", 1)]


def test_not_applied_is_a_warning_event_and_its_clearing_a_normal_one() -> None:
    pending = _synced(False, "ConfigSyncPending")
    lapsed = _synced(False, "ConfigNotApplied")
    synced = _synced(True, "ConfigSynced")
    assert _transition_events(pending, lapsed) == [
        ("Warning", "ConfigNotApplied", "ConfigNotApplied message")
    ]
    assert _transition_events(lapsed, lapsed) == []
    assert _transition_events(lapsed, synced) == [
        ("Normal", "RouterConfigSynced", "ConfigSynced message")
    ]
    assert _transition_events(synced, pending) == [
        ("Normal", "ConfigSyncPending", "ConfigSyncPending message")
    ]


# -- the Prober, with a clock the test moves --------------------------------------------


@contextlib.asynccontextmanager
async def prober(clock: FakeClock, port: int, enqueued: list[Any]) -> AsyncIterator[Prober]:
    probes = Prober(
        services=Cache(service(NS, "router", port)),
        endpointslices=Cache(endpointslice(NS, "router", 0, LOCAL, port)),
        metrics=Metrics(process=False),
        enqueue=enqueued.append,
        concurrency=4,
        allow_cross_namespace=False,
        clock=clock,
        config_not_applied_after=60,
    )
    task = asyncio.create_task(probes.start())
    try:
        yield probes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_prober_flips_to_not_applied_at_the_first_probe_after_the_window() -> None:
    async with FakeRouter(host=LOCAL) as router:
        spec = route_spec(staticModels="model-b")
        expected = render(spec).content
        assert router.load(render(route_spec()).content)  # it runs an older file
        router.frozen = True
        assert not router.load(expected), "a frozen router keeps its old config"
        clock = FakeClock()  # wall time 2026-01-01T00:00:00Z
        route = {**ROUTE, "status": {"lastAppliedTime": "2026-01-01T00:00:00Z"}}
        enqueued: list[Any] = []
        async with prober(clock, router.port, enqueued) as probes:
            probes.sync(route, spec, expected)
            await wait_for(lambda: enqueued, what="the first result")
            pending = probes.sync(route, spec, expected)
            assert conditions_of(pending)["RouterConfigSynced"] == ("False", "ConfigSyncPending")

            clock.advance(59)  # 2026-01-01T00:00:59Z
            seen = router.requests
            await wait_for(lambda: router.requests >= seen + 2, what="probes within the window")
            assert enqueued == [KEY], "nothing changed within the window"

            clock.advance(1)  # 2026-01-01T00:01:00Z
            await wait_for(lambda: len(enqueued) == 2, what="the probe after the window")
            lapsed = probes.sync(route, spec, expected)
            assert conditions_of(lapsed)["RouterConfigSynced"] == ("False", "ConfigNotApplied")
            assert lapsed is not None
            assert lapsed.routers[0].last_probe_time == "2026-01-01T00:01:00Z"
            assert "within 1m0s" in lapsed.routers[0].message

            router.frozen = False
            assert router.load(expected)
            await wait_for(lambda: len(enqueued) == 3, what="the probe of the new config")
            synced = probes.sync(route, spec, expected)
            assert conditions_of(synced)["RouterConfigSynced"] == ("True", "ConfigSynced")
