"""The stand-in for vllm_router: its ``/health``, and how it is exposed the Kubernetes way.

No kubelet runs in tests, ``make run`` or ``make bench``, so no router Pod ever starts.
:class:`FakeRouter` is a real aiohttp server on a free port of this machine that
answers ``GET /health`` as vllm_router does:
``{"status": "healthy", "dynamic_config": {...}}`` with all 17 fields of the
configuration it runs (the ones its file did not set as null, or the
router's defaults for the three backend health-check fields). A test "loads" a
file into it the way the router re-reads its mounted ConfigMap, and can make it
fail, hang, refuse connections or answer badly.

:func:`expose` makes routers reachable as a Kubernetes Service: a Service without
selector plus one EndpointSlice per replica (all replicas share one address and
differ by port, and an EndpointSlice has one port list for all its endpoints).
:func:`standing_in` is what ``make run`` shows: a router on a loopback cluster IP
that re-reads the StaticRoute's ConfigMap as the real one re-reads its mounted file.

The address is this machine's own non-loopback IPv4 address, not 127.0.0.1: the
API server refuses EndpointSlice addresses in 127.0.0.0/8 ("may not be in the
loopback range"), as it refuses link-local ones. A machine's own address is
reached through the loopback interface all the same, and the servers listen on
that address only. It is the first address of an interface (``SIOCGIFADDR``,
netdevice(7)), the kernel's documented answer to "this interface's address".

What it does with a file follows vllm_router's ``DynamicConfigWatcher.reconfigure_all``
(see the table in ``router_controller.routerconfig``; ``make router-conformance``
checks the same against the real router): a file the router refuses leaves ``/health``
on the previous config; one that fails after the service discovery was swapped (an
invalid or unbuildable routing logic, ``session`` without ``session_key``) is *half
applied*: the new backends serve under the old ``/health``; k8s discovery without
``k8s_namespace`` is taken but its pod watch fails forever; and the routing logics a
reload cannot build answer requests with the router's own errors. ``POST
/v1/chat/completions`` and ``/v1/completions`` answer with the backend the router
would pick (``{"backend": URL, "model": ...}``) instead of proxying; :meth:`route`
does the same without HTTP. :meth:`boot` is the router's start-up on a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import ipaddress
import json
import re
import socket
import struct
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

from router_controller.api import CONFIG_KEY
from router_controller.kube import CONFIGMAPS, ENDPOINTSLICES, SERVICES, ApiError, Kube, Object

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

# The router's own tables, written out for the same reason as ROUTER_FIELDS.
ROUTING_LOGICS = (
    "roundrobin",
    "session",
    "kvaware",
    "prefixaware",
    "disaggregated_prefill",
    "disaggregated_prefill_orchestrated",
)
MODEL_TYPES = (
    "chat",
    "completion",
    "embeddings",
    "rerank",
    "score",
    "transcription",
    "vision",
    "messages",
)
_URL = re.compile(  # vllm_router.utils.validate_url
    r"^(http|https)://(([a-zA-Z0-9_-]+\.)+[a-zA-Z]{2,}|localhost|\d{1,3}(\.\d{1,3}){3})"
    r"(:\d+)?(/.*)?$"
)
# What the router logs when a reload fails, before the reason.
LOAD_ERROR = "DynamicConfigWatcher: Error loading config file: "
NO_NAMESPACE = "Missing the required parameter `namespace` when calling `list_namespaced_pod`"

_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
RELOAD_SECONDS = 10.0  # vllm_router re-reads its dynamic config file this often


def shown_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What ``/health`` shows for a loaded file: every field, unset ones null or defaulted."""
    return {key: config.get(key, ROUTER_DEFAULTS.get(key)) for key in ROUTER_FIELDS}


class _LoadError(Exception):
    """A load the router gives up on; the message is what its log line says."""


@dataclass
class Discovery:
    """What the router's service discovery runs: its backends, or why it has none."""

    kind: str = "static"
    backends: list[tuple[str, str]] = field(default_factory=list)  # (url, model)
    aliases: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    namespace: str | None = None
    error: str | None = None  # the k8s watch failing over and over

    @classmethod
    def build(cls, config: Mapping[str, Any]) -> Discovery:
        """As ``reconfigure_service_discovery``: raises what the router raises."""
        if config["service_discovery"] == "k8s":
            namespace = config.get("k8s_namespace")
            error = None if namespace else NO_NAMESPACE
            return cls(kind="k8s", namespace=namespace, error=error)
        if config["service_discovery"] != "static":
            raise _LoadError(f"Invalid service discovery type: {config['service_discovery']}")
        backends = config.get("static_backends")
        models = config.get("static_models")
        if backends is None or models is None:
            raise _LoadError("'NoneType' object has no attribute 'split'")
        urls = [url for url in backends.split(",") if _URL.match(url)]  # others dropped
        names = models.split(",")
        if len(urls) != len(names):
            raise _LoadError("URLs and models should have the same length")
        aliases: dict[str, str] = {}
        for pair in config["static_aliases"].split(",") if config.get("static_aliases") else ():
            parts = pair.split(":")
            if len(parts) != 2:
                raise _LoadError(f"cannot unpack {len(parts)} values into alias, model")
            aliases[parts[0]] = parts[1]
        labels = config.get("static_model_labels")
        return cls(
            backends=list(zip(urls, names, strict=True)),
            aliases=aliases,
            labels=labels.split(",") if labels else None,
        )


