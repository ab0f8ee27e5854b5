"""The one clock and the one way timestamps are written and read (router_controller.clock)."""

from __future__ import annotations

import asyncio
import datetime
import re

import pytest

from router_controller.clock import (
    SYSTEM_CLOCK,
    format_micro_time,
    format_time,
    parse_time,
)
from tests.unit.fakeclock import FakeClock

PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_time_is_rfc3339_utc_in_whole_seconds() -> None:
    moment = datetime.datetime(2024, 5, 6, 9, 8, 7, 999999, tzinfo=PLUS_TWO)
    assert format_time(moment) == "2024-05-06T07:08:07Z"  # truncated, as metav1.Time
    assert format_time(datetime.datetime(2024, 5, 6, 7, 8, 7)) == "2024-05-06T07:08:07Z"


def test_micro_time_is_rfc3339_utc_with_microseconds() -> None:
    moment = datetime.datetime(2024, 5, 6, 9, 8, 7, 5, tzinfo=PLUS_TWO)
    assert format_micro_time(moment) == "2024-05-06T07:08:07.000005Z"
    naive = datetime.datetime(2024, 5, 6, 7, 8, 7)  # taken as UTC, never as local time
    assert format_micro_time(naive) == "2024-05-06T07:08:07.000000Z"
    assert MICRO_TIME.match(format_micro_time(datetime.datetime.now(datetime.UTC)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:10Z", datetime.datetime(2026, 1, 1, 0, 0, 10, tzinfo=datetime.UTC)),
        (
            "2026-01-01T00:00:10.000250Z",
            datetime.datetime(2026, 1, 1, 0, 0, 10, 250, tzinfo=datetime.UTC),
        ),
        ("2026-01-01T02:00:10+02:00", datetime.datetime(2026, 1, 1, 0, 0, 10, tzinfo=datetime.UTC)),
        ("2026-01-01T00:00:10", datetime.datetime(2026, 1, 1, 0, 0, 10, tzinfo=datetime.UTC)),
        ("not a time", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_time_reads_both_precisions_and_any_offset_as_utc(
    text: str | None, expected: datetime.datetime | None
) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo == datetime.UTC


def test_what_is_written_reads_back() -> None:
    moment = datetime.datetime(2024, 5, 6, 7, 8, 7, 123456, tzinfo=datetime.UTC)
    assert parse_time(format_micro_time(moment)) == moment
    assert parse_time(format_time(moment)) == moment.replace(microsecond=0)


async def test_the_system_clock_is_the_event_loops_clock() -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    reading = SYSTEM_CLOCK.monotonic()
    after = loop.time()
    assert before <= reading <= after
    deadline = SYSTEM_CLOCK.monotonic() + 0.01
    await SYSTEM_CLOCK.sleep_until(deadline)
    assert loop.time() >= deadline - 1e-3  # the loop runs timers within its resolution
    now = SYSTEM_CLOCK.now()
    assert now.tzinfo == datetime.UTC


async def test_the_fake_clock_moves_wall_and_monotonic_time_together() -> None:
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    clock = FakeClock(5.0, wall=start)
    sleeper = asyncio.create_task(clock.sleep_until(7.0))
    await asyncio.sleep(0)
    assert clock.sleeping_until() == [7.0]
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.set(7.0)
    await sleeper
    assert clock.monotonic() == 7.0
    assert clock.now() == start + datetime.timedelta(seconds=2)
