"""Finding the cluster: in-cluster config or a kubeconfig, via kubernetes-asyncio's loader.

kubernetes-asyncio's config loader is the part of that library this operator uses:
it handles in-cluster service-account tokens (re-read as they rotate), kubeconfig
contexts, certificates inline or on disk, tokens and exec credential plugins. But
``import kubernetes_asyncio.config`` normally drags in ``kubernetes_asyncio.client``,
whose package imports some 850 generated API and model modules that this operator
never uses (it speaks raw JSON, see :mod:`router_controller.kube`) — about 25 MiB of
resident memory, a sixth of the operator's budget.

So the two packages are entered without running their ``__init__``: each is
registered as a namespace holding only what the loader needs (``Configuration``;
``ApiClient`` is referenced only by ``new_client_from_config``, which we never call).
If the full library was imported already (by a test, say), it is used as is. A unit
test checks that the generated modules stay out.

The loader reads credentials once; the operator runs for months. So what can rotate is
kept fresh here (:class:`Credentials`, :class:`TlsFiles`), the way client-go does it:

- an exec plugin (EKS, GKE, OIDC helpers) runs again shortly before the
  ``expirationTimestamp`` it returned (at 80 % of the credential's life, at most 30 s
  early: client-go waits until the instant itself, which races with clock skew), and
  at once after a 401 answered a request made with its current token;
- a ``tokenFile`` (and the in-cluster service-account token, which the kubelet
  rotates) is re-read every minute, as client-go's cached file token source does, and
  after a 401; when a kubeconfig gives both ``token`` and ``tokenFile`` the file wins
  (clientcmd's documented rule);
- client certificate, key and CA files are checked for changes every 10 s and
  reloaded (new connections use them; a half-written pair keeps the old context);
- ``tls-server-name`` is sent as the TLS SNI and verified name; ``proxy-url`` is used
  for http:// and https:// proxies and refused with a clear error otherwise (socks5).

Other kubeconfig authentication (static tokens, basic auth, auth-provider) is what the
loader gives, as before.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import importlib.util
import os
import ssl
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from router_controller.clock import SYSTEM_CLOCK, Clock, parse_time

log = structlog.get_logger("kubeconfig")

_ROOT = "kubernetes_asyncio"
_CLIENT = "kubernetes_asyncio.client"


def _bare_package(name: str) -> types.ModuleType:
    """Register package ``name`` so its submodules import, without running its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not installed")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = spec
    sys.modules[name] = module
    return module


def _loader() -> tuple[Any, Any]:
    """(the kubernetes_asyncio.config module, the Configuration class)."""
    if _CLIENT not in sys.modules:
        if _ROOT not in sys.modules:
            _bare_package(_ROOT)
        client = _bare_package(_CLIENT)
        configuration = importlib.import_module(f"{_CLIENT}.configuration")
        client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
        client.ApiClient = None  # type: ignore[attr-defined]
    config = importlib.import_module(f"{_ROOT}.config")
    return config, sys.modules[_CLIENT].Configuration


class ConfigError(Exception):
    """No usable cluster configuration: not in a Pod, and no loadable kubeconfig."""


async def load_configuration(kubeconfig: str | None) -> Any:
    """A kubernetes-asyncio ``Configuration`` for the cluster, as client-go finds it.

    Order: ``--kubeconfig``, then in-cluster, then ``$KUBECONFIG`` / ``~/.kube/config``.
    """
    config, configuration_class = _loader()
    configuration = configuration_class()
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
            return configuration
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as err:
        raise ConfigError(str(err)) from None
    return configuration


# -- credentials that rotate ------------------------------------------------------------

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
TOKEN_FILE_PERIOD = 60.0  # client-go re-reads a token file every minute
CERT_CHECK_PERIOD = 10.0
EXEC_EARLY_MAX = 30.0  # re-run an exec plugin at most this long before expiry
EXEC_TIMEOUT = 60.0
REFRESH_AFTER_401_MIN = 1.0  # at most one forced refresh per second


class TokenSource(Protocol):
    """Where the ``Authorization`` header comes from."""

    async def header(self) -> str | None:
        """The current header value (``Bearer ...``), refreshed if due."""
        ...

    async def refresh(self) -> None:
        """Fetch a new credential now (a 401 said the current one is no good)."""
        ...