def _check_routing_logic(config: Mapping[str, Any]) -> None:
    """As ``reconfigure_routing_logic(routing_logic, session_key=...)`` with nothing else."""
    logic = config["routing_logic"]
    if logic not in ROUTING_LOGICS:
        raise _LoadError(f"Invalid routing logic {logic}")
    if logic == "session" and config.get("session_key") is None:
        raise _LoadError("SessionRouter must be initialized with a session_key")
    if logic == "kvaware":  # no lmcache, and no LMCache controller port from a file
        raise _LoadError("name 'controller_manager' is not defined")


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

    def __init__(self, *, host: str | None = None, backlog: int = 128) -> None:
        self.host = host or host_address()  # 127.0.0.1 will do where no EndpointSlice is made
        self.backlog = backlog  # pending connections; more for many probes at once
        self.mode: Mode = "healthy"
        self.error_status = 503
        self.requests = 0  # GET /health received, answered or not
        self.hanging = 0  # requests held right now by the hang mode
        self._config: dict[str, Any] = {}
        self.discovery = Discovery()
        # The prefill and decode clients: made at start-up only, never by a reload.
        self._clients: tuple[str, str] | None = None
        self.frozen = False  # when True, loads are ignored: a router whose file never changes
        self.load_errors: list[str] = []  # the router's log lines for failed loads
        self.routed: dict[str, int] = {}  # requests answered per backend URL
        self._turn = 0
        self._release = asyncio.Event()
        self._port = 0
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._request)
        app.router.add_post("/v1/completions", self._request)
        # handler_cancellation: a client that gives up (a probe timeout) frees its
        # handler, so ``hanging`` counts only the requests still outstanding.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=5
        )
        self._site: web.TCPSite | None = None

    async def __aenter__(self) -> FakeRouter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> int:
        """Listen on a free port; the port."""
        await self._runner.setup()
        await self.accept()
        return self._port

    async def stop(self) -> None:
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
        return shown_config(self._config)

    def load(self, config: dict[str, Any]) -> bool:
        """Run ``config``, as the router does when its file changed; False if it refused.

        Like ``DynamicRouterConfig(**json)``, a file with an unknown key or without
        ``service_discovery`` or ``routing_logic`` is refused and the previous config
        kept. Then ``reconfigure_all``: the discovery is swapped first, so a routing
        logic that cannot be built leaves the new backends serving under the old
        config (half applied). Returns whether ``/health`` now shows ``config``.
        """
        if self.frozen:
            return False
        try:
            if set(config) - set(ROUTER_FIELDS):
                unknown = sorted(set(config) - set(ROUTER_FIELDS))[0]
                raise _LoadError(f"got an unexpected keyword argument '{unknown}'")
            for required in ("service_discovery", "routing_logic"):
                if required not in config:
                    raise _LoadError(f"missing 1 required positional argument: '{required}'")
            if self._config and self.dynamic_config == shown_config(config):
                return True  # unchanged: the router does nothing
            self.discovery = Discovery.build(config)
            _check_routing_logic(config)
        except _LoadError as err:
            self.load_errors.append(LOAD_ERROR + str(err))
            return False
        self._config = dict(config)
        return True

    async def boot(self, config: dict[str, Any]) -> bool:
        """Start as the router does on ``--dynamic-config-json`` alone; False if it dies.

        ``validate_args`` stops the process for a missing companion key; an invalid
        routing logic crashes it; kvaware without lmcache kills the main thread and
        leaves the process up with no HTTP server. Either way connections are refused
        from then on. Otherwise the prefill and decode clients are made (only here),
        and the config watcher's first load follows at once.
        """
        logic = config.get("routing_logic")
        static = config.get("service_discovery") == "static"
        dies = (
            logic not in ROUTING_LOGICS
            or logic == "kvaware"
            or (logic == "session" and config.get("session_key") is None)
            or (
                static
                and (config.get("static_backends") is None or config.get("static_models") is None)
            )
            or (
                static
                and config.get("static_backend_health_checks")
                and not set((config.get("static_model_types") or "?").split(","))
                <= set(MODEL_TYPES)
            )
            or (config.get("service_discovery") == "k8s" and config.get("k8s_port") is None)
        )
        if not dies and static:
            try:
                Discovery.build(config)  # initialize_service_discovery: the same checks
            except _LoadError:
                dies = True
        if dies:
            await self.refuse()
            return False
        self.load(config)
        prefill, decode = config.get("prefill_model_labels"), config.get("decode_model_labels")
        if logic == "disaggregated_prefill" and prefill and decode and self.discovery.labels:
            by_label = dict(zip(self.discovery.labels, self.discovery.backends, strict=False))
            if prefill in by_label and decode in by_label:
                self._clients = (by_label[prefill][0], by_label[decode][0])
        return True

    def route(self, model: str) -> tuple[int, str]:
        """Where a request for ``model`` goes: (200, backend URL) or (status, error)."""
        logic = self._config.get("routing_logic")
        if logic == "disaggregated_prefill":
            if self._clients is None:
                return 500, "Prefiller error: 'State' object has no attribute 'prefill_client'"
            return 200, self._clients[1]  # the decode client, whatever the file says now
        if logic == "disaggregated_prefill_orchestrated":
            return 503, "PREFILL_SERVICE_UNAVAILABLE: No prefill endpoints discovered"
        found = self.discovery
        if found.labels is not None and len(found.labels) < len(found.backends):
            return 500, "IndexError: list index out of range"
        model = found.aliases.get(model, model)
        urls = [url for url, served in found.backends if served == model]
        if not urls:
            return 404, f"Model '{model}' not found. Available models can be listed at /v1/models."
        self._turn += 1
        url = sorted(urls)[self._turn % len(urls)]
        self.routed[url] = self.routed.get(url, 0) + 1
        return 200, url

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
            self._site = web.TCPSite(
                self._runner, self.host, self._port, reuse_address=True, backlog=self.backlog
            )
            await self._site.start()
            self._port = self._site.port

    async def close(self) -> None:
        self._release.set()
        await self._runner.cleanup()
        self._site = None

    async def _request(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        status, answer = self.route(str(body.get("model")))
        if status != 200:
            return web.json_response({"error": answer}, status=status)
        return web.json_response({"backend": answer, "model": body.get("model")})

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
            "labels": {SERVICE_NAME_LABEL: service},
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


# -- following a ConfigMap, as the kubelet and the router do ----------------------------


async def follow_configmap(
    router: FakeRouter,
    *,
    kube: Kube,
    namespace: str,
    name: str,
    every: float = RELOAD_SECONDS,
    report: Callable[[str], None] | None = None,
) -> None:
    """Load the ConfigMap's file into ``router`` every ``every`` seconds, until cancelled.

    That is the kubelet refreshing the mounted file and the router re-reading it; like
    the router, a file it refuses leaves the previous config. ``report`` hears about
    every file that changed: loaded, or refused and why.
    """
    where = f"ConfigMap {namespace}/{name}"
    last: str | None = None
    while True:
        try:
            cm = await kube.get(CONFIGMAPS.path(namespace, name))
        except (ApiError, aiohttp.ClientError, TimeoutError):
            cm = None  # not written yet (or the plane is going away): keep the config
        text = ((cm or {}).get("data") or {}).get(CONFIG_KEY)
        if text is not None and text != last:
            last = text
            errors = len(router.load_errors)
            if router.load_file(text):
                message = f"loaded {CONFIG_KEY} from {where}: {json.dumps(json.loads(text))}"
            else:
                why = router.load_errors[errors:] or [f"{CONFIG_KEY} is not a JSON object"]
                message = f"{where}: {why[-1]}; keeping the old config"
            if report is not None:
                report(message)
        await asyncio.sleep(every)


def cluster_ip_service(name: str, namespace: str, address: str, port: int) -> Object:
    """A selector-less Service whose cluster IP and port are a router's own.

    On a plane with a loopback Service range the Service's cluster IP can be the router
    itself, the way kube-proxy would route it in a cluster, and the operator probes it
    as its fallback when there is no EndpointSlice. (An EndpointSlice cannot point at
    a loopback address: the API server refuses it.)
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": name},
        },
        "spec": {
            "clusterIP": address,
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


@contextlib.asynccontextmanager
async def standing_in(
    kube: Kube,
    namespace: str,
    *,
    service: str,
    configmap: str,
    address: str,
    every: float = RELOAD_SECONDS,
    report: Callable[[str], None] | None = None,
) -> AsyncIterator[FakeRouter]:
    """A router behind Service ``service`` on cluster IP ``address``, serving ``configmap``.

    The plane must give Services loopback cluster IPs (``address`` is one of them).
    The router follows the ConfigMap (:func:`follow_configmap`) until the block ends.
    """
    async with FakeRouter(host=address) as router:
        await kube.create(
            SERVICES.path(namespace), cluster_ip_service(service, namespace, address, router.port)
        )
        follow = asyncio.create_task(
            follow_configmap(
                router, kube=kube, namespace=namespace, name=configmap, every=every, report=report
            ),
            name=f"stand-in router following {namespace}/{configmap}",
        )
        try:
            yield router
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
