"""/healthz and /readyz as controller-runtime answers them, and /metrics over plain HTTP.

The listeners are real aiohttp servers on loopback ports; no API server is involved
(the secure, authenticated /metrics is tested against the real one in
tests/e2e/test_operations.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from router_controller.metrics import Metrics
from router_controller.server import Checks, Servers
from router_controller.settings import Serving


class Switch:
    def __init__(self) -> None:
        self.on = False

    def __call__(self) -> bool:
        return self.on


@pytest.fixture
async def served() -> AsyncIterator[tuple[Servers, Switch]]:
    synced = Switch()
    servers = Servers(
        settings=Serving(
            metrics_bind_address="127.0.0.1:0",
            metrics_secure=False,
            health_probe_bind_address="127.0.0.1:0",
        ),
        metrics=Metrics(process=False),
        checks=Checks(health={"ping": lambda: True}, ready={"informers": synced, "ping": bool}),
        kube=None,
    )
    await servers.start()
    try:
        yield servers, synced
    finally:
        await servers.stop()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_probes_answer_ok_or_503_with_the_failing_check(
    served: tuple[Servers, Switch],
) -> None:
    servers, synced = served
    base = f"http://127.0.0.1:{servers.probe_port}"
    assert await get(f"{base}/healthz") == (200, "ok")
    # A failing probe is always verbose; bool() is False: "ping" fails too here.
    assert await get(f"{base}/readyz") == (
        503,
        "[-]informers failed: reason withheld\n[-]ping failed: reason withheld\n"
        "readyz check failed\n",
    )
    synced.on = True
    assert await get(f"{base}/readyz?exclude=ping") == (200, "ok")
    assert await get(f"{base}/readyz/informers") == (200, "ok")
    assert await get(f"{base}/readyz/informers?verbose") == (
        200,
        "[+]informers ok\nreadyz check passed\n",
    )
    assert await get(f"{base}/readyz?verbose&exclude=ping") == (
        200,
        "[+]informers ok\n[+]ping excluded: ok\nreadyz check passed\n",
    )
    assert await get(f"{base}/healthz?verbose") == (200, "[+]ping ok\nhealthz check passed\n")
    assert (await get(f"{base}/healthz/nothing"))[0] == 404


async def test_plain_metrics_need_no_token(served: tuple[Servers, Switch]) -> None:
    servers, _ = served
    status, text = await get(f"http://127.0.0.1:{servers.metrics_port}/metrics")
    assert status == 200
    assert "# TYPE controller_runtime_reconcile_total counter" in text
    assert "# TYPE workqueue_adds_total counter" in text
    assert "_created" not in text  # Go clients export no creation-time series


async def test_address_0_turns_an_endpoint_off() -> None:
    servers = Servers(
        settings=Serving(metrics_bind_address="0", health_probe_bind_address="0"),
        metrics=Metrics(process=False),
        checks=Checks(health={}, ready={}),
        kube=None,
    )
    await servers.start()
    await servers.stop()
    assert (servers.metrics_port, servers.probe_port) == (None, None)
