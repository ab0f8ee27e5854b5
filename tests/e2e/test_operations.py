"""Running in production: leader election, metrics, probes and shutdown of real processes.

Every test here runs the operator as a separate process (``python -m router_controller``),
as a Deployment does, watching only its own namespace and campaigning for a Lease of
its own. The module has a control plane of its own (``control_plane`` and ``kube`` are
overridden here): the session's plane may have an in-process operator watching every
namespace, which would reconcile these tests' StaticRoutes too and make "only the
leader writes" unprovable. Where a test needs an identity with exactly the operator's
rights, the operator runs as a ServiceAccount bound to the roles rendered from
``config/rbac``.

Which replica wrote what is read from the API: the field manager the API server
records is the part of the User-Agent before the first ``/``, the same
``router-controller`` for every replica (so managedFields do not grow with each new
Pod), while the Events a replica records carry its identity as ``reportingInstance``,
the same string it writes as the Lease's ``holderIdentity``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router_controller.api import STATICROUTES, default_config_map_name
from router_controller.clock import format_micro_time
from router_controller.kube import LEASES, Conflict, Kube, NotFound, Object
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.processes import OperatorProcess
from router_controller_dev.prometheus import PROMETHEUS, start_prometheus
from tests.e2e import leases
from tests.e2e.processes import (
    SHUTDOWN_LEAKS,
    Background,
    Grants,
    Spawn,
    apply_roles,
    http_get,
    http_status,
    operator_account,
)
from tests.e2e.support import (
    admin_kube,
    config_of,
    create_route,
    get_route,
    operator_command,
    staticroute,
    try_get_cm,
    wait_for,
)

# Short enough for tests, long enough for a busy 2-core machine to renew in time.
LEASE_DURATION, RETRY_PERIOD = leases.LEASE_DURATION, leases.RETRY_PERIOD
COMPONENT = "router-controller"
RESULTS = {"success", "error", "requeue", "requeue_after"}


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with envtest.running(crds=True) as plane:
        yield plane


@pytest.fixture(scope="module")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


def election_flags(namespace: str, lease: str, **timings: float) -> tuple[str, ...]:
    """Leader election in ``namespace`` with short timings, watching only that namespace."""
    return (*leases.election_flags(namespace, lease, **timings), f"--namespaces={namespace}")


def unique_lease() -> str:
    return f"lease-{uuid.uuid4().hex[:8]}"


async def lease_spec(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    try:
        lease = await kube.get(LEASES.path(namespace, name))
    except NotFound:
        return {}
    return dict(lease.get("spec") or {})


async def holder(kube: Kube, namespace: str, name: str) -> str:
    return str((await lease_spec(kube, namespace, name)).get("holderIdentity") or "")


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def answers(url: str, status: int, *, token: str | None = None) -> bool:
    return await http_status(url, token=token) == status


def families(text: str) -> set[str]:
    """The metric names declared (``# TYPE``), with or without series yet."""
    return {family.name for family in text_string_to_metric_families(text)}


def scrape(text: str) -> Samples:
    """Samples by name: (labels, value), from Prometheus' text format."""
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for found, v in samples.get(metric, []) if labels.items() <= found.items())


async def metrics_of(process: OperatorProcess, token: str | None = None) -> Samples:
    status, text = await http_get(await process.metrics_url(), token=token)
    assert status == 200, text
    return scrape(text)


async def operator_events(kube: Kube, namespace: str) -> list[Object]:
    listed = await kube.get(f"/api/v1/namespaces/{namespace}/events")
    return [e for e in listed.get("items", []) if e.get("reportingComponent") == COMPONENT]


def models(route: int, revision: int) -> str:
    return f"model-{route}-{revision},model-b"


async def configmaps_match(kube: Kube, namespace: str, names: list[str]) -> bool:
    """Every StaticRoute's ConfigMap holds the models of its current spec."""
    for name in names:
        route = await get_route(kube, namespace, name)
        cm = await try_get_cm(kube, namespace, default_config_map_name(name))
        if cm is None or config_of(cm)["static_models"] != route["spec"]["staticModels"]:
            return False
    return True


def assert_clean_exit_log(process: OperatorProcess) -> None:
    output = process.output
    for leak in SHUTDOWN_LEAKS:
        assert leak not in output, f"{leak!r} in the operator's output:\n{output}"


# -- leader election --------------------------------------------------------------------


