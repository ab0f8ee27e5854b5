"""WorkQueue: dedup, one worker per key, delayed and rate-limited adds, drain, metrics.

Time is a fake clock that only moves when a test moves it; the queue's timer and the
shutdown deadline both sleep on it, so nothing here waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable

import pytest

from router_controller.clock import SYSTEM_CLOCK
from router_controller.reconcile import Key
from router_controller.workqueue import (
    DEFAULT_BACKOFF_CAP,
    ExponentialBackoff,
    ShutDown,
    WorkQueue,
)
from tests.unit.fakeclock import FakeClock

A: Key = ("default", "a")
B: Key = ("default", "b")
C: Key = ("other", "c")


class RecordingMetrics:
    def __init__(self) -> None:
        self.adds = 0
        self.depths: list[int] = []
        self.latencies: list[float] = []
        self.durations: list[float] = []
        self.retries = 0

    def add(self) -> None:
        self.adds += 1

    def depth(self, n: int) -> None:
        self.depths.append(n)

    def queue_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def work_duration(self, seconds: float) -> None:
        self.durations.append(seconds)

    def retry(self) -> None:
        self.retries += 1


async def until(predicate: Callable[[], bool], *, turns: int = 100) -> None:
    """Let other tasks run until ``predicate`` holds; fail after ``turns`` loop turns."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def settle(turns: int = 20) -> None:
    """Give every runnable task a chance to run, before asserting that nothing happened."""
    for _ in range(turns):
        await asyncio.sleep(0)


def just_before(t: float) -> float:
    return math.nextafter(t, -math.inf)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def queue(clock: FakeClock) -> AsyncIterator[WorkQueue[Key]]:
    q = WorkQueue[Key](name="test", clock=clock)
    yield q
    await q.shutdown(drain_timeout=0)


async def get_soon(q: WorkQueue[Key]) -> Key:
    return await asyncio.wait_for(q.get(), timeout=5)


# --- dedup, order, exclusivity ---------------------------------------------------------


async def test_a_waiting_key_is_held_once(queue: WorkQueue[Key]) -> None:
    for key in (A, A, B, A, B):
        queue.add(key)
    assert len(queue) == 2
    assert queue.depth == 2
    assert await get_soon(queue) == A
    assert await get_soon(queue) == B
    assert len(queue) == 0
    blocked = asyncio.create_task(queue.get())
    await settle()
    assert not blocked.done()
    blocked.cancel()


async def test_keys_are_handed_out_in_the_order_they_were_added(queue: WorkQueue[Key]) -> None:
    for key in (C, A, B):
        queue.add(key)
    assert [await get_soon(queue) for _ in range(3)] == [C, A, B]


async def test_a_key_in_flight_is_not_handed_out_again_until_done(queue: WorkQueue[Key]) -> None:
    queue.add(A)
    assert await get_soon(queue) == A
    queue.add(A)
    assert queue.depth == 1  # waiting, but for the worker holding it to finish
    second = asyncio.create_task(queue.get())
    await settle()
    assert not second.done()
    queue.add(B)
    assert await asyncio.wait_for(second, timeout=5) == B
    queue.done(A)
    assert await get_soon(queue) == A
    queue.done(A)
    queue.done(B)
    assert queue.depth == 0


async def test_a_key_done_without_re_add_is_not_handed_out_again(queue: WorkQueue[Key]) -> None:
    queue.add(A)
    queue.done(await get_soon(queue))
    blocked = asyncio.create_task(queue.get())
    await settle()
    assert not blocked.done()
    blocked.cancel()


async def test_done_for_a_key_not_in_flight_is_an_error(queue: WorkQueue[Key]) -> None:
    queue.add(A)
    with pytest.raises(ValueError, match="not in flight"):
        queue.done(A)
    assert await get_soon(queue) == A


