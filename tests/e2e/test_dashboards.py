"""Every PromQL expression of the dashboard and the alert rules, run on a real Prometheus.

A plane of this module's own runs the operator as a process (as a ServiceAccount with
the roles of config/rbac, secure metrics) with two StaticRoutes: ``ready``, whose
router is healthy and serves its file, and ``failing``, whose router answers /health
with 503. Debian's Prometheus scrapes the operator every second, under the job name
the ServiceMonitor gives it, and evaluates config/prometheus/alert_rules.yaml.

Then each expression of config/grafana/router-controller.json (with the dashboard's
variables filled in) must return data, and finite values; each variable's
``label_values`` query must find its label. Each alert rule must evaluate without
error, every series it reads must exist with the labels it selects, and exactly the
alerts this situation calls for are pending: not Ready and routers unhealthy, for
``failing`` only. Deleting ``failing`` removes its series from the operator's metrics.
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from router_controller.api import STATICROUTES
from router_controller.kube import Kube
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.fakerouter import FakeRouter, expose
from router_controller_dev.processes import Children, OperatorProcess
from router_controller_dev.prometheus import PROMETHEUS, Prometheus, start_prometheus
from tests.e2e.processes import Grants, http_get, operator_account
from tests.e2e.support import (
    REPO,
    admin_kube,
    create_route,
    get_cm,
    operator_command,
    staticroute,
    wait_condition,
    wait_for,
)

pytestmark = pytest.mark.cluster

DASHBOARD = REPO / "config" / "grafana" / "router-controller.json"
RULES = REPO / "config" / "prometheus" / "alert_rules.yaml"
# What the ServiceMonitor's scrapes are labelled with: the metrics Service's name.
JOB = "router-controller-controller-manager-metrics-service"
# Longer than this module runs, so every rate window holds its reconciles and probes.
RATE_INTERVAL = "10m"
# The alerts one Ready and one failing StaticRoute call for (pending: their `for:` runs).
FIRING = {"StaticRouteNotReady", "StaticRouteRoutersUnhealthy"}
FAST_PROBES = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}


@dataclass
class Scene:
    namespace: str
    process: OperatorProcess
    reader_token: str
    prometheus: str  # its HTTP API


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with envtest.running(crds=True) as plane:
        yield plane


@pytest.fixture(scope="module")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


def rule_groups() -> dict[str, Any]:
    (rule,) = [d for d in yaml.safe_load_all(RULES.read_text()) if d]
    groups: dict[str, Any] = rule["spec"]
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r]


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels") or [])


def dashboard_queries(namespace: str) -> list[tuple[str, str]]:
    """(panel title, expression with the variables filled in) of every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], fill(target["expr"], namespace))
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets") or []
    ]


def fill(expr: str, namespace: str) -> str:
    filled = (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$job", JOB)
        .replace("$namespace", namespace)  # a namespace name is its own regex
    )
    assert "$" not in filled, f"an unknown variable in {expr}"
    return filled


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "and", "or", "unless", "offset", "inf", "nan"}  # fmt: skip


