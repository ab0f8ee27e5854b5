"""One HTTP/1.1 ``GET`` per router probe: the event loop's own transport, parsed by llhttp.

Every other request of the operator goes through aiohttp; router probes do not,
because of what they cost at scale. 10,000 router endpoints probed every 10 s are
1,000 probes a second, each on a connection of its own (see
:mod:`router_controller.health` for why no keep-alive), and aiohttp's client spent
most of a probe's CPU on what a probe does not need: its connection pool, a
happy-eyeballs connect, URL, header and cookie objects, the response stream and its
timers. Probing alone kept the operator at 75-80 % of a core, so anything else it
did (a burst of status writes, a scrape) made probes late. A probe needs one
connection to one IP address, one fixed request and a bounded answer, so this
module opens the connection with ``loop.create_connection``, writes the request
line and four headers, and feeds what arrives to httptools' binding of llhttp,
Node.js's HTTP parser (the parser under uvicorn, and aiohttp's own): the framing of
HTTP/1.1 (status line, headers, ``Content-Length``, chunked encoding) is llhttp's,
not written here. The one rule added here is the end of an answer that has neither
a length nor chunks: the server closing the connection ends it (RFC 9112, 6.3),
which llhttp leaves to its caller. h11 was measured too: correct, but its pure-Python
state machine cost a fifth of a probe.

What is bounded: the head of the answer (:data:`MAX_HEAD` bytes), the body (the
caller's ``limit``; a declared or actual length beyond it ends the exchange with
:attr:`Answer.too_long`, and nothing more is read) and the whole exchange
(``timeout``, connect included). Nothing is decompressed (the request asks for
``identity``), redirects are not followed, and an ``https`` target is not verified,
as the kubelet's HTTPS probes are not.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

MAX_HEAD = 16 * 1024  # status line and headers of an answer
_INSECURE = ssl.create_default_context()
_INSECURE.check_hostname = False
_INSECURE.verify_mode = ssl.CERT_NONE


class ConnectFailed(Exception):
    """No connection could be made; ``os_error`` says why."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ExchangeFailed(Exception):
    """Connected, but no complete answer came: the server closed early or broke HTTP."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a probe goes: an IP address and port, over TLS or not."""

    host: str  # the IP address as the socket takes it (no brackets)
    port: int
    tls: bool
    authority: str  # the Host header: "10.0.0.1:8000", "[fd00::1]:8000"

    @classmethod
    def parse(cls, address: str) -> Target:
        """``http://10.0.0.1:8000`` or ``https://[fd00::1]:443`` as a target."""
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"not an http(s)://host:port address: {address!r}")
        return cls(parts.hostname, parts.port, parts.scheme == "https", parts.netloc)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a server answered: status, reason, and the body up to the limit."""

    status: int
    reason: str
    body: bytes
    too_long: bool = False  # the body is longer than the limit; ``body`` is partial


def request(target: Target, path: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The bytes of ``GET path`` to ``target``, asking the server to close afterwards."""
    fields = [("Host", target.authority), *headers, ("Connection", "close")]
    if any(c in text for text in (path, *(f + v for f, v in fields)) for c in "\r\n"):
        raise ValueError("a request's path or header holds a line break")
    lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in fields), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def get(target: Target, request: bytes, *, timeout: float, limit: int) -> Answer:
    """Send ``request`` (see :func:`request`) on a new connection, closed after the answer.

    Raises :class:`ConnectFailed`, :class:`ExchangeFailed` or :class:`TimeoutError`.
    """
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                transport, exchange = await loop.create_connection(
                    lambda: _Exchange(request, limit, loop.create_future()),
                    target.host,
                    target.port,
                    ssl=_INSECURE if target.tls else None,
                )
            except OSError as err:
                raise ConnectFailed(err) from err
            answer = await exchange.answered
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
    transport.close()
    return answer


class _Exchange(asyncio.Protocol):
    """Writes the request once connected; resolves ``answered`` when the answer is in.

    It is also the parser's callback object (``on_status``, ``on_header``, ...).
    """

    def __init__(self, request: bytes, limit: int, answered: asyncio.Future[Answer]) -> None:
        self.answered = answered
        self._request = request
        self._limit = limit
        self._parser = httptools.HttpResponseParser(self)
        # The head's size, counted twice: by what arrived while it was incomplete (a
        # head that never ends) and by the headers read (a long head that came at once).
        self._head = 0
        self._header_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._reason = b""
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the parser sees the end
        self._chunks: list[bytes] = []
        self._size = 0

    # -- the transport's callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            return
        if not self._headers_done:
            self._head += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(f"not an HTTP/1.1 answer: {err}")
            return
        if not self._headers_done and self._head > MAX_HEAD:
            self._fail(f"an answer whose head is over {MAX_HEAD // 1024} KiB")

    def eof_received(self) -> bool:
        if not self.answered.done():
            if self._headers_done and not self._framed:
                self._finish(too_long=False)  # no length, no chunks: the close ends the body
            else:
                self._fail("connection closed before the end of the answer")
        return False  # and close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            why = f": {exc}" if exc is not None else ""
            self._fail(f"connection closed before the end of the answer{why}")

    # -- the parser's callbacks --------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEAD:
            self._fail(f"an answer whose head is over {MAX_HEAD // 1024} KiB")
        name = name.lower()
        if name == b"content-length":
            self._framed = True
            if value.strip().isdigit() and int(value) > self._limit:
                self._finish(too_long=True)  # (llhttp refuses a length that is no number)
        elif name == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.answered.done():
            return
        self._size += len(body)
        if self._size > self._limit:
            self._finish(too_long=True)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self.answered.done():
            return
        if self._parser.get_status_code() < 200:  # 1xx: the final answer follows
            self._reset()
            return
        self._finish(too_long=False)

    def _finish(self, *, too_long: bool) -> None:
        if not self.answered.done():
            answer = Answer(
                self._parser.get_status_code(),
                self._reason.decode("latin-1"),
                b"".join(self._chunks),
                too_long,
            )
            self.answered.set_result(answer)

    def _fail(self, why: str) -> None:
        if not self.answered.done():
            self.answered.set_exception(ExchangeFailed(why))
