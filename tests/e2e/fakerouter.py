"""A stand-in for vllm_router's ``/health``, and how tests expose it the Kubernetes way.

No kubelet runs in tests, so no router Pod ever starts. :class:`FakeRouter` is a
real aiohttp server on a free port of this machine that answers ``GET /health`` as
vllm_router does: ``{"status": "healthy", "dynamic_config": {...}}`` with all 17
fields of the configuration it runs (the ones its file did not set as null, or the
router's defaults for the three backend health-check fields). A test "loads" a
file into it the way the router re-reads its mounted ConfigMap, and can make it
fail, hang, refuse connections or answer badly.

:func:`expose` makes routers reachable as a Kubernetes Service: a Service without
selector plus one EndpointSlice per replica (all replicas share one address and
differ by port, and an EndpointSlice has one port list for all its endpoints).

The address is this machine's own non-loopback IPv4 address, not 127.0.0.1: the
API server refuses EndpointSlice addresses in 127.0.0.0/8 ("may not be in the
loopback range"), as it refuses link-local ones. A machine's own address is
reached through the loopback interface all the same, and the servers listen on
that address only.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import ipaddress
import json
import socket
import struct
from collections.abc import Sequence
from typing import Any, Literal

from aiohttp import web

from router_controller.kube import ENDPOINTSLICES, SERVICES, Kube, Object

# The fields of vllm_router's DynamicRouterConfig, as its /health shows them. Written out
# here rather than imported from routerconfig: the fake stands for the real router, so a
# mistake in the operator's list must not be copied into the test's oracle.
ROUTER_FIELDS = (
    "service_discovery",
    "routing_logic",
    "static_backends",
    "static_models",
    "static_aliases",
    "static_model_labels",
    "static_model_types",
    "static_backend_health_checks",
    "static_backend_health_check_interval",
    "static_backend_health_check_timeout_seconds",
    "prefill_model_labels",
    "decode_model_labels",
    "k8s_port",
    "k8s_namespace",
    "k8s_label_selector",
    "session_key",
    "callbacks",
)
ROUTER_DEFAULTS: dict[str, Any] = {
    "static_backend_health_checks": False,
    "static_backend_health_check_interval": 60,
    "static_backend_health_check_timeout_seconds": 10,
}

_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


@functools.cache
def host_address() -> str:
    """This machine's first IPv4 address that an EndpointSlice accepts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            address = ipaddress.IPv4Address(answer[20:24])
            if not (address.is_loopback or address.is_link_local or address.is_unspecified):
                return str(address)
    raise RuntimeError(
        "no non-loopback IPv4 address on this machine: EndpointSlices refuse 127.0.0.0/8"
    )


# healthy: answers with its config; error: a status code (503 by default);
# hang: holds every request until the mode changes; not-json: 200 with an HTML page;
# no-dynamic-config: 200 {"status": "healthy"}, as a router started without
# --dynamic-config-json answers.
Mode = Literal["healthy", "error", "hang", "not-json", "no-dynamic-config"]


