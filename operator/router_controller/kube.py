"""A thin asynchronous Kubernetes REST client that speaks raw JSON.

kubernetes-asyncio's loader finds the configuration (in-cluster or a kubeconfig);
:mod:`router_controller.kubeconfig` keeps what it found fresh (exec plugins, token
files, certificates). Requests go out as plain JSON dictionaries: the watch stream and
the reconcile path are the operator's hot path, and building generated model objects
for every event would cost more CPU and memory than the operator's own logic.

Connections. client-go carries every watch and request of a process over one HTTP/2
connection (streams do not queue behind each other) and runs leader election on a
client of its own. aiohttp speaks HTTP/1.1 only, where a connection carries one
request at a time and a watch holds its connection for minutes. One bounded pool for
everything is what made the operator stall with 16 namespaces: 4 watches per
namespace took all 64 connections, and the Lease renewal waited behind them until the
lease was lost. So the traffic is split by what it needs:

- watches: a pool with no limit, one connection each (4 per watched namespace, or 4
  in all with every namespace watched); the API server does not limit connections.
  A connection costs about 70 KiB once asyncio's TLS read buffer is cut to 16 KiB
  (see :data:`TLS_READ_BUFFER`): 200 namespaces ran in 117 MiB, 61 MiB for one;
- requests (reads, writes, Events): a pool of ``connections`` (64) that watches never
  touch, so a write waits at most for other writes;
- the Lease: a client of its own (:meth:`Kube.client`, 2 connections) that no other
  traffic shares and that the global retry cap leaves alone, so no burst of writes,
  throttled requests or slow reviews can delay a renewal;
- TokenReviews/SubjectAccessReviews of ``/metrics`` scrapers: a client of their own.

Errors and retries. API errors become typed exceptions (:class:`NotFound`,
:class:`Conflict`, :class:`Gone`, :class:`Forbidden`, :class:`Invalid`,
:class:`TooManyRequests`, :class:`ServerError`, ...) carrying the Status message,
details, causes and ``Retry-After``. As client-go does, a 429 (API Priority and
Fairness) or a 5xx with ``Retry-After`` is retried after the time the server asks
for, a few times (:class:`RetryPolicy`); unlike client-go's limiter, which caps all
requests, a process-wide token bucket caps only the retries, so a failing API server
is not hammered while a healthy one is never slowed. When retries run out the error
goes to the caller (the work queue's per-key backoff). A 429 also halves how many
requests the process keeps in flight (:class:`Concurrency`): the server's queue for
our flow is full, and the Lease renewal shares that flow. On the throttling test's
one-seat priority level (1,000 StaticRoutes, production lease timings) the leader lost
its Lease in 1 run of 3 without that cut and in 0 of 4 with it (with a 6 s renew
deadline: 2 of 3 without, 1 of 3 with): it makes a lost Lease unlikely, not
impossible. Only a FlowSchema that gives the Lease a priority level of its own
guarantees it, as the built-in one does for kube-system's controllers. A retried page
of a paginated LIST is the same request with the same ``continue`` token, so the list
resumes where it was. A 401 makes the credentials refresh once and the request go again; a 401 that
survives that marks :class:`AuthHealth` failing (``/readyz``, then ``/healthz``).

Every attempt is counted in ``rest_client_requests_total{code,method,host}`` and every
retry in ``rest_client_request_retries_total``, client-go's names.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import collections
import contextlib
import datetime
import email.utils
import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from router_controller.clock import SYSTEM_CLOCK, Clock
from router_controller.kubeconfig import REFRESH_AFTER_401_MIN, ClientConfig, load_client_config
from router_controller.metrics import Metrics
from router_controller.ratelimit import TokenBucket

log = structlog.get_logger("kube")

Object = dict[str, Any]
ObjectKey = tuple[str, str]
"""``(namespace, name)`` of an object, as apimachinery's NamespacedName."""

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


