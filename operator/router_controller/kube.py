"""A thin asynchronous Kubernetes REST client that speaks raw JSON.

kubernetes-asyncio does the hard, security-relevant part: finding and loading the
configuration (in-cluster service account with token refresh, kubeconfig with
certificates, tokens and exec plugins). Requests then go through one shared
``aiohttp.ClientSession`` as plain JSON dictionaries: the watch stream and the
reconcile path are the operator's hot path, and building generated model objects
for every event would cost more CPU and memory than the operator's own logic.

API errors become typed exceptions (:class:`NotFound`, :class:`Conflict`,
:class:`Gone`, :class:`Forbidden`, ...) carrying the server's Status message, and
every request is counted in ``rest_client_requests_total{code,method,host}``.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from router_controller.kubeconfig import load_configuration
from router_controller.metrics import Metrics

Configuration = Any  # kubernetes_asyncio.client.Configuration (see kubeconfig.py)

Object = dict[str, Any]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server answered with an error Status.

    ``details`` is the Status ``details`` (``{}`` when absent), ``causes`` its
    ``details.causes`` list, and ``retry_after`` the ``Retry-After`` header in seconds
    when the server sent one (429 from API Priority and Fairness, some 5xx).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        method: str,
        path: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.details: dict[str, Any] = details or {}
        causes = self.details.get("causes")
        self.causes: list[dict[str, Any]] = (
            [c for c in causes if isinstance(c, dict)] if isinstance(causes, list) else []
        )
        self.retry_after = retry_after


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: a stale resourceVersion, or (reason AlreadyExists) a create of an existing name."""

    @property
    def already_exists(self) -> bool:
        return self.reason == "AlreadyExists"


class Gone(ApiError):
    """410: the resourceVersion asked for is older than what the server keeps."""


# The authorizer's denial reads "... is forbidden: User \"u\" cannot create resource
# \"configmaps\" in API group ..." (k8s.io/apiserver endpoints/handlers/responsewriters
# forbiddenMessage); quota, admission webhooks and namespace lifecycle say other things.
_RBAC_DENIAL = re.compile(r"\bcannot [a-z]+ resource\b")


class Forbidden(ApiError):
    """403: an RBAC denial, a terminating namespace, a quota or an admission denial."""

    @property
    def namespace_terminating(self) -> bool:
        """The namespace lifecycle admission refused a create in a terminating namespace.

        Its Status carries a cause of type (JSON key ``reason``) ``NamespaceTerminating``.
        """
        return any(cause.get("reason") == "NamespaceTerminating" for cause in self.causes)

    @property
    def rbac_denied(self) -> bool:
        """The authorizer denied the verb (as opposed to an admission plugin's 403)."""
        return bool(_RBAC_DENIAL.search(self.message))


class Unauthorized(ApiError):
    pass


class Invalid(ApiError):
    """422: the object failed validation; ``causes`` name the fields."""


class TooManyRequests(ApiError):
    """429: API Priority and Fairness (or a max-in-flight limit) rejected the request."""


class ServerError(ApiError):
    """Any 5xx: the API server, an aggregated API or a webhook failed."""


class MalformedWatchEvent(ValueError):
    """A watch stream line that is not a well-formed event; the stream is abandoned.

    client-go's StreamWatcher ends the watch on a line it cannot decode, and the
    reflector then lists again: whatever the line held is lost, so the cache must be
    rebuilt from a list rather than carry on from the stream.
    """

    EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})

    @classmethod
    def decode(cls, line: bytes, path: str) -> Object:
        """The event a line holds: a JSON object with a known type and an object.

        ADDED, MODIFIED and DELETED events must name their object (``metadata.name``).
        """
        try:
            event: Any = json.loads(line)
        except ValueError:
            event, problem = None, "is not JSON"
        else:
            problem = "is not a JSON object"
        if isinstance(event, dict):
            kind, obj = event.get("type"), event.get("object")
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            if kind not in cls.EVENT_TYPES or not isinstance(obj, dict):
                problem = "is not a watch event (type and object)"
            elif kind not in ("BOOKMARK", "ERROR") and not (
                isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"]
            ):
                problem = f"is a {kind} event whose object has no metadata.name"
            else:
                return event
        excerpt = line[:120].decode(errors="replace")
        raise cls(f"WATCH {path}: a line of the stream {problem}: {excerpt!r}")


_ERRORS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}


