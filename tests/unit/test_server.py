"""/healthz and /readyz as controller-runtime answers them, /metrics over plain HTTP, and
the metrics port's defences: the connection cap, the TLS handshake timeout, request limits.

The listeners are real aiohttp servers on loopback ports and the clients real sockets; no
API server is involved (the secure, authenticated /metrics is tested against the real one
in tests/e2e/test_operations.py and tests/e2e/test_metrics_hardening.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from router_controller.metrics import Metrics
from router_controller.server import (
    MAX_CONNECTIONS,
    MAX_FIELD_BYTES,
    MAX_HEADERS,
    Checks,
    ConnectionGate,
    Servers,
    listening_socket,
    self_signed,
)
from router_controller.settings import Serving
from tests.e2e.support import wait_for


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


# -- the metrics port's connection gate and request limits ------------------------------


class Echo(asyncio.Protocol):
    """Stands in for aiohttp's protocol: answers every chunk with ``ok``."""

    made: list[Echo] = []  # connections made, in order; the gate fixture empties it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        Echo.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"ok")


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, key = self_signed(tmp_path)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def gate(tls: ssl.SSLContext) -> AsyncIterator[tuple[ConnectionGate, Metrics]]:
    metrics = Metrics(process=False)
    Echo.made.clear()
    opened = ConnectionGate(
        listener=listening_socket("127.0.0.1", 0),
        factory=Echo,
        tls=tls,
        metrics=metrics,
        limit=3,
        handshake_timeout=0.5,
    )
    opened.start()
    try:
        yield opened, metrics
    finally:
        await opened.close()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def idle(port: int) -> Stream:
    """A TCP connection that never says anything (no TLS ClientHello)."""
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(stream: Stream) -> bool:
    """Wait until the server closes (EOF or reset); True when it did."""
    reader, writer = stream
    try:
        async with asyncio.timeout(20):
            await reader.read()
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    finally:
        writer.close()
    return True


async def speak_tls(port: int) -> Stream:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return await asyncio.open_connection("127.0.0.1", port, ssl=client)


def rejected(metrics: Metrics, reason: str) -> float:
    name = "router_controller_metrics_connections_rejected_total"
    return metrics.registry.get_sample_value(name, {"reason": reason}) or 0.0


async def test_a_connection_that_never_handshakes_is_closed(
    gate: tuple[ConnectionGate, Metrics],
) -> None:
    opened, metrics = gate
    assert await closed_by_server(await idle(opened.port))
    assert rejected(metrics, "handshake") == 1


async def test_a_client_that_does_not_speak_tls_is_closed(
    gate: tuple[ConnectionGate, Metrics],
) -> None:
    opened, metrics = gate
    reader, writer = await idle(opened.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: plain\r\n\r\n")
    assert await closed_by_server((reader, writer))
    assert rejected(metrics, "handshake") == 1
    assert Echo.made == []


async def test_when_full_the_oldest_handshake_makes_room(
    gate: tuple[ConnectionGate, Metrics],
) -> None:
    opened, metrics = gate
    streams = [await idle(opened.port) for _ in range(3)]
    await wait_for(lambda: opened.open == 3, what="three pending connections")
    reader, writer = await speak_tls(opened.port)  # the fourth: the oldest idle one goes
    writer.write(b"hello")
    assert await reader.readexactly(2) == b"ok"
    assert await closed_by_server(streams[0])
    assert opened.open == 3
    assert rejected(metrics, "evicted") == 1
    writer.close()
    for _, other in streams[1:]:
        other.close()


async def established(port: int, count: int) -> list[Stream]:
    clients = [await speak_tls(port) for _ in range(count)]
    for reader, writer in clients:
        writer.write(b"hello")
        assert await reader.readexactly(2) == b"ok"
    return clients


async def test_when_full_the_oldest_unserved_connection_makes_room(
    gate: tuple[ConnectionGate, Metrics],
) -> None:
    opened, metrics = gate
    clients = await established(opened.port, 3)
    newcomer = await idle(opened.port)
    assert await closed_by_server(clients[0])
    assert rejected(metrics, "evicted") == 1
    newcomer[1].close()
    for _, writer in clients[1:]:
        writer.close()


async def test_when_every_slot_is_trusted_a_newcomer_is_refused(
    gate: tuple[ConnectionGate, Metrics],
) -> None:
    opened, metrics = gate
    clients = await established(opened.port, 3)
    for echo in Echo.made:  # what a 200 does (see Servers._serve_metrics)
        opened.trust(echo.transport)
    assert await closed_by_server(await idle(opened.port))
    assert rejected(metrics, "limit") == 1
    assert rejected(metrics, "evicted") == 0
    for reader, writer in clients:  # the trusted ones are still served
        writer.write(b"hello")
        assert await reader.readexactly(2) == b"ok"
        writer.close()


async def test_metrics_requests_are_small_bodiless_gets(served: tuple[Servers, Switch]) -> None:
    servers, _ = served
    url = f"http://127.0.0.1:{servers.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"X-Big": "x" * (MAX_FIELD_BYTES + 1)}) as response:
            assert response.status in (400, 431)
        many = {f"X-{i}": "1" for i in range(MAX_HEADERS + 1)}
        async with session.get(url, headers=many) as response:
            assert response.status in (400, 431)
        async with session.get(url, data=b"body") as response:
            assert response.status == 413
            assert response.headers.get("Connection", "").lower() == "close"
        async with session.post(url) as response:
            assert response.status == 405
        async with session.get(url) as response:
            assert response.status == 200


async def test_a_served_keep_alive_connection_survives_a_flood_of_idle_ones(
    served: tuple[Servers, Switch],
) -> None:
    servers, _ = served
    assert servers.metrics_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", servers.metrics_port)

    async def scrape() -> int:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return int(head.split()[1])

    assert await scrape() == 200
    flood = [await idle(servers.metrics_port) for _ in range(2 * MAX_CONNECTIONS)]
    await wait_for(lambda: servers.metrics_connections <= MAX_CONNECTIONS, what="the cap to hold")
    assert await closed_by_server(flood[0])
    assert await scrape() == 200  # the same connection, kept alive through the flood
    writer.close()
    for _, other in flood:
        other.close()
