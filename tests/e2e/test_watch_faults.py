"""Watch streams and lists that go wrong, between the operator and the real API server.

A relay (:mod:`tests.e2e.relay`) sits on the operator's path to the API server and
spoils chosen answers: a line that is no watch event at the head of a real watch
stream, a watch that ends at once with an empty 200, a 429 or a 410 in place of a
later page of a paginated list. The operator must stay up, rebuild its cache from
a list, not re-open a failing watch in a tight loop, and resume a list where it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router_controller.informer import WatchTuning
from router_controller.kube import Kube, RetryPolicy
from router_controller.manager import Manager
from router_controller_dev.envtest import ControlPlane
from tests.e2e.relay import Fault, Relay, list_of, watch_of
from tests.e2e.support import create_route, run_operator, staticroute, try_get_cm, wait_for

MALFORMED = (
    b"this line is not JSON",
    b'["a", "JSON", "array", "is", "not", "an", "event"]',
    b'{"type": "ADDED", "object": {"metadata": {"namespace": "x"}}}',  # no metadata.name
)
EMPTY_WATCHES = 2
# "Not more than a few reconnects a second": client-go's reflector backs off from
# 800 ms; a tight loop re-opens an empty watch within milliseconds.
MAX_RECONNECTS_PER_SECOND = 4


@pytest.fixture
async def relay(control_plane: ControlPlane) -> AsyncIterator[Relay]:
    async with Relay(control_plane.apiserver_port, control_plane.ca_file) as running:
        yield running


async def has_cm(kube: Kube, namespace: str, name: str) -> bool:
    return await try_get_cm(kube, namespace, f"{name}-config") is not None


async def all_cms(kube: Kube, namespace: str, count: int) -> bool:
    return all([await has_cm(kube, namespace, f"r{i}") for i in range(count)])


def malformed_count(manager: Manager) -> float:
    value = manager.metrics.registry.get_sample_value(
        "router_controller_watch_malformed_events_total", {"resource": "staticroutes"}
    )
    return value or 0.0


async def test_malformed_lines_and_empty_watches_are_survived_and_relisted(
    control_plane: ControlPlane, kube: Kube, namespace: str, relay: Relay, tmp_path: Path
) -> None:
    watches = watch_of("staticroutes", namespace)
    relay.arm(
        *(Fault("inject", watches, line=line) for line in MALFORMED),
        Fault("empty", watches, times=EMPTY_WATCHES),
    )
    await create_route(kube, staticroute("before", namespace))
    tuning = WatchTuning(backoff_initial=0.2)
    async with run_operator(
        control_plane,
        kubeconfig=relay.kubeconfig(tmp_path / "via-relay", control_plane),
        tuning=tuning,
        namespaces=(namespace,),
    ) as manager:
        await wait_for(lambda: not relay.armed, timeout=60, what="every fault to be served")
        # Made after the last spoiled watch: only a working watch (or list) brings it.
        await create_route(kube, staticroute("after", namespace))
        await wait_for(lambda: has_cm(kube, namespace, "after"), timeout=60, what="after-config")
        assert await has_cm(kube, namespace, "before")
        assert all(not task.done() for task in manager.parts.routes.tasks), "a watch task ended"
        assert malformed_count(manager) == len(MALFORMED)
        empty = [r.at for r in relay.requests if r.fault == "empty"]
        assert len(empty) == EMPTY_WATCHES
        rate = (len(empty) - 1) / (empty[-1] - empty[0])
        assert rate <= MAX_RECONNECTS_PER_SECOND, f"{rate:.0f} empty watches re-opened a second"
        # Each malformed line was answered with a list: the first list, one per line. (An
        # empty watch is re-listed only when it ended within a second, as client-go's
        # "very short watch"; on a loaded machine the answer can take longer than that.)
        lists = [
            r for r in relay.requests if list_of("staticroutes", namespace, continued=False)(r)
        ]
        assert len(lists) >= 1 + len(MALFORMED), [r.query for r in lists]
        assert manager.parts.routes.relists >= len(MALFORMED)


async def test_a_throttled_page_resumes_from_its_continue_token(
    control_plane: ControlPlane, kube: Kube, namespace: str, relay: Relay, tmp_path: Path
) -> None:
    for i in range(5):
        await create_route(kube, staticroute(f"r{i}", namespace))
    # More 429s than the client retries by itself: the page fails up to the informer.
    throttled = Fault(
        "status",
        list_of("staticroutes", namespace, continued=True),
        status=429,
        reason="TooManyRequests",
        times=RetryPolicy().max_retries + 2,
    )
    relay.arm(throttled)
    async with run_operator(
        control_plane,
        kubeconfig=relay.kubeconfig(tmp_path / "via-relay", control_plane),
        tuning=WatchTuning(page_size=2, backoff_initial=0.2),
        namespaces=(namespace,),
    ) as manager:
        await wait_for(lambda: all_cms(kube, namespace, 5), what="every ConfigMap")
        resumed = manager.parts.routes.resumed_pages
    pages = [
        r
        for r in relay.requests
        if not r.watch and r.method == "GET" and r.path.endswith(f"/{namespace}/staticroutes")
    ]
    firsts = [r for r in pages if "continue" not in r.query]
    assert len(firsts) == 1, "the list started over"
    token = throttled.used[0].query["continue"]
    assert all(r.query["continue"] == token for r in throttled.used)
    answered = [r for r in pages if r.fault is None and "continue" in r.query]
    assert answered[0].query["continue"] == token, "the page after the 429s was not resumed"
    assert len(answered) == 2  # pages two and three, each asked for once after the 429s
    assert resumed >= 1


async def test_an_expired_continue_token_starts_the_list_again(
    control_plane: ControlPlane, kube: Kube, namespace: str, relay: Relay, tmp_path: Path
) -> None:
    for i in range(5):
        await create_route(kube, staticroute(f"r{i}", namespace))
    expired = Fault(
        "status", list_of("staticroutes", namespace, continued=True), status=410, reason="Expired"
    )
    relay.arm(expired)
    async with run_operator(
        control_plane,
        kubeconfig=relay.kubeconfig(tmp_path / "via-relay", control_plane),
        tuning=WatchTuning(page_size=2),
        namespaces=(namespace,),
    ) as manager:
        await wait_for(lambda: all_cms(kube, namespace, 5), what="every ConfigMap")
        assert len(manager.parts.routes) == 5
    pages = [
        r
        for r in relay.requests
        if not r.watch and r.method == "GET" and r.path.endswith(f"/{namespace}/staticroutes")
    ]
    kinds = ["first" if "continue" not in r.query else (r.fault or "next") for r in pages]
    assert kinds[:3] == ["first", "status", "first"], kinds
    assert kinds[3:] == ["next", "next"], kinds
