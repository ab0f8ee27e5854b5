"""Routers that misbehave on purpose, for the operator's probing defences and ``make bench``.

:class:`~router_controller_dev.fakerouter.FakeRouter` stands for a real router and
answers like one. These stand for what a tenant can put behind a Service instead: a server that
accepts the connection and never answers, one that answers a byte at a time, one
whose ``/health`` body is tens of MiB, one whose answer is JSON with a ``status``
of any length. They are plain asyncio TCP servers that write their HTTP answer by
hand, so nothing in an HTTP library trims or rejects what they send.

Each listens on this machine's own address (as
:func:`~router_controller_dev.fakerouter.host_address` finds it) unless given
another, counts connections, and is exposed as a Service by :func:`expose_at` (a
Service plus one EndpointSlice per server, as the fake router's ``expose`` does).
Every server stops when its ``async with`` block ends and closes what it still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube, Object
from router_controller_dev.fakerouter import endpointslice, host_address, service
from router_controller_dev.procstat import MIB


class HostileRouter:
    """A TCP server that answers ``GET /health`` with whatever :meth:`answer` writes."""

    def __init__(self, *, host: str | None = None) -> None:
        self.host = host or host_address()
        self.port = 0
        self.connections = 0  # accepted so far
        self.open = 0  # connected right now
        self.answers = 0  # answers written to the end (or until the client left)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HostileRouter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> int:
        """Listen on a free port; the port."""
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and let go of every connection still held."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        self.open += 1
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await reader.readuntil(b"\r\n\r\n")  # the request head
            await self.answer(reader, writer)
            self.answers += 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self._handlers.discard(task)
            writer.close()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class HungRouter(HostileRouter):
    """Accepts, reads the request, never answers; lets go when the client hangs up."""

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        raise ConnectionError("the client went away")  # never counted as an answer


class BodyRouter(HostileRouter):
    """Answers 200 with ``body`` (and its Content-Length), all at once or a byte at a time."""

    def __init__(self, body: bytes, *, drip: float | None = None, host: str | None = None) -> None:
        super().__init__(host=host)
        self.body = body
        self.drip = drip  # seconds between two bytes; None: write it all at once

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        if self.drip is None:
            writer.write(head + self.body)
            await writer.drain()
            return
        for i in range(len(head + self.body)):
            writer.write((head + self.body)[i : i + 1])
            await writer.drain()
            await asyncio.sleep(self.drip)


def long_status(characters: int) -> BodyRouter:
    """A router whose ``/health`` is JSON with a ``status`` of ``characters`` characters."""
    return BodyRouter(json.dumps({"status": "x" * characters}).encode())


class HugeRouter(HostileRouter):
    """Answers 200 with a ``size``-byte JSON body that says healthy, streamed fast.

    ``length`` says whether the head carries a Content-Length; without one the body
    runs until the connection closes, so only a reader that stops by itself is safe.
    """

    CHUNK = 64 * 1024

    def __init__(
        self, size: int = 50 * MIB, *, length: bool = False, host: str | None = None
    ) -> None:
        super().__init__(host=host)
        self.size = size
        self.length = length
        self.sent = 0  # body bytes written, over all connections

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start, end = b'{"status": "healthy", "padding": "', b'"}'
        fill = self.size - len(start) - len(end)
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        if self.length:
            head += f"Content-Length: {self.size}\r\n"
        writer.write(f"{head}\r\n".encode() + start)
        chunk = b"x" * self.CHUNK
        while fill > 0:
            part = chunk[: min(fill, self.CHUNK)]
            writer.write(part)
            await writer.drain()
            fill -= len(part)
            self.sent += len(part)
        writer.write(end)
        await writer.drain()


async def expose_at(
    kube: Kube,
    namespace: str,
    name: str,
    endpoints: list[tuple[str, int]],
    *,
    concurrency: int = 16,
) -> Object:
    """A selector-less Service ``name`` with one EndpointSlice per (host, port).

    Like :func:`~router_controller_dev.fakerouter.expose`, for any server (or none: a port nothing
    listens on); the slices are created first, ``concurrency`` at a time.
    """
    limit = asyncio.Semaphore(concurrency)

    async def create(index: int, host: str, port: int) -> None:
        async with limit:
            body = endpointslice(namespace, name, index, host, port)
            await kube.create(ENDPOINTSLICES.path(namespace), body)

    async with asyncio.TaskGroup() as group:
        for index, (host, port) in enumerate(endpoints):
            group.create_task(create(index, host, port))
    target = endpoints[0][1] if endpoints else 8000
    return await kube.create(SERVICES.path(namespace), service(namespace, name, target))
