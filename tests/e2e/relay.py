"""An HTTP relay between the operator and the real API server that can spoil chosen answers.

The operator talks plain HTTP to the relay (a kubeconfig pointing at it); the relay
forwards each request over TLS to the API server, one request per connection, and
relays the answer. A :class:`Fault` armed on the relay replaces or spoils the answer
to the next requests it matches: a line that is no watch event injected at the head
of a real watch stream, a watch that ends at once with an empty 200, or an error
Status in place of a page of a list. Everything else is the API server's own.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from router_controller_dev import envtest


@dataclass
class Request:
    """One request as the relay saw it."""

    at: float
    method: str
    path: str
    query: dict[str, str]
    fault: str | None = None  # the fault that answered it, if any

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("1", "true")


@dataclass
class Fault:
    """Spoil the answers to the next ``times`` requests that ``matches`` accepts.

    ``kind``: ``inject`` (relay the real answer with ``line`` as its first line),
    ``empty`` (answer 200 with no body at all), or ``status`` (answer ``status``
    with a Status object of ``reason``, not asking the API server).
    """

    kind: str
    matches: Callable[[Request], bool]
    line: bytes = b""
    status: int = 0
    reason: str = ""
    times: int = 1
    used: list[Request] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.used) >= self.times


class Relay:
    """Listens on loopback; relays to the API server at ``upstream_port``."""

    def __init__(self, upstream_port: int, ca_file: Path) -> None:
        self._upstream_port = upstream_port
        self._tls = ssl.create_default_context(cafile=str(ca_file))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.port = 0

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def kubeconfig(self, path: Path, plane: envtest.ControlPlane) -> Path:
        return plane.write_kubeconfig(
            path, token=plane.admin_token, server=f"http://127.0.0.1:{self.port}"
        )

    def arm(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    @property
    def armed(self) -> bool:
        return any(not f.done for f in self.faults)

    def _fault_for(self, request: Request) -> Fault | None:
        for fault in self.faults:
            if not fault.done and fault.matches(request):
                fault.used.append(request)
                request.fault = fault.kind
                return fault
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *headers = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        request = Request(time.monotonic(), method, url.path, query)
        self.requests.append(request)
        fault = self._fault_for(request)
        if fault is not None and fault.kind == "empty":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if fault is not None and fault.kind == "status":
            body = json.dumps(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"injected {fault.status} {fault.reason}",
                    "reason": fault.reason,
                    "code": fault.status,
                }
            ).encode()
            writer.write(
                f"HTTP/1.1 {fault.status} {fault.reason}\r\nContent-Type: application/json\r\n"
                f"Retry-After: 0\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                .encode() + body
            )  # fmt: skip
            await writer.drain()
            return
        kept = [h for h in headers if h and not h.lower().startswith("connection:")]
        forwarded = "\r\n".join([request_line, *kept, "Connection: close", "", ""]).encode()
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self._upstream_port, ssl=self._tls, server_hostname="127.0.0.1"
        )
        try:
            up_writer.write(forwarded)
            upload = asyncio.create_task(_pump(reader, up_writer))
            try:
                answer = await up_reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                if fault is not None and fault.kind == "inject":
                    chunked = b"transfer-encoding: chunked" in answer.lower()
                    assert chunked, f"a watch answer that is not chunked: {answer!r}"
                    data = fault.line + b"\n"
                    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await _pump(up_reader, writer)
            finally:
                upload.cancel()
        finally:
            up_writer.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()


def watch_of(plural: str, namespace: str) -> Callable[[Request], bool]:
    """Matches a watch of ``plural`` in ``namespace``."""
    suffix = f"/namespaces/{namespace}/{plural}"
    return lambda r: r.watch and r.path.endswith(suffix)


def list_of(plural: str, namespace: str, *, continued: bool) -> Callable[[Request], bool]:
    """Matches a list of ``plural`` in ``namespace``: a later page, or the first one."""
    suffix = f"/namespaces/{namespace}/{plural}"
    return lambda r: (
        not r.watch and r.method == "GET" and r.path.endswith(suffix)
        and ("continue" in r.query) == continued
    )  # fmt: skip
