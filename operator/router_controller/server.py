"""The operator's HTTP endpoints: ``/metrics`` (optionally secure) and ``/healthz``, ``/readyz``.

Like a kubebuilder manager, metrics are served on ``--metrics-bind-address`` and, with
``--metrics-secure`` (the default), only over HTTPS and only to callers that the API
server authenticates (TokenReview) and authorizes for ``get`` on the non-resource URL
``/metrics`` (SubjectAccessReview) — the ``metrics-reader`` ClusterRole. Results are
cached briefly so that a scrape every few seconds costs no API calls. Without a
mounted certificate (``--metrics-cert-path``) a self-signed one is generated at start;
its key touches the disk only for the moment the TLS context loads it.

HTTP/2 is never offered (ALPN advertises http/1.1 only): aiohttp's server speaks
HTTP/1.1, which is also what ``--enable-http2=false`` (the default, and kubebuilder's
advice since the HTTP/2 rapid-reset CVEs) asks for.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router_controller.kube import ApiError, Kube
from router_controller.metrics import Metrics
from router_controller.settings import Serving, parse_bind

log = structlog.get_logger("server")

Check = Callable[[], bool]
_AUTH_CACHE_SECONDS = 10.0


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


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throw-away serving certificate for the metrics endpoint."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "router-controller-metrics")])
    now = datetime.datetime.now(datetime.UTC)
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


class MetricsAuth:
    """TokenReview + SubjectAccessReview for ``get /metrics``, cached per token."""

    def __init__(self, *, kube: Kube, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._clock = clock
        self._cache: dict[str, tuple[float, int]] = {}

    async def status_for(self, header: str | None) -> int:
        """200, 401 or 403 for a request with this Authorization header."""
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401
        cached = self._cache.get(token)
        now = self._clock()
        if cached and cached[0] > now:
            return cached[1]
        status = await self._review(token)
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[token] = (now + _AUTH_CACHE_SECONDS, status)
        return status

    async def _review(self, token: str) -> int:
        review = await self._kube.create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        result = review.get("status") or {}
        if not result.get("authenticated"):
            return 401
        user = result.get("user") or {}
        sar = await self._kube.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user.get("username"),
                    "uid": user.get("uid"),
                    "groups": user.get("groups"),
                    "extra": user.get("extra"),
                    "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
                },
            },
        )
        return 200 if (sar.get("status") or {}).get("allowed") else 403


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
            self._auth = MetricsAuth(kube=kube)
        self._runners: list[web.AppRunner] = []
        self.metrics_port: int | None = None
        self.probe_port: int | None = None

    async def start(self) -> None:
        probe = parse_bind(self._settings.health_probe_bind_address)
        if probe is not None:
            app = web.Application()
            _check_handlers(app, "healthz", self._checks.health)
            _check_handlers(app, "readyz", self._checks.ready)
            self.probe_port = await self._listen(app, probe, None)
        bind = parse_bind(self._settings.metrics_bind_address)
        if bind is not None:
            if self._settings.enable_http2:
                log.warning("--enable-http2 is accepted but the metrics endpoint serves HTTP/1.1")
            app = web.Application()
            app.router.add_get("/metrics", self._serve_metrics)
            context = self._tls() if self._settings.metrics_secure else None
            self.metrics_port = await self._listen(app, bind, context)
        log.info(
            "serving",
            metrics_port=self.metrics_port,
            probe_port=self.probe_port,
            metrics_secure=self._settings.metrics_secure,
        )

    async def stop(self) -> None:
        """Close the listeners; safe to call more than once."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def _listen(
        self, app: web.Application, bind: tuple[str | None, int], context: ssl.SSLContext | None
    ) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, bind[0], bind[1], ssl_context=context, reuse_address=True)
        await site.start()
        # The bound port, which differs from the one asked for when that was 0.
        ports = [a[1] for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2]
        return int(ports[0]) if ports else bind[1]

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

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        if self._auth is not None:
            try:
                status = await self._auth.status_for(request.headers.get("Authorization"))
            except (TimeoutError, ApiError, aiohttp.ClientError) as err:
                log.warning("metrics authentication failed", error=str(err))
                return web.Response(status=500, text="authentication failed\n")
            if status == 401:
                return web.Response(status=401, text="Unauthorized\n")
            if status == 403:
                return web.Response(status=403, text="Forbidden: get on /metrics is not allowed\n")
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
