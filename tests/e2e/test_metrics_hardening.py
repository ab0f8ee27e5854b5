"""The metrics port under attack: idle sockets and made-up tokens while Prometheus scrapes.

Anyone who can reach the HTTPS metrics port can open connections and send bearer
tokens. This test does both at once, against the operator as a process (leader-elected,
as a ServiceAccount holding exactly the roles of config/rbac), while the real Prometheus
scrapes it with a ``metrics-reader`` token:

- 1,000 TCP connections that never start their TLS handshake, held open;
- 2,000 HTTPS requests, each with a random bearer token.

What must hold: the operator's resident memory stays under the Deployment's memory
limit (read from config/manager/manager.yaml), the server closes the idle connections
itself, the TokenReviews the operator makes stay within its rate limit (counted by the
API server's own ``apiserver_request_total``), every Prometheus scrape succeeds, and the
Lease is held and renewed throughout. The plane is the test's own, so every TokenReview
it counts is the operator's.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import resource
import secrets
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router_controller.kube import LEASES, Kube
from router_controller.metricsauth import UNKNOWN_TOKEN_BURST, UNKNOWN_TOKEN_RATE
from router_controller.server import TLS_HANDSHAKE_TIMEOUT
from router_controller_dev import envtest, procstat
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.processes import OperatorProcess
from tests.e2e.processes import (
    PROMETHEUS,
    SHUTDOWN_LEAKS,
    Background,
    Grants,
    operator_account,
    start_prometheus,
)
from tests.e2e.support import REPO, admin_kube, operator_command, wait_for

IDLE_CONNECTIONS = 1000
BOGUS_REQUESTS = 2000
CONCURRENCY = 50
JOB = "router-controller"
SCRAPE_INTERVAL = 2  # seconds, also the scrape timeout: a busy 2-core machine still makes it
# Reviews that are not the bogus tokens': Prometheus's token (once a minute) and slack.
OTHER_REVIEWS = 5


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    with envtest.running(crds=True) as fresh:
        yield fresh


@pytest.fixture
async def kube(plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(plane) as client:
        yield client


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for 1,000 sockets in this process and the operator (which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * IDLE_CONNECTIONS if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if wanted < 2 * IDLE_CONNECTIONS + CONCURRENCY:
        pytest.skip(
            f"needs {2 * IDLE_CONNECTIONS + CONCURRENCY} file descriptors, hard limit {hard}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def memory_limit() -> int:
    """The manager container's memory limit in bytes, from config/manager/manager.yaml."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for doc in yaml.safe_load_all((REPO / "config/manager/manager.yaml").read_text()):
        if doc and doc.get("kind") == "Deployment":
            (container,) = [
                c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "manager"
            ]
            limit = str(container["resources"]["limits"]["memory"])
            return int(limit[:-2]) * units[limit[-2:]]
    raise AssertionError("no Deployment in config/manager/manager.yaml")


def rss(pid: int) -> int:
    return procstat.memory_bytes(pid)["VmRSS"]