async def test_a_cancelled_getter_passes_its_key_on(queue: WorkQueue[Key]) -> None:
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await settle()
    queue.add(A)  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, timeout=5) == A
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_many_workers_never_share_a_key_and_miss_no_re_add(clock: FakeClock) -> None:
    rng = random.Random(20240611)  # noqa: S311 - test input, not security
    q = WorkQueue[Key](clock=clock)
    keys = [("ns", f"k{i}") for i in range(12)]
    tick = itertools.count()
    last_add: dict[Key, int] = {}
    last_start: dict[Key, int] = {}
    held: set[Key] = set()
    shared: list[Key] = []
    re_added_in_flight = 0

    async def worker() -> None:
        while True:
            try:
                key = await q.get()
            except ShutDown:
                return
            if key in held:
                shared.append(key)
            held.add(key)
            last_start[key] = next(tick)
            try:
                for _ in range(rng.randrange(5)):
                    await asyncio.sleep(0)
            finally:
                held.discard(key)
                q.done(key)

    workers = [asyncio.create_task(worker(), name=f"worker-{i}") for i in range(8)]
    for _ in range(3000):
        key = rng.choice(keys)
        if key in held:
            re_added_in_flight += 1
        last_add[key] = next(tick)
        q.add(key)
        if rng.random() < 0.4:
            await asyncio.sleep(0)

    async with asyncio.timeout(10):
        assert await q.shutdown(drain_timeout=60)  # the fake clock never reaches the deadline
        await asyncio.gather(*workers)

    assert shared == []
    assert re_added_in_flight > 0, "the race never re-added a key in flight"
    assert set(last_start) == set(last_add)
    missed = [key for key in last_add if last_start[key] < last_add[key]]
    assert missed == []


# --- delayed adds ------------------------------------------------------------------------


async def test_add_after_fires_at_the_due_time_and_not_before(
    queue: WorkQueue[Key], clock: FakeClock
) -> None:
    due = clock.monotonic() + 5
    queue.add_after(A, 5)
    await until(lambda: clock.sleeping_until() == [due])
    assert len(queue) == 0
    clock.set(just_before(due))
    await settle()
    assert len(queue) == 0
    clock.set(due)
    assert await get_soon(queue) == A


@pytest.mark.parametrize(("first", "second"), [(10.0, 5.0), (5.0, 10.0)])
async def test_add_after_keeps_the_earliest_due_time(
    queue: WorkQueue[Key], clock: FakeClock, first: float, second: float
) -> None:
    start = clock.monotonic()
    queue.add_after(A, first)
    await settle()
    queue.add_after(A, second)
    clock.set(just_before(start + 5))
    await settle()
    assert len(queue) == 0
    clock.set(start + 5)
    assert await get_soon(queue) == A
    queue.done(A)
    clock.set(start + 10)  # the later request was absorbed: nothing fires now
    await settle()
    assert len(queue) == 0
    assert clock.sleeping_until() == []


async def test_an_earlier_key_wakes_a_timer_sleeping_for_a_later_one(
    queue: WorkQueue[Key], clock: FakeClock
) -> None:
    start = clock.monotonic()
    queue.add_after(A, 10)
    await until(lambda: clock.sleeping_until() == [start + 10])
    queue.add_after(B, 3)
    await until(lambda: clock.sleeping_until() == [start + 3])
    clock.set(start + 3)
    assert await get_soon(queue) == B
    await until(lambda: clock.sleeping_until() == [start + 10])
    assert len(queue) == 0
    clock.set(start + 10)
    assert await get_soon(queue) == A


async def test_delayed_keys_arrive_in_due_order(queue: WorkQueue[Key], clock: FakeClock) -> None:
    queue.add_after(C, 3)
    queue.add_after(A, 1)
    queue.add_after(B, 2)
    clock.advance(5)
    assert [await get_soon(queue) for _ in range(3)] == [A, B, C]


@pytest.mark.parametrize("delay", [0.0, -1.0])
async def test_add_after_without_delay_adds_now(queue: WorkQueue[Key], delay: float) -> None:
    queue.add_after(A, delay)
    assert len(queue) == 1
    assert await get_soon(queue) == A


async def test_a_delayed_key_already_waiting_is_not_duplicated(
    queue: WorkQueue[Key], clock: FakeClock
) -> None:
    queue.add(A)
    queue.add_after(A, 1)
    clock.advance(1)
    await settle()
    assert len(queue) == 1
    assert await get_soon(queue) == A


# --- rate-limited adds ------------------------------------------------------------------