class StaticToken:
    """What the loader found (a literal token, basic auth, an auth-provider token)."""

    def __init__(self, configuration: Any) -> None:
        self._configuration = configuration

    async def header(self) -> str | None:
        for setting in (await self._configuration.auth_settings()).values():
            if setting.get("in") == "header" and setting.get("key") == "authorization":
                return str(setting["value"]) if setting.get("value") else None
        return None

    async def refresh(self) -> None:
        return None


class FileToken:
    """A bearer token in a file that something else rewrites (kubelet, a sidecar)."""

    def __init__(
        self,
        path: str,
        *,
        fallback: str | None = None,
        period: float = TOKEN_FILE_PERIOD,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.path = path
        self._value = fallback
        self._period = period
        self._clock = clock
        self._read_at: float | None = None
        self.reads = 0

    async def header(self) -> str | None:
        if self._read_at is None or self._clock.monotonic() - self._read_at >= self._period:
            self._read()
        return f"Bearer {self._value}" if self._value else None

    async def refresh(self) -> None:
        self._read()

    def _read(self) -> None:
        self._read_at = self._clock.monotonic()
        self.reads += 1
        try:
            token = Path(self.path).read_text().strip()
        except OSError as err:  # keep the last good token, as client-go does
            log.warning("cannot read the token file", path=self.path, error=str(err))
            return
        if token:
            self._value = token


class ExecToken:
    """A client-go credential plugin (``users[].user.exec``), run again as it expires.

    The plugin's ``status`` carries a token, or a client certificate and key (then
    written over the files the TLS context reloads from), and optionally an
    ``expirationTimestamp``.
    """

    def __init__(
        self,
        exec_config: Any,
        *,
        tls: TlsFiles | None,
        token: str | None = None,
        expiry: datetime.datetime | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        config, _ = _loader()
        if isinstance(exec_config, dict):  # the stanza itself rather than the loader's node
            exec_config = importlib.import_module(f"{_ROOT}.config.kube_config").ConfigNode(
                "exec", exec_config
            )
        provider_module = importlib.import_module(f"{_ROOT}.config.exec_provider")
        self._provider = provider_module.ExecProvider(exec_config)
        self._config_exception = config.ConfigException
        self._tls = tls
        self._clock = clock
        self._token = token
        self._refresh_at = self._due(expiry) if expiry else None
        self._lock = asyncio.Lock()
        self.runs = 0

    def _due(self, expiry: datetime.datetime) -> datetime.datetime:
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=datetime.UTC)
        life = (expiry - self._clock.now()).total_seconds()
        early = max(0.0, min(EXEC_EARLY_MAX, 0.2 * life))
        return expiry - datetime.timedelta(seconds=early)

    async def header(self) -> str | None:
        if self._token is None or (
            self._refresh_at is not None and self._clock.now() >= self._refresh_at
        ):
            async with self._lock:  # one run for every request waiting on it
                if self._token is None or (
                    self._refresh_at is not None and self._clock.now() >= self._refresh_at
                ):
                    await self._run()
        return f"Bearer {self._token}" if self._token else None

    async def refresh(self) -> None:
        async with self._lock:
            await self._run()

    async def _run(self) -> None:
        self.runs += 1
        try:
            async with asyncio.timeout(EXEC_TIMEOUT):
                status = await self._provider.run()
        except (self._config_exception, OSError, TimeoutError, ValueError) as err:
            log.error("credential plugin failed", error=str(err) or repr(err))
            if self._refresh_at is not None:  # try again soon, not on every request
                self._refresh_at = self._clock.now() + datetime.timedelta(seconds=1)
            return
        if not isinstance(status, dict):
            log.error("credential plugin returned no status")
            return
        if status.get("token"):
            self._token = str(status["token"])
        elif status.get("clientCertificateData") and status.get("clientKeyData"):
            if self._tls is None or not self._tls.cert_file or not self._tls.key_file:
                log.error("credential plugin returned a certificate, but TLS is not in use")
            else:
                _write_private(self._tls.key_file, str(status["clientKeyData"]))
                _write_private(self._tls.cert_file, str(status["clientCertificateData"]))
                self._tls.reload()
        else:
            log.error("credential plugin returned neither a token nor a certificate")
        expiry = status.get("expirationTimestamp")
        self._refresh_at = None
        if expiry:
            when = parse_time(str(expiry))
            if when is None:
                log.error("credential plugin returned a bad expirationTimestamp", value=expiry)
            else:
                self._refresh_at = self._due(when)
        log.info(
            "credential plugin ran",
            runs=self.runs,
            refresh_at=self._refresh_at.isoformat() if self._refresh_at else None,
        )


def _write_private(path: str, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)


class TlsFiles:
    """The TLS context for the API server, rebuilt when its files change on disk."""

    def __init__(
        self,
        *,
        ca_file: str | None,
        cert_file: str | None,
        key_file: str | None,
        verify: bool,
        server_name: str | None,
        check_period: float = CERT_CHECK_PERIOD,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self.verify = verify
        self.server_name = server_name or None
        self._period = check_period
        self._clock = clock
        self._stamps = self._stat()
        self._context = self._build()  # at start, a bad file is a start-up error
        self._checked = clock.monotonic()
        self.reloads = 0

    def _files(self) -> list[str]:
        return [f for f in (self.ca_file, self.cert_file, self.key_file) if f]

    def _stat(self) -> list[tuple[int, int] | None]:
        stamps: list[tuple[int, int] | None] = []
        for name in self._files():
            try:
                info = os.stat(name)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((info.st_mtime_ns, info.st_size))
        return stamps

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def context(self) -> ssl.SSLContext:
        """The current context; files are looked at no more than every ``check_period``."""
        now = self._clock.monotonic()
        if now - self._checked >= self._period:
            self._checked = now
            stamps = self._stat()
            if stamps != self._stamps:
                self._stamps = stamps
                self.reload()
        return self._context

    def reload(self) -> None:
        try:
            context = self._build()
        except (OSError, ssl.SSLError, ValueError) as err:
            # A rotation caught half-way (new cert, old key): keep the old context,
            # the next change retries.
            log.warning("cannot reload TLS files", files=self._files(), error=str(err))
            self._stamps = []
            return
        self._context = context
        self._stamps = self._stat()
        self.reloads += 1
        log.info("reloaded TLS files", files=self._files())


@dataclass
class ClientConfig:
    """Everything needed to reach and authenticate to one API server."""

    host: str
    tls: TlsFiles | None  # None for plain http://
    proxy: str | None
    credentials: TokenSource


_PROXY_SCHEMES = ("http", "https")


def _beside(kubeconfig: str | None, path: str) -> str:
    """A relative path in a kubeconfig is relative to the kubeconfig's folder."""
    if os.path.isabs(path) or not kubeconfig:
        return path
    return os.path.join(os.path.dirname(os.path.abspath(kubeconfig)), path)


async def load_client_config(kubeconfig: str | None) -> ClientConfig:
    """The cluster as :func:`load_configuration` finds it, with credentials that rotate."""
    config, configuration_class = _loader()
    configuration = configuration_class()
    loader: Any = None
    in_cluster = False
    try:
        if kubeconfig:
            loader = await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
                in_cluster = True
            except config.ConfigException:
                loader = await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as err:
        raise ConfigError(str(err)) from None
    host = str(configuration.host).rstrip("/")
    proxy = getattr(configuration, "proxy", None) or None
    if proxy and urlsplit(str(proxy)).scheme not in _PROXY_SCHEMES:
        raise ConfigError(
            f"proxy-url {proxy!r} is not supported: use an http:// or https:// proxy, "
            "or remove proxy-url from the kubeconfig's cluster"
        )
    tls: TlsFiles | None = None
    if host.startswith("https"):
        try:
            tls = TlsFiles(
                ca_file=configuration.ssl_ca_cert,
                cert_file=configuration.cert_file,
                key_file=configuration.key_file,
                verify=bool(configuration.verify_ssl),
                server_name=getattr(configuration, "tls_server_name", None),
            )
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"cannot load the TLS files of the kubeconfig: {err}") from None
    credentials: TokenSource
    user = loader._user if loader is not None else None
    if in_cluster:
        credentials = FileToken(IN_CLUSTER_TOKEN)
    elif user is not None and "exec" in user:
        token = str(configuration.api_key.get("BearerToken") or "").removeprefix("Bearer ")
        credentials = ExecToken(
            user["exec"],
            tls=tls,
            token=token or None,
            expiry=getattr(loader, "exec_plugin_expiry", None),
        )
    elif user is not None and user.safe_get("tokenFile"):
        literal = user.safe_get("token")
        credentials = FileToken(
            _beside(kubeconfig, str(user["tokenFile"])),
            fallback=str(literal) if literal else None,
        )
    else:
        credentials = StaticToken(configuration)
    return ClientConfig(
        host=host, tls=tls, proxy=str(proxy) if proxy else None, credentials=credentials
    )