class FakeRouter:
    """One router replica's HTTP server; use as ``async with FakeRouter() as router``."""

    def __init__(self, *, host: str | None = None) -> None:
        self.host = host or host_address()  # 127.0.0.1 will do where no EndpointSlice is made
        self.mode: Mode = "healthy"
        self.error_status = 503
        self.requests = 0  # GET /health received, answered or not
        self.hanging = 0  # requests held right now by the hang mode
        self._config: dict[str, Any] = {}
        self._release = asyncio.Event()
        self._port = 0
        app = web.Application()
        app.router.add_get("/health", self._health)
        # handler_cancellation: a client that gives up (a probe timeout) frees its
        # handler, so ``hanging`` counts only the requests still outstanding.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=5
        )
        self._site: web.TCPSite | None = None

    async def __aenter__(self) -> FakeRouter:
        await self._runner.setup()
        await self.accept()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """The endpoint as the operator names it in status."""
        return f"http://{self.host}:{self._port}"

    @property
    def url(self) -> str:
        return f"{self.address}/health"

    # -- what it runs ------------------------------------------------------------------

    @property
    def dynamic_config(self) -> dict[str, Any]:
        """What its /health shows: every field, unset ones null or the router's default."""
        return {key: self._config.get(key, ROUTER_DEFAULTS.get(key)) for key in ROUTER_FIELDS}

    def load(self, config: dict[str, Any]) -> bool:
        """Run ``config``, as the router does when its file changed.

        Like ``DynamicRouterConfig(**json)``, a file with an unknown key is rejected
        and the previous config kept; returns whether it was accepted.
        """
        if set(config) - set(ROUTER_FIELDS):
            return False
        self._config = dict(config)
        return True

    def load_file(self, text: str) -> bool:
        """Parse a ``dynamic_config.json`` file and run it (False if it is rejected)."""
        try:
            config = json.loads(text)
        except ValueError:
            return False
        return isinstance(config, dict) and self.load(config)

    def load_configmap(self, cm: Object) -> bool:
        """Run the file a ConfigMap holds, as if the kubelet had mounted it."""
        return self.load_file(cm["data"]["dynamic_config.json"])

    # -- how it behaves ----------------------------------------------------------------

    def set_mode(self, mode: Mode, *, status: int = 503) -> None:
        """Change how it answers; requests held by ``hang`` are answered in the new mode."""
        self.mode = mode
        self.error_status = status
        if mode == "hang":
            self._release = asyncio.Event()
        else:
            self._release.set()

    async def refuse(self) -> None:
        """Stop listening: connections are refused until :meth:`accept`."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def accept(self) -> None:
        """Listen (again) on its port; the first call picks a free port."""
        if self._site is None:
            self._site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
            await self._site.start()
            self._port = self._site.port

    async def close(self) -> None:
        self._release.set()
        await self._runner.cleanup()
        self._site = None

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "hang":
            self.hanging += 1
            try:
                await self._release.wait()
            finally:
                self.hanging -= 1
        if self.mode == "healthy":
            return web.json_response({"status": "healthy", "dynamic_config": self.dynamic_config})
        if self.mode == "no-dynamic-config":
            return web.json_response({"status": "healthy"})
        if self.mode == "not-json":
            return web.Response(
                text="<html><body>It works!</body></html>", content_type="text/html"
            )
        # error, or a hang ended by close()
        return web.json_response({"status": "unhealthy"}, status=self.error_status)


def endpointslice(namespace: str, service: str, index: int, address: str, port: int) -> Object:
    """An EndpointSlice of ``service`` with one ready endpoint, ``address``:``port``."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{index}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def service(
    namespace: str, name: str, target_port: int, labels: dict[str, str] | None = None
) -> Object:
    """A Service without selector, port ``http`` 80: its endpoints are ours to list."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": target_port}]
        },
    }


async def add_replica(
    kube: Kube, namespace: str, service_name: str, index: int, router: FakeRouter
) -> Object:
    """One more ready endpoint of the Service: an EndpointSlice of its own."""
    body = endpointslice(namespace, service_name, index, router.host, router.port)
    return await kube.create(ENDPOINTSLICES.path(namespace), body)


async def expose(
    kube: Kube,
    namespace: str,
    name: str,
    routers: Sequence[FakeRouter],
    *,
    labels: dict[str, str] | None = None,
) -> Object:
    """A selector-less Service ``name`` (port ``http``) whose endpoints are ``routers``.

    The EndpointSlices are created first, so the operator never sees the Service
    without them (it would fall back to probing the Service's cluster IP).
    """
    for index, router in enumerate(routers):
        await add_replica(kube, namespace, name, index, router)
    target = routers[0].port if routers else 8000
    return await kube.create(SERVICES.path(namespace), service(namespace, name, target, labels))
