"""The /metrics token reviews: cached both ways, coalesced, throttled, evicted one at a time.

A fake review (behind :class:`router_controller.metricsauth.Review`) answers from a
table and counts its calls; a fake clock moves time by hand. The real reviews against
the API server are tested in tests/e2e/test_metrics_hardening.py.
"""

from __future__ import annotations

import asyncio

import pytest

from router_controller.kube import ApiError
from router_controller.metrics import Metrics
from router_controller.metricsauth import (
    ALLOWED_TTL,
    REFUSED_TTL,
    MetricsAuth,
)
from tests.unit.fakeclock import FakeClock


class Review:
    """Answers 200 for ``reader``, 403 for ``stranger``, 401 for anything else."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.started = asyncio.Event()
        self.hold: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def __call__(self, token: str) -> int:
        self.calls.append(token)
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        return {"reader": 200, "stranger": 403}.get(token, 401)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def auth(
    review: Review, clock: FakeClock, metrics: Metrics | None = None, **limits: int
) -> MetricsAuth:
    return MetricsAuth(
        review=review, metrics=metrics or Metrics(process=False), clock=clock, **limits
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_missing_or_non_bearer_header_is_401_without_a_review() -> None:
    review = Review()
    checker = auth(review, FakeClock(1000.0))
    for header in (None, "", "Basic dXNlcjpwdw==", "Bearer ", "Bearer"):
        assert await checker.status_for(header) == 401
    assert review.calls == []


async def test_an_allowed_token_is_reviewed_once_a_minute() -> None:
    review, clock, metrics = Review(), FakeClock(1000.0), Metrics(process=False)
    checker = auth(review, clock, metrics)
    assert await checker.status_for(bearer("reader")) == 200
    clock.advance(ALLOWED_TTL - 1)
    assert await checker.status_for(bearer("reader")) == 200
    assert review.calls == ["reader"]
    clock.advance(2)
    assert await checker.status_for(bearer("reader")) == 200
    assert review.calls == ["reader", "reader"]
    assert sample(metrics, "router_controller_metrics_auth_reviews_total", result="allowed") == 2


async def test_refusals_are_cached_for_30_seconds() -> None:
    review, clock = Review(), FakeClock(1000.0)
    checker = auth(review, clock)
    assert await checker.status_for(bearer("stranger")) == 403
    assert await checker.status_for(bearer("made-up")) == 401
    clock.advance(REFUSED_TTL - 1)
    assert await checker.status_for(bearer("stranger")) == 403
    assert await checker.status_for(bearer("made-up")) == 401
    assert review.calls == ["stranger", "made-up"]
    clock.advance(2)
    assert await checker.status_for(bearer("stranger")) == 403
    assert review.calls == ["stranger", "made-up", "stranger"]


async def test_concurrent_requests_with_one_token_share_one_review() -> None:
    review = Review()
    review.hold = asyncio.Event()
    checker = auth(review, FakeClock(1000.0))
    waiters = [asyncio.create_task(checker.status_for(bearer("reader"))) for _ in range(20)]
    await review.started.wait()  # every waiter has run by now: they were started first
    waiters[0].cancel()  # a caller that goes away does not cancel the others' review
    review.hold.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == [200] * 19
    assert review.calls == ["reader"]
    assert waiters[0].cancelled()


async def test_unknown_tokens_beyond_the_burst_get_429_without_a_review() -> None:
    review, clock, metrics = Review(), FakeClock(1000.0), Metrics(process=False)
    checker = auth(review, clock, metrics, rate=1, burst=3)
    answers = [await checker.status_for(bearer(f"random-{i}")) for i in range(5)]
    assert answers == [401, 401, 401, 429, 429]
    assert len(review.calls) == 3
    assert checker.retry_after == 1
    assert sample(metrics, "router_controller_metrics_auth_throttled_total") == 2
    # A cached refusal needs no permit: it is answered from the cache.
    assert await checker.status_for(bearer("random-0")) == 401
    clock.advance(1.0)  # one permit again
    assert await checker.status_for(bearer("random-5")) == 401
    assert await checker.status_for(bearer("random-6")) == 429
    assert len(review.calls) == 4


async def test_a_token_allowed_before_is_reviewed_again_without_a_permit() -> None:
    review, clock = Review(), FakeClock(1000.0)
    checker = auth(review, clock, rate=1, burst=2)
    assert await checker.status_for(bearer("reader")) == 200
    clock.advance(ALLOWED_TTL + 1)  # expired; the bucket is full again
    assert [await checker.status_for(bearer(f"random-{i}")) for i in range(3)] == [401, 401, 429]
    assert await checker.status_for(bearer("reader")) == 200  # re-reviewed, not throttled
    assert review.calls.count("reader") == 2
    # A new token still finds no permit.
    assert await checker.status_for(bearer("another-reader")) == 429


async def test_a_flood_of_refused_tokens_never_evicts_an_allowed_one() -> None:
    review, clock = Review(), FakeClock(1000.0)
    checker = auth(review, clock, rate=1000, burst=1000, refused_entries=4)
    assert await checker.status_for(bearer("reader")) == 200
    for i in range(50):
        assert await checker.status_for(bearer(f"random-{i}")) == 401
    assert checker.cached == (1, 4)
    assert await checker.status_for(bearer("reader")) == 200
    assert review.calls.count("reader") == 1


async def test_a_full_cache_drops_its_least_recently_used_entry_only() -> None:
    review, clock = Review(), FakeClock(1000.0)
    checker = auth(review, clock, rate=1000, burst=1000, refused_entries=3)
    for token in ("a", "b", "c"):
        await checker.status_for(bearer(token))
    await checker.status_for(bearer("a"))  # a is now used more recently than b
    await checker.status_for(bearer("d"))  # the cache is full: b goes, nothing else
    assert review.calls == ["a", "b", "c", "d"]
    for token in ("a", "c", "d"):
        await checker.status_for(bearer(token))
    assert review.calls == ["a", "b", "c", "d"]
    await checker.status_for(bearer("b"))
    assert review.calls == ["a", "b", "c", "d", "b"]


@pytest.mark.parametrize(
    "error",
    [TimeoutError(), ApiError(503, "ServiceUnavailable", "down", "POST", "/apis")],
    ids=["timeout", "api-error"],
)
async def test_errors_are_not_cached(error: BaseException) -> None:
    review, clock, metrics = Review(), FakeClock(1000.0), Metrics(process=False)
    checker = auth(review, clock, metrics)
    review.error = error
    with pytest.raises(type(error)):
        await checker.status_for(bearer("reader"))
    review.error = None
    assert await checker.status_for(bearer("reader")) == 200
    assert review.calls == ["reader", "reader"]
    assert sample(metrics, "router_controller_metrics_auth_reviews_total", result="error") == 1


async def test_close_cancels_reviews_still_running() -> None:
    review = Review()
    review.hold = asyncio.Event()
    checker = auth(review, FakeClock(1000.0))
    waiter = asyncio.create_task(checker.status_for(bearer("reader")))
    await review.started.wait()
    await checker.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
