"""probehttp: one bounded GET against real servers on 127.0.0.1 that answer canned bytes.

Each server here writes exactly the bytes a test gives it (after reading the request
head), so every way an answer can be framed, cut short or be too big is tried on a
real socket: the parser and the transport are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router_controller.probehttp import (
    MAX_HEAD,
    Answer,
    ConnectFailed,
    ExchangeFailed,
    Target,
    get,
    request,
)
from router_controller_dev.pki import serving_cert

LIMIT = 1024
JSON = b'{"status": "healthy"}'


class Canned:
    """A server that answers every connection with ``answer``, then closes (or not)."""

    def __init__(self, answer: bytes, *, close: bool = True, chunks: int = 1) -> None:
        self.answer = answer
        self.close = close
        self.chunks = chunks
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        step = max(1, len(self.answer) // self.chunks)
        for i in range(0, len(self.answer), step):
            writer.write(self.answer[i : i + step])
            await writer.drain()
        if self.close:
            writer.close()
        else:
            await reader.read()  # hold the connection until the client goes
            writer.close()


@contextlib.asynccontextmanager
async def serving(canned: Canned, tls: ssl.SSLContext | None = None) -> AsyncIterator[Target]:
    server = await asyncio.start_server(canned.handle, "127.0.0.1", 0, ssl=tls)
    canned.port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    try:
        yield Target.parse(f"{scheme}://127.0.0.1:{canned.port}")
    finally:
        server.close()
        await server.wait_closed()


async def probe(target: Target, timeout: float = 5.0) -> Answer:
    body = request(target, "/health", (("Accept-Encoding", "identity"),))
    return await get(target, body, timeout=timeout, limit=LIMIT)


def response(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


def test_the_request_is_a_plain_get_that_asks_to_close() -> None:
    target = Target.parse("http://[fd00::1]:8000")
    assert (target.host, target.port, target.tls) == ("fd00::1", 8000, False)
    assert request(target, "/health", (("User-Agent", "x"),)) == (
        b"GET /health HTTP/1.1\r\nHost: [fd00::1]:8000\r\nUser-Agent: x\r\n"
        b"Connection: close\r\n\r\n"
    )
    with pytest.raises(ValueError, match="line break"):
        request(target, "/health", (("X", "a\r\nInjected: yes"),))
    with pytest.raises(ValueError, match="not an http"):
        Target.parse("10.0.0.1:8000")


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (response(f"HTTP/1.1 200 OK\ncontent-length: {len(JSON)}\n", JSON), 200, JSON),
        (
            response(
                "HTTP/1.1 200 OK\ntransfer-encoding: chunked\n",
                b"5\r\n"
                + JSON[:5]
                + b"\r\n"
                + b"%x\r\n" % (len(JSON) - 5)
                + JSON[5:]
                + b"\r\n0\r\n\r\n",
            ),
            200,
            JSON,
        ),
        (response("HTTP/1.1 200 OK\n", JSON), 200, JSON),  # no length: ended by the close
        (
            response("HTTP/1.1 103 Early Hints\nlink: </a>\n")
            + response(f"HTTP/1.1 503 Service Unavailable\ncontent-length: {len(JSON)}\n", JSON),
            503,
            JSON,
        ),
        (response("HTTP/1.1 204 No Content\n"), 204, b""),
    ],
    ids=["content-length", "chunked", "until-close", "1xx-first", "no-body"],
)
async def test_every_framing_of_an_answer_is_read(answer: bytes, status: int, body: bytes) -> None:
    canned = Canned(answer, chunks=3)
    async with serving(canned) as target:
        got = await probe(target)
    assert (got.status, got.body, got.too_long) == (status, body, False)
    assert canned.requests[0].startswith(b"GET /health HTTP/1.1\r\n")


async def test_the_reason_phrase_is_kept() -> None:
    async with serving(Canned(response("HTTP/1.1 500 Broken Router\ncontent-length: 0\n"))) as t:
        got = await probe(t)
    assert (got.status, got.reason) == (500, "Broken Router")


@pytest.mark.parametrize(
    "answer",
    [
        response(f"HTTP/1.1 200 OK\ncontent-length: {LIMIT + 1}\n", b"x" * 10),  # declared
        response("HTTP/1.1 200 OK\n", b"x" * (LIMIT * 50)),  # found while reading
        response(
            "HTTP/1.1 200 OK\ntransfer-encoding: chunked\n",
            b"%x\r\n" % (LIMIT * 50) + b"x" * (LIMIT * 50) + b"\r\n0\r\n\r\n",
        ),
    ],
    ids=["declared", "until-close", "chunked"],
)
async def test_a_body_over_the_limit_ends_the_exchange(answer: bytes) -> None:
    async with serving(Canned(answer, close=False, chunks=10)) as target:
        got = await probe(target)
    assert got.too_long
    assert len(got.body) <= LIMIT


async def test_a_head_over_its_limit_is_refused() -> None:
    head = "HTTP/1.1 200 OK\n" + "".join(f"x-filler-{i}: {'y' * 100}\n" for i in range(200))
    assert len(head) > MAX_HEAD
    async with serving(Canned(response(head), close=False, chunks=50)) as target:
        with pytest.raises(ExchangeFailed, match="head is over 16 KiB"):
            await probe(target)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "closed before the end of the answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-len", "closed before the end of the answer"),
        (response("HTTP/1.1 200 OK\ncontent-length: 100\n", b"short"), "closed before the end"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP/1.1 answer"),
        (response("HTTP/1.1 200 OK\ncontent-length: twelve\n"), "not an HTTP/1.1 answer"),
    ],
    ids=["nothing", "half-a-head", "short-body", "not-http", "bad-length"],
)
async def test_a_broken_answer_is_a_failed_exchange(answer: bytes, message: str) -> None:
    async with serving(Canned(answer)) as target:
        with pytest.raises(ExchangeFailed, match=message):
            await probe(target)


async def test_a_server_that_never_answers_times_out() -> None:
    canned = Canned(b"", close=False)
    async with serving(canned) as target:
        with pytest.raises(TimeoutError):
            await probe(target, timeout=0.2)
    assert len(canned.requests) == 1


async def test_a_refused_connection_says_why() -> None:
    async with serving(Canned(b"")) as target:
        pass  # closed: nothing listens on its port any more
    with pytest.raises(ConnectFailed) as caught:
        await probe(target)
    assert caught.value.os_error.errno is not None


async def test_an_https_target_is_not_verified(tmp_path: Path) -> None:
    cert = serving_cert(tmp_path, name="router", ca_name="ca", common_name="router")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert.cert, cert.key)
    body = response(f"HTTP/1.1 200 OK\ncontent-length: {len(JSON)}\n", JSON)
    async with serving(Canned(body), tls) as target:
        got = await probe(target)
    assert target.tls
    assert (got.status, got.body) == (200, JSON)
