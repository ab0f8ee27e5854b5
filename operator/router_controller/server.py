"""The operator's HTTP endpoints: ``/metrics`` (optionally secure) and ``/healthz``, ``/readyz``.

Like a kubebuilder manager, metrics are served on ``--metrics-bind-address`` and, with
``--metrics-secure`` (the default), only over HTTPS and only to callers that the API
server authenticates (TokenReview) and authorizes for ``get`` on the non-resource URL
``/metrics`` (SubjectAccessReview) — the ``metrics-reader`` ClusterRole; see
:mod:`router_controller.metricsauth` for how those reviews are cached, coalesced and
throttled. Without a mounted certificate (``--metrics-cert-path``) a self-signed one is
generated at start; its key touches the disk only for the moment the TLS context loads it.

HTTP/2 is never offered (ALPN advertises http/1.1 only): aiohttp's server speaks
HTTP/1.1, which is also what ``--enable-http2=false`` (the default, and kubebuilder's
advice since the HTTP/2 rapid-reset CVEs) asks for.

The metrics port is reachable by more than Prometheus, so strangers must not be able to
spend the operator's memory or its API budget through it. aiohttp's defaults allow an
hour of keep-alive, no limit on connections and no bound on the TLS handshake but
asyncio's 60 s, and every connection costs about 256 KiB from the moment it is accepted
(asyncio's TLS read buffer): some 600 idle connections would take a 256Mi Pod over its
limit. Go's ``net/http`` server as controller-runtime's metrics server builds it
(``pkg/internal/httpserver``), and k8s.io/apiserver's secure serving that kube-rbac-proxy
uses, set ``ReadHeaderTimeout`` 32 s (which also bounds the TLS handshake),
``IdleTimeout`` 90 s and ``MaxHeaderBytes`` 1 MiB, and no connection cap (Go's
goroutines cost a few KiB, not 256). Here:

- **At most** ``MAX_CONNECTIONS`` (64) **connections.** The listening socket is
  accepted from here, not by asyncio's server, so that a connection over the cap costs
  nothing but ``accept`` and a reset, and an admitted one is a bare socket, with no TLS
  state, until its client sends its first byte. When every slot is taken, the oldest
  connection not yet through its TLS handshake makes room, else the oldest one that
  has not yet been served a 200; only when all slots hold clients that were allowed to
  read metrics is the newcomer refused. A flood of idle sockets thus never locks
  Prometheus out, and its kept-alive connection is never the one to go. 64 covers a
  Prometheus pair, a few humans with curl and the scrapes' reconnects with room to
  spare, and costs at most about 20 MiB.
- **TLS handshake within** ``TLS_HANDSHAKE_TIMEOUT`` (10 s) of the accept: a client
  that connects and says nothing is closed then (asyncio's default is 60 s; Go bounds
  it with the 32 s header timeout). A handshake on a cluster network takes milliseconds.
- **Headers within, and idle at most,** ``IDLE_TIMEOUT`` (32 s, Go's
  ``ReadHeaderTimeout``). aiohttp has one timer for both: from the handshake, or the last
  answer, to a complete request head. That is shorter than Go's 90 s idle timeout, so
  a Prometheus scraping less often than every 32 s reconnects for each scrape (one
  handshake, a millisecond of CPU); at 30 s or less it keeps its connection.
- **Small requests.** A request line of at most ``MAX_LINE_BYTES`` (4 KiB), at most
  ``MAX_HEADERS`` (32) header fields of at most ``MAX_FIELD_BYTES`` (8 KiB, room for any
  service-account token) each, so a request head is at most about 260 KiB where Go
  allows 1 MiB; a request with a body is refused (413): ``GET /metrics`` has none.
- **Strangers are not kept alive.** Every answer other than 200 closes its connection,
  so each bogus request costs its sender a new connection and TLS handshake.

With 1,000 idle connections and 2,000 requests with made-up tokens at once, the
operator's resident memory rose from 64 to 70 MiB (to 395 MiB with aiohttp's defaults;
tests/e2e/test_metrics_hardening.py). Connections closed early are counted in
``router_controller_metrics_connections_rejected_total{reason}``. The probe port
(kubelet's ``/healthz`` and ``/readyz``) gets the same HTTP limits and timeouts but no
cap: a kubelet must never be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CONTENT_TYPE_LATEST

from router_controller.clock import SYSTEM_CLOCK, Clock
from router_controller.kube import ApiError, Kube
from router_controller.metrics import Metrics
from router_controller.metricsauth import (
    FORBIDDEN,
    TOO_MANY_REQUESTS,
    UNAUTHORIZED,
    KubeReview,
    MetricsAuth,
)
from router_controller.settings import Serving, parse_bind

log = structlog.get_logger("server")

Check = Callable[[], bool]

MAX_CONNECTIONS = 64
TLS_HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 32.0
MAX_LINE_BYTES = 4096
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 32
MAX_BODY_BYTES = 4096
_BACKLOG = 128
_ACCEPT_RETRY_DELAY = 1.0  # asyncio's own pause when accept() runs out of descriptors
_HTTP_LIMITS: dict[str, Any] = {
    "keepalive_timeout": IDLE_TIMEOUT,
    "max_line_size": MAX_LINE_BYTES,
    "max_field_size": MAX_FIELD_BYTES,
    "max_headers": MAX_HEADERS,
}
REJECT_REASONS = ("limit", "evicted", "handshake")


@dataclass
class Checks:
    """Named checks for /healthz and /readyz (the checks of controller-runtime's healthz)."""

    health: dict[str, Check]
    ready: dict[str, Check]


def _check_handlers(app: web.Application, parent: str, checks: dict[str, Check]) -> None:
    """``/<parent>`` runs every check, ``/<parent>/<name>`` one, as controller-runtime's healthz.

    The answer is ``ok`` (200) or, with ``?verbose`` or on any failure, one
    ``[+]name ok`` / ``[-]name failed`` line per check and a summary (503 on failure).
    ``?exclude=name`` (repeatable) leaves checks out.
    """

    def respond(request: web.Request, selected: dict[str, Check]) -> web.Response:
        excluded = set(request.query.getall("exclude", []))
        results = {name: check() for name, check in selected.items() if name not in excluded}
        failed = [name for name, passed in results.items() if not passed]
        if not failed and "verbose" not in request.query:
            return web.Response(text="ok")
        lines = [
            f"[+]{name} ok" if passed else f"[-]{name} failed: reason withheld"
            for name, passed in results.items()
        ]
        lines.extend(f"[+]{name} excluded: ok" for name in sorted(excluded & selected.keys()))
        lines.append(f"{parent} check {'failed' if failed else 'passed'}")
        return web.Response(text="\n".join(lines) + "\n", status=503 if failed else 200)

    async def all_checks(request: web.Request) -> web.Response:
        return respond(request, checks)

    async def one_check(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in checks:
            raise web.HTTPNotFound(text=f"no {parent} check named {name!r}\n")
        return respond(request, {name: checks[name]})

    app.router.add_get(f"/{parent}", all_checks)
    app.router.add_get(f"/{parent}/{{name}}", one_check)


def self_signed(folder: Path, *, clock: Clock = SYSTEM_CLOCK) -> tuple[Path, Path]:
    """A throw-away serving certificate for the metrics endpoint."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "router-controller-metrics")])
    now = clock.now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class _Connection:
    """One accepted socket: waiting for its first byte or in its handshake until ``transport``."""

    __slots__ = ("sock", "started", "task", "transport", "trusted")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.task: asyncio.Task[None] | None = None
        self.started = False
        self.transport: asyncio.Transport | None = None
        self.trusted = False

    @property
    def closed(self) -> bool:
        if self.transport is not None:
            return self.transport.is_closing()
        return self.task is None or self.task.done()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            return
        if self.task is not None:
            self.task.cancel()  # a started handshake closes its socket or transport then
        if not self.started:
            self.sock.close()  # a task cancelled before it ran never sees its socket


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset: nothing is left in TIME_WAIT, nothing is read."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def listening_socket(host: str | None, port: int) -> socket.socket:
    """A listening socket as Go binds one: every interface (IPv4 and IPv6) when no host."""
    if host is None:
        if socket.has_dualstack_ipv6():
            return socket.create_server(
                ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=_BACKLOG
            )
        return socket.create_server(("", port), backlog=_BACKLOG)
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family, backlog=_BACKLOG)


class ConnectionGate:
    """Accepts from a listening socket and keeps at most ``limit`` connections open.

    Admitted sockets are handed to asyncio (``connect_accepted_socket``) with TLS and
    a handshake timeout; see the module docstring for who makes room when all slots
    are taken. :meth:`trust` marks a connection that was served a 200.
    """

    def __init__(
        self,
        *,
        listener: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        tls: ssl.SSLContext | None,
        metrics: Metrics,
        limit: int = MAX_CONNECTIONS,
        handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._listener = listener
        self._factory = factory
        self._tls = tls
        self._metrics = metrics
        self._limit = limit
        self._handshake_timeout = handshake_timeout
        self._connections: list[_Connection] = []  # oldest first
        self._task: asyncio.Task[None] | None = None
        for reason in REJECT_REASONS:
            metrics.metrics_connections_rejected.labels(reason)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def open(self) -> int:
        """Connections open now (in their handshake or established)."""
        return sum(1 for c in self._connections if not c.closed)

    def start(self) -> None:
        self._listener.setblocking(False)
        self._task = asyncio.create_task(self._accept(), name="metrics accept")

    async def close(self) -> None:
        """Stop accepting and drop connections still in their handshake.

        Established connections belong to aiohttp's server, whose shutdown closes them.
        """
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._listener.close()
        pending = [c for c in self._connections if c.transport is None]
        for connection in pending:
            connection.abort()
        await asyncio.gather(*(c.task for c in pending if c.task), return_exceptions=True)
        self._connections = []

    def trust(self, transport: asyncio.BaseTransport | None) -> None:
        for connection in self._connections:
            if connection.transport is transport:
                connection.trusted = True

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except (ConnectionAbortedError, InterruptedError):
                continue  # the client gave up before we accepted
            except OSError as err:
                if self._listener.fileno() == -1:
                    return  # closed under us: shutting down
                # Out of descriptors (EMFILE, ENFILE) or kernel memory: as asyncio's own
                # server does, wait for some to be freed instead of spinning.
                log.warning("metrics port cannot accept", error=str(err))
                await asyncio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            self._admit(sock)
            # An accept that finds a connection waiting does not yield: let the rest of
            # the operator run between two, however fast connections arrive.
            await asyncio.sleep(0)

    def _admit(self, sock: socket.socket) -> None:
        self._connections = [c for c in self._connections if not c.closed]
        if len(self._connections) >= self._limit:
            victim = next((c for c in self._connections if c.transport is None), None)
            if victim is None:
                victim = next((c for c in self._connections if not c.trusted), None)
            if victim is None:
                self._metrics.metrics_connections_rejected.labels("limit").inc()
                _reset(sock)
                return
            self._connections.remove(victim)
            victim.abort()
            self._metrics.metrics_connections_rejected.labels("evicted").inc()
        connection = _Connection(sock)
        connection.task = asyncio.create_task(
            self._handshake(connection), name="metrics connection"
        )
        self._connections.append(connection)

    async def _handshake(self, connection: _Connection) -> None:
        connection.started = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._handshake_timeout
        try:
            # Until the client speaks, its connection is a bare socket: no TLS state yet.
            await _first_byte(connection.sock, deadline)
        except BaseException as err:  # silent past the deadline, or evicted meanwhile
            _reset(connection.sock)
            if isinstance(err, TimeoutError):
                self._metrics.metrics_connections_rejected.labels("handshake").inc()
                return
            raise
        try:
            if self._tls is None:
                transport, _ = await loop.connect_accepted_socket(self._factory, connection.sock)
            else:
                transport, _ = await loop.connect_accepted_socket(
                    self._factory,
                    connection.sock,
                    ssl=self._tls,
                    ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
                )
        except (OSError, ssl.SSLError, TimeoutError) as err:
            self._metrics.metrics_connections_rejected.labels("handshake").inc()
            log.debug("metrics connection failed its handshake", error=str(err))
            return
        connection.transport = transport
        connection.task = None


async def _first_byte(sock: socket.socket, deadline: float) -> None:
    """Wait until ``sock`` has something to read (or EOF); TimeoutError past ``deadline``."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        async with asyncio.timeout_at(deadline):
            await readable
    finally:
        loop.remove_reader(sock.fileno())


class Servers:
    """The metrics and probe listeners, each an aiohttp AppRunner inside our loop."""

    def __init__(
        self,
        *,
        settings: Serving,
        metrics: Metrics,
        checks: Checks,
        kube: Kube | None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._checks = checks
        self._auth: MetricsAuth | None = None
        if settings.metrics_secure and parse_bind(settings.metrics_bind_address) is not None:
            if kube is None:  # fail closed: never serve "secure" metrics to anyone
                raise ValueError("secure metrics need an API client to review tokens")
            self._auth = MetricsAuth(review=KubeReview(kube=kube), metrics=metrics)
        self._runners: list[web.AppRunner] = []
        self._gate: ConnectionGate | None = None
        self.metrics_port: int | None = None
        self.probe_port: int | None = None

    async def start(self) -> None:
        probe = parse_bind(self._settings.health_probe_bind_address)
        if probe is not None:
            app = web.Application(client_max_size=MAX_BODY_BYTES)
            _check_handlers(app, "healthz", self._checks.health)
            _check_handlers(app, "readyz", self._checks.ready)
            self.probe_port = await self._listen(app, probe)
        bind = parse_bind(self._settings.metrics_bind_address)
        if bind is not None:
            if self._settings.enable_http2:
                log.warning("--enable-http2 is accepted but the metrics endpoint serves HTTP/1.1")
            app = web.Application(client_max_size=MAX_BODY_BYTES)
            app.router.add_get("/metrics", self._serve_metrics)
            context = self._tls() if self._settings.metrics_secure else None
            self.metrics_port = await self._listen_gated(app, bind, context)
        log.info(
            "serving",
            metrics_port=self.metrics_port,
            probe_port=self.probe_port,
            metrics_secure=self._settings.metrics_secure,
        )

    async def stop(self) -> None:
        """Close the listeners; safe to call more than once."""
        gate, self._gate = self._gate, None
        if gate is not None:
            await gate.close()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        if self._auth is not None:
            await self._auth.close()

    @property
    def metrics_connections(self) -> int:
        """Connections open to the metrics port now."""
        return self._gate.open if self._gate is not None else 0

    async def _runner(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, **_HTTP_LIMITS)
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def _listen(self, app: web.Application, bind: tuple[str | None, int]) -> int:
        runner = await self._runner(app)
        site = web.TCPSite(runner, bind[0], bind[1], reuse_address=True)
        await site.start()
        # The bound port, which differs from the one asked for when that was 0.
        ports = [a[1] for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2]
        return int(ports[0]) if ports else bind[1]

    async def _listen_gated(
        self, app: web.Application, bind: tuple[str | None, int], context: ssl.SSLContext | None
    ) -> int:
        runner = await self._runner(app)
        assert runner.server is not None  # set up above
        self._gate = ConnectionGate(
            listener=listening_socket(*bind),
            factory=runner.server,
            tls=context,
            metrics=self._metrics,
        )
        self._gate.start()
        return self._gate.port

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        if self._settings.metrics_cert_path:
            folder = Path(self._settings.metrics_cert_path)
            context.load_cert_chain(
                os.fspath(folder / self._settings.metrics_cert_name),
                os.fspath(folder / self._settings.metrics_cert_key),
            )
            return context
        # The key lives on disk only while it is loaded.
        with tempfile.TemporaryDirectory(prefix="metrics-cert-") as folder_name:
            cert, key = self_signed(Path(folder_name))
            context.load_cert_chain(os.fspath(cert), os.fspath(key))
        log.info("serving metrics with a self-signed certificate")
        return context

    async def _serve_metrics(self, request: web.Request) -> web.StreamResponse:
        if request.body_exists:
            return _closing(413, "GET /metrics takes no request body\n")
        if self._auth is not None:
            try:
                status = await self._auth.status_for(request.headers.get("Authorization"))
            except (TimeoutError, ApiError, aiohttp.ClientError) as err:
                log.warning("metrics authentication failed", error=str(err))
                return _closing(500, "authentication failed\n")
            if status == UNAUTHORIZED:
                return _closing(401, "Unauthorized\n")
            if status == FORBIDDEN:
                return _closing(403, "Forbidden: get on /metrics is not allowed\n")
            if status == TOO_MANY_REQUESTS:
                response = _closing(429, "Too many unknown tokens: try again later\n")
                response.headers["Retry-After"] = str(self._auth.retry_after)
                return response
        if self._gate is not None:
            self._gate.trust(request.transport)
        # Sent in pieces: the per-StaticRoute series are megabytes of text.
        body = self._metrics.exposition()
        stream = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        stream.content_length = len(body)
        await stream.prepare(request)
        for piece in body:
            await stream.write(piece)
        await stream.write_eof()
        return stream


def _closing(status: int, text: str) -> web.Response:
    """A refusal that also closes its connection: refused clients are not kept alive."""
    response = web.Response(status=status, text=text)
    response.force_close()
    return response