def token_reviews(plane: ControlPlane) -> int:
    """TokenReviews the API server has answered, from its own request counter."""
    total = 0.0
    for line in plane.get("/metrics").decode().splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="tokenreviews"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def lease(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict((await kube.get(LEASES.path(namespace, name)))["spec"])


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_idle(port: int, count: int) -> list[Stream]:
    """TCP connections that never send a byte (no TLS ClientHello)."""
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def closed_by_server(stream: Stream, *, timeout: float) -> bool:
    reader, writer = stream
    try:
        async with asyncio.timeout(timeout):
            await reader.read()
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    finally:
        writer.close()
    return True


async def bogus_requests(url: str, count: int) -> Counter[str]:
    """``count`` GETs, each with a new random token; outcome counts by status."""
    outcomes: Counter[str] = Counter()
    slots = asyncio.Semaphore(CONCURRENCY)  # the timeout below starts once a slot is free
    connector = aiohttp.TCPConnector(ssl=False, limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            headers = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
            try:
                async with slots, session.get(url, headers=headers) as response:
                    await response.read()
                    outcomes[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
                outcomes[f"error {type(err).__name__}"] += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return outcomes


@pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary on PATH (Debian package: prometheus)"
)
async def test_strangers_on_the_metrics_port_cannot_hurt_the_operator(
    plane: ControlPlane,
    kube: Kube,
    background: Background,
    descriptors: None,
    tmp_path: Path,
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    plane.kubectl("create", "namespace", namespace)
    grants = Grants(plane)
    process: OperatorProcess | None = None
    try:
        kubeconfig = operator_account(
            grants, namespace, tmp_path / "kubeconfig", "manager-role", "metrics-auth-role"
        )
        grants.service_account(namespace, "reader")
        grants.bind_cluster_role(namespace, "reader", "metrics-reader")
        lease_name = f"lease-{uuid.uuid4().hex[:8]}"
        process = OperatorProcess(
            operator_command(
                kubeconfig,
                "--leader-elect",
                f"--leader-election-namespace={namespace}",
                f"--leader-election-id={lease_name}",
                f"--namespaces={namespace}",
                "--metrics-bind-address=127.0.0.1:0",
            ),
            tmp_path / "operator.log",
        ).start()
        assert process.proc is not None
        pid = process.proc.pid
        identity = await process.identity()

        async def leading() -> dict[str, Any] | None:
            spec = await lease(kube, namespace, lease_name)
            return spec if spec.get("holderIdentity") == identity else None

        before_lease = await wait_for(leading, timeout=60, what="leadership")
        port = int((await process.serving())["metrics_port"])
        url = await process.metrics_url()
        prometheus = await start_prometheus(
            background,
            tmp_path,
            job=JOB,
            target=f"127.0.0.1:{port}",
            token=plane.token_for("reader", namespace),
            interval=f"{SCRAPE_INTERVAL}s",
        )

        async def scraped() -> bool:
            found = await prometheus.query(f'up{{job="{JOB}"}}')
            return bool(found) and found[0]["value"][1] == "1"

        await wait_for(scraped, timeout=60, what="a first successful scrape")
        limit = memory_limit()
        baseline = rss(pid)
        reviews_before = token_reviews(plane)
        started = time.monotonic()

        peak = baseline
        lost: list[str] = []

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss(pid))
                if not process.running or process.find("lost leadership"):
                    lost.append("the operator stopped or lost its lease")
                await asyncio.sleep(0.1)  # sampling memory, not synchronising

        watcher = asyncio.create_task(watch())
        try:
            idle = await open_idle(port, IDLE_CONNECTIONS)
            outcomes = await bogus_requests(url, BOGUS_REQUESTS)
            # Closed by the server within its handshake timeout (asyncio's default is 60 s).
            closed = await asyncio.gather(
                *(closed_by_server(s, timeout=TLS_HANDSHAKE_TIMEOUT + 15) for s in idle)
            )
        finally:
            watcher.cancel()
        elapsed = time.monotonic() - started
        reviews = token_reviews(plane) - reviews_before
        print(
            f"RSS {baseline / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB "
            f"(limit {limit / 2**20:.0f} MiB); answers {dict(outcomes)}; "
            f"{reviews} TokenReviews in {elapsed:.1f}s; "
            f"{closed.count(False)} idle connections left open"
        )

        assert peak < limit, f"peak RSS {peak} over the Deployment's limit {limit}"
        assert closed.count(False) == 0, "idle connections the server did not close"
        assert outcomes["200"] == 0, outcomes
        assert outcomes["401"] + outcomes["429"] >= BOGUS_REQUESTS * 0.9, outcomes
        bound = UNKNOWN_TOKEN_BURST + UNKNOWN_TOKEN_RATE * elapsed + OTHER_REVIEWS
        assert reviews <= bound, f"{reviews} TokenReviews in {elapsed:.1f}s, bound {bound:.0f}"

        # Prometheus: every scrape over the attack succeeded, and there were some.
        window = f"{math.ceil(elapsed) + 2}s"
        worst = await prometheus.query(f'min_over_time(up{{job="{JOB}"}}[{window}])')
        count = await prometheus.query(f'count_over_time(up{{job="{JOB}"}}[{window}])')
        assert [s["value"][1] for s in worst] == ["1"], worst
        assert float(count[0]["value"][1]) >= elapsed / (2 * SCRAPE_INTERVAL), count

        # The Lease: never lost, still held and still being renewed.
        assert not lost, lost
        after = await lease(kube, namespace, lease_name)
        assert after["holderIdentity"] == identity
        assert after["leaseTransitions"] == before_lease["leaseTransitions"]

        async def renewed() -> bool:
            spec = await lease(kube, namespace, lease_name)
            return bool(spec["renewTime"] > after["renewTime"])

        await wait_for(renewed, timeout=30, what="a renewal after the attack")
        assert process.find("lost leadership") is None
        assert _parse(after["renewTime"]) > _parse(before_lease["renewTime"])

        # And it still stops cleanly, with connections from strangers around.
        stragglers = await open_idle(port, 10)
        process.signal(signal.SIGTERM)
        assert await process.exit_code(timeout=60) == 0
        for leak in SHUTDOWN_LEAKS:
            assert leak not in process.output, f"{leak!r} in the operator's output"
        for _, writer in stragglers:
            writer.close()
    finally:
        if process is not None:
            process.kill()
        grants.undo()
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _parse(micro_time: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(micro_time.replace("Z", "+00:00"))