async def start_pair(
    kube: Kube, operators: Spawn, kubeconfig: Path, flags: tuple[str, ...], lease: str
) -> tuple[tuple[str, OperatorProcess], tuple[str, OperatorProcess]]:
    """Two replicas; once one holds the Lease: (leader id, process), (standby id, process)."""
    namespace = next(f.split("=", 1)[1] for f in flags if f.startswith("--namespaces="))
    both = [operators(kubeconfig, *flags), operators(kubeconfig, *flags)]
    ids = {await p.identity(): p for p in both}
    assert len(ids) == 2, "each replica campaigns under an identity of its own"

    async def elected() -> str | None:
        current = await holder(kube, namespace, lease)
        return current if current in ids else None

    leader_id: str = await wait_for(elected, timeout=90, what="a leader")
    (standby_id,) = set(ids) - {leader_id}
    for process in both:  # a standby is ready too: it serves its endpoints
        url = await process.probe_url("/readyz")
        await wait_for(partial(answers, url, 200), timeout=60, what="both replicas ready")
    return (leader_id, ids[leader_id]), (standby_id, ids[standby_id])


async def test_only_the_leader_writes_and_a_killed_leader_is_replaced(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operators: Spawn,
    grants: Grants,
    tmp_path: Path,
) -> None:
    kubeconfig = operator_account(grants, namespace, tmp_path / "kubeconfig", "manager-role")
    lease = unique_lease()
    flags = (
        *election_flags(namespace, lease),
        "--metrics-bind-address=127.0.0.1:0",
        "--metrics-secure=false",
    )
    (leader_id, leader), (standby_id, standby) = await start_pair(
        kube, operators, kubeconfig, flags, lease
    )
    names = [f"r{i}" for i in range(3)]
    for name in names:
        await create_route(kube, staticroute(name, namespace))
    await wait_for(lambda: configmaps_match(kube, namespace, names), what="ConfigMaps written")

    async def created_events() -> list[Object]:
        events = await operator_events(kube, namespace)
        created = [e for e in events if e["reason"] == "ConfigMapCreated"]
        return events if len(created) == len(names) else []

    events = await wait_for(created_events, what="an event per ConfigMap")
    assert {e["reportingInstance"] for e in events} == {leader_id}
    for name in names:
        cm = await try_get_cm(kube, namespace, default_config_map_name(name))
        assert cm is not None
        assert {f["manager"] for f in cm["metadata"]["managedFields"]} == {COMPONENT}
        route = await get_route(kube, namespace, name)
        status_writers = {
            f["manager"]
            for f in route["metadata"]["managedFields"]
            if f.get("subresource") == "status"
        }
        assert status_writers == {COMPONENT}

    # The standby reconciled nothing; --metrics-secure=false serves plain HTTP, no token.
    standby_metrics = await metrics_of(standby)
    assert value(standby_metrics, "controller_runtime_reconcile_total") == 0
    assert value(standby_metrics, "leader_election_master_status", name=lease) == 0
    leader_metrics = await metrics_of(leader)
    assert value(leader_metrics, "controller_runtime_reconcile_total", result="success") >= 3
    assert value(leader_metrics, "leader_election_master_status", name=lease) == 1

    before = await lease_spec(kube, namespace, lease)
    leader.signal(signal.SIGKILL)
    killed_at = time.monotonic()

    async def taken_over() -> bool:
        return await holder(kube, namespace, lease) == standby_id

    # Bound: lease duration + retry period after the standby last saw a renewal,
    # which is at most a retry period before the kill; the deadline is generous.
    await wait_for(taken_over, timeout=4 * (LEASE_DURATION + RETRY_PERIOD) + 30, what="takeover")
    print(f"takeover after SIGKILL: {time.monotonic() - killed_at:.1f}s")
    assert await leader.exit_code(timeout=30) == -signal.SIGKILL
    after = await lease_spec(kube, namespace, lease)
    assert after["leaseTransitions"] == before["leaseTransitions"] + 1
    assert after["acquireTime"] > before["acquireTime"]

    await kube.merge_patch(STATICROUTES.path(namespace, "r0"), {"spec": {"staticModels": "x,y"}})
    await wait_for(lambda: configmaps_match(kube, namespace, names), what="update reconciled")

    async def updated_events() -> list[Object]:
        events = await operator_events(kube, namespace)
        return [e for e in events if e["reason"] == "ConfigMapUpdated"]

    updated = await wait_for(updated_events, what="the new leader's event")
    assert {e["reportingInstance"] for e in updated} == {standby_id}
    assert {e["reportingInstance"] for e in await operator_events(kube, namespace)} == {
        leader_id,
        standby_id,
    }
    new_leader_metrics = await metrics_of(standby)
    assert value(new_leader_metrics, "leader_election_master_status", name=lease) == 1
    assert value(new_leader_metrics, "controller_runtime_reconcile_total", result="success") >= 1