def test_backoff_doubles_from_5ms_and_is_capped_at_1000s() -> None:
    backoff = ExponentialBackoff[Key]()
    delays = [backoff.when(A) for _ in range(25)]
    assert delays[:5] == [0.005, 0.01, 0.02, 0.04, 0.08]
    assert delays[17] == pytest.approx(0.005 * 2**17)  # 655.36 s, the last below the cap
    assert delays[18:] == [DEFAULT_BACKOFF_CAP] * 7
    assert backoff.num_requeues(A) == 25
    assert backoff.num_requeues(B) == 0
    assert backoff.when(B) == 0.005  # per key
    backoff.forget(A)
    assert backoff.num_requeues(A) == 0
    assert backoff.when(A) == 0.005
    for _ in range(5000):  # no overflow however long a key keeps failing
        backoff.when(C)
    assert backoff.when(C) == DEFAULT_BACKOFF_CAP


def test_backoff_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="base"):
        ExponentialBackoff[Key](base=0)
    with pytest.raises(ValueError, match="base"):
        ExponentialBackoff[Key](base=2, cap=1)


async def test_rate_limited_adds_back_off_exponentially_until_forgotten(
    queue: WorkQueue[Key], clock: FakeClock
) -> None:
    expected = [min(0.005 * 2**n, DEFAULT_BACKOFF_CAP) for n in range(20)]
    for n, delay in enumerate(expected):
        assert queue.num_requeues(A) == n
        start = clock.monotonic()
        queue.add_rate_limited(A)
        await until(lambda: len(clock.sleeping_until()) == 1)
        clock.set(just_before(start + delay))
        await settle()
        assert len(queue) == 0, f"retry {n} came before {delay} s"
        clock.set(start + delay)
        assert await get_soon(queue) == A
        queue.done(A)
    assert expected[-1] == DEFAULT_BACKOFF_CAP
    queue.forget(A)
    assert queue.num_requeues(A) == 0
    start = clock.monotonic()
    queue.add_rate_limited(A)
    clock.set(start + 0.005)
    assert await get_soon(queue) == A


# --- shutdown ---------------------------------------------------------------------------


async def test_shutdown_wakes_idle_getters(queue: WorkQueue[Key]) -> None:
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await settle()
    assert not any(g.done() for g in getters)
    assert await queue.shutdown(drain_timeout=10) is True
    results = await asyncio.gather(*getters, return_exceptions=True)
    assert all(isinstance(r, ShutDown) for r in results)
    with pytest.raises(ShutDown):
        await queue.get()


async def test_shutdown_waits_for_the_accepted_work_then_stops(queue: WorkQueue[Key]) -> None:
    queue.add(A)
    queue.add(B)
    assert await get_soon(queue) == A
    queue.add(A)  # re-added while in flight: still owed a run
    shutdown = asyncio.create_task(queue.shutdown(drain_timeout=30))
    await settle()
    assert queue.shutting_down
    queue.add(C)
    queue.add_after(C, 0)
    queue.add_rate_limited(C)
    assert queue.depth == 2  # A and B; C was refused
    assert await get_soon(queue) == B
    queue.done(A)
    assert await get_soon(queue) == A
    queue.done(B)
    await settle()
    assert not shutdown.done()
    queue.done(A)
    assert await asyncio.wait_for(shutdown, timeout=5) is True
    with pytest.raises(ShutDown):
        await queue.get()


async def test_shutdown_is_not_drained_while_keys_are_ready(queue: WorkQueue[Key]) -> None:
    queue.add(A)
    queue.add(B)
    shutdown = asyncio.create_task(queue.shutdown(drain_timeout=30))
    await settle()
    assert not shutdown.done()  # nothing in flight, but A and B were accepted
    assert await get_soon(queue) == A
    queue.done(A)
    await settle()
    assert not shutdown.done()
    assert await get_soon(queue) == B
    queue.done(B)
    assert await asyncio.wait_for(shutdown, timeout=5) is True


