"""List + watch of one kind, per namespace or cluster-wide, into an in-memory cache.

This is client-go's reflector and indexer in one small piece. The reconciler reads
only from these caches, so a steady reconcile makes no GET. Each scope (a namespace,
or the whole cluster) has one watch task that:

- lists (paginated) and replaces its part of the cache, telling the handler about
  objects that appeared, changed or vanished while it was not watching;
- watches from the list's resourceVersion with bookmarks on and a server-side
  timeout, so the stream is renewed regularly and the resourceVersion keeps moving;
- on 410 Gone re-lists (and, if even that resourceVersion is gone, falls back to a
  fresh consistent list);
- on any other failure waits with jittered exponential backoff and watches again;
- abandons a stream that has been silent for longer than bookmarks allow (the
  "silent stall" that leaves many Python operators deaf until restarted).

Events are decoded as plain dicts and ``metadata.managedFields`` is dropped before
caching: it is often the largest part of an object and nothing here reads it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from router_controller.kube import ApiError, Gone, Kube, Object, Resource

Key = tuple[str, str]
# Maps an object to the index values it is filed under (e.g. its owner's uid).
Indexer = Callable[[Object], Iterable[str]]
# (event type: ADDED/MODIFIED/DELETED, the object, the cached object it replaces)
Handler = Callable[[str, Object, Object | None], None]

log = structlog.get_logger("informer")


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


class Informer:
    """Watches one kind in a set of scopes; serves reads from its cache."""

    def __init__(
        self,
        *,
        kube: Kube,
        resource: Resource,
        namespaces: list[str] | None,
        handler: Handler,
        label_selector: str | None = None,
        tuning: WatchTuning | None = None,
        indexers: Mapping[str, Indexer] | None = None,
    ) -> None:
        self.resource = resource
        self._kube = kube
        self._scopes: list[str | None] = list(namespaces) if namespaces else [None]
        self._handler = handler
        self._selector = label_selector
        self._tuning = tuning or WatchTuning()
        self._cache: dict[Key, Object] = {}
        self._by_namespace: dict[str, dict[Key, Object]] = {}
        self._indexers = dict(indexers or {})
        self._indices: dict[str, dict[str, dict[Key, Object]]] = {n: {} for n in self._indexers}
        self._synced_scopes: set[str | None] = set()
        self.synced = asyncio.Event()
        self.restarts = 0  # watch streams re-opened for any reason
        self.relists = 0  # lists after an expired (410) watch
        self.tasks: list[asyncio.Task[None]] = []  # one watch task per scope, once started

    # -- reads -------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Object | None:
        return self._cache.get((namespace, name))

    def items(self, namespace: str | None = None) -> Iterator[Object]:
        source = self._cache if namespace is None else self._by_namespace.get(namespace, {})
        yield from list(source.values())

    def by_index(self, index: str, value: str) -> list[Object]:
        """Cached objects filed under ``value`` by the indexer named ``index``."""
        return list(self._indices[index].get(value, {}).values())

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
        fresh: dict[Key, Object] = {}
        params: dict[str, str] = {"limit": str(self._tuning.page_size)}
        if self._selector:
            params["labelSelector"] = self._selector
        if resource_version:
            params["resourceVersion"] = resource_version
            params["resourceVersionMatch"] = "NotOlderThan"
        list_version = ""
        while True:
            page = await self._kube.get(self.resource.path(scope), **params)
            for item in page.get("items", []):
                _slim(item)
                fresh[key_of(item)] = item
            meta = page.get("metadata", {})
            list_version = meta.get("resourceVersion", list_version)
            token = meta.get("continue")
            if not token:
                break
            params = {"limit": str(self._tuning.page_size), "continue": token}
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
            elif previous["metadata"].get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self._handler("MODIFIED", obj, previous)
        return str(list_version)

    async def _watch(self, scope: str | None, resource_version: str) -> str:
        low, high = self._tuning.server_timeout
        params = {
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(random.randint(low, high)),  # noqa: S311 - spreading only
        }
        if self._selector:
            params["labelSelector"] = self._selector
        async for event in self._kube.watch(
            self.resource.path(scope), params=params, stall_timeout=self._tuning.stall_timeout
        ):
            kind = event.get("type")
            obj = event.get("object") or {}
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
            _slim(obj)
            key = key_of(obj)
            if kind == "DELETED":
                self._handler("DELETED", obj, self._drop(key))
            else:
                self._handler(kind or "MODIFIED", obj, self._store(key, obj))
        return resource_version


def _discard(table: dict[str, dict[Key, Object]], value: str, key: Key) -> None:
    bucket = table.get(value)
    if bucket is not None:
        bucket.pop(key, None)
        if not bucket:
            del table[value]


def _slim(obj: Object) -> None:
    meta: dict[str, Any] = obj.get("metadata", {})
    meta.pop("managedFields", None)