def selectors(expr: str) -> list[str]:
    """The series selectors of an expression: each metric name with its label matchers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings can hold anything
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, _, call = match.groups()
        if call or name in KEYWORDS or re.fullmatch(r"\d.*", name):
            continue
        start, end = match.span(2) if match.group(2) else (0, 0)
        matchers = expr_slice(expr, text, start, end)
        found.append(name + matchers)
    return found


def expr_slice(expr: str, text: str, start: int, end: int) -> str:
    """The matchers as written (strings restored): the same braces found in ``expr``."""
    if start == end:
        return ""
    prefix = text[:start]
    # Braces never appear in strings here; the n-th "{" of text is the n-th of expr.
    index = prefix.count("{")
    opening = [m.start() for m in re.finditer(r"\{", expr)][index]
    closing = expr.index("}", opening)
    return expr[opening : closing + 1]


async def query(api: str, promql: str) -> list[dict[str, Any]]:
    return await Prometheus(api).query(promql)


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


@pytest.fixture(scope="module")
async def scene(
    control_plane: ControlPlane, kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scene]:
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary on PATH (Debian package: prometheus)")
    folder = tmp_path_factory.mktemp("dashboards")
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", namespace)
    grants = Grants(control_plane)
    process: OperatorProcess | None = None
    children = Children(folder)  # Prometheus, for the whole module
    try:
        kubeconfig = operator_account(
            grants, namespace, folder / "kubeconfig", "manager-role", "metrics-auth-role"
        )
        grants.service_account(namespace, "reader")
        grants.bind_cluster_role(namespace, "reader", "metrics-reader")
        reader_token = control_plane.token_for("reader", namespace)
        async with FakeRouter() as good, FakeRouter() as bad:
            bad.set_mode("error")
            await expose(kube, namespace, "router-ok", [good])
            await expose(kube, namespace, "router-bad", [bad])
            process = OperatorProcess(
                operator_command(
                    kubeconfig,
                    f"--namespaces={namespace}",
                    "--leader-elect",
                    f"--leader-election-namespace={namespace}",
                    f"--leader-election-id=lease-{uuid.uuid4().hex[:8]}",
                    "--metrics-bind-address=127.0.0.1:0",
                ),
                folder / "operator.log",
            ).start()
            record = await process.serving()
            prometheus = await start_prometheus(
                children.start,
                folder,
                job=JOB,
                target=f"127.0.0.1:{record['metrics_port']}",
                token=reader_token,
                rules=rule_groups(),
            )

            async def scraped() -> list[dict[str, Any]]:
                found = await prometheus.query(f'up{{job="{JOB}"}}')
                return [r for r in found if r["value"][1] == "1"]

            await wait_for(scraped, timeout=120, what="a successful scrape")
            # Created once Prometheus scrapes, so the rates see their reconciles happen.
            for name, router in (("ready", "router-ok"), ("failing", "router-bad")):
                await create_route(
                    kube,
                    staticroute(
                        name,
                        namespace,
                        routerRef={"kind": "Service", "apiVersion": "v1", "name": router},
                        healthCheck=FAST_PROBES,
                    ),
                )

            async def loaded() -> bool:  # the kubelet's and the router's part
                return good.load_configmap(await get_cm(kube, namespace, "ready-config"))

            await wait_for(loaded, timeout=60, what="the ready router serving its file")
            await wait_condition(kube, namespace, "ready", "Ready", "True", timeout=90)
            await wait_condition(
                kube, namespace, "failing", "Ready", "False", reason="RouterUnhealthy", timeout=90
            )

            yield Scene(namespace, process, reader_token, prometheus.api)
    finally:
        children.stop()
        if process is not None:
            process.kill()
        grants.undo()
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# -- the dashboard ---------------------------------------------------------------------------


async def test_every_dashboard_query_returns_data(scene: Scene) -> None:
    queries = dashboard_queries(scene.namespace)
    assert len(queries) >= 20
    for title, expr in queries:
        result = await wait_for(
            functools.partial(_finite_result, scene.prometheus, expr),
            timeout=90,
            what=f"data for {title!r}: {expr}",
        )
        assert finite(result), (title, expr, result)


async def _finite_result(api: str, expr: str) -> list[dict[str, Any]] | None:
    result = await query(api, expr)
    return result if finite(result) else None


async def test_the_not_ready_panel_lists_the_failing_staticroute_only(scene: Scene) -> None:
    (expr,) = [e for t, e in dashboard_queries(scene.namespace) if t == "StaticRoutes not Ready"]
    result = await query(scene.prometheus, expr)
    assert {r["metric"]["staticroute"] for r in result} == {"failing"}
    (unhealthy,) = [
        e for t, e in dashboard_queries(scene.namespace) if t == "Unhealthy routers per StaticRoute"
    ]
    counts = {
        r["metric"]["staticroute"]: r["value"][1] for r in await query(scene.prometheus, unhealthy)
    }
    assert counts == {"ready": "0", "failing": "1"}


async def test_every_dashboard_variable_finds_its_label(scene: Scene) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == {"job", "namespace"}
    for variable in variables:
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable
        selector, label = fill(match.group(1), scene.namespace), match.group(2)
        values = {r["metric"].get(label) for r in await query(scene.prometheus, selector)}
        wanted = JOB if label == "job" else scene.namespace
        assert wanted in values, (variable["name"], selector, values)


# -- the alert rules ---------------------------------------------------------------------------


async def test_every_alert_rule_reads_series_that_exist(scene: Scene) -> None:
    for rule in alert_rules():
        found = selectors(rule["expr"])
        assert found, rule["alert"]
        for selector in found:
            result = await wait_for(
                functools.partial(query, scene.prometheus, selector),
                timeout=60,
                what=f"series for {rule['alert']}: {selector}",
            )
            assert result, selector


async def test_exactly_the_alerts_this_situation_calls_for_are_pending(scene: Scene) -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= FIRING

    async def evaluated() -> list[dict[str, Any]] | None:
        status, text = await http_get(f"{scene.prometheus}/api/v1/rules")
        assert status == 200, text
        rules = [r for g in json.loads(text)["data"]["groups"] for r in g["rules"]]
        done = [r for r in rules if not r.get("lastEvaluation", "0001").startswith("0001")]
        pending = {r["name"] for r in rules if r["alerts"]}
        # The Ready StaticRoute may have been caught by an evaluation made before its
        # router was probed; the next evaluation clears that, so wait for it.
        only_failing = all(
            {a["labels"].get("staticroute") for a in r["alerts"]} <= {"failing"} for r in rules
        )
        settled = len(done) == len(names) and pending >= FIRING and only_failing
        return rules if settled else None

    rules = await wait_for(evaluated, timeout=90, what="the rules evaluated, the alerts pending")
    for rule in rules:
        assert rule["health"] == "ok", rule
        if rule["name"] in FIRING:
            assert {a["labels"]["staticroute"] for a in rule["alerts"]} == {"failing"}, rule
            assert {a["state"] for a in rule["alerts"]} == {"pending"}, rule  # `for:` runs
        else:
            assert rule["alerts"] == [], rule
    for rule in alert_rules():
        result = await query(scene.prometheus, rule["expr"])
        assert bool(result) == (rule["alert"] in FIRING), (rule["alert"], result)


# -- and the gauge goes with its StaticRoute ---------------------------------------------------


async def test_a_deleted_staticroute_leaves_no_series(scene: Scene, kube: Kube) -> None:
    url = await scene.process.metrics_url()

    async def series_of(name: str) -> list[str]:
        status, text = await http_get(url, token=scene.reader_token)
        assert status == 200, text
        return [
            line
            for line in text.splitlines()
            if line.startswith("router_controller_") and f'staticroute="{name}"' in line
        ]

    before = await series_of("failing")
    assert any(line.startswith("router_controller_staticroute_condition{") for line in before)
    await kube.delete(STATICROUTES.path(scene.namespace, "failing"))

    async def gone() -> bool:
        return not await series_of("failing")

    await wait_for(gone, timeout=60, what="the failing StaticRoute's series removed")
    assert await series_of("ready"), "the other StaticRoute keeps its series"