async def test_shutdown_gives_up_after_the_drain_timeout(
    queue: WorkQueue[Key], clock: FakeClock
) -> None:
    queue.add(A)
    assert await get_soon(queue) == A
    deadline = clock.monotonic() + 30
    shutdown = asyncio.create_task(queue.shutdown(drain_timeout=30))
    await until(lambda: clock.sleeping_until() == [deadline])
    clock.set(just_before(deadline))
    await settle()
    assert not shutdown.done()
    clock.set(deadline)
    assert await asyncio.wait_for(shutdown, timeout=5) is False
    queue.done(A)  # a late worker may still finish


async def test_shutdown_drops_delayed_adds(queue: WorkQueue[Key], clock: FakeClock) -> None:
    queue.add_after(A, 1)
    queue.add_rate_limited(B)
    await until(lambda: len(clock.sleeping_until()) == 1)
    assert await queue.shutdown(drain_timeout=10) is True
    assert clock.sleeping_until() == []
    clock.advance(10)
    await settle()
    with pytest.raises(ShutDown):
        await queue.get()


# --- metrics ----------------------------------------------------------------------------


async def test_metrics_hooks_see_adds_depth_latency_work_and_retries(clock: FakeClock) -> None:
    metrics = RecordingMetrics()
    q = WorkQueue[Key](clock=clock, metrics=metrics)
    q.add(A)
    q.add(A)
    q.add(B)
    assert (metrics.adds, metrics.depths) == (2, [1, 2])

    clock.advance(2)
    assert await get_soon(q) == A
    clock.advance(1)
    assert await get_soon(q) == B
    assert metrics.latencies == [2.0, 3.0]
    assert metrics.depths[-2:] == [1, 0]

    clock.advance(4)  # A in flight for 5 s, B for 4 s
    assert q.unfinished_work_seconds() == 9.0
    assert q.longest_running_processor_seconds() == 5.0
    q.done(A)
    assert metrics.durations == [5.0]
    assert q.unfinished_work_seconds() == 4.0
    assert q.longest_running_processor_seconds() == 4.0

    q.add(B)  # re-added while in flight: counted as waiting
    assert (metrics.adds, metrics.depths[-1]) == (3, 1)
    clock.advance(1)
    q.done(B)
    assert metrics.durations == [5.0, 5.0]
    assert q.unfinished_work_seconds() == 0.0
    assert q.longest_running_processor_seconds() == 0.0

    assert metrics.retries == 0
    q.add_after(C, 1)
    q.add_rate_limited(C)
    assert metrics.retries == 2
    await q.shutdown(drain_timeout=0)


# --- the real clock ---------------------------------------------------------------------


async def test_the_system_clock_drives_delayed_adds() -> None:
    before = SYSTEM_CLOCK.monotonic()
    assert before == pytest.approx(asyncio.get_running_loop().time(), abs=1.0)
    q = WorkQueue[Key]()
    q.add_after(A, 0.01)
    assert await get_soon(q) == A
    assert SYSTEM_CLOCK.monotonic() - before >= 0.01 - 1e-3
    q.done(A)
    assert await q.shutdown(drain_timeout=1) is True


async def test_low_priority_keys_wait_for_normal_ones() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=FakeClock())
    for key in ("low-1", "low-2"):
        queue.add(key, low=True)
    queue.add("user")
    assert await queue.get() == "user"
    assert await queue.get() == "low-1"
    queue.add("user-2")
    assert await queue.get() == "user-2"
    assert await queue.get() == "low-2"
    assert queue.depth == 0


async def test_a_normal_add_promotes_a_waiting_low_key() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=FakeClock())
    queue.add("a", low=True)
    queue.add("b", low=True)
    queue.add("c")
    queue.add("b")  # a user change to b while its re-check waits: b goes first now
    assert [await queue.get() for _ in range(3)] == ["c", "b", "a"]
    assert queue.depth == 0


async def test_lane_of_a_key_readded_while_in_flight() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=FakeClock())
    queue.add("k")
    assert await queue.get() == "k"
    queue.add("k", low=True)
    queue.add("other")
    queue.done("k")  # back in the low lane: "other" first
    assert await queue.get() == "other"
    assert await queue.get() == "k"
    queue.add("k", low=True)
    queue.add("k")  # promoted while in flight
    queue.add("other-2", low=True)
    queue.done("k")
    assert await queue.get() == "k"