def parse_retry_after(value: str | None) -> float | None:
    """The ``Retry-After`` header in seconds: delta-seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_from_status(
    status: int, body: Any, method: str, path: str, *, retry_after: float | None = None
) -> ApiError:
    reason, message, details = "", "", None
    if isinstance(body, dict):
        reason = str(body.get("reason", ""))
        message = str(body.get("message", ""))
        if isinstance(body.get("details"), dict):
            details = body["details"]
    elif body:
        message = str(body)[:500]
    kind = _ERRORS.get(status) or (ServerError if status >= 500 else ApiError)
    return kind(status, reason, message, method, path, details=details, retry_after=retry_after)


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a kind lives in the REST API."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


CONFIGMAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
SERVICES = Resource("", "v1", "services")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


def _ssl_context(configuration: Configuration) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Kube:
    """Raw-JSON access to one API server over one aiohttp session."""

    def __init__(
        self,
        *,
        configuration: Configuration,
        metrics: Metrics,
        user_agent: str = "router-controller",
        connections: int = 64,
    ) -> None:
        self._configuration = configuration
        self._base = str(configuration.host).rstrip("/")
        self._host = urlsplit(self._base).netloc
        self._metrics = metrics
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=_ssl_context(configuration), limit=connections, enable_cleanup_closed=True
            ),
            headers={"User-Agent": user_agent, "Accept": JSON},
            json_serialize=json.dumps,
        )

    @classmethod
    async def connect(
        cls, *, kubeconfig: str | None, metrics: Metrics, user_agent: str = "router-controller"
    ) -> Kube:
        return cls(
            configuration=await load_configuration(kubeconfig),
            metrics=metrics,
            user_agent=user_agent,
        )

    @property
    def host(self) -> str:
        return self._base

    async def close(self) -> None:
        await self._session.close()

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        # auth_settings() refreshes a rotated token (in-cluster, exec plugins) first.
        for setting in (await self._configuration.auth_settings()).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _count(self, code: int | str, method: str) -> None:
        self._metrics.rest_requests.labels(str(code), method, self._host).inc()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> Object:
        """Send one request; return the decoded JSON body or raise an :class:`ApiError`."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        try:
            async with self._session.request(
                method,
                self._base + path,
                params=params,
                data=data,
                headers=await self._headers(content_type if data is not None else None),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.read()
                self._count(response.status, method)
        except (aiohttp.ClientError, TimeoutError):
            self._count("<error>", method)
            raise
        try:
            decoded: Any = json.loads(raw) if raw else {}
        except ValueError:
            decoded = raw.decode(errors="replace")
        if response.status >= 400:
            raise error_from_status(
                response.status,
                decoded,
                method,
                path,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if not isinstance(decoded, dict):
            raise ApiError(response.status, "BadResponse", "not a JSON object", method, path)
        return decoded

    async def get(self, path: str, **params: str) -> Object:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: Object) -> Object:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: Object) -> Object:
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, body: Object) -> Object:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str, body: Object | None = None) -> Object:
        return await self.request("DELETE", path, body=body)

    async def watch(
        self, path: str, *, params: Mapping[str, str], stall_timeout: float
    ) -> AsyncIterator[Object]:
        """Yield the events of a watch stream as raw dicts.

        ``stall_timeout`` bounds the silence between two lines: the server sends a
        bookmark at least every minute when asked for them, so a longer silence means a
        dead connection that TCP has not noticed, and the stream is abandoned
        (``TimeoutError``) so that the caller re-watches. A line that is not a
        well-formed event raises :class:`MalformedWatchEvent` (counted in
        ``router_controller_watch_malformed_events_total``); only dicts are yielded.
        """
        query = {**params, "watch": "1"}
        try:
            async with self._session.get(
                self._base + path,
                params=query,
                headers=await self._headers(None),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=stall_timeout),
            ) as response:
                self._count(response.status, "GET")  # client-go counts a watch as a GET
                if response.status >= 400:
                    raw = await response.read()
                    try:
                        decoded: Any = json.loads(raw)
                    except ValueError:
                        decoded = raw.decode(errors="replace")
                    raise error_from_status(
                        response.status,
                        decoded,
                        "WATCH",
                        path,
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    )
                async for line in _lines(response.content):
                    yield MalformedWatchEvent.decode(line, path)
        except MalformedWatchEvent:
            self._metrics.watch_malformed.labels(path.rsplit("/", 1)[-1]).inc()
            raise
        except (aiohttp.ClientError, TimeoutError):
            self._count("<error>", "GET")
            raise


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited JSON lines, however long (readline() caps a line's length)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer
