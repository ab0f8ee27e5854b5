"""Who may read ``/metrics``: TokenReview and SubjectAccessReview, cached, coalesced, throttled.

Every HTTPS scrape carries a bearer token that the API server must vouch for: a
TokenReview authenticates it, a SubjectAccessReview checks ``get`` on the non-resource
URL ``/metrics`` (the ``metrics-reader`` ClusterRole). Anyone who can reach the port
can send tokens, so the reviews are what a stranger could otherwise spend: each made-up
token would cost the API server (and this operator's API budget, shared with its Lease
and its reconciles) two calls. This module bounds that cost.

- **Cached answers, both ways.** controller-runtime's ``WithAuthenticationAndAuthorization``
  caches TokenReviews for 1 minute (successes and failures alike) and
  SubjectAccessReviews for 5 minutes when allowed, 30 seconds when denied. One token's
  review here covers both calls, so its answer is cached for the shorter of the two
  applicable TTLs: ``ALLOWED_TTL`` (1 min) for a token allowed to read, ``REFUSED_TTL``
  (30 s) for one that is unknown (401) or not allowed (403) — a refusal is forgotten
  sooner so that a token just granted ``metrics-reader`` works within half a minute.
  Errors (API down, timeouts) are never cached, as in client-go's token cache.
- **Bounded LRU, two pools.** Allowed and refused answers live in separate LRU maps
  (``ALLOWED_ENTRIES``, ``REFUSED_ENTRIES``); when one is full only its least recently
  used entry goes. A flood of bogus tokens can therefore never evict Prometheus's
  entry, and the cache is never flushed as a whole. Keys are HMAC-SHA256 digests under
  a per-process key, as kube-apiserver's token cache keys them: raw tokens are never
  kept, and keys cannot be precomputed.
- **Coalesced.** Concurrent requests with the same token wait for one review (what
  client-go's cached token authenticator does with a ``singleflight.Group``); the review
  runs as a task of its own, so a caller that disconnects does not cancel it for the
  others.
- **Throttled for unknown tokens.** A token with no cached answer, never seen allowed,
  needs a permit from a token bucket (``UNKNOWN_TOKEN_RATE`` per second, burst
  ``UNKNOWN_TOKEN_BURST``) before it is reviewed; without one the request gets 429 and
  ``Retry-After``, and no API call is made. A token that was allowed before (an expired
  allowed entry still in its pool) is re-reviewed without a permit, so Prometheus keeps
  scraping through a flood. A Prometheus token that is new during a flood competes for
  permits with the flood; the NetworkPolicy in ``config/network-policy`` is what keeps
  strangers off the port in the first place.
- **Bounded in time.** A review gives up after ``REVIEW_TIMEOUT`` (controller-runtime's
  ``TokenAccessReviewTimeout``, 10 s); the request then gets 500, like an API error.

The reviews go through the API client handed in (its own connections, apart from the
Lease's and the reconcilers'), so even a slow review never holds up those.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Protocol

from router_controller.clock import SYSTEM_CLOCK, Clock
from router_controller.kube import Kube
from router_controller.metrics import Metrics
from router_controller.ratelimit import TokenBucket

ALLOWED_TTL = 60.0
REFUSED_TTL = 30.0
ALLOWED_ENTRIES = 256
REFUSED_ENTRIES = 1024
UNKNOWN_TOKEN_RATE = 5.0  # reviews per second for tokens with no cached answer
UNKNOWN_TOKEN_BURST = 10
REVIEW_TIMEOUT = 10.0

OK, UNAUTHORIZED, FORBIDDEN, TOO_MANY_REQUESTS = 200, 401, 403, 429
_RESULTS = {OK: "allowed", UNAUTHORIZED: "unauthenticated", FORBIDDEN: "forbidden"}


class Review(Protocol):
    """Ask the API server about one bearer token: 200 (allowed), 401 or 403."""

    def __call__(self, token: str) -> Awaitable[int]: ...


class _Lru:
    """An LRU map of digest -> (expiry, status) that drops its oldest entry when full."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[bytes, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> tuple[float, int] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, expires: float, status: int) -> None:
        self._entries[key] = (expires, status)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def pop(self, key: bytes) -> None:
        self._entries.pop(key, None)


class MetricsAuth:
    """The answer (200, 401, 403 or 429) for a request's Authorization header."""

    def __init__(
        self,
        *,
        review: Review,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
        rate: float = UNKNOWN_TOKEN_RATE,
        burst: int = UNKNOWN_TOKEN_BURST,
        allowed_entries: int = ALLOWED_ENTRIES,
        refused_entries: int = REFUSED_ENTRIES,
    ) -> None:
        self._review = review
        self._metrics = metrics
        self._clock = clock
        self._bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
        self._allowed = _Lru(allowed_entries)
        self._refused = _Lru(refused_entries)
        self._inflight: dict[bytes, asyncio.Task[int]] = {}
        self._secret = os.urandom(32)

    @property
    def retry_after(self) -> int:
        """Whole seconds a throttled client should wait (the ``Retry-After`` header)."""
        return max(1, math.ceil(self._bucket.wait_time()))

    @property
    def cached(self) -> tuple[int, int]:
        """How many (allowed, refused) answers are cached."""
        return len(self._allowed), len(self._refused)

    async def status_for(self, header: str | None) -> int:
        """200, 401, 403 or 429 for a request with this Authorization header.

        Raises what the review raises (API errors, timeouts); those are not cached.
        """
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return UNAUTHORIZED
        key = hmac.digest(self._secret, token.encode(), hashlib.sha256)
        now = self._clock.monotonic()
        allowed = self._allowed.get(key)
        if allowed is not None and allowed[0] > now:
            return OK
        refused = self._refused.get(key)
        if refused is not None and refused[0] > now:
            return refused[1]
        task = self._inflight.get(key)
        if task is None:
            # A token never allowed before needs a permit; one allowed before does not.
            if allowed is None and not self._bucket.take():
                self._metrics.metrics_auth_throttled.inc()
                return TOO_MANY_REQUESTS
            task = asyncio.create_task(self._run(key, token), name="metrics token review")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    async def _run(self, key: bytes, token: str) -> int:
        try:
            async with asyncio.timeout(REVIEW_TIMEOUT):
                status = await self._review(token)
        except BaseException:
            self._metrics.metrics_auth_reviews.labels("error").inc()
            raise
        self._metrics.metrics_auth_reviews.labels(_RESULTS.get(status, "error")).inc()
        now = self._clock.monotonic()
        if status == OK:
            self._refused.pop(key)
            self._allowed.put(key, now + ALLOWED_TTL, status)
        else:
            self._allowed.pop(key)
            self._refused.put(key, now + REFUSED_TTL, status)
        return status

    def _finished(self, key: bytes, task: asyncio.Task[int]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # seen here, so an error no caller waited for is not reported

    async def close(self) -> None:
        """Cancel reviews still running (on shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class KubeReview:
    """The real :class:`Review`: a TokenReview, then a SubjectAccessReview for the user."""

    def __init__(self, *, kube: Kube) -> None:
        self._kube = kube

    async def __call__(self, token: str) -> int:
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
            return UNAUTHORIZED
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
        return OK if (sar.get("status") or {}).get("allowed") else FORBIDDEN
