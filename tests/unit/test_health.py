"""health: reading /health answers, probe thresholds, the report, and the Prober itself.

The pure parts are tested as functions. The Prober is tested with small in-memory
caches in place of the informers and real HTTP servers (:class:`FakeRouter`) on
127.0.0.1 in place of routers; no Kubernetes API is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from router_controller.api import HealthCheck, LabelSelector, StaticRouteSpec
from router_controller.clock import SYSTEM_CLOCK, SleepingClock
from router_controller.health import SERVICE_INDEX, Prober, next_due, slice_service
from router_controller.kube import Object
from router_controller.metrics import Metrics
from router_controller.routerconfig import render
from router_controller.routerstate import (
    MAX_ENDPOINT_MESSAGE,
    MAX_HEALTH_BODY,
    MAX_LISTED,
    EndpointState,
    EndpointView,
    ProbeResult,
    RouterReport,
    build_report,
    clip,
    read_health,
    selector_matches,
    summarise,
)
from router_controller_dev.fakerouter import FakeRouter, endpointslice, service
from tests.e2e.support import wait_for
from tests.unit.fakeclock import FakeClock

NS = "default"
LOCAL = "127.0.0.1"  # no API server here to refuse a loopback EndpointSlice address
ROUTE: Object = {"metadata": {"namespace": NS, "name": "route", "generation": 1}}
KEY = (NS, "route")
FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 1}


def selector(**fields: Any) -> LabelSelector:
    return LabelSelector.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "labels", "matches"),
    [
        ({}, {}, True),
        ({}, {"app": "x"}, True),
        ({"matchLabels": {"app": "router"}}, {"app": "router", "tier": "a"}, True),
        ({"matchLabels": {"app": "router"}}, {"app": "other"}, False),
        ({"matchLabels": {"app": "router"}}, {}, False),
        ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]}]},
         {"t": "b"}, True),
        ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]},
         {"t": "a"}, False),
        ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {"t": ""}, True),
        ({"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {"t": "x"}, False),
        ({"matchLabels": {"app": "r"},
          "matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {"app": "r"}, True),
    ],
)  # fmt: skip
def test_selector_matches(fields: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector(**fields), labels) is matches


@pytest.mark.parametrize(
    ("status", "body", "ok", "message"),
    [
        (503, b'{"status": "unhealthy"}', False, "GET /health answered 503 Service Unavailable"),
        (
            200,
            b"<html>It works!</html>",
            False,
            "GET /health answered 200 but its body is not JSON",
        ),
        (200, b"\xff\xfe", False, "GET /health answered 200 but its body is not JSON"),
        (200, b"[1]", False, "GET /health answered 200 but not with a JSON object"),
        (200, b'{"status": "starting"}', False, "GET /health answered 200 with status 'starting'"),
        (200, b'{"status": "healthy"}', True, ""),
    ],
)
def test_read_health_judges_an_answer(status: int, body: bytes, ok: bool, message: str) -> None:
    result = read_health(status, "Service Unavailable" if status == 503 else "OK", body)
    assert result == ProbeResult(ok, message, None)


def test_read_health_keeps_the_running_config() -> None:
    config = {"routing_logic": "roundrobin", "static_models": None}
    body = json.dumps({"status": "healthy", "dynamic_config": config}).encode()
    assert read_health(200, "OK", body) == ProbeResult(True, "", config)
    not_an_object = json.dumps({"status": "healthy", "dynamic_config": "x"}).encode()
    assert read_health(200, "OK", not_an_object).config is None


OK = ProbeResult(True, config={"routing_logic": "roundrobin"})
DOWN = ProbeResult(False, "GET /health answered 503 Service Unavailable")
CHECK = HealthCheck(success_threshold=2, failure_threshold=3)
EXPECTED = {"routing_logic": "roundrobin"}


def test_an_endpoint_is_undecided_until_a_threshold_is_reached() -> None:
    state = EndpointState("http://10.0.0.1:8000")
    assert state.view(EXPECTED) == EndpointView(
        "http://10.0.0.1:8000", None, None, "not probed yet"
    )
    state.observe(DOWN, CHECK)
    state.observe(DOWN, CHECK)
    assert state.view(EXPECTED).healthy is None
    assert state.view(EXPECTED).message == DOWN.message
    state.observe(OK, CHECK)
    assert state.view(EXPECTED).healthy is None
    state.observe(OK, CHECK)
    assert state.view(EXPECTED).healthy is True


def test_failures_below_the_threshold_leave_a_healthy_endpoint_alone() -> None:
    state = EndpointState("http://10.0.0.1:8000")
    state.observe(OK, CHECK)
    state.observe(OK, CHECK)
    healthy = state.view(EXPECTED)
    assert healthy == EndpointView(
        "http://10.0.0.1:8000", True, True, "healthy, serving the current config"
    )
    state.observe(DOWN, CHECK)
    state.observe(DOWN, CHECK)
    assert state.view(EXPECTED) == healthy
    state.observe(DOWN, CHECK)
    assert state.view(EXPECTED) == EndpointView("http://10.0.0.1:8000", False, None, DOWN.message)


def test_recovery_needs_success_threshold_consecutive_successes() -> None:
    state = EndpointState("http://10.0.0.1:8000")
    for _ in range(3):
        state.observe(DOWN, CHECK)
    assert state.view(EXPECTED).healthy is False
    state.observe(OK, CHECK)
    state.observe(DOWN, CHECK)
    state.observe(OK, CHECK)
    assert state.view(EXPECTED).healthy is False, "the successes were not consecutive"
    state.observe(OK, CHECK)
    assert state.view(EXPECTED).healthy is True


@pytest.mark.parametrize(
    ("running", "synced", "message"),
    [
        ({"routing_logic": "roundrobin", "static_models": "a"}, True,
         "healthy, serving the current config"),
        # keys the file does not set may be null or the router's defaults
        ({"routing_logic": "roundrobin", "static_models": "a", "session_key": None,
          "static_backend_health_check_interval": 60}, True,
         "healthy, serving the current config"),
        ({"routing_logic": "session", "static_models": "a"}, False,
         "healthy, but serves another config (routing_logic differ)"),
        ({"routing_logic": "roundrobin", "static_models": "a", "session_key": "x"}, False,
         "healthy, but serves another config (session_key differ)"),
        ({"routing_logic": "roundrobin"}, False,
         "healthy, but serves another config (static_models differ)"),
    ],
)  # fmt: skip
def test_config_sync_compares_every_key_the_file_sets(
    running: dict[str, Any], synced: bool, message: str
) -> None:
    state = EndpointState("http://10.0.0.1:8000")
    state.observe(ProbeResult(True, config=running), HealthCheck())
    view = state.view({"routing_logic": "roundrobin", "static_models": "a"})
    assert (view.synced, view.message) == (synced, message)


def test_config_sync_without_dynamic_config_or_without_a_file() -> None:
    state = EndpointState("http://10.0.0.1:8000")
    state.observe(ProbeResult(True), HealthCheck())
    view = state.view(EXPECTED)
    assert view.synced is False
    assert view.no_dynamic_config
    assert "--dynamic-config-json" in view.message
    assert state.view(None) == EndpointView("http://10.0.0.1:8000", True, None, "healthy")


def _conditions(report: RouterReport) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in report.conditions}


def _view(address: str, healthy: bool | None, synced: bool | None, **kw: Any) -> EndpointView:
    return EndpointView(address, healthy, synced, kw.pop("message", f"{address} state"), **kw)


def test_report_for_a_router_that_cannot_be_probed() -> None:
    report = build_report(
        [], problem=("RouterNotFound", "Service a/b not found"), has_config=True, generation=4
    )
    assert _conditions(report) == {
        "RouterHealthy": ("False", "RouterNotFound", "Service a/b not found"),
        "RouterConfigSynced": ("Unknown", "RouterNotFound", "Service a/b not found"),
    }
    assert all(c.observed_generation == 4 for c in report.conditions)
    assert report.routers == []
    assert not report.ready


def test_report_when_every_endpoint_is_healthy_and_synced() -> None:
    views = [
        _view("http://a:1", True, True, last_probe_time="2026-01-01T00:00:00Z"),
        _view("http://b:2", True, True),
    ]
    report = build_report(views, problem=None, has_config=True, generation=1)
    assert _conditions(report) == {
        "RouterHealthy": ("True", "RouterHealthy", "2 endpoint(s) healthy"),
        "RouterConfigSynced": (
            "True",
            "ConfigSynced",
            "2 healthy endpoint(s) serve the current config",
        ),
    }
    assert report.ready
    assert [r.model_dump(by_alias=True, exclude_none=True) for r in report.routers] == [
        {
            "address": "http://a:1",
            "healthy": True,
            "configSynced": True,
            "message": "http://a:1 state",
            "lastProbeTime": "2026-01-01T00:00:00Z",
        },
        {
            "address": "http://b:2",
            "healthy": True,
            "configSynced": True,
            "message": "http://b:2 state",
        },
    ]


def test_report_names_the_unhealthy_and_the_stale_endpoints() -> None:
    views = [
        _view("http://a:1", True, True),
        _view("http://b:2", False, None, message="cannot connect: Connection refused"),
        _view("http://c:3", True, False, message="serves another config (x differ)"),
    ]
    report = build_report(views, problem=None, has_config=True, generation=1)
    conditions = _conditions(report)
    assert conditions["RouterHealthy"] == (
        "False",
        "RouterUnhealthy",
        "1 of 3 endpoint(s) unhealthy: http://b:2: cannot connect: Connection refused",
    )
    status, reason, message = conditions["RouterConfigSynced"]
    assert (status, reason) == ("False", "ConfigSyncPending")
    assert message.startswith("http://c:3: serves another config (x differ)")
    assert "http://a:1" not in message
    assert "http://b:2" not in message
    assert not report.ready
    assert [r.healthy for r in report.routers] == [True, False, True]
    assert [r.config_synced for r in report.routers] == [True, False, False]


def test_report_while_probes_are_pending_or_the_config_is_missing() -> None:
    pending = build_report(
        [_view("http://a:1", None, None, message="not probed yet")],
        problem=None,
        has_config=True,
        generation=1,
    )
    assert _conditions(pending) == {
        "RouterHealthy": (
            "Unknown",
            "Probing",
            "waiting for probe results of 1 endpoint(s): http://a:1: not probed yet",
        ),
        "RouterConfigSynced": (
            "Unknown",
            "Probing",
            "no healthy endpoint to compare the config with yet",
        ),
    }
    missing = build_report(
        [_view("http://a:1", True, False, no_dynamic_config=True, message="no dynamic_config")],
        problem=None,
        has_config=True,
        generation=1,
    )
    assert _conditions(missing)["RouterConfigSynced"] == (
        "False",
        "NoDynamicConfig",
        "http://a:1: no dynamic_config",
    )
    no_file = build_report(
        [_view("http://a:1", True, None)], problem=None, has_config=False, generation=1
    )
    assert _conditions(no_file)["RouterConfigSynced"][:2] == ("Unknown", "NoConfig")
    assert not no_file.ready


# -- the Prober, over in-memory caches and real HTTP servers ---------------------------


class Cache:
    """What the Prober reads from an informer: objects by namespace and name."""

    def __init__(self, *objects: Object) -> None:
        self._objects: dict[tuple[str, str], Object] = {}
        for obj in objects:
            self.put(obj)

    def put(self, obj: Object) -> None:
        self._objects[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def get(self, namespace: str, name: str) -> Object | None:
        return self._objects.get((namespace, name))

    def items(self, namespace: str | None = None) -> Iterator[Object]:
        for (ns, _), obj in list(self._objects.items()):
            if namespace is None or ns == namespace:
                yield obj

    def by_index(self, index: str, value: str) -> list[Object]:
        assert index == SERVICE_INDEX
        return [obj for obj in self._objects.values() if value in slice_service(obj)]


class Harness:
    def __init__(
        self, services: Cache, slices: Cache, *, schedule: SleepingClock = SYSTEM_CLOCK
    ) -> None:
        self.enqueued: list[tuple[str, str]] = []
        self.metrics = Metrics(process=False)
        self.prober = Prober(
            services=services,
            endpointslices=slices,
            metrics=self.metrics,
            enqueue=self.enqueued.append,
            concurrency=8,
            allow_cross_namespace=False,
            clock=FakeClock(),  # wall time 2026-01-01T00:00:00Z,
            schedule=schedule,
        )

    def probes(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "router_controller_probe_total",
            {"namespace": NS, "staticroute": "route", "result": result},
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def running(
    services: Cache, slices: Cache, *, schedule: SleepingClock = SYSTEM_CLOCK
) -> AsyncIterator[Harness]:
    harness = Harness(services, slices, schedule=schedule)
    task = asyncio.create_task(harness.prober.start())
    try:
        yield harness
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def route_spec(**fields: Any) -> StaticRouteSpec:
    body: dict[str, Any] = {
        "staticBackends": "http://a.example.com:8000",
        "staticModels": "model-a",
        "routerRef": {"name": "router"},
        "healthCheck": FAST,
    }
    body.update(fields)
    return StaticRouteSpec.model_validate(body)


def conditions_of(report: RouterReport | None) -> dict[str, tuple[str, str]]:
    assert report is not None
    return {c.type: (c.status, c.reason) for c in report.conditions}


async def test_prober_probes_every_endpointslice_of_a_service() -> None:
    async with FakeRouter(host=LOCAL) as one, FakeRouter(host=LOCAL) as two:
        not_ready = endpointslice(NS, "router", 2, "10.9.9.9", 9)
        not_ready["endpoints"][0]["conditions"]["ready"] = False
        other = endpointslice(NS, "other", 0, "10.9.9.10", 10)
        services = Cache(service(NS, "router", one.port))
        slices = Cache(
            endpointslice(NS, "router", 0, LOCAL, one.port),
            endpointslice(NS, "router", 1, LOCAL, two.port),
            not_ready,
            other,
        )
        spec = route_spec()
        expected = render(spec).content
        one.load(expected)
        two.load(expected)
        async with running(services, slices) as h:
            first = h.prober.sync(ROUTE, spec, expected)
            assert first is not None
            assert [r.address for r in first.routers] == sorted([one.address, two.address])
            await wait_for(lambda: h.enqueued, what="a state change")
            await wait_for(lambda: one.requests and two.requests, what="both replicas probed")
            await wait_for(
                lambda: (
                    conditions_of(h.prober.sync(ROUTE, spec, expected))["RouterConfigSynced"]
                    == ("True", "ConfigSynced")
                ),
                what="both replicas synced",
            )


async def test_prober_resolves_ports_and_falls_back_to_the_service_address() -> None:
    harness = Harness(
        Cache(
            {
                "metadata": {"namespace": NS, "name": "tls"},
                "spec": {"clusterIP": "10.0.0.7", "ports": [{"name": "https", "port": 443}]},
            },
            {
                "metadata": {"namespace": NS, "name": "headless"},
                "spec": {"clusterIP": "None", "ports": [{"port": 9000}]},
            },
        ),
        Cache(),
    )
    tls = harness.prober.sync(ROUTE, route_spec(routerRef={"name": "tls"}), None)
    assert tls is not None
    assert [r.address for r in tls.routers] == ["https://10.0.0.7:443"]
    # A headless Service without EndpointSlices routes nowhere: no DNS name is probed.
    headless = harness.prober.sync(ROUTE, route_spec(routerRef={"name": "headless"}), None)
    assert conditions_of(headless)["RouterHealthy"] == ("False", "NoEndpoints")
    assert headless is not None
    assert headless.routers == []
    harness.prober.forget(*KEY)


async def test_prober_enqueues_only_when_a_state_changes() -> None:
    async with FakeRouter(host=LOCAL) as router:
        spec = route_spec()
        expected = render(spec).content
        router.load(expected)
        services = Cache(service(NS, "router", router.port))
        slices = Cache(endpointslice(NS, "router", 0, LOCAL, router.port))
        async with running(services, slices) as h:
            h.prober.sync(ROUTE, spec, expected)
            await wait_for(lambda: h.enqueued, what="the first result")
            assert h.enqueued == [KEY]
            seen = router.requests
            await wait_for(lambda: router.requests >= seen + 3, what="three more probes")
            assert h.enqueued == [KEY], "steady probes must not enqueue"
            report = h.prober.sync(ROUTE, spec, expected)
            assert report is not None
            assert report.routers[0].last_probe_time == "2026-01-01T00:00:00Z"
            router.set_mode("error")
            await wait_for(lambda: len(h.enqueued) == 2, what="the failure (threshold 1)")
            assert conditions_of(h.prober.sync(ROUTE, spec, expected))["RouterHealthy"] == (
                "False",
                "RouterUnhealthy",
            )
            assert h.probes("unhealthy") >= 1


async def test_a_new_file_is_never_reported_synced_on_an_answer_to_the_old_one() -> None:
    async with FakeRouter(host=LOCAL) as router:
        old = route_spec(healthCheck={**FAST, "periodSeconds": 3600})
        router.load(render(old).content)
        services = Cache(service(NS, "router", router.port))
        slices = Cache(endpointslice(NS, "router", 0, LOCAL, router.port))
        async with running(services, slices) as h:
            h.prober.sync(ROUTE, old, render(old).content)
            await wait_for(lambda: h.enqueued, what="the first (and only) probe")
            synced = h.prober.sync(ROUTE, old, render(old).content)
            assert conditions_of(synced)["RouterConfigSynced"] == ("True", "ConfigSynced")
            new = route_spec(staticModels="model-b", healthCheck={**FAST, "periodSeconds": 3600})
            report = h.prober.sync(ROUTE, new, render(new).content)
            assert conditions_of(report)["RouterConfigSynced"] == ("False", "ConfigSyncPending")
            assert report is not None
            assert "static_models differ" in report.conditions[1].message
            assert router.requests == 1


async def test_forget_abandons_a_probe_in_flight() -> None:
    async with FakeRouter(host=LOCAL) as router:
        router.set_mode("hang")
        spec = route_spec(healthCheck={**FAST, "timeoutSeconds": 60, "periodSeconds": 60})
        services = Cache(service(NS, "router", router.port))
        slices = Cache(endpointslice(NS, "router", 0, LOCAL, router.port))
        async with running(services, slices) as h:
            h.prober.sync(ROUTE, spec, None)
            await wait_for(lambda: router.hanging == 1, what="the probe to hang")
            h.prober.forget(*KEY)
            await wait_for(lambda: router.hanging == 0, what="the probe to be abandoned")
            assert h.enqueued == []


async def test_routes_for_maps_services_and_their_slices_to_staticroutes() -> None:
    labelled = service(NS, "picked", 8000, {"app": "router"})
    harness = Harness(Cache(labelled), Cache())
    spec = route_spec(routerRef=None, routerSelector={"matchLabels": {"app": "router"}})
    harness.prober.sync(ROUTE, spec, None)
    assert harness.prober.routes_for(labelled, endpointslice=False) == [KEY]
    assert harness.prober.routes_for(
        endpointslice(NS, "picked", 0, LOCAL, 1), endpointslice=True
    ) == [KEY]
    newcomer = service(NS, "newcomer", 8000, {"app": "router"})
    assert harness.prober.routes_for(newcomer, endpointslice=False) == [KEY]
    assert harness.prober.routes_for(service(NS, "unrelated", 1), endpointslice=False) == []
    assert harness.prober.routes_for(service("other", "picked", 1, {"app": "router"}),
                                     endpointslice=False) == []  # fmt: skip
    harness.prober.forget(*KEY)
    assert harness.prober.routes_for(labelled, endpointslice=False) == []


# -- bounded answers and bounded status ---------------------------------------------


def test_clip_and_summarise() -> None:
    assert clip("short") == "short"
    long = clip("x" * 1000, 10)
    assert len(long) == 10
    assert long.endswith("\u2026")
    assert summarise(["a", "b", "c"], total=12, limit=3) == "a; b; c and 9 more"
    assert summarise(["a", "b"], limit=3) == "a; b"


def test_a_body_over_the_limit_is_a_failed_probe() -> None:
    body = b" " * (MAX_HEALTH_BODY + 1)
    result = read_health(200, "OK", body)
    assert not result.ok
    assert "over 256 KiB" in result.message
    assert read_health(200, "OK", b'{"status": "healthy"}' + b" " * 1000).ok


def test_what_a_router_writes_is_clipped() -> None:
    body = json.dumps({"status": "x" * 40_000}).encode()
    result = read_health(200, "OK", body)
    assert not result.ok
    assert result.message.startswith("GET /health answered 200 with status 'xxx")
    assert len(result.message) < 300
    reason = read_health(503, "y" * 8000, b"")
    assert len(reason.message) < 300
    junk = json.dumps(
        {"status": "healthy", "dynamic_config": {"routing_logic": "roundrobin", "junk": "z"}}
    ).encode()
    assert read_health(200, "OK", junk).config == {"routing_logic": "roundrobin"}


def test_a_failure_message_is_bounded_in_the_state() -> None:
    state = EndpointState("http://10.0.0.1:8000")
    state.observe(ProbeResult(False, "m" * 100_000), HealthCheck(failure_threshold=1))
    assert len(state.view(EXPECTED).message) == MAX_ENDPOINT_MESSAGE


def test_many_unhealthy_endpoints_are_summarised() -> None:
    views = [_view(f"http://10.0.{i // 250}.{i % 250}:8000", False, None) for i in range(600)]
    views = [replace(v, message="f" * 5000) for v in views]
    report = build_report(views, problem=None, has_config=True, generation=1)
    healthy = report.conditions[0]
    assert healthy.message.startswith("600 of 600 endpoint(s) unhealthy: http://10.0.0.0:8000: ")
    assert healthy.message.endswith(" and 595 more")
    assert len(healthy.message) < 4096
    assert len(report.routers) == 600
    assert all(len(r.message) <= MAX_ENDPOINT_MESSAGE for r in report.routers)
    assert len(json.dumps([r.model_dump(by_alias=True) for r in report.routers])) < 1024 * 1024


def test_status_lists_at_most_max_listed_endpoints_problems_first() -> None:
    total = MAX_LISTED + 500
    views = [_view(f"http://10.1.{i // 250}.{i % 250}:8000", True, True) for i in range(total)]
    sick = views[-1].address
    views[-1] = _view(sick, False, None)
    report = build_report(views, problem=None, has_config=True, generation=1)
    assert len(report.routers) == MAX_LISTED
    assert sick in {r.address for r in report.routers}
    assert f"status.routers lists {MAX_LISTED} of {total}" in report.conditions[0].message


def test_health_check_timeout_is_capped() -> None:
    assert HealthCheck(timeout_seconds=60, period_seconds=60).timeout_seconds == 60
    with pytest.raises(ValueError, match="less than or equal to 60"):
        HealthCheck(timeout_seconds=61, period_seconds=120)
    with pytest.raises(ValueError, match=r"must not exceed healthCheck\.periodSeconds"):
        HealthCheck(timeout_seconds=5, period_seconds=1)


# -- only what a Service routes to is probed -----------------------------------------


def _svc(name: str, **spec: Any) -> Object:
    return {"metadata": {"namespace": NS, "name": name}, "spec": spec}


def _slice(service_name: str, address_type: str, *addresses: str) -> Object:
    eps = endpointslice(NS, service_name, 0, "10.0.0.1", 8080)
    eps["metadata"]["name"] = f"{service_name}-{address_type.lower()}"
    eps["addressType"] = address_type
    eps["endpoints"] = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    return eps


async def test_external_name_and_host_name_endpoints_are_never_probed() -> None:
    harness = Harness(
        Cache(
            _svc("ext", type="ExternalName", externalName="router.victim.svc.cluster.local"),
            _svc("fqdn", clusterIP="10.0.0.9", ports=[{"name": "http", "port": 80}]),
        ),
        Cache(_slice("fqdn", "FQDN", "router.victim.svc.cluster.local")),
    )
    ext = harness.prober.sync(ROUTE, route_spec(routerRef={"name": "ext"}), None)
    assert conditions_of(ext)["RouterHealthy"] == ("False", "UnsupportedRouterService")
    assert ext is not None
    assert ext.routers == []
    message = ext.conditions[0].message
    assert "ExternalName (router.victim.svc.cluster.local)" in message
    assert "ClusterIP Service" in message
    fqdn = harness.prober.sync(ROUTE, route_spec(routerRef={"name": "fqdn"}), None)
    assert conditions_of(fqdn)["RouterHealthy"] == ("False", "UnsupportedRouterService")
    assert fqdn is not None
    assert "addressType FQDN" in fqdn.conditions[0].message
    selected = harness.prober.sync(
        ROUTE, route_spec(routerRef=None, routerSelector={"matchLabels": {}}), None
    )
    assert conditions_of(selected)["RouterHealthy"] == ("False", "UnsupportedRouterService")
    harness.prober.forget(*KEY)


async def test_only_ip_addresses_of_the_slice_family_are_probed() -> None:
    harness = Harness(
        Cache(_svc("dual", ports=[{"name": "http", "port": 80}])),
        Cache(
            _slice("dual", "IPv4", "10.0.0.5", "not-an-ip", "fd00::5"),
            _slice("dual", "IPv6", "fd00::6", "10.0.0.6"),
        ),
    )
    report = harness.prober.sync(ROUTE, route_spec(routerRef={"name": "dual"}), None)
    assert report is not None
    assert [r.address for r in report.routers] == [
        "http://10.0.0.5:8080",
        "http://[fd00::6]:8080",
    ]
    harness.prober.forget(*KEY)


# -- which port is probed ------------------------------------------------------------

CHART_PORTS = [
    {"name": "router-sport", "port": 80, "targetPort": 8000, "protocol": "TCP"},
    {"name": "lmcache-port", "port": 9000, "targetPort": "lmcache-port", "protocol": "TCP"},
]


def _ported_slice(service_name: str, ports: dict[str, int]) -> Object:
    eps = endpointslice(NS, service_name, 0, "10.0.0.1", 1)
    eps["ports"] = [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports.items()]
    return eps


@pytest.mark.parametrize(
    ("service_ports", "slice_ports", "router_port", "address"),
    [
        # production-stack's chart: router-sport 80 -> containerPort 8000, lmcache-port 9000
        (CHART_PORTS, {"router-sport": 8000, "lmcache-port": 9000}, None, "http://10.0.0.1:8000"),
        (CHART_PORTS, {"router-sport": 8000, "lmcache-port": 9000}, "lmcache-port", "http://10.0.0.1:9000"),
        (CHART_PORTS, {"router-sport": 8000, "lmcache-port": 9000}, 9000, "http://10.0.0.1:9000"),
        (CHART_PORTS, {"router-sport": 8000, "lmcache-port": 9000}, "80", "http://10.0.0.1:8000"),
        # one port, whatever its name
        ([{"name": "web", "port": 80}], {"web": 8080}, None, "http://10.0.0.1:8080"),
        ([{"port": 80}], {"": 8081}, None, "http://10.0.0.1:8081"),
        # several ports, none of the usual names: 8000, as before
        ([{"name": "a", "port": 1}, {"name": "b", "port": 2}], {"a": 11, "b": 12}, None, "http://10.0.0.1:8000"),
        ([{"name": "https", "port": 443}], {"https": 8443}, None, "https://10.0.0.1:8443"),
    ],
)  # fmt: skip
async def test_the_router_port_is_chosen_the_kubernetes_way(
    service_ports: list[dict[str, Any]],
    slice_ports: dict[str, int],
    router_port: int | str | None,
    address: str,
) -> None:
    harness = Harness(
        Cache(_svc("router", ports=service_ports)), Cache(_ported_slice("router", slice_ports))
    )
    report = harness.prober.sync(ROUTE, route_spec(routerPort=router_port), None)
    assert report is not None
    assert [r.address for r in report.routers] == [address]
    harness.prober.forget(*KEY)


async def test_the_cluster_ip_fallback_probes_the_service_port() -> None:
    harness = Harness(Cache(_svc("router", clusterIP="10.0.0.20", ports=CHART_PORTS)), Cache())
    report = harness.prober.sync(ROUTE, route_spec(), None)
    assert report is not None
    assert [r.address for r in report.routers] == ["http://10.0.0.20:80"]
    harness.prober.forget(*KEY)


async def test_a_router_port_the_service_lacks_is_explained() -> None:
    harness = Harness(
        Cache(
            _svc("router", ports=CHART_PORTS), _svc("other", ports=[{"name": "http", "port": 80}])
        ),
        Cache(_ported_slice("router", {"router-sport": 8000}), _ported_slice("other", {"web": 1})),
    )
    missing = harness.prober.sync(ROUTE, route_spec(routerPort="metrics"), None)
    assert conditions_of(missing)["RouterHealthy"] == ("False", "RouterPortNotFound")
    assert missing is not None
    assert (
        f"Service {NS}/router: spec.routerPort metrics is not one of its ports "
        "(router-sport (80), lmcache-port (9000))" in missing.conditions[0].message
    )
    unmatched = harness.prober.sync(ROUTE, route_spec(routerRef={"name": "other"}), None)
    assert conditions_of(unmatched)["RouterHealthy"] == ("False", "RouterPortNotFound")
    harness.prober.forget(*KEY)


def test_router_port_must_be_a_port_name_or_number() -> None:
    assert route_spec(routerPort="router-sport").router_port == "router-sport"
    assert route_spec(routerPort=8000).router_port == 8000
    for bad in (0, 70000, "Router_Port", "a-very-long-port-name", "-x"):
        with pytest.raises(ValueError, match="routerPort"):
            route_spec(routerPort=bad)


@pytest.mark.parametrize(
    ("started", "expected"),
    [
        (100.0, 110.0),  # on time
        (99.9995, 110.0),  # a hair early (the scheduler's tolerance)
        (100.7, 110.0),  # late: the beat stays, the next probe is not 0.7 s later
        (109.9, 110.0),  # late by nearly a period: the next one is due right after
        (125.0, 130.0),  # more than a period late: the missed ticks are skipped
        (120.0, 130.0),  # exactly on a missed tick: that tick is this probe
    ],
)
def test_probes_keep_the_beat_of_their_first_probe(started: float, expected: float) -> None:
    assert next_due(100.0, started, 10.0) == pytest.approx(expected)


async def test_a_late_probe_does_not_move_the_ones_after_it() -> None:
    schedule = FakeClock(start=100.0)
    spec = route_spec(healthCheck={**FAST, "periodSeconds": 10, "timeoutSeconds": 5})
    expected = render(spec).content
    async with FakeRouter(host=LOCAL) as router:
        router.load(expected)
        services = Cache(service(NS, "router", router.port))
        slices = Cache(endpointslice(NS, "router", 0, LOCAL, router.port))
        h = Harness(services, slices, schedule=schedule)
        h.prober.sync(ROUTE, spec, expected)  # a lone new endpoint: due at once (100) ...
        schedule.set(103.0)  # ... but its probe starts 3 s late
        task = asyncio.create_task(h.prober.start())
        try:
            await wait_for(lambda: router.requests == 1, what="the late first probe")
            await wait_for(schedule.sleeping_until, what="the next probe scheduled")
            assert schedule.sleeping_until() == [110.0], "due on the beat, not 10 s after 103"
            lateness = h.metrics.registry.get_sample_value(
                "router_controller_probe_lateness_seconds_sum", {"namespace": NS}
            )
            assert lateness == pytest.approx(3.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