def parse_retry_after(value: str | None, *, clock: Clock = SYSTEM_CLOCK) -> float | None:
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
        seconds = (when - clock.now()).total_seconds()
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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a request answered 429, or 5xx with ``Retry-After``, is retried.

    client-go retries such answers up to 10 times, waiting what ``Retry-After`` says,
    and its token-bucket rate limiter caps the rate of all requests. Here the cap is on
    the retries only (so a healthy API server is never slowed down) and a retry that
    finds the bucket empty is not made: the typed error goes to the caller, and the work
    queue's per-key backoff takes over.
    """

    max_retries: int = 5  # per request
    max_wait: float = 10.0  # the longest Retry-After honoured as is
    default_wait: float = 1.0  # for a 5xx whose Retry-After is 0 or unparsable
    rate: float = 5.0  # retries per second, for the whole process ...
    burst: int = 10  # ... with this many at once


class Concurrency:
    """How many requests a client family has in flight, cut at once when throttled.

    A 429 means the API server's queue for our flow is full, and every request sent
    while it stays full is refused too, the Lease renewal among them: Priority and
    Fairness puts all requests of one ServiceAccount in one flow unless an administrator
    writes a FlowSchema for the Lease, and the built-in one covers only kube-system. So,
    like TCP's congestion control, a 429 halves the number in flight (as the new limit)
    and the limit stays there for the
    ``Retry-After`` the server asked for; after that it grows by a quarter (at least
    one) per second without a 429. The operator settles just below what the server
    admits, which leaves room in the queue for the Lease, whose client is not counted.
    """

    def __init__(self, maximum: int, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.maximum = float(maximum)
        self.limit = float(maximum)
        self.in_flight = 0
        self._clock = clock
        self._hold_until = -math.inf
        self._grown_at = -math.inf
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        while self.in_flight >= int(self.limit):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.in_flight += 1

    def release(self, *, throttled: float | None) -> None:
        """Give the slot back; ``throttled``: the answer was a 429 (its Retry-After).

        No await: it cannot be cancelled half-way, and costs a finished request no
        trip through the event loop.
        """
        self.in_flight -= 1
        now = self._clock.monotonic()
        if throttled is not None:  # halve what was in flight, not a limit never reached
            self.limit = max(1.0, min(self.limit, self.in_flight + 1) / 2)
            self._hold_until = now + max(1.0, throttled)
            self._grown_at = now
        elif now >= self._hold_until and now - self._grown_at >= 1.0:
            self.limit = min(self.maximum, self.limit + max(1.0, self.limit / 4))
            self._grown_at = now
        for waiter in self._waiters:  # each looks again at the limit
            if not waiter.done():
                waiter.set_result(None)


class AuthHealth:
    """Whether the API server still accepts our credentials.

    Set by a 401 that survived a credential refresh, cleared by any other answer.
    ``/readyz`` fails at once while it is set, ``/healthz`` once it has lasted
    ``restart_after`` seconds, so the kubelet restarts a Pod whose credentials are
    gone for good (a restart re-reads everything from scratch).
    """

    def __init__(self, *, restart_after: float = 60.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.restart_after = restart_after
        self._clock = clock
        self.failing_since: float | None = None

    def rejected(self) -> None:
        if self.failing_since is None:
            self.failing_since = self._clock.monotonic()
            log.error("the API server rejects our credentials (401)")

    def accepted(self) -> None:
        if self.failing_since is not None:
            log.info("the API server accepts our credentials again")
        self.failing_since = None

    def ready(self) -> bool:
        return self.failing_since is None

    def alive(self) -> bool:
        return self.failing_since is None or (
            self._clock.monotonic() - self.failing_since < self.restart_after
        )


# asyncio gives every TLS connection a 256 KiB read buffer (``SSLProtocol.max_size``),
# allocated and zero-filled up front. Measured with 200 watched namespaces (800 watch
# connections): 319 MiB resident with that buffer, 117 MiB with 16 KiB, against 61 MiB
# for one namespace. A TLS record holds at most 16 KiB of plaintext, so a read still
# takes a whole record; larger reads only saved calls on multi-megabyte LISTs.
TLS_READ_BUFFER = 16 * 1024


def _small_tls_buffers() -> None:
    if asyncio.sslproto.SSLProtocol.max_size > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


@dataclass
class _Shared:
    """What every client of one API server shares: where it is, who we are, the caps."""

    config: ClientConfig
    metrics: Metrics
    user_agent: str
    budget: TokenBucket  # the global cap on retries
    auth: AuthHealth
    concurrency: Concurrency
    clock: Clock
    refreshed_at: float = -math.inf  # when a 401 last forced a credential refresh


class Kube:
    """Raw-JSON access to one API server.

    Requests go through a bounded pool of ``connections``; watches through a pool of
    their own with no limit (one connection per watch: aiohttp has no HTTP/2 to carry
    them all over one). :meth:`client` makes further clients of the same server with
    pools of their own (the Lease, the metrics endpoint's reviews); :meth:`close`
    closes them too.
    """

    def __init__(
        self,
        *,
        config: ClientConfig,
        metrics: Metrics,
        user_agent: str = "router-controller",
        connections: int = 64,
        retry: RetryPolicy | None = None,
        name: str = "requests",
        clock: Clock = SYSTEM_CLOCK,
        _shared: _Shared | None = None,
        _capped: bool = True,
    ) -> None:
        _small_tls_buffers()
        policy = retry or RetryPolicy()
        self._shared = _shared or _Shared(
            config=config,
            metrics=metrics,
            user_agent=user_agent,
            budget=TokenBucket(rate=policy.rate, burst=policy.burst, clock=clock),
            auth=AuthHealth(clock=clock),
            concurrency=Concurrency(connections, clock=clock),
            clock=clock,
        )
        self._config = config
        self._retry = policy
        self._capped = _capped
        self.name = name
        self._base = config.host
        self._host = urlsplit(self._base).netloc
        self._metrics = metrics
        self._connections = connections
        self._session = self._new_session(connections)
        self._watches: aiohttp.ClientSession | None = None
        self._children: list[Kube] = []

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        tls = self._config.tls
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=tls.context() if tls else False, limit=limit, enable_cleanup_closed=True
            ),
            headers={"User-Agent": self._shared.user_agent, "Accept": JSON},
            json_serialize=json.dumps,
        )

    def _watch_session(self) -> aiohttp.ClientSession:
        if self._watches is None:
            self._watches = self._new_session(0)  # 0: no limit
        return self._watches

    @classmethod
    async def connect(
        cls,
        *,
        kubeconfig: str | None,
        metrics: Metrics,
        user_agent: str = "router-controller",
        retry: RetryPolicy | None = None,
    ) -> Kube:
        return cls(
            config=await load_client_config(kubeconfig),
            metrics=metrics,
            user_agent=user_agent,
            retry=retry,
        )

    def client(
        self, name: str, *, connections: int, capped: bool = True, retry: RetryPolicy | None = None
    ) -> Kube:
        """Another client of the same server with its own connection pool.

        ``capped=False`` leaves it out of the global retry budget and the shared
        :class:`Concurrency` limit (the Lease: its renewal deadline bounds its retries,
        and no amount of other traffic may hold it back).
        """
        child = Kube(
            config=self._config,
            metrics=self._metrics,
            connections=connections,
            retry=retry or self._retry,
            name=name,
            _shared=self._shared,
            _capped=capped,
        )
        self._children.append(child)
        return child

    @property
    def host(self) -> str:
        return self._base

    @property
    def auth(self) -> AuthHealth:
        return self._shared.auth

    async def close(self) -> None:
        for child in self._children:
            await child.close()
        await self._session.close()
        if self._watches is not None:
            await self._watches.close()

    def _transport(self) -> dict[str, Any]:
        """Per-request TLS, SNI and proxy (the TLS context follows rotated files)."""
        tls = self._config.tls
        options: dict[str, Any] = {}
        if tls is not None:
            options["ssl"] = tls.context()
            if tls.server_name:
                options["server_hostname"] = tls.server_name
        if self._config.proxy:
            options["proxy"] = self._config.proxy
        return options

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        authorization = await self._config.credentials.header()
        if authorization:
            headers["Authorization"] = authorization
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _answered(self, status: int, headers: Mapping[str, str]) -> bool:
        """Note an answer; after a 401, refresh credentials: whether a retry may help."""
        if status != 401:
            self._shared.auth.accepted()
            return False
        used = headers.get("Authorization")
        credentials = self._config.credentials
        if await credentials.header() == used:  # nobody refreshed since this request left
            now = self._shared.clock.monotonic()
            if now - self._shared.refreshed_at >= REFRESH_AFTER_401_MIN:
                self._shared.refreshed_at = now
                await credentials.refresh()
        if await credentials.header() != used:
            return True
        self._shared.auth.rejected()
        return False

    def _retry_after(self, headers: Mapping[str, str]) -> float | None:
        return parse_retry_after(headers.get("Retry-After"), clock=self._shared.clock)

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
        """Send one request; return the decoded JSON body or raise an :class:`ApiError`.

        A 429, or a 5xx with ``Retry-After``, is retried after the time the server
        asks for (at most ``max_retries`` times, and only while the process-wide retry
        budget lasts); a 401 is retried once with refreshed credentials. ``timeout``
        bounds each attempt.
        """
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        retries = 0
        refreshed = False
        while True:
            headers = await self._headers(content_type if data is not None else None)
            gate = self._shared.concurrency if self._capped else None
            if gate is not None:
                await gate.acquire()
            status = 0
            try:
                async with self._session.request(
                    method,
                    self._base + path,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    **self._transport(),
                ) as response:
                    raw = await response.read()
                    status = response.status
                    self._count(status, method)
            except (aiohttp.ClientError, TimeoutError):
                self._count("<error>", method)
                raise
            finally:
                if gate is not None:
                    throttled = None
                    if status == 429:
                        throttled = self._retry_after(response.headers) or 1.0
                    gate.release(throttled=throttled)
            if await self._answered(status, headers) and not refreshed:
                refreshed = True
                continue
            try:
                decoded: Any = json.loads(raw) if raw else {}
            except ValueError:
                decoded = raw.decode(errors="replace")
            if status < 400:
                if not isinstance(decoded, dict):
                    raise ApiError(status, "BadResponse", "not a JSON object", method, path)
                return decoded
            error = error_from_status(
                status,
                decoded,
                method,
                path,
                retry_after=self._retry_after(response.headers),
            )
            wait = self._retry_wait(error, retries)
            if wait is None:
                raise error
            retries += 1
            self._metrics.rest_retries.labels(str(status), method, self._host).inc()
            log.debug("retrying", method=method, path=path, code=status, wait=wait, attempt=retries)
            await asyncio.sleep(wait)

    def _retry_wait(self, error: ApiError, retries: int) -> float | None:
        """How long to wait before retrying ``error``; None: do not retry."""
        if isinstance(error, TooManyRequests):
            wait = error.retry_after if error.retry_after is not None else 1.0
        elif isinstance(error, ServerError) and error.retry_after is not None:
            wait = error.retry_after
        else:
            return None
        if retries >= self._retry.max_retries:
            return None
        if self._capped and not self._shared.budget.take():
            return None
        return min(wait or self._retry.default_wait, self._retry.max_wait)

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
            headers = await self._headers(None)
            async with self._watch_session().get(
                self._base + path,
                params=query,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=stall_timeout),
                **self._transport(),
            ) as response:
                self._count(response.status, "GET")  # client-go counts a watch as a GET
                await self._answered(response.status, headers)  # the caller re-watches
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
                        retry_after=self._retry_after(response.headers),
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
    """Newline-delimited JSON lines, however long (readline() caps a line's length).

    A read during a burst holds dozens of events: each line is cut out once, and the
    rest of the read is not copied again for every line.
    """
    buffer = b""
    async for chunk in stream.iter_any():
        buffer = buffer + chunk if buffer else chunk
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.strip():
                yield line
        buffer = buffer[start:] if start else buffer
    if buffer.strip():
        yield buffer