async def test_sigterm_releases_the_lease_to_the_standby(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operators: Spawn,
    grants: Grants,
    tmp_path: Path,
) -> None:
    kubeconfig = operator_account(grants, namespace, tmp_path / "kubeconfig", "manager-role")
    lease = unique_lease()
    # A long lease: without the release the standby would wait a minute to take over.
    long_lease = 60.0
    flags = election_flags(namespace, lease, duration=long_lease, renew=15, retry=RETRY_PERIOD)
    (leader_id, leader), (standby_id, standby) = await start_pair(
        kube, operators, kubeconfig, flags, lease
    )
    await create_route(kube, staticroute("r", namespace))
    await wait_for(lambda: configmaps_match(kube, namespace, ["r"]), what="ConfigMap written")
    before = await lease_spec(kube, namespace, lease)
    assert before["leaseDurationSeconds"] == long_lease

    leader.signal(signal.SIGTERM)
    assert await leader.exit_code(timeout=60) == 0
    assert leader.find("released leadership") is not None
    assert_clean_exit_log(leader)

    async def taken_over() -> bool:
        return await holder(kube, namespace, lease) == standby_id

    await wait_for(taken_over, timeout=long_lease / 2, what="takeover before the lease expires")
    after = await lease_spec(kube, namespace, lease)
    assert after["leaseTransitions"] == before["leaseTransitions"] + 1
    assert after["leaseDurationSeconds"] == long_lease

    # The last replica to stop leaves the Lease free, as client-go's release does.
    standby.signal(signal.SIGTERM)
    assert await standby.exit_code(timeout=60) == 0
    assert_clean_exit_log(standby)
    released = await lease_spec(kube, namespace, lease)
    assert released["holderIdentity"] == ""
    assert released["leaseDurationSeconds"] == 1
    assert released["leaseTransitions"] == after["leaseTransitions"]
    assert leader_id != standby_id


async def test_a_lost_lease_stops_the_operator_with_exit_1(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operators: Spawn,
) -> None:
    lease = unique_lease()
    process = operators(control_plane.kubeconfig, *election_flags(namespace, lease))
    identity = await process.identity()
    await wait_for(lambda: _holds(kube, namespace, lease, identity), timeout=60, what="leadership")

    async def steal() -> bool:
        current = await kube.get(LEASES.path(namespace, lease))
        now = format_micro_time(datetime.datetime.now(datetime.UTC))
        current["spec"].update(
            holderIdentity="intruder", renewTime=now, acquireTime=now, leaseDurationSeconds=3600
        )
        try:
            await kube.replace(LEASES.path(namespace, lease), current)
        except Conflict:
            return False  # renewed meanwhile: read it again
        return True

    await wait_for(steal, what="the lease taken by someone else")
    assert await process.exit_code(timeout=60) == 1
    assert process.find("lost leadership") is not None
    # It stopped instead of fighting for the lease.
    assert await holder(kube, namespace, lease) == "intruder"


async def _holds(kube: Kube, namespace: str, lease: str, identity: str) -> bool:
    return await holder(kube, namespace, lease) == identity


# -- secure metrics and Prometheus -------------------------------------------------------


@dataclass
class SecureOperator:
    process: OperatorProcess
    namespace: str
    lease: str
    reader_token: str
    stranger_token: str


@pytest.fixture(scope="module")
async def secure(
    control_plane: ControlPlane, kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecureOperator]:
    """An operator serving HTTPS /metrics, with one StaticRoute reconciled.

    It runs as a ServiceAccount holding manager-role and metrics-auth-role (so the
    TokenReview and SubjectAccessReview it makes are allowed by config/rbac); the
    ``reader`` ServiceAccount holds metrics-reader, ``stranger`` nothing.
    """
    folder = tmp_path_factory.mktemp("secure-metrics")
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", namespace)
    grants = Grants(control_plane)
    process: OperatorProcess | None = None
    try:
        kubeconfig = operator_account(
            grants, namespace, folder / "kubeconfig", "manager-role", "metrics-auth-role"
        )
        grants.service_account(namespace, "reader")
        grants.bind_cluster_role(namespace, "reader", "metrics-reader")
        grants.service_account(namespace, "stranger")
        lease = unique_lease()
        process = OperatorProcess(
            operator_command(
                kubeconfig, *election_flags(namespace, lease), "--metrics-bind-address=127.0.0.1:0"
            ),
            folder / "operator.log",
        ).start()
        identity = await process.identity()
        await wait_for(lambda: _holds(kube, namespace, lease, identity), timeout=60, what="lead")
        await create_route(kube, staticroute("r", namespace))
        await wait_for(lambda: configmaps_match(kube, namespace, ["r"]), what="ConfigMap")
        yield SecureOperator(
            process=process,
            namespace=namespace,
            lease=lease,
            reader_token=control_plane.token_for("reader", namespace),
            stranger_token=control_plane.token_for("stranger", namespace),
        )
    finally:
        if process is not None:
            process.kill()
        grants.undo()
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# Every series a controller-runtime dashboard reads, with its labels (``le`` for buckets).
EXPECTED_SERIES = {
    "controller_runtime_reconcile_total": {"controller", "result"},
    "controller_runtime_reconcile_errors_total": {"controller"},
    "controller_runtime_terminal_reconcile_errors_total": {"controller"},
    "controller_runtime_reconcile_time_seconds_bucket": {"controller", "le"},
    "controller_runtime_max_concurrent_reconciles": {"controller"},
    "controller_runtime_active_workers": {"controller"},
    "workqueue_depth": {"name", "controller"},
    "workqueue_adds_total": {"name", "controller"},
    "workqueue_queue_duration_seconds_bucket": {"name", "controller", "le"},
    "workqueue_work_duration_seconds_bucket": {"name", "controller", "le"},
    "workqueue_unfinished_work_seconds": {"name", "controller"},
    "workqueue_longest_running_processor_seconds": {"name", "controller"},
    "workqueue_retries_total": {"name", "controller"},
    "leader_election_master_status": {"name"},
    "rest_client_requests_total": {"code", "method", "host"},
    "process_cpu_seconds_total": set(),
    "process_resident_memory_bytes": set(),
    "process_start_time_seconds": set(),
    "process_open_fds": set(),
}
# The router probe metrics; their series appear per StaticRoute once a router is probed.
PROBE_FAMILIES = (
    "router_controller_probe",
    "router_controller_probe_duration_seconds",
    "router_controller_routers_unhealthy",
)


async def test_metrics_need_a_token_allowed_to_get_metrics(
    control_plane: ControlPlane, secure: SecureOperator
) -> None:
    url = await secure.process.metrics_url()
    assert url.startswith("https://")
    assert (await http_get(url))[0] == 401
    assert (await http_get(url, token="not-a-token"))[0] == 401
    assert (await http_get(url, token=secure.stranger_token))[0] == 403
    assert await http_status(url.replace("https://", "http://")) != 200

    status, text = await http_get(url, token=secure.reader_token)
    assert status == 200, text
    samples = scrape(text)
    for name, labels in EXPECTED_SERIES.items():
        assert samples.get(name), f"no {name} series"
        for found, _ in samples[name]:
            assert set(found) == labels, f"{name} has labels {sorted(found)}"
    assert set(PROBE_FAMILIES) <= families(text)
    assert not [n for n in samples if n.endswith("_created")], "Go clients export no *_created"

    results = {
        labels["result"]
        for labels, _ in samples["controller_runtime_reconcile_total"]
        if labels["controller"] == "staticroute"
    }
    assert results == RESULTS
    assert value(samples, "controller_runtime_reconcile_total", result="success") >= 1
    assert value(samples, "leader_election_master_status", name=secure.lease) == 1
    api_host = control_plane.server.removeprefix("https://")
    assert value(samples, "rest_client_requests_total", host=api_host, method="GET", code="200")
    assert value(samples, "workqueue_adds_total", name="staticroute") >= 1


@pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary on PATH (Debian package: prometheus)"
)
async def test_prometheus_scrapes_the_secure_endpoint(
    secure: SecureOperator, background: Background, tmp_path: Path
) -> None:
    record = await secure.process.serving()
    prometheus = await start_prometheus(
        background,
        tmp_path,
        job="router-controller",
        target=f"127.0.0.1:{record['metrics_port']}",
        token=secure.reader_token,
    )
    query = prometheus.query

    async def scraped() -> list[dict[str, Any]]:
        return [r for r in await query('up{job="router-controller"}') if r["value"][1] == "1"]

    await wait_for(scraped, timeout=120, what="a successful scrape")

    async def reconciles() -> list[dict[str, Any]]:
        found = await query('controller_runtime_reconcile_total{controller="staticroute"}')
        return found if len(found) == len(RESULTS) else []

    series = await wait_for(reconciles, timeout=60, what="reconcile_total in Prometheus")
    by_result = {s["metric"]["result"]: float(s["value"][1]) for s in series}
    assert set(by_result) == RESULTS
    assert by_result["success"] >= 1
    leading = await wait_for(
        lambda: query(f'leader_election_master_status{{name="{secure.lease}"}}'),
        timeout=60,
        what="leader_election_master_status in Prometheus",
    )
    assert [s["value"][1] for s in leading] == ["1"]


