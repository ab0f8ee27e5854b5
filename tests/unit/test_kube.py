"""API errors: Status bodies as kube-apiserver writes them become typed errors.

The bodies below are the shapes k8s.io/apimachinery's ``StatusError`` serialises
(``details.causes[].reason`` is the JSON name of ``StatusCause.Type``); the real server is
exercised by the e2e tests.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils

import pytest

from router_controller.kube import (
    ApiError,
    AuthHealth,
    Concurrency,
    Forbidden,
    Invalid,
    ServerError,
    TooManyRequests,
    Unauthorized,
    error_from_status,
    parse_retry_after,
)
from router_controller.ratelimit import TokenBucket
from tests.unit.fakeclock import FakeClock

PATH = "/api/v1/namespaces/ns/configmaps"


def status(code: int, reason: str, message: str, details: object = None) -> dict[str, object]:
    body: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details is not None:
        body["details"] = details
    return body


def test_terminating_namespace_is_told_by_its_cause_not_its_message() -> None:
    body = status(
        403,
        "Forbidden",
        'configmaps "x" is forbidden: unable to create new content in namespace ns'
        " because it is being terminated",
        {
            "name": "x",
            "kind": "configmaps",
            "causes": [
                {
                    "reason": "NamespaceTerminating",
                    "message": "namespace ns is being terminated",
                    "field": "metadata.namespace",
                }
            ],
        },
    )
    err = error_from_status(403, body, "POST", PATH)
    assert isinstance(err, Forbidden)
    assert err.namespace_terminating
    assert not err.rbac_denied
    assert err.details["name"] == "x"
    assert err.causes[0]["field"] == "metadata.namespace"


def test_rbac_denial_is_told_apart_from_other_403s() -> None:
    denied = error_from_status(
        403,
        status(
            403,
            "Forbidden",
            'configmaps is forbidden: User "system:serviceaccount:a:b" cannot create'
            ' resource "configmaps" in API group "" in the namespace "ns"',
            {"kind": "configmaps"},
        ),
        "POST",
        PATH,
    )
    quota = error_from_status(
        403,
        status(
            403,
            "Forbidden",
            'configmaps "x" is forbidden: exceeded quota: q, requested: count/configmaps=1,'
            " used: count/configmaps=1, limited: count/configmaps=1",
            {"name": "x", "kind": "configmaps"},
        ),
        "POST",
        PATH,
    )
    assert isinstance(denied, Forbidden)
    assert isinstance(quota, Forbidden)
    assert denied.rbac_denied
    assert not denied.namespace_terminating
    assert not quota.rbac_denied
    assert not quota.namespace_terminating
    assert quota.causes == []


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (401, Unauthorized),
        (422, Invalid),
        (429, TooManyRequests),
        (500, ServerError),
        (503, ServerError),
        (504, ServerError),
        (418, ApiError),
    ],
)
def test_status_codes_map_to_types(code: int, kind: type[ApiError]) -> None:
    err = error_from_status(code, status(code, "Whatever", "text"), "GET", PATH, retry_after=2)
    assert type(err) is kind
    assert err.status == code
    assert err.reason == "Whatever"
    assert err.message == "text"
    assert err.retry_after == 2
    assert err.details == {}
    assert err.causes == []


def test_invalid_keeps_its_field_causes() -> None:
    body = status(
        422,
        "Invalid",
        'ConfigMap "x" is invalid: metadata.name: Invalid value: "x": must be no more than'
        " 253 characters",
        {
            "name": "x",
            "kind": "ConfigMap",
            "causes": [{"reason": "FieldValueInvalid", "message": "m", "field": "metadata.name"}],
        },
    )
    err = error_from_status(422, body, "POST", PATH)
    assert isinstance(err, Invalid)
    assert [c["field"] for c in err.causes] == ["metadata.name"]


def test_a_body_that_is_not_a_status_still_makes_an_error() -> None:
    err = error_from_status(502, "<html>bad gateway</html>", "GET", PATH)
    assert isinstance(err, ServerError)
    assert err.message == "<html>bad gateway</html>"
    assert err.details == {}
    assert err.causes == []
    odd = error_from_status(403, status(403, "Forbidden", "m", {"causes": "nonsense"}), "GET", PATH)
    assert isinstance(odd, Forbidden)
    assert odd.causes == []
    assert not odd.namespace_terminating


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
    seconds = parse_retry_after(email.utils.format_datetime(later, usegmt=True))
    assert seconds is not None
    assert 100 < seconds <= 120


def test_retry_budget_allows_a_burst_then_its_rate() -> None:
    clock = FakeClock(0.0)
    budget = TokenBucket(rate=5.0, burst=10, clock=clock)
    assert [budget.take() for _ in range(11)] == [True] * 10 + [False]
    clock.set(0.1)  # half a token
    assert not budget.take()
    clock.set(0.2)
    assert budget.take()
    assert not budget.take()
    clock.set(100.0)  # refills only up to the burst
    assert sum(budget.take() for _ in range(20)) == 10


async def test_concurrency_halves_on_429_holds_then_grows() -> None:
    clock = FakeClock(0.0)
    gate = Concurrency(8, clock=clock)
    for _ in range(5):
        await gate.acquire()
    assert gate.in_flight == 5
    gate.release(throttled=2.0)  # half of the 5 in flight, not of the limit 8
    assert gate.limit == 2.5
    gate.release(throttled=2.0)
    gate.release(throttled=2.0)
    gate.release(throttled=2.0)
    assert gate.limit == 1.0  # never below one
    clock.set(1.5)  # still inside the Retry-After: no growth
    gate.release(throttled=None)
    assert gate.limit == 1.0
    assert gate.in_flight == 0
    clock.set(3.0)
    await gate.acquire()
    gate.release(throttled=None)
    assert gate.limit == 2.0
    await gate.acquire()
    gate.release(throttled=None)  # at most one step a second
    assert gate.limit == 2.0
    for step in range(4, 30):
        clock.set(float(step))
        await gate.acquire()
        gate.release(throttled=None)
    assert gate.limit == 8  # never above the maximum


async def test_concurrency_makes_the_extra_request_wait() -> None:
    gate = Concurrency(2, clock=FakeClock(0.0))
    await gate.acquire()
    gate.release(throttled=1.0)  # limit 1
    await gate.acquire()
    waiting = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    gate.release(throttled=None)
    await asyncio.wait_for(waiting, 1)
    assert gate.in_flight == 1


def test_auth_health_fails_ready_at_once_and_alive_after_a_while() -> None:
    clock = FakeClock(0.0)
    health = AuthHealth(restart_after=60.0, clock=clock)
    assert health.ready()
    assert health.alive()
    health.rejected()
    assert not health.ready()
    assert health.alive()
    clock.set(59.0)
    health.rejected()  # still counted from the first refusal
    assert health.alive()
    clock.set(60.0)
    assert not health.alive()
    health.accepted()
    assert health.ready()
    assert health.alive()


class _Protocol:
    """What an aiohttp StreamReader asks of its protocol (flow control only)."""

    _reading_paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self, **_: object) -> None:
        self._reading_paused = False


async def test_watch_lines_are_cut_from_reads_of_any_size() -> None:
    """A read holds many events in a burst, or part of one: every line comes out whole."""
    import aiohttp

    from router_controller import kube

    events = [
        b'{"type":"ADDED","object":{"n":%d,"pad":"%s"}}' % (i, b"x" * (i * 37 % 300))
        for i in range(200)
    ]
    stream = b"\n".join(events) + b"\n\n" + b'{"type":"BOOKMARK"}'  # a blank line; no final newline
    reader = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    sizes = [1, 7, 4096, 3, 65536, 250, 10]
    offset = 0
    while offset < len(stream):
        size = sizes[offset % len(sizes)]
        reader.feed_data(stream[offset : offset + size])
        offset += size
    reader.feed_eof()

    lines = [line async for line in kube._lines(reader)]

    assert lines == [*events, b'{"type":"BOOKMARK"}']
