"""The token bucket shared by the retry budget, the metrics reviews and the Events."""

from __future__ import annotations

import pytest

from router_controller.ratelimit import TokenBucket
from tests.unit.fakeclock import FakeClock


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock(1000.0)
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take()
    assert not bucket.take()
    clock.advance(100)  # saved permits never exceed the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