# -- probes -----------------------------------------------------------------------------


async def test_readyz_waits_for_the_caches_and_healthz_answers_meanwhile(
    control_plane: ControlPlane,
    namespace: str,
    operators: Spawn,
    grants: Grants,
    tmp_path: Path,
) -> None:
    # The operator's ServiceAccount has no rights yet: its caches cannot fill.
    apply_roles(control_plane, namespace)
    account = grants.service_account(namespace, "controller-manager")
    kubeconfig = grants.kubeconfig(namespace, account, tmp_path / "kubeconfig")
    process = operators(kubeconfig, f"--namespaces={namespace}")
    healthz = await process.probe_url("/healthz")
    readyz = await process.probe_url("/readyz")

    assert await http_get(healthz) == (200, "ok")
    status, body = await http_get(readyz)
    assert status == 503
    assert "[-]informers failed" in body
    assert body.endswith("readyz check failed\n")
    verbose = "[+]ping ok\n[+]credentials ok\nhealthz check passed\n"
    assert (await http_get(f"{healthz}?verbose"))[1] == verbose

    grants.bind_cluster_role(namespace, account, "manager-role")
    await wait_for(lambda: answers(readyz, 200), timeout=120, what="ready once the caches sync")
    ready = "[+]informers ok\n[+]credentials ok\nreadyz check passed\n"
    assert await http_get(f"{readyz}?verbose") == (200, ready)
    assert await http_get(f"{readyz}/informers") == (200, "ok")
    assert (await http_get(f"{readyz}/nothing"))[0] == 404
    assert await http_get(healthz) == (200, "ok")


# -- graceful shutdown ------------------------------------------------------------------


async def test_sigterm_during_a_burst_loses_no_update(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operators: Spawn,
) -> None:
    count = 50
    names = [f"burst-{i}" for i in range(count)]
    flags = (f"--namespaces={namespace}", "--shutdown-timeout=20s")
    first = operators(control_plane.kubeconfig, *flags)
    await first.logged("starting workers")
    for i, name in enumerate(names):
        await create_route(kube, staticroute(name, namespace, staticModels=models(i, 0)))
    await wait_for(
        lambda: configmaps_match(kube, namespace, names), timeout=120, what="all ConfigMaps"
    )

    async def patch_all(revision: int) -> None:
        await asyncio.gather(
            *(
                kube.merge_patch(
                    STATICROUTES.path(namespace, name),
                    {"spec": {"staticModels": models(i, revision)}},
                )
                for i, name in enumerate(names)
            )
        )

    async def first_updated() -> bool:
        cm = await try_get_cm(kube, namespace, default_config_map_name(names[0]))
        return cm is not None and config_of(cm)["static_models"] == models(0, 1)

    await patch_all(1)
    await wait_for(first_updated, what="the operator busy with the burst")
    first.signal(signal.SIGTERM)
    await patch_all(2)  # more updates arrive while it shuts down
    assert await first.exit_code(timeout=60) == 0
    stopping = first.find("shutting down")
    assert stopping is not None
    print(f"keys queued at SIGTERM: {stopping['queued']}")
    assert_clean_exit_log(first)

    second = operators(control_plane.kubeconfig, *flags)
    await wait_for(
        lambda: configmaps_match(kube, namespace, names),
        timeout=120,
        what="every ConfigMap at its StaticRoute's latest spec",
    )
    second.signal(signal.SIGTERM)
    assert await second.exit_code(timeout=60) == 0
    assert_clean_exit_log(second)


async def test_a_replica_that_cannot_reach_the_api_still_stops_cleanly(
    operators: Spawn, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "nowhere"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    process = operators(kubeconfig, "--leader-elect", "--leader-election-namespace=x")
    await process.serving()
    assert process.running  # it waits for the API, serving its probes meanwhile
    assert await answers(await process.probe_url("/healthz"), 200)
    process.signal(signal.SIGTERM)
    assert await process.exit_code(timeout=60) == 0
    assert_clean_exit_log(process)
