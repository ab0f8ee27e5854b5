"""Stand-in routers for the benchmark: one that is healthy and synced, one that hangs.

No kubelet runs, so routers are HTTP servers in the benchmark process, reachable the
Kubernetes way: a Service without selector (port named ``http``) and an EndpointSlice
whose endpoint is this machine's own address and the server's port. Not 127.0.0.1:
the API server refuses loopback addresses in an EndpointSlice; the machine's own
address is reached over the loopback interface all the same. Every StaticRoute of
a scenario has the same spec, so one server answering with that spec's config serves
all of them.

The healthy one answers ``GET /health`` as vllm_router does: ``status`` and the
``dynamic_config`` it runs, all seventeen keys, unset ones as null or the router's
defaults. The hanging one accepts the connection, reads the request and never
answers; it lets go when the prober gives up and closes the connection, so hung
requests do not pile up in the benchmark process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from router_controller.api import StaticRouteSpec
from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube
from router_controller.routerconfig import ROUTER_DEFAULTS, ROUTER_KEYS, render

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def host_address() -> str:
    """A local IPv4 address an EndpointSlice accepts (not loopback, not link-local).

    Read from the kernel's table of local addresses (``/proc/net/fib_trie``, where
    each ``/32 host LOCAL`` entry is one of this machine's own addresses).
    """
    lines = Path("/proc/net/fib_trie").read_text().splitlines()
    for previous, line in itertools.pairwise(lines):
        if "/32 host LOCAL" not in line:
            continue
        address = ipaddress.IPv4Address(previous.split()[-1])
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            return str(address)
    raise RuntimeError("no non-loopback IPv4 address on this machine for router endpoints")


def running_config(spec: dict[str, Any]) -> dict[str, Any]:
    """What a router given the ConfigMap rendered from ``spec`` reports in ``/health``."""
    content = render(StaticRouteSpec.model_validate(spec)).content
    return {key: content.get(key, ROUTER_DEFAULTS.get(key)) for key in sorted(ROUTER_KEYS)}


class HealthyRouter:
    """``GET /health`` -> 200 with a fixed ``dynamic_config``."""

    def __init__(self, config: dict[str, Any], address: str) -> None:
        self.address = address
        self._body = json.dumps({"status": "healthy", "dynamic_config": config}).encode()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.requests = 0

    async def _health(self, _request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(body=self._body, content_type="application/json")

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock, backlog=1024).start()
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class HangingRouter:
    """Accepts connections and never answers; closes when the client goes away."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.read(4096):
                pass  # read and ignore the request; wait for the client to hang up
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.address, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def expose(kube: Kube, namespace: str, name: str, address: str, port: int) -> None:
    """A selector-less Service ``name`` whose one ready endpoint is ``address:port``."""
    await kube.create(
        SERVICES.path(namespace),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 8000, "targetPort": port}]},
        },
    )
    await kube.create(
        ENDPOINTSLICES.path(namespace),
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-local",
                "namespace": namespace,
                "labels": {SERVICE_NAME_LABEL: name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        },
    )
