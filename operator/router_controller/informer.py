"""List + watch of one kind, per namespace or cluster-wide, into an in-memory cache.

This is client-go's reflector and indexer in one small piece. The reconciler reads
only from these caches, so a steady reconcile makes no GET. Each scope (a namespace,
or the whole cluster) has one watch task that:

- lists (paginated) and replaces its part of the cache, telling the handler about
  objects that appeared, changed or vanished while it was not watching. A page that
  fails (a 429 after the client's own retries, a 5xx, a dropped connection) is asked
  for again with the same continue token after a backoff, so a throttled list of a
  big cluster makes progress instead of starting over; a 410 on the continue token
  (etcd compacted past it) starts the list again;
- watches from the list's resourceVersion with bookmarks on and a server-side
  timeout, so the stream is renewed regularly and the resourceVersion keeps moving;
- on 410 Gone re-lists (and, if even that resourceVersion is gone, falls back to a
  fresh consistent list);
- on a line that is not a well-formed event (:class:`MalformedWatchEvent`), and on a
  watch that ends within a second without a single event, backs off and re-lists,
  as client-go's reflector does ("very short watch"): the first means the stream
  lost something, the second a server or proxy that answers at once, which must not
  be re-opened in a tight loop;
- on any other failure waits with jittered exponential backoff and watches again;
- abandons a stream that has been silent for longer than bookmarks allow (the
  "silent stall" that leaves many Python operators deaf until restarted).

Events are decoded as plain dicts and ``metadata.managedFields`` is dropped before
caching: it is often the largest part of an object and nothing here reads it. A
``transform`` goes further for kinds the operator does not own: it keeps only the
fields the operator reads (:func:`trim_service`, :func:`trim_endpointslice`), so
memory follows the StaticRoutes rather than the size of the cluster around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import aiohttp
import structlog

from router_controller.clock import SYSTEM_CLOCK, Clock
from router_controller.kube import (
    ApiError,
    Gone,
    Kube,
    MalformedWatchEvent,
    Object,
    Resource,
    ServerError,
    TooManyRequests,
    Unauthorized,
)
from router_controller.kube import ObjectKey as Key

# Maps an object to the index values it is filed under (e.g. its owner's uid).
Indexer = Callable[[Object], Iterable[str]]
# (event type: ADDED/MODIFIED/DELETED, the object, the cached object it replaces)
Handler = Callable[[str, Object, Object | None], None]
# Applied to every listed and watched object before it is cached or handled.
Transform = Callable[[Object], Object]

log = structlog.get_logger("informer")

# client-go's reflector: a watch that ends sooner than this without an event is an error.
SHORT_WATCH_SECONDS = 1.0
# An EndpointSlice holds up to 100 endpoints (the controller's default), some 25 KB
# of JSON and about nine times that decoded: a page of 500 is 14 MiB on the wire and
# some 130 MiB in memory before trimming. Pages of 50 keep that near 13 MiB.
ENDPOINTSLICE_PAGE_SIZE = 50
# Errors after which a page is asked for again with the same continue token.
_PAGE_RETRIED = (
    TooManyRequests, ServerError, Unauthorized, aiohttp.ClientError, TimeoutError, OSError,
)  # fmt: skip


def key_of(obj: Object) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


@dataclass(frozen=True, slots=True)
class WatchTuning:
    """Timing of the watch loop; tests shorten it."""

    page_size: int = 500
    server_timeout: tuple[int, int] = (300, 600)  # random in range, like client-go
    stall_timeout: float = 90.0  # > the server's 60 s bookmark interval
    backoff_initial: float = 0.8
    backoff_max: float = 30.0


class ShortWatch(Exception):
    """The watch ended at once with no event: a server or proxy that answers empty."""


class Informer:
    """Watches one kind in a set of scopes; serves reads from its cache."""

    def __init__(
        self,
        *,
        kube: Kube,
        resource: Resource,
        namespaces: list[str] | None,
        handler: Handler | None = None,
        label_selector: str | None = None,
        tuning: WatchTuning | None = None,
        indexers: Mapping[str, Indexer] | None = None,
        transform: Transform | None = None,
        page_size: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.resource = resource
        self._clock = clock
        self._kube = kube
        self._scopes: list[str | None] = list(namespaces) if namespaces else [None]
        self._handlers: list[Handler] = [handler] if handler is not None else []
        self._selector = label_selector
        self._tuning = tuning or WatchTuning()
        self._page_size = page_size or self._tuning.page_size
        self._transform = transform
        self._cache: dict[Key, Object] = {}
        self._by_namespace: dict[str, dict[Key, Object]] = {}
        self._indexers = dict(indexers or {})
        self._indices: dict[str, dict[str, dict[Key, Object]]] = {n: {} for n in self._indexers}
        self._synced_scopes: set[str | None] = set()
        self._creating: dict[Key, int] = {}  # keys the operator is creating, and how often
        self.synced = asyncio.Event()
        self.restarts = 0  # watch streams re-opened for any reason
        self.relists = 0  # lists after an expired (410) watch, a malformed event or a short watch
        self.resumed_pages = 0  # list pages asked for again with the same continue token
        self.tasks: list[asyncio.Task[None]] = []  # one watch task per scope, once started

    def add_handler(self, handler: Handler) -> None:
        """Tell ``handler`` too about every change (client-go's AddEventHandler).

        Register handlers before :meth:`start`: one added later misses the initial list.
        """
        self._handlers.append(handler)

    def _handler(self, kind: str, obj: Object, old: Object | None) -> None:
        for handler in self._handlers:
            handler(kind, obj, old)

    # -- reads -------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Object | None:
        return self._cache.get((namespace, name))

    def items(self, namespace: str | None = None) -> Iterator[Object]:
        source = self._cache if namespace is None else self._by_namespace.get(namespace, {})
        yield from list(source.values())

    def by_index(self, index: str, value: str) -> list[Object]:
        """Cached objects filed under ``value`` by the indexer named ``index``."""
        return list(self._indices[index].get(value, {}).values())

    def written(self, obj: Object, *, over: str | None, expected: Object | None = None) -> None:
        """Cache the result of the operator's own write now, not when the watch brings it.

        ``over`` is the resourceVersion the write was made against (None for a create).
        The result replaces the cached object only if the cache still holds that
        version (nothing for a create), so a newer object that the watch delivered
        meanwhile is never replaced by an older one. Reconciles that follow then see
        their own write, and make no second write from a stale copy (a 409); when the
        watch delivers the same version later, it is recognised and not handled again.

        ``expected`` is what the result should mostly look like (the object sent, or the
        cached one with the fields the write set): the parts of the result equal to it
        are cached as the expected object has them (see :func:`compact`'s ``like``),
        instead of being compacted again. By default it is the version written over.
        """
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name") or not meta.get("resourceVersion"):
            return
        key = key_of(obj)
        cached = self._cache.get(key)
        if _version_of(cached) == over:
            self._store(key, self._prepare(obj, like=cached if expected is None else expected))

    @contextlib.contextmanager
    def creating(self, key: Key) -> Iterator[None]:
        """Around the operator's own create of ``key``: its ``ADDED`` event is only cached.

        The watch often delivers a new object before the create's answer arrives; its
        handler would then queue a second reconcile of the object's owner, which is
        still in the reconcile that made the create and will see its result (the
        answer, or on a failed create its error and the retry that follows). So an
        ``ADDED`` event for ``key`` while the create is in flight is cached but not
        handled; any later event (a change, a delete) is handled as always.
        """
        self._creating[key] = self._creating.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._creating.pop(key) - 1
            if left:
                self._creating[key] = left

    def _store(self, key: Key, obj: Object) -> Object | None:
        previous = self._drop(key)
        self._cache[key] = obj
        self._by_namespace.setdefault(key[0], {})[key] = obj
        for name, indexer in self._indexers.items():
            for value in indexer(obj):
                self._indices[name].setdefault(value, {})[key] = obj
        return previous

    def _drop(self, key: Key) -> Object | None:
        previous = self._cache.pop(key, None)
        if previous is None:
            return None
        _discard(self._by_namespace, key[0], key)
        for name, indexer in self._indexers.items():
            for value in indexer(previous):
                _discard(self._indices[name], value, key)
        return previous

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def scopes(self) -> list[str | None]:
        return list(self._scopes)

    def _prepare(self, obj: Object, *, like: Object | None = None) -> Object:
        _slim(obj)
        if self._transform is None:
            return obj
        if like is not None and self._transform is compact:
            return compact(obj, like=like)
        return self._transform(obj)

    # -- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Run one watch task per scope until cancelled."""
        async with asyncio.TaskGroup() as group:
            self.tasks = [
                group.create_task(
                    self._run_scope(scope),
                    name=f"watch {self.resource.plural} in {scope or 'all namespaces'}",
                )
                for scope in self._scopes
            ]

    async def _run_scope(self, scope: str | None) -> None:
        bound = log.bind(resource=self.resource.plural, scope=scope or "*")
        resource_version = ""
        relist = True
        delay = self._tuning.backoff_initial
        while True:
            try:
                if relist:
                    try:
                        resource_version = await self._list(scope, resource_version)
                    except Gone:
                        resource_version = await self._list(scope, "")
                    relist = False
                    self._mark_synced(scope)
                resource_version = await self._watch(scope, resource_version)
                delay = self._tuning.backoff_initial
            except Gone:
                bound.info("watch expired, re-listing", resourceVersion=resource_version)
                self.relists += 1
                relist = True
            except (MalformedWatchEvent, ShortWatch) as err:
                bound.warning(
                    "watch stream unusable, re-listing after a backoff",
                    error=str(err),
                    retry_in=round(delay, 2),
                )
                self.relists += 1
                relist = True
                await asyncio.sleep(delay * random.uniform(1.0, 1.5))  # noqa: S311 - jitter
                delay = min(delay * 2, self._tuning.backoff_max)
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
                bound.warning("watch failed, retrying", error=str(err), retry_in=round(delay, 2))
                await asyncio.sleep(delay * random.uniform(1.0, 1.5))  # noqa: S311 - jitter
                delay = min(delay * 2, self._tuning.backoff_max)
            self.restarts += 1

    def _mark_synced(self, scope: str | None) -> None:
        self._synced_scopes.add(scope)
        if len(self._synced_scopes) == len(self._scopes):
            self.synced.set()

    def _in_scope(self, key: Key, scope: str | None) -> bool:
        return scope is None or key[0] == scope

    async def _list(self, scope: str | None, resource_version: str) -> str:
        """Replace this scope's part of the cache with a fresh list; return its resourceVersion."""
        path = self.resource.path(scope)
        first: dict[str, str] = {"limit": str(self._page_size)}
        if self._selector:
            first["labelSelector"] = self._selector
        if resource_version:
            first["resourceVersion"] = resource_version
            first["resourceVersionMatch"] = "NotOlderThan"
        fresh: dict[Key, Object] = {}
        params = first
        list_version = ""
        while True:
            try:
                page = await self._page(path, params)
            except Gone:
                if "continue" not in params:
                    raise
                log.info(
                    "list continue token expired, listing again from the start",
                    resource=self.resource.plural,
                    scope=scope or "*",
                )
                fresh, params = {}, first
                continue
            for item in page.get("items") or []:
                self._collect(fresh, item)
            meta = page.get("metadata") or {}
            list_version = meta.get("resourceVersion", list_version)
            token = meta.get("continue")
            if not token:
                break
            params = {"limit": str(self._page_size), "continue": str(token)}
            if self._selector:
                params["labelSelector"] = self._selector
        gone = [k for k in self._cache if self._in_scope(k, scope) and k not in fresh]
        for key in gone:
            removed = self._drop(key)
            if removed is not None:
                self._handler("DELETED", removed, removed)
        for key, obj in fresh.items():
            previous = self._store(key, obj)
            if previous is None:
                self._handler("ADDED", obj, None)
            elif previous is not obj and previous["metadata"].get("resourceVersion") != obj[
                "metadata"
            ].get("resourceVersion"):
                self._handler("MODIFIED", obj, previous)
        return str(list_version)

    def _collect(self, fresh: dict[Key, Object], item: Any) -> None:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            log.warning("listed item without metadata.name ignored", resource=self.resource.plural)
            return
        key = key_of(item)
        cached = self._cache.get(key)
        if cached is not None and cached["metadata"].get("resourceVersion") == meta.get(
            "resourceVersion"
        ):
            fresh[key] = cached  # unchanged: keep the cached copy, drop the decoded one at once
        else:
            fresh[key] = self._prepare(item)

    async def _page(self, path: str, params: dict[str, str]) -> Object:
        """One page of a list; a later page that fails is asked for again with its token.

        The first page's failures go to the caller, whose backoff then starts the list
        over, which is the same request.
        """
        delay = self._tuning.backoff_initial
        while True:
            try:
                return await self._kube.get(path, **params)
            except _PAGE_RETRIED as err:
                if "continue" not in params:
                    raise
                log.warning(
                    "list page failed, resuming from its continue token",
                    resource=self.resource.plural,
                    path=path,
                    error=str(err),
                    retry_in=round(delay, 2),
                )
                self.resumed_pages += 1
                retry_after = getattr(err, "retry_after", None) or 0.0
                await asyncio.sleep(max(retry_after, delay * random.uniform(1.0, 1.5)))  # noqa: S311
                delay = min(delay * 2, self._tuning.backoff_max)

    async def _watch(self, scope: str | None, resource_version: str) -> str:
        low, high = self._tuning.server_timeout
        params = {
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(random.randint(low, high)),  # noqa: S311 - spreading only
        }
        if self._selector:
            params["labelSelector"] = self._selector
        started = self._clock.monotonic()
        events = 0
        async for event in self._kube.watch(
            self.resource.path(scope), params=params, stall_timeout=self._tuning.stall_timeout
        ):
            events += 1
            kind = event["type"]
            obj = event["object"]
            if kind == "ERROR":
                code = obj.get("code", 0)
                if code == 410:
                    raise Gone(
                        410, obj.get("reason", "Expired"), obj.get("message", ""), "WATCH", ""
                    )
                raise ApiError(code, obj.get("reason", ""), obj.get("message", ""), "WATCH", "")
            version = obj.get("metadata", {}).get("resourceVersion")
            if version:
                resource_version = version
            if kind == "BOOKMARK":
                continue
            key = key_of(obj)
            if kind == "DELETED":
                self._handler("DELETED", self._prepare(obj), self._drop(key))
            elif version and _version_of(self._cache.get(key)) == version:
                continue  # our own write, cached already (see written())
            elif kind == "ADDED" and key in self._creating:
                obj = self._prepare(obj)
                self._store(key_of(obj), obj)  # our own create, still in flight (creating())
            else:
                obj = self._prepare(obj, like=self._cache.get(key))
                key = key_of(obj)  # its strings shared, as the cache holds them
                self._handler(kind, obj, self._store(key, obj))
        if events == 0 and self._clock.monotonic() - started < SHORT_WATCH_SECONDS:
            raise ShortWatch(
                f"watch of {self.resource.path(scope)} ended within "
                f"{SHORT_WATCH_SECONDS:.0f}s without an event"
            )
        return resource_version


def _version_of(obj: Object | None) -> str | None:
    return None if obj is None else obj["metadata"].get("resourceVersion")


def _discard(table: dict[str, dict[Key, Object]], value: str, key: Key) -> None:
    bucket = table.get(value)
    if bucket is not None:
        bucket.pop(key, None)
        if not bucket:
            del table[value]


def _slim(obj: Object) -> None:
    meta: dict[str, Any] = obj.get("metadata", {})
    meta.pop("managedFields", None)


# -- compacting: the kinds the operator owns, kept whole but smaller ------------------

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Fields whose values repeat across objects (condition types, reasons, kinds, ...).
_SHARED_VALUES = frozenset(
    {"apiVersion", "kind", "namespace", "type", "status", "reason", "routingLogic",
     "serviceDiscovery", "app.kubernetes.io/managed-by"}
)  # fmt: skip


def compact(obj: Object, *, like: Object | None = None) -> Object:
    """The same object with its memory shared where objects repeat each other.

    For StaticRoutes and our ConfigMaps, which are cached whole: every key, and the
    values of the fields in ``_SHARED_VALUES``, are interned (a decoded JSON object has
    its own copy of every key string, about a third of a small object's size), and
    ``kubectl apply``'s last-applied annotation, a second copy of the whole spec that
    nothing here reads, is dropped.

    ``like`` is an object this one mostly repeats, already compact (the cached version
    it replaces, or the body of the write it answers): a field equal to ``like``'s is
    taken from ``like`` whole, so an unchanged ``spec`` or ``metadata.ownerReferences``
    costs one comparison instead of a copy. Cached objects are never modified in place,
    so sharing their parts is safe. A field is taken from ``like`` when it has the same
    type and compares equal; inside it, Python's equality counts ``1`` and ``true`` as
    equal, but the schemas of StaticRoutes and ConfigMaps give every field one type,
    so no field turns from one into the other.
    """
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            annotations = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
            meta["annotations"] = annotations
            if not annotations:
                del meta["annotations"]
    return _compact_dict(obj) if like is None else _compact_like(obj, like)


_ABSENT = object()


def _compact_like(obj: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        known = like.get(key, _ABSENT)
        if known is _ABSENT:
            out[sys.intern(key)] = _compact_value(key, value)
        elif type(known) is type(value) and known == value:
            out[sys.intern(key)] = known
        elif isinstance(value, dict) and isinstance(known, dict):
            out[sys.intern(key)] = _compact_like(value, known)
        else:
            out[sys.intern(key)] = _compact_value(key, value)
    return out


def _compact_value(key: str, value: Any) -> Any:
    if type(value) is str:
        return sys.intern(value) if key in _SHARED_VALUES else value
    if isinstance(value, dict):
        return _compact_dict(value)
    if isinstance(value, list):
        return _compact_list(value, key in _SHARED_VALUES)
    return value


# Every cached StaticRoute and ConfigMap goes through these once per change (the watch,
# and the answer to each of the operator's own writes), so they test a value's type
# before recursing: most values are strings, and a call per string cost more than
# the interning itself.


def _compact_dict(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if type(value) is str:
            if key in _SHARED_VALUES:
                value = sys.intern(value)
        elif isinstance(value, dict):
            value = _compact_dict(value)
        elif isinstance(value, list):
            value = _compact_list(value, key in _SHARED_VALUES)
        out[sys.intern(key)] = value
    return out


def _compact_list(items: list[Any], shared: bool) -> list[Any]:
    out: list[Any] = []
    for value in items:
        if isinstance(value, dict):
            value = _compact_dict(value)
        elif isinstance(value, list):
            value = _compact_list(value, shared)
        elif shared and isinstance(value, str):
            value = sys.intern(value)
        out.append(value)
    return out


# -- trimming: what the operator reads of the kinds it does not own --------------------

_KEPT_METADATA = (
    "name", "namespace", "uid", "resourceVersion", "labels", "generation", "deletionTimestamp",
)  # fmt: skip
_KEPT_SERVICE_SPEC = ("type", "clusterIP", "clusterIPs", "externalName", "ports")
_CONDITIONS = ("ready", "serving", "terminating")


def _trim_metadata(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        return {}
    kept = {k: meta[k] for k in _KEPT_METADATA if k in meta}
    if isinstance(kept.get("namespace"), str):
        kept["namespace"] = sys.intern(kept["namespace"])
    labels = kept.get("labels")
    if isinstance(labels, dict):
        kept["labels"] = {sys.intern(str(k)): v for k, v in labels.items()}
    return kept


def trim_service(svc: Object) -> Object:
    """A Service with only what routing and probing read: see CONTRACTS of the informer.

    metadata {name, namespace, uid, resourceVersion, labels, generation,
    deletionTimestamp}; spec {type, clusterIP, clusterIPs, externalName, ports}.
    """
    spec = svc.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    return {
        "metadata": _trim_metadata(svc.get("metadata")),
        "spec": {k: spec[k] for k in _KEPT_SERVICE_SPEC if k in spec},
    }


def trim_endpointslice(eps: Object) -> Object:
    """An EndpointSlice with metadata (as :func:`trim_service`), addressType, ports, and
    endpoints reduced to ``addresses`` and ``conditions``, packed (:class:`PackedEndpoints`).
    """
    trimmed: Object = {"metadata": _trim_metadata(eps.get("metadata"))}
    if "addressType" in eps:
        trimmed["addressType"] = eps["addressType"]
    endpoints = eps.get("endpoints")
    trimmed["endpoints"] = PackedEndpoints(endpoints if isinstance(endpoints, list) else [])
    if "ports" in eps:
        trimmed["ports"] = eps["ports"]
    return trimmed


class PackedEndpoints(Sequence[Object]):
    """An EndpointSlice's endpoints as ``{"addresses": [...], "conditions": {...}}``, packed.

    A slice holds up to 100 endpoints (1,000 with a raised limit); as dicts of lists of
    strings, one endpoint costs about 500 bytes of Python objects, so 10,000 slices of
    100 cost 500 MiB. Packed, the addresses of a slice are one string and the three
    conditions one byte per endpoint (absent, true or false each), about 15 bytes an
    endpoint. Reading yields fresh dicts with the same shape as the API's, so readers
    index them as usual; the slices are only ever read, never written back.
    """

    __slots__ = ("_addresses", "_conditions")

    def __init__(self, endpoints: Iterable[Any]) -> None:
        rows: list[str] = []
        flags = bytearray()
        for endpoint in endpoints:
            if not isinstance(endpoint, dict):
                continue
            addresses = endpoint.get("addresses")
            # Addresses are IPs or DNS names (validated by the API server): no spaces.
            rows.append(" ".join(map(str, addresses)) if isinstance(addresses, list) else "")
            flags.append(_pack_conditions(endpoint.get("conditions")))
        self._addresses = "\n".join(rows)
        self._conditions = bytes(flags)

    def __len__(self) -> int:
        return len(self._conditions)

    def __iter__(self) -> Iterator[Object]:
        rows = self._addresses.split("\n") if self._conditions else []
        for row, packed in zip(rows, self._conditions, strict=True):
            yield {"addresses": row.split(), "conditions": _unpack_conditions(packed)}

    @overload
    def __getitem__(self, index: int) -> Object: ...

    @overload
    def __getitem__(self, index: slice) -> list[Object]: ...

    def __getitem__(self, index: int | slice) -> Object | list[Object]:
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, like a list

    def __repr__(self) -> str:
        return f"PackedEndpoints({list(self)!r})"


def _pack_conditions(conditions: Any) -> int:
    packed = 0
    if isinstance(conditions, dict):
        for i, name in enumerate(_CONDITIONS):
            value = conditions.get(name)
            if isinstance(value, bool):
                packed |= (1 if value else 2) << (2 * i)
    return packed


def _unpack_conditions(packed: int) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for i, name in enumerate(_CONDITIONS):
        bits = (packed >> (2 * i)) & 3
        if bits:
            out[name] = bits == 1
    return out
